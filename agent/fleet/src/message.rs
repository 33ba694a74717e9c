//! What devices publish: their status and their audit entries, and the
//! check of a reported chain.

use ferry_core::audit::AuditEntry;
use ferry_core::digest::Sha256;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a device is doing, as its agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// The last reconcile applied or found nothing to do.
    Ok,
    /// The last reconcile failed (see `last_error`).
    Failing,
    /// The last reconcile rolled back a revision that failed its checks.
    RolledBack,
    /// No reconcile yet since the agent started.
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Failing => "failing",
            Health::RolledBack => "rolled-back",
            Health::Unknown => "unknown",
        }
    }
}

/// The retained status message of one device (`P/device/D/status`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device: String,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub site: Option<String>,
    pub agent_version: String,
    /// Unix seconds of this message.
    pub last_seen: u64,
    /// `idle` or `reconciling`.
    #[serde(default)]
    pub state: String,
    pub health: Health,
    pub generation: Option<u64>,
    pub revision: Option<String>,
    /// Unix milliseconds the current generation was made.
    #[serde(default)]
    pub generation_time_ms: Option<i64>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// The A/B slots as `ferry firmware status --json` shows them.
    #[serde(default)]
    pub firmware: Option<Value>,
    /// The newest audit entry's seq.
    #[serde(default)]
    pub audit_head: u64,
    /// The newest entry the broker has acknowledged.
    #[serde(default)]
    pub audit_reported: u64,
    /// Revisions the device rolled back after failed health checks and
    /// will not apply again, newest first (at most [`MAX_REJECTED`]).
    #[serde(default)]
    pub rejected: Vec<String>,
    /// Managed resources changed on the device and not restored (policy
    /// `report`, or a restore that has not happened yet).
    #[serde(default)]
    pub drifted: u64,
}

/// The most rejected revisions a status names.
pub const MAX_REJECTED: usize = 16;

/// The device's side of a status: what its state says (the agent adds its
/// own view and the time).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateView {
    pub generation: Option<u64>,
    pub revision: Option<String>,
    pub generation_time_ms: Option<i64>,
    pub firmware: Option<Value>,
    pub audit_head: u64,
    /// Rejected revisions, newest first (at most [`MAX_REJECTED`]).
    #[serde(default)]
    pub rejected: Vec<String>,
    /// Managed resources changed on the device and not restored.
    #[serde(default)]
    pub drifted: u64,
}

/// One audit entry as reported (`P/device/D/audit/SEQ`): the entry, its
/// chain hash and the previous entry's, so that any run of consecutive
/// entries can be checked on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedEntry {
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub hash: String,
    pub prev_hash: String,
}

/// What `ferry fleet report` prints: the state's view and the audit
/// entries after a seq, oldest first, at most a page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportPage {
    pub state: StateView,
    pub entries: Vec<ReportedEntry>,
}

/// The most bytes of audit entries in one report page (one entry more when
/// a single entry is larger): far below the 1 MiB the agent reads of a
/// report.
pub const PAGE_BYTES: usize = 512 * 1024;

impl ReportPage {
    /// A page from what the device's state says: `rows` are the audit
    /// entries after the last one reported, oldest first, each with its
    /// chain hash; `prev` is the hash of the entry before the first (none:
    /// the chain starts there). Entries past [`PAGE_BYTES`] wait for the
    /// next page.
    pub fn assemble(
        state: StateView,
        rows: Vec<(AuditEntry, String)>,
        prev: Option<String>,
    ) -> ReportPage {
        let mut prev = prev.unwrap_or_else(|| Sha256::ZERO.to_hex());
        let mut bytes = 0usize;
        let entries = rows
            .into_iter()
            .map(|(entry, hash)| {
                let prev_hash = std::mem::replace(&mut prev, hash.clone());
                ReportedEntry {
                    entry,
                    hash,
                    prev_hash,
                }
            })
            .take_while(|e| {
                let first = bytes == 0;
                bytes += serde_json::to_vec(e).map_or(0, |v| v.len()).max(1);
                first || bytes <= PAGE_BYTES
            })
            .collect();
        ReportPage { state, entries }
    }
}

/// Why a reported chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportedChainError {
    #[error(
        "reported audit entry {seq}: its hash does not match its content and prev_hash (edited?)"
    )]
    HashMismatch { seq: u64 },
    #[error(
        "reported audit entry {seq}: prev_hash is not entry {prev}'s hash (the chain is broken)"
    )]
    Broken { seq: u64, prev: u64 },
    #[error("reported audit entries {from}..={to} are missing")]
    Missing { from: u64, to: u64 },
    #[error("reported audit entry {seq}: a hash is not 64 hex digits")]
    BadHash { seq: u64 },
}

