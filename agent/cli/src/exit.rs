//! Exit codes (documented in `ferry --help` and README.md).

use std::process::ExitCode;

use ferry_core::{Classify, ErrorClass};

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
    /// The exit code of an error: the class of the outermost error in its
    /// chain that has one (every library error of ferry does), else 1.
    pub fn of(e: &anyhow::Error) -> Code {
        match e.chain().find_map(class_of) {
            None | Some(ErrorClass::Internal) => Code::Internal,
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

/// A command-line argument that does not parse (`--since yesterday`): a
/// usage error, exit 2 like the ones clap reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

impl Classify for Usage {
    fn class(&self) -> ErrorClass {
        ErrorClass::Config
    }
}

/// The class of one error, if it is one of ferry's library errors. `anyhow`
/// erases types, so the error types are listed here once; each says its own
/// class through [`Classify`].
fn class_of(e: &(dyn std::error::Error + 'static)) -> Option<ErrorClass> {
    macro_rules! classes {
        ($($t:ty),* $(,)?) => {
            $(if let Some(e) = e.downcast_ref::<$t>() {
                return Some(e.class());
            })*
        };
    }
    use ferry_engine as engine;
    classes!(
        Usage,
        engine::EngineError,
        engine::config::ConfigError,
        engine::render::facts::FactsError,
        engine::render::manifest::ManifestError,
        engine::fetch::policy::PolicyError,
        engine::fetch::bundle::BundleError,
        engine::store::state::StateError,
        engine::store::StoreError,
        engine::activate::firmware::FirmwareError,
        engine::activate::ActivateError,
        ferry_source::SourceError,
        ferry_source::FloorError,
    );
    #[cfg(feature = "fleet")]
    classes!(ferry_fleet::FleetError);
    #[cfg(feature = "sigstore")]
    classes!(
        engine::fetch::sigstore::CheckError,
        ferry_sigstore::SigstoreError
    );
    None
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
