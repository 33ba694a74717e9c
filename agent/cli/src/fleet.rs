//! `ferry fleet status|audit`: the admin's view of what devices report
//! over the fleet channel (the retained messages on the broker); and
//! `ferry fleet report`, what the agent publishes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ferry_fleet::broker::{Broker, TlsFiles};

use crate::cli::{BrokerArgs, Cli, FleetAction};
use crate::exit::Code;
use crate::output;

/// `ferry fleet report`: the device's state and the audit entries after
/// `after`, as ferry-fleet pages them, read through the engine's read API.
pub fn report_page(
    engine: &ferry_engine::Engine,
    after: u64,
    limit: usize,
) -> Result<ferry_fleet::message::ReportPage> {
    use ferry_fleet::message::{MAX_REJECTED, ReportPage, StateView};
    let s = engine.report_state(MAX_REJECTED)?;
    let state = StateView {
        generation: s.generation,
        revision: s.revision,
        generation_time_ms: s.generation_time_ms,
        firmware: s.firmware,
        audit_head: s.audit_head,
        rejected: s.rejected,
        drifted: s.drifted,
    };
    let (rows, prev) = engine.audit_after(after, limit.min(ferry_fleet::channel::MAX_PAGE))?;
    Ok(ReportPage::assemble(state, rows, prev))
}

fn duration(flag: &str, v: &str) -> Result<Duration> {
    ferry_core::duration::parse(v)
        .with_context(|| format!("{flag} {v:?}: not a duration (e.g. 500ms, 30s, 15m)"))
}

/// The retained messages on `filter`, each handed to `take`.
fn collect(b: &BrokerArgs, filter: &str, take: &mut ferry_fleet::admin::Take<'_>) -> Result<()> {
    let broker = Broker::parse(&b.mqtt)?;
    ferry_fleet::topics::check_prefix(&b.prefix)?;
    let tls = TlsFiles {
        ca: b.ca.clone(),
        cert: b.cert.clone(),
        key: b.key.clone(),
    };
    let client_id = b
        .client_id
        .clone()
        .unwrap_or_else(|| format!("ferry-admin-{}", std::process::id()));
    let quiet = duration("--quiet", &b.quiet)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(ferry_fleet::admin::collect(
        &broker, &tls, &client_id, filter, quiet, take,
    ))?)
}

/// The revision devices are measured against: `--revision`, else with
/// `--from-source` the newest revision of the signed repository the
/// configuration names (fetched and verified as a device would), else none.
fn target(revision: Option<&str>, from_source: bool, args: &Cli) -> Result<Option<String>> {
    if let Some(r) = revision {
        return Ok(Some(r.to_owned()));
    }
    if !from_source {
        return Ok(None);
    }
    let config = crate::setup::load_config(args)?;
    let source = ferry_engine::fetch::source(&config)?;
    let rev = source
        .fetch()
        .context("reading the newest revision from the configured source")?;
    Ok(Some(rev.id().to_owned()))
}

pub fn admin(action: &FleetAction, args: &Cli) -> Result<Code> {
    match action {
        FleetAction::Status {
            broker,
            revision,
            from_source,
            stale,
            out,
        } => {
            let stale = duration("--stale", stale)?;
            let target = target(revision.as_deref(), *from_source, args)?;
            let mut statuses = ferry_fleet::admin::StatusCollector::new(&broker.prefix);
            collect(
                broker,
                &ferry_fleet::topics::all_status(&broker.prefix),
                &mut |t, p| statuses.add(t, p),
            )?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let status = statuses.finish(target.as_deref(), stale, now);
            output::fleet_status(&status, now, out.json)?;
            Ok(Code::Success)
        }
        FleetAction::Audit {
            broker,
            device,
            out,
        } => {
            ferry_fleet::topics::check_name("device id", device)?;
            let mut entries = ferry_fleet::admin::AuditCollector::new(&broker.prefix, device);
            collect(
                broker,
                &ferry_fleet::topics::audit_filter(&broker.prefix, device),
                &mut |t, p| entries.add(t, p),
            )?;
            let audit = entries.finish();
            output::fleet_audit(&audit, out.json)?;
            Ok(if audit.verified {
                Code::Success
            } else {
                Code::Verification
            })
        }
        FleetAction::Report { .. } => unreachable!("needs the device's configuration"),
    }
}
