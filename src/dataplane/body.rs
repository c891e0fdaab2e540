//! Response bodies the gateway sends: whole ones, and streams relayed chunk by chunk from a
//! provider (translated when needed). A stream accounts and audits its request when it ends.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::core::CoreCtx;
use super::log::RequestLog;
use super::pipeline::Account;
use super::upstream::{self, UpstreamError};
use crate::audit::Outcome;
use crate::metrics::UpstreamErrorKind;
use crate::providers::anthropic::StreamTranslator;
use crate::providers::openai::StreamFilter;

pub enum GatewayBody {
    Full(Option<Bytes>),
    Stream(Box<StreamBody>),
    /// Chunks the control plane produces as it goes (exports).
    Channel(tokio::sync::mpsc::Receiver<Bytes>),
}

impl GatewayBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        GatewayBody::Full(Some(b.into()))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            GatewayBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Stream(s) => Pin::new(&mut **s).poll_frame(cx),
            GatewayBody::Channel(rx) => rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, GatewayBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GatewayBody::Full(None) => SizeHint::with_exact(0),
            GatewayBody::Stream(_) | GatewayBody::Channel(_) => SizeHint::default(),
        }
    }
}

/// How upstream events become client events.
pub enum StreamMode {
    OpenAi(StreamFilter),
    Anthropic(Box<StreamTranslator>),
}

impl StreamMode {
    fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) {
        match self {
            StreamMode::OpenAi(f) => f.feed(bytes, out),
            StreamMode::Anthropic(t) => t.feed(bytes, out),
        }
    }
    fn finish(&mut self, out: &mut BytesMut) {
        match self {
            StreamMode::OpenAi(f) => f.finish(out),
            StreamMode::Anthropic(t) => t.finish(out),
        }
    }
    fn usage(&self) -> Option<crate::providers::Usage> {
        match self {
            StreamMode::OpenAi(f) => f.usage(),
            StreamMode::Anthropic(t) => t.usage(),
        }
    }
}

/// A read of the provider's body in flight; it owns the body and gives it back with the result.
type Reading = Pin<Box<dyn Future<Output = (upstream::Body, Result<Option<Bytes>, UpstreamError>)>>>;

/// The provider's side of a stream.
enum Upstream {
    Idle(upstream::Body),
    Reading(Reading),
    Gone,
}

impl Upstream {
    /// The next piece of the provider's body. Data already read is taken without a new read.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, UpstreamError>> {
        loop {
            match std::mem::replace(self, Upstream::Gone) {
                Upstream::Idle(mut body) => match body.buffered() {
                    Ok(None) if !body.is_done() => {
                        *self = Upstream::Reading(Box::pin(async move {
                            let next = body.chunk().await;
                            (body, next)
                        }));
                    }
                    next => {
                        *self = Upstream::Idle(body);
                        return Poll::Ready(next);
                    }
                },
                Upstream::Reading(mut read) => match read.as_mut().poll(cx) {
                    Poll::Ready((body, next)) => {
                        *self = Upstream::Idle(body);
                        return Poll::Ready(next);
                    }
                    Poll::Pending => {
                        *self = Upstream::Reading(read);
                        return Poll::Pending;
                    }
                },
                Upstream::Gone => return Poll::Ready(Ok(None)),
            }
        }
    }
}

/// A streamed response in flight. Dropping it before the end (the client left) drops the
/// provider's response too, which closes that upstream connection instead of reading on.
pub struct StreamBody {
    core: Rc<CoreCtx>,
    upstream: Upstream,
    mode: StreamMode,
    out: BytesMut,
    idle_timeout: Duration,
    idle: Pin<Box<monoio::time::Sleep>>,
    log: RequestLog,
    account: Option<Account>,
    ended: bool,
}

impl StreamBody {
    pub fn new(
        core: Rc<CoreCtx>,
        upstream: upstream::Body,
        mode: StreamMode,
        idle_timeout: Duration,
        log: RequestLog,
        account: Option<Account>,
    ) -> Self {
        core.metrics().stream_opened();
        Self {
            core,
            upstream: Upstream::Idle(upstream),
            mode,
            out: BytesMut::with_capacity(4096),
            idle_timeout,
            idle: Box::pin(monoio::time::sleep(idle_timeout)),
            log,
            account,
            ended: false,
        }
    }

    fn end(&mut self, outcome: Outcome, status: u16) {
        self.ended = true;
        self.log.usage = self.mode.usage();
        if let Some(account) = self.account.take() {
            self.log.cost_micros = Some(account.close(self.log.usage).1);
        }
        // A broken stream's connection is closed here, never reused.
        if let Upstream::Idle(body) = std::mem::replace(&mut self.upstream, Upstream::Gone)
            && outcome == Outcome::Completed
        {
            self.core.pool.give_back(body);
        }
        self.log.finish(status, outcome);
    }

    /// The provider failed mid-stream: tell the client in-band (headers are long gone).
    fn fail(&mut self, kind: UpstreamErrorKind, error_type: &'static str, message: &str) {
        self.core.metrics().upstream_error(kind);
        let body = serde_json::json!({ "error": { "type": error_type, "message": message } });
        self.out.extend_from_slice(b"data: ");
        self.out.extend_from_slice(body.to_string().as_bytes());
        self.out.extend_from_slice(b"\n\n");
        self.log.error_type = Some(error_type);
        self.end(Outcome::UpstreamBroken, 200);
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(this.out.split().freeze()))));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match this.upstream.poll_next(cx) {
                Poll::Ready(Ok(Some(data))) => {
                    if this.log.ttfb.is_none() {
                        this.log.ttfb = Some(this.log.elapsed());
                    }
                    this.mode.feed(&data, &mut this.out);
                    let deadline = monoio::time::Instant::now() + this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                }
                Poll::Ready(Err(e)) => {
                    let msg = format!("the provider's stream broke: {e}");
                    this.fail(UpstreamErrorKind::StreamBroken, "upstream_error", &msg);
                }
                Poll::Ready(Ok(None)) => {
                    this.mode.finish(&mut this.out);
                    this.end(Outcome::Completed, 200);
                }
                Poll::Pending => {
                    if this.idle.as_mut().poll(cx).is_ready() {
                        let msg = format!("the provider sent nothing for {:?}", this.idle_timeout);
                        this.fail(UpstreamErrorKind::Timeout, "upstream_timeout", &msg);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.out.is_empty()
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        self.core.metrics().stream_closed();
        if !self.ended {
            // The client went away first; the RequestLog's own drop records it as such, and what
            // the provider reported so far (if anything) is what the request is charged.
            self.log.usage = self.mode.usage();
            if let Some(account) = self.account.take() {
                self.log.cost_micros = Some(account.close(self.log.usage).1);
            }
        }
    }
}
