//! The TUF client workflow (specification §5) over a metadata directory.
//!
//! The metadata directory holds only trusted metadata, one file per role,
//! named `<role>.json` (delegated role names percent-encoded), stored
//! byte-for-byte as received and verified. Anything ferry keeps for itself
//! (the secure time floor) lives outside it.
//!
//! The order of requests is the specification's: `N+1.root.json` until a
//! 404/403, `timestamp.json`, `snapshot.json` (versioned with consistent
//! snapshots), `targets.json`, then delegated roles only when a target
//! lookup walks to them (§5.6.7, preorder depth-first, at most 32 roles).

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::meta::{
    self, Envelope, Hasher, Invalid, KeyRing, MetaFile, RoleKeys, Root, Snapshot, TargetFile,
    Targets, Timestamp,
};
use super::transport::{self, FetchError, Timeouts, Transport};
use ferry_fs as fsutil;

/// Size bounds on metadata (an endless-data attack is cut off here).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
    pub max_root_rotations: u64,
    pub max_delegations: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            root: 512 * 1024,
            timestamp: 16 * 1024,
            snapshot: 2_000_000,
            targets: 5_000_000,
            max_root_rotations: 32,
            max_delegations: 32,
        }
    }
}

/// Where a client reads and writes.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub metadata_url: String,
    pub targets_url: String,
    pub metadata_dir: PathBuf,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

#[derive(Debug, thiserror::Error)]
pub enum TufError {
    /// Metadata that does not verify: named by role and version.
    #[error("{role}{}: {reason}", version.map(|v| format!(" v{v}")).unwrap_or_default())]
    Refused {
        role: String,
        version: Option<u64>,
        reason: String,
    },
    /// A target that does not match its signed length or hashes.
    #[error("target {name}: {reason}")]
    BadTarget { name: String, reason: String },
    #[error("target {name}: not listed by any trusted targets role")]
    UnknownTarget { name: String },
    // The inner errors are part of the message, not a `#[source]`, so that
    // error chains do not print them twice.
    #[error("fetching {role}: {error}")]
    Fetch { role: String, error: FetchError },
    #[error("{what}: {error}")]
    Local { what: String, error: io::Error },
}

impl TufError {
    fn refused(role: &str, version: Option<u64>, reason: impl std::fmt::Display) -> Self {
        TufError::Refused {
            role: role.to_owned(),
            version,
            reason: reason.to_string(),
        }
    }

    /// Whether the repository (not this machine) is at fault.
    pub fn is_untrusted_input(&self) -> bool {
        match self {
            TufError::Local { .. } => false,
            // An unreachable or failing server is not a verdict on content;
            // endless data is.
            TufError::Fetch { error, .. } => matches!(error, FetchError::TooLarge { .. }),
            _ => true,
        }
    }

    /// The source's error for this one: verification failures and endless
    /// data are `Untrusted` (with the role and version for the audit
    /// journal), an unreachable server is `Unavailable`, a local failure
    /// is `Io`.
    pub fn into_source_error(self, source_name: &str) -> ferry_source::SourceError {
        use ferry_source::SourceError;
        let untrusted =
            |what: String, reason: String| SourceError::untrusted(source_name, what, reason);
        match self {
            TufError::Refused {
                role,
                version,
                reason,
            } => {
                let what = format!(
                    "{role}{}",
                    version.map(|v| format!(" v{v}")).unwrap_or_default()
                );
                let mut e = untrusted(what, reason);
                if let SourceError::Untrusted(u) = &mut e {
                    u.details.insert("role".into(), role.into());
                    u.details.insert("version".into(), version.into());
                }
                e
            }
            TufError::BadTarget { name, reason } => untrusted(format!("target {name}"), reason),
            TufError::UnknownTarget { name } => untrusted(
                format!("target {name}"),
                "not listed by any trusted targets role".to_owned(),
            ),
            TufError::Fetch { role, error } if matches!(error, FetchError::TooLarge { .. }) => {
                untrusted(format!("fetching {role}"), error.to_string())
            }
            TufError::Fetch { role, error } => SourceError::Unavailable {
                source_name: source_name.to_owned(),
                message: format!("fetching {role}: {error}"),
            },
            TufError::Local { what, error } => SourceError::Io {
                source_name: source_name.to_owned(),
                what,
                source: error,
            },
        }
    }

