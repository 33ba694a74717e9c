//! `ferry fleet status|audit`: the admin's view of what devices report
//! over the fleet channel (the retained messages on the broker).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ferry_fleet::broker::{Broker, TlsFiles};

use crate::cli::{BrokerArgs, FleetAction};
use crate::exit::Code;
use crate::output;

fn duration(flag: &str, v: &str) -> Result<Duration> {
    ferry_core::duration::parse(v)
        .with_context(|| format!("{flag} {v:?}: not a duration (e.g. 500ms, 30s, 15m)"))
}

/// The retained messages on `filter`.
fn collect(b: &BrokerArgs, filter: &str) -> Result<Vec<(String, Vec<u8>)>> {
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
        &broker, &tls, &client_id, filter, quiet,
    ))?)
}

pub fn admin(action: &FleetAction) -> Result<Code> {
    match action {
        FleetAction::Status {
            broker,
            revision,
            stale,
            out,
        } => {
            let stale = duration("--stale", stale)?;
            let messages = collect(broker, &ferry_fleet::topics::all_status(&broker.prefix))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let status =
                ferry_fleet::admin::fleet_status(messages, revision.as_deref(), stale, now);
            output::fleet_status(&status, now, out.json)?;
            Ok(Code::Success)
        }
        FleetAction::Audit {
            broker,
            device,
            out,
        } => {
            ferry_fleet::topics::check_name("device id", device)?;
            let messages = collect(
                broker,
                &ferry_fleet::topics::audit_filter(&broker.prefix, device),
            )?;
            let audit = ferry_fleet::admin::device_audit(&broker.prefix, device, messages)?;
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
