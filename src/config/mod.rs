//! The config file schema (the public contract of DESIGN.md §2), its parsing and validation.
//! Pure data and checks: builds no snapshot, opens no socket, touches no store.

mod locate;
pub mod secret;
mod validate;
pub mod window;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

pub use window::Window;

/// Default location of the config file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/heimdall.toml";

/// The whole file. Every table refuses unknown keys so a typo is an error, not a silent default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// USD per million tokens, keyed by model name (bare or `provider/model`).
    #[serde(default)]
    pub pricing: BTreeMap<String, PriceConfig>,
    #[serde(default)]
    pub governance: GovernanceConfig,
    #[serde(default)]
    pub identity: IdentityConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address every data-plane core listens on (SO_REUSEPORT). Port 0 picks a free port.
    pub listen: String,
    /// Data-plane threads; 0 = one per core.
    pub workers: usize,
    /// Answer 401 `authentication_required` when a request carries no credential.
    pub require_virtual_key: bool,
    /// Bootstrap credential for `/api/*` (a secret reference); unset or unresolvable disables it.
    pub admin_token: Option<String>,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: u64,
    /// Slow-loris guard: time allowed to receive a request's headers.
    #[serde(deserialize_with = "de_duration")]
    pub header_read_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish before the process exits.
    #[serde(deserialize_with = "de_duration")]
    pub shutdown_grace: Duration,
    /// The data plane's IO driver.
    pub io_driver: IoDriver,
}

/// Which monoio driver the data-plane cores run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    /// io_uring where the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring or refuse to start.
    IoUring,
    /// epoll (monoio's legacy driver), even where io_uring is available.
    Epoll,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            workers: 0,
            require_virtual_key: true,
            admin_token: None,
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            io_driver: IoDriver::Auto,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Embedded SQLite file, created on first start.
    pub path: String,
    /// PostgreSQL URL for multi-node deployments (a later issue); takes precedence over `path`.
    pub url: Option<String>,
    /// How often spend and rate windows are written to the store (a crash loses at most this much).
    #[serde(deserialize_with = "de_duration")]
    pub checkpoint_interval: std::time::Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { path: "data/heimdall.db".into(), url: None, checkpoint_interval: Duration::from_secs(1) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `false` stops writing the trail (records still feed usage rollups): for measuring its cost,
    /// not for production.
    pub enabled: bool,
    /// Slots in each core's request-record ring; a full ring spills to an overflow queue (counted).
    pub ring_capacity: usize,
    /// How often the control plane drains the rings.
    #[serde(deserialize_with = "de_duration")]
    pub flush_interval: Duration,
    /// Secret (`env.NAME`, `file:PATH` or literal) that signs the hash chain with HMAC-SHA256, so
    /// someone with write access to the database cannot rewrite history and re-chain it.
    pub hmac_key: Option<String>,
    /// Records older than this many days are removed (oldest first, keeping the chain verifiable);
    /// unset keeps everything.
    pub retention_days: Option<u32>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ring_capacity: 16384,
            flush_interval: Duration::from_millis(10),
            hmac_key: None,
            retention_days: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible API: requests are forwarded as they are.
    Openai,
    /// Anthropic Messages API: chat completions are translated both ways.
    Anthropic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name, used in `provider/model` and in allow-lists.
    pub name: String,
    pub kind: ProviderKind,
    /// OpenAI kind: the base the SDKs take (`…/v1`); Anthropic: without `/v1` (it is appended).
    pub base_url: String,
    /// Bare model names this provider serves; a bare name resolves to the first provider listing it.
    #[serde(default)]
    pub models: Vec<String>,
    /// Upstream credentials; one is picked per attempt by weight.
    pub keys: Vec<KeyConfig>,
    /// Time allowed for the upstream to send response headers.
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Time allowed between two chunks of a streamed response.
    #[serde(default = "default_stream_idle", deserialize_with = "de_duration")]
    pub stream_idle_timeout: Duration,
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Extra attempts (on another key when there is one) after a 429, 5xx, refused key or connect error.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First backoff between attempts; doubles each time, with jitter, up to `retry_backoff_max`.
    #[serde(default = "default_backoff", deserialize_with = "de_duration")]
    pub retry_backoff: Duration,
    #[serde(default = "default_backoff_max", deserialize_with = "de_duration")]
    pub retry_backoff_max: Duration,
    /// Idle keep-alive connections kept per core for this provider.
    #[serde(default = "default_pool_idle")]
    pub pool_max_idle: usize,
    /// PEM file of extra root certificates for an `https` provider behind a private CA.
    pub tls_ca_file: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_stream_idle() -> Duration {
    Duration::from_secs(120)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    2
}
fn default_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(2)
}
fn default_pool_idle() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// `env.NAME`, `file:PATH`, or the literal key.
    pub value: String,
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cached_input_per_mtok: Option<f64>,
    /// Output bound used for worst-case cost when a request gives no `max_tokens`.
    pub max_output_tokens: Option<u64>,
}

