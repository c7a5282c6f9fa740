//! Every SQL statement the product runs, in one place.
//!
//! Loads and merges are written once, in the subset Redshift, PostgreSQL and SQLite share
//! (`DELETE … WHERE EXISTS`, `INSERT … SELECT`, `ROW_NUMBER()` in a subquery, `:name`
//! parameters). Only true engine differences — DDL types, table attributes (the physical
//! design, [`Sql::physical_design`]), view date functions, the bulk-load route, the merge's
//! delete from the target (a join where DELETE can join) and SQLite's winner step — live behind
//! [`Dialect`].

use super::ledger::counts_for_order_sql;
use crate::contract::{Column, ColumnType, Contract};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    Redshift,
}

/// Table names (configurable; defaults from DESIGN.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub target: String,
    pub staging: String,
    pub files: String,
    pub rejects: String,
    pub merges: String,
    pub wau_view: String,
    /// Per customer, its last loaded file (see [`Sql::freshness_view`]).
    pub freshness_view: String,
    /// Holds no rows: every writer (commit, merge) takes `LOCK` on it first, see [`Sql::lock_writers`].
    pub lock: String,
    /// One row per reconcile run (see [`reconciles_table`]).
    pub reconciles: String,
}

impl Tables {
    pub fn for_contract(contract: &Contract) -> Tables {
        Tables {
            target: contract.table.clone(),
            staging: format!("{}_staging", contract.table),
            files: "wau_ingest_files".into(),
            rejects: "wau_ingest_rejects".into(),
            merges: "wau_ingest_merges".into(),
            wau_view: "wau_weekly_active_users".into(),
            freshness_view: "wau_ingest_customer_freshness".into(),
            lock: "wau_ingest_lock".into(),
            reconciles: "wau_ingest_reconciles".into(),
        }
    }
}

/// Ledger statuses. `replaced` marks a load that a `replay --force` of the same version replaced.
pub const LOADED: &str = "loaded";
pub const REJECTED: &str = "rejected";
pub const SUPERSEDED: &str = "superseded";
pub const REPLACED: &str = "replaced";

/// The type of a column of the product's own tables; text widths are bytes (Redshift VARCHAR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnType {
    Text(usize),
    Int,
    Time,
}

/// One column of the ledger or the rejects table: the single source of their DDL, insert
/// lists and widths, for every engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnColumn {
    pub name: &'static str,
    pub ty: OwnType,
    pub not_null: bool,
}

impl OwnColumn {
    const fn text(name: &'static str, width: usize, not_null: bool) -> OwnColumn {
        OwnColumn { name, ty: OwnType::Text(width), not_null }
    }
    const fn int(name: &'static str, not_null: bool) -> OwnColumn {
        OwnColumn { name, ty: OwnType::Int, not_null }
    }
    const fn time(name: &'static str, not_null: bool) -> OwnColumn {
        OwnColumn { name, ty: OwnType::Time, not_null }
    }
    /// The most bytes a value of this text column may have (0 for other types).
    pub const fn width(&self) -> usize {
        match self.ty {
            OwnType::Text(n) => n,
            _ => 0,
        }
    }
}

/// The names of `cols`, in order.
pub fn column_names(cols: &[OwnColumn]) -> Vec<&'static str> {
    cols.iter().map(|c| c.name).collect()
}

/// The ledger, `wau_ingest_files`: one row per recorded file version (see DESIGN.md, Tables).
pub mod ledger_table {
    use super::OwnColumn;
    pub const BUCKET: OwnColumn = OwnColumn::text("bucket", 1024, true);
    /// S3 keys are at most 1,024 bytes.
    pub const KEY: OwnColumn = OwnColumn::text("key", 1024, true);
    pub const VERSION: OwnColumn = OwnColumn::text("version", 256, true);
    pub const SEQUENCER: OwnColumn = OwnColumn::text("sequencer", 64, true);
    pub const SIZE_BYTES: OwnColumn = OwnColumn::int("size_bytes", false);
    pub const ROWS_READ: OwnColumn = OwnColumn::int("rows_read", true);
    pub const ROWS_LOADED: OwnColumn = OwnColumn::int("rows_loaded", true);
    pub const ROWS_REJECTED: OwnColumn = OwnColumn::int("rows_rejected", true);
    pub const STATUS: OwnColumn = OwnColumn::text("status", 16, true);
    pub const REASON: OwnColumn = OwnColumn::text("reason", 1024, false);
    pub const BATCH_ID: OwnColumn = OwnColumn::int("batch_id", true);
    pub const EVENT_AT: OwnColumn = OwnColumn::time("event_at", false);
    pub const LOADED_AT: OwnColumn = OwnColumn::time("loaded_at", true);
    pub const MERGED_AT: OwnColumn = OwnColumn::time("merged_at", false);
    pub const CONTRACT_VERSION: OwnColumn = OwnColumn::int("contract_version", true);
    /// The file's customer (`ledger::file_customer`): the one its key names, else the one all
    /// its loaded rows name; NULL when neither says (rows of several customers, no row loaded,
    /// a name over this width) and in rows recorded before the column existed. A fixed width,
    /// not the contract's: the ledger's columns are the same for every contract, and a value
    /// that does not fit is recorded NULL, never cut (a cut name is another customer).
    pub const CUSTOMER: OwnColumn = OwnColumn::text("customer", 256, false);
    pub const COLUMNS: [OwnColumn; 16] = [
        BUCKET,
        KEY,
        VERSION,
        SEQUENCER,
        SIZE_BYTES,
        ROWS_READ,
        ROWS_LOADED,
        ROWS_REJECTED,
        STATUS,
        REASON,
        BATCH_ID,
        EVENT_AT,
        LOADED_AT,
        MERGED_AT,
        CONTRACT_VERSION,
        CUSTOMER,
    ];
}

/// The rejects table, `wau_ingest_rejects`: one row per rejected row or file.
pub mod rejects_table {
    use super::OwnColumn;
    pub const BUCKET: OwnColumn = super::ledger_table::BUCKET;
    pub const KEY: OwnColumn = super::ledger_table::KEY;
    pub const VERSION: OwnColumn = super::ledger_table::VERSION;
    pub const BATCH_ID: OwnColumn = super::ledger_table::BATCH_ID;
    pub const LINE: OwnColumn = OwnColumn::int("line", true);
    pub const COLUMN_NAME: OwnColumn = OwnColumn::text("column_name", 128, false);
    pub const RULE: OwnColumn = OwnColumn::text("rule", 32, true);
    pub const REASON: OwnColumn = OwnColumn::text("reason", 1024, true);
    pub const VALUE: OwnColumn = OwnColumn::text("value", 1024, false);
    pub const RAW_LINE: OwnColumn = OwnColumn::text("raw_line", 4096, false);
    pub const CONTRACT_VERSION: OwnColumn = super::ledger_table::CONTRACT_VERSION;
    pub const REJECTED_AT: OwnColumn = OwnColumn::time("rejected_at", true);
    pub const COLUMNS: [OwnColumn; 12] = [
        BUCKET,
        KEY,
        VERSION,
        BATCH_ID,
        LINE,
        COLUMN_NAME,
        RULE,
        REASON,
        VALUE,
        RAW_LINE,
        CONTRACT_VERSION,
        REJECTED_AT,
    ];
}

/// Reconcile runs, `wau_ingest_reconciles`: one row per run, written when it ends, so
/// `status` in another process can say when the last one ran and how it ended.
pub mod reconciles_table {
    use super::OwnColumn;
    pub const STARTED_AT: OwnColumn = OwnColumn::time("started_at", true);
    pub const FINISHED_AT: OwnColumn = OwnColumn::time("finished_at", true);
    /// `ok`, `incomplete`, `failed` or `listed` (see `crate::reconcile::ReconcileOutcome`).
    pub const OUTCOME: OwnColumn = OwnColumn::text("outcome", 16, true);
    /// Objects the listing held that the ledger lacked.
    pub const OBJECTS_MISSING: OwnColumn = OwnColumn::int("objects_missing", true);
    pub const FILES_LOADED: OwnColumn = OwnColumn::int("files_loaded", true);
    pub const FILES_REJECTED: OwnColumn = OwnColumn::int("files_rejected", true);
    pub const FILES_TO_RETRY: OwnColumn = OwnColumn::int("files_to_retry", true);
    pub const ERROR: OwnColumn = OwnColumn::text("error", 1024, false);
    pub const COLUMNS: [OwnColumn; 8] =
        [STARTED_AT, FINISHED_AT, OUTCOME, OBJECTS_MISSING, FILES_LOADED, FILES_REJECTED, FILES_TO_RETRY, ERROR];
}

/// Provenance columns staging rows carry after the contract columns.
pub const STAGING_PROVENANCE: [&str; 4] = ["_file_key", "_file_version", "_line", "_batch_id"];

/// The provenance columns of the target and staging, after the contract columns: where each row
/// came from (and, in the target, when the merge published it).
pub mod provenance {
    use super::{ledger_table, OwnColumn};
    pub const FILE_KEY: OwnColumn = OwnColumn::text("_file_key", ledger_table::KEY.width(), true);
    pub const FILE_VERSION: OwnColumn = OwnColumn::text("_file_version", ledger_table::VERSION.width(), true);
    pub const LINE: OwnColumn = OwnColumn::int("_line", true);
    pub const LOADED_AT: OwnColumn = OwnColumn::time("_loaded_at", true);
    pub const BATCH_ID: OwnColumn = OwnColumn::int("_batch_id", true);
    pub const TARGET: [OwnColumn; 4] = [FILE_KEY, FILE_VERSION, LINE, LOADED_AT];
    pub const STAGING: [OwnColumn; 4] = [FILE_KEY, FILE_VERSION, LINE, BATCH_ID];
}

