//! Carries out one command.

use anyhow::Result;
use ferry_core::agent::Overrides;
use ferry_engine::Engine;
use ferry_engine::engine::LOCAL_OPERATOR;
use ferry_engine::reconcile::{Goal, Request};
use ferry_engine::render::report::report;

#[allow(unused_imports)] // only builds that leave a feature out use it
use crate::cli::not_built_in;
use crate::cli::{
    AuditAction, AuditFilter, BundleAction, Cli, Command, FirmwareAction, GenerationsAction,
    TimeFloorAction,
};
use crate::exit::Code;
use crate::output;
use crate::setup::{load_config, load_facts};

pub fn run(args: Cli) -> Result<Code> {
    if let Command::Demo { dir, publish } = &args.command {
        #[cfg(feature = "tuf")]
        return match (dir, publish) {
            (Some(dir), true) => crate::demo::publish(dir),
            _ => crate::demo::run(dir.as_deref()),
        };
        #[cfg(not(feature = "tuf"))]
        {
            let _ = (dir, publish);
            anyhow::bail!(not_built_in("the demo", "tuf"));
        }
    }
    #[cfg(not(feature = "wasm"))]
    if let Command::Wasm { .. } = &args.command {
        anyhow::bail!(not_built_in("`ferry wasm`", "wasm"));
    }
    if let Command::Rules { action } = args.command {
        return crate::rules::run(action);
    }
    #[cfg(feature = "sigstore")]
    if let Command::Sigstore { action } = args.command {
        return crate::sigstore::run(action);
    }
    #[cfg(not(feature = "sigstore"))]
    if let Command::Sigstore { .. } = &args.command {
        anyhow::bail!(not_built_in("`ferry sigstore`", "sigstore"));
    }
    #[cfg(not(feature = "delta"))]
    if let Command::Chunk { .. } = &args.command {
        anyhow::bail!(not_built_in("`ferry chunk`", "delta"));
    }
    #[cfg(feature = "delta")]
    if let Command::Chunk {
        image,
        out,
        min,
        avg,
        max,
        level,
        json,
    } = &args.command
    {
        let params = ferry_delta::Params {
            min: *min,
            avg: *avg,
            max: *max,
            ..Default::default()
        };
        use anyhow::Context as _;
        let published = ferry_delta::chunk_image(image, out, &params, *level)
            .with_context(|| format!("chunking {}", image.display()))?;
        output::chunked(&published, json.json)?;
        return Ok(Code::Success);
    }
    #[cfg(feature = "fleet")]
    if let Command::Fleet { action } = &args.command
        && !matches!(action, crate::cli::FleetAction::Report { .. })
    {
        return crate::fleet::admin(action, &args);
    }
    #[cfg(not(feature = "fleet"))]
    if let Command::Fleet { .. } = &args.command {
        anyhow::bail!(not_built_in("`ferry fleet`", "fleet"));
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
                        ferry_core::control::Request::Status,
                    )
                    .ok()
                })
                .flatten()
                .and_then(|r| match r.body {
                    ferry_core::control::Body::Status { agent } => Some(*agent),
                    _ => None,
                })
                .and_then(|agent| {
                    // An agent of another state directory on the same
                    // socket (a second ferry.toml, a test setup) does not
                    // speak for this one.
                    let Some(theirs) = agent.state_dir.as_deref() else {
                        return serde_json::to_value(agent).ok();
                    };
                    let same = match (theirs.canonicalize(), config.state_dir.canonicalize()) {
                        (Ok(a), Ok(b)) => a == b,
                        _ => theirs == config.state_dir,
                    };
                    if !same {
                        eprintln!(
                            "ferry: warning: the agent on {} (pid {}) serves {}, not {}; its view is not shown",
                            config.agent.control_socket.display(),
                            agent.pid,
                            theirs.display(),
                            config.state_dir.display()
                        );
                        return None;
                    }
                    serde_json::to_value(agent).ok()
                });
            output::status(&config.state_dir, status.as_ref(), agent.as_ref(), out.json)?;
        }
        Command::Plan {
            out,
            exit_code,
            revision,
        } => {
            let src = ferry_engine::fetch::source(&config)?;
            let facts = facts()?;
            // Planning works before anything was applied: against nothing.
            let engine = Engine::open_read_only(config.clone())?;
            let (rev, desired, plan, drift) = match &engine {
                Some(e) => e.plan(&*src, revision.as_deref(), &facts)?,
                None => {
                    let (rev, desired, plan) = ferry_engine::engine::plan_source(
                        &*src,
                        revision.as_deref(),
                        &facts,
                        &Default::default(),
                    )?;
                    (rev, desired, plan, Vec::new())
                }
            };
            let on_device = |id: &_| engine.as_ref().and_then(|e| e.installed_reader(id));
            let mut report = report(
                &plan,
                &*rev,
                &desired,
                engine.as_ref().map(Engine::store),
                &on_device,
            );
            report.drift = drift
                .iter()
                .map(ferry_engine::engine::Found::audit)
                .collect();
            ferry_engine::engine::estimate_deltas(
                &config,
                engine.as_ref(),
                &mut report,
                &plan,
                &*rev,
                &desired,
            );
            output::plan(&report, out.json)?;
            // Drift counts, restored or only reported.
            if exit_code && (!plan.is_empty() || !drift.is_empty()) {
                return Ok(Code::PlanNotEmpty);
            }
        }
        Command::Render { out, revision } => {
            let src = ferry_engine::fetch::source(&config)?;
            let facts = facts()?;
            let (rev, desired) =
                ferry_engine::engine::resolve_source(&*src, revision.as_deref(), &facts)?;
            output::desired(rev.id(), &desired.resources, out.json)?;
        }
        Command::Recover { out, early, wait } => {
            // ferry-recover.service runs this at every boot, wherever
            // state_dir is: before the first apply there is no interrupted
            // transition, and nothing is created. (The later `recover`
            // still marks the booted firmware slot good.)
            if early && !config.state_dir.join("state.db").exists() {
                if out.json {
                    println!("{}", serde_json::json!({"current": null, "state": "none"}));
                } else {
                    println!(
                        "nothing to recover: no state in {} yet",
                        config.state_dir.display()
                    );
                }
                return Ok(Code::Success);
            }
            let engine = if early {
                Engine::open_early(config)?
            } else {
                let mut engine =
                    crate::import::open_waiting(&config, std::time::Duration::from_secs(wait))?;
                engine.confirm_booted_slot()?;
                engine
            };
            let status = engine.status()?;
            output::recovered(&status, out.json)?;
        }
        Command::Apply { out, now: true, .. } => {
            let answer = crate::control::call(
                &config.agent.control_socket,
                ferry_core::control::Request::Apply,
            )?;
            if out.json {
                println!("{}", serde_json::to_string(&answer)?);
            } else {
                println!("the agent will reconcile now");
            }
        }
        Command::Run { once: true, out } => return crate::reconcile::run_once(&args, out.json),
        Command::Run { .. } => return crate::daemon::run(&args),
        Command::Import {
            path,
            label,
            device,
            wait,
            no_reboot,
            overrides,
            out,
        } => {
            let facts = facts()?;
            return crate::import::import(
                config,
                facts,
                &crate::import::Request {
                    path: &path,
                    label: label.as_deref(),
                    device: device.as_deref(),
                    wait: std::time::Duration::from_secs(wait),
                    overrides: Overrides {
                        ignore_window: overrides.ignore_window,
                        force: overrides.force,
                        no_reboot,
                    },
                    json: out.json,
                },
            );
        }
        Command::Bundle {
            action:
                BundleAction::Export {
                    out,
                    for_device,
                    label,
                    image_size,
                    delta_from,
                    json,
                },
        } => {
            return crate::import::export(
                &config,
                &for_device,
                &out,
                &label,
                image_size,
                delta_from.as_deref(),
                json.json,
            );
        }
        Command::Apply {
            out,
            no_reboot,
            overrides,
            ..
        } => {
            let src = ferry_engine::fetch::source(&config)?;
            let facts = facts()?;
            let engine = Engine::open(config)?;
            let req = Request {
                goal: Goal::Newest {
                    source: &*src,
                    facts: &facts,
                },
                actor: LOCAL_OPERATOR,
                overrides: Overrides {
                    ignore_window: overrides.ignore_window,
                    force: overrides.force,
                    no_reboot,
                },
                clock: None,
            };
            return crate::reconcile::operator(engine, &req, out.json);
        }
        Command::Rollback {
            to,
            force,
            out,
            no_reboot,
        } => {
            let engine = Engine::open(config)?;
            let req = Request {
                goal: Goal::Generation(to),
                actor: LOCAL_OPERATOR,
                overrides: Overrides {
                    ignore_window: false,
                    force,
                    no_reboot,
                },
                clock: None,
            };
            return crate::reconcile::operator(engine, &req, out.json);
        }
        Command::Verify {
            out,
            firmware,
            rate,
        } => {
            let Some(engine) = Engine::open_read_only(config)? else {
                anyhow::bail!(ferry_engine::EngineError::Refused(
                    "nothing is installed yet: no generation to verify".to_owned()
                ));
            };
            let rate = (rate > 0).then(|| rate.saturating_mul(1 << 20));
            let report = engine.verify(firmware, rate)?;
            output::verified(&report, out.json)?;
            if !report.problems.is_empty() {
                return Ok(Code::Verification);
            }
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
            Some(GenerationsAction::Pin { n }) => {
                Engine::open(config)?.pin(n, true)?;
                output::pinned(n, true, out.json)?;
            }
            Some(GenerationsAction::Unpin { n }) => {
                Engine::open(config)?.pin(n, false)?;
                output::pinned(n, false, out.json)?;
            }
        },
        Command::Firmware { action } => match action {
            FirmwareAction::Status(out) => {
                // Read-only: with no state yet, only the boot environment's view.
                let status = match Engine::open_read_only(config.clone())? {
                    Some(engine) => engine.firmware_status()?,
                    None => {
                        ferry_engine::activate::firmware::Firmware::from_config(&config.firmware)
                            .map_err(ferry_engine::EngineError::from)?
                            .map(|fw| fw.status())
                            .transpose()
                            .map_err(ferry_engine::EngineError::from)?
                    }
                };
                let status = status.ok_or_else(no_firmware)?;
                output::firmware(&status, out.json)?;
            }
            FirmwareAction::Cancel(out) => {
                match Engine::open(config)?.firmware_cancel(LOCAL_OPERATOR)? {
                    Some((transition, slot)) => output::cancelled(transition, &slot, out.json)?,
                    None => {
                        return Err(ferry_engine::EngineError::Refused(
                            "no firmware switch waits for a reboot".into(),
                        )
                        .into());
                    }
                }
            }
            FirmwareAction::MarkGood(out) => match Engine::open(config)?.firmware_mark_good()? {
                Some((slot, changed)) => output::marked_good(&slot, changed, out.json)?,
                None => return Err(no_firmware().into()),
            },
        },
        Command::Audit {
            action: AuditAction::Flush(out),
        } => {
            let n = Engine::open(config)?.drain_audit_spool();
            if out.json {
                println!("{}", serde_json::json!({ "appended": n }));
            } else {
                println!("appended {n} spooled audit entries");
            }
        }
        Command::Audit { action } => {
            let engine = Engine::open_read_only(config.clone())?;
            match action {
                AuditAction::List { out, last, filter } => {
                    let keep = AuditSelect::new(&filter)?;
                    let mut entries: Vec<_> = match &engine {
                        Some(e) => e.audit_entries()?,
                        None => Vec::new(),
                    };
                    entries.retain(|e| keep.matches(e));
                    if let Some(n) = last {
                        entries.drain(..entries.len().saturating_sub(n));
                    }
                    output::audit(&entries, out.json)?;
                }
                AuditAction::Export { after, filter } => {
                    let keep = AuditSelect::new(&filter)?;
                    let (rows, base) = match &engine {
                        Some(e) => (e.audit_with_hashes()?, e.db().audit_base()?),
                        None => (Vec::new(), None),
                    };
                    let facts = facts()?;
                    output::audit_export(
                        &rows,
                        base.as_ref().map(|(_, h)| h.as_str()),
                        &facts,
                        after.unwrap_or(0),
                        |e| keep.matches(e),
                    )?;
                }
                AuditAction::Verify(out) => {
                    let n = match &engine {
                        Some(e) => e.audit_verify()?,
                        None => 0,
                    };
                    output::audit_ok(n, out.json)?;
                }
                AuditAction::Flush(_) => unreachable!("handled above"),
            }
        }
        #[cfg(not(feature = "fleet"))]
        Command::Fleet { .. } => unreachable!("refused above"),
        #[cfg(feature = "fleet")]
        Command::Fleet { action } => {
            let crate::cli::FleetAction::Report { after, limit } = action else {
                unreachable!("handled above")
            };
            let page = match Engine::open_read_only(config.clone())? {
                Some(e) => crate::fleet::report_page(&e, after, limit)?,
                None => ferry_fleet::message::ReportPage::default(),
            };
            output::json_line(&page)?;
        }
        Command::TimeFloor { action, out } => match action {
            None => {
                let floor = ferry_engine::fetch::time_floor(&config, &config.state_dir)?;
                output::time_floor(&floor, out.json)?;
            }
            Some(TimeFloorAction::Repair { at }) => {
                let at = match at {
                    Some(t) => Some(
                        t.parse::<jiff::Timestamp>()
                            .map_err(|e| {
                                crate::exit::Usage(format!("--at {t:?}: not an RFC 3339 time: {e}"))
                            })?
                            .as_second(),
                    ),
                    None => None,
                };
                let t = Engine::open(config)?.repair_time_floor(at)?;
                output::time_floor_repaired(t, out.json)?;
            }
        },
        Command::Demo { .. }
        | Command::Chunk { .. }
        | Command::Rules { .. }
        | Command::Sigstore { .. }
        | Command::Wasm { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(Code::Success)
}

