//! `/api/governance/{customers,teams,users,virtual-keys}`: list, get, create, update, delete,
//! key rotation and the key's own quota. Bodies have the config file's shapes for each kind.

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::identity::Caller;
use super::{Api, ApiResult, json as reply, query};
use crate::control::catalog::{self, ApiEntity, Kind};
use crate::error::GatewayError;
use crate::governance::counters::slot;
use crate::handoff::ControlRequest;

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

pub(super) async fn route(api: &Api, req: &ControlRequest, by: &Caller, method: &str, rest: &[&str]) -> ApiResult {
    let kind = rest.first().and_then(|k| Kind::from_path(k));
    match (method, kind, &rest[1.min(rest.len())..]) {
        ("GET", Some(kind), []) => list(api, req, kind),
        ("POST", Some(kind), []) => create(api, req, by, kind).await,
        ("GET", Some(kind), [id]) => get(api, kind, id),
        ("PUT", Some(kind), [id]) => update(api, req, by, kind, id, false).await,
        ("PATCH", Some(kind), [id]) => update(api, req, by, kind, id, true).await,
        ("DELETE", Some(kind), [id]) => delete(api, req, by, kind, id).await,
        ("POST", Some(Kind::VirtualKey), [id, "rotate"]) => rotate(api, req, by, id).await,
        ("GET", Some(kind), [id, "usage"]) => usage(api, req, kind, id).await,
        _ => Err(GatewayError::NotFound(format!("{method} {}", req.uri.path()))),
    }
}

/// The field that holds an entity's id: `name` for identity providers, `id` for the rest.
fn id_field(kind: Kind) -> &'static str {
    if kind == Kind::IdentityProvider { "name" } else { "id" }
}

/// One entity as the API shows it: its fields, who manages it, never a secret.
fn view(kind: Kind, mut body: Value, managed_by: &str, times: Option<(i64, i64)>) -> Value {
    if let Value::Object(m) = &mut body {
        if kind == Kind::VirtualKey {
            m.remove("value");
        }
        if kind == Kind::IdentityProvider {
            m.remove("client_secret");
        }
        m.retain(|_, v| !v.is_null());
        m.insert("managed_by".into(), managed_by.into());
        if let Some((created, updated)) = times {
            m.insert("created_at".into(), created.into());
            m.insert("updated_at".into(), updated.into());
        }
    }
    body
}

/// Every entity of `kind`: the config file's first, then the API's, in creation order.
fn all(api: &Api, kind: Kind) -> Vec<(String, Value)> {
    let file = api.catalog.file();
    let g = &file.config.governance;
    let to_value = |v: Result<Value, serde_json::Error>| v.unwrap_or(Value::Null);
    let mut out: Vec<(String, Value)> = match kind {
        Kind::Customer => g.customers.iter().map(|e| (e.id.clone(), to_value(serde_json::to_value(e)))).collect(),
        Kind::Team => g.teams.iter().map(|e| (e.id.clone(), to_value(serde_json::to_value(e)))).collect(),
        Kind::User => g.users.iter().map(|e| (e.id.clone(), to_value(serde_json::to_value(e)))).collect(),
        Kind::VirtualKey => g.virtual_keys.iter().map(|e| (e.id.clone(), to_value(serde_json::to_value(e)))).collect(),
        Kind::IdentityProvider => {
            file.config.identity.providers.iter().map(|e| (e.name.clone(), to_value(serde_json::to_value(e)))).collect()
        }
    };
    out.iter_mut().for_each(|(_, v)| *v = view(kind, v.take(), "config", None));
    for e in api.catalog.api().into_iter().filter(|e| e.kind == kind) {
        out.push((e.id.clone(), view(kind, e.body, "api", Some((e.created_at, e.updated_at)))));
    }
    out
}

fn field_is(v: &Value, field: &str, want: &str) -> bool {
    match &v[field] {
        Value::String(s) => s == want,
        Value::Array(a) => a.iter().any(|x| x == want),
        _ => false,
    }
}

