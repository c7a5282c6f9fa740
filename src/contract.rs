//! The versioned schema contract: what a valid audit-log row is.
//!
//! Owns parsing of `contracts/*.toml`, the per-value rules (type, required, max length,
//! format) and `contract infer`. It knows nothing about files, streams or warehouses.

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("cannot read contract {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("contract {path} is not valid TOML: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("contract {name} v{version} is invalid: {reason}")]
    Invalid { name: String, version: u32, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    String,
    Integer,
    Float,
    Boolean,
    Timestamp,
    Date,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Email,
    Ip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownColumns {
    #[default]
    Ignore,
    Reject,
}

/// The widest VARCHAR Redshift has, in bytes: what a string column without `max_length` holds.
pub const MAX_VARCHAR_BYTES: usize = 65_535;

/// Fractional-second digits a stored timestamp keeps: Redshift's COPY takes "up to a
/// microsecond" and refuses more, so finer digits are cut off (truncated, never rounded:
/// rounding could carry a value into the next second, day or year). Every engine stores the same.
pub const MAX_FRACTION_DIGITS: usize = 6;

/// What a row whose `customer` differs from the customer its object key names gets
/// (keys matched by `customer_from_key`). In a bucket every customer writes to, one customer's
/// export must never write, or through newest-wins dedupe overwrite, another customer's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CustomerPolicy {
    /// The row is rejected (`customer_mismatch`, both values named); the rest of the file loads.
    #[default]
    RejectRow,
    /// The whole file is rejected at its first such row.
    RejectFile,
    /// The column is believed (deployments whose keys carry no customer).
    TrustColumn,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    #[serde(default)]
    pub required: bool,
    /// The most UTF-8 bytes a value may have (Redshift VARCHAR lengths are bytes; `é` takes 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// Header texts that also name this column (matched as names are: case, surrounding
    /// whitespace and a BOM ignored), for headers that are not SQL identifiers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Timestamps and dates: the earliest value accepted (inclusive), as a timestamp or date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<String>,
    /// Timestamps and dates: the latest value accepted (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// Timestamps: at most this many seconds after the moment of validation (clock garbage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_future_secs: Option<u64>,
    /// `min` and `max` in the stored form, set when the contract is checked.
    #[serde(skip)]
    bounds: (Option<String>, Option<String>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub name: String,
    pub version: u32,
    pub table: String,
    pub customer_column: String,
    pub event_time_column: String,
    /// Whose activity the weekly-active-users view counts.
    pub user_column: String,
    pub dedupe_key: Vec<String>,
    #[serde(default)]
    pub customer_from_key: Vec<String>,
    #[serde(default)]
    pub unknown_columns: UnknownColumns,
    /// Rows whose customer differs from the one the object key names: see [`CustomerPolicy`].
    #[serde(default)]
    pub customer_policy: CustomerPolicy,
    pub columns: Vec<Column>,
}

/// Why one value failed its column's rule. The rule names are the `rule` label of
/// `wau_ingest_rejects_total` and the `rule` column of the rejects table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    Required,
    MaxLength {
        max: usize,
        len: usize,
    },
    Type {
        expected: ColumnType,
    },
    Format {
        expected: Format,
    },
    /// A NUL character: no warehouse stores it (Redshift's COPY refuses the whole load), so the
    /// row is rejected here instead of blocking every batch it would be in.
    Nul,
    /// A timestamp or date outside what every engine and the WAU view represent (years
    /// 1–9999, after conversion to UTC), or outside the column's `min`/`max`/`max_future_secs`.
    OutOfRange {
        bound: String,
    },
}

impl ValueError {
    pub fn rule(&self) -> &'static str {
        match self {
            ValueError::Required => "required",
            ValueError::MaxLength { .. } => "max_length",
            ValueError::Type { .. } => "type",
            ValueError::Format { .. } => "format",
            ValueError::Nul => "nul_character",
            ValueError::OutOfRange { .. } => "out_of_range",
        }
    }
    pub fn describe(&self) -> String {
        match self {
            ValueError::Required => "a value is required".into(),
            ValueError::MaxLength { max, len } => format!("{len} bytes, at most {max} allowed"),
            ValueError::Type { expected } => format!("not a valid {}", type_name(*expected)),
            ValueError::Format { expected } => format!("not a valid {}", format_name(*expected)),
            ValueError::Nul => "contains a NUL character, which the warehouse cannot store".into(),
            ValueError::OutOfRange { bound } => format!("out of range: {bound}"),
        }
    }
}

fn type_name(t: ColumnType) -> &'static str {
    match t {
        ColumnType::String => "string",
        ColumnType::Integer => "integer",
        ColumnType::Float => "float",
        ColumnType::Boolean => "boolean",
        ColumnType::Timestamp => "timestamp (ISO-8601 or YYYY-MM-DD HH:MM:SS)",
        ColumnType::Date => "date (YYYY-MM-DD)",
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Email => "email address",
        Format::Ip => "IP address",
    }
}

impl Column {
    /// A column with no rules beyond its type.
    pub fn new(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.to_string(),
            ty,
            required: false,
            max_length: None,
            format: None,
            aliases: Vec::new(),
            min: None,
            max: None,
            max_future_secs: None,
            bounds: (None, None),
        }
    }

    /// The most bytes a string value of this column may have: `max_length`, else the widest
    /// VARCHAR. Checked at validation, so no value reaches a warehouse that refuses it.
    pub fn max_bytes(&self) -> usize {
        self.max_length.unwrap_or(MAX_VARCHAR_BYTES)
    }
}

