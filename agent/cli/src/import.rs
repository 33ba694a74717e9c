//! `ferry bundle export` and `ferry import`: offline updates on USB sticks.

use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_core::RepoPath;
use ferry_core::agent::{Outcome, Overrides};
use ferry_engine::fetch::bundle::{self, BundleError};
use ferry_engine::reconcile::{self, Goal, Reconciled};
use ferry_engine::render::facts::Facts;
use ferry_engine::{ApplyOutcome, Config, Engine, EngineError};
use ferry_source::offline::{Offline, Progress};
use serde_json::json;

use crate::exit::Code;

/// `ferry bundle export`.
pub fn export(
    config: &Config,
    facts_files: &[std::path::PathBuf],
    out: &Path,
    label: &str,
    image_size: Option<u64>,
    delta_from: Option<&Path>,
    as_json: bool,
) -> Result<Code> {
    let facts = facts_files
        .iter()
        .map(|f| Facts::from_file(f))
        .collect::<Result<Vec<_>, _>>()?;
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    let image = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("img"));
    let dir = if image {
        work.path().join("bundle")
    } else {
        out.to_owned()
    };
    let exported = bundle::export(config, &facts, &dir, &work.path().join("work"), delta_from)?;
    let image_bytes = if image {
        Some(bundle::fat::write_image(
            &dir,
            out,
            label,
            image_size.map(|m| m << 20),
        )?)
    } else {
        None
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "out": out,
                "image_bytes": image_bytes,
                "marker": exported.marker,
                "paths": exported.paths,
            }))?
        );
    } else {
        let m = &exported.marker;
        println!(
            "exported {} revision {} to {}: {} files, {} bytes{}",
            m.kind,
            m.revision,
            out.display(),
            m.files,
            m.bytes,
            match image_bytes {
                Some(n) => format!(" (FAT32 image of {} MiB)", n >> 20),
                None => String::new(),
            }
        );
    }
    Ok(Code::Success)
}

/// What `ferry import` was asked to do.
#[derive(Debug)]
pub struct Request<'a> {
    pub path: &'a Path,
    pub label: Option<&'a str>,
    pub device: Option<&'a Path>,
    pub wait: Duration,
    /// What the technician overrides (`--ignore-window`, `--force`,
    /// `--no-reboot`).
    pub overrides: Overrides,
    pub json: bool,
}

/// `ferry import`.
pub fn import(config: Config, facts: Facts, req: &Request<'_>) -> Result<Code> {
    let mut engine = open_waiting(&config, req.wait)?;
    let staging = config.state_dir.join("import");
    // Left by an import that was interrupted: never reused.
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    let result = import_with(&mut engine, &config, &facts, &staging, req);
    let _ = std::fs::remove_dir_all(&staging);
    let done = result?;
    let code = crate::reconcile::print_reconciled(&engine, &done, req.json)?;
    if done.reboot.is_some() {
        ferry_engine::reconcile::reboot(engine);
    }
    Ok(code)
}

