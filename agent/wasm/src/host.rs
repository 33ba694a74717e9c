//! The wasmtime host: one engine (pooling allocator, fuel, bounded stack),
//! one linker granting WASI preview 1 and ferry's own imports, modules
//! compiled through the precompile cache and pre-linked once, instances
//! created from the pre-linked form.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use wasmtime::{
    Caller, Config, Engine, Extern, InstanceAllocationStrategy, InstancePre, Linker, Memory,
    Module as WasmModule, OptLevel, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, Trap, TypedFunc,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::WasmError;
use crate::cache::{ArtifactCache, Lookup};
use crate::spec::{
    DirGrant, Limits, MAX_EMIT_BYTES, MAX_EMITS_PER_EVENT, MAX_TOPIC_BYTES, ModuleSpec,
};
use crate::stdio::JournalStream;

/// Import modules a module may name; anything else fails to load.
pub const GRANTED_IMPORT_MODULES: &[&str] = &["wasi_snapshot_preview1", "ferry"];
/// Deepest WebAssembly stack a call may use.
pub const MAX_WASM_STACK: usize = 512 << 10;

#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Where precompiled modules are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Upper bound for any module's memory cap (sizes the instance pool).
    pub max_memory_mib: u32,
    /// Live instances at most (the pool's size): loaded modules, plus one
    /// being checked during a swap.
    pub max_instances: u32,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            cache_dir: None,
            max_memory_mib: 256,
            max_instances: 64,
        }
    }
}

/// One output of a call: a message for `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emit {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// How a module's native code was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a sealed, intact cache artifact.
    Hit,
    /// Compiled (no artifact yet, or no cache).
    Compiled,
    /// An artifact was there but failed verification; compiled again and
    /// the artifact replaced.
    Rejected(String),
}

impl CacheOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Compiled => "compiled",
            CacheOutcome::Rejected(_) => "rejected",
        }
    }
}

/// Per-instance host state.
#[allow(missing_debug_implementations)]
pub struct Ctx {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    emits: Vec<Emit>,
}

impl Ctx {
    pub(crate) fn new(wasi: WasiP1Ctx, limits: StoreLimits) -> Ctx {
        Ctx {
            wasi,
            limits,
            emits: Vec::new(),
        }
    }

    pub(crate) fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }
}