impl Contract {
    pub fn load(path: &Path) -> Result<Contract, ContractError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ContractError::Io { path: path.display().to_string(), source })?;
        Contract::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Contract, ContractError> {
        let mut c: Contract =
            toml::from_str(text).map_err(|source| ContractError::Parse { path: origin.to_string(), source })?;
        c.check()?;
        c.resolve_bounds()?;
        Ok(c)
    }

    /// The contract shipped in the binary (`contracts/wau_audit_log.toml`).
    pub fn builtin() -> Contract {
        Contract::parse(include_str!("../contracts/wau_audit_log.toml"), "builtin").expect("shipped contract is valid")
    }

    /// `min`/`max` in the stored form (UTC, as [`check_value`] writes values), so a value is
    /// compared as text: the stored form orders as time does for years 1–9999.
    fn resolve_bounds(&mut self) -> Result<(), ContractError> {
        let (name, version) = (self.name.clone(), self.version);
        for c in &mut self.columns {
            let stored = |bound: &Option<String>, which: &str| -> Result<Option<String>, ContractError> {
                let Some(text) = bound else { return Ok(None) };
                let probe = Column { min: None, max: None, max_future_secs: None, ..c.clone() };
                match check_value(&probe, text) {
                    Ok(Some(v)) => Ok(Some(v)),
                    _ => Err(ContractError::Invalid {
                        name: name.clone(),
                        version,
                        reason: format!("column {}: {which} {text:?} is not a valid {}", c.name, type_name(c.ty)),
                    }),
                }
            };
            let bounds = (stored(&c.min, "min")?, stored(&c.max, "max")?);
            c.bounds = bounds;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ContractError> {
        let invalid =
            |reason: String| ContractError::Invalid { name: self.name.clone(), version: self.version, reason };
        if self.columns.is_empty() {
            return Err(invalid("no columns".into()));
        }
        let mut seen = HashMap::new();
        for (i, c) in self.columns.iter().enumerate() {
            if !is_identifier(&c.name) {
                return Err(invalid(format!("column name {:?} is not a lowercase SQL identifier", c.name)));
            }
            if seen.insert(c.name.as_str(), i).is_some() {
                return Err(invalid(format!("column {} appears twice", c.name)));
            }
            for a in &c.aliases {
                let a = normalise_header(a);
                if a.is_empty() || (self.columns.iter().any(|o| o.name == a) && a != c.name) {
                    return Err(invalid(format!("column {}: alias {a:?} is empty or another column's name", c.name)));
                }
            }
            match (c.ty, c.max_length) {
                (ColumnType::String, Some(n)) if n == 0 || n > MAX_VARCHAR_BYTES => {
                    return Err(invalid(format!(
                        "column {}: max_length {n} is outside 1..={MAX_VARCHAR_BYTES} bytes (Redshift's widest VARCHAR)",
                        c.name
                    )));
                }
                (ColumnType::String, _) => {}
                (_, Some(_)) => return Err(invalid(format!("column {}: max_length applies to strings only", c.name))),
                (_, None) => {}
            }
            let is_time = matches!(c.ty, ColumnType::Timestamp | ColumnType::Date);
            if (c.min.is_some() || c.max.is_some()) && !is_time {
                return Err(invalid(format!("column {}: min and max apply to timestamps and dates only", c.name)));
            }
            if c.max_future_secs.is_some() && c.ty != ColumnType::Timestamp {
                return Err(invalid(format!("column {}: max_future_secs applies to timestamps only", c.name)));
            }
            if c.format.is_some() && c.ty != ColumnType::String {
                return Err(invalid(format!("column {}: a format applies to strings only", c.name)));
            }
        }
        if !is_identifier(&self.table) {
            return Err(invalid(format!("table name {:?} is not a lowercase SQL identifier", self.table)));
        }
        for name in self.dedupe_key.iter().chain([&self.customer_column, &self.event_time_column, &self.user_column]) {
            let Some(&i) = seen.get(name.as_str()) else {
                return Err(invalid(format!("{name} is not a column")));
            };
            if !self.columns[i].required {
                return Err(invalid(format!("{name} is a key column and must be required")));
            }
        }
        if self.dedupe_key.is_empty() {
            return Err(invalid("dedupe_key is empty".into()));
        }
        if self.columns[seen[self.event_time_column.as_str()]].ty != ColumnType::Timestamp {
            return Err(invalid(format!("{} must be a timestamp", self.event_time_column)));
        }
        for p in &self.customer_from_key {
            if p.matches("{customer}").count() != 1 {
                return Err(invalid(format!("customer_from_key pattern {p:?} must contain {{customer}} once")));
            }
        }
        Ok(())
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The contract column a (normalised) header names: by its name or one of its aliases.
    pub fn column_for_header(&self, header: &str) -> Option<usize> {
        self.column_index(header)
            .or_else(|| self.columns.iter().position(|c| c.aliases.iter().any(|a| normalise_header(a) == header)))
    }

    pub fn customer_index(&self) -> usize {
        self.column_index(&self.customer_column).expect("checked")
    }

    pub fn event_time_index(&self) -> usize {
        self.column_index(&self.event_time_column).expect("checked")
    }

    /// Derives the customer from an object key with the first matching `customer_from_key` pattern.
    pub fn customer_from_key(&self, key: &str) -> Option<String> {
        self.customer_from_key.iter().find_map(|p| match_key_pattern(p, key))
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Matches `pattern` (segments: literal, `*`, `**`, `{customer}`) against `key`.
fn match_key_pattern(pattern: &str, key: &str) -> Option<String> {
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = key.split('/').collect();
    let mut customer = None;
    let mut i = 0;
    for (pi, p) in pat.iter().enumerate() {
        if *p == "**" {
            // `**` must be last and matches one or more remaining segments.
            return (pi == pat.len() - 1 && i < segs.len()).then_some(()).and(customer);
        }
        let s = segs.get(i)?;
        match *p {
            "{customer}" if !s.is_empty() => customer = Some(s.to_string()),
            "*" if !s.is_empty() => {}
            lit if lit == *s => {}
            _ => return None,
        }
        i += 1;
    }
    (i == segs.len()).then_some(()).and(customer)
}

/// Checks one value against its column and returns the value as it is stored
/// (timestamps normalised to UTC `YYYY-MM-DD HH:MM:SS[.f]`), or `None` for an empty optional value.
pub fn check_value(col: &Column, raw: &str) -> Result<Option<String>, ValueError> {
    let mut out = String::new();
    Ok(check_value_into(col, raw, Utc::now().timestamp(), &mut out)?.then_some(out))
}

/// [`check_value`] without allocating: appends the stored form to `out` and returns whether
/// there is a value (false: an empty optional value, nothing appended). On error nothing is appended.
/// `now` is the moment of validation in whole seconds since the epoch, what `max_future_secs`
/// counts from (the caller reads the clock, so a stream of values need not read it per value).
pub fn check_value_into(col: &Column, raw: &str, now: i64, out: &mut String) -> Result<bool, ValueError> {
    let v = trim(raw);
    if v.is_empty() {
        return if col.required { Err(ValueError::Required) } else { Ok(false) };
    }
    if col.ty == ColumnType::String {
        let max = col.max_bytes();
        if v.len() > max {
            return Err(ValueError::MaxLength { max, len: v.len() });
        }
    }
    let bad_type = ValueError::Type { expected: col.ty };
    match col.ty {
        ColumnType::String => {
            if has_nul(v.as_bytes()) {
                return Err(ValueError::Nul);
            }
            if let Some(f) = col.format {
                let ok = match f {
                    Format::Email => is_email(v),
                    Format::Ip => is_ip(v),
                };
                if !ok {
                    return Err(ValueError::Format { expected: f });
                }
            }
            out.push_str(v);
        }
        ColumnType::Integer => {
            let n = v.parse::<i64>().map_err(|_| bad_type)?;
            out.push_str(&n.to_string());
        }
        ColumnType::Float => {
            let f = v.parse::<f64>().map_err(|_| bad_type.clone())?;
            if !f.is_finite() {
                return Err(bad_type);
            }
            out.push_str(v);
        }
        ColumnType::Boolean => out.push_str(match v.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" => "true",
            "false" | "f" | "0" | "no" => "false",
            _ => return Err(bad_type),
        }),
        ColumnType::Timestamp => {
            let start = out.len();
            if !fast_utc_timestamp(v, out) {
                out.push_str(&format_timestamp(parse_timestamp(v).ok_or(bad_type)?));
            }
            if let Err(e) = in_range(col, &out[start..], now) {
                out.truncate(start);
                return Err(e);
            }
        }
        ColumnType::Date => {
            let start = out.len();
            out.push_str(&NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| bad_type)?.to_string());
            if let Err(e) = in_range(col, &out[start..], now) {
                out.truncate(start);
                return Err(e);
            }
        }
    }
    Ok(true)
}

/// The years every engine and the WAU view represent: 0001–9999. The stored form then begins
/// with four digits and a dash, and orders as time does, so bounds compare as text.
fn in_range(col: &Column, stored: &str, now: i64) -> Result<(), ValueError> {
    let b = stored.as_bytes();
    let four_digit_year = b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-';
    if !four_digit_year || &stored[..4] == "0000" {
        return Err(ValueError::OutOfRange { bound: "years 0001 to 9999 (UTC)".into() });
    }
    if let Some(min) = &col.bounds.0 {
        if stored < min.as_str() {
            return Err(ValueError::OutOfRange { bound: format!("before the column's min {min}") });
        }
    }
    if let Some(max) = &col.bounds.1 {
        if stored > max.as_str() {
            return Err(ValueError::OutOfRange { bound: format!("after the column's max {max}") });
        }
    }
    if let Some(ahead) = col.max_future_secs {
        if let Some(horizon) = past_horizon(ahead, stored, now) {
            return Err(ValueError::OutOfRange {
                bound: format!("more than {ahead} s in the future (after {horizon})"),
            });
        }
    }
    Ok(())
}

/// The horizon (`now` plus `ahead` seconds, in the stored form) when `stored` lies past it. The
/// horizon is recomputed when `now` or `ahead` changes (per thread) and compared in place:
/// nothing is allocated for a value within it (this runs for every row).
fn past_horizon(ahead: u64, stored: &str, now: i64) -> Option<String> {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(i64, u64, String)> = const { RefCell::new((i64::MIN, 0, String::new())) };
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != now || c.1 != ahead {
            use chrono::Datelike;
            let at = DateTime::from_timestamp(now.saturating_add(ahead.min(i64::MAX as u64 / 2) as i64), 0)
                .filter(|t| t.year() <= 9999);
            *c = (now, ahead, at.map_or_else(|| "9999-12-31 23:59:59.999999".to_string(), format_timestamp));
        }
        (stored > c.2.as_str()).then(|| c.2.clone())
    })
}

