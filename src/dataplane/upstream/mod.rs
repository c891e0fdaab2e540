//! This core's keep-alive connections to providers and the HTTP/1.1 exchange on them: checkout,
//! connect (plain or rustls), write a request, read its response, return. Knows origins and
//! sockets; knows nothing of models, keys or policy.
//!
//! The request's own task drives its connection: it writes the request and reads the response
//! itself, with no connection task or channel in between. Plain connections use monoio's native
//! (completion) IO; TLS ones go through rustls on monoio's poll-io.

pub mod wire;

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, IntoPollIo};
use monoio::net::TcpStream;
use monoio::net::tcp::stream_poll::TcpStreamPoll;
use monoio::time::Instant;
use rustc_hash::FxHashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use self::wire::{Decoder, WireError};
use crate::snapshot::Origin;

/// A connection idle this long is closed instead of reused: providers' own keep-alive timeouts
/// are often shorter, and a request sent on a connection they are closing must be sent again.
const IDLE_MAX: Duration = Duration::from_secs(30);
/// Free room made in the read buffer before each read.
const READ_ROOM: usize = 8 * 1024;
/// Largest read buffer an idle connection keeps.
const KEEP_BUF_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {0}")]
    Unresolved(String),
    #[error("cannot connect to {origin}: {source}")]
    Connect { origin: String, source: io::Error },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {origin} failed: {source}")]
    Tls { origin: String, source: io::Error },
    #[error("connection to {origin} failed: {source}")]
    Io { origin: Arc<str>, source: io::Error },
    #[error("{origin} broke HTTP/1.1: {source}")]
    Protocol { origin: Arc<str>, source: WireError },
}

/// One connection to a provider.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStreamPoll>>),
}

impl Conn {
    async fn write_all(&mut self, bytes: Bytes) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(bytes).await.0.map(drop),
            Conn::Tls(s) => {
                s.write_all(&bytes).await?;
                s.flush().await
            }
        }
    }

    /// Reads what the provider sent next onto the end of `buf`; 0 means it closed the connection.
    async fn read_more(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(READ_ROOM);
        match self {
            Conn::Plain(s) => {
                let start = buf.len();
                let (read, back) = s.read(std::mem::take(buf).slice_mut(start..)).await;
                *buf = back.into_inner();
                read
            }
            Conn::Tls(s) => s.read_buf(buf).await,
        }
    }
}

struct Idle {
    conn: Conn,
    /// The connection's read buffer, kept with it: once the last response's body has been sent
    /// on, its room is reused in place instead of allocated again for every response.
    buf: BytesMut,
    since: Instant,
}

/// Idle connections of one core, by origin.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<FxHashMap<Arc<str>, Vec<Idle>>>,
}

/// A provider's response: its head, and its body still on the connection it came on.
pub struct Response {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub body: Body,
}

/// A response body being read. Read to its end, it hands its connection back with
/// [`Pool::give_back`]; dropped before that, it closes the connection.
pub struct Body {
    conn: Conn,
    buf: BytesMut,
    decoder: Decoder,
    keep_alive: bool,
    origin: Arc<str>,
    max_idle: usize,
}

impl Body {
    /// Body data already read from the connection, without waiting.
    pub fn buffered(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        self.decoder.decode(&mut self.buf).map_err(|source| self.protocol(source))
    }

