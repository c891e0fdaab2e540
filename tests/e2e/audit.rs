//! The audit trail: one record per request with the right fields, admin changes and reloads in
//! the same chain, tamper detection, and no record lost across a SIGTERM under load.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const ADMIN: &str = "audit-admin-token";

fn audit_config(mock: &str) -> String {
    config(mock, "").replace("[server]\n", &format!("[server]\nadmin_token = \"{ADMIN}\"\n"))
}

async fn events(gw: &Gateway, query: &str) -> Vec<Value> {
    let r = client()
        .get(gw.url(&format!("/api/enterprise/audit/events?limit=1000{query}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["events"].as_array().unwrap().clone()
}

/// `GET path` with the admin token, as JSON.
async fn admin_json(gw: &Gateway, path: &str) -> Value {
    client().get(gw.url(path)).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap()
}

async fn wait_for(gw: &Gateway, query: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let e = events(gw, query).await;
        if e.len() >= n {
            return e;
        }
        assert!(std::time::Instant::now() < deadline, "only {} of {n} events: {e:?}", e.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_request_yields_exactly_one_record_with_its_outcome() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&audit_config(&mock.addr));
    let url = gw.url("/v1/chat/completions");
    for _ in 0..3 {
        assert_eq!(post(&url, Some(KEY), &chat_body("gpt-4o-mini", "hello")).await.status(), 200);
    }
    assert_eq!(post(&url, None, &chat_body("gpt-4o-mini", "x")).await.status(), 401);
    assert_eq!(post(&url, Some("vk-nobody"), &chat_body("gpt-4o-mini", "x")).await.status(), 403);
    assert_eq!(post(&url, Some("vk-mini-key"), &chat_body("gpt-4o", "x")).await.status(), 403);
    assert_eq!(post(&url, Some(KEY), &chat_body("mock-error-500", "x")).await.status(), 502);
    let all = wait_for(&gw, "", 7).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all_again = events(&gw, "").await;
    assert_eq!(all_again.len(), 7, "{all_again:?}");
    assert_eq!(all.len(), 7);

    let ok = events(&gw, "&type=api_request&outcome=success").await;
    assert_eq!(ok.len(), 3);
    let e = &ok[0];
    assert_eq!(
        (e["category"].as_str(), e["actor_type"].as_str(), e["virtual_key_id"].as_str()),
        (Some("usage"), Some("virtual_key"), Some("vk-test"))
    );
    assert_eq!(e["target_id"], "gpt-4o-mini");
    assert_eq!(e["details"]["status"], 200);
    assert!(e["details"]["prompt_tokens"].as_u64().unwrap() > 0 && e["details"]["cost_micros"].as_u64().is_some());
    assert!(e.get("request_id").is_some() && e["client_ip"] == "127.0.0.1");
    let creds = events(&gw, "&category=security&type=invalid_credential").await;
    assert_eq!(creds.len(), 2);
    assert!(creds.iter().all(|e| e["outcome"] == "denied"));
    let denied = events(&gw, "&type=model_denied").await;
    assert_eq!((denied.len(), denied[0]["virtual_key_id"].as_str()), (1, Some("vk-mini-only")));
    let failed = events(&gw, "&outcome=failure").await;
    assert_eq!((failed.len(), failed[0]["details"]["status"].as_u64()), (1, Some(502)));
    // Newest first, and cursors page through without overlap.
    let page: Value = admin_json(&gw, "/api/enterprise/audit/events?limit=4").await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest: Value = admin_json(&gw, &format!("/api/enterprise/audit/events?limit=4&cursor={cursor}")).await;
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["events"].as_array().unwrap())
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=7).rev().collect::<Vec<_>>());
}

