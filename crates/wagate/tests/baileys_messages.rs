//! Runs `interop/test/messages.test.mjs`: wagate and Baileys 7 (npm) exchange texts, media,
//! locations, replies and reactions through the simulator (see `common::node`).

mod common;

#[test]
fn wagate_and_baileys_exchange_messages_media_and_receipts() {
    common::node::require_package("baileys");
    common::node::run_node_test("messages.test.mjs", &[]);
}
