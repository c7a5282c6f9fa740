//! The record reader: CSV records out of an [`AsyncRead`], in memory bounded per record, each
//! with the physical line it starts on.
//!
//! Owns record splitting, quoting, line numbers and the per-record limits; knows nothing of the
//! contract. It drives `csv_core` (the incremental parser under the `csv` crates, so records
//! split exactly as the `csv` crate splits them) over one fixed-size input buffer.
//!
//! **Quick path**: a record that lies whole in the buffer and is plainly well formed (every
//! quoted field closed and followed by a delimiter or a line end, within the limits) is split by
//! [`quick_record`], in one pass that searches for the few bytes that matter, instead of by the
//! parser and the quote scan beside it; its fields and lines are exactly the parser's. Anything
//! else goes to the parser from the record's first byte, as if the quick path did not exist
//! (`proptests::the_quick_path_reads_every_record_as_the_parser_alone_does` compares the two).
//!
//! **What counts toward `max_record_bytes`**: the record's raw bytes as they are in the file, from
//! its first byte to the last byte before its terminator — delimiters, quotes, doubled quotes
//! and line breaks inside quoted fields included; the terminator, the blank lines before the
//! record and a leading byte-order mark not included. A record of exactly `max_record_bytes`
//! passes. Field bytes (quotes removed) never exceed the raw bytes, so the field buffer never
//! grows past `max_record_bytes + 1`, nor the field-end buffer past `max_columns + 1` entries.
//!
//! **Resynchronisation**: once a record passes a limit, the parser keeps running over it but its
//! output goes to a small scratch buffer that is overwritten on every call — nothing more of the
//! record is kept than a prefix of [`KEPT_PREFIX_BYTES`] for the reject's raw text. The record
//! ends where the parser says it ends (its terminator, outside quotes), and the next record is
//! read normally. So an over-long record costs no memory, and the records after it load; a
//! record that cannot end before the end of the file (a quote never closed) is one rejected
//! record running to the end of the file.
//!
//! **Line numbers** are physical: LF, CRLF and a lone CR each end one line, wherever they are —
//! record terminators, blank lines (skipped as records, counted as lines) and line breaks inside
//! quoted fields. A record's line is the line of its first byte.
//!
//! **Exact text**: only record terminators are consumed; CR, LF and CRLF inside quoted fields
//! reach the fields byte for byte. Two departures from RFC 4180 are reported, never repaired: a
//! quoted field still open at the end of the file ([`RecordDefect::UnterminatedQuote`]: the
//! `csv` crate would load it as if closed) and text between a closing quote and the next
//! delimiter or line end ([`RecordDefect::StrayQuote`]: `"ab"c` would silently become `abc`). A
//! quote inside an unquoted field (`ab"c`) is kept as the literal byte it is, as the `csv`
//! crate keeps it.

use std::io;
use std::ops::Range;

use csv_core::ReadRecordResult;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of the one input buffer the file is read through.
pub const INPUT_BUFFER_BYTES: usize = 256 * 1024;
/// How many field bytes of a record over a limit are kept, for its reject's raw text.
pub const KEPT_PREFIX_BYTES: usize = 4096;
/// Where the parser writes the fields of a record over a limit (overwritten on every call).
const SCRATCH_BYTES: usize = 16 * 1024;
const SCRATCH_ENDS: usize = 256;
const BOM: &[u8] = b"\xef\xbb\xbf";

/// The per-record limits (config `limits.max_record_bytes`, `limits.max_columns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// Largest raw size of one record, in bytes (see the module docs for what counts).
    pub max_record_bytes: usize,
    /// Most fields in one record.
    pub max_columns: usize,
}

impl Default for RecordLimits {
    fn default() -> Self {
        RecordLimits { max_record_bytes: 1 << 20, max_columns: 1024 }
    }
}

/// Why a record is not handed on as fields to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordDefect {
    /// More raw bytes than `max_record_bytes`; `bytes` is the record's whole raw length.
    TooLong { bytes: u64 },
    /// More fields than `max_columns`; `columns` is how many the record has.
    TooManyColumns { columns: u64 },
    /// A quoted field is still open at the end of the file: the record ran to it.
    UnterminatedQuote { bytes: u64, lines: u64 },
    /// Text after a closing quote, before the next delimiter or line end.
    StrayQuote,
}

