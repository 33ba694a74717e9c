//! File-system steps that neither a crash nor a local user can subvert.
//!
//! ferry writes into directories other users may be able to write to (a
//! managed `files.root`, the WASM data directory) and into its own state
//! directory, where a crash must leave the old or the new content, never a
//! mix. Two rules make both safe:
//!
//! - A directory is reached by walking its components from a trusted start
//!   with `openat(O_DIRECTORY | O_NOFOLLOW)`, and every later step works on
//!   the resulting descriptor. A symlink planted on the way is refused, not
//!   followed, and cannot be swapped in after the check.
//! - New content goes to an unpredictable temp name created with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW` in that directory, is fsynced, renamed
//!   over the destination, and the directory is fsynced. A symlink or FIFO
//!   planted under a temp name can neither redirect nor block the write.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Suffix of every temp file `Dir::write_atomic` creates.
pub const TEMP_SUFFIX: &str = ".ferry-tmp";
/// Bytes of the destination's name kept in a temp name (NAME_MAX is 255).
const TEMP_NAME_KEEP: usize = 200;
/// Hex digits of randomness in a temp name.
const TEMP_RANDOM_HEX: usize = 16;

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// An open directory, reached without following symlinks below its start.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a name in a directory is (`lstat`, never following a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub len: u64,
    /// Device and inode, and the modification and change times in
    /// nanoseconds: together they tell that a file was not touched since it
    /// was last read (`ctime` cannot be set by a user).
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Meta {
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    fn of(st: &rustix::fs::Stat) -> Meta {
        Meta {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            len: u64::try_from(st.st_size).unwrap_or(0),
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mtime_ns: (st.st_mtime as i64)
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_mtime_nsec as i64),
            ctime_ns: (st.st_ctime as i64)
                .saturating_mul(1_000_000_000)
                .saturating_add(st.st_ctime_nsec as i64),
        }
    }

    fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    pub fn is_file(&self) -> bool {
        self.file_type() == FileType::RegularFile
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == FileType::Symlink
    }

    /// Permission bits including setuid, setgid and sticky.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// A word for the file type, for messages.
    pub fn kind(&self) -> &'static str {
        match self.file_type() {
            FileType::RegularFile => "a regular file",
            FileType::Directory => "a directory",
            FileType::Symlink => "a symlink",
            FileType::Fifo => "a FIFO",
            FileType::Socket => "a socket",
            FileType::CharacterDevice => "a character device",
            FileType::BlockDevice => "a block device",
            FileType::Unknown => "of unknown type",
        }
    }
}

/// Permission bits and, optionally, owner of a file being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode {
    /// Applied after the owner, so setuid/setgid bits survive the `chown`.
    pub perm: u32,
    /// `(uid, gid)`; `None` keeps the writing process's.
    pub owner: Option<(u32, u32)>,
}

impl FileMode {
    pub fn perm(perm: u32) -> FileMode {
        FileMode { perm, owner: None }
    }
}

fn err(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, msg)
}