    /// The role the error is about, if any.
    pub fn role(&self) -> Option<&str> {
        match self {
            TufError::Refused { role, .. } | TufError::Fetch { role, .. } => Some(role),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, TufError>;

/// A verified targets role and the keys that signed it.
#[derive(Debug)]
struct TrustedTargets {
    targets: Targets,
    signers: Vec<String>,
    /// The bytes as verified, to verify them again for another delegator.
    bytes: Vec<u8>,
    /// The delegators whose keys verified it. A role reached through a
    /// second delegator (a diamond) is verified again with that one's keys:
    /// it must not inherit authority from an earlier search path.
    verified_by: Vec<String>,
}

/// A target found in trusted metadata.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    pub name: String,
    pub file: TargetFile,
    /// The role that listed it, and the key ids that signed that role.
    pub role: String,
    pub signers: Vec<String>,
}

/// The trusted metadata of one refresh.
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    transport: Transport,
    now: i64,
    root: Root,
    timestamp: Option<Timestamp>,
    snapshot: Option<Snapshot>,
    targets: HashMap<String, TrustedTargets>,
}

/// `init`: installs `root` as the trusted root of `metadata_dir`. No network.
pub fn init(metadata_dir: &Path, root: &[u8]) -> Result<()> {
    std::fs::create_dir_all(metadata_dir).map_err(|source| TufError::Local {
        what: format!("creating {}", metadata_dir.display()),
        error: source,
    })?;
    persist(metadata_dir, "root", root)
}

fn role_file(dir: &Path, role: &str) -> PathBuf {
    dir.join(format!("{}.json", transport::quote_all(role)))
}

fn persist(dir: &Path, role: &str, bytes: &[u8]) -> Result<()> {
    let path = role_file(dir, role);
    fsutil::write_atomic(&path, 0o644, &mut &bytes[..]).map_err(|source| TufError::Local {
        what: format!("writing {}", path.display()),
        error: source,
    })?;
    Ok(())
}

fn read_local(dir: &Path, role: &str) -> Option<Vec<u8>> {
    std::fs::read(role_file(dir, role)).ok()
}

impl Client {
    /// Loads the trusted root from the metadata directory and checks that it
    /// is signed by its own threshold (§5.2). `now` is the reference time for
    /// every expiry check (the caller applies the secure time floor).
    pub fn load(cfg: ClientConfig, now: i64) -> Result<Client> {
        let urls = [cfg.metadata_url.as_str(), cfg.targets_url.as_str()];
        let transport = Transport::new(cfg.timeouts, &urls).map_err(|e| TufError::Fetch {
            role: "root".into(),
            error: e,
        })?;
        Self::load_with(cfg, now, transport)
    }

