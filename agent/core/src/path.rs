//! `RepoPath`: a path inside a verified revision that cannot escape it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A relative, normalised path inside a revision (`files/bridge.conf`).
///
/// Refuses absolute paths, `..`, `.`, empty components, backslashes and NUL,
/// so joining it to a directory can never name anything outside that
/// directory (symlinks are the source's business, see the dir source).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RepoPath(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path {path:?} in revision: {reason}")]
pub struct RepoPathError {
    pub path: String,
    pub reason: &'static str,
}

/// Longest accepted path, in bytes (PATH_MAX on Linux is 4096).
const MAX_LEN: usize = 1024;

impl RepoPath {
    pub fn new(path: impl Into<String>) -> Result<Self, RepoPathError> {
        let path = path.into();
        let fail = |reason| {
            Err(RepoPathError {
                path: path.clone(),
                reason,
            })
        };
        if path.is_empty() {
            return fail("empty");
        }
        if path.len() > MAX_LEN {
            return fail("longer than 1024 bytes");
        }
        if path.starts_with('/') {
            return fail("absolute paths are not allowed");
        }
        if path.contains('\\') || path.contains('\0') {
            return fail("backslash or NUL in path");
        }
        for component in path.split('/') {
            match component {
                "" => return fail("empty path component"),
                "." | ".." => return fail("'.' and '..' are not allowed"),
                _ => {}
            }
        }
        Ok(RepoPath(path))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl fmt::Display for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoPath({:?})", self.0)
    }
}

impl<'de> Deserialize<'de> for RepoPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RepoPath::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        for ok in ["a", "files/bridge.conf", "a/b/c.d", "dir/.hidden"] {
            assert_eq!(RepoPath::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_escapes() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(RepoPath::new(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
