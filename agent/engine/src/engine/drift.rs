//! Drift: the current generation's resources checked against the device,
//! and the restore of what drifted within that generation.
//!
//! Every reconcile checks every managed resource whose policy is not
//! `ignore` (files: `lstat` each, and read only a file whose inode, size,
//! mtime or ctime moved since the last check). Drift is audited once per
//! finding (`drift-detected`); with policy `restore` it is put back through
//! a recorded transition of kind `restore` (activations with undo records,
//! `drift-restored` per resource), with `report` it stays and `ferry
//! status` and the fleet report show it.

use super::*;
use crate::activate::{DriftPass, FileChecks};
use crate::store::running::Running;
use ferry_core::{Drift, DriftPolicy, Drifted, Resource, ResourceId};

/// How long after a switch made by another process the running agent may
/// still run the previous generation's rule sets (it looks every second).
const SWAP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why ferry does not put `d` back by itself, if it does not.
fn not_restorable(d: &Drift) -> Option<&'static str> {
    match d {
        Drift::Replaced { found } if found == "directory" => {
            Some("a directory is there; remove it and reconcile")
        }
        Drift::Path { .. } => {
            Some("a directory on its path is not a directory; remove what is there and reconcile")
        }
        Drift::Boot { .. } => Some(
            "the boot environment is the bootloader's: `ferry firmware status` shows it; a reboot, `ferry firmware mark-good` or a rollback settles it",
        ),
        Drift::Running { .. } => Some(
            "the agent loads the current generation again after each reconcile and at growing intervals up to a minute; its log says why loading failed",
        ),
        _ => None,
    }
}

/// What of `found` a reconcile puts back.
pub(super) fn to_restore(found: &[Found]) -> Drifted {
    found
        .iter()
        .filter(|f| f.restores())
        .map(|f| (f.id.clone(), f.drift.clone()))
        .collect()
}

/// The `file_checks` key of a resource: a file's path, or `KIND NAME` for
/// what is checked through its store blob.
fn check_key(r: &Resource) -> String {
    match r.kind {
        Kind::File => r.name.clone(),
        _ => format!("{} {}", r.kind, r.name),
    }
}

/// A resource of the current generation found changed on the device.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    pub id: ResourceId,
    pub secret: bool,
    pub drift: Vec<Drift>,
    pub policy: DriftPolicy,
    /// False when ferry will not put it back by itself (a directory where
    /// a file was: it may hold anything; the boot environment).
    pub restorable: bool,
}

impl Found {
    /// Whether a reconcile puts it back.
    pub fn restores(&self) -> bool {
        self.policy == DriftPolicy::Restore && self.restorable
    }

    /// The audit's view (secret content redacted).
    pub fn audit(&self) -> Value {
        json!({
            "kind": self.id.kind.as_str(),
            "resource": self.id.name,
            "policy": self.policy.as_str(),
            "restorable": self.restorable,
            "not_restored": self.drift.iter().find_map(not_restorable),
            "drift": self.drift.iter().map(|d| d.audit(self.secret)).collect::<Vec<_>>(),
        })
    }
}

impl Engine {
    /// What is installed on the device for resource `id` (files only), to
    /// show drifted content in a plan.
    pub fn installed_reader(&self, id: &ResourceId) -> Option<Box<dyn std::io::Read>> {
        if id.kind != Kind::File {
            return None;
        }
        FileActivator::new(&self.config.files.root)
            .open_installed(&id.name)
            .map(|f| Box::new(f) as Box<dyn std::io::Read>)
    }

