//! One reconcile, for every way a change reaches the device.
//!
//! The agent's poll (`ferry run`, `run --once`), an operator's `apply` and
//! `rollback`, and a USB `import` all end here: what to do next is decided
//! by the pure [`agent::decide`] in ferry-core, and [`reconcile`] performs
//! each action and records what came of it. So the same update policy,
//! health gate with automatic rollback, quarantine of rejected revisions,
//! firmware reboot handling and gc hold whoever started the reconcile; only
//! the actor and what it may override ([`Overrides`]) differ.

use std::sync::Arc;
use std::time::Instant;

use ferry_core::agent::{
    self, Action, Applied, Clock, Outcome, Overrides, RolledBack, UpdatePolicy,
};
use ferry_source::{Source, VerifiedRevision};

use crate::activate::health;
use crate::engine::{ApplyOutcome, Engine};
use crate::error::EngineError;
use crate::render::facts::Facts;
use crate::render::manifest::ResolvedManifest;

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// The actor of the agent's own reconciles.
pub const AGENT: &str = "agent";

/// What a reconcile brings the device to.
#[derive(Clone, Copy)]
pub enum Goal<'a> {
    /// The newest revision of a source (the agent, `apply`, `import`).
    Newest {
        source: &'a dyn Source,
        facts: &'a Facts,
    },
    /// An earlier generation (`rollback`; `None`: the previous one). Its
    /// revision's update policy is not kept, so windows and waves do not
    /// hold it: a rollback is the operator's way back to what ran before.
    Generation(Option<u64>),
}

impl std::fmt::Debug for Goal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::Newest { .. } => f.write_str("Newest"),
            Goal::Generation(n) => write!(f, "Generation({n:?})"),
        }
    }
}

/// Who starts a reconcile, toward what, and what they may override.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub goal: Goal<'a>,
    /// Recorded with every audit entry the reconcile makes of its own
    /// (`agent`, `local-operator`, `usb:LABEL/SERIAL`).
    pub actor: &'a str,
    pub overrides: Overrides,
    /// Device-local time and rollout bucket; [`Clock`] of now by default.
    pub clock: Option<Clock>,
}

/// How a reconcile ended, with what its apply or rollback step did.
#[derive(Debug, Clone)]
pub struct Reconciled {
    pub outcome: Outcome,
    /// The switch (or the firmware write) it made, if any.
    pub applied: Option<ApplyOutcome>,
    /// The health gate's rollback, if it made one.
    pub rolled_back: Option<ApplyOutcome>,
    /// The revision it worked on.
    pub revision: Option<String>,
    /// The firmware slot a switch was waiting to boot into when the
    /// reconcile started (then it could only reboot or wait).
    pub awaiting_reboot: Option<String>,
    /// A reboot into new firmware is due: the caller records what it has
    /// to, releases the state directory and calls [`reboot`]. (The slot,
    /// when it was written by an earlier reconcile.)
    pub reboot: Option<Option<String>>,
}

/// Releases the state directory, then runs `firmware.reboot_command`.
pub fn reboot(engine: Engine) {
    let command = engine.config().firmware.reboot_command.clone();
    drop(engine);
    health::reboot(&command);
}

/// The device's rollout bucket, from its machine id (none: no bucket).
fn rollout_bucket(engine: &Engine) -> Option<u8> {
    let id = std::fs::read_to_string(&engine.config().agent.machine_id_file).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| ferry_core::schedule::rollout_bucket(id))
}

/// What a reconcile fetched: a revision and its desired state, or an
/// earlier generation.
enum Fetched {
    Revision(Arc<dyn VerifiedRevision>, ResolvedManifest),
    Generation(u64),
}

