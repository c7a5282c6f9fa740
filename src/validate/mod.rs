//! Streaming validation of one CSV file against the contract.
//!
//! Owns the header check, the per-row rules and the accounting of one file
//! (`rows_read = rows_loaded + rows_rejected`). Good rows leave in [`RowChunk`]s of bounded
//! size through a callback, so memory does not depend on the file's size. It never touches
//! a warehouse: the caller decides where chunks go. Records reach it through
//! [`record::RecordReader`], which bounds memory per record and numbers physical lines.

#[cfg(test)]
mod proptests;
pub mod record;

use std::collections::HashMap;

use tokio::io::AsyncRead;

use crate::contract::{check_value_into, normalise_header, Contract, CustomerPolicy, UnknownColumns};
pub use record::{Fields, RecordDefect, RecordLimits, RecordReader};

/// How much of a value and of a raw line a reject row keeps.
pub const MAX_REJECT_VALUE_CHARS: usize = 256;
pub const MAX_REJECT_RAW_CHARS: usize = 1024;
/// Rows per chunk handed to the warehouse writer.
pub const CHUNK_ROWS: usize = 4096;

/// A row of another customer than the one its object key names (see `CustomerPolicy`).
pub const CUSTOMER_MISMATCH: &str = "customer_mismatch";

/// Every reject rule, row-level and file-level; the fixed label set of `wau_ingest_rejects_total`.
pub const RULES: &[&str] = &[
    "missing_column",
    "unknown_column",
    "duplicate_column",
    "field_count",
    "type",
    "required",
    "max_length",
    "format",
    "nul_character",
    "invalid_utf8",
    "gzip_bomb",
    "too_large",
    "unreadable",
    "no_customer",
    "out_of_range",
    CUSTOMER_MISMATCH,
    "too_long",
    "too_many_columns",
    "unterminated_quote",
    "stray_quote",
];

/// Good rows, stored flat in one string: `value(i, c)` is column `c` of row `i` (`None` for an
/// empty optional value), in contract column order. One allocation per chunk, not per value.
#[derive(Debug, Default, Clone)]
pub struct RowChunk {
    pub ncols: usize,
    text: String,
    /// (start, end) in `text` per value; `NULL_SPAN` for no value.
    spans: Vec<(u32, u32)>,
    pub lines: Vec<u64>,
    pub bytes: usize,
}

const NULL_SPAN: (u32, u32) = (u32::MAX, u32::MAX);

impl RowChunk {
    pub fn new(ncols: usize) -> Self {
        Self::with_text_capacity(ncols, CHUNK_ROWS * 128)
    }
    fn with_text_capacity(ncols: usize, text: usize) -> Self {
        RowChunk {
            ncols,
            text: String::with_capacity(text),
            spans: Vec::with_capacity(ncols * CHUNK_ROWS),
            lines: Vec::with_capacity(CHUNK_ROWS),
            bytes: 0,
        }
    }
    /// The next chunk after `full`: room for as much text as it took, so a file's chunks
    /// after its first are not grown (copied) as they fill.
    fn after(full: &RowChunk) -> Self {
        Self::with_text_capacity(full.ncols, full.text.len().max(CHUNK_ROWS * 128))
    }
    pub fn len(&self) -> usize {
        self.lines.len()
    }
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
    pub fn value(&self, row: usize, col: usize) -> Option<&str> {
        let (a, b) = self.spans[row * self.ncols + col];
        (a != u32::MAX).then(|| &self.text[a as usize..b as usize])
    }
    pub fn row(&self, row: usize) -> impl Iterator<Item = Option<&str>> + '_ {
        (0..self.ncols).map(move |c| self.value(row, c))
    }
    /// Appends a row of already checked values (tests and generators).
    pub fn push_row(&mut self, values: &[Option<&str>], line: u64) {
        assert_eq!(values.len(), self.ncols);
        for v in values {
            match v {
                Some(v) => {
                    let start = self.text.len() as u32;
                    self.text.push_str(v);
                    self.spans.push((start, self.text.len() as u32));
                }
                None => self.spans.push(NULL_SPAN),
            }
        }
        self.bytes += values.iter().map(|v| v.map_or(0, str::len) + 1).sum::<usize>();
        self.lines.push(line);
    }
    /// Drops the values of a row being built after `mark` (a rejected row).
    fn rewind(&mut self, mark: (usize, usize)) {
        self.text.truncate(mark.0);
        self.spans.truncate(mark.1);
    }
}

/// One rejected row (or, with `line == 0`, a whole file), as the rejects table records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub line: u64,
    pub column: Option<String>,
    pub rule: &'static str,
    pub reason: String,
    pub value: Option<String>,
    pub raw: Option<String>,
}

/// Why a file cannot be read as the contract at all: it is rejected whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReject {
    pub rule: &'static str,
    pub reason: String,
    pub line: u64,
}

