//! The rule engine inside `ferry run`: runs the current generation's
//! `ruleset` resources and swaps them when the generation changes (after
//! the agent's own reconciles at once, after a `ferry apply`/`rollback` from
//! the command line within a second).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ferry_engine::{Config, Engine};
use ferry_rules::runtime::{Loaded, MqttTarget, Options, Runtime};
use tokio::sync::Notify;

/// The field sources that feed the rule engine (CoAP, Modbus), when built
/// in (feature `ingest`).
#[cfg(feature = "ingest")]
pub use ferry_ingest::{Ingest as Sources, Snapshot as SourceStats};
#[cfg(not(feature = "ingest"))]
pub use no_ingest::{SourceStats, Sources};

#[cfg(feature = "wasm")]
use crate::wasm_agent::ModuleHost;

/// Without the module host (a build without `wasm`), rules run alone and a
/// `call()` action fails, saying why.
#[cfg(not(feature = "wasm"))]
#[derive(Debug)]
pub struct ModuleHost;

/// The generation `current` points at, read from the symlink (cheap enough
/// to check every second).
fn current_generation(state_dir: &Path) -> Option<u64> {
    std::fs::read_link(state_dir.join("current"))
        .ok()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
}

/// What the current generation runs on the event path: its compiled rule
/// sets and the field sources (ferry.toml's and the sets' own).
struct Generation {
    number: Option<u64>,
    loaded: Loaded,
    ingest: ferry_ingest::Plan,
}

/// The compiled rule sets of the current generation.
fn load_rules(config: &Config) -> Result<Generation> {
    let Some(engine) = Engine::open_read_only(config.clone())? else {
        return Ok(Generation {
            number: None,
            loaded: Loaded::default(),
            ingest: config.rules.ingest()?,
        });
    };
    let active = engine.active_rulesets()?;
    let label = active
        .generation
        .map_or("no generation".to_owned(), |n| format!("generation {n}"));
    let sets = active
        .sets
        .into_iter()
        .map(|(name, c)| (Arc::from(name.as_str()), Arc::new(c)))
        .collect();
    Ok(Generation {
        number: active.generation,
        loaded: Loaded { label, sets },
        ingest: active.ingest,
    })
}

/// The current generation's modules (swapped in first, so that the new
/// rules find them) and rule sets. A generation whose modules do not load
/// changes nothing.
fn load(config: &Config, modules: &ModuleHost) -> Result<Generation> {
    #[cfg(feature = "wasm")]
    for _ in 0..5 {
        let (module_gen, loaded_modules) = modules.load_current()?;
        let generation = load_rules(config)?;
        if module_gen == generation.number {
            modules.swap(loaded_modules);
            return Ok(generation);
        }
        // A switch happened between the two reads: read both again.
    }
    #[cfg(not(feature = "wasm"))]
    {
        let _ = modules;
        return load_rules(config);
    }
    #[allow(unreachable_code)]
    {
        anyhow::bail!("the generation kept changing while loading")
    }
}

/// How many modules the host runs (for logs).
fn module_count(modules: &ModuleHost) -> usize {
    #[cfg(feature = "wasm")]
    return modules.service().modules().len();
    #[cfg(not(feature = "wasm"))]
    {
        let _ = modules;
        0
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "gateway".to_owned())
}

/// The agent's event path: the rule engine, the module host its
/// `call()` actions reach, and the field sources that feed it.
#[derive(Debug, Clone)]
pub struct EventPath {
    pub rules: Runtime,
    #[cfg(feature = "wasm")]
    pub modules: Arc<ModuleHost>,
    /// The field sources' counters, as of the last swap.
    #[cfg_attr(not(feature = "ingest"), allow(dead_code))]
    pub ingest: Arc<std::sync::Mutex<SourceStats>>,
}

/// Makes `plan` the running field sources; a CoAP address that cannot be
/// bound is logged and alerted, and the rest runs.
async fn apply_ingest(
    ingest: &mut Sources,
    plan: &ferry_ingest::Plan,
    rules: &Runtime,
    snapshot: &std::sync::Mutex<SourceStats>,
) {
    if let Err(e) = ingest.apply(plan).await {
        let bind = plan
            .coap
            .as_ref()
            .map(|c| c.bind.to_string())
            .unwrap_or_default();
        tracing::error!(bind = %bind, error = %e, "coap: cannot listen");
        rules.alert(
            "coap",
            format!("the CoAP server cannot listen on {bind}: {e}"),
        );
    }
    *snapshot.lock().unwrap_or_else(|p| p.into_inner()) = ingest.snapshot();
}

/// The first retry of a failed load, and the longest wait between two.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Records what the event path runs for reconciles in other processes
/// (drift of kind `running`); a failure to write is logged, not fatal.
fn record(state_dir: &Path, running: Option<u64>, failed: Option<(Option<u64>, String)>) {
    let r = ferry_engine::store::running::Running::now(running, failed);
    if let Err(e) = r.write(state_dir) {
        tracing::warn!(error = %e, "rules: cannot record what runs");
    }
}

