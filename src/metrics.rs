//! Process metrics: per-core counters written only by their own core (no shared cache lines on the
//! request path), summed when `/metrics` is scraped. Owns no policy; renders Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Routes as metric labels (a bounded set by construction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    ChatCompletions = 0,
    Embeddings,
    Models,
    Health,
    Metrics,
    Control,
    Unknown,
}

impl RouteLabel {
    const ALL: [RouteLabel; 7] = [
        RouteLabel::ChatCompletions,
        RouteLabel::Embeddings,
        RouteLabel::Models,
        RouteLabel::Health,
        RouteLabel::Metrics,
        RouteLabel::Control,
        RouteLabel::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RouteLabel::ChatCompletions => "/v1/chat/completions",
            RouteLabel::Embeddings => "/v1/embeddings",
            RouteLabel::Models => "/v1/models",
            RouteLabel::Health => "/health",
            RouteLabel::Metrics => "/metrics",
            RouteLabel::Control => "control",
            RouteLabel::Unknown => "unknown",
        }
    }
}

/// Status codes tracked one by one; anything else lands in "other".
const STATUSES: [u16; 16] = [200, 400, 401, 402, 403, 404, 405, 413, 422, 429, 499, 500, 502, 503, 504, 0];

fn status_slot(status: u16) -> usize {
    STATUSES.iter().position(|&s| s == status).unwrap_or(STATUSES.len() - 1)
}

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

/// Why an upstream attempt failed (bounded label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect = 0,
    Timeout,
    RateLimited,
    ServerError,
    KeyRefused,
    ClientError,
    StreamBroken,
}

impl UpstreamErrorKind {
    const ALL: [UpstreamErrorKind; 7] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::RateLimited,
        UpstreamErrorKind::ServerError,
        UpstreamErrorKind::KeyRefused,
        UpstreamErrorKind::ClientError,
        UpstreamErrorKind::StreamBroken,
    ];
    fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::RateLimited => "status_429",
            UpstreamErrorKind::ServerError => "status_5xx",
            UpstreamErrorKind::KeyRefused => "key_refused",
            UpstreamErrorKind::ClientError => "status_4xx",
            UpstreamErrorKind::StreamBroken => "stream_broken",
        }
    }
}

const ROUTES: usize = RouteLabel::ALL.len();

/// One core's counters. Only that core writes them.
#[derive(Default)]
pub struct CoreMetrics {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES],
    latency_buckets: [[AtomicU64; BUCKETS.len() + 1]; ROUTES],
    latency_sum_us: [AtomicU64; ROUTES],
    upstream_errors: [AtomicU64; UpstreamErrorKind::ALL.len()],
    connections_open: AtomicI64,
    streams_open: AtomicI64,
    /// Records this core pushed into its audit ring or spill queue.
    pub audit_pushed: AtomicU64,
    pub audit_spilled: AtomicU64,
}

impl CoreMetrics {
    pub fn request(&self, route: RouteLabel, status: u16, elapsed: Duration) {
        let r = route as usize;
        self.requests[r][status_slot(status)].fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        let b = BUCKETS.iter().position(|&ub| secs <= ub).unwrap_or(BUCKETS.len());
        self.latency_buckets[r][b].fetch_add(1, Relaxed);
        self.latency_sum_us[r].fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
    }
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }
    pub fn stream_opened(&self) {
        self.streams_open.fetch_add(1, Relaxed);
    }
    pub fn stream_closed(&self) {
        self.streams_open.fetch_sub(1, Relaxed);
    }
}

/// All metrics of the process.
pub struct Metrics {
    pub cores: Box<[CachePadded<CoreMetrics>]>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Records the control plane took out of the rings and spill queues.
    pub audit_drained: AtomicU64,
    /// Records given up after the store refused them for longer than the retry buffer holds.
    pub audit_write_dropped: AtomicU64,
    pub config_version: AtomicU64,
}