/// What validation of one file found. `file_reject` set means nothing of the file loads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileAccount {
    pub rows_read: u64,
    pub rows_loaded: u64,
    pub rows_rejected: u64,
    pub file_reject: Option<FileReject>,
    /// The customers its loaded rows name, learnt as they pass (no second look at the rows).
    pub customers: RowCustomers,
}

/// The customers a file's loaded rows name, as far as the ledger cares: none yet, all the
/// same one, or more than one (a row without a customer counts as another).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RowCustomers {
    #[default]
    None,
    One(String),
    Mixed,
}

impl RowCustomers {
    /// One more loaded row, naming `customer`.
    pub fn observe(&mut self, customer: Option<&str>) {
        match (&*self, customer) {
            (RowCustomers::Mixed, _) => {}
            (RowCustomers::One(c), Some(v)) if c == v => {}
            (RowCustomers::None, Some(v)) => *self = RowCustomers::One(v.to_string()),
            _ => *self = RowCustomers::Mixed,
        }
    }

    /// The one customer every loaded row names, if there is one.
    pub fn single(&self) -> Option<&str> {
        match self {
            RowCustomers::One(c) => Some(c),
            _ => None,
        }
    }
}

impl FileAccount {
    /// The accounting invariant every file must satisfy.
    pub fn balanced(&self) -> bool {
        self.rows_read == self.rows_loaded + self.rows_rejected
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The stream broke for a reason that says nothing about the file (network, disk):
    /// the file must be tried again, not rejected.
    #[error("reading failed: {0}")]
    Io(#[from] std::io::Error),
    /// The consumer of chunks gave up (warehouse failure or shutdown).
    #[error("{0}")]
    Sink(String),
}

/// An error a decoding reader raises to say something about the file itself — too big, a
/// gzip bomb, corrupt compressed data — so it is rejected, not retried as a transient failure.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct FileVerdict {
    pub rule: &'static str,
    pub reason: String,
}

pub struct Options<'a> {
    pub contract: &'a Contract,
    /// The object key, for deriving the customer of legacy files.
    pub key: &'a str,
    /// Per-record memory bounds (`limits.max_record_bytes`, `limits.max_columns`).
    pub limits: RecordLimits,
}