/// One reconcile: asks [`agent::decide`] what to do until it is done.
pub fn reconcile(engine: &mut Engine, req: &Request<'_>) -> Result<Reconciled> {
    let config = engine.config().clone();
    let times = config.agent.times()?;
    let clock = req.clock.unwrap_or_else(|| Clock {
        now: crate::fetch::policy::local_now(),
        rollout_bucket: rollout_bucket(engine),
    });
    if let Goal::Generation(_) = req.goal {
        // A rollback is not the way out of a pending firmware switch.
        engine.refuse_while_reboot_pending()?;
    }
    let awaiting_reboot = engine.status()?.awaiting_reboot;
    let mut r = agent::Reconcile {
        gc: config.agent.gc,
        overrides: req.overrides,
        awaiting_reboot: awaiting_reboot.clone(),
        ..agent::Reconcile::default()
    };
    let mut done = Reconciled {
        outcome: Outcome::NoChange,
        applied: None,
        rolled_back: None,
        revision: None,
        awaiting_reboot,
        reboot: None,
    };
    let mut fetched: Option<Fetched> = None;
    loop {
        let action = agent::decide(&r, &clock);
        tracing::debug!(?action, actor = req.actor, "reconcile");
        match action {
            Action::Fetch => {
                let (revision, f) = match req.goal {
                    Goal::Newest { source, facts } => {
                        let (rev, desired) = engine.fetch_desired(source, facts)?;
                        (rev.id().to_owned(), Fetched::Revision(rev, desired))
                    }
                    Goal::Generation(to) => {
                        let row = engine.rollback_target(to)?;
                        (row.revision, Fetched::Generation(row.id))
                    }
                };
                r.rejected = engine.rejection(&revision)?.is_some();
                r.revision = Some(revision.clone());
                done.revision = Some(revision);
                fetched = Some(f);
            }
            Action::ReadPolicy => {
                r.policy = Some(match fetched.as_ref().expect("fetched before the policy") {
                    Fetched::Revision(rev, _) => engine.update_policy(&**rev)?,
                    Fetched::Generation(_) => UpdatePolicy::default(),
                });
            }
            Action::RecordOverride(o) => {
                tracing::warn!(actor = req.actor, overridden = ?o, "{}", o.event());
                engine.record_override(&o, req.actor)?;
                r.overridden.push(o);
            }
            Action::Apply => {
                let outcome = match fetched.as_ref().expect("fetched before the apply") {
                    Fetched::Revision(rev, desired) => {
                        engine.apply_desired(&**rev, desired, req.actor)?
                    }
                    Fetched::Generation(n) => engine.rollback(Some(*n), req.actor)?,
                };
                r.applied = Some(match outcome {
                    // Drift put back within the generation that passed its
                    // health checks: settled like a poll with no change.
                    ApplyOutcome::NoChange { .. } | ApplyOutcome::Restored { .. } => {
                        Applied::NoChange
                    }
                    ApplyOutcome::RebootRequired { .. } => Applied::RebootRequired,
                    ApplyOutcome::Switched { .. } => Applied::Switched,
                });
                done.applied = Some(outcome);
            }
            Action::CheckHealth => {
                let deadline = Instant::now() + times.health_timeout;
                let verdict = health::wait_healthy(&config.health, deadline, times.health_interval);
                if let Err(reason) = &verdict {
                    tracing::error!(revision = ?r.revision, actor = req.actor, %reason, "health checks failed; rolling back");
                }
                r.health = Some(verdict.map_err(|why| why.0));
            }
            Action::RollBack => {
                r.rolled_back = Some(match engine.rollback(None, req.actor) {
                    Ok(o) => {
                        done.rolled_back = Some(o);
                        RolledBack::Done
                    }
                    // The first generation has nothing to return to.
                    Err(EngineError::Refused(why)) => RolledBack::Refused(why),
                    Err(e) => return Err(e),
                });
            }
            Action::Reject { revision, reason } => {
                engine.reject_revision(&revision, req.actor, &reason)?;
                r.rejection_recorded = true;
            }
            Action::ClearRejection { revision } => {
                engine.clear_rejection(&revision, req.actor)?;
                r.rejection_cleared = true;
            }
            Action::Reboot { slot } => {
                tracing::info!(slot = ?slot, actor = req.actor, "rebooting into the new firmware");
                done.reboot = Some(slot);
                r.rebooted = true;
            }
            Action::CollectGarbage => {
                collect_garbage(engine);
                r.collected = true;
            }
            Action::Done(outcome) => {
                done.outcome = outcome;
                // What the agent audited while this reconcile held the
                // state directory.
                engine.drain_audit_spool();
                return Ok(done);
            }
        }
    }
}

/// The gc after a reconcile that left the device settled.
///
/// A failure is logged, not fatal: the reconcile did its work, and an
/// interrupted gc is finished by `recover()` before the next change. The
/// engine's own check that no transition is open stays, as a second line.
fn collect_garbage(engine: &mut Engine) {
    if !engine.status().is_ok_and(|s| s.open_transitions.is_empty()) {
        return;
    }
    match engine.gc() {
        Ok(o) if o.generations.is_empty() && o.blobs == 0 => {}
        Ok(o) => tracing::info!(
            generations = ?o.generations,
            blobs = o.blobs,
            bytes = o.bytes,
            "gc: removed {} generations and {} blobs ({} bytes) no kept generation needs",
            o.generations.len(),
            o.blobs,
            o.bytes
        ),
        Err(e) => tracing::warn!(error = %e, "gc failed; it is finished at the next start"),
    }
}
