use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::harness::*;

fn stream_body(model: &str, include_usage: bool) -> serde_json::Value {
    let mut b = chat_body(model, "tell me a story");
    b["stream"] = true.into();
    if include_usage {
        b["stream_options"] = serde_json::json!({ "include_usage": true });
    }
    b
}

/// Reads a streamed response, noting when each piece arrived.
async fn read_timed(resp: reqwest::Response) -> (String, Vec<(Duration, String)>) {
    let start = Instant::now();
    let mut all = String::new();
    let mut pieces = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let text = String::from_utf8(chunk.unwrap().to_vec()).unwrap();
        pieces.push((start.elapsed(), text.clone()));
        all.push_str(&text);
    }
    (all, pieces)
}

#[tokio::test]
async fn stream_chunks_arrive_as_the_provider_sends_them() {
    let (mock, _d) = mock(&["--stream-chunks", "5", "--chunk-delay-ms", "150"]);
    let gw = gateway(&config(&mock.addr, ""));
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &stream_body("gpt-4o-mini", false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (all, pieces) = read_timed(resp).await;
    let content: Vec<_> = pieces.iter().filter(|(_, t)| t.contains("\"content\"")).collect();
    assert!(content.len() >= 4, "chunks were batched: {pieces:?}");
    // Five chunks 150 ms apart: the first arrives long before the last.
    let spread = content.last().unwrap().0 - content.first().unwrap().0;
    assert!(spread >= Duration::from_millis(450), "spread {spread:?}: {pieces:?}");
    assert!(all.ends_with("data: [DONE]\n\n"));
    let data = sse_data(&all);
    let text: String = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "mock reply to: tell me a story");
    // The gateway asked for usage to account the stream, but the client did not: no usage chunk.
    assert!(!all.contains("\"usage\":{"), "{all}");
}

#[tokio::test]
async fn a_client_that_asks_for_usage_gets_the_usage_chunk() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &stream_body("gpt-4o-mini", true)).await;
    let (all, _) = read_timed(resp).await;
    let data = sse_data(&all);
    let usage: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn anthropic_streams_are_translated_to_openai_chunks() {
    let (mock, _d) = mock(&["--stream-chunks", "4", "--chunk-delay-ms", "100"]);
    let gw = gateway(&config(&mock.addr, ""));
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &stream_body("claude-3-5-sonnet-20241022", true)).await;
    assert_eq!(resp.status(), 200);
    let (all, pieces) = read_timed(resp).await;
    let spread = pieces.last().unwrap().0 - pieces.first().unwrap().0;
    assert!(spread >= Duration::from_millis(250), "translated stream was buffered: {pieces:?}");
    let data = sse_data(&all);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(text.starts_with("mock reply to: tell me a story | system= | max_tokens=8192"), "{text}");
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage = &chunks.last().unwrap()["usage"];
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 0 && usage["completion_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_streams_all_complete() {
    let (mock, _d) = mock(&["--stream-chunks", "5", "--chunk-delay-ms", "20"]);
    let gw = gateway(&config(&mock.addr, ""));
    let url = gw.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let url = url.clone();
            let model = if i % 4 == 0 { "claude-3-5-sonnet-20241022" } else { "gpt-4o-mini" };
            tokio::spawn(async move {
                let r = post(&url, Some(KEY), &stream_body(model, false)).await;
                assert_eq!(r.status(), 200);
                r.text().await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        let body = t.await.unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    }
    assert_eq!(gw.metric("heimdall_streams_open").await, 0.0);
    assert_eq!(gw.metric("heimdall_requests_total{route=\"/v1/chat/completions\",status=\"200\"}").await, 200.0);
}

#[tokio::test]
async fn a_client_leaving_mid_stream_closes_the_upstream_stream() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &stream_body("mock-slow-stream", false)).await;
    assert_eq!(resp.status(), 200);
    let mut s = resp.bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = mock_stats(&mock).await;
        if stats["streams_cancelled"] == 1 {
            assert_eq!(stats["streams_completed"], 0, "{stats}");
            break;
        }
        assert!(Instant::now() < deadline, "upstream stream still running: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.metric("heimdall_streams_open").await, 0.0);
    assert_eq!(gw.metric("heimdall_requests_total{route=\"/v1/chat/completions\",status=\"499\"}").await, 1.0);
}

#[tokio::test]
async fn a_stalled_provider_stream_ends_with_an_error_event() {
    let (mock, _d) = mock(&[]);
    let cfg = config(&mock.addr, "").replace("stream_idle_timeout = \"5s\"", "stream_idle_timeout = \"100ms\"");
    let gw = gateway(&cfg);
    // slow-stream waits 200 ms between chunks: longer than the idle timeout.
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &stream_body("mock-slow-stream", false)).await;
    let all = resp.text().await.unwrap();
    let last = sse_data(&all).pop().unwrap();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["error"]["type"], "upstream_timeout", "{all}");
}

/// Containers often forbid io_uring; the legacy epoll driver must serve the same traffic.
#[tokio::test]
async fn the_legacy_epoll_driver_serves_streams_too() {
    let (mock, _d) = mock(&["--stream-chunks", "3", "--chunk-delay-ms", "20"]);
    let gw = gateway_with_env(&config(&mock.addr, ""), &[("MONOIO_FORCE_LEGACY_DRIVER", "1")]);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = gw.url("/v1/chat/completions");
            tokio::spawn(async move {
                post(&url, Some(KEY), &stream_body("gpt-4o-mini", false)).await.text().await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().ends_with("data: [DONE]\n\n"));
    }
    assert!(gw.proc.stderr().contains("legacy (epoll)"), "{}", gw.proc.stderr());
}
