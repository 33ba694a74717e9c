//! The chunk index: which chunks, in which order, make an image.
//!
//! ```json
//! {
//!   "format": "ferry.dev/chunks/v1",
//!   "chunker": {"algorithm": "fastcdc-2020", "min": 8192, "avg": 32768, "max": 131072},
//!   "image": {"sha256": "…", "length": 1073741824},
//!   "compression": "zstd",
//!   "chunks": [{"offset": 0, "length": 70211, "sha256": "…", "stored": 70230}, …]
//! }
//! ```
//!
//! Schema: `schemas/chunk-index.schema.json`. Published as is or
//! zstd-compressed (recognised by the zstd magic number). [`ChunkIndex::parse`]
//! bounds the decompressed size while it reads and refuses any index whose
//! chunks do not tile the image exactly.

use std::io::Read;

use ferry_core::{ContentRef, Sha256};
use serde::{Deserialize, Serialize};

/// The format this ferry writes and reads.
pub const FORMAT: &str = "ferry.dev/chunks/v1";
/// The chunking algorithm: FastCDC as published in 2020, normalisation level 1.
pub const ALGORITHM: &str = "fastcdc-2020";
/// The largest index this ferry reads, decompressed: about 1.3 million
/// chunks, a 20 GiB image at the smallest average chunk size allowed.
pub const MAX_INDEX_BYTES: u64 = 160 << 20;
/// The largest chunk allowed (bounds the memory of every step).
pub const MAX_CHUNK: u32 = 4 << 20;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Chunking parameters, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    pub algorithm: String,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for Params {
    /// 8 / 32 / 128 KiB; see `integration/bench/README.md` (delta) for why.
    fn default() -> Self {
        Params {
            algorithm: ALGORITHM.to_owned(),
            min: 8 << 10,
            avg: 32 << 10,
            max: 128 << 10,
        }
    }
}

impl Params {
    /// Checks the parameters against what FastCDC accepts and ferry allows.
    pub fn check(&self) -> Result<(), String> {
        if self.algorithm != ALGORITHM {
            return Err(format!(
                "unknown chunking algorithm {:?} (this ferry knows {ALGORITHM:?})",
                self.algorithm
            ));
        }
        let (min, avg, max) = (self.min, self.avg, self.max);
        if !(min >= 1024 && min < avg && avg < max && max <= MAX_CHUNK) {
            return Err(format!(
                "chunk sizes min {min}, avg {avg}, max {max}: need 1024 ≤ min < avg < max ≤ {MAX_CHUNK}"
            ));
        }
        if !avg.is_power_of_two() || min % 2 != 0 || max % 2 != 0 {
            return Err(format!(
                "chunk sizes min {min}, avg {avg}, max {max}: avg must be a power of two, min and max even"
            ));
        }
        Ok(())
    }
}

/// One chunk of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// Where the chunk starts in the image.
    pub offset: u64,
    /// Its plain length.
    pub length: u32,
    /// The sha256 of its plain bytes (also its name in the store).
    pub sha256: Sha256,
    /// The length of its compressed file in the store.
    pub stored: u32,
}

/// The index of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkIndex {
    pub format: String,
    pub chunker: Params,
    pub image: ContentRef,
    pub compression: String,
    pub chunks: Vec<Chunk>,
}

/// Why an index was refused.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("chunk index {what}: {message}")]
    Invalid { what: String, message: String },
    #[error("chunk index {what}: larger than {limit} bytes decompressed")]
    TooLarge { what: String, limit: u64 },
}

/// The most a chunk of `length` bytes may take compressed (zstd's bound
/// for incompressible data, rounded up).
pub fn stored_bound(length: u32) -> u32 {
    length + length / 128 + 1024
}

