//! Human and JSON renderings of command results.

use std::io::{self, Write};
use std::path::Path;

use anyhow::Result;
use ferry_core::audit::AuditEntry;
use ferry_core::{Op, ResourceSet};
use ferry_engine::render::report::PlanReport;
use ferry_engine::store::state::GenerationRow;
use ferry_engine::{ApplyOutcome, GcOutcome, Status};
use serde::Serialize;
use serde_json::json;

fn print_json(v: &impl Serialize) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn time(ms: i64) -> String {
    // UTC, RFC 3339 to the second, without a date library.
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn status(
    state_dir: &Path,
    s: Option<&Status>,
    agent: Option<&serde_json::Value>,
    as_json: bool,
) -> Result<()> {
    if as_json {
        let mut v = match s {
            Some(s) => serde_json::to_value(s)?,
            None => json!({"state_dir": state_dir, "current": null, "generations": 0}),
        };
        v["agent"] = agent.cloned().unwrap_or(serde_json::Value::Null);
        return print_json(&v);
    }
    let mut out = io::stdout().lock();
    writeln!(out, "state dir:   {}", state_dir.display())?;
    match agent {
        Some(a) => {
            let t = |k: &str| {
                a[k].as_u64().map_or("-".to_owned(), |s| {
                    time(i64::try_from(s).unwrap_or(i64::MAX).saturating_mul(1000))
                })
            };
            writeln!(
                out,
                "agent:       {} (pid {}), last poll {}, next poll {}",
                a["state"].as_str().unwrap_or("?"),
                a["pid"],
                t("last_poll"),
                t("next_poll")
            )?;
            if let Some(r) = a["last_result"].as_str() {
                writeln!(out, "last result: {r}")?;
            }
            if let Some(e) = a["last_error"].as_str() {
                writeln!(out, "last error:  {e}")?;
            }
            if let Some(w) = a["drift_watch"].as_str() {
                writeln!(out, "drift watch: {w}")?;
            }
            if let Some(e) = a["config_error"].as_str() {
                writeln!(
                    out,
                    "config:      reload refused, the agent runs the previous configuration: {e}"
                )?;
            }
        }
        None => writeln!(out, "agent:       not running")?,
    }
    let Some(s) = s else {
        writeln!(out, "generation:  none (nothing applied yet)")?;
        return Ok(());
    };
    match &s.current {
        Some(g) => writeln!(
            out,
            "generation:  {} (revision {}, {} resources, since {})",
            g.id,
            g.revision,
            g.resources,
            time(g.created_ms)
        )?,
        None => writeln!(out, "generation:  none")?,
    }
    if let Some(p) = s.previous {
        writeln!(out, "previous:    {p}")?;
    }
    writeln!(out, "generations: {}", s.generations)?;
    if let Some(t) = &s.last_transition {
        write!(
            out,
            "last:        {} #{} {} at {}",
            t.kind,
            t.id,
            t.phase,
            time(t.updated_ms)
        )?;
        if let Some(e) = &t.error {
            write!(out, " ({e})")?;
        }
        writeln!(out)?;
    }
    for t in &s.open_transitions {
        match &s.awaiting_reboot {
            Some(slot) => writeln!(
                out,
                "pending:     {} #{} waits for a reboot into firmware slot {slot}",
                t.kind, t.id
            )?,
            None => writeln!(
                out,
                "pending:     {} #{} in phase {} (recovered at the next apply)",
                t.kind, t.id, t.phase
            )?,
        }
    }
    if s.current_link != s.current.as_ref().map(|g| g.id) {
        writeln!(
            out,
            "warning:     `current` link points to {:?}; recovered at the next apply",
            s.current_link
        )?;
    }
    const SHOWN: usize = 3;
    for r in s.rejected.iter().take(SHOWN) {
        writeln!(
            out,
            "rejected:    revision {} ({}; by {} at {}); `ferry apply --force` applies it anyway",
            r.revision,
            r.reason,
            r.actor,
            time(r.time_ms)
        )?;
    }
    if s.rejected.len() > SHOWN {
        writeln!(
            out,
            "             and {} older rejected revisions (`ferry status --json`)",
            s.rejected.len() - SHOWN
        )?;
    }
    for d in s.drift.iter().take(SHOWN) {
        let what: Vec<String> = d
            .finding
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|f| f["drift"].as_str().unwrap_or("?").replace('_', " "))
                    .collect()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "drift:       {} {} changed on the device ({}) since {}; `ferry plan` shows it",
            d.kind,
            d.name,
            what.join(", "),
            time(d.since_ms)
        )?;
    }
    if s.drift.len() > SHOWN {
        writeln!(
            out,
            "             and {} more changed resources (`ferry status --json`)",
            s.drift.len() - SHOWN
        )?;
    }
    writeln!(out, "audit:       {} entries", s.audit_entries)?;
    Ok(())
}

