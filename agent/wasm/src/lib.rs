//! ferry's WASM module host.
//!
//! Modules are WebAssembly core modules using WASI preview 1, run by
//! wasmtime with a pooling allocator, fuel-bounded calls, a memory cap and
//! only the capabilities their resource grants ([`spec`]). Native code is
//! cached on disk, sealed so that only what ferry compiled is ever loaded
//! ([`cache`]). [`Service`] serves calls from one worker thread and swaps
//! module sets without losing or repeating a call.
//!
//! # Module interface
//!
//! A module that processes events exports:
//! - `memory`, and `ferry_alloc(len: i32) -> i32`: where the host may write
//!   `len` bytes of input (needed unless every input is empty);
//! - one or more handlers `NAME(ptr: i32, len: i32) -> i32`: called with the
//!   event's bytes; return 0 for success, anything else is reported as the
//!   module's error status;
//! - optionally `ferry_health() -> i32` (0 = healthy), checked before the
//!   module serves, and `_initialize` (WASI reactors), run once per instance.
//!
//! It may import `ferry::emit(topic_ptr, topic_len, data_ptr, data_len) ->
//! i32` to produce outputs (each a message for a topic; at most 1024 per
//! call, 1 MiB each) and anything from `wasi_snapshot_preview1`. Nothing
//! else is granted: a module importing anything else does not load.
//! docs/wasm.md has the full description and an example.

pub mod cache;
pub mod host;
pub mod run;
pub mod service;
pub mod spec;
mod stdio;

pub use host::{CacheOutcome, Emit, Host, HostConfig, Instance, Module};
pub use run::{RunOptions, run_command};
pub use service::{Modules, Service};
pub use spec::{Capabilities, DirGrant, Limits, ModuleSpec, Probe};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WasmError {
    #[error("module settings: {0}")]
    Spec(String),
    #[error("{0}")]
    Io(String),
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("module {module}: {message}")]
    Load { module: String, message: String },
    #[error("module {module} failed its health check: {message}")]
    Unhealthy { module: String, message: String },
    #[error("module {module} has no export {export} of type (i32, i32) -> i32")]
    NoExport { module: String, export: String },
    #[error("module {module}: {export}: {message}")]
    Fault {
        module: String,
        export: String,
        message: String,
    },
    #[error("module {module}: {export} returned status {status}")]
    Status {
        module: String,
        export: String,
        status: i32,
    },
    #[error("module {module}: {export}: {message}")]
    Call {
        module: String,
        export: String,
        message: String,
    },
    #[error("no module named {0:?} is loaded")]
    NoModule(String),
    #[error("the wasm worker has stopped")]
    Stopped,
    #[error("module calls are backed up ({0} bytes of input waiting): call refused")]
    Busy(usize),
}

impl WasmError {
    /// A trap, fuel or memory exhaustion in `export` of `module`.
    pub fn from_call(module: &str, export: &str, e: &wasmtime::Error) -> WasmError {
        WasmError::Fault {
            module: module.to_owned(),
            export: export.to_owned(),
            message: host::describe(e),
        }
    }

    /// Whether the instance that produced this error must be discarded.
    pub fn poisons(&self) -> bool {
        matches!(self, WasmError::Fault { .. })
    }
}
