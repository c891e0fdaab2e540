//! The immutable Snapshot every request reads: settings, providers and their routes, virtual keys,
//! pricing. Built only by the control plane from a validated config; never mutated after publish.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use rustc_hash::FxHashMap;

use crate::config::{FileConfig, LoadedConfig, ProviderKind, Unpriced, Window, secret};
use crate::governance::Level;
use crate::governance::counters::{CounterRegistry, EntityCounters};

/// Everything the data plane needs to serve a request, as one consistent version.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every published snapshot; shown on `/health`.
    pub version: u64,
    pub content_hash: [u8; 32],
    pub server: ServerSettings,
    pub providers: Vec<Provider>,
    provider_by_name: FxHashMap<Box<str>, usize>,
    /// Bare model name → the first provider that lists it.
    bare_models: FxHashMap<Box<str>, usize>,
    keys_by_hash: FxHashMap<[u8; 32], usize>,
    pub virtual_keys: Vec<VirtualKey>,
    /// Customers, teams, users and keys with their limits; chains index into it.
    pub entities: Vec<Entity>,
    pub unpriced: Unpriced,
    pub pricing: FxHashMap<String, Price>,
    /// `pricing` again, by provider then model, for keys written `provider/model`: looked up on
    /// every request without formatting the key.
    route_pricing: FxHashMap<Box<str>, FxHashMap<Box<str>, Price>>,
    /// Bearer-token issuers, their claim rules, and the users they may name.
    pub identity: Identity,
    /// The file as parsed, for the control plane's later consumers (management API, reports).
    pub config: Arc<FileConfig>,
}

/// Single sign-on as the data plane sees it: who may issue bearer tokens and whom they name.
#[derive(Debug, Default)]
pub struct Identity {
    /// `identity.require_sso`: keys owned by a user are refused without that user's token.
    pub require_sso: bool,
    /// Some provider has an `audience`: JWT-shaped bearers are tokens, not virtual keys.
    pub accepts_bearer: bool,
    /// One per identity provider, in config order; those with an `audience` accept bearer tokens on `/v1`.
    pub issuers: Vec<crate::auth::jwt::TokenIssuer>,
    /// Parallel to `issuers`.
    pub rules: Vec<IdpRules>,
    /// `PROVIDER:SUBJECT` → index into `users`.
    users_by_external: FxHashMap<String, usize>,
    pub users: Vec<SsoUser>,
    /// Parallel to `issuers`: where a valid token of a user not provisioned yet is charged
    /// (`identity.user_defaults`, shared until the control plane has provisioned the user).
    pub unprovisioned: Vec<Option<usize>>,
}

/// How one provider's claims become a role, and which roles must show MFA.
#[derive(Debug)]
pub struct IdpRules {
    pub provider: String,
    pub kind: crate::config::IdpKind,
    pub roles_claim: String,
    pub role_map: FxHashMap<String, crate::auth::Role>,
    /// `None`: tokens that map to no role are refused (`default_role = "deny"`, the default).
    pub default_role: Option<crate::auth::Role>,
    pub require_mfa: Vec<crate::auth::Role>,
    pub mfa: crate::auth::jwt::MfaEvidence,
    /// Entra multi-tenant: the `tid` values accepted (empty = any).
    pub tenants: Vec<String>,
    /// Where the teams come from (for provisioning).
    pub teams_claim: String,
    pub provision: bool,
}

/// A user who can call `/v1` with a bearer token, with the chain the request is charged to:
/// user → first team → that team's customer (DESIGN.md §3).
#[derive(Debug)]
pub struct SsoUser {
    /// Position in `Identity::users`.
    pub index: usize,
    pub id: Arc<str>,
    pub team: Option<Arc<str>>,
    pub customer: Option<Arc<str>>,
    pub chain: Vec<usize>,
    /// The role given at the last sign-in (`role` of the user).
    pub role: Option<crate::auth::Role>,
}

impl Identity {
    /// The index of the provider called `name` in `issuers` and `rules`.
    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.issuers.iter().position(|i| i.provider == name)
    }

    pub fn user(&self, provider: &str, subject: &str) -> Option<&SsoUser> {
        let mut key = String::with_capacity(provider.len() + subject.len() + 1);
        key.push_str(provider);
        key.push(':');
        key.push_str(subject);
        self.users_by_external.get(&key).map(|&i| &self.users[i])
    }
}

