//! The audit chain: each entry's hash covers the previous hash and the
//! canonical JSON of the entry, so editing, inserting or deleting any entry
//! breaks every hash after it. The newest (seq, hash) is kept apart as the
//! head, so deleting entries from the end is detected too.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::canonical;
use crate::digest::Sha256;

/// One audit entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: i64,
    pub generation: Option<u64>,
    pub event: String,
    /// Who caused it: a signer key id, `usb`, `local-operator`, `ferry`.
    pub actor: String,
    pub details: Value,
}

impl AuditEntry {
    /// The exact JSON the hash covers.
    pub fn canonical(&self) -> Vec<u8> {
        canonical::to_vec(&json!({
            "seq": self.seq,
            "time_ms": self.time_ms,
            "generation": self.generation,
            "event": self.event,
            "actor": self.actor,
            "details": self.details,
        }))
    }

    /// `sha256(prev_hash || canonical_json(entry))`.
    pub fn chain_hash(&self, prev: &Sha256) -> Sha256 {
        let mut h = sha2::Sha256::new();
        h.update(prev.as_bytes());
        h.update(self.canonical());
        Sha256::from_bytes(h.finalize().into())
    }
}

/// Where and why a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit entry {seq}: hash does not match its content and predecessor (edited?)")]
    HashMismatch { seq: u64 },
    #[error("audit entry {seq}: missing (sequence jumps from {prev} to {next})")]
    Missing { seq: u64, prev: u64, next: u64 },
    #[error("audit entry {seq}: missing (the recorded head is entry {head_seq})")]
    TailMissing { seq: u64, head_seq: u64 },
    #[error("audit entry {seq}: after the recorded head {head_seq} (inserted?)")]
    BeyondHead { seq: u64, head_seq: u64 },
    #[error("audit entry {seq}: head hash does not match the chain")]
    HeadMismatch { seq: u64 },
}

/// Checks entries (in seq order, starting right after `base`, or at 1)
/// against their stored hashes and against the recorded head `(seq, hash)`;
/// names the first broken entry. `base` is the checkpoint of a pruned
/// prefix: the seq and chain hash of the last entry removed.
pub fn verify_chain<'a>(
    entries: impl IntoIterator<Item = (&'a AuditEntry, &'a Sha256)>,
    base: Option<(u64, Sha256)>,
    head: Option<(u64, Sha256)>,
) -> Result<u64, ChainError> {
    let (mut prev_seq, mut prev_hash) = base.unwrap_or((0, Sha256::ZERO));
    let head_seq = head.map_or(0, |(s, _)| s);
    for (entry, stored) in entries {
        if entry.seq > head_seq {
            return Err(ChainError::BeyondHead {
                seq: entry.seq,
                head_seq,
            });
        }
        if entry.seq != prev_seq + 1 {
            return Err(ChainError::Missing {
                seq: prev_seq + 1,
                prev: prev_seq,
                next: entry.seq,
            });
        }
        let computed = entry.chain_hash(&prev_hash);
        if &computed != stored {
            return Err(ChainError::HashMismatch { seq: entry.seq });
        }
        prev_hash = computed;
        prev_seq = entry.seq;
    }
    if let Some((seq, hash)) = head {
        if prev_seq < seq {
            return Err(ChainError::TailMissing {
                seq: prev_seq + 1,
                head_seq: seq,
            });
        }
        if hash != prev_hash {
            return Err(ChainError::HeadMismatch { seq });
        }
    }
    Ok(prev_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> (Vec<AuditEntry>, Vec<Sha256>) {
        let mut prev = Sha256::ZERO;
        let mut entries = Vec::new();
        let mut hashes = Vec::new();
        for seq in 1..=n {
            let e = AuditEntry {
                seq,
                time_ms: 1_700_000_000_000 + seq as i64,
                generation: Some(seq),
                event: "confirmed".into(),
                actor: "ferry".into(),
                details: json!({"n": seq}),
            };
            prev = e.chain_hash(&prev);
            entries.push(e);
            hashes.push(prev);
        }
        (entries, hashes)
    }

    fn check(
        e: &[AuditEntry],
        h: &[Sha256],
        head: Option<(u64, Sha256)>,
    ) -> Result<u64, ChainError> {
        verify_chain(e.iter().zip(h.iter()), None, head)
    }

    #[test]
    fn a_pruned_prefix_verifies_from_its_checkpoint() {
        let (e, h) = chain(10);
        let head = Some((10, h[9]));
        // Entries 1..=4 pruned; the checkpoint is entry 4's chain hash.
        assert_eq!(
            verify_chain(e[4..].iter().zip(h[4..].iter()), Some((4, h[3])), head),
            Ok(10)
        );
        // A wrong checkpoint breaks the first retained entry.
        assert_eq!(
            verify_chain(e[4..].iter().zip(h[4..].iter()), Some((4, h[2])), head),
            Err(ChainError::HashMismatch { seq: 5 })
        );
        // Entries missing right after the checkpoint are named.
        assert_eq!(
            verify_chain(e[5..].iter().zip(h[5..].iter()), Some((4, h[3])), head),
            Err(ChainError::Missing {
                seq: 5,
                prev: 4,
                next: 6
            })
        );
    }

    #[test]
    fn intact_chain_verifies() {
        let (e, h) = chain(5);
        assert_eq!(check(&e, &h, Some((5, h[4]))), Ok(5));
        assert_eq!(check(&[], &[], None), Ok(0));
    }

    #[test]
    fn edit_delete_and_truncation_name_the_entry() {
        let (mut e, h) = chain(5);
        let head = Some((5, h[4]));
        e[2].details = json!({"n": 99});
        assert_eq!(
            check(&e, &h, head),
            Err(ChainError::HashMismatch { seq: 3 })
        );

        let (mut e, mut h) = chain(5);
        e.remove(1);
        h.remove(1);
        assert_eq!(
            check(&e, &h, head),
            Err(ChainError::Missing {
                seq: 2,
                prev: 1,
                next: 3
            })
        );

        let (e, h) = chain(5);
        assert_eq!(
            check(&e[..4], &h[..4], head),
            Err(ChainError::TailMissing {
                seq: 5,
                head_seq: 5
            })
        );
        assert_eq!(
            check(&e, &h, Some((4, h[3]))),
            Err(ChainError::BeyondHead {
                seq: 5,
                head_seq: 4
            })
        );
    }
}