#[tokio::test]
async fn admin_changes_and_reloads_land_in_the_trail() {
    let (mock, _d) = mock(&[]);
    let cfg = audit_config(&mock.addr);
    let gw = gateway(&cfg);
    let r = client()
        .post(gw.url("/api/governance/teams"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({ "id": "audited-team" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let e = &wait_for(&gw, "&type=data_modification", 1).await[0];
    assert_eq!(
        (e["actor_type"].as_str(), e["target_type"].as_str(), e["target_id"].as_str()),
        (Some("admin_token"), Some("team"), Some("audited-team"))
    );
    assert_eq!(e["details"]["action"], "create");
    gw.rewrite_config(&format!("{cfg}\n[[governance.customers]]\nid = \"new-customer\"\n"));
    wait_for(&gw, "&type=config_reload", 1).await;
    gw.rewrite_config(&format!("{cfg}\n[[governance.customers]]\nid = \"x\"\nbudgets = 3\n"));
    let rejected = wait_for(&gw, "&type=config_rejected", 1).await;
    let reason = rejected[0]["details"]["reason"].as_str().unwrap();
    assert!(reason.contains("heimdall.toml:") && reason.contains("expected a sequence"), "{reason}");
}

#[tokio::test]
async fn an_altered_row_is_named_by_verify() {
    let (mock, _d) = mock(&[]);
    let cfg = audit_config(&mock.addr).replace("[server]\n", "[audit]\nhmac_key = \"chain-signing-key\"\n\n[server]\n");
    let gw = gateway(&cfg);
    for _ in 0..5 {
        post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("gpt-4o-mini", "x")).await;
    }
    wait_for(&gw, "", 5).await;
    let verify = |gw: &Gateway| {
        let url = gw.url("/api/enterprise/audit/verify");
        async move { client().get(url).bearer_auth(ADMIN).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let v = verify(&gw).await;
    assert_eq!(
        (v["ok"].as_bool(), v["checked"].as_u64(), v["signed"].as_bool()),
        (Some(true), Some(5), Some(true)),
        "{v}"
    );
    let db = gw.config_path.with_file_name("heimdall.db");
    tamper_audit_record(&db, 3, "success", "failure");
    let v = verify(&gw).await;
    assert_eq!((v["ok"].as_bool(), v["first_broken"]["seq"].as_i64()), (Some(false), Some(3)), "{v}");
    assert!(v["first_broken"]["reason"].as_str().unwrap().contains("altered"));
}

#[tokio::test]
async fn sigterm_under_load_loses_no_record() {
    let (mock, _d) = mock(&["--latency-ms", "5"]);
    let mut gw = gateway(&audit_config(&mock.addr));
    let url = gw.url("/v1/chat/completions");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..20)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client();
                let mut answered = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(r) = c.post(&url).bearer_auth(KEY).json(&chat_body("gpt-4o-mini", "load")).send().await
                    else {
                        break;
                    };
                    if r.bytes().await.is_err() {
                        break;
                    }
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    gw.proc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for w in workers {
        answered += w.await.unwrap();
    }
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(15)), Some(0), "{}", gw.proc.stderr());
    let db = gw.config_path.with_file_name("heimdall.db");
    let q = heimdall::store::audit::AuditQuery { category: Some("usage".into()), ..Default::default() };
    let stored = stored_events(&db, q).len();
    assert!(answered > 50, "too little load to prove anything: {answered}");
    assert_eq!(stored as u64, answered);
}

#[tokio::test]
async fn a_tiny_ring_spills_and_the_trail_still_has_every_record() {
    let (mock, _d) = mock(&[]);
    let cfg = audit_config(&mock.addr)
        .replace("[server]\n", "[audit]\nring_capacity = 1\nflush_interval = \"1s\"\n\n[server]\n");
    let gw = gateway(&cfg);
    let url = gw.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, Some(KEY), &chat_body("gpt-4o-mini", "x")).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(gw.metric("heimdall_audit_spilled_total").await > 0.0);
    assert_eq!(wait_for(&gw, "", 40).await.len(), 40);
}

#[tokio::test]
async fn exports_come_as_json_lines_and_csv_and_are_themselves_recorded() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&audit_config(&mock.addr));
    for _ in 0..4 {
        post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("gpt-4o-mini", "x")).await;
    }
    post(&gw.url("/v1/chat/completions"), None, &chat_body("gpt-4o-mini", "x")).await;
    wait_for(&gw, "", 5).await;
    let get = |q: &str| {
        let url = gw.url(&format!("/api/enterprise/audit/export?{q}"));
        async move { client().get(url).bearer_auth(ADMIN).send().await.unwrap() }
    };
    let r = get("format=jsonl&type=api_request").await;
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["type"] == "api_request" && l["hash"].as_str().unwrap().len() == 64));

    let r = get("format=csv").await;
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let body = r.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    assert_eq!(reader.headers().unwrap().get(4), Some("type"));
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    // 5 requests plus the data_export of the first export.
    assert!(rows.len() >= 5, "{body}");
    assert!(rows.iter().any(|r| r.get(4) == Some("invalid_credential")));
    let details: Value = serde_json::from_str(rows[rows.len() - 1].get(16).unwrap()).unwrap();
    assert!(details.is_object());

    let exports = wait_for(&gw, "&type=data_export", 2).await;
    let jsonl = exports.iter().find(|e| e["details"]["format"] == "jsonl").unwrap();
    assert_eq!((jsonl["details"]["rows"].as_u64(), jsonl["actor_type"].as_str()), (Some(4), Some("admin_token")));
    let r = get("format=xml").await;
    expect_error(r, 400, "invalid_request").await;
    let r = client().get(gw.url("/api/enterprise/audit/export")).send().await.unwrap();
    expect_error(r, 401, "authentication_required").await;
}

#[tokio::test]
async fn a_batch_the_store_refuses_is_written_on_a_later_flush() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&audit_config(&mock.addr));
    let db = gw.config_path.with_file_name("heimdall.db");
    // Another writer holds SQLite's write lock past the store's 5 s busy timeout: the batch fails.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    for _ in 0..5 {
        assert_eq!(
            post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("gpt-4o-mini", "x")).await.status(),
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    conn.execute_batch("COMMIT").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let stored = loop {
        let n: i64 = conn
            .query_row("SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM audit_segments", [], |r| r.get(0))
            .unwrap();
        if n >= 5 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(stored, 5, "{}", gw.proc.stderr());
    assert!(gw.proc.stderr().contains("will retry"), "the first attempt did not fail: {}", gw.proc.stderr());
    let v: Value = admin_json(&gw, "/api/enterprise/audit/verify").await;
    assert_eq!((v["ok"].as_bool(), v["checked"].as_u64()), (Some(true), Some(5)), "{v}");
}
