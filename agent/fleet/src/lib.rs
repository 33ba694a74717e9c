//! ferry's fleet channel: MQTT beside the signed content, never instead of
//! it.
//!
//! - **Nudges** ([`channel`]): a message on one of the device's nudge topics
//!   schedules a poll now. Content is still pulled from the source and
//!   verified, so a forged nudge can cause one extra poll and nothing else;
//!   nudges are rate-limited and coalesced ([`limiter`]) and counted.
//! - **Reports** ([`channel`]): a retained status message per device and the
//!   audit journal, one retained QoS 1 message per entry with its chain hash
//!   and the previous entry's, sent in order, in pages, resumed after being
//!   offline from the last entry the broker acknowledged.
//! - **The admin's view** ([`admin`]): the retained status messages as a
//!   table, and a device's reported entries with their chain verified
//!   ([`message::verify_reported`]).
//!
//! `[fleet]` of ferry.toml is read and checked here ([`settings`]); the
//! engine only keeps it. Topics are in [`topics`]; the broker connection (plain TCP for a local
//! broker, TLS with client certificates otherwise) in [`broker`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod broker;
pub mod channel;
pub mod limiter;
pub mod message;
pub mod settings;
pub mod topics;

use ferry_core::{Classify, ErrorClass};

/// What can go wrong on the fleet channel.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("fleet broker {url:?}: {message}")]
    Url { url: String, message: String },
    #[error("fleet TLS {what} {path}: {message}")]
    Tls {
        what: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
    #[error("fleet {what} {value:?}: {message}")]
    Name {
        what: &'static str,
        value: String,
        message: &'static str,
    },
    #[error("fleet broker {broker}: {message}")]
    Broker { broker: String, message: String },
    #[error("{0}")]
    Chain(#[from] message::ReportedChainError),
    #[error("fleet message on {topic}: {message}")]
    Message { topic: String, message: String },
}

impl Classify for FleetError {
    fn class(&self) -> ErrorClass {
        match self {
            FleetError::Url { .. } | FleetError::Tls { .. } | FleetError::Name { .. } => {
                ErrorClass::Config
            }
            FleetError::Broker { .. } => ErrorClass::Internal,
            FleetError::Chain(_) => ErrorClass::Verification,
            FleetError::Message { .. } => ErrorClass::InvalidInput,
        }
    }
}
