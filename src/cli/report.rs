//! `wau-ingest report`: weekly active users per customer, as a week-over-week trend.
//!
//! [`build`] turns the view's rows into one [`Trend`] per customer over a fixed run of ISO
//! weeks (weeks without activity count zero), [`sparkline`] draws a trend in one line, and the
//! report renders as text, CSV or JSON.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{Datelike, NaiveDate};
use serde::Serialize;

use crate::warehouse::{Warehouse, WarehouseError, WauRow};

/// Weekly active users of `weeks` ISO weeks, the last one the week of `today`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WauReport {
    /// The Monday of every week of the report, oldest first (JSON: `{iso_week, week_start}`).
    #[serde(serialize_with = "weeks_json")]
    pub weeks: Vec<NaiveDate>,
    /// One per customer with activity in the report's weeks, by name.
    pub customers: Vec<Trend>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    pub customer: String,
    /// Active users per week of [`WauReport::weeks`].
    pub active_users: Vec<i64>,
    /// The last week's count, the week before it, and the change between them.
    pub this_week: i64,
    pub previous_week: i64,
    pub change: i64,
    /// `change` as a percentage of `previous_week`; none when that was zero.
    pub change_percent: Option<f64>,
}

/// `2026-W49` for any day of that ISO week.
pub fn iso_week(day: NaiveDate) -> String {
    let w = day.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

fn weeks_json<S: serde::Serializer>(weeks: &[NaiveDate], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(weeks.len()))?;
    for d in weeks {
        seq.serialize_element(&serde_json::json!({ "iso_week": iso_week(*d), "week_start": d.to_string() }))?;
    }
    seq.end()
}

/// The Monday of `day`'s ISO week.
pub fn monday_of(day: NaiveDate) -> NaiveDate {
    day - chrono::Duration::days(day.weekday().num_days_from_monday() as i64)
}

/// The first Monday of a report of `weeks` weeks ending with `today`'s week.
pub fn first_week(today: NaiveDate, weeks: u32) -> NaiveDate {
    monday_of(today) - chrono::Duration::weeks(weeks.max(1) as i64 - 1)
}

/// The report of `rows` (the view's, any order) over `weeks` weeks ending with `today`'s week.
pub fn build(rows: &[WauRow], today: NaiveDate, weeks: u32) -> WauReport {
    let first = first_week(today, weeks);
    let mondays: Vec<NaiveDate> = (0..weeks.max(1) as i64).map(|i| first + chrono::Duration::weeks(i)).collect();
    let mut per_customer: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for r in rows {
        let Some(start) = r.week_start.get(..10).and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()) else {
            continue;
        };
        let Some(i) = mondays.iter().position(|m| *m == monday_of(start)) else { continue };
        per_customer.entry(&r.customer).or_insert_with(|| vec![0; mondays.len()])[i] += r.active_users;
    }
    let customers = per_customer
        .into_iter()
        .map(|(customer, active_users)| {
            let this_week = *active_users.last().expect("at least one week");
            let previous_week = if active_users.len() > 1 { active_users[active_users.len() - 2] } else { 0 };
            let change = this_week - previous_week;
            let change_percent = (previous_week != 0).then(|| change as f64 * 100.0 / previous_week as f64);
            Trend { customer: customer.to_string(), active_users, this_week, previous_week, change, change_percent }
        })
        .collect();
    WauReport { weeks: mondays, customers }
}

/// Reads the view and builds the report.
pub async fn read(
    w: &dyn Warehouse,
    today: NaiveDate,
    weeks: u32,
    customer: Option<&str>,
) -> Result<WauReport, WarehouseError> {
    let rows = w.weekly_active_users(&first_week(today, weeks).to_string(), customer).await?;
    Ok(build(&rows, today, weeks))
}

const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One character per value: `·` for zero, else one of eight bars scaled to the largest value
/// (the largest is a full bar; any positive value at least the lowest).
pub fn sparkline(values: &[i64]) -> String {
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| {
            if v <= 0 || max <= 0 {
                '·'
            } else {
                let level = ((v as f64 / max as f64) * LEVELS.len() as f64).ceil() as usize;
                LEVELS[level.clamp(1, LEVELS.len()) - 1]
            }
        })
        .collect()
}