/// Whether `b` holds a NUL byte. Most values are a few dozen bytes, where `memchr`'s setup costs
/// more than looking at eight bytes at a time (a word has a zero byte exactly when
/// `(w - 0x01…01) & !w & 0x80…80` is not zero).
fn has_nul(b: &[u8]) -> bool {
    if b.len() >= 64 {
        return memchr::memchr(0, b).is_some();
    }
    const LOW: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut words = b.chunks_exact(8);
    let zero_in = |w: u64| w.wrapping_sub(LOW) & !w & HIGH != 0;
    words.by_ref().any(|w| zero_in(u64::from_ne_bytes(w.try_into().expect("8 bytes"))))
        || words.remainder().contains(&0)
}

/// `str::trim`, skipped when both ends are plainly not whitespace (the usual case).
fn trim(raw: &str) -> &str {
    let b = raw.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) if f.is_ascii_graphic() && l.is_ascii_graphic() => raw,
        _ => raw.trim(),
    }
}

/// The common case without chrono: `YYYY-MM-DD[T ]HH:MM:SS[.f]` with `Z` or no offset, written
/// exactly as [`format_timestamp`] would. Returns false (appending nothing) for anything else,
/// which then takes the general path.
fn fast_utc_timestamp(v: &str, out: &mut String) -> bool {
    let b = v.as_bytes();
    let body = match b.last() {
        Some(b'Z' | b'z') => &b[..b.len() - 1],
        _ => b,
    };
    if body.len() < 19
        || body[4] != b'-'
        || body[7] != b'-'
        || !matches!(body[10], b'T' | b't' | b' ')
        || body[13] != b':'
        || body[16] != b':'
    {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        body[r].iter().try_fold(0u32, |acc, c| c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u32))
    };
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(s)) =
        (num(0..4), num(5..7), num(8..10), num(11..13), num(14..16), num(17..19))
    else {
        return false;
    };
    let mut nanos = 0u32;
    if body.len() > 19 {
        let frac = &body[20..];
        if body[19] != b'.' || frac.is_empty() || frac.len() > 9 || !frac.iter().all(u8::is_ascii_digit) {
            return false;
        }
        nanos = frac.iter().fold(0u32, |acc, c| acc * 10 + (c - b'0') as u32) * 10u32.pow(9 - frac.len() as u32);
        nanos -= nanos % 10u32.pow(9 - MAX_FRACTION_DIGITS as u32);
    }
    if NaiveDate::from_ymd_opt(y as i32, mo, d).is_none() || h > 23 || mi > 59 || s > 59 {
        return false;
    }
    // The digits are checked: copy them as they are, in the stored layout.
    out.push_str(&v[0..10]);
    out.push(' ');
    out.push_str(&v[11..19]);
    if nanos != 0 {
        // As chrono's `%.f`: 3 or 6 digits, the fewest that hold the (truncated) value.
        let digits = if nanos % 1_000_000 == 0 { 3 } else { 6 };
        let mut buf = [b'0'; 9];
        let mut n = nanos;
        for d in buf.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.push('.');
        out.push_str(std::str::from_utf8(&buf[..digits]).expect("ASCII digits"));
    }
    true
}

