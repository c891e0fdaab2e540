//! Response bodies: a whole buffer, or an incremental SSE stream whose events
//! are handed to hyper one frame at a time, with an optional pause before
//! some of them. Dropping an SSE body before its last event went out counts
//! as a cancelled stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::stats::WorkerStats;

/// One SSE event, already encoded (`data: …\n\n` or `event: …\ndata: …\n\n`).
pub struct SseEvent {
    /// Wait the stream's delay before sending this event.
    pub delayed: bool,
    pub bytes: Bytes,
}

impl SseEvent {
    pub fn now(bytes: impl Into<Bytes>) -> Self {
        Self { delayed: false, bytes: bytes.into() }
    }

    pub fn after_delay(bytes: impl Into<Bytes>) -> Self {
        Self { delayed: true, bytes: bytes.into() }
    }
}

pub struct SseBody {
    events: std::vec::IntoIter<SseEvent>,
    delay: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    pending: Option<Bytes>,
    completed: bool,
    stats: Arc<WorkerStats>,
}

impl SseBody {
    pub fn new(events: Vec<SseEvent>, delay: Duration, stats: Arc<WorkerStats>) -> Self {
        stats.streams_started.fetch_add(1, Relaxed);
        Self { events: events.into_iter(), delay, sleep: None, pending: None, completed: false, stats }
    }

    /// Hands out `bytes`; marks the stream completed when it was the last event.
    fn emit(&mut self, bytes: Bytes) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.events.as_slice().is_empty() && !self.completed {
            self.completed = true;
            self.stats.streams_completed.fetch_add(1, Relaxed);
        }
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if !self.completed {
            self.stats.streams_cancelled.fetch_add(1, Relaxed);
        }
    }
}

pub enum MockBody {
    Full(Option<Bytes>),
    Sse(Box<SseBody>),
}

impl MockBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() { Self::Full(None) } else { Self::Full(Some(bytes)) }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Sse(s) => {
                if let Some(sleep) = s.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    s.sleep = None;
                    if let Some(bytes) = s.pending.take() {
                        return s.emit(bytes);
                    }
                }
                match s.events.next() {
                    None => Poll::Ready(None),
                    Some(ev) if ev.delayed && !s.delay.is_zero() => {
                        let mut sleep = Box::pin(tokio::time::sleep(s.delay));
                        if sleep.as_mut().poll(cx).is_ready() {
                            return s.emit(ev.bytes);
                        }
                        s.sleep = Some(sleep);
                        s.pending = Some(ev.bytes);
                        Poll::Pending
                    }
                    Some(ev) => s.emit(ev.bytes),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Sse(s) => s.pending.is_none() && s.events.as_slice().is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            MockBody::Sse(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn events() -> Vec<SseEvent> {
        vec![SseEvent::now("a"), SseEvent::after_delay("b"), SseEvent::after_delay("c")]
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stream_completes_and_counts() {
        let stats = Arc::new(WorkerStats::default());
        let body = MockBody::Sse(Box::new(SseBody::new(events(), Duration::from_millis(5), stats.clone())));
        let started = std::time::Instant::now();
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abc");
        assert!(started.elapsed() >= Duration::from_millis(10));
        assert_eq!(stats.streams_started.load(Relaxed), 1);
        assert_eq!(stats.streams_completed.load(Relaxed), 1);
        assert_eq!(stats.streams_cancelled.load(Relaxed), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_early_counts_cancelled() {
        let stats = Arc::new(WorkerStats::default());
        let mut body = MockBody::Sse(Box::new(SseBody::new(events(), Duration::from_millis(1), stats.clone())));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"a");
        drop(body);
        assert_eq!(stats.streams_completed.load(Relaxed), 0);
        assert_eq!(stats.streams_cancelled.load(Relaxed), 1);
    }
}
