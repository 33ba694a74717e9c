//! Apply, rollback, gc and `recover()`.
//!
//! Each step is recorded durably in the state database *before* its side
//! effect, so that `recover()` (run at every read-write open, under the state
//! directory's lock) can finish or undo whatever a crash interrupted. The
//! decision for each phase is the pure `Phase::recovery` in ferry-core.

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
use crate::facts::Facts;
#[cfg_attr(not(feature = "failpoints"), allow(unused_imports))]
use crate::failpoints as fp;
use crate::generations::{GenerationManifest, Generations};
use crate::manifest::{self, Content, ResolvedManifest};
use crate::state::{AuditEvent, Check, Db, GenerationRow, NewGeneration, TransitionRow};
use crate::store::Store;
use ferry_source::{Source, VerifiedRevision};

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
}

/// Rule sets by resource name.
pub type NamedRulesets = Vec<(String, ferry_rules::Compiled)>;

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

    fn open_with(config: Config, early: bool) -> Result<Engine> {
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
        let db = Db::open_checked(&state_dir.join("state.db"), true, check)?;
        for name in ["state.db", "state.db-wal", "state.db-shm", "lock"] {
            let p = state_dir.join(name);
            ferry_fs::restrict_file(&p, 0o600)
                .map_err(|e| EngineError::io("cannot restrict", &p, e))?;
        }
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
        };
        engine.early = early;
        engine.recover()?;
        Ok(engine)
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

    /// The current generation's number and its rule sets, compiled, in
    /// name order (what the rule engine runs).
    pub fn active_rulesets(&self) -> Result<(Option<u64>, NamedRulesets)> {
        let Some(n) = self.db.current_generation()? else {
            return Ok((None, Vec::new()));
        };
        let mut sets = Vec::new();
        for r in self
            .db
            .resources(n)?
            .iter()
            .filter(|r| r.kind == Kind::Ruleset)
        {
            let compiled = crate::activate::ruleset::load(&self.store, &r.name, r.content)?;
            sets.push((r.name.clone(), compiled));
        }
        Ok((Some(n), sets))
    }

    /// The current generation's number and its `wasm` resources, in name
    /// order (what the module host serves).
    pub fn active_modules(&self) -> Result<(Option<u64>, Vec<ferry_core::Resource>)> {
        let Some(n) = self.db.current_generation()? else {
            return Ok((None, Vec::new()));
        };
        let modules = self
            .db
            .resources(n)?
            .iter()
            .filter(|r| r.kind == Kind::Wasm)
            .cloned()
            .collect();
        Ok((Some(n), modules))
    }

    // ---- planning -----------------------------------------------------------------

    /// The resources of the current generation.
    pub fn actual(&self) -> Result<ResourceSet> {
        Ok(match self.db.current_generation()? {
            Some(n) => self.db.resources(n)?,
            None => ResourceSet::new(),
        })
    }

    /// Fetches and resolves the desired state of `source`, and plans it.
    pub fn plan(
        &self,
        source: &dyn Source,
        revision: Option<&str>,
        facts: &Facts,
    ) -> Result<(Arc<dyn VerifiedRevision>, ResolvedManifest, Plan)> {
        plan_source(source, revision, facts, &self.actual()?)
    }

    // ---- apply ----------------------------------------------------------------------

    /// One reconcile: fetch, verify, plan, and if anything changed, stage,
    /// build a generation, activate and switch.
    ///
    /// A revision the source refuses (bad signatures, rollback, expiry) or
    /// whose manifest is invalid is audited; nothing else changes.
    pub fn apply(&mut self, source: &dyn Source, facts: &Facts) -> Result<ApplyOutcome> {
        let (rev, desired) = self.fetch_desired(source, facts)?;
        self.apply_desired(&*rev, &desired)
    }

    /// Fetches, verifies and resolves the newest revision; refusals are
    /// audited (see [`Engine::apply`]).
    pub fn fetch_desired(
        &mut self,
        source: &dyn Source,
        facts: &Facts,
    ) -> Result<(Arc<dyn VerifiedRevision>, ResolvedManifest)> {
        let rev = match source.fetch() {
            Ok(rev) => rev,
            Err(e) => {
                if let Some(details) = e.audit_details() {
                    self.audit_refusal("source-refused", source.refusal_actor(), details)?;
                }
                return Err(e.into());
            }
        };
        // A verified move of the source's trust state (git: the accepted
        // commit) is audited before it is made, changes or not.
        if let Some(details) = rev.acceptance() {
            self.audit("source-accepted", rev.actor(), details)?;
            rev.accept()?;
        }
        let desired = match manifest::load(&rev, source.manifest_path(), facts) {
            Ok(d) => d,
            Err(e) => {
                let details = json!({"revision": rev.id(), "source": rev.source_name(), "error": e.to_string()});
                self.audit_refusal("revision-refused", rev.actor(), details)?;
                return Err(e.into());
            }
        };
        self.check_sigstore(&*rev, &desired)?;
        Ok((rev, desired))
    }

    /// Verifies the Sigstore bundles `[[sigstore.require]]` asks for; a
    /// refusal is audited like any refused revision, naming the resource,
    /// the bundle and the failed check.
    fn check_sigstore(
        &mut self,
        rev: &dyn VerifiedRevision,
        desired: &ResolvedManifest,
    ) -> Result<()> {
        if self.config.sigstore.require.is_empty() {
            return Ok(());
        }
        let policy =
            crate::fetch::sigstore::Policy::from_config(&self.config.sigstore).map_err(|e| {
                crate::config::ConfigError::Invalid {
                    key: "sigstore",
                    message: e.to_string(),
                }
            })?;
        match policy.check(rev, desired) {
            Ok(verified) => {
                // Which identity signed, where it was logged and what
                // vouched for the time of signing, for every resource.
                for (id, v) in verified {
                    tracing::info!(resource = %id, signer = %v.signer, log_index = v.log_index, "sigstore: verified");
                    self.audit(
                        "sigstore-verified",
                        rev.actor(),
                        json!({
                            "revision": rev.id(),
                            "resource": id.to_string(),
                            "kind": v.kind,
                            "signer": v.signer,
                            "issuer": v.issuer,
                            "log": v.log,
                            "log_index": v.log_index,
                            "signed_time": v.signed_time,
                            "time_sources": v.time_sources,
                        }),
                    )?;
                }
                Ok(())
            }
            Err(crate::fetch::sigstore::CheckError::Source(e)) => {
                if e.is_revision_at_fault() {
                    let details = json!({"revision": rev.id(), "source": rev.source_name(), "error": e.to_string()});
                    self.audit_refusal("revision-refused", rev.actor(), details)?;
                }
                Err(e.into())
            }
            Err(crate::fetch::sigstore::CheckError::Refused(r)) => {
                let details = json!({
                    "revision": rev.id(),
                    "source": rev.source_name(),
                    "resource": r.resource.to_string(),
                    "bundle": r.bundle,
                    "check": r.error.check(),
                    "error": r.to_string(),
                });
                self.audit_refusal("revision-refused", rev.actor(), details)?;
                Err(ferry_source::SourceError::untrusted(
                    rev.source_name(),
                    r.resource.to_string(),
                    r.reason(),
                )
                .into())
            }
        }
    }

    /// The revision rolled back after failing its health checks, if any.
    pub fn rejected_revision(&self) -> Result<Option<String>> {
        Ok(self.db.rejected_revision()?)
    }

    /// Remembers `revision` as rejected (not retried until another revision
    /// arrives) and audits why.
    pub fn reject_revision(&mut self, revision: &str, actor: &str, reason: &str) -> Result<()> {
        let generation = self.db.current_generation()?;
        self.db.with_tx(|tx| {
            Db::set_rejected_revision(tx, revision)?;
            Db::append_audit(
                tx,
                &AuditEvent {
                    generation,
                    event: "revision-rejected",
                    actor,
                    details: json!({"revision": revision, "reason": reason}),
                },
            )
        })?;
        Ok(())
    }

    /// Appends an audit entry at the current generation (e.g. `imported`).
    pub fn audit(&mut self, event: &str, actor: &str, details: serde_json::Value) -> Result<()> {
        self.audit_refusal(event, actor, details)
    }

    fn audit_refusal(
        &mut self,
        event: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<()> {
        let generation = self.db.current_generation()?;
        self.db.with_tx(|tx| {
            Db::append_audit(
                tx,
                &AuditEvent {
                    generation,
                    event,
                    actor,
                    details,
                },
            )
        })?;
        Ok(())
    }

    pub fn apply_desired(
        &mut self,
        rev: &dyn VerifiedRevision,
        desired: &ResolvedManifest,
    ) -> Result<ApplyOutcome> {
        self.refuse_while_reboot_pending()?;
        let from = self.db.current_generation()?;
        let p = plan(&desired.resources, &self.actual()?);
        if p.is_empty() {
            // A no-change poll touches no blob and records no transition.
            return Ok(ApplyOutcome::NoChange {
                generation: from,
                revision: rev.id().to_owned(),
            });
        }
        for step in &p.steps {
            self.activators
                .get(step.id.kind)
                .map_err(|e| EngineError::Refused(e.to_string()))?;
        }
        let details = plan_summary(&p);
        let mut t = self.db.with_tx(|tx| {
            let n = Db::allocate_generation(tx)?;
            Db::insert_transition(
                tx,
                TransitionKind::Apply,
                from,
                Some(n),
                Some(rev.id()),
                rev.actor(),
                &details,
            )
        })?;
        fail_point!(fp::PLANNED);
        let staged = self.stage(&mut t, rev, desired, &p);
        self.complete(t, &p, staged)
    }

    fn stage(
        &mut self,
        t: &mut TransitionRow,
        rev: &dyn VerifiedRevision,
        desired: &ResolvedManifest,
        p: &Plan,
    ) -> Result<()> {
        self.advance(t, Phase::Staging, None)?;
        // Only what the plan installs: unchanged resources are in place (and
        // a firmware image that gc dropped is not fetched again).
        for r in p.steps.iter().filter_map(|s| s.to.as_ref()) {
            if self.store.contains(&r.content.sha256) {
                continue;
            }
            match &desired.contents[&r.id()] {
                Content::Source(path) => {
                    let what = format!("{path} ({})", r.id());
                    // Resume what an interrupted fetch left; a partial that
                    // fails verification is dropped and fetched again.
                    let offset = self.store.partial_len(&r.content);
                    let mut reader = rev.open_at(path, offset)?;
                    match self.store.put_at(&mut reader, offset, r.content, &what) {
                        Err(e) if offset > 0 && e.is_verification() => {
                            tracing::warn!(blob = %r.content.sha256, error = %e, "resumed blob failed verification; fetching it again");
                            let mut reader = rev.open(path)?;
                            self.store.put(&mut reader, r.content, &what)?;
                        }
                        other => {
                            other?;
                        }
                    }
                }
                Content::Rendered(bytes) => {
                    self.store
                        .put(&mut &bytes[..], r.content, &format!("rendered {}", r.id()))?;
                }
            }
        }
        let to = t.to_gen.expect("apply transitions have a target");
        let manifest = GenerationManifest {
            generation: to,
            revision: rev.id().to_owned(),
            source: rev.source_name().to_owned(),
            resources: desired.resources.clone(),
        };
        self.gens
            .build(&manifest)
            .map_err(|e| EngineError::io("cannot build generation", self.gens.path(to), e))?;
        let new = NewGeneration {
            id: to,
            revision: rev.id(),
            source: rev.source_name(),
            resources: &desired.resources,
        };
        self.advance_with(t, Phase::Staged, None, |tx| Db::insert_generation(tx, &new))
    }

    // ---- rollback -------------------------------------------------------------------

    /// Switches back to generation `to` (default: the previous one).
    pub fn rollback(&mut self, to: Option<u64>) -> Result<ApplyOutcome> {
        self.refuse_while_reboot_pending()?;
        let current = self.db.current_generation()?.ok_or_else(|| {
            EngineError::Refused("no generation is active; nothing to roll back".into())
        })?;
        let target = match to {
            Some(n) => n,
            None => self.db.previous_generation()?.ok_or_else(|| {
                EngineError::Refused("no previous generation to roll back to".into())
            })?,
        };
        if target == current {
            return Err(EngineError::Refused(format!(
                "generation {target} is already current"
            )));
        }
        let row = self.db.generation(target)?.ok_or_else(|| {
            EngineError::Refused(format!("generation {target} does not exist (collected?)"))
        })?;
        let desired = self.db.resources(target)?;
        let p = plan(&desired, &self.db.resources(current)?);
        let details = plan_summary(&p);
        let mut t = self.db.with_tx(|tx| {
            Db::insert_transition(
                tx,
                TransitionKind::Rollback,
                Some(current),
                Some(target),
                Some(&row.revision),
                LOCAL_OPERATOR,
                &details,
            )
        })?;
        fail_point!(fp::PLANNED);
        let staged = (|| {
            self.advance(&mut t, Phase::Staging, None)?;
            for r in p.steps.iter().filter_map(|s| s.to.as_ref()) {
                let in_place = || self.activators.get(r.kind).is_ok_and(|a| a.holds(r));
                if !self.store.contains(&r.content.sha256) && !in_place() {
                    return Err(crate::store::StoreError::Missing(r.content.sha256).into());
                }
            }
            if self.gens.read_manifest(target).is_err() {
                // Rebuild a damaged directory from the database (same content).
                let m = GenerationManifest {
                    generation: target,
                    revision: row.revision.clone(),
                    source: row.source.clone(),
                    resources: desired.clone(),
                };
                self.gens.build(&m).map_err(|e| {
                    EngineError::io("cannot rebuild generation", self.gens.path(target), e)
                })?;
            }
            self.advance(&mut t, Phase::Staged, None)
        })();
        self.complete(t, &p, staged)
    }

    /// The common end of apply and rollback: record a staging failure, or
    /// activate, switch and confirm.
    fn complete(
        &mut self,
        mut t: TransitionRow,
        p: &Plan,
        staged: Result<()>,
    ) -> Result<ApplyOutcome> {
        if let Err(e) = staged {
            self.fail(&mut t, &e);
            return Err(e);
        }
        fail_point!(fp::STAGED);
        let to = t
            .to_gen
            .expect("apply and rollback transitions have a target");
        self.activate_and_switch(&mut t, p, to)?;
        if let Some(fw) = pending_firmware(&self.db, &t)? {
            return Ok(ApplyOutcome::RebootRequired {
                transition: t.id,
                from: t.from_gen,
                to,
                revision: t.revision.clone().unwrap_or_default(),
                slot: fw.target,
            });
        }
        let (added, changed, removed) = p.counts();
        Ok(ApplyOutcome::Switched {
            transition: t.id,
            from: t.from_gen,
            to,
            revision: t.revision.clone().unwrap_or_default(),
            added,
            changed,
            removed,
        })
    }

    // ---- activation and switch --------------------------------------------------------

    fn activate_and_switch(&mut self, t: &mut TransitionRow, p: &Plan, to: u64) -> Result<()> {
        self.advance(t, Phase::Activating, None)?;
        for (seq, step) in p.steps.iter().enumerate() {
            if let Err(failure) = self.activate_step(t, seq as u64, step) {
                return Err(self.roll_back(t, failure));
            }
        }
        let from = t.from_gen;
        let previous_before = self.db.previous_generation()?;
        let seq = p.steps.len() as u64;
        let record = json!({"switch": {"from": from, "to": to, "previous": previous_before}});
        self.db
            .with_tx(|tx| Db::insert_activation(tx, t.id, seq, &record, &Value::Null))?;
        if let Err(e) = self.gens.switch(Some(to)) {
            let failure = ActivateError::new(format!("switch to generation {to}"), e);
            return Err(self.roll_back(t, failure));
        }
        let id = t.id;
        self.advance_with(t, Phase::Switched, None, |tx| {
            Db::set_current(tx, from, Some(to))?;
            Db::mark_activation(tx, id, seq, false)
        })?;
        fail_point!(fp::SWITCHED);
        if pending_firmware(&self.db, t)?.is_some() {
            // Confirmed only after the reboot into the new slot (recover()).
            return Ok(());
        }
        self.advance(t, Phase::Confirmed, None)
    }

    fn activate_step(
        &mut self,
        t: &TransitionRow,
        seq: u64,
        step: &Step,
    ) -> Result<(), ActivateError> {
        let act = self.activators.get(step.id.kind)?;
        let undo = act.prepare(step, &self.store)?;
        let record = serde_json::to_value(step).expect("steps serialise");
        let db_err = |e: crate::state::StateError| ActivateError::new(&step.id, e);
        let (kind, name) = (step.id.kind.as_str(), step.id.name.as_str());
        // Removing what ferry took over restores what was there before it.
        let original = match step.op {
            Op::Remove => self.db.original(kind, name).map_err(db_err)?,
            _ => None,
        };
        self.db
            .with_tx(|tx| {
                Db::insert_activation(tx, t.id, seq, &record, &undo)?;
                if step.op == Op::Add && act.is_original(&undo) {
                    Db::insert_original(tx, kind, name, &undo)?;
                }
                Ok(())
            })
            .map_err(db_err)?;
        fail_point!(fp::ACTIVATE_BEFORE_APPLY, |_| Err(ActivateError::new(
            &step.id,
            "injected failure (failpoint activate::before-apply)"
        )));
        let notes = match &original {
            Some(original) => {
                act.undo(step, original, &self.store)?;
                Value::Null
            }
            None => act.apply_noted(step, &self.store)?,
        };
        fail_point!(fp::ACTIVATE_AFTER_APPLY);
        let actor = t.actor.clone();
        // The `originals` row stays until the transition is confirmed: an
        // undo of this remove brings the managed content back, and a later
        // remove must again restore what the OS shipped.
        self.db
            .with_tx(|tx| {
                Db::mark_activation(tx, t.id, seq, false)?;
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation: t.to_gen,
                        event: "activated",
                        actor: &actor,
                        details: {
                            let mut d = json!({"transition": t.id, "op": step.op.as_str(), "kind": step.id.kind.as_str(), "resource": step.id.name});
                            if !notes.is_null() {
                                d["notes"] = notes.clone();
                            }
                            d
                        },
                    },
                )
            })
            .map_err(db_err)
    }

    /// Undoes the recorded activations of `t` after `failure`.
    fn roll_back(&mut self, t: &mut TransitionRow, failure: ActivateError) -> EngineError {
        let message = failure.to_string();
        if t.phase != Phase::RollingBack
            && let Err(e) = self.advance(t, Phase::RollingBack, Some(&message))
        {
            return e;
        }
        match self.undo_activations(t) {
            Ok(()) => {
                if let Err(e) = self.advance(t, Phase::RolledBack, None) {
                    return e;
                }
                let restored = match t.from_gen {
                    Some(n) => format!("generation {n}"),
                    None => "the state before any generation".to_owned(),
                };
                EngineError::RolledBack { failure, restored }
            }
            Err(undo) => EngineError::UndoFailed {
                failure: message,
                undo,
            },
        }
    }

    fn undo_activations(&mut self, t: &TransitionRow) -> Result<(), ActivateError> {
        let rows = self
            .db
            .activations(t.id)
            .map_err(|e| ActivateError::new("rollback", e))?;
        for row in rows.iter().rev().filter(|r| !r.undone) {
            let label;
            if let Some(sw) = row.step.get("switch") {
                let from = sw["from"].as_u64();
                let previous = sw["previous"].as_u64();
                label = format!(
                    "switch back to {}",
                    from.map_or("nothing".to_owned(), |n| format!("generation {n}"))
                );
                self.gens
                    .switch(from)
                    .map_err(|e| ActivateError::new(&label, e))?;
                self.db
                    .with_tx(|tx| {
                        // Restore exactly the current/previous pair from before the switch.
                        Db::restore_current(tx, from, previous)?;
                        Db::mark_activation(tx, t.id, row.seq, true)
                    })
                    .map_err(|e| ActivateError::new(&label, e))?;
            } else {
                let step: Step = serde_json::from_value(row.step.clone()).map_err(|e| {
                    ActivateError::new("rollback", format!("activation record {}: {e}", row.seq))
                })?;
                label = step.id.to_string();
                let act = self.activators.get(step.id.kind)?;
                act.undo(&step, &row.undo, &self.store)?;
                let actor = t.actor.clone();
                self.db
                    .with_tx(|tx| {
                        if step.op == Op::Add {
                            // The take-over is undone: what is there is unmanaged again.
                            Db::delete_original(tx, step.id.kind.as_str(), &step.id.name)?;
                        }
                        Db::mark_activation(tx, t.id, row.seq, true)?;
                        Db::append_audit(
                            tx,
                            &AuditEvent {
                                generation: t.from_gen,
                                event: "undone",
                                actor: &actor,
                                details: json!({"transition": t.id, "op": step.op.as_str(), "kind": step.id.kind.as_str(), "resource": step.id.name}),
                            },
                        )
                    })
                    .map_err(|e| ActivateError::new(&label, e))?;
            }
            fail_point!(fp::UNDO_AFTER_STEP);
        }
        Ok(())
    }

    // ---- firmware ------------------------------------------------------------------

    /// The firmware undo records of `t`'s activations.
    fn firmware_records(&self, t: &TransitionRow) -> Result<Vec<FirmwareUndo>> {
        Ok(self
            .db
            .activations(t.id)?
            .into_iter()
            .filter(|a| a.kind() == Some(Kind::Firmware))
            .filter_map(|a| serde_json::from_value(a.undo).ok())
            .collect())
    }

    /// A crash after a slot was activated, then a reboot into it, then the
    /// undo of that activation: the device runs firmware the state no longer
    /// has. The undo made the old slot boot next; reboot into it.
    fn reboot_if_running_undone_firmware(&self, records: &[FirmwareUndo]) {
        let Ok(Some(fw)) = crate::firmware::Firmware::from_config(&self.config.firmware) else {
            return;
        };
        let Ok(booted) = fw.booted() else {
            return;
        };
        if records
            .iter()
            .any(|r| r.target == booted && r.booted != booted)
        {
            crate::health::reboot(&self.config.firmware.reboot_command);
        }
    }

    fn refuse_while_reboot_pending(&self) -> Result<()> {
        for t in self.db.open_transitions()? {
            if let Some(fw) = pending_firmware(&self.db, &t)? {
                return Err(EngineError::Refused(format!(
                    "transition {} waits for a reboot into firmware slot {}; reboot first",
                    t.id, fw.target
                )));
            }
        }
        Ok(())
    }

    /// After firmware was written: decides, from the booted slot and the
    /// health checks, whether the transition is confirmed or rolled back.
    fn firmware_followup(&mut self, t: &mut TransitionRow) -> Result<()> {
        let pending = pending_firmware(&self.db, t)?.expect("checked by the caller");
        let fw =
            crate::firmware::Firmware::from_config(&self.config.firmware)?.ok_or_else(|| {
                EngineError::Refused(
                    "a firmware transition is open but [firmware] is not configured".into(),
                )
            })?;
        if fw.boot_id()? == pending.boot_id {
            tracing::info!(transition = t.id, slot = %pending.target, "firmware written; waiting for the reboot");
            return Ok(());
        }
        let booted = fw.booted()?;
        if booted != pending.target {
            let failure = ActivateError::new(
                format!("firmware slot {}", pending.target),
                format!("the bootloader fell back to slot {booted}"),
            );
            let reason = failure.to_string();
            return match self.roll_back(t, failure) {
                EngineError::RolledBack { .. } => self.reject_rolled_back(t, &reason),
                other => Err(other),
            };
        }
        match crate::health::run(&self.config.health) {
            Ok(()) => {
                fw.mark_good()?;
                let actor = t.actor.clone();
                let id = t.id;
                self.advance_with(t, Phase::Confirmed, None, |tx| {
                    Db::append_audit(
                        tx,
                        &AuditEvent {
                            generation: None,
                            event: "firmware-marked-good",
                            actor: &actor,
                            details: json!({"transition": id, "slot": booted}),
                        },
                    )
                })
            }
            Err(why) => {
                // Undo makes the old slot boot again; the reboot takes it there.
                let failure = ActivateError::new(
                    format!("firmware slot {booted}"),
                    format!("health check failed: {why}"),
                );
                let reason = failure.to_string();
                match self.roll_back(t, failure) {
                    EngineError::RolledBack { .. } => {}
                    other => return Err(other),
                }
                // Not retried: the agent would otherwise write the same
                // image again (into the good slot) before the reboot.
                self.reject_rolled_back(t, &reason)?;
                crate::health::reboot(&self.config.firmware.reboot_command);
                Ok(())
            }
        }
    }

    /// After a healthy boot without a firmware update to confirm (a first
    /// boot, a reboot, a boot back into the old slot after a rollback):
    /// marks the booted slot good again, as the bootloader counted this boot
    /// as a try (GRUB `<S>_TRY=1`, U-Boot attempts). Without this the next
    /// reboot would find no bootable slot. A slot marked bad stays bad.
    /// `ferry recover` (after boot) calls it; other commands do not.
    pub fn confirm_booted_slot(&mut self) -> Result<()> {
        if self.early || !self.db.open_transitions()?.is_empty() {
            return Ok(());
        }
        let Some(fw) = crate::firmware::Firmware::from_config(&self.config.firmware)? else {
            return Ok(());
        };
        let Ok(booted) = fw.booted() else {
            // Not booted from a slot (a development machine): nothing to confirm.
            return Ok(());
        };
        let env = fw.env.load()?;
        if !fw.scheme.state(&env, &booted).good {
            return Ok(());
        }
        let mut confirmed = env.clone();
        fw.scheme.mark_good(&mut confirmed, &booted);
        if confirmed == env {
            return Ok(());
        }
        if let Err(why) = crate::health::run(&self.config.health) {
            tracing::warn!(slot = %booted, %why, "booted slot not confirmed: health check failed");
            return Ok(());
        }
        fw.mark_good()?;
        self.audit_refusal(
            "firmware-marked-good",
            "ferry",
            json!({"slot": booted, "reason": "healthy boot"}),
        )
    }

    /// Remembers the revision of a firmware update that was rolled back
    /// after the reboot, so that it is not applied again.
    fn reject_rolled_back(&mut self, t: &TransitionRow, reason: &str) -> Result<()> {
        match t.revision.clone() {
            Some(revision) => {
                let actor = t.actor.clone();
                self.reject_revision(&revision, &actor, reason)
            }
            None => Ok(()),
        }
    }

    // ---- gc -----------------------------------------------------------------------------

    /// Generations that must survive GC: current, previous, pinned, and any
    /// an open transition refers to.
    fn kept_generations(&self) -> Result<BTreeSet<u64>> {
        let mut keep = BTreeSet::new();
        keep.extend(self.db.current_generation()?);
        keep.extend(self.db.previous_generation()?);
        keep.extend(
            self.db
                .generations()?
                .iter()
                .filter(|g| g.pinned)
                .map(|g| g.id),
        );
        for t in self.db.open_transitions()? {
            keep.extend(t.from_gen);
            keep.extend(t.to_gen);
        }
        Ok(keep)
    }

    /// Blobs an activator's undo record keeps alive.
    fn undo_blobs(&self, kind: Option<Kind>, undo: &Value) -> Vec<Sha256> {
        kind.and_then(|k| self.activators.get(k).ok())
            .map(|act| act.undo_blobs(undo))
            .unwrap_or_default()
    }

    /// Blobs referenced by surviving generations and open transitions.
    fn referenced_blobs(&self, except_transition: Option<i64>) -> Result<BTreeSet<Sha256>> {
        let mut refs = BTreeSet::new();
        for (kind, undo) in self.db.originals()? {
            refs.extend(self.undo_blobs(kind.parse().ok(), &undo));
        }
        // Firmware images live in their slots once installed: the store keeps
        // them only while a transition that installs them is open.
        let open_gens: BTreeSet<u64> = self
            .db
            .open_transitions()?
            .iter()
            .filter(|t| Some(t.id) != except_transition && t.kind != TransitionKind::Gc)
            .flat_map(|t| t.from_gen.into_iter().chain(t.to_gen))
            .collect();
        for g in self.db.generations()? {
            refs.extend(
                self.db
                    .resources(g.id)?
                    .iter()
                    .filter(|r| r.kind != Kind::Firmware || open_gens.contains(&g.id))
                    .map(|r| r.content.sha256),
            );
        }
        for t in self.db.open_transitions()? {
            if Some(t.id) == except_transition {
                continue;
            }
            for a in self.db.activations(t.id)? {
                refs.extend(self.undo_blobs(a.kind(), &a.undo));
            }
        }
        Ok(refs)
    }

    pub fn gc(&mut self) -> Result<GcOutcome> {
        let state = &self.config.state;
        let pruned = self
            .db
            .prune(state.keep_transitions, state.keep_audit_entries)?;
        if pruned != Default::default() {
            tracing::info!(
                transitions = pruned.transitions,
                audit_entries = pruned.audit_entries,
                "pruned the state database"
            );
        }
        let keep = self.kept_generations()?;
        let collect: Vec<u64> = self
            .db
            .generations()?
            .iter()
            .map(|g| g.id)
            .filter(|g| !keep.contains(g))
            .collect();
        let referenced = self.referenced_blobs(None)?;
        let (blobs, partials) = self
            .store
            .list()
            .map_err(|e| EngineError::io("cannot list", self.store.dir(), e))?;
        // Partial fetches are never referenced; they only speed up a retry.
        for p in partials {
            let _ = fs::remove_file(p);
        }
        let garbage = blobs.iter().filter(|b| !referenced.contains(b)).count();
        if collect.is_empty() && garbage == 0 {
            return Ok(GcOutcome::default());
        }
        let current = self.db.current_generation()?;
        let details = json!({"generations": collect, "blobs": garbage});
        let mut t = self.db.with_tx(|tx| {
            Db::insert_transition(
                tx,
                TransitionKind::Gc,
                current,
                None,
                None,
                LOCAL_OPERATOR,
                &details,
            )
        })?;
        fail_point!(fp::GC_PLANNED);
        self.finish_gc(&mut t)
    }

    fn finish_gc(&mut self, t: &mut TransitionRow) -> Result<GcOutcome> {
        if t.phase == Phase::Planned {
            self.advance(t, Phase::Activating, None)?;
        }
        let collect: Vec<u64> = t.details["generations"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let mut outcome = GcOutcome::default();
        for &g in &collect {
            self.gens
                .remove(g)
                .map_err(|e| EngineError::io("cannot remove generation", self.gens.path(g), e))?;
            self.db.with_tx(|tx| Db::delete_generation(tx, g))?;
            outcome.generations.push(g);
            fail_point!(fp::GC_AFTER_GENERATION);
        }
        let referenced = self.referenced_blobs(Some(t.id))?;
        let (blobs, leftovers) = self
            .store
            .list()
            .map_err(|e| EngineError::io("cannot list", self.store.dir(), e))?;
        for b in blobs.iter().filter(|b| !referenced.contains(b)) {
            let path = self.store.path(b);
            outcome.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            self.store
                .remove(b)
                .map_err(|e| EngineError::io("cannot remove blob", path, e))?;
            outcome.blobs += 1;
            fail_point!(fp::GC_AFTER_BLOB);
        }
        for l in leftovers {
            let _ = fs::remove_file(l);
        }
        // Compiled code of modules no longer in the store.
        let cache = self.state_dir.join(crate::activate::wasm::CACHE_DIR);
        if cache.is_dir() {
            let keep = referenced.iter().map(|s| s.to_hex()).collect();
            if let Err(e) = ferry_wasm::cache::retain(&cache, &keep) {
                tracing::warn!(error = %e, "gc: pruning the wasm cache failed");
            }
        }
        self.advance(t, Phase::Confirmed, None)?;
        Ok(outcome)
    }

    // ---- recovery -------------------------------------------------------------------------

    /// Finishes or undoes every transition a crash left open, then removes
    /// leftovers and makes `current` agree with the database.
    pub fn recover(&mut self) -> Result<()> {
        for mut t in self.db.open_transitions()? {
            let action = t.phase.recovery(t.kind);
            tracing::warn!(transition = t.id, kind = %t.kind, phase = %t.phase, ?action, "recovering interrupted transition");
            match action {
                RecoveryAction::Nothing => {}
                RecoveryAction::MarkFailed => {
                    self.advance(
                        &mut t,
                        Phase::Failed,
                        Some("interrupted before activation; recovered at start"),
                    )?;
                }
                RecoveryAction::Undo => {
                    let failure = ActivateError::new(
                        format!("{} transition {}", t.kind, t.id),
                        format!("interrupted in phase {}; recovered at start", t.phase),
                    );
                    let firmware = self.firmware_records(&t)?;
                    match self.roll_back(&mut t, failure) {
                        EngineError::RolledBack { .. } => {}
                        other => return Err(other),
                    }
                    self.reboot_if_running_undone_firmware(&firmware);
                }
                RecoveryAction::Confirm if pending_firmware(&self.db, &t)?.is_some() => {
                    if !self.early {
                        self.firmware_followup(&mut t)?;
                    }
                }
                RecoveryAction::Confirm => {
                    let to = t.to_gen.expect("switched transitions have a target");
                    self.gens.switch(Some(to)).map_err(|e| {
                        EngineError::io("cannot switch", self.gens.current_link(), e)
                    })?;
                    self.advance(&mut t, Phase::Confirmed, None)?;
                }
                RecoveryAction::FinishGc => {
                    self.finish_gc(&mut t)?;
                }
            }
        }
        self.remove_leftovers()?;
        let want = self.db.current_generation()?;
        let link = self
            .gens
            .current()
            .map_err(|e| EngineError::io("cannot read", self.gens.current_link(), e))?;
        if link != want {
            tracing::warn!(
                ?link,
                ?want,
                "`current` disagrees with the state database; repairing"
            );
            self.gens
                .switch(want)
                .map_err(|e| EngineError::io("cannot switch", self.gens.current_link(), e))?;
            self.db.with_tx(|tx| {
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation: want,
                        event: "repaired-current",
                        actor: "ferry",
                        details: json!({"link_was": link, "now": want}),
                    },
                )
            })?;
        }
        Ok(())
    }

    /// Temp files and directories, and generation directories the database
    /// does not know (built by a transition that never reached `staged`).
    fn remove_leftovers(&mut self) -> Result<()> {
        let (dirs, leftovers) = self
            .gens
            .list_dirs()
            .map_err(|e| EngineError::io("cannot list", self.state_dir.join("generations"), e))?;
        for l in leftovers {
            fs::remove_dir_all(&l).map_err(|e| EngineError::io("cannot remove", &l, e))?;
        }
        let known: BTreeSet<u64> = self.db.generations()?.iter().map(|g| g.id).collect();
        for n in dirs.into_iter().filter(|n| !known.contains(n)) {
            self.gens
                .remove(n)
                .map_err(|e| EngineError::io("cannot remove", self.gens.path(n), e))?;
        }
        // Partial blobs in the store stay: the next apply resumes them (and
        // verifies them whole); gc removes them.
        let _ = fs::remove_file(self.state_dir.join(".current.tmp"));
        Ok(())
    }

    // ---- bookkeeping ------------------------------------------------------------------------

    fn advance(&mut self, t: &mut TransitionRow, to: Phase, error: Option<&str>) -> Result<()> {
        self.advance_with(t, to, error, |_| Ok(()))
    }

    /// Moves `t` to `to`, committing `extra` and the audit entry with it.
    fn advance_with(
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

    /// Taken-over paths whose original `t` restored by a remove that was
    /// not undone: they are unmanaged once `t` is confirmed.
    fn removed_originals(&self, t: &TransitionRow) -> Result<Vec<(String, String)>> {
        Ok(self
            .db
            .activations(t.id)?
            .into_iter()
            .filter(|a| !a.undone)
            .filter_map(|a| serde_json::from_value::<Step>(a.step).ok())
            .filter(|step| step.op == Op::Remove)
            .map(|step| (step.id.kind.as_str().to_owned(), step.id.name))
            .collect())
    }

    /// Best effort: records that `t` failed before activation.
    fn fail(&mut self, t: &mut TransitionRow, e: &EngineError) {
        if let Err(e2) = self.advance(t, Phase::Failed, Some(&e.to_string())) {
            tracing::error!(transition = t.id, error = %e2, "could not record failure; recover() will at next start");
        }
    }

    // ---- read-only views ------------------------------------------------------------------

    pub fn status(&self) -> Result<Status> {
        let current = match self.db.current_generation()? {
            Some(n) => self.db.generation(n)?,
            None => None,
        };
        Ok(Status {
            state_dir: self.state_dir.clone(),
            resources: current.as_ref().map_or(0, |g| g.resources as usize),
            current,
            previous: self.db.previous_generation()?,
            current_link: self.gens.current().ok().flatten(),
            generations: self.db.generations()?.len(),
            last_transition: self.db.last_transition()?,
            awaiting_reboot: self
                .db
                .open_transitions()?
                .iter()
                .map(|t| pending_firmware(&self.db, t))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .map(|fw| fw.target)
                .next(),
            open_transitions: self.db.open_transitions()?,
            audit_entries: self.db.audit_head()?.map_or(0, |(s, _)| s),
        })
    }

    pub fn generations(&self) -> Result<Vec<GenerationRow>> {
        Ok(self.db.generations()?)
    }

    pub fn pin(&mut self, n: u64, pinned: bool) -> Result<()> {
        if !self.db.set_pinned(n, pinned)? {
            return Err(EngineError::Refused(format!(
                "generation {n} does not exist"
            )));
        }
        let event = if pinned { "pinned" } else { "unpinned" };
        self.db.with_tx(|tx| {
            Db::append_audit(
                tx,
                &AuditEvent {
                    generation: Some(n),
                    event,
                    actor: LOCAL_OPERATOR,
                    details: json!({}),
                },
            )
        })?;
        Ok(())
    }

    /// The device's secure time floor.
    pub fn time_floor(&self) -> Result<ferry_source::TimeFloor> {
        Ok(crate::fetch::time_floor(&self.config, &self.state_dir)?)
    }

    /// `ferry time-floor repair`: replaces a corrupt or unreadable floor with
    /// `at`, or the image's floor when `at` is `None`; audited as
    /// `time-floor-repaired` by the local operator. An intact floor is left
    /// alone (refused): lowering it would reopen expired metadata.
    pub fn repair_time_floor(&mut self, at: Option<i64>) -> Result<i64> {
        let floor = self.time_floor()?;
        let problem = match floor.stored() {
            Ok(stored) => {
                return Err(EngineError::Refused(format!(
                    "the secure time floor {} is intact ({}); nothing to repair",
                    floor.path().display(),
                    stored.map_or("none stored".to_owned(), |t| format!("{t}"))
                )));
            }
            Err(e) => e.problem,
        };
        let t = at.or(floor.baked()).ok_or_else(|| {
            EngineError::Refused(
                "the image has no time floor (source.tuf.time_floor); give the time with --at"
                    .to_owned(),
            )
        })?;
        floor
            .write(t)
            .map_err(|e| EngineError::io("writing the time floor", floor.path(), e))?;
        self.audit(
            "time-floor-repaired",
            LOCAL_OPERATOR,
            json!({"path": floor.path(), "problem": problem, "floor": t, "from_image": at.is_none()}),
        )?;
        Ok(t)
    }

    /// `ferry firmware status`: the boot environment's view plus what the
    /// state knows of each slot's image and of a pending update.
    pub fn firmware_status(&self) -> Result<Option<crate::firmware::FirmwareStatus>> {
        let Some(fw) = crate::firmware::Firmware::from_config(&self.config.firmware)? else {
            return Ok(None);
        };
        let mut status = fw.status()?;
        let installs = self.db.firmware_activations()?;
        for slot in &mut status.slots {
            slot.image = firmware_image(&installs, &slot.name);
        }
        Ok(Some(status))
    }

    /// Marks the booted firmware slot good (after a healthy boot), audited
    /// when it changed anything. `None` without `[firmware]`.
    pub fn firmware_mark_good(&mut self) -> Result<Option<(String, bool)>> {
        let Some(fw) = crate::firmware::Firmware::from_config(&self.config.firmware)? else {
            return Ok(None);
        };
        let (slot, changed) = fw.mark_good()?;
        if changed {
            self.db.with_tx(|tx| {
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation: None,
                        event: "firmware-marked-good",
                        actor: LOCAL_OPERATOR,
                        details: json!({"slot": slot}),
                    },
                )
            })?;
        }
        Ok(Some((slot, changed)))
    }

    pub fn audit_entries(&self) -> Result<Vec<AuditEntry>> {
        Ok(self
            .db
            .audit_entries()?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// Audit entries, oldest first, each with its chain hash (hex).
    pub fn audit_with_hashes(&self) -> Result<Vec<(AuditEntry, String)>> {
        Ok(self.db.audit_entries()?)
    }

    /// Recomputes the audit chain; returns the number of entries.
    pub fn audit_verify(&self) -> Result<u64> {
        let rows = self.db.audit_entries()?;
        // An unparseable stored hash can never match: treat it as zero.
        let hashes: Vec<Sha256> = rows
            .iter()
            .map(|(_, h)| h.parse().unwrap_or(Sha256::ZERO))
            .collect();
        let head = self
            .db
            .audit_head()?
            .map(|(seq, h)| (seq, h.parse().unwrap_or(Sha256::ZERO)));
        let base = self
            .db
            .audit_base()?
            .map(|(seq, h)| (seq, h.parse().unwrap_or(Sha256::ZERO)));
        let n = verify_chain(rows.iter().map(|(e, _)| e).zip(hashes.iter()), base, head)?;
        // The checkpoint itself is vouched for by the chain: the newest
        // `audit-pruned` entry names it.
        if let Some((seq, hash)) = base {
            let vouched = rows.iter().rev().find(|(e, _)| e.event == "audit-pruned");
            let ok = vouched.is_some_and(|(e, _)| {
                e.details["through_seq"] == seq && e.details["through_hash"] == hash.to_hex()
            });
            if !ok {
                return Err(EngineError::AuditBroken(ChainError::HashMismatch {
                    seq: seq + 1,
                }));
            }
        }
        Ok(n)
    }
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

fn default_activators(config: &Config) -> Activators {
    let fw = crate::firmware::Firmware::from_config(&config.firmware);
    Activators::new(vec![
        Box::new(FileActivator::new(&config.files.root)),
        Box::new(crate::activate::ruleset::RulesetActivator),
        Box::new(crate::activate::wasm::WasmActivator::new(
            &config.state_dir,
            &config.wasm,
        )),
        Box::new(FirmwareActivator::new(fw)),
    ])
}

/// The latest image written into `slot`, from the firmware activations.
fn firmware_image(
    installs: &[(Phase, Value, Value)],
    slot: &str,
) -> Option<crate::firmware::SlotImage> {
    let (phase, step, _) = installs
        .iter()
        .rev()
        .find(|(_, _, undo)| undo["target"] == slot)?;
    let to = &step["to"];
    Some(crate::firmware::SlotImage {
        name: to["name"].as_str().unwrap_or_default().to_owned(),
        version: to["settings"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        sha256: to["content"]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        state: match phase {
            Phase::Confirmed => "confirmed",
            Phase::RollingBack | Phase::RolledBack | Phase::Failed => "rolled-back",
            _ => "pending",
        }
        .to_owned(),
    })
}

/// The firmware step of `t` whose new slot awaits a reboot, if any: done,
/// not undone, in a transition that reached `switched`.
fn pending_firmware(db: &Db, t: &TransitionRow) -> Result<Option<FirmwareUndo>> {
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
fn plan_summary(p: &Plan) -> Value {
    let (added, changed, removed) = p.counts();
    json!({
        "added": added,
        "changed": changed,
        "removed": removed,
        "steps": p.steps.iter().map(|s| json!({
            "op": s.op.as_str(),
            "kind": s.id.kind.as_str(),
            "name": s.id.name,
            "reasons": s.describe_reasons(),
        })).collect::<Vec<_>>(),
    })
}