/// ISO-8601 with or without an offset (`2026-11-23T10:00:00Z`, `…+01:00`, `2026-11-23T10:00:00`)
/// or `YYYY-MM-DD HH:MM:SS`; a timestamp without an offset is taken as UTC.
pub fn parse_timestamp(v: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"]
    {
        if let Ok(t) = DateTime::parse_from_str(v, f) {
            return Some(t.with_timezone(&Utc));
        }
    }
    let naive = v.strip_suffix(['Z', 'z']).unwrap_or(v);
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(naive, f) {
            return Some(t.and_utc());
        }
    }
    None
}

/// The stored form: UTC, `YYYY-MM-DD HH:MM:SS` and 3 or 6 fractional digits when there are
/// any, cut to [`MAX_FRACTION_DIGITS`].
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    use chrono::Timelike;
    let step = 10u32.pow(9 - MAX_FRACTION_DIGITS as u32);
    let t = t.with_nanosecond(t.nanosecond() - t.nanosecond() % step).unwrap_or(t);
    t.format("%Y-%m-%d %H:%M:%S%.f").to_string()
}

/// An IPv4 or IPv6 address, as `std::net::IpAddr` parses one.
fn is_ip(v: &str) -> bool {
    plain_ipv4(v) || v.parse::<std::net::IpAddr>().is_ok()
}

/// The common case without the general parser: four decimal octets of at most 255 without a
/// leading zero (`10.0.0.1`), each of which `std` accepts too. False says nothing: the general
/// parser then decides.
fn plain_ipv4(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() < 7 || b.len() > 15 {
        return false;
    }
    let (mut i, mut octets) = (0, 0);
    loop {
        let digits = b[i..].iter().take(3).take_while(|c| c.is_ascii_digit()).count();
        let octet = &b[i..i + digits];
        let value = octet.iter().fold(0u32, |n, c| n * 10 + (c - b'0') as u32);
        if digits == 0 || (digits > 1 && octet[0] == b'0') || value > 255 {
            return false;
        }
        octets += 1;
        i += digits;
        match b.get(i) {
            None => return octets == 4,
            Some(b'.') if octets < 4 => i += 1,
            Some(_) => return false,
        }
    }
}

fn is_email(v: &str) -> bool {
    let Some((local, domain)) = v.rsplit_once('@') else { return false };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !v.bytes().any(|b| b.is_ascii_whitespace() || b == b',')
}

/// A drafted contract and what a person must still decide before using it. A draft with
/// nothing left to decide parses as a contract and accepts every row of its sample.
#[derive(Debug, Clone)]
pub struct Draft {
    pub contract: Contract,
    pub todo: Vec<String>,
}

/// A SQL identifier for a header: lowercase, `[a-z0-9_]`, not starting with a digit.
fn identifier_for(header: &str, position: usize) -> String {
    let mut out = String::new();
    for ch in normalise_header(header).chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_matches('_').to_string();
    match out.chars().next() {
        None => format!("column_{}", position + 1),
        Some(c) if c.is_ascii_digit() => format!("c_{out}"),
        Some(_) => out,
    }
}

