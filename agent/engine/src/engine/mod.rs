//! The engine: apply, rollback, gc and `recover()`, one file per
//! operation ([`apply`], [`rollback`], [`gc`], [`recover`], [`query`], and
//! the [`firmware`] follow-up).
//!
//! Each step is recorded durably in the state database *before* its side
//! effect, so that `recover()` (run at every read-write open, under the state
//! directory's lock) can finish or undo whatever a crash interrupted. The
//! decision for each phase is the pure `Phase::recovery` in ferry-core.

mod apply;
#[cfg(feature = "delta")]
mod delta;
/// Without delta updates every image is fetched whole.
#[cfg(not(feature = "delta"))]
#[path = "no_delta.rs"]
mod delta;
mod drift;
pub use delta::estimate_deltas;
pub use drift::Found;
mod firmware;
mod gc;
mod query;
mod recover;
mod rollback;
mod verify;
pub use query::{HashedEntries, ReportState};
pub use verify::VerifyReport;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fail::fail_point;
use ferry_core::audit::{AuditEntry, ChainError, verify_chain};
use ferry_core::{
    Kind, Op, Phase, Plan, RecoveryAction, ResourceSet, Sha256, Step, TransitionKind, plan,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::activate::file::FileActivator;
use crate::activate::firmware::{FirmwareActivator, FirmwareUndo};
use crate::activate::{ActivateError, Activators};
use crate::config::Config;
use crate::error::EngineError;
#[cfg_attr(not(feature = "failpoints"), allow(unused_imports))]
use crate::failpoints as fp;
use crate::render::facts::Facts;
use crate::render::manifest::{self, Content, ResolvedManifest};
use crate::store::Store;
use crate::store::generations::{GenerationManifest, Generations};
use crate::store::state::{
    AuditEvent, Check, Db, GenerationRow, NewGeneration, Rejection, TransitionRow,
};
use ferry_source::{Source, Verified, VerifiedRevision};

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// The actor recorded for commands run by an operator on the device.
pub const LOCAL_OPERATOR: &str = "local-operator";

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum ApplyOutcome {
    /// Nothing to do: the desired state is what runs.
    NoChange {
        generation: Option<u64>,
        revision: String,
    },
    /// Firmware was written into `slot`; the transition completes after a
    /// reboot into it (or is rolled back if the bootloader falls back).
    RebootRequired {
        transition: i64,
        from: Option<u64>,
        to: u64,
        revision: String,
        slot: String,
    },
    /// Drift was put back; the generation stays current.
    Restored {
        transition: i64,
        generation: u64,
        revision: String,
        restored: usize,
    },
    /// A new generation (apply) or an older one (rollback) is current.
    Switched {
        transition: i64,
        from: Option<u64>,
        to: u64,
        revision: String,
        added: usize,
        changed: usize,
        removed: usize,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcOutcome {
    pub generations: Vec<u64>,
    pub blobs: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state_dir: PathBuf,
    pub current: Option<GenerationRow>,
    pub previous: Option<u64>,
    /// What the `current` link points to (equal to `current` unless a crash is pending recovery).
    pub current_link: Option<u64>,
    pub resources: usize,
    pub generations: usize,
    pub last_transition: Option<TransitionRow>,
    pub open_transitions: Vec<TransitionRow>,
    /// The firmware slot an open transition waits to boot into.
    pub awaiting_reboot: Option<String>,
    pub audit_entries: u64,
    /// Revisions rolled back after failing their health checks, newest
    /// first: not applied again unless an operator forces one.
    pub rejected: Vec<Rejection>,
    /// Managed resources found changed on the device and not restored (yet,
    /// or by policy `report`), as the last reconcile or plan found them.
    pub drift: Vec<crate::store::state::DriftRow>,
}

/// Rule sets by resource name.
pub type NamedRulesets = Vec<(String, ferry_rules::Compiled)>;

/// The current generation's rule sets and the field sources they and
/// ferry.toml configure together.
#[derive(Debug, Default)]
pub struct ActiveRules {
    pub generation: Option<u64>,
    pub sets: NamedRulesets,
    pub ingest: ferry_ingest::Plan,
}

#[derive(Debug)]
pub struct Engine {
    config: Config,
    state_dir: PathBuf,
    db: Db,
    store: Store,
    gens: Generations,
    activators: Activators,
    /// The exclusive lock on the state directory (read-write engines only).
    _lock: Option<File>,
    /// Opened at early boot: leave firmware confirmation for later.
    early: bool,
    /// The running agent's watch saw no change to the managed paths since
    /// before the last full drift check ([`Engine::assume_files_unchanged`]).
    files_unchanged: bool,
}

impl Engine {
    /// Opens the state directory for changes: creates it, takes its lock,
    /// opens the database and runs `recover()`.
    pub fn open(config: Config) -> Result<Engine> {
        Self::open_with(config, false)
    }

    /// Like `open`, for early boot (before services run): a firmware update
    /// waiting for confirmation is left alone, because its health checks
    /// need the system up. A later `ferry recover` (or any change) decides it.
    pub fn open_early(config: Config) -> Result<Engine> {
        Self::open_with(config, true)
    }

    pub(super) fn open_with(config: Config, early: bool) -> Result<Engine> {
        let state_dir = config.state_dir.clone();
        // Owner-only at every open, not just at creation: a pre-existing
        // 0755 directory exposed state.db and blobs rendered from secrets.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)
            .map_err(|e| EngineError::io("cannot create state directory", &state_dir, e))?;
        if let Some(was) = ferry_fs::private_dir(&state_dir)
            .map_err(|e| EngineError::io("cannot secure the state directory", &state_dir, e))?
        {
            tracing::warn!(state_dir = %state_dir.display(), "state directory had mode {was:04o}; set to 0700");
        }
        let lock_path = state_dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| EngineError::io("cannot write to state directory", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(EngineError::Locked(state_dir)),
            Err(fs::TryLockError::Error(e)) => {
                return Err(EngineError::io("cannot lock", &lock_path, e));
            }
        }
        // The full integrity check once per boot (recover --early), the
        // quick one otherwise: the full one grows with the database.
        let check = if early { Check::Full } else { Check::Quick };
        // Owner-only, before SQLite opens them: SQLite's locks are POSIX
        // record locks, which a process loses when it closes *any*
        // descriptor of the file. Opening state.db or its -shm here after
        // the connection would drop them, and the next reader would reset
        // the shared index under this process's transactions. SQLite makes
        // the -wal and -shm files with the database's mode, so a database
        // created here empty (a valid empty SQLite database) starts them
        // owner-only too.
        let db_path = state_dir.join("state.db");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&db_path)
            .map_err(|e| EngineError::io("cannot create", &db_path, e))?;
        for name in ["state.db", "state.db-wal", "state.db-shm", "lock"] {
            let p = state_dir.join(name);
            ferry_fs::restrict_file(&p, 0o600)
                .map_err(|e| EngineError::io("cannot restrict", &p, e))?;
        }
        let db = Db::open_checked(&db_path, true, check)?;
        let store = Store::open(state_dir.join("store"))
            .map_err(|e| EngineError::io("cannot create store", state_dir.join("store"), e))?;
        let gens = Generations::open(&state_dir)
            .map_err(|e| EngineError::io("cannot create", state_dir.join("generations"), e))?;
        let mut engine = Engine {
            activators: default_activators(&config),
            config,
            state_dir,
            db,
            store,
            gens,
            _lock: Some(lock),
            early: false,
            files_unchanged: false,
        };
        engine.early = early;
        engine.recover()?;
        Ok(engine)
    }

    /// Appends the entries the agent left in the audit spool
    /// ([`crate::store::spool`]); a failure is logged, never fatal (they
    /// wait for the next drain). Returns how many were appended.
    pub fn drain_audit_spool(&mut self) -> usize {
        match crate::store::spool::drain(&mut self.db, &self.state_dir) {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(entries = n, "audit spool drained");
                }
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, "the audit spool was not drained");
                0
            }
        }
    }

    /// Opens the state directory for reading only (no lock, no recovery).
    /// `None` when nothing was ever applied there.
    pub fn open_read_only(config: Config) -> Result<Option<Engine>> {
        let state_dir = config.state_dir.clone();
        let db_path = state_dir.join("state.db");
        if !db_path.exists() {
            return Ok(None);
        }
        let db = Db::open(&db_path, false)?;
        let store = Store::open(state_dir.join("store"))
            .map_err(|e| EngineError::io("cannot open store", state_dir.join("store"), e))?;
        let gens = Generations::open(&state_dir)
            .map_err(|e| EngineError::io("cannot open", state_dir.join("generations"), e))?;
        Ok(Some(Engine {
            activators: default_activators(&config),
            config,
            state_dir,
            db,
            store,
            gens,
            _lock: None,
            early: false,
            files_unchanged: false,
        }))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends an audit entry at the current generation (e.g. `imported`).
    pub fn audit(&mut self, event: &str, actor: &str, details: serde_json::Value) -> Result<()> {
        self.audit_refusal(event, actor, details)
    }

    pub(super) fn advance(
        &mut self,
        t: &mut TransitionRow,
        to: Phase,
        error: Option<&str>,
    ) -> Result<()> {
        self.advance_with(t, to, error, |_| Ok(()))
    }

    /// Moves `t` to `to`, committing `extra` and the audit entry with it.
    pub(super) fn advance_with(
        &mut self,
        t: &mut TransitionRow,
        to: Phase,
        error: Option<&str>,
        extra: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>,
    ) -> Result<()> {
        t.phase.advance(t.kind, to)?;
        let released = if to == Phase::Confirmed {
            self.removed_originals(t)?
        } else {
            Vec::new()
        };
        self.db.with_tx(|tx| {
            extra(tx)?;
            for (kind, name) in &released {
                Db::delete_original(tx, kind, name)?;
            }
            Db::set_phase(tx, t, to, error)
        })?;
        Ok(())
    }

    /// Best effort: records that `t` failed before activation.
    pub(super) fn fail(&mut self, t: &mut TransitionRow, e: &EngineError) {
        if let Err(e2) = self.advance(t, Phase::Failed, Some(&e.to_string())) {
            tracing::error!(transition = t.id, error = %e2, "could not record failure; recover() will at next start");
        }
    }

    // ---- read-only views ------------------------------------------------------------------
}

