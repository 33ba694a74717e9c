//! Fetching metadata and targets: HTTP(S) through reqwest, and `file://`
//! (bundles on a stick). Sizes are bounded by the caller; stalled servers
//! time out.

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

/// Timeouts for remote fetches.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting, and the longest silence while reading a body.
    pub stall: Duration,
    /// A whole metadata file (small; a slow drip must not hold the agent).
    pub metadata: Duration,
    /// The slowest average a target transfer may have, in bytes per second:
    /// a target of `n` bytes must arrive within `stall + n / min_rate`.
    pub min_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            stall: Duration::from_secs(30),
            metadata: Duration::from_secs(60),
            min_rate: DEFAULT_MIN_RATE,
        }
    }
}

/// Default of `source.tuf.min_rate_bytes_per_sec`.
pub const DEFAULT_MIN_RATE: u64 = 1024;

/// Fails a transfer once it is past its deadline, checked as each read
/// returns (a read itself waits at most one stall timeout): a server that
/// drips a byte every few seconds cannot hold a reconcile for hours.
struct Deadline<R> {
    inner: R,
    url: String,
    deadline: std::time::Instant,
    allowed: Duration,
    length: u64,
}

impl<R: Read> Read for Deadline<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if std::time::Instant::now() > self.deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{}: {} bytes did not arrive within {} s (slower than source.tuf.min_rate_bytes_per_sec)",
                    self.url,
                    self.length,
                    self.allowed.as_secs()
                ),
            ));
        }
        self.inner.read(buf)
    }
}

static FETCHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes received from repositories by this process (for metrics).
pub fn fetched_bytes() -> u64 {
    FETCHED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts the bytes read through it into [`fetched_bytes`].
struct Counting<R>(R);

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        FETCHED.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server says the file is not there (HTTP 403/404, no such file).
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: more than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: {message}")]
    Io { url: String, message: String },
}

/// Fetches below base URLs. Cheap to clone: clones share one HTTP client
/// (connection pool, TLS roots loaded once).
#[derive(Debug, Clone)]
pub struct Transport {
    client: reqwest::blocking::Client,
    timeouts: Timeouts,
}

impl Transport {
    /// `urls`: the base URLs this transport will fetch below. Only when one
    /// of them is `https://` are the system's TLS roots loaded (that costs
    /// more CPU than a whole no-change poll).
    pub fn new(timeouts: Timeouts, urls: &[&str]) -> Result<Self, FetchError> {
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(timeouts.stall)
            .timeout(timeouts.stall)
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        if !urls.iter().any(|u| u.starts_with("https://")) {
            // Plain HTTP or file URLs: no roots, so a redirect to https fails.
            builder = builder.tls_certs_only(std::iter::empty());
        }
        let client = builder.build().map_err(|e| FetchError::Io {
            url: String::new(),
            message: format!("cannot set up the HTTP client: {}", error_chain(&e)),
        })?;
        Ok(Transport { client, timeouts })
    }

    /// Fetches a whole small file, refusing more than `limit` bytes.
    pub fn fetch_bounded(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let deadline = self.timeouts.metadata;
        let reader = self.open(url, 0, Some(deadline))?;
        read_bounded(reader, url, limit)
    }

    /// Opens `url` (a target of which `remaining` bytes are still to come)
    /// for streaming from byte `offset` on, with a deadline scaled to its
    /// size: the stall timeout plus `remaining / min_rate` seconds.
    pub fn open_sized(
        &self,
        url: &str,
        offset: u64,
        remaining: u64,
    ) -> Result<Box<dyn Read + Send>, FetchError> {
        let allowed =
            self.timeouts.stall + Duration::from_secs(remaining / self.timeouts.min_rate.max(1));
        let deadline = std::time::Instant::now() + allowed;
        let inner = self.open(url, offset, None)?;
        Ok(Box::new(Deadline {
            inner,
            url: url.to_owned(),
            deadline,
            allowed,
            length: remaining,
        }))
    }

    /// Opens `url` for streaming from byte `offset` on (HTTP Range).
    pub fn open(
        &self,
        url: &str,
        offset: u64,
        deadline: Option<Duration>,
    ) -> Result<Box<dyn Read + Send>, FetchError> {
        if let Some(path) = url.strip_prefix("file://") {
            let decoded = percent_encoding::percent_decode_str(path)
                .decode_utf8()
                .map_err(|_| FetchError::Io {
                    url: url.to_owned(),
                    message: "path is not UTF-8".into(),
                })?;
            let path = PathBuf::from(&*decoded);
            let mut f = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(FetchError::NotFound {
                        url: url.to_owned(),
                    });
                }
                Err(e) => {
                    return Err(FetchError::Io {
                        url: url.to_owned(),
                        message: e.to_string(),
                    });
                }
            };
            if offset > 0 {
                use std::io::Seek;
                f.seek(io::SeekFrom::Start(offset))
                    .map_err(|e| FetchError::Io {
                        url: url.to_owned(),
                        message: e.to_string(),
                    })?;
            }
            return Ok(Box::new(f));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(FetchError::Io {
                url: url.to_owned(),
                message: "only http, https and file URLs are supported".into(),
            });
        }
        let mut req = self.client.get(url);
        if let Some(d) = deadline {
            req = req.timeout(d);
        }
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().map_err(|e| FetchError::Io {
            url: url.to_owned(),
            message: error_chain(&e),
        })?;
        let status = resp.status().as_u16();
        match status {
            200 if offset > 0 => {
                // The server ignored the range: skip what we have.
                let mut r: Box<dyn Read + Send> = Box::new(Counting(resp));
                io::copy(&mut (&mut r).take(offset), &mut io::sink()).map_err(|e| {
                    FetchError::Io {
                        url: url.to_owned(),
                        message: e.to_string(),
                    }
                })?;
                Ok(r)
            }
            200 => Ok(Box::new(Counting(resp))),
            206 if offset > 0 => Ok(Box::new(Counting(resp))),
            403 | 404 => Err(FetchError::NotFound {
                url: url.to_owned(),
            }),
            _ => Err(FetchError::Status {
                url: url.to_owned(),
                status,
            }),
        }
    }
}

/// reqwest hides the useful part of an error (timed out, refused) in its
/// source chain.
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

/// Reads all of `r`, refusing more than `limit` bytes (endless-data attack).
pub fn read_bounded(r: impl Read, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
    let mut buf = Vec::new();
    r.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| FetchError::Io {
            url: url.to_owned(),
            message: error_chain(&e),
        })?;
    if buf.len() as u64 > limit {
        return Err(FetchError::TooLarge {
            url: url.to_owned(),
            limit,
        });
    }
    Ok(buf)
}

/// Percent-encodes a role name for a URL or file name: everything but
/// unreserved characters (like Python's `quote(role, safe="")`).
pub fn quote_all(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, SET).to_string()
}

/// Percent-encodes a target path for a URL, keeping its `/` separators.
pub fn quote_path(s: &str) -> String {
    s.split('/').map(quote_all).collect::<Vec<_>>().join("/")
}

/// `base` with exactly one trailing slash.
pub fn with_slash(base: &str) -> String {
    format!("{}/", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_python_quote_with_no_safe_characters() {
        assert_eq!(quote_all("/delegatedrole"), "%2Fdelegatedrole");
        assert_eq!(quote_all("../x"), "..%2Fx");
        assert_eq!(quote_all("?"), "%3F");
        assert_eq!(quote_all("#"), "%23");
        assert_eq!(quote_all("a b~c"), "a%20b~c");
        assert_eq!(quote_path("dir/a b.txt"), "dir/a%20b.txt");
    }
}
