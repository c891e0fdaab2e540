//! Budgets, rate limits and allow-lists across the customer → team → user → key chain.
//! Prices here are $1 per token, so every amount in the config is a token count.

use crate::harness::*;

const PRICES: &str = r#"
[pricing."gpt-4o-mini"]
input_per_mtok = 1000000.0
output_per_mtok = 1000000.0
max_output_tokens = 1000

[pricing."gpt-4o"]
input_per_mtok = 0.0
output_per_mtok = 1000000.0
max_output_tokens = 1000
"#;

fn gov_config(mock: &str, entities: &str) -> String {
    // The shared test config prices these models cheaply; replace those tables with $1/token ones.
    let base = config(mock, "");
    let base = base
        .replace(
            "[pricing.\"gpt-4o-mini\"]\ninput_per_mtok = 0.15\noutput_per_mtok = 0.60\nmax_output_tokens = 16384\n",
            "",
        )
        .replace("[pricing.\"gpt-4o\"]\ninput_per_mtok = 2.5\noutput_per_mtok = 10.0\n", "");
    format!("{base}\n{PRICES}\n{entities}")
}

fn gov(mock: &str, entities: &str) -> Gateway {
    gateway_with_env(&gov_config(mock, entities), &[("HEIMDALL_TEST_CLOCK", "1")])
}

/// A chat body with a fixed output bound; its worst case is `bytes + max_tokens` dollars here.
fn body(max_tokens: u64) -> serde_json::Value {
    let mut b = chat_body("gpt-4o-mini", "hi");
    b["max_tokens"] = max_tokens.into();
    b
}

fn worst_case(b: &serde_json::Value) -> u64 {
    serde_json::to_vec(b).unwrap().len() as u64 + b["max_tokens"].as_u64().unwrap()
}

async fn chat(gw: &Gateway, key: &str, b: &serde_json::Value) -> reqwest::Response {
    post(&gw.url("/v1/chat/completions"), Some(key), b).await
}

