//! ferry's `git` source: signed commits fetched with gix into a bare repository
//! under the state directory.
//!
//! A fetch takes the configured branch's tip and accepts it only if:
//! - it descends from the last accepted commit (fast-forward only: an
//!   older or unrelated tip is a rollback attack), or, on a fresh device, is
//!   at or after the pinned commit when one is configured;
//! - every commit in (last accepted, tip] — merges included — carries an
//!   SSH or OpenPGP signature by a key of the device's trust directory
//!   ([`sig`]);
//! - every commit changes only paths its signer may change under the
//!   signers policy of its first parent ([`policy`]).
//!
//! Files are then read from the accepted commit's tree in the object
//! database, never from a work tree: a path is resolved entry by entry,
//! symlinks and submodules are refused, sizes are bounded. A file's sha256
//! is computed once per blob and kept in a map ([`blobmap`]), so a poll of
//! an unchanged tree reads no file.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::{Cursor, Read};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use ferry_core::{ContentRef, RepoPath};
use gix::ObjectId;
use gix::bstr::ByteSlice as _;

use ferry_source::{Source, SourceError, TimeFloor, VerifiedRevision};

mod blobmap;
pub mod policy;
pub mod sig;

use policy::Policy;
use sig::{Signer, Trust};

/// Default limit for one file read from a commit.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;
const SOURCE_NAME: &str = "git";

#[derive(Debug, Clone)]
pub struct GitOptions {
    pub url: String,
    pub branch: String,
    /// Holds `allowed_signers` and/or `keyring.asc`.
    pub trust_dir: PathBuf,
    /// The signers policy inside the repository.
    pub policy: RepoPath,
    /// A fresh device accepts only this commit or its descendants.
    pub pin: Option<String>,
    /// Shallow first fetch (only without a pin).
    pub depth: Option<u32>,
    pub manifest: RepoPath,
    pub max_file_bytes: u64,
    /// `<state_dir>/git`.
    pub dir: PathBuf,
    /// Take the branch from this git bundle file (an offline import)
    /// instead of fetching from `url`.
    pub bundle: Option<PathBuf>,
    /// The device's secure time floor (shared with the TUF source): new
    /// commits' keys are judged no earlier than it.
    pub time_floor: Option<TimeFloor>,
    /// The device's own signers policy (`source.git.device_policy`).
    pub device_policy: Option<Policy>,
    /// The freshness record in the repository, and its maximum age (off
    /// when `None`).
    pub freshness: RepoPath,
    pub freshness_max_age: Option<std::time::Duration>,
}

#[derive(Debug)]
pub struct GitSource {
    opts: GitOptions,
}

/// One commit that passed verification.
#[derive(Debug, Clone)]
pub struct Verified {
    pub commit: ObjectId,
    pub signer: Signer,
}

fn git_err(e: impl std::fmt::Display, what: &str) -> SourceError {
    SourceError::Unavailable {
        source_name: SOURCE_NAME.to_owned(),
        message: format!("{what}: {e}"),
    }
}

fn refused(commit: &ObjectId, reason: impl std::fmt::Display) -> SourceError {
    SourceError::untrusted(SOURCE_NAME, format!("commit {commit}"), reason.to_string())
}

impl GitSource {
    pub fn new(opts: GitOptions) -> GitSource {
        GitSource { opts }
    }

    fn repo_dir(&self) -> PathBuf {
        self.opts.dir.join("repo.git")
    }

    fn accepted_file(&self) -> PathBuf {
        self.opts.dir.join("accepted")
    }

    /// The bare repository, created on first use; no user or system git
    /// configuration is read (no URL rewrites, hooks or helpers).
    fn open_repo(&self) -> Result<gix::Repository, SourceError> {
        let path = self.repo_dir();
        if !path.join("HEAD").exists() {
            std::fs::create_dir_all(&self.opts.dir)
                .map_err(|e| git_err(e, &format!("creating {}", self.opts.dir.display())))?;
            gix::init_bare(&path).map_err(|e| git_err(e, "creating the local repository"))?;
        }
        self.open_at(&path)
    }

    /// Opens a repository with no user or system configuration and with
    /// every allocation that pack data asks for capped (`alloc_limit`): a
    /// small pack declaring a huge object is refused while it is inflated.
    fn open_at(&self, path: &Path) -> Result<gix::Repository, SourceError> {
        let limit = format!("gitoxide.objects.allocLimit={}", self.alloc_limit());
        gix::open_opts(
            path,
            gix::open::Options::isolated().config_overrides([limit]),
        )
        .map_err(|e| git_err(e, &format!("opening {}", path.display())))
    }

    /// The largest single allocation pack data may cause: the largest file
    /// a revision may hold, at least 64 MiB (room for the index of a big
    /// history), plus slack for headers.
    fn alloc_limit(&self) -> u64 {
        self.opts.max_file_bytes.max(64 << 20) + (1 << 20)
    }

