//! The WASM module host inside `ferry run`: serves the current
//! generation's `wasm` resources to rule actions (`call(module, export)`),
//! swaps them when the generation changes, and audits faults.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ferry_engine::activate::wasm as activate;
use ferry_engine::store::spool::AuditSpool;
use ferry_engine::{Config, Engine};
use ferry_rules::runtime::{CallDone, CallHook};
use ferry_wasm::{Host, Modules, Service, WasmError};
use serde_json::json;

/// Faults of one module are audited at most this often (each entry counts
/// the faults since the previous one); all are logged and counted.
const AUDIT_EVERY: Duration = Duration::from_secs(60);

pub struct ModuleHost {
    config: Config,
    host: Mutex<Option<Arc<Host>>>,
    service: Service,
    auditor: Arc<Auditor>,
}

/// Leaves the module host's audit entries in the audit spool for the
/// engine, the one writer of the state database (the agent never opens it;
/// a reconcile may hold it), and asks for them to be appended at once
/// (`ferry audit flush`, in a thread; when a reconcile holds the state
/// directory, it appends them as it ends).
struct Auditor {
    spool: AuditSpool,
    flush: crate::child::CommandFactory,
}

impl Auditor {
    fn write(&self, event: &str, details: serde_json::Value) {
        if let Err(e) = self.spool.push(event, "agent", details) {
            tracing::error!(error = %e, event, "wasm: spooling an audit entry failed");
            return;
        }
        let mut cmd = (self.flush)();
        cmd.args(["audit", "flush"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let flushed = std::thread::Builder::new()
            .name("audit-flush".into())
            .spawn(move || match cmd.status() {
                Ok(s) if s.success() => {}
                Ok(s) => {
                    tracing::debug!(status = %s, "ferry audit flush: left for the next reconcile")
                }
                Err(e) => tracing::warn!(error = %e, "ferry audit flush could not run"),
            });
        if let Err(e) = flushed {
            tracing::warn!(error = %e, "ferry audit flush could not start");
        }
    }
}

impl std::fmt::Debug for ModuleHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleHost")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl ModuleHost {
    pub fn start(config: &Config, flush: crate::child::CommandFactory) -> ModuleHost {
        let auditor = Arc::new(Auditor {
            spool: AuditSpool::new(&config.state_dir),
            flush,
        });
        let service = Service::start(Modules::new(), Some(fault_auditor(auditor.clone())));
        ModuleHost {
            config: config.clone(),
            host: Mutex::new(None),
            service,
            auditor,
        }
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    fn host(&self) -> Result<Arc<Host>> {
        let mut host = self.host.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = &*host {
            return Ok(h.clone());
        }
        let h = Arc::new(Host::new(&activate::host_config(
            &self.config.state_dir,
            &self.config.wasm,
        ))?);
        *host = Some(h.clone());
        Ok(h)
    }

    /// Loads (from the precompile cache, normally) and checks the modules
    /// of the current generation. Blocking.
    pub fn load_current(&self) -> Result<(Option<u64>, Modules)> {
        let Some(engine) = Engine::open_read_only(self.config.clone())? else {
            return Ok((None, Modules::new()));
        };
        let (generation, resources) = engine.active_modules()?;
        if resources.is_empty() {
            return Ok((generation, Modules::new()));
        }
        let host = self.host()?;
        let data_dir = activate::data_dir(&self.config.state_dir, &self.config.wasm);
        let mut modules = Modules::new();
        for r in &resources {
            let m = activate::load(&host, engine.store(), r, &data_dir)
                .with_context(|| format!("loading wasm {}", r.name))?;
            if let ferry_wasm::CacheOutcome::Rejected(why) = &m.cache {
                self.auditor.write(
                    "wasm-cache-rejected",
                    json!({"module": r.name, "module_sha256": m.sha256, "reason": why, "recompiled": true}),
                );
            }
            modules.insert(r.name.clone(), m);
        }
        Ok((generation, modules))
    }

    /// Makes `modules` the serving set; calls already running finish on
    /// the old modules.
    pub fn swap(&self, modules: Modules) {
        self.service.swap(modules);
    }

    pub fn hook(&self) -> Arc<dyn CallHook> {
        Arc::new(Hook(self.service.clone()))
    }
}

struct Hook(Service);

impl CallHook for Hook {
    fn call(&self, module: &str, export: &str, payload: Vec<u8>, done: CallDone) {
        self.0.submit(
            module,
            export,
            payload,
            Box::new(move |result| {
                done(
                    result
                        .map(|emits| emits.into_iter().map(|e| (e.topic, e.payload)).collect())
                        .map_err(|e| e.to_string()),
                )
            }),
        );
    }
}

/// Audits module faults (trap, fuel, memory), rate-limited per module.
fn fault_auditor(auditor: Arc<Auditor>) -> ferry_wasm::service::FaultHook {
    let last: Mutex<HashMap<String, (Instant, u64)>> = Mutex::new(HashMap::new());
    Box::new(move |module: &str, export: &str, error: &WasmError| {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let entry = last
            .entry(module.to_owned())
            .or_insert((now - AUDIT_EVERY * 2, 0));
        entry.1 += 1;
        if now.duration_since(entry.0) < AUDIT_EVERY {
            return;
        }
        let faults = std::mem::take(&mut entry.1);
        entry.0 = now;
        drop(last);
        auditor.write(
            "wasm-fault",
            json!({"module": module, "export": export, "error": error.to_string(), "faults": faults}),
        );
    })
}
