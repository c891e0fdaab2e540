//! Forwarding one request: pick a key, send, retry with backoff on another key after a 429, 5xx,
//! refused key or connect error, then move on to the fallbacks. Returns the first 2xx response.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use super::core::CoreCtx;
use super::log::RequestLog;
use super::upstream::{Response, wire};
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::metrics::UpstreamErrorKind;
use crate::providers::anthropic;
use crate::providers::route::Target;
use crate::snapshot::{Provider, ProviderKey};

/// Which provider endpoint an attempt calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Embeddings,
}

/// The response of the attempt that succeeded.
pub struct Sent {
    pub response: Response,
    /// Index into the targets: 0 is the requested model, then the fallbacks in order.
    pub target: usize,
}

/// Largest error body read from a provider (to quote its message).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Tries each target in turn. `body_for` builds the provider-specific body of a target.
/// When every target fails, the requested model's error is returned (the fallbacks' are logged).
pub async fn forward(
    core: &CoreCtx,
    targets: &[Target<'_, '_>],
    endpoint: Endpoint,
    mut body_for: impl FnMut(&Target<'_, '_>) -> Result<Bytes, GatewayError>,
    log: &mut RequestLog,
) -> Result<Sent, GatewayError> {
    let mut first_error = None;
    for (index, target) in targets.iter().enumerate() {
        let body = body_for(target)?;
        match attempt_target(core, target.provider, endpoint, &body, log).await {
            Ok(response) => return Ok(Sent { response, target: index }),
            Err(e @ GatewayError::ProviderRejected { .. }) if index == 0 => return Err(e),
            Err(e) => {
                tracing::debug!(provider = %target.provider.name, model = target.model, error = %e, "target failed");
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| GatewayError::Internal("no target to forward to".into())))
}

async fn attempt_target(
    core: &CoreCtx,
    provider: &Provider,
    endpoint: Endpoint,
    body: &Bytes,
    log: &mut RequestLog,
) -> Result<Response, GatewayError> {
    let path = match endpoint {
        Endpoint::Chat => provider.chat_path.as_str(),
        Endpoint::Embeddings => provider.embeddings_path.as_deref().ok_or_else(|| {
            GatewayError::InvalidRequest(format!("provider '{}' does not serve embeddings", provider.name))
        })?,
    };
    let metrics = core.metrics();
    let mut tried: u64 = 0;
    // An Option, not a placeholder error: building one would allocate on every request.
    let mut last = None;
    for attempt in 0..=provider.max_retries {
        let key = pick_key(&provider.keys, tried);
        tried |= 1u64 << (key % 64);
        let req = build_request(provider, path, &provider.keys[key], body);
        log.attempts = log.attempts.saturating_add(1);
        let sent = monoio::time::timeout(
            provider.timeout,
            core.pool.send(&provider.origin, provider.connect_timeout, provider.pool_max_idle, req),
        )
        .await;
        let mut wait = backoff(provider, attempt);
        match sent {
            Err(_) => {
                metrics.upstream_error(UpstreamErrorKind::Timeout);
                // Waiting as long again on another key would double a latency the client already paid.
                return Err(GatewayError::UpstreamTimeout(format!(
                    "provider '{}' did not answer within {:?}",
                    provider.name, provider.timeout
                )));
            }
            Ok(Err(e)) => {
                metrics.upstream_error(UpstreamErrorKind::Connect);
                last = Some(GatewayError::Upstream(format!("provider '{}' is unreachable: {e}", provider.name)));
            }
            Ok(Ok(resp)) => {
                let status = resp.status;
                if status.is_success() {
                    return Ok(resp);
                }
                let retry_after = resp.retry_after;
                // Boxed: the refused path is rare, and inline its future would grow every request's.
                let message = Box::pin(error_message(core, provider, resp)).await;
                match status {
                    StatusCode::TOO_MANY_REQUESTS => {
                        metrics.upstream_error(UpstreamErrorKind::RateLimited);
                        if let Some(secs) = retry_after {
                            wait = wait.max(Duration::from_secs(secs)).min(provider.retry_backoff_max);
                        }
                        last = Some(GatewayError::RateLimited {
                            message: format!("provider '{}' is rate limiting: {message}", provider.name),
                            retry_after_secs: retry_after.unwrap_or(1),
                        });
                    }
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                        metrics.upstream_error(UpstreamErrorKind::KeyRefused);
                        wait = Duration::ZERO;
                        last = Some(GatewayError::Upstream(format!(
                            "provider '{}' refused the gateway's key ({}): {message}",
                            provider.name,
                            status.as_u16()
                        )));
                    }
                    s if s.is_server_error() => {
                        metrics.upstream_error(UpstreamErrorKind::ServerError);
                        last = Some(GatewayError::Upstream(format!(
                            "provider '{}' failed ({}): {message}",
                            provider.name,
                            s.as_u16()
                        )));
                    }
                    s => {
                        metrics.upstream_error(UpstreamErrorKind::ClientError);
                        return Err(GatewayError::ProviderRejected {
                            status: s.as_u16(),
                            message: format!("provider '{}': {message}", provider.name),
                        });
                    }
                }
            }
        }
        if attempt < provider.max_retries && !wait.is_zero() {
            monoio::time::sleep(wait).await;
        }
    }
    Err(last.unwrap_or_else(|| GatewayError::Internal("no attempt made".into())))
}

