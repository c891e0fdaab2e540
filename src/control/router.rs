//! Answers the requests the data plane hands over (`/api/*`, `/login`, `/auth/*`, `/ui/*`, `/`),
//! through the management API.

use tokio::sync::mpsc;

use super::api::Api;
use crate::handoff::ControlRequest;

/// `HEIMDALL_TEST_CLOCK=1` at start mounts `POST /api/test/clock`, which moves governance time
/// forward so tests can cross budget and rate windows without sleeping. Never set it in production.
pub(super) fn test_clock_enabled() -> bool {
    std::env::var("HEIMDALL_TEST_CLOCK").is_ok_and(|v| v == "1")
}

/// Each request runs as its own task: a sign-in waiting on an identity provider must not hold up
/// the rest of the API. Changes still apply one at a time (the catalog's write lock).
pub(super) async fn serve(mut requests: mpsc::UnboundedReceiver<ControlRequest>, api: std::sync::Arc<Api>) {
    while let Some(req) = requests.recv().await {
        let api = api.clone();
        tokio::spawn(async move {
            let resp = api.handle(&req).await;
            // The data plane may have given up waiting; nothing to do then.
            let _ = req.reply.send(resp);
        });
    }
}
