//! The native API, `/v1`.

mod messages;
mod sessions;
mod webhooks;

use std::sync::Arc;

use axum::Router;

use super::AppState;

pub fn routes() -> Router<Arc<AppState>> {
    sessions::routes().merge(webhooks::routes()).merge(messages::routes())
}