/// Where a file's output goes. Returning an error stops validation.
pub trait ChunkSink {
    fn rows(&mut self, chunk: RowChunk) -> impl std::future::Future<Output = Result<(), String>> + Send;
    fn rejects(&mut self, rejects: Vec<Reject>) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

struct ColumnMap {
    /// For each contract column, its index in the file, or `None` if absent (optional or derived).
    source: Vec<Option<usize>>,
    /// The customer value for every row when the file lacks the column.
    derived_customer: Option<String>,
    /// The customer the object key names, which every row's `customer` must be (unless the
    /// contract trusts the column).
    key_customer: Option<String>,
    /// The contract's customer column (its index in `source`).
    customer: usize,
    width: usize,
}

fn map_header(header: &Fields<'_>, line: u64, opts: &Options<'_>) -> Result<ColumnMap, FileReject> {
    let c = opts.contract;
    let reject = |rule, reason: String| FileReject { rule, reason, line };
    let mut names = HashMap::new();
    for (i, field) in header.iter().enumerate() {
        let name = std::str::from_utf8(field)
            .map_err(|_| reject("invalid_utf8", format!("header field {} is not valid UTF-8", i + 1)))?;
        let name = normalise_header(name);
        if names.insert(name.clone(), i).is_some() {
            return Err(reject("duplicate_column", format!("column {name} appears twice in the header")));
        }
    }
    if c.unknown_columns == UnknownColumns::Reject {
        let mut unknown: Vec<&String> = names.keys().filter(|n| c.column_for_header(n).is_none()).collect();
        if !unknown.is_empty() {
            unknown.sort();
            let list: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
            return Err(reject("unknown_column", format!("unknown column(s) {}", list.join(", "))));
        }
    }
    let mut source = Vec::with_capacity(c.columns.len());
    let mut derived_customer = None;
    let mut missing = Vec::new();
    for col in &c.columns {
        let idx = names
            .get(&col.name)
            .copied()
            .or_else(|| col.aliases.iter().find_map(|a| names.get(&crate::contract::normalise_header(a)).copied()));
        if idx.is_none() && col.name == c.customer_column {
            match c.customer_from_key(opts.key) {
                Some(cust) => derived_customer = Some(cust),
                None => {
                    return Err(reject(
                        "no_customer",
                        format!("no {} column and the key {} matches no customer_from_key pattern", col.name, opts.key),
                    ))
                }
            }
        } else if idx.is_none() && col.required {
            missing.push(col.name.as_str());
        }
        source.push(idx);
    }
    if !missing.is_empty() {
        return Err(reject("missing_column", format!("missing required column(s) {}", missing.join(", "))));
    }
    let key_customer = match c.customer_policy {
        CustomerPolicy::TrustColumn => None,
        CustomerPolicy::RejectRow | CustomerPolicy::RejectFile => {
            derived_customer.is_none().then(|| c.customer_from_key(opts.key)).flatten()
        }
    };
    Ok(ColumnMap { source, derived_customer, key_customer, customer: c.customer_index(), width: header.len() })
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn raw_line(record: &Fields<'_>) -> String {
    let mut out = Vec::new();
    for (i, f) in record.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let needs_quotes = f.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
        if needs_quotes {
            out.push(b'"');
            for &b in f {
                if b == b'"' {
                    out.push(b'"');
                }
                out.push(b);
            }
            out.push(b'"');
        } else {
            out.extend_from_slice(f);
        }
    }
    truncate(&String::from_utf8_lossy(&out), MAX_REJECT_RAW_CHARS)
}

/// Validates one row; on success appends it to `chunk`.
/// `now`: the moment of validation, in whole seconds since the epoch.
fn check_row(
    map: &ColumnMap,
    opts: &Options<'_>,
    record: &Fields<'_>,
    line: u64,
    now: i64,
    chunk: &mut RowChunk,
) -> Result<(), Reject> {
    let reject = |column: Option<&str>, rule, reason: String, value: Option<&str>| Reject {
        line,
        column: column.map(str::to_string),
        rule,
        reason,
        value: value.map(|v| truncate(v, MAX_REJECT_VALUE_CHARS)),
        raw: Some(raw_line(record)),
    };
    if record.len() != map.width {
        return Err(reject(
            None,
            "field_count",
            format!("{} fields, the header has {}", record.len(), map.width),
            None,
        ));
    }
    let mark = (chunk.text.len(), chunk.spans.len());
    let whole = std::str::from_utf8(record.as_slice()).ok();
    for (c, (col, src)) in opts.contract.columns.iter().zip(&map.source).enumerate() {
        let start = chunk.text.len();
        let checked = match src {
            None if c == map.customer => {
                chunk.text.push_str(map.derived_customer.as_deref().expect("set when the column is absent"));
                Ok(true)
            }
            None => Ok(false),
            Some(i) => {
                // One UTF-8 check per record; fields are then sliced out of the checked text.
                // A field is valid exactly when it lies on character boundaries of it (the
                // record's bytes may be valid where a field is not: `\xc3` then `\xa9`).
                let text = match whole.and_then(|w| w.get(record.range(*i).expect("field index within the record"))) {
                    Some(t) => t,
                    None => match std::str::from_utf8(&record[*i]) {
                        Ok(t) => t,
                        Err(_) => {
                            chunk.rewind(mark);
                            let lossy = String::from_utf8_lossy(&record[*i]);
                            return Err(reject(
                                Some(&col.name),
                                "invalid_utf8",
                                "not valid UTF-8".into(),
                                Some(&lossy),
                            ));
                        }
                    },
                };
                check_value_into(col, text, now, &mut chunk.text).map_err(|e| (e, text))
            }
        };
        if let (true, Ok(true), Some(expected)) = (c == map.customer, &checked, &map.key_customer) {
            let given = &chunk.text[start..];
            if given != expected.as_str() {
                let given = given.to_string();
                chunk.rewind(mark);
                return Err(reject(
                    Some(&col.name),
                    CUSTOMER_MISMATCH,
                    format!("customer {given:?} in a file under customer {expected:?}'s key {}", opts.key),
                    Some(&given),
                ));
            }
        }
        match checked {
            Ok(true) => chunk.spans.push((start as u32, chunk.text.len() as u32)),
            Ok(false) => chunk.spans.push(NULL_SPAN),
            Err((e, text)) => {
                chunk.rewind(mark);
                return Err(reject(Some(&col.name), e.rule(), format!("{}: {}", col.name, e.describe()), Some(text)));
            }
        }
    }
    chunk.bytes += chunk.text.len() - mark.0 + map.source.len();
    chunk.lines.push(line);
    Ok(())
}

/// Validates the CSV in `input`, sending good rows and rejects to `sink` as it goes.
/// Returns the file's accounting; a whole-file reject is reported in it, not as an error.
pub async fn validate_stream<R, S>(input: R, opts: &Options<'_>, sink: &mut S) -> Result<FileAccount, ValidateError>
where
    R: AsyncRead + Unpin + Send,
    S: ChunkSink + Send,
{
    let mut reader = RecordReader::new(input, opts.limits);
    let limits = reader.limits();
    let mut account = FileAccount::default();

    let header = match reader.next().await {
        Ok(Some(h)) => h,
        Ok(None) => {
            account.file_reject =
                Some(FileReject { rule: "unreadable", reason: "the file is empty (no header)".into(), line: 0 });
            return Ok(account);
        }
        Err(e) => {
            let line = reader.line();
            return file_level(e, account, line);
        }
    };
    let mapped = match header.defect {
        // A header over a limit is not read into memory, and cannot be matched: the file is rejected.
        Some(d) => {
            Err(FileReject { rule: d.rule(), reason: format!("header: {}", d.describe(limits)), line: header.line })
        }
        None => map_header(&header.fields, header.line, opts),
    };
    let map = match mapped {
        Ok(m) => m,
        Err(r) => {
            // Count the data records anyway, so the accounting says how many rows the reject covers.
            account.file_reject = Some(r);
            while let Ok(Some(_)) = reader.next().await {
                account.rows_read += 1;
            }
            account.rows_rejected = account.rows_read;
            return Ok(account);
        }
    };

    let ncols = opts.contract.columns.len();
    let mut chunk = RowChunk::new(ncols);
    let mut rejects = Vec::new();
    // The clock is read again after anything that may wait (a read of the input, the sink),
    // so `now` trails it by at most the checks of one input buffer's records, well within the
    // whole second it is counted in (reading it for every value took 3.4% of validation).
    let clock = || chrono::Utc::now().timestamp();
    let mut now = clock();
    loop {
        let record = match reader.next().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                let line = reader.line();
                return file_level(e, account, line);
            }
        };
        account.rows_read += 1;
        if record.read_input {
            now = clock();
        }
        let checked = match record.defect {
            None => check_row(&map, opts, &record.fields, record.line, now, &mut chunk),
            Some(d) => Err(defect_reject(&record, d, limits)),
        };
        match checked {
            Ok(()) => {
                account.rows_loaded += 1;
                account.customers.observe(chunk.value(chunk.len() - 1, map.customer));
                if chunk.len() >= CHUNK_ROWS {
                    let next = RowChunk::after(&chunk);
                    let full = std::mem::replace(&mut chunk, next);
                    sink.rows(full).await.map_err(ValidateError::Sink)?;
                    now = clock();
                }
            }
            Err(r) if r.rule == CUSTOMER_MISMATCH && opts.contract.customer_policy == CustomerPolicy::RejectFile => {
                // Nothing of a file that writes another customer's rows loads; the rest of it
                // is counted, so the accounting says how many rows the verdict covers.
                account.file_reject = Some(FileReject { rule: r.rule, reason: r.reason, line: r.line });
                while let Ok(Some(_)) = reader.next().await {
                    account.rows_read += 1;
                }
                account.rows_loaded = 0;
                account.rows_rejected = account.rows_read;
                account.customers = RowCustomers::None;
                return Ok(account);
            }
            Err(r) => {
                account.rows_rejected += 1;
                rejects.push(r);
                if rejects.len() >= CHUNK_ROWS {
                    sink.rejects(std::mem::take(&mut rejects)).await.map_err(ValidateError::Sink)?;
                    now = clock();
                }
            }
        }
    }
    if !chunk.is_empty() {
        sink.rows(chunk).await.map_err(ValidateError::Sink)?;
    }
    if !rejects.is_empty() {
        sink.rejects(rejects).await.map_err(ValidateError::Sink)?;
    }
    debug_assert!(account.balanced());
    Ok(account)
}

