//! End-to-end tests: the real gateway binary against the real mock upstream, over loopback HTTP.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

mod api;
mod audit;
mod chat;
mod errors;
mod governance;
mod lifecycle;
mod login;
mod reload;
mod resilience;
mod sdk;
mod sso;
mod streams;
mod wire;
