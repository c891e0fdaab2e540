//! Config reload: a debounced watch of the file's directory plus SIGHUP. A new snapshot is built
//! completely and only then swapped in; a refused file leaves the serving snapshot untouched.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::sync::mpsc;

use super::catalog::{Catalog, merge, publish};
use crate::audit::event::AuditEvent;
use crate::config;
use crate::state::Shared;

/// How often provider host names are resolved again (the data plane never resolves).
const DNS_REFRESH: Duration = Duration::from_secs(30);

pub(super) struct Reloader {
    shared: Arc<Shared>,
    path: PathBuf,
    /// The file (and API entities) the serving snapshot was built from.
    catalog: Arc<Catalog>,
    audit: mpsc::UnboundedSender<AuditEvent>,
}

impl Reloader {
    pub(super) fn new(
        shared: Arc<Shared>,
        path: PathBuf,
        catalog: Arc<Catalog>,
        audit: mpsc::UnboundedSender<AuditEvent>,
    ) -> Self {
        Self { shared, path, catalog, audit }
    }

    /// Runs the watcher and the SIGHUP listener until aborted.
    pub(super) fn watch(mut self, mut hup: Signal) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let (tx, mut rx) = mpsc::unbounded_channel::<()>();
            let _watch = match super::config_watch::watch(&self.path, tx) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
                    None
                }
            };
            let mut dns = tokio::time::interval(DNS_REFRESH);
            dns.tick().await;
            loop {
                tokio::select! {
                    Some(()) = rx.recv() => self.reload(false).await,
                    _ = hup.recv() => self.reload(true).await,
                    _ = dns.tick() => self.refresh_dns().await,
                }
            }
        })
    }

    /// Prepares a new snapshot and swaps it in; on any error keeps the old one and says why.
    async fn reload(&mut self, forced: bool) {
        let _writes = self.catalog.lock_writes().await;
        let path = self.path.clone();
        let loaded = match tokio::task::spawn_blocking(move || config::load(&path)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return self.refuse(e.to_string()),
            Err(e) => return self.refuse(format!("reload task failed: {e}")),
        };
        if loaded.content_hash == self.catalog.file().content_hash && !forced {
            return;
        }
        let merged = match merge(&loaded, &self.catalog.api()) {
            Ok(m) => m,
            Err(r) => {
                return self.refuse(format!(
                    "{}: conflicts with entities created through the API: {}: {}",
                    self.path.display(),
                    r.field,
                    r.reason
                ));
            }
        };
        match publish(&self.shared, merged).await {
            Ok(version) => {
                self.catalog.set_file(loaded);
                self.shared.metrics.reloads_ok.fetch_add(1, Relaxed);
                tracing::info!(version, "config reloaded");
                let details = serde_json::json!({ "file": self.path.display().to_string(), "version": version, "forced": forced });
                let _ = self.audit.send(AuditEvent::system("security", "config_reload", "success", details));
            }
            Err(reason) => self.refuse(format!("{}: {reason}", self.path.display())),
        }
    }

    fn refuse(&self, reason: String) {
        self.shared.metrics.reloads_failed.fetch_add(1, Relaxed);
        tracing::error!("config rejected, the previous config keeps serving: {reason}");
        let details = serde_json::json!({ "file": self.path.display().to_string(), "reason": reason });
        let _ = self.audit.send(AuditEvent::system("security", "config_rejected", "failure", details));
    }
}

impl Reloader {
    /// Rebuilds the snapshot from the same config when a provider's addresses changed, so a
    /// provider that moves (or whose name did not resolve at start) is followed without a reload.
    async fn refresh_dns(&mut self) {
        let current = self.shared.snapshot.load_full();
        let changed = tokio::task::spawn_blocking(move || {
            current.providers.iter().any(|p| {
                use std::net::ToSocketAddrs;
                let now: Vec<_> =
                    (p.origin.host.as_str(), p.origin.port).to_socket_addrs().map(|a| a.collect()).unwrap_or_default();
                !now.is_empty() && now != p.origin.addrs
            })
        })
        .await
        .unwrap_or(false);
        if !changed {
            return;
        }
        match super::catalog::rebuild(&self.shared, &self.catalog).await {
            Ok(version) => tracing::info!(version, "provider addresses changed; snapshot rebuilt"),
            Err(e) => tracing::warn!("cannot rebuild the snapshot after a DNS change: {e}"),
        }
    }
}