/// The reject of a record the reader did not hand on as fields: its raw text is what was kept
/// of it (a prefix, marked `…`, when it was over a limit).
fn defect_reject(record: &record::RecordRead<'_>, defect: RecordDefect, limits: RecordLimits) -> Reject {
    let mut raw = raw_line(&record.fields);
    if record.cut && !raw.ends_with('…') {
        raw.push('…');
    }
    Reject {
        line: record.line,
        column: None,
        rule: defect.rule(),
        reason: defect.describe(limits),
        value: None,
        raw: Some(raw),
    }
}

/// An I/O error that is really a verdict on the file (size limit, corrupt gzip) rejects the file
/// at the physical `line` it struck; anything else is transient and propagates for a retry.
/// A file rejected whole loads nothing: every row read is counted as rejected by the file's reason.
fn file_level(e: std::io::Error, mut account: FileAccount, line: u64) -> Result<FileAccount, ValidateError> {
    let reject = if let Some(limit) = e.get_ref().and_then(|inner| inner.downcast_ref::<FileVerdict>()) {
        FileReject { rule: limit.rule, reason: limit.reason.clone(), line }
    } else if e.kind() == std::io::ErrorKind::InvalidData {
        FileReject { rule: "unreadable", reason: format!("not a readable CSV: {e}"), line }
    } else {
        return Err(ValidateError::Io(e));
    };
    account.file_reject = Some(reject);
    account.rows_loaded = 0;
    account.rows_rejected = account.rows_read;
    account.customers = RowCustomers::None;
    Ok(account)
}

/// Collects everything in memory: for `validate`, `contract infer` and tests.
#[derive(Default)]
pub struct CollectSink {
    pub rows: Vec<RowChunk>,
    pub rejects: Vec<Reject>,
    /// Keep only counts of good rows (the `validate` command does not need them).
    pub discard_rows: bool,
}