fn list(api: &Api, req: &ControlRequest, kind: Kind) -> ApiResult {
    let q = query(req);
    let number = |name: &str, default: usize| -> Result<usize, GatewayError> {
        q.get(name).map_or(Ok(default), |v| {
            v.parse().map_err(|_| GatewayError::InvalidRequest(format!("{name}: must be a non-negative integer")))
        })
    };
    let limit = number("limit", DEFAULT_LIMIT)?.clamp(1, MAX_LIMIT);
    let offset = number("offset", 0)?;
    let search = q.get("search").map(|s| s.to_lowercase());
    let matching: Vec<Value> = all(api, kind)
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| {
            ["customer", "team", "user", "managed_by"].iter().all(|f| {
                q.get(*f).is_none_or(|want| {
                    // A user's teams are a list; everything else is a single reference.
                    let field = if *f == "team" && kind == Kind::User { "teams" } else { f };
                    field_is(v, field, want)
                })
            })
        })
        .filter(|v| {
            search.as_ref().is_none_or(|s| {
                ["id", "name", "email", "description"]
                    .iter()
                    .any(|f| v[*f].as_str().is_some_and(|x| x.to_lowercase().contains(s.as_str())))
            })
        })
        .collect();
    let total = matching.len();
    let page: Vec<Value> = matching.into_iter().skip(offset).take(limit).collect();
    reply(
        StatusCode::OK,
        &json!({ kind.plural(): page, "count": page.len(), "total_count": total, "limit": limit, "offset": offset }),
    )
}

fn get(api: &Api, kind: Kind, id: &str) -> ApiResult {
    let found = all(api, kind).into_iter().find(|(i, _)| i == id);
    match found {
        Some((_, v)) => reply(StatusCode::OK, &json!({ kind.as_str(): v })),
        None => Err(not_found(kind, id)),
    }
}

fn not_found(kind: Kind, id: &str) -> GatewayError {
    GatewayError::NotFound(format!("{} '{id}'", kind.as_str()))
}

fn body_object(req: &ControlRequest) -> Result<Map<String, Value>, GatewayError> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(GatewayError::InvalidRequest("the body must be a JSON object".into())),
        Err(e) => Err(GatewayError::InvalidRequest(format!("the body is not valid JSON: {e}"))),
    }
}

/// A key's secret is made by the gateway, shown once, and kept only as its SHA-256.
fn refuse_secret_fields(kind: Kind, body: &Map<String, Value>) -> Result<(), GatewayError> {
    if kind == Kind::VirtualKey {
        for f in ["value", "value_sha256"] {
            if body.contains_key(f) {
                return Err(GatewayError::InvalidRequest(format!(
                    "{f}: key values are generated by the gateway (create, or POST …/rotate)"
                )));
            }
        }
    }
    Ok(())
}

