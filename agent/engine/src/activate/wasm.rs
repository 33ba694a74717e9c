//! The `wasm` activator: a module is read from the store (hash and length
//! verified), compiled (or taken from the sealed precompile cache),
//! pre-linked, instantiated and health-checked when it is activated, so one
//! that fails any of that fails the transition (which rolls back) and never
//! reaches the running module host. The host that serves calls
//! (`ferry run`) loads the modules of the current generation with [`load`]
//! (a cache hit by then) and hot-swaps them in.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ferry_core::{Kind, Op, Resource, Sha256, Step};
use ferry_wasm::{Host, HostConfig, ModuleSpec};
use serde_json::{Value, json};

use super::{ActivateError, Activator};
use crate::config::WasmConfig;
use crate::store::Store;

/// Where modules' native code is cached, under the state directory.
pub const CACHE_DIR: &str = "wasm-cache";

/// The host settings for a state directory and `[wasm]`.
pub fn host_config(state_dir: &Path, config: &WasmConfig) -> HostConfig {
    HostConfig {
        cache_dir: config.cache.then(|| state_dir.join(CACHE_DIR)),
        max_memory_mib: config.max_memory_mib,
        max_instances: config.max_instances,
    }
}

/// `[wasm] data_dir`, or its default under the state directory.
pub fn data_dir(state_dir: &Path, config: &WasmConfig) -> PathBuf {
    config
        .data_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("wasm-data"))
}

/// Reads a module from the store and loads it into `host`: limits and
/// capabilities from the resource, host directories confined to
/// `data_dir`, then compiled, instantiated and health-checked.
pub fn load(
    host: &Host,
    store: &Store,
    resource: &Resource,
    data_dir: &Path,
) -> Result<Arc<ferry_wasm::Module>, ActivateError> {
    let what = format!("wasm {}", resource.name);
    let mut spec =
        ModuleSpec::from_settings(&resource.settings).map_err(|e| ActivateError::new(&what, e))?;
    let content = resource.content;
    if content.length > spec.limits.max_module_bytes {
        return Err(ActivateError::new(
            &what,
            format!(
                "{} bytes; limits.max_module_bytes is {}",
                content.length, spec.limits.max_module_bytes
            ),
        ));
    }
    spec.confine_dirs(data_dir)
        .map_err(|e| ActivateError::new(&what, e))?;
    let mut bytes = Vec::with_capacity(content.length as usize);
    store
        .open_verified(content)
        .map_err(|e| ActivateError::new(&what, e))?
        .read_to_end(&mut bytes)
        .map_err(|e| ActivateError::new(&what, format!("reading the module: {e}")))?;
    host.load(&resource.name, spec, &bytes)
        .map_err(|e| ActivateError::new(&what, e))
}

#[derive(Debug)]
pub struct WasmActivator {
    state_dir: PathBuf,
    config: WasmConfig,
    /// Made on first use: applies without modules never start an engine.
    host: OnceLock<Result<Arc<Host>, String>>,
}

impl WasmActivator {
    pub fn new(state_dir: &Path, config: &WasmConfig) -> Self {
        WasmActivator {
            state_dir: state_dir.to_owned(),
            config: config.clone(),
            host: OnceLock::new(),
        }
    }

    fn host(&self) -> Result<&Arc<Host>, ActivateError> {
        self.host
            .get_or_init(|| {
                Host::new(&host_config(&self.state_dir, &self.config))
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| ActivateError::new("wasm host", e))
    }
}

impl Activator for WasmActivator {
    fn kind(&self) -> Kind {
        Kind::Wasm
    }

    fn prepare(&self, _step: &Step, _store: &Store) -> Result<Value, ActivateError> {
        // Nothing outside the generation changes: the module host serves the
        // modules of whichever generation is current.
        Ok(Value::Null)
    }

    fn apply(&self, step: &Step, store: &Store) -> Result<(), ActivateError> {
        self.apply_noted(step, store).map(|_| ())
    }

    fn apply_noted(&self, step: &Step, store: &Store) -> Result<Value, ActivateError> {
        let (Some(to), Op::Add | Op::Change) = (&step.to, step.op) else {
            return Ok(Value::Null);
        };
        let module = load(
            self.host()?,
            store,
            to,
            &data_dir(&self.state_dir, &self.config),
        )?;
        let mut notes = json!({"module_sha256": module.sha256, "cache": module.cache.as_str()});
        if let ferry_wasm::CacheOutcome::Rejected(why) = &module.cache {
            notes["cache_rejected"] = json!(why);
        }
        Ok(notes)
    }

    fn undo(&self, _step: &Step, _undo: &Value, _store: &Store) -> Result<(), ActivateError> {
        Ok(())
    }

    fn undo_blobs(&self, _undo: &Value) -> Vec<Sha256> {
        Vec::new()
    }
}
