//! The governance clock: UTC wall time in seconds, plus an offset that tests may move forward so
//! window resets can be proven without sleeping. Nothing else in the process reads the offset.

use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

static OFFSET_SECS: AtomicI64 = AtomicI64::new(0);

/// Seconds since the Unix epoch, as governance sees them.
pub fn now() -> i64 {
    let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    wall + OFFSET_SECS.load(Relaxed)
}

/// Moves governance time forward (or back) by `secs`. Only reachable through the test-clock
/// endpoint, which exists only when the process starts with `HEIMDALL_TEST_CLOCK=1`.
pub fn advance(secs: i64) -> i64 {
    OFFSET_SECS.fetch_add(secs, Relaxed) + secs
}
