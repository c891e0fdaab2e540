//! Browser sign-in against a real OpenID Provider, driven by an HTTP client with a cookie jar:
//! provisioning, highest role, team sync both ways, MFA and unmapped refusals, overage, refresh,
//! logout, and what each role may do on the management API.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

const ADMIN: &str = "login-admin-token";
const ENTRA_TID: &str = "3f7c1c2e-5b7d-4a8e-9c1f-2d6e8a4b0c11";

struct Setup {
    gw: Gateway,
    op: Op,
    _mock: (Proc, tempfile::TempDir),
}

/// A gateway on a port chosen up front (the provider must know the redirect URI), with teams
/// the provider's groups map to by prefix.
fn setup(op_path: &str, kind: &str, users_file: &str, extra_idp: &str, envs: &[(&str, &str)]) -> Setup {
    let mock = mock(&[]);
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/auth/callback");
    let op = op_with_redirect(op_path, "api://gateway", users_file, &redirect);
    let cfg = config(
        &mock.0.addr,
        &format!(
            r#"
[[governance.customers]]
id = "corp"

[[governance.teams]]
id = "team-alpha"
customer = "corp"

[[governance.teams]]
id = "team-beta"
customer = "corp"

[[governance.teams]]
id = "team-gamma"
customer = "corp"

[identity]
session_secret = "test-session-secret"

[[identity.providers]]
name = "idp"
kind = "{kind}"
issuer = "{issuer}"
client_id = "gateway"
client_secret = "gateway-secret"
redirect_uri = "{redirect}"
scopes = ["openid", "profile", "email", "offline_access"]
role_map = {{ "gw-admins" = "admin", "gw-developers" = "developer", "gw-viewers" = "viewer" }}
team_prefix = "team-"
default_role = "deny"
require_mfa = ["admin"]
{extra_idp}
"#,
            issuer = op.issuer
        ),
    )
    .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""))
    .replace("[server]\n", &format!("[server]\nadmin_token = \"{ADMIN}\"\n"));
    let gw = gateway_with_env(&cfg, envs);
    Setup { gw, op, _mock: mock }
}

