//! Sources: where a desired state comes from. This crate holds what every
//! source shares (the [`Source`] and [`VerifiedRevision`] traits, their
//! error, the secure time floor) and the two sources without dependencies of
//! their own: the development `dir` source and the `offline` wrapper for
//! bundles. The TUF and git sources are crates of their own.
//!
//! Every source yields a [`VerifiedRevision`]: an id, who vouched for it, and
//! access to its files. For signed sources (TUF, git) the content address of
//! every file comes from signed metadata; the engine streams file bytes into
//! the store through a reader that enforces that address.

#![forbid(unsafe_code)]

use std::io::Read;
use std::sync::Arc;

use ferry_core::{Classify, ContentRef, ErrorClass, RepoPath};

pub mod dir;
pub mod floor;
pub mod offline;

pub use floor::{FloorError, TimeFloor, clock_now};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{source_name}: {path}: not found in revision")]
    NotFound { source_name: String, path: RepoPath },
    /// The revision's content is not acceptable (a bad path, a revision
    /// the source cannot serve).
    #[error("{source_name}: {path}: {reason}")]
    Refused {
        source_name: String,
        path: String,
        reason: String,
    },
    #[error("{source_name}: {path}: larger than the limit of {limit} bytes")]
    TooLarge {
        source_name: String,
        path: RepoPath,
        limit: u64,
    },
    /// Signed metadata, history or signatures failed verification (TUF
    /// roles and targets; git: unsigned or untrusted commits, rollbacks,
    /// out-of-scope changes; Sigstore bundles).
    #[error("{0}")]
    Untrusted(Box<Untrusted>),
    /// The source could not be reached or read (network, server, local
    /// repository): no verdict on its content.
    #[error("{source_name}: {message}")]
    Unavailable {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: {what}: {source}")]
    Io {
        source_name: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The secure time floor is corrupt: nothing is trusted until repaired.
    #[error("{source_name}: {error}")]
    TimeFloor {
        source_name: String,
        error: Box<FloorError>,
    },
}

impl Classify for SourceError {
    fn class(&self) -> ErrorClass {
        match self {
            SourceError::TimeFloor { .. } => ErrorClass::Corrupt,
            SourceError::Untrusted(_) => ErrorClass::Verification,
            SourceError::NotFound { .. }
            | SourceError::Refused { .. }
            | SourceError::TooLarge { .. } => ErrorClass::InvalidInput,
            SourceError::Unavailable { .. } | SourceError::Io { .. } => ErrorClass::Internal,
        }
    }
}

impl SourceError {
    /// What failed verification, and why (see [`Untrusted`]).
    pub fn untrusted(
        source_name: impl Into<String>,
        what: impl Into<String>,
        reason: impl Into<String>,
    ) -> SourceError {
        SourceError::Untrusted(Box::new(Untrusted {
            source_name: source_name.into(),
            what: what.into(),
            reason: reason.into(),
            details: serde_json::Map::new(),
        }))
    }

    /// Whether the revision (not the machine) is at fault: its content is
    /// invalid or failed verification. Such refusals are audited.
    pub fn is_revision_at_fault(&self) -> bool {
        matches!(
            self.class(),
            ErrorClass::InvalidInput | ErrorClass::Verification
        )
    }

    /// What the audit journal records when a revision is refused: the
    /// source, what failed and why (for TUF also the role and version).
    pub fn audit_details(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        match self {
            SourceError::Refused { source_name, .. } => {
                Some(json!({"source": source_name, "error": self.to_string()}))
            }
            SourceError::TimeFloor { source_name, error } => Some(
                json!({"source": source_name, "error": self.to_string(), "time_floor": error.path}),
            ),
            SourceError::Untrusted(u) => {
                let mut d = json!({"source": u.source_name, "error": self.to_string(), "what": u.what, "reason": u.reason});
                for (k, v) in &u.details {
                    d[k] = v.clone();
                }
                Some(d)
            }
            _ => None,
        }
    }
}

/// What failed verification, and why.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {what}: {reason}")]
pub struct Untrusted {
    pub source_name: String,
    /// What was refused (a TUF role and version, a commit, a resource).
    pub what: String,
    pub reason: String,
    /// More for the audit journal (TUF: `role`, `version`).
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// One verified revision of a source. Owned and shareable, so the renderer
/// can load templates from it on demand.
pub trait VerifiedRevision: Send + Sync {
    /// Stable id of the revision (a TUF targets version + hash, a commit id, a tree hash).
    fn id(&self) -> &str;
    /// A short name of the source, for messages and `generations`.
    fn source_name(&self) -> &str;
    /// Who vouched for this revision (key ids), for the audit journal.
    fn actor(&self) -> &str;
    /// The content address of `path` from signed metadata, if the source has
    /// signed metadata for it (`None` for the unsigned dir source).
    fn signed_target(&self, path: &RepoPath) -> Result<Option<ContentRef>, SourceError>;
    /// A move of the source's own trust state this revision makes once
    /// accepted (git: the accepted commit advances): what to audit first.
    /// `None`: nothing moves.
    fn acceptance(&self) -> Option<serde_json::Value> {
        None
    }
    /// Makes the move `acceptance` describes durable; the engine calls it
    /// after the move is audited.
    fn accept(&self) -> Result<(), SourceError> {
        Ok(())
    }
    /// The content address of `path`: from signed metadata, or for a source
    /// without any (the dir source) from hashing the file once. Refused when
    /// the revision has no address for it.
    fn content(&self, path: &RepoPath) -> Result<ContentRef, SourceError> {
        self.signed_target(path)?
            .ok_or_else(|| SourceError::Refused {
                source_name: self.source_name().to_owned(),
                path: path.to_string(),
                reason: "no signed content address for it".to_owned(),
            })
    }
    /// The bytes of `path` from byte `offset` on, with the address they
    /// must have: what the store takes. Signed metadata decides it; a
    /// source without any for `path` (the dir source) holds the bytes to
    /// `unsigned`, the plan's address (the manifest's pin, or what
    /// [`VerifiedRevision::content`] hashed at render).
    fn fetch(
        &self,
        path: &RepoPath,
        offset: u64,
        unsigned: ContentRef,
    ) -> Result<Verified<'_>, SourceError> {
        let content = self.signed_target(path)?.unwrap_or(unsigned);
        let reader = if offset == 0 {
            self.open(path)?
        } else {
            self.open_at(path, offset)?
        };
        Ok(Verified {
            reader,
            content,
            offset,
            read: 0,
        })
    }
    /// Bytes of `path` obtained another way (assembled by delta from
    /// chunks), held to the address [`VerifiedRevision::fetch`] would give.
    fn verified_from<'a>(
        &self,
        path: &RepoPath,
        reader: Box<dyn Read + 'a>,
        unsigned: ContentRef,
    ) -> Result<Verified<'a>, SourceError> {
        Ok(Verified {
            reader,
            content: self.signed_target(path)?.unwrap_or(unsigned),
            offset: 0,
            read: 0,
        })
    }
    /// Streams the bytes of `path`, unchecked: the store takes only
    /// [`VerifiedRevision::fetch`]'s readers, which carry the address.
    fn open(&self, path: &RepoPath) -> Result<Box<dyn Read + '_>, SourceError>;
    /// Streams the bytes of `path` from byte `offset` on (to resume an
    /// interrupted fetch). Sources that can seek or send ranges override it.
    fn open_at(&self, path: &RepoPath, offset: u64) -> Result<Box<dyn Read + '_>, SourceError> {
        let mut reader = self.open(path)?;
        std::io::copy(&mut (&mut reader).take(offset), &mut std::io::sink()).map_err(|source| {
            SourceError::Io {
                source_name: self.source_name().to_owned(),
                what: format!("skipping to byte {offset} of {path}"),
                source,
            }
        })?;
        Ok(reader)
    }

    /// The base URL below which the publisher serves this revision's
    /// companion files that need no signature of their own, because a
    /// signed file vouches for them (chunk stores: the signed chunk index
    /// names every chunk by sha256). TUF: the targets URL; a directory or
    /// bundle: its `file://` URL. `None` when the source has none (git).
    fn base_url(&self) -> Option<String> {
        None
    }

    /// Whether `path` exists in the revision.
    fn exists(&self, path: &RepoPath) -> Result<bool, SourceError> {
        match self.open(path) {
            Ok(_) => Ok(true),
            Err(SourceError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// Reads a small file completely (the manifest), refusing more than `limit` bytes.
    fn read_small(&self, path: &RepoPath, limit: u64) -> Result<Vec<u8>, SourceError> {
        let mut buf = Vec::new();
        let mut reader = self.open(path)?.take(limit + 1);
        reader
            .read_to_end(&mut buf)
            .map_err(|source| SourceError::Io {
                source_name: self.source_name().to_owned(),
                what: format!("reading {path}"),
                source,
            })?;
        if buf.len() as u64 > limit {
            return Err(SourceError::TooLarge {
                source_name: self.source_name().to_owned(),
                path: path.clone(),
                limit,
            });
        }
        Ok(buf)
    }
}

/// The bytes of one file with the content address they must have: from the
/// revision's signed metadata (TUF targets; git's signed tree, through the
/// blob map), from hashing the file once (the unsigned dir source), or for
/// content rendered on the device from verified inputs, its own hash. Only
/// a [`VerifiedRevision`] (or [`Verified::rendered`]) makes one, so the
/// store, which takes nothing else, never holds bytes to an address that
/// came from anywhere else. It counts the bytes read through it.
pub struct Verified<'a> {
    reader: Box<dyn Read + 'a>,
    content: ContentRef,
    offset: u64,
    read: u64,
}

impl<'a> Verified<'a> {
    /// Content rendered on this device (a template's output): its address
    /// is its hash.
    pub fn rendered(bytes: &'a [u8]) -> Verified<'a> {
        Verified {
            content: ContentRef::of(bytes),
            reader: Box::new(bytes),
            offset: 0,
            read: 0,
        }
    }

    /// The address the bytes must have, whole.
    pub fn content(&self) -> ContentRef {
        self.content
    }

    /// The first byte this reader yields (a resumed fetch starts past 0).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes read through it so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl Read for Verified<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl std::fmt::Debug for Verified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("content", &self.content)
            .field("offset", &self.offset)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

/// A place to fetch revisions from.
pub trait Source: Send {
    /// Fetches and verifies the newest revision.
    fn fetch(&self) -> Result<Arc<dyn VerifiedRevision>, SourceError>;
    /// Fetches and verifies a given revision (`ferry plan --revision`).
    /// What `revision` names depends on the source.
    fn fetch_revision(&self, revision: &str) -> Result<Arc<dyn VerifiedRevision>, SourceError>;
    /// The manifest to render inside each revision.
    fn manifest_path(&self) -> &RepoPath;
    /// Who the audit journal names when this source's revision is refused.
    fn refusal_actor(&self) -> &str {
        "source"
    }
}
