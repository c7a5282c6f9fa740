//! Schema evolution: what `migrate --plan` prints and `migrate` applies.
//!
//! The wanted tables are [`Sql::tables`] (the contract's columns for the target and staging,
//! the product's own column lists for the rest: one definition each). The warehouse's tables
//! are read from its catalog ([`Sql::table_columns`]). Each difference is classified:
//! - a missing table is created (`CREATE TABLE IF NOT EXISTS`, as every command does);
//! - a column the table lacks that is optional (nullable, no default needed) is added, one
//!   `ALTER TABLE … ADD COLUMN` per column, each its own statement: rows already there read NULL;
//! - everything else is refused, with the plan and the manual steps: a column the table has
//!   and the contract lacks (a drop; with a missing column beside it, a drop or a rename, which
//!   cannot be told apart), a type change, a narrower or a wider VARCHAR, a column that became
//!   required or optional, and a required column added to an existing table (its rows have no
//!   value for it). The reasoning is in docs/design.md, "Schema evolution".
//!
//! Every other command creates missing tables but refuses to start when an existing one is
//! behind ([`require_current`]): the operator migrates once, before rolling out.

use serde::Serialize;

use super::sql::{ActualColumn, Dialect, Sql, TableDef, WantedColumn};
use super::{ErrorClass, Warehouse, WarehouseError};

/// One difference between a wanted table and the warehouse's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// The table does not exist: `migrate` (and every command) creates it.
    CreateTable { sql: String },
    /// An optional column the table lacks: `migrate` adds it.
    AddColumn { column: WantedColumn, sql: String },
    /// A change `migrate` will not make: why, and what an operator can do instead.
    Refused { column: String, reason: String, manual_steps: Vec<String> },
    /// A column the table has and the contract lacks: a drop `migrate` will not make. While
    /// it is nullable the running version is not harmed (every insert names its columns, so
    /// it reads NULL): other commands still start (a rollback to the previous contract).
    ExtraColumn { column: String, not_null: bool, reason: String, manual_steps: Vec<String> },
}

impl Change {
    /// Whether this difference keeps the other commands from starting: an existing table that
    /// lacks a column, or has one of another type or nullability, or an extra NOT NULL column.
    fn blocks_start(&self) -> bool {
        match self {
            Change::CreateTable { .. } => false,
            Change::ExtraColumn { not_null, .. } => *not_null,
            Change::AddColumn { .. } | Change::Refused { .. } => true,
        }
    }
}

/// The changes of one table (none: it is as wanted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TablePlan {
    pub table: String,
    pub changes: Vec<Change>,
}

/// What `migrate` would do to the warehouse, table by table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub tables: Vec<TablePlan>,
}

impl Plan {
    fn changes(&self) -> impl Iterator<Item = (&str, &Change)> {
        self.tables.iter().flat_map(|t| t.changes.iter().map(move |c| (t.table.as_str(), c)))
    }
    /// Nothing to create, add or refuse.
    pub fn is_empty(&self) -> bool {
        self.changes().next().is_none()
    }
    /// Some change is refused: `migrate` changes nothing.
    pub fn refused(&self) -> bool {
        self.changes().any(|(_, c)| matches!(c, Change::Refused { .. } | Change::ExtraColumn { .. }))
    }
    /// Some existing table is behind what the running version needs ([`Change::blocks_start`]).
    pub fn blocks_start(&self) -> bool {
        self.changes().any(|(_, c)| c.blocks_start())
    }
    /// The `ALTER TABLE … ADD COLUMN` statements, in plan order.
    pub fn additions(&self) -> Vec<String> {
        self.changes()
            .filter_map(|(_, c)| match c {
                Change::AddColumn { sql, .. } => Some(sql.clone()),
                _ => None,
            })
            .collect()
    }
    /// The counts of the summary line: tables to create, columns to add, changes refused.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut n = (0, 0, 0);
        for (_, c) in self.changes() {
            match c {
                Change::CreateTable { .. } => n.0 += 1,
                Change::AddColumn { .. } => n.1 += 1,
                Change::Refused { .. } | Change::ExtraColumn { .. } => n.2 += 1,
            }
        }
        n
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (table, c) in self.changes() {
            match c {
                Change::CreateTable { .. } => writeln!(f, "{table}: create table")?,
                Change::AddColumn { column, sql } => {
                    writeln!(f, "{table}: add column {} {}", column.name, column.ty)?;
                    writeln!(f, "    {sql};")?;
                }
                Change::Refused { column, reason, manual_steps }
                | Change::ExtraColumn { column, reason, manual_steps, .. } => {
                    writeln!(f, "{table}: REFUSED, column {column}: {reason}")?;
                    writeln!(f, "  manual steps:")?;
                    for s in manual_steps {
                        writeln!(f, "    {s}")?;
                    }
                }
            }
        }
        let (create, add, refused) = self.counts();
        if self.is_empty() {
            writeln!(f, "plan: nothing to do, every table is as the contract wants it")
        } else {
            writeln!(f, "plan: {create} table(s) to create, {add} column(s) to add, {refused} change(s) refused")
        }
    }
}

