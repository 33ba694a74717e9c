//! RFC 6962 verification of the signed certificate timestamp (SCT) embedded
//! in a Fulcio certificate, against the trusted root's CT logs.
//!
//! `sigstore` 0.15 checks the SCT itself, but when the trusted root's CA
//! issued the leaf directly it re-encodes that CA's key with a short-form
//! DER length, which is wrong for keys over 127 bytes (an RSA root): the
//! issuer key hash it signs over is then wrong and valid SCTs fail
//! (sigstore-rs `CertificateEmbeddedSCT::new_with_verified_path`; the
//! conformance case `bundle-with-sct-with-extensions`). ferry then verifies
//! the SCT here, over the issuer's key exactly as its certificate encodes it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sigstore::crypto::{CosignVerificationKey, Signature};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Any, Decode, Encode, Tag, TagNumber, Tagged};
use x509_cert::ext::Extension;
use x509_cert::name::Name;

/// `1.3.6.1.4.1.11129.2.4.2`: the embedded SCT list extension.
const SCT_LIST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.11129.2.4.2");
/// Most SCTs read from one certificate.
const MAX_SCTS: usize = 16;

/// One SCT of the list (RFC 6962 §3.2).
struct Sct<'a> {
    log_id: &'a [u8],
    timestamp_ms: u64,
    extensions: &'a [u8],
    signature: &'a [u8],
}

/// A CT log of the trusted root: its key, named by the SHA-256 of its
/// SubjectPublicKeyInfo (the SCT's log id), and the key's validity.
#[derive(Debug)]
pub(crate) struct CtLog {
    key_id: [u8; 32],
    key: CosignVerificationKey,
    start: Option<i64>,
    end: Option<i64>,
}

/// A CA certificate of the trusted root: its subject and the SHA-256 of its
/// SubjectPublicKeyInfo as the certificate encodes it (the issuer key hash
/// an SCT signs over).
#[derive(Debug)]
pub(crate) struct CaKey {
    subject: Name,
    key_hash: [u8; 32],
}

/// The trusted root's `ctlogs`. Entries whose key ferry cannot use are left
/// out: an SCT naming them is refused as from an untrusted log.
pub(crate) fn ct_logs(logs: &[Value]) -> Vec<CtLog> {
    let mut out = Vec::new();
    for log in logs {
        let Some(der) = log["publicKey"]["rawBytes"]
            .as_str()
            .and_then(|s| B64.decode(s).ok())
        else {
            continue;
        };
        let Ok(key) = CosignVerificationKey::try_from_der(&der) else {
            continue;
        };
        let range = &log["publicKey"]["validFor"];
        let bound = |field: &str| range[field].as_str().and_then(super::rfc3339);
        out.push(CtLog {
            key_id: Sha256::digest(&der).into(),
            key,
            start: bound("start"),
            end: bound("end"),
        });
    }
    out
}