/// The merge history, `wau_ingest_merges`: one row per merge that published something.
pub mod merges_table {
    use super::OwnColumn;
    pub const MERGED_AT: OwnColumn = OwnColumn::time("merged_at", true);
    pub const BATCH_WATERMARK: OwnColumn = OwnColumn::int("batch_watermark", true);
    pub const FILES: OwnColumn = OwnColumn::int("files", true);
    pub const ROWS_DELETED: OwnColumn = OwnColumn::int("rows_deleted", false);
    pub const ROWS_INSERTED: OwnColumn = OwnColumn::int("rows_inserted", false);
    pub const COLUMNS: [OwnColumn; 5] = [MERGED_AT, BATCH_WATERMARK, FILES, ROWS_DELETED, ROWS_INSERTED];
}

/// One column of a table as the product wants it: its name, its type as this engine's DDL
/// spells it, and whether it is NOT NULL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WantedColumn {
    pub name: String,
    pub ty: String,
    pub not_null: bool,
}

impl WantedColumn {
    /// `name TYPE [NOT NULL]`, as CREATE TABLE and ADD COLUMN write it.
    pub fn ddl(&self) -> String {
        format!("{} {}{}", self.name, self.ty, if self.not_null { " NOT NULL" } else { "" })
    }
}

/// One table as the product creates it ([`Sql::tables`]): the single source of its CREATE TABLE
/// and of what `migrate --plan` (`super::evolve`) compares the warehouse's table with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    pub name: String,
    pub columns: Vec<WantedColumn>,
    /// Table constraints after the columns (SQLite's keyed target: its PRIMARY KEY).
    pub constraints: Vec<String>,
    /// What follows the closing parenthesis (the physical design, SQLite's `WITHOUT ROWID`).
    pub options: String,
}

impl TableDef {
    pub fn create(&self) -> String {
        let mut lines: Vec<String> = self.columns.iter().map(WantedColumn::ddl).collect();
        lines.extend(self.constraints.iter().cloned());
        format!("CREATE TABLE IF NOT EXISTS {} (\n  {}\n){}", self.name, lines.join(",\n  "), self.options)
    }
}

/// A table's column as the engine's catalog describes it ([`Sql::table_columns`] reads it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ActualColumn {
    pub name: String,
    /// The type as this engine's DDL spells it (`VARCHAR(64)`, `BIGINT`, `TEXT` …).
    pub ty: String,
    pub not_null: bool,
}

/// A key's winner among its candidate rows (staging `s` joined to its ledger row `f`): the
/// newest sequencer, then the latest batch, then the last line, then the file key. Both merge
/// forms (the shared `ROW_NUMBER()` text and SQLite's anti-join) are built from it.
const WINNER_ORDER: [&str; 4] = ["f.sequencer", "f.batch_id", "s._line", "s._file_key"];

/// The product's tables whose physical design is chosen (see [`Sql::physical_design`]); the
/// merge history and the lock table keep Redshift's defaults (`DISTSTYLE AUTO`, no sort key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableRole {
    Target,
    Staging,
    Ledger,
    Rejects,
}

/// The column of SQLite's key set that says whether the target held the key before the merge
/// ([`Sql::merge_sqlite`]); underscored like the provenance columns, so no contract column is it.
const HELD: &str = "_held";

/// What one statement of [`Sql::merge`] does, so callers find a step by its role, not its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeStepKind {
    /// `LOCK` of [`Tables::lock`] (not on SQLite).
    Lock,
    /// The touched dedupe keys into the temporary key table.
    CollectKeys,
    /// An index on the key table (engines with indexes).
    IndexKeys,
    /// Every touched key out of the target (its row count: rows deleted).
    DeleteTarget,
    /// Each touched key's winner into the target (its row count: rows inserted).
    InsertWinners,
    /// Rows of superseded and replaced loads out of staging.
    DropSuperseded,
    /// One row of merge history.
    RecordMerge,
    /// The ledger rows stamped merged.
    StampMerged,
    /// The key table dropped.
    DropKeys,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeStep {
    pub kind: MergeStepKind,
    pub sql: String,
}

/// The two forms of [`Sql::recorded_page`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedPage {
    /// From `:key` on.
    AtKey,
    /// After (`:key`, `:sequencer`).
    After,
}

pub struct Sql<'a> {
    pub dialect: Dialect,
    pub contract: &'a Contract,
    pub t: &'a Tables,
}

impl<'a> Sql<'a> {
    pub fn new(dialect: Dialect, contract: &'a Contract, t: &'a Tables) -> Self {
        Sql { dialect, contract, t }
    }

    fn column_type(&self, c: &Column) -> String {
        match (self.dialect, c.ty) {
            (Dialect::Sqlite, ColumnType::Integer) => "INTEGER".into(),
            (Dialect::Sqlite, ColumnType::Float) => "REAL".into(),
            (Dialect::Sqlite, _) => "TEXT".into(),
            // `max_length` is bytes, as Redshift counts VARCHAR lengths; PostgreSQL counts
            // characters, of which n bytes never hold more than n. Validation checks the bytes.
            (Dialect::Redshift, ColumnType::String) => format!("VARCHAR({})", c.max_bytes()),
            (_, ColumnType::String) => match c.max_length {
                Some(n) => format!("VARCHAR({n})"),
                None => "TEXT".into(),
            },
            (_, ColumnType::Integer) => "BIGINT".into(),
            (_, ColumnType::Float) => "DOUBLE PRECISION".into(),
            (_, ColumnType::Boolean) => "BOOLEAN".into(),
            (_, ColumnType::Timestamp) => "TIMESTAMP".into(),
            (_, ColumnType::Date) => "DATE".into(),
        }
    }

    fn text(&self, len: usize) -> String {
        match self.dialect {
            Dialect::Sqlite => "TEXT".into(),
            Dialect::Postgres => "TEXT".into(),
            Dialect::Redshift => format!("VARCHAR({len})"),
        }
    }

