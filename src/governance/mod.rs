//! Governance: who may use what, and how much. The customer → team → user → key chain, allow-lists,
//! hard budgets and exact rate limits. Plain functions over the snapshot and counters: no I/O.

pub mod access;
pub mod admit;
pub mod clock;
pub mod cost;
pub mod counters;
pub mod window;

/// A level of the hierarchy; errors and headers name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    VirtualKey,
    User,
    Team,
    Customer,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::VirtualKey => "virtual_key",
            Level::User => "user",
            Level::Team => "team",
            Level::Customer => "customer",
        }
    }
}
