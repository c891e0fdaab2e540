//! The audit trail's table: append-only batches chained by hash, the chain walk that finds the
//! first broken link, and filtered, cursor-paginated queries (newest first).

use rusqlite::{OptionalExtension, params, params_from_iter};

use super::{Store, StoreError};
use crate::audit::event::{AuditEvent, link};

pub(super) const MIGRATION: &str = "
    CREATE TABLE audit_events (
        seq INTEGER PRIMARY KEY, id TEXT NOT NULL, ts INTEGER NOT NULL,
        category TEXT NOT NULL, type TEXT NOT NULL, outcome TEXT NOT NULL,
        actor_type TEXT NOT NULL, actor_id TEXT, client_ip TEXT, target_type TEXT, target_id TEXT,
        customer_id TEXT, team_id TEXT, user_id TEXT, virtual_key_id TEXT, request_id TEXT,
        details TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL);
    CREATE INDEX audit_ts ON audit_events (ts, seq);
    CREATE INDEX audit_type ON audit_events (category, type, seq);
    CREATE INDEX audit_user ON audit_events (user_id, seq);
    CREATE INDEX audit_team ON audit_events (team_id, seq);
    CREATE INDEX audit_customer ON audit_events (customer_id, seq);
    CREATE INDEX audit_key ON audit_events (virtual_key_id, seq);
";

/// Where the chain starts after retention removed its oldest part: the last removed record.
pub(super) const CHECKPOINT_MIGRATION: &str = "
    CREATE TABLE audit_checkpoint (
        id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash BLOB NOT NULL, removed_at INTEGER NOT NULL);
";

/// Rows deleted per transaction by retention, so the writer is never blocked for long.
const RETENTION_BATCH: i64 = 10_000;

const COLUMNS: &str = "seq, id, ts, category, type, outcome, actor_type, actor_id, client_ip, target_type, target_id, \
     customer_id, team_id, user_id, virtual_key_id, request_id, details, prev_hash, hash";

/// Filters of `GET /api/enterprise/audit/events`; every one optional.
#[derive(Debug, Default, Clone)]
pub struct AuditQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub category: Option<String>,
    pub r#type: Option<String>,
    pub outcome: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub customer_id: Option<String>,
    pub virtual_key_id: Option<String>,
    /// Only events older than this sequence number (the previous page's cursor).
    pub before_seq: Option<i64>,
    pub limit: usize,
}

/// One stored event with its place in the chain.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub event: AuditEvent,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// The outcome of a chain walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub checked: u64,
    /// (seq, id, why) of the first record that does not chain.
    pub first_broken: Option<(i64, String, String)>,
}

fn row_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    let details: String = r.get(16)?;
    Ok(StoredEvent {
        seq: r.get(0)?,
        event: AuditEvent {
            id: r.get(1)?,
            timestamp_ms: r.get(2)?,
            category: r.get(3)?,
            r#type: r.get(4)?,
            outcome: r.get(5)?,
            actor_type: r.get(6)?,
            actor_id: r.get(7)?,
            client_ip: r.get(8)?,
            target_type: r.get(9)?,
            target_id: r.get(10)?,
            customer_id: r.get(11)?,
            team_id: r.get(12)?,
            user_id: r.get(13)?,
            virtual_key_id: r.get(14)?,
            request_id: r.get(15)?,
            // Verbatim, as hashed; a row whose text is no JSON at all (edited by hand) keeps its
            // text as a JSON string, so verify reports it rather than the read failing.
            details: match serde_json::value::RawValue::from_string(details) {
                Ok(raw) => raw,
                Err(e) => crate::audit::event::details(&format!("unreadable details: {e}")),
            },
        },
        prev_hash: r.get(17)?,
        hash: r.get(18)?,
    })
}