/// What the control plane last fetched of one identity provider: its endpoints and its JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderKeys {
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks: Arc<[u8]>,
}

/// Providers' keys by name. Kept by the control plane and handed to every snapshot build, so a
/// reload never drops the keys.
pub type JwksCache = FxHashMap<String, ProviderKeys>;

#[derive(Debug)]
pub struct ServerSettings {
    pub require_virtual_key: bool,
    pub max_body_bytes: u64,
    pub admin_token: Option<String>,
}

#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    /// `name` ready to be sent as `x-heimdall-provider`.
    pub name_header: HeaderValue,
    pub kind: ProviderKind,
    pub origin: Origin,
    /// Path of the chat endpoint upstream (`/v1/chat/completions` or `/v1/messages`).
    pub chat_path: String,
    /// OpenAI kind only.
    pub embeddings_path: Option<String>,
    pub models: Vec<String>,
    pub keys: Vec<ProviderKey>,
    pub timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub pool_max_idle: usize,
}

/// Where a provider lives. `key` identifies the connection pool on each core.
#[derive(Debug, Clone)]
pub struct Origin {
    pub key: Arc<str>,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The `Host` header value.
    pub authority: HeaderValue,
    /// Resolved by the control plane when the snapshot was built (the data plane never blocks on DNS).
    pub addrs: Vec<SocketAddr>,
    /// For `https` origins: the roots this provider is verified against.
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug)]
pub struct ProviderKey {
    /// Ready-made auth header value (`Bearer …` for OpenAI kind, the raw key for Anthropic).
    pub header: HeaderValue,
    pub weight: f64,
}

/// An allow-list as written: absent or `"*"` allows everything; a list allows what it names.
/// Lists are short, so a scan without allocation beats hashing a formatted `provider/model`.
#[derive(Debug, Clone)]
pub enum AllowList {
    All,
    Only(Vec<String>),
}

impl AllowList {
    fn from_config(list: &Option<Vec<String>>) -> Self {
        match list {
            None => AllowList::All,
            Some(l) if l.iter().any(|e| e == "*") => AllowList::All,
            Some(l) => AllowList::Only(l.clone()),
        }
    }

    /// Model lists match `model`, `provider/model` or `provider/*`.
    pub fn allows_model(&self, provider: &str, model: &str) -> bool {
        match self {
            AllowList::All => true,
            AllowList::Only(list) => list.iter().any(|e| {
                e == model
                    || e.strip_prefix(provider)
                        .and_then(|r| r.strip_prefix('/'))
                        .is_some_and(|m| m == model || m == "*")
            }),
        }
    }

    pub fn allows(&self, name: &str) -> bool {
        match self {
            AllowList::All => true,
            AllowList::Only(list) => list.iter().any(|e| e == name),
        }
    }
}

#[derive(Debug)]
pub struct VirtualKey {
    /// Position in `Snapshot::virtual_keys`.
    pub index: usize,
    pub id: Arc<str>,
    pub name: Option<String>,
    pub active: bool,
    pub user: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub customer: Option<Arc<str>>,
    /// The levels a request with this key is checked against and charged to, key first:
    /// key → user → the team it acts under → that team's customer (indexes into `entities`).
    pub chain: Vec<usize>,
}

/// One level of the hierarchy with its limits. Its counters outlive the snapshot.
pub struct Entity {
    pub level: Level,
    pub id: Arc<str>,
    pub budgets: Vec<Budget>,
    pub rates: Vec<Rate>,
    pub allowed_models: AllowList,
    pub allowed_providers: AllowList,
    pub counters: Arc<EntityCounters>,
}

impl std::fmt::Debug for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entity").field("level", &self.level).field("id", &self.id).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_micros: u64,
    pub window: Window,
    pub calendar: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub window: Window,
}

#[derive(Debug, Clone, Copy)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    pub cached_input_per_mtok: Option<f64>,
    pub max_output_tokens: Option<u64>,
}

