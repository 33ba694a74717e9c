//! ferry's engine: everything between a source and the running system.
//!
//! Modules follow the pipeline:
//! - [`fetch`]: from the configuration to a source (the `ferry-source`,
//!   `ferry-tuf` and `ferry-git` crates), the update policy, Sigstore
//!   bundles (`ferry-sigstore`) and USB bundles;
//! - [`render`]: device facts, templates, and the manifest turned into a
//!   checked desired state; the plan report;
//! - [`store`]: the content-addressed blob store (verifying while writing),
//!   the SQLite state database (generations, transitions, audit) and the
//!   immutable generation directories with the `current` switch;
//! - [`activate`]: the `Activator` trait and one module per kind (firmware
//!   with its boot environments and A/B slots), and the health gate;
//! - [`engine`]: apply, rollback, gc and `recover()`, one durable step at a
//!   time, one file per operation;
//! - [`reconcile`]: one reconcile for every entry point (the agent, apply,
//!   rollback, import), driven by the pure `decide()` of ferry-core;
//! - [`config`]: `ferry.toml`, parsed and validated, re-exported from the
//!   ferry-config crate (which the fleet channel and the CLI read too).
#![forbid(unsafe_code)]

pub mod activate;
/// `ferry.toml` (the ferry-config crate).
pub use ferry_config as config;
pub mod engine;
pub mod error;
pub mod failpoints;
pub mod fetch;
pub mod fsutil;
pub mod reconcile;
pub mod render;
pub mod store;

pub use config::Config;
pub use engine::{ApplyOutcome, Engine, GcOutcome, Status};
pub use error::EngineError;
pub use ferry_core::{Classify, ErrorClass};