    fn ts(&self) -> &'static str {
        if self.dialect == Dialect::Sqlite {
            "TEXT"
        } else {
            "TIMESTAMP"
        }
    }

    fn int(&self) -> &'static str {
        if self.dialect == Dialect::Sqlite {
            "INTEGER"
        } else {
            "BIGINT"
        }
    }

    /// The engine's type of one column of the product's own tables.
    pub fn own_type(&self, ty: OwnType) -> String {
        match ty {
            OwnType::Text(n) => self.text(n),
            OwnType::Int => self.int().into(),
            OwnType::Time => self.ts().into(),
        }
    }

    /// `name TYPE [NOT NULL]` for each of `cols` (`with_not_null` false: every column nullable,
    /// as in a temporary table of rows still to be checked).
    pub fn own_columns_ddl(&self, cols: &[OwnColumn], with_not_null: bool) -> Vec<String> {
        cols.iter()
            .map(|c| {
                let nn = if with_not_null && c.not_null { " NOT NULL" } else { "" };
                format!("{} {}{nn}", c.name, self.own_type(c.ty))
            })
            .collect()
    }

    fn contract_columns(&self) -> Vec<WantedColumn> {
        self.contract
            .columns
            .iter()
            .map(|c| WantedColumn { name: c.name.clone(), ty: self.column_type(c), not_null: c.required })
            .collect()
    }

    fn own_wanted(&self, cols: &[OwnColumn]) -> Vec<WantedColumn> {
        cols.iter()
            .map(|c| WantedColumn { name: c.name.into(), ty: self.own_type(c.ty), not_null: c.not_null })
            .collect()
    }

    /// Every table the product keeps, as it creates them: the target, staging, the ledger, the
    /// rejects, the reconcile runs and the merge history (not the lock table, one column that
    /// never changes). [`Sql::migrate`] creates them; `migrate --plan` compares them.
    pub fn tables(&self) -> Vec<TableDef> {
        let t = self.t;
        let mut target = self.contract_columns();
        target.extend(self.own_wanted(&provenance::TARGET));
        // The target holds each dedupe key once. SQLite enforces it and stores the table in key
        // order (the key is the table: no second index to write); elsewhere an index serves.
        let (constraints, target_options) = match self.dialect {
            Dialect::Sqlite => {
                (vec![format!("PRIMARY KEY ({})", self.contract.dedupe_key.join(", "))], " WITHOUT ROWID".to_string())
            }
            _ => (Vec::new(), self.physical_design(TableRole::Target)),
        };
        let mut staging = self.contract_columns();
        staging.extend(self.own_wanted(&provenance::STAGING));
        let own = |name: &str, cols: &[OwnColumn], options: String| TableDef {
            name: name.to_string(),
            columns: self.own_wanted(cols),
            constraints: Vec::new(),
            options,
        };
        vec![
            TableDef { name: t.target.clone(), columns: target, constraints, options: target_options },
            TableDef {
                name: t.staging.clone(),
                columns: staging,
                constraints: Vec::new(),
                options: self.physical_design(TableRole::Staging),
            },
            own(&t.files, &ledger_table::COLUMNS, self.physical_design(TableRole::Ledger)),
            own(&t.rejects, &rejects_table::COLUMNS, self.physical_design(TableRole::Rejects)),
            // A few rows a day: no physical design of its own.
            own(&t.reconciles, &reconciles_table::COLUMNS, String::new()),
            own(&t.merges, &merges_table::COLUMNS, String::new()),
        ]
    }

    /// The columns of `tables` as the engine's catalog has them, one query for all, one row per
    /// column in each table's order: table name, column name, data type, character maximum
    /// length (NULL but for VARCHAR), is_nullable (`YES`/`NO`). A table without rows does not
    /// exist. Redshift: `SVV_COLUMNS`, which covers local tables and gives VARCHAR lengths in
    /// bytes (docs/design.md, "Schema evolution").
    pub fn table_columns(&self, tables: &[&str]) -> String {
        match self.dialect {
            Dialect::Sqlite => tables
                .iter()
                .map(|t| {
                    let n = format!("'{}'", sql_literal_body(&t.to_lowercase()));
                    format!(
                        "SELECT {n}, name, type, NULL, CASE WHEN \"notnull\" = 0 THEN 'YES' ELSE 'NO' END FROM pragma_table_info({n})"
                    )
                })
                .collect::<Vec<_>>()
                .join("\nUNION ALL\n"),
            Dialect::Redshift | Dialect::Postgres => {
                // A schema-qualified name is looked up in its schema, a bare one in the current one.
                let which: Vec<String> = tables
                    .iter()
                    .map(|t| {
                        let t = t.to_lowercase();
                        let (schema, name) = match t.rsplit_once('.') {
                            Some((s, n)) => (format!("'{}'", sql_literal_body(s)), n.to_string()),
                            None => ("current_schema()".to_string(), t.clone()),
                        };
                        format!("(table_schema = {schema} AND table_name = '{}')", sql_literal_body(&name))
                    })
                    .collect();
                format!(
                    "SELECT table_name, column_name, data_type, character_maximum_length, is_nullable FROM {} WHERE {} ORDER BY table_name, ordinal_position",
                    if self.dialect == Dialect::Redshift { "svv_columns" } else { "information_schema.columns" },
                    which.join(" OR ")
                )
            }
        }
    }

    /// One row of [`Sql::table_columns`] (after its table name) as an [`ActualColumn`]: the
    /// catalog's type named as this engine's DDL names it, so it compares with [`WantedColumn::ty`].
    pub fn actual_column(&self, row: &[Option<String>]) -> Option<ActualColumn> {
        let cell = |i: usize| row.get(i).cloned().flatten();
        let name = cell(0)?;
        let data_type = cell(1).unwrap_or_default();
        let ty = match self.dialect {
            Dialect::Sqlite => data_type.to_uppercase(),
            _ => match (data_type.to_lowercase().as_str(), cell(2)) {
                ("character varying", Some(n)) => format!("VARCHAR({n})"),
                ("character varying", None) => "VARCHAR".into(),
                ("text", _) => "TEXT".into(),
                ("timestamp without time zone", _) => "TIMESTAMP".into(),
                (other, _) => other.to_uppercase(),
            },
        };
        let not_null = cell(3).is_some_and(|n| n.eq_ignore_ascii_case("NO"));
        Some(ActualColumn { name: name.to_lowercase(), ty, not_null })
    }

    /// Adds one column: one column per statement, as Redshift takes it.
    pub fn add_column(&self, table: &str, col: &WantedColumn) -> String {
        format!("ALTER TABLE {table} ADD COLUMN {}", col.ddl())
    }

    /// The column rows of the target and staging are distributed by on Redshift: the dedupe
    /// key's first column that is not the customer (a handful of customers would put all rows on
    /// a handful of slices); `None` when the key is the customer alone.
    pub fn distribution_column(&self) -> Option<&str> {
        self.contract.dedupe_key.iter().map(String::as_str).find(|c| *c != self.contract.customer_column)
    }

    /// Where a table's rows live on Redshift and in what order (its table attributes; nothing on
    /// other engines). Each is chosen for the predicates the product runs on the table; the
    /// reasoning is in docs/design.md, "Physical design on Redshift".
    pub fn physical_design(&self, table: TableRole) -> String {
        if self.dialect != Dialect::Redshift {
            return String::new();
        }
        let dedupe_key = self.contract.dedupe_key.join(", ");
        let (key, bucket, version) = (ledger_table::KEY.name, ledger_table::BUCKET.name, ledger_table::VERSION.name);
        match table {
            // Merge: the target is joined to the touched keys on the dedupe key (the delete), and
            // staging to them on the same key (the winners): both distributed and sorted by it.
            TableRole::Target | TableRole::Staging => match self.distribution_column() {
                Some(col) => format!(" DISTSTYLE KEY DISTKEY ({col}) COMPOUND SORTKEY ({dedupe_key})"),
                None => format!(" DISTSTYLE AUTO COMPOUND SORTKEY ({dedupe_key})"),
            },
            // Admission looks one file up by (bucket, key, version) or (bucket, key, sequencer);
            // the commit joins the ledger to itself and to the batch's rows on (bucket, key).
            TableRole::Ledger => {
                format!(" DISTSTYLE KEY DISTKEY ({key}) COMPOUND SORTKEY ({bucket}, {key}, {version})")
            }
            // Every commit removes the reject rows of its own batch that lost their file (by
            // batch id, joined to the ledger on the file).
            TableRole::Rejects => {
                format!(" DISTSTYLE KEY DISTKEY ({key}) COMPOUND SORTKEY ({})", rejects_table::BATCH_ID.name)
            }
        }
    }

    /// Idempotent DDL: tables, indexes (where the engine has them) and the WAU view.
    pub fn migrate(&self) -> Vec<String> {
        let t = self.t;
        let mut out: Vec<String> = self.tables().iter().map(TableDef::create).collect();
        if self.dialect != Dialect::Sqlite {
            out.push(self.lock_table());
        }
        if self.dialect != Dialect::Redshift {
            let key = self.contract.dedupe_key.join(", ");
            if self.dialect != Dialect::Sqlite {
                out.push(format!("CREATE INDEX IF NOT EXISTS {0}_key ON {0} ({key})", t.target));
            }
            out.push(format!("CREATE INDEX IF NOT EXISTS {0}_key ON {0} ({key})", t.staging));
            // Rows of one load are found by batch (an integer: a small index that grows at its end).
            out.push(format!("CREATE INDEX IF NOT EXISTS {0}_batch ON {0} (_batch_id)", t.staging));
            out.push(format!("CREATE INDEX IF NOT EXISTS {0}_version ON {0} (bucket, key, version)", t.files));
            out.push(format!("CREATE INDEX IF NOT EXISTS {0}_batch ON {0} (key, version, batch_id)", t.files));
            out.push(format!("CREATE INDEX IF NOT EXISTS {0}_unmerged ON {0} (merged_at)", t.files));
            out.push(format!("CREATE INDEX IF NOT EXISTS {0}_file ON {0} (bucket, key, version)", t.rejects));
        }
        out.push(self.wau_view());
        out.push(self.freshness_view());
        out
    }

    /// Per customer the ledger names, its newest loaded file: the latest event time
    /// (`last_event_at`, what `wau_ingest_customer_last_file_timestamp_seconds` exports), the
    /// latest load (`last_loaded_at`) and how many loaded files it has. Loaded files only (a
    /// rejected file is not data arriving); files of no known customer are left out.
    fn freshness_view(&self) -> String {
        let create = match self.dialect {
            Dialect::Sqlite => "CREATE VIEW IF NOT EXISTS",
            Dialect::Postgres | Dialect::Redshift => "CREATE OR REPLACE VIEW",
        };
        let (cust, event_at, loaded_at) =
            (ledger_table::CUSTOMER.name, ledger_table::EVENT_AT.name, ledger_table::LOADED_AT.name);
        format!(
            "{create} {} AS\n\
             SELECT {cust} AS customer, MAX({event_at}) AS last_event_at, MAX({loaded_at}) AS last_loaded_at, COUNT(*) AS files_loaded\n\
             FROM {} WHERE status = '{LOADED}' AND {cust} IS NOT NULL\n\
             GROUP BY {cust}",
            self.t.freshness_view, self.t.files
        )
    }

    /// Every row of the freshness view, by customer: customer, last_event_at, last_loaded_at,
    /// files_loaded (what the customer gauges are refreshed from).
    pub fn customer_freshness(&self) -> String {
        format!(
            "SELECT customer, last_event_at, last_loaded_at, files_loaded FROM {} ORDER BY customer",
            self.t.freshness_view
        )
    }

    fn wau_view(&self) -> String {
        let (cust, time, user) =
            (&self.contract.customer_column, &self.contract.event_time_column, &self.contract.user_column);
        let (create, iso_week, week_start) = match self.dialect {
            // 'weekday 0' moves to the coming Sunday: -6 days is that ISO week's Monday, -3 its Thursday,
            // whose year and day-of-year give the ISO year and week (works on any SQLite 3).
            Dialect::Sqlite => (
                "CREATE VIEW IF NOT EXISTS",
                format!(
                    "strftime('%Y', {time}, 'weekday 0', '-3 days') || '-W' || printf('%02d', (CAST(strftime('%j', {time}, 'weekday 0', '-3 days') AS INTEGER) - 1) / 7 + 1)"
                ),
                format!("date({time}, 'weekday 0', '-6 days')"),
            ),
            Dialect::Postgres | Dialect::Redshift => (
                "CREATE OR REPLACE VIEW",
                format!("TO_CHAR({time}, 'IYYY-\"W\"IW')"),
                format!("CAST(DATE_TRUNC('week', {time}) AS DATE)"),
            ),
        };
        format!(
            "{create} {} AS\nSELECT {cust} AS customer, {iso_week} AS iso_week, {week_start} AS week_start, COUNT(DISTINCT {user}) AS active_users\nFROM {}\nGROUP BY {cust}, {iso_week}, {week_start}",
            self.t.wau_view, self.t.target
        )
    }

    /// Staging insert of one row (the SQLite and PostgreSQL-in-tests bulk route; Redshift COPYs).
    pub fn insert_staging(&self) -> String {
        let mut cols: Vec<&str> = self.contract.columns.iter().map(|c| c.name.as_str()).collect();
        cols.extend(STAGING_PROVENANCE);
        let params: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        format!("INSERT INTO {} ({}) VALUES ({})", self.t.staging, cols.join(", "), params.join(", "))
    }

    /// The newest version of a (bucket, key, version) in the ledger, if any load of it counts.
    pub fn lookup_version(&self) -> String {
        format!(
            "SELECT status, batch_id FROM {} WHERE bucket = :bucket AND key = :key AND version = :version AND status <> '{REPLACED}' ORDER BY batch_id DESC LIMIT 1",
            self.t.files
        )
    }

    /// A version recorded with exactly this key, sequencer and size (see `Warehouse::lookup_stamp`).
    pub fn lookup_stamp(&self) -> String {
        format!(
            "SELECT status, batch_id FROM {} WHERE bucket = :bucket AND key = :key AND sequencer = :sequencer AND size_bytes = :size_bytes AND status <> '{REPLACED}' ORDER BY batch_id DESC LIMIT 1",
            self.t.files
        )
    }

    /// Is a newer version of this key already recorded? (`ledger::is_newer`, in SQL.)
    pub fn newer_version_exists(&self) -> String {
        format!(
            "SELECT COUNT(*) FROM {} WHERE bucket = :bucket AND key = :key AND version <> :version AND status IN {} AND sequencer > :sequencer",
            self.t.files,
            counts_for_order_sql()
        )
    }

    /// The ledger row of a file, guarded so a redelivered file can never be recorded twice.
    pub fn insert_ledger(&self) -> String {
        let names = column_names(&ledger_table::COLUMNS);
        let params: Vec<String> = names.iter().map(|n| format!(":{n}")).collect();
        format!(
            "INSERT INTO {0} ({1})\n\
             SELECT {2}\n\
             WHERE NOT EXISTS (SELECT 1 FROM {0} WHERE bucket = :bucket AND key = :key AND version = :version AND status <> '{REPLACED}')",
            self.t.files,
            names.join(", "),
            params.join(", ")
        )
    }

    /// Marks older loaded versions of the key superseded; the next merge recomputes their keys.
    pub fn supersede_older(&self) -> String {
        format!(
            "UPDATE {} SET status = '{SUPERSEDED}', merged_at = NULL WHERE bucket = :bucket AND key = :key AND version <> :version AND status = '{LOADED}' AND sequencer <= :sequencer",
            self.t.files
        )
    }

    /// `replay --force`: the earlier load of the same version is replaced; the merge recomputes its keys.
    pub fn replace_version(&self) -> String {
        format!(
            "UPDATE {} SET status = '{REPLACED}', merged_at = NULL WHERE bucket = :bucket AND key = :key AND version = :version AND status IN ('{LOADED}', '{REJECTED}', '{SUPERSEDED}')",
            self.t.files
        )
    }

    /// Bulk load of one micro-batch's staging parts (Redshift; the emulator reads the same
    /// text): every part named by the manifest, gzip CSV as [`super::stage`] writes it.
    pub fn copy_staging(&self, manifest_url: &str, iam_role: &str) -> String {
        let mut cols: Vec<&str> = self.contract.columns.iter().map(|c| c.name.as_str()).collect();
        cols.extend(STAGING_PROVENANCE);
        Self::copy_manifest(&self.t.staging, &cols, manifest_url, iam_role)
    }

    /// Every COPY the product runs (staging rows, spilled rejects, ledger rows): gzip CSV parts
    /// named by a manifest, `IAM_ROLE default` when no role is given. `NULL AS ''` says what
    /// NULL is (an empty unquoted field, [`super::stage::csv_field`]) and nothing else: COPY's
    /// default null string `\N` would turn a value of exactly `\N` into NULL. Timestamps carry
    /// at most 6 fractional digits (`contract::MAX_FRACTION_DIGITS`), all COPY takes.
    pub fn copy_manifest(table: &str, columns: &[&str], manifest_url: &str, iam_role: &str) -> String {
        let role =
            if iam_role.is_empty() { "default".to_string() } else { format!("'{}'", sql_literal_body(iam_role)) };
        format!(
            "COPY {table} ({}) FROM '{}' IAM_ROLE {role} FORMAT AS CSV GZIP MANIFEST TIMEFORMAT 'YYYY-MM-DD HH:MI:SS' DATEFORMAT 'YYYY-MM-DD' NULL AS '' MAXERROR 0 COMPUPDATE OFF STATUPDATE OFF",
            columns.join(", "),
            sql_literal_body(manifest_url),
        )
    }

    pub fn insert_reject(&self) -> String {
        let names = column_names(&rejects_table::COLUMNS);
        let params: Vec<String> = names.iter().map(|n| format!(":{n}")).collect();
        format!("INSERT INTO {} ({})\nVALUES ({})", self.t.rejects, names.join(", "), params.join(", "))
    }

    pub fn next_batch_id(&self) -> String {
        format!("SELECT COALESCE(MAX(batch_id), 0) + 1 FROM {}", self.t.files)
    }

    fn staging_joins_ledger(&self, s: &str, f: &str) -> String {
        format!("{f}.key = {s}._file_key AND {f}.version = {s}._file_version AND {f}.batch_id = {s}._batch_id")
    }

    fn key_match(&self, a: &str, b: &str) -> String {
        self.contract.dedupe_key.iter().map(|k| format!("{a}.{k} = {b}.{k}")).collect::<Vec<_>>().join(" AND ")
    }

    /// Event times of the files the next merge publishes (for the event→merge lag).
    pub fn unmerged_event_times(&self) -> String {
        format!(
            "SELECT event_at FROM {} WHERE merged_at IS NULL AND status = '{LOADED}' AND event_at IS NOT NULL",
            self.t.files
        )
    }

    /// The temporary table of keys one merge recomputes.
    pub const MERGE_KEYS: &'static str = "wau_merge_keys";

    /// The merge, in order, as one transaction (one session: the temp table lives in it).
    /// Touched keys are the dedupe keys of staging rows whose ledger row is not merged yet
    /// (new loads and newly superseded or replaced loads), collected once, driven from the
    /// ledger. Each is deleted from the target, then its winner among current-version rows is
    /// inserted: newest sequencer, then latest batch, then last line. Superseded rows then
    /// leave staging and the ledger rows are stamped merged. Running it twice changes nothing
    /// the second time.
    pub fn merge(&self) -> Vec<MergeStep> {
        let t = self.t;
        let k = Self::MERGE_KEYS;
        let cols: Vec<&str> = self.contract.columns.iter().map(|c| c.name.as_str()).collect();
        let key_cols = self.contract.dedupe_key.iter().map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ");
        let s_cols: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
        let lock = match self.dialect {
            Dialect::Sqlite => String::new(),
            _ => self.lock_writers(),
        };
        [
            (MergeStepKind::Lock, lock),
            (MergeStepKind::CollectKeys, format!(
                "CREATE TEMP TABLE {k} AS SELECT DISTINCT {key_cols} FROM {files} f JOIN {st} s ON {join} WHERE f.merged_at IS NULL",
                files = t.files,
                st = t.staging,
                join = self.staging_joins_ledger("s", "f"),
            )),
            // Engines with indexes probe the key set by index (Redshift joins by hash and has none).
            (MergeStepKind::IndexKeys, match self.dialect {
                Dialect::Redshift => String::new(),
                _ => format!("CREATE INDEX {k}_key ON {k} ({})", self.contract.dedupe_key.join(", ")),
            }),
            // Redshift and PostgreSQL join the target to the touched keys on the whole dedupe
            // key, so the delete's cost follows the keys, not the target: Redshift joins on the
            // target's distribution and sort key, the emulator probes the sort key's index from
            // each key. SQLite's DELETE cannot join: the `IN` on the key's first column lets it
            // visit only the touched customers' rows of its keyed target; EXISTS decides.
            (MergeStepKind::DeleteTarget, match self.dialect {
                Dialect::Sqlite => format!(
                    "DELETE FROM {target} WHERE {first} IN (SELECT {first} FROM {k}) AND EXISTS (SELECT 1 FROM {k} k WHERE {km})",
                    target = t.target,
                    first = self.contract.dedupe_key[0],
                    km = self.key_match("k", &t.target)
                ),
                _ => format!("DELETE FROM {target} USING {k} k WHERE {km}", target = t.target, km = self.key_match("k", &t.target)),
            }),
            // Written as CROSS JOIN + WHERE (plain inner-join semantics everywhere) because
            // SQLite then walks from the touched keys instead of through all of staging.
            (MergeStepKind::InsertWinners, format!(
                "INSERT INTO {target} ({cols}, _file_key, _file_version, _line, _loaded_at)\n\
                 SELECT {cols}, _file_key, _file_version, _line, :merged_at FROM (\n\
                 \x20 SELECT {s_cols}, s._file_key, s._file_version, s._line,\n\
                 \x20   ROW_NUMBER() OVER (PARTITION BY {key_cols} ORDER BY {newest_first}) AS rn\n\
                 \x20 FROM {k} k CROSS JOIN {st} s CROSS JOIN {files} f\n\
                 \x20 WHERE {km} AND {join} AND f.status = '{LOADED}'\n\
                 ) w WHERE w.rn = 1",
                target = t.target,
                cols = cols.join(", "),
                s_cols = s_cols.join(", "),
                st = t.staging,
                files = t.files,
                km = self.key_match("k", "s"),
                join = self.staging_joins_ledger("s", "f"),
                newest_first = WINNER_ORDER.iter().map(|c| format!("{c} DESC")).collect::<Vec<_>>().join(", "),
            )),
            // Only the batches that hold superseded or replaced loads are visited.
            (MergeStepKind::DropSuperseded, format!(
                "DELETE FROM {st} WHERE _batch_id IN (SELECT batch_id FROM {files} WHERE merged_at IS NULL AND status IN ('{SUPERSEDED}', '{REPLACED}'))\n\
                 \x20 AND EXISTS (SELECT 1 FROM {files} f WHERE {join} AND f.merged_at IS NULL AND f.status IN ('{SUPERSEDED}', '{REPLACED}'))",
                st = t.staging,
                files = t.files,
                join = self.staging_joins_ledger(&t.staging, "f"),
            )),
            (MergeStepKind::RecordMerge, format!(
                "INSERT INTO {merges} (merged_at, batch_watermark, files, rows_deleted, rows_inserted)\n\
                 SELECT :merged_at, COALESCE(MAX(batch_id), 0), COUNT(*), :rows_deleted, :rows_inserted FROM {files} WHERE merged_at IS NULL",
                merges = t.merges,
                files = t.files
            )),
            (MergeStepKind::StampMerged, format!("UPDATE {} SET merged_at = :merged_at WHERE merged_at IS NULL", t.files)),
            (MergeStepKind::DropKeys, format!("DROP TABLE {k}")),
        ]
        .into_iter()
        .filter(|(_, sql)| !sql.is_empty())
        .map(|(kind, sql)| MergeStep { kind, sql })
        .collect()
    }

    /// The merge as SQLite runs it: [`Sql::merge`]'s semantics (DESIGN.md: each touched key's
    /// winner among current-version rows, nothing else changes), in statements whose cost
    /// follows the change, not the size of the target or of staging:
    /// - The key set is a keyed table (`WITHOUT ROWID`, the dedupe key its primary key) filled by
    ///   `INSERT OR IGNORE`: one B-tree, not a `DISTINCT` sort, a table and an index. Each key
    ///   records whether the target holds it (`_held`), one probe of the target's primary key.
    /// - The delete looks each held key up in the target's primary key (a row-value `IN`); the
    ///   shared text's `customer IN (…)` walks every target row of a touched customer, the whole
    ///   target when one customer holds it. A key the target does not hold has nothing to delete.
    /// - The winners come in two statements ([`Sql::insert_new_winners_sqlite`],
    ///   [`Sql::insert_held_winners_sqlite`]): the rows of the loads being merged that win their
    ///   key, read batch by batch (staging's batch index walks them in the order they were
    ///   written); then, for the held keys that got no winner so, the winner among the rest.
    ///   Only a held key can need the second: a row of a load merged before, still current, had
    ///   its key in the target since that merge (every merge leaves each current row's key with a
    ///   winner), so a key the target does not hold has no candidate but the rows being merged.
    ///
    /// The superseded rows' removal, the history row and the ledger stamp are the shared text.
    /// `tests/merge_differential.rs` checks the whole against the shared text and a model.
    pub fn merge_sqlite(&self) -> Vec<MergeStep> {
        let t = self.t;
        let k = Self::MERGE_KEYS;
        let key = self.contract.dedupe_key.join(", ");
        let key_ddl: Vec<String> = self
            .contract
            .dedupe_key
            .iter()
            .map(|name| {
                let col = self.contract.columns.iter().find(|c| &c.name == name).expect("the dedupe key is columns");
                format!("{name} {} NOT NULL", self.column_type(col))
            })
            .collect();
        let s_key = self.contract.dedupe_key.iter().map(|c| format!("s.{c}")).collect::<Vec<_>>().join(", ");
        let own = [
            MergeStep {
                kind: MergeStepKind::CollectKeys,
                sql: format!(
                    "CREATE TEMP TABLE {k} ({}, {HELD} INTEGER NOT NULL, PRIMARY KEY ({key})) WITHOUT ROWID",
                    key_ddl.join(", ")
                ),
            },
            MergeStep {
                kind: MergeStepKind::CollectKeys,
                sql: format!(
                    "INSERT OR IGNORE INTO {k} ({key}, {HELD})
                     SELECT {s_key}, EXISTS (SELECT 1 FROM {target} t WHERE {held})
                     FROM {files} f CROSS JOIN {st} s WHERE f.merged_at IS NULL AND {join}",
                    target = t.target,
                    held = self.key_match("t", "s"),
                    files = t.files,
                    st = t.staging,
                    join = self.staging_joins_ledger("s", "f"),
                ),
            },
            MergeStep {
                kind: MergeStepKind::DeleteTarget,
                sql: format!("DELETE FROM {} WHERE ({key}) IN (SELECT {key} FROM {k} WHERE {HELD} = 1)", t.target),
            },
            MergeStep { kind: MergeStepKind::InsertWinners, sql: self.insert_new_winners_sqlite() },
            MergeStep { kind: MergeStepKind::InsertWinners, sql: self.insert_held_winners_sqlite() },
        ];
        let shared = self.merge().into_iter().filter(|s| {
            !matches!(
                s.kind,
                MergeStepKind::CollectKeys
                    | MergeStepKind::IndexKeys
                    | MergeStepKind::DeleteTarget
                    | MergeStepKind::InsertWinners
            )
        });
        own.into_iter().chain(shared).collect()
    }

    /// SQLite's winner test for candidate `s` (staging) of ledger row `f`, as an anti-join
    /// instead of `ROW_NUMBER()` over every candidate: no current-version row of its key orders
    /// after it by (sequencer, batch, line, file key), the order of the shared text, compared as
    /// one row value (SQLite ≥ 3.15; every column of it is NOT NULL). The version closes the
    /// order so that exactly one row per key passes even where the shared order ties (two
    /// versions of one key with one sequencer in one batch), where ROW_NUMBER() picks either.
    /// Each probe is a walk of the key's few rows in the staging key index; a key with one
    /// candidate is settled in the index (its only entry is the row itself, by rowid).
    fn unbeaten_sqlite(&self) -> String {
        let t = self.t;
        format!(
            "NOT EXISTS (SELECT 1 FROM {st} s2 CROSS JOIN {files} f2\n\
             \x20   WHERE {km2} AND s2.rowid <> s.rowid AND {join2} AND f2.status = '{LOADED}'\n\
             \x20   AND ({theirs}) > ({ours}))",
            st = t.staging,
            files = t.files,
            km2 = self.key_match("s2", "s"),
            join2 = self.staging_joins_ledger("s2", "f2"),
            // The shared order, then the file version: two loaded versions of one file key with
            // one sequencer in one batch would otherwise both win (the keyed target refuses it).
            ours = WINNER_ORDER.iter().copied().chain(["s._file_version"]).collect::<Vec<_>>().join(", "),
            theirs = WINNER_ORDER
                .iter()
                .copied()
                .chain(["s._file_version"])
                .map(|c| c.replacen("s.", "s2.", 1).replacen("f.", "f2.", 1))
                .collect::<Vec<_>>()
                .join(", "),
        )
    }

    /// `INSERT INTO target (…) SELECT s.…, :merged_at`, the head of both winner statements.
    fn insert_target_from_staging(&self) -> String {
        let cols: Vec<&str> = self.contract.columns.iter().map(|c| c.name.as_str()).collect();
        let s_cols: Vec<String> = cols.iter().map(|c| format!("s.{c}")).collect();
        format!(
            "INSERT INTO {} ({}, _file_key, _file_version, _line, _loaded_at)\n\
             SELECT {}, s._file_key, s._file_version, s._line, :merged_at",
            self.t.target,
            cols.join(", "),
            s_cols.join(", ")
        )
    }

    /// The first of SQLite's winner statements: every row of a load being merged (a loaded
    /// version not stamped merged) that wins its key ([`Sql::unbeaten_sqlite`]). Driven from
    /// the ledger's unmerged rows through staging's batch index, so the rows are read in the
    /// order they were written, not looked up key by key.
    pub fn insert_new_winners_sqlite(&self) -> String {
        let t = self.t;
        format!(
            "{head}\n\
             FROM {files} f CROSS JOIN {st} s\n\
             WHERE f.merged_at IS NULL AND f.status = '{LOADED}' AND {join}\n\
             \x20 AND {unbeaten}",
            head = self.insert_target_from_staging(),
            files = t.files,
            st = t.staging,
            join = self.staging_joins_ledger("s", "f"),
            unbeaten = self.unbeaten_sqlite(),
        )
    }

    /// The second: for each held key (the target held it before this merge) that the first left
    /// without a row, its winner among every current-version row (a row of an earlier load, when
    /// the loads being merged superseded, replaced or lost to it). In key order, as the target
    /// stores them.
    pub fn insert_held_winners_sqlite(&self) -> String {
        let t = self.t;
        let k = Self::MERGE_KEYS;
        format!(
            "{head}\n\
             FROM {k} k CROSS JOIN {st} s CROSS JOIN {files} f\n\
             WHERE k.{HELD} = 1 AND NOT EXISTS (SELECT 1 FROM {target} t WHERE {kt})\n\
             \x20 AND {km} AND {join} AND f.status = '{LOADED}'\n\
             \x20 AND {unbeaten}\n\
             ORDER BY {k_cols}",
            head = self.insert_target_from_staging(),
            target = t.target,
            kt = self.key_match("t", "k"),
            st = t.staging,
            files = t.files,
            km = self.key_match("k", "s"),
            join = self.staging_joins_ledger("s", "f"),
            unbeaten = self.unbeaten_sqlite(),
            k_cols = self.contract.dedupe_key.iter().map(|c| format!("k.{c}")).collect::<Vec<_>>().join(", "),
        )
    }

    /// The first statement of every writing transaction on Redshift and PostgreSQL (commits and
    /// merges, in the service and in the Glue job). Under SNAPSHOT isolation, Redshift's default,
    /// two transactions that insert the same new ledger row both pass the `WHERE NOT EXISTS`
    /// guard; the lock makes the second wait until the first has committed. It must come before
    /// anything that takes the transaction's snapshot (a SELECT, DML, CREATE TABLE), so that the
    /// waiting writer's snapshot already holds the first one's rows. SQLite needs none: a batch
    /// holds the database's write lock from `BEGIN IMMEDIATE`.
    /// The table [`Sql::lock_writers`] locks (Redshift and PostgreSQL).
    pub fn lock_table(&self) -> String {
        format!("CREATE TABLE IF NOT EXISTS {} (writer {})", self.t.lock, self.int())
    }

    pub fn lock_writers(&self) -> String {
        format!("LOCK {}", self.t.lock)
    }

    /// Ledger rows a merge has still to publish (its cheap first question).
    pub fn unmerged_count(&self) -> String {
        format!("SELECT COUNT(*) FROM {} WHERE merged_at IS NULL", self.t.files)
    }

    /// Loaded files a merge is about to publish (read inside the merge, for its report).
    pub fn unmerged_loaded_count(&self) -> String {
        format!("SELECT COUNT(*) FROM {} WHERE merged_at IS NULL AND status = '{LOADED}'", self.t.files)
    }

    /// One keyset page of the (key, sequencer) pairs recorded for `:bucket`
    /// (`Warehouse::recorded_page`): from `:key` on, or, `after` the previous page, past
    /// (`:key`, `:sequencer`); in the engine's (key, sequencer) order, at most `limit`. A pair
    /// repeats once per version recorded with it, and a page that ends on one skips its other
    /// repeats: reconcile asks only whether a pair is recorded. (Not `DISTINCT`: SQLite would
    /// then gather every row from `:key` on before the `LIMIT`, each page costing the rest of
    /// the ledger.) The range is written `key >= :key AND (...)` so an index on (bucket, key)
    /// serves it. Reconcile does not rely on this order being byte order (see `reconcile`): the
    /// engine's own `>` and `ORDER BY` agree with each other, which is all keyset paging needs.
    pub fn recorded_page(&self, start: RecordedPage, limit: usize) -> String {
        let after = match start {
            RecordedPage::AtKey => "",
            RecordedPage::After => " AND (key > :key OR sequencer > :sequencer)",
        };
        format!(
            "SELECT key, sequencer FROM {} WHERE bucket = :bucket AND key >= :key{after} ORDER BY key, sequencer LIMIT {limit}",
            self.t.files
        )
    }

    /// Ledger totals in one row: files loaded, rejected, superseded; rows read, loaded,
    /// rejected; files whose accounting does not balance; rows in target, staging, rejects.
    pub fn totals(&self) -> String {
        let t = self.t;
        let count = |cond: &str| format!("COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0)");
        format!(
            "SELECT {}, {}, {}, COALESCE(SUM(rows_read), 0), COALESCE(SUM(rows_loaded), 0), COALESCE(SUM(rows_rejected), 0), {},\n\
             \x20 (SELECT COUNT(*) FROM {target}), (SELECT COUNT(*) FROM {staging}), (SELECT COUNT(*) FROM {rejects})\n\
             FROM {files} WHERE status <> '{REPLACED}'",
            count(&format!("status = '{LOADED}'")),
            count(&format!("status = '{REJECTED}'")),
            count(&format!("status = '{SUPERSEDED}'")),
            count("rows_read <> rows_loaded + rows_rejected"),
            target = t.target,
            staging = t.staging,
            rejects = t.rejects,
            files = t.files
        )
    }

    /// What the ledger holds of one batch: files, rows loaded, rows rejected.
    pub fn batch_totals(&self, batch_id: i64) -> String {
        format!(
            "SELECT COUNT(*), COALESCE(SUM(rows_loaded), 0), COALESCE(SUM(rows_rejected), 0) FROM {} WHERE batch_id = {batch_id}",
            self.t.files
        )
    }

    /// `lookup_version` and `newer_version_exists` in one round trip (one UNION ALL): rows
    /// `(0, status, batch_id)` for recorded loads of the version, one `(1, NULL, count)` of
    /// newer versions of its key.
    pub fn admission(&self) -> String {
        self.admission_of(None)
    }

    /// [`Sql::admission`] for `n` versions in one round trip: every row starts with the
    /// version's position `i` (0-based) and its parameters are named `:bucket_i`, `:key_i`,
    /// `:version_i`, `:sequencer_i`.
    pub fn admissions(&self, n: usize) -> String {
        (0..n).map(|i| self.admission_of(Some(i))).collect::<Vec<_>>().join("\nUNION ALL\n")
    }

    fn admission_of(&self, file: Option<usize>) -> String {
        let files = &self.t.files;
        let (position, p) = match file {
            Some(i) => (format!("{i} AS file, "), format!("_{i}")),
            None => (String::new(), String::new()),
        };
        format!(
            "SELECT {position}0 AS kind, status, batch_id FROM {files} WHERE bucket = :bucket{p} AND key = :key{p} AND version = :version{p} AND status <> '{REPLACED}'\n\
             UNION ALL\n\
             SELECT {position}1 AS kind, NULL, COUNT(*) FROM {files} WHERE bucket = :bucket{p} AND key = :key{p} AND version <> :version{p} AND status IN {counting} AND sequencer > :sequencer{p}",
            counting = counts_for_order_sql()
        )
    }

    // The set-wise forms of the per-file ledger statements, for a commit that carries its
    // files' ledger rows in the temporary table `batch` (the ledger's columns + `replaces`):
    // one statement for a whole batch, where a Data API batch holds at most 40.

    /// The temporary table of a commit's ledger rows.
    pub fn batch_files_table(&self, batch: &str) -> String {
        let mut cols = self.own_columns_ddl(&ledger_table::COLUMNS, false);
        cols.push(format!("replaces {}", self.own_type(OwnType::Int)));
        format!("CREATE TEMP TABLE {batch} ({})", cols.join(", "))
    }

    /// [`Sql::replace_version`] for every forced version of the batch.
    pub fn replace_batch_versions(&self, batch: &str) -> String {
        let files = &self.t.files;
        format!(
            "UPDATE {files} SET status = '{REPLACED}', merged_at = NULL WHERE status IN ('{LOADED}', '{REJECTED}', '{SUPERSEDED}')\n\
             \x20 AND EXISTS (SELECT 1 FROM {batch} b WHERE b.replaces = 1 AND b.bucket = {files}.bucket AND b.key = {files}.key AND b.version = {files}.version)"
        )
    }

    /// [`Sql::insert_ledger`] for the batch: a version another writer recorded is skipped.
    pub fn insert_batch_ledger(&self, batch: &str) -> String {
        let files = &self.t.files;
        let cols = column_names(&ledger_table::COLUMNS).join(", ");
        format!(
            "INSERT INTO {files} ({cols})\n\
             SELECT {cols} FROM {batch} b\n\
             WHERE NOT EXISTS (SELECT 1 FROM {files} f WHERE f.bucket = b.bucket AND f.key = b.key AND f.version = b.version AND f.status <> '{REPLACED}')"
        )
    }

    /// [`Sql::supersede_older`] for every version batch `batch_id` recorded as loaded or rejected.
    pub fn supersede_older_than_batch(&self, batch_id: i64) -> String {
        let files = &self.t.files;
        format!(
            "UPDATE {files} SET status = '{SUPERSEDED}', merged_at = NULL WHERE status = '{LOADED}' AND batch_id <> {batch_id}\n\
             \x20 AND EXISTS (SELECT 1 FROM {files} n WHERE n.batch_id = {batch_id} AND n.status IN {counting} AND n.bucket = {files}.bucket AND n.key = {files}.key AND n.version <> {files}.version AND {files}.sequencer <= n.sequencer)",
            counting = counts_for_order_sql()
        )
    }

    /// The other half of the version order inside a commit: a version batch `batch_id` recorded
    /// as loaded while a newer version of its key was already recorded (by another writer, after
    /// this one admitted it) is superseded at once, so the target never holds both. Ties go to
    /// the later commit, as in [`Sql::supersede_older_than_batch`].
    pub fn supersede_batch_versions_already_older(&self, batch_id: i64) -> String {
        let files = &self.t.files;
        format!(
            "UPDATE {files} SET status = '{SUPERSEDED}', merged_at = NULL WHERE batch_id = {batch_id} AND status = '{LOADED}'\n\
             \x20 AND EXISTS (SELECT 1 FROM {files} n WHERE n.batch_id <> {batch_id} AND n.status IN {counting} AND n.bucket = {files}.bucket AND n.key = {files}.key AND n.version <> {files}.version AND n.sequencer > {files}.sequencer)",
            counting = counts_for_order_sql()
        )
    }

    /// Leaves in `batch` (the table of batch `batch_id`'s ledger rows) only the versions the
    /// guarded insert did not record (another writer recorded them first): usually none. The
    /// two statements after it delete their staged rows and rejects by a join with what is
    /// left, instead of probing the ledger once per staged row. (The emulator's PostgreSQL
    /// still scans staging for the batch's rows when its BRIN index of `_batch_id` goes
    /// unused; Redshift's zone maps skip to them.) Runs after [`Sql::insert_batch_ledger`], the
    /// last reader of `batch`'s full contents.
    pub fn keep_unrecorded(&self, batch_id: i64, batch: &str) -> String {
        let files = &self.t.files;
        format!(
            "DELETE FROM {batch} WHERE EXISTS (SELECT 1 FROM {files} f WHERE f.batch_id = {batch_id} AND f.bucket = {batch}.bucket AND f.key = {batch}.key AND f.version = {batch}.version)"
        )
    }

    /// Staged rows of batch `batch_id` of the versions [`Sql::keep_unrecorded`] left in `batch`.
    pub fn drop_unrecorded_staging(&self, batch_id: i64, batch: &str) -> String {
        let st = &self.t.staging;
        format!(
            "DELETE FROM {st} USING {batch} u\n\
             WHERE {st}._batch_id = {batch_id} AND {st}._file_key = u.key AND {st}._file_version = u.version"
        )
    }

    /// The same for the batch's reject rows.
    pub fn drop_unrecorded_rejects(&self, batch_id: i64, batch: &str) -> String {
        let rj = &self.t.rejects;
        format!(
            "DELETE FROM {rj} USING {batch} u\n\
             WHERE {rj}.batch_id = {batch_id} AND {rj}.bucket = u.bucket AND {rj}.key = u.key AND {rj}.version = u.version"
        )
    }

    pub fn report(&self) -> String {
        format!(
            "SELECT customer, iso_week, week_start, active_users FROM {} WHERE week_start >= :since AND (:customer = '' OR customer = :customer) ORDER BY week_start, customer",
            self.t.wau_view
        )
    }

    // What `status` reads (through `Warehouse::read_text`; times are literals, see `time_literal`).

    /// One reconcile run's row, every value a literal.
    pub fn insert_reconcile(&self, r: &ReconcileRecord) -> String {
        let cols = column_names(&reconciles_table::COLUMNS).join(", ");
        // Redshift reads backslashes in literals as escapes; SQLite has no CHR() to spell them.
        let text = |s: &str, c: OwnColumn| match self.dialect {
            Dialect::Sqlite => format!("'{}'", sql_literal_body(truncate_bytes(s, c.width()))),
            _ => super::redshift::sql_string(truncate_bytes(s, c.width())),
        };
        let error = r.error.as_deref().map_or("NULL".to_string(), |e| text(e, reconciles_table::ERROR));
        format!(
            "INSERT INTO {} ({cols}) VALUES ({}, {}, {}, {}, {}, {}, {}, {error})",
            self.t.reconciles,
            time_literal(r.started_at),
            time_literal(r.finished_at),
            text(&r.outcome, reconciles_table::OUTCOME),
            r.objects_missing,
            r.files_loaded,
            r.files_rejected,
            r.files_to_retry,
        )
    }

    /// The latest reconcile run: the columns of [`reconciles_table::COLUMNS`].
    pub fn last_reconcile(&self) -> String {
        format!(
            "SELECT {} FROM {} ORDER BY finished_at DESC LIMIT 1",
            column_names(&reconciles_table::COLUMNS).join(", "),
            self.t.reconciles
        )
    }

    /// The latest merge: merged_at, files, rows_deleted, rows_inserted.
    pub fn last_merge(&self) -> String {
        format!(
            "SELECT merged_at, files, rows_deleted, rows_inserted FROM {} ORDER BY merged_at DESC LIMIT 1",
            self.t.merges
        )
    }

    /// Ledger rows no merge has published yet: how many, and the oldest one's load time.
    pub fn unmerged_files(&self) -> String {
        format!(
            "SELECT COUNT(*), MIN(loaded_at) FROM {} WHERE merged_at IS NULL AND status IN ('{LOADED}', '{REJECTED}')",
            self.t.files
        )
    }

    /// Files loaded or rejected at or after `since`, oldest first: key, status, loaded_at,
    /// rows_read, rows_rejected and the customer their rows name (see [`Sql::file_customer`]).
    pub fn files_since(&self, since: chrono::DateTime<chrono::Utc>) -> String {
        let (joins, customer) = self.file_customer("f", since);
        format!(
            "SELECT f.key, f.status, f.loaded_at, f.rows_read, f.rows_rejected, {customer}\n\
             FROM {files} f{joins}\n\
             WHERE f.loaded_at >= {since} AND f.status IN ('{LOADED}', '{REJECTED}')\n\
             ORDER BY f.loaded_at, f.key",
            files = self.t.files,
            since = time_literal(since)
        )
    }

    /// A ledger row's customer: the ledger's own column, else (rows recorded before the column
    /// existed) the customer column of its staged rows, else of its rows in the target (NULL for
    /// a file without rows). Joins (to append after `FROM files {f}`) and the expression. Only
    /// files loaded at or after `since` are looked up.
    pub fn file_customer(&self, f: &str, since: chrono::DateTime<chrono::Utc>) -> (String, String) {
        let cust = &self.contract.customer_column;
        let files = &self.t.files;
        let since = time_literal(since);
        let per_file = |table: &str| {
            format!(
                "(SELECT x._file_key AS k, x._file_version AS v, MIN(x.{cust}) AS customer FROM {table} x\n\
                 \x20   JOIN {files} r ON r.key = x._file_key AND r.version = x._file_version WHERE r.loaded_at >= {since}\n\
                 \x20   GROUP BY x._file_key, x._file_version)"
            )
        };
        let joins = format!(
            "\n LEFT JOIN {} sc ON sc.k = {f}.key AND sc.v = {f}.version\n LEFT JOIN {} tc ON tc.k = {f}.key AND tc.v = {f}.version",
            per_file(&self.t.staging),
            per_file(&self.t.target)
        );
        (joins, format!("COALESCE({f}.{}, sc.customer, tc.customer)", ledger_table::CUSTOMER.name))
    }

    /// The `limit` rules with the most rejects at or after `since`, most first, each with its
    /// count and its latest reject as the example: rule, count, key, line, column_name, reason, value.
    pub fn top_reject_rules(&self, since: chrono::DateTime<chrono::Utc>, limit: u32) -> String {
        format!(
            "SELECT rule, n, key, line, column_name, reason, value FROM (\n\
             \x20 SELECT rule, key, line, column_name, reason, value, COUNT(*) OVER (PARTITION BY rule) AS n,\n\
             \x20   ROW_NUMBER() OVER (PARTITION BY rule ORDER BY rejected_at DESC, key, line) AS rn\n\
             \x20 FROM {} WHERE rejected_at >= {}\n\
             ) x WHERE rn = 1 ORDER BY n DESC, rule LIMIT {limit}",
            self.t.rejects,
            time_literal(since)
        )
    }
}

