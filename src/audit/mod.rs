//! Request records and the per-core rings that carry them from the data plane to the control
//! plane. Pushing never blocks and never drops: a full ring spills to an unbounded overflow queue.

pub mod event;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crossbeam_queue::SegQueue;
use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::metrics::{CoreMetrics, RouteLabel};
use crate::providers::Usage;

/// How a request ended, as far as the gateway could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response was sent in full (whatever its status).
    Completed,
    /// The client went away before the response was complete.
    ClientClosed,
    /// The upstream broke or stalled in the middle of a streamed response.
    UpstreamBroken,
}

/// One request as the data plane saw it. Carries no prompt or completion text.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub request_id: uuid::Uuid,
    pub at_unix_ms: u64,
    pub core: u16,
    pub route: RouteLabel,
    pub status: u16,
    pub error_type: Option<&'static str>,
    pub outcome: Outcome,
    pub client_ip: IpAddr,
    pub virtual_key: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub customer: Option<Arc<str>>,
    pub provider: Option<Arc<str>>,
    pub model: Option<String>,
    pub stream: bool,
    pub attempts: u8,
    pub usage: Option<Usage>,
    pub cost_micros: Option<u64>,
    pub latency_us: u64,
    pub ttfb_us: Option<u64>,
}

/// The data-plane end of one core's ring.
pub struct CoreAuditTx {
    prod: HeapProd<RequestRecord>,
    spill: Arc<SegQueue<RequestRecord>>,
}

/// The control-plane end of one core's ring.
pub struct CoreAuditRx {
    cons: HeapCons<RequestRecord>,
    spill: Arc<SegQueue<RequestRecord>>,
}

/// One ring per core, `capacity` slots each.
pub fn rings(cores: usize, capacity: usize) -> (Vec<CoreAuditTx>, Vec<CoreAuditRx>) {
    (0..cores)
        .map(|_| {
            let (prod, cons) = HeapRb::<RequestRecord>::new(capacity.max(1)).split();
            let spill = Arc::new(SegQueue::new());
            (CoreAuditTx { prod, spill: spill.clone() }, CoreAuditRx { cons, spill })
        })
        .unzip()
}

impl CoreAuditTx {
    /// Hands a record to the control plane without waiting. Runs once per request, at its end.
    pub fn push(&mut self, record: RequestRecord, metrics: &CoreMetrics) {
        if let Err(record) = self.prod.try_push(record) {
            self.spill.push(record);
            metrics.audit_spilled.fetch_add(1, Relaxed);
        }
        metrics.audit_pushed.fetch_add(1, Relaxed);
    }
}

impl CoreAuditRx {
    /// Takes everything waiting (ring first, then spill) into `out`; returns how many.
    pub fn drain_into(&mut self, out: &mut Vec<RequestRecord>) -> usize {
        let before = out.len();
        out.extend(self.cons.pop_iter());
        while let Some(r) = self.spill.pop() {
            out.push(r);
        }
        out.len() - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn record(i: u16) -> RequestRecord {
        RequestRecord {
            request_id: uuid::Uuid::nil(),
            at_unix_ms: 0,
            core: i,
            route: RouteLabel::ChatCompletions,
            status: 200,
            error_type: None,
            outcome: Outcome::Completed,
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            virtual_key: None,
            user: None,
            team: None,
            customer: None,
            provider: None,
            model: None,
            stream: false,
            attempts: 1,
            usage: None,
            cost_micros: None,
            latency_us: 0,
            ttfb_us: None,
        }
    }

    #[test]
    fn a_full_ring_spills_and_loses_nothing() {
        let (mut tx, mut rx) = rings(1, 2);
        let m = CoreMetrics::default();
        for i in 0..5 {
            tx[0].push(record(i), &m);
        }
        assert_eq!(m.audit_spilled.load(Relaxed), 3);
        let mut out = Vec::new();
        assert_eq!(rx[0].drain_into(&mut out), 5);
        let mut seen: Vec<u16> = out.iter().map(|r| r.core).collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }
}