fn varchar_width(ty: &str) -> Option<usize> {
    ty.strip_prefix("VARCHAR(")?.strip_suffix(')')?.parse().ok()
}

/// What `wanted` needs of a table that has `actual` columns (`None`: no such table). Pure.
pub fn diff(sql: &Sql<'_>, wanted: &TableDef, actual: Option<&[ActualColumn]>) -> Vec<Change> {
    let Some(actual) = actual else {
        return vec![Change::CreateTable { sql: wanted.create() }];
    };
    let t = &wanted.name;
    let find = |name: &str| actual.iter().find(|a| a.name.eq_ignore_ascii_case(name));
    let extra: Vec<&ActualColumn> =
        actual.iter().filter(|a| !wanted.columns.iter().any(|w| w.name.eq_ignore_ascii_case(&a.name))).collect();
    let rebuild = |col: &str, how: &str| {
        let mut steps = vec![
            format!("-- {t} cannot {how} in place: rebuild it with the wanted definition (`wau-ingest migrate --print` shows it), services stopped:"),
            format!("ALTER TABLE {t} RENAME TO {t}_old;"),
        ];
        if *t == sql.t.target {
            // A view follows a renamed table (SQLite rewrites it; Redshift binds it).
            steps.push(format!("DROP VIEW {};", sql.t.wau_view));
        }
        steps.extend([
            "-- run `wau-ingest migrate` (it creates the table, and the view, as the contract wants them), then:"
                .to_string(),
            format!("INSERT INTO {t} (<every column>) SELECT <every column, {col} converted> FROM {t}_old;"),
            format!("DROP TABLE {t}_old;"),
        ]);
        steps
    };
    let mut out = Vec::new();
    for w in &wanted.columns {
        match find(&w.name) {
            None if !extra.is_empty() => {
                let others: Vec<&str> = extra.iter().map(|a| a.name.as_str()).collect();
                out.push(Change::Refused {
                    column: w.name.clone(),
                    reason: format!(
                        "not in the table, which has {} that the contract lacks: a rename, or a drop and an add (they cannot be told apart)",
                        others.join(", ")
                    ),
                    manual_steps: vec![
                        format!("-- if {} was renamed to {}:", others[0], w.name),
                        format!("ALTER TABLE {t} RENAME COLUMN {} TO {};", others[0], w.name),
                        "-- if it was dropped, see the drop's steps; then `wau-ingest migrate` adds the new column".into(),
                    ],
                });
            }
            None if w.not_null => out.push(Change::Refused {
                column: w.name.clone(),
                reason: format!(
                    "a required (NOT NULL) column added to an existing table: its rows have no value for it ({} takes no NOT NULL column without a default)",
                    engine(sql.dialect)
                ),
                manual_steps: vec![
                    "-- make the column optional (required = false) in the contract and run `wau-ingest migrate`, or".into(),
                    format!("ALTER TABLE {t} ADD COLUMN {} DEFAULT <value for the rows already there>;", w.ddl()),
                ],
            }),
            None => out.push(Change::AddColumn { column: w.clone(), sql: sql.add_column(t, w) }),
            Some(a) if a.ty != w.ty => {
                let (reason, steps) = match (varchar_width(&a.ty), varchar_width(&w.ty)) {
                    (Some(have), Some(want)) if want < have => (
                        format!("narrower: {} in the table, {} wanted; values already stored may not fit", a.ty, w.ty),
                        vec![
                            format!("-- keep max_length at {have} or more in the contract, or check no value is longer and rebuild:"),
                            format!("SELECT COUNT(*) FROM {t} WHERE OCTET_LENGTH({}) > {want};", w.name),
                        ]
                        .into_iter()
                        .chain(rebuild(&w.name, "narrow a column"))
                        .collect(),
                    ),
                    (Some(have), Some(_)) => (
                        format!("wider: {} in the table, {} wanted (from VARCHAR({have}))", a.ty, w.ty),
                        vec![
                            "-- Redshift widens a VARCHAR in place; on its own, not in a transaction block, and not on a column",
                            "-- with BYTEDICT, RUNLENGTH, TEXT255 or TEXT32K encoding (then rebuild); services stopped:",
                        ]
                        .into_iter()
                        .map(String::from)
                        .chain([format!("ALTER TABLE {t} ALTER COLUMN {} TYPE {};", w.name, w.ty)])
                        .collect(),
                    ),
                    _ => (
                        format!("type change: {} in the table, {} wanted", a.ty, w.ty),
                        vec!["-- or keep the type and name the new one as a new optional column".to_string()]
                            .into_iter()
                            .chain(rebuild(&w.name, "change a column's type"))
                            .collect(),
                    ),
                };
                out.push(Change::Refused { column: w.name.clone(), reason, manual_steps: steps });
            }
            Some(a) if a.not_null != w.not_null => {
                let (reason, how) = if w.not_null {
                    ("became required: the table takes NULL in it, the contract does not", "make a column NOT NULL")
                } else {
                    ("became optional: the table's column is NOT NULL, so rows without it would fail", "drop a NOT NULL")
                };
                let mut steps = Vec::new();
                if w.not_null {
                    steps.push(format!("SELECT COUNT(*) FROM {t} WHERE {} IS NULL; -- must be 0 first", w.name));
                }
                steps.extend(rebuild(&w.name, how));
                out.push(Change::Refused { column: w.name.clone(), reason: reason.into(), manual_steps: steps });
            }
            Some(_) => {}
        }
    }
    for a in extra {
        out.push(Change::ExtraColumn {
            column: a.name.clone(),
            not_null: a.not_null,
            reason: "in the table but not in the contract: dropped (or renamed)".into(),
            manual_steps: vec![
                "-- if nothing reads it any more (views, reports, the Glue catalog), drop it:".into(),
                format!("ALTER TABLE {t} DROP COLUMN {};", a.name),
                "-- or put it back in the contract as an optional column".into(),
            ],
        });
    }
    out
}

