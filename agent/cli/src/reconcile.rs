//! The binary's side of a reconcile: `ferry run --once` (one reconcile as
//! the agent does it, in the process the agent starts for it) and the
//! operator's `apply`, `rollback` and `import`. All of them run
//! [`ferry_engine::reconcile::reconcile`]; this module says what came of it.

use std::path::Path;

use anyhow::{Context, Result};
use ferry_core::agent::{Outcome, Overrides, ReconcileResult, Report};
use ferry_engine::reconcile::{Goal, Reconciled, Request};
use ferry_engine::{ApplyOutcome, Config, Engine, EngineError};
use ferry_source::Source;

use crate::cli::Cli;
use crate::exit::Code;
use crate::output;
use crate::setup::{load_config, load_facts};

/// Set in reconcile processes to the agent's pid: they die with it.
pub const AGENT_PID_ENV: &str = "FERRY_AGENT_PID";

/// The agent's reconcile of the source's newest revision.
pub fn reconcile(
    config: &Config,
    facts_file: Option<&Path>,
    engine: &mut Engine,
    src: &dyn Source,
) -> Result<Reconciled> {
    let facts = load_facts(facts_file, config)?;
    let req = Request {
        goal: Goal::Newest {
            source: src,
            facts: &facts,
        },
        actor: ferry_engine::reconcile::AGENT,
        overrides: Overrides::default(),
        clock: None,
    };
    Ok(ferry_engine::reconcile::reconcile(engine, &req)?)
}

/// A reconcile an operator started: prints what came of it, reboots when
/// it is due, and says which exit code that is. Held by the update policy
/// or a rejection: 8; rolled back by the health gate: 7.
pub fn operator(mut engine: Engine, req: &Request<'_>, as_json: bool) -> Result<Code> {
    let done = ferry_engine::reconcile::reconcile(&mut engine, req)?;
    let code = print_reconciled(&engine, &done, as_json)?;
    if done.reboot.is_some() {
        ferry_engine::reconcile::reboot(engine);
    }
    Ok(code)
}

/// Prints a reconcile's result the way `apply` always has (the switch it
/// made), or why it changed nothing; the exit code that goes with it.
pub fn print_reconciled(engine: &Engine, done: &Reconciled, as_json: bool) -> Result<Code> {
    let (result, code, reason) = match &done.outcome {
        // The reboot a pending firmware switch waited for: what was asked.
        Outcome::Held { reason } if done.reboot.is_some() => {
            if as_json {
                println!(
                    "{}",
                    serde_json::json!({"result": "rebooting", "reason": reason})
                );
            } else {
                println!("{reason}");
            }
            return Ok(Code::Success);
        }
        Outcome::Applied { .. } | Outcome::NoChange => {
            if let Some(applied) = &done.applied {
                output::outcome(applied, as_json)?;
            }
            return Ok(Code::Success);
        }
        Outcome::Held { reason } => {
            let hint = if done.awaiting_reboot.is_some() {
                ""
            } else {
                "; --ignore-window applies it now"
            };
            ("held", Code::Refused, format!("{reason}{hint}"))
        }
        Outcome::Skipped { .. } => {
            let revision = done.revision.as_deref().unwrap_or_default();
            let why = engine
                .rejection(revision)?
                .map(|r| format!(" ({})", r.reason))
                .unwrap_or_default();
            (
                "skipped",
                Code::Refused,
                format!(
                    "revision {revision} was rolled back before{why}; --force applies it anyway"
                ),
            )
        }
        Outcome::RolledBack { reason } => (
            "rolled-back",
            Code::RolledBack,
            match &done.rolled_back {
                Some(ApplyOutcome::Switched { to, .. }) => {
                    format!("health checks failed: {reason}; rolled back to generation {to}")
                }
                _ => format!("health checks failed: {reason}"),
            },
        ),
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "result": result,
                "reason": reason,
                "revision": done.revision,
                "applied": done.applied,
                "rolled_back": done.rolled_back,
            }))?
        );
    } else {
        if let Some(applied) = &done.applied {
            output::outcome(applied, false)?;
        }
        eprintln!("ferry: {result}: {reason}");
    }
    Ok(code)
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

/// Writes the paths the agent's drift watch is to cover for the current
/// generation (`state_dir/watch.json`); the agent checks in full at every
/// poll while it cannot.
fn write_watch_list(engine: &Engine, config: &Config) {
    let path = config.state_dir.join(crate::drift_watch::FILE);
    let written = engine
        .watch_list()
        .map_err(anyhow::Error::from)
        .and_then(|list| Ok(serde_json::to_vec(&list.unwrap_or_default())?))
        .and_then(|text| {
            ferry_engine::fsutil::write_atomic(&path, 0o600, &mut text.as_slice())
                .with_context(|| format!("writing {}", path.display()))
        });
    if let Err(e) = written {
        tracing::warn!(error = %format!("{e:#}"), "the drift watch cannot be armed");
    }
}

/// `ferry run --once`: one reconcile as the agent does it. With `--json`,
/// one [`Report`] line on stdout (also on failure, with the exit code of
/// the error).
pub fn run_once(args: &Cli, as_json: bool) -> Result<Code> {
    // What the agent's drift watch says (only a process the agent started
    // listens to it).
    let mut watch = None;
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
        watch = std::env::var(crate::drift_watch::ENV).ok();
    }
    let mut status = None;
    let mut reboot = None;
    let result = (|| {
        let config = load_config(args)?;
        let mut engine = Engine::open(config.clone())?;
        if watch.as_deref() == Some("quiet") {
            engine.assume_files_unchanged();
        }
        let src = ferry_engine::fetch::source(&config)?;
        let r = reconcile(&config, args.facts.as_deref(), &mut engine, &*src);
        if watch.as_deref() == Some("list") && r.is_ok() {
            write_watch_list(&engine, &config);
        }
        status = engine.status().ok();
        if r.as_ref().is_ok_and(|r| r.reboot.is_some()) {
            reboot = Some(engine);
        }
        r.map(|r| r.outcome)
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
    let code = match (result, as_json) {
        (r, true) => {
            println!("{}", serde_json::to_string(&report)?);
            r.as_ref().map_or_else(Code::of, |_| Code::Success)
        }
        (Ok(_), false) => {
            println!("{}: {}", report.result.as_str(), report.text);
            Code::Success
        }
        (Err(e), false) => return Err(e),
    };
    if let Some(engine) = reboot {
        ferry_engine::reconcile::reboot(engine);
    }
    Ok(code)
}
