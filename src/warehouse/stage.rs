//! Staging parts for warehouses that bulk-load from object storage (Redshift `COPY … MANIFEST`).
//!
//! Owns the byte format such a COPY reads: gzip CSV, one line per row, the contract columns
//! then the provenance columns (`_file_key`, `_file_version`, `_line`, `_batch_id`), no header.
//! NULL is an empty unquoted field; empty strings never reach staging (the contract turns an
//! empty optional value into NULL), so `EMPTYASNULL` loses nothing. Parts are cut at a size
//! limit so memory stays bounded; a small file's lines may instead be held raw
//! ([`PartWriter::coalescing`]) for the caller to append to a part shared with other files
//! ([`GzParts::push_lines`]), each part one gzip stream. The caller uploads each finished part
//! and writes the manifest ([`manifest`]) last. It does no I/O itself.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::validate::RowChunk;

/// One finished part: gzip bytes ready to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedPart {
    pub index: usize,
    pub bytes: Vec<u8>,
    pub rows: u64,
}

/// Gzip parts of CSV lines, each finished once it holds `max_raw_bytes` of uncompressed text:
/// the one writer of every object a COPY reads (staging rows, spilled rejects, ledger rows).
pub struct GzParts {
    max_raw_bytes: usize,
    enc: Option<GzEncoder<Vec<u8>>>,
    raw: usize,
    rows: u64,
    next_index: usize,
}

impl GzParts {
    /// `max_raw_bytes`: uncompressed bytes after which a part is finished (`usize::MAX`: one part).
    pub fn new(max_raw_bytes: usize) -> GzParts {
        GzParts { max_raw_bytes: max_raw_bytes.max(1), enc: None, raw: 0, rows: 0, next_index: 0 }
    }

    /// Adds one whole CSV line (its `\n` included); returns the part it finished, if it did.
    pub fn push_line(&mut self, line: &[u8]) -> std::io::Result<Option<StagedPart>> {
        let enc = self.enc.get_or_insert_with(|| GzEncoder::new(Vec::new(), Compression::fast()));
        enc.write_all(line)?;
        self.raw += line.len();
        self.rows += 1;
        if self.raw >= self.max_raw_bytes {
            return self.finish();
        }
        Ok(None)
    }

    /// Adds `rows` whole CSV lines at once (a small file's, see [`Buffered`]); returns the part
    /// it finished, if it did. The cut falls after the block, so a part passes `max_raw_bytes`
    /// by less than the block.
    pub fn push_lines(&mut self, lines: &[u8], rows: u64) -> std::io::Result<Option<StagedPart>> {
        if rows == 0 {
            return Ok(None);
        }
        let enc = self.enc.get_or_insert_with(|| GzEncoder::new(Vec::new(), Compression::fast()));
        enc.write_all(lines)?;
        self.raw += lines.len();
        self.rows += rows;
        if self.raw >= self.max_raw_bytes {
            return self.finish();
        }
        Ok(None)
    }

    /// Finishes the open part, if it has rows.
    pub fn finish(&mut self) -> std::io::Result<Option<StagedPart>> {
        let Some(enc) = self.enc.take() else { return Ok(None) };
        let part = StagedPart { index: self.next_index, bytes: enc.finish()?, rows: self.rows };
        self.next_index += 1;
        self.raw = 0;
        self.rows = 0;
        Ok(Some(part))
    }
}

/// Raw bytes below which a file's staging rows are held uncompressed (not gzip-encoded into
/// parts of its own) until the file ends, then appended to its batch's shared stream: see
/// [`PartWriter::coalescing`]. 8 MiB raw is about 60,000 rows of the built-in contract and 1–2
/// MB of gzip; a sink holds at most this much (plus one line) for its open file.
pub const SMALL_FILE_BYTES: usize = 8 << 20;

/// Staging rows of one file: contract columns, then provenance. Either into gzip parts of its
/// own ([`GzParts`]), or, while the file is small, held as raw CSV lines in memory so that the
/// batch can put several small files into one shared part ([`PartWriter::coalescing`]).
pub struct PartWriter {
    max_raw_bytes: usize,
    /// Below this many raw bytes the file's lines are held in `small`.
    small_bytes: usize,
    /// `None` once the file outgrew `small_bytes` (its lines then go to `parts`).
    small: Option<Buffered>,
    parts: GzParts,
    line: Vec<u8>,
}

/// A small file's staging rows, whole CSV lines as [`PartWriter`] encodes them, uncompressed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Buffered {
    pub lines: Vec<u8>,
    pub rows: u64,
}

/// How a file's staging rows ended: held whole (a small file, for the batch's shared stream),
/// or in parts of its own, the last of which this is (if it has rows).
#[derive(Debug, PartialEq, Eq)]
pub enum FileRows {
    Buffered(Buffered),
    Own(Option<StagedPart>),
}

