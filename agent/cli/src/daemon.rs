//! `ferry run`: the pull agent.
//!
//! One worker thread schedules reconciles: poll (interval + jitter,
//! exponential backoff after failures). Each reconcile — check the update
//! policy, apply, gate on health checks (roll back and remember the revision
//! when they fail), reboot for firmware when the policy allows — runs in a
//! `ferry run --once` child process with the configuration the agent
//! accepted, and reports back one JSON line. The agent itself never loads
//! the code a reconcile needs (TUF, templates, schemas, activators, SQLite
//! writes), which keeps its resident memory small between polls. The
//! tokio side handles signals, the control socket, metrics and systemd
//! notifications, and talks to the worker through a channel; a reconcile is
//! never interrupted: SIGTERM lets the current one finish (an interrupted
//! transition would be finished by `recover()` anyway). The child dies with
//! the agent (`PR_SET_PDEATHSIG`), like the in-process reconcile would.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ferry_core::schedule;
use ferry_engine::fetch::policy::{self, UpdatePolicy};
use ferry_engine::{ApplyOutcome, Config, Engine};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cli::Cli;
use crate::commands::{load_config, load_facts};
use crate::exit::Code;
use crate::notify;

/// Messages to the worker.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Reconcile now (`ferry apply --now`).
    Now,
    /// Reload the configuration, then reconcile (SIGHUP).
    Reload,
    /// Finish and exit (SIGTERM, SIGINT).
    Stop,
}

/// What the daemon tells `ferry status` and the metrics endpoint.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Shared {
    pub pid: u32,
    pub started: u64,
    pub state: String,
    pub last_poll: Option<u64>,
    pub last_result: Option<String>,
    pub last_error: Option<String>,
    /// Why the last reload was refused (cleared by a good one).
    pub config_error: Option<String>,
    pub next_poll: Option<u64>,
    pub revision: Option<String>,
    pub generation: Option<u64>,
    pub consecutive_failures: u32,
    /// When the running reconcile started (for the watchdog).
    #[serde(skip)]
    pub reconcile_started: Option<Instant>,
    #[serde(skip)]
    pub metrics: Metrics,
    #[serde(skip)]
    pub fetched_bytes: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub reconciles: std::collections::BTreeMap<&'static str, u64>,
    pub last_success: Option<u64>,
    pub rollbacks: u64,
    pub activation_errors: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A cheap uniform draw in [0, 1) for jitter (not for anything secret).
fn jitter_draw() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = u64::from(nanos ^ std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

fn rollout_bucket(config: &Config) -> Option<u8> {
    let id = std::fs::read_to_string(&config.agent.machine_id_file).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| schedule::rollout_bucket(id))
}

/// The result of one reconcile, for status and metrics.
enum Result1 {
    NoChange,
    Applied(String),
    Held(String),
    RolledBack(String),
    Skipped(String),
}

/// What one reconcile reports (the last stdout line of `ferry run --once --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// applied, no_change, held, skipped, rolled_back, failed.
    pub result: String,
    pub text: String,
    /// The failure was an activation (rolled back or not undone).
    #[serde(default)]
    pub activation_error: bool,
    pub generation: Option<u64>,
    pub revision: Option<String>,
    /// Bytes this reconcile fetched from the source.
    #[serde(default)]
    pub fetched_bytes: u64,
}

fn describe(result: &Result<Result1>) -> (&'static str, String, bool) {
    match result {
        Ok(Result1::NoChange) => ("no_change", "no changes".to_owned(), false),
        Ok(Result1::Applied(r)) => ("applied", format!("applied revision {r}"), false),
        Ok(Result1::Held(why)) => ("held", why.clone(), false),
        Ok(Result1::Skipped(why)) => ("skipped", why.clone(), false),
        Ok(Result1::RolledBack(why)) => ("rolled_back", format!("rolled back: {why}"), false),
        Err(e) => {
            let activation = e
                .downcast_ref::<ferry_engine::EngineError>()
                .is_some_and(|ee| {
                    matches!(
                        ee,
                        ferry_engine::EngineError::RolledBack { .. }
                            | ferry_engine::EngineError::UndoFailed { .. }
                    )
                });
            ("failed", format!("{e:#}"), activation)
        }
    }
}