pub fn plan(r: &PlanReport, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(r);
    }
    let mut out = io::stdout().lock();
    // Drift the plan leaves in place.
    let reported: Vec<&serde_json::Value> = r
        .drift
        .iter()
        .filter(|d| d["policy"] != "restore" || d["restorable"] == false)
        .collect();
    if r.steps.is_empty() {
        writeln!(out, "revision {}: no changes", r.revision)?;
        plan_reported(&mut out, &reported)?;
        return Ok(());
    }
    writeln!(out, "revision {}:", r.revision)?;
    for s in &r.steps {
        let sign = match s.op {
            // Changed on the device; put back as the generation says.
            Op::Change if s.restores_drift => '!',
            Op::Add => '+',
            Op::Change => '~',
            // Firmware a generation no longer names is released, not removed.
            Op::Remove if s.kind == "firmware" => '=',
            Op::Remove => '-',
        };
        let id = format!("{} {}", s.kind, s.name);
        writeln!(out, "  {sign} {id:<44} {}", s.reason_texts.join(", "))?;
        if let Some(diff) = &s.diff {
            for line in diff.lines() {
                writeln!(out, "      {line}")?;
            }
        }
        if let Some(note) = &s.note {
            writeln!(out, "      ({note})")?;
        }
        match &s.download {
            // Worth a line for large content (images) and deltas.
            Some(d) if d.full >= 1 << 20 || d.delta.is_some() => {
                let delta = d
                    .delta
                    .map(|n| format!(", {} by delta", bytes(n)))
                    .unwrap_or_default();
                writeln!(out, "      (download: {} in full{delta})", bytes(d.full))?;
            }
            _ => {}
        }
    }
    let sum = &r.summary;
    let restored = r.steps.iter().filter(|s| s.restores_drift).count();
    let drifted = if restored > 0 {
        format!(" ({restored} changed on the device, to restore)")
    } else {
        String::new()
    };
    writeln!(
        out,
        "{} to add, {} to change{drifted}, {} to remove",
        sum.add, sum.change, sum.remove
    )?;
    plan_reported(&mut out, &reported)?;
    Ok(())
}

/// Drift a plan leaves in place (policy `report`).
fn plan_reported(out: &mut impl Write, reported: &[&serde_json::Value]) -> Result<()> {
    for d in reported {
        let what = d["drift"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|d| d["drift"].as_str().unwrap_or("?").replace('_', " "))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let why = match d["not_restored"].as_str() {
            Some(why) if d["policy"] == "restore" => format!("not restored: {why}"),
            _ => "drift: report leaves it".to_owned(),
        };
        writeln!(
            out,
            "  ? {:<44} changed on the device ({what}); {why}",
            format!(
                "{} {}",
                d["kind"].as_str().unwrap_or("?"),
                d["resource"].as_str().unwrap_or("?")
            )
        )?;
    }
    Ok(())
}

