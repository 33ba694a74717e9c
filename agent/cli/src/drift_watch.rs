//! The agent's inotify watch on everything a drift check reads (managed
//! files under `files.root`, rule sets' and modules' store blobs, and the
//! directories above them), so that
//!
//! - a poll that finds the watch quiet tells its reconcile to skip the
//!   `lstat` pass over every managed file ([`Mode::Quiet`]): nothing it
//!   would look at changed since the last full check began;
//! - a change to a file whose drift policy is `restore` starts a reconcile
//!   at once ([`Msg::Drift`]), so a hand edit is put back within seconds
//!   rather than at the next poll.
//!
//! The reconcile process names the paths (`state_dir/watch.json`, written
//! when the agent asks with [`ENV`]`=list`), so the agent itself never
//! opens the state database. A full check still runs at least every
//! `agent.drift_interval`: inotify does not see writes through a hard link
//! in another directory, through a shared memory mapping, or on another
//! mount of the same filesystem. The watch is only a hint to skip work;
//! anything it cannot cover (too many directories, the kernel's watch
//! limit, an overflowed event queue, a watched directory removed or
//! replaced) means a full check at every poll until it is armed again.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read as _;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ferry_core::drift::WatchList;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::shared::Msg;

/// Set by the agent in its reconcile process: `quiet` or `list`.
pub const ENV: &str = "FERRY_DRIFT_WATCH";
/// Where a reconcile asked for it writes the paths to watch.
pub const FILE: &str = "watch.json";
/// More directories than this are not watched (a full check every poll).
const MAX_DIRS: usize = 8192;
/// The largest `watch.json` read (10,000 paths take about 1 MiB).
const MAX_LIST: u64 = 64 << 20;
/// Events read per wake-up at most (4 KiB each); more wait for the next.
const MAX_READS: usize = 256;
/// How long a burst of changes may go on before the reconcile starts.
const SETTLE: Duration = Duration::from_millis(500);
/// The least time between two reconciles a change started.
const MIN_GAP: Duration = Duration::from_secs(10);
/// Lines of `/proc/locks` read at most for one look.
const MAX_LOCK_LINES: usize = 100_000;
/// How long a change waits for another ferry process to finish.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// What a reconcile is told about the watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A full drift check (no watch, or it saw something, or one is due).
    Check,
    /// A full check, and write the paths to watch: the watch is not armed
    /// for the current generation.
    List,
    /// The watch saw nothing since before the last full check.
    Quiet,
}

impl Mode {
    /// The value of [`ENV`] for the reconcile process.
    pub fn env(self) -> Option<&'static str> {
        match self {
            Mode::Check => None,
            Mode::List => Some("list"),
            Mode::Quiet => Some("quiet"),
        }
    }
}

/// One name inside a watched directory.
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// A managed path itself (else a directory on the way to some).
    leaf: bool,
    /// A `restore` path is it or lies below it.
    restore: bool,
}

struct Armed {
    inotify: Arc<Inotify>,
    dirs: HashMap<WatchDescriptor, HashMap<OsString, Entry>>,
    generation: u64,
    paths: usize,
    /// `state_dir/current` as it was when armed: a change that came with a
    /// switch another process made (`ferry import`, `rollback`) is that
    /// switch, not a hand edit to put back.
    current: Option<LinkId>,
}

/// A symlink as written: a switch writes a new one (a new inode) even when
/// it points where an older one did (a rollback).
type LinkId = (u64, i64, i64);

fn link_id(path: &Path) -> Option<LinkId> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.ino(), m.ctime(), m.ctime_nsec()))
}

impl Armed {
    fn switched(&self, state_dir: &Path) -> bool {
        link_id(&state_dir.join("current")) != self.current
    }
}

/// Whether a ferry process holds `state_dir/lock` (an operator's `apply`,
/// `import`, `rollback`), read from `/proc/locks` without taking the lock
/// (trying it could make that command fail as locked).
fn locked(state_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(state_dir.join("lock")) else {
        return false;
    };
    let dev = meta.dev();
    // glibc's gnu_dev_major / gnu_dev_minor.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    std::fs::File::open("/proc/locks").is_ok_and(|f| lists_lock(std::io::BufReader::new(f), &id))
}

