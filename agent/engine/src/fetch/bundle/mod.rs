//! Offline bundles: what a technician carries to a device on a USB stick.
//!
//! A bundle is a directory (or a FAT32 image of one) holding
//!
//! ```text
//! ferry-bundle.json        the marker: format, kind, revision, devices (unsigned, a hint)
//! tuf/metadata/…           the repository's signed metadata: every root version,
//!                          timestamp, snapshot, the targets roles needed
//! tuf/targets/…            the targets the selected devices need, as the repository stores them
//! git/ferry.bundle         or: a git bundle of the signed branch
//! ```
//!
//! Nothing in a bundle is trusted: importing it runs the device's own
//! source (same trusted root or allowed signers, same rollback and freeze
//! state) over the bundle's files instead of the network
//! ([`ferry_tuf::TufSource::for_bundle`], the git source's bundle
//! option). The marker only lets `ferry import` refuse early and clearly
//! (another kind of source, another device model); it can never make
//! anything be accepted.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, SourceKind};
use crate::render::facts::Facts;
use crate::render::manifest::{self, ManifestError};
use crate::{Config, ErrorClass};
use ferry_core::Classify;
#[cfg(feature = "git")]
use ferry_git::GitSource;
use ferry_source::{Source, SourceError};
// What only a TUF export needs: the files a device will read, recorded.
#[cfg(feature = "tuf")]
use {
    crate::render::manifest::Content,
    ferry_core::{ContentRef, RepoPath},
    ferry_source::VerifiedRevision,
    ferry_tuf::TufSource,
    std::sync::{Arc, Mutex},
};

pub mod fat;

/// The marker file at the top of every bundle.
pub const MARKER: &str = "ferry-bundle.json";
/// The bundle format this ferry writes and reads.
pub const FORMAT: u32 = 1;
/// The git bundle inside a git export.
pub const GIT_BUNDLE: &str = "git/ferry.bundle";
pub(crate) const MAX_MARKER_BYTES: u64 = 64 * 1024;

/// What `ferry-bundle.json` says. Unsigned: used for messages and early
/// refusals only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Marker {
    pub format: u32,
    /// `tuf` or `git`.
    pub kind: String,
    /// When it was exported (RFC 3339).
    pub created: String,
    /// The revision exported (TUF: `tuf-VERSION-HASH`; git: the commit).
    pub revision: String,
    /// The devices it was exported for; empty: every device of the source.
    #[serde(default)]
    pub devices: Vec<DeviceTag>,
    /// Files and bytes of the bundle's payload.
    pub files: u64,
    pub bytes: u64,
}

/// The facts a bundle was selected by.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DeviceTag {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{}: not a ferry bundle (no {MARKER})", path.display())]
    NoMarker { path: PathBuf },
    /// The bundle or image is malformed (marker, file system, limits).
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// The bundle cannot be used on this device (another kind of source,
    /// another device model).
    #[error("{}: {reason}", path.display())]
    NotForThisDevice { path: PathBuf, reason: String },
    /// The output does not fit (a full stick, a too small image).
    #[error("{}: {reason}", path.display())]
    NoSpace { path: PathBuf, reason: String },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Manifest(Box<ManifestError>),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<ManifestError> for BundleError {
    fn from(e: ManifestError) -> Self {
        BundleError::Manifest(Box::new(e))
    }
}

impl BundleError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            let path = path.into();
            return BundleError::NoSpace {
                reason: format!("{what}: no space left on the device"),
                path,
            };
        }
        BundleError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

impl Classify for BundleError {
    fn class(&self) -> ErrorClass {
        match self {
            BundleError::NoMarker { .. } | BundleError::NotForThisDevice { .. } => {
                ErrorClass::Refused
            }
            BundleError::Invalid { .. } | BundleError::Manifest(_) => ErrorClass::InvalidInput,
            BundleError::NoSpace { .. } | BundleError::Io { .. } => ErrorClass::Internal,
            BundleError::Config(_) => ErrorClass::Config,
            BundleError::Source(e) => e.class(),
        }
    }
}

// ---- export -------------------------------------------------------------------------

/// What was exported.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub marker: Marker,
    /// Payload files, relative to the bundle root.
    pub paths: Vec<String>,
}

