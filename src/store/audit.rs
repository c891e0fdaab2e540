//! The audit trail's table: append-only batches chained by hash, the chain walk that finds the
//! first broken link, and filtered, cursor-paginated queries (newest first).

use rusqlite::{OptionalExtension, params, params_from_iter};

use super::audit_index::{BUCKET_BITS, Field, Tail, bucket_of, sealed_newest_first};
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
    /// The newest record's sequence number and hash (the next record chains to it), or none.
    fn audit_head(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// The last record retention removed (sequence number and hash), if any.
    fn audit_cut(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT seq, hash FROM audit_checkpoint WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Where the next record goes: its sequence number and the hash it chains to (the newest
    /// record's; when retention removed them all, the anchor it left; else zeros). Sequence
    /// numbers are given here, never by SQLite, so they keep growing after the table emptied
    /// (the entity index names records by them).
    fn audit_next(&self) -> Result<(i64, Vec<u8>), StoreError> {
        let (seq, prev) = match (self.audit_head()?, self.audit_cut()?) {
            (Some(head), _) => head,
            (None, Some(cut)) => cut,
            (None, None) => (0, vec![0; 32]),
        };
        Ok(((seq + 1).max(self.audit_tail.bucket() << BUCKET_BITS), prev))
    }

    /// Rebuilds the entity index's open bucket from the rows (at open, and after a failed batch
    /// whose postings were noted in memory but rolled back on disk).
    pub(super) fn load_audit_tail(&mut self) -> Result<(), StoreError> {
        let head = self.audit_head()?.map(|h| h.0);
        let next = head.max(self.audit_cut()?.map(|c| c.0)).unwrap_or(0) + 1;
        let tx = self.conn.transaction()?;
        let tail = Tail::load(&tx, head, next)?;
        tx.commit()?;
        self.audit_tail = tail;
        Ok(())
    }

    /// Appends a batch in one transaction, each record chained to the one before.
    pub fn append_audit(&mut self, events: &[AuditEvent], hmac_key: Option<&[u8]>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let result = self.try_append_audit(events, hmac_key);
        if result.is_err() {
            // The batch is rolled back: forget the postings it noted.
            if let Err(e) = self.load_audit_tail() {
                tracing::error!(error = %e, "cannot rebuild the audit entity index after a failed batch");
            }
        }
        result
    }

    fn try_append_audit(&mut self, events: &[AuditEvent], hmac_key: Option<&[u8]>) -> Result<(), StoreError> {
        let (mut seq, mut prev) = self.audit_next()?;
        let tx = self.conn.transaction()?;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO audit_events (seq, id, ts, category, type, outcome, actor_type, actor_id, client_ip, target_type,
                 target_id, customer_id, team_id, user_id, virtual_key_id, request_id, details, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            )?;
            for e in events {
                let hash = link(&prev, e, hmac_key);
                ins.execute(params![
                    seq,
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
                self.audit_tail.add(&tx, seq, e)?;
                prev = hash;
                seq += 1;
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
            // Buckets wholly removed; the one cut through keeps postings of gone rows, which
            // queries skip (they fetch rows by sequence number).
            tx.execute("DELETE FROM audit_postings WHERE bucket < ?1", [bucket_of(seq + 1)])?;
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
        match q.indexed_entity() {
            Some((field, id)) => self.query_audit_by_entity(q, field, id),
            None => self.query_audit_rows(q, None),
        }
    }

    /// Walks the entity index newest first and fetches the rows it names in growing chunks,
    /// the other filters applied in SQL, until the page is full or the index is exhausted.
    fn query_audit_by_entity(&self, q: &AuditQuery, field: Field, id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let want = q.limit + 1;
        let before = q.before_seq.unwrap_or(i64::MAX);
        let mut out = Vec::with_capacity(want);
        let mut pending = self.audit_tail.newest_first(field, id, before);
        let mut chunk = want.max(64);
        let mut drain = |pending: &mut Vec<i64>, out: &mut Vec<StoredEvent>, all: bool| -> Result<(), StoreError> {
            while out.len() < want && (pending.len() >= chunk || (all && !pending.is_empty())) {
                let take: Vec<i64> = pending.drain(..chunk.min(pending.len())).collect();
                out.extend(self.query_audit_rows(q, Some(&take))?);
                out.truncate(want);
                chunk = (chunk * 2).min(4096);
            }
            Ok(())
        };
        drain(&mut pending, &mut out, false)?;
        let from_bucket = (self.audit_tail.bucket() - 1).min(bucket_of(before.saturating_sub(1)));
        if out.len() < want {
            sealed_newest_first(&self.conn, field, id, from_bucket, |seqs| {
                pending.extend(seqs.into_iter().filter(|&s| s < before));
                drain(&mut pending, &mut out, false)?;
                Ok(out.len() < want)
            })?;
        }
        drain(&mut pending, &mut out, true)?;
        Ok(out)
    }

    /// The rows matching `q` (only among `seqs` when given), newest first, at most `q.limit + 1`.
    fn query_audit_rows(&self, q: &AuditQuery, seqs: Option<&[i64]>) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE 1 = 1");
        if let Some(seqs) = seqs {
            // Our own integers, so inlined: a chunk can exceed SQLite's bound-parameter limit.
            let list: Vec<String> = seqs.iter().map(i64::to_string).collect();
            sql.push_str(&format!(" AND seq IN ({})", list.join(",")));
        }
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

impl AuditQuery {
    /// The entity filter the index answers: the most selective one given (keys are fewer per
    /// entity than users, users than teams, teams than customers).
    fn indexed_entity(&self) -> Option<(Field, &str)> {
        [
            (Field::VirtualKey, &self.virtual_key_id),
            (Field::User, &self.user_id),
            (Field::Team, &self.team_id),
            (Field::Customer, &self.customer_id),
        ]
        .into_iter()
        .find_map(|(f, v)| v.as_deref().map(|v| (f, v)))
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

    /// Records naming users, teams and keys in a pattern, in batches of uneven sizes so some
    /// cross bucket boundaries; and what a full scan would answer, to compare the index with.
    fn mixed(s: &mut Store, from: usize, n: usize) -> Vec<(i64, AuditEvent)> {
        let before: i64 = s.conn.query_row("SELECT coalesce(max(seq), 0) FROM audit_events", [], |r| r.get(0)).unwrap();
        let mut all = Vec::new();
        let (mut i, n) = (from, from + n);
        for size in [1usize, 7, 16, 33, 3, 100].iter().cycle() {
            if i >= n {
                break;
            }
            let batch: Vec<_> = (i..(i + size).min(n))
                .map(|k| {
                    let mut e = AuditEvent::system(
                        "usage",
                        if k % 5 == 0 { "rate_limit_violation" } else { "api_request" },
                        if k % 4 == 0 { "denied" } else { "success" },
                        json!({ "k": k }),
                    );
                    e.user_id = (k % 9 != 0).then(|| format!("u{}", k % 7));
                    e.team_id = Some(format!("t{}", k % 3));
                    e.virtual_key_id = Some(format!("k{}", k % 11));
                    e
                })
                .collect();
            s.append_audit(&batch, None).unwrap();
            i += batch.len();
            all.extend(batch);
        }
        let seqs: Vec<i64> = s
            .conn
            .prepare("SELECT seq FROM audit_events WHERE seq > ?1 ORDER BY seq")
            .unwrap()
            .query_map([before], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        seqs.into_iter().zip(all).collect()
    }

    /// Every page of `q` through the store, following the cursor, as sequence numbers.
    fn all_pages(s: &Store, mut q: AuditQuery) -> Vec<i64> {
        let mut got = Vec::new();
        loop {
            let page = s.query_audit(&q).unwrap();
            let more = page.len() > q.limit;
            got.extend(page.iter().take(q.limit).map(|e| e.seq));
            if !more {
                return got;
            }
            q.before_seq = got.last().copied();
        }
    }

    fn expected(all: &[(i64, AuditEvent)], keep: impl Fn(&AuditEvent) -> bool) -> Vec<i64> {
        all.iter().rev().filter(|(_, e)| keep(e)).map(|(s, _)| *s).collect()
    }

    #[test]
    fn entity_filters_answer_like_a_full_scan_across_buckets_pages_and_other_filters() {
        let (_d, mut s) = store();
        let all = mixed(&mut s, 0, 700);
        let some = |v: &str| Some(v.to_string());
        type Keep = Box<dyn Fn(&AuditEvent) -> bool>;
        let cases: Vec<(AuditQuery, Keep)> = vec![
            (
                AuditQuery { user_id: some("u3"), limit: 10, ..Default::default() },
                Box::new(|e| e.user_id.as_deref() == Some("u3")),
            ),
            (
                AuditQuery {
                    team_id: some("t1"),
                    r#type: some("rate_limit_violation"),
                    limit: 4,
                    ..Default::default()
                },
                Box::new(|e| e.team_id.as_deref() == Some("t1") && e.r#type == "rate_limit_violation"),
            ),
            (
                AuditQuery { virtual_key_id: some("k5"), user_id: some("u5"), limit: 3, ..Default::default() },
                Box::new(|e| e.virtual_key_id.as_deref() == Some("k5") && e.user_id.as_deref() == Some("u5")),
            ),
            (
                AuditQuery { user_id: some("u1"), outcome: some("denied"), limit: 1000, ..Default::default() },
                Box::new(|e| e.user_id.as_deref() == Some("u1") && e.outcome == "denied"),
            ),
            (AuditQuery { user_id: some("nobody"), limit: 10, ..Default::default() }, Box::new(|_| false)),
        ];
        for (q, keep) in &cases {
            let want = expected(&all, keep);
            assert_eq!(all_pages(&s, q.clone()), want, "{q:?}");
        }
        // The open bucket is rebuilt from the rows when the store opens again.
        let path = _d.path().join("a.db");
        drop(s);
        let s = Store::open(&path).unwrap();
        for (q, keep) in &cases {
            assert_eq!(all_pages(&s, q.clone()), expected(&all, keep), "after reopening: {q:?}");
        }
    }

    #[test]
    fn an_index_left_behind_catches_up_when_the_store_opens() {
        let (d, mut s) = store();
        let all = mixed(&mut s, 0, 300);
        // As after a store written by the version with per-column indexes: no postings at all.
        s.conn.execute_batch("DELETE FROM audit_postings; DELETE FROM audit_index_state;").unwrap();
        drop(s);
        let mut s = Store::open(&d.path().join("a.db")).unwrap();
        let q = AuditQuery { user_id: Some("u2".into()), limit: 7, ..Default::default() };
        assert_eq!(all_pages(&s, q.clone()), expected(&all, |e| e.user_id.as_deref() == Some("u2")));
        // And goes on from there.
        let mut all = all;
        all.extend(mixed(&mut s, 300, 50));
        assert_eq!(all_pages(&s, q), expected(&all, |e| e.user_id.as_deref() == Some("u2")));
    }

    #[test]
    fn after_retention_empties_the_table_sequence_numbers_keep_growing_and_queries_skip_gone_rows() {
        let (_d, mut s) = store();
        let all = mixed(&mut s, 0, 100);
        let last = all.last().unwrap().0;
        assert_eq!(s.apply_retention(i64::MAX).unwrap(), 100);
        let q = AuditQuery { team_id: Some("t0".into()), limit: 5, ..Default::default() };
        assert!(all_pages(&s, q.clone()).is_empty());
        let mut e = AuditEvent::system("usage", "api_request", "success", json!({}));
        e.team_id = Some("t0".into());
        s.append_audit(&[e], None).unwrap();
        assert_eq!(all_pages(&s, q), vec![last + 1]);
        assert_eq!(s.verify_audit(None, None, None).unwrap(), Verification { checked: 1, first_broken: None });
    }
}
