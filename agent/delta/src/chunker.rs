//! Streaming FastCDC (2020, normalisation level 1) over any reader, with
//! constant memory: one buffer of a few MiB, chunks handed out as slices.

use std::io::{self, Read};

use fastcdc::v2020::{Normalization, cut, select_masks};

use crate::index::Params;

/// The read buffer (at least twice the largest chunk): refills are cheap
/// at this size, and it is most of what chunking costs in memory.
const BUFFER: usize = 1 << 20;

/// Why chunking stopped.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError<E> {
    #[error("reading: {0}")]
    Read(#[from] io::Error),
    #[error("more than {0} bytes")]
    TooLong(u64),
    /// The callback refused a chunk.
    #[error(transparent)]
    Callback(E),
}

/// Cuts what `src` yields into chunks and calls `each(offset, bytes)` for
/// every chunk in order; stops with [`ChunkError::TooLong`] past `limit`
/// bytes. Returns the total length. `params` must have passed
/// [`Params::check`].
pub fn for_each_chunk<E>(
    mut src: impl Read,
    params: &Params,
    limit: u64,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<u64, ChunkError<E>> {
    let (min, avg, max) = (
        params.min as usize,
        params.avg as usize,
        params.max as usize,
    );
    let (mask_s, mask_l) = select_masks(avg, Normalization::Level1);
    let mut buf = vec![0u8; BUFFER.max(2 * max)];
    let (mut start, mut end, mut eof, mut offset) = (0usize, 0usize, false, 0u64);
    loop {
        if !eof && end - start < max {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
            while end < buf.len() {
                match src.read(&mut buf[end..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => end += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ChunkError::Read(e)),
                }
            }
            if offset + (end as u64) > limit {
                return Err(ChunkError::TooLong(limit));
            }
        }
        if start == end {
            return Ok(offset);
        }
        let (_, n) = cut(
            &buf[start..end],
            min,
            avg,
            max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
        );
        each(offset, &buf[start..start + n]).map_err(ChunkError::Callback)?;
        offset += n as u64;
        start += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cuts(data: &[u8], params: &Params) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        for_each_chunk::<()>(data, params, u64::MAX, |o, c| {
            out.push((o, c.len()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn agrees_with_fastcdc_over_the_whole_slice() {
        let data = crate::noise(11 << 20, 7);
        let p = Params::default();
        let ours = cuts(&data, &p);
        let theirs: Vec<(u64, usize)> =
            fastcdc::v2020::FastCDC::new(&data, p.min as usize, p.avg as usize, p.max as usize)
                .map(|c| (c.offset as u64, c.length))
                .collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn an_insertion_shifts_only_nearby_cuts() {
        let v1 = crate::noise(4 << 20, 9);
        let mut v2 = v1.clone();
        v2.splice(1000..1000, [0xAAu8; 4096]);
        let p = Params::default();
        let a: std::collections::HashSet<&[u8]> = cuts(&v1, &p)
            .iter()
            .map(|&(o, n)| &v1[o as usize..o as usize + n])
            .collect();
        let b = cuts(&v2, &p);
        let shared = b
            .iter()
            .filter(|&&(o, n)| a.contains(&v2[o as usize..o as usize + n]))
            .count();
        assert!(
            shared + 3 >= b.len(),
            "{shared} of {} chunks shared",
            b.len()
        );
    }

    #[test]
    fn stops_past_the_limit() {
        let data = vec![0u8; 1 << 20];
        let e = for_each_chunk::<()>(&data[..], &Params::default(), 1000, |_, _| Ok(()));
        assert!(matches!(e, Err(ChunkError::TooLong(1000))));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// Whatever the reader's read sizes, the chunks are the same and tile the input.
        #[test]
        fn cuts_do_not_depend_on_read_sizes(len in 0usize..1_500_000, seed in any::<u64>(), step in 1usize..100_000) {
            struct Dribble<'a>(&'a [u8], usize);
            impl Read for Dribble<'_> {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    let n = self.0.len().min(buf.len()).min(self.1);
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let data = crate::noise(len, seed);
            let p = Params::default();
            let whole = cuts(&data, &p);
            let mut dribbled = Vec::new();
            for_each_chunk::<()>(Dribble(&data, step), &p, u64::MAX, |o, c| { dribbled.push((o, c.len())); Ok(()) }).unwrap();
            prop_assert_eq!(&whole, &dribbled);
            prop_assert_eq!(whole.iter().map(|c| c.1).sum::<usize>(), len);
        }
    }
}
