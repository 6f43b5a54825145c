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

/// `interop/test/big_media.test.mjs`: a contact's 200 MB document streams to disk (peak RSS
/// under 100 MB) while later texts arrive; an under-declared one fails at its declared size;
/// a compat webhook carries `media.data: null` with the reason beyond `--compat-media-max`.
#[test]
fn a_huge_file_from_a_contact_costs_disk_not_memory() {
    common::node::require_package("baileys");
    common::node::run_node_test("big_media.test.mjs", &[]);
}