/// Why a validated config could still not become a snapshot (a secret vanished between check and build).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(String);

impl Snapshot {
    /// Builds the lookups. Runs on the control plane (it may resolve DNS, which blocks).
    pub fn build(loaded: &LoadedConfig, version: u64, counters: &CounterRegistry) -> Result<Self, BuildError> {
        Self::build_with_keys(loaded, version, counters, &JwksCache::default())
    }

    /// `build`, with the identity providers' signing keys as last fetched.
    pub fn build_with_keys(
        loaded: &LoadedConfig,
        version: u64,
        counters: &CounterRegistry,
        jwks: &JwksCache,
    ) -> Result<Self, BuildError> {
        let c = &loaded.config;
        let mut providers = Vec::with_capacity(c.providers.len());
        let mut provider_by_name = FxHashMap::default();
        let mut bare_models = FxHashMap::default();
        for (i, p) in c.providers.iter().enumerate() {
            let uri: http::Uri = p.base_url.parse().map_err(|e| BuildError(format!("provider {}: {e}", p.name)))?;
            let mut origin = Origin::from_uri(&uri).map_err(|e| BuildError(format!("provider {}: {e}", p.name)))?;
            if origin.tls {
                let cfg = tls_client_config(p.tls_ca_file.as_deref())
                    .map_err(|e| BuildError(format!("provider {}: {e}", p.name)))?;
                origin.tls_config = Some(cfg);
            }
            let base_path = uri.path().trim_end_matches('/').to_string();
            let (chat_path, embeddings_path) = match p.kind {
                ProviderKind::Openai => {
                    (format!("{base_path}/chat/completions"), Some(format!("{base_path}/embeddings")))
                }
                ProviderKind::Anthropic => (format!("{base_path}/v1/messages"), None),
            };
            let mut keys = Vec::with_capacity(p.keys.len());
            for k in &p.keys {
                let value = secret::resolve(&k.value).map_err(|e| BuildError(format!("provider {}: {e}", p.name)))?;
                let raw = match p.kind {
                    ProviderKind::Openai => format!("Bearer {value}"),
                    ProviderKind::Anthropic => value,
                };
                let mut header = HeaderValue::from_str(&raw).map_err(|_| {
                    BuildError(format!("provider {}: a key holds characters not allowed in a header", p.name))
                })?;
                header.set_sensitive(true);
                keys.push(ProviderKey { header, weight: k.weight });
            }
            for m in &p.models {
                bare_models.entry(m.as_str().into()).or_insert(i);
            }
            provider_by_name.insert(p.name.as_str().into(), i);
            let name_header = HeaderValue::from_str(&p.name)
                .map_err(|_| BuildError(format!("provider {}: the name is not a valid header value", p.name)))?;
            providers.push(Provider {
                name: p.name.as_str().into(),
                name_header,
                kind: p.kind,
                origin,
                chat_path,
                embeddings_path,
                models: p.models.clone(),
                keys,
                timeout: p.timeout,
                stream_idle_timeout: p.stream_idle_timeout,
                connect_timeout: p.connect_timeout,
                max_retries: p.max_retries,
                retry_backoff: p.retry_backoff,
                retry_backoff_max: p.retry_backoff_max,
                pool_max_idle: p.pool_max_idle,
            });
        }

        let g = &c.governance;
        let mut entities = Vec::new();
        let mut add = |level: Level,
                       id: &str,
                       budgets: &[crate::config::BudgetConfig],
                       rates: &[crate::config::RateLimitConfig],
                       models: &Option<Vec<String>>,
                       providers: &Option<Vec<String>>| {
            entities.push(Entity {
                level,
                id: id.into(),
                budgets: budgets
                    .iter()
                    .map(|b| Budget {
                        max_micros: (b.max_usd * 1e6).round() as u64,
                        window: b.reset,
                        calendar: b.calendar_aligned,
                    })
                    .collect(),
                rates: rates.iter().map(|r| Rate { requests: r.requests, tokens: r.tokens, window: r.per }).collect(),
                allowed_models: AllowList::from_config(models),
                allowed_providers: AllowList::from_config(providers),
                counters: counters.get(level, id),
            });
            entities.len() - 1
        };
        let mut customer_at = FxHashMap::default();
        for e in &g.customers {
            let i = add(Level::Customer, &e.id, &e.budgets, &e.rate_limits, &e.allowed_models, &e.allowed_providers);
            customer_at.insert(e.id.as_str(), i);
        }
        let mut team_at = FxHashMap::default();
        for e in &g.teams {
            let i = add(Level::Team, &e.id, &e.budgets, &e.rate_limits, &e.allowed_models, &e.allowed_providers);
            team_at.insert(e.id.as_str(), (i, e.customer.as_deref()));
        }
        let mut user_at = FxHashMap::default();
        for e in &g.users {
            let i = add(Level::User, &e.id, &e.budgets, &e.rate_limits, &e.allowed_models, &e.allowed_providers);
            user_at.insert(e.id.as_str(), (i, e.teams.first().map(String::as_str)));
        }
        let mut identity = build_identity(c, jwks)?;
        for e in g.users.iter().filter(|u| u.external_id.is_some()) {
            let Some(&(u, first_team)) = user_at.get(e.id.as_str()) else { continue };
            let mut chain = vec![u];
            let team = first_team.and_then(|t| team_at.get(t).copied());
            if let Some((t, _)) = team {
                chain.push(t);
            }
            let customer = team.and_then(|(_, c)| c);
            if let Some(cu) = customer.and_then(|c| customer_at.get(c)) {
                chain.push(*cu);
            }
            if let Some(ext) = &e.external_id {
                identity.users_by_external.insert(ext.clone(), identity.users.len());
            }
            identity.users.push(SsoUser {
                index: identity.users.len(),
                id: e.id.as_str().into(),
                team: first_team.map(Into::into),
                customer: customer.map(Into::into),
                chain,
                role: e.role.as_deref().and_then(crate::auth::Role::parse),
            });
        }
        let d = &c.identity.user_defaults;
        for p in &c.identity.providers {
            let slot = p.provision.then(|| {
                let id = format!("{}:unprovisioned", p.name);
                let e = add(Level::User, &id, &d.budgets, &d.rate_limits, &d.allowed_models, &d.allowed_providers);
                identity.users.push(SsoUser {
                    index: identity.users.len(),
                    id: id.as_str().into(),
                    team: None,
                    customer: None,
                    chain: vec![e],
                    role: None,
                });
                identity.users.len() - 1
            });
            identity.unprovisioned.push(slot);
        }

        let mut virtual_keys = Vec::with_capacity(g.virtual_keys.len());
        let mut keys_by_hash = FxHashMap::default();
        for (i, k) in g.virtual_keys.iter().enumerate() {
            let hash = match (&k.value, &k.value_sha256) {
                (Some(v), _) => crate::auth::hash_key(
                    &secret::resolve(v).map_err(|e| BuildError(format!("virtual key {}: {e}", k.id)))?,
                ),
                (None, Some(h)) => crate::auth::parse_hash(h)
                    .ok_or_else(|| BuildError(format!("virtual key {}: bad value_sha256", k.id)))?,
                (None, None) => return Err(BuildError(format!("virtual key {}: no value", k.id))),
            };
            keys_by_hash.insert(hash, i);
            let mut chain = vec![add(
                Level::VirtualKey,
                &k.id,
                &k.budgets,
                &k.rate_limits,
                &k.allowed_models,
                &k.allowed_providers,
            )];
            let user: Option<(usize, Option<&str>)> = k.user.as_deref().and_then(|u| user_at.get(u).copied());
            if let Some((u, _)) = user {
                chain.push(u);
            }
            let team_id = k.team.as_deref().or(user.and_then(|(_, t)| t));
            let team: Option<(usize, Option<&str>)> = team_id.and_then(|t| team_at.get(t).copied());
            if let Some((t, _)) = team {
                chain.push(t);
            }
            let customer_id = team.and_then(|(_, c)| c).or(k.customer.as_deref());
            if let Some(cu) = customer_id.and_then(|c| customer_at.get(c)) {
                chain.push(*cu);
            }
            virtual_keys.push(VirtualKey {
                index: i,
                id: k.id.as_str().into(),
                name: k.name.clone(),
                active: k.active,
                user: k.user.as_deref().map(Into::into),
                team: team_id.map(Into::into),
                customer: customer_id.map(Into::into),
                chain,
            });
        }
        let pricing = c
            .pricing
            .iter()
            .map(|(m, p)| {
                let price = Price {
                    input_per_mtok: p.input_per_mtok,
                    output_per_mtok: p.output_per_mtok,
                    cached_input_per_mtok: p.cached_input_per_mtok,
                    max_output_tokens: p.max_output_tokens,
                };
                (m.clone(), price)
            })
            .collect::<FxHashMap<_, _>>();
        let mut route_pricing: FxHashMap<Box<str>, FxHashMap<Box<str>, Price>> = FxHashMap::default();
        for (key, price) in &pricing {
            // Every split, as `format!("{provider}/{model}")` could have produced the key at any '/'.
            for (at, _) in key.match_indices('/') {
                let (provider, model) = (&key[..at], &key[at + 1..]);
                route_pricing.entry(provider.into()).or_default().insert(model.into(), *price);
            }
        }

        let admin_token = match &c.server.admin_token {
            Some(r) => match secret::resolve(r) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => {
                    tracing::warn!("server.admin_token does not resolve: the management API stays closed");
                    None
                }
            },
            None => None,
        };