    /// The next piece of body data; `None` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            if let Some(data) = self.buffered()? {
                return Ok(Some(data));
            }
            if self.decoder.is_done() {
                return Ok(None);
            }
            let read = self.conn.read_more(&mut self.buf).await;
            match read {
                Ok(0) => {
                    self.keep_alive = false;
                    self.decoder.closed().map_err(|source| self.protocol(source))?;
                }
                Ok(_) => {}
                Err(source) => return Err(UpstreamError::Io { origin: self.origin.clone(), source }),
            }
        }
    }

    /// The whole body, refused once it passes `limit` bytes.
    pub async fn collect(&mut self, limit: usize) -> Result<Bytes, CollectError> {
        if self.decoder.remaining().is_some_and(|n| n > limit as u64) {
            return Err(CollectError::TooLarge);
        }
        // Usually the whole body came with the head: one piece, no copy.
        let Some(first) = self.chunk().await? else { return Ok(Bytes::new()) };
        if first.len() > limit {
            return Err(CollectError::TooLarge);
        }
        if self.decoder.is_done() {
            return Ok(first);
        }
        let mut all = BytesMut::from(&first[..]);
        while let Some(piece) = self.chunk().await? {
            if all.len() + piece.len() > limit {
                return Err(CollectError::TooLarge);
            }
            all.extend_from_slice(&piece);
        }
        Ok(all.freeze())
    }

    /// The rest of a length-framed body is already in the buffer: reading it needs no IO.
    pub fn fully_buffered(&self) -> bool {
        self.decoder.remaining().is_some_and(|n| self.buf.len() as u64 >= n)
    }

    /// The whole body was read.
    pub fn is_done(&self) -> bool {
        self.decoder.is_done()
    }

    fn reusable(&self) -> bool {
        self.keep_alive && self.decoder.is_done() && self.buf.is_empty()
    }

    fn protocol(&self, source: WireError) -> UpstreamError {
        UpstreamError::Protocol { origin: self.origin.clone(), source }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("the response body is larger than the gateway accepts")]
    TooLarge,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl Pool {
    fn take_idle(&self, origin: &Arc<str>) -> Option<(Conn, BytesMut)> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(origin)?;
        let newest = list.pop()?;
        if newest.since.elapsed() < IDLE_MAX {
            return Some((newest.conn, newest.buf));
        }
        // The rest are older still.
        list.clear();
        None
    }

    /// Takes back the connection of a body read to its end, so the next request can reuse it.
    pub fn give_back(&self, body: Body) {
        if !body.reusable() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(body.origin).or_default();
        // Checkout takes the newest, so the oldest wait at the front: close them once too old
        // instead of holding their sockets until traffic drops.
        if list.first().is_some_and(|i| now - i.since >= IDLE_MAX) {
            list.retain(|i| now - i.since < IDLE_MAX);
        }
        if list.len() < body.max_idle {
            // A buffer grown by a large or long response is not kept for the next small one.
            let buf = if body.buf.capacity() > KEEP_BUF_MAX { BytesMut::new() } else { body.buf };
            list.push(Idle { conn: body.conn, buf, since: now });
        }
    }

    /// Sends `request` (from [`wire::post`]) on an idle connection to `origin`, or on a new one,
    /// and reads the response head. A kept-alive connection that fails before the provider sent
    /// a byte was closed by the provider meanwhile: the request never reached it, and is sent
    /// again on the next connection.
    pub async fn send(
        &self,
        origin: &Origin,
        connect_timeout: Duration,
        max_idle: usize,
        request: Bytes,
    ) -> Result<Response, UpstreamError> {
        while let Some((conn, buf)) = self.take_idle(&origin.key) {
            match exchange(conn, buf, origin, max_idle, request.clone()).await {
                Ok(resp) => return Ok(resp),
                Err(Exchange::Silent(_)) => continue,
                Err(Exchange::Failed(e)) => return Err(e),
            }
        }
        // Boxed: connecting (with its TLS handshake state) is rare, and inline it would make
        // every request's future 2 KiB larger, copied at each step up the call chain.
        let conn = Box::pin(connect(origin, connect_timeout)).await?;
        exchange(conn, BytesMut::new(), origin, max_idle, request).await.map_err(Exchange::into_error)
    }
}

enum Exchange {
    /// The connection failed before any byte of a response arrived.
    Silent(UpstreamError),
    Failed(UpstreamError),
}

impl Exchange {
    fn into_error(self) -> UpstreamError {
        match self {
            Exchange::Silent(e) | Exchange::Failed(e) => e,
        }
    }
}

/// Writes one request and reads its response head into `buf` (empty: a connection is reused
/// only after its last response was read to the end).
async fn exchange(
    mut conn: Conn,
    mut buf: BytesMut,
    origin: &Origin,
    max_idle: usize,
    request: Bytes,
) -> Result<Response, Exchange> {
    let io = |source| UpstreamError::Io { origin: origin.key.clone(), source };
    conn.write_all(request).await.map_err(|e| Exchange::Silent(io(e)))?;
    loop {
        match conn.read_more(&mut buf).await {
            Ok(0) if buf.is_empty() => {
                return Err(Exchange::Silent(io(io::ErrorKind::UnexpectedEof.into())));
            }
            Ok(0) => {
                let source = WireError::Closed("in the middle of the response head");
                return Err(Exchange::Failed(UpstreamError::Protocol { origin: origin.key.clone(), source }));
            }
            Ok(_) => {}
            Err(e) if buf.is_empty() => return Err(Exchange::Silent(io(e))),
            Err(e) => return Err(Exchange::Failed(io(e))),
        }
        let parsed = wire::parse_head(&buf)
            .map_err(|source| Exchange::Failed(UpstreamError::Protocol { origin: origin.key.clone(), source }))?;
        if let Some((len, head)) = parsed {
            let _ = buf.split_to(len);
            let body = Body {
                conn,
                buf,
                decoder: Decoder::new(head.framing),
                keep_alive: head.keep_alive,
                origin: origin.key.clone(),
                max_idle,
            };
            return Ok(Response { status: head.status, retry_after: head.retry_after, body });
        }
    }
}

async fn connect(origin: &Origin, timeout: Duration) -> Result<Conn, UpstreamError> {
    let name = || origin.key.to_string();
    let mut last = None;
    for addr in &origin.addrs {
        match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                let Some(tls) = &origin.tls_config else { return Ok(Conn::Plain(s)) };
                let io = s.into_poll_io().map_err(|source| UpstreamError::Connect { origin: name(), source })?;
                let server_name = rustls::pki_types::ServerName::try_from(origin.host.clone())
                    .map_err(|e| UpstreamError::Tls { origin: name(), source: io::Error::other(e) })?;
                let tls = monoio::time::timeout(
                    timeout,
                    tokio_rustls::TlsConnector::from(tls.clone()).connect(server_name, io),
                )
                .await
                .map_err(|_| UpstreamError::ConnectTimeout(name()))?
                .map_err(|source| UpstreamError::Tls { origin: name(), source })?;
                return Ok(Conn::Tls(Box::new(tls)));
            }
            Ok(Err(e)) => last = Some(UpstreamError::Connect { origin: name(), source: e }),
            Err(_) => last = Some(UpstreamError::ConnectTimeout(name())),
        }
    }
    Err(last.unwrap_or_else(|| UpstreamError::Unresolved(origin.host.clone())))
}