struct Worker {
    args_config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    facts: Option<PathBuf>,
    config: Config,
    /// The accepted configuration, as handed to reconcile processes.
    config_file: PathBuf,
    exe: PathBuf,
    log_level: String,
    shared: Arc<Mutex<Shared>>,
    /// Told after every reconcile, so the rule engine picks up new sets.
    reconciled: Arc<tokio::sync::Notify>,
}

/// One reconcile as the agent does it: the update policy, apply, the health
/// gate and rollback, firmware reboots when the policy allows; then gc
/// (`agent.gc`) when it left nothing in flight.
fn reconcile_with(
    config: &Config,
    facts_file: Option<&Path>,
    engine: &mut Engine,
    src: &dyn ferry_source::Source,
) -> Result<Result1> {
    let result = reconcile_steps(config, facts_file, engine, src);
    if config.agent.gc && result.is_ok() {
        collect_garbage(engine);
    }
    result
}

fn reconcile_steps(
    config: &Config,
    facts_file: Option<&Path>,
    engine: &mut Engine,
    src: &dyn ferry_source::Source,
) -> Result<Result1> {
    let facts = load_facts(facts_file, config)?;
    let times = config.agent.times()?;
    let now = policy::local_now();

    // A firmware update waiting for its reboot: reboot when allowed.
    if let Some(slot) = engine.status()?.awaiting_reboot {
        let (rev, _) = engine.fetch_desired(src, &facts)?;
        let pol = UpdatePolicy::load(&*rev, &config.agent.policy)?;
        if pol.may_reboot(&now) {
            ferry_engine::health::reboot(&config.firmware.reboot_command);
            return Ok(Result1::Held(format!("rebooting into slot {slot}")));
        }
        return Ok(Result1::Held(format!(
            "firmware in slot {slot} waits for a reboot window"
        )));
    }

    let (rev, desired) = engine.fetch_desired(src, &facts)?;
    if engine.rejected_revision()?.as_deref() == Some(rev.id()) {
        return Ok(Result1::Skipped(format!(
            "revision {} was rolled back; waiting for a newer one",
            rev.id()
        )));
    }
    let pol = UpdatePolicy::load(&*rev, &config.agent.policy)?;
    if let Err(hold) = pol.may_apply(rollout_bucket(config), &now) {
        // Nothing changes anyway when the plan is empty.
        return Ok(Result1::Held(format!("revision {}: {hold}", rev.id())));
    }
    let outcome = engine.apply_desired(&*rev, &desired)?;
    match outcome {
        ApplyOutcome::NoChange { .. } => Ok(Result1::NoChange),
        ApplyOutcome::RebootRequired { .. } => {
            if pol.may_reboot(&now) {
                ferry_engine::health::reboot(&config.firmware.reboot_command);
            }
            Ok(Result1::Applied(rev.id().to_owned()))
        }
        ApplyOutcome::Switched { .. } => {
            let deadline = Instant::now() + times.health_timeout;
            match ferry_engine::health::wait_healthy(
                &config.health,
                deadline,
                times.health_interval,
            ) {
                Ok(()) => Ok(Result1::Applied(rev.id().to_owned())),
                Err(reason) => {
                    tracing::error!(revision = rev.id(), %reason, "health checks failed; rolling back");
                    let reason = match engine.rollback(None) {
                        Ok(_) => reason,
                        // The first generation has nothing to return to:
                        // it stays, but is not applied again.
                        Err(ferry_engine::EngineError::Refused(why)) => {
                            format!("{reason} (not rolled back: {why})")
                        }
                        Err(e) => return Err(e.into()),
                    };
                    engine.reject_revision(
                        rev.id(),
                        "agent",
                        &format!("health checks failed: {reason}"),
                    )?;
                    Ok(Result1::RolledBack(reason))
                }
            }
        }
    }
}

