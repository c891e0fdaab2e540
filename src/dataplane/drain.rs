//! A core's drain signal: when shutdown begins, every client connection it serves is told to
//! finish the request in flight and close. Owns the connections' wakers; of HTTP it knows only
//! that a hyper connection can be asked to close gracefully.
//!
//! hyper-util's `GracefulShutdown` does the same through a tokio watch channel that each
//! connection polls every time it is polled, several times a request. Here a poll costs a `Cell`
//! read: the connection's waker is registered once and woken when draining starts.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use rustc_hash::FxHashMap;

/// A connection that can be asked to close after the request in flight.
pub trait Graceful: Future {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self)
    }
}

#[derive(Default)]
struct Inner {
    draining: Cell<bool>,
    next_id: Cell<u64>,
    /// Connections watched and not yet ended.
    live: Cell<usize>,
    /// Wakers of the open connections that were polled, by id.
    open: RefCell<FxHashMap<u64, Waker>>,
    /// The task waiting for the last connection to close.
    closed: RefCell<Option<Waker>>,
}

/// One core's drain signal (`!Send`: each core has its own).
#[derive(Default, Clone)]
pub struct Drain(Rc<Inner>);

impl Drain {
    /// Wraps a connection so that draining reaches it.
    pub fn watch<C: Graceful>(&self, conn: C) -> Watched<C> {
        let id = self.0.next_id.get();
        self.0.next_id.set(id + 1);
        self.0.live.set(self.0.live.get() + 1);
        Watched { conn: Box::pin(conn), drain: self.0.clone(), id, waker: None, told: false }
    }

    /// Starts draining, and resolves once every watched connection has closed.
    pub async fn shutdown(&self) {
        self.0.draining.set(true);
        let wakers: Vec<Waker> = self.0.open.borrow_mut().drain().map(|(_, w)| w).collect();
        wakers.into_iter().for_each(Waker::wake);
        std::future::poll_fn(|cx| {
            if self.0.live.get() == 0 {
                return Poll::Ready(());
            }
            *self.0.closed.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// A connection under a core's drain signal.
pub struct Watched<C> {
    conn: Pin<Box<C>>,
    drain: Rc<Inner>,
    id: u64,
    /// The waker last registered, to notice a change without touching the shared map.
    waker: Option<Waker>,
    told: bool,
}

impl<C: Graceful> Future for Watched<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        if this.drain.draining.get() {
            if !this.told {
                this.told = true;
                this.conn.as_mut().graceful_shutdown();
            }
        } else if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.drain.open.borrow_mut().insert(this.id, cx.waker().clone());
            this.waker = Some(cx.waker().clone());
        }
        this.conn.as_mut().poll(cx)
    }
}

impl<C> Drop for Watched<C> {
    fn drop(&mut self) {
        self.drain.open.borrow_mut().remove(&self.id);
        self.drain.live.set(self.drain.live.get() - 1);
        if self.drain.draining.get()
            && self.drain.live.get() == 0
            && let Some(w) = self.drain.closed.borrow_mut().take()
        {
            w.wake();
        }
    }
}