impl Metrics {
    pub fn new(cores: usize) -> Self {
        Self {
            cores: (0..cores).map(|_| CachePadded::new(CoreMetrics::default())).collect(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            audit_drained: AtomicU64::new(0),
            audit_write_dropped: AtomicU64::new(0),
            config_version: AtomicU64::new(0),
        }
    }

    fn sum(&self, f: impl Fn(&CoreMetrics) -> u64) -> u64 {
        self.cores.iter().map(|c| f(c)).sum()
    }

    /// Records pushed but not yet drained by the control plane.
    pub fn audit_ring_depth(&self) -> u64 {
        let pushed = self.sum(|c| c.audit_pushed.load(Relaxed));
        pushed.saturating_sub(self.audit_drained.load(Relaxed))
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        let _ = self.render_into(&mut o);
        o
    }

    fn render_into(&self, o: &mut String) -> std::fmt::Result {
        writeln!(o, "# HELP heimdall_requests_total Requests answered, by route and status.")?;
        writeln!(o, "# TYPE heimdall_requests_total counter")?;
        for route in RouteLabel::ALL {
            for (slot, status) in STATUSES.iter().enumerate() {
                let n = self.sum(|c| c.requests[route as usize][slot].load(Relaxed));
                if n > 0 {
                    let status = if *status == 0 { "other".to_string() } else { status.to_string() };
                    writeln!(o, "heimdall_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", route.as_str())?;
                }
            }
        }
        writeln!(o, "# HELP heimdall_request_duration_seconds Time from request to last byte, by route.")?;
        writeln!(o, "# TYPE heimdall_request_duration_seconds histogram")?;
        for route in RouteLabel::ALL {
            let r = route as usize;
            let counts: Vec<u64> =
                (0..=BUCKETS.len()).map(|b| self.sum(|c| c.latency_buckets[r][b].load(Relaxed))).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (i, ub) in BUCKETS.iter().enumerate() {
                cumulative += counts[i];
                writeln!(
                    o,
                    "heimdall_request_duration_seconds_bucket{{route=\"{}\",le=\"{ub}\"}} {cumulative}",
                    route.as_str()
                )?;
            }
            writeln!(
                o,
                "heimdall_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {total}",
                route.as_str()
            )?;
            let sum = self.sum(|c| c.latency_sum_us[r].load(Relaxed)) as f64 / 1e6;
            writeln!(o, "heimdall_request_duration_seconds_sum{{route=\"{}\"}} {sum}", route.as_str())?;
            writeln!(o, "heimdall_request_duration_seconds_count{{route=\"{}\"}} {total}", route.as_str())?;
        }
        writeln!(o, "# HELP heimdall_upstream_errors_total Failed upstream attempts, by kind.")?;
        writeln!(o, "# TYPE heimdall_upstream_errors_total counter")?;
        for kind in UpstreamErrorKind::ALL {
            let n = self.sum(|c| c.upstream_errors[kind as usize].load(Relaxed));
            writeln!(o, "heimdall_upstream_errors_total{{kind=\"{}\"}} {n}", kind.as_str())?;
        }
        let gauge = |o: &mut String, name: &str, help: &str, v: i64| -> std::fmt::Result {
            writeln!(o, "# HELP {name} {help}")?;
            writeln!(o, "# TYPE {name} gauge")?;
            writeln!(o, "{name} {v}")
        };
        let counter = |o: &mut String, name: &str, help: &str, v: u64| -> std::fmt::Result {
            writeln!(o, "# HELP {name} {help}")?;
            writeln!(o, "# TYPE {name} counter")?;
            writeln!(o, "{name} {v}")
        };
        let conns: i64 = self.cores.iter().map(|c| c.connections_open.load(Relaxed)).sum();
        let streams: i64 = self.cores.iter().map(|c| c.streams_open.load(Relaxed)).sum();
        gauge(o, "heimdall_connections_open", "Client connections open.", conns)?;
        gauge(o, "heimdall_streams_open", "Streamed responses in flight.", streams)?;
        gauge(
            o,
            "heimdall_audit_ring_depth",
            "Audit records waiting for the control plane.",
            self.audit_ring_depth() as i64,
        )?;
        counter(
            o,
            "heimdall_audit_records_total",
            "Audit records drained by the control plane.",
            self.audit_drained.load(Relaxed),
        )?;
        counter(
            o,
            "heimdall_audit_spilled_total",
            "Audit records that found their core's ring full and went to the overflow queue.",
            self.sum(|c| c.audit_spilled.load(Relaxed)),
        )?;
        counter(
            o,
            "heimdall_audit_write_dropped_total",
            "Audit records given up because the store refused them past the retry buffer.",
            self.audit_write_dropped.load(Relaxed),
        )?;
        counter(o, "heimdall_config_reloads_total", "Config reloads published.", self.reloads_ok.load(Relaxed))?;
        counter(
            o,
            "heimdall_config_reload_failures_total",
            "Config reloads refused.",
            self.reloads_failed.load(Relaxed),
        )?;
        gauge(
            o,
            "heimdall_config_version",
            "Version of the snapshot being served.",
            self.config_version.load(Relaxed) as i64,
        )?;
        gauge(o, "heimdall_workers", "Data-plane cores.", self.cores.len() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_summed_across_cores() {
        let m = Metrics::new(2);
        m.cores[0].request(RouteLabel::ChatCompletions, 200, Duration::from_millis(3));
        m.cores[1].request(RouteLabel::ChatCompletions, 200, Duration::from_millis(30));
        m.cores[1].request(RouteLabel::ChatCompletions, 418, Duration::from_millis(1));
        let text = m.render();
        assert!(text.contains("heimdall_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("heimdall_requests_total{route=\"/v1/chat/completions\",status=\"other\"} 1"), "{text}");
        assert!(text.contains("heimdall_request_duration_seconds_count{route=\"/v1/chat/completions\"} 3"), "{text}");
    }

    #[test]
    fn ring_depth_is_pushed_minus_drained() {
        let m = Metrics::new(2);
        m.cores[0].audit_pushed.store(5, Relaxed);
        m.cores[1].audit_pushed.store(3, Relaxed);
        m.audit_drained.store(6, Relaxed);
        assert_eq!(m.audit_ring_depth(), 2);
    }
}
