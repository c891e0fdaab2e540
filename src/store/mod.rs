//! The embedded SQLite store: the only code that speaks SQL. Migrations run at open; the control
//! plane checkpoints governance counters here and restores them at start. Never used by a core.

use std::path::Path;

pub mod audit;
mod audit_index;
mod audit_segment;
pub mod sessions;

use rusqlite::{Connection, params};

use crate::config::Window;
use crate::governance::Level;
use crate::governance::counters::{CounterRegistry, slot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store directory {0}: {1}")]
    Dir(String, std::io::Error),
    #[error("store: {0}")]
    Sql(#[from] rusqlite::Error),
    /// Stored bytes that do not decode (altered by hand, or a damaged file).
    #[error("store: {0}")]
    Corrupt(String),
}

/// Schema steps, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE budget_usage (
        level TEXT NOT NULL, entity_id TEXT NOT NULL, window TEXT NOT NULL,
        window_start INTEGER NOT NULL, window_end INTEGER NOT NULL, calendar INTEGER NOT NULL,
        spent_micros INTEGER NOT NULL,
        PRIMARY KEY (level, entity_id, window));
    CREATE TABLE rate_usage (
        level TEXT NOT NULL, entity_id TEXT NOT NULL, kind TEXT NOT NULL, window TEXT NOT NULL,
        packed INTEGER NOT NULL,
        PRIMARY KEY (level, entity_id, kind, window));
",
    "
    CREATE TABLE api_entities (
        kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        PRIMARY KEY (kind, id));
",
    "
    CREATE TABLE usage_hourly (
        level TEXT NOT NULL, entity_id TEXT NOT NULL, hour TEXT NOT NULL, model TEXT NOT NULL,
        requests INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
        cost_micros INTEGER NOT NULL,
        PRIMARY KEY (level, entity_id, hour, model));
",
    audit::MIGRATION,
    audit::CHECKPOINT_MIGRATION,
    sessions::MIGRATION,
    audit_index::MIGRATION,
    audit::SEGMENTS_MIGRATION,
];

pub struct Store {
    pub(crate) conn: Connection,
    audit_tail: audit_index::Tail,
    /// Where the next audit record goes (its sequence number and the hash it chains to), kept
    /// from the last batch this store wrote: asking SQLite for the chain's head before every
    /// batch was a sixth of the audit writer's time. `None` until known again.
    audit_next: Option<(i64, Vec<u8>)>,
}

const WINDOWS: [Window; 9] = [
    Window::Seconds30,
    Window::Minute,
    Window::Minutes5,
    Window::Hour,
    Window::Day,
    Window::Week,
    Window::Month,
    Window::Quarter,
    Window::Year,
];

fn level_from(s: &str) -> Option<Level> {
    Some(match s {
        "virtual_key" => Level::VirtualKey,
        "user" => Level::User,
        "team" => Level::Team,
        "customer" => Level::Customer,
        _ => return None,
    })
}

impl Store {
    /// Opens (creating file and directory on first start) and migrates the store.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.display().to_string(), e))?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // 16 MiB of page cache: the hot part of the audit indexes stays in memory while batches
        // land, without the gateway outgrowing its memory budget.
        conn.pragma_update(None, "cache_size", -16384)?;
        // Checkpoint every ~40 MiB of WAL instead of SQLite's 4 MiB: the audit indexes' hot
        // pages are rewritten by every batch, and a longer interval copies each back once.
        conn.pragma_update(None, "wal_autocheckpoint", 10000)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store { conn, audit_tail: Default::default(), audit_next: None };
        store.migrate()?;
        store.move_rows_to_segments()?;
        store.load_audit_tail()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let done: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, step) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Writes every entity's budget windows and rate counts in one transaction.
    pub fn checkpoint(&mut self, registry: &CounterRegistry) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut rows = 0;
        {
            let mut budget = tx.prepare_cached(
                "INSERT INTO budget_usage VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (level, entity_id, window) DO UPDATE SET window_start = ?4, window_end = ?5,
                 calendar = ?6, spent_micros = ?7",
            )?;
            let mut rate = tx.prepare_cached(
                "INSERT INTO rate_usage VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (level, entity_id, kind, window) DO UPDATE SET packed = ?5",
            )?;
            for ((level, id), c) in registry.entries() {
                for w in WINDOWS {
                    let (start, end, spent, calendar) = c.budgets[slot(w)].state_full();
                    if end > 0 {
                        budget.execute(params![level.as_str(), id, w.as_str(), start, end, calendar, spent as i64])?;
                        rows += 1;
                    }
                    for (kind, cell) in [("requests", &c.requests[slot(w)]), ("tokens", &c.tokens[slot(w)])] {
                        let packed = cell.raw();
                        if packed != 0 {
                            rate.execute(params![level.as_str(), id, kind, w.as_str(), packed as i64])?;
                            rows += 1;
                        }
                    }
                }
            }
        }
        tx.commit()?;
        Ok(rows)
    }

    /// Puts checkpointed usage back into the counters (before the first request is served).
    pub fn restore(&self, registry: &CounterRegistry) -> Result<usize, StoreError> {
        let mut rows = 0;
        let mut q = self.conn.prepare(
            "SELECT level, entity_id, window, window_start, window_end, calendar, spent_micros FROM budget_usage",
        )?;
        let mut it = q.query([])?;
        while let Some(r) = it.next()? {
            let (level, id, window): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let (Some(level), Some(w)) = (level_from(&level), Window::parse(&window)) else { continue };
            let spent: i64 = r.get(6)?;
            registry.get(level, &id).budgets[slot(w)].restore(r.get(3)?, r.get(4)?, r.get(5)?, spent.max(0) as u64);
            rows += 1;
        }
        let mut q = self.conn.prepare("SELECT level, entity_id, kind, window, packed FROM rate_usage")?;
        let mut it = q.query([])?;
        while let Some(r) = it.next()? {
            let (level, id, kind, window): (String, String, String, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let (Some(level), Some(w)) = (level_from(&level), Window::parse(&window)) else { continue };
            let packed: i64 = r.get(4)?;
            let c = registry.get(level, &id);
            let cell = if kind == "tokens" { &c.tokens[slot(w)] } else { &c.requests[slot(w)] };
            cell.restore(packed as u64);
            rows += 1;
        }
        Ok(rows)
    }
}