/// The resolved desired state (`ferry render`), secrets redacted.
pub fn desired(revision: &str, resources: &ResourceSet, as_json: bool) -> Result<()> {
    let items: Vec<serde_json::Value> = resources
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(r).expect("resources serialise");
            if r.secret {
                v["content"] = json!("<redacted>");
            }
            v
        })
        .collect();
    if as_json {
        return print_json(&json!({"revision": revision, "resources": items}));
    }
    let mut out = io::stdout().lock();
    writeln!(out, "revision {revision}: {} resources", resources.len())?;
    for r in resources.iter() {
        let content = if r.secret {
            "secret".to_owned()
        } else {
            r.content.to_string()
        };
        let settings: Vec<String> = r
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect();
        writeln!(
            out,
            "  {} {:<40} {content} {}",
            r.kind,
            r.name,
            settings.join(" ")
        )?;
    }
    Ok(())
}

pub fn outcome(o: &ApplyOutcome, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(o);
    }
    let mut out = io::stdout().lock();
    match o {
        ApplyOutcome::RebootRequired {
            to, revision, slot, ..
        } => writeln!(
            out,
            "firmware written to slot {slot} (generation {to}, revision {revision}); it is confirmed after a reboot into it"
        )?,
        ApplyOutcome::NoChange {
            generation,
            revision,
        } => writeln!(
            out,
            "revision {revision}: no changes (generation {})",
            generation.map_or("none".to_owned(), |g| g.to_string())
        )?,
        ApplyOutcome::Restored {
            generation,
            restored,
            ..
        } => writeln!(
            out,
            "restored {restored} resource{} changed on the device (generation {generation} stays current)",
            if *restored == 1 { "" } else { "s" }
        )?,
        ApplyOutcome::Switched {
            from,
            to,
            revision,
            added,
            changed,
            removed,
            ..
        } => writeln!(
            out,
            "switched {} → generation {to} (revision {revision}: {added} added, {changed} changed, {removed} removed)",
            from.map_or("nothing".to_owned(), |g| format!("generation {g}"))
        )?,
    }
    Ok(())
}

/// `ferry verify`.
pub fn verified(r: &ferry_engine::engine::VerifyReport, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(r);
    }
    let mut out = io::stdout().lock();
    let n = r.problems.len();
    writeln!(
        out,
        "verified {} resources ({} read): {}",
        r.checked,
        bytes(r.bytes),
        match n {
            0 => "everything is as installed".to_owned(),
            1 => "1 problem".to_owned(),
            n => format!("{n} problems"),
        }
    )?;
    for p in &r.problems {
        let slot = p["slot"]
            .as_str()
            .map(|s| format!(" (slot {s})"))
            .unwrap_or_default();
        writeln!(
            out,
            "  ! {} {}{slot}: {}",
            p["kind"].as_str().unwrap_or("?"),
            p["resource"].as_str().unwrap_or("?"),
            p["problem"].as_str().unwrap_or("?")
        )?;
    }
    Ok(())
}

/// `ferry recover`: what is current afterwards, and a pending reboot.
pub fn recovered(s: &Status, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(&json!({
            "current": s.current.as_ref().map(|g| g.id),
            "revision": s.current.as_ref().map(|g| &g.revision),
            "awaiting_reboot": s.awaiting_reboot,
            "open_transitions": s.open_transitions.len(),
        }));
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "recovered: generation {} is current",
        s.current
            .as_ref()
            .map_or("none".to_owned(), |g| g.id.to_string())
    )?;
    if let Some(slot) = &s.awaiting_reboot {
        writeln!(out, "a firmware update waits for a reboot into slot {slot}")?;
    }
    Ok(())
}

/// `ferry generations pin|unpin N`.
pub fn pinned(n: u64, pinned: bool, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(&json!({"generation": n, "pinned": pinned}));
    }
    let what = if pinned { "pinned" } else { "unpinned" };
    writeln!(io::stdout().lock(), "generation {n} {what}")?;
    Ok(())
}

