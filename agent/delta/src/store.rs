//! Fetching chunks from a store: HTTP(S) through one pooled client (many
//! chunks per connection), or a directory (`file://`, a USB stick). Every
//! fetch is bounded by the size the signed index gives, must arrive in
//! time, is retried on transport errors, and is checked against the
//! chunk's sha256 before anyone sees it.

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::index::Chunk;

/// Why a chunk could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The bytes arrived but are not the chunk the index names (tampered,
    /// truncated, another chunk, a bad frame): the store is not to be trusted
    /// for this image.
    #[error("chunk {sha256} from {url}: {reason}")]
    Mismatch {
        sha256: String,
        url: String,
        reason: String,
    },
    /// The store could not be reached or did not have the chunk.
    #[error("chunk {sha256} from {url}: {reason}")]
    Unavailable {
        sha256: String,
        url: String,
        reason: String,
    },
}

/// Where chunks come from.
pub trait ChunkStore {
    /// The plain, verified bytes of `chunk`, and how many bytes were
    /// transferred for it.
    fn fetch(&self, chunk: &Chunk) -> Result<(Vec<u8>, u64), FetchError>;
}

/// Limits of a remote store.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting, and the longest silence while reading.
    pub stall: Duration,
    /// The slowest average a chunk may arrive at, in bytes per second: a
    /// chunk of `n` stored bytes must arrive within `stall + n / min_rate`
    /// (a slow drip is given up at once, not retried).
    pub min_rate: u64,
    /// Attempts per chunk for transport errors (not for mismatches).
    pub attempts: u32,
    /// Follow redirects to other hosts and ports (else same origin only).
    pub cross_origin_redirects: bool,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            stall: Duration::from_secs(30),
            min_rate: 1024,
            attempts: 4,
            cross_origin_redirects: false,
        }
    }
}

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// The redirect policy of a store at `base`: at most [`MAX_REDIRECTS`], and
/// only to the same scheme, host and port unless `any_origin`.
fn redirects(base: &str, any_origin: bool) -> reqwest::redirect::Policy {
    let origin = reqwest::Url::parse(base)
        .ok()
        .map(|u| u.origin().ascii_serialization());
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        let to = attempt.url().origin().ascii_serialization();
        if any_origin || origin.as_deref() == Some(to.as_str()) {
            attempt.follow()
        } else {
            attempt.error(format!(
                "redirect to {to}, another origin than the chunk store's (source.chunk_redirects = \"any\" allows it)"
            ))
        }
    })
}

/// A chunk store below a base URL (`http://`, `https://` or `file://`).
#[derive(Debug)]
pub struct Remote {
    base: String,
    client: Option<reqwest::blocking::Client>,
    timeouts: Timeouts,
    fetched: std::cell::Cell<u64>,
}

