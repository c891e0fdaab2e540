//! The audit trail's storage: records chained by hash in compressed segments, the chain walk
//! that finds the first broken link, retention, and filtered, cursor-paginated queries (newest
//! first, through the index in `audit_index`). Knows nothing of how records are produced.

use rusqlite::{OptionalExtension, Transaction, params};

use super::audit_index::{self, BUCKET_BITS, Field, Tail, bucket_of, sealed_newest_first};
use super::audit_segment::{SEGMENT_RECORDS, Segment, SegmentWriter};
use super::{Store, StoreError};
use crate::audit::event::{AuditEvent, Auditable, link_bytes, parse_canonical};

/// The first layout, one row per record with six indexes; kept so old stores migrate in
/// order. [`Store::move_rows_to_segments`] moves its rows into segments and drops it.
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

/// Records `first_seq..=last_seq`, in order; `prev_hash` is what the first one chains to and
/// `last_hash` the last one's hash (where the next segment starts).
pub(super) const SEGMENTS_MIGRATION: &str = "
    CREATE TABLE audit_segments (
        first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL,
        min_ts INTEGER NOT NULL, max_ts INTEGER NOT NULL,
        prev_hash BLOB NOT NULL, last_hash BLOB NOT NULL, records BLOB NOT NULL);
";

/// Segments removed per retention transaction, so the writer is never blocked for long.
const RETENTION_BATCH: i64 = 100;

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

/// A stored segment row, its records still compressed.
struct SegmentRow {
    first_seq: i64,
    last_seq: i64,
    prev_hash: Vec<u8>,
    last_hash: Vec<u8>,
    records: Vec<u8>,
}

const SEGMENT_COLUMNS: &str = "first_seq, last_seq, prev_hash, last_hash, records";

fn segment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SegmentRow> {
    Ok(SegmentRow {
        first_seq: r.get(0)?,
        last_seq: r.get(1)?,
        prev_hash: r.get(2)?,
        last_hash: r.get(3)?,
        records: r.get(4)?,
    })
}

fn parse(seq: i64, canonical: &[u8]) -> Result<AuditEvent, StoreError> {
    parse_canonical(canonical).map_err(|e| StoreError::Corrupt(format!("audit record {seq}: {e}")))
}

/// The id a (possibly altered) record claims, for naming it in a verify report.
fn claimed_id(canonical: &[u8]) -> String {
    parse_canonical(canonical).map(|e| e.id).unwrap_or_else(|_| "?".into())
}

