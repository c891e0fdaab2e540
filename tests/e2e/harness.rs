//! Real processes on loopback: the `mock-upstream` and `heimdall` binaries on port 0, a temp
//! config, and an HTTP client. Dropping a handle stops its process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Proc {
    pub child: Child,
    pub addr: String,
    stderr_log: PathBuf,
}

impl Proc {
    /// Starts `bin` and waits for its "listening on http://ADDR" line on stdout.
    fn start(bin: &str, args: &[&str], envs: &[(&str, &str)], log_name: &str, dir: &std::path::Path) -> Proc {
        let stderr_log = dir.join(format!("{log_name}.stderr"));
        let err = std::fs::File::create(&stderr_log).unwrap();
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", "info,heimdall=debug")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("{bin} did not start: {}", std::fs::read_to_string(&stderr_log).unwrap_or_default());
            }
        };
        Proc { child, addr, stderr_log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok =
            Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn mock(args: &[&str]) -> (Proc, tempfile::TempDir) {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["--listen", "127.0.0.1:0", "--workers", "2"];
    all.extend_from_slice(args);
    let p = Proc::start(env!("CARGO_BIN_EXE_mock-upstream"), &all, &[], "mock", dir.path());
    (p, dir)
}

/// A running gateway with its config file (which tests may rewrite to reload).
pub struct Gateway {
    pub proc: Proc,
    pub config_path: PathBuf,
    envs: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        self.proc.url(path)
    }

    /// Stops the gateway cleanly (SIGTERM) and starts it again on the same config and store.
    pub fn restart(mut self) -> Gateway {
        self.proc.signal("TERM");
        assert_eq!(self.proc.wait_exit(Duration::from_secs(10)), Some(0), "{}", self.proc.stderr());
        let envs: Vec<(&str, &str)> = self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let proc = Proc::start(
            env!("CARGO_BIN_EXE_heimdall"),
            &["serve", "--config", self.config_path.to_str().unwrap()],
            &envs,
            "heimdall-restarted",
            self.dir.path(),
        );
        Gateway { proc, config_path: self.config_path.clone(), envs: self.envs.clone(), dir: self.dir }
    }

    /// Replaces the config file the way an editor does (write a temp file, rename over).
    pub fn rewrite_config(&self, text: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, with_store(text, &self.config_path.with_file_name("heimdall.db"))).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Overwrites the config file in place, the way `>` in a shell or a plain editor save does.
    pub fn edit_config_in_place(&self, text: &str) {
        std::fs::write(&self.config_path, with_store(text, &self.config_path.with_file_name("heimdall.db"))).unwrap();
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics")).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    }
}

pub fn gateway(config: &str) -> Gateway {
    gateway_with_env(config, &[])
}

pub fn gateway_with_env(config: &str, envs: &[(&str, &str)]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("heimdall.toml");
    let store = dir.path().join("heimdall.db");
    std::fs::write(&config_path, with_store(config, &store)).unwrap();
    let proc = Proc::start(
        env!("CARGO_BIN_EXE_heimdall"),
        &["serve", "--config", config_path.to_str().unwrap()],
        envs,
        "heimdall",
        dir.path(),
    );
    Gateway { proc, config_path, envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), dir }
}

/// Every gateway gets its own store unless the config names one.
pub fn with_store(config: &str, store: &std::path::Path) -> String {
    if config.contains("[storage]") {
        config.to_string()
    } else {
        format!("{config}\n[storage]\npath = \"{}\"\n", store.display())
    }
}

/// A config with the usual test providers pointing at `mock`. `extra` is appended as is.
pub fn config(mock_addr: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 2
require_virtual_key = true
max_body_bytes = 65536
shutdown_grace = "5s"

[[providers]]
name = "openai"
kind = "openai"
base_url = "http://{mock_addr}/v1"
models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "mock-error-500", "mock-error-429", "mock-error-400", "mock-hang", "mock-slow-stream"]
keys = [{{ value = "sk-good" }}]
timeout = "2s"
retry_backoff = "10ms"
retry_backoff_max = "50ms"
stream_idle_timeout = "5s"

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "http://{mock_addr}"
models = ["claude-3-5-sonnet-20241022"]
keys = [{{ value = "sk-ant-good" }}]
retry_backoff = "10ms"

[pricing."claude-3-5-sonnet-20241022"]
input_per_mtok = 3.0
output_per_mtok = 15.0
max_output_tokens = 8192

