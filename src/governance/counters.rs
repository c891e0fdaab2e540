//! Budget and rate counters per entity: plain atomics that live outside every snapshot, so a
//! reload never resets them. The registry (control plane only) hands the same counters to each build.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed};

use rustc_hash::FxHashMap;

use super::Level;
use super::window;
use crate::config::Window;

/// One slot per window kind: an entity has at most one budget and one limit of each kind per window.
const SLOTS: usize = 9;

pub fn slot(w: Window) -> usize {
    w as usize
}

/// Counters of one customer, team, user or key.
#[derive(Default)]
pub struct EntityCounters {
    pub budgets: [BudgetCounter; SLOTS],
    pub requests: [RateCell; SLOTS],
    pub tokens: [RateCell; SLOTS],
}

/// Money in micro-dollars within the current window of one budget.
#[derive(Default)]
pub struct BudgetCounter {
    start: AtomicI64,
    /// End of the current window (Unix seconds); 0 until first use.
    end: AtomicI64,
    /// 1 rolling, 2 calendar: a budget whose mode changes on reload starts a new window.
    mode: AtomicU8,
    /// Settled spend in the current window.
    spent: AtomicU64,
    /// `spent` plus outstanding reservations: what admission compares with the limit.
    used: AtomicU64,
}

impl BudgetCounter {
    fn roll(&self, now: i64, w: Window, calendar: bool) {
        let mode = if calendar { 2 } else { 1 };
        let end = self.end.load(Acquire);
        if now < end && self.mode.load(Relaxed) == mode {
            return;
        }
        let (start, new_end) = if calendar { window::calendar(w, now) } else { (now, now + window::length(w)) };
        // One caller wins the reset; reservations still in flight stay counted in `used`.
        if self.end.compare_exchange(end, new_end, AcqRel, Acquire).is_ok() {
            self.start.store(start, Relaxed);
            self.mode.store(mode, Relaxed);
            let old = self.spent.swap(0, AcqRel);
            let _ = self.used.fetch_update(AcqRel, Acquire, |u| Some(u.saturating_sub(old)));
        }
    }

    /// Reserves `amount` if the budget can still pay for it; else returns what is left.
    pub fn try_reserve(&self, max: u64, amount: u64, now: i64, w: Window, calendar: bool) -> Result<(), u64> {
        self.roll(now, w, calendar);
        self.used
            .fetch_update(AcqRel, Acquire, |u| u.checked_add(amount).filter(|&n| n <= max))
            .map(|_| ())
            .map_err(|u| max.saturating_sub(u))
    }

    /// Replaces a reservation by the real cost. Spend is added before the reservation is released,
    /// so a concurrent admission never sees room that is not there.
    pub fn settle(&self, reserved: u64, actual: u64) {
        self.spent.fetch_add(actual, AcqRel);
        if actual >= reserved {
            self.used.fetch_add(actual - reserved, AcqRel);
        } else {
            let _ = self.used.fetch_update(AcqRel, Acquire, |u| Some(u.saturating_sub(reserved - actual)));
        }
    }

    /// Gives a reservation back (the request failed before it cost anything).
    pub fn release(&self, reserved: u64) {
        let _ = self.used.fetch_update(AcqRel, Acquire, |u| Some(u.saturating_sub(reserved)));
    }

    pub fn remaining(&self, max: u64) -> u64 {
        max.saturating_sub(self.used.load(Acquire))
    }

    /// (window start, window end, settled spend) for reports and checkpoints.
    pub fn state(&self) -> (i64, i64, u64) {
        (self.start.load(Relaxed), self.end.load(Relaxed), self.spent.load(Relaxed))
    }

    /// (start, end, settled spend, calendar-aligned) for checkpoints.
    pub fn state_full(&self) -> (i64, i64, u64, bool) {
        (self.start.load(Relaxed), self.end.load(Relaxed), self.spent.load(Relaxed), self.mode.load(Relaxed) == 2)
    }

    /// Restores a checkpoint (control plane, before the first request).
    pub fn restore(&self, start: i64, end: i64, calendar: bool, spent: u64) {
        self.start.store(start, Relaxed);
        self.end.store(end, Relaxed);
        self.mode.store(if calendar { 2 } else { 1 }, Relaxed);
        self.spent.store(spent, Relaxed);
        self.used.store(spent, Relaxed);
    }
}

/// A count within a fixed (clock-aligned) window, packed with a tag of that window into one
/// atomic so that a window change and an increment can never interleave: limits are exact.
#[derive(Default)]
pub struct RateCell(AtomicU64);

const COUNT_BITS: u32 = 44;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn tag(now: i64, w: Window) -> (u64, i64) {
    let (start, end) = window::calendar(w, now);
    // Consecutive windows differ in their low 20 bits of start/length: enough to tell old from new.
    (((start / window::length(w)) as u64) & ((1 << (64 - COUNT_BITS)) - 1), end)
}

