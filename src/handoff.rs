//! The request channel from the data plane to the control plane: a buffered HTTP request and a
//! one-shot reply. Neither side learns the other's internals through it.

use std::net::SocketAddr;

use bytes::Bytes;

/// A request for a path the control plane owns (`/api/*`, `/login`, `/auth/*`, `/ui/*`, …).
pub struct ControlRequest {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
    pub reply: tokio::sync::oneshot::Sender<http::Response<Bytes>>,
}
