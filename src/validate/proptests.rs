//! Property-based tests of the validator and its record reader: arbitrary bytes made of quotes,
//! delimiters, CR, LF, NUL, BOMs, invalid UTF-8, valid values and long runs, read in arbitrary
//! pieces. The independent reference is the `csv` crate reading the same bytes (RFC 4180
//! quoting, strict: no trimming, no comments, no escapes), with physical lines counted here.
//!
//! Invariants: nothing panics; memory held per record stays under a bound that depends on the
//! limits only; `rows_read = rows_loaded + rows_rejected`; every record the reference reads is
//! read once, on the same line, loaded or rejected; every loaded row is byte for byte what the
//! reference reads, through the contract's per-value rules, and its text in the file is exactly
//! RFC 4180's writing of those fields (an open quote or text after a closing quote, which the
//! reference reads as if repaired, is a reported defect, never a loaded row).

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

use super::record::tests::Trickle;
use super::record::{INPUT_BUFFER_BYTES, KEPT_PREFIX_BYTES};
use super::*;
use crate::contract::check_value;

const BOM: &[u8] = b"\xef\xbb\xbf";
const HEADER: &[u8] = b"customer,event_time,user_id,note\n";

fn contract() -> Contract {
    let text = r#"
name = "props"
version = 1
table = "props"
customer_column = "customer"
event_time_column = "event_time"
user_column = "user_id"
dedupe_key = ["customer", "user_id"]

[[columns]]
name = "customer"
type = "string"
required = true
max_length = 64

[[columns]]
name = "event_time"
type = "timestamp"
required = true

[[columns]]
name = "user_id"
type = "string"
required = true

[[columns]]
name = "note"
type = "string"
required = false
"#;
    Contract::parse(text, "proptests").expect("a valid contract")
}

/// One piece of input.
fn token() -> impl Strategy<Value = Vec<u8>> {
    let fixed = |b: &'static [u8]| Just(b.to_vec());
    prop_oneof![
        4 => fixed(b","),
        3 => fixed(b"\""),
        2 => fixed(b"\n"),
        2 => fixed(b"\r\n"),
        2 => fixed(b"\r"),
        1 => fixed(b"\0"),
        1 => fixed(BOM),
        1 => fixed(b"\xff"),
        1 => fixed(b"\xc3"),
        // A character's last byte alone: with a `\xc3` before a delimiter, valid bytes in two
        // invalid fields.
        1 => fixed(b"\xa9"),
        1 => fixed(b" "),
        1 => fixed("é".as_bytes()),
        2 => fixed(b"acme"),
        2 => fixed(b"2026-11-23T10:00:00Z"),
        2 => fixed(b"u1"),
        2 => "[a-z]{1,6}".prop_map(String::into_bytes),
        // Whole rows, plain and quoted with line breaks and doubled quotes inside.
        3 => fixed(b"acme,2026-11-23T10:00:00Z,u1,n\n"),
        2 => fixed(b"\"acme\",\"2026-11-23 10:00:00\",\"u\"\"1\",\"a\r\nb\rc\nd\"\r\n"),
        1 => fixed(b"acme,2026-11-23T10:00:00Z,u1,\"open"),
        // Long runs.
        2 => (1usize..700, prop::sample::select(vec![b'x', b'"', b'\n', b',', b'\r']))
            .prop_map(|(n, b)| vec![b; n]),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(token(), 0..60).prop_map(|t| t.concat())
}

/// Where the reads end: at most this many bytes per read.
fn read_size() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..8, 8usize..200, Just(usize::MAX)]
}

/// The physical line of the record the reference starts reading at byte `from`, counting CR,
/// LF and CRLF as one line break each.
fn physical_line(data: &[u8], from: usize) -> u64 {
    let at = physical_start(data, from);
    let mut line = 1;
    let mut i = 0;
    while i < at {
        match data[i] {
            b'\r' => {
                line += 1;
                if i + 1 < at && data[i + 1] == b'\n' {
                    i += 1;
                }
            }
            b'\n' => line += 1,
            _ => {}
        }
        i += 1;
    }
    line
}

struct Strict {
    line: u64,
    /// Byte offset where the reference began reading the record (after the previous one).
    from: usize,
    /// The record's text as it is in the file, without its terminator.
    raw: Vec<u8>,
    fields: Vec<Vec<u8>>,
}

/// Every record of `data` as the `csv` crate reads it.
fn strict_records(data: &[u8]) -> Vec<Strict> {
    let mut rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(data);
    let mut rec = csv::ByteRecord::new();
    let mut out = Vec::new();
    while rdr.read_byte_record(&mut rec).expect("reading from memory") {
        let from = rec.position().expect("a position").byte() as usize;
        // The reference consumes a record's terminator (its first byte, for CRLF) with it.
        let to = rdr.position().byte() as usize;
        let start = physical_start(data, from);
        let end = if to > start && matches!(data[to - 1], b'\r' | b'\n') { to - 1 } else { to };
        out.push(Strict {
            line: physical_line(data, from),
            from,
            raw: data[start..end].to_vec(),
            fields: rec.iter().map(<[u8]>::to_vec).collect(),
        });
    }
    out
}