/// A table's name without its schema (catalogs list tables by schema and name).
fn bare(table: &str) -> &str {
    table.rsplit_once('.').map_or(table, |(_, t)| t)
}

fn engine(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => "SQLite",
        Dialect::Postgres => "PostgreSQL",
        Dialect::Redshift => "Redshift",
    }
}

/// The catalog query whose rows [`plan_from`] reads: the columns of every table of `sql`.
pub fn columns_query(sql: &Sql<'_>) -> String {
    let defs = sql.tables();
    let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
    sql.table_columns(&names)
}

/// The plan for every table of `sql`, from the rows of [`columns_query`] (as text, as
/// [`Warehouse::read_text`] returns them).
pub fn plan_from(sql: &Sql<'_>, rows: &[Vec<Option<String>>]) -> Plan {
    let mut tables = Vec::new();
    for def in &sql.tables() {
        let actual: Vec<ActualColumn> = rows
            .iter()
            .filter(|r| r.first().cloned().flatten().is_some_and(|t| t.eq_ignore_ascii_case(bare(&def.name))))
            .filter_map(|r| sql.actual_column(&r[1..]))
            .collect();
        let changes = diff(sql, def, (!actual.is_empty()).then_some(&actual[..]));
        tables.push(TablePlan { table: def.name.clone(), changes });
    }
    Plan { tables }
}

