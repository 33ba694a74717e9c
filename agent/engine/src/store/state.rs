//! The state database (`state.db`, SQLite).
//!
//! WAL mode with `synchronous=FULL`: a committed transition survives power
//! loss. The schema is versioned with `PRAGMA user_version` and migrated
//! forward at open; a database newer than this ferry is refused, and an
//! integrity check runs at every open (`quick_check`; the full
//! `integrity_check` at early boot) so corruption is reported, never
//! silently used. Gc prunes history nothing needs (`Db::prune`), so the
//! database, and with it open and status, stays the same size as a device
//! ages. Every phase change of a transition is committed
//! together with its audit entry in one SQLite transaction.

use ferry_core::{Classify, ErrorClass};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fail::fail_point;
use ferry_core::audit::AuditEntry;
use ferry_core::{ContentRef, Kind, Phase, Resource, ResourceSet, Sha256, TransitionKind};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

#[cfg_attr(not(feature = "failpoints"), allow(unused_imports))]
use crate::failpoints as fp;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "state database {path} is corrupt: {detail} (restore it from a backup or move it aside)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "state database {path} has schema version {found}, newer than this ferry understands ({known})"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state database {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Classify for StateError {
    fn class(&self) -> ErrorClass {
        match self {
            StateError::Corrupt { .. } => ErrorClass::Corrupt,
            // A newer ferry migrated it (a downgrade): refuse, touch nothing.
            StateError::TooNew { .. } => ErrorClass::Refused,
            _ => ErrorClass::Internal,
        }
    }
}

/// Schema migrations, applied in order; `user_version` is the count applied.
/// Never edit one that has shipped: add a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE generations (
    id         INTEGER PRIMARY KEY,
    revision   TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    pinned     INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE resources (
    generation INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    length     INTEGER NOT NULL,
    settings   TEXT NOT NULL,
    PRIMARY KEY (generation, kind, name)
) STRICT;
CREATE TABLE transitions (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    phase      TEXT NOT NULL,
    from_gen   INTEGER,
    to_gen     INTEGER,
    revision   TEXT,
    actor      TEXT NOT NULL,
    details    TEXT NOT NULL,
    error      TEXT,
    started_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX transitions_open ON transitions (phase);
CREATE TABLE activations (
    transition INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    step       TEXT NOT NULL,
    undo       TEXT NOT NULL,
    done       INTEGER NOT NULL DEFAULT 0,
    undone     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (transition, seq)
) STRICT;
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    time_ms    INTEGER NOT NULL,
    generation INTEGER,
    event      TEXT NOT NULL,
    actor      TEXT NOT NULL,
    details    TEXT NOT NULL,
    hash       TEXT NOT NULL
) STRICT;
"#,
    r#"
ALTER TABLE resources ADD COLUMN secret INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
CREATE TABLE originals (
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    undo       TEXT NOT NULL,
    PRIMARY KEY (kind, name)
) STRICT;
"#,
    // Every rejected revision, not only the newest: a health-gated
    // rollback or import of an older revision must not forget the newest.
    r#"
CREATE TABLE rejected (
    revision TEXT PRIMARY KEY,
    time_ms  INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    reason   TEXT NOT NULL
) STRICT;
INSERT INTO rejected (revision, time_ms, actor, reason)
    SELECT value, 0, 'agent', 'health checks failed' FROM meta WHERE key = 'rejected_revision';
DELETE FROM meta WHERE key = 'rejected_revision';
"#,
    // Drift: what a check last found a managed file to be (a cache: the
    // file is hashed again only when its stat fields moved), and the drift
    // found and not restored (reported once, shown by status).
    r#"
CREATE TABLE file_checks (
    name     TEXT PRIMARY KEY,
    sha256   TEXT NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL
) STRICT;
CREATE TABLE drift (
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    finding  TEXT NOT NULL,
    since_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
) STRICT;
"#,
];

/// What a drift check found a managed file to be, with the stat fields it
/// was read at (and the owner ferry installed it with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    pub sha256: Sha256,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// Drift found and left in place (policy `report`, or not restored yet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftRow {
    pub kind: String,
    pub name: String,
    pub finding: Value,
    pub since_ms: i64,
}

/// Rejected revisions kept (the oldest are forgotten first).
pub const MAX_REJECTED: usize = 256;

/// A revision that failed its health checks and was rolled back: never
/// applied again unless an operator forces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub revision: String,
    pub time_ms: i64,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationRow {
    pub id: u64,
    pub revision: String,
    pub source: String,
    pub created_ms: i64,
    pub pinned: bool,
    pub resources: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransitionRow {
    pub id: i64,
    pub kind: TransitionKind,
    pub phase: Phase,
    pub from_gen: Option<u64>,
    pub to_gen: Option<u64>,
    pub revision: Option<String>,
    pub actor: String,
    pub details: Value,
    pub error: Option<String>,
    pub started_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone)]
pub struct ActivationRow {
    pub seq: u64,
    pub step: Value,
    pub undo: Value,
    pub done: bool,
    pub undone: bool,
}

impl ActivationRow {
    /// The resource kind of a step record (`None` for the switch record).
    pub fn kind(&self) -> Option<Kind> {
        self.step.get("id")?.get("kind")?.as_str()?.parse().ok()
    }
}

/// A generation to record together with its resources.
#[derive(Debug)]
pub struct NewGeneration<'a> {
    pub id: u64,
    pub revision: &'a str,
    pub source: &'a str,
    pub resources: &'a ResourceSet,
}

