//! The management API under `/api/governance/`: CRUD of every kind, refusals that change
//! nothing, key rotation, the quota endpoint, and persistence across restarts.

use serde_json::{Value, json};

use crate::harness::*;

const ADMIN: &str = "admin-secret-token";

fn api_config(mock: &str) -> String {
    config(mock, "").replace("[server]\n", &format!("[server]\nadmin_token = \"{ADMIN}\"\n"))
        + "\n[[governance.customers]]\nid = \"cfg-customer\"\n"
}

async fn call(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client().request(method.parse().unwrap(), gw.url(path)).bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn expect(gw: &Gateway, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
    let (s, v) = call(gw, method, path, body).await;
    assert_eq!(s, status, "{method} {path}: {v}");
    v
}

#[tokio::test]
async fn entities_of_every_kind_can_be_created_read_listed_updated_and_deleted() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&api_config(&mock.addr));
    let g = "/api/governance";
    expect(&gw, "POST", &format!("{g}/customers"), Some(json!({ "id": "acme", "name": "Acme" })), 201).await;
    expect(&gw, "POST", &format!("{g}/teams"), Some(json!({ "id": "ml", "customer": "acme" })), 201).await;
    expect(
        &gw,
        "POST",
        &format!("{g}/users"),
        Some(json!({ "id": "alice", "email": "a@acme.test", "teams": ["ml"] })),
        201,
    )
    .await;
    let created = expect(
        &gw,
        "POST",
        &format!("{g}/virtual-keys"),
        Some(json!({ "id": "alice-key", "user": "alice", "budgets": [{ "max_usd": 5.0, "reset": "1d" }] })),
        201,
    )
    .await;
    let value = created["value"].as_str().unwrap().to_string();
    assert!(value.starts_with("sk-hd-") && value.len() == 38, "{value}");
    assert!(created["virtual_key"].get("value").is_none());
    assert_eq!(created["virtual_key"]["managed_by"], "api");
    // Published before the API answered: usable on the very next request.
    let r = post(&gw.url("/v1/chat/completions"), Some(&value), &chat_body("gpt-4o-mini", "hi")).await;
    assert_eq!(r.status(), 200);

    let got = expect(&gw, "GET", &format!("{g}/users/alice"), None, 200).await;
    assert_eq!(got["user"]["email"], "a@acme.test");
    // Config entities are listed too, marked as such.
    let list = expect(&gw, "GET", &format!("{g}/customers"), None, 200).await;
    assert_eq!(list["total_count"], 2);
    assert_eq!(list["customers"][0]["managed_by"], "config");
    let page = expect(&gw, "GET", &format!("{g}/customers?limit=1&offset=1"), None, 200).await;
    assert_eq!((page["count"].as_u64(), page["customers"][0]["id"].as_str()), (Some(1), Some("acme")));
    let filtered = expect(&gw, "GET", &format!("{g}/teams?customer=acme"), None, 200).await;
    assert_eq!(filtered["total_count"], 1);
    let searched = expect(&gw, "GET", &format!("{g}/users?search=ACME.TEST"), None, 200).await;
    assert_eq!(searched["total_count"], 1);

    let patched =
        expect(&gw, "PATCH", &format!("{g}/virtual-keys/alice-key"), Some(json!({ "active": false })), 200).await;
    assert_eq!(patched["virtual_key"]["active"], false);
    let r = post(&gw.url("/v1/chat/completions"), Some(&value), &chat_body("gpt-4o-mini", "hi")).await;
    expect_error(r, 403, "virtual_key_blocked").await;

    expect(&gw, "DELETE", &format!("{g}/virtual-keys/alice-key"), None, 200).await;
    let r = post(&gw.url("/v1/chat/completions"), Some(&value), &chat_body("gpt-4o-mini", "hi")).await;
    expect_error(r, 403, "virtual_key_not_found").await;
    expect(&gw, "GET", &format!("{g}/virtual-keys/alice-key"), None, 404).await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_named_and_changes_nothing() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&api_config(&mock.addr));
    let g = "/api/governance";
    expect(&gw, "POST", &format!("{g}/customers"), Some(json!({ "id": "acme" })), 201).await;
    expect(&gw, "POST", &format!("{g}/teams"), Some(json!({ "id": "ml", "customer": "acme" })), 201).await;
    let cases = [
        ("teams", json!({ "id": "t2", "customer": "acme", "colour": "red" }), "colour"),
        ("customers", json!({ "id": "c2", "budgets": [{ "max_usd": -1.0, "reset": "1d" }] }), "max_usd"),
        (
            "customers",
            json!({ "id": "c3", "budgets": [{ "max_usd": 1.0, "reset": "1d" }, { "max_usd": 2.0, "reset": "1d" }] }),
            "reset",
        ),
        ("teams", json!({ "id": "t3", "customer": "ghost" }), "unknown customer `ghost`"),
        ("virtual-keys", json!({ "id": "k1", "team": "ml", "customer": "acme" }), "not both"),
        ("virtual-keys", json!({ "id": "k2", "value": "chosen-by-me" }), "value"),
        ("customers", json!({ "id": "c4", "budgets": [{ "max_usd": 1.0, "reset": "2d" }] }), "invalid window"),
    ];
    for (kind, body, needle) in cases {
        let (status, v) = call(&gw, "POST", &format!("{g}/{kind}"), Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let (status, _) = call(&gw, "POST", &format!("{g}/customers"), Some(json!({ "id": "acme" }))).await;
    assert_eq!(status, 409, "duplicate id");
    let (status, v) = call(&gw, "DELETE", &format!("{g}/customers/acme"), None).await;
    assert_eq!(status, 409);
    assert!(v["error"]["message"].as_str().unwrap().contains("team 'ml'"), "{v}");
    let (status, v) = call(&gw, "PATCH", &format!("{g}/customers/cfg-customer"), Some(json!({ "name": "x" }))).await;
    assert_eq!(status, 409);
    assert!(v["error"]["message"].as_str().unwrap().contains("managed by config"), "{v}");
    let (status, _) = call(&gw, "DELETE", &format!("{g}/customers/cfg-customer"), None).await;
    assert_eq!(status, 409);
    let (status, _) = call(&gw, "PATCH", &format!("{g}/teams/ml"), Some(json!({ "customer": "ghost" }))).await;
    assert_eq!(status, 400);
    // Nothing above changed anything.
    assert_eq!(expect(&gw, "GET", &format!("{g}/customers"), None, 200).await["total_count"], 2);
    assert_eq!(expect(&gw, "GET", &format!("{g}/teams"), None, 200).await["total_count"], 1);
    assert_eq!(expect(&gw, "GET", &format!("{g}/teams/ml"), None, 200).await["team"]["customer"], "acme");
    assert_eq!(expect(&gw, "GET", &format!("{g}/virtual-keys?managed_by=api"), None, 200).await["total_count"], 0);
}

#[tokio::test]
async fn the_api_wants_the_admin_token() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&api_config(&mock.addr));
    let r = client().get(gw.url("/api/governance/customers")).send().await.unwrap();
    expect_error(r, 401, "authentication_required").await;
    let r = client().get(gw.url("/api/governance/customers")).bearer_auth("wrong").send().await.unwrap();
    expect_error(r, 403, "user_not_authorized").await;
    let closed = gateway(&config(&mock.addr, ""));
    let r = client().get(closed.url("/api/governance/customers")).bearer_auth(ADMIN).send().await.unwrap();
    let msg = expect_error(r, 403, "user_not_authorized").await;
    assert!(msg.contains("admin_token"), "{msg}");
}

