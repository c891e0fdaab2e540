//! The request path. Each `/v1` handler reads top to bottom as its named steps:
//! authenticate → route → authorize → admit → forward → account → audit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{GatewayBody, StreamBody, StreamMode};
use super::core::{CoreCtx, SnapRef};
use super::forward::{self, Endpoint, Sent};
use super::log::RequestLog;
use crate::audit::Outcome;
use crate::auth::Principal;
use crate::config::ProviderKind;
use crate::config::Unpriced;
use crate::error::GatewayError;
use crate::governance::admit::{Admission, Headroom};
use crate::governance::{access, clock, cost};
use crate::handoff::{ControlBody, ControlRequest};
use crate::metrics::RouteLabel;
use crate::providers::route::{self, Target};
use crate::providers::{anthropic, openai};

/// Largest provider response body the gateway buffers (non-streamed responses).
const UPSTREAM_BODY_LIMIT: usize = 64 * 1024 * 1024;
/// How long a control-plane path may take before the data plane gives up on it.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);
/// Output bound sent to Anthropic when neither the request nor the pricing table gives one.
const DEFAULT_ANTHROPIC_MAX_TOKENS: u64 = 4096;

type Reply = Result<Response<GatewayBody>, GatewayError>;

// Parsed once at compile time instead of on every response.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_HEIMDALL_PROVIDER: HeaderName = HeaderName::from_static("x-heimdall-provider");
const X_HEIMDALL_MODEL: HeaderName = HeaderName::from_static("x-heimdall-model");

