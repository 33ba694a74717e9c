//! ferry's `tuf` source: a TUF repository (metadata + targets) over HTTP(S) or
//! `file://`, trusted through the `root.json` baked into the image.
//!
//! Every file a revision exposes is a TUF target: its length and hashes come
//! from verified targets metadata, and the bytes are checked while they
//! stream (into the store, or into the renderer for the manifest and
//! templates). Expiry is judged against the *secure time floor*: the newest
//! clock reading at which a refresh verified, never decreasing, so a device
//! whose clock fell back to 1970 cannot be fed metadata that expired since.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ferry_core::{ContentRef, RepoPath, Sha256};
use ferry_fs as fsutil;
use ferry_source::{Source, SourceError, TimeFloor, VerifiedRevision, clock_now};

pub mod client;
pub mod meta;
pub mod transport;

pub use client::{Client, ClientConfig, Limits, TargetInfo, TufError};
pub use transport::Timeouts;

#[derive(Debug)]
pub struct TufSource {
    name: String,
    client: ClientConfig,
    trusted_root: PathBuf,
    manifest: RepoPath,
    floor: TimeFloor,
    cache: PathBuf,
    transport: std::sync::OnceLock<transport::Transport>,
    /// Metadata carried on a bundle: expiry is judged at the secure time
    /// floor, not the clock (see [`TufSource::for_bundle`]).
    offline: bool,
}

/// What a [`TufSource`] needs: where the repository is, what to trust, and
/// where its state lives.
#[derive(Debug, Clone)]
pub struct TufOptions {
    /// Base URL of the metadata (`https://…/metadata/`, `http://…` or `file:///…`).
    pub metadata_url: String,
    /// Base URL of the targets.
    pub targets_url: String,
    /// The trusted `root.json` baked into the image.
    pub trusted_root: PathBuf,
    /// The target holding the desired-state manifest.
    pub manifest: RepoPath,
    /// The source's directory (`state_dir/tuf`): trusted metadata and the
    /// cache of small targets.
    pub dir: PathBuf,
    /// The device's secure time floor.
    pub floor: TimeFloor,
    pub timeouts: Timeouts,
}

impl TufSource {
    pub fn new(opts: TufOptions) -> Self {
        TufSource {
            name: format!("tuf:{}", opts.metadata_url),
            client: ClientConfig {
                metadata_url: opts.metadata_url,
                targets_url: opts.targets_url,
                metadata_dir: opts.dir.join("metadata"),
                limits: Limits::default(),
                timeouts: opts.timeouts,
            },
            trusted_root: opts.trusted_root,
            manifest: opts.manifest,
            floor: opts.floor,
            cache: opts.dir.join("cache"),
            transport: std::sync::OnceLock::new(),
            offline: false,
        }
    }

    /// The device's TUF source reading a bundle's `metadata/` and `targets/`
    /// under `dir` instead of the repository: same trusted root, same
    /// trusted metadata, same secure time floor.
    ///
    /// The offline expiry rule: a bundle may be imported weeks after it was
    /// exported, on a device whose clock is wrong, so its metadata is judged
    /// at the secure time floor (the newest time at which this device
    /// verified metadata) instead of the clock. Metadata that had expired by
    /// then is refused, as are versions older than the trusted ones. The
    /// floor rises to the clock after an import only when the clock lies
    /// within the validity of everything the bundle carried.
    pub fn for_bundle(mut opts: TufOptions, dir: &Path, name: String) -> Self {
        let url = |sub: &str| {
            format!(
                "file://{}/",
                transport::quote_path(&dir.join(sub).to_string_lossy())
            )
        };
        opts.metadata_url = url("metadata");
        opts.targets_url = url("targets");
        let mut s = TufSource::new(opts);
        s.name = name;
        s.offline = true;
        s
    }

    fn err(&self, e: TufError) -> SourceError {
        e.into_source_error(&self.name)
    }

