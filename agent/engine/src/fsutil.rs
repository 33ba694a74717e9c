//! Durable file-system steps: write beside, fsync, rename, fsync the parent.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// fsync a directory, making renames and unlinks inside it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The parent of `path`, or `.` for a bare name.
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The temp name used beside `dest` while it is written. Fixed, so a crash
/// leaves at most one leftover, which the next write replaces.
pub fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent(dest).join(format!(".{name}.ferry-tmp"))
}

/// Atomically replaces `dest` with the bytes of `src`: temp file beside it,
/// fsync, chmod, rename, fsync of the directory. Readers see the old or the
/// new content, never a mix. Returns the number of bytes written.
pub fn write_atomic(dest: &Path, mode: u32, src: &mut dyn Read) -> io::Result<u64> {
    let tmp = temp_beside(dest);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let n = io::copy(src, &mut f)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.flush()?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        fsync_dir(parent(dest))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a file (absent is fine) and makes the removal durable.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(parent(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.conf");
        fs::write(&p, "old").unwrap();
        write_atomic(&p, 0o640, &mut &b"new"[..]).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert!(!temp_beside(&p).exists());
    }
}