/// A single path component: not empty, no `/`, not `.` or `..`.
fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(err(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

/// The part of `name` a temp name starts with: `.<name>.` (name shortened).
fn temp_prefix(name: &OsStr) -> Vec<u8> {
    let b = name.as_bytes();
    let keep = &b[..b.len().min(TEMP_NAME_KEEP)];
    let mut p = Vec::with_capacity(keep.len() + 2);
    p.push(b'.');
    p.extend_from_slice(keep);
    p.push(b'.');
    p
}

/// Whether `entry` is a temp file of `write_atomic` for `name`.
fn is_temp_of(entry: &[u8], name: &OsStr) -> bool {
    let prefix = temp_prefix(name);
    entry.starts_with(&prefix)
        && entry
            .strip_suffix(TEMP_SUFFIX.as_bytes())
            .and_then(|rest| rest.get(prefix.len()..))
            .is_some_and(|mid| {
                mid.len() == TEMP_RANDOM_HEX && mid.iter().all(u8::is_ascii_hexdigit)
            })
}

/// Whether `entry` is a temp file of `write_atomic` (for any name).
pub fn is_temp(entry: &OsStr) -> bool {
    let b = entry.as_bytes();
    b.first() == Some(&b'.')
        && b.strip_suffix(TEMP_SUFFIX.as_bytes())
            .and_then(|rest| {
                rest.len()
                    .checked_sub(TEMP_RANDOM_HEX + 1)
                    .map(|i| &rest[i..])
            })
            .is_some_and(|tail| tail[0] == b'.' && tail[1..].iter().all(u8::is_ascii_hexdigit))
}

fn random_hex() -> io::Result<String> {
    let mut buf = [0u8; TEMP_RANDOM_HEX / 2];
    rustix::rand::getrandom(&mut buf, rustix::rand::GetRandomFlags::empty())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Dir {
    /// Opens `path` as a directory. Its last component must not be a
    /// symlink; the ones above it are trusted (configuration, state dir).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty()).map_err(|e| {
            if matches!(e, Errno::LOOP | Errno::NOTDIR) {
                not_a_dir(CWD, path.as_os_str(), path)
            } else {
                e.into()
            }
        })?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Creates `path` (and missing parents, with `mode`) and opens it.
    pub fn create(path: &Path, mode: u32) -> io::Result<Dir> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)?;
        Dir::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
        })
    }

    /// The directory `rel` below this one, each component opened with
    /// `O_NOFOLLOW`: a symlink or non-directory on the way is an error that
    /// names it. With `create`, missing directories are made with that mode
    /// (and their parents fsynced); without, a missing one yields `None`.
    /// `rel` must be relative and normalised (no `..`).
    pub fn open_beneath(&self, rel: &Path, create: Option<u32>) -> io::Result<Option<Dir>> {
        let mut cur: Option<Dir> = None;
        for c in rel.components() {
            let part = match c {
                Component::Normal(p) => p,
                Component::CurDir => continue,
                _ => {
                    return Err(err(
                        io::ErrorKind::InvalidInput,
                        format!("{} must be relative, without `..`", rel.display()),
                    ));
                }
            };
            let base = cur.as_ref().unwrap_or(self);
            let path = base.path.join(part);
            let fd = match rustix::fs::openat(&base.fd, part, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => match create {
                    None => return Ok(None),
                    Some(mode) => {
                        match rustix::fs::mkdirat(&base.fd, part, Mode::from_raw_mode(mode)) {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => return Err(e.into()),
                        }
                        rustix::fs::fsync(&base.fd)?;
                        rustix::fs::openat(&base.fd, part, DIR_FLAGS, Mode::empty()).map_err(
                            |e| {
                                if matches!(e, Errno::LOOP | Errno::NOTDIR) {
                                    not_a_dir(&base.fd, part, &path)
                                } else {
                                    e.into()
                                }
                            },
                        )?
                    }
                },
                Err(Errno::LOOP | Errno::NOTDIR) => return Err(not_a_dir(&base.fd, part, &path)),
                Err(e) => return Err(e.into()),
            };
            cur = Some(Dir { fd, path });
        }
        match cur {
            Some(d) => Ok(Some(d)),
            None => self.try_clone().map(Some),
        }
    }

    /// `lstat` of `name` in this directory; `None` when absent.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<Meta>> {
        check_name(name)?;
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::of(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the regular file `name` for reading; `None` when absent. A
    /// symlink, FIFO, device or directory there is an error naming it (a
    /// FIFO is never waited on, a device never opened).
    pub fn open_file(&self, name: &OsStr) -> io::Result<Option<(File, Meta)>> {
        let Some(before) = self.stat(name)? else {
            return Ok(None);
        };
        self.open_file_after(name, &before)
    }

    /// [`Dir::open_file`] for a caller that has just `lstat`ed `name`
    /// (`before`, from [`Dir::stat`]): one `lstat` less per file where every
    /// managed file is read. The file opened is checked again by `fstat`.
    pub fn open_file_after(&self, name: &OsStr, before: &Meta) -> io::Result<Option<(File, Meta)>> {
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let not_regular = |what: &str| {
            err(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is {what}, not a regular file",
                    self.path.join(name).display()
                ),
            )
        };
        // Never opened unless it was a regular file: opening a device can
        // act (a watchdog starts, a tape rewinds).
        if !before.is_file() {
            return Err(not_regular(before.kind()));
        }
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP) => return Err(not_regular("a symlink")),
            Err(e) => return Err(e.into()),
        };
        let meta = Meta::of(&rustix::fs::fstat(&fd)?);
        if !meta.is_file() {
            return Err(not_regular(meta.kind()));
        }
        // Reads block from here on, as for any regular file.
        rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
        Ok(Some((File::from(fd), meta)))
    }

    /// Reads the regular file `name` whole (as [`Dir::open_file`]), refusing
    /// more than `limit` bytes while reading; `None` when absent.
    pub fn read_bounded(&self, name: &OsStr, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some((file, _)) = self.open_file(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(err(
                io::ErrorKind::InvalidData,
                format!(
                    "{} is larger than {limit} bytes",
                    self.path.join(name).display()
                ),
            ));
        }
        Ok(Some(bytes))
    }

    /// Creates a new temp file for `name` (mode 0600), exclusively.
    fn create_temp(&self, name: &OsStr) -> io::Result<(OsString, File)> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        loop {
            let mut tmp = temp_prefix(name);
            tmp.extend_from_slice(random_hex()?.as_bytes());
            tmp.extend_from_slice(TEMP_SUFFIX.as_bytes());
            let tmp = OsString::from_vec(tmp);
            match rustix::fs::openat(&self.fd, &tmp, flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok((tmp, File::from(fd))),
                // 64 random bits: a collision is someone guessing; try again.
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A new temp file in this directory whose final name is known only
    /// later (`TempFile::commit`); `hint` names it while it is written.
    /// Dropped without a commit, it is removed.
    pub fn temp_file(&self, hint: &OsStr) -> io::Result<TempFile<'_>> {
        check_name(hint)?;
        let (name, file) = self.create_temp(hint)?;
        Ok(TempFile {
            dir: self,
            name,
            file,
            committed: false,
        })
    }

    /// Atomically replaces `name` with the bytes of `src`: unpredictable
    /// temp file (`O_EXCL | O_NOFOLLOW`), owner, mode, fsync, rename, fsync
    /// of this directory. Readers see the old or the new content, never a
    /// mix; on failure the temp file is removed. Returns the bytes written.
    pub fn write_atomic(
        &self,
        name: &OsStr,
        mode: FileMode,
        src: &mut dyn Read,
    ) -> io::Result<u64> {
        check_name(name)?;
        let mut tmp = self.temp_file(name)?;
        let n = io::copy(src, tmp.file())?;
        tmp.commit(name, mode)?;
        Ok(n)
    }

    /// Removes `name` (a file or symlink, never followed) and makes the
    /// removal durable. Returns whether there was something to remove.
    pub fn remove(&self, name: &OsStr) -> io::Result<bool> {
        check_name(name)?;
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) => {
                self.sync()?;
                Ok(true)
            }
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes temp files an interrupted `write_atomic` of `name` left
    /// behind; returns how many.
    pub fn remove_temps(&self, name: &OsStr) -> io::Result<usize> {
        self.remove_matching(|entry| is_temp_of(entry, name))
    }

    /// Removes every temp file an interrupted `write_atomic` left here.
    pub fn remove_all_temps(&self) -> io::Result<usize> {
        self.remove_matching(|entry| is_temp(OsStr::from_bytes(entry)))
    }

    fn remove_matching(&self, pred: impl Fn(&[u8]) -> bool) -> io::Result<usize> {
        let mut doomed = Vec::new();
        for entry in self.entries()? {
            if pred(entry.as_bytes()) {
                doomed.push(entry);
            }
        }
        let mut n = 0;
        for name in doomed {
            match rustix::fs::unlinkat(&self.fd, &name, AtFlags::empty()) {
                Ok(()) => n += 1,
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if n > 0 {
            self.sync()?;
        }
        Ok(n)
    }

    /// Names in this directory (without `.` and `..`).
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        let mut out = Vec::new();
        let mut dir = rustix::fs::Dir::read_from(&self.fd)?;
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsString::from_vec(name.to_vec()));
            }
        }
        Ok(out)
    }

    /// fsync of the directory: renames and unlinks in it become durable.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(Into::into)
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A temp file being written in a `Dir`; see `Dir::temp_file`.
#[derive(Debug)]
pub struct TempFile<'a> {
    dir: &'a Dir,
    name: OsString,
    file: File,
    committed: bool,
}