    /// Verifies the newest metadata: root rotation, timestamp, snapshot,
    /// targets. On success the time floor rises to the clock.
    pub fn refresh(&self) -> Result<Client, SourceError> {
        let dir = &self.client.metadata_dir;
        if !dir.join("root.json").exists() {
            let root = std::fs::read(&self.trusted_root).map_err(|source| SourceError::Io {
                source_name: self.name.clone(),
                what: format!("reading the trusted root {}", self.trusted_root.display()),
                source,
            })?;
            client::init(dir, &root).map_err(|e| self.err(e))?;
        }
        let clock = clock_now();
        let floor = self.floor.get().map_err(|error| SourceError::TimeFloor {
            source_name: self.name.clone(),
            error: Box::new(error),
        })?;
        let now = if self.offline {
            floor
        } else {
            clock.max(floor)
        };
        let transport = match self.transport.get() {
            Some(t) => t.clone(),
            None => {
                let urls = [
                    self.client.metadata_url.as_str(),
                    self.client.targets_url.as_str(),
                ];
                let t = transport::Transport::new(self.client.timeouts, &urls).map_err(|e| {
                    self.err(TufError::Fetch {
                        role: "root".into(),
                        error: e,
                    })
                })?;
                self.transport.get_or_init(|| t).clone()
            }
        };
        let mut c =
            Client::load_with(self.client.clone(), now, transport).map_err(|e| self.err(e))?;
        c.refresh().map_err(|e| self.err(e))?;
        if self.offline && clock > c.earliest_expiry() {
            // The clock says the bundle's metadata has expired: either the
            // bundle is old or the clock is wrong; neither moves the floor.
            return Ok(c);
        }
        self.floor
            .raise(floor, clock)
            .map_err(|source| SourceError::Io {
                source_name: self.name.clone(),
                what: "recording the secure time floor".to_owned(),
                source,
            })?;
        Ok(c)
    }
}

impl TufSource {
    /// [`Source::fetch`], keeping the concrete revision (for export).
    pub fn fetch_tuf(&self) -> Result<Arc<TufRevision>, SourceError> {
        let mut c = self.refresh()?;
        let info = c
            .target_info(self.manifest.as_str())
            .map_err(|e| self.err(e))?
            .ok_or_else(|| SourceError::NotFound {
                source_name: self.name.clone(),
                path: self.manifest.clone(),
            })?;
        let digest = info
            .file
            .hashes
            .get("sha256")
            .map(|h| h.chars().take(12).collect::<String>())
            .unwrap_or_default();
        let id = format!("tuf-{}-{}", c.targets_version().unwrap_or_default(), digest);
        let actor = format!(
            "tuf:{}@{}",
            info.role,
            info.signers
                .iter()
                .map(|k| k.chars().take(12).collect::<String>())
                .collect::<Vec<_>>()
                .join(",")
        );
        Ok(Arc::new(TufRevision {
            client: Mutex::new(c),
            id,
            actor,
            name: self.name.clone(),
            cache: self.cache.clone(),
            targets_url: transport::with_slash(&self.client.targets_url),
        }))
    }
}

impl Source for TufSource {
    fn fetch(&self) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        Ok(self.fetch_tuf()?)
    }

    fn fetch_revision(&self, revision: &str) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        let rev = self.fetch()?;
        if rev.id() != revision {
            return Err(SourceError::Refused {
                source_name: self.name.clone(),
                path: revision.to_owned(),
                reason: format!(
                    "a TUF repository serves only its newest revision, which is {}",
                    rev.id()
                ),
            });
        }
        Ok(rev)
    }

    fn manifest_path(&self) -> &RepoPath {
        &self.manifest
    }
}

/// One verified refresh; targets are looked up (and delegated roles
/// fetched) on demand.
#[derive(Debug)]
pub struct TufRevision {
    client: Mutex<Client>,
    id: String,
    actor: String,
    name: String,
    /// Small verified targets (manifest, templates) by sha256, so that a
    /// poll that finds nothing new downloads no target at all.
    cache: PathBuf,
    /// The targets base URL, with a trailing slash.
    targets_url: String,
}

/// Targets up to this size are kept in the cache.
const CACHE_MAX_TARGET: u64 = 1024 * 1024;
/// Cache entries kept, newest first.
const CACHE_MAX_ENTRIES: usize = 256;

impl TufRevision {
    fn err(&self, e: TufError) -> SourceError {
        e.into_source_error(&self.name)
    }

