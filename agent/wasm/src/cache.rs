//! The precompile cache: native code for a module, compiled once and kept
//! on disk keyed by (module sha256, engine fingerprint).
//!
//! Loading native code is only sound for bytes that wasmtime itself produced
//! for this engine configuration (see [`crate::host`]), so every artifact is
//! sealed with an HMAC-SHA256 under a per-device key that only ferry reads
//! (`<cache>/.key`, 0600). An artifact is loaded only when its tag verifies:
//! ferry wrote it, for this module and this fingerprint, and not one byte
//! changed since. Anything else is reported and the module is recompiled.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};

use crate::WasmError;

const MAGIC: &[u8; 8] = b"FERRYWC1";
const TAG_LEN: usize = 32;
const KEY_LEN: usize = 32;
/// Artifacts larger than this are not read back (a sane multiple of the
/// largest module).
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

pub struct ArtifactCache {
    dir: PathBuf,
    key: hmac::Key,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Why a cached artifact was not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(Vec<u8>),
    Miss,
    /// There was an artifact, but it is not one ferry sealed (or it changed).
    Rejected(String),
}

impl ArtifactCache {
    /// Opens (creating) the cache directory and its key.
    pub fn open(dir: impl Into<PathBuf>) -> Result<ArtifactCache, WasmError> {
        let dir = dir.into();
        let io_err = |what: &Path, e: io::Error| WasmError::Io(format!("{}: {e}", what.display()));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_err(&dir, e))?;
        let key_path = dir.join(".key");
        let key = match read_key(&key_path) {
            Some(k) => k,
            None => {
                let mut k = [0u8; KEY_LEN];
                SystemRandom::new()
                    .fill(&mut k)
                    .map_err(|_| WasmError::Io("no randomness for the cache key".into()))?;
                write_atomic(&key_path, &k, 0o600).map_err(|e| io_err(&key_path, e))?;
                k.to_vec()
            }
        };
        Ok(ArtifactCache {
            dir,
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, module_sha256: &str, fingerprint: &str) -> PathBuf {
        self.dir
            .join(format!("{module_sha256}-{fingerprint}.cwasm"))
    }

    fn tag(&self, module_sha256: &str, fingerprint: &str, artifact: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"ferry wasm cache v1\0");
        ctx.update(module_sha256.as_bytes());
        ctx.update(b"\0");
        ctx.update(fingerprint.as_bytes());
        ctx.update(b"\0");
        ctx.update(artifact);
        ctx.sign()
    }

    /// The artifact for a module, if ferry sealed one and it is intact.
    pub fn get(&self, module_sha256: &str, fingerprint: &str) -> Lookup {
        let path = self.path(module_sha256, fingerprint);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Rejected(format!("{}: {e}", path.display())),
        };
        let mut data = Vec::new();
        if let Err(e) = (&mut f).take(MAX_ARTIFACT_BYTES + 1).read_to_end(&mut data) {
            return Lookup::Rejected(format!("{}: {e}", path.display()));
        }
        if data.len() as u64 > MAX_ARTIFACT_BYTES {
            return Lookup::Rejected(format!("{}: too large", path.display()));
        }
        if data.len() < MAGIC.len() + TAG_LEN || &data[..MAGIC.len()] != MAGIC {
            return Lookup::Rejected(format!("{}: not a ferry cache artifact", path.display()));
        }
        let artifact = data.split_off(MAGIC.len() + TAG_LEN);
        let tag = &data[MAGIC.len()..];
        let expected = self.tag(module_sha256, fingerprint, &artifact);
        // Constant-time comparison of the tags.
        if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_ref(), tag).is_err() {
            return Lookup::Rejected(format!(
                "{}: seal does not verify (modified, or not written by this device's ferry)",
                path.display()
            ));
        }
        Lookup::Hit(artifact)
    }

    /// Seals and stores an artifact (tmp + fsync + rename).
    pub fn put(
        &self,
        module_sha256: &str,
        fingerprint: &str,
        artifact: &[u8],
    ) -> Result<(), WasmError> {
        let path = self.path(module_sha256, fingerprint);
        let tag = self.tag(module_sha256, fingerprint, artifact);
        let mut data = Vec::with_capacity(MAGIC.len() + TAG_LEN + artifact.len());
        data.extend_from_slice(MAGIC);
        data.extend_from_slice(tag.as_ref());
        data.extend_from_slice(artifact);
        write_atomic(&path, &data, 0o600)
            .map_err(|e| WasmError::Io(format!("{}: {e}", path.display())))
    }
}

/// Removes the artifacts in the cache directory `dir` whose module (sha256
/// hex) is not in `keep`; returns how many. Artifacts are derived data: a
/// module that comes back is compiled again.
pub fn retain(dir: &Path, keep: &std::collections::BTreeSet<String>) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".cwasm") else {
            continue;
        };
        let module = stem.split('-').next().unwrap_or_default();
        if !keep.contains(module) {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn read_key(path: &Path) -> Option<Vec<u8>> {
    let k = fs::read(path).ok()?;
    (k.len() == KEY_LEN).then_some(k)
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    ferry_fs::write_atomic(path, mode, &mut &data[..]).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_artifacts_round_trip_and_tampering_is_detected() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cache = ArtifactCache::open(tmp.path().join("c")).expect("open");
        assert_eq!(cache.get("aa", "fp"), Lookup::Miss);
        cache.put("aa", "fp", b"native code").expect("put");
        assert_eq!(cache.get("aa", "fp"), Lookup::Hit(b"native code".to_vec()));
        // gc: artifacts of modules no generation holds go.
        cache.put("dd", "fp", b"other").expect("put");
        let keep = std::collections::BTreeSet::from(["aa".to_owned()]);
        assert_eq!(retain(cache.dir(), &keep).expect("retain"), 1);
        assert_eq!(cache.get("dd", "fp"), Lookup::Miss);
        assert!(matches!(cache.get("aa", "fp"), Lookup::Hit(_)));
        // Same bytes under another key (module or fingerprint) do not verify.
        fs::copy(cache.path("aa", "fp"), cache.path("bb", "fp")).expect("copy");
        assert!(matches!(cache.get("bb", "fp"), Lookup::Rejected(_)));
        // One flipped byte.
        let p = cache.path("aa", "fp");
        let mut d = fs::read(&p).expect("read");
        let last = d.len() - 1;
        d[last] ^= 1;
        fs::write(&p, &d).expect("write");
        match cache.get("aa", "fp") {
            Lookup::Rejected(why) => assert!(why.contains("seal does not verify"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A fresh key (another device, or a lost key) rejects old artifacts.
        cache.put("aa", "fp", b"native code").expect("put");
        fs::remove_file(tmp.path().join("c/.key")).expect("rm key");
        let cache2 = ArtifactCache::open(tmp.path().join("c")).expect("reopen");
        assert!(matches!(cache2.get("aa", "fp"), Lookup::Rejected(_)));
        // Garbage.
        fs::write(cache2.path("cc", "fp"), b"xx").expect("write");
        assert!(matches!(cache2.get("cc", "fp"), Lookup::Rejected(_)));
    }
}