/// The plan for every table of `sql`, read from the warehouse's catalog.
pub async fn plan(sql: &Sql<'_>, w: &dyn Warehouse) -> Result<Plan, WarehouseError> {
    Ok(plan_from(sql, &w.read_text(&columns_query(sql)).await?))
}

/// Refuses (fatal: retrying cannot help) when an existing table is behind what the running
/// version needs: every command but `migrate` starts only on tables that hold every column it
/// writes, as it writes them. A nullable column the contract lacks does not stop it (logged).
pub fn require_current(plan: &Plan) -> Result<(), WarehouseError> {
    if !plan.blocks_start() {
        for (table, c) in plan.changes() {
            if let Change::ExtraColumn { column, .. } = c {
                tracing::warn!(
                    table,
                    column,
                    "a column the contract lacks (a newer contract's?): it reads NULL in what this version writes"
                );
            }
        }
        return Ok(());
    }
    let behind: Vec<&str> =
        plan.tables.iter().filter(|t| t.changes.iter().any(Change::blocks_start)).map(|t| t.table.as_str()).collect();
    Err(WarehouseError::classified(
        ErrorClass::Fatal,
        format!(
            "the tables {} are behind the contract: run `wau-ingest migrate --plan` to see the changes and `wau-ingest migrate` to apply them (once, before rolling out)",
            behind.join(", ")
        ),
    ))
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The plan held refused changes: nothing was changed.
    Refused(Plan),
    /// Every create and add ran; the tables are now as wanted. The plan that was applied.
    Done(Plan),
}

