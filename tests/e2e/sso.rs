//! Bearer JWTs on `/v1` against a real OpenID Provider (npm `oidc-provider` on loopback) in its
//! plain, Okta and Entra shapes: accepted tokens govern as their user; every forgery is refused.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::*;
use heimdall::store::audit::AuditQuery;

/// How many `api_request` records of the trail name this user and team.
fn requests_charged_to(db: &std::path::Path, user: &str, team: &str) -> usize {
    let q = AuditQuery {
        r#type: Some("api_request".into()),
        user_id: Some(user.into()),
        team_id: Some(team.into()),
        ..Default::default()
    };
    stored_events(db, q).len()
}

const ENTRA_TID: &str = "3f7c1c2e-5b7d-4a8e-9c1f-2d6e8a4b0c11";
const ENTRA_API: &str = "00000000-1111-2222-3333-444444444444";

fn sso_config(mock: &str, op: &Op, kind: &str, audience: &str, extra_idp: &str, users: &str) -> String {
    config(
        mock,
        &format!(
            r#"
[[governance.customers]]
id = "corp"

[[governance.teams]]
id = "team-alpha"
customer = "corp"
budgets = [{{ max_usd = 100.0, reset = "1d" }}]

{users}

[[governance.virtual_keys]]
id = "vk-bob"
value = "vk-bob-key"
user = "bob"

[identity]
require_sso = false

[[identity.providers]]
name = "idp"
kind = "{kind}"
issuer = "{issuer}"
client_id = "gateway"
audience = "{audience}"
role_map = {{ "gw-admins" = "admin", "gw-developers" = "developer", "gw-viewers" = "viewer", "Gateway.Admin" = "admin" }}
default_role = "deny"
require_mfa = ["admin"]
{extra_idp}
"#,
            issuer = op.issuer
        ),
    )
}

const OKTA_USERS: &str = r#"
[[governance.users]]
id = "alice"
external_id = "idp:alice"
teams = ["team-alpha"]

[[governance.users]]
id = "bob"
external_id = "idp:bob"
teams = ["team-alpha"]
allowed_models = ["gpt-4o-mini"]
"#;

async fn chat(gw: &Gateway, token: &str) -> reqwest::Response {
    post(&gw.url("/v1/chat/completions"), Some(token), &chat_body("gpt-4o-mini", "hi")).await
}