[pricing."gpt-4o-mini"]
input_per_mtok = 0.15
output_per_mtok = 0.60
max_output_tokens = 16384

[pricing."gpt-4o"]
input_per_mtok = 2.5
output_per_mtok = 10.0

[pricing."text-embedding-3-small"]
input_per_mtok = 0.02
output_per_mtok = 0.0

[pricing."mock-error-500"]
input_per_mtok = 1.0
output_per_mtok = 1.0

[pricing."mock-error-429"]
input_per_mtok = 1.0
output_per_mtok = 1.0

[pricing."mock-error-400"]
input_per_mtok = 1.0
output_per_mtok = 1.0

[pricing."mock-hang"]
input_per_mtok = 1.0
output_per_mtok = 1.0

[pricing."mock-slow-stream"]
input_per_mtok = 1.0
output_per_mtok = 1.0

[[governance.virtual_keys]]
id = "vk-test"
value = "vk-test-key"

[[governance.virtual_keys]]
id = "vk-off"
value = "vk-off-key"
active = false

[[governance.virtual_keys]]
id = "vk-mini-only"
value = "vk-mini-key"
allowed_models = ["gpt-4o-mini"]

[[governance.virtual_keys]]
id = "vk-openai-only"
value = "vk-openai-key"
allowed_providers = ["openai"]
{extra}
"#
    )
}

pub const KEY: &str = "vk-test-key";

