//! The serving side: one worker thread runs every call, in the order calls
//! were submitted, against the modules current when the call starts.
//!
//! Hot swap is [`Service::swap`]: a new set of (already loaded and checked)
//! modules replaces the old one atomically. A call that started on the old
//! module finishes there; every later call runs on the new one; no call is
//! dropped or run twice. Each module keeps one live instance between calls
//! (so module state survives from one event to the next); a trap discards
//! that instance and the next call gets a fresh one from the pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::WasmError;
use crate::host::{Emit, Instance, Module};

/// The loaded modules by name.
pub type Modules = BTreeMap<String, Arc<Module>>;

/// What a finished call reports.
pub type Done = Box<dyn FnOnce(Result<Vec<Emit>, WasmError>) + Send>;

/// Told about every call that trapped, ran out of fuel or memory.
pub type FaultHook = Box<dyn Fn(&str, &str, &WasmError) + Send + Sync>;

struct Job {
    module: String,
    export: String,
    input: Vec<u8>,
    done: Done,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub faults: AtomicU64,
    pub swaps: AtomicU64,
    /// Calls refused because the queue was full.
    pub refused: AtomicU64,
    /// Instances taken into service (the one made at load time, or new
    /// ones after a fault): `1 - instantiations / calls` is the reuse rate.
    pub instantiations: AtomicU64,
}

#[derive(Clone)]
pub struct Service {
    modules: Arc<ArcSwap<Modules>>,
    stats: Arc<Stats>,
    jobs: Arc<Mutex<mpsc::Sender<Job>>>,
    /// Input bytes of the calls waiting for the worker, and their bound.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

/// Input bytes that may wait for the worker by default; beyond that, calls
/// are refused at once (a slow module under a fast stream must not grow
/// the agent without bound).
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 << 20;

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("modules", &self.modules.load().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Starts the worker thread with `modules`.
    pub fn start(modules: Modules, on_fault: Option<FaultHook>) -> Service {
        Self::start_bounded(modules, on_fault, DEFAULT_MAX_QUEUED_BYTES)
    }

    /// Like `start`, with at most `max_queued` input bytes waiting.
    pub fn start_bounded(
        modules: Modules,
        on_fault: Option<FaultHook>,
        max_queued: usize,
    ) -> Service {
        let (tx, rx) = mpsc::channel::<Job>();
        let current = Arc::new(ArcSwap::from_pointee(modules));
        let stats = Arc::new(Stats::default());
        let queued = Arc::new(AtomicUsize::new(0));
        let (c, s, q) = (current.clone(), stats.clone(), queued.clone());
        std::thread::Builder::new()
            .name("ferry-wasm".into())
            .spawn(move || worker(rx, c, s, q, on_fault))
            .expect("spawning the wasm worker thread");
        Service {
            modules: current,
            stats,
            jobs: Arc::new(Mutex::new(tx)),
            queued,
            max_queued,
        }
    }

    /// Makes `modules` the serving set (see the module docs).
    pub fn swap(&self, modules: Modules) {
        self.modules.store(Arc::new(modules));
        self.stats.swaps.fetch_add(1, Ordering::Relaxed);
    }

    pub fn modules(&self) -> Arc<Modules> {
        self.modules.load_full()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Queues a call; `done` runs on the worker thread with the result, or
    /// at once with [`WasmError::Busy`] when the queue is full.
    pub fn submit(&self, module: &str, export: &str, input: Vec<u8>, done: Done) {
        let size = input.len().max(1);
        if self.queued.fetch_add(size, Ordering::AcqRel) + size > self.max_queued {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            done(Err(WasmError::Busy(self.max_queued)));
            return;
        }
        let job = Job {
            module: module.to_owned(),
            export: export.to_owned(),
            input,
            done,
        };
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job);
        if let Err(mpsc::SendError(job)) = sent {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            (job.done)(Err(WasmError::Stopped));
        }
    }

    /// Queues a call and waits for its result.
    pub fn call(&self, module: &str, export: &str, input: Vec<u8>) -> Result<Vec<Emit>, WasmError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            module,
            export,
            input,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(WasmError::Stopped))
    }
}

fn worker(
    jobs: mpsc::Receiver<Job>,
    current: Arc<ArcSwap<Modules>>,
    stats: Arc<Stats>,
    queued: Arc<AtomicUsize>,
    on_fault: Option<FaultHook>,
) {
    let mut seen: Arc<Modules> = current.load_full();
    let mut live: HashMap<String, (Arc<Module>, Instance)> = HashMap::new();
    for job in jobs {
        queued.fetch_sub(job.input.len().max(1), Ordering::AcqRel);
        let modules = current.load_full();
        if !Arc::ptr_eq(&modules, &seen) {
            // Instances of modules that left or changed are dropped (their
            // slots go back to the pool).
            live.retain(|name, (m, _)| modules.get(name).is_some_and(|n| Arc::ptr_eq(n, m)));
            seen = modules;
        }
        stats.calls.fetch_add(1, Ordering::Relaxed);
        let result = run(&seen, &mut live, &job, &stats);
        if let Err(e) = &result {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if e.poisons() {
                stats.faults.fetch_add(1, Ordering::Relaxed);
                live.remove(&job.module);
                tracing::warn!(module = %job.module, export = %job.export, error = %e, "wasm: call failed; instance discarded");
                if let Some(hook) = &on_fault {
                    hook(&job.module, &job.export, e);
                }
            }
        }
        (job.done)(result);
    }
}

fn run(
    modules: &Modules,
    live: &mut HashMap<String, (Arc<Module>, Instance)>,
    job: &Job,
    stats: &Stats,
) -> Result<Vec<Emit>, WasmError> {
    let module = modules
        .get(&job.module)
        .ok_or_else(|| WasmError::NoModule(job.module.clone()))?;
    if !live.contains_key(&job.module) {
        let instance = module.take_instance()?;
        stats.instantiations.fetch_add(1, Ordering::Relaxed);
        live.insert(job.module.clone(), (module.clone(), instance));
    }
    let (_, instance) = live.get_mut(&job.module).expect("inserted above");
    instance.call(&job.export, &job.input)
}