/// Every certificate of the trusted root's `certificateAuthorities` chains.
pub(crate) fn ca_keys(cas: &[Value]) -> Vec<CaKey> {
    let mut out = Vec::new();
    for ca in cas {
        let certs = ca["certChain"]["certificates"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        for c in certs {
            let Some(der) = c["rawBytes"].as_str().and_then(|s| B64.decode(s).ok()) else {
                continue;
            };
            let Ok(cert) = Certificate::from_der(&der) else {
                continue;
            };
            let Ok(spki) = cert.tbs_certificate().subject_public_key_info().to_der() else {
                continue;
            };
            out.push(CaKey {
                subject: cert.tbs_certificate().subject().clone(),
                key_hash: Sha256::digest(&spki).into(),
            });
        }
    }
    out
}

/// Verifies that at least one SCT embedded in `leaf_der` was signed by one
/// of `logs` (valid at the SCT's time) over this certificate as a
/// precertificate of one of the CAs named as its issuer.
pub fn verify(leaf_der: &[u8], logs: &[CtLog], cas: &[CaKey]) -> Result<(), String> {
    let leaf = Certificate::from_der(leaf_der).map_err(|e| format!("certificate: {e}"))?;
    let list = leaf
        .tbs_certificate()
        .extensions()
        .into_iter()
        .flatten()
        .find(|e| e.extn_id == SCT_LIST)
        .ok_or("the certificate has no embedded SCT")?;
    // The extension value is an OCTET STRING holding the TLS-encoded list.
    let inner = x509_cert::der::asn1::OctetString::from_der(list.extn_value.as_bytes())
        .map_err(|e| format!("SCT list: {e}"))?;
    let scts = parse_list(inner.as_bytes())?;
    let tbs = precert_tbs(leaf_der).map_err(|e| format!("certificate: {e}"))?;
    let issuer = leaf.tbs_certificate().issuer();
    let issuers: Vec<&[u8; 32]> = cas
        .iter()
        .filter(|ca| &ca.subject == issuer)
        .map(|ca| &ca.key_hash)
        .collect();
    if issuers.is_empty() {
        return Err(
            "no certificate authority of the trusted root is the certificate's issuer".into(),
        );
    }
    let mut last = String::from("no SCT");
    for sct in &scts {
        let Some(log) = logs.iter().find(|l| l.key_id == sct.log_id) else {
            last = format!(
                "SCT from log {} not in the trusted root",
                hex::encode(sct.log_id)
            );
            continue;
        };
        let at = i64::try_from(sct.timestamp_ms / 1000).unwrap_or(i64::MAX);
        if log.start.is_some_and(|s| at < s) {
            last = "the SCT predates its log key's validity".to_owned();
            continue;
        }
        if log.end.is_some_and(|e| at > e) {
            last = "the SCT is after its log key's validity".to_owned();
            continue;
        }
        for issuer in &issuers {
            let signed = signed_data(sct, issuer, &tbs);
            if log
                .key
                .verify_signature(Signature::Raw(sct.signature), &signed)
                .is_ok()
            {
                return Ok(());
            }
        }
        last = format!(
            "the SCT from log {} does not verify",
            hex::encode(sct.log_id)
        );
    }
    Err(last)
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err("SCT list: truncated".into());
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn u16_len(b: &mut &[u8]) -> Result<usize, String> {
    let h = take(b, 2)?;
    Ok(usize::from(u16::from_be_bytes([h[0], h[1]])))
}

/// The TLS `SignedCertificateTimestampList`: a u16-length list of
/// u16-length SCTs.
fn parse_list(mut b: &[u8]) -> Result<Vec<Sct<'_>>, String> {
    let n = u16_len(&mut b)?;
    let mut list = take(&mut b, n)?;
    let mut out = Vec::new();
    while !list.is_empty() {
        if out.len() == MAX_SCTS {
            return Err(format!("SCT list: more than {MAX_SCTS} SCTs"));
        }
        let n = u16_len(&mut list)?;
        let mut s = take(&mut list, n)?;
        let version = take(&mut s, 1)?[0];
        let log_id = take(&mut s, 32)?;
        let t = take(&mut s, 8)?;
        let n = u16_len(&mut s)?;
        let extensions = take(&mut s, n)?;
        let _algorithms = take(&mut s, 2)?;
        let n = u16_len(&mut s)?;
        let signature = take(&mut s, n)?;
        if version != 0 {
            continue; // only v1 SCTs are defined
        }
        out.push(Sct {
            log_id,
            timestamp_ms: u64::from_be_bytes(t.try_into().map_err(|_| "SCT: timestamp")?),
            extensions,
            signature,
        });
    }
    Ok(out)
}

/// The leaf's TBSCertificate without the SCT list extension, from the
/// original bytes (a decoded certificate does not re-encode byte for byte).
fn precert_tbs(leaf_der: &[u8]) -> x509_cert::der::Result<Vec<u8>> {
    const EXTENSIONS: Tag = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber(3),
    };
    let fields = Vec::<Any>::from_der(leaf_der)?;
    let tbs = fields.first().ok_or_else(|| Tag::Sequence.value_error())?;
    let mut tbs_fields: Vec<Any> = tbs.decode_as()?;
    if let Some(ext) = tbs_fields.iter_mut().find(|f| f.tag() == EXTENSIONS) {
        let mut kept = Vec::new();
        for e in Vec::<Any>::from_der(ext.value())? {
            if e.decode_as::<Extension>()?.extn_id != SCT_LIST {
                kept.push(e);
            }
        }
        *ext = Any::new(EXTENSIONS, kept.to_der()?)?;
    }
    tbs_fields.to_der()
}

/// What a precertificate SCT signs (RFC 6962 §3.2, `digitally-signed`).
fn signed_data(sct: &Sct, issuer_key_hash: &[u8; 32], tbs: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tbs.len() + 64);
    out.push(0); // version v1
    out.push(0); // signature_type certificate_timestamp
    out.extend_from_slice(&sct.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes()); // entry_type precert_entry
    out.extend_from_slice(issuer_key_hash);
    let n = tbs.len() as u32;
    out.extend_from_slice(&n.to_be_bytes()[1..]); // opaque<1..2^24-1>
    out.extend_from_slice(tbs);
    out.extend_from_slice(&(sct.extensions.len() as u16).to_be_bytes());
    out.extend_from_slice(sct.extensions);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_oversized_list_is_refused() {
        assert!(parse_list(&[0, 5, 0, 3, 0]).is_err());
        assert!(parse_list(&[]).is_err());
        // An SCT whose signature length runs past its end.
        let mut one = vec![0u8];
        one.extend_from_slice(&[7; 32]);
        one.extend_from_slice(&[0; 8]);
        one.extend_from_slice(&[0, 0, 4, 3, 0, 9]);
        let mut list = (one.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&one);
        let mut b = ((list.len()) as u16).to_be_bytes().to_vec();
        b.extend_from_slice(&list);
        assert!(parse_list(&b).is_err());
    }

    #[test]
    fn signed_data_is_the_rfc_6962_layout() {
        let sct = Sct {
            log_id: &[0; 32],
            timestamp_ms: 0x0102_0304_0506_0708,
            extensions: b"xy",
            signature: &[],
        };
        let d = signed_data(&sct, &[9; 32], b"TBS");
        assert_eq!(&d[..2], &[0, 0]);
        assert_eq!(&d[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&d[10..12], &[0, 1]);
        assert_eq!(&d[12..44], &[9; 32]);
        assert_eq!(&d[44..47], &[0, 0, 3]);
        assert_eq!(&d[47..50], b"TBS");
        assert_eq!(&d[50..], &[0, 2, b'x', b'y']);
    }
}
