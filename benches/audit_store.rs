//! Audit store throughput: chained batch inserts (records/s) of request records as the drainer
//! writes them, and queries over the whole trail. Not criterion: it builds one large store once.
//! `AUDIT_BENCH_ROWS=10000000 cargo bench --bench audit_store`; `AUDIT_BENCH_BATCH` sets the
//! records a batch (default 400: what a 10 ms flush holds at 40k requests a second).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::time::Instant;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use heimdall::audit::event::RequestEvent;
use heimdall::audit::{Outcome, RequestRecord};
use heimdall::metrics::RouteLabel;
use heimdall::providers::Usage;
use heimdall::store::Store;
use heimdall::store::audit::AuditQuery;

fn main() {
    let rows: usize = std::env::var("AUDIT_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let batch: usize = std::env::var("AUDIT_BENCH_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(400);
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("bench.db")).unwrap();
    let users = 10_000;
    let mut insert = std::time::Duration::ZERO;
    let mut written = 0;
    let mut events = Vec::with_capacity(batch);
    // Interned as the snapshot holds them: the ring's records share these.
    let names = |prefix: &str, n: usize| (0..n).map(|i| Arc::<str>::from(format!("{prefix}-{i}"))).collect::<Vec<_>>();
    let (user_ids, team_ids, customer_ids, key_ids) =
        (names("user", users), names("team", 100), names("customer", 10), names("vk", users * 2));
    let (provider, model): (Arc<str>, String) = ("openai".into(), "gpt-4o-mini".into());
    while written < rows {
        events.clear();
        for i in written..(written + batch).min(rows) {
            // What >99% of a gateway's trail is: one request's record, as the drainer writes it.
            events.push(RequestEvent::new(RequestRecord {
                request_id: uuid::Uuid::now_v7(),
                at_unix_ms: 1_800_000_000_000 + i as u64 / 40,
                core: (i % 2) as u16,
                route: RouteLabel::ChatCompletions,
                status: 200,
                error_type: None,
                outcome: Outcome::Completed,
                client_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
                virtual_key: Some(key_ids[i % (users * 2)].clone()),
                user: Some(user_ids[i % users].clone()),
                team: Some(team_ids[i % 100].clone()),
                customer: Some(customer_ids[i % 10].clone()),
                provider: Some(provider.clone()),
                model: Some(model.clone()),
                stream: false,
                attempts: 1,
                usage: Some(Usage { prompt_tokens: 120, completion_tokens: 48 }),
                cost_micros: Some(47),
                latency_us: 900 + (i % 200) as u64,
                ttfb_us: None,
            }));
        }
        let t = Instant::now();
        store.append_audit(&events, Some(b"bench-key")).unwrap();
        insert += t.elapsed();
        written += events.len();
    }
    let bytes: u64 = std::fs::read_dir(dir.path()).unwrap().map(|f| f.unwrap().metadata().unwrap().len()).sum();
    println!("store size: {:.1} MiB ({:.0} bytes a record)", bytes as f64 / 1048576.0, bytes as f64 / rows as f64);
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
            "newest 100 of one customer in one hour",
            AuditQuery {
                customer_id: Some("customer-3".into()),
                from_ms: Some(1_800_000_000_000 + rows as i64 / 80),
                to_ms: Some(1_800_000_000_000 + rows as i64 / 80 + 3_600_000),
                limit: 100,
                ..Default::default()
            },
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