/// `sk-hd-` and 32 base62 characters from the OS's CSPRNG (rejection sampling keeps it uniform).
fn new_key_value() -> Result<String, GatewayError> {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::from("sk-hd-");
    while out.len() < 6 + 32 {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf).map_err(|e| GatewayError::Internal(format!("no randomness: {e}")))?;
        for b in buf {
            if b < 248 && out.len() < 38 {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Validates the catalog with `next` in place of the API's entities, persists the change, and
/// publishes a snapshot built from it; nothing changes anywhere when any step refuses.
pub(super) async fn commit(
    api: &Api,
    next: Vec<ApiEntity>,
    changed: Option<&ApiEntity>,
    removed: Option<(Kind, &str)>,
) -> Result<(), GatewayError> {
    let merged = catalog::merge(&api.catalog.file(), &next).map_err(|r| {
        // `governance.teams[3].customer` → `customer`: the index is the merged list's, not the caller's.
        let field = r.field.rsplit(['.', ']']).find(|s| !s.is_empty() && !s.starts_with('[')).unwrap_or(&r.field);
        let field = field.split('[').next().unwrap_or(field);
        GatewayError::InvalidRequest(format!("{field}: {}", r.reason))
    })?;
    let snapshot = catalog::build(&api.shared, merged).await.map_err(GatewayError::Internal)?;
    let store = api.store.clone();
    let (changed, removed) = (changed.map(ApiEntity::to_stored), removed.map(|(k, id)| (k.as_str(), id.to_string())));
    tokio::task::spawn_blocking(move || {
        let mut store = match store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(e) = changed {
            store.put_entity(&e)?;
        }
        if let Some((kind, id)) = removed {
            store.delete_entity(kind, &id)?;
        }
        Ok::<_, crate::store::StoreError>(())
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))?
    .map_err(|e| GatewayError::Internal(e.to_string()))?;
    api.catalog.set_api(next);
    catalog::swap(&api.shared, snapshot);
    Ok(())
}

/// The `data_modification` (or `data_deletion`) event of an admin change, into the audit trail.
fn record_change(api: &Api, req: &ControlRequest, by: &Caller, action: &str, kind: Kind, id: &str) {
    let mut event = crate::audit::event::AuditEvent::data_change(
        action,
        by.actor_type(),
        &req.peer.ip().to_string(),
        kind.as_str(),
        id,
    );
    event.actor_id = by.actor_id().map(String::from);
    let _ = api.audit.send(event);
}

fn id_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Customer => "customer",
        Kind::Team => "team",
        Kind::User => "user",
        Kind::VirtualKey => "vk",
        Kind::IdentityProvider => "idp",
    }
}

async fn create(api: &Api, req: &ControlRequest, by: &Caller, kind: Kind) -> ApiResult {
    let mut body = body_object(req)?;
    refuse_secret_fields(kind, &body)?;
    let field = id_field(kind);
    let id = match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(GatewayError::InvalidRequest(format!("{field}: must be a non-empty string"))),
        None => format!("{}-{}", id_prefix(kind), uuid::Uuid::now_v7().simple()),
    };
    body.insert(field.into(), id.clone().into());
    let _writes = api.catalog.lock_writes().await;
    if all(api, kind).iter().any(|(i, _)| *i == id) {
        return Err(GatewayError::Conflict(format!("{} '{id}' already exists", kind.as_str())));
    }
    let value = if kind == Kind::VirtualKey {
        let v = new_key_value()?;
        body.insert("value_sha256".into(), hex::encode(crate::auth::hash_key(&v)).into());
        Some(v)
    } else {
        None
    };
    let t = now();
    let entity = ApiEntity { kind, id: id.clone(), body: Value::Object(body), created_at: t, updated_at: t };
    let mut next = api.catalog.api();
    next.push(entity.clone());
    commit(api, next, Some(&entity), None).await?;
    record_change(api, req, by, "create", kind, &id);
    let mut out = json!({ kind.as_str(): view(kind, entity.body, "api", Some((t, t))) });
    if let Some(v) = value {
        out["value"] = v.into();
    }
    reply(StatusCode::CREATED, &out)
}

/// Finds an API-managed entity; a config-managed one cannot be changed here.
fn editable(api: &Api, kind: Kind, id: &str) -> Result<(Vec<ApiEntity>, usize), GatewayError> {
    let current = api.catalog.api();
    if let Some(i) = current.iter().position(|e| e.kind == kind && e.id == id) {
        return Ok((current, i));
    }
    if all(api, kind).iter().any(|(i, _)| i == id) {
        return Err(GatewayError::Conflict(format!(
            "{} '{id}' is managed by config: change it in the config file",
            kind.as_str()
        )));
    }
    Err(not_found(kind, id))
}

