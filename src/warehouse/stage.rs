//! Staging parts for warehouses that bulk-load from object storage (Redshift `COPY … MANIFEST`).
//!
//! Owns the byte format such a COPY reads: gzip CSV, one line per row, the contract columns
//! then the provenance columns (`_file_key`, `_file_version`, `_line`, `_batch_id`), no header.
//! NULL is an empty unquoted field; empty strings never reach staging (the contract turns an
//! empty optional value into NULL), so `EMPTYASNULL` loses nothing. Parts are cut at a size
//! limit so memory stays bounded; the caller uploads each finished part and writes the
//! manifest ([`manifest`]) last. It does no I/O itself.

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

/// Staging rows of one file at a time into [`GzParts`]: contract columns, then provenance.
pub struct PartWriter {
    parts: GzParts,
    line: Vec<u8>,
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

impl PartWriter {
    /// `max_raw_bytes`: uncompressed bytes after which a part is finished.
    pub fn new(max_raw_bytes: usize) -> PartWriter {
        PartWriter { parts: GzParts::new(max_raw_bytes), line: Vec::with_capacity(1024) }
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
            self.line.clear();
            for (c, v) in chunk.row(i).enumerate() {
                if c > 0 {
                    self.line.push(b',');
                }
                csv_field(&mut self.line, v);
            }
            for v in [file_key, file_version] {
                self.line.push(b',');
                csv_field(&mut self.line, Some(v));
            }
            writeln!(self.line, ",{},{}", chunk.lines[i], batch_id)?;
            done.extend(self.parts.push_line(&self.line)?);
        }
        Ok(done)
    }

    /// Finishes the open part, if it has rows.
    pub fn finish(&mut self) -> std::io::Result<Option<StagedPart>> {
        self.parts.finish()
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
        parts.extend(w.finish().unwrap());
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
        assert_eq!(w.finish().unwrap(), None, "nothing open after finish");
    }

    #[test]
    fn manifest_names_every_part_as_mandatory() {
        let m: serde_json::Value =
            serde_json::from_str(&manifest(&["s3://b/p0.gz".into(), "s3://b/p1.gz".into()])).unwrap();
        assert_eq!(m["entries"][1]["url"], "s3://b/p1.gz");
        assert_eq!(m["entries"][0]["mandatory"], true);
    }
}
