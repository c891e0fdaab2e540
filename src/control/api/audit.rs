//! `/api/enterprise/audit/events` (filtered, cursor-paginated, newest first) and
//! `/api/enterprise/audit/verify` (walks the hash chain and names the first broken link).

use http::StatusCode;
use serde_json::json;

use super::{Api, ApiResult, json as reply, query};
use crate::error::GatewayError;
use crate::handoff::ControlRequest;
use crate::store::audit::AuditQuery;

pub(super) async fn route(api: &Api, req: &ControlRequest, what: &str) -> ApiResult {
    match what {
        "events" => events(api, req).await,
        "verify" => verify(api, req).await,
        _ => Err(GatewayError::NotFound(format!("GET {}", req.uri.path()))),
    }
}

/// `from`/`to` as Unix milliseconds or RFC 3339 times.
fn time_param(q: &std::collections::HashMap<String, String>, name: &str) -> Result<Option<i64>, GatewayError> {
    let Some(v) = q.get(name) else { return Ok(None) };
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(Some(ms));
    }
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| GatewayError::InvalidRequest(format!("{name}: expected Unix milliseconds or an RFC 3339 time")))
}

async fn with_store<T: Send + 'static>(
    api: &Api,
    f: impl FnOnce(&crate::store::Store) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, GatewayError> {
    let store = api.store.clone();
    tokio::task::spawn_blocking(move || {
        let store = match store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&store)
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))?
    .map_err(|e| GatewayError::Internal(e.to_string()))
}

async fn events(api: &Api, req: &ControlRequest) -> ApiResult {
    let q = query(req);
    let limit = match q.get("limit") {
        Some(v) => v.parse::<usize>().map_err(|_| GatewayError::InvalidRequest("limit: expected an integer".into()))?,
        None => 100,
    }
    .clamp(1, 1000);
    let cursor = match q.get("cursor") {
        Some(v) => Some(
            v.parse::<i64>().map_err(|_| GatewayError::InvalidRequest("cursor: not a cursor from this API".into()))?,
        ),
        None => None,
    };
    let text = |k: &str| q.get(k).cloned();
    let filter = AuditQuery {
        from_ms: time_param(&q, "from")?,
        to_ms: time_param(&q, "to")?,
        category: text("category"),
        r#type: text("type"),
        outcome: text("outcome"),
        user_id: text("user"),
        team_id: text("team"),
        customer_id: text("customer"),
        virtual_key_id: text("virtual_key"),
        before_seq: cursor,
        limit,
    };
    let mut rows = with_store(api, move |s| s.query_audit(&filter)).await?;
    let next = (rows.len() > limit).then(|| rows[limit - 1].seq);
    rows.truncate(limit);
    let events: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.event).unwrap_or_default();
            v["seq"] = r.seq.into();
            v["hash"] = hex::encode(&r.hash).into();
            v["prev_hash"] = hex::encode(&r.prev_hash).into();
            v
        })
        .collect();
    reply(
        StatusCode::OK,
        &json!({ "events": events, "count": events.len(), "next_cursor": next.map(|c| c.to_string()) }),
    )
}

async fn verify(api: &Api, req: &ControlRequest) -> ApiResult {
    let q = query(req);
    let (from, to) = (time_param(&q, "from")?, time_param(&q, "to")?);
    let key = api.hmac_key.clone();
    let v = with_store(api, move |s| s.verify_audit(from, to, key.as_deref())).await?;
    let broken = v.first_broken.map(|(seq, id, reason)| json!({ "seq": seq, "id": id, "reason": reason }));
    reply(
        StatusCode::OK,
        &json!({ "ok": broken.is_none(), "checked": v.checked, "first_broken": broken, "signed": api.hmac_key.is_some() }),
    )
}