impl Remote {
    /// A store at `base` (a trailing `/` is added if missing).
    pub fn new(base: &str, timeouts: Timeouts) -> Result<Remote, String> {
        let mut base = base.to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        let client = if base.starts_with("http://") || base.starts_with("https://") {
            let mut b = reqwest::blocking::Client::builder()
                .redirect(redirects(&base, timeouts.cross_origin_redirects))
                .connect_timeout(timeouts.stall)
                .pool_max_idle_per_host(4)
                .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
            if base.starts_with("http://") {
                b = b.tls_certs_only(std::iter::empty());
            }
            Some(
                b.build()
                    .map_err(|e| format!("cannot set up the HTTP client: {e}"))?,
            )
        } else if base.starts_with("file://") {
            None
        } else {
            return Err(format!(
                "chunk store {base}: only http, https and file URLs are supported"
            ));
        };
        Ok(Remote {
            base,
            client,
            timeouts,
            fetched: std::cell::Cell::new(0),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Bytes transferred so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.get()
    }

    /// One attempt: the raw stored bytes, at most `limit`.
    fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, Failed> {
        let mut buf = Vec::with_capacity(limit as usize + 1);
        // A slow drip: the chunk must arrive within its deadline.
        let allowed =
            self.timeouts.stall + Duration::from_secs(limit / self.timeouts.min_rate.max(1));
        let deadline = Instant::now() + allowed;
        let read = |mut r: Box<dyn Read>, buf: &mut Vec<u8>| -> Result<(), Failed> {
            let mut chunk = [0u8; 64 << 10];
            loop {
                if Instant::now() > deadline {
                    return Err(Failed::Unavailable(format!(
                        "did not arrive within {} s",
                        allowed.as_secs()
                    )));
                }
                let n = match r.read(&mut chunk) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Failed::Retry(error_chain(&e))),
                };
                if (buf.len() + n) as u64 > limit {
                    return Err(Failed::Mismatch(format!(
                        "more than the {limit} bytes the index gives"
                    )));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        match &self.client {
            None => {
                let path = percent_encoding::percent_decode_str(&url["file://".len()..])
                    .decode_utf8()
                    .map_err(|_| Failed::Unavailable("path is not UTF-8".to_owned()))?;
                // Never follow a planted symlink, never block on a FIFO;
                // only regular files are chunks.
                let f = crate::open_regular(&PathBuf::from(&*path))
                    .map_err(|e| Failed::Unavailable(e.to_string()))?;
                read(Box::new(f), &mut buf)?;
            }
            Some(client) => {
                let resp = client
                    .get(url)
                    // Past the deadline checked between reads: a server
                    // that sends nothing at all.
                    .timeout(allowed + self.timeouts.stall)
                    .send()
                    .map_err(|e| Failed::Retry(error_chain(&e)))?;
                let status = resp.status().as_u16();
                if status != 200 {
                    // 5xx and 429 are worth another try; 404 is not.
                    let why = format!("HTTP status {status}");
                    return Err(if status >= 500 || status == 429 {
                        Failed::Retry(why)
                    } else {
                        Failed::Unavailable(why)
                    });
                }
                read(Box::new(resp), &mut buf)?;
            }
        }
        Ok(buf)
    }
}

impl Remote {
    /// The chunk's stored (compressed) bytes, verified like [`ChunkStore::fetch`]
    /// verifies them: for copying a chunk into another store (a bundle).
    pub fn fetch_stored(&self, chunk: &Chunk) -> Result<Vec<u8>, FetchError> {
        self.fetch_checked(chunk).map(|(_, packed)| packed)
    }

    fn fetch_checked(&self, chunk: &Chunk) -> Result<(Vec<u8>, Vec<u8>), FetchError> {
        let url = format!("{}{}", self.base, crate::chunk_path(&chunk.sha256));
        let sha256 = chunk.sha256.to_hex();
        let mut wait = Duration::from_millis(200);
        let mut attempt = 1;
        let packed = loop {
            match self.get(&url, u64::from(chunk.stored)) {
                Ok(b) => break b,
                Err(Failed::Retry(reason)) if attempt < self.timeouts.attempts => {
                    tracing::warn!(%url, %reason, attempt, "chunk fetch failed; retrying");
                    std::thread::sleep(wait);
                    wait *= 2;
                    attempt += 1;
                }
                Err(Failed::Retry(reason) | Failed::Unavailable(reason)) => {
                    return Err(FetchError::Unavailable {
                        sha256,
                        url,
                        reason,
                    });
                }
                Err(Failed::Mismatch(reason)) => {
                    return Err(FetchError::Mismatch {
                        sha256,
                        url,
                        reason,
                    });
                }
            }
        };
        self.fetched.set(self.fetched.get() + packed.len() as u64);
        let mismatch = |reason: String| FetchError::Mismatch {
            sha256: sha256.clone(),
            url: url.clone(),
            reason,
        };
        if packed.len() as u64 != u64::from(chunk.stored) {
            return Err(mismatch(format!(
                "{} bytes, the index gives {}",
                packed.len(),
                chunk.stored
            )));
        }
        let plain = decompress(&packed, chunk.length).map_err(mismatch)?;
        check(&plain, chunk).map_err(mismatch)?;
        Ok((plain, packed))
    }
}

impl ChunkStore for Remote {
    fn fetch(&self, chunk: &Chunk) -> Result<(Vec<u8>, u64), FetchError> {
        self.fetch_checked(chunk)
            .map(|(plain, packed)| (plain, packed.len() as u64))
    }
}

/// How one attempt failed.
enum Failed {
    /// Worth another try (a transport error, 5xx, 429, too slow).
    Retry(String),
    /// Not there (404, no such file, not a regular file).
    Unavailable(String),
    /// Bytes that cannot be the chunk (more than the index gives).
    Mismatch(String),
}

/// Decompresses one stored chunk into exactly `length` bytes.
pub fn decompress(packed: &[u8], length: u32) -> Result<Vec<u8>, String> {
    let mut d = zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?;
    // A chunk needs no window beyond its own size.
    d.window_log_max(23).map_err(|e| format!("zstd: {e}"))?;
    let plain = d
        .decompress(packed, length as usize)
        .map_err(|e| format!("not a zstd frame of at most {length} bytes: {e}"))?;
    if plain.len() != length as usize {
        return Err(format!(
            "decompresses to {} bytes, the index gives {length}",
            plain.len()
        ));
    }
    Ok(plain)
}

/// Whether `plain` is the chunk the index names.
pub fn check(plain: &[u8], chunk: &Chunk) -> Result<(), String> {
    let got = ferry_core::Sha256::of(plain);
    if plain.len() != chunk.length as usize || got != chunk.sha256 {
        return Err(format!("has sha256 {got} and {} bytes", plain.len()));
    }
    Ok(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP server on 127.0.0.1 answering each GET with `answer(path)`
    /// (status line and headers, body); counts requests.
    fn serve(
        answer: impl Fn(&str) -> (String, Vec<u8>) + Send + 'static,
    ) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut lines = BufReader::new(conn.try_clone().unwrap()).lines();
                let request = lines.next().and_then(Result::ok).unwrap_or_default();
                for line in lines.by_ref() {
                    if line.map_or(true, |l| l.is_empty()) {
                        break;
                    }
                }
                let path = request.split(' ').nth(1).unwrap_or("/").to_owned();
                let (head, body) = answer(&path);
                let _ = write!(
                    conn,
                    "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            }
        });
        (port, hits)
    }

    #[test]
    fn redirects_stay_on_the_stores_origin_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("img"), &data).unwrap();
        let p = crate::chunk_image(
            &dir.path().join("img"),
            &dir.path().join("pub"),
            &crate::index::Params::default(),
            3,
        )
        .unwrap();
        let index =
            crate::index::ChunkIndex::parse(&std::fs::read(&p.index_path).unwrap(), "img").unwrap();
        let chunk = index.chunks[0];
        let chunks = dir.path().join("pub/chunks");
        let stored = std::fs::read(chunks.join(crate::chunk_path(&chunk.sha256))).unwrap();
        let (real, real_hits) = serve(move |path| {
            match std::fs::read(chunks.join(path.trim_start_matches("/chunks/"))) {
                Ok(b) => ("HTTP/1.1 200 OK".to_owned(), b),
                Err(_) => ("HTTP/1.1 404 Not Found".to_owned(), Vec::new()),
            }
        });
        // A store that sends every request to another port.
        let (elsewhere, _) = serve(move |path| {
            (
                format!("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{real}{path}"),
                Vec::new(),
            )
        });
        let base = format!("http://127.0.0.1:{elsewhere}/chunks/");
        let e = Remote::new(&base, Timeouts::default())
            .unwrap()
            .fetch_stored(&chunk)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another origin"), "{e}");
        assert_eq!(real_hits.load(Ordering::SeqCst), 0, "never reached");
        let allowed = Timeouts {
            cross_origin_redirects: true,
            ..Timeouts::default()
        };
        let got = Remote::new(&base, allowed)
            .unwrap()
            .fetch_stored(&chunk)
            .unwrap();
        assert_eq!(got, stored);
        assert!(real_hits.load(Ordering::SeqCst) >= 1);
        // A redirect within the store's origin is followed.
        let (same, _) = serve(move |path| match path.strip_prefix("/old") {
            Some(rest) => (
                format!("HTTP/1.1 301 Moved\r\nLocation: {rest}"),
                Vec::new(),
            ),
            None => (
                format!("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{real}{path}"),
                Vec::new(),
            ),
        });
        let e = Remote::new(
            &format!("http://127.0.0.1:{same}/old/chunks/"),
            Timeouts::default(),
        )
        .unwrap()
        .fetch_stored(&chunk)
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("another origin"),
            "followed /old → /chunks, then refused: {e}"
        );
    }
}
