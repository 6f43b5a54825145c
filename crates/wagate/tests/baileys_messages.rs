//! Runs `interop/test/messages.test.mjs`: wagate and Baileys 7 (npm) exchange messages
//! through the simulator (see `common::interop`).

mod common;

#[test]
fn wagate_and_baileys_exchange_texts_and_receipts() {
    common::interop::run_node_test("test/messages.test.mjs");
}
