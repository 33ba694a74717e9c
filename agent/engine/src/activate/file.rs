//! The `file` activator: files written atomically (temp + fsync + rename),
//! with their mode; the previous content is kept in the store for undo.
//!
//! Paths are absolute in the manifest and joined under `files.root`. Every
//! directory below the root is opened with `O_NOFOLLOW` and the write goes
//! through that descriptor (`ferry_fs::Dir`), to an unpredictable temp name
//! created with `O_EXCL`: a symlink or FIFO planted by a user who can write a
//! managed directory can neither redirect nor block a write.

use std::io;
use std::path::{Component, Path, PathBuf};

use ferry_core::{ContentRef, Drift, Kind, Op, Resource, Sha256, Step};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ActivateError, Activator, DriftPass};
use crate::fsutil::{Dir, FileMode};
use crate::store::state::FileCheck;
use crate::store::{Store, store_error};

/// The largest drifted file a restore keeps for undo.
const MAX_DRIFT_BACKUP: u64 = 64 << 20;

#[derive(Debug, Clone)]
pub struct FileActivator {
    root: PathBuf,
}

/// What was at the path before the step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Undo {
    previous: Option<Previous>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Previous {
    content: ContentRef,
    /// Permission bits including setuid/setgid/sticky, restored on undo.
    mode: u32,
    /// Owner and group, restored on undo (absent in records of older ferry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<(u32, u32)>,
}

/// The parent directory of a destination, opened below the root.
struct Parent {
    dir: Dir,
    name: std::ffi::OsString,
    dest: PathBuf,
}

impl FileActivator {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileActivator { root: root.into() }
    }

    fn relative(name: &str) -> Result<&Path, ActivateError> {
        let rel = Path::new(name)
            .strip_prefix("/")
            .map_err(|_| ActivateError::new(format!("file {name}"), "path must be absolute"))?;
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(ActivateError::new(
                format!("file {name}"),
                "path must be normalised (no `.` or `..`)",
            ));
        }
        Ok(rel)
    }

    /// Opens the destination's directory below the root without following
    /// symlinks, creating missing directories (0755) when `create`. `None`
    /// when a directory is missing and not to be created.
    fn parent(&self, name: &str, create: bool) -> Result<Option<Parent>, ActivateError> {
        let what = format!("file {name}");
        let rel = Self::relative(name)?;
        let file = rel.file_name().expect("normal last component");
        let root = if create {
            Dir::create(&self.root, 0o755)
        } else {
            Dir::open(&self.root)
        };
        let root = match root {
            Ok(d) => d,
            Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ActivateError::new(
                    what,
                    format!("opening files.root {}: {e}", self.root.display()),
                ));
            }
        };
        let dir_rel = rel.parent().unwrap_or(Path::new(""));
        let dir = root
            .open_beneath(dir_rel, create.then_some(0o755))
            .map_err(|e| ActivateError::new(&what, e.to_string()))?;
        Ok(dir.map(|dir| Parent {
            dest: dir.path().join(file),
            dir,
            name: file.to_owned(),
        }))
    }

    fn mode(resource: &Resource) -> Result<u32, ActivateError> {
        let text = resource
            .settings
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("0644");
        let bits = u32::from_str_radix(text, 8)
            .map_err(|e| ActivateError::new(resource.id(), format!("mode {text:?}: {e}")))?;
        if bits & !0o777 != 0 {
            return Err(ActivateError::new(
                resource.id(),
                format!("mode {text} has special bits"),
            ));
        }
        Ok(bits)
    }

    /// Writes `content` to the destination. A file it replaces keeps its
    /// owner and group; `mode` becomes the new permission bits.
    fn install(
        &self,
        name: &str,
        content: ContentRef,
        mode: u32,
        owner: Option<(u32, u32)>,
        store: &Store,
        what: &str,
    ) -> Result<(), ActivateError> {
        let fail = |m: String| ActivateError::new(what, m);
        let p = self.parent(name, true)?.expect("created");
        let existing = p
            .dir
            .stat(&p.name)
            .map_err(|e| fail(format!("stat {}: {e}", p.dest.display())))?;
        let owner = owner.or_else(|| existing.filter(|m| m.is_file()).map(|m| (m.uid, m.gid)));
        // The blob is re-verified while copied, so a damaged store is caught.
        let mut reader = store
            .open_verified(content)
            .map_err(|e| fail(e.to_string()))?;
        p.dir
            .write_atomic(&p.name, FileMode { perm: mode, owner }, &mut reader)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    fail(store_error(what, e).to_string())
                } else {
                    fail(format!("writing {}: {e}", p.dest.display()))
                }
            })?;
        Ok(())
    }

    /// The regular file installed at `name` below the root, opened without
    /// following a symlink; `None` when there is none.
    pub fn open_installed(&self, name: &str) -> Option<std::fs::File> {
        let p = self.parent(name, false).ok()??;
        p.dir.open_file(&p.name).ok()?.map(|(f, _)| f)
    }

    /// Removes the destination and any temp file an interrupted write of it
    /// left (a crash between creating the temp file and the rename).
    fn remove(&self, name: &str, what: &str) -> Result<(), ActivateError> {
        let Some(p) = self.parent(name, false)? else {
            return Ok(());
        };
        let fail =
            |e: io::Error| ActivateError::new(what, format!("removing {}: {e}", p.dest.display()));
        p.dir.remove_temps(&p.name).map_err(fail)?;
        match p.dir.stat(&p.name).map_err(fail)? {
            Some(m) if m.is_dir() => Err(ActivateError::new(
                what,
                format!("{} is a directory", p.dest.display()),
            )),
            Some(_) => p.dir.remove(&p.name).map(drop).map_err(fail),
            None => Ok(()),
        }
    }
}