impl RecordDefect {
    /// The reject rule (one of `validate::RULES`).
    pub fn rule(&self) -> &'static str {
        match self {
            RecordDefect::TooLong { .. } => "too_long",
            RecordDefect::TooManyColumns { .. } => "too_many_columns",
            RecordDefect::UnterminatedQuote { .. } => "unterminated_quote",
            RecordDefect::StrayQuote => "stray_quote",
        }
    }

    pub fn describe(&self, limits: RecordLimits) -> String {
        match *self {
            RecordDefect::TooLong { bytes } => {
                format!("the record is {bytes} bytes long, over limits.max_record_bytes = {}", limits.max_record_bytes)
            }
            RecordDefect::TooManyColumns { columns } => {
                format!("the record has {columns} fields, over limits.max_columns = {}", limits.max_columns)
            }
            RecordDefect::UnterminatedQuote { bytes, lines } => format!(
                "a quoted field is never closed: the record runs to the end of the file ({bytes} bytes, {lines} lines)"
            ),
            RecordDefect::StrayQuote => {
                "a quoted field has text after its closing quote (only a delimiter or a line end may follow it)".into()
            }
        }
    }
}

/// The fields of one record, borrowed from the reader until its next read.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    bytes: &'a [u8],
    /// End offset in `bytes` of each field.
    ends: &'a [usize],
}

impl<'a> Fields<'a> {
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// All field bytes, one after the other.
    pub fn as_slice(&self) -> &'a [u8] {
        &self.bytes[..self.ends.last().copied().unwrap_or(0)]
    }
    /// Where field `i` lies in [`Fields::as_slice`].
    pub fn range(&self, i: usize) -> Option<Range<usize>> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        Some(start..end)
    }
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.range(i).map(|r| &self.bytes[r])
    }
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let this = *self;
        (0..this.len()).map(move |i| &this.bytes[this.range(i).expect("index within the record")])
    }
}

impl std::ops::Index<usize> for Fields<'_> {
    type Output = [u8];
    fn index(&self, i: usize) -> &[u8] {
        self.get(i).expect("field index within the record")
    }
}

/// One record as read.
#[derive(Debug, Clone, Copy)]
pub struct RecordRead<'a> {
    /// Physical line of the record's first byte.
    pub line: u64,
    /// Raw length (see the module docs).
    pub bytes: u64,
    /// The fields; for a record over a limit only those in its first [`KEPT_PREFIX_BYTES`] of
    /// field bytes (the last one possibly cut), for the reject's raw text (`cut` is then true).
    pub fields: Fields<'a>,
    pub cut: bool,
    pub defect: Option<RecordDefect>,
    /// The reader read from its input for this record, so it may have waited (for the network,
    /// a disk): what came before it is not necessarily just now.
    pub read_input: bool,
}

/// Reads records one at a time; see the module docs.
pub struct RecordReader<R> {
    input: R,
    core: csv_core::Reader,
    limits: RecordLimits,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    eof: bool,
    /// Field bytes and field ends of the record being read (lengths are the usable sizes).
    fields: Vec<u8>,
    ends: Vec<usize>,
    scratch: Box<[u8]>,
    scratch_ends: Box<[usize]>,
    /// Line breaks in every byte consumed so far.
    breaks: u64,
    /// Reads from the input so far.
    reads: u64,
    /// The last byte consumed was a CR (an LF right after it ends the same line).
    last_cr: bool,
    /// The start of the file (its byte-order mark) has been dealt with.
    started: bool,
    /// The first record's input starts with a BOM that the parser will strip.
    bom_pending: bool,
    /// The parser has been given input, so it strips no BOM from a later record's start; the
    /// quick path (see [`quick_record`]) may then read records beside it.
    primed: bool,
    /// Whether records whole in the buffer are read by [`quick_record`] (off only in tests that
    /// compare the two paths).
    quick: bool,
}

impl<R: AsyncRead + Unpin> RecordReader<R> {
    pub fn new(input: R, limits: RecordLimits) -> Self {
        Self::with_buffer(input, limits, INPUT_BUFFER_BYTES)
    }

    /// With an input buffer of `buffer_bytes` (at least 4): small ones test buffer boundaries.
    pub fn with_buffer(input: R, limits: RecordLimits, buffer_bytes: usize) -> Self {
        let limits =
            RecordLimits { max_record_bytes: limits.max_record_bytes.max(1), max_columns: limits.max_columns.max(1) };
        RecordReader {
            input,
            // The defaults are RFC 4180's: comma, double quote doubled to escape, and CR, LF or
            // CRLF as the record terminator.
            core: csv_core::ReaderBuilder::new().build(),
            limits,
            buf: vec![0; buffer_bytes.max(4)].into_boxed_slice(),
            pos: 0,
            filled: 0,
            eof: false,
            fields: vec![0; (limits.max_record_bytes + 1).min(1024)],
            ends: vec![0; (limits.max_columns + 1).min(64)],
            scratch: vec![0; SCRATCH_BYTES].into_boxed_slice(),
            scratch_ends: vec![0; SCRATCH_ENDS].into_boxed_slice(),
            breaks: 0,
            reads: 0,
            last_cr: false,
            started: false,
            bom_pending: false,
            primed: false,
            quick: true,
        }
    }

    /// Every record through the parser, none through the quick path (to compare the two).
    #[cfg(test)]
    pub(crate) fn parser_only(mut self) -> Self {
        self.quick = false;
        self
    }