/// Checks reported entries (sorted by seq, no duplicates): each entry's
/// hash is `sha256(prev_hash || canonical entry)` and each `prev_hash` is
/// the hash of the entry before it. The first entry's `prev_hash` cannot be
/// checked here (it is the device's earlier chain); it is returned, with
/// the number of entries.
pub fn verify_reported(
    entries: &[ReportedEntry],
) -> Result<(u64, Option<String>), ReportedChainError> {
    let mut prev: Option<(&ReportedEntry, Sha256)> = None;
    for r in entries {
        let seq = r.entry.seq;
        let parse = |h: &str| {
            h.parse::<Sha256>()
                .map_err(|_| ReportedChainError::BadHash { seq })
        };
        let (hash, prev_hash) = (parse(&r.hash)?, parse(&r.prev_hash)?);
        if let Some((p, p_hash)) = &prev {
            if seq != p.entry.seq + 1 {
                return Err(ReportedChainError::Missing {
                    from: p.entry.seq + 1,
                    to: seq.saturating_sub(1),
                });
            }
            if prev_hash != *p_hash {
                return Err(ReportedChainError::Broken {
                    seq,
                    prev: p.entry.seq,
                });
            }
        }
        if r.entry.chain_hash(&prev_hash) != hash {
            return Err(ReportedChainError::HashMismatch { seq });
        }
        prev = Some((r, hash));
    }
    Ok((
        entries.len() as u64,
        entries.first().map(|e| e.prev_hash.clone()),
    ))
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use serde_json::json;

    /// A valid chain of `n` reported entries.
    pub(crate) fn chain(n: u64) -> Vec<ReportedEntry> {
        let mut prev = Sha256::ZERO;
        (1..=n)
            .map(|seq| {
                let entry = AuditEntry {
                    seq,
                    time_ms: 1_700_000_000_000 + seq as i64,
                    generation: Some(seq),
                    event: "confirmed".into(),
                    actor: "ferry".into(),
                    details: json!({"n": seq}),
                };
                let hash = entry.chain_hash(&prev);
                let r = ReportedEntry {
                    entry,
                    hash: hash.to_hex(),
                    prev_hash: prev.to_hex(),
                };
                prev = hash;
                r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::chain;
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reported_chain_verifies_and_names_the_broken_entry() {
        let c = chain(6);
        assert_eq!(verify_reported(&c).unwrap().0, 6);
        // Any run of consecutive entries verifies on its own.
        assert_eq!(verify_reported(&c[2..5]).unwrap().0, 3);
        assert_eq!(verify_reported(&[]).unwrap(), (0, None));

        let mut edited = c.clone();
        edited[3].entry.details = json!({"n": 99});
        assert_eq!(
            verify_reported(&edited),
            Err(ReportedChainError::HashMismatch { seq: 4 })
        );
        let mut gap = c.clone();
        gap.remove(2);
        assert_eq!(
            verify_reported(&gap),
            Err(ReportedChainError::Missing { from: 3, to: 3 })
        );
        // An entry re-hashed onto a forged predecessor: its own hash is
        // consistent, but it does not follow the entry before it.
        let mut forged = c.clone();
        let fake_prev = Sha256::from_bytes([7; 32]);
        forged[4].prev_hash = fake_prev.to_hex();
        forged[4].hash = forged[4].entry.chain_hash(&fake_prev).to_hex();
        assert_eq!(
            verify_reported(&forged),
            Err(ReportedChainError::Broken { seq: 5, prev: 4 })
        );
        let mut bad = c;
        bad[0].hash = "zz".into();
        assert_eq!(
            verify_reported(&bad),
            Err(ReportedChainError::BadHash { seq: 1 })
        );
    }

    #[test]
    fn a_reported_entry_is_the_audit_entry_plus_two_hashes() {
        let c = chain(1);
        let v = serde_json::to_value(&c[0]).unwrap();
        for k in [
            "seq",
            "time_ms",
            "generation",
            "event",
            "actor",
            "details",
            "hash",
            "prev_hash",
        ] {
            assert!(v.get(k).is_some(), "{k} in {v}");
        }
        let back: ReportedEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back, c[0]);
    }
}