    /// Checks the current generation's resources against the device.
    /// `desired`: the resources about to be applied, whose `drift:` policy
    /// decides (a new revision may change it); else the recorded ones'.
    /// `actual`: the current generation's resources.
    pub fn find_drift(
        &self,
        actual: &ResourceSet,
        desired: Option<&ResourceSet>,
    ) -> Result<Vec<Found>> {
        let default = self.config.agent.drift;
        let mut out = Vec::new();
        let mut pass = DriftPass::default();
        // With the agent's watch quiet, only what drifted before is looked
        // at again among the paths it watches.
        let skip: Option<BTreeSet<(String, String)>> = self
            .files_unchanged
            .then(|| self.db.drift())
            .transpose()?
            .map(|rows| rows.into_iter().map(|r| (r.kind, r.name)).collect());
        if skip.as_ref().is_none_or(|known| !known.is_empty()) {
            pass.checks.known = Arc::new(self.db.file_checks()?);
        }
        let running = self.running_drift(actual)?;
        for r in actual.iter() {
            let policy_of = desired.and_then(|d| d.get(&r.id())).unwrap_or(r);
            let policy = DriftPolicy::of(policy_of, default);
            if policy == DriftPolicy::Ignore {
                continue;
            }
            // Watched (the recorded policy is not `ignore`) and not drifted.
            let unchanged = skip.as_ref().is_some_and(|known| {
                DriftPolicy::of(r, default) != DriftPolicy::Ignore
                    && !known.contains(&(r.kind.as_str().to_owned(), r.name.clone()))
            });
            let drift = match r.kind {
                Kind::File if unchanged => continue,
                // Loaded from their blob in the store by the agent.
                Kind::Ruleset | Kind::Wasm => {
                    let mut drift = if unchanged {
                        Vec::new()
                    } else {
                        self.blob_drift(r, &mut pass, false)?
                    };
                    drift.extend(running.clone());
                    drift
                }
                Kind::Firmware => self.boot_drift(r)?,
                _ => {
                    let Ok(act) = self.activators.get(r.kind) else {
                        continue;
                    };
                    act.drift(r, &mut pass, false).map_err(|e| {
                        EngineError::Refused(format!("checking {} for drift: {e}", r.id()))
                    })?
                }
            };
            if !drift.is_empty() {
                // What the agent loaded is its own to fix; a damaged blob
                // beside it is put back.
                let restorable = drift.iter().any(|d| not_restorable(d).is_none());
                out.push(Found {
                    id: r.id(),
                    secret: r.secret,
                    drift,
                    policy,
                    restorable,
                });
            }
        }
        if skip.is_none() {
            self.save_checks(&pass.checks, actual);
        }
        Ok(out)
    }

    /// Told by the running agent: its inotify watch on every path
    /// [`Engine::watch_list`] names saw no change since before the last
    /// full check, so a drift check looks again only at what drifted then
    /// (and at the boot side and what the agent loaded, which it does not
    /// watch).
    pub fn assume_files_unchanged(&mut self) {
        self.files_unchanged = true;
    }

    /// Every path a drift check of the current generation reads: managed
    /// files under `files.root`, rule sets' and modules' store blobs
    /// (policy `ignore` left out).
    pub fn watch_list(&self) -> Result<Option<ferry_core::drift::WatchList>> {
        let Some(generation) = self.db.current_generation()? else {
            return Ok(None);
        };
        let root = &self.config.files.root;
        let mut paths = Vec::new();
        for r in self.actual()?.iter() {
            let policy = DriftPolicy::of(r, self.config.agent.drift);
            let path = match r.kind {
                Kind::Firmware => continue,
                _ if policy == DriftPolicy::Ignore => continue,
                Kind::File => root.join(r.name.trim_start_matches('/')),
                Kind::Ruleset | Kind::Wasm => self.store.path(&r.content.sha256),
            };
            paths.push(ferry_core::drift::WatchPath {
                path,
                restore: policy == DriftPolicy::Restore,
            });
        }
        Ok(Some(ferry_core::drift::WatchList {
            generation,
            roots: vec![root.clone(), self.store.dir().to_path_buf()],
            paths,
        }))
    }

    /// Writes what a pass verified and forgets checks of what is no longer
    /// managed. A cache: on read-only state the next pass reads again.
    pub(super) fn save_checks(&self, checks: &FileChecks, actual: &ResourceSet) {
        // Files by their path as it is (no copy of 10,000 names), the few
        // blob-checked resources by their composed key.
        let files: std::collections::HashSet<&str> = actual
            .iter()
            .filter(|r| r.kind == Kind::File)
            .map(|r| r.name.as_str())
            .collect();
        let others: BTreeSet<String> = actual
            .iter()
            .filter(|r| r.kind != Kind::File)
            .map(check_key)
            .collect();
        let forget: Vec<&str> = checks
            .known
            .keys()
            .map(String::as_str)
            .filter(|k| !files.contains(k) && !others.contains(*k))
            .collect();
        if let Err(e) = self.db.update_file_checks(&checks.record, &forget) {
            tracing::debug!(error = %e, "cannot record the drift checks");
        }
    }

