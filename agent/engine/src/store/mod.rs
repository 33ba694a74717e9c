//! The content-addressed blob store: `store/<sha256>`, immutable.
//!
//! Blobs are streamed into a temp file while being hashed and counted against
//! the `ContentRef` taken from signed metadata. Too many bytes abort at once,
//! too few or a wrong digest abort at the end; either way the temp file is
//! removed and nothing enters the store. A complete blob is fsynced, made
//! read-only (owner only) and renamed into place, then the directory is
//! fsynced.

pub mod generations;
pub mod running;
pub mod spool;
pub mod state;

use ferry_core::{Classify, ErrorClass};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fail::fail_point;
use ferry_core::{ContentRef, Sha256};
use ferry_source::Verified;
use sha2::Digest as _;

#[cfg_attr(not(feature = "failpoints"), allow(unused_imports))]
use crate::failpoints as fp;
use crate::fsutil::fsync_dir;

/// Blobs are read-only, and readable by ferry's user only: some were
/// rendered from device secrets.
pub const BLOB_MODE: u32 = 0o400;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what}: expected {expected} bytes, got {got} (truncated)")]
    Truncated {
        what: String,
        expected: u64,
        got: u64,
    },
    #[error("{what}: longer than the declared {expected} bytes")]
    TooLong { what: String, expected: u64 },
    #[error("{what}: sha256 mismatch: expected {expected}, got {got}")]
    HashMismatch {
        what: String,
        expected: Sha256,
        got: Sha256,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("blob {0} is not in the store (collected?)")]
    Missing(Sha256),
    #[error("{what}: reading the source: {source}")]
    SourceRead {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        if self.is_verification() {
            ErrorClass::Verification
        } else {
            ErrorClass::Internal
        }
    }
}

impl StoreError {
    /// Whether the content itself was wrong (as opposed to an I/O failure).
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            StoreError::Truncated { .. }
                | StoreError::TooLong { .. }
                | StoreError::HashMismatch { .. }
        )
    }
}

