//! Governance: who may use what. Access lists now; budgets, rate limits and the entity chain next.
//! Plain functions over the snapshot and counters: no sockets, no runtime, no store.

pub mod access;