/// One entity created through the management API, as stored: its JSON body (the same shape as
/// the config file's entries) and when it was created and last changed.
#[derive(Debug, Clone)]
pub struct StoredEntity {
    pub kind: String,
    pub id: String,
    pub body: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    pub fn entities(&self) -> Result<Vec<StoredEntity>, StoreError> {
        let mut q = self
            .conn
            .prepare("SELECT kind, id, body, created_at, updated_at FROM api_entities ORDER BY created_at, id")?;
        let rows = q.query_map([], |r| {
            Ok(StoredEntity {
                kind: r.get(0)?,
                id: r.get(1)?,
                body: r.get(2)?,
                created_at: r.get(3)?,
                updated_at: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Inserts or replaces one entity.
    pub fn put_entity(&mut self, e: &StoredEntity) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO api_entities VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (kind, id) DO UPDATE SET body = ?3, updated_at = ?5",
            params![e.kind, e.id, e.body, e.created_at, e.updated_at],
        )?;
        Ok(())
    }

    pub fn delete_entity(&mut self, kind: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn.execute("DELETE FROM api_entities WHERE kind = ?1 AND id = ?2", params![kind, id])? > 0)
    }
}

/// Requests, tokens and spend of one entity in one UTC hour (or, read back, one day) with one model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub level: String,
    pub entity_id: String,
    /// `YYYY-MM-DDTHH` (UTC) when written; `YYYY-MM-DD` when read back by day.
    pub period: String,
    pub model: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: u64,
}

impl Store {
    /// Adds the rows to what is stored (one transaction).
    pub fn add_usage(&mut self, rows: &[UsageRow]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut up = tx.prepare_cached(
                "INSERT INTO usage_hourly VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (level, entity_id, hour, model) DO UPDATE SET
                 requests = requests + ?5, prompt_tokens = prompt_tokens + ?6,
                 completion_tokens = completion_tokens + ?7, cost_micros = cost_micros + ?8",
            )?;
            for r in rows {
                up.execute(params![
                    r.level,
                    r.entity_id,
                    r.period,
                    r.model,
                    r.requests as i64,
                    r.prompt_tokens as i64,
                    r.completion_tokens as i64,
                    r.cost_micros as i64
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// One entity's usage between two days (inclusive), summed by day then model.
    pub fn usage(&self, level: &str, id: &str, from: &str, to: &str) -> Result<Vec<UsageRow>, StoreError> {
        let mut q = self.conn.prepare_cached(
            "SELECT substr(hour, 1, 10) AS day, model, sum(requests), sum(prompt_tokens), sum(completion_tokens),
             sum(cost_micros) FROM usage_hourly
             WHERE level = ?1 AND entity_id = ?2 AND hour >= ?3 AND hour < ?4 || 'U'
             GROUP BY day, model ORDER BY day, model",
        )?;
        let rows = q.query_map(params![level, id, from, to], |r| {
            let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
            Ok(UsageRow {
                level: level.to_string(),
                entity_id: id.to_string(),
                period: r.get(0)?,
                model: r.get(1)?,
                requests: n(2)?,
                prompt_tokens: n(3)?,
                completion_tokens: n(4)?,
                cost_micros: n(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_restores_spend_and_rate_counts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/heimdall.db");
        let reg = CounterRegistry::default();
        let c = reg.get(Level::Team, "t1");
        c.budgets[slot(Window::Month)].try_reserve(1_000_000, 700, 5_000, Window::Month, true).unwrap();
        c.budgets[slot(Window::Month)].settle(700, 321);
        c.requests[slot(Window::Minute)].try_add(3, 10, 5_000, Window::Minute).unwrap();
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.checkpoint(&reg).unwrap(), 2);
        // Twice: the upsert path.
        assert_eq!(store.checkpoint(&reg).unwrap(), 2);
        drop(store);

        let fresh = CounterRegistry::default();
        assert_eq!(Store::open(&path).unwrap().restore(&fresh).unwrap(), 2);
        let c2 = fresh.get(Level::Team, "t1");
        assert_eq!(c2.budgets[slot(Window::Month)].state(), c.budgets[slot(Window::Month)].state());
        assert_eq!(c2.budgets[slot(Window::Month)].remaining(1_000_000), 1_000_000 - 321);
        assert_eq!(c2.requests[slot(Window::Minute)].current(5_000, Window::Minute).0, 3);
    }

    #[test]
    fn migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        Store::open(&path).unwrap();
        Store::open(&path).unwrap();
    }
}
