//! Where a delta comes from: the verified chunk index of a resource and
//! its chunk store (the engine's `engine::delta` builds with them; bundle
//! export copies chunks with them).

use ferry_core::ContentRef;
use ferry_delta::ChunkIndex;
use ferry_source::VerifiedRevision;

use crate::config::Config;
use crate::render::manifest::DeltaRef;

/// A compressed index larger than this is refused (a 1 GiB image's is
/// about 1 MiB at the default chunk sizes).
const MAX_INDEX_FILE: u64 = 64 << 20;

/// Chunk stores are held to the source's limits (`source.tuf.*`).
pub fn chunk_timeouts(config: &Config) -> ferry_delta::store::Timeouts {
    let tuf = &config.source.tuf;
    ferry_delta::store::Timeouts {
        stall: tuf.stall_timeout(),
        min_rate: tuf.min_rate_bytes_per_sec,
        attempts: 4,
        cross_origin_redirects: config.source.chunk_redirects.as_deref() == Some("any"),
    }
}

/// The largest index of an image of `image_length` bytes: its chunks are
/// at least 1 KiB (the chunker's smallest minimum), each at most 256 bytes
/// of JSON, indented or not. An index is then read and held in memory only
/// in proportion to the image it describes (an honest one, with 64 KiB
/// chunks, is about 0.2% of it), whatever the signer claims.
pub fn index_limit(image_length: u64) -> u64 {
    (4096 + (image_length / 1024 + 1).saturating_mul(256)).min(MAX_INDEX_FILE)
}

/// The verified chunk index of `delta` for an image of `image_length`
/// bytes (the signed length of the resource), its bytes, and the store URL.
pub fn delta_index(
    rev: &dyn VerifiedRevision,
    delta: &DeltaRef,
    image_length: u64,
) -> std::result::Result<(ChunkIndex, Vec<u8>, String), String> {
    let limit = index_limit(image_length);
    if delta.index.length > limit {
        return Err(format!(
            "{}: {} bytes, more than an index of a {image_length}-byte image needs ({limit})",
            delta.index_path, delta.index.length
        ));
    }
    let bytes = rev
        .read_small(&delta.index_path, limit)
        .map_err(|e| e.to_string())?;
    let got = ContentRef::of(&bytes);
    if got != delta.index {
        return Err(format!(
            "{}: is {got}, signed metadata says {}",
            delta.index_path, delta.index
        ));
    }
    let index = ChunkIndex::parse_limited(&bytes, delta.index_path.as_str(), limit)
        .map_err(|e| e.to_string())?;
    if index.image.length != image_length {
        return Err(format!(
            "{}: indexes an image of {} bytes, the resource is {image_length}",
            delta.index_path, index.image.length
        ));
    }
    let store = if delta.store.contains("://") {
        delta.store.clone()
    } else {
        let base = rev.base_url().ok_or_else(|| {
            format!(
                "source {} serves no files beside the revision; give `chunks.store` an http(s) URL",
                rev.source_name()
            )
        })?;
        format!("{base}{}", delta.store)
    };
    Ok((index, bytes, store))
}
