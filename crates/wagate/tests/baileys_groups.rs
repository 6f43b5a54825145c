//! Runs `interop/test/groups.test.mjs`: a group of wagate and two Baileys 7 clients through
//! the simulator, with Baileys' own group metadata query (see `common::node`).

mod common;

#[test]
fn wagate_and_two_baileys_clients_talk_in_a_group() {
    common::node::require_package("baileys");
    common::node::run_node_test("groups.test.mjs", &[]);
}
