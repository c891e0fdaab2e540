//! The management API on the control plane: routing of `/api/*`, admin authentication, and the
//! JSON replies. One file per area; every error goes through the one error mapping.

mod audit;
mod governance;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use super::catalog::Catalog;
use crate::error::GatewayError;
use crate::handoff::{ControlBody, ControlRequest};
use crate::state::Shared;
use crate::store::Store;

/// What the API handlers reach: the published state, the catalog snapshots are built from, and the store.
pub struct Api {
    pub shared: Arc<Shared>,
    pub catalog: Arc<Catalog>,
    pub store: Arc<std::sync::Mutex<Store>>,
    /// Events the API raises (admin changes, exports) go to the audit writer through here.
    pub audit: tokio::sync::mpsc::UnboundedSender<crate::audit::event::AuditEvent>,
    pub hmac_key: Option<Arc<[u8]>>,
    /// `HEIMDALL_TEST_CLOCK=1` at start: mounts `POST /api/test/clock` (tests only).
    pub test_clock: bool,
}

pub type ApiResult = Result<http::Response<Bytes>, GatewayError>;

impl Api {
    /// Answers one handed-over request.
    pub async fn handle(&self, req: &ControlRequest) -> http::Response<ControlBody> {
        let segments: Vec<&str> = req.uri.path().trim_end_matches('/').split('/').skip(1).collect();
        if req.method == http::Method::GET && segments == ["api", "enterprise", "audit", "export"] {
            return match self.authorize_admin(req) {
                Ok(()) => audit::export(self, req).unwrap_or_else(|e| e.to_http().map(ControlBody::Full)),
                Err(e) => e.to_http().map(ControlBody::Full),
            };
        }
        self.route(req).await.unwrap_or_else(|e| e.to_http()).map(ControlBody::Full)
    }

    async fn route(&self, req: &ControlRequest) -> ApiResult {
        let path = req.uri.path().trim_end_matches('/');
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let method = req.method.as_str();
        match (method, segments.as_slice()) {
            ("POST", ["api", "test", "clock"]) if self.test_clock => advance_clock(&req.body),
            ("GET", ["api", "governance", "virtual-keys", "quota"]) => governance::quota(self, req),
            (_, ["api", "governance", ..]) => {
                self.authorize_admin(req)?;
                governance::route(self, req, method, &segments[2..]).await
            }
            ("GET", ["api", "enterprise", "audit", what]) => {
                self.authorize_admin(req)?;
                audit::route(self, req, what).await
            }
            _ => Err(GatewayError::NotFound(format!("{method} {}", req.uri.path()))),
        }
    }

    /// The bootstrap credential: `Authorization: Bearer <server.admin_token>` (SSO and RBAC replace it later).
    fn authorize_admin(&self, req: &ControlRequest) -> Result<(), GatewayError> {
        let snap = self.shared.snapshot.load();
        let Some(expected) = snap.server.admin_token.as_deref() else {
            return Err(GatewayError::UserNotAuthorized(
                "the management API is closed: set server.admin_token to open it".into(),
            ));
        };
        let Some(sent) = crate::auth::credential(&req.headers) else {
            return Err(GatewayError::AuthenticationRequired);
        };
        // Compare digests so the comparison time says nothing about the token.
        if crate::auth::hash_key(sent) != crate::auth::hash_key(expected) {
            return Err(GatewayError::UserNotAuthorized("the admin token was not accepted".into()));
        }
        Ok(())
    }
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> ApiResult {
    let mut r = http::Response::new(Bytes::from(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

pub fn query(req: &ControlRequest) -> HashMap<String, String> {
    req.uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

fn advance_clock(body: &[u8]) -> ApiResult {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Advance {
        advance_secs: i64,
    }
    let a: Advance =
        serde_json::from_slice(body).map_err(|e| GatewayError::InvalidRequest(format!("advance_secs: {e}")))?;
    let offset = crate::governance::clock::advance(a.advance_secs);
    tracing::warn!(offset, "test clock moved");
    json(StatusCode::OK, &serde_json::json!({ "offset_secs": offset }))
}