    pub fn limits(&self) -> RecordLimits {
        self.limits
    }

    /// The physical line being read (where an error of the input stream struck).
    pub fn line(&self) -> u64 {
        self.breaks + 1
    }

    /// Bytes held by the reader's buffers: bounded by the limits, whatever the input.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
            + self.fields.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.scratch.len()
            + self.scratch_ends.len() * std::mem::size_of::<usize>()
    }

    /// The most [`RecordReader::buffered_bytes`] can be for these limits and buffer size.
    pub fn max_buffered_bytes(limits: RecordLimits, buffer_bytes: usize) -> usize {
        let ends = (limits.max_columns + 2).max(64);
        buffer_bytes.max(4)
            + (limits.max_record_bytes + 1).max(1024)
            + ends * std::mem::size_of::<usize>()
            + SCRATCH_BYTES
            + SCRATCH_ENDS * std::mem::size_of::<usize>()
    }

    /// The next record, or `None` at the end of the input. Errors are the input's own.
    pub async fn next(&mut self) -> io::Result<Option<RecordRead<'_>>> {
        let reads = self.reads;
        if !self.started {
            self.start().await?;
        }
        // Blank lines: every CR and LF before the record's first byte. The parser would skip
        // them too; they are skipped here to know the line the record starts on.
        loop {
            if self.pos == self.filled && !self.refill().await? {
                return Ok(None);
            }
            let rest = &self.buf[self.pos..self.filled];
            let run = rest.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            if run > 0 {
                self.breaks += count_breaks(&rest[..run], self.last_cr);
                self.last_cr = rest[run - 1] == b'\r';
                self.pos += run;
            }
            if self.pos < self.filled {
                break;
            }
        }
        if self.quick && self.primed && !self.bom_pending {
            let input = &self.buf[self.pos..self.filled];
            if let Some(q) = quick_record(input, &mut self.fields, &mut self.ends, self.limits) {
                let line = self.breaks + 1;
                self.breaks += q.breaks + 1;
                self.last_cr = input[q.raw] == b'\r';
                self.pos += q.raw + 1;
                return Ok(Some(RecordRead {
                    line,
                    bytes: q.raw as u64,
                    fields: Fields { bytes: &self.fields[..q.nout], ends: &self.ends[..q.nend] },
                    cut: false,
                    defect: None,
                    read_input: self.reads != reads,
                }));
            }
        }
        self.read_record(reads).await.map(Some)
    }

    /// The byte-order mark: the parser strips one only from the very first input it is given
    /// (as the `csv` crate reading the same bytes does), so hand it that input now.
    async fn start(&mut self) -> io::Result<()> {
        self.started = true;
        while self.filled < BOM.len() + 1 && self.fill_more().await? {}
        let bom = if self.buf[..self.filled].starts_with(BOM) { BOM.len() } else { 0 };
        let run = self.buf[bom..self.filled].iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        if run > 0 || (bom > 0 && bom == self.filled) {
            // The BOM (if any) with the blank lines after it: the parser strips the one and
            // skips the others, and no longer strips a BOM after this.
            let head = &self.buf[..bom + run];
            let (res, nin, _, _) = self.core.read_record(head, &mut self.scratch, &mut self.scratch_ends);
            self.primed = true;
            debug_assert!(matches!(res, ReadRecordResult::InputEmpty | ReadRecordResult::End) && nin == head.len());
            self.breaks += count_breaks(&head[bom..], false);
            self.last_cr = head.last() == Some(&b'\r') && run > 0;
            self.pos = bom + run;
        } else if bom > 0 {
            self.bom_pending = true;
        }
        Ok(())
    }

    /// Reads into an empty buffer; false at the end of the input.
    async fn refill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        self.pos = 0;
        self.filled = 0;
        self.fill_more().await
    }

    /// Reads more after what the buffer holds; false at the end of the input.
    async fn fill_more(&mut self) -> io::Result<bool> {
        self.reads += 1;
        let n = self.input.read(&mut self.buf[self.filled..]).await?;
        self.filled += n;
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// Reads the record whose first byte is at `pos` (`reads`: the input reads before it).
    async fn read_record(&mut self, reads: u64) -> io::Result<RecordRead<'_>> {
        let line = self.breaks + 1;
        let first_line_breaks = self.breaks;
        let limits = self.limits;
        // What is kept of a record over a limit: its first `prefix` field bytes, and of its
        // first `max_columns + 1` field ends those within them. The same whatever the reads.
        let prefix = KEPT_PREFIX_BYTES.min(limits.max_record_bytes);
        let mut quotes = QuoteScan::default();
        let mut raw: u64 = 0;
        // Field bytes and ends written to `fields` and `ends` (not to the scratch buffers).
        let (mut nout_total, mut nend_total) = (0usize, 0usize);
        let mut fields_seen: u64 = 0;
        let mut over: Option<Over> = None;
        let mut ends_to_scratch = false;
        let mut last_byte = 0u8;
        let terminated = loop {
            if self.pos == self.filled && !self.eof {
                self.refill().await?;
            }
            let input = &self.buf[self.pos..self.filled];
            let (out, out_kept): (&mut [u8], bool) = match over {
                None => (&mut self.fields[nout_total..], true),
                Some(_) if nout_total < prefix => (&mut self.fields[nout_total..prefix], true),
                Some(_) => (&mut self.scratch, false),
            };
            let ends: &mut [usize] =
                if ends_to_scratch { &mut self.scratch_ends } else { &mut self.ends[nend_total..] };
            let (res, nin, nout, nend) = self.core.read_record(input, out, ends);
            self.primed = true;
            let skip = if std::mem::take(&mut self.bom_pending) { BOM.len().min(nin) } else { 0 };
            let consumed = &input[skip..nin];
            // A record ends on its terminator byte, the last one consumed (none at the end of the file).
            let terminated = res == ReadRecordResult::Record && !consumed.is_empty();
            let body = if terminated { &consumed[..consumed.len() - 1] } else { consumed };
            self.breaks += quotes.feed(body, self.last_cr);
            if let Some(&last) = consumed.last() {
                self.last_cr = last == b'\r';
                last_byte = last;
            }
            self.breaks += terminated as u64;
            self.pos += nin;
            raw += body.len() as u64;
            fields_seen += nend as u64;
            if out_kept {
                nout_total += nout;
            }
            if !ends_to_scratch {
                nend_total += nend;
            }
            if over.is_none() && raw > limits.max_record_bytes as u64 {
                self.enter_over(&mut over, Over::Bytes, prefix);
            }
            match res {
                ReadRecordResult::Record | ReadRecordResult::End => break terminated,
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull if over.is_none() => {
                    // Field bytes never outnumber raw bytes: under the limit there is room to grow.
                    let grown = (self.fields.len() * 2).min(limits.max_record_bytes + 1);
                    if grown > self.fields.len() {
                        self.fields.reserve_exact(grown - self.fields.len());
                        self.fields.resize(grown, 0);
                    } else {
                        self.enter_over(&mut over, Over::Bytes, prefix);
                    }
                }
                ReadRecordResult::OutputEndsFull if !ends_to_scratch => {
                    let grown = (self.ends.len() * 2).min(limits.max_columns + 1);
                    if grown > self.ends.len() {
                        self.ends.reserve_exact(grown - self.ends.len());
                        self.ends.resize(grown, 0);
                    } else {
                        ends_to_scratch = true;
                        self.enter_over(&mut over, Over::Columns, prefix);
                    }
                }
                // The prefix is full, or a scratch buffer is: the scratch is simply written again.
                ReadRecordResult::OutputFull | ReadRecordResult::OutputEndsFull => {}
            }
        };
        // The lines the record's bytes are on (a line break it ends with starts no line of it).
        let ends_on_break = terminated || matches!(last_byte, b'\r' | b'\n');
        let lines = self.breaks - first_line_breaks + 1 - ends_on_break as u64;
        let defect = if !terminated && quotes.in_quotes() {
            Some(RecordDefect::UnterminatedQuote { bytes: raw, lines })
        } else {
            match over {
                Some(Over::Bytes) => Some(RecordDefect::TooLong { bytes: raw }),
                Some(Over::Columns) => Some(RecordDefect::TooManyColumns { columns: fields_seen }),
                None if fields_seen > limits.max_columns as u64 => {
                    Some(RecordDefect::TooManyColumns { columns: fields_seen })
                }
                None if quotes.stray => Some(RecordDefect::StrayQuote),
                None => None,
            }
        };
        let cut = over.is_some();
        let (nbytes, nends) = if cut {
            let mut upto = nout_total.min(prefix);
            if ends_to_scratch {
                // Bytes past the last end kept belong to fields whose ends were not kept.
                upto = upto.min(self.ends[..nend_total].last().copied().unwrap_or(0));
            }
            self.keep_prefix(upto, nend_total)
        } else {
            (nout_total, nend_total)
        };
        Ok(RecordRead {
            line,
            bytes: raw,
            fields: Fields { bytes: &self.fields[..nbytes], ends: &self.ends[..nends] },
            cut,
            defect,
            read_input: self.reads != reads,
        })
    }

    /// The record is over a limit: from now on only its prefix is kept.
    fn enter_over(&mut self, over: &mut Option<Over>, why: Over, prefix: usize) {
        if over.is_none() {
            *over = Some(why);
            if self.fields.len() < prefix {
                self.fields.reserve_exact(prefix - self.fields.len());
                self.fields.resize(prefix, 0);
            }
        }
    }

    /// The (bytes, ends) of the first `cut` field bytes among the `nend` field ends written.
    fn keep_prefix(&mut self, cut: usize, nend: usize) -> (usize, usize) {
        let mut n = self.ends[..nend].iter().take_while(|&&e| e <= cut).count();
        let last_end = if n == 0 { 0 } else { self.ends[n - 1] };
        if cut > last_end {
            if self.ends.len() == n {
                self.ends.reserve_exact(1);
                self.ends.push(0);
            }
            self.ends[n] = cut;
            n += 1;
        }
        (cut, n)
    }
}

