//! Request routing, shared per-request steps (keys, fault triggers, latency,
//! injected failures) and response helpers.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use crate::body::{MockBody, SseBody, SseEvent};
use crate::stats::{self, WorkerStats};
use crate::{anthropic, openai};

/// Behaviour knobs from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub latency: Duration,
    pub stream_chunks: usize,
    pub chunk_delay: Duration,
    pub fail_rate: f64,
}

/// State shared by all workers.
pub struct Shared {
    pub cfg: Config,
    pub workers: Vec<Arc<WorkerStats>>,
    /// Number of failures injected by `--fail-rate` (even: 429, odd: 500).
    injected: AtomicU64,
}

impl Shared {
    pub fn new(cfg: Config, workers: usize) -> Self {
        Self { cfg, workers: (0..workers).map(|_| Arc::default()).collect(), injected: AtomicU64::new(0) }
    }
}

/// One worker's view: the shared state plus its own counters.
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub stats: Arc<WorkerStats>,
    worker: usize,
    next_id: AtomicU64,
}

impl Ctx {
    pub fn new(shared: Arc<Shared>, worker: usize) -> Self {
        let stats = shared.workers.get(worker).cloned().unwrap_or_default();
        Self { shared, stats, worker, next_id: AtomicU64::new(1) }
    }

    pub fn cfg(&self) -> &Config {
        &self.shared.cfg
    }

    /// A response id unique within this process, e.g. `chatcmpl-mock-0-17`.
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Relaxed);
        format!("{prefix}mock-{}-{n}", self.worker)
    }

    /// An SSE body with this worker's counters; `slow` forces 200 ms pauses.
    pub fn sse(&self, events: Vec<SseEvent>, slow: bool) -> Response<MockBody> {
        let delay = if slow { Duration::from_millis(200) } else { self.cfg().chunk_delay };
        let body = SseBody::new(events, delay, self.stats.clone());
        let mut resp = Response::new(MockBody::Sse(Box::new(body)));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }
}

/// Which provider's error shape to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    OpenAi,
    Anthropic,
}

pub type HandlerResult = anyhow::Result<Response<MockBody>>;

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub fn json_ok<T: Serialize>(value: &T) -> HandlerResult {
    Ok(json_response(StatusCode::OK, serde_json::to_vec(value)?))
}

