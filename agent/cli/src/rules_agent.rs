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

/// The compiled rule sets of the current generation.
fn load_rules(config: &Config) -> Result<(Option<u64>, Loaded)> {
    let Some(engine) = Engine::open_read_only(config.clone())? else {
        return Ok((None, Loaded::default()));
    };
    let (generation, sets) = engine.active_rulesets()?;
    let label = generation.map_or("no generation".to_owned(), |n| format!("generation {n}"));
    let sets = sets
        .into_iter()
        .map(|(name, c)| (Arc::from(name.as_str()), Arc::new(c)))
        .collect();
    Ok((generation, Loaded { label, sets }))
}

/// The current generation's modules (swapped in first, so that the new
/// rules find them) and rule sets. A generation whose modules do not load
/// changes nothing.
fn load(config: &Config, modules: &ModuleHost) -> Result<(Option<u64>, Loaded)> {
    #[cfg(feature = "wasm")]
    for _ in 0..5 {
        let (module_gen, loaded_modules) = modules.load_current()?;
        let (generation, loaded) = load_rules(config)?;
        if module_gen == generation {
            modules.swap(loaded_modules);
            return Ok((generation, loaded));
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

/// The agent's event path: the rule engine and the module host its
/// `call()` actions reach.
#[derive(Debug, Clone)]
pub struct EventPath {
    pub rules: Runtime,
    #[cfg(feature = "wasm")]
    pub modules: Arc<ModuleHost>,
}

/// Starts the rule engine and module host when `[rules]` names an input;
/// must be called inside the daemon's tokio runtime. `changed` is notified
/// by the worker after each reconcile.
pub fn start(config: &Config, changed: Arc<Notify>) -> Result<Option<EventPath>> {
    let rc = &config.rules;
    if rc.mqtt.is_none() && rc.socket.is_none() {
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
    };
    #[cfg(feature = "wasm")]
    let modules = Arc::new(ModuleHost::start(config));
    #[cfg(not(feature = "wasm"))]
    let modules = Arc::new(ModuleHost);
    let (mut generation, loaded) = match load(config, &modules) {
        Ok(l) => l,
        Err(e) => {
            // The agent must keep running (and be able to fix this with the
            // next revision); the engine starts empty.
            tracing::error!(error = %format!("{e:#}"), "rules: loading the current rule sets and modules failed");
            (None, Loaded::default())
        }
    };
    tracing::info!(sets = loaded.sets.len(), modules = module_count(&modules), from = %loaded.label, "rules: engine started");
    #[cfg(feature = "wasm")]
    let hook = Some(modules.hook());
    #[cfg(not(feature = "wasm"))]
    let hook = None;
    let runtime = Runtime::start(options, loaded, hook)?;
    let rt = runtime.clone();
    let host = modules.clone();
    let config = config.clone();
    let state_dir: PathBuf = config.state_dir.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let now = current_generation(&state_dir);
            if now == generation {
                continue;
            }
            let (cfg, m) = (config.clone(), host.clone());
            match tokio::task::spawn_blocking(move || load(&cfg, &m)).await {
                Ok(Ok((g, loaded))) => {
                    tracing::info!(sets = loaded.sets.len(), modules = module_count(&host), from = %loaded.label, "rules: swapped in");
                    rt.swap(loaded);
                    generation = g;
                }
                Ok(Err(e)) => {
                    // Try again on the next change; the running sets stay.
                    tracing::error!(error = %format!("{e:#}"), "rules: loading the new rule sets failed; keeping the running ones");
                    generation = now;
                }
                Err(_) => return,
            }
        }
    });
    Ok(Some(EventPath {
        rules: runtime,
        #[cfg(feature = "wasm")]
        modules,
    }))
}