impl ChunkIndex {
    /// Parses and checks an index (plain or zstd-compressed JSON). `what`
    /// names it in errors. Reads at most [`MAX_INDEX_BYTES`] decompressed.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ChunkIndex, IndexError> {
        Self::parse_limited(bytes, what, MAX_INDEX_BYTES)
    }

    /// [`ChunkIndex::parse`] with another limit on the decompressed size.
    pub fn parse_limited(bytes: &[u8], what: &str, limit: u64) -> Result<ChunkIndex, IndexError> {
        let invalid = |message: String| IndexError::Invalid {
            what: what.to_owned(),
            message,
        };
        let index: ChunkIndex = if bytes.starts_with(&ZSTD_MAGIC) {
            let mut dec = zstd::stream::read::Decoder::new(bytes)
                .map_err(|e| invalid(format!("zstd: {e}")))?;
            // 8 MiB of window at most: a frame asking for more is refused.
            dec.window_log_max(23)
                .map_err(|e| invalid(format!("zstd: {e}")))?;
            let mut limited = Limited {
                inner: dec,
                left: limit,
            };
            // Buffered: serde_json reads byte by byte.
            let parsed =
                serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, &mut limited));
            if limited.left == 0 {
                return Err(IndexError::TooLarge {
                    what: what.to_owned(),
                    limit,
                });
            }
            parsed.map_err(|e| invalid(json_error(&e)))?
        } else {
            if bytes.len() as u64 > limit {
                return Err(IndexError::TooLarge {
                    what: what.to_owned(),
                    limit,
                });
            }
            serde_json::from_slice(bytes).map_err(|e| invalid(json_error(&e)))?
        };
        index.check().map_err(invalid)?;
        let mut index = index;
        index.chunks.shrink_to_fit();
        Ok(index)
    }

    /// The rules every index obeys: known format and parameters, chunks
    /// that tile the image from byte 0 to its end, each within the
    /// parameters and stored no larger than zstd's bound.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "/format: unknown format {:?} (this ferry reads {FORMAT:?})",
                self.format
            ));
        }
        if self.compression != "zstd" {
            return Err(format!(
                "/compression: unknown compression {:?} (this ferry reads \"zstd\")",
                self.compression
            ));
        }
        self.chunker.check().map_err(|e| format!("/chunker: {e}"))?;
        let mut next = 0u64;
        let last = self.chunks.len().saturating_sub(1);
        for (i, c) in self.chunks.iter().enumerate() {
            if c.offset != next {
                return Err(format!(
                    "/chunks/{i}/offset: {} where the previous chunk ended at {next}",
                    c.offset
                ));
            }
            if c.length == 0 || c.length > self.chunker.max {
                return Err(format!(
                    "/chunks/{i}/length: {} is outside 1..={}",
                    c.length, self.chunker.max
                ));
            }
            if c.length < self.chunker.min && i != last {
                return Err(format!(
                    "/chunks/{i}/length: {} is below the minimum {} (only the last chunk may be)",
                    c.length, self.chunker.min
                ));
            }
            if c.stored == 0 || c.stored > stored_bound(c.length) {
                return Err(format!(
                    "/chunks/{i}/stored: {} bytes for a chunk of {}",
                    c.stored, c.length
                ));
            }
            next += u64::from(c.length);
        }
        if next != self.image.length {
            return Err(format!(
                "/chunks: cover {next} bytes, the image has {}",
                self.image.length
            ));
        }
        Ok(())
    }

    /// The index as compressed JSON, as `ferry chunk` publishes it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("an index serialises");
        zstd::bulk::compress(&json, 19).expect("compressing in memory")
    }

    /// Bytes a device holding `have` must fetch: the stored size of every
    /// distinct chunk it does not have.
    pub fn missing_bytes(&self, have: impl Fn(&Sha256) -> bool) -> (u64, usize) {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        for c in &self.chunks {
            if !have(&c.sha256) && seen.insert(c.sha256) {
                bytes += u64::from(c.stored);
            }
        }
        (bytes, seen.len())
    }

    /// Bytes of all distinct chunks: what a device with nothing fetches.
    pub fn stored_bytes(&self) -> u64 {
        self.missing_bytes(|_| false).0
    }
}

fn json_error(e: &serde_json::Error) -> String {
    if e.line() > 0 {
        format!("line {} column {}: {e}", e.line(), e.column())
    } else {
        e.to_string()
    }
}