/// Appends one CSV field: quoted when it holds a delimiter, quote, line break or edge space.
pub fn csv_field(out: &mut Vec<u8>, value: Option<&str>) {
    let Some(v) = value else { return };
    let needs_quotes = v.is_empty()
        || v.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
        || v.starts_with(' ')
        || v.ends_with(' ');
    if !needs_quotes {
        out.extend_from_slice(v.as_bytes());
        return;
    }
    out.push(b'"');
    for b in v.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Appends row `i` of `chunk` as one CSV line (its `\n` included): the contract columns,
/// then `_file_key`, `_file_version`, `_line`, `_batch_id`. The one encoding of a staging row.
pub fn staging_line(
    out: &mut Vec<u8>,
    chunk: &RowChunk,
    i: usize,
    file_key: &str,
    file_version: &str,
    batch_id: i64,
) -> std::io::Result<()> {
    for (c, v) in chunk.row(i).enumerate() {
        if c > 0 {
            out.push(b',');
        }
        csv_field(out, v);
    }
    for v in [file_key, file_version] {
        out.push(b',');
        csv_field(out, Some(v));
    }
    writeln!(out, ",{},{}", chunk.lines[i], batch_id)
}

impl PartWriter {
    /// Every row into parts of the file's own, each finished once it holds `max_raw_bytes`.
    pub fn new(max_raw_bytes: usize) -> PartWriter {
        PartWriter::coalescing(max_raw_bytes, 0)
    }

    /// Rows held uncompressed while they take less than `small_bytes` (at most `max_raw_bytes`);
    /// the line that reaches it moves them all, and every later row, into parts of the file's
    /// own as [`PartWriter::new`] writes them.
    pub fn coalescing(max_raw_bytes: usize, small_bytes: usize) -> PartWriter {
        let small_bytes = small_bytes.min(max_raw_bytes);
        PartWriter {
            max_raw_bytes,
            small_bytes,
            small: (small_bytes > 0).then(Buffered::default),
            parts: GzParts::new(max_raw_bytes),
            line: Vec::with_capacity(1024),
        }
    }

    /// Adds a chunk of one file's rows; returns the parts this finished.
    pub fn write_chunk(
        &mut self,
        chunk: &RowChunk,
        file_key: &str,
        file_version: &str,
        batch_id: i64,
    ) -> std::io::Result<Vec<StagedPart>> {
        let mut done = Vec::new();
        for i in 0..chunk.len() {
            if let Some(small) = self.small.as_mut() {
                staging_line(&mut small.lines, chunk, i, file_key, file_version, batch_id)?;
                small.rows += 1;
                if small.lines.len() < self.small_bytes {
                    continue;
                }
                // Outgrown: its lines so far go first into its own parts, cut at the limit.
                let held = self.small.take().expect("checked");
                done.extend(self.parts.push_lines(&held.lines, held.rows)?);
                continue;
            }
            self.line.clear();
            staging_line(&mut self.line, chunk, i, file_key, file_version, batch_id)?;
            done.extend(self.parts.push_line(&self.line)?);
        }
        Ok(done)
    }

    /// Whether the rows are still held (the file is small so far).
    pub fn is_small(&self) -> bool {
        self.small.is_some()
    }

    /// Ends the file: its held rows, or the last of its own parts. The writer starts over
    /// (empty, small again if it was made [`coalescing`](PartWriter::coalescing)).
    pub fn finish(&mut self) -> std::io::Result<FileRows> {
        match self.small.take() {
            Some(held) => {
                self.small = Some(Buffered::default());
                Ok(FileRows::Buffered(held))
            }
            None => {
                let last = self.parts.finish()?;
                *self = PartWriter::coalescing(self.max_raw_bytes, self.small_bytes);
                Ok(FileRows::Own(last))
            }
        }
    }
}

/// A COPY manifest naming every part as mandatory, so a part that is missing fails the load
/// instead of silently loading less.
pub fn manifest(urls: &[String]) -> String {
    let entries: Vec<serde_json::Value> =
        urls.iter().map(|u| serde_json::json!({ "url": u, "mandatory": true })).collect();
    serde_json::json!({ "entries": entries }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(b: &[u8]) -> String {
        let mut s = String::new();
        flate2::read::GzDecoder::new(b).read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn fields_are_quoted_only_when_needed_and_null_is_empty() {
        let mut out = Vec::new();
        for v in [Some("plain"), None, Some("a,b"), Some("say \"hi\""), Some("two\nlines"), Some(" edge"), Some("")] {
            csv_field(&mut out, v);
            out.push(b'|');
        }
        assert_eq!(String::from_utf8(out).unwrap(), "plain||\"a,b\"|\"say \"\"hi\"\"\"|\"two\nlines\"|\" edge\"|\"\"|");
    }

    #[test]
    fn rows_round_trip_through_parts_cut_at_the_limit() {
        let mut chunk = RowChunk::new(3);
        for i in 0..10u64 {
            let id = format!("e{i}");
            chunk.push_row(&[Some("acme"), Some(&id), if i % 2 == 0 { None } else { Some("x,\"y\"") }], i + 2);
        }
        let mut w = PartWriter::new(100);
        let mut parts = w.write_chunk(&chunk, "csv/acme/a b.csv", "sha256:ab", 7).unwrap();
        let FileRows::Own(last) = w.finish().unwrap() else { panic!("PartWriter::new holds no rows") };
        parts.extend(last);
        assert!(parts.len() > 1, "the limit cuts parts");
        assert_eq!(parts.iter().map(|p| p.index).collect::<Vec<_>>(), (0..parts.len()).collect::<Vec<_>>());
        assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), 10);
        let text: String = parts.iter().map(|p| gunzip(&p.bytes)).collect();
        let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 10);
        assert_eq!(&rows[1][2], "x,\"y\"");
        assert_eq!(&rows[0][2], "", "NULL is an empty field");
        assert_eq!(&rows[3][3], "csv/acme/a b.csv");
        assert_eq!((&rows[3][5], &rows[3][6]), ("5", "7"));
        assert_eq!(w.finish().unwrap(), FileRows::Own(None), "nothing open after finish");
    }

    fn chunk_of(n: u64) -> RowChunk {
        let mut chunk = RowChunk::new(3);
        for i in 0..n {
            let id = format!("e{i}");
            chunk.push_row(&[Some("acme"), Some(&id), Some("u")], i + 2);
        }
        chunk
    }

    #[test]
    fn a_small_files_rows_are_held_raw_and_read_as_its_own_parts_would() {
        let chunk = chunk_of(10);
        let mut own = PartWriter::new(1 << 20);
        let mut parts = own.write_chunk(&chunk, "k.csv", "v1", 7).unwrap();
        let FileRows::Own(last) = own.finish().unwrap() else { panic!("own parts") };
        parts.extend(last);
        let mut small = PartWriter::coalescing(1 << 20, 4096);
        assert_eq!(small.write_chunk(&chunk, "k.csv", "v1", 7).unwrap(), vec![], "nothing cut while small");
        assert!(small.is_small());
        let FileRows::Buffered(held) = small.finish().unwrap() else { panic!("held") };
        assert_eq!(held.rows, 10);
        assert_eq!(String::from_utf8(held.lines.clone()).unwrap(), gunzip(&parts[0].bytes), "the same lines");
        assert!(small.is_small(), "the writer starts over small");
        // Appended to a shared stream, two files' lines make one part.
        let mut shared = GzParts::new(1 << 20);
        assert_eq!(shared.push_lines(&held.lines, held.rows).unwrap(), None);
        assert_eq!(shared.push_lines(&[], 0).unwrap(), None, "an empty file adds nothing");
        let other = {
            let mut w = PartWriter::coalescing(1 << 20, 4096);
            w.write_chunk(&chunk_of(3), "other.csv", "v9", 7).unwrap();
            let FileRows::Buffered(b) = w.finish().unwrap() else { panic!("held") };
            b
        };
        shared.push_lines(&other.lines, other.rows).unwrap();
        let part = shared.finish().unwrap().unwrap();
        assert_eq!(part.rows, 13);
        let text = gunzip(&part.bytes);
        assert_eq!(text.lines().count(), 13);
        assert!(text.lines().last().unwrap().contains(",other.csv,v9,4,7"), "{text}");
    }

    #[test]
    fn a_file_that_outgrows_the_small_size_moves_to_its_own_parts_in_order() {
        let chunk = chunk_of(200);
        let line = {
            let mut l = Vec::new();
            staging_line(&mut l, &chunk, 0, "k.csv", "v1", 7).unwrap();
            l.len()
        };
        let mut w = PartWriter::coalescing(500, 5 * line);
        let mut parts = w.write_chunk(&chunk, "k.csv", "v1", 7).unwrap();
        assert!(!w.is_small(), "outgrown");
        let FileRows::Own(last) = w.finish().unwrap() else { panic!("own parts once outgrown") };
        parts.extend(last);
        assert!(parts.len() > 3, "cut at the limit");
        assert!(parts.iter().all(|p| gunzip(&p.bytes).len() < 500 + 5 * line + line));
        assert_eq!(parts.iter().map(|p| p.rows).sum::<u64>(), 200);
        let text: String = parts.iter().map(|p| gunzip(&p.bytes)).collect();
        let lines: Vec<u64> = text.lines().map(|l| l.rsplit(',').nth(1).unwrap().parse().unwrap()).collect();
        assert_eq!(lines, (2..202).collect::<Vec<u64>>(), "every row once, in order");
        assert!(w.is_small(), "the next file starts small again");
    }

    #[test]
    fn manifest_names_every_part_as_mandatory() {
        let m: serde_json::Value =
            serde_json::from_str(&manifest(&["s3://b/p0.gz".into(), "s3://b/p1.gz".into()])).unwrap();
        assert_eq!(m["entries"][1]["url"], "s3://b/p1.gz");
        assert_eq!(m["entries"][0]["mandatory"], true);
    }
}
