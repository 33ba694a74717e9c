//! `ferry run --once`: one reconcile as the agent does it, in the process
//! the agent starts for it. What to do next is decided by the pure
//! [`agent::decide`] in ferry-core; this module only performs the actions
//! and records what came of them.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use ferry_core::agent::{
    self, Action, Applied, Clock, Outcome, ReconcileResult, Report, RolledBack,
};
use ferry_core::schedule;
use ferry_engine::render::manifest::ResolvedManifest;
use ferry_engine::{ApplyOutcome, Config, Engine, EngineError};
use ferry_source::{Source, VerifiedRevision};

use crate::cli::Cli;
use crate::exit::Code;
use crate::setup::{load_config, load_facts};

/// Set in reconcile processes to the agent's pid: they die with it.
pub const AGENT_PID_ENV: &str = "FERRY_AGENT_PID";

/// The device's rollout bucket, from its machine id (none: no bucket).
fn rollout_bucket(config: &Config) -> Option<u8> {
    let id = std::fs::read_to_string(&config.agent.machine_id_file).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| schedule::rollout_bucket(id))
}

/// One reconcile: asks [`agent::decide`] what to do until it is done.
pub fn reconcile(
    config: &Config,
    facts_file: Option<&Path>,
    engine: &mut Engine,
    src: &dyn Source,
) -> Result<Outcome> {
    let facts = load_facts(facts_file, config)?;
    let times = config.agent.times()?;
    let clock = Clock {
        now: ferry_engine::fetch::policy::local_now(),
        rollout_bucket: rollout_bucket(config),
    };
    let mut r = agent::Reconcile {
        gc: config.agent.gc,
        awaiting_reboot: engine.status()?.awaiting_reboot,
        ..agent::Reconcile::default()
    };
    let mut fetched: Option<(Arc<dyn VerifiedRevision>, ResolvedManifest)> = None;
    loop {
        let action = agent::decide(&r, &clock);
        tracing::debug!(?action, "reconcile");
        match action {
            Action::Fetch => {
                let (rev, desired) = engine.fetch_desired(src, &facts)?;
                r.rejected = engine.rejected_revision()?.as_deref() == Some(rev.id());
                r.revision = Some(rev.id().to_owned());
                fetched = Some((rev, desired));
            }
            Action::ReadPolicy => {
                let (rev, _) = fetched.as_ref().context("no fetched revision")?;
                r.policy = Some(engine.update_policy(&**rev)?);
            }
            Action::Apply => {
                let (rev, desired) = fetched.as_ref().context("no fetched revision")?;
                r.applied = Some(match engine.apply_desired(&**rev, desired)? {
                    ApplyOutcome::NoChange { .. } => Applied::NoChange,
                    ApplyOutcome::RebootRequired { .. } => Applied::RebootRequired,
                    ApplyOutcome::Switched { .. } => Applied::Switched,
                });
            }
            Action::CheckHealth => {
                let deadline = Instant::now() + times.health_timeout;
                let verdict = ferry_engine::activate::health::wait_healthy(
                    &config.health,
                    deadline,
                    times.health_interval,
                );
                if let Err(reason) = &verdict {
                    tracing::error!(revision = ?r.revision, %reason, "health checks failed; rolling back");
                }
                r.health = Some(verdict.map_err(|why| why.0));
            }
            Action::RollBack => {
                r.rolled_back = Some(match engine.rollback(None) {
                    Ok(_) => RolledBack::Done,
                    // The first generation has nothing to return to.
                    Err(EngineError::Refused(why)) => RolledBack::Refused(why),
                    Err(e) => return Err(e.into()),
                });
            }
            Action::Reject { revision, reason } => {
                engine.reject_revision(&revision, "agent", &reason)?;
                r.rejection_recorded = true;
            }
            Action::Reboot { slot } => {
                tracing::info!(slot = ?slot, "rebooting into the new firmware");
                ferry_engine::activate::health::reboot(&config.firmware.reboot_command);
                r.rebooted = true;
            }
            Action::CollectGarbage => {
                collect_garbage(engine);
                r.collected = true;
            }
            Action::Done(outcome) => return Ok(outcome),
        }
    }
}

/// The agent's gc after a reconcile that left the device settled.
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

/// Whether an error is an activation failure (rolled back or not undone).
fn is_activation_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<EngineError>().is_some_and(|e| {
        matches!(
            e,
            EngineError::RolledBack { .. } | EngineError::UndoFailed { .. }
        )
    })
}

/// Bytes this process fetched from the source.
fn fetched_bytes() -> u64 {
    #[cfg(feature = "tuf")]
    return ferry_tuf::transport::fetched_bytes();
    #[cfg(not(feature = "tuf"))]
    0
}

/// `ferry run --once`: one reconcile as the agent does it. With `--json`,
/// one [`Report`] line on stdout (also on failure, with the exit code of
/// the error).
pub fn run_once(args: &Cli, as_json: bool) -> Result<Code> {
    if let Some(agent) = std::env::var(AGENT_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        // A reconcile outlives no agent: it would hold the state directory
        // against the agent's restart. (Killed mid-transition, it is
        // finished or undone by recover(), as after a crash.)
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .context("PR_SET_PDEATHSIG")?;
        if nix::unistd::getppid().as_raw() != agent {
            anyhow::bail!("the agent (pid {agent}) is gone");
        }
    }
    let mut status = None;
    let result = (|| {
        let config = load_config(args)?;
        let mut engine = Engine::open(config.clone())?;
        let src = ferry_engine::fetch::source(&config)?;
        let r = reconcile(&config, args.facts.as_deref(), &mut engine, &*src);
        status = engine.status().ok();
        r
    })();
    let current = status.as_ref().and_then(|s| s.current.as_ref());
    let report = Report {
        result: match &result {
            Ok(o) => o.result(),
            Err(_) => ReconcileResult::Failed,
        },
        text: match &result {
            Ok(o) => o.to_string(),
            Err(e) => format!("{e:#}"),
        },
        activation_error: result.as_ref().err().is_some_and(is_activation_error),
        generation: current.map(|g| g.id),
        revision: current.map(|g| g.revision.clone()),
        fetched_bytes: fetched_bytes(),
    };
    match (result, as_json) {
        (r, true) => {
            println!("{}", serde_json::to_string(&report)?);
            Ok(r.as_ref().map_or_else(Code::of, |_| Code::Success))
        }
        (Ok(_), false) => {
            println!("{}: {}", report.result.as_str(), report.text);
            Ok(Code::Success)
        }
        (Err(e), false) => Err(e),
    }
}