/// reqwest here uses rustls without a built-in provider, as the gateway does: install ring once.
pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn client() -> reqwest::Client {
    crypto();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

pub fn chat_body(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({ "model": model, "messages": [{ "role": "user", "content": text }] })
}

pub async fn post(url: &str, key: Option<&str>, body: &serde_json::Value) -> reqwest::Response {
    let mut req = client().post(url).json(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

/// Asserts the error shape and type; returns the message.
pub async fn expect_error(resp: reqwest::Response, status: u16, error_type: &str) -> String {
    assert_eq!(resp.status().as_u16(), status, "wrong status");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], error_type, "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

pub async fn mock_stats(mock: &Proc) -> serde_json::Value {
    reqwest::get(mock.url("/_mock/stats")).await.unwrap().json().await.unwrap()
}

/// Parses an SSE body into its `data:` payloads.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.trim().strip_prefix("data: ").map(str::to_string)).collect()
}

/// A real OpenID Provider (`tests/oidc/op.mjs`, npm `oidc-provider`) on a free loopback port.
pub struct Op {
    child: Child,
    pub issuer: String,
    _dir: tempfile::TempDir,
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts one issuer shape: `path` is "" (plain), "/oauth2/default" (Okta) or "/<tid>/v2.0" (Entra).
pub fn op(path: &str, audience: &str, users_file: &str) -> Op {
    op_env(path, audience, users_file, &[])
}

impl Op {
    pub async fn set_user(&self, body: serde_json::Value) {
        let r = client().post(format!("{}/__test/user", self.issuer)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    pub async fn overage_fail(&self, fail: bool) {
        let r = client()
            .post(format!("{}/__test/overage_fail", self.issuer))
            .json(&serde_json::json!({ "fail": fail }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// An access token signed by the provider's current key: `sub`'s claims, with `overrides`.
    pub async fn token(&self, body: serde_json::Value) -> String {
        let r = client().post(format!("{}/__test/token", self.issuer)).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let v: serde_json::Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    pub async fn rotate(&self) {
        let r = client().post(format!("{}/__test/rotate", self.issuer)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }

    pub async fn public_pem(&self) -> String {
        client().get(format!("{}/__test/public_pem", self.issuer)).send().await.unwrap().text().await.unwrap()
    }
}

/// A port that was free a moment ago (for configs that must name their own address up front,
/// such as an OAuth redirect URI registered at the identity provider).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a provider whose client may redirect to `redirect`.
pub fn op_with_redirect(path: &str, audience: &str, users_file: &str, redirect: &str) -> Op {
    op_env(path, audience, users_file, &[("OP_REDIRECT", redirect)])
}

fn op_env(path: &str, audience: &str, users_file: &str, extra: &[(&str, &str)]) -> Op {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc");
    assert!(
        std::path::Path::new(root).join("node_modules/oidc-provider").is_dir(),
        "tests/oidc/node_modules is missing: run `npm ci --prefix tests/oidc` (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let stderr_log = dir.path().join("op.stderr");
    let mut child = Command::new("node")
        .arg(format!("{root}/op.mjs"))
        .env("OP_PORT", "0")
        .env("OP_PATH", path)
        .env("OP_AUDIENCE", audience)
        .env("OP_USERS_FILE", format!("{root}/{users_file}"))
        .envs(extra.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&stderr_log).unwrap()))
        .spawn()
        .expect("node is required for the identity-provider tests");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(issuer) = line.strip_prefix("OP_ISSUER=") {
                let _ = tx.send(issuer.trim().to_string());
            }
        }
    });
    let issuer = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(i) => i,
        Err(_) => {
            let _ = child.kill();
            panic!("the OpenID Provider did not start: {}", std::fs::read_to_string(&stderr_log).unwrap_or_default());
        }
    };
    Op { child, issuer, _dir: dir }
}

/// A browser without a browser: a cookie jar, and redirects followed by hand.
pub struct Browser {
    pub client: reqwest::Client,
}

impl Browser {
    pub fn new() -> Self {
        crypto();
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Browser { client }
    }

    /// Follows redirects from `url` until one leaves both the gateway's sign-in paths and the
    /// provider; returns the last response (a redirect to the return page, or an error).
    pub async fn sign_in(&self, gw: &Gateway, op: &Op, url: &str) -> reqwest::Response {
        let mut url = url.to_string();
        let provider_origin = op.issuer.split('/').take(3).collect::<Vec<_>>().join("/");
        for _ in 0..20 {
            let r = self.client.get(&url).send().await.unwrap();
            if !r.status().is_redirection() {
                return r;
            }
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            let next = if loc.starts_with("http") {
                loc
            } else if loc.starts_with('/') {
                format!("{}{loc}", url.split('/').take(3).collect::<Vec<_>>().join("/"))
            } else {
                panic!("relative redirect {loc}")
            };
            let ours = next.starts_with(&gw.url("/auth/")) || next.starts_with(&gw.url("/login"));
            if !ours && !next.starts_with(&provider_origin) {
                return r;
            }
            url = next;
        }
        panic!("too many redirects");
    }
}

/// The audit records in the store file `db` matching `q` (all of them: no page limit), read
/// through the store itself as an operator's tool would, while the gateway runs or after it exited.
pub fn stored_events(
    db: &std::path::Path,
    q: heimdall::store::audit::AuditQuery,
) -> Vec<heimdall::store::audit::StoredEvent> {
    let store = heimdall::store::Store::open(db).unwrap();
    store.query_audit(&heimdall::store::audit::AuditQuery { limit: 10_000_000, ..q }).unwrap()
}

/// Edits record `seq` in the store file as someone with write access to it could: finds its
/// segment, decompresses it, replaces `from` by `to` (same length: the record is binary) in
/// the record's bytes and writes it back.
/// The layout (u32 length, i64 timestamp, canonical bytes, 32-byte hash; LZ4 with the size
/// prepended) is the store's, restated here on purpose: a test of tamper evidence must not
/// borrow the code it tests.
pub fn tamper_audit_record(db: &std::path::Path, seq: i64, from: &str, to: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let (first, blob): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT first_seq, records FROM audit_segments WHERE first_seq <= ?1 ORDER BY first_seq DESC LIMIT 1",
            [seq],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let raw = lz4_flex::decompress_size_prepended(&blob).unwrap();
    let (mut out, mut at, mut i) = (Vec::new(), 0, first);
    while at < raw.len() {
        let len = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
        let bytes = &raw[at + 12..at + 12 + len];
        let mut bytes = bytes.to_vec();
        if i == seq {
            assert_eq!(from.len(), to.len());
            let at = bytes.windows(from.len()).position(|w| w == from.as_bytes());
            let at = at.unwrap_or_else(|| panic!("record {seq} has no {from}"));
            bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
        }
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&raw[at + 4..at + 12]);
        out.extend_from_slice(&bytes);
        out.extend_from_slice(&raw[at + 12 + len..at + 12 + len + 32]);
        at += 12 + len + 32;
        i += 1;
    }
    let blob = lz4_flex::compress_prepend_size(&out);
    conn.execute("UPDATE audit_segments SET records = ?1 WHERE first_seq = ?2", rusqlite::params![blob, first])
        .unwrap();
}
