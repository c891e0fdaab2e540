//! This core's keep-alive connections to providers: checkout, connect (plain or rustls), return.
//! Knows origins and sockets; knows nothing of models, keys or policy.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use monoio::io::IntoPollIo;
use monoio::net::TcpStream;
use rustc_hash::FxHashMap;

use crate::snapshot::Origin;

type Sender = SendRequest<Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {0}")]
    Unresolved(String),
    #[error("cannot connect to {origin}: {source}")]
    Connect { origin: String, source: std::io::Error },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("TLS handshake with {origin} failed: {source}")]
    Tls { origin: String, source: std::io::Error },
    #[error("HTTP exchange with {origin} failed: {source}")]
    Http { origin: String, source: hyper::Error },
}

/// Idle connections of one core, by origin.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<FxHashMap<Arc<str>, Vec<Sender>>>,
}

/// A connection lent to one request; given back with [`Pool::give_back`] once its response is read.
pub struct Lease {
    origin: Arc<str>,
    sender: Sender,
    max_idle: usize,
}

impl Pool {
    fn take_idle(&self, origin: &Arc<str>) -> Option<Sender> {
        self.idle.borrow_mut().get_mut(origin).and_then(Vec::pop)
    }

    /// Returns a connection whose response was read to the end, so the next request can reuse it.
    pub fn give_back(&self, lease: Lease) {
        if lease.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(lease.origin).or_default();
        if list.len() < lease.max_idle {
            list.push(lease.sender);
        }
    }

    /// Sends `req` on an idle connection to `origin`, or on a new one. A request that an idle
    /// connection could not take (closed by the peer meanwhile) is retried on the next.
    pub async fn send(
        &self,
        origin: &Origin,
        connect_timeout: Duration,
        max_idle: usize,
        mut req: http::Request<Full<Bytes>>,
    ) -> Result<(http::Response<Incoming>, Lease), UpstreamError> {
        while let Some(mut sender) = self.take_idle(&origin.key) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { origin: origin.key.clone(), sender, max_idle })),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(UpstreamError::Http { origin: origin.key.to_string(), source: e.into_error() }),
                },
            }
        }
        let mut sender = self.connect(origin, connect_timeout).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Http { origin: origin.key.to_string(), source })?;
        Ok((resp, Lease { origin: origin.key.clone(), sender, max_idle }))
    }

    async fn connect(&self, origin: &Origin, timeout: Duration) -> Result<Sender, UpstreamError> {
        let name = || origin.key.to_string();
        let mut last = None;
        for addr in &origin.addrs {
            match monoio::time::timeout(timeout, TcpStream::connect_addr(*addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    let io = s.into_poll_io().map_err(|source| UpstreamError::Connect { origin: name(), source })?;
                    return if let Some(tls) = &origin.tls_config {
                        let server_name = rustls::pki_types::ServerName::try_from(origin.host.clone())
                            .map_err(|e| UpstreamError::Tls { origin: name(), source: std::io::Error::other(e) })?;
                        let tls = monoio::time::timeout(
                            timeout,
                            tokio_rustls::TlsConnector::from(tls.clone()).connect(server_name, io),
                        )
                        .await
                        .map_err(|_| UpstreamError::ConnectTimeout(name()))?
                        .map_err(|source| UpstreamError::Tls { origin: name(), source })?;
                        handshake(TokioIo::new(tls), origin).await
                    } else {
                        handshake(TokioIo::new(io), origin).await
                    };
                }
                Ok(Err(e)) => last = Some(UpstreamError::Connect { origin: name(), source: e }),
                Err(_) => last = Some(UpstreamError::ConnectTimeout(name())),
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Unresolved(origin.host.clone())))
    }
}

async fn handshake<T>(io: T, origin: &Origin) -> Result<Sender, UpstreamError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(io)
        .await
        .map_err(|source| UpstreamError::Http { origin: origin.key.to_string(), source })?;
    monoio::spawn(async move {
        // The connection ends when the provider closes it or the last sender is dropped.
        let _ = conn.await;
    });
    Ok(sender)
}
