//! `wagate-sim`: a WhatsApp server in a box for offline tests.
//!
//! It speaks the WhatsApp Web multi-device protocol to real clients (Baileys, whatsapp-rust):
//! the Noise handshake with a certificate chain under its own test root, QR and
//! phone-number pairing with genuine ADV signatures, the 515 restart, login, and answers to
//! every iq the clients send. Tests drive the simulated phones and inject faults through a
//! JSON control API on the same port.

mod accounts;
mod app_state;
mod clock;
mod conn;
mod control;
mod crypto;
mod error;
#[cfg(test)]
mod fuzz;
mod group_relay;
mod groups;
mod history;
mod iq;
mod jid;
mod keys;
mod media;
mod nodes;
mod noise;
mod outbox;
mod pair_code;
mod pairing;
mod phone;
mod presence;
mod profile;
mod profiles;
mod relay;
mod server;
mod state;
mod trickle;
mod wire;

pub use accounts::MAX_COMPANIONS;
pub use error::SimError;
pub use keys::ServerKeys;
pub use profile::{AccountProfile, ProfileError, ProfileOverrides};
pub use server::{Endpoints, Simulator};
pub use state::SimConfig;
