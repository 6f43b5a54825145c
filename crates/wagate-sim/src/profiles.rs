//! What an account shows to others: its "about" text and profile picture, set through the
//! control API and answered to `w:profile:picture` and usync `<status/>` / `<picture/>`.

use std::collections::HashMap;

use wacore_binary::builder::NodeBuilder;
use wacore_binary::Node;

use crate::iq::IqContext;
use crate::jid::{parse_device_jid, AnyDeviceJid};
use crate::nodes::{attr, child, iq_error, iq_result};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Profile {
    pub about: Option<String>,
    pub picture_url: Option<String>,
    /// Changes with every new picture, as WhatsApp's picture ids do.
    pub picture_id: u64,
}

pub type Profiles = HashMap<u64, Profile>;

/// `<iq xmlns="w:profile:picture" type="get" target=user><picture type=image query=url/>`:
/// the picture's URL, or 404 when the user has none.
pub fn answer_picture(ctx: &IqContext<'_>, iq: &Node) -> Node {
    let inner = ctx.state.lock();
    let phone =
        attr(iq, "target").or_else(|| attr(iq, "to")).and_then(|jid| parse_device_jid(&jid)).and_then(|j| match j {
            AnyDeviceJid::Pn { phone, .. } => Some(phone),
            AnyDeviceJid::Lid { lid, .. } => inner.accounts.by_lid(lid).map(|a| a.phone),
        });
    let profile = phone.and_then(|p| inner.profiles.get(&p));
    let kind = child(iq, "picture").and_then(|p| attr(p, "type")).unwrap_or_else(|| "image".into());
    match profile.and_then(|p| p.picture_url.as_deref().map(|url| (p.picture_id, url))) {
        Some((id, url)) => iq_result(
            iq,
            vec![NodeBuilder::new("picture")
                .attr("id", id.to_string())
                .attr("type", kind)
                .attr("url", url)
                .attr("direct_path", format!("/v/t61/{id}.jpg"))
                .build()],
        ),
        None => iq_error(iq, 404, "item-not-found"),
    }
}

/// The usync `<status>` of a user: its about text, or none.
pub fn status_node(profile: Option<&Profile>) -> Node {
    let builder = NodeBuilder::new("status");
    match profile.and_then(|p| p.about.clone()) {
        Some(about) => builder.attr("t", "1700000000").string_content(about).build(),
        None => builder.build(),
    }
}

/// The usync `<picture>` of a user, when it has one.
pub fn picture_node(profile: Option<&Profile>) -> Option<Node> {
    let profile = profile.filter(|p| p.picture_url.is_some())?;
    Some(NodeBuilder::new("picture").attr("id", profile.picture_id.to_string()).build())
}