/// A reader that stops after `left` bytes (and says so by reaching 0).
struct Limited<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(lengths: &[u32]) -> ChunkIndex {
        let mut offset = 0;
        let chunks = lengths
            .iter()
            .enumerate()
            .map(|(i, &length)| {
                let c = Chunk {
                    offset,
                    length,
                    sha256: Sha256::of(&i.to_le_bytes()),
                    stored: length,
                };
                offset += u64::from(length);
                c
            })
            .collect();
        ChunkIndex {
            format: FORMAT.into(),
            chunker: Params::default(),
            image: ContentRef {
                sha256: Sha256::of(b"image"),
                length: offset,
            },
            compression: "zstd".into(),
            chunks,
        }
    }

    #[test]
    fn round_trips_plain_and_compressed() {
        let i = index(&[20_000, 70_000, 5]);
        assert_eq!(ChunkIndex::parse(&i.to_bytes(), "t").unwrap(), i);
        let plain = serde_json::to_vec(&i).unwrap();
        assert_eq!(ChunkIndex::parse(&plain, "t").unwrap(), i);
    }

    #[test]
    fn refuses_indexes_that_do_not_tile_the_image() {
        type Mutation = Box<dyn Fn(&mut ChunkIndex)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|i| i.chunks[1].offset += 1), "/chunks/1/offset"),
            (
                Box::new(|i| {
                    i.chunks.remove(1);
                }),
                "/chunks/1/offset",
            ),
            (Box::new(|i| i.image.length += 1), "/chunks: cover"),
            (Box::new(|i| i.chunks[0].length = 1000), "/chunks/0/length"),
            (
                Box::new(|i| i.chunks[1].length = 300_000),
                "/chunks/1/length",
            ),
            (Box::new(|i| i.chunks[2].stored = 0), "/chunks/2/stored"),
            (
                Box::new(|i| i.chunks[0].stored = 900_000),
                "/chunks/0/stored",
            ),
            (
                Box::new(|i| i.format = "ferry.dev/chunks/v2".into()),
                "/format",
            ),
            (Box::new(|i| i.chunker.avg = 60_000), "/chunker"),
            (Box::new(|i| i.chunker.max = 64 << 20), "/chunker"),
            (
                Box::new(|i| i.chunker.algorithm = "rabin".into()),
                "/chunker",
            ),
            (Box::new(|i| i.compression = "xz".into()), "/compression"),
        ];
        for (mutate, expect) in cases {
            let mut i = index(&[20_000, 70_000, 5]);
            mutate(&mut i);
            let err = ChunkIndex::parse(&serde_json::to_vec(&i).unwrap(), "firmware/v2.chunks")
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{err} should contain {expect}");
            assert!(err.contains("firmware/v2.chunks"), "{err}");
        }
    }

    #[test]
    fn unknown_fields_and_syntax_errors_name_where() {
        let err = ChunkIndex::parse(br#"{"format": "ferry.dev/chunks/v1", "extra": 1}"#, "i")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `extra`") && err.contains("line 1"),
            "{err}"
        );
        let err = ChunkIndex::parse(b"{\n\"format\": ", "i")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_decompression_bomb_is_cut_off_while_reading() {
        // 8 MiB of spaces compress to a few KiB; parsing stops at the limit
        // (1 MiB here; MAX_INDEX_BYTES on devices).
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut enc, b"[").unwrap();
        std::io::Write::write_all(&mut enc, &vec![b' '; 8 << 20]).unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 64 << 10);
        let err = ChunkIndex::parse_limited(&bomb, "i", 1 << 20).unwrap_err();
        assert!(matches!(err, IndexError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_frame_asking_for_a_huge_window_is_refused() {
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(27).unwrap();
        enc.long_distance_matching(true).unwrap();
        let data = vec![b'x'; 200 << 20];
        std::io::Write::write_all(&mut enc, &data).unwrap();
        let framed = enc.finish().unwrap();
        assert!(ChunkIndex::parse(&framed, "i").is_err());
    }
}