impl Store {
    /// The hash the next record chains to: the newest record's, or 32 zero bytes.
    fn audit_head(&self) -> Result<Vec<u8>, StoreError> {
        let head: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| r.get(0))
            .optional()?;
        Ok(head.unwrap_or_else(|| vec![0; 32]))
    }

    /// Appends a batch in one transaction, each record chained to the one before.
    pub fn append_audit(&mut self, events: &[AuditEvent], hmac_key: Option<&[u8]>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut prev = self.audit_head()?;
        let tx = self.conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO audit_events (id, ts, category, type, outcome, actor_type, actor_id, client_ip, target_type,
                 target_id, customer_id, team_id, user_id, virtual_key_id, request_id, details, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            )?;
            for e in events {
                let hash = link(&prev, e, hmac_key);
                ins.execute(params![
                    e.id,
                    e.timestamp_ms,
                    e.category,
                    e.r#type,
                    e.outcome,
                    e.actor_type,
                    e.actor_id,
                    e.client_ip,
                    e.target_type,
                    e.target_id,
                    e.customer_id,
                    e.team_id,
                    e.user_id,
                    e.virtual_key_id,
                    e.request_id,
                    e.details.get(),
                    prev,
                    hash
                ])?;
                prev = hash;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes records older than `cutoff_ms`, oldest first and only as a contiguous prefix of
    /// the chain, keeping the last removed record's hash as the new anchor. Returns how many went.
    pub fn apply_retention(&mut self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            // The first record young enough to keep bounds the prefix that may go.
            let keep_from: Option<i64> =
                self.conn.query_row("SELECT min(seq) FROM audit_events WHERE ts >= ?1", [cutoff_ms], |r| r.get(0))?;
            let upto: Option<(i64, Vec<u8>)> = self
                .conn
                .query_row(
                    "SELECT seq, hash FROM audit_events WHERE seq < ?1 ORDER BY seq LIMIT 1 OFFSET ?2",
                    params![keep_from.unwrap_or(i64::MAX), RETENTION_BATCH - 1],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let last: Option<(i64, Vec<u8>)> = match upto {
                Some(x) => Some(x),
                None => self
                    .conn
                    .query_row(
                        "SELECT seq, hash FROM audit_events WHERE seq < ?1 ORDER BY seq DESC LIMIT 1",
                        [keep_from.unwrap_or(i64::MAX)],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?,
            };
            let Some((seq, hash)) = last else { return Ok(removed) };
            let tx = self.conn.transaction()?;
            let n = tx.execute("DELETE FROM audit_events WHERE seq <= ?1", [seq])?;
            tx.execute(
                "INSERT INTO audit_checkpoint VALUES (1, ?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET seq = ?1, hash = ?2, removed_at = ?3",
                params![seq, hash, cutoff_ms],
            )?;
            tx.commit()?;
            removed += n as u64;
        }
    }

    /// Walks the chain (or the part of it between two times) and names the first broken link.
    pub fn verify_audit(
        &self,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        hmac_key: Option<&[u8]>,
    ) -> Result<Verification, StoreError> {
        let mut q = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM audit_events WHERE ts >= ?1 AND ts <= ?2 ORDER BY seq"))?;
        let mut rows = q.query(params![from_ms.unwrap_or(i64::MIN), to_ms.unwrap_or(i64::MAX)])?;
        // A whole-chain walk also checks the first record against the anchor: zeros, or the last
        // record retention removed. Anything else means records were removed by hand.
        let mut expected_prev: Option<Vec<u8>> = if from_ms.is_none() {
            let anchor: Option<Vec<u8>> =
                self.conn.query_row("SELECT hash FROM audit_checkpoint WHERE id = 1", [], |r| r.get(0)).optional()?;
            Some(anchor.unwrap_or_else(|| vec![0; 32]))
        } else {
            None
        };
        let mut checked = 0;
        while let Some(r) = rows.next()? {
            let s = row_event(r)?;
            checked += 1;
            if let Some(p) = &expected_prev
                && *p != s.prev_hash
            {
                let why = "its prev_hash is not the previous record's hash (a record was removed or reordered)";
                return Ok(Verification { checked, first_broken: Some((s.seq, s.event.id, why.into())) });
            }
            if link(&s.prev_hash, &s.event, hmac_key) != s.hash {
                let why = "its content does not match its hash (the record was altered)";
                return Ok(Verification { checked, first_broken: Some((s.seq, s.event.id, why.into())) });
            }
            expected_prev = Some(s.hash);
        }
        Ok(Verification { checked, first_broken: None })
    }

    /// Events matching `q`, newest first, at most `q.limit + 1` (one more tells there is a next page).
    pub fn query_audit(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut add = |clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&format!(" AND {clause} ?{}", args.len()));
        };
        if let Some(v) = q.from_ms {
            add("ts >=", v.into());
        }
        if let Some(v) = q.to_ms {
            add("ts <=", v.into());
        }
        if let Some(v) = q.before_seq {
            add("seq <", v.into());
        }
        for (column, value) in [
            ("category", &q.category),
            ("type", &q.r#type),
            ("outcome", &q.outcome),
            ("user_id", &q.user_id),
            ("team_id", &q.team_id),
            ("customer_id", &q.customer_id),
            ("virtual_key_id", &q.virtual_key_id),
        ] {
            if let Some(v) = value {
                add(&format!("{column} ="), v.clone().into());
            }
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", q.limit + 1));
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args.iter()), row_event)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.db")).unwrap();
        (dir, s)
    }

    #[test]
    fn an_intact_chain_verifies_across_batches() {
        let (_d, mut s) = store();
        for i in 0..3 {
            let batch: Vec<_> =
                (0..5).map(|j| AuditEvent::system("security", "t", "success", json!({ "i": i, "j": j }))).collect();
            s.append_audit(&batch, Some(b"key")).unwrap();
        }
        assert_eq!(s.verify_audit(None, None, Some(b"key")).unwrap(), Verification { checked: 15, first_broken: None });
        // The wrong key (or none) cannot reproduce a signed chain.
        assert!(s.verify_audit(None, None, None).unwrap().first_broken.is_some());
    }

    #[test]
    fn an_altered_or_deleted_row_is_named() {
        let (_d, mut s) = store();
        let batch: Vec<_> =
            (0..5).map(|j| AuditEvent::system("usage", "api_request", "success", json!({ "j": j }))).collect();
        s.append_audit(&batch, None).unwrap();
        s.conn.execute("UPDATE audit_events SET outcome = 'failure' WHERE seq = 3", []).unwrap();
        let v = s.verify_audit(None, None, None).unwrap();
        assert_eq!(v.first_broken.as_ref().map(|b| b.0), Some(3));
        s.conn.execute("UPDATE audit_events SET outcome = 'success' WHERE seq = 3", []).unwrap();
        s.conn.execute("DELETE FROM audit_events WHERE seq = 2", []).unwrap();
        let v = s.verify_audit(None, None, None).unwrap();
        assert_eq!(v.first_broken.map(|b| b.0), Some(3));
    }

    #[test]
    fn retention_removes_the_oldest_prefix_and_keeps_the_chain_verifiable() {
        let (_d, mut s) = store();
        let batch: Vec<_> = (0..25)
            .map(|i| {
                let mut e = AuditEvent::system("usage", "api_request", "success", json!({}));
                e.timestamp_ms = i * 1000;
                e
            })
            .collect();
        s.append_audit(&batch, None).unwrap();
        assert_eq!(s.apply_retention(10_000).unwrap(), 10);
        assert_eq!(s.verify_audit(None, None, None).unwrap(), Verification { checked: 15, first_broken: None });
        // Deleting the oldest remaining record by hand is caught against the anchor.
        s.conn.execute("DELETE FROM audit_events WHERE seq = 11", []).unwrap();
        assert_eq!(s.verify_audit(None, None, None).unwrap().first_broken.map(|b| b.0), Some(12));
    }

    #[test]
    fn queries_filter_and_page_newest_first() {
        let (_d, mut s) = store();
        let mut batch = Vec::new();
        for i in 0..10 {
            let mut e = AuditEvent::system(
                "usage",
                if i % 2 == 0 { "api_request" } else { "budget_exceeded" },
                "success",
                json!({}),
            );
            e.team_id = Some(format!("t{}", i % 3));
            batch.push(e);
        }
        s.append_audit(&batch, None).unwrap();
        let q = AuditQuery { r#type: Some("api_request".into()), limit: 2, ..Default::default() };
        let page = s.query_audit(&q).unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![9, 7, 5]);
        let next = s.query_audit(&AuditQuery { before_seq: Some(7), ..q }).unwrap();
        assert_eq!(next.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 3, 1]);
        let t0 = s.query_audit(&AuditQuery { team_id: Some("t0".into()), limit: 100, ..Default::default() }).unwrap();
        assert_eq!(t0.len(), 4);
    }
}