impl TempFile<'_> {
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Sets owner and mode, fsyncs, renames the file to `dest` in its
    /// directory (replacing what was there) and fsyncs the directory.
    pub fn commit(mut self, dest: &OsStr, mode: FileMode) -> io::Result<()> {
        check_name(dest)?;
        if let Some((uid, gid)) = mode.owner {
            let st = rustix::fs::fstat(&self.file)?;
            if (st.st_uid, st.st_gid) != (uid, gid) {
                rustix::fs::fchown(
                    &self.file,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )?;
            }
        }
        // After the chown, which clears setuid and setgid.
        rustix::fs::fchmod(&self.file, Mode::from_raw_mode(mode.perm))?;
        self.file.sync_all()?;
        rustix::fs::renameat(&self.dir.fd, &self.name, &self.dir.fd, dest)?;
        self.committed = true;
        self.dir.sync()
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = rustix::fs::unlinkat(&self.dir.fd, &self.name, AtFlags::empty());
        }
    }
}

/// The error for a component that could not be opened as a directory.
fn not_a_dir(base: impl AsFd, part: &OsStr, path: &Path) -> io::Error {
    let what = match rustix::fs::statat(base, part, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Meta::of(&st).kind(),
        Err(_) => "not a directory",
    };
    let what = if what == "a directory" {
        "not a directory"
    } else {
        what
    };
    err(
        io::ErrorKind::InvalidInput,
        format!("{} is {what}; refusing to follow it", path.display()),
    )
}

