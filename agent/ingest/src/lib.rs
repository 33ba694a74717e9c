//! Field event sources for ferry's rule engine: a CoAP server ([`coap`])
//! and Modbus TCP polling ([`modbus`]), configured in `ferry.toml`
//! (`[rules.coap]`, `[[rules.modbus]]`) or by the `ingest` object of a
//! signed `ruleset` resource ([`config`]), and swapped like rule sets:
//! `Ingest::apply` keeps what did not change and restarts what did.
//!
//! The sources themselves are the cargo feature `runtime` (on by default);
//! without it the crate is [`config`] alone, which the engine uses to check
//! a configuration or a rule set's `ingest` object.
//!
//! ```text
//!  CoAP datagrams ─► coap::Handler ─┐
//!                                   ├─► EventSink ─► rule engine queue (bounded)
//!  Modbus devices ◄─► modbus tasks ─┘        modbus_write ◄─ Writer (WriteHook)
//! ```
#![forbid(unsafe_code)]

#[cfg(feature = "runtime")]
pub mod cbor;
#[cfg(feature = "runtime")]
pub mod coap;
pub mod config;
#[cfg(feature = "runtime")]
pub mod modbus;
#[cfg(feature = "runtime")]
mod run;

pub use config::{ConfigError, IngestConfig, Plan};
#[cfg(feature = "runtime")]
pub use run::{Ingest, Snapshot};
