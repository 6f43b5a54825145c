//! wagate: a WhatsApp linked-device gateway. See DESIGN.md for the parts:
//! `engine` (the WhatsApp client library behind a small trait), `session` (one supervisor
//! per session with the disconnect policy), `store` (SQLite in the data directory, or PostgreSQL for several nodes), `http`
//! (the APIs), `cli` (the commands).

pub mod cli;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod open_files;
mod percent;
#[cfg(test)]
pub(crate) mod pg_testing;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod server;
pub mod session;
pub mod store;
pub mod webhook;