    fn info(
        &self,
        path: &RepoPath,
    ) -> Result<(TargetInfo, std::sync::MutexGuard<'_, Client>), SourceError> {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        match c.target_info(path.as_str()).map_err(|e| self.err(e))? {
            Some(info) => Ok((info, c)),
            None => Err(SourceError::NotFound {
                source_name: self.name.clone(),
                path: path.clone(),
            }),
        }
    }

    fn open_from(&self, path: &RepoPath, offset: u64) -> Result<Box<dyn Read + '_>, SourceError> {
        let (info, mut c) = self.info(path)?;
        let sha = info.file.hashes.get("sha256").map(str::to_ascii_lowercase);
        let Some(sha) = sha.filter(|s| {
            offset == 0
                && info.file.length <= CACHE_MAX_TARGET
                && s.len() == 64
                && s.bytes().all(|b| b.is_ascii_hexdigit())
        }) else {
            // Large targets stream into the store, which enforces the signed
            // sha256 and length (the `VerifiedRevision::open` contract);
            // everything else listed is checked here.
            let r = c
                .open_target(&info, offset, true)
                .map_err(|e| self.err(e))?;
            return Ok(Box::new(r));
        };
        let cached = self.cache.join(&sha);
        if let Ok(f) = std::fs::File::open(&cached) {
            // Still checked against the signed length and hashes as it is read.
            return Ok(Box::new(client::TargetReader::new(f, &info, 0)));
        }
        let mut r = c.open_target(&info, 0, false).map_err(|e| self.err(e))?;
        drop(c);
        let mut bytes = Vec::with_capacity(usize::try_from(info.file.length).unwrap_or(0));
        r.read_to_end(&mut bytes)
            .map_err(|e| self.read_err(path, e))?;
        // The cache is an optimisation: failing to write it is not an error.
        let _ = std::fs::create_dir_all(&self.cache)
            .and_then(|()| fsutil::write_atomic(&cached, 0o644, &mut &bytes[..]))
            .map(|_| prune_cache(&self.cache));
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }

    /// Writes the metadata this revision verified into `out` in the layout
    /// of a repository (`N.root.json` for every root version the
    /// repository serves, `timestamp.json`, versioned snapshot and targets
    /// roles under consistent snapshots). Returns the files written.
    pub fn export_metadata(&self, out: &Path) -> Result<Vec<String>, SourceError> {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        let io = |what: String, source| SourceError::Io {
            source_name: self.name.clone(),
            what,
            source,
        };
        std::fs::create_dir_all(out).map_err(|e| io(format!("creating {}", out.display()), e))?;
        let mut files = Vec::new();
        let mut write = |name: String, bytes: &[u8]| -> Result<(), SourceError> {
            if name.contains('/') || name.starts_with('.') {
                return Err(SourceError::Refused {
                    source_name: self.name.clone(),
                    path: name,
                    reason: "role name cannot be a file name in a bundle".into(),
                });
            }
            std::fs::write(out.join(&name), bytes)
                .map_err(|e| io(format!("writing {}", out.join(&name).display()), e))?;
            files.push(name);
            Ok(())
        };
        let last = c.root().version;
        for v in 1..last {
            if let Some(bytes) = c.fetch_root_version(v).map_err(|e| self.err(e))? {
                write(format!("{v}.root.json"), &bytes)?;
            }
        }
        write(
            format!("{last}.root.json"),
            &c.stored_role("root").map_err(|e| self.err(e))?,
        )?;
        write(
            "timestamp.json".into(),
            &c.stored_role("timestamp").map_err(|e| self.err(e))?,
        )?;
        let consistent = c.root().consistent_snapshot;
        let name = |role: &str, version: u64| match consistent {
            true => format!("{version}.{role}.json"),
            false => format!("{role}.json"),
        };
        let snapshot_version = c.snapshot().map(|s| s.version).unwrap_or_default();
        write(
            name("snapshot", snapshot_version),
            &c.stored_role("snapshot").map_err(|e| self.err(e))?,
        )?;
        for (role, version) in c.loaded_roles() {
            let bytes = c.stored_role(&role).map_err(|e| self.err(e))?;
            write(name(&role, version), &bytes)?;
        }
        Ok(files)
    }

    /// Every target the signed metadata lists (see
    /// [`Client::all_target_names`]).
    pub fn all_target_names(&self) -> Result<Vec<String>, SourceError> {
        let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
        c.all_target_names().map_err(|e| self.err(e))
    }

    /// Copies target `name`, verified against its signed length and
    /// hashes, below `out` where a repository keeps it. Returns its length.
    pub fn export_target(&self, name: &str, out: &Path) -> Result<u64, SourceError> {
        let path = RepoPath::new(name.to_owned()).map_err(|e| SourceError::Refused {
            source_name: self.name.clone(),
            path: name.to_owned(),
            reason: e.to_string(),
        })?;
        let (info, mut c) = self.info(&path)?;
        let rel = c.target_file_path(&info);
        let dest = out.join(&rel);
        let mut r = c.open_target(&info, 0, false).map_err(|e| self.err(e))?;
        drop(c);
        let io = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                // The reader's verdict on the bytes.
                return self.read_err(&path, e);
            }
            SourceError::Io {
                source_name: self.name.clone(),
                what: format!("writing {}", dest.display()),
                source: e,
            }
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        fsutil::write_atomic(&dest, 0o644, &mut r).map_err(io)
    }

    /// A verification failure while reading is the repository's fault.
    fn read_err(&self, path: &RepoPath, e: std::io::Error) -> SourceError {
        if e.kind() == std::io::ErrorKind::InvalidData
            && let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<TufError>())
            && let TufError::BadTarget { name, reason } = inner
        {
            return self.err(TufError::BadTarget {
                name: name.clone(),
                reason: reason.clone(),
            });
        }
        SourceError::Io {
            source_name: self.name.clone(),
            what: format!("reading {path}"),
            source: e,
        }
    }
}