/// An audit entry to append.
#[derive(Debug)]
pub struct AuditEvent<'a> {
    pub generation: Option<u64>,
    pub event: &'a str,
    pub actor: &'a str,
    pub details: Value,
}

/// How thoroughly [`Db::open_checked`] checks the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `PRAGMA quick_check`: pages, records and constraints, no index cross-check.
    Quick,
    /// `PRAGMA integrity_check`.
    Full,
}

/// What [`Db::prune`] removed.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Pruned {
    pub transitions: usize,
    pub audit_entries: usize,
}

#[derive(Debug)]
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Db {
    /// Opens (creating if `create`) and migrates the database, after the
    /// quick integrity check (`PRAGMA quick_check`).
    pub fn open(path: &Path, create: bool) -> Result<Db, StateError> {
        Self::open_checked(path, create, Check::Quick)
    }

    /// Opens with the integrity check `check`: the full one (which also
    /// cross-checks every index, and grows with the database) once per
    /// boot, the quick one on every other open.
    pub fn open_checked(path: &Path, create: bool, check: Check) -> Result<Db, StateError> {
        let err = |source| StateError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = Connection::open_with_flags(path, flags).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        let mut db = Db {
            conn,
            path: path.to_path_buf(),
        };
        match db.check_integrity(check) {
            // A read-only file system (or directory): WAL needs its -shm
            // file, which cannot be made there; nothing can write the
            // database either, so it is read as immutable.
            Err(StateError::Sqlite { source, .. })
                if !create
                    && matches!(
                        source.sqlite_error_code(),
                        Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly)
                    ) =>
            {
                return Self::open_immutable(path, check);
            }
            other => other?,
        }
        // Switching a new database to WAL and migrating it take locks that
        // SQLite's busy handler does not wait for when another process is
        // doing the same (lock upgrades fail at once to avoid deadlock), so
        // these steps are retried for a while.
        let mut attempts = 0;
        loop {
            let step = db
                .conn
                .execute_batch(
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
                )
                .map_err(err)
                .and_then(|()| db.migrate());
            match step {
                Err(StateError::Sqlite { source, .. })
                    if attempts < 100
                        && source.sqlite_error_code()
                            == Some(rusqlite::ErrorCode::DatabaseBusy) =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => {
                    other?;
                    break;
                }
            }
        }
        Ok(db)
    }

    /// Opens a database on read-only storage, for reading only.
    fn open_immutable(path: &Path, check: Check) -> Result<Db, StateError> {
        let err = |source| StateError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        const PATH: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'/')
            .remove(b'-')
            .remove(b'_')
            .remove(b'.');
        let uri = format!(
            "file:{}?immutable=1",
            percent_encoding::utf8_percent_encode(&path.to_string_lossy(), PATH)
        );
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        let db = Db {
            conn,
            path: path.to_path_buf(),
        };
        db.check_integrity(check)?;
        let version: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db.err())?;
        if version != MIGRATIONS.len() as i64 {
            return Err(StateError::Invalid {
                path: path.to_path_buf(),
                message: format!(
                    "schema version {version} on read-only storage (this ferry uses {}; it cannot migrate it there)",
                    MIGRATIONS.len()
                ),
            });
        }
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StateError + '_ {
        move |source| {
            // SQLITE_CORRUPT / SQLITE_NOTADB surface here too: name them.
            if let rusqlite::Error::SqliteFailure(f, _) = &source
                && matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
                )
            {
                return StateError::Corrupt {
                    path: self.path.clone(),
                    detail: source.to_string(),
                };
            }
            StateError::Sqlite {
                path: self.path.clone(),
                source,
            }
        }
    }

    fn check_integrity(&self, check: Check) -> Result<(), StateError> {
        let corrupt = |detail: String| StateError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let pragma = match check {
            Check::Quick => "PRAGMA quick_check",
            Check::Full => "PRAGMA integrity_check",
        };
        // Only corruption is reported as corruption; a file that cannot be
        // opened or read is an I/O problem (exit 1), not a damaged database.
        let classify = |e: rusqlite::Error| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            | None => corrupt(e.to_string()),
            Some(_) => StateError::Sqlite {
                path: self.path.clone(),
                source: e,
            },
        };
        let mut stmt = self.conn.prepare(pragma).map_err(classify)?;
        let rows: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(classify)?;
        if rows.len() == 1 && rows[0] == "ok" {
            Ok(())
        } else {
            Err(corrupt(rows.first().cloned().unwrap_or_default()))
        }
    }

    /// `PRAGMA integrity_check` result, for tests and `ferry status`.
    pub fn integrity_ok(&self) -> bool {
        self.check_integrity(Check::Full).is_ok()
    }

    fn migrate(&mut self) -> Result<(), StateError> {
        let known = MIGRATIONS.len() as i64;
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(self.err())?;
        if version > known {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        if version == known {
            return Ok(());
        }
        // Another process may be migrating the same database (an agent
        // creating it while `ferry status` opens it): take the write lock
        // first and read the version again under it.
        let path = self.path.clone();
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(err)?;
            let version: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(err)?;
            let Some(sql) = usize::try_from(version)
                .ok()
                .and_then(|v| MIGRATIONS.get(v))
            else {
                tx.commit().map_err(err)?;
                return Ok(());
            };
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", version + 1)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
    }

    /// Runs `f` in one SQLite transaction, committed durably.
    pub fn with_tx<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StateError> {
        let path = self.path.clone();
        let err = |source| StateError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let out = f(&tx).map_err(err)?;
        fail_point!(fp::STATE_BEFORE_COMMIT);
        tx.commit().map_err(err)?;
        Ok(out)
    }

    /// Appends entries from the audit spool (`spool::drain`), each named by
    /// its spool file: names at or before the last one appended (recorded
    /// in the same transaction) are skipped, so a drain cut short after
    /// its commit appends nothing twice. Returns how many were appended.
    pub fn append_spooled(
        &mut self,
        items: &[(&str, AuditEvent<'_>)],
    ) -> Result<usize, StateError> {
        self.with_tx(|tx| {
            let last: Option<String> = tx
                .query_row(
                    "SELECT value FROM meta WHERE key = 'audit_spool_last'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let mut appended = 0;
            let mut newest = last.clone();
            for (name, ev) in items {
                if last.as_deref().is_some_and(|l| *name <= l) {
                    continue;
                }
                Db::append_audit(tx, ev)?;
                appended += 1;
                if newest.as_deref().is_none_or(|n| *name > n) {
                    newest = Some((*name).to_owned());
                }
            }
            if let Some(n) = &newest {
                meta_set(tx, "audit_spool_last", n)?;
            }
            Ok(appended)
        })
    }

    // ---- meta ---------------------------------------------------------------

    fn meta_get(&self, key: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    fn meta_u64(&self, key: &str) -> Result<Option<u64>, StateError> {
        match self.meta_get(key)? {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| StateError::Invalid {
                path: self.path.clone(),
                message: format!("meta {key} is not a number: {v:?}"),
            }),
        }
    }

    pub fn current_generation(&self) -> Result<Option<u64>, StateError> {
        self.meta_u64("current_generation")
    }

    /// Why `revision` was rejected, if it was.
    pub fn rejection(&self, revision: &str) -> Result<Option<Rejection>, StateError> {
        self.conn
            .query_row(
                "SELECT revision, time_ms, actor, reason FROM rejected WHERE revision = ?1",
                [revision],
                rejection_row,
            )
            .optional()
            .map_err(self.err())
    }

    /// The rejected revisions, newest first.
    pub fn rejections(&self) -> Result<Vec<Rejection>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT revision, time_ms, actor, reason FROM rejected ORDER BY time_ms DESC, rowid DESC",
            )
            .map_err(self.err())?;
        stmt.query_map([], rejection_row)
            .and_then(|rows| rows.collect())
            .map_err(self.err())
    }

    /// Remembers `revision` as rejected (the newest [`MAX_REJECTED`] are kept).
    pub fn insert_rejection(tx: &Transaction<'_>, r: &Rejection) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT OR REPLACE INTO rejected (revision, time_ms, actor, reason) VALUES (?1, ?2, ?3, ?4)",
            params![r.revision, r.time_ms, r.actor, r.reason],
        )?;
        tx.execute(
            "DELETE FROM rejected WHERE rowid NOT IN
               (SELECT rowid FROM rejected ORDER BY time_ms DESC, rowid DESC LIMIT ?1)",
            [MAX_REJECTED as i64],
        )?;
        Ok(())
    }

    /// Forgets the rejection of `revision`; whether there was one.
    pub fn delete_rejection(tx: &Transaction<'_>, revision: &str) -> rusqlite::Result<bool> {
        Ok(tx.execute("DELETE FROM rejected WHERE revision = ?1", [revision])? > 0)
    }

    /// What the last checks of managed files (and blobs) found, by key.
    pub fn file_checks(&self) -> Result<std::collections::HashMap<String, FileCheck>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, sha256, mode, uid, gid, dev, ino, size, mtime_ns, ctime_ns FROM file_checks",
            )
            .map_err(self.err())?;
        stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                FileCheck {
                    // Parsed in place: read for every managed file.
                    sha256: r.get_ref(1)?.as_str()?.parse().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            1,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })?,
                    mode: r.get(2)?,
                    uid: r.get(3)?,
                    gid: r.get(4)?,
                    dev: r.get::<_, i64>(5)? as u64,
                    ino: r.get::<_, i64>(6)? as u64,
                    size: r.get::<_, i64>(7)? as u64,
                    mtime_ns: r.get(8)?,
                    ctime_ns: r.get(9)?,
                },
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(self.err())
    }

    /// Records what a pass of checks verified and forgets the keys no
    /// longer managed, in one transaction (a cache: outside any transition).
    pub fn update_file_checks(
        &self,
        record: &[(String, FileCheck)],
        forget: &[&str],
    ) -> Result<(), StateError> {
        if record.is_empty() && forget.is_empty() {
            return Ok(());
        }
        // `&self`: read-only commands (`plan`, `verify`) keep the cache too;
        // the connection is not shared between threads.
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        for (name, c) in record {
            Self::record_file_check(&tx, name, c).map_err(self.err())?;
        }
        for name in forget {
            tx.execute("DELETE FROM file_checks WHERE name = ?1", [name])
                .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }

    /// Records what an activation installed at `name` (inside its
    /// transaction), so that the next check needs no read.
    pub fn record_file_check(conn: &Connection, name: &str, c: &FileCheck) -> rusqlite::Result<()> {
        conn.execute(
                "INSERT OR REPLACE INTO file_checks (name, sha256, mode, uid, gid, dev, ino, size, mtime_ns, ctime_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    name,
                    c.sha256.to_hex(),
                    c.mode,
                    c.uid,
                    c.gid,
                    c.dev as i64,
                    c.ino as i64,
                    c.size as i64,
                    c.mtime_ns,
                    c.ctime_ns
                ],
            )
            .map(drop)
    }

    /// The drift found and left in place.
    pub fn drift(&self) -> Result<Vec<DriftRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, name, finding, since_ms FROM drift ORDER BY kind, name")
            .map_err(self.err())?;
        stmt.query_map([], |r| {
            let finding: String = r.get(2)?;
            Ok(DriftRow {
                kind: r.get(0)?,
                name: r.get(1)?,
                finding: serde_json::from_str(&finding).unwrap_or(Value::Null),
                since_ms: r.get(3)?,
            })
        })
        .and_then(|rows| rows.collect())
        .map_err(self.err())
    }

    /// Records drift of a resource; whether the finding is new (not the
    /// one recorded already).
    pub fn set_drift(
        tx: &Transaction<'_>,
        kind: &str,
        name: &str,
        finding: &Value,
    ) -> rusqlite::Result<bool> {
        let text = finding.to_string();
        let known: Option<String> = tx
            .query_row(
                "SELECT finding FROM drift WHERE kind = ?1 AND name = ?2",
                [kind, name],
                |r| r.get(0),
            )
            .optional()?;
        if known.as_deref() == Some(text.as_str()) {
            return Ok(false);
        }
        tx.execute(
            "INSERT OR REPLACE INTO drift (kind, name, finding, since_ms) VALUES (?1, ?2, ?3, ?4)",
            params![kind, name, text, now_ms()],
        )?;
        Ok(true)
    }

    /// Forgets the drift of a resource (restored, or gone by itself).
    pub fn clear_drift(tx: &Transaction<'_>, kind: &str, name: &str) -> rusqlite::Result<()> {
        tx.execute(
            "DELETE FROM drift WHERE kind = ?1 AND name = ?2",
            [kind, name],
        )
        .map(drop)
    }

    /// The generation that was current before the current one.
    pub fn previous_generation(&self) -> Result<Option<u64>, StateError> {
        self.meta_u64("previous_generation")
    }

    /// Records `to` as current (and the old current as previous), inside `tx`.
    pub fn set_current(
        tx: &Transaction<'_>,
        from: Option<u64>,
        to: Option<u64>,
    ) -> rusqlite::Result<()> {
        meta_set_opt(tx, "current_generation", to)?;
        if from != to {
            meta_set_opt(tx, "previous_generation", from)?;
        }
        Ok(())
    }

    /// Sets the current and previous generation exactly, inside `tx`.
    pub fn restore_current(
        tx: &Transaction<'_>,
        current: Option<u64>,
        previous: Option<u64>,
    ) -> rusqlite::Result<()> {
        meta_set_opt(tx, "current_generation", current)?;
        meta_set_opt(tx, "previous_generation", previous)
    }

    /// Allocates the next generation number (never reused), inside `tx`.
    pub fn allocate_generation(tx: &Transaction<'_>) -> rusqlite::Result<u64> {
        let last: Option<String> = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'last_generation'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let n = last.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
        meta_set(tx, "last_generation", &n.to_string())?;
        Ok(n)
    }

    // ---- generations ----------------------------------------------------------

    pub fn insert_generation(tx: &Transaction<'_>, g: &NewGeneration<'_>) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT OR IGNORE INTO generations (id, revision, source, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![g.id as i64, g.revision, g.source, now_ms()],
        )?;
        let mut stmt = tx.prepare(
            "INSERT OR REPLACE INTO resources (generation, kind, name, sha256, length, settings, secret)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for r in g.resources.iter() {
            stmt.execute(params![
                g.id as i64,
                r.kind.as_str(),
                r.name,
                r.content.sha256.to_hex(),
                r.content.length as i64,
                serde_json::to_string(&r.settings).expect("settings serialise"),
                r.secret as i64,
            ])?;
        }
        Ok(())
    }

    pub fn delete_generation(tx: &Transaction<'_>, n: u64) -> rusqlite::Result<()> {
        tx.execute("DELETE FROM resources WHERE generation = ?1", [n as i64])?;
        tx.execute("DELETE FROM generations WHERE id = ?1", [n as i64])?;
        Ok(())
    }

    pub fn generations(&self) -> Result<Vec<GenerationRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT g.id, g.revision, g.source, g.created_ms, g.pinned,
                        (SELECT count(*) FROM resources r WHERE r.generation = g.id)
                 FROM generations g ORDER BY g.id",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(GenerationRow {
                    id: r.get::<_, i64>(0)? as u64,
                    revision: r.get(1)?,
                    source: r.get(2)?,
                    created_ms: r.get(3)?,
                    pinned: r.get::<_, i64>(4)? != 0,
                    resources: r.get::<_, i64>(5)? as u64,
                })
            })
            .and_then(|rows| rows.collect())
            .map_err(self.err())?;
        Ok(rows)
    }

    pub fn generation(&self, n: u64) -> Result<Option<GenerationRow>, StateError> {
        Ok(self.generations()?.into_iter().find(|g| g.id == n))
    }

    pub fn set_pinned(&mut self, n: u64, pinned: bool) -> Result<bool, StateError> {
        let changed = self.with_tx(|tx| {
            tx.execute(
                "UPDATE generations SET pinned = ?1 WHERE id = ?2",
                params![pinned as i64, n as i64],
            )
        })?;
        Ok(changed == 1)
    }

    pub fn resources(&self, generation: u64) -> Result<ResourceSet, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT kind, name, sha256, length, settings, secret FROM resources
                 WHERE generation = ?1 ORDER BY kind, name",
            )
            .map_err(self.err())?;
        // Parsed from the row in place (only the name is copied): every
        // reconcile, drift check and `verify` reads the whole generation.
        let parse = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Result<Resource, String>> {
            let (kind, sha, settings) = (
                r.get_ref(0)?.as_str()?,
                r.get_ref(2)?.as_str()?,
                r.get_ref(4)?.as_str()?,
            );
            let (name, length, secret): (String, i64, i64) = (r.get(1)?, r.get(3)?, r.get(5)?);
            let parsed = (|| -> Result<_, String> {
                let kind: Kind = kind.parse().map_err(|e| format!("{e}"))?;
                let sha256: Sha256 = sha.parse().map_err(|e| format!("{e}"))?;
                let settings =
                    serde_json::from_str(settings).map_err(|e| format!("{name}: settings: {e}"))?;
                Ok((kind, sha256, settings))
            })();
            Ok(parsed.map(|(kind, sha256, settings)| Resource {
                kind,
                name,
                content: ContentRef {
                    sha256,
                    length: length as u64,
                },
                settings,
                secret: secret != 0,
            }))
        };
        let rows = stmt
            .query_map([generation as i64], parse)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(self.err())?;
        let invalid = |message: String| StateError::Invalid {
            path: self.path.clone(),
            message,
        };
        let mut set = ResourceSet::new();
        for row in rows {
            let r = row.map_err(|e| invalid(format!("generation {generation}: {e}")))?;
            set.insert(r).map_err(|e| invalid(e.to_string()))?;
        }
        Ok(set)
    }

    // ---- transitions ----------------------------------------------------------

    fn transition_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TransitionRow> {
        let text_err = |i, e: Box<dyn std::error::Error + Send + Sync>| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e)
        };
        let kind: String = r.get(1)?;
        let phase: String = r.get(2)?;
        let details: String = r.get(7)?;
        Ok(TransitionRow {
            id: r.get(0)?,
            kind: kind.parse().map_err(|e| text_err(1, Box::new(e)))?,
            phase: phase.parse().map_err(|e| text_err(2, Box::new(e)))?,
            from_gen: r.get::<_, Option<i64>>(3)?.map(|v| v as u64),
            to_gen: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
            revision: r.get(5)?,
            actor: r.get(6)?,
            details: serde_json::from_str(&details).map_err(|e| text_err(7, Box::new(e)))?,
            error: r.get(8)?,
            started_ms: r.get(9)?,
            updated_ms: r.get(10)?,
        })
    }

    const TRANSITION_COLUMNS: &'static str = "id, kind, phase, from_gen, to_gen, revision, actor, details, error, started_ms, updated_ms";

    /// Transitions not in a terminal phase, oldest first.
    pub fn open_transitions(&self) -> Result<Vec<TransitionRow>, StateError> {
        let sql = format!(
            "SELECT {} FROM transitions WHERE phase NOT IN ('confirmed', 'rolled-back', 'failed') ORDER BY id",
            Self::TRANSITION_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map([], Self::transition_from_row)
            .and_then(|rows| rows.collect())
            .map_err(self.err())?;
        Ok(rows)
    }

    pub fn last_transition(&self) -> Result<Option<TransitionRow>, StateError> {
        let sql = format!(
            "SELECT {} FROM transitions ORDER BY id DESC LIMIT 1",
            Self::TRANSITION_COLUMNS
        );
        self.conn
            .query_row(&sql, [], Self::transition_from_row)
            .optional()
            .map_err(self.err())
    }

    /// Inserts a transition in phase `planned`, with its audit entry.
    pub fn insert_transition(
        tx: &Transaction<'_>,
        kind: TransitionKind,
        from_gen: Option<u64>,
        to_gen: Option<u64>,
        revision: Option<&str>,
        actor: &str,
        details: &Value,
    ) -> rusqlite::Result<TransitionRow> {
        let now = now_ms();
        tx.execute(
            "INSERT INTO transitions (kind, phase, from_gen, to_gen, revision, actor, details, started_ms, updated_ms)
             VALUES (?1, 'planned', ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                kind.as_str(),
                from_gen.map(|v| v as i64),
                to_gen.map(|v| v as i64),
                revision,
                actor,
                details.to_string(),
                now
            ],
        )?;
        let row = TransitionRow {
            id: tx.last_insert_rowid(),
            kind,
            phase: Phase::Planned,
            from_gen,
            to_gen,
            revision: revision.map(str::to_owned),
            actor: actor.to_owned(),
            details: details.clone(),
            error: None,
            started_ms: now,
            updated_ms: now,
        };
        Self::audit_transition(tx, &row, None)?;
        Ok(row)
    }

    /// Moves `t` to phase `to` (already checked by the caller) with its audit entry.
    pub fn set_phase(
        tx: &Transaction<'_>,
        t: &mut TransitionRow,
        to: Phase,
        error: Option<&str>,
    ) -> rusqlite::Result<()> {
        let now = now_ms();
        tx.execute(
            "UPDATE transitions SET phase = ?1, error = coalesce(?2, error), updated_ms = ?3 WHERE id = ?4",
            params![to.as_str(), error, now, t.id],
        )?;
        t.phase = to;
        t.updated_ms = now;
        if let Some(e) = error {
            t.error = Some(e.to_owned());
        }
        Self::audit_transition(tx, t, error)
    }

    fn audit_transition(
        tx: &Transaction<'_>,
        t: &TransitionRow,
        error: Option<&str>,
    ) -> rusqlite::Result<()> {
        let mut details = serde_json::json!({
            "transition": t.id,
            "kind": t.kind.as_str(),
            "from": t.from_gen,
            "to": t.to_gen,
        });
        if let Some(rev) = &t.revision {
            details["revision"] = Value::String(rev.clone());
        }
        if t.phase == Phase::Planned {
            details["plan"] = t.details.clone();
        }
        // What staging fetched from the source (bytes, blobs).
        if t.phase == Phase::Staged
            && let Some(fetched) = t.details.get("fetched")
        {
            details["fetched"] = fetched.clone();
        }
        // Who started it (the agent, an operator, a stick), beside the
        // signer that `actor` names.
        if let Some(by) = t.details.get("by") {
            details["by"] = by.clone();
        }
        if let Some(e) = error {
            details["error"] = Value::String(e.to_owned());
        }
        Self::append_audit(
            tx,
            &AuditEvent {
                generation: t.to_gen,
                event: t.phase.as_str(),
                actor: &t.actor,
                details,
            },
        )
    }

    // ---- activations ----------------------------------------------------------

    pub fn insert_activation(
        tx: &Transaction<'_>,
        transition: i64,
        seq: u64,
        step: &Value,
        undo: &Value,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT OR REPLACE INTO activations (transition, seq, step, undo) VALUES (?1, ?2, ?3, ?4)",
            params![transition, seq as i64, step.to_string(), undo.to_string()],
        )?;
        Ok(())
    }

    pub fn mark_activation(
        tx: &Transaction<'_>,
        transition: i64,
        seq: u64,
        undone: bool,
    ) -> rusqlite::Result<()> {
        let col = if undone { "undone" } else { "done" };
        tx.execute(
            &format!("UPDATE activations SET {col} = 1 WHERE transition = ?1 AND seq = ?2"),
            params![transition, seq as i64],
        )?;
        Ok(())
    }

    /// Every firmware activation that ran: (transition phase, step, undo), oldest first.
    pub fn firmware_activations(&self) -> Result<Vec<(Phase, Value, Value)>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT t.phase, a.step, a.undo FROM activations a JOIN transitions t ON t.id = a.transition
                 WHERE json_extract(a.step, '$.id.kind') = 'firmware' AND a.done = 1
                 ORDER BY a.transition, a.seq",
            )
            .map_err(self.err())?;
        let rows: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .filter_map(|(phase, step, undo)| {
                Some((
                    phase.parse().ok()?,
                    serde_json::from_str(&step).ok()?,
                    serde_json::from_str(&undo).ok()?,
                ))
            })
            .collect())
    }

    pub fn activations(&self, transition: i64) -> Result<Vec<ActivationRow>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, step, undo, done, undone FROM activations WHERE transition = ?1 ORDER BY seq")
            .map_err(self.err())?;
        let rows: Vec<(i64, String, String, i64, i64)> = stmt
            .query_map([transition], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(self.err())?;
        rows.into_iter()
            .map(|(seq, step, undo, done, undone)| {
                let parse = |s: &str| {
                    serde_json::from_str(s).map_err(|e| StateError::Invalid {
                        path: self.path.clone(),
                        message: format!("activation {transition}/{seq}: {e}"),
                    })
                };
                Ok(ActivationRow {
                    seq: seq as u64,
                    step: parse(&step)?,
                    undo: parse(&undo)?,
                    done: done != 0,
                    undone: undone != 0,
                })
            })
            .collect()
    }

    // ---- originals ------------------------------------------------------------
    // What was at a resource's place before ferry first managed it (e.g. a
    // configuration file shipped by the OS), as the activator's undo record;
    // removing the resource restores it.

    pub fn insert_original(
        tx: &Transaction<'_>,
        kind: &str,
        name: &str,
        undo: &Value,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT OR IGNORE INTO originals (kind, name, undo) VALUES (?1, ?2, ?3)",
            params![kind, name, undo.to_string()],
        )?;
        Ok(())
    }

    pub fn delete_original(tx: &Transaction<'_>, kind: &str, name: &str) -> rusqlite::Result<()> {
        tx.execute(
            "DELETE FROM originals WHERE kind = ?1 AND name = ?2",
            params![kind, name],
        )?;
        Ok(())
    }

    pub fn original(&self, kind: &str, name: &str) -> Result<Option<Value>, StateError> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT undo FROM originals WHERE kind = ?1 AND name = ?2",
                params![kind, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StateError::Invalid {
                path: self.path.clone(),
                message: format!("original of {kind} {name}: {e}"),
            })
        })
        .transpose()
    }

    /// Every recorded original: (kind, undo record).
    pub fn originals(&self) -> Result<Vec<(String, Value)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, undo FROM originals")
            .map_err(self.err())?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(self.err())?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, u)| serde_json::from_str(&u).ok().map(|u| (k, u)))
            .collect())
    }

    // ---- audit ------------------------------------------------------------------

    /// Appends an audit entry inside `tx`, chaining it to the recorded head.
    pub fn append_audit(tx: &Transaction<'_>, ev: &AuditEvent<'_>) -> rusqlite::Result<()> {
        let head_seq: u64 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'audit_head_seq'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let prev_hash: Sha256 = tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'audit_head_hash'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(Sha256::ZERO);
        let entry = AuditEntry {
            seq: head_seq + 1,
            time_ms: now_ms(),
            generation: ev.generation,
            event: ev.event.to_owned(),
            actor: ev.actor.to_owned(),
            details: ev.details.clone(),
        };
        let hash = entry.chain_hash(&prev_hash);
        tx.execute(
            "INSERT INTO audit (seq, time_ms, generation, event, actor, details, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                entry.seq as i64,
                entry.time_ms,
                entry.generation.map(|g| g as i64),
                entry.event,
                entry.actor,
                entry.details.to_string(),
                hash.to_hex()
            ],
        )?;
        meta_set(tx, "audit_head_seq", &entry.seq.to_string())?;
        meta_set(tx, "audit_head_hash", &hash.to_hex())?;
        // The same event to journald (or stderr), with structured fields.
        tracing::info!(
            target: "ferry::audit",
            seq = entry.seq,
            event = %entry.event,
            generation = entry.generation,
            actor = %entry.actor,
            details = %entry.details,
            "{}",
            entry.event
        );
        Ok(())
    }

    /// All audit entries with their stored hashes, oldest first.
    pub fn audit_entries(&self) -> Result<Vec<(AuditEntry, String)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, time_ms, generation, event, actor, details, hash FROM audit ORDER BY seq")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], audit_row)
            .and_then(|rows| rows.collect())
            .map_err(self.err())?;
        Ok(rows)
    }

    /// At most `limit` audit entries after `after`, oldest first, with
    /// their stored hashes, and the chain hash the first one follows (its
    /// predecessor's, the pruning checkpoint's, or zero for entry 1).
    pub fn audit_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRow>, Option<String>), StateError> {
        let rows = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT seq, time_ms, generation, event, actor, details, hash FROM audit
                     WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(self.err())?;
            stmt.query_map(params![after as i64, limit as i64], audit_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(self.err())?
        };
        let Some(first) = rows.first().map(|(e, _)| e.seq) else {
            return Ok((rows, None));
        };
        let prev = if first == 1 {
            Some(ferry_core::digest::Sha256::ZERO.to_hex())
        } else {
            let stored: Option<String> = self
                .conn
                .query_row(
                    "SELECT hash FROM audit WHERE seq = ?1",
                    [(first - 1) as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err())?;
            match stored {
                Some(h) => Some(h),
                None => self
                    .audit_base()?
                    .filter(|(seq, _)| *seq == first - 1)
                    .map(|(_, h)| h),
            }
        };
        Ok((rows, prev))
    }

    /// The checkpoint of a pruned audit prefix: seq and chain hash of the
    /// last entry removed.
    pub fn audit_base(&self) -> Result<Option<(u64, String)>, StateError> {
        let seq = self.meta_u64("audit_base_seq")?;
        let hash = self.meta_get("audit_base_hash")?;
        Ok(seq.zip(hash))
    }

    /// Deletes what nothing needs any more, in one SQLite transaction:
    /// settled transitions (and their activations) beyond the newest
    /// `keep_transitions`, except the newest firmware install of each slot
    /// (`firmware status` names the image from it); and audit entries
    /// beyond the newest `keep_audit`, once at least `keep_audit / 10` are
    /// due. The audit chain stays verifiable: the seq and chain hash of the
    /// last entry removed become the checkpoint it is verified from, and an
    /// `audit-pruned` entry (itself chained) records that checkpoint.
    pub fn prune(
        &mut self,
        keep_transitions: usize,
        keep_audit: u64,
    ) -> Result<Pruned, StateError> {
        let err = self.err();
        let settled: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT id FROM transitions WHERE phase IN ('confirmed', 'rolled-back', 'failed')
                     ORDER BY id DESC LIMIT -1 OFFSET ?1",
                )
                .map_err(&err)?;
            stmt.query_map([keep_transitions as i64], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(&err)?
        };
        // The newest done firmware install per target slot.
        let firmware: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT MAX(transition) FROM activations
                     WHERE json_extract(step, '$.id.kind') = 'firmware' AND done = 1
                     GROUP BY json_extract(undo, '$.target')",
                )
                .map_err(&err)?;
            stmt.query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(&err)?
        };
        let doomed: Vec<i64> = settled
            .into_iter()
            .filter(|t| !firmware.contains(t))
            .collect();
        let head = self.meta_u64("audit_head_seq")?.unwrap_or(0);
        let base = self.meta_u64("audit_base_seq")?.unwrap_or(0);
        let through = head.saturating_sub(keep_audit);
        let prune_audit = through > base && through - base >= (keep_audit / 10).max(1);
        drop(err);
        let mut out = Pruned::default();
        if doomed.is_empty() && !prune_audit {
            return Ok(out);
        }
        self.with_tx(|tx| {
            for t in &doomed {
                tx.execute("DELETE FROM activations WHERE transition = ?1", [t])?;
                tx.execute("DELETE FROM transitions WHERE id = ?1", [t])?;
            }
            out.transitions = doomed.len();
            if prune_audit {
                let hash: String = tx.query_row(
                    "SELECT hash FROM audit WHERE seq = ?1",
                    [through as i64],
                    |r| r.get(0),
                )?;
                let deleted = tx.execute("DELETE FROM audit WHERE seq <= ?1", [through as i64])?;
                meta_set(tx, "audit_base_seq", &through.to_string())?;
                meta_set(tx, "audit_base_hash", &hash)?;
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation: None,
                        event: "audit-pruned",
                        actor: "ferry",
                        details: serde_json::json!({
                            "through_seq": through,
                            "through_hash": hash,
                            "entries": deleted,
                            "transitions": doomed.len(),
                        }),
                    },
                )?;
                out.audit_entries = deleted;
            }
            Ok(out)
        })
    }

    /// The recorded head `(seq, hash)` of the audit chain.
    pub fn audit_head(&self) -> Result<Option<(u64, String)>, StateError> {
        let seq = self.meta_u64("audit_head_seq")?;
        let hash = self.meta_get("audit_head_hash")?;
        Ok(seq.zip(hash))
    }
}

