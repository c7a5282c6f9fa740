//! Reject spilling: the bound on the rejects an open batch holds in memory ([`Held`]), and the
//! gzip CSV parts the rejects of a file that would pass it are rendered into ([`CsvParts`]) and
//! uploaded as they are cut (see "A micro-batch" in the `redshift` module docs).
//!
//! It decides nothing about when a file spills (the sink does) nor how the parts are loaded
//! (the commit's plan does); it must not touch the ledger or run statements.

use super::batch::{OpenBatch, OpenFile};
use super::literal::{csv_line, Lit};
use super::Inner;
use crate::validate::Reject;
use crate::warehouse::stage::GzParts;
use crate::warehouse::WarehouseError;

/// Rejects held in memory: how many, and roughly how many bytes (their text plus the struct),
/// which is about what they take rendered as CSV. Also the bound on them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) rows: usize,
    pub(super) bytes: usize,
}

impl Held {
    pub(super) fn of(rejects: &[Reject]) -> Held {
        let text = |r: &Reject| {
            r.reason.len()
                + r.column.as_ref().map_or(0, String::len)
                + r.value.as_ref().map_or(0, String::len)
                + r.raw.as_ref().map_or(0, String::len)
        };
        Held { rows: rejects.len(), bytes: rejects.iter().map(|r| std::mem::size_of::<Reject>() + text(r)).sum() }
    }

    pub(super) fn plus(self, o: Held) -> Held {
        Held { rows: self.rows.saturating_add(o.rows), bytes: self.bytes.saturating_add(o.bytes) }
    }

    pub(super) fn within(self, bound: Held) -> bool {
        self.rows <= bound.rows && self.bytes <= bound.bytes
    }
}

/// Rows rendered as literals into gzip CSV parts (the form COPY … CSV reads, as
/// `RowSet::as_copy` in `plan` writes it), cut at `max_raw_bytes` uncompressed.
/// Rows of literals (rejects, ledger rows) as CSV lines into [`GzParts`].
pub(super) struct CsvParts {
    parts: GzParts,
    line: Vec<u8>,
}

impl CsvParts {
    pub(super) fn new(max_raw_bytes: usize) -> CsvParts {
        CsvParts { parts: GzParts::new(max_raw_bytes), line: Vec::new() }
    }

    /// Adds one row; returns the part it finished, if it did.
    pub(super) fn push(&mut self, values: &[Lit]) -> std::io::Result<Option<Vec<u8>>> {
        self.line.clear();
        csv_line(values, &mut self.line);
        Ok(self.parts.push_line(&self.line)?.map(|p| p.bytes))
    }

    /// Finishes the open part, if it has rows.
    pub(super) fn finish(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.parts.finish()?.map(|p| p.bytes))
    }
}
/// Uploads one spilled reject part of the open file. The key is recorded before the upload,
/// so an object a failed upload may still have left is deleted with the file.
pub(super) async fn upload_reject_part(
    inner: &Inner,
    batch: &mut OpenBatch,
    f: &mut OpenFile,
    body: Vec<u8>,
) -> Result<(), WarehouseError> {
    let key = inner.staging.key(batch.id, &format!("rejects-{:05}.csv.gz", batch.next_part));
    batch.next_part += 1;
    f.reject_parts.push(key.clone());
    inner.put(&key, body).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::warehouse::redshift::fixtures::entry;

    #[test]
    fn the_reject_bound_counts_rows_and_bytes() {
        let small = entry("a.csv", 3, 10).rejects;
        let h = Held::of(&small);
        assert_eq!(h.rows, 3);
        assert_eq!(h.bytes, 3 * (std::mem::size_of::<Reject>() + "not an email".len() + "user_email".len() + 2 + 10));
        let bound = Held { rows: 5, bytes: 10_000 };
        assert!(h.within(bound) && h.plus(Held::of(&small[..2])).within(bound));
        assert!(!h.plus(h).within(bound), "6 rejects pass 5");
        assert!(!Held::of(&entry("a.csv", 1, 20_000).rejects).within(bound), "one big reject passes the bytes");
    }
}
