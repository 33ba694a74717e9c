//! ferry's engine: everything between a source and the running system.
//!
//! - [`state`]: the SQLite state database (generations, transitions, audit);
//! - [`store`]: the content-addressed blob store, verifying while writing;
//! - [`generations`]: immutable generation directories and the `current` switch;
//! - [`fetch`]: from the configuration to a source (the `ferry-source`,
//!   `ferry-tuf` and `ferry-git` crates), the update policy, Sigstore
//!   bundles (`ferry-sigstore`) and USB bundles;
//! - [`manifest`]: turning a verified revision into a checked desired state;
//! - [`activate`]: the `Activator` trait and one module per kind;
//! - [`engine`]: apply, rollback, gc and `recover()`, one durable step at a time.
#![forbid(unsafe_code)]

pub mod activate;
pub mod config;
pub mod engine;
pub mod error;
pub mod facts;
pub mod failpoints;
pub mod fetch;
pub mod firmware;
pub mod fsutil;
pub mod generations;
pub mod health;
pub mod manifest;
pub mod render;
pub mod report;
pub mod state;
pub mod store;

pub use config::Config;
pub use engine::{ApplyOutcome, Engine, GcOutcome, Status};
pub use error::EngineError;
pub use ferry_core::{Classify, ErrorClass};
