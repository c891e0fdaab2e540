//! The audit trail's index: per bucket of 65,536 sequence numbers, which records name a given
//! user, team, customer, key, category, type or outcome. Owns the postings only, never records.
//!
//! Why not SQLite indexes: with thousands of users and keys every record lands on a random
//! leaf page of each index, so a batch dirties (and the WAL rewrites) about one 4 KiB page per
//! record per index, and inserts slowed to 13k records/s at 10M rows. Here the open bucket's
//! postings live in memory (rebuilt from its records at open) and a full bucket is written
//! once, sorted, as one row per value: appends only. A query reads one row per bucket.

use rusqlite::{OptionalExtension, Transaction, params};
use rustc_hash::FxHashMap;

use crate::audit::event::IndexValues;

/// A bucket holds `1 << BUCKET_BITS` sequence numbers, so an offset in it fits a u16. Unit
/// tests use buckets of 16 so that a few hundred records cross many of them.
#[cfg(not(test))]
pub(super) const BUCKET_BITS: u32 = 16;
#[cfg(test)]
pub(super) const BUCKET_BITS: u32 = 4;

pub(super) const MIGRATION: &str = "
    DROP INDEX IF EXISTS audit_user;
    DROP INDEX IF EXISTS audit_team;
    DROP INDEX IF EXISTS audit_customer;
    DROP INDEX IF EXISTS audit_key;
    CREATE TABLE audit_postings (
        bucket INTEGER NOT NULL, field INTEGER NOT NULL, entity TEXT NOT NULL, offsets BLOB NOT NULL,
        PRIMARY KEY (bucket, field, entity)) WITHOUT ROWID;
    CREATE TABLE audit_index_state (id INTEGER PRIMARY KEY CHECK (id = 1), sealed_below INTEGER NOT NULL);
";

/// The fields a query can filter on through the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    User = 0,
    Team = 1,
    Customer = 2,
    VirtualKey = 3,
    Category = 4,
    Type = 5,
    Outcome = 6,
}

const FIELDS: [Field; 7] =
    [Field::User, Field::Team, Field::Customer, Field::VirtualKey, Field::Category, Field::Type, Field::Outcome];

impl Field {
    fn of(self, v: IndexValues<'_>) -> Option<&str> {
        match self {
            Field::User => v.user,
            Field::Team => v.team,
            Field::Customer => v.customer,
            Field::VirtualKey => v.virtual_key,
            Field::Category => Some(v.category),
            Field::Type => Some(v.r#type),
            Field::Outcome => Some(v.outcome),
        }
    }
}

pub(super) fn bucket_of(seq: i64) -> i64 {
    seq >> BUCKET_BITS
}

fn offset_of(seq: i64) -> u16 {
    (seq & ((1 << BUCKET_BITS) - 1)) as u16
}

/// The open bucket's postings, in memory; every other bucket's are in `audit_postings`.
#[derive(Debug, Default)]
pub(super) struct Tail {
    bucket: i64,
    postings: [FxHashMap<Box<str>, Vec<u16>>; 7],
}

impl Tail {
    /// Notes the values `v` of the record stored as `seq`; writes the open bucket first when
    /// `seq` starts a new one (inside the caller's transaction, so both land or neither).
    pub(super) fn add(&mut self, tx: &Transaction<'_>, seq: i64, v: IndexValues<'_>) -> rusqlite::Result<()> {
        if bucket_of(seq) != self.bucket {
            self.seal_to(tx, bucket_of(seq))?;
        }
        for f in FIELDS {
            if let Some(id) = f.of(v) {
                self.note(f, id, seq);
            }
        }
        Ok(())
    }

    fn note(&mut self, f: Field, id: &str, seq: i64) {
        let map = &mut self.postings[f as usize];
        match map.get_mut(id) {
            Some(list) => list.push(offset_of(seq)),
            None => {
                map.insert(id.into(), vec![offset_of(seq)]);
            }
        }
    }

    /// Writes the open bucket's postings sorted by key (so the B-tree only appends) and opens `next`.
    pub(super) fn seal_to(&mut self, tx: &Transaction<'_>, next: i64) -> rusqlite::Result<()> {
        let mut ins = tx.prepare_cached("INSERT OR REPLACE INTO audit_postings VALUES (?1, ?2, ?3, ?4)")?;
        let mut blob = Vec::new();
        for f in FIELDS {
            let mut entries: Vec<_> = self.postings[f as usize].drain().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (entity, offsets) in entries {
                blob.clear();
                blob.extend(offsets.iter().flat_map(|o| o.to_le_bytes()));
                ins.execute(params![self.bucket, f as i64, &*entity, &blob])?;
            }
        }
        tx.execute(
            "INSERT INTO audit_index_state VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET sealed_below = ?1",
            [next],
        )?;
        self.bucket = next;
        Ok(())
    }

    /// The sequence numbers in the open bucket naming `id` in `f`, below `before`, newest first.
    pub(super) fn newest_first(&self, f: Field, id: &str, before: i64) -> Vec<i64> {
        let base = self.bucket << BUCKET_BITS;
        let Some(list) = self.postings[f as usize].get(id) else { return Vec::new() };
        list.iter().rev().map(|&o| base + i64::from(o)).filter(|&s| s < before).collect()
    }

    pub(super) fn bucket(&self) -> i64 {
        self.bucket
    }

    /// An empty open bucket.
    pub(super) fn open_at(bucket: i64) -> Tail {
        Tail { bucket, ..Default::default() }
    }
}

/// Every bucket below this one is written to `audit_postings`.
pub(super) fn sealed_below(conn: &rusqlite::Connection) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT sealed_below FROM audit_index_state WHERE id = 1", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// The sealed buckets' sequence numbers naming `id` in `f`, bucket by bucket from `from_bucket`
/// down to the oldest, each bucket's newest first. Stops when `visit` returns false.
pub(super) fn sealed_newest_first(
    conn: &rusqlite::Connection,
    f: Field,
    id: &str,
    from_bucket: i64,
    mut visit: impl FnMut(Vec<i64>) -> Result<bool, super::StoreError>,
) -> Result<(), super::StoreError> {
    let oldest: Option<i64> = conn.query_row("SELECT min(bucket) FROM audit_postings", [], |r| r.get(0))?;
    let Some(oldest) = oldest else { return Ok(()) };
    let mut q =
        conn.prepare_cached("SELECT offsets FROM audit_postings WHERE bucket = ?1 AND field = ?2 AND entity = ?3")?;
    let mut b = from_bucket;
    while b >= oldest {
        let blob: Option<Vec<u8>> = q.query_row(params![b, f as i64, id], |r| r.get(0)).optional()?;
        if let Some(blob) = blob {
            let base = b << BUCKET_BITS;
            let seqs = blob.chunks_exact(2).rev().map(|c| base + i64::from(u16::from_le_bytes([c[0], c[1]]))).collect();
            if !visit(seqs)? {
                return Ok(());
            }
        }
        b -= 1;
    }
    Ok(())
}