/// Starts the rule engine and module host when `[rules]` names an input;
/// must be called inside the daemon's tokio runtime. `changed` is notified
/// by the worker after each reconcile.
pub async fn start(
    config: &Config,
    changed: Arc<Notify>,
    commands: crate::child::CommandFactory,
) -> Result<Option<EventPath>> {
    let rc = &config.rules;
    if !rc.has_inputs() {
        return Ok(None);
    }
    let options = Options {
        mqtt: rc
            .mqtt
            .as_deref()
            .map(MqttTarget::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        client_id: rc
            .client_id
            .clone()
            .unwrap_or_else(|| format!("ferry-{}", hostname())),
        socket: rc.socket.clone(),
        alert_topic: rc.alert_topic.clone(),
        print_actions: false,
        queue: rc.queue,
    };
    #[cfg(feature = "wasm")]
    let modules = Arc::new(ModuleHost::start(config, commands));
    #[cfg(not(feature = "wasm"))]
    let modules = {
        drop(commands);
        Arc::new(ModuleHost)
    };
    let mut first_error = None;
    let first = match load(config, &modules) {
        Ok(l) => l,
        Err(e) => {
            first_error = Some((current_generation(&config.state_dir), format!("{e:#}")));
            // The agent must keep running (and be able to fix this with the
            // next revision); the engine starts empty, with ferry.toml's
            // sources (checked when the configuration was read).
            tracing::error!(error = %format!("{e:#}"), "rules: loading the current rule sets and modules failed");
            Generation {
                number: None,
                loaded: Loaded::default(),
                ingest: rc.ingest().unwrap_or_default(),
            }
        }
    };
    // The generation last tried, and the one whose sets and modules run.
    let mut generation = first_error
        .as_ref()
        .map_or(first.number, |(attempted, _)| *attempted);
    let mut running = first.number;
    let failed_first = first_error.is_some();
    record(&config.state_dir, running, first_error);
    tracing::info!(sets = first.loaded.sets.len(), modules = module_count(&modules), from = %first.loaded.label, "rules: engine started");
    #[cfg(feature = "wasm")]
    let hook = Some(modules.hook());
    #[cfg(not(feature = "wasm"))]
    let hook = None;
    let runtime = Runtime::start(options, first.loaded, hook)?;
    let mut ingest = sources(&runtime);
    let snapshot = Arc::new(std::sync::Mutex::new(SourceStats::default()));
    apply_ingest(&mut ingest, &first.ingest, &runtime, &snapshot).await;
    let rt = runtime.clone();
    let shared_snapshot = snapshot.clone();
    let host = modules.clone();
    let config = config.clone();
    let state_dir: PathBuf = config.state_dir.clone();
    tokio::spawn(async move {
        // A load that failed (a damaged blob) is tried again after the next
        // reconcile, which may have restored it within the same generation,
        // and at growing intervals (a restore by `ferry apply` is not
        // notified here).
        let mut failed = failed_first;
        let mut retry = RETRY_FIRST;
        let mut waited = Duration::ZERO;
        loop {
            let reconciled = tokio::select! {
                _ = changed.notified() => true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            };
            waited += Duration::from_secs(1);
            let now = current_generation(&state_dir);
            let retry_due = failed && (reconciled || waited >= retry);
            if now == generation && !retry_due {
                continue;
            }
            if now != generation {
                retry = RETRY_FIRST;
            }
            waited = Duration::ZERO;
            let (cfg, m) = (config.clone(), host.clone());
            match tokio::task::spawn_blocking(move || load(&cfg, &m)).await {
                Ok(Ok(g)) => {
                    tracing::info!(sets = g.loaded.sets.len(), modules = module_count(&host), from = %g.loaded.label, "rules: swapped in");
                    // Sources first: a new device's events may meet the old
                    // sets for a moment, a new set never misses its device.
                    apply_ingest(&mut ingest, &g.ingest, &rt, &shared_snapshot).await;
                    rt.swap(g.loaded);
                    generation = g.number;
                    running = g.number;
                    record(&state_dir, running, None);
                    failed = false;
                    retry = RETRY_FIRST;
                }
                Ok(Err(e)) => {
                    // Try again on the next change, reconcile or retry; the
                    // running sets stay.
                    let error = format!("{e:#}");
                    tracing::error!(error = %error, "rules: loading the new rule sets failed; keeping the running ones");
                    if !failed || now != generation {
                        rt.alert(
                            "rules",
                            format!(
                                "loading generation {}'s rule sets and modules failed: {error}",
                                now.map_or("none".to_owned(), |n| n.to_string())
                            ),
                        );
                    }
                    record(&state_dir, running, Some((now, error)));
                    generation = now;
                    failed = true;
                    retry = (retry * 2).min(RETRY_MAX);
                }
                Err(_) => return,
            }
        }
    });
    Ok(Some(EventPath {
        rules: runtime,
        #[cfg(feature = "wasm")]
        modules,
        ingest: snapshot,
    }))
}

/// Field sources feeding `runtime`: its `modbus_write` actions go to them,
/// and their alerts go where rule alerts go (journal, alert topic).
pub fn sources(runtime: &Runtime) -> Sources {
    #[cfg(feature = "ingest")]
    {
        let rt = runtime.clone();
        let alert: ferry_ingest::modbus::AlertFn =
            Arc::new(move |source: &str, message: String| rt.alert(source, message));
        let sources = Sources::new(runtime.sink(), alert);
        runtime.set_write_hook(sources.writer());
        sources
    }
    #[cfg(not(feature = "ingest"))]
    {
        let _ = runtime;
        Sources
    }
}

/// A build without field sources: a configuration or rule set that names
/// one is refused when it is read, so there is never one to start.
#[cfg(not(feature = "ingest"))]
mod no_ingest {
    #[derive(Debug)]
    pub struct Sources;

    #[derive(Debug, Clone, Default)]
    pub struct SourceStats;

    impl Sources {
        pub async fn apply(&mut self, plan: &ferry_ingest::Plan) -> std::io::Result<()> {
            if plan.coap.is_some() || !plan.devices.is_empty() {
                return Err(std::io::Error::other(ferry_engine::config::built_without(
                    ferry_engine::config::FIELD_SOURCES,
                    "ingest",
                )));
            }
            Ok(())
        }

        pub fn coap_addr(&self) -> Option<std::net::SocketAddr> {
            None
        }

        pub fn snapshot(&self) -> SourceStats {
            SourceStats
        }
    }
}