async fn update(api: &Api, req: &ControlRequest, by: &Caller, kind: Kind, id: &str, merge: bool) -> ApiResult {
    let patch = body_object(req)?;
    refuse_secret_fields(kind, &patch)?;
    let field = id_field(kind);
    if patch.get(field).is_some_and(|v| v != id) {
        return Err(GatewayError::InvalidRequest(format!("{field}: cannot be changed")));
    }
    let _writes = api.catalog.lock_writes().await;
    let (mut next, i) = editable(api, kind, id)?;
    let old = next[i].body.as_object().cloned().unwrap_or_default();
    let mut body = if merge { old.clone() } else { Map::new() };
    for (k, v) in patch {
        if v.is_null() {
            body.remove(&k);
        } else {
            body.insert(k, v);
        }
    }
    body.insert(field.into(), id.into());
    if let Some(h) = old.get("value_sha256") {
        body.insert("value_sha256".into(), h.clone());
    }
    next[i].body = Value::Object(body);
    next[i].updated_at = now();
    let entity = next[i].clone();
    commit(api, next, Some(&entity), None).await?;
    record_change(api, req, by, "update", kind, id);
    reply(
        StatusCode::OK,
        &json!({ kind.as_str(): view(kind, entity.body, "api", Some((entity.created_at, entity.updated_at))) }),
    )
}

/// What still refers to an entity; deleting it would leave them dangling.
fn dependents(api: &Api, kind: Kind, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |k: Kind, field: &str| {
        for (dep, v) in all(api, k) {
            if field_is(&v, field, id) {
                out.push(format!("{} '{dep}'", k.as_str()));
            }
        }
    };
    match kind {
        Kind::Customer => {
            check(Kind::Team, "customer");
            check(Kind::VirtualKey, "customer");
        }
        Kind::Team => {
            check(Kind::User, "teams");
            check(Kind::VirtualKey, "team");
        }
        Kind::User => check(Kind::VirtualKey, "user"),
        Kind::VirtualKey => {}
        Kind::IdentityProvider => {
            let prefix = format!("{id}:");
            for (dep, v) in all(api, Kind::User) {
                if v.get("external_id").and_then(Value::as_str).is_some_and(|x| x.starts_with(&prefix)) {
                    out.push(format!("user '{dep}'"));
                }
            }
        }
    }
    out
}

async fn delete(api: &Api, req: &ControlRequest, by: &Caller, kind: Kind, id: &str) -> ApiResult {
    let _writes = api.catalog.lock_writes().await;
    let (mut next, i) = editable(api, kind, id)?;
    let deps = dependents(api, kind, id);
    if !deps.is_empty() {
        return Err(GatewayError::Conflict(format!(
            "{} '{id}' still has {}: delete or move them first",
            kind.as_str(),
            deps.join(", ")
        )));
    }
    next.remove(i);
    commit(api, next, None, Some((kind, id))).await?;
    record_change(api, req, by, "delete", kind, id);
    reply(StatusCode::OK, &json!({ "deleted": { "type": kind.as_str(), "id": id } }))
}

async fn rotate(api: &Api, req: &ControlRequest, by: &Caller, id: &str) -> ApiResult {
    let _writes = api.catalog.lock_writes().await;
    let (mut next, i) = editable(api, Kind::VirtualKey, id)?;
    let value = new_key_value()?;
    if let Value::Object(m) = &mut next[i].body {
        m.insert("value_sha256".into(), hex::encode(crate::auth::hash_key(&value)).into());
    }
    next[i].updated_at = now();
    let entity = next[i].clone();
    commit(api, next, Some(&entity), None).await?;
    record_change(api, req, by, "rotate", Kind::VirtualKey, id);
    reply(
        StatusCode::OK,
        &json!({ "virtual_key": view(Kind::VirtualKey, entity.body, "api", Some((entity.created_at, entity.updated_at))), "value": value }),
    )
}

