//! The gateway's HTTP/1.1 client on the upstream leg, against a provider that writes raw bytes
//! on a real loopback socket: framings the mock upstream never uses, connections the provider
//! closes without saying so, and broken responses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::*;

/// What the raw provider sends for one request: pieces written with a pause between them (so
/// they reach the gateway in separate reads), and whether it then closes the connection. An
/// empty piece is a stall: [`STALL`] without writing anything.
struct Answer {
    pieces: Vec<Vec<u8>>,
    close: bool,
}

struct RawProvider {
    addr: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

fn raw_provider(answer: impl Fn(usize) -> Answer + Send + Sync + 'static) -> RawProvider {
    provider_on(None, answer)
}

/// The same provider behind TLS, with the test certificate for 127.0.0.1 (signed by
/// `testdata/ca.pem`).
fn tls_provider(answer: impl Fn(usize) -> Answer + Send + Sync + 'static) -> RawProvider {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    crypto();
    let certs = CertificateDer::pem_file_iter(testdata("provider.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(testdata("provider.key")).unwrap();
    let cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    provider_on(Some(Arc::new(cfg)), answer)
}

fn testdata(name: &str) -> String {
    format!("{}/tests/e2e/testdata/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn provider_on(
    tls: Option<Arc<rustls::ServerConfig>>,
    answer: impl Fn(usize) -> Answer + Send + Sync + 'static,
) -> RawProvider {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let (c, r) = (connections.clone(), requests.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let (r, answer, tls) = (r.clone(), answer.clone(), tls.clone());
            std::thread::spawn(move || match tls {
                Some(cfg) => {
                    let Ok(conn) = rustls::ServerConnection::new(cfg) else { return };
                    serve(rustls::StreamOwned::new(conn, stream), &r, &*answer);
                }
                None => serve(stream, &r, &*answer),
            });
        }
    });
    RawProvider { addr, connections, requests }
}

fn serve(stream: impl Read + Write, requests: &AtomicUsize, answer: &dyn Fn(usize) -> Answer) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let a = answer(requests.fetch_add(1, Ordering::SeqCst));
        for piece in &a.pieces {
            if piece.is_empty() {
                std::thread::sleep(STALL);
                continue;
            }
            // The whole request was read, so nothing is left buffered behind this write.
            let writer = reader.get_mut();
            if writer.write_all(piece).and_then(|()| writer.flush()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if a.close {
            return;
        }
    }
}

/// Longer than the `raw` provider's timeout.
const STALL: Duration = Duration::from_millis(2500);

const REPLY: &str = r#"{"id":"raw-1","object":"chat.completion","created":0,"model":"raw-model","choices":[{"index":0,"message":{"role":"assistant","content":"raw reply"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;

fn with_length(body: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// The usual test config plus a provider `raw` at `addr` that serves `raw-model`, never retried,
/// so a request the gateway had to send twice shows as a failure.
fn raw_config(addr: &str) -> String {
    // The usual providers point at a port nothing listens on; these tests only call `raw`.
    config(
        "127.0.0.1:9",
        &format!(
            r#"
[[providers]]
name = "raw"
kind = "openai"
base_url = "http://{addr}/v1"
models = ["raw-model"]
keys = [{{ value = "sk-raw" }}]
timeout = "2s"
max_retries = 0

[pricing."raw-model"]
input_per_mtok = 1.0
output_per_mtok = 1.0
"#
        ),
    )
}

async fn ask(gw: &Gateway, c: &reqwest::Client) -> reqwest::Response {
    c.post(gw.url("/v1/chat/completions")).bearer_auth(KEY).json(&chat_body("raw-model", "hi")).send().await.unwrap()
}

#[tokio::test]
async fn a_connection_the_provider_closed_while_idle_is_replaced_without_losing_the_request() {
    // Closes every connection after one response without saying so, as providers do once their
    // keep-alive timeout passes.
    let raw = raw_provider(|_| Answer { pieces: vec![with_length(REPLY)], close: true });
    let gw = gateway(&raw_config(&raw.addr));
    let c = client();
    for i in 0..3 {
        let r = ask(&gw, &c).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), REPLY);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(raw.requests.load(Ordering::SeqCst), 3, "each request reached the provider once");
    assert_eq!(raw.connections.load(Ordering::SeqCst), 3);
}

/// A chunked answer in four writes, trailers included.
fn chunked_reply(_: usize) -> Answer {
    let (a, b) = REPLY.split_at(40);
    Answer {
        pieces: vec![
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-".to_vec(),
            format!("encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}", a.len(), b.len()).into_bytes(),
            format!("\r\n{b}\r\n0\r\nx-done: 1\r\n").into_bytes(),
            b"\r\n".to_vec(),
        ],
        close: false,
    }
}

#[tokio::test]
async fn a_chunked_response_with_trailers_split_across_reads_arrives_whole() {
    let raw = raw_provider(chunked_reply);
    two_replies_on_one_connection(&raw, "a chunked response leaves the connection reusable").await;
}

/// Two requests both get `REPLY`, and the second reuses the first one's connection.
async fn two_replies_on_one_connection(raw: &RawProvider, why: &str) {
    let gw = gateway(&raw_config(&raw.addr));
    let c = client();
    for _ in 0..2 {
        let r = ask(&gw, &c).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), REPLY);
    }
    assert_eq!(raw.connections.load(Ordering::SeqCst), 1, "{why}");
}