impl VerifiedRevision for TufRevision {
    fn id(&self) -> &str {
        &self.id
    }

    fn source_name(&self) -> &str {
        &self.name
    }

    fn actor(&self) -> &str {
        &self.actor
    }

    fn signed_target(&self, path: &RepoPath) -> Result<Option<ContentRef>, SourceError> {
        let (info, guard) = self.info(path)?;
        drop(guard);
        let sha = info
            .file
            .hashes
            .get("sha256")
            .ok_or_else(|| SourceError::Refused {
                source_name: self.name.clone(),
                path: path.to_string(),
                reason: "its TUF metadata lists no sha256 hash, which ferry's store needs".into(),
            })?;
        let sha256: Sha256 = sha.to_ascii_lowercase().parse().map_err(
            |e: ferry_core::digest::DigestParseError| SourceError::Refused {
                source_name: self.name.clone(),
                path: path.to_string(),
                reason: e.to_string(),
            },
        )?;
        Ok(Some(ContentRef {
            sha256,
            length: info.file.length,
        }))
    }

    fn open(&self, path: &RepoPath) -> Result<Box<dyn Read + '_>, SourceError> {
        self.open_from(path, 0)
    }

    fn base_url(&self) -> Option<String> {
        Some(self.targets_url.clone())
    }

    /// Resumes with an HTTP Range request; the store re-verifies the whole
    /// blob (the bytes it already has included) against the signed address.
    fn open_at(&self, path: &RepoPath, offset: u64) -> Result<Box<dyn Read + '_>, SourceError> {
        self.open_from(path, offset)
    }

    fn read_small(&self, path: &RepoPath, limit: u64) -> Result<Vec<u8>, SourceError> {
        let (info, guard) = self.info(path)?;
        drop(guard);
        if info.file.length > limit {
            return Err(SourceError::TooLarge {
                source_name: self.name.clone(),
                path: path.clone(),
                limit,
            });
        }
        let mut buf = Vec::new();
        if info.file.length <= CACHE_MAX_TARGET {
            // The cached path checks every hash.
            self.open(path)?
                .read_to_end(&mut buf)
                .map_err(|e| self.read_err(path, e))?;
        } else {
            let mut c = self.client.lock().unwrap_or_else(|p| p.into_inner());
            let mut r = c.open_target(&info, 0, false).map_err(|e| self.err(e))?;
            drop(c);
            r.read_to_end(&mut buf)
                .map_err(|e| self.read_err(path, e))?;
        }
        Ok(buf)
    }

    fn exists(&self, path: &RepoPath) -> Result<bool, SourceError> {
        match self.info(path) {
            Ok(_) => Ok(true),
            Err(SourceError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Keeps the newest `CACHE_MAX_ENTRIES` cache files.
fn prune_cache(dir: &Path) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<(SystemTime, PathBuf)> = read
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if entries.len() <= CACHE_MAX_ENTRIES {
        return;
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in entries.into_iter().skip(CACHE_MAX_ENTRIES) {
        let _ = std::fs::remove_file(p);
    }
}