async fn advance(gw: &Gateway, secs: i64) {
    let r = client()
        .post(gw.url("/api/test/clock"))
        .json(&serde_json::json!({ "advance_secs": secs }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn each_levels_budget_stops_requests_and_names_the_level() {
    let (mock, _d) = mock(&[]);
    let b = body(10);
    // Room for one worst case, not two: the first request fits, the second cannot be reserved.
    let max = worst_case(&b) as f64 + 5.0;
    let entities = format!(
        r#"
[[governance.customers]]
id = "c-poor"
budgets = [{{ max_usd = {max}, reset = "1d" }}]
[[governance.customers]]
id = "c-rich"
[[governance.teams]]
id = "t-poor"
customer = "c-rich"
budgets = [{{ max_usd = {max}, reset = "1d" }}]
[[governance.teams]]
id = "t-rich"
customer = "c-rich"
[[governance.teams]]
id = "t-of-poor-customer"
customer = "c-poor"
[[governance.users]]
id = "u-poor"
teams = ["t-rich"]
budgets = [{{ max_usd = {max}, reset = "1d" }}]
[[governance.users]]
id = "u-in-poor-team"
teams = ["t-poor"]
[[governance.users]]
id = "u-in-poor-customer"
teams = ["t-of-poor-customer"]
[[governance.virtual_keys]]
id = "k-poor"
value = "k-poor"
budgets = [{{ max_usd = {max}, reset = "1d" }}]
[[governance.virtual_keys]]
id = "k-user"
value = "k-user"
user = "u-poor"
[[governance.virtual_keys]]
id = "k-team"
value = "k-team"
user = "u-in-poor-team"
[[governance.virtual_keys]]
id = "k-customer"
value = "k-customer"
user = "u-in-poor-customer"
"#
    );
    let gw = gov(&mock.addr, &entities);
    for (key, level, id) in [
        ("k-poor", "virtual_key", "k-poor"),
        ("k-user", "user", "u-poor"),
        ("k-team", "team", "t-poor"),
        ("k-customer", "customer", "c-poor"),
    ] {
        let first = chat(&gw, key, &b).await;
        assert_eq!(first.status(), 200, "{key}");
        assert!(first.headers().contains_key("x-heimdall-budget-remaining-usd"));
        let msg = expect_error(chat(&gw, key, &b).await, 402, "budget_exceeded").await;
        assert_eq!(msg, format!("budget exceeded at {level} '{id}'"), "{key}");
    }
}

#[tokio::test]
async fn concurrent_requests_never_overspend_a_budget() {
    let (mock, _d) = mock(&[]);
    // Output-only pricing and a max_tokens the mock always uses in full: every request costs
    // exactly its reservation, $2, and the budget pays for exactly 50.
    let entities = r#"
[[governance.virtual_keys]]
id = "k-burst"
value = "k-burst"
budgets = [{ max_usd = 100.0, reset = "1d" }]
"#;
    let gw = gov(&mock.addr, entities);
    for stream in [false, true] {
        if stream {
            advance(&gw, 2 * 86_400).await;
        }
        let mut b = chat_body("gpt-4o", "please write a long answer");
        b["max_tokens"] = 2.into();
        b["stream"] = stream.into();
        let url = gw.url("/v1/chat/completions");
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (url, b) = (url.clone(), b.clone());
                tokio::spawn(async move {
                    let r = post(&url, Some("k-burst"), &b).await;
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap();
                    (status, text)
                })
            })
            .collect();
        let mut ok = 0;
        let mut refused = 0;
        for t in tasks {
            let (status, text) = t.await.unwrap();
            match status {
                200 => {
                    ok += 1;
                    if stream {
                        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
                    }
                }
                402 => refused += 1,
                other => panic!("unexpected {other}: {text}"),
            }
        }
        assert_eq!((ok, refused), (50, 150), "stream={stream}");
        // Spent exactly the budget: not one more request fits.
        expect_error(post(&url, Some("k-burst"), &b).await, 402, "budget_exceeded").await;
    }
}

#[tokio::test]
async fn several_budgets_on_one_entity_reset_on_their_own_windows() {
    let (mock, _d) = mock(&[]);
    let b = body(10);
    let max = worst_case(&b) as f64 + 5.0;
    let entities = format!(
        r#"
[[governance.virtual_keys]]
id = "k-hourly"
value = "k-hourly"
budgets = [{{ max_usd = 100000.0, reset = "1d" }}, {{ max_usd = {max}, reset = "1h" }}]
[[governance.virtual_keys]]
id = "k-rolling-day"
value = "k-rolling-day"
budgets = [{{ max_usd = {max}, reset = "1d" }}]
[[governance.virtual_keys]]
id = "k-calendar-day"
value = "k-calendar-day"
budgets = [{{ max_usd = {max}, reset = "1d", calendar_aligned = true }}]
"#
    );
    let gw = gov(&mock.addr, &entities);
    for key in ["k-hourly", "k-rolling-day", "k-calendar-day"] {
        assert_eq!(chat(&gw, key, &b).await.status(), 200);
        expect_error(chat(&gw, key, &b).await, 402, "budget_exceeded").await;
    }
    // Past the next UTC midnight but less than a day later: only the calendar day has reset
    // (and the hour, when that crossing is an hour or more away).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let to_midnight = 86_400 - now.rem_euclid(86_400);
    advance(&gw, to_midnight + 1).await;
    assert_eq!(chat(&gw, "k-calendar-day", &b).await.status(), 200);
    expect_error(chat(&gw, "k-rolling-day", &b).await, 402, "budget_exceeded").await;
    // A full day after the first request, the rolling day resets too.
    advance(&gw, 86_400 - to_midnight).await;
    assert_eq!(chat(&gw, "k-rolling-day", &b).await.status(), 200);
    assert_eq!(chat(&gw, "k-hourly", &b).await.status(), 200);
    expect_error(chat(&gw, "k-hourly", &b).await, 402, "budget_exceeded").await;
}

#[tokio::test]
async fn request_limits_answer_429_with_retry_after_and_headers() {
    let (mock, _d) = mock(&[]);
    let entities = r#"
[[governance.teams]]
id = "t-slow"
rate_limits = [{ requests = 2, per = "1m" }]
[[governance.users]]
id = "u"
teams = ["t-slow"]
[[governance.virtual_keys]]
id = "k-slow"
value = "k-slow"
user = "u"
rate_limits = [{ requests = 100, per = "1m" }]
"#;
    let gw = gov(&mock.addr, entities);
    let b = body(10);
    let first = chat(&gw, "k-slow", &b).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert!(first.headers()["x-ratelimit-reset-requests"].to_str().unwrap().ends_with('s'));
    assert_eq!(chat(&gw, "k-slow", &b).await.headers()["x-ratelimit-remaining-requests"], "0");
    let refused = chat(&gw, "k-slow", &b).await;
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let msg = expect_error(refused, 429, "request_limited").await;
    assert!(msg.contains("team 't-slow'"), "{msg}");
    advance(&gw, 60).await;
    assert_eq!(chat(&gw, "k-slow", &b).await.status(), 200);
}

#[tokio::test]
async fn token_limits_count_what_responses_used() {
    let (mock, _d) = mock(&[]);
    let entities = r#"
[[governance.virtual_keys]]
id = "k-tokens"
value = "k-tokens"
rate_limits = [{ tokens = 10, per = "1h" }]
"#;
    let gw = gov(&mock.addr, entities);
    let b = body(10);
    // "hi" costs 1 prompt token and "mock reply to: hi" 5 completion tokens: 6 per request.
    let r = chat(&gw, "k-tokens", &b).await;
    assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "10");
    assert_eq!(chat(&gw, "k-tokens", &b).await.status(), 200);
    let refused = chat(&gw, "k-tokens", &b).await;
    assert!(refused.headers().contains_key("retry-after"));
    expect_error(refused, 429, "token_limited").await;
}