#[derive(Debug, Clone, Copy)]
enum Over {
    Bytes,
    Columns,
}

/// A record read by [`quick_record`]: its raw length (its terminator is the byte right after
/// it), the field bytes and field ends written, and the line breaks inside its quoted fields.
#[derive(Debug, Clone, Copy)]
struct Quick {
    raw: usize,
    nout: usize,
    nend: usize,
    breaks: u64,
}

/// The quick path: the record at the start of `input` (its first byte neither CR nor LF), read
/// without the parser when it is plainly well formed — whole in `input` up to its terminator,
/// every quoted field closed and followed by a delimiter or a line end, within the limits and
/// within the room `fields` and `ends` already have. Its fields are then exactly what the parser
/// would write (RFC 4180 with the parser's reading of a quote inside an unquoted field: a
/// literal byte). Anything else — a record running past the buffer, a stray or open quote, a
/// limit, a buffer to grow — returns `None` having consumed nothing, and the parser reads the
/// record from its first byte as if the quick path did not exist. One pass over the bytes,
/// searching for the few that matter, where the parser and the quote scan beside it take two.
fn quick_record(input: &[u8], fields: &mut [u8], ends: &mut [usize], limits: RecordLimits) -> Option<Quick> {
    // Past these the parser decides (and reports a limit); the fields must fit as they are. A
    // record of exactly `max_record_bytes` passes: its terminator is the byte after the cut.
    let max_ends = limits.max_columns.min(ends.len());
    let input = &input[..input.len().min(limits.max_record_bytes.saturating_add(1))];
    let (mut i, mut nout, mut nend, mut breaks) = (0usize, 0usize, 0usize, 0u64);
    let mut put = |from: &[u8], nout: &mut usize| -> Option<()> {
        let to = fields.get_mut(*nout..*nout + from.len())?;
        to.copy_from_slice(from);
        *nout += from.len();
        Some(())
    };
    loop {
        // At the start of a field.
        let end = if input.get(i) == Some(&b'"') {
            i += 1;
            loop {
                let at = i + memchr::memchr3(b'"', b'\r', b'\n', &input[i..])?;
                match input[at] {
                    b'"' => {
                        put(&input[i..at], &mut nout)?;
                        match *input.get(at + 1)? {
                            // A doubled quote is one quote of the field.
                            b'"' => {
                                put(b"\"", &mut nout)?;
                                i = at + 2;
                            }
                            b',' | b'\r' | b'\n' => break at + 1,
                            // Text after the closing quote: the parser reads it, and reports it.
                            _ => return None,
                        }
                    }
                    // A line break inside the field, counted as `count_breaks` counts (the
                    // byte before the field's text is its opening quote, not a CR).
                    b'\r' => {
                        breaks += 1;
                        put(&input[i..at + 1], &mut nout)?;
                        i = at + 1;
                    }
                    _ => {
                        breaks += (input[at - 1] != b'\r') as u64;
                        put(&input[i..at + 1], &mut nout)?;
                        i = at + 1;
                    }
                }
            }
        } else {
            // Unquoted: up to the next delimiter or line end; a quote in it is a literal byte.
            let at = i + memchr::memchr3(b',', b'\r', b'\n', &input[i..])?;
            put(&input[i..at], &mut nout)?;
            at
        };
        if nend == max_ends {
            return None;
        }
        ends[nend] = nout;
        nend += 1;
        if input[end] == b',' {
            i = end + 1;
        } else {
            return Some(Quick { raw: end, nout, nend, breaks });
        }
    }
}

