//! The publisher's side (`ferry chunk`): an image into a chunk store (one
//! compressed file per distinct chunk, shared by every image published to
//! the same store) and its index.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use ferry_core::{ContentRef, Sha256};
use sha2::Digest;

use crate::chunker::{ChunkError, for_each_chunk};
use crate::index::{ALGORITHM, Chunk, ChunkIndex, FORMAT, Params, stored_bound};

/// What `ferry chunk` made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    /// The index file written.
    pub index_path: PathBuf,
    /// The index file's sha256 and length (what a manifest may pin).
    pub index_file: ContentRef,
    pub image: ContentRef,
    pub chunks: usize,
    pub distinct: usize,
    /// Chunks the store did not hold yet, and their compressed bytes.
    pub new_chunks: usize,
    pub new_bytes: u64,
    /// Compressed bytes of all distinct chunks (a full fetch by chunks).
    pub stored_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Params(String),
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Chunks `image` into `out/chunks/` and writes the index to
/// `out/<image name>.chunks`. Chunks already in the store are verified and
/// kept. `level` is the zstd level.
pub fn chunk_image(
    image: &Path,
    out: &Path,
    params: &Params,
    level: i32,
) -> Result<Published, PublishError> {
    params.check().map_err(PublishError::Params)?;
    let store = out.join("chunks");
    fs::create_dir_all(&store).map_err(io_err(&store))?;
    let src = File::open(image).map_err(io_err(image))?;
    let mut whole = sha2::Sha256::new();
    let mut chunks = Vec::new();
    let mut stored: HashMap<Sha256, (u32, bool)> = HashMap::new();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let length = std::thread::scope(|scope| -> Result<u64, PublishError> {
        let (job_tx, job_rx) = mpsc::sync_channel::<(Sha256, Vec<u8>)>(2 * workers);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel();
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = job_rx.clone();
                let done = done_tx.clone();
                let store = &store;
                scope.spawn(move || -> Result<(), PublishError> {
                    let mut z =
                        zstd::bulk::Compressor::new(level).map_err(io_err(Path::new("zstd")))?;
                    loop {
                        let job = rx.lock().expect("no worker panics holding it").recv();
                        let Ok((sha, data)) = job else {
                            return Ok(());
                        };
                        let r = store_chunk(store, &mut z, &sha, &data)?;
                        let _ = done.send((sha, r));
                    }
                })
            })
            .collect();
        drop(done_tx);
        let mut seen = std::collections::HashSet::new();
        let total = for_each_chunk(src, params, u64::MAX, |offset, data| {
            whole.update(data);
            let sha = Sha256::of(data);
            chunks.push(Chunk {
                offset,
                length: data.len() as u32,
                sha256: sha,
                stored: 0,
            });
            if seen.insert(sha) {
                job_tx
                    .send((sha, data.to_vec()))
                    .map_err(|_| io::Error::other("a compression worker stopped"))?;
            }
            Ok::<(), io::Error>(())
        });
        drop(job_tx);
        for h in handles {
            h.join().expect("compression workers do not panic")?;
        }
        for (sha, r) in done_rx {
            stored.insert(sha, r);
        }
        total.map_err(|e| match e {
            ChunkError::Read(e) | ChunkError::Callback(e) => io_err(image)(e),
            ChunkError::TooLong(_) => unreachable!("no limit"),
        })
    })?;
    let mut new_chunks = 0;
    let mut new_bytes = 0;
    for (size, new) in stored.values() {
        if *new {
            new_chunks += 1;
            new_bytes += u64::from(*size);
        }
    }
    for c in &mut chunks {
        c.stored = stored[&c.sha256].0;
    }
    let index = ChunkIndex {
        format: FORMAT.to_owned(),
        chunker: Params {
            algorithm: ALGORITHM.to_owned(),
            ..params.clone()
        },
        image: ContentRef {
            sha256: Sha256::from_bytes(whole.finalize().into()),
            length,
        },
        compression: "zstd".to_owned(),
        chunks,
    };
    let bytes = index.to_bytes();
    let name = image
        .file_name()
        .map(|n| format!("{}.chunks", n.to_string_lossy()))
        .unwrap_or_else(|| "image.chunks".to_owned());
    let index_path = out.join(name);
    write_new(&index_path, &bytes, true)?;
    Ok(Published {
        index_path,
        index_file: ContentRef::of(&bytes),
        image: index.image,
        chunks: index.chunks.len(),
        distinct: stored.len(),
        new_chunks,
        new_bytes,
        stored_bytes: index.stored_bytes(),
    })
}

