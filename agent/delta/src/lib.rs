//! Delta updates: an image is cut into content-defined chunks (FastCDC,
//! 2020 variant); the publisher stores each chunk once, zstd-compressed and
//! named by the sha256 of its plain bytes, and publishes an index (the
//! image's sha256 and length, the chunk list) as a signed file. A device
//! builds the new image from chunks it already holds (the running slot, an
//! interrupted earlier attempt) and fetches only the rest.
//!
//! Trust: the index is read only after the source verified it against
//! signed metadata; every chunk, local or fetched, is checked against the
//! index before it is written; the caller checks the whole image against
//! its signed sha256 before it is switched to. Chunk stores are therefore
//! plain static files: any web server, CDN or object store, or a directory.
//!
//! - [`index`]: the index format (`ferry.dev/chunks/v1`), parsed bounded;
//! - [`chunker`]: streaming FastCDC over a reader;
//! - [`publish`]: `ferry chunk`: an image into a chunk store and an index;
//! - [`store`]: fetching chunks over HTTP(S) or from a directory;
//! - [`assemble`]: the device side.

#![forbid(unsafe_code)]

pub mod assemble;
pub mod chunker;
pub mod index;
pub mod publish;
pub mod store;

pub use assemble::{AssembleError, Report, Seed, assemble};
pub use chunker::{ChunkError, for_each_chunk};
pub use index::{Chunk, ChunkIndex, IndexError, Params};
pub use publish::{PublishError, Published, chunk_image};
pub use store::{ChunkStore, FetchError, Remote};

/// The path of a chunk below a store: `<first 4 hex digits>/<sha256>.zst`
/// (a directory level keeps directories small on plain file systems).
pub fn chunk_path(sha256: &ferry_core::Sha256) -> String {
    let hex = sha256.to_hex();
    format!("{}/{hex}.zst", &hex[..4])
}

/// Opens the regular file at `path` for reading: a symlink planted there is
/// not followed, a FIFO is not waited on, anything but a regular file is
/// an error. For files in chunk stores, which others may write.
pub(crate) fn open_regular(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(f)
}

/// `len` pseudo-random bytes (xorshift from `seed`): test images that do
/// not compress and chunk like real ones.
#[cfg(test)]
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
