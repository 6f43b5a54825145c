//! Runs `interop/test/messages.test.mjs`: wagate and Baileys 7 (npm) exchange messages
//! through the simulator. Needs `npm ci --prefix interop`; uses this build of `wagate` and
//! the simulator binary beside it (built by `cargo test --workspace`).

mod common;

#[test]
fn wagate_and_baileys_exchange_texts_and_receipts() {
    common::node::require_package("baileys");
    common::node::run_node_test("messages.test.mjs", &[]);
}
