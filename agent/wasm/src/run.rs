//! `ferry wasm run`: a WASI command module run once, in the same engine
//! configuration and under the same kind of limits and grants the agent
//! uses, with the terminal's stdin/stdout/stderr.

use std::path::PathBuf;

use wasmtime::Store;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::WasmError;
use crate::host::{Ctx, Host, HostConfig};
use crate::spec::{DirGrant, Limits};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub file: PathBuf,
    /// argv[0] is the file name; these follow it.
    pub args: Vec<String>,
    pub dirs: Vec<DirGrant>,
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Fuel for the whole run (`None`: unbounded).
    pub fuel: Option<u64>,
    pub clocks: bool,
}

/// Runs `_start` and returns the module's exit status (0 when `_start`
/// returns). Traps and refusals are errors.
pub fn run_command(opts: &RunOptions) -> Result<i32, WasmError> {
    let name = opts
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module.wasm".into());
    let bytes = std::fs::read(&opts.file)
        .map_err(|e| WasmError::Io(format!("{}: {e}", opts.file.display())))?;
    if bytes.len() as u64 > opts.limits.max_module_bytes {
        return Err(WasmError::Load {
            module: name,
            message: format!(
                "{} bytes; the limit is {}",
                bytes.len(),
                opts.limits.max_module_bytes
            ),
        });
    }
    let host = Host::new(&HostConfig {
        max_memory_mib: opts.limits.memory_mib.max(1),
        max_instances: 2,
        ..HostConfig::default()
    })?;
    let module = host.compile_only(&bytes).map_err(|e| match e {
        WasmError::Load { message, .. } => WasmError::Load {
            module: name.clone(),
            message,
        },
        e => e,
    })?;
    crate::host::check_imports(&module).map_err(|message| WasmError::Load {
        module: name.clone(),
        message,
    })?;
    let pre = host
        .linker()
        .instantiate_pre(&module)
        .map_err(|e| WasmError::Load {
            module: name.clone(),
            message: format!("linking: {e:#}"),
        })?;

    let mut b = WasiCtxBuilder::new();
    b.arg(&name);
    for a in &opts.args {
        b.arg(a);
    }
    let env = opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    crate::host::grant(&mut b, &opts.dirs, env, opts.clocks)
        .map_err(|e| WasmError::Io(format!("--dir {e}")))?;
    b.inherit_stdio();
    let limits = crate::host::store_limits(&opts.limits);
    let mut store = Store::new(host.engine(), Ctx::new(b.build_p1(), limits));
    store.limiter(|c| c.limits());
    store
        .set_fuel(opts.fuel.unwrap_or(u64::MAX))
        .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
    let instance = pre
        .instantiate(&mut store)
        .map_err(|e| WasmError::from_call(&name, "instantiate", &e))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|_| WasmError::Load {
            module: name.clone(),
            message: "exports no _start() (not a WASI command; modules the agent serves are reactors, see docs/wasm.md)".into(),
        })?;
    match start.call(&mut store, ()) {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(WasmError::from_call(&name, "_start", &e)),
        },
    }
}