/// The agent's gc after a reconcile that left the device settled: applied
/// and healthy, rolled back, held or nothing to do, with no transition
/// open (a firmware update waiting for its reboot or its confirmation
/// skips it).
///
/// A failure is logged, not fatal: the reconcile did its work, and an
/// interrupted gc is finished by `recover()` before the next change.
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

/// Writes the configuration the agent accepted where its reconcile
/// processes read it (`state_dir/agent.toml`, owner only).
fn write_agent_config(config: &Config, text: &str) -> Result<PathBuf> {
    {
        use std::os::unix::fs::DirBuilderExt as _;
        // As the engine creates it: owner only.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.state_dir)
            .with_context(|| format!("creating {}", config.state_dir.display()))?;
    }
    let path = config.state_dir.join("agent.toml");
    ferry_engine::fsutil::write_atomic(&path, 0o600, &mut text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

impl Worker {
    fn reload(&mut self) {
        let loaded = ferry_engine::fetch::load_config_with_text(self.args_config.as_deref()).map(
            |(mut c, text)| {
                if let Some(d) = &self.state_dir {
                    c.state_dir = d.clone();
                }
                (c, text)
            },
        );
        match loaded {
            Ok((c, text)) if c.state_dir == self.config.state_dir => {
                match write_agent_config(&c, &text) {
                    Ok(path) => {
                        tracing::info!("configuration reloaded");
                        self.config = c;
                        self.config_file = path;
                        self.shared
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .config_error = None;
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "configuration not reloaded")
                    }
                }
            }
            Ok(_) => tracing::error!(
                "configuration not reloaded: state_dir cannot change while running (restart ferry)"
            ),
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; keeping the running one");
                self.shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .config_error = Some(e.to_string());
            }
        }
    }

    /// `ferry ARGS…` with the accepted configuration, dying with the agent.
    fn child(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("--config")
            .arg(&self.config_file)
            .arg("--log-level")
            .arg(&self.log_level);
        if let Some(d) = &self.state_dir {
            cmd.arg("--state-dir").arg(d);
        }
        if let Some(f) = &self.facts {
            cmd.arg("--facts").arg(f);
        }
        cmd.args(args)
            .env(AGENT_PID_ENV, std::process::id().to_string())
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// One reconcile, in a child process; records the generation it leaves
    /// for status and metrics.
    fn reconcile(&mut self) -> Report {
        let timeout = self.reconcile_timeout();
        let out = run_with_deadline(self.child(&["run", "--once", "--json"]), timeout);
        let report = match out {
            Ok((_, _, true)) => failed(format!(
                "the reconcile took longer than agent.reconcile_timeout ({} s) and was killed; recovery finishes or undoes what it started",
                timeout.as_secs()
            )),
            Ok((stdout, status, false)) => String::from_utf8_lossy(&stdout)
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str::<Report>(l).ok())
                .unwrap_or_else(|| {
                    failed(format!(
                        "the reconcile process ended ({status}) without a result"
                    ))
                }),
            Err(e) => failed(format!(
                "cannot start the reconcile process {}: {e}",
                self.exe.display()
            )),
        };
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if report.generation.is_some() || report.result != "failed" {
            s.generation = report.generation;
            s.revision = report.revision.clone();
        }
        s.fetched_bytes += report.fetched_bytes;
        report
    }

    fn reconcile_timeout(&self) -> Duration {
        self.config
            .agent
            .times()
            .map_or(DEFAULT_RECONCILE_TIMEOUT, |t| t.reconcile_timeout)
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut failures = 0u32;
        let mut delay = Duration::ZERO;
        loop {
            {
                let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                s.next_poll = Some(unix_now() + delay.as_secs());
                s.state = "idle".into();
            }
            match rx.recv_timeout(delay) {
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(Msg::Reload) => self.reload(),
                Ok(Msg::Now) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            {
                let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                s.state = "reconciling".into();
                s.reconcile_started = Some(Instant::now());
            }
            notify::status("reconciling");
            let report = self.reconcile();
            self.shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reconcile_started = None;
            self.reconciled.notify_one();
            let (label, text) = {
                let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                s.last_poll = Some(unix_now());
                let label: &'static str = match report.result.as_str() {
                    "no_change" => "no_change",
                    "applied" => "applied",
                    "held" => "held",
                    "skipped" => "skipped",
                    "rolled_back" => "rolled_back",
                    _ => "failed",
                };
                let text = report.text.clone();
                if label == "rolled_back" {
                    s.metrics.rollbacks += 1;
                }
                if report.activation_error {
                    s.metrics.activation_errors += 1;
                }
                *s.metrics.reconciles.entry(label).or_default() += 1;
                if label != "failed" {
                    s.metrics.last_success = s.last_poll;
                    s.last_error = None;
                    failures = 0;
                } else {
                    failures = failures.saturating_add(1);
                    s.last_error = Some(text.clone());
                }
                s.consecutive_failures = failures;
                s.last_result = Some(text.clone());
                (label, text)
            };
            match label {
                "failed" => tracing::warn!(result = label, "{text}"),
                _ => tracing::info!(result = label, "{text}"),
            }
            notify::status(&text);
            let times = self.config.agent.times().unwrap_or_else(|_| {
                // Validated at load; a reload never installs a bad config.
                Config::default().agent.times().expect("defaults are valid")
            });
            delay = schedule::poll_delay(
                times.poll_interval,
                times.jitter,
                failures,
                times.backoff_base,
                times.backoff_cap,
                jitter_draw(),
            );
        }
        tracing::info!("agent stopped");
    }
}