/// Exports the configured source's newest revision into the empty or new
/// directory `out`: verified like a fresh device would (with the configured
/// trust roots), then checked by reading it back the same way. With
/// `facts`, a TUF bundle holds only the targets those devices need (and
/// every manifest must render for them); without, every target. `work` is
/// scratch space (removed by the caller).
///
/// `delta_from`: the chunk index of the firmware image the devices run
/// (`ferry chunk` output): firmware resources with a chunk index then
/// travel as their index plus the chunks that image lacks, not as whole
/// images (TUF, with `facts`).
pub fn export(
    config: &Config,
    facts: &[Facts],
    out: &Path,
    work: &Path,
    delta_from: Option<&Path>,
) -> Result<Exported, BundleError> {
    if let Some(path) = delta_from
        && (facts.is_empty() || config.source.kind != Some(SourceKind::Tuf))
    {
        return Err(BundleError::Invalid {
            path: path.to_owned(),
            reason: "--delta-from needs a TUF source and --for-device (the bundle carries what those devices' firmware lacks)".into(),
        });
    }
    #[cfg(not(feature = "delta"))]
    if let Some(path) = delta_from {
        return Err(BundleError::Invalid {
            path: path.to_owned(),
            reason: crate::config::built_without(crate::config::DELTA_UPDATES, "delta"),
        });
    }
    prepare_out(out)?;
    let (revision, paths) = match config.source.kind {
        #[cfg(feature = "tuf")]
        Some(SourceKind::Tuf) => export_tuf(config, facts, out, work, delta_from)?,
        #[cfg(feature = "git")]
        Some(SourceKind::Git) => export_git(config, facts, out, work)?,
        other => {
            return Err(ConfigError::Invalid {
                key: "source.kind",
                message: format!(
                    "bundles are made from a tuf or git source, not {}",
                    other.map_or("none", SourceKind::as_str)
                ),
            }
            .into());
        }
    };
    let mut bytes = 0;
    for p in &paths {
        bytes += std::fs::metadata(out.join(p))
            .map_err(|e| BundleError::io("reading", out.join(p), e))?
            .len();
    }
    let marker = Marker {
        format: FORMAT,
        kind: config
            .source
            .kind
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
        created: jiff::Timestamp::now().to_string(),
        revision,
        devices: facts
            .iter()
            .map(|f| DeviceTag {
                hostname: f.hostname.clone(),
                model: f.model.clone(),
            })
            .collect(),
        files: paths.len() as u64,
        bytes,
    };
    // Last: a bundle whose export was interrupted has no marker, so it is
    // never mistaken for a complete one.
    let json = serde_json::to_vec_pretty(&marker).expect("a marker serialises");
    crate::fsutil::write_atomic(&out.join(MARKER), 0o644, &mut &json[..])
        .map_err(|e| BundleError::io("writing", out.join(MARKER), e))?;
    Ok(Exported { marker, paths })
}

fn prepare_out(out: &Path) -> Result<(), BundleError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BundleError::Invalid {
                    path: out.to_owned(),
                    reason: "the output directory is not empty".into(),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(|e| BundleError::io("creating", out, e))
        }
        Err(e) => Err(BundleError::io("reading", out, e)),
    }
}

#[cfg(feature = "tuf")]
fn export_tuf(
    config: &Config,
    facts: &[Facts],
    out: &Path,
    work: &Path,
    delta_from: Option<&Path>,
) -> Result<(String, Vec<String>), BundleError> {
    let src = TufSource::new(super::tuf_options(config, &work.join("export"))?);
    let rev = src.fetch_tuf()?;
    #[cfg_attr(not(feature = "delta"), allow(unused_mut))]
    let mut names: BTreeSet<String> = if facts.is_empty() {
        rev.all_target_names()?.into_iter().collect()
    } else {
        let mut names = BTreeSet::from([src.manifest_path().to_string()]);
        let dynrev: Arc<dyn VerifiedRevision> = rev.clone();
        for f in facts {
            names.extend(needed_paths(&dynrev, src.manifest_path(), f)?);
        }
        names
    };
    #[cfg(not(feature = "delta"))]
    let _ = delta_from;
    #[cfg(feature = "delta")]
    if let Some(old) = delta_from {
        let dynrev: Arc<dyn VerifiedRevision> = rev.clone();
        export_chunks(
            config,
            &dynrev,
            src.manifest_path(),
            facts,
            old,
            out,
            &mut names,
        )?;
    }
    let mut paths = Vec::new();
    for f in rev.export_metadata(&out.join("tuf/metadata"))? {
        paths.push(format!("tuf/metadata/{f}"));
    }
    for name in &names {
        rev.export_target(name, &out.join("tuf/targets"))?;
    }
    // The targets as stored (hash-prefixed under consistent snapshots).
    collect_files(&out.join("tuf/targets"), "tuf/targets", &mut paths)?;
    // Read it back as a fresh device would, rendering for every selected
    // device (expiry was checked against this machine's clock above).
    let check = TufSource::for_bundle(
        super::tuf_options(config, &work.join("check"))?,
        &out.join("tuf"),
        "bundle".into(),
    );
    let back: Arc<dyn VerifiedRevision> = check.fetch_tuf()?;
    for f in facts {
        needed_paths(&back, check.manifest_path(), f)?;
    }
    if back.id() != rev.id() {
        return Err(BundleError::Invalid {
            path: out.to_owned(),
            reason: format!(
                "the repository changed during the export ({} became {}); export again",
                rev.id(),
                back.id()
            ),
        });
    }
    Ok((rev.id().to_owned(), paths))
}