impl AuditQuery {
    /// The filter the index answers: the most selective one given (keys are fewer per entity
    /// than users, users than teams, teams than customers; outcomes and categories are few).
    fn indexed(&self) -> Option<(Field, &str)> {
        [
            (Field::VirtualKey, &self.virtual_key_id),
            (Field::User, &self.user_id),
            (Field::Team, &self.team_id),
            (Field::Customer, &self.customer_id),
            (Field::Type, &self.r#type),
            (Field::Category, &self.category),
            (Field::Outcome, &self.outcome),
        ]
        .into_iter()
        .find_map(|(f, v)| v.as_deref().map(|v| (f, v)))
    }

    fn time_matches(&self, ts: i64) -> bool {
        self.from_ms.is_none_or(|f| ts >= f) && self.to_ms.is_none_or(|t| ts <= t)
    }

    fn matches(&self, e: &AuditEvent) -> bool {
        let is = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        self.time_matches(e.timestamp_ms)
            && is(&self.category, Some(&e.category))
            && is(&self.r#type, Some(&e.r#type))
            && is(&self.outcome, Some(&e.outcome))
            && is(&self.user_id, e.user_id.as_deref())
            && is(&self.team_id, e.team_id.as_deref())
            && is(&self.customer_id, e.customer_id.as_deref())
            && is(&self.virtual_key_id, e.virtual_key_id.as_deref())
    }
}

/// One decoded segment, with what its records chain to.
struct Decoded {
    first_seq: i64,
    prev_hash: Vec<u8>,
    records: Segment,
}

impl Decoded {
    fn of(row: SegmentRow) -> Result<Decoded, StoreError> {
        let records = Segment::decode(row.first_seq, &row.records).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Decoded { first_seq: row.first_seq, prev_hash: row.prev_hash, records })
    }

    fn contains(&self, seq: i64) -> bool {
        seq >= self.first_seq && seq < self.first_seq + self.records.len() as i64
    }

    /// Record `seq` if it passes `q`'s filters.
    fn event(&self, seq: i64, q: &AuditQuery) -> Result<Option<StoredEvent>, StoreError> {
        let i = (seq - self.first_seq) as usize;
        let Some(entry) = self.records.entry(i) else { return Ok(None) };
        if !q.time_matches(entry.ts) {
            return Ok(None);
        }
        let event = parse(seq, entry.canonical)?;
        if !q.matches(&event) {
            return Ok(None);
        }
        let prev_hash = match i.checked_sub(1).and_then(|p| self.records.entry(p)) {
            Some(p) => p.hash.to_vec(),
            None => self.prev_hash.clone(),
        };
        Ok(Some(StoredEvent { seq, event, prev_hash, hash: entry.hash.to_vec() }))
    }
}

impl Store {
    /// The newest record's sequence number and hash (the next record chains to it), or none.
    fn audit_head(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT last_seq, last_hash FROM audit_segments ORDER BY first_seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// The last record retention removed (sequence number and hash), if any.
    fn audit_cut(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT seq, hash FROM audit_checkpoint WHERE id = 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    /// Where the next record goes: its sequence number and the hash it chains to (the newest
    /// record's; when retention removed them all, the anchor it left; else zeros). Sequence
    /// numbers are given here, never by SQLite, so they keep growing after the trail emptied
    /// (the index names records by them).
    fn read_audit_next(&self) -> Result<(i64, Vec<u8>), StoreError> {
        let (seq, prev) = match (self.audit_head()?, self.audit_cut()?) {
            (Some(head), _) => head,
            (None, Some(cut)) => cut,
            (None, None) => (0, vec![0; 32]),
        };
        Ok(((seq + 1).max(self.audit_tail.bucket() << BUCKET_BITS), prev))
    }

    /// Brings the index up to date with the records and rebuilds its open bucket in memory (at
    /// open, and after a failed batch whose postings were noted but rolled back on disk): seals
    /// every full bucket not yet written (after a crash between batches, or a migrated store).
    pub(super) fn load_audit_tail(&mut self) -> Result<(), StoreError> {
        self.audit_next = None;
        let head = self.audit_head()?.map(|h| h.0);
        let next = head.max(self.audit_cut()?.map(|c| c.0)).unwrap_or(0) + 1;
        let tx = self.conn.transaction()?;
        let sealed_below = audit_index::sealed_below(&tx)?;
        // Never reopen a sealed bucket (its row would be replaced by the new records' postings
        // alone), even when its newest records were removed by hand.
        let open = bucket_of(head.unwrap_or(next)).max(sealed_below);
        let from = sealed_below << BUCKET_BITS;
        let mut tail: Option<Tail> = None;
        {
            let mut q = tx.prepare(&format!(
                "SELECT {SEGMENT_COLUMNS} FROM audit_segments WHERE first_seq > ?1 AND last_seq >= ?2 ORDER BY first_seq"
            ))?;
            // A segment holds at most SEGMENT_RECORDS records: the bound keeps this a range
            // read of the newest segments instead of a scan of all of them.
            let rows = q.query_map([from - SEGMENT_RECORDS as i64, from], segment_row)?;
            for row in rows {
                let seg = Decoded::of(row?)?;
                for i in 0..seg.records.len() {
                    let seq = seg.first_seq + i as i64;
                    let Some(entry) = seg.records.entry(i).filter(|_| seq >= from) else { continue };
                    let event = parse(seq, entry.canonical)?;
                    tail.get_or_insert_with(|| Tail::open_at(bucket_of(seq))).add(&tx, seq, event.index_values())?;
                }
            }
        }
        let mut tail = tail.unwrap_or_else(|| Tail::open_at(open));
        if tail.bucket() != open {
            tail.seal_to(&tx, open)?;
        }
        tx.commit()?;
        self.audit_tail = tail;
        Ok(())
    }

    /// Moves the rows of the first layout (one row per record) into segments, keeping their
    /// sequence numbers and hashes, then drops that table. Runs at open; a no-op once done.
    pub(super) fn move_rows_to_segments(&mut self) -> Result<(), StoreError> {
        let legacy: Option<String> = self
            .conn
            .query_row("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit_events'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if legacy.is_none() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut q = tx.prepare(
                "SELECT seq, ts, prev_hash, hash, id, category, type, outcome, actor_type, actor_id, client_ip,
                 target_type, target_id, customer_id, team_id, user_id, virtual_key_id, request_id, details
                 FROM audit_events ORDER BY seq",
            )?;
            let mut rows = q.query([])?;
            let mut w = SegmentWriter::default();
            let mut seg: Option<(i64, Vec<u8>)> = None;
            let mut last: (i64, Vec<u8>) = (0, Vec::new());
            while let Some(r) = rows.next()? {
                let (seq, ts, prev, hash): (i64, i64, Vec<u8>, Vec<u8>) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                let details: String = r.get(18)?;
                let event = AuditEvent {
                    id: r.get(4)?,
                    timestamp_ms: ts,
                    category: r.get(5)?,
                    r#type: r.get(6)?,
                    outcome: r.get(7)?,
                    actor_type: r.get(8)?,
                    actor_id: r.get(9)?,
                    client_ip: r.get(10)?,
                    target_type: r.get(11)?,
                    target_id: r.get(12)?,
                    customer_id: r.get(13)?,
                    team_id: r.get(14)?,
                    user_id: r.get(15)?,
                    virtual_key_id: r.get(16)?,
                    request_id: r.get(17)?,
                    details: serde_json::value::RawValue::from_string(details)
                        .unwrap_or_else(|e| crate::audit::event::details(&format!("unreadable details: {e}"))),
                };
                // A gap (rows removed by hand) starts a new segment: positions are sequence numbers.
                if w.len() == SEGMENT_RECORDS || (w.len() > 0 && seq != last.0 + 1) {
                    flush_segment(&tx, &mut w, seg.take(), &last)?;
                }
                if w.len() == 0 {
                    seg = Some((seq, prev));
                }
                let mut h = [0u8; 32];
                h.copy_from_slice(&hash[..hash.len().min(32)]);
                w.push(ts, &event.canonical(), &h);
                last = (seq, hash);
            }
            if w.len() > 0 {
                flush_segment(&tx, &mut w, seg.take(), &last)?;
            }
        }
        // Postings written before the index covered categories, types and outcomes are rebuilt.
        tx.execute_batch("DROP TABLE audit_events; DELETE FROM audit_postings; DELETE FROM audit_index_state;")?;
        tx.commit()?;
        Ok(())
    }

    /// Appends a batch in one transaction, each record chained to the one before.
    pub fn append_audit<R: Auditable>(&mut self, events: &[R], hmac_key: Option<&[u8]>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let result = self.try_append_audit(events, hmac_key);
        if result.is_err() {
            // The batch is rolled back: forget the postings it noted.
            if let Err(e) = self.load_audit_tail() {
                tracing::error!(error = %e, "cannot rebuild the audit index after a failed batch");
            }
        }
        result
    }

    fn try_append_audit<R: Auditable>(&mut self, events: &[R], hmac_key: Option<&[u8]>) -> Result<(), StoreError> {
        // Taken, not copied: a batch that fails leaves it unknown, to be read again.
        let (mut seq, mut prev) = match self.audit_next.take() {
            Some(next) => next,
            None => self.read_audit_next()?,
        };
        let tx = self.conn.transaction()?;
        let mut w = SegmentWriter::default();
        for chunk in events.chunks(SEGMENT_RECORDS) {
            let (first, chained_to) = (seq, prev.clone());
            for e in chunk {
                let hash =
                    w.push_with(e.timestamp_ms(), |out| e.write_canonical(out), |c| link_bytes(&prev, c, hmac_key));
                self.audit_tail.add(&tx, seq, e.index_values())?;
                prev.clear();
                prev.extend_from_slice(&hash);
                seq += 1;
            }
            flush_segment(&tx, &mut w, Some((first, chained_to)), &(seq - 1, prev.clone()))?;
        }
        tx.commit()?;
        self.audit_next = Some((seq, prev));
        Ok(())
    }

    /// Removes records older than `cutoff_ms`, oldest first and only as a contiguous prefix of
    /// the chain (up to the first record young enough to keep), keeping the last removed
    /// record's hash as the new anchor. Returns how many went.
    pub fn apply_retention(&mut self, cutoff_ms: i64) -> Result<u64, StoreError> {
        // Retention rewrites and removes segments: the head is read again afterwards rather
        // than reasoned about.
        self.audit_next = None;
        let mut removed = 0;
        loop {
            let tx = self.conn.transaction()?;
            let rows: Vec<(SegmentRow, i64, i64)> = {
                let mut q = tx.prepare(&format!(
                    "SELECT {SEGMENT_COLUMNS}, min_ts, max_ts FROM audit_segments ORDER BY first_seq LIMIT ?1"
                ))?;
                q.query_map([RETENTION_BATCH], |r| Ok((segment_row(r)?, r.get(5)?, r.get(6)?)))?
                    .collect::<Result<_, _>>()?
            };
            let batch = rows.len() as i64;
            let mut cut: Option<(i64, Vec<u8>)> = None;
            let mut reached_young = false;
            for (row, min_ts, max_ts) in rows {
                if max_ts < cutoff_ms {
                    tx.execute("DELETE FROM audit_segments WHERE first_seq = ?1", [row.first_seq])?;
                    removed += (row.last_seq - row.first_seq + 1) as u64;
                    cut = Some((row.last_seq, row.last_hash));
                    continue;
                }
                reached_young = true;
                if min_ts < cutoff_ms {
                    // Cut through this segment: keep it from its first young record on; it
                    // still ends where it ended.
                    let end = (row.last_seq, row.last_hash.clone());
                    let seg = Decoded::of(row)?;
                    let keep = (0..seg.records.len())
                        .find(|&i| seg.records.entry(i).is_some_and(|e| e.ts >= cutoff_ms))
                        .unwrap_or(seg.records.len());
                    if keep > 0 {
                        let last_gone = seg.records.entry(keep - 1).map(|e| e.hash.to_vec()).unwrap_or_default();
                        let gone_seq = seg.first_seq + keep as i64 - 1;
                        let mut w = seg.records.suffix(keep);
                        tx.execute("DELETE FROM audit_segments WHERE first_seq = ?1", [seg.first_seq])?;
                        flush_segment(&tx, &mut w, Some((gone_seq + 1, last_gone.clone())), &end)?;
                        removed += keep as u64;
                        cut = Some((gone_seq, last_gone));
                    }
                }
                break;
            }
            if let Some((seq, hash)) = &cut {
                tx.execute(
                    "INSERT INTO audit_checkpoint VALUES (1, ?1, ?2, ?3) ON CONFLICT (id) DO UPDATE SET seq = ?1, hash = ?2, removed_at = ?3",
                    params![seq, hash, cutoff_ms],
                )?;
                // Buckets wholly removed; the one cut through keeps postings of gone records,
                // which queries skip (they look records up by sequence number).
                tx.execute("DELETE FROM audit_postings WHERE bucket < ?1", [bucket_of(seq + 1)])?;
            }
            tx.commit()?;
            if reached_young || batch < RETENTION_BATCH {
                return Ok(removed);
            }
        }
    }

    /// Walks the chain (or the part of it between two times) and names the first broken link.
    pub fn verify_audit(
        &self,
        from_ms: Option<i64>,
        to_ms: Option<i64>,
        hmac_key: Option<&[u8]>,
    ) -> Result<Verification, StoreError> {
        let (from, to) = (from_ms.unwrap_or(i64::MIN), to_ms.unwrap_or(i64::MAX));
        // The segments between the first and the last one holding a record of the range: all
        // of them, so that one removed from the middle is noticed.
        let (lo, hi): (Option<i64>, Option<i64>) = self.conn.query_row(
            "SELECT min(first_seq), max(first_seq) FROM audit_segments WHERE max_ts >= ?1 AND min_ts <= ?2",
            [from, to],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (Some(lo), Some(hi)) = (lo, hi) else { return Ok(Verification { checked: 0, first_broken: None }) };
        // A whole-chain walk also checks the first record against the anchor: zeros, or the last
        // record retention removed. Anything else means records were removed by hand.
        let mut expected_prev: Option<Vec<u8>> =
            if from_ms.is_none() { Some(self.audit_cut()?.map(|c| c.1).unwrap_or_else(|| vec![0; 32])) } else { None };
        let mut q = self.conn.prepare(&format!(
            "SELECT {SEGMENT_COLUMNS} FROM audit_segments WHERE first_seq >= ?1 AND first_seq <= ?2 ORDER BY first_seq"
        ))?;
        let mut checked = 0;
        let rows = q.query_map([lo, hi], segment_row)?;
        for row in rows {
            let row = row?;
            let broken = |checked: u64, seq: i64, id: String, why: &str| {
                Ok(Verification { checked, first_broken: Some((seq, id, why.to_string())) })
            };
            let removed = "its prev_hash is not the previous record's hash (a record was removed or reordered)";
            let (first, last_seq, last_hash) = (row.first_seq, row.last_seq, row.last_hash.clone());
            let seg = match Decoded::of(row) {
                Ok(s) => s,
                Err(_) => {
                    return broken(
                        checked,
                        first,
                        "?".into(),
                        "its segment cannot be read (the stored bytes were altered)",
                    );
                }
            };
            let mut prev = seg.prev_hash.clone();
            for i in 0..seg.records.len() {
                let Some(entry) = seg.records.entry(i) else { break };
                let seq = first + i as i64;
                checked += 1;
                if i == 0
                    && let Some(p) = &expected_prev
                    && *p != prev
                {
                    return broken(checked, seq, claimed_id(entry.canonical), removed);
                }
                if link_bytes(&prev, entry.canonical, hmac_key)[..] != *entry.hash {
                    let why = "its content does not match its hash (the record was altered)";
                    return broken(checked, seq, claimed_id(entry.canonical), why);
                }
                prev = entry.hash.to_vec();
            }
            if last_seq != first + seg.records.len() as i64 - 1 || prev != last_hash {
                return broken(
                    checked,
                    last_seq,
                    "?".into(),
                    "its segment's bounds do not match its records (altered)",
                );
            }
            expected_prev = Some(prev);
        }
        Ok(Verification { checked, first_broken: None })
    }

    /// Events matching `q`, newest first, at most `q.limit + 1` (one more tells there is a next page).
    pub fn query_audit(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        match q.indexed() {
            Some((field, value)) => self.query_audit_indexed(q, field, value),
            None => self.query_audit_scan(q),
        }
    }

    /// Newest segments first, skipping those wholly outside the time range.
    fn query_audit_scan(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let want = q.limit + 1;
        let before = q.before_seq.unwrap_or(i64::MAX);
        let mut out = Vec::with_capacity(want);
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {SEGMENT_COLUMNS} FROM audit_segments WHERE first_seq < ?1 AND max_ts >= ?2 AND min_ts <= ?3
             ORDER BY first_seq DESC"
        ))?;
        let rows =
            stmt.query_map(params![before, q.from_ms.unwrap_or(i64::MIN), q.to_ms.unwrap_or(i64::MAX)], segment_row)?;
        for row in rows {
            let seg = Decoded::of(row?)?;
            for i in (0..seg.records.len()).rev() {
                let seq = seg.first_seq + i as i64;
                if seq >= before {
                    continue;
                }
                if let Some(e) = seg.event(seq, q)? {
                    out.push(e);
                    if out.len() == want {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Walks the index newest first and reads the records it names (a segment decoded once for
    /// all its records), every filter applied to the record itself.
    fn query_audit_indexed(&self, q: &AuditQuery, field: Field, value: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let want = q.limit + 1;
        let before = q.before_seq.unwrap_or(i64::MAX);
        let mut out = Vec::with_capacity(want);
        let mut current: Option<Decoded> = None;
        let mut find = self.conn.prepare_cached(&format!(
            "SELECT {SEGMENT_COLUMNS} FROM audit_segments WHERE first_seq <= ?1 ORDER BY first_seq DESC LIMIT 1"
        ))?;
        let mut take = |seqs: Vec<i64>, out: &mut Vec<StoredEvent>| -> Result<bool, StoreError> {
            for seq in seqs {
                if !current.as_ref().is_some_and(|c| c.contains(seq)) {
                    current = find.query_row([seq], segment_row).optional()?.map(Decoded::of).transpose()?;
                }
                let Some(seg) = current.as_ref().filter(|c| c.contains(seq)) else { continue };
                if let Some(e) = seg.event(seq, q)? {
                    out.push(e);
                    if out.len() == want {
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        };
        if !take(self.audit_tail.newest_first(field, value, before), &mut out)? {
            return Ok(out);
        }
        let from_bucket = (self.audit_tail.bucket() - 1).min(bucket_of(before.saturating_sub(1)));
        sealed_newest_first(&self.conn, field, value, from_bucket, |seqs| {
            take(seqs.into_iter().filter(|&s| s < before).collect(), &mut out)
        })?;
        Ok(out)
    }
}

/// Writes `w`'s records as one segment starting at `start` = (first seq, hash it chains to)
/// and ending at `end` = (last seq, last hash).
fn flush_segment(
    tx: &Transaction<'_>,
    w: &mut SegmentWriter,
    start: Option<(i64, Vec<u8>)>,
    end: &(i64, Vec<u8>),
) -> Result<(), StoreError> {
    let Some((first, prev)) = start else { return Ok(()) };
    if w.len() == 0 {
        return Ok(());
    }
    let (min_ts, max_ts) = w.ts_range();
    let blob = w.finish();
    tx.prepare_cached("INSERT INTO audit_segments VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
        .execute(params![first, end.0, min_ts, max_ts, prev, end.1, blob])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::audit_segment::Segment;
    use serde_json::json;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("a.db")).unwrap();
        (dir, s)
    }

    /// Edits the stored records of the segment holding `seq` as someone with the database file
    /// could: `edit` gets them (ts, bytes, hash) and `seq`'s index; the segment starts at
    /// `first_seq + shift` afterwards.
    fn tamper(s: &Store, seq: i64, shift: i64, edit: impl FnOnce(&mut Vec<(i64, Vec<u8>, [u8; 32])>, usize)) {
        let (first, blob): (i64, Vec<u8>) = s
            .conn
            .query_row(
                "SELECT first_seq, records FROM audit_segments WHERE first_seq <= ?1 ORDER BY first_seq DESC LIMIT 1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let seg = Segment::decode(first, &blob).unwrap();
        let mut entries: Vec<_> = (0..seg.len())
            .map(|i| {
                let e = seg.entry(i).unwrap();
                (e.ts, e.canonical.to_vec(), <[u8; 32]>::try_from(e.hash).unwrap())
            })
            .collect();
        edit(&mut entries, (seq - first) as usize);
        let mut w = SegmentWriter::default();
        for (ts, bytes, hash) in &entries {
            w.push(*ts, bytes, hash);
        }
        s.conn
            .execute(
                "UPDATE audit_segments SET records = ?2, first_seq = ?3 WHERE first_seq = ?1",
                params![first, w.finish(), first + shift],
            )
            .unwrap();
    }

    /// Replaces the first `from` in the record's bytes (binary: keep the length).
    fn replace(bytes: &mut [u8], from: &str, to: &str) {
        assert_eq!(from.len(), to.len());
        let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect("present");
        bytes[at..at + to.len()].copy_from_slice(to.as_bytes());
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
    fn a_refused_batch_is_written_later_in_sequence_and_the_chain_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut s = Store::open(&path).unwrap();
        s.conn.busy_timeout(std::time::Duration::from_millis(10)).unwrap();
        let batch = |i: usize| -> Vec<_> {
            (0..3).map(|j| AuditEvent::system("security", "t", "success", json!({ "i": i, "j": j }))).collect()
        };
        s.append_audit(&batch(0), None).unwrap();
        // Another writer holds the file: the batch is refused and nothing of it stays.
        let other = rusqlite::Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(s.append_audit(&batch(1), None).is_err());
        other.execute_batch("COMMIT").unwrap();
        s.append_audit(&batch(1), None).unwrap();
        s.append_audit(&batch(2), None).unwrap();
        assert_eq!(s.verify_audit(None, None, None).unwrap(), Verification { checked: 9, first_broken: None });
        let seqs: Vec<i64> = all_pages(&s, AuditQuery { limit: 4, ..Default::default() });
        assert_eq!(seqs, (1..=9).rev().collect::<Vec<_>>());
    }

    #[test]
    fn an_altered_or_deleted_row_is_named() {
        let (_d, mut s) = store();
        let batch: Vec<_> =
            (0..5).map(|j| AuditEvent::system("usage", "api_request", "success", json!({ "j": j }))).collect();
        s.append_audit(&batch, None).unwrap();
        let (ok, failed) = ("success", "failure");
        tamper(&s, 3, 0, |e, i| replace(&mut e[i].1, ok, failed));
        let v = s.verify_audit(None, None, None).unwrap();
        assert_eq!(v.first_broken.as_ref().map(|b| (b.0, b.1.as_str())), Some((3, batch[2].id.as_str())));
        tamper(&s, 3, 0, |e, i| replace(&mut e[i].1, failed, ok));
        assert_eq!(s.verify_audit(None, None, None).unwrap().first_broken, None);
        // Record 2 removed: the one after it no longer chains, and is named by its id.
        tamper(&s, 2, 0, |e, i| {
            e.remove(i);
        });
        let v = s.verify_audit(None, None, None).unwrap();
        assert_eq!(v.first_broken.as_ref().map(|b| (b.0, b.1.as_str())), Some((2, batch[2].id.as_str())));
        // A blob that no longer decompresses is named too.
        s.conn.execute("UPDATE audit_segments SET records = x'00ff'", []).unwrap();
        assert_eq!(s.verify_audit(None, None, None).unwrap().first_broken.map(|b| b.0), Some(1));
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
        tamper(&s, 11, 1, |e, i| {
            e.remove(i);
        });
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
        let before = s.audit_head().unwrap().map_or(0, |h| h.0);
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
        ((before + 1)..).zip(all).collect()
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

    #[test]
    fn retention_removes_whole_segments_then_cuts_through_one_and_time_ranges_still_verify() {
        let (_d, mut s) = store();
        let batch: Vec<_> = (0..300)
            .map(|i| {
                let mut e = AuditEvent::system("usage", "api_request", "success", json!({ "i": i }));
                e.timestamp_ms = i * 1000;
                e
            })
            .collect();
        // 128 + 128 + 44 records: the cut falls inside the second segment.
        s.append_audit(&batch, Some(b"k")).unwrap();
        assert_eq!(s.apply_retention(200_000).unwrap(), 200);
        assert_eq!(s.verify_audit(None, None, Some(b"k")).unwrap(), Verification { checked: 100, first_broken: None });
        let q = AuditQuery { from_ms: Some(250_000), to_ms: Some(252_000), limit: 10, ..Default::default() };
        assert_eq!(all_pages(&s, q), vec![253, 252, 251]);
        let v = s.verify_audit(Some(260_000), Some(280_000), Some(b"k")).unwrap();
        assert_eq!(v.first_broken, None);
        assert!(v.checked >= 21, "{v:?}");
        let oldest = all_pages(&s, AuditQuery { limit: 1000, ..Default::default() });
        assert_eq!((oldest.len(), oldest.last().copied()), (100, Some(201)));
    }

    #[test]
    fn a_store_of_the_first_layout_moves_its_rows_into_segments_and_still_verifies() {
        let (d, s) = store();
        // The first layout: one row per record, hashed over the same canonical bytes.
        s.conn.execute_batch(MIGRATION).unwrap();
        let mut prev = vec![0u8; 32];
        let mut events = Vec::new();
        for i in 0..200 {
            let mut e = AuditEvent::system("usage", "api_request", "success", json!({ "i": i }));
            e.user_id = Some(format!("u{}", i % 3));
            let hash = crate::audit::event::link(&prev, &e, None);
            s.conn
                .execute(
                    "INSERT INTO audit_events VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
                    params![
                        i + 1, e.id, e.timestamp_ms, e.category, e.r#type, e.outcome, e.actor_type, e.actor_id,
                        e.client_ip, e.target_type, e.target_id, e.customer_id, e.team_id, e.user_id,
                        e.virtual_key_id, e.request_id, e.details.get(), prev, hash
                    ],
                )
                .unwrap();
            prev = hash;
            events.push((i + 1, e));
        }
        drop(s);
        let s = Store::open(&d.path().join("a.db")).unwrap();
        assert_eq!(s.verify_audit(None, None, None).unwrap(), Verification { checked: 200, first_broken: None });
        let q = AuditQuery { user_id: Some("u1".into()), limit: 50, ..Default::default() };
        assert_eq!(all_pages(&s, q), expected(&events, |e| e.user_id.as_deref() == Some("u1")));
    }
}