impl Activator for FileActivator {
    fn kind(&self) -> Kind {
        Kind::File
    }

    fn prepare(&self, step: &Step, store: &Store) -> Result<Value, ActivateError> {
        let what = step.id.to_string();
        // What replaced a file ferry installed (a symlink, a FIFO) is put
        // aside, not kept: the restore writes over it, an undo leaves the
        // path empty (drift again, for the next reconcile).
        let replaced = step
            .drift()
            .any(|d| matches!(d, Drift::Replaced { found } if found != "directory"));
        let previous = match self.parent(&step.id.name, false)? {
            None => None,
            Some(p) if replaced => {
                let meta = p
                    .dir
                    .stat(&p.name)
                    .map_err(|e| ActivateError::new(&what, e.to_string()))?;
                if meta.is_some_and(|m| m.is_dir()) {
                    return Err(ActivateError::new(
                        &what,
                        format!("{} is a directory", p.dest.display()),
                    ));
                }
                None
            }
            Some(p) => match p.dir.open_file(&p.name) {
                Ok(None) => None,
                Err(e) => return Err(ActivateError::new(&what, e.to_string())),
                // What drifted is kept for undo only up to a bound: a file
                // a local user grew in place of a managed one must not fill
                // the state partition twice. Beyond it, an undo leaves the
                // path empty (drift again, restored by the next reconcile).
                Ok(Some((_, meta)))
                    if step.drift().next().is_some() && meta.len > MAX_DRIFT_BACKUP =>
                {
                    tracing::warn!(resource = %what, bytes = meta.len, "the drifted file is too large to keep for undo");
                    None
                }
                Ok(Some((f, meta))) => {
                    let content = store
                        .put_stream(
                            &mut std::io::Read::take(f, meta.len),
                            &format!("previous content of {}", p.dest.display()),
                        )
                        .map_err(|e| ActivateError::new(&what, e))?;
                    Some(Previous {
                        content,
                        mode: meta.perm(),
                        owner: Some((meta.uid, meta.gid)),
                    })
                }
            },
        };
        Ok(serde_json::to_value(Undo { previous }).expect("undo record serialises"))
    }

    fn apply(&self, step: &Step, store: &Store) -> Result<(), ActivateError> {
        let what = step.id.to_string();
        match (step.op, &step.to) {
            (Op::Add | Op::Change, Some(to)) => {
                // Restoring a changed owner puts back the one installed; any
                // other write keeps the owner of the file it replaces.
                let owner = step.drift().find_map(|d| match d {
                    Drift::Owner { expected, .. } => Some(*expected),
                    _ => None,
                });
                self.install(
                    &step.id.name,
                    to.content,
                    Self::mode(to)?,
                    owner,
                    store,
                    &what,
                )
            }
            (Op::Remove, _) => self.remove(&step.id.name, &what),
            _ => Err(ActivateError::new(&what, "step has no target resource")),
        }
    }

    fn undo(&self, step: &Step, undo: &Value, store: &Store) -> Result<(), ActivateError> {
        let what = step.id.to_string();
        let undo: Undo = serde_json::from_value(undo.clone())
            .map_err(|e| ActivateError::new(&what, format!("undo record: {e}")))?;
        match undo.previous {
            Some(prev) => {
                self.install(
                    &step.id.name,
                    prev.content,
                    prev.mode & 0o7777,
                    prev.owner,
                    store,
                    &what,
                )?;
                // The install above wrote its own temp; one an interrupted
                // apply left is still there.
                match self.parent(&step.id.name, false)? {
                    Some(p) => p.dir.remove_temps(&p.name).map(drop).map_err(|e| {
                        ActivateError::new(&what, format!("{}: {e}", p.dest.display()))
                    }),
                    None => Ok(()),
                }
            }
            None => self.remove(&step.id.name, &what),
        }
    }