/// Whether `/proc/locks` text lists a lock on `id` (`MAJOR:MINOR:INODE`),
/// read a line at a time and no further than [`MAX_LOCK_LINES`]: any local
/// user can take byte-range locks by the million. Past that: not known to
/// be locked (a reconcile started then fails as locked, harmlessly).
fn lists_lock(text: impl std::io::BufRead, id: &str) -> bool {
    text.lines()
        .take(MAX_LOCK_LINES)
        .map_while(Result::ok)
        .any(|l| l.split_whitespace().any(|f| f == id))
}

#[derive(Default)]
struct State {
    /// `agent.drift_watch`.
    enabled: bool,
    armed: Option<Armed>,
    /// Something watched changed since the last check began.
    dirty: bool,
    /// A change to put back: reconcile without waiting for the poll.
    trigger: bool,
    /// The watch no longer covers every path: list again.
    broken: bool,
    /// A full check ran entirely after the watch was armed.
    verified: bool,
    /// A reconcile is running (its own writes start no other).
    busy: bool,
    last_check: Option<Instant>,
    /// The generation arming failed for (not tried again for it) and why.
    failed: Option<(u64, String)>,
}

/// See the module documentation.
pub struct DriftWatch {
    /// The agent's state directory (it cannot change while it runs).
    state_dir: PathBuf,
    state: Mutex<State>,
}

/// What arming needs: the directories to watch and their names.
type Tree = HashMap<PathBuf, HashMap<OsString, Entry>>;

/// The directories between each root and each path, with the names in
/// them that lead to a path.
fn tree(list: &WatchList) -> Result<Tree, String> {
    let mut tree = Tree::new();
    for p in &list.paths {
        let Some(root) = list
            .roots
            .iter()
            .filter(|r| p.path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
        else {
            return Err(format!("{} is under no watched root", p.path.display()));
        };
        let rel = p.path.strip_prefix(root).unwrap_or(Path::new(""));
        let parts: Vec<_> = rel.iter().collect();
        let mut dir = root.clone();
        for (i, part) in parts.iter().enumerate() {
            let e = tree
                .entry(dir.clone())
                .or_default()
                .entry(part.to_os_string())
                .or_default();
            e.leaf |= i + 1 == parts.len();
            e.restore |= p.restore;
            dir.push(part);
        }
        if tree.len() > MAX_DIRS {
            return Err(format!(
                "the managed paths lie in more than {MAX_DIRS} directories"
            ));
        }
    }
    Ok(tree)
}

fn arm(list: &WatchList, state_dir: &Path) -> Result<Armed, String> {
    let tree = tree(list)?;
    let current = link_id(&state_dir.join("current"));
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| format!("inotify_init: {e}"))?;
    let mask = AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
        | AddWatchFlags::IN_DONT_FOLLOW;
    let mut dirs: HashMap<WatchDescriptor, HashMap<OsString, Entry>> = HashMap::new();
    for (dir, names) in tree {
        match inotify.add_watch(&dir, mask) {
            Ok(wd) => {
                // Two paths to one directory (a bind mount) share a watch.
                let known = dirs.entry(wd).or_default();
                for (name, e) in names {
                    let k = known.entry(name).or_default();
                    k.leaf |= e.leaf;
                    k.restore |= e.restore;
                }
            }
            // Missing (deleted drift): the watch on the directory above
            // sees it come back, and the watch is armed again then.
            Err(Errno::ENOENT) => {}
            Err(Errno::ENOSPC) => {
                return Err(format!(
                    "the kernel's inotify watch limit is reached (fs.inotify.max_user_watches) at {}",
                    dir.display()
                ));
            }
            Err(e) => return Err(format!("watching {}: {e}", dir.display())),
        }
    }
    Ok(Armed {
        inotify: Arc::new(inotify),
        dirs,
        generation: list.generation,
        paths: list.paths.len(),
        current,
    })
}