/// An error in the given provider's shape; 429s carry `retry-after: 1`.
pub fn error(api: Api, status: StatusCode, message: &str) -> Response<MockBody> {
    let body = match api {
        Api::OpenAi => {
            let (kind, code) = match status.as_u16() {
                401 => ("invalid_request_error", Some("invalid_api_key")),
                404 => ("invalid_request_error", Some("unknown_url")),
                405 => ("invalid_request_error", Some("method_not_allowed")),
                429 => ("requests", Some("rate_limit_exceeded")),
                s if s >= 500 => ("server_error", None),
                _ => ("invalid_request_error", None),
            };
            serde_json::json!({
                "error": {"message": message, "type": kind, "param": null, "code": code}
            })
        }
        Api::Anthropic => {
            let kind = match status.as_u16() {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                s if s >= 500 => "api_error",
                _ => "invalid_request_error",
            };
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    let mut resp = json_response(status, body.to_string());
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn header_str(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = header_str(headers, AUTHORIZATION)?;
    v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::trim)
}

/// The API key a request carries: `Authorization: Bearer X` or `x-api-key: X`
/// (`x-api-key` first for the Anthropic API).
pub fn api_key(headers: &HeaderMap, api: Api) -> Option<&str> {
    let x = header_str(headers, "x-api-key");
    match api {
        Api::OpenAi => bearer(headers).or(x),
        Api::Anthropic => x.or_else(|| bearer(headers)),
    }
}

/// Counts the request under its key and applies the key triggers:
/// `bad…` → 401, `limited…` → 429.
pub fn check_key(ctx: &Ctx, api: Api, key: Option<&str>) -> Option<Response<MockBody>> {
    let key = key?;
    ctx.stats.count_key(key);
    if key.starts_with("bad") {
        Some(error(api, StatusCode::UNAUTHORIZED, "Incorrect API key provided (mock: key starts with 'bad')"))
    } else if key.starts_with("limited") {
        Some(error(api, StatusCode::TOO_MANY_REQUESTS, "Rate limit reached (mock: key starts with 'limited')"))
    } else {
        None
    }
}

pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, hyper::Error> {
    Ok(req.into_body().collect().await?.to_bytes())
}

/// Steps every inference request takes once its body is parsed: the
/// configured latency, the model-name fault triggers and `--fail-rate`.
/// Returns the error to answer with, if any.
pub async fn before_inference(ctx: &Ctx, api: Api, model: &str) -> Option<Response<MockBody>> {
    let latency = ctx.cfg().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if model.contains("error-500") {
        return Some(error(api, StatusCode::INTERNAL_SERVER_ERROR, "The server had an error (mock: model error-500)"));
    }
    if model.contains("error-429") {
        return Some(error(api, StatusCode::TOO_MANY_REQUESTS, "Rate limit reached (mock: model error-429)"));
    }
    if model.contains("error-400") {
        return Some(error(api, StatusCode::BAD_REQUEST, "Invalid request (mock: model error-400)"));
    }
    if model.contains("hang") {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let rate = ctx.cfg().fail_rate;
    if rate > 0.0 && fastrand::f64() < rate {
        let n = ctx.shared.injected.fetch_add(1, Relaxed);
        return Some(if n.is_multiple_of(2) {
            error(api, StatusCode::TOO_MANY_REQUESTS, "Rate limit reached (mock: injected failure)")
        } else {
            error(api, StatusCode::INTERNAL_SERVER_ERROR, "The server had an error (mock: injected failure)")
        });
    }
    None
}

/// True when the model name asks for a slow stream (200 ms between chunks).
pub fn is_slow_stream(model: &str) -> bool {
    model.contains("slow-stream")
}

/// Formats one SSE `data:` line pair.
pub fn sse_data<T: Serialize>(value: &T) -> serde_json::Result<Bytes> {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut v, value)?;
    v.extend_from_slice(b"\n\n");
    Ok(v.into())
}

/// Formats one named SSE event (`event: NAME\ndata: JSON\n\n`).
pub fn sse_event<T: Serialize>(name: &str, value: &T) -> serde_json::Result<Bytes> {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(b"event: ");
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(b"\ndata: ");
    serde_json::to_writer(&mut v, value)?;
    v.extend_from_slice(b"\n\n");
    Ok(v.into())
}

#[derive(Serialize)]
struct ModelEntry {
    id: &'static str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelEntry>,
}

const MODELS: &[&str] =
    &["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-3-5-haiku-latest", "claude-sonnet-4-5"];

fn models() -> HandlerResult {
    json_ok(&ModelList {
        object: "list",
        data: MODELS.iter().map(|id| ModelEntry { id, object: "model", created: 0, owned_by: "mock" }).collect(),
    })
}

enum Route {
    Chat,
    Embeddings,
    Models,
    Messages,
    Stats,
    Reset,
    Health,
    WrongMethod,
    NotFound,
}

fn route(method: &Method, path: &str) -> Route {
    match (path, method) {
        ("/v1/chat/completions", &Method::POST) => Route::Chat,
        ("/v1/embeddings", &Method::POST) => Route::Embeddings,
        ("/v1/models", &Method::GET) => Route::Models,
        ("/v1/messages", &Method::POST) => Route::Messages,
        ("/_mock/stats", &Method::GET) => Route::Stats,
        ("/_mock/reset", &Method::POST) => Route::Reset,
        ("/health", &Method::GET) => Route::Health,
        (
            "/v1/chat/completions"
            | "/v1/embeddings"
            | "/v1/models"
            | "/v1/messages"
            | "/_mock/stats"
            | "/_mock/reset"
            | "/health",
            _,
        ) => Route::WrongMethod,
        _ => Route::NotFound,
    }
}

/// The hyper service function.
pub async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<MockBody>, Infallible> {
    let route = route(req.method(), req.uri().path());
    if !matches!(route, Route::Stats | Route::Reset) {
        ctx.stats.requests.fetch_add(1, Relaxed);
    }
    let api = if req.uri().path() == "/v1/messages" { Api::Anthropic } else { Api::OpenAi };
    let result = match route {
        Route::Chat => openai::chat(&ctx, req).await,
        Route::Embeddings => openai::embeddings(&ctx, req).await,
        Route::Models => match check_key(&ctx, Api::OpenAi, api_key(req.headers(), Api::OpenAi)) {
            Some(resp) => Ok(resp),
            None => models(),
        },
        Route::Messages => anthropic::messages(&ctx, req).await,
        Route::Stats => json_ok(&stats::snapshot(&ctx.shared.workers)),
        Route::Reset => {
            stats::reset(&ctx.shared.workers);
            json_ok(&stats::snapshot(&ctx.shared.workers))
        }
        Route::Health => Ok(json_response(StatusCode::OK, &b"{\"status\":\"ok\"}"[..])),
        Route::WrongMethod => Ok(error(api, StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
        Route::NotFound => Ok(error(api, StatusCode::NOT_FOUND, "unknown path")),
    };
    Ok(result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "mock handler failed");
        error(api, StatusCode::INTERNAL_SERVER_ERROR, &format!("mock failure: {e}"))
    }))
}
