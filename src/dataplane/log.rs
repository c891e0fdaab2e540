//! One request's account as it goes: who, what, where, how it ended. Finishing it counts the
//! request in the metrics and pushes its audit record; dropping it unfinished records an abandon.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

use super::core::CoreCtx;
use crate::audit::{Outcome, RequestRecord};
use crate::auth::Principal;
use crate::metrics::RouteLabel;
use crate::providers::Usage;

/// Status recorded for a client that went away before its response was complete (nginx's 499).
pub const CLIENT_CLOSED: u16 = 499;

pub struct RequestLog {
    core: Rc<CoreCtx>,
    started: Instant,
    route: RouteLabel,
    peer: SocketAddr,
    pub request_id: uuid::Uuid,
    /// Health checks and scrapes are counted but not audited; control-plane paths are audited by
    /// the control plane, which knows who the caller is.
    audited: bool,
    done: bool,
    status: u16,
    pub error_type: Option<&'static str>,
    virtual_key: Option<Arc<str>>,
    user: Option<Arc<str>>,
    team: Option<Arc<str>>,
    customer: Option<Arc<str>>,
    pub provider: Option<Arc<str>>,
    pub model: Option<String>,
    pub stream: bool,
    pub attempts: u8,
    pub usage: Option<Usage>,
    /// What governance charged the request, in micro-dollars.
    pub cost_micros: Option<u64>,
    pub ttfb: Option<Duration>,
}

impl RequestLog {
    pub fn start(core: &Rc<CoreCtx>, route: RouteLabel, peer: SocketAddr, headers: &http::HeaderMap) -> Self {
        Self {
            core: core.clone(),
            started: Instant::now(),
            route,
            peer,
            request_id: request_id(headers),
            audited: !matches!(route, RouteLabel::Health | RouteLabel::Metrics | RouteLabel::Control),
            done: false,
            status: 0,
            error_type: None,
            virtual_key: None,
            user: None,
            team: None,
            customer: None,
            provider: None,
            model: None,
            stream: false,
            attempts: 0,
            usage: None,
            cost_micros: None,
            ttfb: None,
        }
    }

    pub fn request_id_header(&self) -> HeaderValue {
        let mut buf = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(self.request_id.as_hyphenated().encode_lower(&mut buf))
            .unwrap_or(HeaderValue::from_static("-"))
    }

    pub fn principal(&mut self, p: &Principal<'_>) {
        if let Some(k) = p.virtual_key() {
            self.virtual_key = Some(k.id.clone());
            self.user = k.user.clone();
            self.team = k.team.clone();
            self.customer = k.customer.clone();
        } else if let Some(u) = p.user() {
            self.user = Some(u.id.clone());
            self.team = u.team.clone();
            self.customer = u.customer.clone();
        }
    }

    /// Notes the provider and model that answered (a fallback's, when the first target failed).
    /// Usually they are the ones noted at routing, which are kept: no second clone or copy.
    pub fn served_by(&mut self, provider: &Arc<str>, model: &str) {
        if !self.provider.as_ref().is_some_and(|p| Arc::ptr_eq(p, provider)) {
            self.provider = Some(provider.clone());
        }
        if self.model.as_deref() != Some(model) {
            self.model = Some(model.to_string());
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Moves the account into a streamed body, which finishes it when the stream ends.
    pub fn hand_off(&mut self) -> RequestLog {
        let moved = RequestLog {
            core: self.core.clone(),
            started: self.started,
            route: self.route,
            peer: self.peer,
            request_id: self.request_id,
            audited: self.audited,
            done: false,
            status: self.status,
            error_type: self.error_type,
            virtual_key: self.virtual_key.take(),
            user: self.user.take(),
            team: self.team.take(),
            customer: self.customer.take(),
            provider: self.provider.take(),
            model: self.model.take(),
            stream: self.stream,
            attempts: self.attempts,
            usage: self.usage,
            cost_micros: self.cost_micros,
            ttfb: self.ttfb,
        };
        self.done = true;
        moved
    }

    /// Counts the request and hands its record to the control plane. Runs once, at the very end.
    pub fn finish(&mut self, status: u16, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        self.status = status;
        let elapsed = self.started.elapsed();
        self.core.metrics().request(self.route, status, elapsed);
        if !self.audited {
            return;
        }
        let at_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        self.core.record(RequestRecord {
            request_id: self.request_id,
            at_unix_ms,
            core: self.core.id as u16,
            route: self.route,
            status,
            error_type: self.error_type,
            outcome,
            client_ip: self.peer.ip(),
            virtual_key: self.virtual_key.take(),
            user: self.user.take(),
            team: self.team.take(),
            customer: self.customer.take(),
            provider: self.provider.take(),
            model: self.model.take(),
            stream: self.stream,
            attempts: self.attempts,
            usage: self.usage,
            cost_micros: self.cost_micros,
            latency_us: elapsed.as_micros() as u64,
            ttfb_us: self.ttfb.map(|d| d.as_micros() as u64),
        });
    }
}

impl Drop for RequestLog {
    /// The request future was dropped before it answered: the client hung up mid-request.
    fn drop(&mut self) {
        if !self.done {
            self.finish(CLIENT_CLOSED, Outcome::ClientClosed);
        }
    }
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The client's `x-request-id` when it is a UUID, else a fresh UUIDv7 (time-ordered, no shared state).
fn request_id(headers: &http::HeaderMap) -> uuid::Uuid {
    if let Some(id) =
        headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()).and_then(|s| uuid::Uuid::parse_str(s).ok())
    {
        return id;
    }
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut random = [0u8; 10];
    fastrand::fill(&mut random);
    uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
}
