//! Identity providers' signing keys: discovery and JWKS fetched at start, on each provider's
//! `jwks_refresh` schedule, and when a core meets an unknown `kid` (at most once per
//! `MIN_REFETCH` per provider). A changed key set rebuilds the snapshot; a failed fetch keeps the old keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::mpsc;

use super::catalog::Catalog;
use crate::audit::event::AuditEvent;
use crate::auth::jwt::{TokenIssuer, parse_algorithm};
use crate::config::IdpConfig;
use crate::snapshot::ProviderKeys;
use crate::state::Shared;

/// A token with an unknown `kid` triggers a fetch at most this often per provider, so a flood of
/// forged kids cannot turn the gateway into a load generator against the identity provider.
const MIN_REFETCH: Duration = Duration::from_secs(2);
/// Each discovery or JWKS request may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

pub(super) struct KeyFetcher {
    shared: Arc<Shared>,
    catalog: Arc<Catalog>,
    audit: mpsc::UnboundedSender<AuditEvent>,
    client: reqwest::Client,
    last_fetch: HashMap<String, Instant>,
}

impl KeyFetcher {
    pub(super) fn new(
        shared: Arc<Shared>,
        catalog: Arc<Catalog>,
        audit: mpsc::UnboundedSender<AuditEvent>,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(FETCH_TIMEOUT).build()?;
        Ok(Self { shared, catalog, audit, client, last_fetch: HashMap::new() })
    }

    /// Runs until aborted: fetches every provider once, then on schedule and on request.
    pub(super) fn run(mut self, mut wanted: mpsc::UnboundedReceiver<String>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            self.fetch(None).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    Some(name) = wanted.recv() => {
                        let recent = self.last_fetch.get(&name).is_some_and(|t| t.elapsed() < MIN_REFETCH);
                        if !recent {
                            self.fetch(Some(&name)).await;
                        }
                    }
                    _ = tick.tick() => {
                        let due = self.providers().into_iter().any(|p| {
                            self.last_fetch.get(&p.name).is_none_or(|t| t.elapsed() >= p.jwks_refresh)
                        });
                        if due {
                            self.fetch_due().await;
                        }
                    }
                }
            }
        })
    }

    /// The file's providers and the API's, as the published snapshot has them.
    fn providers(&self) -> Vec<IdpConfig> {
        self.shared.snapshot.load().config.identity.providers.clone()
    }

    async fn fetch_due(&mut self) {
        let due: Vec<String> = self
            .providers()
            .into_iter()
            .filter(|p| self.last_fetch.get(&p.name).is_none_or(|t| t.elapsed() >= p.jwks_refresh))
            .map(|p| p.name)
            .collect();
        for name in due {
            self.fetch(Some(&name)).await;
        }
    }

    /// Fetches one provider's keys (or all), and rebuilds the snapshot when any set changed.
    async fn fetch(&mut self, only: Option<&str>) {
        let mut changed = false;
        for p in self.providers().into_iter().filter(|p| only.is_none_or(|n| n == p.name)) {
            self.last_fetch.insert(p.name.clone(), Instant::now());
            match self.fetch_keys(&p).await {
                Ok(keys) => {
                    let mut cache = match self.shared.jwks.lock() {
                        Ok(c) => c,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    if cache.get(&p.name) != Some(&keys) {
                        cache.insert(p.name.clone(), keys);
                        changed = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(provider = %p.name, "identity provider keys not refreshed (the old keys stay): {e}");
                    let details = serde_json::json!({ "provider": p.name, "reason": e });
                    let _ = self.audit.send(AuditEvent::system("security", "jwks_fetch_failed", "failure", details));
                }
            }
        }
        if !changed {
            return;
        }
        match super::catalog::rebuild(&self.shared, &self.catalog).await {
            Ok(version) => tracing::info!(version, "identity provider keys changed; snapshot rebuilt"),
            Err(e) => tracing::warn!("cannot rebuild the snapshot with new identity provider keys: {e}"),
        }
    }

    /// Discovery, then the JWKS it names; refused unless the document's issuer is the configured
    /// one exactly and at least one key can verify this provider's pinned algorithm.
    async fn fetch_keys(&self, p: &IdpConfig) -> Result<ProviderKeys, String> {
        let url = format!("{}/.well-known/openid-configuration", p.issuer.trim_end_matches('/'));
        let d: Discovery = self.get(&url).await.and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| format!("discovery document at {url} unreadable: {e}"))
        })?;
        if d.issuer != p.issuer {
            return Err(format!("discovery at {url} names issuer `{}`, not the configured `{}`", d.issuer, p.issuer));
        }
        let doc = self.get(&d.jwks_uri).await?;
        let alg = parse_algorithm(&p.algorithm).ok_or_else(|| format!("algorithm {}", p.algorithm))?;
        let mut probe = TokenIssuer::new(&p.name, &p.issuer, None, alg, 0);
        match probe.set_jwks(&doc) {
            Ok(0) => Err(format!("the JWKS at {} holds no {} key with a kid", d.jwks_uri, p.algorithm)),
            Ok(_) => Ok(ProviderKeys {
                authorization_endpoint: d.authorization_endpoint,
                token_endpoint: d.token_endpoint,
                jwks: Arc::from(doc),
            }),
            Err(e) => Err(format!("{}: {e}", d.jwks_uri)),
        }
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let r = self.client.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", r.status()));
        }
        Ok(r.bytes().await.map_err(|e| format!("GET {url}: {e}"))?.to_vec())
    }
}