/// Is `raw` exactly `fields` written as RFC 4180 says — each field as it is, or quoted with its
/// quotes doubled (needed when it holds a delimiter, quote at its start, CR or LF), joined by
/// commas? A quote inside an unquoted field counts as a literal byte, as the `csv` crate reads it.
fn is_rfc4180_text(raw: &[u8], fields: &[Vec<u8>]) -> bool {
    let mut at = 0;
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            if raw.get(at) != Some(&b',') {
                return false;
            }
            at += 1;
        }
        if raw.get(at) == Some(&b'"') {
            let mut quoted = vec![b'"'];
            for &b in f {
                quoted.push(b);
                if b == b'"' {
                    quoted.push(b'"');
                }
            }
            quoted.push(b'"');
            if !raw[at..].starts_with(&quoted) {
                return false;
            }
            at += quoted.len();
        } else {
            if f.iter().any(|b| matches!(b, b',' | b'\r' | b'\n')) || !raw[at..].starts_with(f) {
                return false;
            }
            at += f.len();
        }
    }
    at == raw.len()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().expect("a runtime")
}

fn record_limits() -> impl Strategy<Value = RecordLimits> {
    (prop::sample::select(vec![1usize, 8, 40, 64, 300, 1 << 20]), prop::sample::select(vec![1usize, 3, 4, 8, 1024]))
        .prop_map(|(max_record_bytes, max_columns)| RecordLimits { max_record_bytes, max_columns })
}