        Ok(Snapshot {
            version,
            content_hash: loaded.content_hash,
            server: ServerSettings {
                require_virtual_key: c.server.require_virtual_key,
                max_body_bytes: c.server.max_body_bytes,
                admin_token,
            },
            providers,
            provider_by_name,
            bare_models,
            keys_by_hash,
            virtual_keys,
            entities,
            unpriced: c.governance.unpriced,
            pricing,
            route_pricing,
            identity,
            config: Arc::new(c.clone()),
        })
    }

    pub fn virtual_key_by_hash(&self, hash: &[u8; 32]) -> Option<&VirtualKey> {
        self.keys_by_hash.get(hash).map(|&i| &self.virtual_keys[i])
    }

    pub fn provider(&self, name: &str) -> Option<(usize, &Provider)> {
        self.provider_by_name.get(name).map(|&i| (i, &self.providers[i]))
    }

    /// The provider that serves a bare model name, if any lists it.
    pub fn provider_for_bare_model(&self, model: &str) -> Option<usize> {
        self.bare_models.get(model).copied()
    }

    /// The price of a model: `provider/model` first, then the bare name.
    pub fn price(&self, provider: &str, model: &str) -> Option<&Price> {
        self.route_pricing.get(provider).and_then(|m| m.get(model)).or_else(|| self.pricing.get(model))
    }
}

