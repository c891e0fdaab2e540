//! End-to-end tests: the real gateway binary against the real mock upstream, over loopback HTTP.

mod harness;

mod chat;
mod errors;
mod lifecycle;
mod reload;
mod resilience;
mod sdk;
mod streams;
