//! Audit store throughput: chained batch inserts (records/s) and a query by user over the whole
//! table. Not criterion: it builds one large table once. `AUDIT_BENCH_ROWS=10000000 cargo bench --bench audit_store`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::time::Instant;

use heimdall::audit::event::AuditEvent;
use heimdall::store::Store;
use heimdall::store::audit::AuditQuery;
use serde_json::json;

fn main() {
    let rows: usize = std::env::var("AUDIT_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let batch = 2000;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("bench.db")).unwrap();
    let users = 10_000;
    let mut insert = std::time::Duration::ZERO;
    let mut written = 0;
    let mut events = Vec::with_capacity(batch);
    while written < rows {
        events.clear();
        for i in written..(written + batch).min(rows) {
            let mut e = AuditEvent::system(
                "usage",
                "api_request",
                "success",
                json!({
                    "route": "/v1/chat/completions", "status": 200, "model": "gpt-4o-mini", "provider": "openai",
                    "prompt_tokens": 120, "completion_tokens": 48, "cost_micros": 47, "latency_us": 950, "stream": false,
                }),
            );
            e.user_id = Some(format!("user-{}", i % users));
            e.team_id = Some(format!("team-{}", i % 100));
            e.customer_id = Some(format!("customer-{}", i % 10));
            e.virtual_key_id = Some(format!("vk-{}", i % (users * 2)));
            e.actor_type = "virtual_key".into();
            e.actor_id = e.virtual_key_id.clone();
            e.client_ip = Some("10.1.2.3".into());
            events.push(e);
        }
        let t = Instant::now();
        store.append_audit(&events, Some(b"bench-key")).unwrap();
        insert += t.elapsed();
        written += events.len();
    }
    println!(
        "insert: {rows} records in {:.2} s of store time = {:.0} records/s (batches of {batch}, HMAC-chained, one transaction each; building the records is not timed)",
        insert.as_secs_f64(),
        rows as f64 / insert.as_secs_f64()
    );
    for (label, q) in [
        ("newest 100 of one user", AuditQuery { user_id: Some("user-4242".into()), limit: 100, ..Default::default() }),
        ("newest 100 of one team", AuditQuery { team_id: Some("team-42".into()), limit: 100, ..Default::default() }),
        (
            "newest 100 of one key",
            AuditQuery { virtual_key_id: Some("vk-77".into()), limit: 100, ..Default::default() },
        ),
        (
            "newest 100 successes of one user",
            AuditQuery {
                user_id: Some("user-4242".into()),
                outcome: Some("success".into()),
                limit: 100,
                ..Default::default()
            },
        ),
        ("newest 100 overall", AuditQuery { limit: 100, ..Default::default() }),
    ] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let got = store.query_audit(&q).unwrap();
            assert!(!got.is_empty());
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!("query {label} over {rows} rows: {best:.2} ms (best of 5)");
    }
}