/// `+3 (+50.0%)`, `-1 (-10.0%)`, `+2 (new)`, `0`.
pub fn change_text(t: &Trend) -> String {
    match t.change_percent {
        _ if t.change == 0 && t.previous_week != 0 => "0 (0.0%)".into(),
        Some(p) => format!("{:+} ({p:+.1}%)", t.change),
        None if t.change == 0 => "0".into(),
        None => format!("{:+} (new)", t.change),
    }
}

impl WauReport {
    /// One line per customer and week: customer,iso_week,week_start,active_users.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("customer,iso_week,week_start,active_users\n");
        for t in &self.customers {
            for (monday, n) in self.weeks.iter().zip(&t.active_users) {
                out.push_str(&format!("{},{},{monday},{n}\n", csv_field(&t.customer), iso_week(*monday)));
            }
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

impl fmt::Display for WauReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Some(first), Some(last)) = (self.weeks.first(), self.weeks.last()) else { return Ok(()) };
        if self.customers.is_empty() {
            return writeln!(f, "(no activity since {first})");
        }
        let iso = |d: &NaiveDate| iso_week(*d);
        writeln!(f, "weekly active users, {} to {} ({} weeks, oldest first)", iso(first), iso(last), self.weeks.len())?;
        let width = self.weeks.len().max(5);
        writeln!(f, "{:<16} {:<width$} {:>10} {:>10}  change", "customer", "trend", "this week", "previous")?;
        for t in &self.customers {
            writeln!(
                f,
                "{:<16} {:<width$} {:>10} {:>10}  {}",
                t.customer,
                sparkline(&t.active_users),
                t.this_week,
                t.previous_week,
                change_text(t)
            )?;
        }
        Ok(())
    }
}

impl crate::cli::Report for WauReport {
    fn verdict(&self) -> crate::cli::Verdict {
        crate::cli::Verdict::Done
    }

    fn render(&self, format: crate::cli::Format, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
        use crate::cli::Format;
        match format {
            Format::Text => write!(out, "{self}")?,
            Format::Csv => write!(out, "{}", self.to_csv())?,
            Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(self)?)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(customer: &str, week_start: &str, n: i64) -> WauRow {
        WauRow { customer: customer.into(), iso_week: String::new(), week_start: week_start.into(), active_users: n }
    }

    #[test]
    fn sparkline_scales_to_the_largest_value_and_marks_empty_weeks() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8]), "·▁▂▄█");
        assert_eq!(sparkline(&[3, 3]), "██");
        assert_eq!(sparkline(&[0, 0]), "··");
        // A small positive value is still visible next to a large one.
        assert_eq!(sparkline(&[1, 1000]), "▁█");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn weeks_without_activity_count_zero_and_the_change_is_week_over_week() {
        // Wednesday 2026-12-02: its week starts Monday 2026-11-30.
        let today = NaiveDate::from_ymd_opt(2026, 12, 2).unwrap();
        let rows = [
            row("acme", "2026-11-09", 2),
            row("acme", "2026-11-23", 4),
            row("acme", "2026-11-30", 6),
            row("globex", "2026-11-30", 3),
            row("initech", "2026-11-23", 5),
            // Outside the four weeks: ignored.
            row("acme", "2026-11-02", 99),
        ];
        let r = build(&rows, today, 4);
        assert_eq!(
            r.weeks,
            ["2026-11-09", "2026-11-16", "2026-11-23", "2026-11-30"]
                .map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap())
        );
        let names: Vec<&str> = r.customers.iter().map(|t| t.customer.as_str()).collect();
        assert_eq!(names, ["acme", "globex", "initech"]);
        let acme = &r.customers[0];
        assert_eq!(acme.active_users, [2, 0, 4, 6]);
        assert_eq!((acme.this_week, acme.previous_week, acme.change), (6, 4, 2));
        assert_eq!(acme.change_percent, Some(50.0));
        assert_eq!(change_text(acme), "+2 (+50.0%)");
        assert_eq!(change_text(&r.customers[1]), "+3 (new)");
        let initech = &r.customers[2];
        assert_eq!((initech.change, initech.change_percent), (-5, Some(-100.0)));
        assert_eq!(r.to_csv().lines().nth(1), Some("acme,2026-W46,2026-11-09,2"));
        let text = r.to_string();
        let line = text.lines().find(|l| l.starts_with("acme")).unwrap();
        assert!(line.contains("▃·▆█") && line.ends_with("+2 (+50.0%)"), "{line}");
    }
}