/// Stores one chunk unless the store holds it (verified) already. Returns
/// its stored size and whether it was written now.
fn store_chunk(
    store: &Path,
    z: &mut zstd::bulk::Compressor<'_>,
    sha: &Sha256,
    data: &[u8],
) -> Result<(u32, bool), PublishError> {
    let path = store.join(crate::chunk_path(sha));
    if let Some(existing) = read_existing(&path, u64::from(stored_bound(data.len() as u32)))
        && zstd::bulk::decompress(&existing, data.len())
            .is_ok_and(|plain| Sha256::of(&plain) == *sha)
    {
        return Ok((existing.len() as u32, false));
    }
    let packed = z.compress(data).map_err(io_err(&path))?;
    let dir = path.parent().expect("chunk paths have a directory");
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Not fsynced one by one (that would dominate the run): a chunk a
    // crash damaged fails the check above on the next run and is rewritten.
    write_new(&path, &packed, false)?;
    Ok((packed.len() as u32, true))
}

/// What the store holds at `path`, read as a device reads a chunk store
/// (no symlink followed, no FIFO waited on, regular files only) and no
/// further than `bound` bytes: `None` when it is absent, something else,
/// or larger (then it is rewritten).
fn read_existing(path: &Path, bound: u64) -> Option<Vec<u8>> {
    let f = crate::open_regular(path).ok()?;
    let mut buf = Vec::new();
    f.take(bound + 1).read_to_end(&mut buf).ok()?;
    (buf.len() as u64 <= bound).then_some(buf)
}

/// Writes `bytes` to a fresh temp file beside `path` (fsynced if `sync`)
/// and renames it over `path`.
fn write_new(path: &Path, bytes: &[u8], sync: bool) -> Result<(), PublishError> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| if sync { f.sync_data() } else { Ok(()) })
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Params;
    use crate::noise;

    /// What someone planted in the output store where chunks go (a FIFO, a
    /// symlink to a large file) is neither waited on nor read through: the
    /// chunks are written there as regular files.
    #[test]
    fn planted_fifos_and_symlinks_in_the_store_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("v1.img");
        fs::write(&image, noise(1 << 20, 7)).unwrap();
        let out = dir.path().join("pub");
        let first = chunk_image(&image, &out, &Params::default(), 3).unwrap();
        let index = fs::read(&first.index_path).unwrap();
        let index = crate::index::ChunkIndex::parse(&index, "v1").unwrap();
        let big = dir.path().join("big");
        fs::File::create(&big).unwrap().set_len(512 << 20).unwrap();
        let paths: Vec<PathBuf> = index
            .chunks
            .iter()
            .map(|c| out.join("chunks").join(crate::chunk_path(&c.sha256)))
            .collect();
        assert!(paths.len() >= 2, "{}", paths.len());
        fs::remove_file(&paths[0]).unwrap();
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&paths[0])
                .status()
                .unwrap()
                .success()
        );
        fs::remove_file(&paths[1]).unwrap();
        std::os::unix::fs::symlink(&big, &paths[1]).unwrap();
        let again = chunk_image(&image, &out, &Params::default(), 3).unwrap();
        assert_eq!(again.new_chunks, 2);
        for p in &paths[..2] {
            assert!(
                fs::symlink_metadata(p).unwrap().is_file(),
                "{}",
                p.display()
            );
        }
    }
}
