//! ferry's engine: everything between a source and the running system.
//!
//! - [`state`]: the SQLite state database (generations, transitions, audit);
//! - [`store`]: the content-addressed blob store, verifying while writing;
//! - [`generations`]: immutable generation directories and the `current` switch;
//! - [`source`]: the `Source` trait and the development `dir` source;
//! - [`manifest`]: turning a verified revision into a checked desired state;
//! - [`activate`]: the `Activator` trait and one module per kind;
//! - [`engine`]: apply, rollback, gc and `recover()`, one durable step at a time.
#![forbid(unsafe_code)]

pub mod activate;
pub mod bundle;
pub mod config;
pub mod engine;
pub mod error;
pub mod facts;
pub mod failpoints;
pub mod firmware;
pub mod fsutil;
pub mod generations;
pub mod health;
pub mod manifest;
pub mod policy;
pub mod render;
pub mod report;
pub mod sigstore;
pub mod source;
pub mod state;
pub mod store;

pub use config::Config;
pub use engine::{ApplyOutcome, Engine, GcOutcome, Status};
pub use error::{EngineError, ErrorClass};