pub struct Host {
    engine: Engine,
    linker: Linker<Ctx>,
    cache: Option<ArtifactCache>,
    fingerprint: String,
    max_memory_mib: u32,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("fingerprint", &self.fingerprint)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// A compiled, pre-linked module with what it is allowed, ready to be
/// instantiated.
pub struct Module {
    pub name: Arc<str>,
    pub sha256: String,
    pub spec: ModuleSpec,
    pub cache: CacheOutcome,
    pre: InstancePre<Ctx>,
    engine: Engine,
    /// The instance created and checked when the module was loaded, handed
    /// to whoever serves first.
    warm: Mutex<Option<Instance>>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// A live instance of a module, used by one thread at a time.
pub struct Instance {
    module: Arc<str>,
    fuel: u64,
    store: Store<Ctx>,
    memory: Option<Memory>,
    alloc: Option<TypedFunc<i32, i32>>,
    exports: HashMap<String, TypedFunc<(i32, i32), i32>>,
    instance: wasmtime::Instance,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("module", &self.module)
            .finish_non_exhaustive()
    }
}

fn engine_config(max_memory_mib: u32, max_instances: u32) -> Config {
    let mut config = Config::new();
    config.consume_fuel(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    config.cranelift_opt_level(OptLevel::Speed);
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(max_instances);
    pool.total_memories(max_instances);
    pool.total_tables(max_instances);
    pool.max_memory_size((max_memory_mib as usize) << 20);
    pool.total_component_instances(0);
    pool.total_stacks(0);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl Host {
    pub fn new(config: &HostConfig) -> Result<Host, WasmError> {
        let engine = Engine::new(&engine_config(config.max_memory_mib, config.max_instances))
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let mut linker: Linker<Ctx> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c: &mut Ctx| &mut c.wasi)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        linker
            .func_wrap("ferry", "emit", emit)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let fingerprint = {
            // The engine's own compatibility hash covers the compiler, its
            // settings and the target; wasmtime's version is added so that
            // an upgrade never reuses an artifact.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir)?),
            None => None,
        };
        Ok(Host {
            engine,
            linker,
            cache,
            fingerprint: format!("{CACHE_FORMAT}-{fingerprint}"),
            max_memory_mib: config.max_memory_mib,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine/config fingerprint part of cache keys.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn cache(&self) -> Option<&ArtifactCache> {
        self.cache.as_ref()
    }

    /// Checks and compiles (or loads from the cache) `bytes`, pre-links it,
    /// creates a first instance and health-checks it. Only a module that
    /// passes all of this is returned.
    pub fn load(
        &self,
        name: &str,
        spec: ModuleSpec,
        bytes: &[u8],
    ) -> Result<Arc<Module>, WasmError> {
        spec.check()?;
        let fail = |message: String| WasmError::Load {
            module: name.to_owned(),
            message,
        };
        if bytes.len() as u64 > spec.limits.max_module_bytes {
            return Err(fail(format!(
                "{} bytes; limits.max_module_bytes is {}",
                bytes.len(),
                spec.limits.max_module_bytes
            )));
        }
        if spec.limits.memory_mib > self.max_memory_mib {
            return Err(fail(format!(
                "limits.memory_mib {} exceeds the host's [wasm] max_memory_mib {}",
                spec.limits.memory_mib, self.max_memory_mib
            )));
        }
        check_header(bytes).map_err(fail)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (module, cache) = self.compile(&sha256, bytes).map_err(fail)?;
        check_imports(&module).map_err(fail)?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| fail(format!("linking: {e:#}")))?;
        let module = Module {
            name: name.into(),
            sha256,
            spec,
            cache,
            pre,
            engine: self.engine.clone(),
            warm: Mutex::new(None),
        };
        let mut instance = module.instantiate()?;
        instance.health(module.spec.probe.as_ref())?;
        *module.warm.lock().unwrap_or_else(|p| p.into_inner()) = Some(instance);
        Ok(Arc::new(module))
    }

    fn compile(&self, sha256: &str, bytes: &[u8]) -> Result<(WasmModule, CacheOutcome), String> {
        let mut outcome = CacheOutcome::Compiled;
        if let Some(cache) = &self.cache {
            match cache.get(sha256, &self.fingerprint) {
                Lookup::Hit(artifact) => match deserialize(&self.engine, &artifact) {
                    Ok(m) => return Ok((m, CacheOutcome::Hit)),
                    Err(e) => outcome = CacheOutcome::Rejected(format!("not loadable: {e:#}")),
                },
                Lookup::Miss => {}
                Lookup::Rejected(why) => outcome = CacheOutcome::Rejected(why),
            }
        }
        if let CacheOutcome::Rejected(why) = &outcome {
            tracing::warn!(module_sha256 = sha256, reason = %why, "wasm: cached artifact rejected; recompiling");
        }
        let module = WasmModule::from_binary(&self.engine, bytes)
            .map_err(|e| format!("invalid module: {e:#}"))?;
        if let Some(cache) = &self.cache {
            match module.serialize() {
                Ok(artifact) => {
                    if let Err(e) = cache.put(sha256, &self.fingerprint, &artifact) {
                        tracing::warn!(error = %e, "wasm: caching the compiled module failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "wasm: serialising the compiled module failed")
                }
            }
        }
        Ok((module, outcome))
    }

    /// Compiles without caching or instantiating (for `ferry wasm run` and
    /// benchmarks).
    pub fn compile_only(&self, bytes: &[u8]) -> Result<WasmModule, WasmError> {
        check_header(bytes).map_err(|message| WasmError::Load {
            module: "module".into(),
            message: if std::str::from_utf8(bytes).is_ok() {
                format!("{message}; this looks like WebAssembly text: assemble it with wat2wasm")
            } else {
                message
            },
        })?;
        WasmModule::from_binary(&self.engine, bytes).map_err(|e| WasmError::Load {
            module: "module".into(),
            message: format!("invalid module: {e:#}"),
        })
    }

    pub(crate) fn linker(&self) -> &Linker<Ctx> {
        &self.linker
    }
}

/// Prefix of cache fingerprints: the artifact layout and the wasmtime
/// major version (deserialization also checks the exact version).
const CACHE_FORMAT: &str = "w48";

/// Loads native code produced by [`Host::compile`].
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<WasmModule> {
    // SAFETY: `Module::deserialize` trusts its input to be the output of
    // `Module::serialize` for a compatible engine: it maps the bytes as
    // executable code. `artifact` is such output: it comes from
    // `ArtifactCache::get`, which only returns bytes whose HMAC, under a
    // device key only ferry reads, verifies for exactly this module digest
    // and this engine fingerprint; ferry seals nothing but what
    // `Module::serialize` returned on this device. The bytes are an owned
    // copy in memory, so nothing can change them between that check and
    // this call. wasmtime additionally rejects artifacts from another
    // version or configuration (its header check), which we treat as a miss.
    unsafe { WasmModule::deserialize(engine, artifact) }
}

/// A core module, version 1 (not a component, not text, not garbage).
fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a WebAssembly binary (no \\0asm header)".into());
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Ok(()),
        [0x0d, 0, 1, 0] => {
            Err("a WebAssembly component; ferry runs core modules (WASI preview 1)".into())
        }
        _ => Err(format!(
            "unsupported WebAssembly version {:?}",
            &bytes[4..8]
        )),
    }
}

/// Every import must come from a module ferry grants; names the first that
/// doesn't. (Unknown names inside a granted module fail at linking, with
/// wasmtime's "unknown import" message.)
pub(crate) fn check_imports(module: &WasmModule) -> Result<(), String> {
    for import in module.imports() {
        if !GRANTED_IMPORT_MODULES.contains(&import.module()) {
            return Err(format!(
                "imports {}::{} which is not granted (modules may import WASI preview 1 and ferry::emit)",
                import.module(),
                import.name()
            ));
        }
    }
    Ok(())
}

/// Grants exactly these directories, variables and clocks (no clock: a
/// zero clock) — the one place a sandbox's capabilities are set, for served
/// modules and `ferry wasm run` alike. Errors name the host directory.
pub(crate) fn grant<'a>(
    b: &mut WasiCtxBuilder,
    dirs: &[DirGrant],
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    clocks: bool,
) -> Result<(), String> {
    for (k, v) in env {
        b.env(k, v);
    }
    for d in dirs {
        let perms = if d.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        b.preopened_dir(&d.host, &d.guest, perms)
            .map_err(|e| format!("{}: {e:#}", d.host.display()))?;
    }
    if !clocks {
        b.wall_clock(crate::stdio::ZeroClock);
        b.monotonic_clock(crate::stdio::ZeroClock);
    }
    Ok(())
}

/// The store limits for `limits`: memory and table caps, one instance,
/// one memory; growing past the cap traps.
pub(crate) fn store_limits(limits: &Limits) -> StoreLimits {
    StoreLimitsBuilder::new()
        .memory_size((limits.memory_mib as usize) << 20)
        .table_elements(limits.table_elements as usize)
        .instances(1)
        .tables(4)
        .memories(1)
        .trap_on_grow_failure(true)
        .build()
}

fn wasi_ctx(name: &str, spec: &ModuleSpec) -> Result<WasiP1Ctx, WasmError> {
    let mut b = WasiCtxBuilder::new();
    b.arg(name);
    let caps = &spec.capabilities;
    let env = caps.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    grant(&mut b, &caps.dirs, env, caps.clocks).map_err(|e| WasmError::Load {
        module: name.to_owned(),
        message: format!("preopening {e}"),
    })?;
    b.stdout(JournalStream::new(name, "stdout"));
    b.stderr(JournalStream::new(name, "stderr"));
    Ok(b.build_p1())
}

impl Module {
    /// A new instance (from the pool), `_initialize`d if the module is a
    /// reactor.
    pub fn instantiate(&self) -> Result<Instance, WasmError> {
        let fail = |message: String| WasmError::Load {
            module: self.name.to_string(),
            message,
        };
        let ctx = Ctx::new(
            wasi_ctx(&self.name, &self.spec)?,
            store_limits(&self.spec.limits),
        );
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|c| &mut c.limits);
        let fuel = self.spec.limits.fuel_per_event;
        store.set_fuel(fuel).map_err(|e| fail(format!("{e:#}")))?;
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| WasmError::from_call(&self.name, "instantiate", &e))?;
        let memory = instance.get_memory(&mut store, "memory");
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "ferry_alloc")
            .ok();
        let mut inst = Instance {
            module: self.name.clone(),
            fuel,
            store,
            memory,
            alloc,
            exports: HashMap::new(),
            instance,
        };
        if let Ok(init) = inst
            .instance
            .get_typed_func::<(), ()>(&mut inst.store, "_initialize")
        {
            inst.refuel()?;
            init.call(&mut inst.store, ())
                .map_err(|e| WasmError::from_call(&self.name, "_initialize", &e))?;
        }
        Ok(inst)
    }