/// An audit entry with its stored chain hash (hex).
pub type AuditRow = (AuditEntry, String);

/// An audit row (`seq, time_ms, generation, event, actor, details, hash`).
fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    let details: String = r.get(5)?;
    let entry = AuditEntry {
        seq: r.get::<_, i64>(0)? as u64,
        time_ms: r.get(1)?,
        generation: r.get::<_, Option<i64>>(2)?.map(|g| g as u64),
        event: r.get(3)?,
        actor: r.get(4)?,
        // Unparseable details cannot match the hash: keep them as a
        // string so verification names this entry.
        details: serde_json::from_str(&details).unwrap_or(Value::String(details)),
    };
    Ok((entry, r.get::<_, String>(6)?))
}

fn rejection_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rejection> {
    Ok(Rejection {
        revision: r.get(0)?,
        time_ms: r.get(1)?,
        actor: r.get(2)?,
        reason: r.get(3)?,
    })
}

fn meta_set(tx: &Transaction<'_>, key: &str, value: &str) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn meta_set_opt(tx: &Transaction<'_>, key: &str, value: Option<u64>) -> rusqlite::Result<()> {
    match value {
        Some(v) => meta_set(tx, key, &v.to_string()),
        None => tx
            .execute("DELETE FROM meta WHERE key = ?1", [key])
            .map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_opens_migrate_once() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("state.db");
            // Create the empty file, as a first `Db::open(.., true)` does.
            drop(Connection::open(&p).unwrap());
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let p = p.clone();
                    std::thread::spawn(move || Db::open(&p, false).map(drop))
                })
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn migrates_and_refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        drop(Db::open(&p, true).unwrap());
        {
            let c = Connection::open(&p).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let e = Db::open(&p, false).unwrap_err();
        assert!(matches!(e, StateError::TooNew { found: 99, .. }), "{e}");
    }

    #[test]
    fn the_rejected_revision_of_an_older_schema_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            // The schema before rejections had a table: one meta key.
            let mut c = Connection::open(&p).unwrap();
            let tx = c.transaction().unwrap();
            for sql in &MIGRATIONS[..3] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 3).unwrap();
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('rejected_revision', 'rev-7')",
                [],
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let mut db = Db::open(&p, true).unwrap();
        let r = db.rejection("rev-7").unwrap().unwrap();
        assert_eq!((r.actor.as_str(), r.time_ms), ("agent", 0));
        assert_eq!(db.meta_get("rejected_revision").unwrap(), None);
        // More than the bound: the oldest go first.
        db.with_tx(|tx| {
            for i in 0..MAX_REJECTED + 3 {
                Db::insert_rejection(
                    tx,
                    &Rejection {
                        revision: format!("r{i}"),
                        time_ms: 1000 + i as i64,
                        actor: "agent".into(),
                        reason: "x".into(),
                    },
                )?;
            }
            Ok(())
        })
        .unwrap();
        let all = db.rejections().unwrap();
        assert_eq!(all.len(), MAX_REJECTED);
        assert_eq!(all[0].revision, format!("r{}", MAX_REJECTED + 2));
        assert!(db.rejection("rev-7").unwrap().is_none());
        assert!(!db.with_tx(|tx| Db::delete_rejection(tx, "r300")).unwrap());
        assert!(db.with_tx(|tx| Db::delete_rejection(tx, "r258")).unwrap());
    }

    #[test]
    fn garbage_file_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        std::fs::write(&p, vec![0x5a; 8192]).unwrap();
        let e = Db::open(&p, false).unwrap_err();
        assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("corrupt"), "{e}");
    }

    #[test]
    fn audit_chain_appends_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("state.db"), true).unwrap();
        for i in 0..3 {
            db.with_tx(|tx| {
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation: Some(i),
                        event: "test",
                        actor: "ferry",
                        details: serde_json::json!({"i": i}),
                    },
                )
            })
            .unwrap();
        }
        let entries = db.audit_entries().unwrap();
        let hashes: Vec<Sha256> = entries.iter().map(|(_, h)| h.parse().unwrap()).collect();
        let (seq, head) = db.audit_head().unwrap().unwrap();
        let n = ferry_core::audit::verify_chain(
            entries.iter().map(|(e, _)| e).zip(hashes.iter()),
            None,
            Some((seq, head.parse().unwrap())),
        )
        .unwrap();
        assert_eq!(n, 3);
    }
}
