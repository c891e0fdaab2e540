use crate::harness::*;

#[tokio::test]
async fn a_refused_key_is_retried_on_another_key() {
    let (mock, _d) = mock(&[]);
    let cfg = config(&mock.addr, "").replace(
        r#"keys = [{ value = "sk-good" }]"#,
        r#"keys = [{ value = "bad-key", weight = 100.0 }, { value = "sk-good", weight = 0.01 }]"#,
    );
    let gw = gateway(&cfg);
    for _ in 0..5 {
        let r = post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("gpt-4o-mini", "x")).await;
        assert_eq!(r.status(), 200);
    }
    let stats = mock_stats(&mock).await;
    assert_eq!(stats["requests_by_key"]["sk-good"], 5, "{stats}");
    assert!(gw.metric("heimdall_upstream_errors_total{kind=\"key_refused\"}").await >= 1.0);
}

#[tokio::test]
async fn a_rate_limited_key_is_retried_on_another_key() {
    let (mock, _d) = mock(&[]);
    let cfg = config(&mock.addr, "").replace(
        r#"keys = [{ value = "sk-good" }]"#,
        r#"keys = [{ value = "limited-key", weight = 100.0 }, { value = "sk-good", weight = 0.01 }]"#,
    );
    let gw = gateway(&cfg);
    let r = post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("gpt-4o-mini", "x")).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_as_502() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let r = post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("mock-error-500", "x")).await;
    let msg = expect_error(r, 502, "upstream_error").await;
    assert!(msg.contains("500"), "{msg}");
    // max_retries defaults to 2: three attempts in all.
    assert_eq!(mock_stats(&mock).await["requests"], 3);
}

#[tokio::test]
async fn a_provider_429_after_retries_is_a_429_with_retry_after() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let r = post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("mock-error-429", "x")).await;
    assert!(r.headers().contains_key("retry-after"));
    expect_error(r, 429, "rate_limited").await;
}

#[tokio::test]
async fn fallbacks_take_over_when_the_requested_model_fails() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let mut body = chat_body("mock-error-500", "hello");
    body["fallbacks"] = serde_json::json!(["anthropic/claude-3-5-sonnet-20241022"]);
    let r = post(&gw.url("/v1/chat/completions"), Some(KEY), &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-heimdall-provider"], "anthropic");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().starts_with("mock reply to: hello"));
}

#[tokio::test]
async fn a_fallback_outside_the_allow_list_is_refused_up_front() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let mut body = chat_body("gpt-4o-mini", "hello");
    body["fallbacks"] = serde_json::json!(["gpt-4o"]);
    expect_error(post(&gw.url("/v1/chat/completions"), Some("vk-mini-key"), &body).await, 403, "model_blocked").await;
    body["fallbacks"] = serde_json::json!(["nope-model"]);
    expect_error(post(&gw.url("/v1/chat/completions"), Some(KEY), &body).await, 400, "invalid_request").await;
    assert_eq!(mock_stats(&mock).await["requests"], 0);
}