/// Reads `watch.json` (bounded; the state directory is the agent's own).
fn read_list(state_dir: &Path) -> Result<WatchList, String> {
    let path = state_dir.join(FILE);
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_LIST + 1).read_to_end(&mut text))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_LIST {
        return Err(format!(
            "{} is larger than {MAX_LIST} bytes",
            path.display()
        ));
    }
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl DriftWatch {
    /// A watch for the agent with `state_dir`; `enabled` false: every
    /// reconcile checks in full.
    pub fn new(enabled: bool, state_dir: PathBuf) -> DriftWatch {
        DriftWatch {
            state_dir,
            state: Mutex::new(State {
                enabled,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the next reconcile is told, with the agent at `generation` and
    /// a full check due every `full_every`.
    pub fn next_mode(&self, generation: Option<u64>, full_every: Duration) -> Mode {
        let s = self.lock();
        if !s.enabled {
            return Mode::Check;
        }
        let armed_for = s.armed.as_ref().map(|a| a.generation);
        if s.failed.as_ref().is_some_and(|f| Some(f.0) == generation) {
            return Mode::Check;
        }
        // Unknown (the agent's first reconcile): whatever it leaves.
        if s.broken || armed_for.is_none() || armed_for != generation {
            return Mode::List;
        }
        let due = s.last_check.is_none_or(|t| t.elapsed() >= full_every);
        if s.verified && !s.dirty && !due {
            Mode::Quiet
        } else {
            Mode::Check
        }
    }

    /// A reconcile told `mode` starts: what it checks starts from here.
    pub fn begin(&self, mode: Mode) {
        let mut s = self.lock();
        s.busy = true;
        s.trigger = false;
        if mode != Mode::Quiet {
            s.dirty = false;
        }
    }

    /// The reconcile ended (`ok`: it checked; the agent is now at
    /// `generation`). After [`Mode::List`] the watch is armed from
    /// `state_dir/watch.json`.
    pub fn end(&self, mode: Mode, ok: bool, generation: Option<u64>) {
        let state_dir = &self.state_dir;
        // Everything the reconcile changed is queued by now: what it wrote
        // itself starts no other reconcile (but is looked at by the next).
        let armed = self.lock().armed.as_ref().map(|a| a.inotify.clone());
        if let Some(inotify) = armed {
            self.drain(&inotify);
        }
        let mut s = self.lock();
        s.busy = false;
        s.trigger = false;
        if !ok {
            s.verified = false;
            return;
        }
        match mode {
            // Nothing applied yet: nothing to watch.
            Mode::List if generation.is_none() => {}
            Mode::List => {
                s.verified = false;
                s.armed = None;
                let armed = read_list(state_dir).and_then(|list| {
                    if Some(list.generation) != generation {
                        return Err(format!(
                            "{FILE} describes generation {}, not the current one",
                            list.generation
                        ));
                    }
                    arm(&list, state_dir)
                });
                match armed {
                    Ok(a) => {
                        tracing::debug!(
                            paths = a.paths,
                            directories = a.dirs.len(),
                            "drift watch armed"
                        );
                        s.armed = Some(a);
                        s.broken = false;
                        s.dirty = false;
                        s.failed = None;
                    }
                    Err(why) => {
                        tracing::warn!(reason = %why, "drift watch off: every poll checks every managed file");
                        s.failed = generation.map(|g| (g, why));
                    }
                }
            }
            Mode::Check => {
                let current = s.armed.as_ref().map(|a| a.generation) == generation;
                s.verified = current && !s.broken;
                s.last_check = Some(Instant::now());
            }
            Mode::Quiet => {}
        }
    }

    /// Forgets the watch: the configuration was reloaded (paths may move);
    /// `enabled` is its `agent.drift_watch`.
    pub fn reset(&self, enabled: bool) {
        *self.lock() = State {
            enabled,
            ..State::default()
        };
    }

    /// For `ferry status`.
    pub fn describe(&self) -> String {
        let s = self.lock();
        if !s.enabled {
            return "off (agent.drift_watch = false)".into();
        }
        match (&s.armed, &s.failed) {
            (_, Some((_, why))) => format!("off: {why}"),
            (Some(a), None) => format!(
                "{} paths in {} directories{}",
                a.paths,
                a.dirs.len(),
                if s.dirty {
                    "; changed since the last check"
                } else {
                    ""
                }
            ),
            (None, None) => "not armed yet".into(),
        }
    }

    /// Reads what `inotify` has (if it is still the armed one); true when
    /// a change to put back was among it.
    fn drain(&self, inotify: &Arc<Inotify>) -> bool {
        let mut s = self.lock();
        let s = &mut *s;
        let Some(armed) = s
            .armed
            .as_ref()
            .filter(|a| Arc::ptr_eq(&a.inotify, inotify))
        else {
            return false;
        };
        let gone = AddWatchFlags::IN_Q_OVERFLOW
            | AddWatchFlags::IN_IGNORED
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_UNMOUNT;
        for _ in 0..MAX_READS {
            let events = match inotify.read_events() {
                Ok(ev) if !ev.is_empty() => ev,
                Ok(_) | Err(Errno::EAGAIN) => return s.trigger,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the drift watch");
                    s.broken = true;
                    s.dirty = true;
                    return s.trigger;
                }
            };
            for ev in events {
                if ev.mask.intersects(gone) {
                    s.broken = true;
                    s.dirty = true;
                    s.trigger = true;
                    continue;
                }
                let Some(e) = ev
                    .name
                    .as_ref()
                    .and_then(|n| armed.dirs.get(&ev.wd)?.get(n))
                else {
                    continue;
                };
                s.dirty = true;
                s.broken |= !e.leaf;
                s.trigger |= e.restore;
            }
        }
        // Still more: the next wake-up reads on.
        s.trigger
    }

    /// Runs the watch until the agent's worker is gone: waits on the armed
    /// inotify instance and sends [`Msg::Drift`] when a change to put back
    /// settled (at most one per [`MIN_GAP`], none while a reconcile runs).
    pub fn spawn(self: Arc<Self>, tx: mpsc::Sender<Msg>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("drift-watch".into())
            .spawn(move || {
                let mut last_sent: Option<Instant> = None;
                loop {
                    let inotify = self.lock().armed.as_ref().map(|a| a.inotify.clone());
                    let Some(inotify) = inotify else {
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    };
                    let mut fds = [nix::poll::PollFd::new(
                        inotify.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    match nix::poll::poll(&mut fds, 1000u16) {
                        Ok(n) if n > 0 => {}
                        Ok(_) | Err(Errno::EINTR) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "drift watch stopped");
                            return;
                        }
                    }
                    if !self.drain(&inotify) {
                        continue;
                    }
                    // Let an editor's burst of writes finish.
                    std::thread::sleep(SETTLE);
                    self.drain(&inotify);
                    if let Some(wait) = last_sent.and_then(|t| MIN_GAP.checked_sub(t.elapsed())) {
                        std::thread::sleep(wait);
                    }
                    // Another ferry process at work: see what it did first.
                    let since = Instant::now();
                    while locked(&self.state_dir) && since.elapsed() < LOCK_WAIT {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    let send = {
                        let mut s = self.lock();
                        let switched = s
                            .armed
                            .as_ref()
                            .is_some_and(|a| a.switched(&self.state_dir));
                        // Listed again by the next poll.
                        s.broken |= switched;
                        let send = s.trigger && !s.busy && !switched;
                        s.trigger = false;
                        send
                    };
                    if send {
                        last_sent = Some(Instant::now());
                        if tx.send(Msg::Drift).is_err() {
                            return;
                        }
                    }
                }
            })
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::drift::WatchPath;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        state: PathBuf,
        watch: DriftWatch,
    }

    /// `root/etc/app/{a,b}.conf` (a restored, b reported) and an
    /// unmanaged `root/etc/app/other`, watched for generation 1.
    fn armed() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        std::fs::create_dir_all(root.join("etc/app")).expect("mkdir");
        std::fs::create_dir_all(&state).expect("mkdir");
        for f in ["a.conf", "b.conf", "other"] {
            std::fs::write(root.join("etc/app").join(f), "x").expect("write");
        }
        let list = WatchList {
            generation: 1,
            roots: vec![root.clone()],
            paths: vec![
                WatchPath {
                    path: root.join("etc/app/a.conf"),
                    restore: true,
                },
                WatchPath {
                    path: root.join("etc/app/b.conf"),
                    restore: false,
                },
            ],
        };
        std::fs::write(state.join(FILE), serde_json::to_vec(&list).expect("json")).expect("list");
        let watch = DriftWatch::new(true, state.clone());
        assert_eq!(
            watch.next_mode(Some(1), Duration::from_secs(60)),
            Mode::List
        );
        watch.begin(Mode::List);
        watch.end(Mode::List, true, Some(1));
        // The first check after arming makes it trusted.
        assert_eq!(
            watch.next_mode(Some(1), Duration::from_secs(60)),
            Mode::Check
        );
        watch.begin(Mode::Check);
        watch.end(Mode::Check, true, Some(1));
        assert_eq!(
            watch.next_mode(Some(1), Duration::from_secs(60)),
            Mode::Quiet
        );
        Fixture {
            _dir: dir,
            root,
            state,
            watch,
        }
    }

    fn drained(f: &Fixture) -> bool {
        let ino = f
            .watch
            .lock()
            .armed
            .as_ref()
            .expect("armed")
            .inotify
            .clone();
        f.watch.drain(&ino)
    }

    fn mode(f: &Fixture) -> Mode {
        f.watch.next_mode(Some(1), Duration::from_secs(60))
    }

    #[test]
    fn an_edit_of_a_restored_file_ends_the_quiet_and_starts_a_reconcile() {
        let f = armed();
        std::fs::write(f.root.join("etc/app/a.conf"), "tampered").expect("write");
        assert!(drained(&f));
        assert_eq!(mode(&f), Mode::Check);
        // The check that follows makes it quiet again.
        f.watch.begin(Mode::Check);
        f.watch.end(Mode::Check, true, Some(1));
        assert_eq!(mode(&f), Mode::Quiet);
    }

    #[test]
    fn a_reported_file_ends_the_quiet_without_a_reconcile() {
        let f = armed();
        std::fs::write(f.root.join("etc/app/b.conf"), "rewritten").expect("write");
        assert!(!drained(&f));
        assert_eq!(mode(&f), Mode::Check);
    }

    #[test]
    fn an_unmanaged_neighbour_changes_nothing() {
        let f = armed();
        std::fs::write(f.root.join("etc/app/other"), "busy").expect("write");
        std::fs::write(f.root.join("etc/unrelated"), "busy").expect("write");
        assert!(!drained(&f));
        assert_eq!(mode(&f), Mode::Quiet);
    }

    #[test]
    fn mode_owner_and_deletion_are_changes() {
        use std::os::unix::fs::PermissionsExt as _;
        let f = armed();
        let a = f.root.join("etc/app/a.conf");
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert!(drained(&f));
        f.watch.begin(Mode::Check);
        f.watch.end(Mode::Check, true, Some(1));
        std::fs::remove_file(&a).expect("rm");
        assert!(drained(&f));
        assert_eq!(mode(&f), Mode::Check);
    }

    #[test]
    fn a_replaced_directory_lists_the_paths_again() {
        let f = armed();
        std::fs::rename(f.root.join("etc/app"), f.root.join("etc/app.old")).expect("mv");
        std::fs::create_dir(f.root.join("etc/app")).expect("mkdir");
        assert!(drained(&f));
        // The new directory is not watched: armed again after a full check.
        assert_eq!(mode(&f), Mode::List);
    }

    #[test]
    fn a_change_during_a_reconcile_is_checked_next_but_starts_nothing() {
        let f = armed();
        f.watch.begin(Mode::Quiet);
        std::fs::write(f.root.join("etc/app/a.conf"), "tampered").expect("write");
        drained(&f);
        f.watch.end(Mode::Quiet, true, Some(1));
        assert!(!f.watch.lock().trigger);
        assert_eq!(mode(&f), Mode::Check);
    }

    #[test]
    fn a_switch_another_process_made_starts_no_reconcile() {
        let f = armed();
        let switched = || {
            let s = f.watch.lock();
            s.armed.as_ref().is_some_and(|a| a.switched(&f.state))
        };
        assert!(!switched());
        std::os::unix::fs::symlink("generations/2", f.state.join("current")).expect("link");
        assert!(switched());
    }

    #[test]
    fn a_lock_another_process_holds_is_seen_without_taking_it() {
        let f = armed();
        assert!(!locked(&f.state));
        let held = std::fs::File::create(f.state.join("lock")).expect("lock");
        held.try_lock().expect("flock");
        assert!(locked(&f.state));
        drop(held);
        assert!(!locked(&f.state));
    }

    #[test]
    fn a_flood_of_other_locks_is_read_no_further_than_the_bound() {
        let line = "1: POSIX  ADVISORY  WRITE 4242 00:2a:99 0 0\n";
        let target = "2: FLOCK  ADVISORY  WRITE 4243 08:01:1234 0 EOF\n";
        let text = |before: usize| {
            let mut t = line.repeat(before);
            t.push_str(target);
            t
        };
        assert!(lists_lock(text(10).as_bytes(), "08:01:1234"));
        assert!(!lists_lock(text(10).as_bytes(), "08:01:123"));
        assert!(!lists_lock(text(MAX_LOCK_LINES).as_bytes(), "08:01:1234"));
        // An endless source ends too.
        let endless = std::io::BufReader::new(std::io::repeat(b'\n'));
        assert!(!lists_lock(endless, "08:01:1234"));
    }

    #[test]
    fn a_full_check_is_due_after_the_interval_and_after_a_switch() {
        let f = armed();
        assert_eq!(f.watch.next_mode(Some(1), Duration::ZERO), Mode::Check);
        assert_eq!(
            f.watch.next_mode(Some(2), Duration::from_secs(60)),
            Mode::List
        );
        // A failed reconcile proves nothing.
        f.watch.begin(Mode::Check);
        f.watch.end(Mode::Check, false, Some(1));
        assert_eq!(mode(&f), Mode::Check);
    }

    #[test]
    fn a_bad_or_stale_list_turns_the_watch_off_for_that_generation() {
        let f = armed();
        // Describes generation 1; the agent is at 2.
        f.watch.begin(Mode::List);
        f.watch.end(Mode::List, true, Some(2));
        assert!(
            f.watch.describe().contains("not the current one"),
            "{}",
            f.watch.describe()
        );
        assert_eq!(
            f.watch.next_mode(Some(2), Duration::from_secs(60)),
            Mode::Check
        );
        std::fs::write(f.state.join(FILE), "{not json").expect("write");
        f.watch.begin(Mode::List);
        f.watch.end(Mode::List, true, Some(3));
        assert!(f.watch.describe().contains(FILE), "{}", f.watch.describe());
        // A path outside every root is refused, not watched.
        let list = WatchList {
            generation: 4,
            roots: vec![f.root.clone()],
            paths: vec![WatchPath {
                path: "/etc/passwd".into(),
                restore: true,
            }],
        };
        assert!(tree(&list).unwrap_err().contains("/etc/passwd"));
    }

    #[test]
    fn too_many_directories_are_refused() {
        let list = WatchList {
            generation: 1,
            roots: vec!["/r".into()],
            paths: (0..=MAX_DIRS)
                .map(|i| WatchPath {
                    path: format!("/r/{i}/f").into(),
                    restore: true,
                })
                .collect(),
        };
        assert!(tree(&list).unwrap_err().contains("more than 8192"));
    }
}
