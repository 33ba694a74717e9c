//! The agent's conditional poll (`agent.conditional_poll`): before starting
//! a reconcile process, ask the TUF repository for `timestamp.json` with the
//! validators (ETag, Last-Modified) of the response the last settled
//! reconcile saw. `304 Not Modified` means the repository has not changed,
//! and the poll ends there: one small request, no process.
//!
//! The answer is not trusted for anything but skipping: a lying server can
//! at most delay an update, which it could do by not answering. A full
//! reconcile still runs at least every `agent.full_poll_interval` (expiry,
//! the secure clock and root rotation are checked there) and every
//! `agent.drift_interval` (drift is checked there), after a failed or
//! unsettled reconcile, and whenever the server gives no validators.

use std::time::{Duration, Instant};

use ferry_engine::Config;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};

/// What identifies one version of `timestamp.json` to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
}

#[derive(Debug)]
pub struct Probe {
    url: String,
    client: reqwest::blocking::Client,
    /// The validators the last settled reconcile saw.
    seen: Option<Validators>,
    /// The validators of the last `200`, until its reconcile settles.
    pending: Option<Validators>,
    /// False once the server answered without validators.
    supported: bool,
    last_full: Instant,
    full_every: Duration,
}

impl Probe {
    /// A probe for `config`'s source: TUF with an http(s) metadata URL and
    /// `agent.conditional_poll` on; otherwise `None` (every poll is full).
    pub fn for_config(config: &Config) -> Option<Probe> {
        if !config.agent.conditional_poll
            || config.source.kind != Some(ferry_engine::config::SourceKind::Tuf)
        {
            return None;
        }
        let base = config.source.tuf.metadata_url.as_deref()?;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return None;
        }
        let times = config.agent.times().ok()?;
        let stall = config.source.tuf.stall_timeout();
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(stall)
            .timeout(stall)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        if base.starts_with("http://") {
            builder = builder.tls_certs_only(std::iter::empty());
        }
        let client = builder.build().ok()?;
        Some(Probe {
            url: format!("{}/timestamp.json", base.trim_end_matches('/')),
            client,
            seen: None,
            pending: None,
            supported: true,
            last_full: Instant::now(),
            // Drift is found by a full reconcile only.
            full_every: if config.agent.drift == ferry_core::DriftPolicy::Ignore {
                times.full_poll_interval
            } else {
                times.full_poll_interval.min(times.drift_interval)
            },
        })
    }

    /// Whether this poll can end here: the repository answered `304` to
    /// the validators of the last settled reconcile, and a full reconcile
    /// is not due.
    pub fn unchanged(&mut self) -> bool {
        if !self.supported {
            return false;
        }
        let mut req = self.client.get(&self.url);
        if let Some(v) = &self.seen {
            if let Some(e) = &v.etag {
                req = req.header(IF_NONE_MATCH, e);
            }
            if let Some(m) = &v.last_modified {
                req = req.header(IF_MODIFIED_SINCE, m);
            }
        }
        let resp = match req.send() {
            Ok(r) => r,
            // The reconcile reports the error properly.
            Err(_) => return false,
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED && self.seen.is_some() {
            self.pending = self.seen.clone();
            if self.last_full.elapsed() < self.full_every {
                return true;
            }
            return false;
        }
        if status.is_success() {
            let header = |h| {
                resp.headers()
                    .get(h)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let v = Validators {
                etag: header(ETAG),
                last_modified: header(LAST_MODIFIED),
            };
            if v.etag.is_none() && v.last_modified.is_none() {
                tracing::info!(url = %self.url, "the repository gives no ETag or Last-Modified; every poll is a full reconcile");
                self.supported = false;
            }
            self.pending = Some(v);
        } else {
            self.pending = None;
        }
        false
    }

    /// A full reconcile ended; `settled`: it found nothing more to do (the
    /// validators it was started with describe the device's state).
    pub fn reconciled(&mut self, settled: bool) {
        self.seen = if settled { self.pending.take() } else { None };
        self.pending = None;
        self.last_full = Instant::now();
    }
}