/// `migrate`: plans; refuses the whole plan if any change is refused; else adds each column,
/// one statement each on its own (not in a transaction block), then creates what is missing
/// and checks that nothing is left ([`Warehouse::migrate`]). Idempotent: an ADD that another
/// `migrate` made first is planned away when this one plans again.
pub async fn apply(w: &dyn Warehouse, sql: &Sql<'_>) -> Result<Applied, WarehouseError> {
    let before = plan(sql, w).await?;
    if before.refused() {
        return Ok(Applied::Refused(before));
    }
    for stmt in before.additions() {
        // Planned again before each statement, and after one that failed: a concurrent
        // migrate may have added the column first (then there is nothing left to do).
        if !plan(sql, w).await?.additions().contains(&stmt) {
            continue;
        }
        if let Err(e) = w.execute_ddl(&stmt).await {
            if plan(sql, w).await?.additions().contains(&stmt) {
                return Err(e);
            }
        }
    }
    w.migrate().await?;
    Ok(Applied::Done(before))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Column, ColumnType, Contract};
    use crate::warehouse::sql::Tables;

    fn actual_of(def: &TableDef) -> Vec<ActualColumn> {
        def.columns
            .iter()
            .map(|c| ActualColumn { name: c.name.clone(), ty: c.ty.clone(), not_null: c.not_null })
            .collect()
    }

    fn v3() -> Contract {
        let mut c = Contract::builtin();
        c.version = 3;
        let mut region = Column::new("region", ColumnType::String);
        region.max_length = Some(32);
        c.columns.push(region);
        c
    }

    /// The target and staging of `old` as they were created, planned against `new`.
    fn plan_between(d: Dialect, old: &Contract, new: &Contract) -> Vec<Vec<Change>> {
        let (to, tn) = (Tables::for_contract(old), Tables::for_contract(new));
        let (so, sn) = (Sql::new(d, old, &to), Sql::new(d, new, &tn));
        so.tables().iter().zip(sn.tables()).map(|(o, n)| diff(&sn, &n, Some(&actual_of(o)))).collect()
    }

    #[test]
    fn the_same_tables_plan_nothing() {
        for d in [Dialect::Sqlite, Dialect::Redshift, Dialect::Postgres] {
            let c = Contract::builtin();
            assert!(plan_between(d, &c, &c).iter().all(Vec::is_empty), "{d:?}");
        }
    }

    #[test]
    fn a_new_optional_column_is_one_add_to_target_and_staging() {
        let plans = plan_between(Dialect::Redshift, &Contract::builtin(), &v3());
        let t = Tables::for_contract(&v3());
        for (i, table) in [&t.target, &t.staging].into_iter().enumerate() {
            assert_eq!(
                plans[i],
                vec![Change::AddColumn {
                    column: WantedColumn { name: "region".into(), ty: "VARCHAR(32)".into(), not_null: false },
                    sql: format!("ALTER TABLE {table} ADD COLUMN region VARCHAR(32)"),
                }]
            );
        }
        assert!(plans[2..].iter().all(Vec::is_empty), "the product's tables do not change: {plans:?}");
        let lite = plan_between(Dialect::Sqlite, &Contract::builtin(), &v3());
        assert!(matches!(&lite[0][..], [Change::AddColumn { sql, .. }] if sql.ends_with("ADD COLUMN region TEXT")));
    }

    #[test]
    fn a_missing_table_is_created_with_its_ddl() {
        let c = Contract::builtin();
        let t = Tables::for_contract(&c);
        let sql = Sql::new(Dialect::Sqlite, &c, &t);
        let def = &sql.tables()[2];
        assert_eq!(diff(&sql, def, None), vec![Change::CreateTable { sql: def.create() }]);
    }

    fn refused(changes: &[Change]) -> Vec<(&str, &str)> {
        changes
            .iter()
            .filter_map(|c| match c {
                Change::Refused { column, reason, .. } | Change::ExtraColumn { column, reason, .. } => {
                    Some((column.as_str(), reason.as_str()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn destructive_and_narrowing_changes_are_refused() {
        let old = Contract::builtin();
        // A dropped column: the table has it, the contract does not.
        let mut dropped = old.clone();
        dropped.columns.retain(|c| c.name != "user_agent");
        let p = plan_between(Dialect::Redshift, &old, &dropped);
        assert_eq!(refused(&p[0]), vec![("user_agent", "in the table but not in the contract: dropped (or renamed)")]);
        // A rename: one missing and one extra column, refused both.
        let mut renamed = old.clone();
        renamed.columns.iter_mut().find(|c| c.name == "user_agent").unwrap().name = "agent".into();
        let p = plan_between(Dialect::Sqlite, &old, &renamed);
        let r = refused(&p[1]);
        assert_eq!(r.len(), 2, "{p:?}");
        assert!(r[0].0 == "agent" && r[0].1.contains("a rename, or a drop and an add"), "{r:?}");
        assert_eq!(r[1].0, "user_agent");
        assert!(p[1].iter().all(|c| !matches!(c, Change::AddColumn { .. })), "no add beside a possible rename");
        // A type change.
        let mut retyped = old.clone();
        retyped.columns.iter_mut().find(|c| c.name == "event_type").unwrap().ty = ColumnType::Integer;
        let p = plan_between(Dialect::Redshift, &old, &retyped);
        assert_eq!(refused(&p[0]), vec![("event_type", "type change: VARCHAR(64) in the table, BIGINT wanted")]);
        // Narrower and wider widths (Redshift; SQLite's TEXT has none).
        let mut narrow = old.clone();
        narrow.columns.iter_mut().find(|c| c.name == "user_agent").unwrap().max_length = Some(256);
        let p = plan_between(Dialect::Redshift, &old, &narrow);
        assert!(refused(&p[0])[0].1.starts_with("narrower: VARCHAR(512) in the table, VARCHAR(256) wanted"), "{p:?}");
        assert!(plan_between(Dialect::Sqlite, &old, &narrow).iter().all(Vec::is_empty));
        let mut wide = old.clone();
        wide.columns.iter_mut().find(|c| c.name == "user_agent").unwrap().max_length = Some(1024);
        let p = plan_between(Dialect::Redshift, &old, &wide);
        assert!(refused(&p[0])[0].1.starts_with("wider: VARCHAR(512) in the table, VARCHAR(1024) wanted"), "{p:?}");
        match &p[0][0] {
            Change::Refused { manual_steps, .. } => assert!(
                manual_steps.contains(&"ALTER TABLE wau_audit_logs ALTER COLUMN user_agent TYPE VARCHAR(1024);".into()),
                "{manual_steps:?}"
            ),
            other => panic!("{other:?}"),
        }
        // A new required column, and a column made required or optional.
        let mut required = v3();
        required.columns.last_mut().unwrap().required = true;
        let p = plan_between(Dialect::Sqlite, &old, &required);
        assert!(refused(&p[0])[0].1.starts_with("a required (NOT NULL) column added"), "{p:?}");
        let mut now_required = old.clone();
        now_required.columns.iter_mut().find(|c| c.name == "user_agent").unwrap().required = true;
        assert!(refused(&plan_between(Dialect::Sqlite, &old, &now_required)[0])[0].1.starts_with("became required"));
        let mut now_optional = old.clone();
        now_optional.columns.iter_mut().find(|c| c.name == "event_type").unwrap().required = false;
        assert!(refused(&plan_between(Dialect::Redshift, &old, &now_optional)[1])[0].1.starts_with("became optional"));
    }

    #[test]
    fn the_plan_says_what_it_would_do_and_exits_accordingly() {
        let plans = plan_between(Dialect::Redshift, &Contract::builtin(), &v3());
        let plan = Plan {
            tables: vec![
                TablePlan { table: "wau_audit_logs".into(), changes: plans[0].clone() },
                TablePlan {
                    table: "wau_ingest_files".into(),
                    changes: vec![Change::CreateTable { sql: "CREATE TABLE …".into() }],
                },
            ],
        };
        assert_eq!(plan.counts(), (1, 1, 0));
        assert!(!plan.refused() && plan.blocks_start());
        let text = plan.to_string();
        assert!(text.contains("wau_audit_logs: add column region VARCHAR(32)\n    ALTER TABLE wau_audit_logs ADD COLUMN region VARCHAR(32);"), "{text}");
        assert!(text.ends_with("plan: 1 table(s) to create, 1 column(s) to add, 0 change(s) refused\n"), "{text}");
        let e = require_current(&plan).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Fatal);
        assert!(e.to_string().contains("wau-ingest migrate --plan"), "{e}");
        let creates_only = Plan { tables: vec![plan.tables[1].clone()] };
        assert!(require_current(&creates_only).is_ok(), "missing tables are every command's to create");
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["tables"][0]["changes"][0]["kind"], "add_column");
        assert_eq!(json["tables"][0]["changes"][0]["column"]["ty"], "VARCHAR(32)");
        // A rollback: the previous contract on tables a newer one extended. The nullable extra
        // column is refused by migrate (a drop) but lets the old version run.
        let back = plan_between(Dialect::Sqlite, &v3(), &Contract::builtin());
        let plan = Plan { tables: vec![TablePlan { table: "wau_audit_logs".into(), changes: back[0].clone() }] };
        assert!(plan.refused() && !plan.blocks_start(), "{plan}");
        assert!(require_current(&plan).is_ok());
        let mut required = v3();
        required.columns.last_mut().unwrap().required = true;
        let back = plan_between(Dialect::Sqlite, &required, &Contract::builtin());
        let plan = Plan { tables: vec![TablePlan { table: "wau_audit_logs".into(), changes: back[0].clone() }] };
        assert!(require_current(&plan).is_err(), "an extra NOT NULL column would fail every insert");
    }

    #[test]
    fn catalog_rows_read_as_ddl_types() {
        let c = Contract::builtin();
        let t = Tables::for_contract(&c);
        let rs = Sql::new(Dialect::Redshift, &c, &t);
        let row = |v: [Option<&str>; 4]| v.map(|x| x.map(String::from)).to_vec();
        let col = |name: &str, ty: &str, nn| ActualColumn { name: name.into(), ty: ty.into(), not_null: nn };
        assert_eq!(
            rs.actual_column(&row([Some("user_agent"), Some("character varying"), Some("512"), Some("YES")])),
            Some(col("user_agent", "VARCHAR(512)", false))
        );
        assert_eq!(
            rs.actual_column(&row([Some("event_time"), Some("timestamp without time zone"), None, Some("NO")])),
            Some(col("event_time", "TIMESTAMP", true))
        );
        assert_eq!(
            rs.actual_column(&row([Some("n"), Some("bigint"), None, Some("NO")])),
            Some(col("n", "BIGINT", true))
        );
        let lite = Sql::new(Dialect::Sqlite, &c, &t);
        assert_eq!(
            lite.actual_column(&row([Some("x"), Some("text"), None, Some("YES")])),
            Some(col("x", "TEXT", false))
        );
    }
}
