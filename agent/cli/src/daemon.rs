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

use ferry_core::control::AgentStatus;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ferry_core::agent::{ReconcileResult, Report};
use ferry_core::schedule;
use ferry_engine::Config;

use crate::cli::Cli;
use crate::exit::Code;
use crate::notify;
use crate::shared::{Msg, Shared};

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

struct Worker {
    args_config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    facts: Option<PathBuf>,
    config: Config,
    /// The accepted configuration, as handed to reconcile processes.
    config_file: PathBuf,
    exe: PathBuf,
    /// `--log-level` as the agent was given it, for its children.
    log_level: Option<String>,
    shared: Arc<Mutex<Shared>>,
    /// Told after every reconcile, so the rule engine picks up new sets.
    reconciled: Arc<tokio::sync::Notify>,
    /// Told after every reconcile, so the fleet channel reports.
    fleet: Option<crate::shared::FleetChannel>,
    /// The conditional poll (TUF over HTTP(S)).
    probe: Option<crate::probe::Probe>,
    /// The inotify watch on the managed paths.
    watch: Arc<crate::drift_watch::DriftWatch>,
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
        let loaded = crate::setup::read_config(self.args_config.as_deref()).map(|(mut c, text)| {
            if let Some(d) = &self.state_dir {
                c.state_dir = d.clone();
            }
            (c, text)
        });
        match loaded {
            Ok((c, text)) if c.state_dir == self.config.state_dir => {
                match write_agent_config(&c, &text) {
                    Ok(path) => {
                        tracing::info!("configuration reloaded");
                        self.probe = crate::probe::Probe::for_config(&c);
                        // Paths and policies may have moved.
                        self.watch.reset(c.agent.drift_watch);
                        self.config = c;
                        self.config_file = path;
                        self.shared
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .agent
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
                    .agent
                    .config_error = Some(e.to_string());
            }
        }
    }

    /// Makes `ferry` commands with the agent's configuration, state
    /// directory and log level, for threads that outlive a borrow of the
    /// worker (the fleet channel's reports, the audit spool's flush).
    #[cfg(any(feature = "fleet", feature = "rules"))]
    fn command_factory(&self) -> crate::child::CommandFactory {
        let (exe, config_file, state_dir, log_level) = (
            self.exe.clone(),
            self.config_file.clone(),
            self.state_dir.clone(),
            self.log_level.clone(),
        );
        Box::new(move || {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("--config").arg(&config_file);
            if let Some(level) = &log_level {
                cmd.arg("--log-level").arg(level);
            }
            if let Some(d) = &state_dir {
                cmd.arg("--state-dir").arg(d);
            }
            cmd.env_remove("NOTIFY_SOCKET")
                .stdin(std::process::Stdio::null());
            cmd
        })
    }

    /// `ferry ARGS…` with the accepted configuration, dying with the agent.
    fn child(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("--config").arg(&self.config_file);
        if let Some(level) = &self.log_level {
            cmd.arg("--log-level").arg(level);
        }
        if let Some(d) = &self.state_dir {
            cmd.arg("--state-dir").arg(d);
        }
        if let Some(f) = &self.facts {
            cmd.arg("--facts").arg(f);
        }
        cmd.args(args)
            .env(
                crate::reconcile::AGENT_PID_ENV,
                std::process::id().to_string(),
            )
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// One reconcile, in a child process; records the generation it leaves
    /// for status and metrics.
    fn reconcile(&mut self) -> Report {
        let timeout = self.reconcile_timeout();
        let generation = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .agent
            .generation;
        let mode = self
            .watch
            .next_mode(generation, self.times().drift_interval);
        let mut cmd = self.child(&["run", "--once", "--json"]);
        if let Some(v) = mode.env() {
            cmd.env(crate::drift_watch::ENV, v);
        }
        self.watch.begin(mode);
        let out = crate::child::run_with_deadline(cmd, timeout);
        let report = match out {
            Ok((_, _, true)) => Report::failed(format!(
                "the reconcile took longer than agent.reconcile_timeout ({} s) and was killed; recovery finishes or undoes what it started",
                timeout.as_secs()
            )),
            Ok((stdout, status, false)) => String::from_utf8_lossy(&stdout)
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str::<Report>(l).ok())
                .unwrap_or_else(|| {
                    Report::failed(format!(
                        "the reconcile process ended ({status}) without a result"
                    ))
                }),
            Err(e) => Report::failed(format!(
                "cannot start the reconcile process {}: {e}",
                self.exe.display()
            )),
        };
        self.watch.end(
            mode,
            report.result != ReconcileResult::Failed,
            report.generation,
        );
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.agent.drift_watch = Some(self.watch.describe());
        if report.generation.is_some() || report.result != ReconcileResult::Failed {
            s.agent.generation = report.generation;
            s.agent.revision = report.revision.clone();
        }
        s.fetched_bytes += report.fetched_bytes;
        report
    }

    /// One poll: a conditional request when the source allows it and the
    /// poll is not `forced`, then (unless the repository is unchanged) a
    /// reconcile. The flag: whether a reconcile ran.
    fn poll(&mut self, forced: bool) -> (Report, bool) {
        if !forced && self.probe.as_mut().is_some_and(|p| p.unchanged()) {
            let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            s.metrics.unchanged_polls += 1;
            let report = Report {
                result: ReconcileResult::NoChange,
                text: "no changes (timestamp.json not modified)".into(),
                activation_error: false,
                generation: s.agent.generation,
                revision: s.agent.revision.clone(),
                fetched_bytes: 0,
            };
            return (report, false);
        }
        if forced && let Some(p) = &mut self.probe {
            // Whatever the probe saw before does not describe this reconcile.
            p.reconciled(false);
        }
        let report = self.reconcile();
        if let Some(p) = &mut self.probe {
            p.reconciled(report.result == ReconcileResult::NoChange);
        }
        (report, true)
    }

    fn reconcile_timeout(&self) -> Duration {
        self.config
            .agent
            .times()
            .map_or(DEFAULT_RECONCILE_TIMEOUT, |t| t.reconcile_timeout)
    }

    fn times(&self) -> ferry_engine::config::AgentTimes {
        self.config.agent.times().unwrap_or_else(|_| {
            // Validated at load; a reload never installs a bad config.
            Config::default().agent.times().expect("defaults are valid")
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut failures = 0u32;
        let mut delay = Duration::ZERO;
        loop {
            {
                let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                s.agent.next_poll = Some(unix_now() + delay.as_secs());
                s.agent.state = "idle".into();
            }
            let forced = match rx.recv_timeout(delay) {
                Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(Msg::Reload) => {
                    self.reload();
                    true
                }
                Ok(Msg::Now | Msg::Drift) => true,
                Ok(Msg::Nudge) | Err(mpsc::RecvTimeoutError::Timeout) => false,
            };
            {
                let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                s.agent.state = "reconciling".into();
                s.reconcile_started = Some(Instant::now());
            }
            notify::status("reconciling");
            let (report, reconciled) = self.poll(forced);
            self.shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .reconcile_started = None;
            self.reconciled.notify_one();
            let (result, text) = {
                let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
                s.agent.last_poll = Some(unix_now());
                let result = report.result;
                let text = report.text.clone();
                if result == ReconcileResult::RolledBack {
                    s.metrics.rollbacks += 1;
                }
                if report.activation_error {
                    s.metrics.activation_errors += 1;
                }
                *s.metrics.reconciles.entry(result).or_default() += 1;
                if result != ReconcileResult::Failed {
                    s.metrics.last_success = s.agent.last_poll;
                    s.agent.last_error = None;
                    failures = 0;
                } else {
                    failures = failures.saturating_add(1);
                    s.agent.last_error = Some(text.clone());
                }
                s.agent.consecutive_failures = failures;
                s.agent.last_result = Some(text.clone());
                s.last_outcome = Some(result);
                s.agent.state = "idle".into();
                (result, text)
            };
            // A poll a 304 ended changed nothing the fleet has not seen.
            if let Some(f) = &self.fleet
                && reconciled
            {
                f.changed();
            }
            match result {
                ReconcileResult::Failed => tracing::warn!(result = result.as_str(), "{text}"),
                _ => tracing::info!(result = result.as_str(), "{text}"),
            }
            notify::status(&text);
            let times = self.times();
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

pub fn run(args: &Cli) -> Result<Code> {
    let (mut config, text) = crate::setup::read_config(args.config.as_deref())?;
    let times = config.agent.times()?;
    if let Some(d) = config_state_override(args) {
        config.state_dir = d;
    }
    let shared = Arc::new(Mutex::new(Shared {
        agent: AgentStatus {
            pid: std::process::id(),
            state_dir: Some(config.state_dir.clone()),
            started: unix_now(),
            state: "starting".into(),
            ..AgentStatus::default()
        },
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
    #[cfg_attr(not(feature = "fleet"), allow(unused_mut))]
    let mut worker = Worker {
        args_config: args.config.clone(),
        state_dir: config_state_override(args),
        facts: args.facts.clone(),
        config_file: write_agent_config(&config, &text)?,
        config: config.clone(),
        exe: std::env::current_exe().context("locating the ferry binary")?,
        log_level: args.log_level.clone(),
        shared: shared.clone(),
        reconciled: reconciled.clone(),
        fleet: None,
        probe: crate::probe::Probe::for_config(&config),
        watch: Arc::new(crate::drift_watch::DriftWatch::new(
            config.agent.drift_watch,
            config.state_dir.clone(),
        )),
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
    worker
        .watch
        .clone()
        .spawn(tx.clone())
        .context("starting the drift watch")?;
    let mut handle = None;
    rt.block_on(async {

        let _socket = crate::control::serve(&config.agent.control_socket, shared.clone(), tx.clone())
            .await
            .with_context(|| format!("control socket {}", config.agent.control_socket.display()))?;
        #[cfg(feature = "rules")]
        let rules =
            crate::rules_agent::start(&config, reconciled.clone(), worker.command_factory())
                .await?;
        #[cfg(not(feature = "rules"))]
        let rules: Option<crate::shared::EventPath> = None;
        #[cfg(feature = "fleet")]
        let fleet_settings = crate::setup::fleet_settings(&config)?;
        #[cfg(feature = "fleet")]
        if fleet_settings.broker.is_some() {
            let facts = crate::setup::load_facts(args.facts.as_deref(), &config)?;
            let report = worker.command_factory();
            worker.fleet = crate::fleet_agent::start(
                &config,
                &fleet_settings,
                &facts,
                shared.clone(),
                tx.clone(),
                report,
            )?;
        }
        let fleet = worker.fleet.clone();
        if let Some(listen) = &config.metrics.listen {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("metrics listener {listen}"))?;
            let shared = shared.clone();
            let rules = rules.clone();
            let fleet = fleet.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // One task per scrape, bounded in time and number. A
                // connection that has not sent its request holds a place
                // among the waiting ones; when they are all taken, the
                // oldest is dropped for the new one, so idle clients cannot
                // keep a scraper out (its request comes at once).
                let waiting: Arc<std::sync::Mutex<std::collections::VecDeque<(u64, tokio::task::AbortHandle)>>> =
                    Arc::default();
                let mut next_id = 0u64;
                while let Ok((mut conn, _)) = listener.accept().await {
                    let id = next_id;
                    next_id += 1;
                    let (shared, rules, fleet) = (shared.clone(), rules.clone(), fleet.clone());
                    let queue = waiting.clone();
                    // Held until the task is listed: its own removal below
                    // comes after.
                    let mut q = waiting.lock().unwrap_or_else(|p| p.into_inner());
                    let task = tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let read = tokio::time::timeout(METRICS_TIMEOUT, conn.read(&mut buf)).await;
                        queue
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .retain(|(i, _)| *i != id);
                        if !matches!(read, Ok(Ok(n)) if n > 0) {
                            return;
                        }
                        let body = {
                            let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                            crate::metrics::text(&s, rules.as_ref(), fleet.as_ref())
                        };
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            crate::metrics::CONTENT_TYPE,
                            body.len()
                        );
                        let _ = tokio::time::timeout(METRICS_TIMEOUT, conn.write_all(resp.as_bytes())).await;
                    });
                    q.push_back((id, task.abort_handle()));
                    while q.len() > METRICS_CONNECTIONS {
                        if let Some((_, oldest)) = q.pop_front() {
                            oldest.abort();
                        }
                    }
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
        crate::memory::trim_code();
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

/// Metrics connections waiting for their request at most (the oldest is
/// dropped for a new one), and how long reading the request or writing the
/// answer may take.
const METRICS_CONNECTIONS: usize = 64;
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// Default of `agent.reconcile_timeout` when the configuration cannot say.
const DEFAULT_RECONCILE_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
/// How long past its deadline a reconcile may still be ending (killed, being
/// reaped) before the agent counts as stuck.
const WATCHDOG_GRACE: Duration = Duration::from_secs(60);

/// Whether a reconcile that started at `started` is past `limit` at `now`.
fn worker_stuck(started: Option<Instant>, now: Instant, limit: Duration) -> bool {
    started.is_some_and(|s| now.saturating_duration_since(s) > limit)
}

fn config_state_override(args: &Cli) -> Option<PathBuf> {
    args.state_dir
        .as_ref()
        .and_then(|d| std::path::absolute(d).ok())
}
