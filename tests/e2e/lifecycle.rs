use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;

use crate::harness::*;

#[tokio::test]
async fn sigterm_lets_an_in_flight_stream_finish_then_exits_cleanly() {
    let (mock, _d) = mock(&["--stream-chunks", "6", "--chunk-delay-ms", "150"]);
    let mut gw = gateway(&config(&mock.addr, ""));
    let mut body = chat_body("gpt-4o-mini", "long answer please");
    body["stream"] = true.into();
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &body).await;
    assert_eq!(resp.status(), 200);
    let mut s = resp.bytes_stream();
    let mut all = String::from_utf8(s.next().await.unwrap().unwrap().to_vec()).unwrap();
    gw.proc.signal("TERM");
    while let Some(chunk) = s.next().await {
        all.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(all.ends_with("data: [DONE]\n\n"), "the stream was cut: {all}");
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(10)), Some(0), "{}", gw.proc.stderr());
    let log = gw.proc.stderr();
    assert!(log.contains("every ring drained"), "{log}");
}

#[tokio::test]
async fn new_connections_are_refused_after_sigterm() {
    let (mock, _d) = mock(&["--stream-chunks", "4", "--chunk-delay-ms", "300"]);
    let mut gw = gateway(&config(&mock.addr, ""));
    let mut body = chat_body("gpt-4o-mini", "x");
    body["stream"] = true.into();
    let resp = post(&gw.url("/v1/chat/completions"), Some(KEY), &body).await;
    gw.proc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = reqwest::Client::new().get(gw.url("/health")).send().await;
    assert!(late.is_err(), "a new connection was accepted while draining");
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn check_names_file_line_and_reason_of_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:8080\"\nworkers = \"two\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_heimdall"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:") && err.contains("invalid type"), "{err}");

    let good = concat!(env!("CARGO_MANIFEST_DIR"), "/config/heimdall.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_heimdall")).args(["check", "--config", good]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn serve_refuses_to_start_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[[providers]]\nname = \"x\"\nkind = \"grpc\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_heimdall"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:") && err.contains("grpc"), "{err}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let (mock, _d) = mock(&[]);
    let gw = gateway(&config(&mock.addr, ""));
    let url = gw.url("/v1/chat/completions");
    post(&url, Some(KEY), &chat_body("gpt-4o-mini", "x")).await;
    post(&url, Some(KEY), &chat_body("gpt-4o-mini", "x")).await;
    post(&url, None, &chat_body("gpt-4o-mini", "x")).await;
    assert_eq!(gw.metric("heimdall_requests_total{route=\"/v1/chat/completions\",status=\"200\"}").await, 2.0);
    assert_eq!(gw.metric("heimdall_requests_total{route=\"/v1/chat/completions\",status=\"401\"}").await, 1.0);
    assert_eq!(gw.metric("heimdall_request_duration_seconds_count{route=\"/v1/chat/completions\"}").await, 3.0);
    // Every audited request reaches the control plane within a few flush intervals.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.metric("heimdall_audit_records_total").await, 3.0);
    assert_eq!(gw.metric("heimdall_audit_ring_depth").await, 0.0);
}

#[tokio::test]
async fn a_tiny_ring_spills_but_loses_no_record() {
    let (mock, _d) = mock(&[]);
    let cfg =
        config(&mock.addr, "").replace("[server]", "[audit]\nring_capacity = 1\nflush_interval = \"2s\"\n\n[server]");
    let gw = gateway(&cfg);
    let url = gw.url("/v1/chat/completions");
    for _ in 0..20 {
        post(&url, Some(KEY), &chat_body("gpt-4o-mini", "x")).await;
    }
    assert!(gw.metric("heimdall_audit_spilled_total").await > 0.0);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(gw.metric("heimdall_audit_records_total").await, 20.0);
}

#[tokio::test]
async fn the_epoll_driver_serves_plain_and_streamed_chats_when_asked_for() {
    let (mock, _d) = mock(&[]);
    let cfg = config(&mock.addr, "").replace("[server]\n", "[server]\nio_driver = \"epoll\"\n");
    let gw = gateway(&cfg);
    let url = gw.url("/v1/chat/completions");
    let r = post(&url, Some(KEY), &chat_body("gpt-4o-mini", "hello")).await;
    assert_eq!(r.status(), 200);
    let mut body = chat_body("gpt-4o-mini", "hello");
    body["stream"] = true.into();
    let text = post(&url, Some(KEY), &body).await.text().await.unwrap();
    assert_eq!(sse_data(&text).last().map(String::as_str), Some("[DONE]"), "{text}");
    assert!(gw.proc.stderr().contains("driver=\"legacy (epoll)\""), "{}", gw.proc.stderr());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_does_not_hold_up_shutdown() {
    use std::io::{Read, Write};
    let (mock, _d) = mock(&[]);
    let mut gw = gateway(&config(&mock.addr, ""));
    let mut s = std::net::TcpStream::connect(&gw.proc.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 1024];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    // The connection stays open and idle; the grace period is 30 s, the drain must not wait it out.
    let asked = std::time::Instant::now();
    gw.proc.signal("TERM");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing more is sent on a drained idle connection");
    assert_eq!(gw.proc.wait_exit(Duration::from_secs(10)), Some(0), "{}", gw.proc.stderr());
    assert!(asked.elapsed() < Duration::from_secs(5), "drain took {:?}", asked.elapsed());
}
