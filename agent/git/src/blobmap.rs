//! The content addresses of a commit's files without reading them again.
//!
//! A git tree names each file by its blob id, and the signed commit vouches
//! for the tree; ferry's store and generations name content by sha256. The
//! first time a blob is used its bytes are read once and hashed; the pair
//! (blob id → sha256, length) is kept in `<state_dir>/git/blob-sha256`, so a
//! poll of an unchanged tree resolves every file from the map and reads no
//! blob. Bytes fetched into the store are still checked against the sha256
//! as they stream, so a wrong entry cannot put other bytes in the store.
//!
//! The file is a cache: one line per blob, `<40 hex> <64 hex> <length>`,
//! written atomically, at most [`MAX_ENTRIES`] lines (the blobs the last
//! revision used come first), read with a size bound. A file that does not
//! parse is set aside with a warning and rebuilt; nothing depends on it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use ferry_core::{ContentRef, Sha256};
use gix::ObjectId;

/// Most entries kept: a tree of this many files still resolves from the
/// map alone; the file stays under 8 MiB.
pub const MAX_ENTRIES: usize = 65_536;
/// One line: 40 + 1 + 64 + 1 + at most 20 digits + newline.
const MAX_LINE: usize = 127;
const MAX_FILE_BYTES: u64 = (MAX_ENTRIES * MAX_LINE) as u64;

/// What a revision read from the object database, for the debug log and
/// tests: blobs read (and their bytes), of which hashed to find a content
/// address, and content addresses found in the map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReadStats {
    pub blobs_read: u64,
    pub bytes_read: u64,
    pub blobs_hashed: u64,
    pub from_map: u64,
}

#[derive(Debug)]
pub(crate) struct BlobMap {
    path: PathBuf,
    known: HashMap<ObjectId, ContentRef>,
    /// Looked up by this revision: kept first when the file is rewritten.
    used: HashMap<ObjectId, ContentRef>,
    /// Whether an entry was added since the file was read.
    added: bool,
    pub(crate) stats: ReadStats,
}

impl BlobMap {
    /// The map at `path` (empty when the file is missing or unreadable).
    pub(crate) fn load(path: PathBuf) -> BlobMap {
        let known = match read(&path) {
            Ok(known) => known,
            Err(why) => {
                tracing::warn!(path = %path.display(), %why, "git: the blob map is unreadable; content addresses are computed again");
                HashMap::new()
            }
        };
        BlobMap {
            path,
            known,
            used: HashMap::new(),
            added: false,
            stats: ReadStats::default(),
        }
    }

    /// The content address of blob `oid`, if known.
    pub(crate) fn get(&mut self, oid: &ObjectId) -> Option<ContentRef> {
        let c = self
            .used
            .get(oid)
            .or_else(|| self.known.get(oid))
            .copied()?;
        self.used.insert(*oid, c);
        self.stats.from_map += 1;
        Some(c)
    }

    /// Records the content address of blob `oid`, computed from its bytes.
    pub(crate) fn insert(&mut self, oid: ObjectId, c: ContentRef) {
        self.stats.blobs_hashed += 1;
        self.used.insert(oid, c);
        self.added = true;
    }

    /// Writes the map if entries were added: the used ones first, then the
    /// others up to [`MAX_ENTRIES`].
    pub(crate) fn persist(&mut self) -> std::io::Result<()> {
        if !self.added {
            return Ok(());
        }
        let mut text = String::new();
        let mut n = 0;
        let mut line = |oid: &ObjectId, c: &ContentRef| {
            if n < MAX_ENTRIES {
                text.push_str(&format!("{oid} {} {}\n", c.sha256, c.length));
                n += 1;
            }
        };
        let mut used: Vec<_> = self.used.iter().collect();
        used.sort_unstable_by_key(|(oid, _)| **oid);
        for (oid, c) in used {
            line(oid, c);
        }
        let mut rest: Vec<_> = self
            .known
            .iter()
            .filter(|(oid, _)| !self.used.contains_key(*oid))
            .collect();
        rest.sort_unstable_by_key(|(oid, _)| **oid);
        for (oid, c) in rest {
            line(oid, c);
        }
        ferry_fs::write_atomic(&self.path, 0o600, &mut text.as_bytes())?;
        self.added = false;
        Ok(())
    }
}

