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