/// Only types whose stored form is the text itself, or its one obvious reading: `1`/`0` are
/// integers, never booleans; a leading zero or sign, or more than 64 bits, keeps a string.
fn infer_type(non_empty: &[&str]) -> ColumnType {
    let all = |f: &dyn Fn(&str) -> bool| !non_empty.is_empty() && non_empty.iter().all(|v| f(v));
    let plain_integer = |v: &str| {
        let digits = v.strip_prefix('-').unwrap_or(v);
        !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
            && v.parse::<i64>().is_ok()
    };
    let boolean_word = |v: &str| matches!(v.to_ascii_lowercase().as_str(), "true" | "false" | "yes" | "no");
    let parses = |ty: ColumnType| move |v: &str| check_value(&Column::new("", ty), v).is_ok();
    if all(&boolean_word) {
        ColumnType::Boolean
    } else if all(&plain_integer) {
        ColumnType::Integer
    } else if all(&|v: &str| {
        let digits = v.strip_prefix('-').unwrap_or(v);
        let leading_zero = digits.len() > 1 && digits.starts_with('0') && digits.as_bytes()[1].is_ascii_digit();
        // An integer past 64 bits is no float either: its digits would be rounded.
        let fractional = v.contains(['.', 'e', 'E']);
        !v.starts_with('+') && !leading_zero && (fractional || plain_integer(v)) && parses(ColumnType::Float)(v)
    }) {
        ColumnType::Float
    } else if all(&parses(ColumnType::Date)) {
        ColumnType::Date
    } else if all(&parses(ColumnType::Timestamp)) {
        ColumnType::Timestamp
    } else {
        ColumnType::String
    }
}

/// Drafts a contract from a sample: the narrowest safe type of every column, `required` where
/// no value is empty, `max_length` (bytes) rounded up for strings, an identifier plus the
/// original header as an alias where the header is not one, and the key columns found by name.
pub fn infer(name: &str, headers: &[String], rows: &[Vec<String>]) -> Draft {
    let mut columns: Vec<Column> = Vec::new();
    let mut todo = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let mut col_name = identifier_for(h, i);
        while columns.iter().any(|c| c.name == col_name) {
            col_name.push_str("_2");
        }
        let values: Vec<&str> = rows.iter().map(|r| r.get(i).map(|s| s.trim()).unwrap_or("")).collect();
        let non_empty: Vec<&str> = values.iter().copied().filter(|v| !v.is_empty()).collect();
        let ty = infer_type(&non_empty);
        let max_len = non_empty.iter().map(|v| v.len()).max().unwrap_or(0);
        let format = if ty == ColumnType::String && !non_empty.is_empty() {
            if non_empty.iter().all(|v| is_email(v)) {
                Some(Format::Email)
            } else if non_empty.iter().all(|v| is_ip(v)) {
                Some(Format::Ip)
            } else {
                None
            }
        } else {
            None
        };
        let alias = normalise_header(h);
        columns.push(Column {
            required: !rows.is_empty() && non_empty.len() == values.len(),
            max_length: (ty == ColumnType::String)
                .then(|| (max_len.max(1) * 2).next_power_of_two().min(MAX_VARCHAR_BYTES)),
            format,
            aliases: if alias == col_name { Vec::new() } else { vec![h.trim().to_string()] },
            ..Column::new(&col_name, ty)
        });
    }
    let find = |pred: &dyn Fn(&Column) -> bool| columns.iter().find(|c| pred(c)).map(|c| c.name.clone());
    let mut role = |role: &str, found: Option<String>, ask: &str| -> String {
        found.unwrap_or_else(|| {
            todo.push(format!("no {role} column found: {ask}"));
            format!("TODO_{role}")
        })
    };
    let customer = role(
        "customer",
        find(&|c| c.name == "customer" || c.name == "customer_id" || c.name == "tenant"),
        "name the column that holds the customer in customer_column",
    );
    let event_time = role(
        "event_time",
        find(&|c| c.name == "event_time").or_else(|| find(&|c| c.ty == ColumnType::Timestamp)),
        "name the timestamp column of each event in event_time_column",
    );
    let event_id = role(
        "event_id",
        find(&|c| c.name == "event_id").or_else(|| find(&|c| c.name.ends_with("_id") && c.name != customer)),
        "name the column that identifies an event in dedupe_key (with the customer column)",
    );
    let user = role("user", find(&|c| c.name == "user_id"), "name the column whose values the WAU view counts");
    for key in [&customer, &event_time, &event_id, &user] {
        if let Some(c) = columns.iter_mut().find(|c| &c.name == key) {
            if !c.required {
                todo.push(format!(
                    "{key} is a key column but some sample rows leave it empty: decide whether such rows are rejected"
                ));
                c.required = true;
            }
        }
    }
    let contract = Contract {
        name: name.to_string(),
        version: 1,
        table: "wau_audit_logs".into(),
        customer_column: customer.clone(),
        event_time_column: event_time,
        user_column: user,
        dedupe_key: vec![customer, event_id],
        customer_from_key: vec!["csv/{customer}/**".into()],
        unknown_columns: UnknownColumns::Ignore,
        customer_policy: CustomerPolicy::RejectRow,
        columns,
    };
    if todo.is_empty() {
        // What the exit status promises: the draft parses, and accepts every row it was made from.
        if let Err(e) = toml::to_string(&contract)
            .map_err(|e| e.to_string())
            .and_then(|t| Contract::parse(&t, "draft").map(|_| ()).map_err(|e| e.to_string()))
        {
            todo.push(format!("the draft is not a valid contract: {e}"));
        } else if let Some((line, col, e)) = rows.iter().enumerate().find_map(|(r, row)| {
            contract.columns.iter().zip(row).find_map(|(c, v)| check_value(c, v).err().map(|e| (r + 2, c, e)))
        }) {
            todo.push(format!("sample line {line}: {}: {}", col.name, e.describe()));
        }
    }
    Draft { contract, todo }
}

