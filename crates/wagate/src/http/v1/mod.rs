//! The native API, `/v1`.

mod contacts;
mod groups;
mod messages;
mod nodes;
mod sessions;
pub use sessions::{phone_digits, validate_webhook_url};
mod webhooks;

use std::sync::Arc;

use utoipa_axum::router::OpenApiRouter;

use super::AppState;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    sessions::routes()
        .merge(webhooks::routes())
        .merge(messages::routes())
        .merge(groups::routes())
        .merge(contacts::routes())
        .merge(nodes::routes())
}
