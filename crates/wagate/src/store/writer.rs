//! Group commit: every write of the hot paths (webhook events, received messages, sent
//! messages, delivery outcomes) goes to one writer thread, which runs whatever is waiting
//! in one transaction and one fsync, then tells each caller its outcome. A caller is told
//! only after its commit, so nothing acknowledged can be lost; a burst costs one fsync per
//! batch instead of one per write, and no async worker ever waits on the disk.
//!
//! Each job runs inside its own savepoint: a job that fails is rolled back alone and its
//! caller gets the error, the others in the batch still commit.

use std::sync::mpsc;
use std::thread;

use rusqlite::{Connection, TransactionBehavior};
use tracing::error;

use super::sql::{Db, PgDb, PreparedStatements};
use super::StoreError;

/// At most this many jobs share one transaction (a bound on latency, not a target).
const MAX_BATCH: usize = 2000;

/// Reports a job's outcome once the batch's commit is known.
type Finish = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A job: runs inside the batch's transaction and returns how to tell its caller.
type Job = Box<dyn FnOnce(&dyn Db) -> Finish + Send>;

/// The handle of the writer thread. Dropping the last one ends the thread once the jobs
/// already sent are committed.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on its own connection to the SQLite database.
    pub fn spawn(db: Connection) -> Self {
        Self::spawn_with(move |queue| {
            let mut db = db;
            run(queue, |body| {
                let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
                body(&*tx);
                tx.commit()?;
                Ok(())
            })
        })
    }

    /// Starts the writer thread on its own connection to the PostgreSQL database, made (and
    /// made again after the server closed it) by `connect`.
    pub fn spawn_postgres(mut connect: impl FnMut() -> Result<postgres::Client, StoreError> + Send + 'static) -> Self {
        Self::spawn_with(move |queue| {
            let mut client: Option<postgres::Client> = None;
            let mut prepared = PreparedStatements::default();
            run(queue, |body| {
                let client = match &mut client {
                    Some(open) if !open.is_closed() => open,
                    _ => {
                        // Statements prepared on the old connection died with it.
                        prepared = PreparedStatements::default();
                        client.insert(connect()?)
                    }
                };
                let mut tx = client.transaction()?;
                body(&PgDb::new(&mut tx, &prepared));
                tx.commit()?;
                Ok(())
            })
        })
    }

    fn spawn_with(thread_main: impl FnOnce(mpsc::Receiver<Job>) + Send + 'static) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("wagate-store-writer".into())
            .spawn(move || thread_main(queue))
            .expect("the store writer thread starts");
        Self { jobs }
    }

    /// Runs `work` in the next batch; resolves once it is committed (or failed).
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(work, move |outcome| {
            let _ = reply.send(outcome);
        })?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Like [`Writer::write`], for code outside the async runtime's workers (or where a
    /// caller must not go on before the commit and cannot await).
    pub fn write_blocking<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(work, move |outcome| {
            let _ = reply.send(outcome);
        })?;
        answer.recv().map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `work` without waiting for it; a failure is only logged.
    pub fn submit_logged<F>(&self, work: F)
    where
        F: FnOnce(&dyn Db) -> Result<(), StoreError> + Send + 'static,
    {
        let queued = self.submit(work, |outcome| {
            if let Err(e) = outcome {
                error!("a database write failed: {e}");
            }
        });
        if let Err(e) = queued {
            error!("a database write was not queued: {e}");
        }
    }

    /// Queues `work` without waiting; its outcome goes to `done`.
    fn submit<T, F, D>(&self, work: F, done: D) -> Result<(), StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Db) -> Result<T, StoreError> + Send + 'static,
        D: FnOnce(Result<T, StoreError>) + Send + 'static,
    {
        let job: Job = Box::new(move |db: &dyn Db| {
            let result = in_savepoint(db, work);
            Box::new(move |commit: Result<(), StoreError>| done(commit.and(result)))
        });
        self.jobs.send(job).map_err(|_| StoreError::WriterGone)
    }
}