fn metrics_text(s: &Shared, events: Option<&crate::rules_agent::EventPath>) -> String {
    let mut out = String::new();
    out.push_str("# HELP ferry_reconciles_total Reconciles by result.\n# TYPE ferry_reconciles_total counter\n");
    for label in [
        "applied",
        "no_change",
        "held",
        "skipped",
        "rolled_back",
        "failed",
    ] {
        let n = s.metrics.reconciles.get(label).copied().unwrap_or(0);
        out.push_str(&format!(
            "ferry_reconciles_total{{result=\"{label}\"}} {n}\n"
        ));
    }
    out.push_str("# HELP ferry_last_success_timestamp_seconds Time of the last successful reconcile.\n# TYPE ferry_last_success_timestamp_seconds gauge\n");
    out.push_str(&format!(
        "ferry_last_success_timestamp_seconds {}\n",
        s.metrics.last_success.unwrap_or(0)
    ));
    out.push_str("# HELP ferry_current_generation The current generation.\n# TYPE ferry_current_generation gauge\n");
    out.push_str(&format!(
        "ferry_current_generation {}\n",
        s.generation.unwrap_or(0)
    ));
    out.push_str("# HELP ferry_fetched_bytes_total Bytes fetched from sources.\n# TYPE ferry_fetched_bytes_total counter\n");
    out.push_str(&format!("ferry_fetched_bytes_total {}\n", s.fetched_bytes));
    out.push_str("# HELP ferry_rollbacks_total Automatic rollbacks after failed health checks.\n# TYPE ferry_rollbacks_total counter\n");
    out.push_str(&format!("ferry_rollbacks_total {}\n", s.metrics.rollbacks));
    out.push_str("# HELP ferry_activation_errors_total Reconciles that failed in an activator.\n# TYPE ferry_activation_errors_total counter\n");
    out.push_str(&format!(
        "ferry_activation_errors_total {}\n",
        s.metrics.activation_errors
    ));
    if let Some(ep) = events {
        use std::sync::atomic::Ordering::Relaxed;
        let st = ep.rules.stats();
        let ws = ep.modules.service().stats();
        for (name, help, v) in [
            (
                "ferry_wasm_calls_total",
                "Calls of WASM module exports.",
                &ws.calls,
            ),
            (
                "ferry_wasm_call_errors_total",
                "Calls that failed (status, fault, no such module or export).",
                &ws.errors,
            ),
            (
                "ferry_wasm_faults_total",
                "Calls stopped by a trap, fuel or memory limit (instance discarded).",
                &ws.faults,
            ),
            (
                "ferry_wasm_instantiations_total",
                "Module instances created (one per module, again after a fault).",
                &ws.instantiations,
            ),
            ("ferry_wasm_swaps_total", "Module set swaps.", &ws.swaps),
            (
                "ferry_wasm_refused_total",
                "Calls refused because 64 MiB of input was already waiting.",
                &ws.refused,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Relaxed)
            ));
        }
        for (name, help, v) in [
            (
                "ferry_rules_events_total",
                "Events evaluated by the rule engine.",
                &st.events,
            ),
            (
                "ferry_rules_bad_events_total",
                "Bad event lines, and payloads that are not JSON objects (evaluated with every field missing).",
                &st.bad_events,
            ),
            ("ferry_rules_fired_total", "Rule firings.", &st.fired),
            (
                "ferry_rules_actions_total",
                "Actions produced by rules.",
                &st.actions,
            ),
            (
                "ferry_rules_action_errors_total",
                "Actions that failed (publish, call).",
                &st.action_errors,
            ),
            ("ferry_rules_swaps_total", "Rule set swaps.", &st.swaps),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Relaxed)
            ));
        }
    }
    out
}

