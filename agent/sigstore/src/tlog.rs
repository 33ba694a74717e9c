//! Transparency log proofs: the signed entry timestamp (SET), the Merkle
//! inclusion proof (RFC 9162 §2.1.3) and the checkpoint (a signed note)
//! that commits to the proof's root.
//!
//! `sigstore` 0.15 checks that a log entry is consistent with the bundle,
//! but not that the log vouched for it (sigstore-rs#285); ferry does that
//! here, offline, against the log keys of the trusted root.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use sigstore::crypto::Signature;

use super::{SigstoreError, Tlog, TlogEntry};

/// What the log vouched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Vouched {
    /// `integratedTime`, when a verified SET signs it.
    pub signed_time: Option<i64>,
    /// Whether an inclusion proof up to a signed checkpoint verified.
    pub included: bool,
}

fn err(message: impl Into<String>) -> SigstoreError {
    SigstoreError::Tlog(message.into())
}

/// Verifies what `entry` carries: its SET and its inclusion proof with
/// checkpoint. At least one must be present (bundle v0.1: the SET; v0.2
/// and later: the proof with checkpoint), and whatever is present must
/// verify.
pub(super) fn verify(
    entry: &TlogEntry,
    log: &Tlog,
    version: (u32, u32),
) -> Result<Vouched, SigstoreError> {
    let mut vouched = Vouched {
        signed_time: None,
        included: false,
    };
    if let Some(set) = &entry.signed_entry_timestamp {
        verify_set(entry, log, set)?;
        if !log.valid_at(entry.integrated_time) {
            return Err(err(format!(
                "entry integrated at {} lies outside the validity of log key {} ({})",
                entry.integrated_time,
                hex::encode(&log.key_id),
                log.base_url
            )));
        }
        vouched.signed_time = Some(entry.integrated_time);
    }
    if let Some(proof) = &entry.inclusion_proof {
        verify_inclusion(&entry.body, proof)?;
        match &proof.checkpoint {
            Some(note) => {
                verify_checkpoint(note, proof, log)?;
                vouched.included = true;
            }
            None if version >= (0, 2) => {
                return Err(err("the inclusion proof has no checkpoint"));
            }
            None => {}
        }
    } else if version >= (0, 2) {
        return Err(err(
            "the entry has no inclusion proof (required from bundle v0.2 on)",
        ));
    }
    if vouched.signed_time.is_none() && !vouched.included {
        return Err(err(
            "the entry has neither a signed entry timestamp nor an inclusion proof with checkpoint",
        ));
    }
    Ok(vouched)
}

/// The SET signs the canonical JSON of body, integrated time, log id and
/// log index (keys sorted, no spaces).
fn verify_set(entry: &TlogEntry, log: &Tlog, set: &[u8]) -> Result<(), SigstoreError> {
    let payload = format!(
        "{{\"body\":\"{}\",\"integratedTime\":{},\"logID\":\"{}\",\"logIndex\":{}}}",
        B64.encode(&entry.body),
        entry.integrated_time,
        hex::encode(&log.key_id),
        entry.log_index
    );
    log.key
        .verify_signature(Signature::Raw(set), payload.as_bytes())
        .map_err(|_| {
            err(format!(
                "signed entry timestamp does not verify with log key {} ({})",
                hex::encode(&log.key_id),
                log.base_url
            ))
        })
}

/// A parsed inclusion proof.
#[derive(Debug, Clone)]
pub(super) struct InclusionProof {
    pub log_index: u64,
    pub tree_size: u64,
    pub root_hash: Vec<u8>,
    pub hashes: Vec<Vec<u8>>,
    pub checkpoint: Option<String>,
}

fn leaf_hash(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(body);
    h.finalize().into()
}