/// A firmware command on a device whose ferry.toml configures no boot
/// environment: a configuration error (exit 2).
fn no_firmware() -> ferry_engine::config::ConfigError {
    ferry_engine::config::ConfigError::Invalid {
        key: "firmware.bootenv",
        message: "no [firmware] boot environment is configured".into(),
    }
}

/// Which audit entries `--since`, `--actor` and `--event` select.
struct AuditSelect {
    since_ms: Option<i64>,
    actor: Option<String>,
    event: Option<String>,
}

impl AuditSelect {
    fn new(f: &AuditFilter) -> Result<AuditSelect> {
        let since_ms = match &f.since {
            Some(s) => Some(parse_since(s, jiff::Timestamp::now())?),
            None => None,
        };
        Ok(AuditSelect {
            since_ms,
            actor: f.actor.clone(),
            event: f.event.clone(),
        })
    }

    fn matches(&self, e: &ferry_core::audit::AuditEntry) -> bool {
        self.since_ms.is_none_or(|t| e.time_ms >= t)
            && self.actor.as_deref().is_none_or(|a| e.actor.starts_with(a))
            && self.event.as_deref().is_none_or(|ev| e.event == ev)
    }
}

/// `--since`: RFC 3339, a UTC date, or an age (`90m`, `24h`, `7d`) before `now`.
fn parse_since(s: &str, now: jiff::Timestamp) -> Result<i64, crate::exit::Usage> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        let t = d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|e| crate::exit::Usage(format!("--since {s:?}: {e}")))?;
        return Ok(t.timestamp().as_millisecond());
    }
    let age = ferry_core::duration::parse(s).ok_or_else(|| {
        crate::exit::Usage(format!(
            "--since {s:?}: expected RFC 3339, YYYY-MM-DD or an age like 90m, 24h, 7d"
        ))
    })?;
    Ok(now
        .as_millisecond()
        .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_accepts_timestamps_dates_and_ages() {
        let now: jiff::Timestamp = "2026-11-26T12:00:00Z".parse().unwrap_or_default();
        let ms = |s: &str| parse_since(s, now).ok();
        assert_eq!(
            ms("2026-11-26T08:00:00Z"),
            Some(now.as_millisecond() - 4 * 3_600_000)
        );
        assert_eq!(
            ms("2026-11-26"),
            Some(now.as_millisecond() - 12 * 3_600_000)
        );
        assert_eq!(ms("90m"), Some(now.as_millisecond() - 90 * 60_000));
        assert_eq!(ms("7d"), Some(now.as_millisecond() - 7 * 86_400_000));
        assert_eq!(ms("7y"), None);
        assert_eq!(ms("yesterday"), None);
        assert_eq!(ms(""), None);
    }
}