/// `ferry firmware cancel`.
pub fn cancelled(transition: i64, slot: &str, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(&json!({"cancelled": transition, "slot": slot}));
    }
    writeln!(
        io::stdout().lock(),
        "cancelled transition {transition}: slot {slot} is marked bad and will not boot; the running firmware stays"
    )?;
    Ok(())
}

/// `ferry firmware mark-good`: `changed` is false when it already was.
pub fn marked_good(slot: &str, changed: bool, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(&json!({"slot": slot, "marked_good": true, "changed": changed}));
    }
    let mut out = io::stdout().lock();
    if changed {
        writeln!(out, "slot {slot} marked good")?;
    } else {
        writeln!(out, "slot {slot} was already marked good")?;
    }
    Ok(())
}

pub fn gc(o: &GcOutcome, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(o);
    }
    let gens: Vec<String> = o.generations.iter().map(ToString::to_string).collect();
    println!(
        "collected {} generation(s) [{}], {} blob(s), {} bytes",
        o.generations.len(),
        gens.join(", "),
        o.blobs,
        o.bytes
    );
    Ok(())
}

pub fn generations(
    gens: &[GenerationRow],
    current: Option<u64>,
    previous: Option<u64>,
    as_json: bool,
) -> Result<()> {
    if as_json {
        let rows: Vec<_> = gens
            .iter()
            .map(|g| {
                let mut v = serde_json::to_value(g).expect("rows serialise");
                v["current"] = json!(Some(g.id) == current);
                v["previous"] = json!(Some(g.id) == previous);
                v
            })
            .collect();
        return print_json(&rows);
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:>4}  {:<9} {:<24} {:>9}  created",
        "gen", "", "revision", "resources"
    )?;
    for g in gens {
        let mut mark = String::new();
        if Some(g.id) == current {
            mark.push_str("current");
        } else if Some(g.id) == previous {
            mark.push_str("previous");
        }
        if g.pinned {
            mark.push_str(if mark.is_empty() { "pinned" } else { ",pin" });
        }
        writeln!(
            out,
            "{:>4}  {:<9} {:<24} {:>9}  {}",
            g.id,
            mark,
            g.revision,
            g.resources,
            time(g.created_ms)
        )?;
    }
    Ok(())
}

pub fn audit_line(e: &AuditEntry) -> String {
    format!(
        "{:>5} {} gen={} {:<13} by {:<22} {}",
        e.seq,
        time(e.time_ms),
        e.generation.map_or("-".to_owned(), |g| g.to_string()),
        e.event,
        e.actor,
        e.details
    )
}

pub fn audit(entries: &[AuditEntry], as_json: bool) -> Result<()> {
    if as_json {
        return print_json(&entries);
    }
    let mut out = io::stdout().lock();
    for e in entries {
        writeln!(out, "{}", audit_line(e))?;
    }
    Ok(())
}

/// `ferry audit export`: JSON lines. The header names the device and the
/// chain's head; each entry carries its hash and its predecessor's, so a
/// receiver holding entries up to `after` can check the join
/// (`hash = sha256(prev_hash || canonical JSON of the entry)`). Format:
/// `schemas/audit-export.schema.json`.
/// `base`: the chain hash the first row follows (the checkpoint of a
/// pruned prefix), else the chain's zero start.
pub fn audit_export(
    rows: &[(AuditEntry, String)],
    base: Option<&str>,
    facts: &ferry_engine::render::facts::Facts,
    after: u64,
    keep: impl Fn(&AuditEntry) -> bool,
) -> Result<()> {
    let mut out = io::stdout().lock();
    let head = rows.last().map(|(e, h)| json!({"seq": e.seq, "hash": h}));
    let header = json!({
        "format": "ferry-audit-export/1",
        "device": {"machine_id": facts.machine_id, "hostname": facts.hostname, "model": facts.model},
        "exported_ms": jiff::Timestamp::now().as_millisecond(),
        "after": after,
        "head": head,
    });
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    let zero = "0".repeat(64);
    let mut prev = base.unwrap_or(&zero);
    for (e, hash) in rows {
        if e.seq > after && keep(e) {
            let mut v = serde_json::to_value(e)?;
            v["hash"] = json!(hash);
            v["prev_hash"] = json!(prev);
            writeln!(out, "{}", serde_json::to_string(&v)?)?;
        }
        prev = hash;
    }
    Ok(())
}