/// Fetches `revision` (default: the newest) of `source` and resolves its
/// desired state for the device described by `facts`. Changes nothing.
pub fn resolve_source(
    source: &dyn Source,
    revision: Option<&str>,
    facts: &Facts,
) -> Result<(Arc<dyn VerifiedRevision>, ResolvedManifest)> {
    let rev = match revision {
        Some(r) => source.fetch_revision(r)?,
        None => source.fetch()?,
    };
    let desired = manifest::load(&rev, source.manifest_path(), facts)?;
    Ok((rev, desired))
}

/// `resolve_source`, then the plan against `actual`. Changes nothing.
pub fn plan_source(
    source: &dyn Source,
    revision: Option<&str>,
    facts: &Facts,
    actual: &ResourceSet,
) -> Result<(Arc<dyn VerifiedRevision>, ResolvedManifest, Plan)> {
    let (rev, desired) = resolve_source(source, revision, facts)?;
    let p = plan(&desired.resources, actual);
    Ok((rev, desired, p))
}

pub(super) fn default_activators(config: &Config) -> Activators {
    let fw = crate::activate::firmware::Firmware::from_config(&config.firmware);
    #[cfg_attr(not(feature = "wasm"), allow(unused_mut))]
    let mut activators: Vec<Box<dyn crate::activate::Activator>> = vec![
        Box::new(FileActivator::new(&config.files.root)),
        Box::new(crate::activate::ruleset::RulesetActivator {
            // A ferry.toml whose sources do not plan was refused when it
            // was loaded.
            base: config.rules.ingest().unwrap_or_default(),
        }),
        Box::new(FirmwareActivator::new(fw)),
    ];
    #[cfg(feature = "wasm")]
    activators.push(Box::new(crate::activate::wasm::WasmActivator::new(
        &config.state_dir,
        &config.wasm,
    )));
    Activators::new(activators)
}

/// The firmware step of `t` whose new slot awaits a reboot, if any: done,
/// not undone, in a transition that reached `switched`.
pub(super) fn pending_firmware(db: &Db, t: &TransitionRow) -> Result<Option<FirmwareUndo>> {
    if t.phase != Phase::Switched {
        return Ok(None);
    }
    for a in db.activations(t.id)? {
        if a.kind() == Some(Kind::Firmware) && a.done && !a.undone && !a.undo.is_null() {
            let undo: FirmwareUndo = serde_json::from_value(a.undo).map_err(|e| {
                EngineError::Refused(format!("transition {}: firmware record: {e}", t.id))
            })?;
            return Ok(Some(undo));
        }
    }
    Ok(None)
}

/// The plan as recorded in a transition and its audit entry.
pub(super) fn plan_summary(p: &Plan) -> Value {
    let (added, changed, removed) = p.counts();
    json!({
        "added": added,
        "changed": changed,
        "removed": removed,
        "steps": p.steps.iter().map(|s| json!({
            "op": s.verb(),
            "kind": s.id.kind.as_str(),
            "name": s.id.name,
            "reasons": s.describe_reasons(),
        })).collect::<Vec<_>>(),
    })
}
