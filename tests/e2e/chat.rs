use crate::harness::*;

#[tokio::test]
async fn a_chat_completion_returns_the_providers_answer_with_usage() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("gpt-4o-mini", "hello there")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-heimdall-provider"], "openai");
    assert!(resp.headers().contains_key("x-request-id"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply to: hello there");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
}

#[tokio::test]
async fn the_key_is_accepted_in_every_documented_header() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    for header in ["x-bf-vk", "x-api-key", "api-key"] {
        let resp = client()
            .post(gw.url("/v1/chat/completions"))
            .header(header, KEY)
            .json(&chat_body("gpt-4o-mini", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{header}");
    }
}

#[tokio::test]
async fn a_provider_prefix_routes_and_is_stripped_before_forwarding() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("openai/gpt-4o", "x")).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    // The mock echoes the model it was sent.
    assert_eq!(v["model"], "gpt-4o");
}

#[tokio::test]
async fn the_client_request_id_is_echoed() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let id = "0190c5a6-3b7a-7c1e-9a55-0123456789ab";
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-request-id", id)
        .json(&chat_body("gpt-4o-mini", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], id);
}

#[tokio::test]
async fn anthropic_requests_are_translated_both_ways() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let body = serde_json::json!({
        "model": "claude-3-5-sonnet-20241022",
        "messages": [
            { "role": "system", "content": "be brief" },
            { "role": "user", "content": "hello claude" }
        ]
    });
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-heimdall-provider"], "anthropic");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // The mock echoes what it received: system moved to the top level, max_tokens from the pricing table.
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "mock reply to: hello claude | system=be brief | max_tokens=8192"
    );
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap() + v["usage"]["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn anthropic_tool_calls_come_back_as_openai_tool_calls() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let body = serde_json::json!({
        "model": "claude-3-5-sonnet-20241022",
        "max_tokens": 100,
        "messages": [{ "role": "user", "content": "what is the weather in Paris?" }],
        "tools": [{ "type": "function", "function": { "name": "get_weather", "parameters": { "type": "object" } } }]
    });
    let v: serde_json::Value = post(&gw.url("/v1/chat/completions"), Some(KEY), &body).await.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    let args: serde_json::Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["city"], "Paris");
}

#[tokio::test]
async fn embeddings_are_forwarded_and_anthropic_refuses_them() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let body = serde_json::json!({ "model": "text-embedding-3-small", "input": ["a", "b"] });
    let resp = post(&gw.url("/v1/embeddings"), Some(KEY), &body).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let body = serde_json::json!({ "model": "claude-3-5-sonnet-20241022", "input": "a" });
    let msg = expect_error(post(&gw.url("/v1/embeddings"), Some(KEY), &body).await, 400, "invalid_request").await;
    assert!(msg.contains("embeddings"), "{msg}");
}

#[tokio::test]
async fn models_lists_only_what_the_key_may_use() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let ids = |v: serde_json::Value| -> Vec<String> {
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    };
    let all = ids(client().get(gw.url("/v1/models")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap());
    assert!(
        all.contains(&"gpt-4o-mini".to_string()) && all.contains(&"claude-3-5-sonnet-20241022".to_string()),
        "{all:?}"
    );
    let mini =
        ids(client().get(gw.url("/v1/models")).bearer_auth("vk-mini-key").send().await.unwrap().json().await.unwrap());
    assert_eq!(mini, vec!["gpt-4o-mini".to_string()]);
    let openai = ids(client()
        .get(gw.url("/v1/models"))
        .bearer_auth("vk-openai-key")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap());
    assert!(!openai.iter().any(|m| m.starts_with("claude")), "{openai:?}");
    let resp = client().get(gw.url("/v1/models")).send().await.unwrap();
    expect_error(resp, 401, "authentication_required").await;
}

#[tokio::test]
async fn keep_alive_connections_are_reused_upstream() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let c = client();
    for _ in 0..30 {
        let r = c
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .json(&chat_body("gpt-4o-mini", "hi"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let stats = mock_stats(&mock).await;
    assert_eq!(stats["requests"], 30);
    // One client connection lands on one core; that core keeps one upstream connection alive.
    assert!(stats["connections_accepted"].as_u64().unwrap() <= 2, "{stats}");
    // The test client's kept-alive connection, plus the one that scrapes the metrics.
    assert_eq!(gw.metric("heimdall_connections_open").await, 2.0);
}