    /// [`Client::load`] with an existing transport (a long-running agent
    /// keeps one HTTP client across polls).
    pub fn load_with(cfg: ClientConfig, now: i64, transport: Transport) -> Result<Client> {
        let path = role_file(&cfg.metadata_dir, "root");
        let bytes = std::fs::read(&path).map_err(|source| TufError::Local {
            what: format!("reading the trusted root {}", path.display()),
            error: source,
        })?;
        let env = Envelope::parse(&bytes).map_err(|e| TufError::refused("root", None, e))?;
        let root = Root::parse(&env).map_err(|e| TufError::refused("root", None, e))?;
        env.verify(&root.keys, root.role("root"))
            .map_err(|e| TufError::refused("root", Some(root.version), e))?;
        Ok(Client {
            transport,
            cfg,
            now,
            root,
            timestamp: None,
            snapshot: None,
            targets: HashMap::new(),
        })
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn timestamp(&self) -> Option<&Timestamp> {
        self.timestamp.as_ref()
    }

    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The version of the top-level targets role, once loaded.
    pub fn targets_version(&self) -> Option<u64> {
        self.targets.get("targets").map(|t| t.targets.version)
    }

    /// §5.3–§5.6: root rotation, timestamp, snapshot, top-level targets.
    pub fn refresh(&mut self) -> Result<()> {
        self.update_root()?;
        self.update_timestamp()?;
        self.update_snapshot()?;
        self.load_targets("targets", "root")?;
        Ok(())
    }

    fn fetch_meta(&mut self, role: &str, version: Option<u64>, limit: u64) -> Result<Vec<u8>> {
        let name = match version {
            Some(v) => format!("{v}.{}.json", transport::quote_all(role)),
            None => format!("{}.json", transport::quote_all(role)),
        };
        let url = format!("{}{name}", transport::with_slash(&self.cfg.metadata_url));
        self.transport
            .fetch_bounded(&url, limit)
            .map_err(|source| TufError::Fetch {
                role: role.to_owned(),
                error: source,
            })
    }

    /// §5.3: walk root versions N+1, N+2, … until the repository has no more.
    fn update_root(&mut self) -> Result<()> {
        let first = self.root.version + 1;
        for v in first..first + self.cfg.limits.max_root_rotations {
            let bytes = match self.fetch_meta("root", Some(v), self.cfg.limits.root) {
                Ok(b) => b,
                Err(TufError::Fetch {
                    error: FetchError::NotFound { .. },
                    ..
                }) => break,
                Err(e) => return Err(e),
            };
            let env = Envelope::parse(&bytes).map_err(|e| TufError::refused("root", Some(v), e))?;
            let new = Root::parse(&env).map_err(|e| TufError::refused("root", Some(v), e))?;
            // §5.3.4: signed by a threshold of the trusted root's root keys…
            env.verify(&self.root.keys, self.root.role("root"))
                .map_err(|e| {
                    TufError::refused(
                        "root",
                        Some(new.version),
                        format!("not signed by trusted root v{}: {e}", self.root.version),
                    )
                })?;
            // §5.3.5: …that is exactly the next version…
            if new.version != v {
                return Err(TufError::refused(
                    "root",
                    Some(new.version),
                    format!("served as version {v} (version rollback or mix-up)"),
                ));
            }
            // …and by a threshold of its own root keys.
            env.verify(&new.keys, new.role("root")).map_err(|e| {
                TufError::refused("root", Some(v), format!("not signed by its own keys: {e}"))
            })?;
            persist(&self.cfg.metadata_dir, "root", &bytes)?;
            self.root = new;
        }
        // §5.3.10: the final root must not be expired.
        self.not_expired("root", self.root.version, self.root.expires)?;
        Ok(())
    }

    fn verify_timestamp(&self, bytes: &[u8]) -> std::result::Result<Timestamp, Invalid> {
        let env = Envelope::parse(bytes)?;
        let ts = Timestamp::parse(&env)?;
        env.verify(&self.root.keys, self.root.role("timestamp"))
            .map_err(|e| meta::Invalid(format!("v{}: {e}", ts.version)))?;
        Ok(ts)
    }

    /// §5.4. The trusted local timestamp (expired or not) is the reference
    /// for rollback checks; after a key rotation it no longer verifies and
    /// so stops being one (§5.3.11, fast-forward recovery).
    fn update_timestamp(&mut self) -> Result<()> {
        if let Some(bytes) = read_local(&self.cfg.metadata_dir, "timestamp")
            && let Ok(ts) = self.verify_timestamp(&bytes)
        {
            self.timestamp = Some(ts);
        }
        let bytes = self.fetch_meta("timestamp", None, self.cfg.limits.timestamp)?;
        let new = self.verify_timestamp(&bytes).map_err(|e| {
            // Name the version when the file is at least well-formed.
            TufError::refused("timestamp", None, e)
        })?;
        let mut keep_old = false;
        if let Some(old) = &self.timestamp {
            if new.version < old.version {
                return Err(TufError::refused(
                    "timestamp",
                    Some(new.version),
                    format!("version rollback: older than trusted v{}", old.version),
                ));
            }
            if new.version == old.version {
                // Same version: keep what is trusted, whatever the new bytes say.
                keep_old = true;
            } else if new.snapshot().version < old.snapshot().version {
                return Err(TufError::refused(
                    "timestamp",
                    Some(new.version),
                    format!(
                        "snapshot version rollback: names snapshot v{}, trusted timestamp named v{}",
                        new.snapshot().version,
                        old.snapshot().version
                    ),
                ));
            }
        }
        if !keep_old {
            self.timestamp = Some(new);
        }
        self.check_final_timestamp()?;
        if !keep_old {
            persist(&self.cfg.metadata_dir, "timestamp", &bytes)?;
        }
        Ok(())
    }

    /// Expiry against the reference time (§5.3.10, §5.4.4, §5.5.6, §5.6.6).
    fn not_expired(&self, role: &str, version: u64, expires: meta::Expires) -> Result<()> {
        if expires.is_expired(self.now) {
            return Err(TufError::refused(
                role,
                Some(version),
                format!("expired at {expires} (freeze attack?)"),
            ));
        }
        Ok(())
    }

    fn check_final_timestamp(&self) -> Result<&Timestamp> {
        let ts = self
            .timestamp
            .as_ref()
            .ok_or_else(|| TufError::refused("timestamp", None, "not loaded"))?;
        self.not_expired("timestamp", ts.version, ts.expires)?;
        Ok(ts)
    }

    fn verify_snapshot(&self, bytes: &[u8]) -> std::result::Result<Snapshot, Invalid> {
        let env = Envelope::parse(bytes)?;
        let s = Snapshot::parse(&env)?;
        env.verify(&self.root.keys, self.root.role("snapshot"))
            .map_err(|e| meta::Invalid(format!("v{}: {e}", s.version)))?;
        Ok(s)
    }

    /// Rollback checks of a new snapshot against the trusted one (§5.5.5).
    fn accept_snapshot(&mut self, new: Snapshot) -> Result<()> {
        if let Some(old) = &self.snapshot {
            for (name, info) in &old.meta {
                match new.meta.get(name) {
                    None => {
                        return Err(TufError::refused(
                            "snapshot",
                            Some(new.version),
                            format!("drops {name}, listed by trusted snapshot v{}", old.version),
                        ));
                    }
                    Some(n) if n.version < info.version => {
                        return Err(TufError::refused(
                            "snapshot",
                            Some(new.version),
                            format!(
                                "version rollback of {name}: v{} < trusted v{}",
                                n.version, info.version
                            ),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        self.snapshot = Some(new);
        Ok(())
    }

    fn check_final_snapshot(&self) -> Result<&Snapshot> {
        let ts = self.check_final_timestamp()?;
        let s = self
            .snapshot
            .as_ref()
            .ok_or_else(|| TufError::refused("snapshot", None, "not loaded"))?;
        self.not_expired("snapshot", s.version, s.expires)?;
        if s.version != ts.snapshot().version {
            return Err(TufError::refused(
                "snapshot",
                Some(s.version),
                format!(
                    "timestamp v{} names snapshot v{} (mix-and-match?)",
                    ts.version,
                    ts.snapshot().version
                ),
            ));
        }
        Ok(s)
    }

    /// §5.5. A trusted local snapshot that is still the final one avoids the
    /// download; an older one stays the reference for rollback checks.
    fn update_snapshot(&mut self) -> Result<()> {
        self.check_final_timestamp()?;
        if let Some(bytes) = read_local(&self.cfg.metadata_dir, "snapshot")
            && let Ok(s) = self.verify_snapshot(&bytes)
            && self.accept_snapshot(s).is_ok()
            && self.check_final_snapshot().is_ok()
        {
            return Ok(());
        }
        let info: MetaFile = self.check_final_timestamp()?.snapshot().clone();
        let version = self.root.consistent_snapshot.then_some(info.version);
        let limit = info.length.unwrap_or(self.cfg.limits.snapshot);
        let bytes = self.fetch_meta("snapshot", version, limit)?;
        meta::check_meta_bytes(&info, &bytes).map_err(|e| {
            TufError::refused(
                "snapshot",
                Some(info.version),
                format!("does not match timestamp: {e}"),
            )
        })?;
        let new = self
            .verify_snapshot(&bytes)
            .map_err(|e| TufError::refused("snapshot", None, e))?;
        self.accept_snapshot(new)?;
        self.check_final_snapshot()?;
        persist(&self.cfg.metadata_dir, "snapshot", &bytes)?;
        Ok(())
    }

    /// The keys that may sign `role`, as delegated by `parent`.
    fn delegator_keys(&self, role: &str, parent: &str) -> Result<(&KeyRing, &RoleKeys)> {
        if parent == "root" {
            return Ok((&self.root.keys, self.root.role(role)));
        }
        let p = self.targets.get(parent).ok_or_else(|| {
            TufError::refused(role, None, format!("delegator {parent} not loaded"))
        })?;
        let d = p.targets.delegations.as_ref().ok_or_else(|| {
            TufError::refused(role, None, format!("{parent} delegates to no role"))
        })?;
        let keys = d.role_keys(role).ok_or_else(|| {
            TufError::refused(role, None, format!("{parent} does not delegate to it"))
        })?;
        Ok((&d.keys, keys))
    }

    /// The final snapshot and its entry for `role` (§5.6.1: a delegated role
    /// that snapshot does not list is refused).
    fn snapshot_entry(&self, role: &str, parent: &str) -> Result<(&Snapshot, &MetaFile)> {
        let s = self.check_final_snapshot()?;
        let info = s.meta.get(&format!("{role}.json")).ok_or_else(|| {
            TufError::refused(
                role,
                None,
                format!(
                    "delegated by {parent} but not listed in snapshot v{}",
                    s.version
                ),
            )
        })?;
        Ok((s, info))
    }

    fn verify_targets(&self, role: &str, parent: &str, bytes: &[u8]) -> Result<TrustedTargets> {
        let (s, info) = self.snapshot_entry(role, parent)?;
        meta::check_meta_bytes(info, bytes).map_err(|e| {
            TufError::refused(
                role,
                Some(info.version),
                format!("does not match snapshot: {e}"),
            )
        })?;
        let env = Envelope::parse(bytes).map_err(|e| TufError::refused(role, None, e))?;
        let targets = Targets::parse(&env).map_err(|e| TufError::refused(role, None, e))?;
        let (keys, role_keys) = self.delegator_keys(role, parent)?;
        let signers = env
            .verify(keys, role_keys)
            .map_err(|e| TufError::refused(role, Some(targets.version), e))?;
        if targets.version != info.version {
            return Err(TufError::refused(
                role,
                Some(targets.version),
                format!(
                    "snapshot v{} names version {} (rollback or mix-and-match)",
                    s.version, info.version
                ),
            ));
        }
        self.not_expired(role, targets.version, targets.expires)?;
        Ok(TrustedTargets {
            targets,
            signers,
            bytes: bytes.to_vec(),
            verified_by: vec![parent.to_owned()],
        })
    }

    /// §5.6: loads `role` (delegated by `parent`) from the trusted local copy
    /// when it is still the one snapshot names, else from the repository.
    fn load_targets(&mut self, role: &str, parent: &str) -> Result<()> {
        if let Some(cached) = self.targets.get(role) {
            if cached.verified_by.iter().any(|p| p == parent) {
                return Ok(());
            }
            // §5.6.7.2: metadata is verified against the delegating role on
            // the current path, whatever another path already accepted.
            let bytes = cached.bytes.clone();
            self.verify_targets(role, parent, &bytes)?;
            if let Some(cached) = self.targets.get_mut(role) {
                cached.verified_by.push(parent.to_owned());
            }
            return Ok(());
        }
        if let Some(bytes) = read_local(&self.cfg.metadata_dir, role)
            && let Ok(t) = self.verify_targets(role, parent, &bytes)
        {
            self.targets.insert(role.to_owned(), t);
            return Ok(());
        }
        let info = self.snapshot_entry(role, parent)?.1.clone();
        let version = self.root.consistent_snapshot.then_some(info.version);
        let limit = info.length.unwrap_or(self.cfg.limits.targets);
        let bytes = self.fetch_meta(role, version, limit)?;
        let t = self.verify_targets(role, parent, &bytes)?;
        persist(&self.cfg.metadata_dir, role, &bytes)?;
        self.targets.insert(role.to_owned(), t);
        Ok(())
    }

    /// §5.6.7: finds `name` by a preorder depth-first walk of the
    /// delegations, fetching delegated roles only as the walk reaches them.
    pub fn target_info(&mut self, name: &str) -> Result<Option<TargetInfo>> {
        let mut to_visit: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut visited: Vec<(String, String)> = Vec::new();
        let mut budget = self.cfg.limits.max_delegations;
        while budget > 0 {
            let Some((role, parent)) = to_visit.pop() else {
                break;
            };
            if visited.contains(&(role.clone(), parent.clone())) {
                continue;
            }
            self.load_targets(&role, &parent)?;
            let trusted = &self.targets[&role];
            if let Some(file) = trusted.targets.targets.get(name) {
                return Ok(Some(TargetInfo {
                    name: name.to_owned(),
                    file: file.clone(),
                    role: role.clone(),
                    signers: trusted.signers.clone(),
                }));
            }
            budget -= 1;
            let mut children = Vec::new();
            if let Some(d) = &trusted.targets.delegations {
                for (child, terminating) in d.roles_for(name) {
                    children.push((child, role.clone()));
                    if terminating {
                        // §5.6.7.2.1: a terminating delegation ends the search
                        // after its own subtree.
                        to_visit.clear();
                        break;
                    }
                }
            }
            visited.push((role, parent));
            children.reverse();
            to_visit.extend(children);
        }
        Ok(None)
    }

    /// The earliest expiry of the metadata trusted so far (root, timestamp,
    /// snapshot and the targets roles loaded).
    pub fn earliest_expiry(&self) -> i64 {
        let mut t = self.root.expires.0;
        if let Some(ts) = &self.timestamp {
            t = t.min(ts.expires.0);
        }
        if let Some(s) = &self.snapshot {
            t = t.min(s.expires.0);
        }
        for r in self.targets.values() {
            t = t.min(r.targets.expires.0);
        }
        t
    }

    /// The names of every target listed by the top-level targets role and
    /// the roles it delegates to by name (loading them), sorted. Hash-bin
    /// delegations are not enumerated.
    pub fn all_target_names(&mut self) -> Result<Vec<String>> {
        let mut names = std::collections::BTreeSet::new();
        let mut to_visit: Vec<(String, String)> = vec![("targets".into(), "root".into())];
        let mut visited = std::collections::HashSet::new();
        let mut budget = self.cfg.limits.max_delegations;
        while let Some((role, parent)) = to_visit.pop() {
            if budget == 0 {
                break;
            }
            if !visited.insert(role.clone()) {
                continue;
            }
            budget -= 1;
            self.load_targets(&role, &parent)?;
            let trusted = &self.targets[&role];
            names.extend(trusted.targets.targets.keys().cloned());
            if let Some(d) = &trusted.targets.delegations {
                for child in d.roles.iter().flatten() {
                    to_visit.push((child.name.clone(), role.clone()));
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The roles loaded so far with their versions (`targets` and the
    /// delegated roles the lookups reached).
    pub fn loaded_roles(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .targets
            .iter()
            .map(|(name, t)| (name.clone(), t.targets.version))
            .collect();
        v.sort();
        v
    }

    /// `VERSION.root.json` as the repository serves it, if it does.
    pub fn fetch_root_version(&mut self, version: u64) -> Result<Option<Vec<u8>>> {
        match self.fetch_meta("root", Some(version), self.cfg.limits.root) {
            Ok(b) => Ok(Some(b)),
            Err(TufError::Fetch {
                error: FetchError::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The verified bytes of `role` as this refresh stored them.
    pub fn stored_role(&self, role: &str) -> Result<Vec<u8>> {
        let path = role_file(&self.cfg.metadata_dir, role);
        std::fs::read(&path).map_err(|source| TufError::Local {
            what: format!("reading {}", path.display()),
            error: source,
        })
    }

    /// A target's path below the targets URL, as stored on disk (decoded;
    /// with the hash prefix under consistent snapshots).
    pub fn target_file_path(&self, info: &TargetInfo) -> String {
        match (self.root.consistent_snapshot, info.file.hashes.0.first()) {
            (true, Some((_, hash))) => match info.name.rsplit_once('/') {
                Some((dir, file)) => format!("{dir}/{hash}.{file}"),
                None => format!("{hash}.{}", info.name),
            },
            _ => info.name.clone(),
        }
    }

    /// The URL of a target: `dirname/HASH.basename` with consistent
    /// snapshots (§5.7.3), using the first hash the metadata lists.
    pub fn target_url(&self, info: &TargetInfo) -> String {
        let base = transport::with_slash(&self.cfg.targets_url);
        format!(
            "{base}{}",
            transport::quote_path(&self.target_file_path(info))
        )
    }

    /// Streams a target from byte `offset` on. The reader fails with
    /// `InvalidData` as soon as more than the signed length arrives, and at
    /// the end when the length or (for `offset == 0`) any hash differs.
    ///
    /// `sha256_checked_by_caller`: the caller streams into a store that
    /// enforces the signed sha256 and length itself, so this reader skips
    /// its own sha256 pass (other listed hashes are still checked here).
    pub fn open_target(
        &mut self,
        info: &TargetInfo,
        offset: u64,
        sha256_checked_by_caller: bool,
    ) -> Result<TargetReader<Box<dyn Read + Send>>> {
        let url = self.target_url(info);
        let remaining = info.file.length.saturating_sub(offset);
        let inner = self
            .transport
            .open_sized(&url, offset, remaining)
            .map_err(|source| TufError::Fetch {
                role: format!("target {}", info.name),
                error: source,
            })?;
        let mut r = TargetReader::new(inner, info, offset);
        if sha256_checked_by_caller {
            r.skip_sha256();
        }
        Ok(r)
    }
}

/// Enforces a target's signed length and hashes on the bytes streaming by.
#[derive(Debug)]
pub struct TargetReader<R> {
    inner: R,
    name: String,
    expected: TargetFile,
    seen: u64,
    hasher: Option<Hasher>,
    skip_sha256: bool,
    done: bool,
}

impl<R: Read> TargetReader<R> {
    pub fn new(inner: R, info: &TargetInfo, offset: u64) -> Self {
        TargetReader {
            inner,
            name: info.name.clone(),
            seen: offset,
            hasher: (offset == 0).then(|| Hasher::new(info.file.hashes.get("sha512").is_some())),
            expected: info.file.clone(),
            skip_sha256: false,
            done: false,
        }
    }

    /// Leaves the sha256 check to the consumer (see `Client::open_target`).
    pub fn skip_sha256(&mut self) {
        if self.expected.hashes.get("sha256").is_none() {
            return;
        }
        self.skip_sha256 = true;
        let others = self.expected.hashes.0.iter().any(|(a, _)| a != "sha256");
        if !others {
            self.hasher = None;
        } else if let Some(h) = &mut self.hasher {
            h.skip_sha256();
        }
    }

    fn fail(&self, reason: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            TufError::BadTarget {
                name: self.name.clone(),
                reason,
            },
        )
    }
}

impl<R: Read> Read for TargetReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        // Ask for one byte beyond the signed length so excess is noticed.
        let room = (self.expected.length - self.seen.min(self.expected.length)) + 1;
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.seen += n as u64;
        if self.seen > self.expected.length {
            return Err(self.fail(format!(
                "longer than its signed length of {} bytes",
                self.expected.length
            )));
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        if n == 0 {
            self.done = true;
            if self.seen != self.expected.length {
                return Err(self.fail(format!(
                    "{} bytes where {} were signed",
                    self.seen, self.expected.length
                )));
            }
            if let Some(h) = self.hasher.take() {
                let mut hashes = self.expected.hashes.clone();
                if self.skip_sha256 {
                    hashes.0.retain(|(a, _)| a != "sha256");
                }
                meta::check_hashes(&hashes, &h.finish()).map_err(|e| self.fail(e.0))?;
            }
        }
        Ok(n)
    }
}

/// Checks a file already on disk against a target's length and hashes.
pub fn matches_target(path: &Path, file: &TargetFile) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let info = TargetInfo {
        name: String::new(),
        file: file.clone(),
        role: String::new(),
        signers: Vec::new(),
    };
    let mut r = TargetReader::new(f, &info, 0);
    io::copy(&mut r, &mut io::sink()).is_ok()
}
