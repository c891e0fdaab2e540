//! How audit records sit in a segment: up to [`SEGMENT_RECORDS`] consecutive records, each its
//! timestamp, canonical bytes and hash, LZ4-compressed as one blob. Owns the byte layout only.
//!
//! Why segments: the cost of writing SQLite rows is the bytes (a 600-byte row a record measured
//! 3.8 µs; the same bytes as one row a batch, 3.2 µs; a tenth of the bytes, 0.2 µs), and
//! records of one gateway compress about tenfold. Small segments keep a query that needs one
//! record from decompressing much more than it shows.

/// Records per segment: a flush of N records writes ceil(N / this) rows.
pub(super) const SEGMENT_RECORDS: usize = 128;

/// One record inside a decoded segment.
pub(super) struct Entry<'a> {
    pub ts: i64,
    pub canonical: &'a [u8],
    pub hash: &'a [u8],
}

/// Builds a segment's raw (uncompressed) bytes.
#[derive(Default)]
pub(super) struct SegmentWriter {
    raw: Vec<u8>,
    count: usize,
    min_ts: i64,
    max_ts: i64,
}

impl SegmentWriter {
    /// Appends a record whose bytes and hash are already known (migration, retention, tests).
    pub fn push(&mut self, ts: i64, canonical: &[u8], hash: &[u8; 32]) {
        self.push_with(ts, |out| out.extend_from_slice(canonical), |_| *hash);
    }

    /// Appends one record whose canonical bytes `write` produces, chained by `link` (given
    /// those bytes, returns the record's hash, which is returned too). No copy of the bytes is made.
    pub fn push_with(
        &mut self,
        ts: i64,
        write: impl FnOnce(&mut Vec<u8>),
        link: impl FnOnce(&[u8]) -> [u8; 32],
    ) -> [u8; 32] {
        if self.count == 0 {
            (self.min_ts, self.max_ts) = (ts, ts);
        }
        self.min_ts = self.min_ts.min(ts);
        self.max_ts = self.max_ts.max(ts);
        let start = self.raw.len();
        self.raw.extend_from_slice(&[0; 4]);
        self.raw.extend_from_slice(&ts.to_le_bytes());
        write(&mut self.raw);
        let len = self.raw.len() - start - 12;
        self.raw[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        let hash = link(&self.raw[start + 12..]);
        self.raw.extend_from_slice(&hash);
        self.count += 1;
        hash
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn ts_range(&self) -> (i64, i64) {
        (self.min_ts, self.max_ts)
    }

    /// The compressed blob; the writer is empty again afterwards.
    pub fn finish(&mut self) -> Vec<u8> {
        let blob = lz4_flex::compress_prepend_size(&self.raw);
        self.raw.clear();
        self.count = 0;
        blob
    }
}

/// A segment's records, decompressed.
pub(super) struct Segment {
    raw: Vec<u8>,
    /// Where each entry starts in `raw`.
    starts: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
#[error("audit segment starting at record {first_seq} cannot be read: {why}")]
pub struct SegmentError {
    pub first_seq: i64,
    pub why: String,
}

impl Segment {
    /// Decodes a stored blob, checking every length against the bytes (the blob may have been
    /// edited by hand: it is evidence, not trusted input).
    pub fn decode(first_seq: i64, blob: &[u8]) -> Result<Segment, SegmentError> {
        let err = |why: String| SegmentError { first_seq, why };
        let raw = lz4_flex::decompress_size_prepended(blob).map_err(|e| err(e.to_string()))?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < raw.len() {
            let len = raw
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| err(format!("truncated entry header at byte {at}")))?;
            let end = at + 4 + 8 + len + 32;
            if end > raw.len() {
                return Err(err(format!("entry at byte {at} runs past the segment's end")));
            }
            starts.push(at);
            at = end;
        }
        Ok(Segment { raw, starts })
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn entry(&self, i: usize) -> Option<Entry<'_>> {
        let at = *self.starts.get(i)?;
        let b = &self.raw[at..];
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let ts = i64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]);
        Some(Entry { ts, canonical: &b[12..12 + len], hash: &b[12 + len..12 + len + 32] })
    }

    /// A copy holding only the entries from `from` on (retention trims a segment's old prefix).
    pub fn suffix(&self, from: usize) -> SegmentWriter {
        let mut w = SegmentWriter::default();
        for i in from..self.len() {
            if let Some(e) = self.entry(i) {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(e.hash);
                w.push(e.ts, e.canonical, &hash);
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_reads_back_what_was_written_and_refuses_a_truncated_blob() {
        let mut w = SegmentWriter::default();
        w.push(5, b"{\"a\":1}", &[1; 32]);
        w.push(3, b"{}", &[2; 32]);
        assert_eq!(w.ts_range(), (3, 5));
        let blob = w.finish();
        let s = Segment::decode(10, &blob).unwrap();
        assert_eq!(s.len(), 2);
        let e = s.entry(1).unwrap();
        assert_eq!((e.ts, e.canonical, e.hash), (3, &b"{}"[..], &[2u8; 32][..]));
        assert!(s.entry(2).is_none());
        assert!(Segment::decode(10, &blob[..blob.len() - 3]).is_err());
    }
}
