//! The device side: writes an image described by a verified index into
//! `out` (an inactive slot, a store file), chunk by chunk and in order,
//! taking each chunk from the first place that has it:
//!
//! 1. `out` itself, at the chunk's offset (`resume`: what an interrupted
//!    earlier attempt wrote), or at an earlier offset this run wrote;
//! 2. the seeds (the running slot, an older image), by sha256;
//! 3. the chunk store (fetched, bounded, verified).
//!
//! Every chunk read from a seed or from `out` is hashed again before it is
//! used (a seed's index may be stale); the whole image is hashed as it is
//! written and must match the signed sha256. Memory: one chunk plus the
//! seed maps (about 50 bytes per chunk).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use ferry_core::{ContentRef, Sha256};
use sha2::Digest;

use crate::chunker::{ChunkError, for_each_chunk};
use crate::index::{Chunk, ChunkIndex, Params};
use crate::store::{ChunkStore, FetchError, check};

/// Chunks a device already holds, by sha256: `(offset, length)` in `file`.
#[derive(Debug)]
pub struct Seed<'a> {
    pub name: String,
    pub file: &'a File,
    pub chunks: HashMap<Sha256, (u64, u32)>,
}

impl<'a> Seed<'a> {
    /// A seed whose content an index describes (cached from when it was written).
    pub fn from_index(name: impl Into<String>, file: &'a File, index: &ChunkIndex) -> Seed<'a> {
        Seed {
            name: name.into(),
            file,
            chunks: index
                .chunks
                .iter()
                .map(|c| (c.sha256, (c.offset, c.length)))
                .collect(),
        }
    }

    /// Reads the first `limit` bytes of `file` (or to its end) and chunks
    /// them with `params`. Also returns the chunks in order, which the
    /// caller may cache as the seed's index.
    pub fn scan(
        name: impl Into<String>,
        file: &'a File,
        params: &Params,
        limit: u64,
    ) -> io::Result<(Seed<'a>, Vec<Chunk>)> {
        let mut chunks = Vec::new();
        let reader = io::Read::take(ReadAt { file, pos: 0 }, limit);
        for_each_chunk::<()>(reader, params, u64::MAX, |offset, data| {
            chunks.push(Chunk {
                offset,
                length: data.len() as u32,
                sha256: Sha256::of(data),
                stored: 0,
            });
            Ok(())
        })
        .map_err(|e| match e {
            ChunkError::Read(e) => e,
            ChunkError::TooLong(_) | ChunkError::Callback(()) => {
                unreachable!("no limit, no refusals")
            }
        })?;
        let seed = Seed {
            name: name.into(),
            file,
            chunks: chunks
                .iter()
                .map(|c| (c.sha256, (c.offset, c.length)))
                .collect(),
        };
        Ok((seed, chunks))
    }
}

/// Reads a file from a position without moving a shared cursor.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl io::Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Where the chunks of an assembled image came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub chunks: usize,
    /// Already in place in the output (an interrupted earlier attempt).
    pub in_place: usize,
    pub bytes_in_place: u64,
    /// Copied from a seed or from earlier in the output.
    pub reused: usize,
    pub bytes_reused: u64,
    /// Fetched from the store: chunks, their plain bytes, bytes transferred.
    pub fetched: usize,
    pub bytes_fetched_plain: u64,
    pub bytes_fetched: u64,
    /// Seed chunks that no longer matched their index (fetched instead).
    pub stale_seed_chunks: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// The index is not the index of the image the signed metadata names.
    #[error("the chunk index describes image {index}, the resource names {resource}")]
    WrongIndex { index: String, resource: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Every chunk matched, yet the image does not: the index is inconsistent.
    #[error("the assembled image has sha256 {got}, the index promises {expected}")]
    Image { expected: Sha256, got: Sha256 },
}

impl AssembleError {
    /// Whether a full download may succeed where this failed: the chunks or
    /// the index were bad or the store unreachable, not the output.
    pub fn full_download_may_help(&self) -> bool {
        !matches!(self, AssembleError::Io { .. })
    }
}

/// Writes the image `index` describes into `out` (opened for reading and
/// writing; `out_name` names it in errors). `expected` is the image's
/// signed address. `resume`: `out` may hold chunks of this image already
/// (check each in place first). `after_chunk` runs after every chunk.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    index: &ChunkIndex,
    expected: ContentRef,
    seeds: &[Seed<'_>],
    store: &dyn ChunkStore,
    out: &File,
    out_name: &str,
    resume: bool,
    after_chunk: &mut dyn FnMut(&Report),
) -> Result<Report, AssembleError> {
    if index.image != expected {
        return Err(AssembleError::WrongIndex {
            index: index.image.to_string(),
            resource: expected.to_string(),
        });
    }
    let write_err = |offset: u64| {
        move |source| AssembleError::Io {
            what: format!("writing {out_name} at byte {offset}"),
            source,
        }
    };
    let mut report = Report {
        chunks: index.chunks.len(),
        ..Report::default()
    };
    let mut image = sha2::Sha256::new();
    let mut written: HashMap<Sha256, (u64, u32)> = HashMap::new();
    let mut buf = vec![0u8; index.chunker.max as usize];
    for c in &index.chunks {
        let len = c.length as usize;
        let here = &mut buf[..len];
        // 1. In place (resume), or written earlier in this run.
        if resume && read_matching(out, c.offset, here, c) {
            report.in_place += 1;
            report.bytes_in_place += u64::from(c.length);
        } else if let Some(&(from, _)) = written.get(&c.sha256)
            && read_matching(out, from, here, c)
        {
            out.write_all_at(here, c.offset)
                .map_err(write_err(c.offset))?;
            report.reused += 1;
            report.bytes_reused += u64::from(c.length);
        } else if let Some(hit) = seeds.iter().find_map(|s| {
            s.chunks
                .get(&c.sha256)
                .filter(|&&(_, l)| l == c.length)
                .map(|&(from, _)| (s, from))
        }) && {
            let ok = read_matching(hit.0.file, hit.1, here, c);
            if !ok {
                report.stale_seed_chunks += 1;
            }
            ok
        } {
            out.write_all_at(here, c.offset)
                .map_err(write_err(c.offset))?;
            report.reused += 1;
            report.bytes_reused += u64::from(c.length);
        } else if !resume && read_matching(out, c.offset, here, c) {
            // Not resuming, but the output holds it where it belongs (an
            // older attempt, or the same data in the old image there).
            report.in_place += 1;
            report.bytes_in_place += u64::from(c.length);
        } else {
            let (plain, transferred) = store.fetch(c)?;
            out.write_all_at(&plain, c.offset)
                .map_err(write_err(c.offset))?;
            here.copy_from_slice(&plain);
            report.fetched += 1;
            report.bytes_fetched_plain += u64::from(c.length);
            report.bytes_fetched += transferred;
        }
        image.update(&*here);
        written.entry(c.sha256).or_insert((c.offset, c.length));
        after_chunk(&report);
    }
    out.sync_data().map_err(|source| AssembleError::Io {
        what: format!("fsync of {out_name}"),
        source,
    })?;
    let got = Sha256::from_bytes(image.finalize().into());
    if got != expected.sha256 {
        return Err(AssembleError::Image {
            expected: expected.sha256,
            got,
        });
    }
    Ok(report)
}

/// Reads `chunk.length` bytes at `offset` into `buf` and checks them.
fn read_matching(file: &File, offset: u64, buf: &mut [u8], chunk: &Chunk) -> bool {
    file.read_exact_at(buf, offset).is_ok() && check(buf, chunk).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise;
    use crate::store::{Remote, Timeouts};

    struct Setup {
        dir: tempfile::TempDir,
        index: ChunkIndex,
        v1: Vec<u8>,
        v2: Vec<u8>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let v1 = noise(3 << 20, 1);
        let mut v2 = v1.clone();
        v2.splice(5000..5000, noise(4096, 2));
        v2[2 << 20..(2 << 20) + 10_000].copy_from_slice(&noise(10_000, 3));
        fs::write(dir.path().join("v2.img"), &v2).unwrap();
        let p = crate::chunk_image(
            &dir.path().join("v2.img"),
            &dir.path().join("pub"),
            &Params::default(),
            3,
        )
        .unwrap();
        let index = ChunkIndex::parse(&fs::read(&p.index_path).unwrap(), "v2").unwrap();
        Setup { dir, index, v1, v2 }
    }

    use std::fs;

    fn store(s: &Setup) -> Remote {
        Remote::new(
            &format!("file://{}/pub/chunks/", s.dir.path().display()),
            Timeouts::default(),
        )
        .unwrap()
    }

    #[test]
    fn builds_from_a_seed_and_fetches_only_the_rest() {
        let s = setup();
        fs::write(s.dir.path().join("seed"), &s.v1).unwrap();
        let seed_file = File::open(s.dir.path().join("seed")).unwrap();
        let (seed, _) = Seed::scan("v1", &seed_file, &s.index.chunker, u64::MAX).unwrap();
        let out = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(s.dir.path().join("out"))
            .unwrap();
        let r = assemble(
            &s.index,
            s.index.image,
            &[seed],
            &store(&s),
            &out,
            "out",
            false,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(fs::read(s.dir.path().join("out")).unwrap(), s.v2);
        assert!(r.fetched > 0 && r.fetched <= 5, "{r:?}");
        assert_eq!(r.fetched + r.reused + r.in_place, r.chunks);

        // Again, resuming: everything is in place, nothing fetched.
        let r = assemble(
            &s.index,
            s.index.image,
            &[],
            &store(&s),
            &out,
            "out",
            true,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!((r.in_place, r.fetched), (r.chunks, 0), "{r:?}");
    }

    #[test]
    fn a_stale_seed_is_fetched_around_and_a_wrong_index_refused() {
        let s = setup();
        // The seed's index says v1, but the file changed since.
        fs::write(s.dir.path().join("seed"), &s.v1).unwrap();
        let seed_file = File::open(s.dir.path().join("seed")).unwrap();
        let (seed, _) = Seed::scan("v1", &seed_file, &s.index.chunker, u64::MAX).unwrap();
        fs::write(s.dir.path().join("seed"), noise(3 << 20, 9)).unwrap();
        let out = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(s.dir.path().join("out"))
            .unwrap();
        let r = assemble(
            &s.index,
            s.index.image,
            &[seed],
            &store(&s),
            &out,
            "out",
            false,
            &mut |_| {},
        )
        .unwrap();
        assert!(r.stale_seed_chunks > 0, "{r:?}");
        assert_eq!(fs::read(s.dir.path().join("out")).unwrap(), s.v2);

        let other = ContentRef::of(b"another image");
        let e = assemble(
            &s.index,
            other,
            &[],
            &store(&s),
            &out,
            "out",
            false,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(e, AssembleError::WrongIndex { .. }), "{e}");
        assert!(e.full_download_may_help());
    }

    #[test]
    fn a_missing_or_planted_chunk_is_unavailable_or_a_mismatch() {
        let s = setup();
        let c = s.index.chunks[0];
        let path = s
            .dir
            .path()
            .join("pub/chunks")
            .join(crate::chunk_path(&c.sha256));
        let packed = fs::read(&path).unwrap();
        // A symlink planted in the store is not followed.
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
        assert!(matches!(
            store(&s).fetch(&c),
            Err(FetchError::Unavailable { .. })
        ));
        fs::remove_file(&path).unwrap();
        assert!(matches!(
            store(&s).fetch(&c),
            Err(FetchError::Unavailable { .. })
        ));
        // Another chunk's bytes under this name; then one byte too many.
        let other = s.index.chunks[1];
        let other_packed = fs::read(
            s.dir
                .path()
                .join("pub/chunks")
                .join(crate::chunk_path(&other.sha256)),
        )
        .unwrap();
        fs::write(&path, &other_packed).unwrap();
        assert!(matches!(
            store(&s).fetch(&c),
            Err(FetchError::Mismatch { .. })
        ));
        let mut long = packed.clone();
        long.push(0);
        fs::write(&path, &long).unwrap();
        let e = store(&s).fetch(&c).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        fs::write(&path, &packed).unwrap();
        assert_eq!(store(&s).fetch(&c).unwrap().0.len(), c.length as usize);
    }
}
