//! Realistic sample data: the `demo` command, the benchmark's input and test fixtures.
//!
//! Deterministic (a seeded SplitMix64), so the same arguments always write the same bytes.

use std::io::Write;
use std::path::Path;

use chrono::{Duration, NaiveDate, Utc};

pub const HEADER: &str = "customer,event_id,event_time,user_id,user_email,event_type,source_ip,user_agent";

const EVENT_TYPES: &[&str] = &["login", "logout", "view_dashboard", "export_report", "update_settings", "invite_user"];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "curl/8.5.0",
];

/// SplitMix64: tiny, fast, good enough for sample data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// What a generated file should contain.
#[derive(Debug, Clone)]
pub struct FileSpec<'a> {
    pub customer: &'a str,
    /// Monday of the week the events fall in.
    pub week_start: NaiveDate,
    pub rows: u64,
    pub users: u64,
    /// Every n-th row is broken in a rotating way (0: no bad rows).
    pub bad_every: u64,
    /// Write the `customer` column (legacy files lack it).
    pub with_customer: bool,
    pub seed: u64,
    /// Prefix of event ids; files that share it share keys.
    pub id_prefix: &'a str,
}

/// Writes one audit-log CSV; returns (rows written, rows deliberately broken).
pub fn write_csv(mut w: impl Write, spec: &FileSpec<'_>) -> std::io::Result<(u64, u64)> {
    let mut rng = Rng::new(spec.seed);
    let header = if spec.with_customer { HEADER.to_string() } else { HEADER.replacen("customer,", "", 1) };
    writeln!(w, "{header}")?;
    let mut bad = 0;
    let start = spec.week_start.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    // Events of a week still under way fall between its Monday and now: none lies ahead of the
    // clock, which the contract would reject (`max_future_secs`) as no deliberately bad row.
    let span = (Utc::now() - start).num_seconds().clamp(1, 7 * 86_400) as u64;
    for i in 0..spec.rows {
        let user = rng.below(spec.users.max(1));
        let t = start + Duration::seconds(rng.below(span) as i64);
        let mut event_time = t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut event_id = format!("{}-{i:08}", spec.id_prefix);
        let mut email = format!("user{user}@{}.example.com", spec.customer);
        let ip = format!("10.{}.{}.{}", rng.below(256), rng.below(256), rng.below(256));
        let event_type = EVENT_TYPES[rng.below(EVENT_TYPES.len() as u64) as usize];
        let agent = AGENTS[rng.below(AGENTS.len() as u64) as usize];
        let mut user_id = format!("u-{user:06}");
        if spec.bad_every > 0 && i % spec.bad_every == spec.bad_every - 1 {
            bad += 1;
            match (i / spec.bad_every) % 4 {
                0 => event_time = "not-a-time".into(),
                1 => event_id.clear(),
                2 => email = "no-at-sign".into(),
                _ => user_id = "u".repeat(200),
            }
        }
        if spec.with_customer {
            write!(w, "{},", spec.customer)?;
        }
        writeln!(w, "{event_id},{event_time},{user_id},{email},{event_type},{ip},\"{agent}\"")?;
    }
    Ok((spec.rows, bad))
}

/// Writes `contents` to `path` through a temporary name, so a watcher never sees half a file.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

pub const CUSTOMERS: &[&str] = &["acme", "globex", "initech", "umbrella"];

/// What `demo` wrote, so its printout can say what to expect.
#[derive(Debug, Default)]
pub struct Sample {
    pub files: u64,
    pub rows: u64,
    pub bad_rows: u64,
    pub overwrite_key: String,
}

