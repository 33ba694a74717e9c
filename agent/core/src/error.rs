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
