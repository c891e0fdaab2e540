//! The control-plane thread: one tokio runtime that owns reloads, the audit drain, the paths the
//! data plane hands over, and the shutdown sequence. The only writer of the published snapshot.

mod api;
pub mod catalog;
mod config_watch;
mod identity;
mod reload;
mod router;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::audit::event::{AuditEvent, Auditable, IndexValues, RequestEvent};
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
    /// Signs the audit chain (HMAC-SHA256) when set.
    pub hmac_key: Option<Arc<[u8]>>,
    pub retention_days: Option<u32>,
    /// `audit.enabled`: write the trail.
    pub audit_enabled: bool,
    /// Identity providers whose keys a core wants fetched again.
    pub jwks_refresh: mpsc::UnboundedReceiver<String>,
    /// Users to provision, met by the cores with a valid token.
    pub provision: mpsc::UnboundedReceiver<crate::auth::Provision>,
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
        rings,
        flush_interval,
        cores_stopped,
        store,
        checkpoint_interval,
        hmac_key,
        retention_days,
        audit_enabled,
        jwks_refresh,
        provision,
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
    let (audit_tx, audit_rx) = mpsc::unbounded_channel();
    let session_secret = match &catalog.file().config.identity.session_secret {
        Some(r) => match crate::config::secret::resolve(r) {
            Ok(v) => Some(v),
            Err(e) => {
                let _ = ready.send(Err(format!("identity.session_secret: {e}")));
                anyhow::bail!("identity.session_secret: {e}");
            }
        },
        None => None,
    };
    let reloader = reload::Reloader::new(shared.clone(), config_path, catalog.clone(), audit_tx.clone());
    let watcher = reloader.watch(hup);
    let keys = match identity::KeyFetcher::new(shared.clone(), catalog.clone(), audit_tx.clone()) {
        Ok(f) => f.run(jwks_refresh),
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the identity key fetcher: {e}")));
            anyhow::bail!("cannot start the identity key fetcher: {e}");
        }
    };
    let api = api::Api {
        shared: shared.clone(),
        catalog,
        store: store.clone(),
        audit: audit_tx,
        hmac_key: hmac_key.clone(),
        test_clock: router::test_clock_enabled(),
        logins: Arc::new(api::Logins::default()),
        http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        sealer: Arc::new(crate::identity::Sealer::new(session_secret.as_deref())),
    };
    let api = Arc::new(api);
    let provisioner = tokio::spawn(api::provision_users(api.clone(), provision));
    let router = tokio::spawn(router::serve(requests, api));
    let _ = ready.send(Ok(()));

    let mut drainer = Drainer {
        shared: shared.clone(),
        rings,
        batch: Vec::with_capacity(4096),
        usage: Rollup::default(),
        events: audit_rx,
        store: store.clone(),
        hmac_key,
        enabled: audit_enabled,
        unwritten: Vec::new(),
        spare: Vec::new(),
    };
    let mut checkpoints = tokio::time::interval(checkpoint_interval);
    checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retention = tokio::time::interval(RETENTION_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => drainer.flush().await,
            _ = retention.tick(), if retention_days.is_some() => apply_retention(&store, retention_days).await,
            _ = checkpoints.tick() => checkpoint(&shared, &store, &mut drainer.usage).await,
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
            _ = tick.tick() => drainer.flush().await,
            _ = checkpoints.tick() => checkpoint(&shared, &store, &mut drainer.usage).await,
            _ = &mut cores_stopped => break,
        }
    }
    watcher.abort();
    keys.abort();
    provisioner.abort();
    router.abort();
    drainer.flush().await;
    // Every request has settled: this checkpoint holds the exact spend a restart will find.
    checkpoint(&shared, &store, &mut drainer.usage).await;
    tracing::info!(records = shared.metrics.audit_drained.load(Relaxed), "control plane stopped; every ring drained");
    Ok(())
}

/// How often old audit records are looked for (and once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(600);