/// `GET /api/governance/virtual-keys/quota`: the calling key's budgets and limits along its chain,
/// with what is used now. The key itself is the credential.
pub(super) fn quota(api: &Api, req: &ControlRequest) -> ApiResult {
    let snap = api.shared.snapshot.load();
    let now = crate::governance::clock::now();
    let mut tokens = crate::auth::TokenCache::default();
    let principal = crate::auth::authenticate(&snap, &req.headers, &mut tokens, now.max(0) as u64)?;
    let Some(key) = principal.virtual_key() else { return Err(GatewayError::AuthenticationRequired) };
    let mut budgets = Vec::new();
    let mut limits = Vec::new();
    for entity in key.chain.iter().map(|&e| &snap.entities[e]) {
        for b in &entity.budgets {
            let counter = &entity.counters.budgets[slot(b.window)];
            let (start, end, spent) = counter.state();
            let current = now < end;
            let spent = if current { spent } else { 0 };
            let remaining = counter.remaining(b.max_micros).min(b.max_micros.saturating_sub(spent));
            budgets.push(json!({
                "level": entity.level.as_str(), "id": &*entity.id,
                "max_usd": b.max_micros as f64 / 1e6, "spent_usd": spent as f64 / 1e6,
                "remaining_usd": remaining as f64 / 1e6, "reset": b.window.as_str(),
                "calendar_aligned": b.calendar,
                "window_start": current.then_some(start), "window_end": current.then_some(end),
            }));
        }
        for r in &entity.rates {
            let mut l = json!({ "level": entity.level.as_str(), "id": &*entity.id, "per": r.window.as_str() });
            if let Some(limit) = r.requests {
                let (used, reset) = entity.counters.requests[slot(r.window)].current(now, r.window);
                l["requests"] = json!({ "limit": limit, "used": used, "remaining": limit.saturating_sub(used), "reset_secs": reset });
            }
            if let Some(limit) = r.tokens {
                let (used, reset) = entity.counters.tokens[slot(r.window)].current(now, r.window);
                l["tokens"] = json!({ "limit": limit, "used": used, "remaining": limit.saturating_sub(used), "reset_secs": reset });
            }
            limits.push(l);
        }
    }
    reply(StatusCode::OK, &json!({ "virtual_key": &*key.id, "budgets": budgets, "rate_limits": limits }))
}

/// `GET …/{kind}/{id}/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`: requests, tokens and spend by UTC day
/// and model (default: the last 30 days). Rolled up from the request stream, at most a checkpoint late.
async fn usage(api: &Api, req: &ControlRequest, kind: Kind, id: &str) -> ApiResult {
    if !all(api, kind).iter().any(|(i, _)| i == id) {
        return Err(not_found(kind, id));
    }
    let q = query(req);
    let day = |name: &str, default: chrono::NaiveDate| -> Result<String, GatewayError> {
        match q.get(name) {
            None => Ok(default.format("%Y-%m-%d").to_string()),
            Some(v) => chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .map(|d| d.format("%Y-%m-%d").to_string())
                .map_err(|_| GatewayError::InvalidRequest(format!("{name}: expected a date as YYYY-MM-DD"))),
        }
    };
    let today = chrono::Utc::now().date_naive();
    let from = day("from", today - chrono::Duration::days(29))?;
    let to = day("to", today)?;
    let (store, level, id_owned) = (api.store.clone(), kind.as_str(), id.to_string());
    let rows = tokio::task::spawn_blocking(move || {
        let store = match store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        store.usage(level, &id_owned, &from, &to)
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))?
    .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let (mut requests, mut prompt, mut completion, mut cost) = (0u64, 0u64, 0u64, 0u64);
    let days: Vec<Value> = rows
        .iter()
        .map(|r| {
            requests += r.requests;
            prompt += r.prompt_tokens;
            completion += r.completion_tokens;
            cost += r.cost_micros;
            json!({
                "day": r.period, "model": r.model, "requests": r.requests, "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens, "cost_usd": r.cost_micros as f64 / 1e6,
            })
        })
        .collect();
    reply(
        StatusCode::OK,
        &json!({
            "type": kind.as_str(), "id": id, "usage": days,
            "total": { "requests": requests, "prompt_tokens": prompt, "completion_tokens": completion, "cost_usd": cost as f64 / 1e6 },
        }),
    )
}
