use crate::harness::*;

#[tokio::test]
async fn every_client_error_has_its_status_and_type() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let chat = gw.url("/v1/chat/completions");

    let r = client().post(&chat).bearer_auth(KEY).body("{not json").send().await.unwrap();
    expect_error(r, 400, "invalid_request").await;

    let r = post(&chat, Some(KEY), &serde_json::json!({ "messages": [] })).await;
    let msg = expect_error(r, 400, "invalid_request").await;
    assert!(msg.contains("model"), "{msg}");

    expect_error(post(&chat, None, &chat_body("gpt-4o-mini", "x")).await, 401, "authentication_required").await;
    expect_error(post(&chat, Some("vk-nobody"), &chat_body("gpt-4o-mini", "x")).await, 403, "virtual_key_not_found")
        .await;
    expect_error(post(&chat, Some("vk-off-key"), &chat_body("gpt-4o-mini", "x")).await, 403, "virtual_key_blocked")
        .await;
    let msg =
        expect_error(post(&chat, Some("vk-mini-key"), &chat_body("gpt-4o", "x")).await, 403, "model_blocked").await;
    assert!(msg.contains("vk-mini-only"), "{msg}");
    let msg = expect_error(
        post(&chat, Some("vk-openai-key"), &chat_body("claude-3-5-sonnet-20241022", "x")).await,
        403,
        "provider_blocked",
    )
    .await;
    assert!(msg.contains("anthropic"), "{msg}");
    expect_error(post(&chat, Some(KEY), &chat_body("gpt-9-ultra", "x")).await, 404, "model_not_found").await;
    expect_error(post(&chat, Some(KEY), &chat_body("openai/gpt-9-ultra", "x")).await, 404, "model_not_found").await;

    let big = "x".repeat(70_000);
    expect_error(post(&chat, Some(KEY), &chat_body("gpt-4o-mini", &big)).await, 413, "payload_too_large").await;

    let r = client().get(&chat).bearer_auth(KEY).send().await.unwrap();
    expect_error(r, 405, "method_not_allowed").await;
    let r = client().get(gw.url("/v1/nothing-here")).bearer_auth(KEY).send().await.unwrap();
    expect_error(r, 404, "not_found").await;
    // Paths the control plane owns answer through the hand-off channel, in the same JSON shape.
    let r = client().get(gw.url("/api/nothing-mounted-here")).send().await.unwrap();
    expect_error(r, 404, "not_found").await;

    // None of these reached the provider.
    assert_eq!(mock_stats(&mock).await["requests"], 0);
}

#[tokio::test]
async fn a_body_without_content_length_is_still_limited() {
    use std::io::{Read, Write};
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    // A raw socket: the gateway may answer and close before the client has finished sending,
    // which an HTTP client library reports as a send error instead of showing the answer.
    let mut s = std::net::TcpStream::connect(&gw.proc.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let chunk = format!("2000\r\n{}\r\n", " ".repeat(0x2000));
    for _ in 0..20 {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"type\":\"payload_too_large\""), "{answer}");
}

#[tokio::test]
async fn a_chunked_body_sent_in_pieces_is_read_whole() {
    use std::io::{Read, Write};
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let mut s = std::net::TcpStream::connect(&gw.proc.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let body = chat_body("gpt-4o-mini", "three pieces make one body").to_string();
    let (a, rest) = body.split_at(10);
    let (b, c) = rest.split_at(20);
    for piece in [a, b, c] {
        s.write_all(format!("{:x}\r\n{piece}\r\n", piece.len()).as_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("mock reply to: three pieces make one body"), "{answer}");
}

#[tokio::test]
async fn a_provider_4xx_is_relayed_and_not_retried() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let r = post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("mock-error-400", "x")).await;
    let msg = expect_error(r, 400, "invalid_request").await;
    assert!(msg.contains("provider 'openai'"), "{msg}");
    assert_eq!(mock_stats(&mock).await["requests"], 1);
}

#[tokio::test]
async fn an_unreachable_provider_is_a_502() {
    // A port nobody listens on: bind one, learn it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (mock, _d) = mock(&[]);
    let extra = format!(
        "[[providers]]\nname = \"dead\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmodels = [\"dead-model\"]\nkeys = [{{ value = \"k\" }}]\nmax_retries = 1\nretry_backoff = \"5ms\"\n[pricing.\"dead-model\"]\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\n"
    );
    let gw = gateway(&config(&mock.addr, &extra));
    let msg = expect_error(
        post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("dead-model", "x")).await,
        502,
        "upstream_error",
    )
    .await;
    assert!(msg.contains("unreachable"), "{msg}");
    assert_eq!(gw.metric("heimdall_upstream_errors_total{kind=\"connect\"}").await, 2.0);
}

#[tokio::test]
async fn a_provider_that_does_not_answer_in_time_is_a_504() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let started = std::time::Instant::now();
    let r = post(&gw.url("/v1/chat/completions"), Some(KEY), &chat_body("mock-hang", "x")).await;
    expect_error(r, 504, "upstream_timeout").await;
    // The provider timeout in the test config is 2 s, and a timeout is not retried.
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(1900) && took < std::time::Duration::from_secs(5), "{took:?}");
}
