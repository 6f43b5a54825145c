//! Runs `interop/test/durability.test.mjs`: Baileys 7 sends 300 texts to a wagate session
//! while the gateway is killed with SIGKILL three times and stopped with SIGTERM twice at
//! random moments, restarted each time on the same data directory; every text must reach
//! the webhook receiver, each message as one event id (see `common::node`). The test prints
//! its seed; `WAGATE_DURABILITY_SEED` replays a plan.

mod common;

#[test]
fn received_messages_survive_sigkill_and_sigterm_of_the_gateway() {
    common::node::require_package("baileys");
    common::node::run_node_test("durability.test.mjs", &[]);
}