impl ChunkSink for CollectSink {
    async fn rows(&mut self, chunk: RowChunk) -> Result<(), String> {
        if !self.discard_rows {
            self.rows.push(chunk);
        }
        Ok(())
    }
    async fn rejects(&mut self, rejects: Vec<Reject>) -> Result<(), String> {
        self.rejects.extend(rejects);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "customer,event_id,event_time,user_id,user_email,event_type,source_ip,user_agent";

    async fn run_on(key: &str, data: &[u8]) -> (FileAccount, CollectSink) {
        run_limited(key, data, RecordLimits::default()).await
    }

    async fn run_limited(key: &str, data: &[u8], limits: RecordLimits) -> (FileAccount, CollectSink) {
        let c = Contract::builtin();
        let mut sink = CollectSink::default();
        let acc = validate_stream(data, &Options { contract: &c, key, limits }, &mut sink).await.unwrap();
        assert!(acc.balanced());
        (acc, sink)
    }

    fn lines(chunks: &[RowChunk]) -> Vec<u64> {
        chunks.iter().flat_map(|c| c.lines.iter().copied()).collect()
    }

    fn row(chunks: &[RowChunk], i: usize) -> Vec<Option<String>> {
        chunks
            .iter()
            .flat_map(|c| (0..c.len()).map(move |r| c.row(r).map(|v| v.map(str::to_string)).collect::<Vec<_>>()))
            .nth(i)
            .unwrap()
    }

    #[tokio::test]
    async fn good_rows_load_and_are_normalised() {
        let data = format!(
            "{HEADER}\r\nacme,e1,2026-11-23T11:00:00+01:00,u1,a@b.io,login,10.0.0.1,\"Mozilla, \"\"5\"\"\"\r\nacme,e2,2026-11-23 10:00:00,u2,,logout,,\r\n"
        );
        let (acc, sink) = run_on("csv/acme/x.csv", data.as_bytes()).await;
        let acme = RowCustomers::One("acme".into());
        assert_eq!(
            acc,
            FileAccount { rows_read: 2, rows_loaded: 2, rows_rejected: 0, file_reject: None, customers: acme }
        );
        let r0 = row(&sink.rows, 0);
        assert_eq!(r0[2].as_deref(), Some("2026-11-23 10:00:00"));
        assert_eq!(r0[7].as_deref(), Some("Mozilla, \"5\""));
        assert_eq!(row(&sink.rows, 1)[4], None);
        assert_eq!(sink.rows[0].lines, vec![2, 3]);
    }

    #[tokio::test]
    async fn header_is_order_case_whitespace_and_bom_tolerant() {
        let data = "\u{feff} Event_Type ,USER_ID,event_time,event_id,customer\nlogin,u1,2026-11-23T10:00:00Z,e1,acme\n";
        let (acc, sink) = run_on("k.csv", data.as_bytes()).await;
        assert_eq!(acc.rows_loaded, 1, "{:?}", sink.rejects);
        let r = row(&sink.rows, 0);
        assert_eq!(r[0].as_deref(), Some("acme"));
        assert_eq!(r[5].as_deref(), Some("login"));
    }

    #[tokio::test]
    async fn missing_required_column_rejects_the_file() {
        let (acc, sink) =
            run_on("csv/acme/x.csv", b"customer,event_id,event_time\nacme,e1,2026-11-23T10:00:00Z\nacme,e2,x\n").await;
        assert_eq!((acc.rows_read, acc.rows_loaded, acc.rows_rejected), (2, 0, 2));
        let r = acc.file_reject.unwrap();
        assert_eq!(r.rule, "missing_column");
        assert!(r.reason.contains("user_id") && r.reason.contains("event_type"), "{}", r.reason);
        assert!(sink.rows.is_empty());
    }

    #[tokio::test]
    async fn customer_is_derived_from_the_key_for_legacy_files() {
        let data = "event_id,event_time,user_id,event_type\ne1,2026-11-23T10:00:00Z,u1,login\n";
        let (acc, sink) = run_on("csv/globex/w47.csv", data.as_bytes()).await;
        assert_eq!(acc.rows_loaded, 1);
        assert_eq!(row(&sink.rows, 0)[0].as_deref(), Some("globex"));
        assert_eq!(acc.customers.single(), Some("globex"), "a derived customer is a loaded row's customer");
        let (acc, _) = run_on("w47.csv", data.as_bytes()).await;
        assert_eq!(acc.file_reject.unwrap().rule, "no_customer");
    }

    #[tokio::test]
    async fn a_row_of_another_customer_than_the_key_names_is_rejected_by_default() {
        let data = format!(
            "{HEADER}\nacme,e1,2026-11-23T10:00:00Z,u1,,login,,\nglobex,e2,2026-11-23T10:00:00Z,u2,,login,,\n acme ,e3,2026-11-23T10:00:00Z,u3,,login,,\n"
        );
        let (acc, sink) = run_on("csv/acme/w47.csv", data.as_bytes()).await;
        assert_eq!((acc.rows_read, acc.rows_loaded, acc.rows_rejected), (3, 2, 1));
        assert_eq!(acc.customers, RowCustomers::One("acme".into()), "the rejected row's customer is not counted");
        let r = &sink.rejects[0];
        assert_eq!((r.line, r.column.as_deref(), r.rule), (3, Some("customer"), "customer_mismatch"));
        assert_eq!(r.reason, "customer \"globex\" in a file under customer \"acme\"'s key csv/acme/w47.csv");
        assert_eq!(r.value.as_deref(), Some("globex"));
        // A key that names no customer checks nothing.
        let (acc, _) = run_on("w47.csv", data.as_bytes()).await;
        assert_eq!(acc.rows_loaded, 3);

        let mut whole = Contract::builtin();
        whole.customer_policy = CustomerPolicy::RejectFile;
        let mut sink = CollectSink::default();
        let opts = Options { contract: &whole, key: "csv/acme/w47.csv", limits: RecordLimits::default() };
        let acc = validate_stream(data.as_bytes(), &opts, &mut sink).await.unwrap();
        let verdict = acc.file_reject.clone().expect("the file is rejected whole");
        assert_eq!((verdict.rule, verdict.line), ("customer_mismatch", 3));
        assert_eq!((acc.rows_read, acc.rows_loaded, acc.rows_rejected), (3, 0, 3));
        assert_eq!(acc.customers, RowCustomers::None, "a file rejected whole loads no row");

        let mut trusting = Contract::builtin();
        trusting.customer_policy = CustomerPolicy::TrustColumn;
        let mut sink = CollectSink::default();
        let opts = Options { contract: &trusting, key: "csv/acme/w47.csv", limits: RecordLimits::default() };
        let acc = validate_stream(data.as_bytes(), &opts, &mut sink).await.unwrap();
        assert_eq!((acc.rows_loaded, acc.rows_rejected), (3, 0));
        assert_eq!(row(&sink.rows, 1)[0].as_deref(), Some("globex"));
        assert_eq!(acc.customers, RowCustomers::Mixed, "rows of two customers");
    }

    #[tokio::test]
    async fn timestamps_outside_the_calendar_or_the_contract_are_out_of_range() {
        let data = format!(
            "{HEADER}\n\
             acme,e1,9999-12-31T23:30:00-01:00,u1,,login,,\n\
             acme,e2,0000-06-01T00:00:00Z,u1,,login,,\n\
             acme,e3,1999-12-31T23:59:59Z,u1,,login,,\n\
             acme,e4,2999-01-01T00:00:00Z,u1,,login,,\n\
             acme,e5,2000-01-01T00:00:00Z,u1,,login,,\n"
        );
        let (acc, sink) = run_on("csv/acme/w.csv", data.as_bytes()).await;
        assert_eq!((acc.rows_loaded, acc.rows_rejected), (1, 4));
        let got: Vec<(u64, &str)> = sink.rejects.iter().map(|r| (r.line, r.rule)).collect();
        assert_eq!(got, [(2, "out_of_range"), (3, "out_of_range"), (4, "out_of_range"), (5, "out_of_range")]);
        assert!(sink.rejects[0].reason.contains("years 0001 to 9999"), "{}", sink.rejects[0].reason);
        assert!(sink.rejects[2].reason.contains("before the column's min 2000-01-01 00:00:00"));
        assert!(sink.rejects[3].reason.contains("more than 86400 s in the future"));
    }

    #[tokio::test]
    async fn unknown_columns_ignored_or_rejected_by_contract() {
        let data = format!("{HEADER},extra\nacme,e1,2026-11-23T10:00:00Z,u1,,login,,,x\n");
        let (acc, _) = run_on("k", data.as_bytes()).await;
        assert_eq!(acc.rows_loaded, 1);
        let mut strict = Contract::builtin();
        strict.unknown_columns = UnknownColumns::Reject;
        let mut sink = CollectSink::default();
        let opts = Options { contract: &strict, key: "k", limits: RecordLimits::default() };
        let acc = validate_stream(data.as_bytes(), &opts, &mut sink).await.unwrap();
        assert_eq!(acc.file_reject.unwrap().rule, "unknown_column");
    }

    #[tokio::test]
    async fn each_row_rule_is_reported_with_line_column_and_raw() {
        let data = format!(
            "{HEADER}\n\
             acme,e1,2026-11-23T10:00:00Z,u1,,login,,\n\
             acme,e2,yesterday,u1,,login,,\n\
             acme,,2026-11-23T10:00:00Z,u1,,login,,\n\
             acme,e4,2026-11-23T10:00:00Z,u1,not-an-email,login,,\n\
             acme,e5,2026-11-23T10:00:00Z,u1\n\
             acme,{long},2026-11-23T10:00:00Z,u1,,login,,\n\
             acme,\"e7\nwith newline\",2026-11-23T10:00:00Z,u1,,login,,\n",
            long = "x".repeat(65)
        );
        let (acc, sink) = run_on("k", data.as_bytes()).await;
        assert_eq!((acc.rows_read, acc.rows_loaded, acc.rows_rejected), (7, 2, 5));
        let got: Vec<(u64, Option<&str>, &str)> =
            sink.rejects.iter().map(|r| (r.line, r.column.as_deref(), r.rule)).collect();
        assert_eq!(
            got,
            vec![
                (3, Some("event_time"), "type"),
                (4, Some("event_id"), "required"),
                (5, Some("user_email"), "format"),
                (6, None, "field_count"),
                (7, Some("event_id"), "max_length"),
            ]
        );
        assert_eq!(sink.rejects[0].value.as_deref(), Some("yesterday"));
        assert_eq!(sink.rejects[0].raw.as_deref(), Some("acme,e2,yesterday,u1,,login,,"));
        // The quoted newline keeps its row together: loaded with the line it starts on.
        assert_eq!(row(&sink.rows, 1)[1].as_deref(), Some("e7\nwith newline"));
        assert_eq!(sink.rows[0].lines, vec![2, 8]);
    }

    #[tokio::test]
    async fn invalid_utf8_rejects_the_row_or_the_file() {
        let mut data = format!("{HEADER}\nacme,e1,2026-11-23T10:00:00Z,u").into_bytes();
        data.extend_from_slice(&[0xff, 0xfe]);
        data.extend_from_slice(b",,login,,\nacme,e2,2026-11-23T10:00:00Z,u2,,login,,\n");
        let (acc, sink) = run_on("k", &data).await;
        assert_eq!((acc.rows_loaded, acc.rows_rejected), (1, 1));
        assert_eq!(sink.rejects[0].rule, "invalid_utf8");
        assert_eq!(sink.rejects[0].column.as_deref(), Some("user_id"));

        // Fields whose bytes are valid only together: the second is a character's end alone.
        let mut data = format!("{HEADER}\nacme,e1,2026-11-23T10:00:00Z,u").into_bytes();
        data.extend_from_slice(b"\xc3,\xa9,login,,\n");
        let (acc, sink) = run_on("k", &data).await;
        assert_eq!((acc.rows_loaded, acc.rows_rejected), (0, 1));
        assert_eq!((sink.rejects[0].rule, sink.rejects[0].column.as_deref()), ("invalid_utf8", Some("user_id")));

        let (acc, _) = run_on("k", b"cust\xffomer,event_id\n").await;
        assert_eq!(acc.file_reject.unwrap().rule, "invalid_utf8");
    }

    #[tokio::test]
    async fn empty_file_and_header_only() {
        let (acc, _) = run_on("k", b"").await;
        assert_eq!(acc.file_reject.unwrap().rule, "unreadable");
        let (acc, _) = run_on("k", format!("{HEADER}\n").as_bytes()).await;
        assert_eq!(acc, FileAccount::default());
    }

    #[tokio::test]
    async fn long_values_are_truncated_in_rejects() {
        let data = format!("{HEADER}\nacme,e1,{},u1,,login,,\n", "9".repeat(5000));
        let (_, sink) = run_on("k", data.as_bytes()).await;
        let r = &sink.rejects[0];
        assert_eq!(r.value.as_ref().unwrap().chars().count(), MAX_REJECT_VALUE_CHARS + 1);
        assert_eq!(r.raw.as_ref().unwrap().chars().count(), MAX_REJECT_RAW_CHARS + 1);
    }

    #[tokio::test]
    async fn chunks_are_bounded() {
        let mut data = format!("{HEADER}\n");
        for i in 0..(CHUNK_ROWS * 2 + 10) {
            data.push_str(&format!("acme,e{i},2026-11-23T10:00:00Z,u{i},,login,,\n"));
        }
        let (acc, sink) = run_on("k", data.as_bytes()).await;
        assert_eq!(acc.rows_loaded as usize, CHUNK_ROWS * 2 + 10);
        assert_eq!(sink.rows.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![CHUNK_ROWS, CHUNK_ROWS, 10]);
    }

    #[tokio::test]
    async fn record_defects_are_row_rejects_with_line_and_raw_and_the_rest_loads() {
        let good = |i: u32| format!("acme,e{i},2026-11-23T10:00:00Z,u{i},,login,,");
        let data = [
            HEADER.to_string(),
            good(1),
            format!("acme,e2,2026-11-23T10:00:00Z,u2,,login,,{}", "z".repeat(300)),
            good(3),
            format!("{},{}", good(4), ",".repeat(20)),
            "acme,\"e5\"x,2026-11-23T10:00:00Z,u5,,login,,".to_string(),
            good(6),
            "acme,\"e8,2026-11-23T10:00:00Z".to_string(),
            good(9),
            String::new(),
        ]
        .join("\n");
        let limits = RecordLimits { max_record_bytes: 200, max_columns: 12 };
        let (acc, sink) = run_limited("k", data.as_bytes(), limits).await;
        assert_eq!((acc.rows_read, acc.rows_loaded, acc.rows_rejected), (7, 3, 4));
        assert_eq!(lines(&sink.rows), vec![2, 4, 7]);
        let got: Vec<(u64, &str)> = sink.rejects.iter().map(|r| (r.line, r.rule)).collect();
        // The open quote on line 8 runs to the end of the file: one record, the row on line 9 in it.
        assert_eq!(got, vec![(3, "too_long"), (5, "too_many_columns"), (6, "stray_quote"), (8, "unterminated_quote")]);
        assert_eq!(sink.rejects[0].reason, "the record is 340 bytes long, over limits.max_record_bytes = 200");
        // Its raw text: the first max_record_bytes field bytes (here 33 before the z run), marked cut.
        let raw = sink.rejects[0].raw.as_deref().unwrap();
        assert_eq!(raw, format!("acme,e2,2026-11-23T10:00:00Z,u2,,login,,{}…", "z".repeat(200 - 33)));
        assert_eq!(sink.rejects[1].reason, "the record has 29 fields, over limits.max_columns = 12");
        assert_eq!(sink.rejects[2].raw.as_deref(), Some("acme,e5x,2026-11-23T10:00:00Z,u5,,login,,"));
        assert_eq!(
            sink.rejects[3].reason,
            "a quoted field is never closed: the record runs to the end of the file (71 bytes, 2 lines)"
        );
        assert!(sink.rejects.iter().all(|r| r.column.is_none() && r.value.is_none()));
    }

    #[tokio::test]
    async fn lines_are_physical_whatever_the_line_ends_and_quoted_text_is_exact() {
        let row = |i: u32, agent: &str| format!("acme,e{i},2026-11-23T10:00:00Z,u{i},,login,,{agent}");
        // CR-only line ends.
        let data = format!("{HEADER}\r{}\r{}\r", row(1, ""), row(2, ""));
        let (acc, sink) = run_on("k", data.as_bytes()).await;
        assert_eq!(acc.rows_loaded, 2);
        assert_eq!(lines(&sink.rows), vec![2, 3]);
        // Blank lines, CRLF, and CR, LF and CRLF inside a quoted field, stored byte for byte.
        let data = format!("\n{HEADER}\r\n\r\n{}\r\n\n{}\r\n{}\n", row(1, "\"a\r\nb\rc\nd\""), row(2, ""), row(3, "x"));
        let (acc, sink) = run_on("k", data.as_bytes()).await;
        let acme = RowCustomers::One("acme".into());
        assert_eq!(
            acc,
            FileAccount { rows_read: 3, rows_loaded: 3, rows_rejected: 0, file_reject: None, customers: acme }
        );
        assert_eq!(lines(&sink.rows), vec![4, 9, 10]);
        assert_eq!(row_of(&sink.rows, 0)[7].as_deref(), Some("a\r\nb\rc\nd"));
        // A reject names the physical line too.
        let data = format!("{HEADER}\r\r{}\racme,e2,never,u2,,login,,\r", row(1, "\"x\ry\""));
        let (_, sink) = run_on("k", data.as_bytes()).await;
        assert_eq!(lines(&sink.rows), vec![3]);
        assert_eq!((sink.rejects[0].line, sink.rejects[0].rule), (5, "type"));
    }

    fn row_of(chunks: &[RowChunk], i: usize) -> Vec<Option<String>> {
        row(chunks, i)
    }

    #[tokio::test]
    async fn a_header_over_a_limit_rejects_the_file() {
        // One line of 2 MiB: never held whole.
        let mut data = b"\r\n\n".to_vec();
        data.extend(std::iter::repeat_n(b'h', 2 << 20));
        let (acc, sink) = run_on("k", &data).await;
        let r = acc.file_reject.unwrap();
        assert_eq!((r.rule, r.line), ("too_long", 3));
        assert_eq!(r.reason, "header: the record is 2097152 bytes long, over limits.max_record_bytes = 1048576");
        assert_eq!((acc.rows_read, acc.rows_rejected), (0, 0));
        assert!(sink.rejects.is_empty());
        // Too many columns; the rows after it are counted as rejected with the file.
        let data = format!("{}\n{}\nx\n", vec!["c"; 2000].join(","), vec!["1"; 2000].join(","));
        let (acc, _) = run_on("k", data.as_bytes()).await;
        let r = acc.file_reject.unwrap();
        assert_eq!((r.rule, r.line), ("too_many_columns", 1));
        assert_eq!((acc.rows_read, acc.rows_loaded, acc.rows_rejected), (2, 0, 2));
        // An open quote in the header.
        let (acc, _) = run_on("k", b"customer,\"event_id\n").await;
        assert_eq!(acc.file_reject.unwrap().rule, "unterminated_quote");
    }

    #[test]
    fn every_record_defect_rule_is_a_known_rule() {
        for d in [
            RecordDefect::TooLong { bytes: 1 },
            RecordDefect::TooManyColumns { columns: 1 },
            RecordDefect::UnterminatedQuote { bytes: 1, lines: 1 },
            RecordDefect::StrayQuote,
        ] {
            assert!(RULES.contains(&d.rule()), "{}", d.rule());
        }
    }
}