/// Limits the header (33 bytes, 4 fields) passes.
fn row_limits() -> impl Strategy<Value = RecordLimits> {
    (prop::sample::select(vec![40usize, 64, 300, 1 << 20]), prop::sample::select(vec![4usize, 5, 8, 1024]))
        .prop_map(|(max_record_bytes, max_columns)| RecordLimits { max_record_bytes, max_columns })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_record_reader_agrees_with_the_csv_crate_in_bounded_memory(
        bom in any::<bool>(),
        body in body(),
        limits in record_limits(),
        buffer in prop::sample::select(vec![4usize, 7, 64, INPUT_BUFFER_BYTES]),
        step in read_size(),
    ) {
        let data = if bom { [BOM, &body].concat() } else { body };
        let reference = strict_records(&data);
        let rt = runtime();
        let mut reader = RecordReader::with_buffer(Trickle { data: &data, step }, limits, buffer);
        let bound = RecordReader::<Trickle>::max_buffered_bytes(limits, buffer);
        let mut i = 0;
        while let Some(rec) = rt.block_on(reader.next()).expect("reading from memory") {
            prop_assert!(i < reference.len(), "a record the reference does not read, line {}", rec.line);
            let strict = &reference[i];
            prop_assert_eq!(rec.line, strict.line, "record {}", i);
            let last = i + 1 == reference.len();
            if !last {
                // Raw length: up to the terminator, whose first byte ends what the reference consumed.
                let start = physical_start(&data, strict.from);
                prop_assert_eq!(rec.bytes as usize, reference[i + 1].from - 1 - start, "record {}", i);
            }
            let fields: Vec<Vec<u8>> = rec.fields.iter().map(<[u8]>::to_vec).collect();
            // A record within the limits is reported malformed exactly when it is not RFC 4180 text.
            let well_formed = is_rfc4180_text(&strict.raw, &strict.fields);
            let quote_defect =
                matches!(rec.defect, Some(RecordDefect::StrayQuote | RecordDefect::UnterminatedQuote { .. }));
            let over = matches!(rec.defect, Some(RecordDefect::TooLong { .. } | RecordDefect::TooManyColumns { .. }));
            if !over {
                prop_assert_eq!(quote_defect, !well_formed, "record {}: {:?}", i, String::from_utf8_lossy(&strict.raw));
            }
            match rec.defect {
                None => {
                    prop_assert_eq!(&fields, &strict.fields, "record {}", i);
                    prop_assert!(rec.bytes <= limits.max_record_bytes as u64);
                    prop_assert!(fields.len() <= limits.max_columns);
                }
                // What the parser read, as the reference reads it; the defect says it was repaired.
                Some(RecordDefect::StrayQuote) => prop_assert_eq!(&fields, &strict.fields),
                Some(RecordDefect::UnterminatedQuote { bytes, .. }) => {
                    prop_assert!(last, "an open quote ends only the last record");
                    prop_assert_eq!(bytes, rec.bytes);
                    if !rec.cut {
                        prop_assert_eq!(&fields, &strict.fields);
                    }
                }
                Some(RecordDefect::TooLong { bytes }) => {
                    prop_assert!(bytes > limits.max_record_bytes as u64);
                    prop_assert!(rec.cut);
                }
                Some(RecordDefect::TooManyColumns { columns }) => {
                    prop_assert_eq!(columns as usize, strict.fields.len());
                    prop_assert!(columns as usize > limits.max_columns);
                }
            }
            if rec.cut {
                // What is kept of a record over a limit is a prefix of it.
                prop_assert!(rec.fields.as_slice().len() <= KEPT_PREFIX_BYTES);
                let whole = strict.fields.concat();
                prop_assert!(whole.starts_with(rec.fields.as_slice()));
            }
            prop_assert!(reader.buffered_bytes() <= bound, "{} > {}", reader.buffered_bytes(), bound);
            i += 1;
        }
        prop_assert_eq!(i, reference.len());
    }

    #[test]
    fn the_quick_path_reads_every_record_as_the_parser_alone_does(
        bom in any::<bool>(),
        body in body(),
        limits in record_limits(),
        buffer in prop::sample::select(vec![4usize, 7, 64, 300, INPUT_BUFFER_BYTES]),
        step in read_size(),
    ) {
        let data = if bom { [BOM, &body].concat() } else { body };
        let rt = runtime();
        let read = |reader: RecordReader<Trickle<'_>>| {
            let mut reader = reader;
            let mut out = Vec::new();
            while let Some(r) = rt.block_on(reader.next()).expect("reading from memory") {
                let fields: Vec<Vec<u8>> = r.fields.iter().map(<[u8]>::to_vec).collect();
                out.push((r.line, r.bytes, fields, r.cut, r.defect));
            }
            (out, reader.line())
        };
        let quick = read(RecordReader::with_buffer(Trickle { data: &data, step }, limits, buffer));
        let parser = read(RecordReader::with_buffer(Trickle { data: &data, step }, limits, buffer).parser_only());
        prop_assert_eq!(quick, parser);
    }

    #[test]
    fn the_validator_accounts_for_every_record_and_loads_only_what_the_csv_crate_reads(
        body in body(),
        limits in row_limits(),
        step in read_size(),
    ) {
        let data = [HEADER, &body].concat();
        let contract = contract();
        let mut sink = CollectSink::default();
        let opts = Options { contract: &contract, key: "upload.csv", limits };
        let account = runtime()
            .block_on(validate_stream(Trickle { data: &data, step }, &opts, &mut sink))
            .expect("reading from memory");
        prop_assert_eq!(&account.file_reject, &None);
        prop_assert_eq!(account.rows_read, account.rows_loaded + account.rows_rejected);
        prop_assert_eq!(sink.rejects.len() as u64, account.rows_rejected);
        prop_assert!(sink.rejects.iter().all(|r| RULES.contains(&r.rule)));

        let reference = strict_records(&data);
        prop_assert_eq!(account.rows_read as usize, reference.len() - 1);
        let mut lines: Vec<u64> = sink.rows.iter().flat_map(|c| c.lines.iter().copied()).collect();
        lines.extend(sink.rejects.iter().map(|r| r.line));
        lines.sort_unstable();
        let reference_lines: Vec<u64> = reference[1..].iter().map(|r| r.line).collect();
        prop_assert_eq!(lines, reference_lines, "every record once, on its physical line");

        let by_line: HashMap<u64, &Strict> = reference[1..].iter().map(|r| (r.line, r)).collect();
        for chunk in &sink.rows {
            for row in 0..chunk.len() {
                let strict = by_line[&chunk.lines[row]];
                prop_assert_eq!(strict.fields.len(), contract.columns.len());
                prop_assert!(is_rfc4180_text(&strict.raw, &strict.fields), "line {} loaded from malformed text", chunk.lines[row]);
                let expected: Vec<Option<String>> = contract
                    .columns
                    .iter()
                    .zip(&strict.fields)
                    .map(|(col, f)| check_value(col, std::str::from_utf8(f).expect("loaded text is UTF-8")).expect("loaded values pass"))
                    .collect();
                let got: Vec<Option<String>> = chunk.row(row).map(|v| v.map(str::to_string)).collect();
                prop_assert_eq!(got, expected, "line {}", chunk.lines[row]);
            }
        }
    }
}

/// The first byte of the record the reference starts reading at `from` (past a BOM and blank lines).
fn physical_start(data: &[u8], mut from: usize) -> usize {
    if from == 0 && data.starts_with(BOM) {
        from = BOM.len();
    }
    while from < data.len() && matches!(data[from], b'\r' | b'\n') {
        from += 1;
    }
    from
}