#[cfg(feature = "git")]
fn export_git(
    config: &Config,
    facts: &[Facts],
    out: &Path,
    work: &Path,
) -> Result<(String, Vec<String>), BundleError> {
    let mut opts = super::git_options(config, &work.join("export"))?;
    // The whole history: a device may have accepted any earlier commit.
    opts.depth = None;
    let file = out.join(GIT_BUNDLE);
    std::fs::create_dir_all(out.join("git"))
        .map_err(|e| BundleError::io("creating", out.join("git"), e))?;
    let (tip, _signer) = GitSource::new(opts.clone()).export_bundle(&file)?;
    // Read it back as a fresh device would.
    let mut check = super::git_options(config, &work.join("check"))?;
    check.bundle = Some(file);
    let check = GitSource::new(check);
    let back = check.fetch()?;
    for f in facts {
        manifest::load(&back, check.manifest_path(), f)?;
    }
    Ok((tip.to_string(), vec![GIT_BUNDLE.to_owned()]))
}

/// For a delta bundle: replaces each firmware image that has a chunk index
/// by its index (in `names`) and writes the chunks `old` (the index of the
/// image the devices run) lacks into the bundle's chunk store
/// (`tuf/targets/chunks/`, the default store of a bundle), each verified.
#[cfg(feature = "delta")]
fn export_chunks(
    config: &Config,
    rev: &Arc<dyn VerifiedRevision>,
    manifest_path: &RepoPath,
    facts: &[Facts],
    old: &Path,
    out: &Path,
    names: &mut BTreeSet<String>,
) -> Result<(), BundleError> {
    let invalid = |reason: String| BundleError::Invalid {
        path: old.to_owned(),
        reason,
    };
    let bytes = std::fs::read(old).map_err(|e| BundleError::io("reading", old, e))?;
    let old_index = ferry_delta::ChunkIndex::parse(&bytes, &old.display().to_string())
        .map_err(|e| invalid(e.to_string()))?;
    let have: std::collections::HashSet<ferry_core::Sha256> =
        old_index.chunks.iter().map(|c| c.sha256).collect();
    let store_dir = out.join("tuf/targets/chunks");
    let mut written = std::collections::HashSet::new();
    for f in facts {
        let desired = manifest::load(rev, manifest_path, f)?;
        for (id, delta) in &desired.deltas {
            if delta.store != "chunks/" {
                return Err(invalid(format!(
                    "{id}: a bundle serves chunks from its own chunks/ directory; the resource names store {}",
                    delta.store
                )));
            }
            let length = desired.resources.get(id).map_or(0, |r| r.content.length);
            let (index, _, url) =
                super::delta::delta_index(&**rev, delta, length).map_err(invalid)?;
            if let Some(Content::Source(p)) = desired.contents.get(id) {
                names.remove(p.as_str());
            }
            names.insert(delta.index_path.to_string());
            let store = ferry_delta::Remote::new(&url, super::delta::chunk_timeouts(config))
                .map_err(invalid)?;
            for c in &index.chunks {
                if have.contains(&c.sha256) || !written.insert(c.sha256) {
                    continue;
                }
                let packed = store.fetch_stored(c).map_err(|e| invalid(e.to_string()))?;
                let path = store_dir.join(ferry_delta::chunk_path(&c.sha256));
                let dir = path.parent().expect("chunk paths have a directory");
                std::fs::create_dir_all(dir).map_err(|e| BundleError::io("creating", dir, e))?;
                crate::fsutil::write_atomic(&path, 0o644, &mut &packed[..])
                    .map_err(|e| BundleError::io("writing", &path, e))?;
            }
        }
    }
    Ok(())
}

/// The files of `rev` that rendering for `facts` reads or the resulting
/// resources install.
#[cfg(feature = "tuf")]
fn needed_paths(
    rev: &Arc<dyn VerifiedRevision>,
    manifest_path: &RepoPath,
    facts: &Facts,
) -> Result<BTreeSet<String>, BundleError> {
    let recording = Arc::new(Recording {
        inner: rev.clone(),
        seen: Mutex::new(BTreeSet::new()),
    });
    let as_dyn: Arc<dyn VerifiedRevision> = recording.clone();
    let desired = manifest::load(&as_dyn, manifest_path, facts)?;
    let mut seen = recording
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for c in desired.contents.values() {
        if let Content::Source(p) = c {
            seen.insert(p.to_string());
        }
    }
    Ok(seen)
}

