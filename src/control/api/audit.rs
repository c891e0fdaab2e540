//! `/api/enterprise/audit/events` (filtered, cursor-paginated, newest first) and
//! `/api/enterprise/audit/verify` (walks the hash chain and names the first broken link).

use http::StatusCode;
use serde_json::json;

use super::{Api, ApiResult, json as reply, query};
use bytes::Bytes;

use crate::error::GatewayError;
use crate::handoff::{ControlBody, ControlRequest};
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

/// The filters shared by the events list and the export.
fn filter(q: &std::collections::HashMap<String, String>, limit: usize) -> Result<AuditQuery, GatewayError> {
    let text = |k: &str| q.get(k).cloned();
    Ok(AuditQuery {
        from_ms: time_param(q, "from")?,
        to_ms: time_param(q, "to")?,
        category: text("category"),
        r#type: text("type"),
        outcome: text("outcome"),
        user_id: text("user"),
        team_id: text("team"),
        customer_id: text("customer"),
        virtual_key_id: text("virtual_key"),
        before_seq: None,
        limit,
    })
}

/// Rows per page when an export reads the store.
const EXPORT_PAGE: usize = 1000;
const CSV_COLUMNS: [&str; 18] = [
    "seq",
    "id",
    "timestamp_ms",
    "category",
    "type",
    "outcome",
    "actor_type",
    "actor_id",
    "client_ip",
    "target_type",
    "target_id",
    "customer_id",
    "team_id",
    "user_id",
    "virtual_key_id",
    "request_id",
    "details",
    "hash",
];

/// `GET /api/enterprise/audit/export?format=jsonl|csv&…filters`: every matching record, newest
/// first, streamed page by page as the store is read; itself recorded as a `data_export`.
pub(super) fn export(
    api: &Api,
    req: &ControlRequest,
    by: &super::identity::Caller,
) -> Result<http::Response<ControlBody>, GatewayError> {
    let q = query(req);
    let csv = match q.get("format").map(String::as_str) {
        None | Some("jsonl") => false,
        Some("csv") => true,
        Some(other) => return Err(GatewayError::InvalidRequest(format!("format: `{other}` is not jsonl or csv"))),
    };
    let mut filter = filter(&q, EXPORT_PAGE)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let (store, audit, peer) = (api.store.clone(), api.audit.clone(), req.peer.ip().to_string());
    let (actor_type, actor_id) = (by.actor_type(), by.actor_id().map(String::from));
    let details_filter = serde_json::json!({ "query": req.uri.query().unwrap_or("") });
    tokio::task::spawn_blocking(move || {
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut send = |chunk: Vec<u8>| {
            bytes += chunk.len() as u64;
            tx.blocking_send(Bytes::from(chunk)).is_ok()
        };
        if csv && !send(format!("{}\n", CSV_COLUMNS.join(",")).into_bytes()) {
            return;
        }
        loop {
            let page = {
                let store = match store.lock() {
                    Ok(s) => s,
                    Err(poisoned) => poisoned.into_inner(),
                };
                store.query_audit(&filter)
            };
            let Ok(mut page) = page else { break };
            let more = page.len() > EXPORT_PAGE;
            page.truncate(EXPORT_PAGE);
            let Some(last) = page.last().map(|r| r.seq) else { break };
            let mut out = Vec::with_capacity(page.len() * 512);
            for r in &page {
                if csv {
                    let e = &r.event;
                    let mut w = ::csv::WriterBuilder::new().has_headers(false).from_writer(&mut out);
                    let o = |v: &Option<String>| v.clone().unwrap_or_default();
                    let _ = w.write_record([
                        r.seq.to_string(),
                        e.id.clone(),
                        e.timestamp_ms.to_string(),
                        e.category.clone(),
                        e.r#type.clone(),
                        e.outcome.clone(),
                        e.actor_type.clone(),
                        o(&e.actor_id),
                        o(&e.client_ip),
                        o(&e.target_type),
                        o(&e.target_id),
                        o(&e.customer_id),
                        o(&e.team_id),
                        o(&e.user_id),
                        o(&e.virtual_key_id),
                        o(&e.request_id),
                        e.details.get().to_string(),
                        hex::encode(&r.hash),
                    ]);
                    let _ = w.flush();
                } else {
                    let mut v = serde_json::to_value(&r.event).unwrap_or_default();
                    v["seq"] = r.seq.into();
                    v["hash"] = hex::encode(&r.hash).into();
                    let _ = serde_json::to_writer(&mut out, &v);
                    out.push(b'\n');
                }
            }
            rows += page.len() as u64;
            if !send(out) || !more {
                break;
            }
            filter.before_seq = Some(last);
        }
        let mut event = crate::audit::event::AuditEvent::data_change("export", actor_type, &peer, "audit_events", "*");
        event.r#type = "data_export".into();
        event.actor_id = actor_id;
        event.details = crate::audit::event::details(
            &serde_json::json!({ "format": if csv { "csv" } else { "jsonl" }, "rows": rows, "bytes": bytes, "filter": details_filter }),
        );
        let _ = audit.send(event);
    });
    let mut resp = http::Response::new(ControlBody::Stream(rx));
    let (ctype, ext) = if csv { ("text/csv; charset=utf-8", "csv") } else { ("application/x-ndjson", "jsonl") };
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    if let Ok(v) = http::HeaderValue::from_str(&format!("attachment; filename=\"audit.{ext}\"")) {
        resp.headers_mut().insert(http::header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
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
    let filter = AuditQuery { before_seq: cursor, ..filter(&q, limit)? };
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
