//! Runs `interop/test/cloud_api.test.mjs`: the Cloud API face of wagate, played as the
//! Frappe app `frappe_whatsapp` plays it, against a Baileys 7 contact on the simulator (see
//! `common::node`).

mod common;

#[test]
fn frappe_whatsapp_and_a_baileys_contact_through_the_cloud_api() {
    common::node::require_package("baileys");
    common::node::run_node_test("cloud_api.test.mjs", &[]);
}