    /// The instance made at load time, or a new one.
    pub fn take_instance(&self) -> Result<Instance, WasmError> {
        match self.warm.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(i) => Ok(i),
            None => self.instantiate(),
        }
    }
}

impl Instance {
    fn refuel(&mut self) -> Result<(), WasmError> {
        self.store
            .set_fuel(self.fuel)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))
    }

    /// Runs the module's checks: `ferry_health` if exported (must return
    /// 0), then the probe if one is declared.
    pub fn health(&mut self, probe: Option<&crate::spec::Probe>) -> Result<(), WasmError> {
        if let Ok(h) = self
            .instance
            .get_typed_func::<(), i32>(&mut self.store, "ferry_health")
        {
            self.refuel()?;
            let status = h
                .call(&mut self.store, ())
                .map_err(|e| WasmError::from_call(&self.module, "ferry_health", &e))?;
            if status != 0 {
                return Err(WasmError::Unhealthy {
                    module: self.module.to_string(),
                    message: format!("ferry_health returned {status}"),
                });
            }
        }
        if let Some(p) = probe {
            let input = p.input_bytes()?;
            self.call(&p.export, &input)
                .map_err(|e| WasmError::Unhealthy {
                    module: self.module.to_string(),
                    message: format!("probe {}: {e}", p.export),
                })?;
        }
        Ok(())
    }

    /// Calls `export(ptr, len) -> status` with `input` copied into the
    /// module's memory (at the pointer `ferry_alloc(len)` returns). Returns
    /// the outputs the call emitted. A trap, running out of fuel or memory
    /// is an error after which this instance must be dropped
    /// ([`WasmError::poisons`]).
    pub fn call(&mut self, export: &str, input: &[u8]) -> Result<Vec<Emit>, WasmError> {
        self.refuel()?;
        self.store.data_mut().emits.clear();
        let func = match self.exports.get(export) {
            Some(f) => f.clone(),
            None => {
                let f = self
                    .instance
                    .get_typed_func::<(i32, i32), i32>(&mut self.store, export)
                    .map_err(|_| WasmError::NoExport {
                        module: self.module.to_string(),
                        export: export.to_owned(),
                    })?;
                self.exports.insert(export.to_owned(), f.clone());
                f
            }
        };
        let len = i32::try_from(input.len()).map_err(|_| WasmError::Call {
            module: self.module.to_string(),
            export: export.to_owned(),
            message: "input larger than 2 GiB".into(),
        })?;
        let ptr = if input.is_empty() {
            0
        } else {
            let (Some(alloc), Some(memory)) = (self.alloc.clone(), self.memory) else {
                return Err(WasmError::Call {
                    module: self.module.to_string(),
                    export: export.to_owned(),
                    message: "the module exports no `memory` and `ferry_alloc` to receive input"
                        .into(),
                });
            };
            let ptr = alloc
                .call(&mut self.store, len)
                .map_err(|e| WasmError::from_call(&self.module, "ferry_alloc", &e))?;
            memory
                .write(&mut self.store, ptr as u32 as usize, input)
                .map_err(|_| WasmError::Call {
                    module: self.module.to_string(),
                    export: export.to_owned(),
                    message: format!("ferry_alloc({len}) returned {ptr}, outside its memory"),
                })?;
            ptr
        };
        let status = func
            .call(&mut self.store, (ptr, len))
            .map_err(|e| WasmError::from_call(&self.module, export, &e))?;
        let emits = std::mem::take(&mut self.store.data_mut().emits);
        if status != 0 {
            return Err(WasmError::Status {
                module: self.module.to_string(),
                export: export.to_owned(),
                status,
            });
        }
        Ok(emits)
    }

    pub fn fuel_left(&self) -> u64 {
        self.store.get_fuel().unwrap_or(0)
    }
}

