//! A source read from a bundle (a USB stick): the device's own source
//! verifying the bundle's contents, with the audit journal naming the stick
//! as the actor and large files reporting their progress as they stream.

use std::io::Read;
use std::sync::Arc;

use ferry_core::{ContentRef, RepoPath};

use super::{Source, SourceError, VerifiedRevision};

/// Files at least this large report progress.
pub const PROGRESS_MIN_BYTES: u64 = 1 << 20;

/// Receives the progress of files streaming from a bundle.
pub trait Progress: Send + Sync {
    /// `path` (of `total` bytes) starts streaming from byte `offset`.
    fn start(&self, path: &RepoPath, offset: u64, total: u64);
    /// `n` more bytes of the current file were read.
    fn advance(&self, n: u64);
    /// The current file ended (completely or not).
    fn finish(&self);
}

/// `inner`, with refusals and revisions attributed to `actor`.
pub struct Offline {
    inner: Box<dyn Source>,
    actor: String,
    progress: Option<Arc<dyn Progress>>,
}

impl std::fmt::Debug for Offline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offline")
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl Offline {
    pub fn new(inner: Box<dyn Source>, actor: String, progress: Option<Arc<dyn Progress>>) -> Self {
        Offline {
            inner,
            actor,
            progress,
        }
    }

    fn wrap(&self, rev: Arc<dyn VerifiedRevision>) -> Arc<dyn VerifiedRevision> {
        Arc::new(OfflineRevision {
            actor: format!("{} ({})", self.actor, rev.actor()),
            inner: rev,
            progress: self.progress.clone(),
        })
    }
}

impl Source for Offline {
    fn fetch(&self) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        Ok(self.wrap(self.inner.fetch()?))
    }

    fn fetch_revision(&self, revision: &str) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        Ok(self.wrap(self.inner.fetch_revision(revision)?))
    }

    fn manifest_path(&self) -> &RepoPath {
        self.inner.manifest_path()
    }

    fn refusal_actor(&self) -> &str {
        &self.actor
    }
}

struct OfflineRevision {
    inner: Arc<dyn VerifiedRevision>,
    actor: String,
    progress: Option<Arc<dyn Progress>>,
}

impl OfflineRevision {
    fn observed<'a>(
        &self,
        path: &RepoPath,
        offset: u64,
        reader: Box<dyn Read + 'a>,
    ) -> Box<dyn Read + 'a> {
        let Some(p) = &self.progress else {
            return reader;
        };
        match self.inner.signed_target(path) {
            Ok(Some(c)) if c.length >= PROGRESS_MIN_BYTES => {
                p.start(path, offset, c.length);
                Box::new(Observed {
                    inner: reader,
                    progress: p.clone(),
                })
            }
            _ => reader,
        }
    }
}

struct Observed<'a> {
    inner: Box<dyn Read + 'a>,
    progress: Arc<dyn Progress>,
}

impl Read for Observed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl Drop for Observed<'_> {
    fn drop(&mut self) {
        self.progress.finish();
    }
}

impl VerifiedRevision for OfflineRevision {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn source_name(&self) -> &str {
        self.inner.source_name()
    }

    fn actor(&self) -> &str {
        &self.actor
    }

    fn acceptance(&self) -> Option<serde_json::Value> {
        self.inner.acceptance()
    }

    fn accept(&self) -> Result<(), SourceError> {
        self.inner.accept()
    }

    fn signed_target(&self, path: &RepoPath) -> Result<Option<ContentRef>, SourceError> {
        self.inner.signed_target(path)
    }

    fn content(&self, path: &RepoPath) -> Result<ContentRef, SourceError> {
        self.inner.content(path)
    }

    fn open(&self, path: &RepoPath) -> Result<Box<dyn Read + '_>, SourceError> {
        let r = self.inner.open(path)?;
        Ok(self.observed(path, 0, r))
    }

    fn open_at(&self, path: &RepoPath, offset: u64) -> Result<Box<dyn Read + '_>, SourceError> {
        let r = self.inner.open_at(path, offset)?;
        Ok(self.observed(path, offset, r))
    }

    fn base_url(&self) -> Option<String> {
        self.inner.base_url()
    }

    fn exists(&self, path: &RepoPath) -> Result<bool, SourceError> {
        self.inner.exists(path)
    }

    fn read_small(&self, path: &RepoPath, limit: u64) -> Result<Vec<u8>, SourceError> {
        self.inner.read_small(path, limit)
    }
}