fn in_savepoint<T>(db: &dyn Db, work: impl FnOnce(&dyn Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
    // Prepared once per connection (SQLite's statement cache, PostgreSQL's prepared
    // statements): a burst runs these thousands of times a second.
    db.execute("SAVEPOINT job", crate::args![])?;
    let result = work(db);
    if result.is_err() {
        db.execute("ROLLBACK TO job", crate::args![])?;
    }
    db.execute("RELEASE job", crate::args![])?;
    result
}

/// The writer thread: `in_transaction` opens a transaction, runs the body on it and commits.
fn run(queue: mpsc::Receiver<Job>, mut in_transaction: impl FnMut(&mut dyn FnMut(&dyn Db)) -> Result<(), StoreError>) {
    // Blocks for the first job of a batch; takes whatever else waits without blocking.
    while let Ok(first) = queue.recv() {
        let mut finishes = Vec::new();
        let mut first = Some(first);
        let outcome = in_transaction(&mut |tx: &dyn Db| {
            if let Some(first) = first.take() {
                finishes.push(first(tx));
            }
            while finishes.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => finishes.push(job(tx)),
                    Err(_) => break,
                }
            }
        });
        if let Err(e) = &outcome {
            error!("a batch of database writes could not be committed: {e}");
        }
        for finish in finishes {
            finish(outcome.as_ref().map(|_| ()).map_err(StoreError::batch_failed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, Writer, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let db = Connection::open(&path).unwrap();
        db.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x INTEGER UNIQUE)").unwrap();
        let reader = Connection::open(&path).unwrap();
        (dir, Writer::spawn(db), reader)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_job_rolls_back_alone_and_every_caller_hears_after_the_commit() {
        let (_dir, writer, reader) = writer();
        let mut calls = Vec::new();
        for x in [1, 2, 1, 3] {
            let writer = writer.clone();
            calls.push(tokio::spawn(async move {
                writer
                    .write(move |db| {
                        db.execute("INSERT INTO t (x) VALUES (?1)", crate::args![x])?;
                        Ok(x)
                    })
                    .await
            }));
        }
        let mut outcomes = Vec::new();
        for call in calls {
            outcomes.push(call.await.unwrap().is_ok());
        }
        assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 3, "{outcomes:?}");
        let rows: i64 = reader.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 3, "what was answered Ok is visible to another connection");
        let blocking = tokio::task::spawn_blocking(move || {
            writer.write_blocking(|db| db.execute("INSERT INTO t (x) VALUES (9)", crate::args![]))
        });
        assert_eq!(blocking.await.unwrap().unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres_too_a_failing_job_rolls_back_alone() {
        let database = crate::pg_testing::TestDatabase::create().await;
        let config = crate::store::postgres::Settings::parse(&database.url()).unwrap();
        let setup = config.clone();
        std::thread::spawn(move || {
            crate::store::postgres::connect(&setup).unwrap().batch_execute("CREATE TABLE t (x BIGINT UNIQUE)").unwrap()
        })
        .join()
        .unwrap();
        let writer = Writer::spawn_postgres(move || crate::store::postgres::connect(&config));
        let mut calls = Vec::new();
        for x in [1i64, 2, 1, 3] {
            let writer = writer.clone();
            calls.push(tokio::spawn(async move {
                writer.write(move |db| db.execute("INSERT INTO t (x) VALUES (?1)", crate::args![x])).await
            }));
        }
        let mut ok = 0;
        for call in calls {
            ok += usize::from(call.await.unwrap().is_ok());
        }
        assert_eq!(ok, 3, "only the duplicate fails");
        let count =
            writer.write(|db| db.query_one("SELECT COUNT(*) FROM t", crate::args![])?.get::<i64>(0)).await.unwrap();
        assert_eq!(count, 3, "the others of its batch were committed");
    }
}