impl Origin {
    fn from_uri(uri: &http::Uri) -> Result<Self, String> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(format!("unsupported scheme {other:?}")),
        };
        let host = uri.host().ok_or("no host")?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority =
            HeaderValue::from_str(uri.authority().map(|a| a.as_str()).unwrap_or(&host)).map_err(|e| e.to_string())?;
        // A name that does not resolve now is not a config error (DNS hiccups happen); requests to it
        // answer 502 until a later snapshot resolves it.
        let addrs = match (host.as_str(), port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                tracing::warn!(%host, error = %e, "cannot resolve provider host");
                Vec::new()
            }
        };
        Ok(Origin {
            key: format!("{}://{host}:{port}", if tls { "https" } else { "http" }).into(),
            tls,
            host,
            port,
            authority,
            addrs,
            tls_config: None,
        })
    }
}

/// The rustls client config for one provider: the Mozilla roots shipped in the binary, plus the
/// certificates of `ca_file` when the provider sits behind a private CA.
fn tls_client_config(ca_file: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read tls_ca_file {path}: {e}"))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| format!("bad certificate in {path}: {e}"))?;
            roots.add(cert).map_err(|e| format!("unusable certificate in {path}: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("no certificate in tls_ca_file {path}"));
        }
    }
    let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Issuers and claim rules of every identity provider that accepts bearer tokens (has an `audience`).
fn build_identity(c: &FileConfig, jwks: &JwksCache) -> Result<Identity, BuildError> {
    use crate::auth::Role;
    use crate::auth::jwt::{MfaEvidence, TokenIssuer, parse_algorithm};
    use crate::config::IdpKind;
    let mut identity = Identity { require_sso: c.identity.require_sso, ..Default::default() };
    for p in &c.identity.providers {
        let algorithm = parse_algorithm(&p.algorithm)
            .ok_or_else(|| BuildError(format!("identity provider {}: algorithm {}", p.name, p.algorithm)))?;
        let mut issuer = TokenIssuer::new(&p.name, &p.issuer, p.audience.as_deref(), algorithm, p.leeway.as_secs());
        if let Some(keys) = jwks.get(&p.name)
            && let Err(e) = issuer.set_jwks(&keys.jwks)
        {
            tracing::warn!(provider = %p.name, "cached JWKS unusable: {e}");
        }
        let roles = |names: &[String]| names.iter().filter_map(|r| Role::parse(r)).collect::<Vec<_>>();
        identity.rules.push(IdpRules {
            provider: p.name.clone(),
            kind: p.kind,
            roles_claim: p
                .roles_claim
                .clone()
                .unwrap_or_else(|| if p.kind == IdpKind::Entra { "roles".into() } else { "groups".into() }),
            role_map: p.role_map.iter().filter_map(|(k, v)| Some((k.clone(), Role::parse(v)?))).collect(),
            default_role: p.default_role.as_deref().and_then(Role::parse),
            require_mfa: roles(&p.require_mfa),
            mfa: match (p.kind, &p.mfa_acrs) {
                (IdpKind::Entra, Some(acrs)) => MfaEvidence::EntraAcrs(acrs.clone()),
                _ => MfaEvidence::Amr,
            },
            tenants: p.tenants.clone(),
            teams_claim: p.teams_claim.clone().unwrap_or_else(|| "groups".into()),
            provision: p.provision,
        });
        identity.accepts_bearer |= issuer.audience.is_some();
        identity.issuers.push(issuer);
    }
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::{AllowList, Snapshot};

    #[test]
    fn a_price_for_provider_and_model_wins_over_the_bare_model() {
        let text = r#"
[[providers]]
name = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["gpt-4o-mini", "meta/llama"]
keys = [{ value = "k" }]

[pricing."gpt-4o-mini"]
input_per_mtok = 1.0
output_per_mtok = 1.0

[pricing."openai/gpt-4o-mini"]
input_per_mtok = 2.0
output_per_mtok = 2.0

[pricing."meta/llama"]
input_per_mtok = 3.0
output_per_mtok = 3.0
"#;
        let loaded = crate::config::parse(std::path::Path::new("t.toml"), text).unwrap();
        let snap = Snapshot::build(&loaded, 1, &Default::default()).unwrap();
        let input = |p: &str, m: &str| snap.price(p, m).map(|p| p.input_per_mtok);
        assert_eq!(input("openai", "gpt-4o-mini"), Some(2.0));
        assert_eq!(input("other", "gpt-4o-mini"), Some(1.0));
        // A bare name with a slash is still found as a bare name, and as provider "meta".
        assert_eq!(input("openai", "meta/llama"), Some(3.0));
        assert_eq!(input("meta", "llama"), Some(3.0));
        assert_eq!(input("openai", "llama"), None);
    }

    #[test]
    fn model_lists_match_bare_qualified_and_wildcard_entries() {
        let l = AllowList::Only(vec!["gpt-4o-mini".into(), "anthropic/*".into(), "openai/o3".into()]);
        assert!(l.allows_model("openai", "gpt-4o-mini"));
        assert!(l.allows_model("anthropic", "claude-x"));
        assert!(l.allows_model("openai", "o3"));
        assert!(!l.allows_model("openai", "gpt-4o"));
        assert!(!l.allows_model("other", "o3"));
        // A provider whose name is a prefix of another's must not borrow its entries.
        assert!(!AllowList::Only(vec!["openai2/*".into()]).allows_model("openai", "m"));
        assert!(!AllowList::Only(vec!["openai/*".into()]).allows_model("openai2", "m"));
    }
}
