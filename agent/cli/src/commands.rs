//! Carries out one command.

use anyhow::{Context, Result};
use ferry_engine::facts::Facts;
use ferry_engine::report::report;
use ferry_engine::{ApplyOutcome, Config, Engine, source};

use crate::cli::{AuditAction, Cli, Command, FirmwareAction, GenerationsAction};
use crate::exit::Code;
use crate::output;

pub fn load_config(args: &Cli) -> Result<Config> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(dir) = &args.state_dir {
        config.state_dir =
            std::path::absolute(dir).with_context(|| format!("state dir {}", dir.display()))?;
    }
    Ok(config)
}

/// `--facts FILE` as given, else this system's facts plus the configured facts file.
pub fn load_facts(file: Option<&std::path::Path>, config: &Config) -> Result<Facts> {
    Ok(match file {
        Some(path) => Facts::from_file(path)?,
        None => Facts::probe(&config.facts)?,
    })
}

/// After firmware was switched: release the state directory, then reboot
/// (unless told not to).
fn reboot_if_required(engine: Engine, outcome: &ApplyOutcome, no_reboot: bool, command: &[String]) {
    if matches!(outcome, ApplyOutcome::RebootRequired { .. }) && !no_reboot {
        drop(engine);
        ferry_engine::health::reboot(command);
    }
}

pub fn run(args: Cli) -> Result<Code> {
    if let Command::Demo { dir } = &args.command {
        return crate::demo::run(dir.as_deref());
    }
    if let Command::Rules { action } = args.command {
        return crate::rules::run(action);
    }
    let config = load_config(&args)?;
    let facts_file = args.facts.clone();
    let facts = || load_facts(facts_file.as_deref(), &config);
    match args.command {
        Command::Status(out) => {
            let status = match Engine::open_read_only(config.clone())? {
                Some(engine) => Some(engine.status()?),
                None => None,
            };
            // The running agent's view, when one answers on its socket.
            let agent = config
                .agent
                .control_socket
                .exists()
                .then(|| {
                    crate::control::call(
                        &config.agent.control_socket,
                        &serde_json::json!({"cmd": "status"}),
                    )
                    .ok()
                })
                .flatten()
                .map(|v| v["agent"].clone());
            output::status(&config.state_dir, status.as_ref(), agent.as_ref(), out.json)?;
        }
        Command::Plan {
            out,
            exit_code,
            revision,
        } => {
            let src = source::from_config(&config)?;
            let facts = facts()?;
            // Planning works before anything was applied: against nothing.
            let engine = Engine::open_read_only(config.clone())?;
            let (rev, desired, plan) = match &engine {
                Some(e) => e.plan(&*src, revision.as_deref(), &facts)?,
                None => ferry_engine::engine::plan_source(
                    &*src,
                    revision.as_deref(),
                    &facts,
                    &Default::default(),
                )?,
            };
            let report = report(&plan, &*rev, &desired, engine.as_ref().map(Engine::store));
            output::plan(&report, out.json)?;
            if exit_code && !plan.is_empty() {
                return Ok(Code::PlanNotEmpty);
            }
        }
        Command::Render { out, revision } => {
            let src = source::from_config(&config)?;
            let facts = facts()?;
            let (rev, desired) =
                ferry_engine::engine::resolve_source(&*src, revision.as_deref(), &facts)?;
            output::desired(rev.id(), &desired.resources, out.json)?;
        }
        Command::Recover { early } => {
            let engine = if early {
                Engine::open_early(config)?
            } else {
                Engine::open(config)?
            };
            let status = engine.status()?;
            println!(
                "recovered: generation {} is current",
                status
                    .current
                    .map_or("none".to_owned(), |g| g.id.to_string())
            );
            if let Some(slot) = status.awaiting_reboot {
                println!("a firmware update waits for a reboot into slot {slot}");
            }
        }
        Command::Apply { out, now: true, .. } => {
            let answer = crate::daemon::request_now(&config.agent.control_socket)?;
            if out.json {
                println!("{answer}");
            } else {
                println!("the agent will reconcile now");
            }
        }
        Command::Run => return crate::daemon::run(&args),
        Command::Apply { out, no_reboot, .. } => {
            let src = source::from_config(&config)?;
            let facts = facts()?;
            let reboot_command = config.firmware.reboot_command.clone();
            let mut engine = Engine::open(config)?;
            let outcome = engine.apply(&*src, &facts)?;
            output::outcome(&outcome, out.json)?;
            reboot_if_required(engine, &outcome, no_reboot, &reboot_command);
        }
        Command::Rollback { to, out, no_reboot } => {
            let reboot_command = config.firmware.reboot_command.clone();
            let mut engine = Engine::open(config)?;
            let outcome = engine.rollback(to)?;
            output::outcome(&outcome, out.json)?;
            reboot_if_required(engine, &outcome, no_reboot, &reboot_command);
        }
        Command::Gc(out) => {
            let mut engine = Engine::open(config)?;
            let outcome = engine.gc()?;
            output::gc(&outcome, out.json)?;
        }
        Command::Generations { out, action } => match action {
            None => {
                let (gens, current, previous) = match Engine::open_read_only(config)? {
                    Some(e) => (
                        e.generations()?,
                        e.db().current_generation()?,
                        e.db().previous_generation()?,
                    ),
                    None => (Vec::new(), None, None),
                };
                output::generations(&gens, current, previous, out.json)?;
            }
            Some(GenerationsAction::Pin { n }) => Engine::open(config)?.pin(n, true)?,
            Some(GenerationsAction::Unpin { n }) => Engine::open(config)?.pin(n, false)?,
        },
        Command::Firmware { action } => match action {
            FirmwareAction::Status(out) => {
                // Read-only: with no state yet, only the boot environment's view.
                let status = match Engine::open_read_only(config.clone())? {
                    Some(engine) => engine.firmware_status()?,
                    None => ferry_engine::firmware::Firmware::from_config(&config.firmware)
                        .map_err(ferry_engine::EngineError::from)?
                        .map(|fw| fw.status())
                        .transpose()
                        .map_err(ferry_engine::EngineError::from)?,
                };
                let status = status.ok_or_else(|| {
                    anyhow::anyhow!("no [firmware] boot environment is configured")
                })?;
                output::firmware(&status, out.json)?;
            }
            FirmwareAction::MarkGood => match Engine::open(config)?.firmware_mark_good()? {
                Some((slot, true)) => println!("slot {slot} marked good"),
                Some((slot, false)) => println!("slot {slot} was already marked good"),
                None => anyhow::bail!("no [firmware] boot environment is configured"),
            },
        },
        Command::Audit { action } => {
            let engine = Engine::open_read_only(config)?;
            match action {
                AuditAction::List { out, last } => {
                    let mut entries = match &engine {
                        Some(e) => e.audit_entries()?,
                        None => Vec::new(),
                    };
                    if let Some(n) = last {
                        entries.drain(..entries.len().saturating_sub(n));
                    }
                    output::audit(&entries, out.json)?;
                }
                AuditAction::Verify(out) => {
                    let n = match &engine {
                        Some(e) => e.audit_verify()?,
                        None => 0,
                    };
                    output::audit_ok(n, out.json)?;
                }
            }
        }
        Command::Demo { .. } | Command::Rules { .. } | Command::Wasm { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(Code::Success)
}