pub fn audit_ok(n: u64, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(&json!({"ok": true, "entries": n}));
    }
    println!("audit chain ok: {n} entries verified");
    Ok(())
}

fn rfc3339(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or_else(|_| format!("@{t}"), |ts| ts.to_string())
}

/// `ferry time-floor`: the stored floor, the image's, and the one in force.
/// A corrupt floor is shown (not an error) so the operator sees what to repair.
pub fn time_floor(f: &ferry_source::TimeFloor, as_json: bool) -> Result<()> {
    let stored = f.stored();
    let effective = f.get().ok();
    if as_json {
        return print_json(&json!({
            "path": f.path(),
            "stored": stored.as_ref().ok().copied().flatten(),
            "image": f.baked(),
            "effective": effective,
            "ok": stored.is_ok(),
            "error": stored.as_ref().err().map(ToString::to_string),
        }));
    }
    let mut out = io::stdout().lock();
    writeln!(out, "file:      {}", f.path().display())?;
    match &stored {
        Ok(Some(t)) => writeln!(out, "stored:    {} ({t})", rfc3339(*t))?,
        Ok(None) => writeln!(out, "stored:    none yet")?,
        Err(e) => writeln!(out, "stored:    CORRUPT: {}", e.problem)?,
    }
    match f.baked() {
        Some(t) => writeln!(out, "image:     {} ({t})", rfc3339(t))?,
        None => writeln!(out, "image:     none (source.tuf.time_floor)")?,
    }
    match effective {
        Some(t) => writeln!(out, "in force:  {} ({t})", rfc3339(t))?,
        None => writeln!(
            out,
            "in force:  none: updates are refused until `ferry time-floor repair`"
        )?,
    }
    Ok(())
}

pub fn time_floor_repaired(t: i64, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(&json!({"repaired": true, "floor": t}));
    }
    println!("time floor repaired: {} ({t})", rfc3339(t));
    Ok(())
}

pub fn firmware(s: &ferry_engine::activate::firmware::FirmwareStatus, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(s);
    }
    let mut out = io::stdout().lock();
    writeln!(out, "scheme:  {}", s.scheme)?;
    match (&s.booted, &s.booted_error) {
        (Some(b), _) => writeln!(out, "booted:  {b}")?,
        (None, e) => writeln!(out, "booted:  unknown ({})", e.as_deref().unwrap_or("?"))?,
    }
    writeln!(out, "order:   {}", s.order.join(" "))?;
    for slot in &s.slots {
        let b = &slot.boot;
        let mut state = vec![if b.good { "good" } else { "bad" }.to_owned()];
        if b.trying {
            state.push("trying".to_owned());
        }
        if let Some(n) = b.attempts_left {
            state.push(format!("{n} attempts left"));
        }
        if !b.bootable {
            state.push("not bootable".to_owned());
        }
        let image = slot.image.as_ref().map_or(String::new(), |i| {
            format!(" — {} {} ({})", i.name, i.version, i.state)
        });
        writeln!(
            out,
            "slot {}{} {}: {}{image}",
            slot.name,
            if slot.booted { " (booted)" } else { "" },
            slot.device.display(),
            state.join(", ")
        )?;
    }
    Ok(())
}

/// A byte count for humans: `1.5 MiB (1572864 bytes)`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {} ({n} bytes)", UNITS[unit])
}