    fn installed(&self, step: &Step) -> Option<(String, FileCheck)> {
        let to = step.to.as_ref().filter(|_| step.op != Op::Remove)?;
        let p = self.parent(&step.id.name, false).ok()??;
        let meta = p.dir.stat(&p.name).ok()??;
        meta.is_file().then(|| {
            (
                step.id.name.clone(),
                FileCheck {
                    sha256: to.content.sha256,
                    mode: meta.perm(),
                    uid: meta.uid,
                    gid: meta.gid,
                    dev: meta.dev,
                    ino: meta.ino,
                    size: meta.len,
                    mtime_ns: meta.mtime_ns,
                    ctime_ns: meta.ctime_ns,
                },
            )
        })
    }

    fn drift(
        &self,
        r: &Resource,
        pass: &mut DriftPass,
        full: bool,
    ) -> Result<Vec<Drift>, ActivateError> {
        // Named only when something fails (this runs for every managed
        // file at every reconcile).
        let fail = |m: String| ActivateError::new(r.id(), m);
        let rel = Self::relative(&r.name)?;
        let name = rel.file_name().expect("normal last component");
        let dir_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if !pass.dirs.contains_key(&dir_rel) {
            let dir = match Dir::open(&self.root) {
                Ok(root) => match root.open_beneath(&dir_rel, None) {
                    Ok(dir) => dir,
                    // A symlink or file planted where a directory was: not
                    // followed, and not an error that would stop every
                    // reconcile.
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                        return Ok(vec![Drift::Path {
                            found: e.to_string(),
                        }]);
                    }
                    Err(e) => return Err(fail(e.to_string())),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => {
                    return Err(fail(format!(
                        "opening files.root {}: {e}",
                        self.root.display()
                    )));
                }
            };
            pass.dirs.insert(dir_rel.clone(), dir);
        }
        let Some(dir) = pass.dirs[&dir_rel].as_ref() else {
            return Ok(vec![Drift::Deleted]);
        };
        let dest = || dir.path().join(name);
        let Some(meta) = dir
            .stat(name)
            .map_err(|e| fail(format!("stat {}: {e}", dest().display())))?
        else {
            return Ok(vec![Drift::Deleted]);
        };
        if !meta.is_file() {
            let found = meta.kind().trim_start_matches("a ").to_owned();
            return Ok(vec![Drift::Replaced { found }]);
        }
        let mut found = Vec::new();
        let mode = Self::mode(r)?;
        if meta.perm() != mode {
            found.push(Drift::Mode {
                expected: mode,
                found: meta.perm(),
            });
        }
        let owner = pass.checks.owner(&r.name, &meta);
        if owner != (meta.uid, meta.gid) {
            found.push(Drift::Owner {
                expected: owner,
                found: (meta.uid, meta.gid),
            });
        }
        match pass
            .checks
            .content(dir, name, &meta, &r.name, r.content, full)
            .map_err(|e| fail(format!("reading {}: {e}", dest().display())))?
        {
            Some(Drift::Deleted) => Ok(vec![Drift::Deleted]),
            Some(d) => {
                found.push(d);
                Ok(found)
            }
            None => Ok(found),
        }
    }

    fn is_original(&self, undo: &Value) -> bool {
        serde_json::from_value::<Undo>(undo.clone()).is_ok_and(|u| u.previous.is_some())
    }