    /// How the store blob a rule set or WASM module is loaded from differs
    /// from its content address (read only when its stat fields moved since
    /// the last check, unless `full`).
    pub(super) fn blob_drift(
        &self,
        r: &Resource,
        pass: &mut DriftPass,
        full: bool,
    ) -> Result<Vec<Drift>> {
        let path = self.store.path(&r.content.sha256);
        let name = std::ffi::OsString::from(r.content.sha256.to_hex());
        let checked = crate::fsutil::Dir::open(self.store.dir()).and_then(|dir| {
            let Some(meta) = dir.stat(&name)? else {
                return Ok(Some(Drift::Deleted));
            };
            if !meta.is_file() {
                let found = meta.kind().trim_start_matches("a ").to_owned();
                return Ok(Some(Drift::Replaced { found }));
            }
            pass.checks
                .content(&dir, &name, &meta, &check_key(r), r.content, full)
        });
        Ok(checked
            .map_err(|e| EngineError::io("cannot check", path, e))?
            .into_iter()
            .collect())
    }

    /// How what the running agent's rules engine and module host loaded
    /// differs from the current generation: loading it failed, or the agent
    /// still runs an older one well after the switch (it swaps within a
    /// second of a switch another process made). Nothing without a running
    /// agent, or when `actual` (the current generation's resources) has no
    /// rule set or module. One read per pass, for all of them.
    pub(super) fn running_drift(&self, actual: &ResourceSet) -> Result<Option<Drift>> {
        if !actual
            .iter()
            .any(|r| matches!(r.kind, Kind::Ruleset | Kind::Wasm))
        {
            return Ok(None);
        }
        let Some(current) = self.db.current_generation()? else {
            return Ok(None);
        };
        let Some(run) = Running::read(&self.config.state_dir) else {
            return Ok(None);
        };
        if run.generation == Some(current) {
            return Ok(None);
        }
        let expected = format!("generation {current}'s loaded by the running agent");
        let runs = match run.generation {
            Some(g) => format!("the agent runs generation {g}'s"),
            None => "the agent runs no rule sets or modules".to_owned(),
        };
        if let Some(f) = run.failed.filter(|f| f.generation == Some(current)) {
            return Ok(Some(Drift::Running {
                expected,
                found: format!("{runs}; loading generation {current}'s failed: {}", f.error),
            }));
        }
        let switched = std::fs::symlink_metadata(self.config.state_dir.join("current"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        Ok(switched
            .is_some_and(|age| age > SWAP_GRACE)
            .then_some(Drift::Running {
                expected,
                found: runs,
            }))
    }

    /// How the boot side of the current generation's firmware `r` differs
    /// from what ferry left (no slot is read: `ferry verify --firmware`
    /// does that): the slot ferry confirmed it in is the one booted, and
    /// that slot is first in the boot order and good. Nothing while a
    /// firmware switch waits for its reboot.
    pub(super) fn boot_drift(&self, r: &Resource) -> Result<Vec<Drift>> {
        let Some(fw) = crate::activate::firmware::Firmware::from_config(&self.config.firmware)?
        else {
            return Ok(Vec::new());
        };
        if self.pending_switch()?.is_some() {
            return Ok(Vec::new());
        }
        // An unknown booted slot is an error `firmware status` names.
        let Ok(booted) = fw.booted() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let sha = r.content.sha256.to_hex();
        let confirmed_in = self
            .db
            .firmware_activations()?
            .into_iter()
            .rev()
            .find(|(_, step, _)| step["to"]["content"]["sha256"] == sha.as_str())
            .filter(|(phase, _, _)| *phase == Phase::Confirmed)
            .and_then(|(_, _, undo)| undo["target"].as_str().map(str::to_owned));
        if let Some(slot) = confirmed_in
            && slot != booted
        {
            out.push(Drift::Boot {
                expected: format!("slot {slot} booted"),
                found: format!("slot {booted} booted"),
            });
        }
        let env = fw.env.load()?;
        let order = fw.scheme.order(&env);
        let good = fw.scheme.state(&env, &booted).good;
        if order.first() != Some(&booted) || !good {
            out.push(Drift::Boot {
                expected: format!("slot {booted} first in the boot order and good"),
                found: format!(
                    "boot order \"{}\", slot {booted} {}",
                    order.join(" "),
                    if good { "good" } else { "not good" }
                ),
            });
        }
        Ok(out)
    }

    /// Audits each new finding as `drift-detected` (once: the same finding
    /// at the next poll is not audited again) and forgets drift that is
    /// gone; returns what is to be restored.
    pub(super) fn record_drift(&mut self, found: &[Found], actor: &str) -> Result<Drifted> {
        let known = self.db.drift()?;
        if found.is_empty() && known.is_empty() {
            // The usual poll: nothing written.
            return Ok(Drifted::new());
        }
        let generation = self.db.current_generation()?;
        self.db.with_tx(|tx| {
            for row in &known {
                if !found
                    .iter()
                    .any(|f| f.id.kind.as_str() == row.kind && f.id.name == row.name)
                {
                    Db::clear_drift(tx, &row.kind, &row.name)?;
                }
            }
            for f in found {
                let details = f.audit();
                if Db::set_drift(tx, f.id.kind.as_str(), &f.id.name, &details["drift"])? {
                    tracing::warn!(resource = %f.id, policy = f.policy.as_str(), drift = %f.drift.iter().map(|d| d.describe(f.secret)).collect::<Vec<_>>().join(", "), "drift detected");
                    Db::append_audit(
                        tx,
                        &AuditEvent {
                            generation,
                            event: "drift-detected",
                            actor,
                            details,
                        },
                    )?;
                }
            }
            Ok(())
        })?;
        Ok(to_restore(found))
    }

    /// Puts back what drifted, within the current generation: a `restore`
    /// transition whose activations have undo records like any other (a
    /// crash is finished or undone by `recover()`).
    pub(super) fn restore_drift(
        &mut self,
        rev: &dyn VerifiedRevision,
        desired: &ResolvedManifest,
        p: &Plan,
        by: &str,
    ) -> Result<ApplyOutcome> {
        let generation = self
            .db
            .current_generation()?
            .expect("drift is found in a current generation");
        for step in &p.steps {
            let to = step.to.as_ref().expect("restores change a resource");
            // A damaged blob (a rule set's, a module's) is fetched again.
            if matches!(to.kind, Kind::Ruleset | Kind::Wasm) {
                self.store.remove(&to.content.sha256).map_err(|e| {
                    EngineError::io("cannot remove", self.store.path(&to.content.sha256), e)
                })?;
            }
            if !self.store.contains(&to.content.sha256) {
                self.fetch_content(rev, desired, to)?;
            }
        }
        let mut details = plan_summary(p);
        details["by"] = json!(by);
        let mut t = self.db.with_tx(|tx| {
            Db::insert_transition(
                tx,
                TransitionKind::Restore,
                Some(generation),
                Some(generation),
                Some(rev.id()),
                rev.actor(),
                &details,
            )
        })?;
        fail_point!(fp::DRIFT_PLANNED);
        self.advance(&mut t, Phase::Staging, None)?;
        self.advance(&mut t, Phase::Staged, None)?;
        self.advance(&mut t, Phase::Activating, None)?;
        for (seq, step) in p.steps.iter().enumerate() {
            if let Err(failure) = self.activate_step(&t, seq as u64, step) {
                return Err(self.roll_back(&mut t, failure));
            }
        }
        fail_point!(fp::DRIFT_RESTORED);
        let restored: Vec<ResourceId> = p.steps.iter().map(|s| s.id.clone()).collect();
        self.advance_with(&mut t, Phase::Switched, None, |tx| {
            for id in &restored {
                Db::clear_drift(tx, id.kind.as_str(), &id.name)?;
            }
            Ok(())
        })?;
        self.advance(&mut t, Phase::Confirmed, None)?;
        Ok(ApplyOutcome::Restored {
            transition: t.id,
            generation,
            revision: rev.id().to_owned(),
            restored: p.steps.len(),
        })
    }
}
