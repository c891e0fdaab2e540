//! `mock-upstream`: a fast, deterministic fake LLM provider (OpenAI and
//! Anthropic wire formats) for integration tests, the offline default config
//! and load tests.
//!
//! Thread-per-core: `--workers N` OS threads, each running a tokio
//! `current_thread` runtime with its own `SO_REUSEPORT` listener on the same
//! address, so the kernel spreads connections across cores. See
//! `loadtest/README.md` for the endpoints and fault triggers.

mod anthropic;
mod body;
mod openai;
mod server;
mod stats;
mod text;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::server::{Config, Ctx, Shared};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long in-flight connections get to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[derive(Parser, Debug)]
#[command(
    name = "mock-upstream",
    about = "Deterministic fake LLM provider (OpenAI + Anthropic wire formats) for tests and load tests"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Worker threads, each with its own SO_REUSEPORT listener [default: number of cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Delay before the response headers of inference requests, in ms.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Number of content deltas in a streamed answer.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    stream_chunks: u16,
    /// Delay between streamed content deltas, in ms.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Fraction (0.0-1.0) of inference requests that get an injected error,
    /// alternating 429 (retry-after: 1) and 500.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_rate: f64,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{v} is not within 0.0..=1.0")) }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let workers = match args.workers {
        Some(n) => usize::from(n),
        None => thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let cfg = Config {
        latency: Duration::from_millis(args.latency_ms),
        stream_chunks: usize::from(args.stream_chunks),
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        fail_rate: args.fail_rate,
    };
    let shared = Arc::new(Shared::new(cfg, workers));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Bind the first listener (resolving port 0), then the others on its real port.
    let mut handles = Vec::with_capacity(workers);
    let mut addr = args.listen;
    for idx in 0..workers {
        let (ready_tx, ready_rx) = mpsc::channel();
        let ctx = Arc::new(Ctx::new(shared.clone(), idx));
        let rx = shutdown_rx.clone();
        let handle = thread::Builder::new()
            .name(format!("mock-worker-{idx}"))
            .spawn(move || worker(addr, ctx, rx, ready_tx))
            .context("spawning a worker thread")?;
        handles.push(handle);
        match ready_rx.recv() {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(e)) => {
                let _ = shutdown_tx.send(true);
                return Err(e).with_context(|| format!("binding {addr}"));
            }
            Err(_) => {
                let _ = shutdown_tx.send(true);
                bail!("worker {idx} exited before binding");
            }
        }
    }
    announce(addr)?;

    wait_for_signal()?;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// The readiness line tests wait for.
#[allow(clippy::print_stdout)]
fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "mock-upstream listening on http://{addr}")?;
    out.flush()?;
    Ok(())
}

fn wait_for_signal() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        Ok(())
    })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn worker(
    addr: SocketAddr,
    ctx: Arc<Ctx>,
    shutdown: watch::Receiver<bool>,
    ready: mpsc::Sender<std::io::Result<SocketAddr>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    rt.block_on(async move {
        let listener = match bind(addr).and_then(|l| Ok((l.local_addr()?, l))) {
            Ok((bound, l)) => {
                let _ = ready.send(Ok(bound));
                l
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        serve(listener, ctx, shutdown).await;
    });
}

async fn serve(listener: TcpListener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).keep_alive(true);
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            res = listener.accept() => match res {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // e.g. EMFILE under a very high connection count: back off briefly
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        ctx.stats.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let conn_ctx = ctx.clone();
        let conn =
            http.serve_connection(TokioIo::new(stream), service_fn(move |req| server::handle(req, conn_ctx.clone())));
        let mut stop = shutdown.clone();
        let live = live.clone();
        live.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while live.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
