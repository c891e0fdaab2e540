//! Browser sign-in and who is calling the management API: `GET /login`, `GET /auth/callback`,
//! `POST /logout`, `GET /api/identity/session`, and the caller behind every `/api/*` request
//! (admin token, session cookie or bearer JWT) with its role.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, ApiResult, governance, query};
use crate::audit::event::AuditEvent;
use crate::auth::jwt::{self, Claims};
use crate::auth::{Role, rbac};
use crate::config::{IdpConfig, secret};
use crate::control::catalog::{ApiEntity, Kind};
use crate::error::GatewayError;
use crate::handoff::ControlRequest;
use crate::identity;
use crate::snapshot::ProviderKeys;
use crate::store::sessions::Session;

/// A login must come back to `/auth/callback` within this long.
const LOGIN_TTL: Duration = Duration::from_secs(600);
const SESSION_COOKIE: &str = "heimdall_session";

/// A login sent to the identity provider and not yet back: keyed by its `state`.
struct Pending {
    provider: String,
    verifier: String,
    nonce: String,
    return_to: String,
    created: Instant,
}

/// Logins in flight. In memory: a restart (or another node) makes them start over.
#[derive(Default)]
pub struct Logins {
    pending: std::sync::Mutex<HashMap<String, Pending>>,
    /// Sessions whose tokens are being refreshed right now. Providers rotate refresh tokens, so a
    /// second refresh with the same token would fail and end the session: concurrent requests of
    /// the session go on with it as it is while the first one refreshes.
    refreshing: std::sync::Mutex<HashSet<Vec<u8>>>,
}

impl Logins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        match self.pending.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Marks the session as refreshing; false when another request already is.
    fn begin_refresh(&self, id_hash: &[u8]) -> bool {
        match self.refreshing.lock() {
            Ok(mut r) => r.insert(id_hash.to_vec()),
            Err(poisoned) => poisoned.into_inner().insert(id_hash.to_vec()),
        }
    }

    fn end_refresh(&self, id_hash: &[u8]) {
        match self.refreshing.lock() {
            Ok(mut r) => r.remove(id_hash),
            Err(poisoned) => poisoned.into_inner().remove(id_hash),
        };
    }
}

/// Who is calling the management API.
#[derive(Debug, Clone)]
pub enum Caller {
    /// `server.admin_token`: the bootstrap credential, with the admin role.
    AdminToken,
    User {
        id: String,
        role: Role,
    },
}

impl Caller {
    pub fn role(&self) -> Role {
        match self {
            Caller::AdminToken => Role::Admin,
            Caller::User { role, .. } => *role,
        }
    }

    pub fn actor_type(&self) -> &'static str {
        match self {
            Caller::AdminToken => "admin_token",
            Caller::User { .. } => "user",
        }
    }

    pub fn actor_id(&self) -> Option<&str> {
        match self {
            Caller::AdminToken => None,
            Caller::User { id, .. } => Some(id),
        }
    }

    /// Refuses what the caller's role does not allow.
    pub fn may(&self, resource: rbac::Resource, op: rbac::Op) -> Result<(), GatewayError> {
        if rbac::allows(self.role(), resource, op) {
            return Ok(());
        }
        Err(GatewayError::UserNotAuthorized(format!("role {} may not {op:?} {resource:?}", self.role().as_str())))
    }
}

fn now() -> i64 {
    crate::governance::clock::now()
}

fn event(category: &str, r#type: &str, outcome: &str, req: &ControlRequest, details: Value) -> AuditEvent {
    AuditEvent { client_ip: Some(req.peer.ip().to_string()), ..AuditEvent::system(category, r#type, outcome, details) }
}

fn user_event(e: AuditEvent, user: &str) -> AuditEvent {
    AuditEvent { actor_type: "user".into(), actor_id: Some(user.into()), user_id: Some(user.into()), ..e }
}

fn cookie_value<'r>(req: &'r ControlRequest, name: &str) -> Option<&'r str> {
    req.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(
        |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        },
    )
}

