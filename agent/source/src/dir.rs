//! The `dir` source: a plain local directory. Development only.
//!
//! Nothing here is signed, so the configuration must say `insecure = true`.
//! It still refuses to leave its directory: paths are `RepoPath`s, and no
//! symlink is followed, so a link inside the tree cannot expose a file
//! outside it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_core::{ContentRef, RepoPath, Sha256};
use sha2::Digest as _;

use super::{Source, SourceError, VerifiedRevision};

/// Files and bytes hashed to compute a revision id, at most.
const MAX_FILES: usize = 100_000;

#[derive(Debug)]
pub struct DirSource {
    root: PathBuf,
    manifest: RepoPath,
    name: String,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>, manifest: RepoPath) -> Self {
        let root = root.into();
        let name = format!("dir:{}", root.display());
        DirSource {
            root,
            manifest,
            name,
        }
    }

    fn io(&self, what: impl Into<String>, source: io::Error) -> SourceError {
        SourceError::Io {
            source_name: self.name.clone(),
            what: what.into(),
            source,
        }
    }

    /// The revision id: sha256 over the sorted (path, file digest) list of
    /// the tree, skipping dot-directories such as `.git`; and the address of
    /// each regular file, hashed on the way (a fetch reuses it).
    fn tree_id(&self) -> Result<(String, HashMap<RepoPath, ContentRef>), SourceError> {
        let mut entries = Vec::new();
        self.walk(&self.root, String::new(), &mut entries)?;
        entries.sort();
        let mut h = sha2::Sha256::new();
        let mut hashed = HashMap::new();
        for (path, digest, length) in &entries {
            h.update(path.as_bytes());
            h.update([0]);
            h.update(digest.as_bytes());
            if let (Some(length), Ok(p)) = (length, RepoPath::new(path)) {
                hashed.insert(
                    p,
                    ContentRef {
                        sha256: *digest,
                        length: *length,
                    },
                );
            }
        }
        Ok((format!("dir-{}", hex::encode(&h.finalize()[..10])), hashed))
    }

    fn walk(
        &self,
        dir: &Path,
        prefix: String,
        out: &mut Vec<(String, Sha256, Option<u64>)>,
    ) -> Result<(), SourceError> {
        let read =
            fs::read_dir(dir).map_err(|e| self.io(format!("listing {}", dir.display()), e))?;
        for entry in read {
            let entry = entry.map_err(|e| self.io(format!("listing {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let ft = entry
                .file_type()
                .map_err(|e| self.io(format!("stat {rel}"), e))?;
            if ft.is_dir() {
                if !name.starts_with('.') {
                    self.walk(&entry.path(), rel, out)?;
                }
            } else if ft.is_file() {
                if out.len() >= MAX_FILES {
                    return Err(SourceError::Refused {
                        source_name: self.name.clone(),
                        path: rel,
                        reason: format!("more than {MAX_FILES} files in the tree"),
                    });
                }
                let mut f =
                    File::open(entry.path()).map_err(|e| self.io(format!("opening {rel}"), e))?;
                let c = ContentRef::of_reader(&mut f)
                    .map_err(|e| self.io(format!("reading {rel}"), e))?;
                out.push((rel, c.sha256, Some(c.length)));
            } else if ft.is_symlink() {
                let target = fs::read_link(entry.path())
                    .map_err(|e| self.io(format!("readlink {rel}"), e))?;
                out.push((rel, Sha256::of(target.as_os_str().as_encoded_bytes()), None));
            }
        }
        Ok(())
    }

    /// Resolves `path` under the root, refusing symlinks at every component.
    fn resolve(&self, path: &RepoPath) -> Result<PathBuf, SourceError> {
        let mut full = self.root.clone();
        for component in path.components() {
            full.push(component);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(SourceError::Refused {
                        source_name: self.name.clone(),
                        path: path.to_string(),
                        reason:
                            "is or passes through a symlink, which the dir source does not follow"
                                .to_owned(),
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(SourceError::NotFound {
                        source_name: self.name.clone(),
                        path: path.clone(),
                    });
                }
                Err(e) => return Err(self.io(format!("stat {path}"), e)),
            }
        }
        Ok(full)
    }
}

impl Source for DirSource {
    fn fetch(&self) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        let meta =
            fs::metadata(&self.root).map_err(|e| self.io("opening the source directory", e))?;
        if !meta.is_dir() {
            return Err(self.io(
                "opening the source directory",
                io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        let (id, hashed) = self.tree_id()?;
        Ok(Arc::new(DirRevision {
            id,
            source: DirSource {
                root: self.root.clone(),
                manifest: self.manifest.clone(),
                name: self.name.clone(),
            },
            hashed: Mutex::new(hashed),
        }))
    }

    /// A revision of a dir source is a directory: `revision` is its path.
    fn fetch_revision(&self, revision: &str) -> Result<Arc<dyn VerifiedRevision>, SourceError> {
        DirSource::new(revision, self.manifest.clone()).fetch()
    }

    fn manifest_path(&self) -> &RepoPath {
        &self.manifest
    }
}

#[derive(Debug)]
struct DirRevision {
    id: String,
    source: DirSource,
    /// Each file's address, from hashing it once (render, then fetch).
    hashed: Mutex<HashMap<RepoPath, ContentRef>>,
}

impl VerifiedRevision for DirRevision {
    fn id(&self) -> &str {
        &self.id
    }

    fn source_name(&self) -> &str {
        &self.source.name
    }

    fn actor(&self) -> &str {
        "local-dir (unsigned)"
    }

    fn signed_target(&self, _path: &RepoPath) -> Result<Option<ContentRef>, SourceError> {
        Ok(None)
    }

    /// Unsigned: the file's hash, computed once per revision (the walk for
    /// the revision id hashes every file; another is hashed here). The store
    /// still checks every byte it fetches against it, so a file changed
    /// between render and fetch is refused, not installed.
    fn content(&self, path: &RepoPath) -> Result<ContentRef, SourceError> {
        let cached = self
            .hashed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            .copied();
        if let Some(c) = cached {
            return Ok(c);
        }
        let mut f = self.open_file(path)?;
        let c = ContentRef::of_reader(&mut f)
            .map_err(|e| self.source.io(format!("reading {path}"), e))?;
        self.hashed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(path.clone(), c);
        Ok(c)
    }

    fn open(&self, path: &RepoPath) -> Result<Box<dyn Read + '_>, SourceError> {
        Ok(Box::new(self.open_file(path)?))
    }

    fn base_url(&self) -> Option<String> {
        let root = self.source.root.canonicalize().ok()?;
        let encoded: String = root
            .to_str()?
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        Some(format!("file://{}/", encoded.trim_end_matches('/')))
    }

    fn open_at(&self, path: &RepoPath, offset: u64) -> Result<Box<dyn Read + '_>, SourceError> {
        use std::io::{Seek, SeekFrom};
        let mut f = self.open_file(path)?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| self.source.io(format!("seeking in {path}"), e))?;
        Ok(Box::new(f))
    }
}

impl DirRevision {
    fn open_file(&self, path: &RepoPath) -> Result<File, SourceError> {
        let full = self.source.resolve(path)?;
        // O_NOFOLLOW closes the window between the check above and the open.
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&full)
            .map_err(|e| self.source.io(format!("opening {path}"), e))?;
        if !f
            .metadata()
            .map_err(|e| self.source.io(format!("stat {path}"), e))?
            .is_file()
        {
            return Err(SourceError::Refused {
                source_name: self.source.name.clone(),
                path: path.to_string(),
                reason: "not a regular file".to_owned(),
            });
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RepoPath {
        RepoPath::new(s).unwrap()
    }

    #[test]
    fn id_changes_with_content_and_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        fs::create_dir_all(root.join("files")).unwrap();
        fs::write(root.join("ferry.yaml"), "x").unwrap();
        fs::write(root.join("files/a"), "a").unwrap();
        fs::write(dir.path().join("secret"), "outside").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("files/link")).unwrap();
        let src = DirSource::new(&root, rp("ferry.yaml"));
        let id1 = src.fetch().unwrap().id().to_owned();
        assert_eq!(src.fetch().unwrap().id(), id1, "id is deterministic");
        fs::write(root.join("files/a"), "b").unwrap();
        let rev = src.fetch().unwrap();
        assert_ne!(rev.id(), id1);
        let mut s = String::new();
        rev.open(&rp("files/a"))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "b");
        let e = rev.open(&rp("files/link")).err().unwrap().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert!(matches!(
            rev.open(&rp("nope")).err().unwrap(),
            SourceError::NotFound { .. }
        ));
        let e = rev.read_small(&rp("files/a"), 0).unwrap_err();
        assert!(matches!(e, SourceError::TooLarge { .. }));
    }

    #[test]
    fn a_fetch_carries_the_address_hashed_with_the_tree_and_counts_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        fs::create_dir_all(root.join("files")).unwrap();
        fs::write(root.join("ferry.yaml"), "x").unwrap();
        fs::write(root.join("files/a"), "hello\n").unwrap();
        let rev = DirSource::new(&root, rp("ferry.yaml")).fetch().unwrap();
        let want = ContentRef::of(b"hello\n");
        assert_eq!(rev.content(&rp("files/a")).unwrap(), want);
        // Changed after the revision was read: the address stays the one
        // the plan took from it, so the store refuses the new bytes.
        fs::write(root.join("files/a"), "changed\n").unwrap();
        assert_eq!(rev.content(&rp("files/a")).unwrap(), want, "hashed once");
        let mut f = rev.fetch(&rp("files/a"), 0, want).unwrap();
        assert_eq!(f.content(), want);
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        assert_eq!((f.bytes_read(), f.offset()), (8, 0));
        assert_ne!(ContentRef::of(&bytes), f.content());
        // From an offset (a resumed fetch).
        let mut f = rev.fetch(&rp("files/a"), 3, want).unwrap();
        bytes.clear();
        f.read_to_end(&mut bytes).unwrap();
        assert_eq!((bytes.as_slice(), f.offset()), (&b"nged\n"[..], 3));
        // No address for what the revision does not hold.
        assert!(matches!(
            rev.fetch(&rp("files/none"), 0, want).unwrap_err(),
            SourceError::NotFound { .. }
        ));
    }
}