/// Signs in as `user` in `browser`; returns the final response (the redirect to the return page).
async fn sign_in(s: &Setup, browser: &Browser, user: &str) -> reqwest::Response {
    let url = s.gw.url(&format!("/login?provider=idp&login_hint={user}&return_to=/ui/home"));
    // The gateway fetches the provider's discovery document after it starts.
    for _ in 0..50 {
        let r = browser.sign_in(&s.gw, &s.op, &url).await;
        if r.status() != 502 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the provider's discovery never arrived: {}", s.gw.proc.stderr());
}

/// Asserts a finished sign-in (the redirect to the return page), showing the error otherwise.
async fn signed_in(r: reqwest::Response) -> reqwest::Response {
    if r.status() != 302 {
        panic!("sign-in failed: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    r
}

async fn whoami(s: &Setup, browser: &Browser) -> reqwest::Response {
    browser.client.get(s.gw.url("/api/identity/session")).send().await.unwrap()
}

async fn admin_get(s: &Setup, path: &str) -> Value {
    let r = client().get(s.gw.url(path)).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

async fn events(s: &Setup, query: &str) -> Vec<Value> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin_get(s, &format!("/api/enterprise/audit/events?limit=1000{query}")).await["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn first_sign_in_provisions_the_user_with_its_role_and_teams_and_the_next_one_syncs_them() {
    let s = setup("", "oidc", "users.json", "", &[]);
    let browser = Browser::new();
    let r = sign_in(&s, &browser, "bob").await;
    assert_eq!(r.status(), 302, "{}", s.gw.proc.stderr());
    assert_eq!(r.headers()["location"], "/ui/home");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    let me: Value = whoami(&s, &browser).await.json().await.unwrap();
    assert_eq!((me["user"].as_str(), me["role"].as_str()), (Some("idp-bob"), Some("developer")), "{me}");
    let user = admin_get(&s, "/api/governance/users/idp-bob").await["user"].clone();
    assert_eq!(user["external_id"], "idp:bob");
    assert_eq!(user["teams"], json!(["team-alpha", "team-beta"]));
    assert_eq!(user["email"], "bob@example.test");

    // The provider drops bob from team-alpha: the next sign-in removes the membership.
    s.op.set_user(json!({ "sub": "bob", "groups": ["gw-developers", "team-beta", "team-gamma"] })).await;
    assert_eq!(sign_in(&s, &browser, "bob").await.status(), 302);
    let user = admin_get(&s, "/api/governance/users/idp-bob").await["user"].clone();
    assert_eq!(user["teams"], json!(["team-beta", "team-gamma"]));
    let change = &events(&s, "&type=team_membership_change").await[0];
    assert_eq!(
        (change["details"]["added"].clone(), change["details"]["removed"].clone()),
        (json!(["team-gamma"]), json!(["team-alpha"]))
    );
    let logins = events(&s, "&type=login&user=idp-bob").await;
    assert_eq!(logins.len(), 2);
    assert_eq!(logins[0]["actor_type"], "user");
}

#[tokio::test]
async fn a_rising_role_is_recorded_as_privilege_escalation_and_roles_bound_the_management_api() {
    let s = setup("", "oidc", "users.json", "", &[]);
    let victor = Browser::new();
    assert_eq!(sign_in(&s, &victor, "victor").await.status(), 302);
    // A viewer reads but never writes.
    let r = victor.client.get(s.gw.url("/api/governance/teams")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = victor.client.post(s.gw.url("/api/governance/virtual-keys")).json(&json!({})).send().await.unwrap();
    assert!(expect_error(r, 403, "user_not_authorized").await.contains("viewer"));
    let r = victor.client.get(s.gw.url("/api/enterprise/audit/export?format=jsonl")).send().await.unwrap();
    expect_error(r, 403, "user_not_authorized").await;

    s.op.set_user(json!({ "sub": "victor", "groups": ["gw-viewers", "gw-developers"] })).await;
    assert_eq!(sign_in(&s, &victor, "victor").await.status(), 302);
    let up = events(&s, "&type=privilege_escalation").await;
    assert_eq!(up.len(), 1);
    assert_eq!(
        (up[0]["details"]["from"].as_str(), up[0]["details"]["to"].as_str()),
        (Some("viewer"), Some("developer"))
    );
    assert_eq!(events(&s, "&type=role_change").await.len(), 1);
    // A developer manages virtual keys, and the change names the developer as its actor.
    let r = victor
        .client
        .post(s.gw.url("/api/governance/virtual-keys"))
        .json(&json!({ "id": "vk-victor", "user": "idp-victor" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let made = &events(&s, "&type=data_modification").await;
    let by_victor = made.iter().find(|e| e["target_id"] == "vk-victor").unwrap();
    assert_eq!((by_victor["actor_type"].as_str(), by_victor["actor_id"].as_str()), (Some("user"), Some("idp-victor")));
    let r = victor.client.post(s.gw.url("/api/governance/teams")).json(&json!({ "id": "t" })).send().await.unwrap();
    expect_error(r, 403, "user_not_authorized").await;

    // Logout ends the session.
    let r = victor.client.post(s.gw.url("/logout")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    expect_error(whoami(&s, &victor).await, 401, "authentication_required").await;
    assert_eq!(events(&s, "&type=logout").await.len(), 1);
}

#[tokio::test]
async fn sign_ins_without_mfa_for_an_admin_or_without_a_mapped_role_are_refused_and_recorded() {
    let s = setup("", "oidc", "users.json", "", &[]);
    let b = Browser::new();
    let r = sign_in(&s, &b, "alice").await;
    assert_eq!(r.status(), 302, "alice has MFA");
    let me: Value = whoami(&s, &b).await.json().await.unwrap();
    assert_eq!(me["role"], "admin");
    s.op.set_user(json!({ "sub": "alice", "amr": ["pwd"] })).await;
    expect_error(sign_in(&s, &Browser::new(), "alice").await, 401, "mfa_required").await;
    expect_error(sign_in(&s, &Browser::new(), "nobody").await, 403, "user_not_authorized").await;
    // Unknown to the provider: it answers access_denied to the callback.
    expect_error(sign_in(&s, &Browser::new(), "mallory").await, 403, "user_not_authorized").await;
    let failed = events(&s, "&type=failed_login").await;
    let reasons: Vec<&str> = failed.iter().filter_map(|e| e["details"]["reason"].as_str()).collect();
    assert!(reasons.contains(&"mfa_required") && reasons.contains(&"no_mapped_role"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.starts_with("provider_error:access_denied")), "{reasons:?}");
    // A callback with a made-up state is refused too.
    let r = client().get(s.gw.url("/auth/callback?code=x&state=forged")).send().await.unwrap();
    expect_error(r, 400, "invalid_request").await;
}

#[tokio::test]
async fn entra_group_overage_is_fetched_and_a_failed_fetch_keeps_memberships() {
    let extra = "roles_claim = \"groups\"\naudience = \"api://gateway\"";
    let s = setup(&format!("/{ENTRA_TID}/v2.0"), "entra", "users-entra.json", extra, &[]);
    let b = Browser::new();
    signed_in(sign_in(&s, &b, "dave").await).await;
    // dave's access tokens carry no groups either (overage): on /v1 the role from sign-in stands.
    let token = s.op.token(json!({ "sub": "dave" })).await;
    let r = post(&s.gw.url("/v1/chat/completions"), Some(&token), &chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let users = admin_get(&s, "/api/governance/users").await;
    let dave = users["users"].as_array().unwrap().iter().find(|u| u["email"] == "dave@contoso.test").unwrap().clone();
    assert_eq!(dave["teams"], json!(["team-gamma"]), "{dave}");
    assert!(dave["external_id"].as_str().unwrap().starts_with(&format!("idp:{ENTRA_TID}/")));
    s.op.overage_fail(true).await;
    s.op.set_user(json!({ "sub": "dave", "groups": ["gw-viewers", "team-alpha"] })).await;
    assert_eq!(sign_in(&s, &b, "dave").await.status(), 302);
    let id = dave["id"].as_str().unwrap();
    let again = admin_get(&s, &format!("/api/governance/users/{id}")).await["user"].clone();
    assert_eq!(again["teams"], json!(["team-gamma"]), "memberships kept when the groups cannot be read");
    let e = events(&s, "&type=group_sync_failed").await;
    assert_eq!((e.len(), e[0]["category"].as_str()), (1, Some("security")));
}

#[tokio::test]
async fn a_session_past_its_tokens_refreshes_silently_and_keeps_working() {
    let s = setup("", "oidc", "users.json", "", &[("HEIMDALL_TEST_CLOCK", "1")]);
    let b = Browser::new();
    assert_eq!(sign_in(&s, &b, "bob").await.status(), 302);
    // Past the provider's one-hour tokens, inside the gateway's 12-hour session.
    let r = client().post(s.gw.url("/api/test/clock")).json(&json!({ "advance_secs": 3601 })).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Several requests at once (a dashboard's parallel fetches): one refreshes, none is logged
    // out by a second refresh with the already-rotated refresh token.
    let calls: Vec<_> = (0..5).map(|_| whoami(&s, &b)).collect();
    for me in futures_util::future::join_all(calls).await {
        assert_eq!(me.status(), 200, "{}", s.gw.proc.stderr());
    }
    assert_eq!(whoami(&s, &b).await.status(), 200);
    let refreshed = events(&s, "&type=token_refresh").await;
    assert_eq!((refreshed.len(), refreshed[0]["outcome"].as_str()), (1, Some("success")), "{refreshed:?}");
    // The refresh token is stored sealed, never as the provider issued it.
    let db = rusqlite::Connection::open(s.gw.config_path.with_file_name("heimdall.db")).unwrap();
    let sealed: Vec<u8> = db.query_row("SELECT refresh_token FROM sessions", [], |r| r.get(0)).unwrap();
    let readable =
        std::str::from_utf8(&sealed).is_ok_and(|t| t.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    assert!(sealed.len() > 28 && !readable);
}