/// The demo's sample: customers × weeks of files with some bad rows, plus a copy of one file
/// under a second key, a gzip file, a legacy file without the customer column, a file with
/// a broken header, and one file that will be overwritten.
pub fn generate_sample(inbox: &Path, weeks: u32, today: NaiveDate) -> std::io::Result<Sample> {
    use chrono::Datelike;
    let mut s = Sample::default();
    let this_monday = today - Duration::days(today.weekday().num_days_from_monday() as i64);
    for (ci, customer) in CUSTOMERS.iter().enumerate() {
        for wk in 0..weeks {
            let week_start = this_monday - Duration::weeks((weeks - 1 - wk) as i64);
            let spec = FileSpec {
                customer,
                week_start,
                rows: 150 + 25 * ci as u64,
                users: 20 + 10 * ci as u64 + wk as u64 * 3,
                bad_every: 40,
                with_customer: true,
                seed: (ci as u64) << 32 | wk as u64,
                id_prefix: &format!("{customer}-w{wk}"),
            };
            let mut buf = Vec::new();
            let (rows, bad) = write_csv(&mut buf, &spec)?;
            let key = format!("csv/{customer}/{}.csv", week_start.format("%G-W%V"));
            let (path, bytes) = if ci == 1 && wk == 0 {
                (inbox.join(format!("{key}.gz")), gzip(&buf))
            } else {
                (inbox.join(&key), buf.clone())
            };
            write_atomically(&path, &bytes)?;
            s.files += 1;
            s.rows += rows;
            s.bad_rows += bad;
            if ci == 0 && wk == weeks - 1 {
                // The same content under a second key: its rows dedupe by event id in the target.
                write_atomically(
                    &inbox.join(format!("csv/{customer}/resend-{}.csv", week_start.format("%G-W%V"))),
                    &buf,
                )?;
                s.files += 1;
                s.rows += rows;
                s.bad_rows += bad;
                s.overwrite_key = key.clone();
            }
        }
    }
    // A legacy file: no customer column, the customer comes from the key.
    let spec = FileSpec {
        customer: "legacyco",
        week_start: this_monday,
        rows: 60,
        users: 12,
        bad_every: 0,
        with_customer: false,
        seed: 99,
        id_prefix: "legacy",
    };
    let mut buf = Vec::new();
    write_csv(&mut buf, &spec)?;
    write_atomically(&inbox.join("csv/legacyco/export.csv"), &buf)?;
    s.files += 1;
    s.rows += 60;
    // A file that is not the contract at all.
    write_atomically(&inbox.join("csv/acme/broken-header.csv"), b"id;when;who\n1;today;me\n2;today;you\n")?;
    s.files += 1;
    s.rows += 2;
    s.bad_rows += 2;
    Ok(s)
}

/// Rewrites the overwrite key with different content (a producer correcting its export).
pub fn overwrite(inbox: &Path, key: &str, today: NaiveDate) -> std::io::Result<u64> {
    use chrono::Datelike;
    let this_monday = today - Duration::days(today.weekday().num_days_from_monday() as i64);
    let spec = FileSpec {
        customer: "acme",
        week_start: this_monday,
        rows: 120,
        users: 45,
        bad_every: 0,
        with_customer: true,
        seed: 4242,
        id_prefix: "acme-corrected",
    };
    let mut buf = Vec::new();
    write_csv(&mut buf, &spec)?;
    write_atomically(&inbox.join(key), &buf)?;
    Ok(spec.rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_marks_bad_rows() {
        let spec = FileSpec {
            customer: "acme",
            week_start: NaiveDate::from_ymd_opt(2026, 11, 23).unwrap(),
            rows: 100,
            users: 10,
            bad_every: 10,
            with_customer: true,
            seed: 1,
            id_prefix: "a",
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert_eq!(write_csv(&mut a, &spec).unwrap(), (100, 10));
        write_csv(&mut b, &spec).unwrap();
        assert_eq!(a, b);
        let text = String::from_utf8(a).unwrap();
        assert_eq!(text.lines().count(), 101);
        assert!(text.starts_with(HEADER));
    }

    #[test]
    fn rng_covers_its_range() {
        let mut r = Rng::new(7);
        let mut seen = [false; 6];
        for _ in 0..1000 {
            seen[r.below(6) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