#[cfg(feature = "tuf")]
fn collect_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<(), BundleError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BundleError::io("reading", dir, e)),
    };
    let mut names: Vec<_> = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| BundleError::io("reading", dir, e))?;
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let rel = format!("{prefix}/{}", n.to_string_lossy());
        if p.is_dir() {
            collect_files(&p, &rel, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// A revision that remembers which paths were asked for.
#[cfg(feature = "tuf")]
struct Recording {
    inner: Arc<dyn VerifiedRevision>,
    seen: Mutex<BTreeSet<String>>,
}

#[cfg(feature = "tuf")]
impl Recording {
    fn note(&self, path: &RepoPath) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_string());
    }
}

#[cfg(feature = "tuf")]
impl VerifiedRevision for Recording {
    fn id(&self) -> &str {
        self.inner.id()
    }
    fn source_name(&self) -> &str {
        self.inner.source_name()
    }
    fn actor(&self) -> &str {
        self.inner.actor()
    }
    fn signed_target(&self, path: &RepoPath) -> Result<Option<ContentRef>, SourceError> {
        let r = self.inner.signed_target(path)?;
        self.note(path);
        Ok(r)
    }
    fn content(&self, path: &RepoPath) -> Result<ContentRef, SourceError> {
        let r = self.inner.content(path)?;
        self.note(path);
        Ok(r)
    }
    fn open(&self, path: &RepoPath) -> Result<Box<dyn Read + '_>, SourceError> {
        let r = self.inner.open(path)?;
        self.note(path);
        Ok(r)
    }
    fn exists(&self, path: &RepoPath) -> Result<bool, SourceError> {
        let found = self.inner.exists(path)?;
        if found {
            self.note(path);
        }
        Ok(found)
    }
    fn read_small(&self, path: &RepoPath, limit: u64) -> Result<Vec<u8>, SourceError> {
        let r = self.inner.read_small(path, limit)?;
        self.note(path);
        Ok(r)
    }
}

// ---- import -------------------------------------------------------------------------

/// A bundle ready to import.
#[derive(Debug)]
pub struct Opened {
    /// The bundle's top directory (the stick, or where an image was extracted).
    pub root: PathBuf,
    pub marker: Marker,
    /// The stick's name: given, else `LABEL/SERIAL` of its FAT volume (the
    /// image, or the device a directory was mounted from), else the
    /// directory's name.
    pub label: String,
}

/// Opens the bundle at `path`: a directory (a mounted stick, `device` the
/// partition it is mounted from) is read in place; an image file is
/// extracted into the empty directory `staging` first (bounded; see
/// [`fat::extract`]).
pub fn open(
    path: &Path,
    staging: &Path,
    label: Option<&str>,
    device: Option<&Path>,
) -> Result<Opened, BundleError> {
    let meta = std::fs::metadata(path).map_err(|e| BundleError::io("reading", path, e))?;
    let (root, fs_label) = if meta.is_dir() {
        check_tree(path, &fat::Limits::default())?;
        let name = match device {
            Some(dev) => fat::volume_id(dev)?.name(),
            None => path
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default(),
        };
        (path.to_owned(), name)
    } else {
        let l = fat::extract(path, staging, &fat::Limits::default())?;
        (staging.to_owned(), l)
    };
    let marker = read_marker(&root, path)?;
    let label = label
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .unwrap_or(fs_label);
    Ok(Opened {
        root,
        marker,
        label: sanitize_label(&label),
    })
}