/// Set in reconcile processes to the agent's pid: they die with it.
const AGENT_PID_ENV: &str = "FERRY_AGENT_PID";

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
        let r = reconcile_with(&config, args.facts.as_deref(), &mut engine, &*src);
        status = engine.status().ok();
        r
    })();
    let (label, text, activation_error) = describe(&result);
    let report = Report {
        result: label.to_owned(),
        text,
        activation_error,
        generation: status
            .as_ref()
            .and_then(|s| s.current.as_ref().map(|g| g.id)),
        revision: status
            .as_ref()
            .and_then(|s| s.current.as_ref().map(|g| g.revision.clone())),
        fetched_bytes: ferry_tuf::transport::fetched_bytes(),
    };
    match (result, as_json) {
        (r, true) => {
            println!("{}", serde_json::to_string(&report)?);
            Ok(r.as_ref().map_or_else(Code::of, |_| Code::Success))
        }
        (Ok(_), false) => {
            println!("{label}: {}", report.text);
            Ok(Code::Success)
        }
        (Err(e), false) => Err(e),
    }
}

fn failed(text: String) -> Report {
    Report {
        result: "failed".into(),
        text,
        activation_error: false,
        generation: None,
        revision: None,
        fetched_bytes: 0,
    }
}

pub fn run(args: &Cli) -> Result<Code> {
    let (mut config, text) = ferry_engine::fetch::load_config_with_text(args.config.as_deref())?;
    let times = config.agent.times()?;
    if let Some(d) = config_state_override(args) {
        config.state_dir = d;
    }
    let shared = Arc::new(Mutex::new(Shared {
        pid: std::process::id(),
        started: unix_now(),
        state: "starting".into(),
        ..Shared::default()
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Signal handlers first: a SIGTERM from now on is handled gracefully.
    let (mut term, mut int, mut hup) = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        anyhow::Ok((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ))
    })?;
    let (tx, rx) = mpsc::channel();
    let reconciled = Arc::new(tokio::sync::Notify::new());
    let worker = Worker {
        args_config: args.config.clone(),
        state_dir: config_state_override(args),
        facts: args.facts.clone(),
        config_file: write_agent_config(&config, &text)?,
        config: config.clone(),
        exe: std::env::current_exe().context("locating the ferry binary")?,
        log_level: args.log_level.clone(),
        shared: shared.clone(),
        reconciled: reconciled.clone(),
    };
    // Finish or undo an interrupted transition before anything else.
    let recovered = worker
        .child(&["recover"])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running ferry recover")?;
    if !recovered.success() {
        anyhow::bail!("recovering before start failed ({recovered})");
    }
    let mut handle = None;
    rt.block_on(async {

        let _socket = crate::control::serve(&config.agent.control_socket, shared.clone(), tx.clone())
            .await
            .with_context(|| format!("control socket {}", config.agent.control_socket.display()))?;
        let rules = crate::rules_agent::start(&config, reconciled.clone())?;
        if let Some(listen) = &config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("metrics listener {listen}"))?;
            let shared = shared.clone();
            let rules = rules.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // One task per scrape, bounded in time and number: an idle
                // connection no longer blocks every other scraper.
                let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
                while let Ok((mut conn, _)) = listener.accept().await {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        continue;
                    };
                    let (shared, rules) = (shared.clone(), rules.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let serve = async {
                            let mut buf = [0u8; 1024];
                            let _ = conn.read(&mut buf).await;
                            let body = {
                                let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                                metrics_text(&s, rules.as_ref())
                            };
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = conn.write_all(resp.as_bytes()).await;
                        };
                        let _ = tokio::time::timeout(METRICS_TIMEOUT, serve).await;
                    });
                }
            });
        }
        if let Some(period) = notify::watchdog_period() {
            let shared = shared.clone();
            let limit = times.reconcile_timeout + WATCHDOG_GRACE;
            tokio::spawn(async move {
                let mut t = tokio::time::interval(period);
                loop {
                    t.tick().await;
                    // A worker stuck past its own deadline (the kill did not
                    // end it) gets no more keep-alives: systemd restarts us.
                    let started = shared
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .reconcile_started;
                    if worker_stuck(started, Instant::now(), limit) {
                        tracing::error!("the reconcile is stuck past agent.reconcile_timeout; no longer feeding the watchdog");
                        continue;
                    }
                    notify::send("WATCHDOG=1");
                }
            });
        }
        notify::send("READY=1\nSTATUS=started");
        tracing::info!(pid = std::process::id(), "agent started");
        handle = Some(
            std::thread::Builder::new()
                .name("ferry-worker".into())
                .spawn(move || worker.run(rx))?,
        );
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => { let _ = tx.send(Msg::Reload); }
            }
        }
        notify::send("STOPPING=1");
        let _ = tx.send(Msg::Stop);
        anyhow::Ok(())
    })?;
    // The worker finishes its current reconcile first.
    if let Some(h) = handle {
        let _ = h.join();
    }
    Ok(Code::Success)
}

