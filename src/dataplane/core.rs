//! One data-plane core's private state: its view of the snapshot, its upstream pool, its audit
//! ring. `!Send` on purpose: nothing here is shared with another core.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use super::upstream::Pool;
use crate::audit::{CoreAuditTx, RequestRecord};
use crate::metrics::CoreMetrics;
use crate::snapshot::Snapshot;
use crate::state::Shared;

/// A snapshot held by a request. Cloning it is a core-local pointer copy, never an atomic
/// increment on the shared `Arc` (which every core would fight over).
#[derive(Clone)]
#[allow(clippy::redundant_allocation)] // the Rc is the point: a core-local count over the shared Arc
pub struct SnapRef(Rc<Arc<Snapshot>>);

impl std::ops::Deref for SnapRef {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

pub struct CoreCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    snap: RefCell<SnapCache>,
    pub pool: Pool,
    audit: RefCell<CoreAuditTx>,
    tokens: RefCell<crate::auth::TokenCache>,
}

struct SnapCache {
    cache: Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
    current: SnapRef,
}

impl CoreCtx {
    pub fn new(id: usize, shared: Arc<Shared>, audit: CoreAuditTx, pool: Pool) -> Self {
        let mut cache = Cache::new(shared.snapshot.clone());
        let current = SnapRef(Rc::new(cache.load().clone()));
        Self {
            id,
            shared,
            snap: RefCell::new(SnapCache { cache, current }),
            pool,
            audit: RefCell::new(audit),
            tokens: RefCell::new(crate::auth::TokenCache::default()),
        }
    }

    /// The newest published snapshot. One atomic load when nothing changed.
    pub fn snapshot(&self) -> SnapRef {
        let mut s = self.snap.borrow_mut();
        let s = &mut *s;
        let latest = s.cache.load();
        if !Arc::ptr_eq(latest, &s.current.0) {
            s.current = SnapRef(Rc::new(latest.clone()));
        }
        s.current.clone()
    }

    /// authenticate, with this core's verified-token cache. A token signed by a key the snapshot
    /// does not hold yet asks the control plane (without waiting) to fetch the issuer's keys again.
    pub fn authenticate<'s>(
        &self,
        snap: &'s Snapshot,
        headers: &http::HeaderMap,
    ) -> Result<crate::auth::Principal<'s>, crate::error::GatewayError> {
        let mut tokens = self.tokens.borrow_mut();
        let now = crate::governance::clock::now().max(0) as u64;
        let result = crate::auth::authenticate(snap, headers, &mut tokens, now);
        if let Some(provider) = tokens.refresh_wanted.take() {
            let _ = self.shared.jwks_refresh.send(provider);
        }
        for p in tokens.provision_wanted.drain(..) {
            let _ = self.shared.provision.send(p);
        }
        result
    }

    pub fn metrics(&self) -> &CoreMetrics {
        &self.shared.metrics.cores[self.id]
    }

    pub fn record(&self, record: RequestRecord) {
        self.audit.borrow_mut().push(record, self.metrics());
    }
}