/// Header names are matched case-insensitively, ignoring surrounding whitespace and a BOM.
pub fn normalise_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(ty: ColumnType, required: bool, max_length: Option<usize>, format: Option<Format>) -> Column {
        Column { required, max_length, format, ..Column::new("c", ty) }
    }

    #[test]
    fn a_nul_character_is_a_rejected_value_not_a_stuck_batch() {
        let mut out = String::new();
        let c = col(ColumnType::String, false, None, None);
        let now = Utc::now().timestamp();
        let err = check_value_into(&c, "abc\0def", now, &mut out).unwrap_err();
        assert_eq!(err.rule(), "nul_character");
        assert!(check_value_into(&c, "abc def", now, &mut out).is_ok());
    }

    #[test]
    fn shipped_contract_parses() {
        let c = Contract::builtin();
        assert_eq!(c.name, "wau_audit_log");
        assert_eq!(c.dedupe_key, vec!["customer", "event_id"]);
        assert_eq!(c.columns.len(), 8);
        assert_eq!(c.columns[c.event_time_index()].ty, ColumnType::Timestamp);
    }

    #[test]
    fn contract_rejects_unknown_fields_and_bad_keys() {
        let base = include_str!("../contracts/wau_audit_log.toml");
        let extra = format!("bogus = 1\n{base}");
        assert!(matches!(Contract::parse(&extra, "t"), Err(ContractError::Parse { .. })));
        let bad_key = base.replace(r#"dedupe_key = ["customer", "event_id"]"#, r#"dedupe_key = ["customer", "nope"]"#);
        let err = Contract::parse(&bad_key, "t").unwrap_err().to_string();
        assert!(err.contains("nope is not a column"), "{err}");
        let optional_key = base.replace(r#"dedupe_key = ["customer", "event_id"]"#, r#"dedupe_key = ["user_email"]"#);
        assert!(Contract::parse(&optional_key, "t").unwrap_err().to_string().contains("must be required"));
    }

    #[test]
    fn required_rule() {
        assert_eq!(check_value(&col(ColumnType::String, true, None, None), "  "), Err(ValueError::Required));
        assert_eq!(check_value(&col(ColumnType::String, false, None, None), ""), Ok(None));
    }

    #[test]
    fn max_length_counts_bytes_as_redshift_varchar_does() {
        let c = col(ColumnType::String, true, Some(6), None);
        assert_eq!(check_value(&c, "äöü"), Ok(Some("äöü".into())), "3 characters, 6 bytes");
        assert_eq!(check_value(&c, "äöüa"), Err(ValueError::MaxLength { max: 6, len: 7 }));
        assert_eq!(check_value(&c, "abcdefg"), Err(ValueError::MaxLength { max: 6, len: 7 }));
        let e = col(ColumnType::String, true, Some(64), None);
        assert!(check_value(&e, &"é".repeat(32)).is_ok());
        assert_eq!(check_value(&e, &"é".repeat(33)).unwrap_err().describe(), "66 bytes, at most 64 allowed");
    }

    #[test]
    fn a_string_without_max_length_still_fits_the_widest_varchar() {
        let c = col(ColumnType::String, true, None, None);
        assert!(check_value(&c, &"x".repeat(MAX_VARCHAR_BYTES)).is_ok());
        assert_eq!(
            check_value(&c, &"€".repeat(MAX_VARCHAR_BYTES / 3 + 1)),
            Err(ValueError::MaxLength { max: MAX_VARCHAR_BYTES, len: 65_538 })
        );
    }

    #[test]
    fn timestamp_and_date_bounds() {
        let t = col(ColumnType::Timestamp, true, None, None);
        assert_eq!(check_value(&t, "9999-12-31T23:59:59.999999Z").unwrap().unwrap(), "9999-12-31 23:59:59.999999");
        assert_eq!(check_value(&t, "0001-01-01T00:00:00Z").unwrap().unwrap(), "0001-01-01 00:00:00");
        for v in ["9999-12-31T23:30:00-01:00", "0000-12-31T00:00:00Z", "0001-01-01T00:30:00+01:00"] {
            assert_eq!(check_value(&t, v).unwrap_err().rule(), "out_of_range", "{v}");
        }
        let d = col(ColumnType::Date, true, None, None);
        assert_eq!(check_value(&d, "0000-01-01").unwrap_err().rule(), "out_of_range");
        let with = |bounds: &str| {
            let text =
                include_str!("../contracts/wau_audit_log.toml").replacen("min = \"2000-01-01T00:00:00Z\"", bounds, 1);
            Contract::parse(&text, "t")
        };
        let c = with("min = \"2020-01-01T01:00:00+01:00\"\nmax = \"2025-01-01T00:00:00Z\"").unwrap();
        let et = &c.columns[c.event_time_index()];
        assert_eq!(et.bounds, (Some("2020-01-01 00:00:00".into()), Some("2025-01-01 00:00:00".into())));
        assert_eq!(check_value(et, "2019-12-31T23:59:59Z").unwrap_err().rule(), "out_of_range");
        assert_eq!(check_value(et, "2025-01-01T00:00:00.000001Z").unwrap_err().rule(), "out_of_range");
        assert!(check_value(et, "2025-01-01T00:00:00Z").is_ok(), "bounds are inclusive");
        assert!(check_value(et, "2020-01-01T00:00:00Z").is_ok(), "bounds are inclusive");
        let bad = with("max = \"2030-01-01\"").unwrap_err().to_string();
        assert!(bad.contains("max \"2030-01-01\" is not a valid timestamp"), "{bad}");
    }

    #[test]
    fn max_length_beyond_the_widest_varchar_or_on_a_non_string_is_refused() {
        let text = include_str!("../contracts/wau_audit_log.toml");
        let wide = text.replacen("max_length = 512", "max_length = 65536", 1);
        assert!(Contract::parse(&wide, "t").unwrap_err().to_string().contains("outside 1..=65535 bytes"));
        let zero = text.replacen("max_length = 512", "max_length = 0", 1);
        assert!(Contract::parse(&zero, "t").is_err());
        let on_time = text.replacen(
            "type = \"timestamp\"\nrequired = true",
            "type = \"timestamp\"\nrequired = true\nmax_length = 8",
            1,
        );
        assert!(Contract::parse(&on_time, "t").unwrap_err().to_string().contains("strings only"));
    }

    #[test]
    fn type_rules() {
        let int = col(ColumnType::Integer, true, None, None);
        assert_eq!(check_value(&int, "42"), Ok(Some("42".into())));
        assert_eq!(check_value(&int, "4.2").unwrap_err().rule(), "type");
        let b = col(ColumnType::Boolean, true, None, None);
        assert_eq!(check_value(&b, "YES"), Ok(Some("true".into())));
        assert!(check_value(&b, "maybe").is_err());
        let f = col(ColumnType::Float, true, None, None);
        assert!(check_value(&f, "NaN").is_err());
        assert_eq!(check_value(&f, "1.5"), Ok(Some("1.5".into())));
        let d = col(ColumnType::Date, true, None, None);
        assert_eq!(check_value(&d, "2026-02-30").unwrap_err().rule(), "type");
    }

    #[test]
    fn timestamps_normalise_to_utc() {
        let t = col(ColumnType::Timestamp, true, None, None);
        let ok = |v: &str| check_value(&t, v).unwrap().unwrap();
        assert_eq!(ok("2026-11-23T10:00:00Z"), "2026-11-23 10:00:00");
        assert_eq!(ok("2026-11-23T11:30:00+01:30"), "2026-11-23 10:00:00");
        assert_eq!(ok("2026-11-23T10:00:00"), "2026-11-23 10:00:00");
        assert_eq!(ok("2026-11-23 10:00:00"), "2026-11-23 10:00:00");
        assert_eq!(ok("2026-11-23 05:00:00-0500"), "2026-11-23 10:00:00");
        assert_eq!(ok("2026-11-23T10:00:00.250Z"), "2026-11-23 10:00:00.250");
        // At most microseconds, as COPY takes them: finer digits are cut, never rounded.
        assert_eq!(ok("2026-11-23T10:00:00.123456Z"), "2026-11-23 10:00:00.123456");
        assert_eq!(ok("2026-11-23T10:00:00.123456789Z"), "2026-11-23 10:00:00.123456");
        assert_eq!(ok("2026-11-23T10:00:00.1234567"), "2026-11-23 10:00:00.123456");
        assert_eq!(ok("2026-11-23T10:00:00.000000999Z"), "2026-11-23 10:00:00");
        assert_eq!(ok("2026-12-31T23:59:59.999999999Z"), "2026-12-31 23:59:59.999999");
        assert_eq!(ok("2026-11-23T11:00:00.123456789+01:00"), "2026-11-23 10:00:00.123456");
        assert_eq!(ok("2026-11-23T11:00:00.000000999+01:00"), "2026-11-23 10:00:00");
        assert_eq!(check_value(&t, "23/11/2026").unwrap_err().rule(), "type");
        assert_eq!(check_value(&t, "2026-11-23").unwrap_err().rule(), "type");
    }

    #[test]
    fn fast_timestamp_path_agrees_with_chrono() {
        for v in [
            "2026-11-23T10:00:00Z",
            "2026-11-23 10:00:00",
            "2026-11-23t10:00:00z",
            "2026-11-23T10:00:00.5Z",
            "2026-11-23T10:00:00.123456",
            "2026-11-23T10:00:00.123456789Z",
            "2026-11-23T10:00:00.000Z",
            "2024-02-29T23:59:59Z",
            "2026-11-23T10:00:00.000001Z",
            "2026-11-23T10:00:00.1000001",
        ] {
            let mut fast = String::new();
            assert!(fast_utc_timestamp(v, &mut fast), "{v}");
            assert_eq!(fast, format_timestamp(parse_timestamp(v).unwrap()), "{v}");
        }
        for v in [
            "2026-02-29T10:00:00Z",
            "2026-11-23T24:00:00Z",
            "2026-11-23T10:00:00+01:00",
            "2026-11-23T10:00",
            "2026-11-23T10:00:00.",
        ] {
            let mut fast = String::new();
            assert!(!fast_utc_timestamp(v, &mut fast) && fast.is_empty(), "{v}");
        }
    }

    #[test]
    fn has_nul_finds_a_nul_anywhere_in_any_length() {
        for len in 0..140 {
            assert!(!has_nul(&vec![b'x'; len]), "{len}");
            for at in 0..len {
                let mut v = vec![0xffu8; len];
                v[at] = 0;
                assert!(has_nul(&v), "{len} {at}");
                // Bytes next to 0x01 and 0x80, where the word test's borrows could mislead.
                let mut v = vec![0x01u8; len];
                v[at] = 0x80;
                assert!(!has_nul(&v), "{len} {at}");
                v[at] = 0;
                assert!(has_nul(&v), "{len} {at}");
            }
        }
    }

    #[test]
    fn plain_ipv4_accepts_only_what_std_accepts() {
        for v in ["10.0.0.1", "0.0.0.0", "255.255.255.255", "192.168.100.200", "1.2.3.4"] {
            assert!(plain_ipv4(v) && v.parse::<std::net::Ipv4Addr>().is_ok(), "{v}");
        }
        // Left to the general parser (which takes some, e.g. IPv6, and refuses the rest).
        for v in [
            "256.0.0.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1.2.3.",
            ".1.2.3",
            "1..2.3",
            "1.2.3.4 ",
            "1234.1.1.1",
            "::1",
            "a.b.c.d",
        ] {
            assert!(!plain_ipv4(v), "{v}");
        }
        assert!(is_ip("::1") && is_ip("::ffff:10.0.0.1") && !is_ip("256.0.0.1") && !is_ip("1.2.3"));
    }

    proptest::proptest! {
        #[test]
        fn has_nul_is_contains_zero(v in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x7f, 0x80, 0xff, b'a']), 0..100)) {
            proptest::prop_assert_eq!(has_nul(&v), v.contains(&0));
        }

        #[test]
        fn is_ip_is_std_s_reading(v in "[0-9]{0,4}(\\.[0-9]{0,4}){0,4}|[0-9a-f:.]{0,20}|.{0,16}") {
            if plain_ipv4(&v) {
                proptest::prop_assert!(v.parse::<std::net::Ipv4Addr>().is_ok(), "{}", v);
            }
            proptest::prop_assert_eq!(is_ip(&v), v.parse::<std::net::IpAddr>().is_ok(), "{}", v);
        }
    }

    #[test]
    fn format_rules() {
        let e = col(ColumnType::String, false, None, Some(Format::Email));
        assert!(check_value(&e, "a@b.io").is_ok());
        assert_eq!(check_value(&e, "not-an-email").unwrap_err().rule(), "format");
        let ip = col(ColumnType::String, false, None, Some(Format::Ip));
        assert!(check_value(&ip, "10.0.0.1").is_ok());
        assert!(check_value(&ip, "2001:db8::1").is_ok());
        assert!(check_value(&ip, "300.1.1.1").is_err());
    }

    #[test]
    fn customer_from_key_patterns() {
        let c = Contract::builtin();
        assert_eq!(c.customer_from_key("csv/acme/2026/w47.csv").as_deref(), Some("acme"));
        assert_eq!(c.customer_from_key("globex/w47.csv").as_deref(), Some("globex"));
        assert_eq!(c.customer_from_key("w47.csv"), None);
        assert_eq!(match_key_pattern("csv/{customer}/*", "csv/acme/x.csv").as_deref(), Some("acme"));
        assert_eq!(match_key_pattern("csv/{customer}/*", "csv/acme/a/x.csv"), None);
    }

    #[test]
    fn infer_drafts_types_and_nullability() {
        let headers: Vec<String> =
            ["Customer", "event_id", "event_time", "n", "email", "user_id"].map(String::from).to_vec();
        let rows = vec![
            vec!["acme".into(), "e1".into(), "2026-11-23T10:00:00Z".into(), "1".into(), "a@b.io".into(), "u".into()],
            vec!["acme".into(), "e2".into(), "2026-11-23 11:00:00".into(), "2".into(), "".into(), "u".into()],
        ];
        let d = infer("sample", &headers, &rows);
        assert!(d.todo.is_empty(), "{:?}", d.todo);
        let c = d.contract;
        assert_eq!(c.columns[0].name, "customer");
        assert_eq!(c.columns[2].ty, ColumnType::Timestamp);
        assert_eq!(c.columns[3].ty, ColumnType::Integer);
        assert!(c.columns[3].required);
        assert!(!c.columns[4].required);
        assert_eq!(c.columns[4].format, Some(Format::Email));
        assert_eq!(c.dedupe_key, vec!["customer", "event_id"]);
        // The draft is itself a valid contract.
        let text = toml::to_string(&c).unwrap();
        Contract::parse(&text, "draft").unwrap();
    }

    #[test]
    fn infer_never_guesses_a_type_that_changes_the_data() {
        let col = |vals: &[&str]| infer_type(vals);
        assert_eq!(col(&["1", "0", "1"]), ColumnType::Integer, "0/1 are numbers, not booleans");
        assert_eq!(col(&["true", "False"]), ColumnType::Boolean);
        assert_eq!(col(&["08123", "10001"]), ColumnType::String, "a leading zero is kept");
        assert_eq!(col(&["12345678901234567890"]), ColumnType::String, "more than 64 bits");
        assert_eq!(col(&["+5"]), ColumnType::String);
        assert_eq!(col(&["-5", "0", "42"]), ColumnType::Integer);
        assert_eq!(col(&["1.5", "2"]), ColumnType::Float);
        assert_eq!(col(&["007.5"]), ColumnType::String);
        assert_eq!(col(&["2026-11-23"]), ColumnType::Date);
        assert_eq!(col(&[]), ColumnType::String);
    }

    #[test]
    fn infer_names_odd_headers_and_says_what_is_missing() {
        let headers: Vec<String> = ["User Name", "2nd value", "Event Time", "id"].map(String::from).to_vec();
        let rows = vec![vec!["ann".into(), "x".into(), "2026-11-23T10:00:00Z".into(), "1".into()]];
        let d = infer("odd", &headers, &rows);
        let names: Vec<&str> = d.contract.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["user_name", "c_2nd_value", "event_time", "id"]);
        assert_eq!(d.contract.columns[0].aliases, ["User Name"]);
        assert!(d.contract.columns[3].aliases.is_empty());
        assert_eq!(d.contract.column_for_header(&normalise_header(" user name ")), Some(0));
        assert!(d.todo.iter().any(|t| t.starts_with("no customer column found")), "{:?}", d.todo);
        assert!(d.todo.iter().any(|t| t.starts_with("no user column found")), "{:?}", d.todo);
        assert!(d.todo.iter().any(|t| t.starts_with("no event_id column found")), "{:?}", d.todo);
    }
}