#[tokio::test]
async fn allow_lists_intersect_across_levels() {
    let (mock, _d) = mock(&[]);
    let entities = r#"
[[governance.teams]]
id = "t-openai"
allowed_models = ["gpt-4o-mini", "gpt-4o"]
[[governance.users]]
id = "u"
teams = ["t-openai"]
[[governance.virtual_keys]]
id = "k-4o"
value = "k-4o"
user = "u"
allowed_models = ["gpt-4o", "claude-3-5-sonnet-20241022"]
"#;
    let gw = gov(&mock.addr, entities);
    let mut b = body(10);
    b["model"] = "gpt-4o".into();
    assert_eq!(chat(&gw, "k-4o", &b).await.status(), 200);
    b["model"] = "gpt-4o-mini".into();
    let msg = expect_error(chat(&gw, "k-4o", &b).await, 403, "model_blocked").await;
    assert!(msg.contains("virtual_key 'k-4o'"), "{msg}");
    b["model"] = "claude-3-5-sonnet-20241022".into();
    let msg = expect_error(chat(&gw, "k-4o", &b).await, 403, "model_blocked").await;
    assert!(msg.contains("team 't-openai'"), "{msg}");
}

#[tokio::test]
async fn a_reload_changes_a_limit_without_resetting_usage() {
    let (mock, _d) = mock(&[]);
    let entities = |n: u32| {
        format!(
            "[[governance.virtual_keys]]\nid = \"k\"\nvalue = \"k\"\nrate_limits = [{{ requests = {n}, per = \"1h\" }}]\n"
        )
    };
    let gw = gov(&mock.addr, &entities(3));
    let b = body(10);
    for _ in 0..2 {
        assert_eq!(chat(&gw, "k", &b).await.status(), 200);
    }
    gw.rewrite_config(&gov_config(&mock.addr, &entities(4)));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while gw.metric("heimdall_config_reloads_total").await < 1.0 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    // Two used of the new four: two more fit, then the limit holds.
    assert_eq!(chat(&gw, "k", &b).await.status(), 200);
    assert_eq!(chat(&gw, "k", &b).await.status(), 200);
    expect_error(chat(&gw, "k", &b).await, 429, "request_limited").await;
}

#[tokio::test]
async fn a_model_without_a_price_is_refused_unless_allowed_free() {
    let (mock, _d) = mock(&[]);
    let cfg =
        config(&mock.addr, "").replace("[pricing.\"gpt-4o\"]\ninput_per_mtok = 2.5\noutput_per_mtok = 10.0\n", "");
    let gw = gateway(&cfg);
    let msg = expect_error(chat(&gw, KEY, &chat_body("gpt-4o", "x")).await, 422, "unpriced_model").await;
    assert!(msg.contains("gpt-4o"), "{msg}");
    assert_eq!(mock_stats(&mock).await["requests"], 0);
    let free = gateway(&cfg.replace("[server]", "[governance]\nunpriced = \"allow_free\"\n\n[server]"));
    assert_eq!(chat(&free, KEY, &chat_body("gpt-4o", "x")).await.status(), 200);
}

#[tokio::test]
async fn a_restart_keeps_the_spend_of_the_window() {
    let (mock, _d) = mock(&[]);
    let b = body(10);
    let max = worst_case(&b) as f64 + 5.0;
    let entities = format!(
        "[[governance.virtual_keys]]\nid = \"k\"\nvalue = \"k\"\nbudgets = [{{ max_usd = {max}, reset = \"1M\", calendar_aligned = true }}]\n"
    );
    let gw = gov(&mock.addr, &entities);
    assert_eq!(chat(&gw, "k", &b).await.status(), 200);
    let gw = gw.restart();
    // Had the restart forgotten the first request's spend, the worst case would fit again.
    expect_error(chat(&gw, "k", &b).await, 402, "budget_exceeded").await;
    assert!(gw.proc.stderr().contains("restored=1"), "{}", gw.proc.stderr());
}