/// Scrapes served at once, and how long one may take.
const METRICS_CONNECTIONS: usize = 16;
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// Default of `agent.reconcile_timeout` when the configuration cannot say.
const DEFAULT_RECONCILE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// How long past its deadline a reconcile may still be ending (killed, being
/// reaped) before the agent counts as stuck.
const WATCHDOG_GRACE: Duration = Duration::from_secs(60);
/// Most bytes of a reconcile child's report read (one JSON line).
const MAX_REPORT_BYTES: u64 = 1 << 20;

/// Whether a reconcile that started at `started` is past `limit` at `now`.
fn worker_stuck(started: Option<Instant>, now: Instant, limit: Duration) -> bool {
    started.is_some_and(|s| now.saturating_duration_since(s) > limit)
}

/// Runs `cmd` (stderr inherited), killing it after `timeout`. Returns its
/// stdout (bounded), exit status and whether it was killed.
fn run_with_deadline(
    mut cmd: std::process::Command,
    timeout: Duration,
) -> std::io::Result<(Vec<u8>, std::process::ExitStatus, bool)> {
    use std::io::Read as _;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.take(MAX_REPORT_BYTES).read_to_end(&mut out);
        out
    });
    let end = Instant::now() + timeout;
    let (status, killed) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, false);
        }
        if Instant::now() >= end {
            tracing::error!(
                pid = child.id(),
                timeout_secs = timeout.as_secs(),
                "reconcile past agent.reconcile_timeout; killing it"
            );
            let _ = child.kill();
            break (child.wait()?, true);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap_or_default();
    Ok((out, status, killed))
}

fn config_state_override(args: &Cli) -> Option<PathBuf> {
    args.state_dir
        .as_ref()
        .and_then(|d| std::path::absolute(d).ok())
}

/// Sends the running agent a reconcile request (`ferry apply --now`).
pub fn request_now(socket: &std::path::Path) -> Result<serde_json::Value> {
    crate::control::call(socket, &json!({"cmd": "apply"}))
}
