//! A PostgreSQL database of a test's own, on the local server (127.0.0.1:5432, user
//! `postgres`), dropped with the value, also when the test fails.

use std::sync::atomic::{AtomicU64, Ordering};

const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

/// With `WAGATE_TEST_STORE=postgres`, the gateways of the tests keep their store in
/// PostgreSQL: one database per data directory (a restart on the same directory finds its
/// sessions), named `wagate_tdir_*` (dropped by `scripts/test.sh` after the run).
pub const STORE_VARIABLE: &str = "WAGATE_TEST_STORE";
/// The node name of a test's gateway on PostgreSQL (the same across its restarts).
pub const TEST_NODE: &str = "test-node";

/// The database of a data directory when the tests run on PostgreSQL, created if need be.
pub fn for_data_dir(data_dir: &std::path::Path) -> Option<String> {
    if std::env::var(STORE_VARIABLE).ok().as_deref() != Some("postgres") {
        return None;
    }
    let path = data_dir.to_string_lossy();
    let hash = path.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let name = format!("wagate_tdir_{hash:016x}");
    if let Err(e) = admin(&format!("CREATE DATABASE \"{name}\"")) {
        let exists = e.as_db_error().is_some_and(|db| db.code() == &postgres::error::SqlState::DUPLICATE_DATABASE);
        assert!(exists, "creating the test database {name}: {e}");
    }
    Some(format!("postgres://postgres@127.0.0.1:5432/{name}"))
}

pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// A new, empty database (the blocking client runs on a thread of its own, so this
    /// works inside a runtime).
    pub fn create() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "wagate_it_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
        );
        let statement = format!("CREATE DATABASE \"{name}\"");
        admin(&statement).unwrap_or_else(|e| {
            panic!("tests need PostgreSQL at 127.0.0.1:5432 with user postgres (trust); creating {name}: {e}")
        });
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    /// Runs a query on the database, from a thread of its own; every column read as text.
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let (url, sql) = (self.url(), sql.to_string());
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("the test database answers");
            client
                .simple_query(&sql)
                .expect("the query runs")
                .into_iter()
                .filter_map(|message| match message {
                    postgres::SimpleQueryMessage::Row(row) => {
                        Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect()
        })
        .join()
        .expect("the query thread ends")
    }
}

fn admin(statement: &str) -> Result<(), postgres::Error> {
    let statement = statement.to_string();
    std::thread::spawn(move || postgres::Client::connect(ADMIN, postgres::NoTls)?.batch_execute(&statement))
        .join()
        .expect("the admin thread ends")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Err(e) = admin(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)) {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}
