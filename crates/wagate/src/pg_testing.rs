//! A PostgreSQL database of its own for a test, on the local server (127.0.0.1:5432, user
//! `postgres`, trust authentication), dropped with the value, also when the test fails.

use std::sync::atomic::{AtomicU64, Ordering};

/// The server tests use, and the database that is always there to connect to.
const SERVER: &str = "host=127.0.0.1 port=5432 user=postgres";
const ADMIN_DATABASE: &str = "postgres";

/// A uniquely named database, created empty; dropped (`WITH (FORCE)`, so open connections do
/// not keep it) when this is.
pub(crate) struct TestDatabase {
    name: String,
}

impl TestDatabase {
    pub(crate) async fn create() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "wagate_test_{}_{}_{:08x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos ^ rand_bits()
        );
        let (client, connection) =
            tokio_postgres::connect(&format!("{SERVER} dbname={ADMIN_DATABASE}"), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("tests need PostgreSQL at 127.0.0.1:5432 (user postgres): {e}"));
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e:?}"));
        drop(client);
        let _ = driver.await;
        Self { name }
    }

    /// The database's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A connection URL of the database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

/// A few bits that differ between processes started in the same nanosecond.
fn rand_bits() -> u32 {
    let on_stack = 0u8;
    (&on_stack as *const u8 as usize as u64 >> 4) as u32
}

impl Drop for TestDatabase {
    /// From a thread of its own with the blocking client, so that it works inside a runtime
    /// and outside one.
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || -> Result<(), postgres::Error> {
            let mut client = postgres::Client::connect(&format!("{SERVER} dbname={ADMIN_DATABASE}"), postgres::NoTls)?;
            client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e:?}", self.name),
            Err(_) => eprintln!("could not drop test database {}: the dropping thread panicked", self.name),
        }
    }
}