    fn undo_blobs(&self, undo: &Value) -> Vec<Sha256> {
        serde_json::from_value::<Undo>(undo.clone())
            .ok()
            .and_then(|u| u.previous)
            .map(|p| vec![p.content.sha256])
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Reason, ResourceId};
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn step(op: Op, name: &str, to: Option<ContentRef>) -> Step {
        Step {
            op,
            id: ResourceId {
                kind: Kind::File,
                name: name.into(),
            },
            from: None,
            to: to.map(|content| Resource {
                kind: Kind::File,
                name: name.into(),
                content,
                settings: BTreeMap::from([("mode".into(), Value::from("0640"))]),
                secret: false,
            }),
            reasons: vec![Reason::New],
        }
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn apply_then_undo_restores_previous_content_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/a.conf"), "old").unwrap();
        fs::set_permissions(root.join("etc/a.conf"), fs::Permissions::from_mode(0o600)).unwrap();
        let act = FileActivator::new(&root);
        let new = store.put_bytes(b"new", "t").unwrap();
        let s = step(Op::Change, "/etc/a.conf", Some(new));
        let undo = act.prepare(&s, &store).unwrap();
        act.apply(&s, &store).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/a.conf")).unwrap(), "new");
        assert_eq!(mode_of(&root.join("etc/a.conf")), 0o640);
        act.undo(&s, &undo, &store).unwrap();
        act.undo(&s, &undo, &store).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/a.conf")).unwrap(), "old");
        assert_eq!(mode_of(&root.join("etc/a.conf")), 0o600);

        // A new file is removed again on undo, also when apply never ran.
        let s = step(Op::Add, "/etc/new/b.conf", Some(new));
        let undo = act.prepare(&s, &store).unwrap();
        act.undo(&s, &undo, &store).unwrap();
        act.apply(&s, &store).unwrap();
        assert!(root.join("etc/new/b.conf").is_file());
        act.undo(&s, &undo, &store).unwrap();
        assert!(!root.join("etc/new/b.conf").exists());
    }

    #[test]
    fn symlinked_parent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("etc")).unwrap();
        let act = FileActivator::new(&root);
        let new = store.put_bytes(b"new", "t").unwrap();
        let s = step(Op::Add, "/etc/passwd", Some(new));
        for e in [
            act.prepare(&s, &store).unwrap_err(),
            act.apply(&s, &store).unwrap_err(),
        ] {
            assert!(e.to_string().contains("etc is a symlink"), "{e}");
        }
        assert!(!dir.path().join("passwd").exists());
    }

    /// Regression: the temp file had a fixed name (`.NAME.ferry-tmp`),
    /// opened with create+truncate following symlinks, then chmodded: a
    /// link planted there made ferry write and chmod any file.
    #[test]
    fn planted_temp_symlink_and_fifo_neither_redirect_nor_block() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("etc/.a.conf.ferry-tmp")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("etc/.b.conf.ferry-tmp"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let act = FileActivator::new(&root);
        let new = store.put_bytes(b"new", "t").unwrap();
        for name in ["/etc/a.conf", "/etc/b.conf"] {
            let s = step(Op::Add, name, Some(new));
            act.prepare(&s, &store).unwrap();
            act.apply(&s, &store).unwrap();
            assert_eq!(fs::read_to_string(root.join(&name[1..])).unwrap(), "new");
        }
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(mode_of(&victim), 0o600);
        // The destination itself a symlink or FIFO: refused when taking it over.
        std::os::unix::fs::symlink(&victim, root.join("etc/c.conf")).unwrap();
        let e = act
            .prepare(&step(Op::Add, "/etc/c.conf", Some(new)), &store)
            .unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
    }

    /// Regression: undoing an interrupted add removed the destination but
    /// not the temp file the interrupted write left beside it.
    #[test]
    fn undo_removes_temp_files_of_an_interrupted_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/.x.conf.0123456789abcdef.ferry-tmp"), "half").unwrap();
        fs::write(root.join("etc/.y.conf.0123456789abcdef.ferry-tmp"), "half").unwrap();
        fs::write(root.join("etc/y.conf"), "os").unwrap();
        let act = FileActivator::new(&root);
        let new = store.put_bytes(b"new", "t").unwrap();
        for name in ["/etc/x.conf", "/etc/y.conf"] {
            let s = step(Op::Add, name, Some(new));
            let undo = act.prepare(&s, &store).unwrap();
            act.undo(&s, &undo, &store).unwrap();
        }
        let mut left: Vec<_> = fs::read_dir(root.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["y.conf"]);
        assert_eq!(fs::read_to_string(root.join("etc/y.conf")).unwrap(), "os");
    }

    #[test]
    fn replaced_file_keeps_owner_and_undo_restores_special_bits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        let p = root.join("usr/bin/tool");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o4755)).unwrap();
        let act = FileActivator::new(&root);
        let new = store.put_bytes(b"new", "t").unwrap();
        let s = step(Op::Change, "/usr/bin/tool", Some(new));
        let undo = act.prepare(&s, &store).unwrap();
        act.apply(&s, &store).unwrap();
        // The manifest's mode, never special bits.
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        act.undo(&s, &undo, &store).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o4755
        );
        use std::os::unix::fs::MetadataExt;
        let (m, mine) = (fs::metadata(&p).unwrap(), fs::metadata(dir.path()).unwrap());
        assert_eq!((m.uid(), m.gid()), (mine.uid(), mine.gid()));
    }
}
