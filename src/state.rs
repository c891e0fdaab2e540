//! What the data-plane cores and the control plane share: the published snapshot, the metrics,
//! the hand-off channel and the shutdown signal. Counters live here, never inside a snapshot.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::governance::counters::CounterRegistry;
use crate::handoff::ControlRequest;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

pub struct Shared {
    /// Swapped whole by the control plane; read by every request.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Metrics,
    /// Budget and rate counters by entity; snapshots hold references into it.
    pub counters: Arc<CounterRegistry>,
    /// Paths the data plane does not own go to the control plane through here.
    pub control_tx: tokio::sync::mpsc::UnboundedSender<ControlRequest>,
    /// Identity providers whose signing keys a core found stale (a token with an unknown `kid`).
    pub jwks_refresh: tokio::sync::mpsc::UnboundedSender<String>,
    /// Users a core met with a valid token and no account, for the control plane to provision.
    pub provision: tokio::sync::mpsc::UnboundedSender<crate::auth::Provision>,
    /// The JWKS documents last fetched, by provider; every snapshot build reads them. Control
    /// plane only (the data plane reads the keys from the snapshot).
    pub jwks: std::sync::Mutex<crate::snapshot::JwksCache>,
    /// Flips to true once: stop accepting, finish in-flight requests, exit.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}