/// What to do with a model that has no price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unpriced {
    /// 422 `unpriced_model`: nothing is billed as $0 silently.
    #[default]
    Refuse,
    /// Serve it and count it as free.
    AllowFree,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    #[serde(default)]
    pub unpriced: Unpriced,
    #[serde(default)]
    pub customers: Vec<CustomerConfig>,
    #[serde(default)]
    pub teams: Vec<TeamConfig>,
    #[serde(default)]
    pub users: Vec<UserConfig>,
    #[serde(default)]
    pub virtual_keys: Vec<VirtualKeyConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub max_usd: f64,
    pub reset: Window,
    #[serde(default)]
    pub calendar_aligned: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub per: Window,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerConfig {
    pub id: String,
    pub name: Option<String>,
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    pub allowed_models: Option<Vec<String>>,
    pub allowed_providers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    pub id: String,
    pub name: Option<String>,
    pub customer: Option<String>,
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    pub allowed_models: Option<Vec<String>>,
    pub allowed_providers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// The user's single sign-on identity, `PROVIDER:SUBJECT`: the token's `sub` for Okta and
    /// generic OIDC, `TID/OID` for Entra. Bearer JWTs on `/v1` are matched to users by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The user's system role on the management API: admin, developer or viewer. Set from the
    /// identity provider's claims at each sign-in for users it provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default)]
    pub teams: Vec<String>,
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
    pub allowed_models: Option<Vec<String>>,
    pub allowed_providers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualKeyConfig {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// The key as clients send it (`env.NAME` / `file:PATH` / literal); or give `value_sha256`.
    pub value: Option<String>,
    /// Hex SHA-256 of the key, so the file need not hold the secret.
    pub value_sha256: Option<String>,
    pub user: Option<String>,
    pub team: Option<String>,
    pub customer: Option<String>,
    /// Absent = no restriction; a list allows only what it names; `"*"` allows all.
    pub allowed_models: Option<Vec<String>>,
    pub allowed_providers: Option<Vec<String>>,
    #[serde(default = "default_true")]
    pub active: bool,
    #[serde(default)]
    pub budgets: Vec<BudgetConfig>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitConfig>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub require_sso: bool,
    #[serde(deserialize_with = "de_duration")]
    pub session_ttl: Duration,
    /// Key (a secret reference) that encrypts refresh tokens at rest. Unset: a random key per
    /// process, so sessions cannot refresh silently after a restart (users sign in again).
    pub session_secret: Option<String>,
    /// Limits every user provisioned from a sign-in or a bearer token starts with; they govern
    /// an unknown user's requests from the very first one.
    pub user_defaults: UserDefaults,
    pub providers: Vec<IdpConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserDefaults {
    pub budgets: Vec<BudgetConfig>,
    pub rate_limits: Vec<RateLimitConfig>,
    pub allowed_models: Option<Vec<String>>,
    pub allowed_providers: Option<Vec<String>>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            require_sso: false,
            session_ttl: Duration::from_secs(12 * 3600),
            session_secret: None,
            user_defaults: UserDefaults::default(),
            providers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdpKind {
    Okta,
    Entra,
    Oidc,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdpConfig {
    pub name: String,
    pub kind: IdpKind,
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub audience: Option<String>,
    pub redirect_uri: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub roles_claim: Option<String>,
    #[serde(default)]
    pub role_map: BTreeMap<String, String>,
    pub teams_claim: Option<String>,
    pub team_prefix: Option<String>,
    #[serde(default)]
    pub team_map: BTreeMap<String, String>,
    pub default_role: Option<String>,
    #[serde(default)]
    pub require_mfa: Vec<String>,
    #[serde(default)]
    pub tenants: Vec<String>,
    pub mfa_acrs: Option<String>,
    /// The one signature algorithm accepted from this issuer (never taken from the token).
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub leeway: Duration,
    /// A valid token of a user the gateway does not know yet provisions that user (default true).
    #[serde(default = "default_true")]
    pub provision: bool,
    /// How often discovery and the JWKS are fetched again (an unknown `kid` also triggers it).
    #[serde(default = "default_jwks_refresh", deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub jwks_refresh: Duration,
}

fn default_algorithm() -> String {
    "RS256".into()
}

fn default_leeway() -> Duration {
    Duration::from_secs(60)
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(600)
}

/// Written back the way `de_duration` reads it.
fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// Durations are written as humans do: `300ms`, `30s`, `5m`, `12h`.
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e}")))
}

/// A refused config: where (file and, when known, line) and why.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {reason}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub reason: String,
}

/// A parsed and validated file, with the text it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub config: FileConfig,
    /// SHA-256 of the file's bytes, so a watcher can skip saves that changed nothing.
    pub content_hash: [u8; 32],
}

/// Reads, parses and validates a config file. Nothing is published here; the caller decides.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        reason: format!("cannot read config file: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` only names the file in errors.
/// Checks a whole config (as built from the file plus the management API's entities): the first
/// problem as (`path.to.field`, reason).
pub fn check(config: &FileConfig) -> Result<(), (String, String)> {
    validate::validate(config).map_err(|v| (locate::render_path(&v.path), v.reason))
}

pub fn parse(path: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
    let config: FileConfig = toml::from_str(text).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: e.span().map(|s| locate::line_of(text, s.start)),
        reason: e.message().trim().to_string(),
    })?;
    validate::validate(&config).map_err(|v| ConfigError {
        file: path.to_path_buf(),
        line: locate::line_of_path(text, &v.path),
        reason: format!("{}: {}", locate::render_path(&v.path), v.reason),
    })?;
    use sha2::Digest;
    Ok(LoadedConfig { path: path.to_path_buf(), config, content_hash: sha2::Sha256::digest(text.as_bytes()).into() })
}

/// One segment of a path into the file, e.g. `providers[1].base_url`.
#[derive(Debug, Clone, PartialEq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

#[cfg(test)]
mod tests;
