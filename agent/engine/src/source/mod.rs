//! Sources: where a desired state comes from.
//!
//! Every source yields a [`VerifiedRevision`]: an id, who vouched for it, and
//! access to its files. For signed sources (TUF, git) the content address of
//! every file comes from signed metadata; the engine streams file bytes into
//! the store through a reader that enforces that address.

use std::io::Read;
use std::sync::Arc;

use ferry_core::{ContentRef, RepoPath};

pub mod dir;
pub mod git;
pub mod offline;
pub mod tuf;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{source_name}: {path}: not found in revision")]
    NotFound { source_name: String, path: RepoPath },
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
    /// The TUF repository failed verification, or could not be reached.
    #[error("{source_name}: {error}")]
    Tuf {
        source_name: String,
        error: Box<tuf::TufError>,
    },
    /// A signed source's history or signatures failed verification (git:
    /// unsigned or untrusted commits, rollbacks, out-of-scope changes).
    #[error("{0}")]
    Untrusted(Box<Untrusted>),
    /// The git repository could not be reached or read.
    #[error("{source_name}: {message}")]
    Git {
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
        error: Box<tuf::FloorError>,
    },
}

impl SourceError {
    /// Whether the revision's content is at fault (not the machine).
    pub fn is_invalid_input(&self) -> bool {
        match self {
            SourceError::Io { .. } | SourceError::Git { .. } | SourceError::TimeFloor { .. } => {
                false
            }
            SourceError::Tuf { error, .. } => error.is_untrusted_input(),
            _ => true,
        }
    }

    /// What the audit journal records when a revision is refused: the
    /// source, and for TUF the role, version and reason.
    pub fn audit_details(&self) -> Option<serde_json::Value> {
        use serde_json::json;
        match self {
            SourceError::Tuf { source_name, error } if error.is_untrusted_input() => {
                let mut d = json!({"source": source_name, "error": error.to_string()});
                if let tuf::TufError::Refused {
                    role,
                    version,
                    reason,
                } = &**error
                {
                    d["role"] = json!(role);
                    d["version"] = json!(version);
                    d["reason"] = json!(reason);
                }
                Some(d)
            }
            SourceError::Refused { source_name, .. } => {
                Some(json!({"source": source_name, "error": self.to_string()}))
            }
            SourceError::TimeFloor { source_name, error } => Some(
                json!({"source": source_name, "error": self.to_string(), "time_floor": error.path}),
            ),
            SourceError::Untrusted(u) => Some(
                json!({"source": u.source_name, "error": self.to_string(), "what": u.what, "reason": u.reason}),
            ),
            _ => None,
        }
    }
}

/// What failed verification, and why.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {what}: {reason}")]
pub struct Untrusted {
    pub source_name: String,
    pub what: String,
    pub reason: String,
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
    /// Streams the bytes of `path`. Callers enforce the content address.
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

/// Builds the source named by the configuration.
pub fn from_config(config: &crate::Config) -> Result<Box<dyn Source>, crate::config::ConfigError> {
    use crate::config::ConfigError;
    match config.source.kind.as_deref() {
        Some("dir") => {
            let path = config.source.dir.path.clone().ok_or(ConfigError::Invalid {
                key: "source.dir.path",
                message: "required when source.kind = \"dir\"".to_owned(),
            })?;
            let manifest = RepoPath::new(config.source.dir.manifest.clone()).map_err(|e| {
                ConfigError::Invalid {
                    key: "source.dir.manifest",
                    message: e.to_string(),
                }
            })?;
            Ok(Box::new(dir::DirSource::new(path, manifest)))
        }
        Some("tuf") => Ok(Box::new(tuf::TufSource::from_config(
            &config.source.tuf,
            &config.state_dir,
        )?)),
        Some("git") => {
            let mut opts = git::GitOptions::from_config(&config.source.git, &config.state_dir)?;
            opts.time_floor = Some(tuf::TimeFloor::from_config(
                &config.source.tuf,
                &config.state_dir,
            )?);
            Ok(Box::new(git::GitSource::new(opts)))
        }
        Some(other) => Err(ConfigError::Invalid {
            key: "source.kind",
            message: format!("unknown source kind {other:?} (known: tuf, git, dir)"),
        }),
        None => Err(ConfigError::Invalid {
            key: "source.kind",
            message: "no source configured; set [source] kind in ferry.toml".to_owned(),
        }),
    }
}