/// `ferry chunk`.
#[cfg(feature = "delta")]
pub fn chunked(p: &ferry_delta::Published, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(p);
    }
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{}: image {} ({}), {} chunks ({} distinct)",
        p.index_path.display(),
        p.image.sha256,
        bytes(p.image.length),
        p.chunks,
        p.distinct
    )?;
    writeln!(
        out,
        "chunk store: {} new chunks, {} written; all chunks {} compressed",
        p.new_chunks,
        bytes(p.new_bytes),
        bytes(p.stored_bytes)
    )?;
    writeln!(
        out,
        "index: sha256 {}, {} bytes",
        p.index_file.sha256, p.index_file.length
    )?;
    Ok(())
}

/// One JSON line on stdout (what another ferry process reads).
#[cfg(feature = "fleet")]
pub fn json_line(v: &impl Serialize) -> Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// How long ago `then` (unix seconds) was, for people.
#[cfg(feature = "fleet")]
fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..120 => format!("{s}s ago"),
        120..7200 => format!("{}m ago", s / 60),
        7200..172_800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// `ferry fleet status`.
#[cfg(feature = "fleet")]
pub fn fleet_status(s: &ferry_fleet::admin::FleetStatus, now: u64, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(s);
    }
    // Every string below comes from a device (or the broker): escaped, so
    // that control sequences in them are shown rather than obeyed.
    let t = ferry_core::text::terminal;
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "target revision: {}",
        s.target
            .as_deref()
            .map_or("(none: --revision or --from-source)".into(), t)
    )?;
    writeln!(
        out,
        "{:<24} {:<9} {:<20} {:>5}  {:<12} {:<7} {:<10} {:>5}  LAST ERROR",
        "DEVICE", "STANDING", "REVISION", "GEN", "HEALTH", "ONLINE", "LAST SEEN", "DRIFT"
    )?;
    for r in &s.devices {
        let d = &r.status;
        let standing = serde_json::to_value(r.standing)?;
        writeln!(
            out,
            "{:<24} {:<9} {:<20} {:>5}  {:<12} {:<7} {:<10} {:>5}  {}",
            t(&d.device),
            standing.as_str().unwrap_or(""),
            t(d.revision.as_deref().unwrap_or("-")),
            d.generation.map_or("-".into(), |g| g.to_string()),
            d.health.as_str(),
            match r.online {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            },
            ago(now, d.last_seen),
            // Managed resources changed on the device and left in place.
            d.drifted,
            t(&d.last_error
                .as_deref()
                .map_or(String::new(), |e| e.chars().take(60).collect::<String>()))
        )?;
    }
    for u in &s.unreadable {
        writeln!(out, "unreadable status on {}: {}", t(&u.topic), t(&u.error))?;
    }
    if s.unreadable_more > 0 {
        writeln!(out, "and {} more unreadable messages", s.unreadable_more)?;
    }
    writeln!(out, "{} devices", s.devices.len())?;
    Ok(())
}

/// `ferry fleet audit`.
#[cfg(feature = "fleet")]
pub fn fleet_audit(a: &ferry_fleet::admin::DeviceAudit, as_json: bool) -> Result<()> {
    if as_json {
        return print_json(a);
    }
    // Device-written strings, escaped as in `fleet_status`.
    let t = ferry_core::text::terminal;
    let mut out = io::stdout().lock();
    for r in &a.entries {
        let e = &r.entry;
        writeln!(
            out,
            "{:>6}  {}  {:<20} {:<18} gen {:<5} {}",
            e.seq,
            time(e.time_ms),
            t(&e.event),
            t(&e.actor),
            e.generation.map_or("-".into(), |g| g.to_string()),
            t(&e.details.to_string())
        )?;
    }
    match (&a.error, a.entries.first(), a.entries.last()) {
        (Some(err), _, _) => writeln!(out, "chain NOT verified: {}", t(err))?,
        (None, Some(first), Some(last)) => writeln!(
            out,
            "chain verified: {} entries reported by {} (seq {} to {})",
            a.entries.len(),
            a.device,
            first.entry.seq,
            last.entry.seq
        )?,
        _ => writeln!(out, "no entries reported by {}", a.device)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_formats_utc() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_764_115_200_000), "2025-11-26T00:00:00Z");
        assert_eq!(super::time(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
