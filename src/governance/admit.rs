//! Admission: before a request is forwarded, every level of its chain must have room in each rate
//! limit and budget; the worst-case cost is reserved at every level, then settled to the real cost.

use std::ops::Deref;

use smallvec::SmallVec;

use crate::auth::ChainRef;
use crate::config::Window;
use crate::error::GatewayError;
use crate::governance::counters::slot;
use crate::snapshot::{Entity, Snapshot};

/// A request's hold on its chain's budgets. Settle it with the real cost, or release it when
/// the request cost nothing; dropped untouched, the reservation stays spent (usage unknown).
pub struct Admission<S: Deref<Target = Snapshot>> {
    snap: S,
    key: ChainRef,
    reserved: u64,
    now: i64,
    done: bool,
}

/// The tightest limits after admission, for the `x-ratelimit-*` headers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// (limit, remaining, seconds until reset) of the request limit with the least room left.
    pub requests: Option<(u64, u64, u64)>,
    pub tokens: Option<(u64, u64, u64)>,
    /// Micro-dollars left in the budget with the least room left.
    pub budget_remaining: Option<u64>,
}

fn chain(snap: &Snapshot, key: ChainRef) -> impl Iterator<Item = &Entity> {
    snap.chain(key).iter().map(move |&e| &snap.entities[e])
}

/// Checks and counts the request at every level of the chain `key`, and reserves `reserve`
/// micro-dollars in every budget. On refusal nothing stays counted or reserved.
pub fn admit<S: Deref<Target = Snapshot>>(
    snap: S,
    key: ChainRef,
    reserve: u64,
    now: i64,
) -> Result<Admission<S>, GatewayError> {
    // What to undo if a later level refuses; inline, since every request builds them.
    let mut counted: SmallVec<[(usize, Window); 8]> = SmallVec::new();
    let mut reserved: SmallVec<[(usize, Window); 8]> = SmallVec::new();
    let result = (|| {
        for &e in snap.chain(key) {
            let entity = &snap.entities[e];
            for r in &entity.rates {
                if let Some(limit) = r.requests {
                    match entity.counters.requests[slot(r.window)].try_add(1, limit, now, r.window) {
                        Ok(_) => counted.push((e, r.window)),
                        Err(retry_after_secs) => {
                            return Err(GatewayError::RequestLimited {
                                message: format!(
                                    "{} '{}' allows {limit} requests per {}",
                                    entity.level.as_str(),
                                    entity.id,
                                    r.window.as_str()
                                ),
                                retry_after_secs,
                            });
                        }
                    }
                }
                if let Some(limit) = r.tokens {
                    let (used, reset) = entity.counters.tokens[slot(r.window)].current(now, r.window);
                    if used >= limit {
                        return Err(GatewayError::TokenLimited {
                            message: format!(
                                "{} '{}' allows {limit} tokens per {}",
                                entity.level.as_str(),
                                entity.id,
                                r.window.as_str()
                            ),
                            retry_after_secs: reset.max(1),
                        });
                    }
                }
            }
            for b in &entity.budgets {
                match entity.counters.budgets[slot(b.window)].try_reserve(
                    b.max_micros,
                    reserve,
                    now,
                    b.window,
                    b.calendar,
                ) {
                    Ok(()) => reserved.push((e, b.window)),
                    Err(_) => {
                        return Err(GatewayError::BudgetExceeded {
                            level: entity.level.as_str(),
                            id: entity.id.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (e, w) in counted {
            snap.entities[e].counters.requests[slot(w)].undo(1, now, w);
        }
        for (e, w) in reserved {
            snap.entities[e].counters.budgets[slot(w)].release(reserve);
        }
        return Err(e);
    }
    Ok(Admission { snap, key, reserved: reserve, now, done: false })
}

impl<S: Deref<Target = Snapshot>> Admission<S> {
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Charges the real cost (and tokens) at every level, in place of the reservation.
    pub fn settle(mut self, actual: u64, tokens: u64) {
        self.finish(actual, tokens);
    }

    /// `settle`, then the room left afterwards (for the response headers).
    pub fn settle_and_headroom(mut self, actual: u64, tokens: u64) -> Headroom {
        self.finish(actual, tokens);
        self.headroom()
    }

    /// The request cost nothing (refused or failed before the provider did any work).
    pub fn release(mut self) {
        self.done = true;
        for entity in chain(&self.snap, self.key) {
            for b in &entity.budgets {
                entity.counters.budgets[slot(b.window)].release(self.reserved);
            }
        }
    }

    fn finish(&mut self, actual: u64, tokens: u64) {
        self.done = true;
        let now = super::clock::now();
        for entity in chain(&self.snap, self.key) {
            for b in &entity.budgets {
                entity.counters.budgets[slot(b.window)].settle(self.reserved, actual);
            }
            if tokens > 0 {
                for r in entity.rates.iter().filter(|r| r.tokens.is_some()) {
                    entity.counters.tokens[slot(r.window)].add(tokens, now, r.window);
                }
            }
        }
    }

    /// Room left at the tightest limit of each kind, as of admission.
    pub fn headroom(&self) -> Headroom {
        let mut h = Headroom::default();
        let tighter = |cur: Option<(u64, u64, u64)>, cand: (u64, u64, u64)| match cur {
            Some(c) if c.1 <= cand.1 => Some(c),
            _ => Some(cand),
        };
        for entity in chain(&self.snap, self.key) {
            for r in &entity.rates {
                if let Some(limit) = r.requests {
                    let (used, reset) = entity.counters.requests[slot(r.window)].current(self.now, r.window);
                    h.requests = tighter(h.requests, (limit, limit.saturating_sub(used), reset));
                }
                if let Some(limit) = r.tokens {
                    let (used, reset) = entity.counters.tokens[slot(r.window)].current(self.now, r.window);
                    h.tokens = tighter(h.tokens, (limit, limit.saturating_sub(used), reset));
                }
            }
            for b in &entity.budgets {
                let left = entity.counters.budgets[slot(b.window)].remaining(b.max_micros);
                h.budget_remaining = Some(h.budget_remaining.map_or(left, |c: u64| c.min(left)));
            }
        }
        h
    }
}

impl<S: Deref<Target = Snapshot>> Drop for Admission<S> {
    /// Nobody said what the request cost (the client left, or usage never came): keep the
    /// worst case as spent rather than let an unknown cost go uncounted.
    fn drop(&mut self) {
        if !self.done {
            let reserved = self.reserved;
            self.finish(reserved, 0);
        }
    }
}