/// A reader that enforces a `ContentRef` while reading: it fails as soon as
/// more bytes than declared arrive, and at EOF unless length and sha256 match.
/// Nothing downstream can see unverified bytes past the end of a good read.
#[derive(Debug)]
pub struct VerifyingReader<R> {
    inner: R,
    expected: ContentRef,
    what: String,
    hasher: sha2::Sha256,
    count: u64,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, expected: ContentRef, what: impl Into<String>) -> Self {
        Self::resume(inner, expected, what, sha2::Sha256::new(), 0)
    }

    /// Continues a verification: `hasher` has seen the first `count` bytes.
    pub fn resume(
        inner: R,
        expected: ContentRef,
        what: impl Into<String>,
        hasher: sha2::Sha256,
        count: u64,
    ) -> Self {
        VerifyingReader {
            inner,
            expected,
            what: what.into(),
            hasher,
            count,
            done: false,
        }
    }

    fn fail(&self, e: StoreError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        // Ask for at most one byte more than is still allowed, so an overlong
        // stream is caught without reading it all.
        let remaining = self.expected.length.saturating_sub(self.count);
        let want = buf
            .len()
            .min(usize::try_from(remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > remaining {
            return Err(self.fail(StoreError::TooLong {
                what: self.what.clone(),
                expected: self.expected.length,
            }));
        }
        self.count += n as u64;
        self.hasher.update(&buf[..n]);
        if n == 0 {
            self.done = true;
            if self.count != self.expected.length {
                return Err(self.fail(StoreError::Truncated {
                    what: self.what.clone(),
                    expected: self.expected.length,
                    got: self.count,
                }));
            }
            let got = Sha256::from_bytes(self.hasher.clone().finalize().into());
            if got != self.expected.sha256 {
                return Err(self.fail(StoreError::HashMismatch {
                    what: self.what.clone(),
                    expected: self.expected.sha256,
                    got,
                }));
            }
        }
        Ok(n)
    }
}

/// Turns an error from a read through `VerifyingReader` back into its `StoreError`.
pub fn store_error(what: &str, e: io::Error) -> StoreError {
    if e.get_ref().is_some_and(|inner| inner.is::<StoreError>()) {
        if let Ok(inner) = e.into_inner().expect("checked").downcast::<StoreError>() {
            return *inner;
        }
        unreachable!("checked the type above");
    }
    StoreError::Io {
        what: what.to_owned(),
        source: e,
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Store> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, sha256: &Sha256) -> PathBuf {
        self.dir.join(sha256.to_hex())
    }

    pub fn contains(&self, sha256: &Sha256) -> bool {
        self.path(sha256).is_file()
    }

    /// Streams `src` into the store as the blob its address names, checked
    /// while read; `what` names the content in errors. A blob already
    /// present is not read again. From byte 0 whatever an earlier attempt
    /// left is dropped; from further on (`partial_len`, a resumed fetch)
    /// the bytes already there are hashed first, so the whole blob is
    /// still verified. If reading `src` fails (a dropped connection), what
    /// arrived is kept for the next attempt; any other failure removes it.
    /// The store takes only [`Verified`] readers: the address comes from
    /// the revision (signed metadata), never from the caller.
    pub fn put(&self, src: &mut Verified<'_>, what: &str) -> Result<PathBuf, StoreError> {
        let (expected, offset) = (src.content(), src.offset());
        if offset == 0 {
            self.discard_partial(&expected.sha256);
        }
        self.put_reader_at(src, offset, expected, what)
    }

    /// Bytes of `expected` already fetched by an interrupted `put_at`: the
    /// source may be asked for the rest only (HTTP `Range`, a seek).
    pub fn partial_len(&self, expected: &ContentRef) -> u64 {
        let len = fs::metadata(self.partial(&expected.sha256)).map_or(0, |m| m.len());
        if len > expected.length {
            self.discard_partial(&expected.sha256);
            return 0;
        }
        len
    }

    pub fn discard_partial(&self, sha256: &Sha256) {
        let _ = fs::remove_file(self.partial(sha256));
    }

    fn partial(&self, sha256: &Sha256) -> PathBuf {
        self.dir.join(format!(".tmp-{sha256}"))
    }

    /// [`Store::put`] of any reader from byte 0, for the store's own tests.
    #[cfg(test)]
    fn put_reader_at_0(
        &self,
        src: &mut dyn Read,
        expected: ContentRef,
        what: &str,
    ) -> Result<PathBuf, StoreError> {
        self.discard_partial(&expected.sha256);
        self.put_reader_at(src, 0, expected, what)
    }

    /// [`Store::put`] of a reader yielding `expected` from byte `offset` on.
    fn put_reader_at(
        &self,
        src: &mut dyn Read,
        offset: u64,
        expected: ContentRef,
        what: &str,
    ) -> Result<PathBuf, StoreError> {
        let dest = self.path(&expected.sha256);
        if dest.is_file() {
            self.discard_partial(&expected.sha256);
            return Ok(dest);
        }
        let tmp = self.partial(&expected.sha256);
        let result = self.write_verified(src, offset, expected, what, &tmp, &dest);
        match &result {
            Err(StoreError::SourceRead { .. }) => {
                tracing::info!(blob = %expected.sha256, "keeping the partial blob to resume");
            }
            Err(_) => self.discard_partial(&expected.sha256),
            Ok(()) => {}
        }
        result.map(|()| dest)
    }

    fn write_verified(
        &self,
        src: &mut dyn Read,
        offset: u64,
        expected: ContentRef,
        what: &str,
        tmp: &Path,
        dest: &Path,
    ) -> Result<(), StoreError> {
        let io_err = |source| StoreError::Io {
            what: format!("writing blob {} for {what}", expected.sha256),
            source,
        };
        // Resumable, so the name is fixed; never followed if it is a link,
        // never waited on if it is a FIFO.
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(offset == 0)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(tmp)
            .map_err(io_err)?;
        if !f.metadata().map_err(io_err)?.is_file() {
            return Err(io_err(io::Error::other(format!(
                "{} is not a regular file",
                tmp.display()
            ))));
        }
        // Hash what an earlier attempt fetched, then append the rest.
        let mut hasher = sha2::Sha256::new();
        let have = io::copy(&mut (&mut f).take(offset), &mut hasher).map_err(io_err)?;
        if have != offset {
            return Err(io_err(io::Error::other(format!(
                "partial blob has {have} bytes, expected {offset}"
            ))));
        }
        if offset > 0 {
            tracing::info!(blob = %expected.sha256, offset, "resuming blob at byte {offset}");
        }
        let mut reader = VerifyingReader::resume(src, expected, what, hasher, offset);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| match store_error(what, e) {
                    StoreError::Io { what, source } => StoreError::SourceRead { what, source },
                    other => other,
                })?;
            if n == 0 {
                break;
            }
            fail_point!(fp::STORE_WRITE, |_| Err(io_err(
                io::Error::from_raw_os_error(libc::ENOSPC)
            )));
            f.write_all(&buf[..n]).map_err(io_err)?;
        }
        f.set_permissions(fs::Permissions::from_mode(BLOB_MODE))
            .map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        drop(f);
        fail_point!(fp::STORE_BEFORE_RENAME);
        fs::rename(tmp, dest).map_err(io_err)?;
        fsync_dir(&self.dir).map_err(io_err)?;
        Ok(())
    }

    /// Streams content whose digest is not known in advance (a file ferry
    /// takes over) into the store, hashing while writing; constant memory.
    pub fn put_stream(&self, src: &mut dyn Read, what: &str) -> Result<ContentRef, StoreError> {
        let io_err = |source| StoreError::Io {
            what: format!("storing {what}"),
            source,
        };
        let dir = crate::fsutil::Dir::open(&self.dir).map_err(io_err)?;
        let mut tmp = dir
            .temp_file(std::ffi::OsStr::new("incoming"))
            .map_err(io_err)?;
        let content = hash_chunks(
            src,
            |source| StoreError::SourceRead {
                what: what.to_owned(),
                source,
            },
            |chunk| tmp.file().write_all(chunk).map_err(io_err),
        )?;
        if self.contains(&content.sha256) {
            return Ok(content);
        }
        tmp.commit(
            std::ffi::OsStr::new(&content.sha256.to_hex()),
            crate::fsutil::FileMode::perm(BLOB_MODE),
        )
        .map_err(io_err)?;
        Ok(content)
    }

    /// Puts an in-memory byte string.
    pub fn put_bytes(&self, data: &[u8], what: &str) -> Result<ContentRef, StoreError> {
        let mut src = Verified::rendered(data);
        self.put(&mut src, what)?;
        Ok(src.content())
    }

    /// Opens a blob for reading, re-verified while read (catches bit rot).
    pub fn open_verified(&self, content: ContentRef) -> Result<VerifyingReader<File>, StoreError> {
        let path = self.path(&content.sha256);
        let f = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Missing(content.sha256)
            } else {
                StoreError::Io {
                    what: format!("opening {}", path.display()),
                    source: e,
                }
            }
        })?;
        Ok(VerifyingReader::new(
            f,
            content,
            format!("store blob {}", content.sha256),
        ))
    }

    /// Digests of the blobs present, and names of leftover temp files.
    pub fn list(&self) -> io::Result<(Vec<Sha256>, Vec<PathBuf>)> {
        let mut blobs = Vec::new();
        let mut leftovers = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match name.parse::<Sha256>() {
                Ok(d) => blobs.push(d),
                Err(_) if name.starts_with(".tmp-") || ferry_fs::is_temp(&entry.file_name()) => {
                    leftovers.push(entry.path());
                }
                Err(_) => {}
            }
        }
        blobs.sort();
        Ok((blobs, leftovers))
    }

    /// Deletes a blob (absent is fine).
    pub fn remove(&self, sha256: &Sha256) -> io::Result<()> {
        match fs::remove_file(self.path(sha256)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The sha256 and length of everything `src` yields, for something about
/// `size` bytes long: the read buffer is no larger than it needs (checking
/// 10,000 small files must not zero 64 KiB for each).
pub fn hash_reader_sized(src: &mut dyn Read, size: u64) -> io::Result<ContentRef> {
    let cap = usize::try_from(size.saturating_add(1))
        .unwrap_or(CHUNK)
        .min(CHUNK);
    hash_chunks_with(src, cap, |e| e, |_| Ok(()))
}

/// Bytes read at a time when hashing.
const CHUNK: usize = 64 * 1024;

/// Reads `src` to its end a chunk at a time (constant memory), hashing it
/// and handing each chunk to `each`; a read error becomes `read_err`'s.
fn hash_chunks<E>(
    src: &mut dyn Read,
    read_err: impl Fn(io::Error) -> E,
    each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<ContentRef, E> {
    hash_chunks_with(src, CHUNK, read_err, each)
}

/// [`hash_chunks`] with a read buffer of `cap` bytes.
fn hash_chunks_with<E>(
    src: &mut dyn Read,
    cap: usize,
    read_err: impl Fn(io::Error) -> E,
    mut each: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<ContentRef, E> {
    let mut hasher = sha2::Sha256::new();
    let mut length = 0u64;
    let mut buf = vec![0u8; cap.max(1)];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        hasher.update(&buf[..n]);
        length += n as u64;
        each(&buf[..n])?;
    }
    Ok(ContentRef {
        sha256: Sha256::from_bytes(hasher.finalize().into()),
        length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().join("store")).unwrap();
        (dir, s)
    }

    #[test]
    fn put_verifies_and_is_read_only() {
        let (_d, s) = store();
        let data = b"hello world";
        let c = ContentRef::of(data);
        let p = s.put_reader_at_0(&mut &data[..], c, "t").unwrap();
        assert_eq!(fs::read(&p).unwrap(), data);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o400
        );
        let mut back = Vec::new();
        s.open_verified(c).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn mismatch_truncation_and_overlong_leave_nothing() {
        let (_d, s) = store();
        let good = ContentRef::of(b"hello");
        let cases: [(&[u8], &str); 3] = [
            (b"hellp", "sha256 mismatch"),
            (b"hell", "truncated"),
            (b"hello, and then some", "longer than"),
        ];
        for (data, want) in cases {
            let e = s
                .put_reader_at_0(&mut &data[..], good, "files/x")
                .unwrap_err();
            assert!(e.is_verification());
            assert!(e.to_string().contains(want), "{e}");
            assert!(e.to_string().contains("files/x"), "{e}");
            let (blobs, tmps) = s.list().unwrap();
            assert!(blobs.is_empty() && tmps.is_empty(), "{blobs:?} {tmps:?}");
        }
    }

    #[test]
    fn overlong_stream_is_not_read_to_the_end() {
        let (_d, s) = store();
        let expected = ContentRef::of(b"abc");
        // An endless stream must be cut off after the declared length.
        let mut endless = io::repeat(b'a');
        let e = s
            .put_reader_at_0(&mut endless, expected, "endless")
            .unwrap_err();
        assert!(matches!(e, StoreError::TooLong { .. }), "{e}");
    }

    /// A source that fails after `n` bytes, like a dropped connection.
    struct Flaky<'a>(&'a [u8], usize);

    impl Read for Flaky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset",
                ));
            }
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            self.1 -= n;
            Ok(n)
        }
    }

    #[test]
    fn interrupted_put_resumes_where_it_stopped() {
        let (_d, s) = store();
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let c = ContentRef::of(&data);
        let e = s
            .put_reader_at(&mut Flaky(&data, 200_000), 0, c, "img")
            .unwrap_err();
        assert!(matches!(e, StoreError::SourceRead { .. }), "{e}");
        assert_eq!(s.partial_len(&c), 200_000);
        // The rest only; the whole is verified.
        s.put_reader_at(&mut &data[200_000..], 200_000, c, "img")
            .unwrap();
        assert_eq!(fs::read(s.path(&c.sha256)).unwrap(), data);
        assert_eq!(s.partial_len(&c), 0);
    }

    #[test]
    fn a_corrupt_partial_fails_verification_and_is_dropped() {
        let (_d, s) = store();
        let data = vec![5u8; 100_000];
        let c = ContentRef::of(&data);
        s.put_reader_at(&mut Flaky(&data, 50_000), 0, c, "img")
            .unwrap_err();
        let p = s.dir().join(format!(".tmp-{}", c.sha256));
        let mut bytes = fs::read(&p).unwrap();
        bytes[10] = 6;
        fs::write(&p, bytes).unwrap();
        let e = s
            .put_reader_at(&mut &data[50_000..], 50_000, c, "img")
            .unwrap_err();
        assert!(e.is_verification(), "{e}");
        assert_eq!(s.partial_len(&c), 0, "dropped");
        s.put_reader_at(&mut &data[..], 0, c, "img").unwrap();
    }

    #[test]
    fn streamed_content_is_hashed_while_written() {
        let (_d, s) = store();
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_be_bytes()).collect();
        let c = s.put_stream(&mut &data[..], "previous content").unwrap();
        assert_eq!(c, ContentRef::of(&data));
        assert_eq!(fs::read(s.path(&c.sha256)).unwrap(), data);
        assert_eq!(s.put_stream(&mut &data[..], "again").unwrap(), c);
        let e = s.put_stream(&mut Flaky(&data, 1000), "flaky").unwrap_err();
        assert!(matches!(e, StoreError::SourceRead { .. }), "{e}");
        let (blobs, tmps) = s.list().unwrap();
        assert_eq!((blobs.len(), tmps.len()), (1, 0), "{tmps:?}");
    }

    #[test]
    fn bit_rot_in_store_is_detected_on_read() {
        let (_d, s) = store();
        let c = s.put_bytes(b"content", "t").unwrap();
        let p = s.path(&c.sha256);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&p, b"CONTENT").unwrap();
        let mut out = Vec::new();
        let e = s
            .open_verified(c)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(matches!(
            store_error("x", e),
            StoreError::HashMismatch { .. }
        ));
    }
}
