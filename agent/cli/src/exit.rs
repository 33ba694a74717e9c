//! Exit codes (documented in `ferry --help` and README.md).

use std::process::ExitCode;

use ferry_engine::config::ConfigError;
use ferry_engine::facts::FactsError;
use ferry_engine::manifest::ManifestError;
use ferry_engine::source::SourceError;
use ferry_engine::{EngineError, ErrorClass};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success = 0,
    Internal = 1,
    Config = 2,
    InvalidInput = 3,
    Verification = 4,
    Busy = 5,
    Corrupt = 6,
    RolledBack = 7,
    Refused = 8,
    PlanNotEmpty = 10,
}

impl Code {
    pub fn of(e: &anyhow::Error) -> Code {
        let class = if let Some(e) = e.downcast_ref::<EngineError>() {
            Some(e.class())
        } else if let Some(e) = e.downcast_ref::<ferry_engine::bundle::BundleError>() {
            Some(e.class())
        } else if e.is::<ConfigError>() || e.is::<FactsError>() {
            Some(ErrorClass::Config)
        } else if e.is::<ManifestError>() {
            Some(ErrorClass::InvalidInput)
        } else {
            e.downcast_ref::<SourceError>().map(|e| {
                if e.is_invalid_input() {
                    ErrorClass::InvalidInput
                } else {
                    ErrorClass::Internal
                }
            })
        };
        match class {
            Some(ErrorClass::Internal) | None => Code::Internal,
            Some(ErrorClass::Config) => Code::Config,
            Some(ErrorClass::InvalidInput) => Code::InvalidInput,
            Some(ErrorClass::Verification) => Code::Verification,
            Some(ErrorClass::Busy) => Code::Busy,
            Some(ErrorClass::Corrupt) => Code::Corrupt,
            Some(ErrorClass::RolledBack) => Code::RolledBack,
            Some(ErrorClass::Refused) => Code::Refused,
        }
    }
}

impl From<Code> for ExitCode {
    fn from(c: Code) -> ExitCode {
        ExitCode::from(c as u8)
    }
}

/// The error and its causes on one line, without repeating a cause that the
/// message already contains.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out.replace('\n', " ")
}
