//! Runs `interop/test/compat.test.mjs`: the ERPNext app's side of COMPAT.md against wagate,
//! with a Baileys 7 (npm) peer through the simulator (see `common::node`).

mod common;

#[test]
fn the_erpnext_app_works_unchanged_against_wagate() {
    common::node::require_package("baileys");
    common::node::run_node_test("compat.test.mjs", &[]);
}