async fn apply_retention(store: &Arc<std::sync::Mutex<crate::store::Store>>, days: Option<u32>) {
    let Some(days) = days else { return };
    let cutoff = (crate::governance::clock::now() - i64::from(days) * 86_400) * 1000;
    let store = store.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut store = match store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        store.apply_retention(cutoff)
    })
    .await;
    match done {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(removed = n, days, "audit retention applied"),
        Ok(Err(e)) => tracing::error!("audit retention failed: {e}"),
        Err(e) => tracing::error!("audit retention task failed: {e}"),
    }
}

/// Writes the governance counters to the store, off the control thread's event loop.
async fn checkpoint(shared: &Arc<Shared>, store: &Arc<std::sync::Mutex<crate::store::Store>>, usage: &mut Rollup) {
    let (shared, store) = (shared.clone(), store.clone());
    let rows = usage.take();
    let done = tokio::task::spawn_blocking(move || {
        let mut store = match store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !rows.is_empty() {
            store.add_usage(&rows)?;
        }
        store.checkpoint(&shared.counters)
    })
    .await;
    match done {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!("governance checkpoint failed: {e}"),
        Err(e) => tracing::error!("governance checkpoint task failed: {e}"),
    }
}

/// Moves audit records from the cores' rings (and the control plane's own events) into the
/// store, one transaction per flush, and feeds the usage rollup.
struct Drainer {
    shared: Arc<Shared>,
    rings: Vec<CoreAuditRx>,
    batch: Vec<RequestRecord>,
    usage: Rollup,
    events: mpsc::UnboundedReceiver<AuditEvent>,
    store: Arc<std::sync::Mutex<crate::store::Store>>,
    hmac_key: Option<Arc<[u8]>>,
    enabled: bool,
    /// Records the store refused (disk full, locked file): retried first on the next flush, so a
    /// passing store failure delays the trail instead of cutting a hole in it.
    unwritten: Vec<Pending>,
    /// The last written batch's buffer, empty, for the next batch: at 40k records a second a
    /// fresh one grew through eight reallocations every 10 ms.
    spare: Vec<Pending>,
}

/// A record waiting for the store: a control-plane event, or a data-plane request that is
/// serialized straight from its ring record when written.
enum Pending {
    Event(AuditEvent),
    Request(RequestEvent),
}

impl Auditable for Pending {
    fn timestamp_ms(&self) -> i64 {
        match self {
            Pending::Event(e) => e.timestamp_ms(),
            Pending::Request(r) => r.timestamp_ms(),
        }
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            Pending::Event(e) => e.write_canonical(out),
            Pending::Request(r) => r.write_canonical(out),
        }
    }

    fn index_values(&self) -> IndexValues<'_> {
        match self {
            Pending::Event(e) => e.index_values(),
            Pending::Request(r) => r.index_values(),
        }
    }
}

/// Refused records kept for retry; beyond this the oldest are given up (and counted), so a store
/// that never recovers cannot grow the control plane without bound.
const MAX_UNWRITTEN: usize = 1_000_000;

/// The largest batch buffer kept for reuse, in records. A 10 ms batch holds a few hundred at the
/// rates measured here; only a backlog grows past this.
const SPARE_MAX: usize = 1 << 16;

