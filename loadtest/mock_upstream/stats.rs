//! Counters, kept per worker (no cross-core cache-line traffic on the hot
//! path) and summed when `/_mock/stats` is read.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One worker's counters, padded to its own cache lines.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerStats {
    pub connections_accepted: AtomicU64,
    pub requests: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    pub streams_cancelled: AtomicU64,
    /// Only this worker's thread writes it, so the lock is uncontended
    /// except while stats are read.
    by_key: Mutex<HashMap<String, u64>>,
}

impl WorkerStats {
    pub fn count_key(&self, key: &str) {
        if let Ok(mut map) = self.by_key.lock() {
            if let Some(n) = map.get_mut(key) {
                *n += 1;
            } else {
                map.insert(key.to_owned(), 1);
            }
        }
    }

    fn reset(&self) {
        self.connections_accepted.store(0, Relaxed);
        self.requests.store(0, Relaxed);
        self.streams_started.store(0, Relaxed);
        self.streams_completed.store(0, Relaxed);
        self.streams_cancelled.store(0, Relaxed);
        if let Ok(mut map) = self.by_key.lock() {
            map.clear();
        }
    }
}

#[derive(Serialize, Default, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub connections_accepted: u64,
    pub requests: u64,
    pub streams_started: u64,
    pub streams_completed: u64,
    pub streams_cancelled: u64,
    pub requests_by_key: BTreeMap<String, u64>,
}

pub fn snapshot(workers: &[Arc<WorkerStats>]) -> Snapshot {
    let mut s = Snapshot::default();
    for w in workers {
        s.connections_accepted += w.connections_accepted.load(Relaxed);
        s.requests += w.requests.load(Relaxed);
        s.streams_started += w.streams_started.load(Relaxed);
        s.streams_completed += w.streams_completed.load(Relaxed);
        s.streams_cancelled += w.streams_cancelled.load(Relaxed);
        if let Ok(map) = w.by_key.lock() {
            for (k, n) in map.iter() {
                *s.requests_by_key.entry(k.clone()).or_default() += n;
            }
        }
    }
    s
}

pub fn reset(workers: &[Arc<WorkerStats>]) {
    for w in workers {
        w.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_over_workers_and_resets() {
        let ws: Vec<Arc<WorkerStats>> = (0..2).map(|_| Arc::default()).collect();
        ws[0].requests.fetch_add(2, Relaxed);
        ws[1].requests.fetch_add(3, Relaxed);
        ws[0].count_key("a");
        ws[1].count_key("a");
        ws[1].count_key("b");
        let s = snapshot(&ws);
        assert_eq!(s.requests, 5);
        assert_eq!(s.requests_by_key.get("a"), Some(&2));
        assert_eq!(s.requests_by_key.get("b"), Some(&1));
        reset(&ws);
        assert_eq!(snapshot(&ws), Snapshot::default());
    }
}
