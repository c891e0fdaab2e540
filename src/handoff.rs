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
    pub reply: tokio::sync::oneshot::Sender<http::Response<ControlBody>>,
}

/// A control-plane answer's body: whole, or chunks produced as the control plane reads them
/// (exports), relayed by the data plane as they come.
pub enum ControlBody {
    Full(Bytes),
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}