/// Reads and parses the map file: missing is empty; a symlink, a file over
/// the bound or a bad line is an error naming the line.
fn read(path: &Path) -> Result<HashMap<ObjectId, ContentRef>, String> {
    let dir = ferry_fs::parent(path);
    let name = path.file_name().unwrap_or(OsStr::new(""));
    let dir = match ferry_fs::Dir::open(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(e.to_string()),
    };
    let Some(bytes) = dir
        .read_bounded(name, MAX_FILE_BYTES)
        .map_err(|e| e.to_string())?
    else {
        return Ok(HashMap::new());
    };
    parse(std::str::from_utf8(&bytes).map_err(|e| e.to_string())?)
}

fn parse(text: &str) -> Result<HashMap<ObjectId, ContentRef>, String> {
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |what: &str| format!("line {}: {what}", i + 1);
        let mut fields = line.split(' ');
        let (Some(oid), Some(sha), Some(len), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad("want `<blob id> <sha256> <length>`"));
        };
        if oid.len() != 40 {
            return Err(bad("the blob id is not 40 hex digits"));
        }
        let oid = ObjectId::from_hex(oid.as_bytes()).map_err(|e| bad(&e.to_string()))?;
        let sha256: Sha256 = sha
            .parse()
            .map_err(|e: ferry_core::DigestParseError| bad(&e.to_string()))?;
        let length: u64 = len.parse().map_err(|_| bad("the length is not a number"))?;
        map.insert(oid, ContentRef { sha256, length });
    }
    if map.len() > MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} entries"));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn entries_survive_a_round_trip_and_unused_ones_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob-sha256");
        let mut m = BlobMap::load(path.clone());
        assert_eq!(m.get(&oid(1)), None);
        m.insert(oid(1), ContentRef::of(b"one"));
        m.insert(oid(2), ContentRef::of(b"two"));
        m.persist().unwrap();

        let mut m = BlobMap::load(path.clone());
        assert_eq!(m.get(&oid(1)), Some(ContentRef::of(b"one")));
        m.insert(oid(3), ContentRef::of(b"three"));
        m.persist().unwrap();
        assert_eq!(m.stats.from_map, 1);
        assert_eq!(m.stats.blobs_hashed, 1);

        let mut m = BlobMap::load(path);
        for (n, data) in [(1, &b"one"[..]), (2, b"two"), (3, b"three")] {
            assert_eq!(m.get(&oid(n)), Some(ContentRef::of(data)), "{n}");
        }
    }

    #[test]
    fn a_bad_file_names_the_line_and_is_not_used() {
        let c = ContentRef::of(b"x");
        let good = format!("{} {} {}\n", oid(1), c.sha256, c.length);
        assert_eq!(parse(&good).unwrap().len(), 1);
        for (bad, want) in [
            (format!("{} {}\n", oid(1), c.sha256), "line 1: want"),
            (
                format!("{good}{} {} 1 2\n", oid(2), c.sha256),
                "line 2: want",
            ),
            (
                format!("{} {} 1\n", &oid(1).to_string()[..39], c.sha256),
                "line 1: the blob id",
            ),
            (
                format!("{} {} 1\n", oid(1), c.sha256.to_hex().to_uppercase()),
                "line 1: not a sha256",
            ),
            (
                format!("{} {} -1\n", oid(1), c.sha256),
                "line 1: the length",
            ),
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.starts_with(want), "{bad:?}: {err}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob-sha256");
        std::fs::write(&path, format!("{good}garbage\n")).unwrap();
        let mut m = BlobMap::load(path.clone());
        assert_eq!(m.get(&oid(1)), None, "nothing of a bad file is used");

        // A planted symlink is not followed.
        std::fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, &good).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(read(&path).is_err());
        let mut m = BlobMap::load(path);
        assert_eq!(m.get(&oid(1)), None);
    }

    #[test]
    fn an_oversized_file_is_refused_while_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob-sha256");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn the_file_is_bounded_and_keeps_the_used_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob-sha256");
        let mut m = BlobMap::load(path.clone());
        let c = ContentRef::of(b"x");
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            let mut b = [0u8; 20];
            b[..4].copy_from_slice(&i.to_be_bytes());
            m.known.insert(ObjectId::from_bytes_or_panic(&b), c);
        }
        let last = ObjectId::from_bytes_or_panic(&[0xff; 20]);
        m.insert(last, c);
        m.persist().unwrap();
        let read_back = read(&path).unwrap();
        assert_eq!(read_back.len(), MAX_ENTRIES);
        assert!(read_back.contains_key(&last), "the used entry is kept");
    }
}