impl RateCell {
    /// Adds `n` if the total stays within `limit`; else the seconds until the window resets.
    pub fn try_add(&self, n: u64, limit: u64, now: i64, w: Window) -> Result<u64, u64> {
        let (t, end) = tag(now, w);
        let mut cur = self.0.load(Acquire);
        loop {
            let count = if cur >> COUNT_BITS == t { cur & COUNT_MASK } else { 0 };
            let next = count + n;
            if next > limit {
                return Err((end - now).max(1) as u64);
            }
            match self.0.compare_exchange_weak(cur, (t << COUNT_BITS) | next.min(COUNT_MASK), AcqRel, Acquire) {
                Ok(_) => return Ok(next),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Adds `n` whatever the limit (tokens are known only after the response).
    pub fn add(&self, n: u64, now: i64, w: Window) {
        let (t, _) = tag(now, w);
        let _ = self.0.fetch_update(AcqRel, Acquire, |cur| {
            let count = if cur >> COUNT_BITS == t { cur & COUNT_MASK } else { 0 };
            Some((t << COUNT_BITS) | (count + n).min(COUNT_MASK))
        });
    }

    /// Takes back `n` added in the current window (an admission that failed at another level).
    pub fn undo(&self, n: u64, now: i64, w: Window) {
        let (t, _) = tag(now, w);
        let _ = self.0.fetch_update(AcqRel, Acquire, |cur| {
            (cur >> COUNT_BITS == t).then(|| (t << COUNT_BITS) | (cur & COUNT_MASK).saturating_sub(n))
        });
    }

    /// The packed window tag and count, for checkpoints.
    pub fn raw(&self) -> u64 {
        self.0.load(Acquire)
    }

    /// Restores a checkpointed `raw` value (a count of a window that has passed reads as 0).
    pub fn restore(&self, raw: u64) {
        self.0.store(raw, Relaxed);
    }

    /// (count in the current window, seconds until it resets).
    pub fn current(&self, now: i64, w: Window) -> (u64, u64) {
        let (t, end) = tag(now, w);
        let cur = self.0.load(Acquire);
        let count = if cur >> COUNT_BITS == t { cur & COUNT_MASK } else { 0 };
        (count, (end - now).max(0) as u64)
    }
}

/// Every entity's counters, by level and id. Touched only when a snapshot is built.
#[derive(Default)]
pub struct CounterRegistry {
    map: std::sync::Mutex<FxHashMap<(Level, String), Arc<EntityCounters>>>,
}

impl CounterRegistry {
    /// Every entity's counters (for checkpoints).
    pub fn entries(&self) -> Vec<((Level, String), Arc<EntityCounters>)> {
        let map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The counters of an entity, created on first sight and the same ever after.
    pub fn get(&self, level: Level, id: &str) -> Arc<EntityCounters> {
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry((level, id.to_string())).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_never_admits_more_than_its_limit_under_contention() {
        let b = Arc::new(BudgetCounter::default());
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if b.try_reserve(50_000, 1000, 1_000, Window::Day, false).is_ok() {
                            admitted.fetch_add(1, Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Relaxed), 50);
    }

    #[test]
    fn settling_below_the_reservation_frees_room() {
        let b = BudgetCounter::default();
        b.try_reserve(100, 60, 0, Window::Day, false).unwrap();
        assert!(b.try_reserve(100, 60, 0, Window::Day, false).is_err());
        b.settle(60, 10);
        b.try_reserve(100, 60, 0, Window::Day, false).unwrap();
        assert_eq!(b.state().2, 10);
        assert_eq!(b.remaining(100), 30);
    }

    #[test]
    fn a_new_window_forgets_spend_but_keeps_reservations_in_flight() {
        let b = BudgetCounter::default();
        b.try_reserve(100, 40, 0, Window::Minute, false).unwrap();
        b.settle(40, 40);
        b.try_reserve(100, 30, 10, Window::Minute, false).unwrap();
        // 70 used; the next window starts at 60 and keeps only the 30 still reserved.
        assert_eq!(b.remaining(100), 30);
        b.try_reserve(100, 70, 61, Window::Minute, false).unwrap();
        assert_eq!(b.remaining(100), 0);
    }

    #[test]
    fn changing_between_rolling_and_calendar_starts_a_new_window() {
        let b = BudgetCounter::default();
        b.try_reserve(100, 100, 1000, Window::Day, false).unwrap();
        b.settle(100, 100);
        assert!(b.try_reserve(100, 1, 1001, Window::Day, false).is_err());
        b.try_reserve(100, 1, 1002, Window::Day, true).unwrap();
    }

    #[test]
    fn request_counts_are_exact_and_reset_with_the_window() {
        let r = RateCell::default();
        let now = 1_000_040; // 20 s into a minute (1_000_020 is a minute boundary)
        for _ in 0..3 {
            r.try_add(1, 3, now, Window::Minute).unwrap();
        }
        assert_eq!(r.try_add(1, 3, now, Window::Minute), Err(40));
        assert_eq!(r.current(now, Window::Minute), (3, 40));
        assert_eq!(r.try_add(1, 3, now + 40, Window::Minute), Ok(1));
    }

    #[test]
    fn undo_only_touches_the_current_window() {
        let r = RateCell::default();
        r.try_add(2, 10, 0, Window::Minute).unwrap();
        r.undo(1, 0, Window::Minute);
        assert_eq!(r.current(0, Window::Minute).0, 1);
        r.undo(1, 60, Window::Minute);
        assert_eq!(r.current(0, Window::Minute).0, 1);
    }

    #[test]
    fn the_registry_returns_the_same_counters_for_the_same_entity() {
        let reg = CounterRegistry::default();
        let a = reg.get(Level::Team, "t");
        assert!(Arc::ptr_eq(&a, &reg.get(Level::Team, "t")));
        assert!(!Arc::ptr_eq(&a, &reg.get(Level::User, "t")));
    }
}
