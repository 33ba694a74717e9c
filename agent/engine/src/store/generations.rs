//! Generation directories and the `current` switch.
//!
//! ```text
//! generations/<N>/manifest.json      what generation N is (resources, revision)
//! generations/<N>/blobs/<sha256>  -> ../../../store/<sha256>
//! current                         -> generations/<N>
//! ```
//! A generation is built under `generations/.tmp-<N>`, fsynced, and renamed
//! into place; it is never modified afterwards. `current` is switched by
//! renaming a new symlink over it and fsyncing the state directory, so after a
//! crash it names exactly the old or the new generation.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use fail::fail_point;
use ferry_core::{ResourceSet, Sha256};
use serde::{Deserialize, Serialize};

#[cfg_attr(not(feature = "failpoints"), allow(unused_imports))]
use crate::failpoints as fp;
use crate::fsutil::{fsync_dir, write_atomic};

/// `manifest.json` of a generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationManifest {
    pub generation: u64,
    pub revision: String,
    pub source: String,
    pub resources: ResourceSet,
}

#[derive(Debug, Clone)]
pub struct Generations {
    state_dir: PathBuf,
    dir: PathBuf,
}

impl Generations {
    pub fn open(state_dir: &Path) -> io::Result<Generations> {
        let dir = state_dir.join("generations");
        fs::create_dir_all(&dir)?;
        Ok(Generations {
            state_dir: state_dir.to_path_buf(),
            dir,
        })
    }

    pub fn path(&self, n: u64) -> PathBuf {
        self.dir.join(n.to_string())
    }

    pub fn current_link(&self) -> PathBuf {
        self.state_dir.join("current")
    }

    /// Builds generation `manifest.generation`. An existing complete
    /// directory of that number is left as it is (generations are immutable).
    pub fn build(&self, manifest: &GenerationManifest) -> io::Result<PathBuf> {
        let n = manifest.generation;
        let dest = self.path(n);
        if dest.join("manifest.json").is_file() {
            return Ok(dest);
        }
        let tmp = self.dir.join(format!(".tmp-{n}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(tmp.join("blobs"))?;
        let blobs: BTreeSet<Sha256> = manifest
            .resources
            .iter()
            .map(|r| r.content.sha256)
            .collect();
        for sha in &blobs {
            symlink(
                Path::new("../../../store").join(sha.to_hex()),
                tmp.join("blobs").join(sha.to_hex()),
            )?;
        }
        fsync_dir(&tmp.join("blobs"))?;
        let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
        write_atomic(&tmp.join("manifest.json"), 0o444, &mut &json[..])?;
        fsync_dir(&tmp)?;
        fail_point!(fp::GENERATION_BEFORE_RENAME, |_| Err(io::Error::other(
            "failpoint generation::before-rename"
        )));
        if dest.exists() {
            // A partial leftover of this number (no manifest): replace it.
            fs::remove_dir_all(&dest)?;
        }
        fs::rename(&tmp, &dest)?;
        fsync_dir(&self.dir)?;
        Ok(dest)
    }

    pub fn read_manifest(&self, n: u64) -> io::Result<GenerationManifest> {
        let bytes = fs::read(self.path(n).join("manifest.json"))?;
        serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// The generation `current` points to, if any.
    pub fn current(&self) -> io::Result<Option<u64>> {
        match fs::read_link(self.current_link()) {
            Ok(target) => {
                let n = target
                    .strip_prefix("generations")
                    .ok()
                    .and_then(|p| p.to_str())
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("`current` points to unexpected {}", target.display()),
                        )
                    })?;
                Ok(Some(n))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Points `current` at generation `to` (or removes it for `None`), atomically and durably.
    pub fn switch(&self, to: Option<u64>) -> io::Result<()> {
        self.switch_unsynced(to)?;
        fsync_dir(&self.state_dir)?;
        fail_point!(fp::SWITCH_AFTER_RENAME);
        Ok(())
    }

    /// The switch without the final fsync: atomic but not yet durable. Only
    /// for measuring the switch itself (`benches/switch.rs`); use `switch`.
    #[doc(hidden)]
    pub fn switch_unsynced(&self, to: Option<u64>) -> io::Result<()> {
        let link = self.current_link();
        match to {
            Some(n) => {
                let tmp = self.state_dir.join(".current.tmp");
                let _ = fs::remove_file(&tmp);
                symlink(Path::new("generations").join(n.to_string()), &tmp)?;
                fail_point!(fp::SWITCH_BEFORE_RENAME);
                fs::rename(&tmp, &link)?;
            }
            None => match fs::remove_file(&link) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
        }
        Ok(())
    }

    /// Generation numbers with a directory, and leftover temp directories.
    pub fn list_dirs(&self) -> io::Result<(Vec<u64>, Vec<PathBuf>)> {
        let mut gens = Vec::new();
        let mut leftovers = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Ok(n) = name.parse::<u64>() {
                gens.push(n);
            } else if name.starts_with(".tmp-") || name.starts_with(".trash-") {
                leftovers.push(entry.path());
            }
        }
        gens.sort_unstable();
        Ok((gens, leftovers))
    }

    /// Deletes generation `n`: renamed aside first, so a crash never leaves a
    /// half-deleted directory under a generation's name.
    pub fn remove(&self, n: u64) -> io::Result<()> {
        let dir = self.path(n);
        let trash = self.dir.join(format!(".trash-{n}"));
        match fs::rename(&dir, &trash) {
            Ok(()) => fsync_dir(&self.dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if trash.exists() {
            fs::remove_dir_all(&trash)?;
        }
        Ok(())
    }
}
