//! Failure classes. Every library error of ferry says which class it is in
//! ([`Classify`]); the binary maps each class to one documented exit code,
//! so an error means the same thing whichever command or path raised it.

/// Broad classes of failure; each has a documented exit code in the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// I/O or database failure, an unreachable server, or a bug.
    Internal,
    /// Configuration is invalid.
    Config,
    /// The desired state (manifest, paths, kinds, policy) is invalid.
    InvalidInput,
    /// Content or history failed verification (hash, length, signature, audit chain).
    Verification,
    /// Another ferry holds the state directory.
    Busy,
    /// The state database (or other device state, e.g. the secure time floor) is corrupt.
    Corrupt,
    /// An activation failed and the transition was rolled back.
    RolledBack,
    /// The request is not possible in the current state (e.g. no generation to roll back to).
    Refused,
}

/// An error that knows its [`ErrorClass`].
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

/// Declares an error type that is one message, for small parsers whose only
/// detail is what they say (the caller adds where: file, key, position);
/// with `From<String>` and `From<&str>`. The crate using it needs
/// `thiserror`.
#[macro_export]
macro_rules! message_error {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[error("{0}")]
        pub struct $name(pub String);

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }
    };
}
