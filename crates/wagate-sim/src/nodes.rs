//! Small helpers for reading and building binary nodes.

use wacore_binary::builder::NodeBuilder;
use wacore_binary::{Jid, Node, NodeContent, NodeValue, Server};

/// `s.whatsapp.net` as a JID (encoded as JID_PAIR: whatsmeow drops an iq whose `from` is a
/// plain string).
pub fn server_jid() -> Jid {
    Jid::new("", Server::Pn)
}

pub fn attr(node: &Node, key: &str) -> Option<String> {
    node.attrs.get(key).map(|v| v.as_str().into_owned())
}

pub fn child<'a>(node: &'a Node, tag: &str) -> Option<&'a Node> {
    node.get_optional_child(tag)
}

pub fn children(node: &Node) -> &[Node] {
    node.children().unwrap_or_default()
}

pub fn content_bytes(node: &Node) -> Option<&[u8]> {
    match &node.content {
        Some(NodeContent::Bytes(bytes)) => Some(bytes),
        Some(NodeContent::String(text)) => Some(text.as_bytes()),
        _ => None,
    }
}

pub fn child_bytes<'a>(node: &'a Node, tag: &str) -> Option<&'a [u8]> {
    child(node, tag).and_then(content_bytes)
}

/// The `from` of an answer: whatever the request was addressed to, else the server.
fn answer_from(request: &Node) -> NodeValue {
    request.attrs.get("to").cloned().unwrap_or_else(|| NodeValue::Jid(server_jid()))
}

pub fn iq_result(request: &Node, content: Vec<Node>) -> Node {
    let mut builder = NodeBuilder::new("iq")
        .attr("from", answer_from(request))
        .attr("type", "result")
        .attr("id", attr(request, "id").unwrap_or_default());
    if !content.is_empty() {
        builder = builder.children(content);
    }
    builder.build()
}

pub fn iq_error(request: &Node, code: u16, text: &str) -> Node {
    NodeBuilder::new("iq")
        .attr("from", answer_from(request))
        .attr("type", "error")
        .attr("id", attr(request, "id").unwrap_or_default())
        .children([NodeBuilder::new("error").attr("code", code.to_string()).attr("text", text).build()])
        .build()
}

/// `<stream:error code=".."/>`, e.g. 515 "restart required".
pub fn stream_error_code(code: u16) -> Node {
    NodeBuilder::new("stream:error").attr("code", code.to_string()).build()
}

/// `<stream:error><conflict type=".."/></stream:error>`: `replaced` or `device_removed`.
pub fn stream_error_conflict(kind: &str) -> Node {
    NodeBuilder::new("stream:error")
        .children([NodeBuilder::new("conflict").attr("type", kind.to_string()).build()])
        .build()
}

pub fn new_stanza_id() -> String {
    hex::encode_upper(crate::crypto::random_bytes::<8>())
}