/// A time as a literal every engine compares with its time columns (SQLite keeps them as this text).
pub fn time_literal(t: chrono::DateTime<chrono::Utc>) -> String {
    format!("'{}'", crate::contract::format_timestamp(t))
}

/// The longest prefix of `s` within `max` bytes, cut at a character boundary.
fn truncate_bytes(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One reconcile run as [`Sql::insert_reconcile`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileRecord {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub outcome: String,
    pub objects_missing: u64,
    pub files_loaded: u64,
    pub files_rejected: u64,
    pub files_to_retry: u64,
    pub error: Option<String>,
}

/// The inside of a single-quoted SQL literal: quotes doubled.
pub fn sql_literal_body(s: &str) -> String {
    s.replace('\'', "''")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql_for(d: Dialect) -> (Contract, Tables, Dialect) {
        let c = Contract::builtin();
        let t = Tables::for_contract(&c);
        (c, t, d)
    }

    #[test]
    fn ddl_types_follow_the_dialect() {
        let (c, t, _) = sql_for(Dialect::Sqlite);
        let lite = Sql::new(Dialect::Sqlite, &c, &t).migrate().join("\n");
        assert!(lite.contains("event_time TEXT NOT NULL"));
        assert!(lite.contains(
            "CREATE INDEX IF NOT EXISTS wau_audit_logs_staging_key ON wau_audit_logs_staging (customer, event_id)"
        ));
        assert!(!lite.contains("SORTKEY"));
        assert!(
            lite.contains("PRIMARY KEY (customer, event_id)\n) WITHOUT ROWID"),
            "the SQLite target is keyed: {lite}"
        );
        assert!(!lite.contains("wau_audit_logs_key ON"), "no second index on a keyed table");
        let rs = Sql::new(Dialect::Redshift, &c, &t).migrate().join("\n");
        assert!(rs.contains("customer VARCHAR(64) NOT NULL"), "{rs}");
        assert!(rs.contains("event_time TIMESTAMP NOT NULL"));
        assert!(rs.contains("CREATE TABLE IF NOT EXISTS wau_audit_logs (\n  customer VARCHAR(64) NOT NULL,"));
        for table in ["wau_audit_logs", "wau_audit_logs_staging"] {
            let ddl = Sql::new(Dialect::Redshift, &c, &t)
                .migrate()
                .into_iter()
                .find(|s| s.contains(&format!("EXISTS {table} (")))
                .unwrap();
            assert!(ddl.ends_with(") DISTSTYLE KEY DISTKEY (event_id) COMPOUND SORTKEY (customer, event_id)"), "{ddl}");
        }
        assert!(rs.contains("contract_version BIGINT NOT NULL,\n  customer VARCHAR(256)\n) DISTSTYLE KEY DISTKEY (key) COMPOUND SORTKEY (bucket, key, version)"), "{rs}");
        assert!(
            rs.contains("rejected_at TIMESTAMP NOT NULL\n) DISTSTYLE KEY DISTKEY (key) COMPOUND SORTKEY (batch_id)"),
            "{rs}"
        );
        let merges = Sql::new(Dialect::Redshift, &c, &t)
            .migrate()
            .into_iter()
            .find(|s| s.contains("EXISTS wau_ingest_merges ("))
            .unwrap();
        assert!(merges.ends_with("rows_inserted BIGINT\n)"), "the merge history keeps Redshift's defaults: {merges}");
        assert!(!rs.contains("CREATE INDEX"));
        assert!(rs.contains("CREATE OR REPLACE VIEW wau_weekly_active_users"));
        let pg = Sql::new(Dialect::Postgres, &c, &t).migrate().join("\n");
        assert!(pg.contains("customer VARCHAR(64) NOT NULL"));
        assert!(pg.contains("user_agent VARCHAR(512),"));
    }

    #[test]
    fn the_freshness_view_groups_loaded_files_of_known_customers_on_every_engine() {
        let (c, t, _) = sql_for(Dialect::Sqlite);
        let body = "wau_ingest_customer_freshness AS\n\
             SELECT customer AS customer, MAX(event_at) AS last_event_at, MAX(loaded_at) AS last_loaded_at, COUNT(*) AS files_loaded\n\
             FROM wau_ingest_files WHERE status = 'loaded' AND customer IS NOT NULL\n\
             GROUP BY customer";
        for (d, create) in [
            (Dialect::Sqlite, "CREATE VIEW IF NOT EXISTS"),
            (Dialect::Postgres, "CREATE OR REPLACE VIEW"),
            (Dialect::Redshift, "CREATE OR REPLACE VIEW"),
        ] {
            let sql = Sql::new(d, &c, &t);
            assert!(sql.migrate().contains(&format!("{create} {body}")), "{d:?}: {:#?}", sql.migrate());
            assert!(sql.files_since(chrono::Utc::now()).contains("COALESCE(f.customer, sc.customer, tc.customer)"));
        }
        let lite = Sql::new(Dialect::Sqlite, &c, &t).migrate().join("\n");
        assert!(lite.contains("contract_version INTEGER NOT NULL,\n  customer TEXT\n)"), "nullable: {lite}");
    }

    #[test]
    fn load_and_merge_text_is_the_same_for_every_engine() {
        let (c, t, _) = sql_for(Dialect::Sqlite);
        let a = Sql::new(Dialect::Sqlite, &c, &t);
        let b = Sql::new(Dialect::Redshift, &c, &t);
        let p = Sql::new(Dialect::Postgres, &c, &t);
        // The differences: the writers' lock (not on SQLite, whose batch holds the write lock),
        // an index on the temporary key set where the engine has indexes, and the delete from the
        // target (a join where DELETE can join).
        let without = |m: Vec<MergeStep>, skip: &[MergeStepKind]| {
            m.into_iter().filter(|s| !skip.contains(&s.kind)).map(|s| s.sql).collect::<Vec<_>>()
        };
        use MergeStepKind::{DeleteTarget, IndexKeys, Lock};
        assert_eq!(without(a.merge(), &[IndexKeys, DeleteTarget]), without(b.merge(), &[Lock, DeleteTarget]));
        assert_eq!(without(a.merge(), &[DeleteTarget]), without(p.merge(), &[Lock, DeleteTarget]));
        assert_eq!(without(b.merge(), &[]), without(p.merge(), &[IndexKeys]));
        assert!(a.merge().iter().all(|s| s.kind != Lock));
        assert_eq!(a.insert_ledger(), b.insert_ledger());
        assert_eq!(a.supersede_older(), b.supersede_older());
    }

    #[test]
    fn merge_deletes_touched_keys_then_inserts_winners() {
        let (c, t, d) = sql_for(Dialect::Sqlite);
        let m: Vec<String> = Sql::new(d, &c, &t).merge().into_iter().map(|s| s.sql).collect();
        assert_eq!(m.len(), 8);
        assert_eq!(
            m[0],
            "CREATE TEMP TABLE wau_merge_keys AS SELECT DISTINCT s.customer, s.event_id FROM wau_ingest_files f JOIN wau_audit_logs_staging s ON f.key = s._file_key AND f.version = s._file_version AND f.batch_id = s._batch_id WHERE f.merged_at IS NULL"
        );
        assert_eq!(m[1], "CREATE INDEX wau_merge_keys_key ON wau_merge_keys (customer, event_id)");
        let m: Vec<String> = m.into_iter().filter(|s| !s.starts_with("CREATE INDEX")).collect();
        assert_eq!(
            m[1],
            "DELETE FROM wau_audit_logs WHERE customer IN (SELECT customer FROM wau_merge_keys) AND EXISTS (SELECT 1 FROM wau_merge_keys k WHERE k.customer = wau_audit_logs.customer AND k.event_id = wau_audit_logs.event_id)"
        );
        assert!(m[2].contains("ROW_NUMBER() OVER (PARTITION BY s.customer, s.event_id ORDER BY f.sequencer DESC, f.batch_id DESC, s._line DESC, s._file_key DESC)"));
        assert!(m[2].contains("FROM wau_merge_keys k CROSS JOIN wau_audit_logs_staging s CROSS JOIN wau_ingest_files f\n  WHERE k.customer = s.customer AND k.event_id = s.event_id AND"));
        assert!(m[2].contains("AND f.status = 'loaded'"));
        assert!(m[3].starts_with("DELETE FROM wau_audit_logs_staging WHERE _batch_id IN (SELECT batch_id FROM wau_ingest_files WHERE merged_at IS NULL AND status IN ('superseded', 'replaced'))"));
        assert!(m[3].contains("f.merged_at IS NULL AND f.status IN ('superseded', 'replaced')"));
        assert!(m[5].starts_with("UPDATE wau_ingest_files SET merged_at = :merged_at WHERE merged_at IS NULL"));
        assert_eq!(m[6], "DROP TABLE wau_merge_keys");
        let (c, t, _) = sql_for(Dialect::Redshift);
        let rs = Sql::new(Dialect::Redshift, &c, &t).merge();
        let delete = rs.iter().find(|s| s.kind == MergeStepKind::DeleteTarget).unwrap();
        assert_eq!(
            delete.sql,
            "DELETE FROM wau_audit_logs USING wau_merge_keys k WHERE k.customer = wau_audit_logs.customer AND k.event_id = wau_audit_logs.event_id"
        );
    }

    #[test]
    fn the_distribution_column_is_the_dedupe_keys_first_that_is_not_the_customer() {
        let (mut c, _, _) = sql_for(Dialect::Redshift);
        c.dedupe_key = vec!["customer".into()];
        let t = Tables::for_contract(&c);
        let sql = Sql::new(Dialect::Redshift, &c, &t);
        assert_eq!(sql.distribution_column(), None);
        assert_eq!(sql.physical_design(TableRole::Target), " DISTSTYLE AUTO COMPOUND SORTKEY (customer)");
        c.dedupe_key = vec!["event_id".into(), "customer".into()];
        let sql = Sql::new(Dialect::Redshift, &c, &t);
        assert_eq!(sql.distribution_column(), Some("event_id"));
        assert_eq!(Sql::new(Dialect::Postgres, &c, &t).physical_design(TableRole::Ledger), "");
    }

    #[test]
    fn every_writer_takes_the_lock_before_its_snapshot() {
        for d in [Dialect::Redshift, Dialect::Postgres] {
            let (c, t, _) = sql_for(d);
            let sql = Sql::new(d, &c, &t);
            let m = sql.merge();
            assert_eq!(m[0], MergeStep { kind: MergeStepKind::Lock, sql: "LOCK wau_ingest_lock".into() });
            assert!(m[1..].iter().all(|s| s.kind != MergeStepKind::Lock));
            assert!(sql.migrate().contains(&"CREATE TABLE IF NOT EXISTS wau_ingest_lock (writer BIGINT)".to_string()));
        }
    }

    #[test]
    fn copy_reads_the_manifest_in_the_staging_column_order() {
        let (c, t, d) = sql_for(Dialect::Redshift);
        let s = Sql::new(d, &c, &t).copy_staging("s3://b/staging/7/manifest.json", "arn:aws:iam::1:role/it's");
        assert!(s.starts_with("COPY wau_audit_logs_staging (customer, event_id, event_time, user_id, user_email, event_type, source_ip, user_agent, _file_key, _file_version, _line, _batch_id) FROM 's3://b/staging/7/manifest.json'"), "{s}");
        assert!(s.contains("IAM_ROLE 'arn:aws:iam::1:role/it''s'"));
        assert!(s.contains("FORMAT AS CSV GZIP MANIFEST TIMEFORMAT 'YYYY-MM-DD HH:MI:SS'"));
        assert!(s.contains("NULL AS '' MAXERROR 0"), "{s}");
        let d = Sql::copy_manifest("t", &["a"], "s3://b/m.json", "");
        assert!(d.contains("IAM_ROLE default FORMAT AS CSV"), "{d}");
    }

    #[test]
    fn ledger_insert_is_guarded() {
        let (c, t, d) = sql_for(Dialect::Sqlite);
        let s = Sql::new(d, &c, &t).insert_ledger();
        assert!(s.contains("WHERE NOT EXISTS (SELECT 1 FROM wau_ingest_files WHERE bucket = :bucket AND key = :key AND version = :version AND status <> 'replaced')"));
    }

    #[test]
    fn staging_insert_binds_every_column_and_provenance() {
        let (c, t, d) = sql_for(Dialect::Sqlite);
        let s = Sql::new(d, &c, &t).insert_staging();
        assert!(s.ends_with("VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"), "{s}");
        assert!(s.contains("user_agent, _file_key, _file_version, _line, _batch_id)"));
    }
}