#[tokio::test]
async fn rotating_a_key_retires_the_old_value_at_once() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&api_config(&mock.addr));
    let created = expect(&gw, "POST", "/api/governance/virtual-keys", Some(json!({ "name": "svc" })), 201).await;
    let id = created["virtual_key"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("vk-"), "{id}");
    let old = created["value"].as_str().unwrap().to_string();
    let rotated = expect(&gw, "POST", &format!("/api/governance/virtual-keys/{id}/rotate"), None, 200).await;
    let new = rotated["value"].as_str().unwrap();
    assert_ne!(old, new);
    let url = gw.url("/v1/chat/completions");
    expect_error(post(&url, Some(&old), &chat_body("gpt-4o-mini", "x")).await, 403, "virtual_key_not_found").await;
    assert_eq!(post(&url, Some(new), &chat_body("gpt-4o-mini", "x")).await.status(), 200);
}

#[tokio::test]
async fn a_key_reads_its_own_quota_along_its_chain() {
    let (mock, _d) = mock(&[]);
    let extra = "[[governance.teams]]\nid = \"t\"\nbudgets = [{ max_usd = 100.0, reset = \"1M\", calendar_aligned = true }]\nrate_limits = [{ requests = 10, tokens = 1000, per = \"1h\" }]\n\
[[governance.users]]\nid = \"u\"\nteams = [\"t\"]\n\
[[governance.virtual_keys]]\nid = \"k-q\"\nvalue = \"k-q\"\nuser = \"u\"\nbudgets = [{ max_usd = 1.0, reset = \"1d\" }]\n";
    let gw = gateway(&(api_config(&mock.addr) + extra));
    assert_eq!(
        post(&gw.url("/v1/chat/completions"), Some("k-q"), &chat_body("gpt-4o-mini", "hello")).await.status(),
        200
    );
    let r = client().get(gw.url("/api/governance/virtual-keys/quota")).bearer_auth("k-q").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let q: Value = r.json().await.unwrap();
    assert_eq!(q["virtual_key"], "k-q");
    let budgets = q["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 2);
    assert_eq!((budgets[0]["level"].as_str(), budgets[0]["max_usd"].as_f64()), (Some("virtual_key"), Some(1.0)));
    assert!(budgets[0]["spent_usd"].as_f64().unwrap() > 0.0, "{q}");
    assert_eq!(budgets[1]["level"], "team");
    assert_eq!(budgets[1]["calendar_aligned"], true);
    let limit = &q["rate_limits"][0];
    assert_eq!((limit["level"].as_str(), limit["requests"]["used"].as_u64()), (Some("team"), Some(1)));
    assert!(limit["tokens"]["used"].as_u64().unwrap() > 0, "{q}");
    let r = client().get(gw.url("/api/governance/virtual-keys/quota")).bearer_auth("nope").send().await.unwrap();
    expect_error(r, 403, "virtual_key_not_found").await;
}

#[tokio::test]
async fn api_entities_survive_a_restart() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&api_config(&mock.addr));
    let created = expect(&gw, "POST", "/api/governance/virtual-keys", Some(json!({ "id": "kept" })), 201).await;
    let value = created["value"].as_str().unwrap().to_string();
    let gw = gw.restart();
    let got = expect(&gw, "GET", "/api/governance/virtual-keys/kept", None, 200).await;
    assert_eq!(got["virtual_key"]["managed_by"], "api");
    assert_eq!(post(&gw.url("/v1/chat/completions"), Some(&value), &chat_body("gpt-4o-mini", "x")).await.status(), 200);
}