/// `ferry::emit(topic_ptr, topic_len, data_ptr, data_len) -> i32`: queue one
/// output. Returns 0; traps on out-of-bounds pointers, oversized or too many
/// outputs, or a topic that is not UTF-8.
fn emit(
    mut caller: Caller<'_, Ctx>,
    topic_ptr: i32,
    topic_len: i32,
    data_ptr: i32,
    data_len: i32,
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("ferry::emit: the module exports no memory");
    };
    if caller.data().emits.len() >= MAX_EMITS_PER_EVENT {
        wasmtime::bail!("ferry::emit: more than {MAX_EMITS_PER_EVENT} outputs for one event");
    }
    let (tl, dl) = (topic_len as u32 as usize, data_len as u32 as usize);
    if tl > MAX_TOPIC_BYTES || dl > MAX_EMIT_BYTES {
        wasmtime::bail!(
            "ferry::emit: output too large (topic {tl} bytes, max {MAX_TOPIC_BYTES}; payload {dl} bytes, max {MAX_EMIT_BYTES})"
        );
    }
    let mem = memory.data(&caller);
    let slice = |p: i32, l: usize| {
        let p = p as u32 as usize;
        mem.get(p..p.checked_add(l)?)
    };
    let (Some(topic), Some(payload)) = (slice(topic_ptr, tl), slice(data_ptr, dl)) else {
        wasmtime::bail!("ferry::emit: pointer outside the module's memory");
    };
    let Ok(topic) = std::str::from_utf8(topic) else {
        wasmtime::bail!("ferry::emit: topic is not UTF-8");
    };
    let e = Emit {
        topic: topic.to_owned(),
        payload: payload.to_vec(),
    };
    caller.data_mut().emits.push(e);
    Ok(0)
}

/// Words for what stopped a call.
pub(crate) fn describe(e: &wasmtime::Error) -> String {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return format!("exited with status {}", exit.0);
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        let what = match trap {
            Trap::OutOfFuel => {
                "ran out of fuel (limits.fuel_per_event, or --fuel): stopped".to_owned()
            }
            Trap::StackOverflow => "stack overflow (call stack exhausted)".to_owned(),
            Trap::UnreachableCodeReached => "trap: unreachable instruction executed".to_owned(),
            Trap::MemoryOutOfBounds => "trap: out-of-bounds memory access".to_owned(),
            t => format!("trap: {t}"),
        };
        return what;
    }
    let text = format!("{e:#}");
    if text.contains("forcing trap when growing memory") || text.contains("memory minimum size") {
        return format!("memory cap (limits.memory_mib) exceeded: {text}");
    }
    text
}
