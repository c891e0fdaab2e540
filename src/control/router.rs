//! Answers the requests the data plane hands over (`/api/*`, `/login`, `/auth/*`, `/ui/*`, `/`).
//! The management API mounts here; until then every path is a JSON 404 through the one error mapping.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::GatewayError;
use crate::handoff::ControlRequest;

/// `HEIMDALL_TEST_CLOCK=1` at start mounts `POST /api/test/clock`, which moves governance time
/// forward so tests can cross budget and rate windows without sleeping. Never set it in production.
pub(super) fn test_clock_enabled() -> bool {
    std::env::var("HEIMDALL_TEST_CLOCK").is_ok_and(|v| v == "1")
}

pub(super) async fn serve(mut requests: mpsc::UnboundedReceiver<ControlRequest>, test_clock: bool) {
    while let Some(req) = requests.recv().await {
        let resp = match (req.method.as_str(), req.uri.path()) {
            ("POST", "/api/test/clock") if test_clock => advance_clock(&req.body),
            _ => Err(GatewayError::NotFound(format!("{} {}", req.method, req.uri.path()))),
        };
        let resp = resp.unwrap_or_else(|e| e.to_http());
        // The data plane may have given up waiting; nothing to do then.
        let _ = req.reply.send(resp);
    }
}

fn advance_clock(body: &[u8]) -> Result<http::Response<Bytes>, GatewayError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Advance {
        advance_secs: i64,
    }
    let a: Advance =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidRequest(format!("advance_secs: {e}")))?;
    let offset = crate::governance::clock::advance(a.advance_secs);
    tracing::warn!(offset, "test clock moved");
    let mut r = http::Response::new(Bytes::from(serde_json::json!({ "offset_secs": offset }).to_string()));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    Ok(r)
}
