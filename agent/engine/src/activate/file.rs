//! The `file` activator: files written atomically (temp + fsync + rename),
//! with their mode; the previous content is kept in the store for undo.
//!
//! Paths are absolute in the manifest and joined under `files.root`. No
//! component below the root may be a symlink: a link planted in the tree must
//! not redirect a write outside it.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use ferry_core::{ContentRef, Kind, Op, Resource, Sha256, Step};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ActivateError, Activator};
use crate::fsutil::{remove_durable, write_atomic};
use crate::store::{Store, store_error};

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
    mode: u32,
}

impl FileActivator {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileActivator { root: root.into() }
    }

    /// The destination under the root; refuses `..` and symlinked parents.
    pub fn destination(&self, name: &str) -> Result<PathBuf, ActivateError> {
        let rel = Path::new(name)
            .strip_prefix("/")
            .map_err(|_| ActivateError::new(format!("file {name}"), "path must be absolute"))?;
        let mut dest = self.root.clone();
        let mut parts = rel.components().peekable();
        while let Some(c) = parts.next() {
            let Component::Normal(part) = c else {
                return Err(ActivateError::new(
                    format!("file {name}"),
                    "path must be normalised (no `.` or `..`)",
                ));
            };
            dest.push(part);
            if parts.peek().is_some()
                && let Ok(m) = fs::symlink_metadata(&dest)
                && m.file_type().is_symlink()
            {
                return Err(ActivateError::new(
                    format!("file {name}"),
                    format!("{} is a symlink; name the real path", dest.display()),
                ));
            }
        }
        Ok(dest)
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

    fn install(
        &self,
        dest: &Path,
        content: ContentRef,
        mode: u32,
        store: &Store,
        what: &str,
    ) -> Result<(), ActivateError> {
        let fail = |m: String| ActivateError::new(what, m);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| fail(format!("creating {}: {e}", parent.display())))?;
        }
        // The blob is re-verified while copied, so a damaged store is caught.
        let mut reader = store
            .open_verified(content)
            .map_err(|e| fail(e.to_string()))?;
        write_atomic(dest, mode, &mut reader).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                fail(store_error(what, e).to_string())
            } else {
                fail(format!("writing {}: {e}", dest.display()))
            }
        })?;
        Ok(())
    }
}

impl Activator for FileActivator {
    fn kind(&self) -> Kind {
        Kind::File
    }

    fn prepare(&self, step: &Step, store: &Store) -> Result<Value, ActivateError> {
        let dest = self.destination(&step.id.name)?;
        let what = step.id.to_string();
        let previous = match fs::symlink_metadata(&dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ActivateError::new(
                    &what,
                    format!("stat {}: {e}", dest.display()),
                ));
            }
            Ok(m) if !m.is_file() => {
                return Err(ActivateError::new(
                    &what,
                    format!("{} exists and is not a regular file", dest.display()),
                ));
            }
            Ok(m) => {
                let data = fs::read(&dest).map_err(|e| {
                    ActivateError::new(&what, format!("reading {}: {e}", dest.display()))
                })?;
                let content = store
                    .put_bytes(&data, &format!("previous content of {}", dest.display()))
                    .map_err(|e| ActivateError::new(&what, e))?;
                Some(Previous {
                    content,
                    mode: m.permissions().mode() & 0o7777,
                })
            }
        };
        Ok(serde_json::to_value(Undo { previous }).expect("undo record serialises"))
    }

    fn apply(&self, step: &Step, store: &Store) -> Result<(), ActivateError> {
        let dest = self.destination(&step.id.name)?;
        let what = step.id.to_string();
        match (step.op, &step.to) {
            (Op::Add | Op::Change, Some(to)) => {
                self.install(&dest, to.content, Self::mode(to)?, store, &what)
            }
            (Op::Remove, _) => remove_durable(&dest).map_err(|e| {
                ActivateError::new(&what, format!("removing {}: {e}", dest.display()))
            }),
            _ => Err(ActivateError::new(&what, "step has no target resource")),
        }
    }

    fn undo(&self, step: &Step, undo: &Value, store: &Store) -> Result<(), ActivateError> {
        let dest = self.destination(&step.id.name)?;
        let what = step.id.to_string();
        let undo: Undo = serde_json::from_value(undo.clone())
            .map_err(|e| ActivateError::new(&what, format!("undo record: {e}")))?;
        match undo.previous {
            Some(prev) => self.install(&dest, prev.content, prev.mode & 0o777, store, &what),
            None => remove_durable(&dest).map_err(|e| {
                ActivateError::new(&what, format!("removing {}: {e}", dest.display()))
            }),
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
        let root = dir.path().join("root");
        fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("etc")).unwrap();
        let e = FileActivator::new(&root)
            .destination("/etc/passwd")
            .unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }
}