fn redirect(location: &str) -> ApiResult {
    let mut r = http::Response::new(Bytes::new());
    *r.status_mut() = StatusCode::FOUND;
    let loc = HeaderValue::from_str(location).map_err(|_| GatewayError::Internal("bad redirect location".into()))?;
    r.headers_mut().insert(header::LOCATION, loc);
    Ok(r)
}

fn provider(api: &Api, name: &str) -> Result<(IdpConfig, ProviderKeys), GatewayError> {
    let snap = api.shared.snapshot.load();
    let p = snap
        .config
        .identity
        .providers
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| GatewayError::InvalidRequest(format!("provider: no identity provider named '{name}'")))?;
    let keys = match api.shared.jwks.lock() {
        Ok(j) => j.get(name).cloned(),
        Err(poisoned) => poisoned.into_inner().get(name).cloned(),
    };
    let keys = keys.ok_or_else(|| {
        GatewayError::Upstream(format!("identity provider '{name}' has not answered discovery yet; try again"))
    })?;
    Ok((p, keys))
}

/// `GET /login?provider=NAME[&return_to=/path][&login_hint=…]`: to the provider, with PKCE.
pub(super) fn login(api: &Api, req: &ControlRequest) -> ApiResult {
    let q = query(req);
    let name = q.get("provider").ok_or_else(|| GatewayError::InvalidRequest("provider: required".into()))?;
    let (p, keys) = provider(api, name)?;
    let redirect_uri = p.redirect_uri.clone().ok_or_else(|| {
        GatewayError::InvalidRequest(format!("identity provider '{name}' has no redirect_uri: login is off"))
    })?;
    // Only local paths: an open redirect would hand the session cookie's page to anyone.
    let return_to = q.get("return_to").filter(|r| r.starts_with('/') && !r.starts_with("//")).cloned();
    let (verifier, challenge) = identity::pkce();
    let (state, nonce) = (identity::random_token(24), identity::random_token(24));
    let scopes = if p.scopes.is_empty() { "openid profile email".to_string() } else { p.scopes.join(" ") };
    let mut url = form_urlencoded::Serializer::new(format!(
        "{}{}",
        keys.authorization_endpoint,
        if keys.authorization_endpoint.contains('?') { "&" } else { "?" }
    ));
    url.append_pair("response_type", "code")
        .append_pair("client_id", &p.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", &scopes)
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(hint) = q.get("login_hint") {
        url.append_pair("login_hint", hint);
    }
    let mut pending = api.logins.lock();
    pending.retain(|_, l| l.created.elapsed() < LOGIN_TTL);
    pending.insert(
        state,
        Pending {
            provider: p.name.clone(),
            verifier,
            nonce,
            return_to: return_to.unwrap_or_else(|| "/".into()),
            created: Instant::now(),
        },
    );
    redirect(&url.finish())
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
}

/// A token-endpoint call (code exchange or refresh), the client authenticated as configured.
async fn token_request(
    api: &Api,
    p: &IdpConfig,
    keys: &ProviderKeys,
    form: &[(&str, &str)],
) -> Result<TokenResponse, String> {
    let secret = match &p.client_secret {
        Some(r) => Some(secret::resolve(r).map_err(|e| format!("client_secret: {e}"))?),
        None => None,
    };
    let body = {
        let mut body = form_urlencoded::Serializer::new(String::new());
        body.extend_pairs(form.iter().copied());
        if secret.is_none() {
            body.append_pair("client_id", &p.client_id);
        }
        body.finish()
    };
    let mut rb = api
        .http
        .post(&keys.token_endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body);
    if let Some(s) = secret {
        rb = rb.basic_auth(&p.client_id, Some(s));
    }
    let r = rb.send().await.map_err(|e| format!("token endpoint: {e}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| format!("token endpoint: {e}"))?;
    if !status.is_success() {
        return Err(format!("token endpoint answered {status}: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("token response unreadable: {e}"))
}

/// Why a sign-in was refused, as recorded and as answered.
struct Refused {
    reason: String,
    error: GatewayError,
}

fn refused(reason: impl Into<String>, error: GatewayError) -> Refused {
    Refused { reason: reason.into(), error }
}

/// `GET /auth/callback?code&state`: exchanges the code, validates the ID token, provisions or
/// updates the user, opens a session. Every refusal is a `failed_login` record with its reason.
pub(super) async fn callback(api: &Api, req: &ControlRequest) -> ApiResult {
    let q = query(req);
    let pending = q.get("state").and_then(|s| api.logins.lock().remove(s));
    let provider_name = pending.as_ref().map(|p| p.provider.clone());
    match complete(api, req, &q, pending).await {
        Ok(r) => Ok(r),
        Err(Refused { reason, error }) => {
            let details = json!({ "provider": provider_name, "reason": reason });
            let _ = api.audit.send(event("access", "failed_login", "failure", req, details));
            Err(error)
        }
    }
}

async fn complete(
    api: &Api,
    req: &ControlRequest,
    q: &HashMap<String, String>,
    pending: Option<Pending>,
) -> Result<http::Response<Bytes>, Refused> {
    let Some(pending) = pending.filter(|p| p.created.elapsed() < LOGIN_TTL) else {
        let e = GatewayError::InvalidRequest("state: unknown or expired login; start again at /login".into());
        return Err(refused("unknown_state", e));
    };
    if let Some(err) = q.get("error") {
        let e = GatewayError::UserNotAuthorized(format!("the identity provider refused the sign-in: {err}"));
        return Err(refused(format!("provider_error:{err}"), e));
    }
    let code =
        q.get("code").ok_or_else(|| refused("no_code", GatewayError::InvalidRequest("code: required".into())))?;
    let (p, keys) = provider(api, &pending.provider).map_err(|e| refused("provider_unavailable", e))?;
    let redirect_uri = p.redirect_uri.clone().unwrap_or_default();
    let tokens = token_request(
        api,
        &p,
        &keys,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &pending.verifier),
        ],
    )
    .await
    .map_err(|e| refused("code_exchange_failed", GatewayError::Upstream(e)))?;
    let claims = id_claims(api, &p, &tokens, Some(&pending.nonce))?;
    let signed_in = sign_in(api, req, &p, &claims, &tokens.access_token).await?;
    let sid = identity::random_token(32);
    let t = now();
    let ttl = api.shared.snapshot.load().config.identity.session_ttl.as_secs() as i64;
    let session = Session {
        id_hash: crate::auth::hash_key(&sid).to_vec(),
        user_id: signed_in.user.clone(),
        provider: p.name.clone(),
        role: signed_in.role.as_str().into(),
        created_at: t,
        expires_at: t + ttl,
        tokens_expire_at: t + tokens.expires_in.unwrap_or(3600),
        refresh_token: tokens.refresh_token.as_deref().and_then(|r| api.sealer.seal(r)),
    };
    api.with_store(|s| s.put_session(&session))
        .map_err(|e| refused("session_store_failed", GatewayError::Internal(e.to_string())))?;
    let details = json!({ "provider": p.name, "role": signed_in.role.as_str(), "teams": signed_in.teams });
    let _ = api.audit.send(user_event(event("access", "login", "success", req, details), &signed_in.user));
    let mut r = redirect(&pending.return_to).map_err(|e| refused("redirect", e))?;
    let secure = if redirect_uri.starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Lax; Max-Age={ttl}{secure}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// Where the snapshot holds `p`'s keys and rules (it may have been removed meanwhile).
fn provider_index(snap: &crate::snapshot::Snapshot, p: &IdpConfig) -> Result<usize, Refused> {
    snap.identity
        .provider_index(&p.name)
        .ok_or_else(|| refused("unknown_provider", GatewayError::Internal("provider not in snapshot".into())))
}

/// The verified claims of the token response's ID token (its nonce checked when given).
fn id_claims(api: &Api, p: &IdpConfig, tokens: &TokenResponse, nonce: Option<&str>) -> Result<Claims, Refused> {
    let id_token = tokens
        .id_token
        .as_deref()
        .ok_or_else(|| refused("no_id_token", GatewayError::Upstream("the provider sent no ID token".into())))?;
    let snap = api.shared.snapshot.load();
    let issuer = &snap.identity.issuers[provider_index(&snap, p)?];
    let claims = jwt::verify_id_token(issuer, id_token, &p.client_id, now().max(0) as u64).map_err(|e| {
        if matches!(e, jwt::JwtError::UnknownKey(_)) {
            let _ = api.shared.jwks_refresh.send(p.name.clone());
        }
        refused(format!("id_token_invalid: {e}"), GatewayError::InvalidToken(format!("ID token: {e}")))
    })?;
    if let Some(want) = nonce
        && claims.extra.get("nonce").and_then(Value::as_str) != Some(want)
    {
        return Err(refused("nonce_mismatch", GatewayError::InvalidToken("ID token: nonce does not match".into())));
    }
    Ok(claims)
}

struct SignedIn {
    user: String,
    role: Role,
    teams: Vec<String>,
}

/// Every team's id: the file's and the API's.
fn known_teams(file: &crate::config::LoadedConfig, entities: &[ApiEntity]) -> HashSet<String> {
    let file_teams = file.config.governance.teams.iter().map(|t| t.id.clone());
    file_teams.chain(entities.iter().filter(|e| e.kind == Kind::Team).map(|e| e.id.clone())).collect()
}

/// The API user that carries `external_id`.
fn by_external_id(entities: &[ApiEntity], external_id: &str) -> Option<usize> {
    entities
        .iter()
        .position(|e| e.kind == Kind::User && e.body.get("external_id").and_then(Value::as_str) == Some(external_id))
}

/// Maps the claims to a role and teams, then provisions the user or brings them up to date.
async fn sign_in(
    api: &Api,
    req: &ControlRequest,
    p: &IdpConfig,
    claims: &Claims,
    access_token: &str,
) -> Result<SignedIn, Refused> {
    let snap = api.shared.snapshot.load_full();
    let rules = &snap.identity.rules[provider_index(&snap, p)?];
    if !rules.tenants.is_empty() && !claims.tid.as_ref().is_some_and(|t| rules.tenants.contains(t)) {
        return Err(refused("tenant_not_allowed", GatewayError::UserNotAuthorized("tenant not allowed".into())));
    }
    let groups = groups(api, req, p, claims, access_token).await;
    // Roles from the role claim; when that is the groups claim, from the groups as resolved
    // (Entra overage leaves them out of the token).
    let role_values = match (&groups, claims.extra.contains_key(&rules.roles_claim)) {
        (Some(g), false) if rules.roles_claim == p.teams_claim.as_deref().unwrap_or("groups") => g.clone(),
        _ => identity::claim_values(&claims.extra, &rules.roles_claim),
    };
    let subject = identity::subject(p.kind, &claims.sub, claims.tid.as_deref(), claims.oid.as_deref());
    let external_id = format!("{}:{subject}", p.name);
    let mut mapped = role_values.iter().filter_map(|v| rules.role_map.get(v).copied()).max();
    if mapped.is_none() && groups.is_none() {
        // The groups could not be read: the role they gave last time stands, like the teams.
        let entities = api.catalog.api();
        mapped = by_external_id(&entities, &external_id)
            .and_then(|i| entities[i].body.get("role").and_then(Value::as_str).and_then(Role::parse));
    }
    let role = mapped.or(rules.default_role).ok_or_else(|| {
        refused(
            "no_mapped_role",
            GatewayError::UserNotAuthorized(format!("no role of provider '{}' maps from your groups", p.name)),
        )
    })?;
    if rules.require_mfa.contains(&role) && !rules.mfa.shown_by(claims) {
        return Err(refused("mfa_required", GatewayError::MfaRequired));
    }

    let _writes = api.catalog.lock_writes().await;
    let file = api.catalog.file();
    let mut entities = api.catalog.api();
    if let Some(u) = file.config.governance.users.iter().find(|u| u.external_id.as_deref() == Some(&external_id)) {
        // Managed by the config file: its teams and limits are the file's to change.
        return Ok(SignedIn { user: u.id.clone(), role, teams: u.teams.clone() });
    }
    let teams_known = known_teams(&file, &entities);
    let at = by_external_id(&entities, &external_id);
    let old_body = at.map(|i| entities[i].body.clone());
    let old_teams: Vec<String> = old_body
        .as_ref()
        .and_then(|b| b.get("teams"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let teams = match &groups {
        Some(g) => identity::teams_from_groups(p, g, &teams_known).0,
        // The groups could not be read: memberships stay as they were.
        None => old_teams.clone(),
    };
    let old_role = old_body.as_ref().and_then(|b| b.get("role")).and_then(Value::as_str).and_then(Role::parse);
    let id = match &old_body {
        Some(b) => b.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
        None => identity::user_id_for(&p.name, &subject),
    };
    let mut body = old_body.clone().and_then(|b| b.as_object().cloned()).unwrap_or_default();
    body.insert("id".into(), id.clone().into());
    body.insert("external_id".into(), external_id.clone().into());
    body.insert("role".into(), role.as_str().into());
    body.insert("teams".into(), json!(teams));
    for (field, claim) in [("email", "email"), ("name", "name")] {
        if let Some(v) = claims.extra.get(claim).and_then(Value::as_str) {
            body.insert(field.into(), v.into());
        }
    }
    let body = Value::Object(body);
    if old_body.as_ref() != Some(&body) {
        let t = now();
        let entity = match at {
            Some(i) => {
                entities[i].body = body;
                entities[i].updated_at = t;
                entities[i].clone()
            }
            None => {
                let mut body = body;
                if let Value::Object(m) = &mut body {
                    with_defaults(api, m);
                }
                let e = ApiEntity { kind: Kind::User, id: id.clone(), body, created_at: t, updated_at: t };
                entities.push(e.clone());
                e
            }
        };
        governance::commit(api, entities, Some(&entity), None).await.map_err(|e| refused("provisioning_failed", e))?;
        let action = if at.is_some() { "update" } else { "create" };
        let mut change = AuditEvent::data_change(action, "system", &req.peer.ip().to_string(), "user", &id);
        change.details = crate::audit::event::details(&json!({ "action": action, "by": "sso", "provider": p.name }));
        let _ = api.audit.send(change);
    }
    let added: Vec<&String> = teams.iter().filter(|t| !old_teams.contains(t)).collect();
    let removed: Vec<&String> = old_teams.iter().filter(|t| !teams.contains(t)).collect();
    if at.is_some() && (!added.is_empty() || !removed.is_empty()) {
        let details = json!({ "provider": p.name, "added": added, "removed": removed });
        let _ = api.audit.send(user_event(event("access", "team_membership_change", "success", req, details), &id));
    }
    if let Some(old) = old_role
        && old != role
    {
        let details = json!({ "provider": p.name, "from": old.as_str(), "to": role.as_str() });
        let _ = api.audit.send(user_event(event("access", "role_change", "success", req, details.clone()), &id));
        if role > old {
            let _ = api.audit.send(user_event(event("access", "privilege_escalation", "success", req, details), &id));
        }
    }
    Ok(SignedIn { user: id, role, teams })
}

/// The user's groups: from the token, or, when Entra left them out (overage), from the endpoint
/// the token names. `None` when they could not be read (a security event says so).
async fn groups(
    api: &Api,
    req: &ControlRequest,
    p: &IdpConfig,
    claims: &Claims,
    access_token: &str,
) -> Option<Vec<String>> {
    let claim = p.teams_claim.as_deref().unwrap_or("groups");
    if claims.extra.contains_key(claim) {
        return Some(identity::claim_values(&claims.extra, claim));
    }
    let Some(endpoint) = identity::overage_endpoint(&claims.extra, claim) else { return Some(Vec::new()) };
    let fetched = async {
        let r = api.http.get(&endpoint).bearer_auth(access_token).send().await.map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("HTTP {}", r.status()));
        }
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        v.get("value")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|g| g.as_str().map(String::from)).collect::<Vec<_>>())
            .ok_or_else(|| "no `value` array".to_string())
    }
    .await;
    match fetched {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::warn!(provider = %p.name, "group overage not resolved, memberships kept: {e}");
            let details = json!({ "provider": p.name, "endpoint": endpoint, "reason": e, "subject": claims.sub });
            let _ = api.audit.send(event("security", "group_sync_failed", "failure", req, details));
            None
        }
    }
}

/// The session a request's cookie names, refreshed first when the provider's tokens ran out.
async fn session(api: &Api, req: &ControlRequest) -> Result<Option<Session>, GatewayError> {
    let Some(sid) = cookie_value(req, SESSION_COOKIE) else { return Ok(None) };
    let hash = crate::auth::hash_key(sid).to_vec();
    let t = now();
    let Some(s) = api.with_store(|st| st.session(&hash, t)).map_err(|e| GatewayError::Internal(e.to_string()))? else {
        return Ok(None);
    };
    if t < s.tokens_expire_at || !api.logins.begin_refresh(&hash) {
        return Ok(Some(s));
    }
    // Silent refresh: new tokens, and the role and MFA rule checked again against them.
    let refreshed = async {
        let sealed = s.refresh_token.as_deref().ok_or("no refresh token")?;
        let token = api.sealer.open(sealed).ok_or("the refresh token cannot be opened (key changed)")?;
        let (p, keys) = provider(api, &s.provider).map_err(|e| e.to_string())?;
        let tokens =
            token_request(api, &p, &keys, &[("grant_type", "refresh_token"), ("refresh_token", &token)]).await?;
        let claims = id_claims(api, &p, &tokens, None).map_err(|r| r.reason)?;
        let signed_in = sign_in(api, req, &p, &claims, &tokens.access_token).await.map_err(|r| r.reason)?;
        Ok::<_, String>((tokens, signed_in))
    }
    .await;
    // Ends the refresh once the session row holds its outcome, so no request can start another
    // refresh from the old (already rotated) refresh token.
    let outcome = session_refreshed(api, req, s, &hash, t, refreshed);
    api.logins.end_refresh(&hash);
    outcome
}

fn session_refreshed(
    api: &Api,
    req: &ControlRequest,
    mut s: Session,
    hash: &[u8],
    t: i64,
    refreshed: Result<(TokenResponse, SignedIn), String>,
) -> Result<Option<Session>, GatewayError> {
    match refreshed {
        Ok((tokens, signed_in)) => {
            s.role = signed_in.role.as_str().into();
            s.tokens_expire_at = t + tokens.expires_in.unwrap_or(3600);
            if let Some(r) = tokens.refresh_token.as_deref() {
                s.refresh_token = api.sealer.seal(r);
            }
            api.with_store(|st| st.put_session(&s)).map_err(|e| GatewayError::Internal(e.to_string()))?;
            let details = json!({ "provider": s.provider, "role": s.role });
            let _ = api.audit.send(user_event(event("access", "token_refresh", "success", req, details), &s.user_id));
            Ok(Some(s))
        }
        Err(reason) => {
            let _ = api.with_store(|st| st.delete_session(hash));
            let details = json!({ "provider": s.provider, "reason": reason });
            let _ = api.audit.send(user_event(event("access", "token_refresh", "failure", req, details), &s.user_id));
            Ok(None)
        }
    }
}

/// Who is calling `/api/*`: a session cookie, the admin token, or a bearer JWT of a user.
pub(super) async fn caller(api: &Api, req: &ControlRequest) -> Result<Caller, GatewayError> {
    if let Some(s) = session(api, req).await? {
        let role = Role::parse(&s.role).unwrap_or(Role::Viewer);
        return Ok(Caller::User { id: s.user_id, role });
    }
    let snap = api.shared.snapshot.load();
    let Some(sent) = crate::auth::credential(&req.headers) else {
        return Err(GatewayError::AuthenticationRequired);
    };
    if let Some(expected) = snap.server.admin_token.as_deref()
        // Compare digests so the comparison time says nothing about the token.
        && crate::auth::hash_key(sent) == crate::auth::hash_key(expected)
    {
        return Ok(Caller::AdminToken);
    }
    if snap.identity.accepts_bearer && jwt::looks_like_jwt(sent) {
        let mut tokens = crate::auth::TokenCache::default();
        let principal = crate::auth::authenticate(&snap, &req.headers, &mut tokens, now().max(0) as u64)?;
        if let crate::auth::Principal::User { user, role, .. } = principal {
            return Ok(Caller::User { id: user.id.to_string(), role });
        }
    }
    if snap.server.admin_token.is_none() && !snap.identity.accepts_bearer {
        return Err(GatewayError::UserNotAuthorized(
            "the management API is closed: set server.admin_token or an identity provider to open it".into(),
        ));
    }
    Err(GatewayError::UserNotAuthorized("the credential was not accepted for the management API".into()))
}

/// `POST /logout`: ends the cookie's session.
pub(super) async fn logout(api: &Api, req: &ControlRequest) -> ApiResult {
    let Some(sid) = cookie_value(req, SESSION_COOKIE) else { return Err(GatewayError::AuthenticationRequired) };
    let hash = crate::auth::hash_key(sid).to_vec();
    let s = api.with_store(|st| st.session(&hash, now())).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let _ = api.with_store(|st| st.delete_session(&hash));
    if let Some(s) = &s {
        let details = json!({ "provider": s.provider });
        let _ = api.audit.send(user_event(event("access", "logout", "success", req, details), &s.user_id));
    }
    let mut r = super::json(StatusCode::OK, &json!({ "logged_out": s.is_some() }))?;
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&clear) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `GET /api/identity/session`: who the caller is and what role they act with.
pub(super) async fn whoami(api: &Api, req: &ControlRequest) -> ApiResult {
    let c = caller(api, req).await?;
    super::json(
        StatusCode::OK,
        &json!({ "actor_type": c.actor_type(), "user": c.actor_id(), "role": c.role().as_str() }),
    )
}

/// The limits `identity.user_defaults` gives a user provisioned now.
fn with_defaults(api: &Api, body: &mut serde_json::Map<String, Value>) {
    let d = api.shared.snapshot.load().config.identity.user_defaults.clone();
    let Ok(Value::Object(defaults)) = serde_json::to_value(d) else { return };
    for (k, v) in defaults {
        if !v.is_null() && !(v.as_array().is_some_and(Vec::is_empty)) {
            body.entry(k).or_insert(v);
        }
    }
}

/// Provisions the users the cores met with a valid bearer token and no account: one at a time,
/// each at most once (a burst of requests from a new user asks on every core).
pub async fn provision_users(
    api: std::sync::Arc<Api>,
    mut wanted: tokio::sync::mpsc::UnboundedReceiver<crate::auth::Provision>,
) {
    while let Some(p) = wanted.recv().await {
        let external_id = format!("{}:{}", p.provider, p.subject);
        let _writes = api.catalog.lock_writes().await;
        let file = api.catalog.file();
        let mut entities = api.catalog.api();
        let known = file.config.governance.users.iter().any(|u| u.external_id.as_deref() == Some(&external_id))
            || by_external_id(&entities, &external_id).is_some();
        if known {
            continue;
        }
        let snap = api.shared.snapshot.load_full();
        let Some(idp) = snap.config.identity.providers.iter().find(|i| i.name == p.provider) else { continue };
        let teams_known = known_teams(&file, &entities);
        let (teams, _) = identity::teams_from_groups(idp, &p.groups, &teams_known);
        let id = identity::user_id_for(&p.provider, &p.subject);
        let mut body = serde_json::Map::new();
        body.insert("id".into(), id.clone().into());
        body.insert("external_id".into(), external_id.into());
        body.insert("role".into(), p.role.as_str().into());
        body.insert("teams".into(), json!(teams));
        if let Some(e) = &p.email {
            body.insert("email".into(), e.clone().into());
        }
        if let Some(n) = &p.name {
            body.insert("name".into(), n.clone().into());
        }
        with_defaults(&api, &mut body);
        let t = now();
        let entity =
            ApiEntity { kind: Kind::User, id: id.clone(), body: Value::Object(body), created_at: t, updated_at: t };
        entities.push(entity.clone());
        match governance::commit(&api, entities, Some(&entity), None).await {
            Ok(()) => {
                tracing::info!(user = %id, provider = %p.provider, "user provisioned from a bearer token");
                let mut change = AuditEvent::data_change("create", "system", "-", "user", &id);
                change.client_ip = None;
                change.details = crate::audit::event::details(
                    &json!({ "action": "create", "by": "sso_bearer", "provider": p.provider, "teams": teams }),
                );
                let _ = api.audit.send(change);
            }
            Err(e) => tracing::warn!(user = %id, "cannot provision a user from a bearer token: {e}"),
        }
    }
}