#[tokio::test]
async fn usage_by_day_and_model_is_kept_for_every_level_of_the_chain() {
    let (mock, _d) = mock(&[]);
    let extra = "[[governance.customers]]\nid = \"c-u\"\n[[governance.teams]]\nid = \"t-u\"\ncustomer = \"c-u\"\n\
[[governance.users]]\nid = \"u-u\"\nteams = [\"t-u\"]\n\
[[governance.virtual_keys]]\nid = \"k-u\"\nvalue = \"k-u\"\nuser = \"u-u\"\n";
    let gw = gateway(&(api_config(&mock.addr) + extra));
    let url = gw.url("/v1/chat/completions");
    for model in ["gpt-4o-mini", "gpt-4o-mini", "claude-3-5-sonnet-20241022"] {
        assert_eq!(post(&url, Some("k-u"), &chat_body(model, "count me")).await.status(), 200);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let key_usage = loop {
        let u = expect(&gw, "GET", "/api/governance/virtual-keys/k-u/usage", None, 200).await;
        if u["total"]["requests"] == 3 {
            break u;
        }
        assert!(std::time::Instant::now() < deadline, "usage not rolled up: {u}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let rows = key_usage["usage"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{key_usage}");
    let mini = rows.iter().find(|r| r["model"] == "gpt-4o-mini").unwrap();
    assert_eq!(mini["requests"], 2);
    assert!(mini["cost_usd"].as_f64().unwrap() > 0.0 && mini["prompt_tokens"].as_u64().unwrap() > 0);
    for (kind, id) in [("users", "u-u"), ("teams", "t-u"), ("customers", "c-u")] {
        let u = expect(&gw, "GET", &format!("/api/governance/{kind}/{id}/usage"), None, 200).await;
        assert_eq!(u["total"], key_usage["total"], "{kind}");
    }
    let (status, _) = call(&gw, "GET", "/api/governance/virtual-keys/k-u/usage?from=yesterday", None).await;
    assert_eq!(status, 400);
    let (status, _) = call(&gw, "GET", "/api/governance/virtual-keys/nobody/usage", None).await;
    assert_eq!(status, 404);
}