/// Line breaks in `s`: every CR, and every LF not right after a CR (`prev_cr`: the byte before `s`).
fn count_breaks(s: &[u8], prev_cr: bool) -> u64 {
    let mut n = 0;
    for i in memchr::memchr2_iter(b'\r', b'\n', s) {
        let after_cr = if i == 0 { prev_cr } else { s[i - 1] == b'\r' };
        if s[i] == b'\r' || !after_cr {
            n += 1;
        }
    }
    n
}

/// Follows the quoting of one record beside the parser (which does not say), to tell an open
/// quote at the end of the file and text after a closing quote, and to count the line breaks
/// inside quoted fields. Fed the record's bytes without its terminator.
#[derive(Debug, Default)]
struct QuoteScan {
    state: QuoteState,
    stray: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum QuoteState {
    /// At the start of a field (record start or after a delimiter).
    #[default]
    FieldStart,
    /// Inside an unquoted field.
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: a doubled quote or the closing one, the next byte says.
    QuoteInQuoted,
}

impl QuoteScan {
    fn in_quotes(&self) -> bool {
        self.state == QuoteState::Quoted
    }

    /// Scans `s`; returns the line breaks inside quoted fields (`prev_cr`: the byte before `s`).
    fn feed(&mut self, s: &[u8], prev_cr: bool) -> u64 {
        let mut breaks = 0;
        let mut i = 0;
        while i < s.len() {
            match self.state {
                QuoteState::FieldStart | QuoteState::Unquoted => {
                    let Some(off) = memchr::memchr(b'"', &s[i..]) else {
                        // Outside quotes a CR or LF would have ended the record: none here.
                        self.state = if s[s.len() - 1] == b',' { QuoteState::FieldStart } else { QuoteState::Unquoted };
                        break;
                    };
                    let q = i + off;
                    let at_start = if q == i { self.state == QuoteState::FieldStart } else { s[q - 1] == b',' };
                    // Inside an unquoted field a quote is a literal byte and stays one.
                    self.state = if at_start { QuoteState::Quoted } else { QuoteState::Unquoted };
                    i = q + 1;
                }
                QuoteState::Quoted => {
                    let end = memchr::memchr(b'"', &s[i..]).map_or(s.len(), |off| i + off);
                    breaks += count_breaks(&s[i..end], if i == 0 { prev_cr } else { s[i - 1] == b'\r' });
                    if end < s.len() {
                        self.state = QuoteState::QuoteInQuoted;
                    }
                    i = end + 1;
                }
                QuoteState::QuoteInQuoted => {
                    self.state = match s[i] {
                        b'"' => QuoteState::Quoted,
                        b',' => QuoteState::FieldStart,
                        _ => {
                            self.stray = true;
                            QuoteState::Unquoted
                        }
                    };
                    i += 1;
                }
            }
        }
        breaks
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Hands out at most `step` bytes per read, to put record, BOM and CRLF boundaries
    /// anywhere in the reader's buffer.
    pub(crate) struct Trickle<'a> {
        pub data: &'a [u8],
        pub step: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let n = self.step.max(1).min(self.data.len()).min(out.remaining());
            out.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Got {
        line: u64,
        bytes: u64,
        fields: Vec<String>,
        defect: Option<RecordDefect>,
    }

    fn rec(line: u64, bytes: u64, fields: &[&str], defect: Option<RecordDefect>) -> Got {
        Got { line, bytes, fields: fields.iter().map(|f| f.to_string()).collect(), defect }
    }

    async fn read_with(data: &[u8], limits: RecordLimits, buffer: usize, step: usize) -> Vec<Got> {
        let quick =
            read_through(RecordReader::with_buffer(Trickle { data, step }, limits, buffer), limits, buffer).await;
        let parser = RecordReader::with_buffer(Trickle { data, step }, limits, buffer).parser_only();
        assert_eq!(quick, read_through(parser, limits, buffer).await, "the quick path reads as the parser does");
        quick
    }

    async fn read_through(mut r: RecordReader<Trickle<'_>>, limits: RecordLimits, buffer: usize) -> Vec<Got> {
        let mut out = Vec::new();
        while let Some(rec) = r.next().await.unwrap() {
            let fields = rec.fields.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
            out.push(Got { line: rec.line, bytes: rec.bytes, fields, defect: rec.defect });
            assert!(r.buffered_bytes() <= RecordReader::<Trickle>::max_buffered_bytes(limits, buffer));
        }
        out
    }

    /// Reads `data` whole and in every small buffer and read size: the answers must not differ.
    async fn read_all(data: &[u8], limits: RecordLimits) -> Vec<Got> {
        let whole = read_with(data, limits, INPUT_BUFFER_BYTES, usize::MAX).await;
        for buffer in [4, 5, 7, 16] {
            for step in [1, 2, 3, 64] {
                let got = read_with(data, limits, buffer, step).await;
                assert_eq!(got, whole, "buffer {buffer}, read size {step}");
            }
        }
        whole
    }

    fn limits(max_record_bytes: usize, max_columns: usize) -> RecordLimits {
        RecordLimits { max_record_bytes, max_columns }
    }

    #[tokio::test]
    async fn lines_count_lf_crlf_and_lone_cr_as_one_break_each() {
        let got = read_all(b"a,1\nb,2\r\nc,3\rd,4\n", RecordLimits::default()).await;
        assert_eq!(
            got,
            vec![
                rec(1, 3, &["a", "1"], None),
                rec(2, 3, &["b", "2"], None),
                rec(3, 3, &["c", "3"], None),
                rec(4, 3, &["d", "4"], None),
            ]
        );
        // A file with CR-only line ends: every row has its own line.
        let got = read_all(b"h1,h2\ra,b\rc,d\r", RecordLimits::default()).await;
        assert_eq!(got.iter().map(|g| g.line).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn blank_lines_are_skipped_as_records_but_counted_as_lines() {
        let got = read_all(b"\n\r\n\ra\n\n\nb\r\r\nc", RecordLimits::default()).await;
        assert_eq!(got, vec![rec(4, 1, &["a"], None), rec(7, 1, &["b"], None), rec(9, 1, &["c"], None)]);
        assert_eq!(read_all(b"", RecordLimits::default()).await, vec![]);
        assert_eq!(read_all(b"\r\n\n\r", RecordLimits::default()).await, vec![]);
    }

    #[tokio::test]
    async fn line_breaks_inside_quotes_are_kept_byte_for_byte_and_counted() {
        let data = b"\"x\r\ny\",1\r\n\"p\rq\nr\",2\nz,\"\"\"a\"\"\"\r\n\"\r\",\"\n\"\r";
        let got = read_all(data, RecordLimits::default()).await;
        assert_eq!(
            got,
            vec![
                rec(1, 8, &["x\r\ny", "1"], None),
                rec(3, 9, &["p\rq\nr", "2"], None),
                rec(6, 9, &["z", "\"a\""], None),
                rec(7, 7, &["\r", "\n"], None),
            ]
        );
    }

    #[tokio::test]
    async fn a_record_without_a_terminator_at_the_end_of_the_file_is_read() {
        let got = read_all(b"a,b\nc,d", RecordLimits::default()).await;
        assert_eq!(got, vec![rec(1, 3, &["a", "b"], None), rec(2, 3, &["c", "d"], None)]);
        let got = read_all(b"a,\"b\"", RecordLimits::default()).await;
        assert_eq!(got, vec![rec(1, 5, &["a", "b"], None)]);
    }

    #[tokio::test]
    async fn a_quote_open_at_the_end_of_the_file_is_a_defect_with_its_line() {
        let got = read_all(b"a,b\n\"c,d\ne", RecordLimits::default()).await;
        let open = RecordDefect::UnterminatedQuote { bytes: 6, lines: 2 };
        assert_eq!(got, vec![rec(1, 3, &["a", "b"], None), rec(2, 6, &["c,d\ne"], Some(open))]);
        assert_eq!(open.rule(), "unterminated_quote");
        // Closed at the very end: fine.
        assert_eq!(read_all(b"\"c\"", RecordLimits::default()).await, vec![rec(1, 3, &["c"], None)]);
        // An open quote swallowing more than the limit is still reported as the open quote.
        let mut data = b"x\n\"".to_vec();
        data.extend(std::iter::repeat_n(b'y', 100));
        let got = read_all(&data, limits(10, 4)).await;
        assert_eq!(got[1].line, 2);
        assert_eq!(got[1].defect, Some(RecordDefect::UnterminatedQuote { bytes: 101, lines: 1 }));
    }

    #[tokio::test]
    async fn text_after_a_closing_quote_is_a_defect_a_quote_inside_an_unquoted_field_is_kept() {
        let stray = Some(RecordDefect::StrayQuote);
        let got = read_all(b"\"ab\"c,d\nab\"c,d\n\"a\"\"b\",c\n\"ab\" ,c\nx,\"y\"z\n", RecordLimits::default()).await;
        assert_eq!(
            got,
            vec![
                // What the parser hands on for `"ab"c`; the defect says it is not to be trusted.
                rec(1, 7, &["abc", "d"], stray),
                rec(2, 6, &["ab\"c", "d"], None),
                rec(3, 8, &["a\"b", "c"], None),
                rec(4, 7, &["ab ", "c"], stray),
                rec(5, 6, &["x", "yz"], stray),
            ]
        );
        assert_eq!(RecordDefect::StrayQuote.rule(), "stray_quote");
    }

    #[tokio::test]
    async fn an_over_long_record_is_rejected_and_reading_resumes_at_the_next_one() {
        let mut data = b"ok,1\n0123456789\n0123456789a\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 5000));
        data.extend_from_slice(b",y\r\n\"q\nq\",2\nnext,3\n\"");
        data.extend(std::iter::repeat_n(b'\n', 50));
        data.extend_from_slice(b"\"\nlast,4\n");
        let got = read_all(&data, limits(10, 4)).await;
        let lines: Vec<(u64, u64, Option<RecordDefect>)> = got.iter().map(|g| (g.line, g.bytes, g.defect)).collect();
        assert_eq!(
            lines,
            vec![
                (1, 4, None),
                // Exactly the limit passes; one byte more does not.
                (2, 10, None),
                (3, 11, Some(RecordDefect::TooLong { bytes: 11 })),
                (4, 5002, Some(RecordDefect::TooLong { bytes: 5002 })),
                (5, 7, None),
                (7, 6, None),
                // A quoted field of 50 line breaks: over the limit, and its lines still counted.
                (8, 52, Some(RecordDefect::TooLong { bytes: 52 })),
                (59, 6, None),
            ]
        );
        // Of a record over the limit, its first max_record_bytes field bytes are kept.
        assert_eq!(got[2].fields, vec!["0123456789"]);
        assert_eq!(got[3].fields, vec!["xxxxxxxxxx"]);
        assert_eq!(got[6].fields, vec!["\n".repeat(10)]);
        assert_eq!(got[4].fields, vec!["q\nq", "2"]);
        assert_eq!(got[7].fields, vec!["last", "4"]);
        assert_eq!(RecordDefect::TooLong { bytes: 1 }.rule(), "too_long");
    }

    #[tokio::test]
    async fn an_over_long_record_keeps_only_a_prefix_and_no_memory() {
        let mut data = b"a,".to_vec();
        data.extend(std::iter::repeat_n(b'x', 3 << 20));
        data.extend_from_slice(b"\nb,c\n");
        let lim = limits(1000, 8);
        let mut r = RecordReader::new(&data[..], lim);
        let rec = r.next().await.unwrap().unwrap();
        assert_eq!(
            (rec.line, rec.bytes, rec.defect),
            (1, (3 << 20) + 2, Some(RecordDefect::TooLong { bytes: (3 << 20) + 2 }))
        );
        assert!(rec.cut);
        assert_eq!(rec.fields.len(), 2);
        // The first min(KEPT_PREFIX_BYTES, max_record_bytes) field bytes.
        assert_eq!(rec.fields.as_slice().len(), 1000);
        assert_eq!(&rec.fields[1], &[b'x'; 999][..]);
        assert_eq!(&rec.fields[0], b"a");
        let rec = r.next().await.unwrap().unwrap();
        assert_eq!((rec.line, rec.defect, rec.fields.iter().collect::<Vec<_>>()), (2, None, vec![&b"b"[..], b"c"]));
        assert!(r.next().await.unwrap().is_none());
        let bound = RecordReader::<&[u8]>::max_buffered_bytes(lim, INPUT_BUFFER_BYTES);
        assert!(r.buffered_bytes() <= bound, "{} > {bound}", r.buffered_bytes());
        assert!(bound < INPUT_BUFFER_BYTES + 64 * 1024, "{bound}");
    }

    #[tokio::test]
    async fn too_many_columns_is_a_defect_counted_exactly() {
        let mut data = b"a,b,c\na,b,c,d\n".to_vec();
        data.extend(std::iter::repeat_n(&b"x,"[..], 9999).flatten());
        data.extend_from_slice(b"x\ny,z\n");
        let got = read_all(&data, limits(1 << 20, 3)).await;
        let lines: Vec<(u64, Option<RecordDefect>)> = got.iter().map(|g| (g.line, g.defect)).collect();
        assert_eq!(
            lines,
            vec![
                (1, None),
                (2, Some(RecordDefect::TooManyColumns { columns: 4 })),
                (3, Some(RecordDefect::TooManyColumns { columns: 10_000 })),
                (4, None),
            ]
        );
        assert_eq!(got[1].fields, vec!["a", "b", "c", "d"]);
        // Only the fields whose ends were kept (max_columns + 1 of them).
        assert_eq!(got[2].fields, vec!["x", "x", "x", "x"]);
        assert_eq!(got[3].fields, vec!["y", "z"]);
        assert_eq!(RecordDefect::TooManyColumns { columns: 4 }.rule(), "too_many_columns");
    }

    #[tokio::test]
    async fn one_leading_bom_is_stripped_and_not_counted() {
        let bom = "\u{feff}";
        let got = read_all(format!("{bom}a,b\nc\n").as_bytes(), RecordLimits::default()).await;
        assert_eq!(got, vec![rec(1, 3, &["a", "b"], None), rec(2, 1, &["c"], None)]);
        let got = read_all(format!("{bom}\r\n\"a\",b\n").as_bytes(), RecordLimits::default()).await;
        assert_eq!(got, vec![rec(2, 5, &["a", "b"], None)]);
        // Only the first: a second BOM, or one after the first line, is data.
        let got = read_all(format!("{bom}{bom}a\n{bom}b\n").as_bytes(), RecordLimits::default()).await;
        assert_eq!(got, vec![rec(1, 4, &["\u{feff}a"], None), rec(2, 4, &["\u{feff}b"], None)]);
        assert_eq!(read_all(bom.as_bytes(), RecordLimits::default()).await, vec![]);
    }

    #[test]
    fn describe_names_the_limit() {
        let l = limits(100, 8);
        assert_eq!(
            RecordDefect::TooLong { bytes: 101 }.describe(l),
            "the record is 101 bytes long, over limits.max_record_bytes = 100"
        );
        assert_eq!(
            RecordDefect::TooManyColumns { columns: 9 }.describe(l),
            "the record has 9 fields, over limits.max_columns = 8"
        );
    }
}