/// The provider's request: its endpoint, our key for it, the body. The path came from a parsed
/// URI, so it fits a request line as it is.
fn build_request(provider: &Provider, path: &str, key: &ProviderKey, body: &[u8]) -> Bytes {
    let authority = provider.origin.authority.as_bytes();
    let key = key.header.as_bytes();
    match provider.kind {
        ProviderKind::Openai => wire::post(path, authority, &[("authorization", key)], body),
        ProviderKind::Anthropic => wire::post(
            path,
            authority,
            &[("x-api-key", key), ("anthropic-version", anthropic::ANTHROPIC_VERSION.as_bytes())],
            body,
        ),
    }
}

/// Reads a refused response's body (bounded) for its message, and keeps the connection if it can.
async fn error_message(core: &CoreCtx, provider: &Provider, mut resp: Response) -> String {
    let read = monoio::time::timeout(provider.timeout, resp.body.collect(ERROR_BODY_LIMIT)).await;
    let body = match read {
        Ok(Ok(body)) => {
            core.pool.give_back(resp.body);
            body
        }
        _ => return "(no readable error body)".into(),
    };
    match provider.kind {
        ProviderKind::Anthropic => anthropic::error_message(&body),
        ProviderKind::Openai => openai_error_message(&body),
    }
}

fn openai_error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        message: String,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(e) => e.error.message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
    }
}

/// Weighted choice among keys not yet tried (all keys once every one was tried). Walks the
/// keys instead of collecting the candidates: it runs on every request.
fn pick_key(keys: &[ProviderKey], tried: u64) -> usize {
    let untried = |i: usize| i >= 64 || tried & (1u64 << i) == 0;
    let any_untried = (0..keys.len()).any(untried);
    let candidate = |i: &usize| !any_untried || untried(*i);
    let total: f64 = (0..keys.len()).filter(candidate).map(|i| keys[i].weight).sum();
    let mut r = fastrand::f64() * total;
    let mut last = 0;
    for i in (0..keys.len()).filter(candidate) {
        r -= keys[i].weight;
        if r <= 0.0 {
            return i;
        }
        last = i;
    }
    last
}

/// Exponential backoff with ±25 % jitter, capped.
fn backoff(provider: &Provider, attempt: u32) -> Duration {
    let base = provider.retry_backoff.saturating_mul(1u32 << attempt.min(16)).min(provider.retry_backoff_max);
    base.mul_f64(0.75 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn keys(weights: &[f64]) -> Vec<ProviderKey> {
        weights.iter().map(|&weight| ProviderKey { header: HeaderValue::from_static("k"), weight }).collect()
    }

    #[test]
    fn a_retry_never_picks_a_key_already_tried_while_others_remain() {
        let ks = keys(&[1.0, 1.0, 1.0]);
        for _ in 0..200 {
            assert_eq!(pick_key(&ks, 0b011), 2);
        }
    }

    #[test]
    fn once_every_key_was_tried_any_key_may_be_picked_again() {
        let ks = keys(&[1.0, 1.0]);
        let picked: std::collections::HashSet<usize> = (0..200).map(|_| pick_key(&ks, 0b11)).collect();
        assert_eq!(picked.len(), 2, "{picked:?}");
    }

    #[test]
    fn weights_steer_the_choice() {
        let ks = keys(&[9.0, 1.0]);
        let firsts = (0..2000).filter(|_| pick_key(&ks, 0) == 0).count();
        assert!(firsts > 1600, "{firsts}");
    }

    #[test]
    fn openai_error_messages_are_quoted() {
        assert_eq!(openai_error_message(br#"{"error":{"message":"bad thing","type":"x"}}"#), "bad thing");
        assert_eq!(openai_error_message(b"plain"), "plain");
    }
}