#[tokio::test]
async fn https_providers_are_verified_against_their_ca_and_their_connections_kept() {
    let raw = tls_provider(chunked_reply);
    let https = raw_config(&raw.addr).replace(
        &format!("base_url = \"http://{}/v1\"", raw.addr),
        &format!("base_url = \"https://{}/v1\"\ntls_ca_file = \"{}\"", raw.addr, testdata("ca.pem")),
    );
    assert!(https.contains("https://"), "{https}");
    let gw = gateway(&https);
    let c = client();
    for _ in 0..3 {
        let r = ask(&gw, &c).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), REPLY);
    }
    assert_eq!(raw.requests.load(Ordering::SeqCst), 3);
    assert_eq!(raw.connections.load(Ordering::SeqCst), 1, "one TLS connection served all three");
}

#[tokio::test]
async fn an_https_provider_whose_certificate_is_not_trusted_is_a_502() {
    let raw = tls_provider(chunked_reply);
    // Without tls_ca_file only the public roots are trusted, and the test CA is not one of them.
    let https = raw_config(&raw.addr).replace("http://", "https://");
    let gw = gateway(&https);
    let body = expect_error(ask(&gw, &client()).await, 502, "upstream_error").await;
    assert!(body.contains("TLS"), "{body}");
    assert_eq!(raw.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_response_without_length_runs_until_the_provider_closes() {
    let raw = raw_provider(|_| Answer {
        pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n".to_vec(), REPLY.as_bytes().to_vec()],
        close: true,
    });
    let gw = gateway(&raw_config(&raw.addr));
    let r = ask(&gw, &client()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), REPLY);
}

#[tokio::test]
async fn a_provider_that_breaks_http_is_a_502_and_its_connection_is_dropped() {
    let raw = raw_provider(|n| match n {
        0 => Answer { pieces: vec![b"HTTP/1.1 two hundred\r\n\r\n".to_vec()], close: false },
        // Promises 500 bytes and closes after 20.
        1 => Answer {
            pieces: vec![b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n".to_vec(), REPLY.as_bytes()[..20].to_vec()],
            close: true,
        },
        _ => Answer { pieces: vec![with_length(REPLY)], close: false },
    });
    let gw = gateway(&raw_config(&raw.addr));
    let c = client();
    let body = expect_error(ask(&gw, &c).await, 502, "upstream_error").await;
    assert!(body.contains("raw"), "{body}");
    let body = expect_error(ask(&gw, &c).await, 502, "upstream_error").await;
    assert!(body.contains("unreadable body"), "{body}");
    let r = ask(&gw, &c).await;
    assert_eq!(r.status(), 200);
    assert_eq!(raw.connections.load(Ordering::SeqCst), 3, "neither broken connection was reused");
}

#[tokio::test]
async fn a_body_that_arrives_after_its_head_is_read_whole() {
    let raw = raw_provider(|_| body_in_two_parts(false));
    two_replies_on_one_connection(&raw, "the connection is reused after a body read in two parts").await;
}

/// `REPLY` with its last 60 body bytes written separately, after a stall when `stall`.
fn body_in_two_parts(stall: bool) -> Answer {
    let whole = with_length(REPLY);
    let (head, tail) = whole.split_at(whole.len() - 60);
    let mut pieces = vec![head.to_vec(), tail.to_vec()];
    if stall {
        pieces.insert(1, Vec::new());
    }
    Answer { pieces, close: false }
}

#[tokio::test]
async fn a_body_that_stalls_past_the_provider_timeout_is_a_504() {
    let raw = raw_provider(|_| body_in_two_parts(true));
    let gw = gateway(&raw_config(&raw.addr));
    let started = std::time::Instant::now();
    let r = ask(&gw, &client()).await;
    expect_error(r, 504, "upstream_timeout").await;
    assert!(started.elapsed() < STALL, "the gateway waited out the stall: {:?}", started.elapsed());
}
