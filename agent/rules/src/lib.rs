//! ferry's edge rule language.
//!
//! `ON temperature > 85 THEN alert("overheat")`: a rule set is parsed
//! ([`parse`]), checked and compiled ([`compile`]) into a [`Compiled`] set
//! whose fields are slots and whose tests are pre-resolved operations, and
//! evaluated event by event ([`Compiled::eval`]) with time passed in, so
//! windows and rate limits are tested without clocks. `runtime` (cargo
//! feature `runtime`, on by default) feeds it from MQTT and a local
//! JSON-lines socket and swaps sets without losing an event; without it the
//! crate is the language alone, with no MQTT client or async runtime. The language is described in `docs/rules.md`; the grammar is
//! `src/rules.pest`.
#![forbid(unsafe_code)]

pub mod ast;
pub mod compile;
pub mod decode;
pub mod error;
mod eval;
pub mod filter;
pub mod parse;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod target;
pub mod value;

pub use compile::{Compiled, RegisterWrite, compile, compile_source};
pub use decode::{DecodeError, Envelope};
pub use error::{Diagnostic, RulesError};
pub use eval::{MAX_WINDOW_SAMPLES, State};
pub use parse::parse;
pub use value::{Event, Output, Value};