/// Polls until the gateway accepts `token` (it fetches the provider's keys after it starts).
async fn until_accepted(gw: &Gateway, token: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = chat(gw, token).await;
        if r.status() != 401 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn a_provider_token_is_governed_as_its_user_and_every_forgery_is_refused() {
    let (mock, _d) = mock(&[]);
    let op = op("", "api://gateway", "users.json");
    let gw = gateway(&sso_config(&mock.addr, &op, "oidc", "api://gateway", "", OKTA_USERS));
    let bob = op.token(json!({ "sub": "bob" })).await;
    let r = until_accepted(&gw, &bob).await;
    assert_eq!(r.status(), 200, "{}", gw.proc.stderr());
    // bob's own allow-list applies: only gpt-4o-mini.
    let r = post(&gw.url("/v1/chat/completions"), Some(&bob), &chat_body("gpt-4o", "hi")).await;
    assert!(expect_error(r, 403, "model_blocked").await.contains("user 'bob'"));

    let expired = op.token(json!({ "sub": "bob", "exp_in": -120 })).await;
    assert!(expect_error(chat(&gw, &expired).await, 401, "invalid_token").await.contains("expired"));
    let wrong_aud = op.token(json!({ "sub": "bob", "aud": "api://someone-else" })).await;
    assert!(expect_error(chat(&gw, &wrong_aud).await, 401, "invalid_token").await.contains("audience"));
    let wrong_iss = op.token(json!({ "sub": "bob", "iss": "http://127.0.0.1:1/elsewhere" })).await;
    assert!(expect_error(chat(&gw, &wrong_iss).await, 401, "invalid_token").await.contains("issuer"));

    let parts: Vec<&str> = bob.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("alice");
    let tampered = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    assert!(expect_error(chat(&gw, &tampered).await, 401, "invalid_token").await.contains("signature"));
    let header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let none = format!("{}.{}.", b64(&json!({ "alg": "none", "typ": "at+jwt", "kid": header["kid"] })), parts[1]);
    expect_error(chat(&gw, &none).await, 401, "invalid_token").await;
    // HS256 keyed with the provider's public key (which anyone can fetch): alg confusion.
    let pem = op.public_pem().await;
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = header["kid"].as_str().map(String::from);
    let hs =
        jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(pem.as_bytes()).unwrap()).unwrap();
    assert!(expect_error(chat(&gw, &hs).await, 401, "invalid_token").await.contains("pinned"));

    // Every refusal is in the trail as an invalid credential; bob's request as bob's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let db = gw.config_path.with_file_name("heimdall.db");
    let by_bob = requests_charged_to(&db, "bob", "team-alpha");
    let invalid =
        stored_events(&db, AuditQuery { r#type: Some("invalid_credential".into()), ..Default::default() }).len();
    assert_eq!(by_bob, 1);
    assert!(invalid >= 6, "{invalid}");
}

#[tokio::test]
async fn roles_need_what_the_policy_says_mfa_included() {
    let (mock, _d) = mock(&[]);
    let op = op("/oauth2/default", "api://default", "users.json");
    let gw = gateway(&sso_config(&mock.addr, &op, "okta", "api://default", "provision = false", OKTA_USERS));
    // alice is an admin, and admins must show MFA: her token has amr ["pwd","mfa"].
    let alice = op.token(json!({ "sub": "alice" })).await;
    assert_eq!(until_accepted(&gw, &alice).await.status(), 200, "{}", gw.proc.stderr());
    let no_mfa = op.token(json!({ "sub": "alice", "claims": { "amr": ["pwd"] } })).await;
    expect_error(chat(&gw, &no_mfa).await, 401, "mfa_required").await;
    // nobody's groups map to no role, and the default is deny.
    let nobody = op.token(json!({ "sub": "nobody" })).await;
    assert!(expect_error(chat(&gw, &nobody).await, 403, "user_not_authorized").await.contains("no role"));
    // victor maps to viewer but is no user of this gateway, and this provider does not provision.
    let victor = op.token(json!({ "sub": "victor" })).await;
    assert!(expect_error(chat(&gw, &victor).await, 403, "user_not_authorized").await.contains("idp:victor"));
}

#[tokio::test]
async fn a_rotated_provider_key_is_fetched_when_a_token_first_shows_it() {
    let (mock, _d) = mock(&[]);
    let op = op("", "api://gateway", "users.json");
    let gw = gateway(&sso_config(&mock.addr, &op, "oidc", "api://gateway", "", OKTA_USERS));
    let before = op.token(json!({ "sub": "bob" })).await;
    assert_eq!(until_accepted(&gw, &before).await.status(), 200);
    op.rotate().await;
    let after = op.token(json!({ "sub": "bob" })).await;
    // The first sight of the new kid asks the control plane to refetch; soon the token verifies.
    let started = Instant::now();
    let r = until_accepted(&gw, &after).await;
    assert_eq!(r.status(), 200, "{}", gw.proc.stderr());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // A token signed before the rotation still verifies: the old key is still published.
    assert_eq!(chat(&gw, &before).await.status(), 200);
}

#[tokio::test]
async fn require_sso_refuses_a_users_bare_key_and_a_key_with_its_users_token_is_governed() {
    let (mock, _d) = mock(&[]);
    let op = op("", "api://gateway", "users.json");
    let cfg = sso_config(&mock.addr, &op, "oidc", "api://gateway", "", OKTA_USERS)
        .replace("require_sso = false", "require_sso = true");
    let gw = gateway(&cfg);
    let r = post(&gw.url("/v1/chat/completions"), Some("vk-bob-key"), &chat_body("gpt-4o-mini", "hi")).await;
    assert!(expect_error(r, 401, "authentication_required").await.contains("SSO authentication required"));
    // A key that belongs to no user is still a key.
    assert_eq!(chat(&gw, KEY).await.status(), 200);
    let bob = op.token(json!({ "sub": "bob" })).await;
    assert_eq!(until_accepted(&gw, &bob).await.status(), 200);
    let with_key = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&bob)
        .header("x-bf-vk", "vk-bob-key")
        .json(&chat_body("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(with_key.status(), 200);
    let alice = op.token(json!({ "sub": "alice" })).await;
    let foreign = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&alice)
        .header("x-bf-vk", "vk-bob-key")
        .json(&chat_body("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    assert!(expect_error(foreign, 403, "user_not_authorized").await.contains("does not belong"));
}

#[tokio::test]
async fn entra_tokens_name_users_by_tenant_and_object_id_and_show_mfa_by_auth_context() {
    let (mock, _d) = mock(&[]);
    let op = op(&format!("/{ENTRA_TID}/v2.0"), ENTRA_API, "users-entra.json");
    // alice's Entra object id comes from the provider's users file.
    let users: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc/users-entra.json")).unwrap(),
    )
    .unwrap();
    let oid = users
        .as_array()
        .and_then(|a| a.iter().find(|u| u["sub"] == "alice"))
        .or_else(|| users.get("alice"))
        .and_then(|u| u["oid"].as_str())
        .unwrap()
        .to_string();
    let entra_users = format!(
        "[[governance.users]]\nid = \"alice\"\nexternal_id = \"idp:{ENTRA_TID}/{oid}\"\nteams = [\"team-alpha\"]\n\n[[governance.users]]\nid = \"bob\"\n"
    );
    let extra = format!("roles_claim = \"roles\"\nmfa_acrs = \"c1\"\ntenants = [\"{ENTRA_TID}\"]\n");
    let gw = gateway(&sso_config(&mock.addr, &op, "entra", ENTRA_API, &extra, &entra_users));
    let alice = op.token(json!({ "sub": "alice" })).await;
    assert_eq!(until_accepted(&gw, &alice).await.status(), 200, "{}", gw.proc.stderr());
    let no_context = op.token(json!({ "sub": "alice", "claims": { "acrs": null } })).await;
    expect_error(chat(&gw, &no_context).await, 401, "mfa_required").await;
    let other_tenant =
        op.token(json!({ "sub": "alice", "claims": { "tid": "99999999-0000-0000-0000-000000000000" } })).await;
    assert!(expect_error(chat(&gw, &other_tenant).await, 401, "invalid_token").await.contains("tenant"));
}

#[tokio::test]
async fn an_unknown_users_token_provisions_them_and_the_default_policy_governs_from_the_first_request() {
    let (mock, _d) = mock(&[]);
    let op = op("", "api://gateway", "users.json");
    let cfg = sso_config(&mock.addr, &op, "oidc", "api://gateway", "team_prefix = \"team-\"", OKTA_USERS).replace(
        "[identity]\n",
        "[identity]\nuser_defaults = { rate_limits = [{ requests = 7, per = \"1m\" }], allowed_models = [\"gpt-4o-mini\"] }\n",
    );
    let gw = gateway(&cfg.replace("[server]\n", "[server]\nadmin_token = \"sso-admin\"\n"));
    let victor = op.token(json!({ "sub": "victor", "claims": { "groups": ["gw-viewers", "team-alpha"] } })).await;
    // The very first request already runs under the defaults: 7 requests a minute, one model.
    let first = until_accepted(&gw, &victor).await;
    assert_eq!(first.status(), 200, "{}", gw.proc.stderr());
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "7");
    let r = post(&gw.url("/v1/chat/completions"), Some(&victor), &chat_body("gpt-4o", "hi")).await;
    expect_error(r, 403, "model_blocked").await;
    // The control plane provisions the user; from then on requests are theirs.
    let deadline = Instant::now() + Duration::from_secs(5);
    let user = loop {
        let r = client().get(gw.url("/api/governance/users/idp-victor")).bearer_auth("sso-admin").send().await.unwrap();
        if r.status() == 200 {
            break r.json::<Value>().await.unwrap()["user"].clone();
        }
        assert!(Instant::now() < deadline, "never provisioned: {}", gw.proc.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (user["external_id"].as_str(), user["role"].as_str(), user["teams"].clone()),
        (Some("idp:victor"), Some("viewer"), json!(["team-alpha"]))
    );
    assert_eq!(user["rate_limits"][0]["requests"], 7);
    let r = chat(&gw, &victor).await;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let own = requests_charged_to(&gw.config_path.with_file_name("heimdall.db"), "idp-victor", "team-alpha");
    assert_eq!(own, 1, "the request after provisioning is charged to the user and their team");
}

#[tokio::test]
async fn identity_providers_added_through_the_api_are_fetched_and_accept_tokens_and_admins_alone_manage_them() {
    let (mock, _d) = mock(&[]);
    let op = op("", "api://gateway", "users.json");
    let cfg = config(&mock.addr, "").replace("[server]\n", "[server]\nadmin_token = \"idp-admin\"\n");
    let gw = gateway(&cfg);
    let admin = |m: reqwest::Method, path: &str| client().request(m, gw.url(path)).bearer_auth("idp-admin");
    let r = admin(reqwest::Method::POST, "/api/identity/providers")
        .json(&json!({
            "name": "api-idp", "kind": "oidc", "issuer": op.issuer, "client_id": "gateway",
            "client_secret": "gateway-secret", "audience": "api://gateway",
            "role_map": { "gw-developers": "developer" }, "algorithm": "HS256"
        }))
        .send()
        .await
        .unwrap();
    assert!(expect_error(r, 400, "invalid_request").await.contains("algorithm"));
    let r = admin(reqwest::Method::POST, "/api/identity/providers")
        .json(&json!({
            "name": "api-idp", "kind": "oidc", "issuer": op.issuer, "client_id": "gateway",
            "client_secret": "gateway-secret", "audience": "api://gateway",
            "role_map": { "gw-developers": "developer" }
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let listed: Value =
        admin(reqwest::Method::GET, "/api/identity/providers").send().await.unwrap().json().await.unwrap();
    let p = &listed["identity_providers"][0];
    assert_eq!((p["name"].as_str(), p["managed_by"].as_str()), (Some("api-idp"), Some("api")));
    assert!(p.get("client_secret").is_none(), "secrets are never shown: {p}");
    // Its keys are fetched and bob's token provisions bob under it.
    let bob = op.token(json!({ "sub": "bob" })).await;
    assert_eq!(until_accepted(&gw, &bob).await.status(), 200, "{}", gw.proc.stderr());
    // bob is a developer: identity providers are the admin's alone.
    let r = client().get(gw.url("/api/identity/providers")).bearer_auth(&bob).send().await.unwrap();
    expect_error(r, 403, "user_not_authorized").await;
    // Deleting a provider that still has users is refused until they go.
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin(reqwest::Method::GET, "/api/governance/users/api-idp-bob").send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = admin(reqwest::Method::DELETE, "/api/identity/providers/api-idp").send().await.unwrap();
    expect_error(r, 409, "conflict").await;
    assert_eq!(admin(reqwest::Method::DELETE, "/api/governance/users/api-idp-bob").send().await.unwrap().status(), 200);
    assert_eq!(admin(reqwest::Method::DELETE, "/api/identity/providers/api-idp").send().await.unwrap().status(), 200);
    expect_error(chat(&gw, &bob).await, 403, "virtual_key_not_found").await;
}