    /// The last accepted commit, if any.
    pub fn accepted(&self) -> Result<Option<ObjectId>, SourceError> {
        match std::fs::read_to_string(self.accepted_file()) {
            Ok(s) => ObjectId::from_hex(s.trim().as_bytes())
                .map(Some)
                .map_err(|e| git_err(e, "reading the last accepted commit")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(git_err(e, "reading the last accepted commit")),
        }
    }

    /// Fetches the branch into `refs/ferry/fetched` (forced, so that a
    /// rewound branch is seen and refused here) and returns its tip.
    fn fetch_tip(&self, repo: &gix::Repository, fresh: bool) -> Result<ObjectId, SourceError> {
        use gix::remote::Direction;
        if let Some(bundle) = &self.opts.bundle {
            return self.unbundle(repo, bundle);
        }
        let spec = format!("+refs/heads/{}:refs/ferry/fetched", self.opts.branch);
        let remote = repo
            .remote_at(self.opts.url.as_str())
            .map_err(|e| git_err(e, "remote URL"))?
            .with_refspecs([spec.as_str()], Direction::Fetch)
            .map_err(|e| git_err(e, "refspec"))?;
        let conn = remote
            .connect(Direction::Fetch)
            .map_err(|e| git_err(e, &format!("connecting to {}", self.opts.url)))?;
        let mut prepare = conn
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| git_err(e, &format!("listing refs of {}", self.opts.url)))?;
        if fresh
            && self.opts.pin.is_none()
            && let Some(depth) = self.opts.depth.and_then(NonZeroU32::new)
        {
            prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(depth));
        }
        prepare
            .receive(gix::progress::Discard, &AtomicBool::new(false))
            .map_err(|e| git_err(e, &format!("fetching from {}", self.opts.url)))?;
        let mut r = repo.find_reference("refs/ferry/fetched").map_err(|_| {
            git_err(
                format!("branch {:?} not found", self.opts.branch),
                &self.opts.url,
            )
        })?;
        let id = r
            .peel_to_id()
            .map_err(|e| git_err(e, "resolving the fetched branch"))?;
        Ok(id.detach())
    }

    /// Reads a git bundle (v2 or v3, SHA-1): its pack goes into the local
    /// object database (nothing is trusted yet), its ref for the configured
    /// branch becomes `refs/ferry/fetched`, exactly as a fetch leaves it.
    fn unbundle(&self, repo: &gix::Repository, path: &Path) -> Result<ObjectId, SourceError> {
        let what = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| git_err(e, &what))?;
        // The bundle's content is the stick's fault (exit 3), reading it is not.
        let bad = |reason: String| SourceError::Refused {
            source_name: SOURCE_NAME.to_owned(),
            path: what.clone(),
            reason,
        };
        let mut r = std::io::BufReader::with_capacity(64 * 1024, file);
        let header = parse_bundle_header(&mut r).map_err(|e| match e {
            HeaderError::Io(e) => git_err(e, &what),
            HeaderError::Bad(reason) => bad(reason),
        })?;
        for id in &header.prerequisites {
            if !repo.has_object(id) {
                return Err(bad(format!(
                    "the bundle builds on commit {id}, which this device does not have; export the whole history"
                )));
            }
        }
        let wanted = format!("refs/heads/{}", self.opts.branch);
        let tip = header
            .refs
            .iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, id)| *id)
            .ok_or_else(|| {
                bad(format!(
                    "it carries no {wanted} (refs: {})",
                    header
                        .refs
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let pack_dir = repo.objects.store_ref().path().join("pack");
        std::fs::create_dir_all(&pack_dir)
            .map_err(|e| git_err(e, "creating the pack directory"))?;
        let options = gix::odb::pack::bundle::write::Options {
            alloc_limit_bytes: Some(usize::try_from(self.alloc_limit()).unwrap_or(usize::MAX)),
            ..Default::default()
        };
        gix::odb::pack::Bundle::write_to_directory(
            &mut r,
            Some(&pack_dir),
            &mut gix::progress::Discard,
            &AtomicBool::new(false),
            Some(repo.objects.clone()),
            gix::hash::Kind::Sha1,
            options,
        )
        .map_err(|e| {
            bad(format!(
                "its pack is unreadable or holds an object over {} bytes: {e}",
                self.alloc_limit()
            ))
        })?;
        repo.reference(
            "refs/ferry/fetched",
            tip,
            gix::refs::transaction::PreviousValue::Any,
            "ferry: import bundle",
        )
        .map_err(|e| git_err(e, "recording the bundle's tip"))?;
        Ok(tip)
    }

    /// Fetches and verifies the branch like a device without history
    /// (respecting the pin), then writes a git bundle of everything reachable
    /// from the verified tip to `out` with `git bundle create` (git must be
    /// installed where bundles are made). Returns the tip and its signer.
    pub fn export_bundle(&self, out: &Path) -> Result<(ObjectId, String), SourceError> {
        let rev = self.fetch_verified(None, true)?;
        let tip = ObjectId::from_hex(rev.id().as_bytes()).map_err(|e| git_err(e, rev.id()))?;
        let repo = self.repo_dir();
        let branch = format!("refs/heads/{}", self.opts.branch);
        let git = |args: &[&std::ffi::OsStr]| -> Result<(), SourceError> {
            let o = std::process::Command::new("git")
                .arg("--git-dir")
                .arg(&repo)
                .args(args)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .map_err(|e| git_err(e, "running git (needed to write bundles)"))?;
            if !o.status.success() {
                return Err(git_err(
                    String::from_utf8_lossy(&o.stderr).trim(),
                    &format!("git {args:?}"),
                ));
            }
            Ok(())
        };
        git(&[
            "update-ref".as_ref(),
            branch.as_ref(),
            tip.to_string().as_ref(),
        ])?;
        git(&[
            "bundle".as_ref(),
            "create".as_ref(),
            out.as_os_str(),
            branch.as_ref(),
        ])?;
        Ok((tip, rev.actor().to_owned()))
    }

    /// Verifies `tip` against the last accepted commit (or the pin) and
    /// returns the commits checked, oldest first.
    pub fn verify(
        &self,
        repo: &gix::Repository,
        trust: &Trust,
        accepted: Option<ObjectId>,
        tip: ObjectId,
    ) -> Result<Vec<Verified>, SourceError> {
        let floor = match accepted {
            Some(a) => Some(a),
            None => match &self.opts.pin {
                Some(p) => Some(resolve(repo, p).map_err(|_| {
                    refused(
                        &tip,
                        format!(
                            "is not a descendant of the pinned commit {p} (rollback or rewritten history): the fetched history does not contain it"
                        ),
                    )
                })?),
                None => None,
            },
        };
        let range: Vec<(ObjectId, Vec<ObjectId>)> = match floor {
            Some(f) if f == tip => return Ok(Vec::new()),
            Some(f) => {
                let range = walk(repo, tip, Some(f))?;
                if !has_parent(&range, &f) {
                    let what = if accepted.is_some() {
                        "the last accepted commit"
                    } else {
                        "the pinned commit"
                    };
                    let older = has_parent(&walk(repo, f, Some(tip))?, &tip);
                    return Err(refused(
                        &tip,
                        if older {
                            format!(
                                "is not a descendant of {what} {f} (rollback or rewritten history): it is older, the branch was rewound (rollback refused)"
                            )
                        } else {
                            format!(
                                "is not a descendant of {what} {f} (rollback or rewritten history): unrelated history or a force-push (refused)"
                            )
                        },
                    ));
                }
                range
            }
            // A fresh device without a pin: the tip must be signed by a
            // trusted key; its history is not judged.
            None => vec![(tip, parents(repo, &tip)?)],
        };
        // Key validity is judged at the later of the committer time (which
        // the signer writes) and the device's secure time floor: a holder
        // of an expired key cannot backdate a new commit past its expiry.
        let time_floor = self.floor_now()?;
        let mut verified = Vec::with_capacity(range.len());
        // Oldest first, so that the first problem reported is the first made.
        for (id, ps) in range.iter().rev() {
            let signer = commit_signer_at(repo, trust, id, time_floor)?;
            // Only what the commit changes against its first parent (a
            // fresh device: its whole tree) is looked at.
            let old = match ps.first() {
                // A fresh device without a pin verifies the tip alone (its
                // parents may be beyond a shallow fetch): its whole tree.
                Some(p) if floor.is_some() => Some(tree_of(repo, p)?),
                _ => None,
            };
            if let Some((path, why)) =
                unsafe_entry(repo, old, tree_of(repo, id)?, "", self.opts.max_file_bytes)?
            {
                return Err(refused(
                    id,
                    format!("brings {path}, {why}; such entries are never accepted"),
                ));
            }
            if floor.is_some() {
                self.check_paths(repo, id, ps, &signer)?;
            }
            verified.push(Verified {
                commit: *id,
                signer,
            });
        }
        Ok(verified)
    }

    /// The paths `id` changes must be ones its signer may change under the
    /// repository policy of its first parent (none there: no restriction)
    /// and under the device's own policy (none: no restriction).
    fn check_paths(
        &self,
        repo: &gix::Repository,
        id: &ObjectId,
        parents: &[ObjectId],
        signer: &Signer,
    ) -> Result<(), SourceError> {
        let Some(first) = parents.first() else {
            return Ok(());
        };
        let parent_tree = tree_of(repo, first)?;
        let repo_policy = match read_blob_at(
            repo,
            parent_tree,
            &self.opts.policy,
            policy::MAX_POLICY_BYTES as u64,
        )
        .map_err(|e| refused(id, format!("policy {} at {first}: {e}", self.opts.policy)))?
        {
            None => None,
            Some(text) => {
                let text = String::from_utf8(text).map_err(|_| {
                    refused(
                        id,
                        format!("policy {} at {first} is not UTF-8", self.opts.policy),
                    )
                })?;
                Some(Policy::parse(&text).map_err(|e| {
                    refused(id, format!("policy {} at {first}: {e}", self.opts.policy))
                })?)
            }
        };
        let policies: Vec<(&Policy, String)> = repo_policy
            .iter()
            .map(|p| (p, format!("the signers policy {}", self.opts.policy)))
            .chain(self.opts.device_policy.iter().map(|p| {
                (
                    p,
                    "the device's signers policy (source.git.device_policy)".to_owned(),
                )
            }))
            .collect();
        if policies.is_empty() {
            return Ok(());
        }
        let tree = tree_of(repo, id)?;
        // A merge's own changes are the paths it changes against every parent.
        let mut changed: Option<BTreeSet<String>> = None;
        for p in parents {
            let mut paths = BTreeSet::new();
            diff_trees(repo, Some(tree_of(repo, p)?), Some(tree), "", &mut paths)?;
            changed = Some(match changed {
                None => paths,
                Some(c) => c.intersection(&paths).cloned().collect(),
            });
        }
        let changed: Vec<String> = changed.unwrap_or_default().into_iter().collect();
        for (policy, which) in policies {
            if let Some(path) = policy.first_forbidden(signer, &changed) {
                let names: Vec<&str> = policy
                    .rules_for(signer)
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect();
                return Err(refused(
                    id,
                    format!(
                        "signed by {} ({}), which {which} does not allow to change {path}",
                        signer.key_id,
                        if names.is_empty() {
                            "not in the policy".to_owned()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Refuses a tip whose freshness record is missing, unreadable or
    /// older than `freshness_max_age` (or past its own `expires`), judged
    /// at the later of the clock and the secure time floor. Returns the
    /// record's signed issue time.
    fn check_freshness(
        &self,
        repo: &gix::Repository,
        tip: &ObjectId,
        floor: Option<i64>,
    ) -> Result<Option<i64>, SourceError> {
        let Some(max_age) = self.opts.freshness_max_age else {
            return Ok(None);
        };
        let name = &self.opts.freshness;
        let stale = |why: String| {
            refused(
                tip,
                format!(
                    "{why}; the server may be holding back updates (freeze attack): the tip is not treated as current"
                ),
            )
        };
        let text = read_blob_at(repo, tree_of(repo, tip)?, name, MAX_FRESHNESS_BYTES)
            .map_err(|e| stale(format!("freshness record {name}: {e}")))?
            .ok_or_else(|| stale(format!("carries no freshness record {name}")))?;
        let record =
            Freshness::parse(&text).map_err(|e| stale(format!("freshness record {name}: {e}")))?;
        let now = ferry_source::clock_now().max(floor.unwrap_or(i64::MIN));
        let limit = record
            .issued
            .saturating_add(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX));
        let limit = record.expires.map_or(limit, |e| e.min(limit));
        if now > limit {
            return Err(stale(format!(
                "freshness record {name} issued {} is stale since {} (now {}, source.git.freshness_max_age {})",
                fmt_time(record.issued),
                fmt_time(limit),
                fmt_time(now),
                self.opts
                    .freshness_max_age
                    .map_or(String::new(), |d| format!("{} s", d.as_secs()))
            )));
        }
        Ok(Some(record.issued))
    }

    fn revision(
        &self,
        repo: gix::Repository,
        commit: ObjectId,
        actor: String,
        pending: Option<Pending>,
    ) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        let tree = tree_of(&repo, &commit)?;
        Ok(Arc::new(GitRevision {
            repo: repo.into_sync(),
            id: commit.to_string(),
            tree,
            actor,
            max_file_bytes: self.opts.max_file_bytes,
            pending,
            blobs: Mutex::new(blobmap::BlobMap::load(self.opts.dir.join("blob-sha256"))),
        }))
    }
}

/// The header of a git bundle (v2 or v3, SHA-1): what it builds on and
/// the refs it carries. The pack follows in the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleHeader {
    pub prerequisites: Vec<ObjectId>,
    pub refs: Vec<(String, ObjectId)>,
}

/// Why a bundle header could not be read.
#[derive(Debug)]
pub enum HeaderError {
    Io(std::io::Error),
    /// Not a bundle ferry reads: the reason names what.
    Bad(String),
}

/// Most header lines, and longest line, read from a bundle.
const MAX_HEADER_LINES: usize = 10_000;
const MAX_HEADER_LINE: u64 = 1024;

/// Reads a bundle header, bounded in lines and line length, leaving the
/// reader at the pack.
pub fn parse_bundle_header(r: &mut impl std::io::BufRead) -> Result<BundleHeader, HeaderError> {
    use std::io::BufRead as _;
    let bad = |m: String| HeaderError::Bad(m);
    let mut line = Vec::new();
    let mut read_line = |r: &mut dyn std::io::BufRead| -> Result<String, HeaderError> {
        line.clear();
        std::io::Read::take(r, MAX_HEADER_LINE)
            .read_until(b'\n', &mut line)
            .map_err(HeaderError::Io)?;
        if line.last() != Some(&b'\n') {
            return Err(HeaderError::Bad(
                "bundle header line too long or cut short".into(),
            ));
        }
        String::from_utf8(line[..line.len() - 1].to_vec())
            .map_err(|_| HeaderError::Bad("bundle header is not UTF-8".into()))
    };
    let version = read_line(r)?;
    if version != "# v2 git bundle" && version != "# v3 git bundle" {
        return Err(bad(format!("not a git bundle (first line {version:?})")));
    }
    let mut header = BundleHeader {
        prerequisites: Vec::new(),
        refs: Vec::new(),
    };
    for _ in 0..MAX_HEADER_LINES {
        let l = read_line(r)?;
        if l.is_empty() {
            return Ok(header);
        }
        if let Some(cap) = l.strip_prefix('@') {
            if cap != "object-format=sha1" {
                return Err(bad(format!("unsupported bundle capability {cap:?}")));
            }
            continue;
        }
        if let Some(pre) = l.strip_prefix('-') {
            let hex = pre.split(' ').next().unwrap_or_default();
            let id = ObjectId::from_hex(hex.as_bytes())
                .map_err(|e| bad(format!("prerequisite {hex:?}: {e}")))?;
            header.prerequisites.push(id);
            continue;
        }
        let (hex, name) = l
            .split_once(' ')
            .ok_or_else(|| bad(format!("bad ref line {l:?}")))?;
        let id = ObjectId::from_hex(hex.as_bytes()).map_err(|e| bad(format!("ref {name}: {e}")))?;
        header.refs.push((name.to_owned(), id));
    }
    Err(bad(format!("more than {MAX_HEADER_LINES} header lines")))
}

/// A scratch repository for a bundle's objects until they are verified:
/// its `objects/info/alternates` names the device's object store, so
/// verification sees old and new objects, while the new ones stay apart.
#[derive(Debug)]
struct Quarantine {
    dir: PathBuf,
}

impl Quarantine {
    fn create(base: &Path, main: &gix::Repository) -> Result<Quarantine, SourceError> {
        let dir = base.join("incoming.git");
        // A leftover of a crash: what it holds was never verified.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| git_err(e, "removing an old quarantine"))?;
        }
        let q = Quarantine { dir };
        gix::init_bare(&q.dir).map_err(|e| git_err(e, "creating the quarantine"))?;
        let main_objects = main.objects.store_ref().path().to_owned();
        let main_objects = std::path::absolute(&main_objects).unwrap_or(main_objects);
        let info = q.dir.join("objects/info");
        std::fs::create_dir_all(&info).map_err(|e| git_err(e, "creating the quarantine"))?;
        std::fs::write(
            info.join("alternates"),
            format!("{}\n", main_objects.display()),
        )
        .map_err(|e| git_err(e, "creating the quarantine"))?;
        Ok(q)
    }

    /// Moves the verified packs into the device's object store (data
    /// before index: an index is what makes a pack visible) and points
    /// `refs/ferry/fetched` at `tip` there.
    fn promote(self, main: &gix::Repository, tip: ObjectId) -> Result<(), SourceError> {
        let from = self.dir.join("objects/pack");
        let to = main.objects.store_ref().path().join("pack");
        std::fs::create_dir_all(&to).map_err(|e| git_err(e, "creating the pack directory"))?;
        let mut names: Vec<PathBuf> = std::fs::read_dir(&from)
            .map_err(|e| git_err(e, "reading the quarantine"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pack" || x == "idx"))
            .collect();
        names.sort_by_key(|p| p.extension().is_some_and(|x| x == "idx"));
        for p in &names {
            let name = p.file_name().expect("a file in a directory");
            std::fs::rename(p, to.join(name)).map_err(|e| git_err(e, "moving a verified pack"))?;
        }
        ferry_fs::fsync_dir(&to).map_err(|e| git_err(e, "moving a verified pack"))?;
        main.reference(
            "refs/ferry/fetched",
            tip,
            gix::refs::transaction::PreviousValue::Any,
            "ferry: import bundle",
        )
        .map_err(|e| git_err(e, "recording the bundle's tip"))?;
        Ok(())
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl GitSource {
    /// Fetches, then verifies `target` (the fetched tip when `None`)
    /// against the last accepted commit; `advance` records it as accepted.
    fn fetch_verified(
        &self,
        target: Option<&str>,
        advance: bool,
    ) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        let main = self.open_repo()?;
        let accepted = self.accepted()?;
        // A bundle is unpacked into a quarantine that sees the device's
        // objects but adds to them only once verified; dropped (removed)
        // when anything is refused, so a refused stick leaves nothing.
        let (repo, tip, quarantine) = match &self.opts.bundle {
            Some(bundle) => {
                let q = Quarantine::create(&self.opts.dir, &main)?;
                let repo = self.open_at(&q.dir)?;
                let tip = self.unbundle(&repo, bundle)?;
                (repo, tip, Some(q))
            }
            None => {
                let tip = self.fetch_tip(&main, accepted.is_none())?;
                (main, tip, None)
            }
        };
        let id = match target {
            Some(rev) => resolve(&repo, rev).map_err(|e| git_err(e, rev))?,
            None => tip,
        };
        let trust = Trust::load(&self.opts.trust_dir).map_err(|e| git_err(e, "trust"))?;
        let verified = self.verify(&repo, &trust, accepted, id)?;
        // The tip must be fresh, also when it did not move: an old tip
        // served for ever is the attack.
        let issued = match target {
            None => self.check_freshness(&repo, &id, self.floor_now()?)?,
            Some(_) => None,
        };
        let actor = match verified.last() {
            Some(v) => v.signer.key_id.clone(),
            // No new commit: the target is the accepted one; who signed it.
            None => commit_signer(&repo, &trust, &id)?.key_id,
        };
        let repo = match quarantine {
            Some(q) => {
                drop(repo);
                let main = self.open_repo()?;
                q.promote(&main, tip)?;
                self.open_repo()?
            }
            None => repo,
        };
        // The accepted commit moves only once the engine has audited the
        // move (`VerifiedRevision::accept`).
        let pending = (advance && accepted != Some(id)).then(|| {
            let mut signers: Vec<&str> =
                verified.iter().map(|v| v.signer.key_id.as_str()).collect();
            signers.sort_unstable();
            signers.dedup();
            let mut checked = vec!["signatures", "descent", "entries"];
            if accepted.is_some() || self.opts.pin.is_some() {
                checked.push("paths");
            }
            if issued.is_some() {
                checked.push("freshness");
            }
            Pending {
                commit: id,
                file: self.accepted_file(),
                floor: self.opts.time_floor.clone(),
                issued,
                details: serde_json::json!({
                    "source": SOURCE_NAME,
                    "commit": id.to_string(),
                    "previous": accepted.map(|a| a.to_string()),
                    "commits": verified.len(),
                    "signers": signers,
                    "checked": checked,
                    "freshness_issued": issued,
                }),
            }
        });
        self.revision(repo, id, actor, pending)
    }

    /// The secure time floor now, if the device keeps one.
    fn floor_now(&self) -> Result<Option<i64>, SourceError> {
        match &self.opts.time_floor {
            Some(f) => f.get().map(Some).map_err(|error| SourceError::TimeFloor {
                source_name: SOURCE_NAME.to_owned(),
                error: Box::new(error),
            }),
            None => Ok(None),
        }
    }
}

impl Source for GitSource {
    fn fetch(&self) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        self.fetch_verified(None, true)
    }

    /// Verified like a fetched tip, without becoming the accepted commit.
    fn fetch_revision(&self, revision: &str) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        self.fetch_verified(Some(revision), false)
    }

    fn manifest_path(&self) -> &RepoPath {
        &self.opts.manifest
    }
}

/// Who signed commit `id`, if a trusted key did (its signature checked at
/// the committer time). For a commit accepted earlier: its signer's key
/// was judged valid when it was first seen.
fn commit_signer(
    repo: &gix::Repository,
    trust: &Trust,
    id: &ObjectId,
) -> Result<Signer, SourceError> {
    commit_signer_at(repo, trust, id, None)
}

/// Who signed commit `id`, the key judged at the later of the committer
/// time and `floor` (the secure time floor, for a commit seen now).
fn commit_signer_at(
    repo: &gix::Repository,
    trust: &Trust,
    id: &ObjectId,
    floor: Option<i64>,
) -> Result<Signer, SourceError> {
    let commit = repo
        .find_commit(*id)
        .map_err(|e| git_err(e, &format!("reading commit {id}")))?;
    let committed = commit.committer().map(|s| s.seconds()).unwrap_or(0);
    let at = floor.map_or(committed, |f| f.max(committed));
    let signature = commit
        .signature()
        .map_err(|e| refused(id, format!("unreadable signature: {e}")))?;
    let Some((sig, data)) = signature else {
        return Err(refused(id, "is not signed"));
    };
    trust
        .verify(sig.as_bytes(), data.to_bstring().as_bytes(), at)
        .map_err(|e| match e {
            sig::SigError::OutsideValidity { .. } if at > committed => refused(
                id,
                format!(
                    "{e}; judged at the device's secure time floor {}, later than the committer time {} (a backdated signature)",
                    jiff::Timestamp::from_second(at).map_or(at.to_string(), |t| t.to_string()),
                    jiff::Timestamp::from_second(committed).map_or(committed.to_string(), |t| t.to_string()),
                ),
            ),
            e => refused(id, e),
        })
}

fn resolve(repo: &gix::Repository, spec: &str) -> Result<ObjectId, String> {
    repo.rev_parse_single(spec)
        .map_err(|e| e.to_string())?
        .object()
        .map_err(|e| e.to_string())?
        .peel_to_commit()
        .map(|c| c.id)
        .map_err(|e| e.to_string())
}

/// Commits reachable from `tip` but not from `hidden`, newest first, each
/// with its parents.
fn walk(
    repo: &gix::Repository,
    tip: ObjectId,
    hidden: Option<ObjectId>,
) -> Result<Vec<(ObjectId, Vec<ObjectId>)>, SourceError> {
    let platform = repo.rev_walk([tip]);
    let platform = match hidden {
        Some(h) => platform.with_hidden([h]),
        None => platform,
    };
    let mut out = Vec::new();
    for info in platform.all().map_err(|e| git_err(e, "walking history"))? {
        let info = info.map_err(|e| git_err(e, "walking history"))?;
        out.push((info.id, info.parent_ids.to_vec()));
    }
    Ok(out)
}

/// Whether a commit of `walked` has `id` as a parent: for a walk from a tip
/// hiding `id`, whether the tip descends from `id`.
fn has_parent(walked: &[(ObjectId, Vec<ObjectId>)], id: &ObjectId) -> bool {
    walked.iter().any(|(_, ps)| ps.contains(id))
}

fn parents(repo: &gix::Repository, id: &ObjectId) -> Result<Vec<ObjectId>, SourceError> {
    let c = repo
        .find_commit(*id)
        .map_err(|e| git_err(e, &format!("reading commit {id}")))?;
    Ok(c.parent_ids().map(|p| p.detach()).collect())
}

fn tree_of(repo: &gix::Repository, id: &ObjectId) -> Result<ObjectId, SourceError> {
    repo.find_commit(*id)
        .and_then(|c| c.tree_id().map(|t| t.detach()))
        .map_err(|e| git_err(e, &format!("reading the tree of {id}")))
}

/// What a tree entry is, for confinement checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Tree,
    Blob,
    /// A blob with the executable bit (mode 100755): a different entry
    /// from the same blob at 100644, so a mode change is a change.
    Exec,
    Link,
    Submodule,
}

fn entries(
    repo: &gix::Repository,
    tree: ObjectId,
) -> Result<Vec<(String, EntryKind, ObjectId)>, SourceError> {
    let t = repo
        .find_tree(tree)
        .map_err(|e| git_err(e, &format!("reading tree {tree}")))?;
    let decoded = t
        .decode()
        .map_err(|e| git_err(e, &format!("decoding tree {tree}")))?;
    Ok(decoded
        .entries
        .iter()
        .map(|e| {
            let kind = if e.mode.is_tree() {
                EntryKind::Tree
            } else if e.mode.is_link() {
                EntryKind::Link
            } else if e.mode.is_commit() {
                EntryKind::Submodule
            } else if e.mode.is_executable() {
                EntryKind::Exec
            } else {
                EntryKind::Blob
            };
            (
                e.filename.to_str_lossy().into_owned(),
                kind,
                e.oid.to_owned(),
            )
        })
        .collect())
}

/// Paths that differ between two trees (added, removed, changed).
fn diff_trees(
    repo: &gix::Repository,
    a: Option<ObjectId>,
    b: Option<ObjectId>,
    prefix: &str,
    out: &mut BTreeSet<String>,
) -> Result<(), SourceError> {
    if a == b {
        return Ok(());
    }
    let list = |t: Option<ObjectId>| -> Result<
        std::collections::BTreeMap<String, (EntryKind, ObjectId)>,
        SourceError,
    > {
        Ok(match t {
            Some(t) => entries(repo, t)?
                .into_iter()
                .map(|(n, k, o)| (n, (k, o)))
                .collect(),
            None => Default::default(),
        })
    };
    let (la, lb) = (list(a)?, list(b)?);
    let names: BTreeSet<&String> = la.keys().chain(lb.keys()).collect();
    for name in names {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let (ea, eb) = (la.get(name), lb.get(name));
        if ea == eb {
            continue;
        }
        let sub = |e: Option<&(EntryKind, ObjectId)>| match e {
            Some((EntryKind::Tree, o)) => Some(*o),
            _ => None,
        };
        let (ta, tb) = (sub(ea), sub(eb));
        if ta.is_some() || tb.is_some() {
            diff_trees(repo, ta, tb, &path, out)?;
        }
        let not_tree = |e: &&(EntryKind, ObjectId)| e.0 != EntryKind::Tree;
        if ea.filter(not_tree) != eb.filter(not_tree) {
            out.insert(path);
        }
    }
    Ok(())
}

/// Largest freshness record read.
const MAX_FRESHNESS_BYTES: u64 = 4096;

fn fmt_time(t: i64) -> String {
    jiff::Timestamp::from_second(t).map_or(t.to_string(), |ts| ts.to_string())
}

/// The signed freshness record a release pipeline re-commits regularly:
/// `issued = "<RFC 3339>"`, optionally `expires = "<RFC 3339>"`.
#[derive(Debug, Clone, Copy)]
struct Freshness {
    issued: i64,
    expires: Option<i64>,
}

impl Freshness {
    fn parse(bytes: &[u8]) -> Result<Freshness, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            issued: String,
            expires: Option<String>,
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
        let raw: Raw = toml::from_str(text).map_err(|e| e.to_string())?;
        let time = |key: &str, v: &str| {
            v.parse::<jiff::Timestamp>()
                .map(|t| t.as_second())
                .map_err(|e| format!("{key}: {v:?}: {e}"))
        };
        Ok(Freshness {
            issued: time("issued", &raw.issued)?,
            expires: raw
                .expires
                .as_deref()
                .map(|e| time("expires", e))
                .transpose()?,
        })
    }
}

/// Longest symlink target read to judge where it points.
const MAX_LINK_TARGET: u64 = 4096;

/// Refuses entries a device must never accept into its history, among the
/// entries of `new` that differ from `old` (`None`: every entry of `new`):
/// names `.`, `..` and `.git` (any case: checkouts on case-insensitive file
/// systems), gitlinks (submodules), symlinks that lead out of the
/// repository, and blobs over `max_bytes`. Returns the path and the reason
/// of the first one found.
fn unsafe_entry(
    repo: &gix::Repository,
    old: Option<ObjectId>,
    new: ObjectId,
    prefix: &str,
    max_bytes: u64,
) -> Result<Option<(String, String)>, SourceError> {
    if old == Some(new) {
        return Ok(None);
    }
    let before: std::collections::BTreeMap<String, (EntryKind, ObjectId)> = match old {
        Some(t) => entries(repo, t)?
            .into_iter()
            .map(|(n, k, o)| (n, (k, o)))
            .collect(),
        None => Default::default(),
    };
    for (name, kind, oid) in entries(repo, new)? {
        if before.get(&name) == Some(&(kind, oid)) {
            continue;
        }
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if name == "." || name == ".." || name.eq_ignore_ascii_case(".git") {
            return Ok(Some((path, format!("an entry named {name:?}"))));
        }
        match kind {
            EntryKind::Tree => {
                let old_sub = match before.get(&name) {
                    Some((EntryKind::Tree, o)) => Some(*o),
                    _ => None,
                };
                if let Some(found) = unsafe_entry(repo, old_sub, oid, &path, max_bytes)? {
                    return Ok(Some(found));
                }
            }
            EntryKind::Submodule => {
                return Ok(Some((path, format!("a gitlink (submodule at {oid})"))));
            }
            EntryKind::Link => {
                let header = repo.find_header(oid).map_err(|e| git_err(e, &path))?;
                if header.size() > MAX_LINK_TARGET {
                    return Ok(Some((path, "a symlink with an overlong target".into())));
                }
                let target = repo
                    .find_blob(oid)
                    .map_err(|e| git_err(e, &path))?
                    .data
                    .clone();
                let target = String::from_utf8_lossy(&target).into_owned();
                if link_escapes(prefix, &target) {
                    return Ok(Some((
                        path,
                        format!("a symlink to {target:?}, outside the repository"),
                    )));
                }
            }
            EntryKind::Blob | EntryKind::Exec => {
                let size = repo.find_header(oid).map_err(|e| git_err(e, &path))?.size();
                if size > max_bytes {
                    return Ok(Some((
                        path,
                        format!("{size} bytes, over max_file_bytes ({max_bytes})"),
                    )));
                }
            }
        }
    }
    Ok(None)
}

/// Whether a symlink in directory `dir` (repository-relative) to `target`
/// leads outside the repository: absolute, or more `..` than it is deep.
fn link_escapes(dir: &str, target: &str) -> bool {
    if target.starts_with('/') || target.is_empty() {
        return true;
    }
    let mut depth: i64 = dir.split('/').filter(|c| !c.is_empty()).count() as i64;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// The blob at `path` in `tree`, resolved entry by entry: `None` when
/// missing; an error for symlinks, submodules, a file where a directory
/// should be, or more than `limit` bytes (checked before reading).
fn read_blob_at(
    repo: &gix::Repository,
    tree: ObjectId,
    path: &RepoPath,
    limit: u64,
) -> Result<Option<Vec<u8>>, String> {
    match blob_at(repo, tree, path, limit)? {
        Some(oid) => read_blob(repo, oid).map(Some),
        None => Ok(None),
    }
}

fn read_blob(repo: &gix::Repository, oid: ObjectId) -> Result<Vec<u8>, String> {
    let blob = repo.find_blob(oid).map_err(|e| e.to_string())?;
    Ok(blob.data.clone())
}

/// The id of the blob at `path` in `tree` (see [`read_blob_at`]), read
/// from trees and the blob's header only.
fn blob_at(
    repo: &gix::Repository,
    tree: ObjectId,
    path: &RepoPath,
    limit: u64,
) -> Result<Option<ObjectId>, String> {
    let comps: Vec<&str> = path.as_str().split('/').collect();
    let mut current = tree;
    for (i, comp) in comps.iter().enumerate() {
        let list = entries(repo, current).map_err(|e| e.to_string())?;
        let Some((_, kind, oid)) = list.into_iter().find(|(n, _, _)| n == comp) else {
            return Ok(None);
        };
        let so_far = comps[..=i].join("/");
        let last = i + 1 == comps.len();
        match (kind, last) {
            (EntryKind::Tree, false) => current = oid,
            (EntryKind::Tree, true) => return Err(format!("{so_far} is a directory")),
            (EntryKind::Link, _) => {
                return Err(format!(
                    "{so_far} is a symlink; files are read from the commit's tree only"
                ));
            }
            (EntryKind::Submodule, _) => {
                return Err(format!(
                    "{so_far} is a submodule; it is not part of the verified tree"
                ));
            }
            (EntryKind::Blob | EntryKind::Exec, false) => {
                return Err(format!("{so_far} is a file, not a directory"));
            }
            (EntryKind::Blob | EntryKind::Exec, true) => {
                let header = repo.find_header(oid).map_err(|e| e.to_string())?;
                if header.size() > limit {
                    return Err(format!("{} bytes; the limit is {limit}", header.size()));
                }
                return Ok(Some(oid));
            }
        }
    }
    Ok(None)
}

/// A verified commit: files come from its tree.
pub struct GitRevision {
    repo: gix::ThreadSafeRepository,
    id: String,
    tree: ObjectId,
    actor: String,
    max_file_bytes: u64,
    /// The move of the accepted commit this revision makes, once audited.
    pending: Option<Pending>,
    /// Blob ids to content addresses (persisted when the revision is
    /// dropped), and what this revision read.
    blobs: Mutex<blobmap::BlobMap>,
}

impl GitRevision {
    fn path_error(path: &RepoPath, reason: String) -> SourceError {
        SourceError::Refused {
            source_name: SOURCE_NAME.to_owned(),
            path: path.to_string(),
            reason,
        }
    }

    /// The blob the tree names at `path` (refused: a symlink, a
    /// submodule, over the size limit; an error when missing).
    fn blob(&self, repo: &gix::Repository, path: &RepoPath) -> Result<ObjectId, SourceError> {
        blob_at(repo, self.tree, path, self.max_file_bytes)
            .map_err(|e| Self::path_error(path, e))?
            .ok_or_else(|| SourceError::NotFound {
                source_name: SOURCE_NAME.to_owned(),
                path: path.clone(),
            })
    }

    /// Reads blob `oid` of `path`, counted.
    fn read_counted(
        &self,
        repo: &gix::Repository,
        path: &RepoPath,
        oid: ObjectId,
    ) -> Result<Vec<u8>, SourceError> {
        let bytes = read_blob(repo, oid).map_err(|e| Self::path_error(path, e))?;
        if let Ok(mut b) = self.blobs.lock() {
            b.stats.blobs_read += 1;
            b.stats.bytes_read += bytes.len() as u64;
        }
        Ok(bytes)
    }
}

impl Drop for GitRevision {
    /// Keeps the content addresses this revision computed, for the next
    /// poll; says what it read.
    fn drop(&mut self) {
        let Ok(b) = self.blobs.get_mut() else { return };
        if let Err(e) = b.persist() {
            tracing::warn!(error = %e, "git: the blob map was not saved; the next poll hashes again");
        }
        let s = b.stats;
        tracing::debug!(
            commit = %self.id,
            blobs_read = s.blobs_read,
            bytes_read = s.bytes_read,
            blobs_hashed = s.blobs_hashed,
            from_map = s.from_map,
            "git: revision reads"
        );
    }
}

/// A move of the accepted commit, waiting for its audit entry.
#[derive(Debug, Clone)]
struct Pending {
    commit: ObjectId,
    file: PathBuf,
    floor: Option<TimeFloor>,
    /// The signed issue time of the tip's freshness record.
    issued: Option<i64>,
    details: serde_json::Value,
}

impl std::fmt::Debug for GitRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitRevision").field("id", &self.id).finish()
    }
}

impl VerifiedRevision for GitRevision {
    fn id(&self) -> &str {
        &self.id
    }

    fn acceptance(&self) -> Option<serde_json::Value> {
        self.pending.as_ref().map(|p| p.details.clone())
    }

    /// Records the commit as accepted (durably), and raises the secure time
    /// floor to the tip's freshness record, a signed time.
    fn accept(&self) -> Result<(), SourceError> {
        let Some(p) = &self.pending else {
            return Ok(());
        };
        ferry_fs::write_atomic(&p.file, 0o600, &mut format!("{}\n", p.commit).as_bytes())
            .map_err(|e| git_err(e, "recording the accepted commit"))?;
        if let (Some(floor), Some(issued)) = (&p.floor, p.issued) {
            let current = floor.get().map_err(|error| SourceError::TimeFloor {
                source_name: SOURCE_NAME.to_owned(),
                error: Box::new(error),
            })?;
            floor
                .raise(current, issued)
                .map_err(|e| git_err(e, "recording the secure time floor"))?;
        }
        tracing::info!(commit = %p.commit, "git: accepted");
        Ok(())
    }

    fn source_name(&self) -> &str {
        SOURCE_NAME
    }

    fn actor(&self) -> &str {
        &self.actor
    }

    /// The sha256 of the blob the signed tree names at `path`: from the
    /// blob map, or read and hashed once and added to it.
    fn signed_target(&self, path: &RepoPath) -> Result<Option<ContentRef>, SourceError> {
        let repo = self.repo.to_thread_local();
        let oid = self.blob(&repo, path)?;
        if let Some(c) = self.blobs.lock().ok().and_then(|mut b| b.get(&oid)) {
            return Ok(Some(c));
        }
        let c = ContentRef::of(&self.read_counted(&repo, path, oid)?);
        if let Ok(mut b) = self.blobs.lock() {
            b.insert(oid, c);
        }
        Ok(Some(c))
    }

    fn open(&self, path: &RepoPath) -> Result<Box<dyn Read + '_>, SourceError> {
        let repo = self.repo.to_thread_local();
        let oid = self.blob(&repo, path)?;
        Ok(Box::new(Cursor::new(self.read_counted(&repo, path, oid)?)))
    }

    fn exists(&self, path: &RepoPath) -> Result<bool, SourceError> {
        let repo = self.repo.to_thread_local();
        blob_at(&repo, self.tree, path, self.max_file_bytes)
            .map(|o| o.is_some())
            .map_err(|e| Self::path_error(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_that_leave_the_repository_are_told_apart() {
        assert!(!link_escapes("sites/plant-7", "site.conf"));
        assert!(!link_escapes("sites/plant-7", "../plant-8/site.conf"));
        assert!(!link_escapes("sites/plant-7", "../../ferry.yaml"));
        assert!(link_escapes("sites/plant-7", "../../../etc/passwd"));
        assert!(link_escapes("", "../x"));
        assert!(link_escapes("a", "/etc/passwd"));
        assert!(link_escapes("a", ""));
        assert!(!link_escapes("a", "./b/../c"));
        assert!(link_escapes("a", "b/../../../c"));
    }

    #[test]
    fn freshness_records_parse_and_bad_ones_say_why() {
        let f = Freshness::parse(b"issued = \"2026-12-03T06:00:00Z\"\n").unwrap();
        assert_eq!((f.issued, f.expires), (1_796_277_600, None));
        let f = Freshness::parse(
            b"issued = \"2026-12-03T06:00:00Z\"\nexpires = \"2026-12-04T06:00:00Z\"\n",
        )
        .unwrap();
        assert_eq!(f.expires, Some(1_796_364_000));
        assert!(
            Freshness::parse(b"issued = \"yesterday\"\n")
                .unwrap_err()
                .contains("issued")
        );
        assert!(Freshness::parse(b"issued = \"2026-12-03T06:00:00Z\"\nextra = 1\n").is_err());
        assert!(Freshness::parse(&[0xff]).unwrap_err().contains("UTF-8"));
    }
}