fn node_hash(left: &[u8], right: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// RFC 9162 §2.1.3.2: recomputes the root from the leaf and the audit path.
pub(super) fn root_from_proof(
    leaf: [u8; 32],
    index: u64,
    size: u64,
    hashes: &[Vec<u8>],
) -> Result<[u8; 32], SigstoreError> {
    if index >= size {
        return Err(err(format!(
            "inclusion proof: leaf index {index} is not below the tree size {size}"
        )));
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = leaf;
    for p in hashes {
        if p.len() != 32 {
            return Err(err("inclusion proof: a hash is not 32 bytes"));
        }
        if snode == 0 {
            return Err(err("inclusion proof: more hashes than the tree has levels"));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(err(
            "inclusion proof: fewer hashes than the tree has levels",
        ));
    }
    Ok(r)
}

fn verify_inclusion(body: &[u8], proof: &InclusionProof) -> Result<(), SigstoreError> {
    let root = root_from_proof(
        leaf_hash(body),
        proof.log_index,
        proof.tree_size,
        &proof.hashes,
    )?;
    if root[..] != proof.root_hash[..] {
        return Err(err(format!(
            "inclusion proof: the entry does not lead to root {} of tree size {}",
            hex::encode(&proof.root_hash),
            proof.tree_size
        )));
    }
    Ok(())
}

/// A checkpoint is a signed note: `origin\nsize\nbase64(root)\n[…]\n\n`
/// followed by signature lines `— name base64(key hint ‖ signature)`.
fn verify_checkpoint(note: &str, proof: &InclusionProof, log: &Tlog) -> Result<(), SigstoreError> {
    let split = note
        .find("\n\n")
        .ok_or_else(|| err("checkpoint: no blank line between text and signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    let mut lines = text.lines();
    let _origin = lines
        .next()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| err("checkpoint: no origin line"))?;
    let size: u64 = lines
        .next()
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| err("checkpoint: line 2 is not a tree size"))?;
    let root = lines
        .next()
        .and_then(|l| B64.decode(l).ok())
        .ok_or_else(|| err("checkpoint: line 3 is not a base64 root hash"))?;
    if size != proof.tree_size || root != proof.root_hash {
        return Err(err(format!(
            "checkpoint commits to tree size {size} and root {}, the proof to {} and {}",
            hex::encode(&root),
            proof.tree_size,
            hex::encode(&proof.root_hash)
        )));
    }
    let hint = &log.key_id[..4.min(log.key_id.len())];
    let mut seen = false;
    for line in signatures.lines().filter(|l| !l.is_empty()) {
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| err("checkpoint: a signature line does not start with an em dash"))?;
        let Some((_name, sig)) = rest.rsplit_once(' ') else {
            return Err(err("checkpoint: a signature line has no signature"));
        };
        let Ok(sig) = B64.decode(sig) else {
            return Err(err("checkpoint: a signature is not base64"));
        };
        if sig.len() <= 4 || &sig[..4] != hint {
            continue;
        }
        seen = true;
        if log
            .key
            .verify_signature(Signature::Raw(&sig[4..]), text.as_bytes())
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(err(if seen {
        format!(
            "checkpoint signature does not verify with log key {} ({})",
            hex::encode(&log.key_id),
            log.base_url
        )
    } else {
        format!(
            "checkpoint is not signed by log key {} ({})",
            hex::encode(&log.key_id),
            log.base_url
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest power of two below `n` (RFC 9162 §2.1.1).
    fn split(n: usize) -> usize {
        1 << (usize::BITS - 1 - (n - 1).leading_zeros())
    }

    /// A tree of `n` leaves built the RFC 9162 way.
    fn mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            1 => leaves[0],
            n => {
                let k = split(n);
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn path(leaves: &[[u8; 32]], m: usize) -> Vec<Vec<u8>> {
        let n = leaves.len();
        if n == 1 {
            return vec![];
        }
        let k = split(n);
        if m < k {
            let mut p = path(&leaves[..k], m);
            p.push(mth(&leaves[k..]).to_vec());
            p
        } else {
            let mut p = path(&leaves[k..], m - k);
            p.push(mth(&leaves[..k]).to_vec());
            p
        }
    }

    #[test]
    fn every_leaf_of_every_small_tree_proves_its_inclusion() {
        for n in 1..=20usize {
            let leaves: Vec<[u8; 32]> = (0..n).map(|i| leaf_hash(&[i as u8])).collect();
            let root = mth(&leaves);
            for m in 0..n {
                let p = path(&leaves, m);
                assert_eq!(
                    root_from_proof(leaves[m], m as u64, n as u64, &p).unwrap(),
                    root,
                    "n={n} m={m}"
                );
                // Another leaf, index or size does not lead to the root.
                let other = leaf_hash(b"x");
                assert_ne!(
                    root_from_proof(other, m as u64, n as u64, &p).unwrap(),
                    root
                );
                if n > 1 {
                    let wrong = (m + 1) % n;
                    assert!(
                        root_from_proof(leaves[m], wrong as u64, n as u64, &p)
                            .map_or(true, |r| r != root),
                        "n={n} m={m}"
                    );
                }
            }
        }
    }

    #[test]
    fn malformed_proofs_are_errors() {
        let leaf = leaf_hash(b"a");
        assert!(root_from_proof(leaf, 3, 3, &[]).is_err());
        assert!(root_from_proof(leaf, 0, 1, &[vec![0; 32]]).is_err());
        assert!(root_from_proof(leaf, 0, 2, &[]).is_err());
        assert!(root_from_proof(leaf, 0, 2, &[vec![0; 31]]).is_err());
    }
}