/// A bundle directory read in place holds only plain files and directories
/// (no symlinks, devices or FIFOs that could point reads elsewhere or block
/// them), within `limits`.
fn check_tree(root: &Path, limits: &fat::Limits) -> Result<(), BundleError> {
    fn walk(
        dir: &Path,
        root: &Path,
        limits: &fat::Limits,
        depth: usize,
        budget: &mut (u64, u64),
    ) -> Result<(), BundleError> {
        let invalid = |p: &Path, reason: &str| BundleError::Invalid {
            path: root.to_owned(),
            reason: format!("{}: {reason}", p.strip_prefix(root).unwrap_or(p).display()),
        };
        if depth > limits.max_depth {
            return Err(invalid(dir, "directories nested too deep"));
        }
        for e in std::fs::read_dir(dir).map_err(|e| BundleError::io("reading", dir, e))? {
            let e = e.map_err(|e| BundleError::io("reading", dir, e))?;
            let p = e.path();
            let m =
                std::fs::symlink_metadata(&p).map_err(|err| BundleError::io("reading", &p, err))?;
            if budget.0 == 0 {
                return Err(invalid(
                    root,
                    &format!("more than {} files", limits.max_files),
                ));
            }
            budget.0 -= 1;
            if m.is_dir() {
                walk(&p, root, limits, depth + 1, budget)?;
            } else if m.is_file() {
                budget.1 = budget.1.checked_sub(m.len()).ok_or_else(|| {
                    invalid(
                        &p,
                        &format!("the bundle holds more than {} bytes", limits.max_bytes),
                    )
                })?;
            } else if m.file_type().is_symlink() {
                return Err(invalid(
                    &p,
                    "a symbolic link (bundles hold plain files only)",
                ));
            } else {
                return Err(invalid(&p, "not a plain file or directory"));
            }
        }
        Ok(())
    }
    walk(
        root,
        root,
        limits,
        0,
        &mut (limits.max_files, limits.max_bytes),
    )
}

/// Labels end up in the audit journal and in messages: printable ASCII only.
fn sanitize_label(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(64)
        .collect();
    if s.is_empty() { "unlabelled".into() } else { s }
}

pub(crate) fn read_marker(root: &Path, shown: &Path) -> Result<Marker, BundleError> {
    let path = root.join(MARKER);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleError::NoMarker {
                path: shown.to_owned(),
            });
        }
        Err(e) => return Err(BundleError::io("reading", path, e)),
    };
    let mut bytes = Vec::new();
    f.take(MAX_MARKER_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| BundleError::io("reading", &path, e))?;
    let invalid = |reason: String| BundleError::Invalid {
        path: shown.join(MARKER),
        reason,
    };
    if bytes.len() as u64 > MAX_MARKER_BYTES {
        return Err(invalid(format!("larger than {MAX_MARKER_BYTES} bytes")));
    }
    let m: Marker = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("line {} column {}: {e}", e.line(), e.column())))?;
    if m.format != FORMAT {
        return Err(invalid(format!(
            "bundle format {} (this ferry reads format {FORMAT})",
            m.format
        )));
    }
    if m.kind != "tuf" && m.kind != "git" {
        return Err(invalid(format!(
            "/kind: unknown kind {:?} (tuf or git)",
            m.kind
        )));
    }
    Ok(m)
}

/// Refuses a bundle that cannot be for this device: another kind of source,
/// or exported for other device models only. (The marker is unsigned; this
/// is a courtesy, verification decides.)
pub fn check_device(opened: &Opened, config: &Config, facts: &Facts) -> Result<(), BundleError> {
    let device = config.source.kind.map_or("none", SourceKind::as_str);
    let not_for = |reason: String| BundleError::NotForThisDevice {
        path: opened.root.clone(),
        reason,
    };
    if opened.marker.kind != device {
        return Err(not_for(format!(
            "the bundle carries a {} export, but this device's source is {device}",
            opened.marker.kind
        )));
    }
    let models: BTreeSet<&str> = opened
        .marker
        .devices
        .iter()
        .filter_map(|d| d.model.as_deref())
        .collect();
    if let Some(model) = &facts.model
        && !models.is_empty()
        && opened.marker.devices.iter().all(|d| d.model.is_some())
        && !models.contains(model.as_str())
    {
        return Err(not_for(format!(
            "exported for device model {} only; this device is {model}",
            models.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// The device's configured source reading the bundle instead of the
/// network, with the same trust and rollback state (see the module docs).
pub fn source(config: &Config, opened: &Opened) -> Result<Box<dyn Source>, BundleError> {
    Ok(match opened.marker.kind.as_str() {
        #[cfg(feature = "tuf")]
        "tuf" => Box::new(TufSource::for_bundle(
            super::tuf_options(config, &config.state_dir)?,
            &opened.root.join("tuf"),
            format!("usb:{}", opened.label),
        )),
        #[cfg(feature = "git")]
        "git" => {
            let mut opts = super::git_options(config, &config.state_dir)?;
            opts.time_floor = Some(super::time_floor(config, &config.state_dir)?);
            opts.bundle = Some(opened.root.join(GIT_BUNDLE));
            opts.depth = None;
            Box::new(GitSource::new(opts))
        }
        kind => {
            return Err(BundleError::NotForThisDevice {
                path: opened.root.clone(),
                reason: format!(
                    "a {kind} bundle, and this ferry is built without the {kind} source"
                ),
            });
        }
    })
}
