//! `heimdall serve` and `heimdall check`: parses the command line and wires the parts together.
//! Holds no logic of its own beyond start-up order and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use heimdall::{audit, config, control, dataplane, metrics::Metrics, snapshot::Snapshot, state::Shared};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "heimdall", version, about = "A thread-per-core LLM gateway with enterprise governance")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file (TOML).
        #[arg(long, env = "HEIMDALL_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a config file; exits non-zero with file, line and reason when it is refused.
    Check {
        #[arg(long, env = "HEIMDALL_CONFIG", default_value = config::DEFAULT_PATH)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve { config: config::DEFAULT_PATH.into() }) {
        Command::Check { config } => check(&config),
        Command::Serve { config } => serve(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let loaded = config::load(path)?;
    println!(
        "{}: ok ({} providers, {} virtual keys)",
        path.display(),
        loaded.config.providers.len(),
        loaded.config.governance.virtual_keys.len()
    );
    Ok(())
}

#[allow(clippy::print_stdout)]
fn serve(config_path: PathBuf) -> anyhow::Result<()> {
    // One crypto provider for every rustls user in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let loaded = config::load(&config_path)?;
    let counters = Arc::new(heimdall::governance::counters::CounterRegistry::default());
    let store_path = std::path::Path::new(&loaded.config.storage.path);
    let store = heimdall::store::Store::open(store_path)?;
    let restored = store.restore(&counters)?;
    tracing::info!(path = %store_path.display(), restored, "store open; governance usage restored");
    let api_entities: Vec<_> =
        store.entities()?.into_iter().filter_map(heimdall::control::catalog::ApiEntity::from_stored).collect();
    let merged = heimdall::control::catalog::merge(&loaded, &api_entities).map_err(|r| {
        anyhow::anyhow!("entities in the store conflict with {}: {}: {}", config_path.display(), r.field, r.reason)
    })?;
    let snapshot = Snapshot::build(&merged, 1, &counters)?;
    let catalog = Arc::new(heimdall::control::catalog::Catalog::new(loaded.clone(), api_entities));
    let server = &loaded.config.server;
    let workers = match server.workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let (ring_tx, ring_rx) = audit::rings(workers, loaded.config.audit.ring_capacity);
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let (jwks_refresh_tx, jwks_refresh_rx) = tokio::sync::mpsc::unbounded_channel();
    let (provision_tx, provision_rx) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Metrics::new(workers);
    metrics.config_version.store(1, std::sync::atomic::Ordering::Relaxed);
    let shared = Arc::new(Shared {
        snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
        metrics,
        counters,
        control_tx,
        jwks_refresh: jwks_refresh_tx,
        provision: provision_tx,
        jwks: Default::default(),
        shutdown: shutdown_rx,
    });
    let (cores_stopped_tx, cores_stopped_rx) = tokio::sync::oneshot::channel();
    let hmac_key = match &loaded.config.audit.hmac_key {
        Some(r) => Some(Arc::<[u8]>::from(
            config::secret::resolve(r).map_err(|e| anyhow::anyhow!("audit.hmac_key: {e}"))?.into_bytes(),
        )),
        None => None,
    };
    let control = control::start(control::ControlParts {
        shared: shared.clone(),
        config_path: config_path.clone(),
        shutdown: shutdown_tx,
        requests: control_rx,
        rings: ring_rx,
        flush_interval: loaded.config.audit.flush_interval,
        catalog,
        store,
        checkpoint_interval: loaded.config.storage.checkpoint_interval,
        hmac_key,
        retention_days: loaded.config.audit.retention_days,
        audit_enabled: loaded.config.audit.enabled,
        cores_stopped: cores_stopped_rx,
        jwks_refresh: jwks_refresh_rx,
        provision: provision_rx,
    })?;
    let opts = dataplane::ServeOptions {
        listen: server.listen.parse()?,
        header_read_timeout: server.header_read_timeout,
        io_driver: server.io_driver,
        shutdown_grace: server.shutdown_grace,
    };
    let (addr, cores) = dataplane::start(shared, ring_tx, opts)?;
    tracing::info!(%addr, workers, config = %config_path.display(), "ready");
    println!("heimdall listening on http://{addr}");
    for core in cores {
        let _ = core.join();
    }
    let _ = cores_stopped_tx.send(());
    match control.join() {
        Ok(r) => r,
        Err(_) => anyhow::bail!("the control plane panicked"),
    }
}
