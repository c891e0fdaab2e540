//! Criterion benches of the per-request hot path: credential lookup, body peek, model resolution,
//! allow-list check, the body rewrite, and the upstream leg's HTTP/1.1 encoding and parsing.
//! `cargo bench --bench hot_path`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::Path;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use heimdall::providers::{openai, route};
use heimdall::{auth, config, governance::access, snapshot::Snapshot};
use http::{HeaderMap, HeaderValue};

fn snapshot(keys: usize) -> Snapshot {
    let mut text = String::from(
        r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9000/v1"
models = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini", "text-embedding-3-small"]
keys = [{ value = "sk" }]

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:9000"
models = ["claude-3-5-sonnet-20241022"]
keys = [{ value = "sk" }]
"#,
    );
    for i in 0..keys {
        text.push_str(&format!(
            "[[governance.virtual_keys]]\nid = \"vk-{i}\"\nvalue = \"vk-value-{i}\"\nallowed_models = [\"gpt-4o-mini\", \"openai/*\"]\n"
        ));
    }
    Snapshot::build(&config::parse(Path::new("bench.toml"), &text).unwrap(), 1, &Default::default()).unwrap()
}

/// A realistic small chat body (~1.5 KB, four messages), with `model` after the messages.
fn small_body() -> Bytes {
    let msg = "You are a helpful assistant. Answer briefly and precisely, citing sources where possible. ".repeat(4);
    let body = serde_json::json!({
        "messages": [
            { "role": "system", "content": msg },
            { "role": "user", "content": "What is the capital of France?" },
            { "role": "assistant", "content": "Paris." },
            { "role": "user", "content": msg },
        ],
        "model": "gpt-4o-mini",
        "temperature": 0.2,
        "max_tokens": 256,
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

const NOW: u64 = 1_800_000_000;

/// A snapshot with one identity provider (the unit tests' key) and one SSO user, and a token of theirs.
fn sso_snapshot() -> (Snapshot, String) {
    let text = r#"
[[governance.users]]
id = "alice"
external_id = "idp:alice"

[[identity.providers]]
name = "idp"
kind = "okta"
issuer = "https://idp.example.test/oauth2/default"
client_id = "gateway"
audience = "api://default"
role_map = { "gw-admins" = "admin" }
require_mfa = ["admin"]
"#;
    let mut jwks = heimdall::snapshot::JwksCache::default();
    jwks.insert(
        "idp".into(),
        heimdall::snapshot::ProviderKeys {
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            jwks: std::sync::Arc::from(&include_bytes!("../src/auth/testdata/jwks.json")[..]),
        },
    );
    let loaded = config::parse(Path::new("bench.toml"), text).unwrap();
    let snap = Snapshot::build_with_keys(&loaded, 1, &Default::default(), &jwks).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("test-key-1".into());
    let claims = serde_json::json!({
        "iss": "https://idp.example.test/oauth2/default", "aud": "api://default", "sub": "alice",
        "exp": NOW + 3600, "groups": ["gw-admins", "team-alpha"], "amr": ["pwd", "mfa"],
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../src/auth/testdata/rsa_private.pem")).unwrap();
    (snap, jsonwebtoken::encode(&h, &claims, &key).unwrap())
}

fn jwt_benches(c: &mut Criterion) {
    let (snap, token) = sso_snapshot();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    c.bench_function("authenticate (JWT, RS256 verified, no cache)", |b| {
        b.iter(|| {
            let mut fresh = auth::TokenCache::default();
            auth::authenticate(&snap, black_box(&headers), &mut fresh, NOW).unwrap().user().map(|u| u.id.len())
        })
    });
    let mut tokens = auth::TokenCache::default();
    c.bench_function("authenticate (JWT, per-core cache hit)", |b| {
        b.iter(|| auth::authenticate(&snap, black_box(&headers), &mut tokens, NOW).unwrap().user().map(|u| u.id.len()))
    });
}

fn benches(c: &mut Criterion) {
    let snap = snapshot(10_000);
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer vk-value-4242"));
    let mut tokens = auth::TokenCache::default();

    c.bench_function("authenticate (bearer header, sha-256, 10k keys)", |b| {
        b.iter(|| {
            auth::authenticate(black_box(&snap), black_box(&headers), &mut tokens, NOW)
                .unwrap()
                .virtual_key()
                .map(|k| k.id.len())
        })
    });

    let body = small_body();
    c.bench_function("peek chat body (1.5 KB)", |b| b.iter(|| openai::peek(black_box(&body)).unwrap().max_tokens));

    c.bench_function("resolve bare model", |b| {
        b.iter(|| route::resolve(&snap, black_box("gpt-4o-mini")).unwrap().provider_index)
    });
    c.bench_function("resolve provider/model", |b| {
        b.iter(|| route::resolve(&snap, black_box("anthropic/claude-3-5-sonnet-20241022")).unwrap().provider_index)
    });

    let principal = auth::authenticate(&snap, &headers, &mut tokens, NOW).unwrap();
    let target = route::resolve(&snap, "gpt-4o").unwrap();
    c.bench_function("authorize (allow-list with provider/*)", |b| {
        b.iter(|| access::authorize(&snap, black_box(&principal), black_box(&target)).is_ok())
    });

    let peek = openai::peek(&body).unwrap();
    c.bench_function("prepare body, nothing to rewrite", |b| {
        b.iter(|| openai::prepare(&body, &peek, "gpt-4o-mini").unwrap().len())
    });
    c.bench_function("prepare body, provider prefix rewritten", |b| {
        b.iter(|| openai::prepare(&body, &peek, black_box("gpt-4o")).unwrap().len())
    });

    c.bench_function("whole hot path: authenticate + peek + resolve + authorize", |b| {
        b.iter(|| {
            let p = auth::authenticate(&snap, black_box(&headers), &mut tokens, NOW).unwrap();
            let peek = openai::peek(black_box(&body)).unwrap();
            let t = route::resolve(&snap, &peek.model).unwrap();
            access::authorize(&snap, &p, &t).unwrap();
            openai::prepare(&body, &peek, t.model).unwrap().len()
        })
    });
}

/// The upstream leg's own HTTP/1.1 work per request: the request bytes, and the response head
/// and body as the mock upstream sends them.
fn wire_benches(c: &mut Criterion) {
    use bytes::BytesMut;
    use heimdall::dataplane::upstream::wire;
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}"#;
    c.bench_function("upstream: build request bytes", |b| {
        b.iter(|| {
            wire::post(
                "/v1/chat/completions",
                b"127.0.0.1:9000",
                &[("authorization", b"Bearer sk-mock")],
                black_box(body),
            )
            .len()
        })
    });
    let reply = br#"{"id":"chatcmpl-1","object":"chat.completion","created":0,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\ndate: Fri, 04 Dec 2026 07:00:00 GMT\r\n\r\n",
        reply.len()
    )
    .into_bytes();
    raw.extend_from_slice(reply);
    c.bench_function("upstream: parse response head and take its body", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(&raw[..]));
            let (len, head) = wire::parse_head(&buf).unwrap().unwrap();
            let _ = buf.split_to(len);
            let mut decoder = wire::Decoder::new(head.framing);
            decoder.decode(&mut buf).unwrap().unwrap().len()
        })
    });
}

criterion_group!(hot_path, benches, jwt_benches, wire_benches);
criterion_main!(hot_path);
