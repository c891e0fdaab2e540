//! Answers the requests the data plane hands over (`/api/*`, `/login`, `/auth/*`, `/ui/*`, `/`).
//! Nothing is mounted yet: every path is a JSON 404, through the one error mapping.

use tokio::sync::mpsc;

use crate::error::GatewayError;
use crate::handoff::ControlRequest;

pub(super) async fn serve(mut requests: mpsc::UnboundedReceiver<ControlRequest>) {
    while let Some(req) = requests.recv().await {
        let resp = GatewayError::NotFound(format!("{} {}", req.method, req.uri.path())).to_http();
        // The data plane may have given up waiting; nothing to do then.
        let _ = req.reply.send(resp);
    }
}
