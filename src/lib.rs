//! Heimdall: a thread-per-core LLM gateway. The data plane (`dataplane`) serves `/v1/*` on every
//! core; the control plane (`control`) owns configuration, persistence and everything slow.

pub mod audit;
pub mod auth;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod error;
pub mod governance;
pub mod handoff;
pub mod identity;
pub mod metrics;
pub mod providers;
pub mod snapshot;
pub mod state;
pub mod store;
