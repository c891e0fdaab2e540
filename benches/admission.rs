//! Criterion bench of admission: reserve the worst case and count the request at every level of a
//! 4-level chain (key → user → team → customer, each with a budget and a rate limit), then settle.
//! `cargo bench --bench admission`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use heimdall::governance::admit::admit;
use heimdall::governance::counters::CounterRegistry;
use heimdall::{config, snapshot::Snapshot};

fn snapshot() -> Arc<Snapshot> {
    let text = r#"
[[governance.customers]]
id = "c"
budgets = [{ max_usd = 1000000000.0, reset = "1M", calendar_aligned = true }]
rate_limits = [{ requests = 1000000000000, per = "1h" }]
[[governance.teams]]
id = "t"
customer = "c"
budgets = [{ max_usd = 1000000000.0, reset = "1d" }]
rate_limits = [{ requests = 1000000000000, tokens = 1000000000000, per = "1m" }]
[[governance.users]]
id = "u"
teams = ["t"]
budgets = [{ max_usd = 1000000000.0, reset = "1w", calendar_aligned = true }]
rate_limits = [{ requests = 1000000000000, per = "1d" }]
[[governance.virtual_keys]]
id = "k"
value = "k"
user = "u"
budgets = [{ max_usd = 1000000000.0, reset = "1h" }]
rate_limits = [{ requests = 1000000000000, per = "1m" }]
"#;
    let loaded = config::parse(Path::new("bench.toml"), text).unwrap();
    Arc::new(Snapshot::build(&loaded, 1, &CounterRegistry::default()).unwrap())
}

fn benches(c: &mut Criterion) {
    let snap = snapshot();
    assert_eq!(snap.virtual_keys[0].chain.len(), 4);
    let now = heimdall::governance::clock::now();
    c.bench_function("admit + settle, 4-level chain, budget and limit at every level", |b| {
        b.iter(|| {
            let a = admit(snap.clone(), black_box(heimdall::auth::ChainRef::Key(0)), black_box(2_500), now).unwrap();
            a.settle(black_box(1_200), black_box(300));
        })
    });
}

criterion_group!(admission, benches);
criterion_main!(admission);
