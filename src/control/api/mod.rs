//! The management API on the control plane: routing of `/api/*`, admin authentication, and the
//! JSON replies. One file per area; every error goes through the one error mapping.

mod audit;
mod governance;
mod identity;

pub use identity::{Logins, provision_users};

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use super::catalog::{self, Catalog};
use crate::auth::rbac::{Op, Resource};
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
    /// Sign-ins sent to an identity provider and not back yet.
    pub logins: Arc<Logins>,
    /// For the identity providers' token and group endpoints.
    pub http: reqwest::Client,
    /// Seals refresh tokens at rest.
    pub sealer: Arc<crate::identity::Sealer>,
}

pub type ApiResult = Result<http::Response<Bytes>, GatewayError>;

impl Api {
    /// Answers one handed-over request.
    pub async fn handle(&self, req: &ControlRequest) -> http::Response<ControlBody> {
        let segments: Vec<&str> = req.uri.path().trim_end_matches('/').split('/').skip(1).collect();
        if req.method == http::Method::GET && segments == ["api", "enterprise", "audit", "export"] {
            let allowed = match identity::caller(self, req).await {
                Ok(c) => c.may(Resource::Audit, Op::Export).map(|()| c),
                Err(e) => Err(e),
            };
            return match allowed {
                Ok(c) => audit::export(self, req, &c).unwrap_or_else(|e| e.to_http().map(ControlBody::Full)),
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
            ("GET", ["login"]) => identity::login(self, req),
            ("GET", ["auth", "callback"]) => identity::callback(self, req).await,
            ("POST", ["logout"]) => identity::logout(self, req).await,
            ("GET", ["api", "identity", "session"]) => identity::whoami(self, req).await,
            (_, ["api", "identity", "providers", rest @ ..]) => {
                let caller = identity::caller(self, req).await?;
                caller.may(Resource::Identity, if method == "GET" { Op::Read } else { Op::Write })?;
                let path: Vec<&str> = std::iter::once("identity-providers").chain(rest.iter().copied()).collect();
                governance::route(self, req, &caller, method, &path).await
            }
            ("GET", ["api", "governance", "virtual-keys", "quota"]) => governance::quota(self, req),
            (_, ["api", "governance", rest @ ..]) => {
                let caller = identity::caller(self, req).await?;
                let resource = match rest {
                    [_, _, "usage"] => Resource::Usage,
                    [kind, ..] => match catalog::Kind::from_path(kind) {
                        Some(catalog::Kind::Customer) => Resource::Customers,
                        Some(catalog::Kind::Team) => Resource::Teams,
                        Some(catalog::Kind::User) => Resource::Users,
                        Some(catalog::Kind::VirtualKey) => Resource::VirtualKeys,
                        Some(catalog::Kind::IdentityProvider) => Resource::Identity,
                        None => return Err(GatewayError::NotFound(format!("{method} {}", req.uri.path()))),
                    },
                    [] => return Err(GatewayError::NotFound(format!("{method} {}", req.uri.path()))),
                };
                caller.may(resource, if method == "GET" { Op::Read } else { Op::Write })?;
                governance::route(self, req, &caller, method, rest).await
            }
            ("GET", ["api", "enterprise", "audit", what]) => {
                identity::caller(self, req).await?.may(Resource::Audit, Op::Read)?;
                audit::route(self, req, what).await
            }
            _ => Err(GatewayError::NotFound(format!("{method} {}", req.uri.path()))),
        }
    }

    /// Runs `f` on the store (short queries; the control plane's own thread waits for it).
    pub fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = match self.store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut store)
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