/// Creates `path` (0700) if missing and makes sure only this process's user
/// can enter it: a directory owned by someone else is refused (they could
/// read or swap what is inside), group/other permission bits are removed.
/// Returns the permission bits it had when they were too open.
pub fn private_dir(path: &Path) -> io::Result<Option<u32>> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let dir = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&dir)?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(err(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by this process's uid {me}; refusing to keep state there",
                path.display(),
                st.st_uid
            ),
        ));
    }
    let perm = st.st_mode & 0o7777;
    if perm & 0o077 == 0 {
        return Ok(None);
    }
    rustix::fs::fchmod(&dir, Mode::from_raw_mode(perm & 0o700))?;
    Ok(Some(perm))
}

/// Sets the permission bits of an existing file owned by this process to
/// `perm` (absent is fine); a symlink is never followed.
pub fn restrict_file(path: &Path, perm: u32) -> io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    match rustix::fs::openat(CWD, path, flags, Mode::empty()) {
        Ok(fd) => {
            let st = rustix::fs::fstat(&fd)?;
            if st.st_mode & 0o7777 != perm {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(perm))?;
            }
            Ok(())
        }
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// fsync a directory, making renames and unlinks inside it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    Dir::open(dir)?.sync()
}

/// The parent of `path`, or `.` for a bare name.
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn split(path: &Path) -> io::Result<(Dir, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        err(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    Ok((Dir::open(parent(path))?, name))
}

/// `Dir::write_atomic` in the parent of `dest` (which must not be a symlink).
pub fn write_atomic(dest: &Path, mode: u32, src: &mut dyn Read) -> io::Result<u64> {
    let (dir, name) = split(dest)?;
    dir.write_atomic(name, FileMode::perm(mode), src)
}

/// Removes a file (absent is fine) and makes the removal durable.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match split(path) {
        Ok((dir, name)) => dir.remove(name).map(drop),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn atomic_write_replaces_sets_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.conf");
        fs::write(&p, "old").unwrap();
        write_atomic(&p, 0o640, &mut &b"new"[..]).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert_eq!(names(dir.path()), ["f.conf"]);
    }

    #[test]
    fn temp_names_are_unpredictable_and_recognised() {
        let name = OsStr::new("a.conf");
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        let (t1, _) = dir.create_temp(name).unwrap();
        let (t2, _) = dir.create_temp(name).unwrap();
        assert_ne!(t1, t2);
        assert!(is_temp_of(t1.as_bytes(), name) && is_temp(&t1));
        assert!(!is_temp_of(t1.as_bytes(), OsStr::new("a.con")));
        assert!(!is_temp(OsStr::new(".a.conf.ferry-tmp")));
        assert!(!is_temp(OsStr::new("a.conf")));
        let long = OsString::from("x".repeat(255));
        let (t3, _) = dir.create_temp(&long).unwrap();
        assert!(is_temp_of(t3.as_bytes(), &long));
        assert_eq!(dir.remove_temps(name).unwrap(), 2);
        assert_eq!(dir.remove_all_temps().unwrap(), 1);
        assert!(names(d.path()).is_empty());
    }

    #[test]
    fn planted_symlink_in_the_path_is_refused_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let outside = d.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir(&outside).unwrap();
        symlink(&outside, root.join("etc/app")).unwrap();
        let r = Dir::open(&root).unwrap();
        let e = r
            .open_beneath(Path::new("etc/app/sub"), Some(0o755))
            .unwrap_err();
        assert!(e.to_string().contains("etc/app is a symlink"), "{e}");
        assert!(names(&outside).is_empty(), "nothing created outside");
        let e = r.open_beneath(Path::new("../x"), Some(0o755)).unwrap_err();
        assert!(e.to_string().contains("without `..`"), "{e}");
        // A regular file where a directory should be.
        fs::write(root.join("etc/file"), "").unwrap();
        let e = r.open_beneath(Path::new("etc/file/x"), None).unwrap_err();
        assert!(e.to_string().contains("is a regular file"), "{e}");
        // Missing without create: None; with create: made.
        assert!(
            r.open_beneath(Path::new("etc/new/deeper"), None)
                .unwrap()
                .is_none()
        );
        let made = r
            .open_beneath(Path::new("etc/new/deeper"), Some(0o750))
            .unwrap()
            .unwrap();
        assert_eq!(made.path(), root.join("etc/new/deeper"));
        assert!(root.join("etc/new/deeper").is_dir());
    }

    #[test]
    fn open_file_refuses_symlinks_and_fifos_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        fs::write(d.path().join("secret"), "x").unwrap();
        symlink(d.path().join("secret"), d.path().join("link")).unwrap();
        let e = dir.open_file(OsStr::new("link")).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        rustix::fs::mknodat(
            CWD,
            d.path().join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = dir.open_file(OsStr::new("fifo")).unwrap_err();
        assert!(e.to_string().contains("is a FIFO"), "{e}");
        assert!(dir.open_file(OsStr::new("absent")).unwrap().is_none());
        let (mut f, meta) = dir.open_file(OsStr::new("secret")).unwrap().unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), meta.len), ("x", 1));
        // Replacing a symlink replaces the link, never its target.
        dir.write_atomic(OsStr::new("link"), FileMode::perm(0o600), &mut &b"y"[..])
            .unwrap();
        assert_eq!(fs::read_to_string(d.path().join("secret")).unwrap(), "x");
        assert!(
            fs::symlink_metadata(d.path().join("link"))
                .unwrap()
                .is_file()
        );
    }

    #[test]
    fn private_dir_closes_an_open_directory() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(private_dir(&p).unwrap(), Some(0o755));
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        assert_eq!(private_dir(&p).unwrap(), None);
        assert_eq!(private_dir(&d.path().join("new/deeper")).unwrap(), None);
        fs::write(p.join("db"), "x").unwrap();
        fs::set_permissions(p.join("db"), fs::Permissions::from_mode(0o644)).unwrap();
        restrict_file(&p.join("db"), 0o600).unwrap();
        assert_eq!(
            fs::metadata(p.join("db")).unwrap().permissions().mode() & 0o7777,
            0o600
        );
        restrict_file(&p.join("absent"), 0o600).unwrap();
    }

    #[test]
    fn names_with_slashes_or_dots_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert!(
                dir.write_atomic(OsStr::new(bad), FileMode::perm(0o600), &mut &b""[..])
                    .is_err(),
                "{bad}"
            );
        }
        assert!(Dir::open(&d.path().join("missing")).is_err());
    }
}