impl Drainer {
    async fn flush(&mut self) {
        self.batch.clear();
        for ring in self.rings.iter_mut() {
            ring.drain_into(&mut self.batch);
        }
        let mut events = if self.unwritten.is_empty() {
            std::mem::take(&mut self.spare)
        } else {
            std::mem::take(&mut self.unwritten)
        };
        for r in &self.batch {
            self.usage.add(r);
        }
        let from_rings = self.batch.len() as u64;
        if self.enabled {
            events.extend(self.batch.drain(..).map(|r| Pending::Request(RequestEvent::new(r))));
        }
        self.batch.clear();
        while let Ok(e) = self.events.try_recv() {
            if self.enabled {
                events.push(Pending::Event(e));
            }
        }
        if events.is_empty() {
            self.spare = events;
            return;
        }
        let (store, key) = (self.store.clone(), self.hmac_key.clone());
        let written = tokio::task::spawn_blocking(move || {
            let mut store = match store.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            let result = store.append_audit(&events, key.as_deref());
            (events, result)
        })
        .await;
        match written {
            // A buffer grown by a backlog (a store that was down) is let go.
            Ok((mut events, Ok(()))) if events.capacity() <= SPARE_MAX => {
                events.clear();
                self.spare = events;
            }
            Ok((_, Ok(()))) => {}
            // The batch's transaction rolled back as a whole: keep it and try again next flush.
            Ok((mut events, Err(e))) => {
                tracing::error!(records = events.len(), "audit batch not written, will retry: {e}");
                if events.len() > MAX_UNWRITTEN {
                    let dropped = events.len() - MAX_UNWRITTEN;
                    events.drain(..dropped);
                    self.shared.metrics.audit_write_dropped.fetch_add(dropped as u64, Relaxed);
                }
                self.unwritten = events;
            }
            Err(e) => tracing::error!("audit writer task failed: {e}"),
        }
        self.shared.metrics.audit_drained.fetch_add(from_rings, Relaxed);
    }
}

/// Requests, tokens and spend summed for one entity, hour and model.
#[derive(Default, Clone, Copy)]
struct Sums {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_micros: u64,
}

const ROLLUP_LEVELS: [&str; 4] = ["virtual_key", "user", "team", "customer"];

/// Hourly usage per entity and model, accumulated between checkpoints. Nested by hour, model
/// and level so that adding a request looks up borrowed keys and allocates only for a
/// combination seen the first time (it runs once per request, audit on or off).
#[derive(Default)]
struct Rollup {
    hours: rustc_hash::FxHashMap<i64, rustc_hash::FxHashMap<String, ByLevel>>,
}

/// One hour and model's sums per entity, a map per level in `ROLLUP_LEVELS` order.
type ByLevel = [rustc_hash::FxHashMap<Arc<str>, Sums>; 4];

impl Rollup {
    fn add(&mut self, r: &RequestRecord) {
        let Some(model) = &r.model else { return };
        let hour = r.at_unix_ms as i64 / 3_600_000;
        let models = self.hours.entry(hour).or_default();
        let levels = match models.get_mut(model.as_str()) {
            Some(l) => l,
            None => models.entry(model.clone()).or_default(),
        };
        let usage = r.usage.unwrap_or_default();
        for (map, id) in levels.iter_mut().zip([&r.virtual_key, &r.user, &r.team, &r.customer]) {
            let Some(id) = id else { continue };
            let sums = match map.get_mut(&**id) {
                Some(s) => s,
                None => map.entry(id.clone()).or_default(),
            };
            sums.requests += 1;
            sums.prompt_tokens += usage.prompt_tokens;
            sums.completion_tokens += usage.completion_tokens;
            sums.cost_micros += r.cost_micros.unwrap_or(0);
        }
    }

    fn take(&mut self) -> Vec<crate::store::UsageRow> {
        let mut rows = Vec::new();
        for (hour, models) in self.hours.drain() {
            let period = chrono::DateTime::from_timestamp(hour * 3600, 0)
                .map(|t| t.format("%Y-%m-%dT%H").to_string())
                .unwrap_or_default();
            for (model, levels) in models {
                for (level, map) in ROLLUP_LEVELS.iter().zip(levels) {
                    rows.extend(map.into_iter().map(|(id, s)| crate::store::UsageRow {
                        level: level.to_string(),
                        entity_id: id.to_string(),
                        period: period.clone(),
                        model: model.clone(),
                        requests: s.requests,
                        prompt_tokens: s.prompt_tokens,
                        completion_tokens: s.completion_tokens,
                        cost_micros: s.cost_micros,
                    }));
                }
            }
        }
        rows
    }
}