/// Opens the bundle, checks it is for this device, and reconciles it as
/// its stick's actor; the outcome is audited as `imported` (or
/// `import-refused`).
fn import_with(
    engine: &mut Engine,
    config: &Config,
    facts: &Facts,
    staging: &Path,
    req: &Request<'_>,
) -> Result<Reconciled> {
    let (path, label, device) = (req.path, req.label, req.device);
    let opened = match bundle::open(path, staging, label, device) {
        Ok(o) => o,
        // Not a bundle (any stick plugged in): nothing to record.
        Err(e @ BundleError::NoMarker { .. }) => return Err(e.into()),
        Err(e) => {
            let actor = format!("usb:{}", label.unwrap_or("unknown"));
            let details = json!({"bundle": path, "error": e.to_string()});
            engine.audit("import-refused", &actor, details)?;
            return Err(e.into());
        }
    };
    let actor = format!("usb:{}", opened.label);
    let mut details = json!({
        "bundle": path,
        "label": opened.label,
        "kind": opened.marker.kind,
        "exported": opened.marker.created,
        "revision": opened.marker.revision,
    });
    tracing::info!(
        bundle = %path.display(),
        label = %opened.label,
        kind = %opened.marker.kind,
        revision = %opened.marker.revision,
        "importing an offline bundle"
    );
    let result = bundle::check_device(&opened, config, facts)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let src = bundle::source(config, &opened)?;
            let src = Offline::new(src, actor.clone(), Some(progress()));
            let r = reconcile::Request {
                goal: Goal::Newest {
                    source: &src,
                    facts,
                },
                actor: &actor,
                overrides: req.overrides,
                clock: None,
            };
            Ok(reconcile::reconcile(engine, &r)?)
        });
    match &result {
        Ok(done) => {
            let (event, generation) = match (&done.outcome, &done.applied) {
                (Outcome::Held { .. }, _) => ("held", None),
                (Outcome::Skipped { .. }, _) => ("skipped", None),
                (Outcome::RolledBack { .. }, _) => ("rolled-back", None),
                (_, Some(ApplyOutcome::NoChange { generation, .. })) => ("no-change", *generation),
                (_, Some(ApplyOutcome::Switched { to, .. })) => ("switched", Some(*to)),
                (_, Some(ApplyOutcome::Restored { generation, .. })) => {
                    ("restored", Some(*generation))
                }
                (_, Some(ApplyOutcome::RebootRequired { to, .. })) => {
                    ("reboot-required", Some(*to))
                }
                (_, None) => ("no-change", None),
            };
            details["outcome"] = json!(event);
            details["generation"] = json!(generation.or(engine.db().current_generation()?));
            if let Outcome::Held { reason } | Outcome::RolledBack { reason } = &done.outcome {
                details["reason"] = json!(reason);
            }
            let event = match done.outcome {
                Outcome::Held { .. } | Outcome::Skipped { .. } => "import-refused",
                _ => "imported",
            };
            engine.audit(event, &actor, details)?;
        }
        Err(e) => {
            details["outcome"] = json!("refused");
            details["error"] = json!(crate::exit::one_line(e));
            engine.audit("import-refused", &actor, details)?;
        }
    }
    result
}

/// Opens the engine, waiting while a running agent reconciles.
/// Opens the state directory, waiting up to `wait` while another ferry
/// process holds it.
pub fn open_waiting(config: &Config, wait: Duration) -> Result<Engine> {
    let deadline = Instant::now() + wait;
    loop {
        match Engine::open(config.clone()) {
            Err(EngineError::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            other => return Ok(other?),
        }
    }
}

/// A progress bar on a terminal; otherwise log lines (journald fields
/// `path`, `bytes`, `total`) every tenth of a large file.
fn progress() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(Bar(Mutex::new(None)))
    } else {
        Arc::new(Logged(Mutex::new(None)))
    }
}

struct Bar(Mutex<Option<indicatif::ProgressBar>>);

impl Progress for Bar {
    fn start(&self, path: &RepoPath, offset: u64, total: u64) {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_position(offset);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(path.to_string());
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }
    fn advance(&self, n: u64) {
        if let Some(b) = &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            b.inc(n);
        }
    }
    fn finish(&self) {
        if let Some(b) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish_and_clear();
        }
    }
}

struct Logged(Mutex<Option<(String, u64, u64, u64)>>);

impl Progress for Logged {
    fn start(&self, path: &RepoPath, offset: u64, total: u64) {
        tracing::info!(path = %path, bytes = offset, total, "import: reading");
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((path.to_string(), offset, total, offset));
    }
    fn advance(&self, n: u64) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((path, done, total, logged)) = &mut *g {
            *done += n;
            if *done - *logged >= (*total / 10).max(1) {
                *logged = *done;
                tracing::info!(path = %path, bytes = *done, total = *total, "import: reading");
            }
        }
    }
    fn finish(&self) {
        if let Some((path, done, total, _)) =
            self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            tracing::info!(path = %path, bytes = done, total, "import: read");
        }
    }
}
