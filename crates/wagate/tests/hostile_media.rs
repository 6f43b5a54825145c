//! Runs `interop/test/hostile_media.test.mjs`: Baileys 7 relays documents whose `directPath`
//! is crafted to move wagate's download to a local listener (`@127.0.0.1:PORT/x`,
//! `//127.0.0.1:PORT/z`, `.x@127.0.0.1:PORT/y`). The messages arrive, their downloads are
//! refused with a JSON 4xx/502, and the listener sees no connection (see `common::node`).

mod common;

#[test]
fn crafted_direct_paths_never_make_wagate_connect_elsewhere() {
    common::node::require_package("baileys");
    common::node::run_node_test("hostile_media.test.mjs", &[]);
}