/// Entry point for every request a core accepts.
pub async fn handle(
    core: Rc<CoreCtx>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<GatewayBody>, Infallible> {
    let route = classify(req.method(), req.uri().path());
    let mut log = RequestLog::start(&core, RouteLabel::from(&route), peer, req.headers());
    // The handlers' futures are boxed: hyper moves the future it is given, and inline they
    // would make it 3 KiB, copied on every request.
    let reply = match route {
        Classified::Chat => Box::pin(chat(&core, &mut log, req)).await,
        Classified::Embeddings => Box::pin(embeddings(&core, &mut log, req)).await,
        Classified::Models => models(&core, &mut log, &req),
        Classified::Health => Ok(health(&core)),
        Classified::Metrics => Ok(metrics(&core)),
        Classified::Control => Box::pin(control(&core, peer, req)).await,
        Classified::WrongMethod(allowed) => {
            Err(GatewayError::MethodNotAllowed(format!("{} takes {allowed}", req.uri().path())))
        }
        Classified::UnknownV1 => Err(GatewayError::NotFound(req.uri().path().to_string())),
    };
    let mut resp = reply.unwrap_or_else(|e| {
        log.error_type = Some(e.error_type());
        e.to_http().map(GatewayBody::full)
    });
    resp.headers_mut().insert(X_REQUEST_ID, log.request_id_header());
    // A streamed body finishes its own log when the stream ends.
    log.finish(resp.status().as_u16(), Outcome::Completed);
    Ok(resp)
}

enum Classified {
    Chat,
    Embeddings,
    Models,
    Health,
    Metrics,
    Control,
    WrongMethod(&'static str),
    UnknownV1,
}

impl From<&Classified> for RouteLabel {
    fn from(c: &Classified) -> Self {
        match c {
            Classified::Chat => RouteLabel::ChatCompletions,
            Classified::Embeddings => RouteLabel::Embeddings,
            Classified::Models => RouteLabel::Models,
            Classified::Health => RouteLabel::Health,
            Classified::Metrics => RouteLabel::Metrics,
            Classified::Control => RouteLabel::Control,
            Classified::WrongMethod(_) | Classified::UnknownV1 => RouteLabel::Unknown,
        }
    }
}

fn classify(method: &Method, path: &str) -> Classified {
    let want =
        |m: Method, c: Classified, name: &'static str| if method == m { c } else { Classified::WrongMethod(name) };
    match path {
        "/v1/chat/completions" => want(Method::POST, Classified::Chat, "POST"),
        "/v1/embeddings" => want(Method::POST, Classified::Embeddings, "POST"),
        "/v1/models" => want(Method::GET, Classified::Models, "GET"),
        "/health" => want(Method::GET, Classified::Health, "GET"),
        "/metrics" => want(Method::GET, Classified::Metrics, "GET"),
        p if p.starts_with("/v1/") => Classified::UnknownV1,
        _ => Classified::Control,
    }
}

/// `POST /v1/chat/completions`, streamed or not.
async fn chat(core: &Rc<CoreCtx>, log: &mut RequestLog, req: Request<Incoming>) -> Reply {
    let snap = core.snapshot();
    let principal = core.authenticate(&snap, req.headers())?;
    log.principal(&principal);
    let body = read_body(req.into_body(), snap.server.max_body_bytes).await?;
    let peek = openai::peek(&body)?;
    log.stream = peek.stream;
    log.model = Some(peek.model.to_string());
    let targets = route_and_authorize(&snap, &principal, &peek.model, &peek.fallbacks)?;
    log.provider = Some(targets[0].provider.name.clone());
    let mut admission = admit(&snap, &principal, &targets, peek.max_tokens, body.len())?;
    let sent = forward::forward(
        core,
        &targets,
        Endpoint::Chat,
        |t| match t.provider.kind {
            ProviderKind::Openai => openai::prepare(&body, &peek, t.model),
            ProviderKind::Anthropic => anthropic_body(&snap, &body, t),
        },
        log,
    )
    .await;
    let sent = or_release(sent, &mut admission)?;
    let target = &targets[sent.target];
    log.served_by(&target.provider.name, target.model);
    if peek.stream {
        Ok(stream_reply(core, log, &snap, target, sent, peek.include_usage, admission))
    } else {
        whole_reply(core, log, &snap, target, sent, admission).await
    }
}

/// `POST /v1/embeddings` (OpenAI-kind providers only).
async fn embeddings(core: &Rc<CoreCtx>, log: &mut RequestLog, req: Request<Incoming>) -> Reply {
    let snap = core.snapshot();
    let principal = core.authenticate(&snap, req.headers())?;
    log.principal(&principal);
    let body = read_body(req.into_body(), snap.server.max_body_bytes).await?;
    let peek = openai::peek(&body)?;
    log.model = Some(peek.model.to_string());
    let targets = route_and_authorize(&snap, &principal, &peek.model, &peek.fallbacks)?;
    log.provider = Some(targets[0].provider.name.clone());
    let mut admission = admit(&snap, &principal, &targets, Some(0), body.len())?;
    let sent =
        forward::forward(core, &targets, Endpoint::Embeddings, |t| openai::prepare(&body, &peek, t.model), log).await;
    let sent = or_release(sent, &mut admission)?;
    let target = &targets[sent.target];
    log.served_by(&target.provider.name, target.model);
    whole_reply(core, log, &snap, target, sent, admission).await
}

/// `GET /v1/models`: what the caller may use, in OpenAI's list shape.
fn models(core: &Rc<CoreCtx>, log: &mut RequestLog, req: &Request<Incoming>) -> Reply {
    let snap = core.snapshot();
    let principal = core.authenticate(&snap, req.headers())?;
    log.principal(&principal);
    let mut data = Vec::new();
    for (i, p) in snap.providers.iter().enumerate() {
        for m in &p.models {
            let target = Target { provider_index: i, provider: p, model: m, prefixed: false };
            if access::authorize(&snap, &principal, &target).is_err() {
                continue;
            }
            // The bare name is the id when it resolves here; otherwise only `provider/model` reaches it.
            let id = if snap.provider_for_bare_model(m) == Some(i) { m.clone() } else { format!("{}/{m}", p.name) };
            data.push(serde_json::json!({ "id": id, "object": "model", "created": 0, "owned_by": &*p.name }));
        }
    }
    json_response(StatusCode::OK, serde_json::json!({ "object": "list", "data": data }).to_string())
}

fn health(core: &Rc<CoreCtx>) -> Response<GatewayBody> {
    let snap = core.snapshot();
    let draining = *core.shared.shutdown.borrow();
    let body = serde_json::json!({
        "status": if draining { "draining" } else { "ok" },
        "config_version": snap.version,
        "config_sha256": hex::encode(snap.content_hash),
        "workers": core.shared.metrics.cores.len(),
    });
    let mut r = Response::new(GatewayBody::full(body.to_string()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn metrics(core: &Rc<CoreCtx>) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(core.shared.metrics.render()));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// Hands a path the data plane does not own to the control plane, and relays its answer.
async fn control(core: &Rc<CoreCtx>, peer: SocketAddr, req: Request<Incoming>) -> Reply {
    let limit = core.snapshot().server.max_body_bytes;
    let (parts, body) = req.into_parts();
    let body = read_body(body, limit).await?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = ControlRequest { method: parts.method, uri: parts.uri, headers: parts.headers, body, peer, reply };
    core.shared
        .control_tx
        .send(request)
        .map_err(|_| GatewayError::Unavailable("the control plane is not running".into()))?;
    match monoio::time::timeout(CONTROL_TIMEOUT, answer).await {
        Ok(Ok(resp)) => Ok(resp.map(|b| match b {
            ControlBody::Full(bytes) => GatewayBody::full(bytes),
            ControlBody::Stream(chunks) => GatewayBody::Channel(chunks),
        })),
        Ok(Err(_)) => Err(GatewayError::Unavailable("the control plane dropped the request".into())),
        Err(_) => Err(GatewayError::Unavailable("the control plane did not answer in time".into())),
    }
}

/// The requested model and its fallbacks; inline for the usual one or two.
type Targets<'s, 'r> = smallvec::SmallVec<[Target<'s, 'r>; 2]>;

/// route + authorize: the requested model and every fallback, each checked against the allow-lists.
fn route_and_authorize<'s, 'r>(
    snap: &'s SnapRef,
    principal: &Principal<'s>,
    model: &'r str,
    fallbacks: &'r [std::borrow::Cow<'r, str>],
) -> Result<Targets<'s, 'r>, GatewayError> {
    let mut targets = Targets::new();
    let primary = route::resolve(snap, model)?;
    access::authorize(snap, principal, &primary)?;
    targets.push(primary);
    for f in fallbacks {
        let t = route::resolve(snap, f).map_err(|e| GatewayError::InvalidRequest(format!("fallback '{f}': {e}")))?;
        access::authorize(snap, principal, &t)?;
        targets.push(t);
    }
    Ok(targets)
}

fn anthropic_body(snap: &SnapRef, body: &Bytes, t: &Target<'_, '_>) -> Result<Bytes, GatewayError> {
    let doc: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| GatewayError::InvalidRequest(format!("request body is not valid JSON: {e}")))?;
    let max =
        snap.price(&t.provider.name, t.model).and_then(|p| p.max_output_tokens).unwrap_or(DEFAULT_ANTHROPIC_MAX_TOKENS);
    anthropic::request_to_anthropic(&doc, t.model, max).map(Bytes::from).map_err(translate_error)
}

fn translate_error(e: anthropic::TranslateError) -> GatewayError {
    match e {
        anthropic::TranslateError::InvalidRequest(m) => GatewayError::InvalidRequest(m),
        other => GatewayError::Upstream(other.to_string()),
    }
}

fn stream_reply(
    core: &Rc<CoreCtx>,
    log: &mut RequestLog,
    snap: &SnapRef,
    target: &Target<'_, '_>,
    sent: Sent,
    include_usage: bool,
    admission: Option<Admission<SnapRef>>,
) -> Response<GatewayBody> {
    let mode = match target.provider.kind {
        ProviderKind::Openai => StreamMode::OpenAi(openai::StreamFilter::new(include_usage)),
        ProviderKind::Anthropic => {
            StreamMode::Anthropic(Box::new(anthropic::StreamTranslator::new(target.model, include_usage)))
        }
    };
    let room = admission.as_ref().map(Admission::headroom);
    let account =
        admission.map(|a| Account { admission: a, price: snap.price(&target.provider.name, target.model).copied() });
    let body = StreamBody::new(
        core.clone(),
        sent.response.body,
        mode,
        target.provider.stream_idle_timeout,
        log.hand_off(),
        account,
    );
    let mut r = Response::new(GatewayBody::Stream(Box::new(body)));
    let h = r.headers_mut();
    h.reserve(RESPONSE_HEADERS);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let mut values = BytesMut::with_capacity(VALUES_ROOM);
    add_route_headers(h, target, &mut values);
    if let Some(room) = room {
        add_limit_headers(h, &room, &mut values);
    }
    r
}

/// account: a non-streamed response is read whole, its usage taken, translated when needed,
/// and its real cost replaces the reservation.
async fn whole_reply(
    core: &Rc<CoreCtx>,
    log: &mut RequestLog,
    snap: &SnapRef,
    target: &Target<'_, '_>,
    sent: Sent,
    admission: Option<Admission<SnapRef>>,
) -> Reply {
    let provider = target.provider;
    let mut upstream = sent.response.body;
    // Usually the whole body came with the head: no IO, so no timer. Otherwise the (boxed, to
    // keep every request's future small) timed read.
    let read = if upstream.fully_buffered() {
        Ok(upstream.collect(UPSTREAM_BODY_LIMIT).await)
    } else {
        Box::pin(monoio::time::timeout(provider.timeout, upstream.collect(UPSTREAM_BODY_LIMIT))).await
    };
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        // The provider did (some) work: usage is unknown, so the reservation stays spent.
        Ok(Err(e)) => {
            return Err(GatewayError::Upstream(format!("provider '{}' sent an unreadable body: {e}", provider.name)));
        }
        Err(_) => {
            return Err(GatewayError::UpstreamTimeout(format!(
                "provider '{}' did not finish its response in time",
                provider.name
            )));
        }
    };
    core.pool.give_back(upstream);
    log.ttfb = Some(log.elapsed());
    let bytes = match provider.kind {
        ProviderKind::Openai => {
            log.usage = openai::body_usage(&bytes);
            bytes
        }
        ProviderKind::Anthropic => {
            let (translated, usage) =
                anthropic::response_from_anthropic(&bytes, target.model).map_err(translate_error)?;
            log.usage = Some(usage);
            Bytes::from(translated)
        }
    };
    let room = admission.map(|a| {
        let (room, charged) =
            Account { admission: a, price: snap.price(&provider.name, target.model).copied() }.close(log.usage);
        log.cost_micros = Some(charged);
        room
    });
    let mut r = json_response(StatusCode::OK, bytes)?;
    let mut values = BytesMut::with_capacity(VALUES_ROOM);
    add_route_headers(r.headers_mut(), target, &mut values);
    if let Some(room) = room {
        add_limit_headers(r.headers_mut(), &room, &mut values);
    }
    Ok(r)
}

/// Room for the model name and the seven limit values: the header values a response computes
/// are written into one buffer and handed out as slices of it, one allocation for all of them.
const VALUES_ROOM: usize = 192;

fn add_route_headers(h: &mut http::HeaderMap, target: &Target<'_, '_>, values: &mut BytesMut) {
    h.insert(X_HEIMDALL_PROVIDER, target.provider.name_header.clone());
    values.extend_from_slice(target.model.as_bytes());
    if let Ok(v) = HeaderValue::from_maybe_shared(values.split().freeze()) {
        h.insert(X_HEIMDALL_MODEL, v);
    }
}

/// Headers a proxied response carries: content type, request id, route (2), limits (7), and
/// the ones hyper adds (date, length).
const RESPONSE_HEADERS: usize = 16;

// The rate-limit headers OpenAI clients read, for the tightest limit on the caller's chain.
const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
const BUDGET_REMAINING: HeaderName = HeaderName::from_static("x-heimdall-budget-remaining-usd");

fn add_limit_headers(h: &mut http::HeaderMap, room: &Headroom, values: &mut BytesMut) {
    use super::upstream::wire::put_u64;
    // Digits by hand: core::fmt and a String per value cost more than the rest of this.
    let mut put = |name: HeaderName, write: &dyn Fn(&mut BytesMut)| {
        write(values);
        if let Ok(v) = HeaderValue::from_maybe_shared(values.split().freeze()) {
            h.insert(name, v);
        }
    };
    let seconds = |n: u64| {
        move |b: &mut BytesMut| {
            put_u64(b, n);
            b.extend_from_slice(b"s");
        }
    };
    if let Some((limit, remaining, reset)) = room.requests {
        put(LIMIT_REQUESTS, &|b| put_u64(b, limit));
        put(REMAINING_REQUESTS, &|b| put_u64(b, remaining));
        put(RESET_REQUESTS, &seconds(reset));
    }
    if let Some((limit, remaining, reset)) = room.tokens {
        put(LIMIT_TOKENS, &|b| put_u64(b, limit));
        put(REMAINING_TOKENS, &|b| put_u64(b, remaining));
        put(RESET_TOKENS, &seconds(reset));
    }
    if let Some(micros) = room.budget_remaining {
        put(BUDGET_REMAINING, &|b| {
            put_u64(b, micros / 1_000_000);
            let fraction = micros % 1_000_000 + 1_000_000;
            put_u64(b, fraction);
            // "1xxxxxx" → ".xxxxxx": six digits with their leading zeros.
            let dot = b.len() - 7;
            b[dot] = b'.';
        });
    }
}

/// admit: the worst-case cost of the request (the dearest of its targets) is reserved at every
/// level of the caller's chain, after every rate limit on it has counted the request.
fn admit(
    snap: &SnapRef,
    principal: &Principal<'_>,
    targets: &[Target<'_, '_>],
    max_tokens: Option<u64>,
    body_len: usize,
) -> Result<Option<Admission<SnapRef>>, GatewayError> {
    let mut reserve = 0;
    for t in targets {
        match snap.price(&t.provider.name, t.model) {
            Some(p) => reserve = reserve.max(cost::micros(p, cost::worst_case_usage(body_len, max_tokens, Some(p)))),
            None if snap.unpriced == Unpriced::AllowFree => {}
            None => return Err(GatewayError::UnpricedModel(t.model.to_string())),
        }
    }
    let Some(chain) = principal.chain() else { return Ok(None) };
    crate::governance::admit::admit(snap.clone(), chain, reserve, clock::now()).map(Some)
}

/// A request that failed before a provider answered cost nothing: its reservation goes back.
fn or_release<T>(r: Result<T, GatewayError>, admission: &mut Option<Admission<SnapRef>>) -> Result<T, GatewayError> {
    if r.is_err()
        && let Some(a) = admission.take()
    {
        a.release();
    }
    r
}

/// What a finished request is charged: its usage at the serving model's price.
pub struct Account {
    admission: Admission<SnapRef>,
    price: Option<crate::snapshot::Price>,
}

impl Account {
    /// Settles with the real cost when usage is known; otherwise the reservation stays spent.
    /// Returns the room left and what the request was charged (micro-dollars).
    pub fn close(self, usage: Option<crate::providers::Usage>) -> (Headroom, u64) {
        match usage {
            Some(u) => {
                let cost = self.price.map_or(0, |p| cost::micros(&p, u));
                (self.admission.settle_and_headroom(cost, u.prompt_tokens + u.completion_tokens), cost)
            }
            None => {
                let charged = self.admission.reserved();
                let room = self.admission.headroom();
                drop(self.admission);
                (room, charged)
            }
        }
    }
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(GatewayBody::full(body));
    *r.status_mut() = status;
    // Room for the route and limit headers, so the map never grows and rehashes.
    r.headers_mut().reserve(RESPONSE_HEADERS);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// Reads a request body, refusing it (413) as soon as it passes `limit`. A body that arrives in
/// one piece (the usual case) is that piece, not a copy.
async fn read_body(body: Incoming, limit: u64) -> Result<Bytes, GatewayError> {
    use http_body::Body as _;
    if body.size_hint().lower() > limit {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut more: Option<BytesMut> = None;
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| GatewayError::InvalidRequest(format!("could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        len += data.len() as u64;
        if len > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        match &mut more {
            Some(all) => all.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                // Room for what came and what the length says is still to come.
                let mut all = BytesMut::with_capacity((len + body.size_hint().lower()).min(limit) as usize);
                all.extend_from_slice(&first);
                all.extend_from_slice(&data);
                more = Some(all);
            }
        }
    }
    Ok(more.map_or(first, BytesMut::freeze))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_headers_carry_the_tightest_limits_and_the_budget_in_dollars() {
        let room =
            Headroom { requests: Some((100, 99, 60)), tokens: Some((5000, 0, 1)), budget_remaining: Some(12_000_050) };
        let mut h = http::HeaderMap::new();
        add_limit_headers(&mut h, &room, &mut BytesMut::new());
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("missing").to_string();
        assert_eq!(get("x-ratelimit-limit-requests"), "100");
        assert_eq!(get("x-ratelimit-remaining-requests"), "99");
        assert_eq!(get("x-ratelimit-reset-requests"), "60s");
        assert_eq!(get("x-ratelimit-limit-tokens"), "5000");
        assert_eq!(get("x-ratelimit-remaining-tokens"), "0");
        assert_eq!(get("x-ratelimit-reset-tokens"), "1s");
        assert_eq!(get("x-heimdall-budget-remaining-usd"), "12.000050");
    }

    #[test]
    fn no_limits_means_no_limit_headers() {
        let mut h = http::HeaderMap::new();
        add_limit_headers(
            &mut h,
            &Headroom { requests: None, tokens: None, budget_remaining: Some(0) },
            &mut BytesMut::new(),
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h.get(BUDGET_REMAINING).map(|v| v.as_bytes()), Some(&b"0.000000"[..]));
    }
}
