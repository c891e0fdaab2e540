//! The control-plane thread: one tokio runtime that owns reloads, the audit drain, the paths the
//! data plane hands over, and the shutdown sequence. The only writer of the published snapshot.

mod api;
pub mod catalog;
mod reload;
mod router;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::audit::{CoreAuditRx, RequestRecord};
use crate::handoff::ControlRequest;
use crate::state::Shared;

/// What the control plane is handed at start.
pub struct ControlParts {
    pub shared: Arc<Shared>,
    pub config_path: PathBuf,
    /// The file and API entities the first snapshot was built from.
    pub catalog: Arc<catalog::Catalog>,
    pub shutdown: watch::Sender<bool>,
    pub requests: mpsc::UnboundedReceiver<ControlRequest>,
    pub rings: Vec<CoreAuditRx>,
    pub flush_interval: Duration,
    /// Fires once every data-plane core has drained and stopped.
    pub cores_stopped: oneshot::Receiver<()>,
    pub store: crate::store::Store,
    pub checkpoint_interval: Duration,
}

/// Starts the thread. Returns once its signal handlers are installed, so a SIGTERM sent right
/// after the gateway reports ready is handled as a clean shutdown.
pub fn start(parts: ControlParts) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let handle = std::thread::Builder::new().name("heimdall-control".into()).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(run(parts, ready_tx))
    })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("control plane died while starting"))?
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(handle)
}

async fn run(parts: ControlParts, ready: std::sync::mpsc::Sender<Result<(), String>>) -> anyhow::Result<()> {
    let ControlParts {
        shared,
        config_path,
        catalog,
        shutdown,
        requests,
        mut rings,
        flush_interval,
        cores_stopped,
        store,
        checkpoint_interval,
    } = parts;
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()));
    let (mut term, mut int, hup) = match signals {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            let _ = ready.send(Err("cannot install signal handlers".into()));
            anyhow::bail!("cannot install signal handlers");
        }
    };
    let store = Arc::new(std::sync::Mutex::new(store));
    let reloader = reload::Reloader::new(shared.clone(), config_path, catalog.clone());
    let watcher = reloader.watch(hup);
    let api =
        api::Api { shared: shared.clone(), catalog, store: store.clone(), test_clock: router::test_clock_enabled() };
    let router = tokio::spawn(router::serve(requests, api));
    let _ = ready.send(Ok(()));

    let mut checkpoints = tokio::time::interval(checkpoint_interval);
    checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drained = Vec::with_capacity(4096);
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => drain(&shared, &mut rings, &mut drained),
            _ = checkpoints.tick() => checkpoint(&shared, &store).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: no new connections; in-flight requests may finish");
    let _ = shutdown.send(true);
    // Keep draining while the cores finish their last requests, so rings cannot fill up meanwhile.
    let mut cores_stopped = cores_stopped;
    loop {
        tokio::select! {
            _ = tick.tick() => drain(&shared, &mut rings, &mut drained),
            _ = checkpoints.tick() => checkpoint(&shared, &store).await,
            _ = &mut cores_stopped => break,
        }
    }
    drain(&shared, &mut rings, &mut drained);
    // Every request has settled: this checkpoint holds the exact spend a restart will find.
    checkpoint(&shared, &store).await;
    watcher.abort();
    router.abort();
    tracing::info!(records = shared.metrics.audit_drained.load(Relaxed), "control plane stopped; every ring drained");
    Ok(())
}

/// Writes the governance counters to the store, off the control thread's event loop.
async fn checkpoint(shared: &Arc<Shared>, store: &Arc<std::sync::Mutex<crate::store::Store>>) {
    let (shared, store) = (shared.clone(), store.clone());
    let done = tokio::task::spawn_blocking(move || {
        let mut store = match store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        store.checkpoint(&shared.counters)
    })
    .await;
    match done {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!("governance checkpoint failed: {e}"),
        Err(e) => tracing::error!("governance checkpoint task failed: {e}"),
    }
}

/// Takes every waiting record out of every core's ring and spill queue.
fn drain(shared: &Shared, rings: &mut [CoreAuditRx], batch: &mut Vec<RequestRecord>) {
    batch.clear();
    for ring in rings.iter_mut() {
        ring.drain_into(batch);
    }
    if batch.is_empty() {
        return;
    }
    // Persisting the batch (one transaction) is the audit issue's; until then records are counted.
    shared.metrics.audit_drained.fetch_add(batch.len() as u64, Relaxed);
    batch.clear();
}
