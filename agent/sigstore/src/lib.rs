//! ferry's Sigstore bundle verifier: proof that a CI identity (keyless, a short-lived
//! Fulcio certificate) or a known key signed an artifact, recorded in a
//! transparency log. Verified offline against a trusted root file; the
//! Sigstore public-good root is embedded.
//!
//! What is checked, in order:
//! 1. the bundle parses (media type v0.1–v0.3, one tlog entry), bounded;
//! 2. the log entry: the log is in the trusted root, its SET verifies and/or
//!    its inclusion proof leads to a checkpoint the log signed ([`tlog`]);
//! 3. the artifact digest is the one the bundle and the log entry sign;
//! 4. keyless: every verified signing time (the log's signed entry
//!    timestamp and each RFC 3161 timestamp, [`tsa`], checked against the
//!    trusted root's timestamp authorities) lies within the certificate's
//!    validity, and there are at least `min_times` of them; the certificate
//!    chains to a Fulcio CA of the trusted root at issuance, its SCT
//!    verifies, its identity meets the policy, the signature verifies and
//!    the log entry records this signature and certificate (`sigstore` 0.15
//!    does the chain, SCT and identity steps); key: the signature verifies
//!    with the key and the log entry names that key and signature.
//!
//! Log entries: `hashedrekord` 0.0.1 and 0.0.2 (Rekor v2), `dsse` 0.0.1 and
//! 0.0.2, `intoto` 0.0.2. Not supported (refused with a clear error, never
//! accepted): SHA-512 artifacts, key-based message signatures with keys
//! other than P-256/P-384, bundles with more than one log entry.

#![forbid(unsafe_code)]

pub mod identity;
mod sct;
mod tlog;
mod tsa;

use std::path::Path;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sigstore::bundle::verify::{
    BundleErrorKind, CertificateErrorKind, PolicyError, SignatureErrorKind, VerificationError,
    VerificationPolicy,
};
use sigstore::crypto::{CosignVerificationKey, Signature};
use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};

pub use identity::{IdentityMatch, IdentityPolicy, Signer};

/// Largest bundle or trusted root read.
pub const MAX_BUNDLE_BYTES: u64 = 1024 * 1024;

/// The Sigstore public-good trusted root ferry ships (from
/// github.com/sigstore/root-signing, as pinned by `sigstore` 0.15's tests:
/// Fulcio CAs, Rekor v1 and `log2025-1`, the CT logs, the TSA).
pub const PRODUCTION_TRUSTED_ROOT: &[u8] = include_bytes!("trusted_root.json");

/// The suffix of the sibling file that carries an artifact's bundle.
pub const BUNDLE_SUFFIX: &str = ".sigstore.json";

#[derive(Debug, thiserror::Error)]
pub enum SigstoreError {
    /// The bundle is malformed or of a kind ferry does not verify.
    #[error("bundle {file}: {message}")]
    Bundle { file: String, message: String },
    #[error("trusted root {origin}: {message}")]
    TrustedRoot { origin: String, message: String },
    #[error("key {origin}: {message}")]
    Key { origin: String, message: String },
    #[error("certificate chain: {0}")]
    CertificateChain(String),
    #[error("SCT: {0}")]
    Sct(String),
    #[error("identity mismatch: {0}")]
    Identity(String),
    #[error("digest mismatch: the bundle signs {signed}, the artifact is {actual}")]
    DigestMismatch { signed: String, actual: String },
    #[error("signature: {0}")]
    Signature(String),
    #[error("tlog inclusion: {0}")]
    Tlog(String),
    #[error("signing time: {0}")]
    Time(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl ferry_core::Classify for SigstoreError {
    /// What the device or operator gave (a trusted root, a key file) is a
    /// configuration error; everything about the bundle is a verification
    /// failure.
    fn class(&self) -> ferry_core::ErrorClass {
        match self {
            SigstoreError::TrustedRoot { .. } | SigstoreError::Key { .. } => {
                ferry_core::ErrorClass::Config
            }
            _ => ferry_core::ErrorClass::Verification,
        }
    }
}

impl SigstoreError {
    /// A stable name of the failed check, for `--json` and the audit journal.
    pub fn check(&self) -> &'static str {
        match self {
            SigstoreError::Bundle { .. } => "bundle",
            SigstoreError::TrustedRoot { .. } => "trusted-root",
            SigstoreError::Key { .. } => "key",
            SigstoreError::CertificateChain(_) => "certificate-chain",
            SigstoreError::Sct(_) => "sct",
            SigstoreError::Identity(_) => "identity",
            SigstoreError::DigestMismatch { .. } => "digest",
            SigstoreError::Signature(_) => "signature",
            SigstoreError::Tlog(_) => "tlog",
            SigstoreError::Time(_) => "time",
            SigstoreError::Unsupported(_) => "unsupported",
        }
    }
}

/// One transparency log of the trusted root.
#[derive(Debug)]
struct Tlog {
    base_url: String,
    key_id: Vec<u8>,
    key: CosignVerificationKey,
    start: Option<i64>,
    end: Option<i64>,
}

impl Tlog {
    fn valid_at(&self, t: i64) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t <= e)
    }
}

/// A parsed trusted root (`trusted_root.json`, media type
/// `application/vnd.dev.sigstore.trustedroot+json`).
#[derive(Debug)]
pub struct TrustedRoot {
    origin: String,
    json: Vec<u8>,
    tlogs: Vec<Tlog>,
    certificate_authorities: usize,
    timestamp_authorities: Vec<tsa::Authority>,
    /// CT logs and CA keys, for ferry's own SCT check (module `sct`).
    ct_logs: Vec<sct::CtLog>,
    ca_keys: Vec<sct::CaKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRoot {
    media_type: String,
    #[serde(default)]
    tlogs: Vec<RawTlog>,
    #[serde(default)]
    certificate_authorities: Vec<Value>,
    #[serde(default)]
    timestamp_authorities: Vec<RawAuthority>,
    #[serde(default)]
    ctlogs: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAuthority {
    #[serde(default)]
    subject: Value,
    cert_chain: RawChain,
    #[serde(default)]
    valid_for: Option<RawRange>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTlog {
    #[serde(default)]
    base_url: String,
    public_key: RawKey,
    log_id: RawLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKey {
    raw_bytes: String,
    #[serde(default)]
    valid_for: Option<RawRange>,
}

#[derive(Deserialize)]
struct RawRange {
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

fn rfc3339(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

impl TrustedRoot {
    /// The embedded Sigstore public-good trusted root.
    pub fn production() -> &'static TrustedRoot {
        static ROOT: OnceLock<TrustedRoot> = OnceLock::new();
        ROOT.get_or_init(|| {
            TrustedRoot::from_json(PRODUCTION_TRUSTED_ROOT, "(embedded public-good root)")
                .expect("the embedded trusted root parses")
        })
    }

    /// Reads a trusted root file (bounded).
    pub fn load(path: &Path) -> Result<TrustedRoot, SigstoreError> {
        let origin = path.display().to_string();
        let bytes = read_bounded(path).map_err(|e| SigstoreError::TrustedRoot {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        TrustedRoot::from_json(&bytes, &origin)
    }

    pub fn from_json(bytes: &[u8], origin: &str) -> Result<TrustedRoot, SigstoreError> {
        let bad = |message: String| SigstoreError::TrustedRoot {
            origin: origin.to_owned(),
            message,
        };
        let raw: RawRoot = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if !raw
            .media_type
            .starts_with("application/vnd.dev.sigstore.trustedroot")
        {
            return Err(bad(format!(
                "/mediaType: {:?} is not a Sigstore trusted root",
                raw.media_type
            )));
        }
        let mut tlogs = Vec::new();
        for (i, t) in raw.tlogs.iter().enumerate() {
            let der = B64
                .decode(&t.public_key.raw_bytes)
                .map_err(|e| bad(format!("/tlogs/{i}/publicKey/rawBytes: {e}")))?;
            let key = CosignVerificationKey::try_from_der(&der)
                .map_err(|e| bad(format!("/tlogs/{i}/publicKey/rawBytes: {e}")))?;
            let key_id = B64
                .decode(&t.log_id.key_id)
                .map_err(|e| bad(format!("/tlogs/{i}/logId/keyId: {e}")))?;
            let range = t.public_key.valid_for.as_ref();
            // The start of a log key's validity is required (a missing one
            // is a malformed root, not an unbounded key).
            if range.and_then(|r| r.start.as_ref()).is_none() {
                return Err(bad(format!("/tlogs/{i}/publicKey/validFor/start: missing")));
            }
            let time = |s: Option<&String>, field: &str| -> Result<Option<i64>, SigstoreError> {
                s.map(|s| {
                    rfc3339(s).ok_or_else(|| {
                        bad(format!(
                            "/tlogs/{i}/publicKey/validFor/{field}: {s:?} is not an RFC 3339 time"
                        ))
                    })
                })
                .transpose()
            };
            tlogs.push(Tlog {
                base_url: t.base_url.clone(),
                key_id,
                key,
                start: time(range.and_then(|r| r.start.as_ref()), "start")?,
                end: time(range.and_then(|r| r.end.as_ref()), "end")?,
            });
        }
        let mut timestamp_authorities = Vec::new();
        for (i, a) in raw.timestamp_authorities.iter().enumerate() {
            let chain = a
                .cert_chain
                .certificates
                .iter()
                .map(|c| B64.decode(&c.raw_bytes))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("/timestampAuthorities/{i}/certChain: {e}")))?;
            let time = |s: Option<&String>, field: &str| -> Result<Option<i64>, SigstoreError> {
                s.map(|s| {
                    rfc3339(s).ok_or_else(|| {
                        bad(format!(
                            "/timestampAuthorities/{i}/validFor/{field}: {s:?} is not an RFC 3339 time"
                        ))
                    })
                })
                .transpose()
            };
            let range = a.valid_for.as_ref();
            timestamp_authorities.push(tsa::Authority {
                chain,
                start: time(range.and_then(|r| r.start.as_ref()), "start")?,
                end: time(range.and_then(|r| r.end.as_ref()), "end")?,
                name: a.subject["commonName"]
                    .as_str()
                    .map_or_else(|| format!("timestamp authority {i}"), str::to_owned),
            });
        }
        Ok(TrustedRoot {
            origin: origin.to_owned(),
            json: bytes.to_vec(),
            tlogs,
            certificate_authorities: raw.certificate_authorities.len(),
            timestamp_authorities,
            ct_logs: sct::ct_logs(&raw.ctlogs),
            ca_keys: sct::ca_keys(&raw.certificate_authorities),
        })
    }

    /// Where the root came from (a path or the embedded root).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn log(&self, key_id: &[u8]) -> Option<&Tlog> {
        self.tlogs.iter().find(|t| t.key_id == key_id)
    }
}

/// Why a sigstore file could not be read; the caller says which file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

/// Reads a sigstore file (bundle, trusted root, key) of at most
/// [`MAX_BUNDLE_BYTES`], bounded while reading.
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    file.take(MAX_BUNDLE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(ReadError::TooLarge {
            limit: MAX_BUNDLE_BYTES,
        });
    }
    Ok(buf)
}

/// What a bundle must prove.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// Keyless: a Fulcio certificate whose identity meets the policy.
    Identity(IdentityPolicy),
    /// A known public key (SubjectPublicKeyInfo DER), named by `origin`.
    Key { spki: Vec<u8>, origin: String },
}

impl Requirement {
    /// A key requirement from a PEM public key file.
    pub fn key_file(path: &Path) -> Result<Requirement, SigstoreError> {
        let origin = path.display().to_string();
        let bad = |message: String| SigstoreError::Key {
            origin: origin.clone(),
            message,
        };
        let bytes = read_bounded(path).map_err(|e| bad(e.to_string()))?;
        let spki = pem_spki(&bytes).map_err(bad)?;
        CosignVerificationKey::try_from_der(&spki).map_err(|e| bad(e.to_string()))?;
        Ok(Requirement::Key { spki, origin })
    }
}

fn pem_spki(pem: &[u8]) -> Result<Vec<u8>, String> {
    pem_body(pem, "PUBLIC KEY")
}

/// The DER inside the first PEM block labelled `label`.
fn pem_body(pem: &[u8], label: &str) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not PEM text".to_owned())?;
    let begin = format!("-----BEGIN {label}-----");
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with(&begin))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err(format!("no PEM {label:?} block"));
    }
    B64.decode(body.trim())
        .map_err(|e| format!("PEM body is not base64: {e}"))
}

/// What a verified bundle proved.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    /// `certificate` or `key`.
    pub kind: &'static str,
    /// The certificate's identity, or the key file.
    pub signer: String,
    pub issuer: Option<String>,
    /// The transparency log and the entry's index in it.
    pub log: String,
    pub log_index: i64,
    /// The first verified signing time (seconds since the epoch): the log's
    /// signed time of the entry, else a timestamp authority's.
    pub signed_time: Option<i64>,
    /// Where each verified signing time came from (`log …`, `timestamp
    /// authority …`).
    pub time_sources: Vec<String>,
}

// ---- bundle JSON ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBundle {
    media_type: String,
    verification_material: RawMaterial,
    message_signature: Option<RawMessageSignature>,
    dsse_envelope: Option<RawEnvelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMaterial {
    x509_certificate_chain: Option<RawChain>,
    certificate: Option<RawCert>,
    public_key: Option<Value>,
    #[serde(default)]
    tlog_entries: Vec<RawEntry>,
    #[serde(default)]
    timestamp_verification_data: Option<RawTimestamps>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTimestamps {
    #[serde(default)]
    rfc3161_timestamps: Vec<RawTimestamp>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTimestamp {
    signed_timestamp: String,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCert {
    raw_bytes: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMessageSignature {
    message_digest: Option<RawDigest>,
    signature: String,
}

#[derive(Deserialize)]
struct RawDigest {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEnvelope {
    payload: String,
    payload_type: String,
    signatures: Vec<RawEnvelopeSig>,
}

#[derive(Deserialize)]
struct RawEnvelopeSig {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    log_index: Int,
    log_id: RawLogId,
    kind_version: RawKindVersion,
    #[serde(default)]
    integrated_time: Option<Int>,
    inclusion_promise: Option<RawPromise>,
    inclusion_proof: Option<RawProof>,
    canonicalized_body: String,
}

#[derive(Deserialize)]
struct RawKindVersion {
    kind: String,
    version: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPromise {
    signed_entry_timestamp: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProof {
    log_index: Int,
    root_hash: String,
    tree_size: Int,
    #[serde(default)]
    hashes: Vec<String>,
    checkpoint: Option<RawCheckpoint>,
}

#[derive(Deserialize)]
struct RawCheckpoint {
    envelope: String,
}

/// Protobuf JSON writes 64-bit integers as strings; accept both.
#[derive(Deserialize, Clone, Copy)]
#[serde(try_from = "Value")]
struct Int(i64);

impl TryFrom<Value> for Int {
    type Error = String;
    fn try_from(v: Value) -> Result<Int, String> {
        match &v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|n| *n >= 0)
        .map(Int)
        .ok_or_else(|| format!("{v} is not a non-negative 64-bit integer"))
    }
}

/// A transparency log entry, decoded.
#[derive(Debug)]
struct TlogEntry {
    log_index: i64,
    key_id: Vec<u8>,
    integrated_time: i64,
    signed_entry_timestamp: Option<Vec<u8>>,
    inclusion_proof: Option<tlog::InclusionProof>,
    body: Vec<u8>,
    kind: String,
    version: String,
}

fn media_version(media_type: &str) -> Option<(u32, u32)> {
    match media_type {
        "application/vnd.dev.sigstore.bundle+json;version=0.1" => Some((0, 1)),
        "application/vnd.dev.sigstore.bundle+json;version=0.2" => Some((0, 2)),
        "application/vnd.dev.sigstore.bundle+json;version=0.3"
        | "application/vnd.dev.sigstore.bundle.v0.3+json" => Some((0, 3)),
        _ => None,
    }
}

/// Verifies the bundle `bundle` (the text of file `file`) for an artifact
/// whose SHA-256 is `digest`, against `root`, as `requirement` demands.
pub fn verify(
    bundle: &[u8],
    file: &str,
    digest: &[u8; 32],
    root: &TrustedRoot,
    requirement: &Requirement,
) -> Result<Verified, SigstoreError> {
    verify_with(bundle, file, digest, root, requirement, 1)
}

/// [`verify`], requiring at least `min_times` verified signing times (the
/// log's signed time and RFC 3161 timestamps) for a certificate: each one
/// must lie within the certificate's validity. Sigstore's clients require
/// one; a device may ask for more (say, a log time and a TSA time).
pub fn verify_with(
    bundle: &[u8],
    file: &str,
    digest: &[u8; 32],
    root: &TrustedRoot,
    requirement: &Requirement,
    min_times: usize,
) -> Result<Verified, SigstoreError> {
    let bad = |message: String| SigstoreError::Bundle {
        file: file.to_owned(),
        message,
    };
    if bundle.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(bad(format!("larger than {MAX_BUNDLE_BYTES} bytes")));
    }
    let raw: RawBundle = serde_json::from_slice(bundle).map_err(|e| bad(e.to_string()))?;
    let version = media_version(&raw.media_type).ok_or_else(|| {
        bad(format!(
            "/mediaType: {:?} is not a Sigstore bundle v0.1, v0.2 or v0.3",
            raw.media_type
        ))
    })?;
    let entry = decode_entry(&raw.verification_material.tlog_entries, &bad)?;
    let log = root.log(&entry.key_id).ok_or_else(|| {
        SigstoreError::Tlog(format!(
            "log {} is not in the trusted root {}",
            hex::encode(&entry.key_id),
            root.origin
        ))
    })?;
    let vouched = tlog::verify(&entry, log, version)?;
    let body: Value = serde_json::from_slice(&entry.body).map_err(|e| {
        bad(format!(
            "/verificationMaterial/tlogEntries/0/canonicalizedBody: {e}"
        ))
    })?;
    if body["kind"] != entry.kind.as_str() || body["apiVersion"] != entry.version.as_str() {
        return Err(SigstoreError::Tlog(format!(
            "the log entry is a {} {}, the bundle says {} {}",
            body["kind"], body["apiVersion"], entry.kind, entry.version
        )));
    }
    let logged = logged(&body)?;
    let bsig = bundle_signature(&raw, &bad)?;
    let actual = format!("sha256:{}", hex::encode(digest));
    let signed_digests = signed_digests(&raw, &logged, &bad)?;
    if !signed_digests.iter().any(|d| d == digest) {
        return Err(SigstoreError::DigestMismatch {
            signed: signed_digests
                .first()
                .map(|d| format!("sha256:{}", hex::encode(d)))
                .unwrap_or_else(|| "no sha256 digest".to_owned()),
            actual,
        });
    }
    let material = &raw.verification_material;
    // Verified signing times: the log's own (a verified SET) and every RFC
    // 3161 timestamp the bundle carries (each must verify).
    let mut times: Vec<(i64, String)> = Vec::new();
    if let Some(t) = vouched.signed_time {
        times.push((t, format!("log {}", log.base_url)));
    }
    let stamps = material
        .timestamp_verification_data
        .as_ref()
        .map_or(&[][..], |d| &d.rfc3161_timestamps[..]);
    if stamps.len() > MAX_TIMESTAMPS {
        return Err(bad(format!(
            "/verificationMaterial/timestampVerificationData: more than {MAX_TIMESTAMPS} timestamps"
        )));
    }
    for (i, stamp) in stamps.iter().enumerate() {
        let token = B64.decode(&stamp.signed_timestamp).map_err(|e| {
            bad(format!(
                "/verificationMaterial/timestampVerificationData/rfc3161Timestamps/{i}: {e}"
            ))
        })?;
        let (t, authority) = tsa::verify(&token, &bsig.signature, &root.timestamp_authorities)?;
        times.push((t, format!("timestamp authority {authority}")));
    }
    let verified = |kind, signer, issuer| Verified {
        kind,
        signer,
        issuer,
        log: log.base_url.clone(),
        log_index: entry.log_index,
        signed_time: times.first().map(|(t, _)| *t),
        time_sources: times.iter().map(|(_, s)| s.clone()).collect(),
    };
    match (requirement, &material.public_key) {
        (Requirement::Key { spki, origin }, Some(_)) => {
            verify_with_key(&logged, &bsig, spki, origin)?;
            Ok(verified("key", origin.clone(), None))
        }
        (Requirement::Key { origin, .. }, None) => Err(SigstoreError::Key {
            origin: origin.clone(),
            message: format!("{file} is signed with a certificate, not with a key"),
        }),
        (Requirement::Identity(_), Some(_)) => Err(SigstoreError::Identity(format!(
            "{file} is signed with a key, not by a certificate identity"
        ))),
        (Requirement::Identity(policy), None) => {
            let leaf = leaf_certificate(material, &bad)?;
            let cert = Certificate::from_der(&leaf)
                .map_err(|e| bad(format!("signing certificate: {e}")))?;
            let validity = cert.tbs_certificate().validity();
            let (not_before, not_after) = (
                validity.not_before.to_unix_duration().as_secs() as i64,
                validity.not_after.to_unix_duration().as_secs() as i64,
            );
            if times.is_empty() {
                return Err(SigstoreError::Time(format!(
                    "the certificate was valid {} to {}, and nothing signed a time for the \
                     signature (no inclusion promise from the log, no RFC 3161 timestamp), so \
                     it cannot be placed within the certificate's validity",
                    ts(not_before),
                    ts(not_after)
                )));
            }
            if times.len() < min_times {
                return Err(SigstoreError::Time(format!(
                    "{} verified signing time(s) ({}), {min_times} required",
                    times.len(),
                    times
                        .iter()
                        .map(|(_, s)| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            for (time, source) in &times {
                if *time < not_before || *time > not_after {
                    return Err(SigstoreError::Time(format!(
                        "{source} places the signature at {}, outside the certificate's validity {} to {}",
                        ts(*time),
                        ts(not_before),
                        ts(not_after)
                    )));
                }
            }
            if root.certificate_authorities == 0 {
                return Err(SigstoreError::CertificateChain(format!(
                    "the trusted root {} has no certificate authorities",
                    root.origin
                )));
            }
            keyless(bundle, &raw, &leaf, digest, root, policy, file)?;
            check_logged(&logged, &bsig, &LoggedVerifier::Certificate(leaf.clone()))?;
            let signer = identity::signer(&cert);
            Ok(verified(
                "certificate",
                signer.names.first().cloned().unwrap_or_default(),
                signer.issuer,
            ))
        }
    }
}

/// Most RFC 3161 timestamps read from one bundle.
const MAX_TIMESTAMPS: usize = 8;

fn ts(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

fn decode_entry(
    entries: &[RawEntry],
    bad: &dyn Fn(String) -> SigstoreError,
) -> Result<TlogEntry, SigstoreError> {
    let [e] = entries else {
        return Err(bad(format!(
            "/verificationMaterial/tlogEntries: {} entries, ferry verifies bundles with exactly one",
            entries.len()
        )));
    };
    let field = |f: &str| format!("/verificationMaterial/tlogEntries/0/{f}");
    let b64 = |s: &str, f: &str| B64.decode(s).map_err(|e| bad(format!("{}: {e}", field(f))));
    let inclusion_proof = match &e.inclusion_proof {
        Some(p) => Some(tlog::InclusionProof {
            log_index: p.log_index.0 as u64,
            tree_size: p.tree_size.0 as u64,
            root_hash: b64(&p.root_hash, "inclusionProof/rootHash")?,
            hashes: p
                .hashes
                .iter()
                .map(|h| b64(h, "inclusionProof/hashes"))
                .collect::<Result<_, _>>()?,
            checkpoint: p.checkpoint.as_ref().map(|c| c.envelope.clone()),
        }),
        None => None,
    };
    Ok(TlogEntry {
        log_index: e.log_index.0,
        key_id: b64(&e.log_id.key_id, "logId/keyId")?,
        integrated_time: e.integrated_time.map_or(0, |t| t.0),
        signed_entry_timestamp: e
            .inclusion_promise
            .as_ref()
            .map(|p| {
                b64(
                    &p.signed_entry_timestamp,
                    "inclusionPromise/signedEntryTimestamp",
                )
            })
            .transpose()?,
        inclusion_proof,
        body: b64(&e.canonicalized_body, "canonicalizedBody")?,
        kind: e.kind_version.kind.clone(),
        version: e.kind_version.version.clone(),
    })
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// Who a log entry says verifies a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LoggedVerifier {
    /// A certificate (DER).
    Certificate(Vec<u8>),
    /// A public key (SubjectPublicKeyInfo DER).
    Key(Vec<u8>),
}

/// What a transparency log entry records, whatever its kind and version:
/// `hashedrekord` 0.0.1 and 0.0.2 (Rekor v2), `dsse` 0.0.1 and 0.0.2,
/// `intoto` 0.0.2.
#[derive(Debug, Clone)]
enum Logged {
    /// A signature over an artifact's SHA-256 digest.
    Message {
        digest: [u8; 32],
        signature: Vec<u8>,
        verifier: LoggedVerifier,
    },
    /// DSSE envelope signatures over a payload with this SHA-256.
    Envelope {
        payload_hash: [u8; 32],
        signatures: Vec<(Vec<u8>, LoggedVerifier)>,
    },
}

fn tlog_err(m: impl Into<String>) -> SigstoreError {
    SigstoreError::Tlog(m.into())
}

/// A 0.0.1 verifier: base64 of a PEM certificate or public key.
fn pem_verifier(v: &Value) -> Result<LoggedVerifier, SigstoreError> {
    let pem = v
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| tlog_err("the log entry's verifier is not base64 PEM"))?;
    if let Ok(der) = pem_body(&pem, "CERTIFICATE") {
        return Ok(LoggedVerifier::Certificate(der));
    }
    pem_spki(&pem)
        .map(LoggedVerifier::Key)
        .map_err(|e| tlog_err(format!("the log entry's verifier: {e}")))
}

/// A 0.0.2 verifier: `{x509Certificate: {rawBytes}}` or `{publicKey: {rawBytes}}`.
fn raw_verifier(v: &Value) -> Result<LoggedVerifier, SigstoreError> {
    let der = |x: &Value| x["rawBytes"].as_str().and_then(|s| B64.decode(s).ok());
    if let Some(d) = der(&v["x509Certificate"]) {
        return Ok(LoggedVerifier::Certificate(d));
    }
    der(&v["publicKey"])
        .map(LoggedVerifier::Key)
        .ok_or_else(|| tlog_err("the log entry names no certificate or key"))
}

/// A digest as 0.0.1 writes it (`{algorithm: "sha256", value: hex}`) or as
/// 0.0.2 does (`{algorithm: "SHA2_256", digest: base64}`).
fn logged_digest(v: &Value) -> Result<[u8; 32], SigstoreError> {
    match v["algorithm"].as_str() {
        Some("sha256") => v["value"].as_str().and_then(hex32),
        Some("SHA2_256") => v["digest"]
            .as_str()
            .and_then(|s| B64.decode(s).ok())
            .and_then(|d| d.try_into().ok()),
        other => {
            return Err(SigstoreError::Unsupported(format!(
                "the log entry hashes with {}; ferry verifies SHA-256 artifacts",
                other.unwrap_or("an unnamed algorithm")
            )));
        }
    }
    .ok_or_else(|| tlog_err("the log entry's SHA-256 digest is malformed"))
}

fn b64_field(v: &Value, what: &str) -> Result<Vec<u8>, SigstoreError> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| tlog_err(format!("the log entry's {what} is not base64")))
}

/// Reads a log entry body of any supported kind and version.
fn logged(body: &Value) -> Result<Logged, SigstoreError> {
    let spec = &body["spec"];
    match (body["kind"].as_str(), body["apiVersion"].as_str()) {
        (Some("hashedrekord"), Some("0.0.1")) => Ok(Logged::Message {
            digest: logged_digest(&spec["data"]["hash"])?,
            signature: b64_field(&spec["signature"]["content"], "signature")?,
            verifier: pem_verifier(&spec["signature"]["publicKey"]["content"])?,
        }),
        (Some("hashedrekord"), Some("0.0.2")) => {
            let v = &spec["hashedRekordV002"];
            Ok(Logged::Message {
                digest: logged_digest(&v["data"])?,
                signature: b64_field(&v["signature"]["content"], "signature")?,
                verifier: raw_verifier(&v["signature"]["verifier"])?,
            })
        }
        (Some("dsse"), Some("0.0.1")) => Ok(Logged::Envelope {
            payload_hash: logged_digest(&spec["payloadHash"])?,
            signatures: spec["signatures"]
                .as_array()
                .ok_or_else(|| tlog_err("the log entry has no signatures"))?
                .iter()
                .map(|x| {
                    Ok((
                        b64_field(&x["signature"], "signature")?,
                        pem_verifier(&x["verifier"])?,
                    ))
                })
                .collect::<Result<_, SigstoreError>>()?,
        }),
        (Some("dsse"), Some("0.0.2")) => {
            let v = &spec["dsseV002"];
            Ok(Logged::Envelope {
                payload_hash: logged_digest(&v["payloadHash"])?,
                signatures: v["signatures"]
                    .as_array()
                    .ok_or_else(|| tlog_err("the log entry has no signatures"))?
                    .iter()
                    .map(|x| {
                        Ok((
                            b64_field(&x["content"], "signature")?,
                            raw_verifier(&x["verifier"])?,
                        ))
                    })
                    .collect::<Result<_, SigstoreError>>()?,
            })
        }
        (Some("intoto"), Some("0.0.2")) => {
            let c = &spec["content"];
            Ok(Logged::Envelope {
                payload_hash: logged_digest(&c["payloadHash"])?,
                signatures: c["envelope"]["signatures"]
                    .as_array()
                    .ok_or_else(|| tlog_err("the log entry has no signatures"))?
                    .iter()
                    .map(|x| {
                        // intoto 0.0.2 stores each signature base64 twice.
                        let once = b64_field(&x["sig"], "signature")?;
                        let sig = std::str::from_utf8(&once)
                            .ok()
                            .and_then(|s| B64.decode(s).ok())
                            .ok_or_else(|| tlog_err("the log entry's signature is not base64"))?;
                        Ok((sig, pem_verifier(&x["publicKey"])?))
                    })
                    .collect::<Result<_, SigstoreError>>()?,
            })
        }
        (kind, version) => Err(SigstoreError::Unsupported(format!(
            "log entries of kind {} {}",
            kind.unwrap_or("?"),
            version.unwrap_or("?")
        ))),
    }
}

/// The signature bytes of the bundle: its message signature, or its one
/// DSSE envelope signature; and, for an envelope, its payload.
struct BundleSignature {
    signature: Vec<u8>,
    /// An envelope's payload and payload type.
    payload: Option<(Vec<u8>, String)>,
}

/// DSSE's pre-authentication encoding: what an envelope signature signs.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    [
        format!(
            "DSSEv1 {} {} {} ",
            payload_type.len(),
            payload_type,
            payload.len()
        )
        .into_bytes(),
        payload.to_vec(),
    ]
    .concat()
}

fn bundle_signature(
    raw: &RawBundle,
    bad: &dyn Fn(String) -> SigstoreError,
) -> Result<BundleSignature, SigstoreError> {
    match (&raw.message_signature, &raw.dsse_envelope) {
        (Some(m), None) => Ok(BundleSignature {
            signature: B64
                .decode(&m.signature)
                .map_err(|e| bad(format!("/messageSignature/signature: {e}")))?,
            payload: None,
        }),
        (None, Some(env)) => {
            let [s] = env.signatures.as_slice() else {
                return Err(bad(format!(
                    "/dsseEnvelope/signatures: {} signatures, expected exactly one",
                    env.signatures.len()
                )));
            };
            Ok(BundleSignature {
                signature: B64
                    .decode(&s.sig)
                    .map_err(|e| bad(format!("/dsseEnvelope/signatures/0/sig: {e}")))?,
                payload: Some((
                    B64.decode(&env.payload)
                        .map_err(|e| bad(format!("/dsseEnvelope/payload: {e}")))?,
                    env.payload_type.clone(),
                )),
            })
        }
        _ => Err(bad(
            "carries neither exactly one messageSignature nor one dsseEnvelope".into(),
        )),
    }
}

/// The log entry must record exactly the bundle's signature, by `verifier`,
/// over what the bundle signs (CVE-2022-36056).
fn check_logged(
    logged: &Logged,
    sig: &BundleSignature,
    verifier: &LoggedVerifier,
) -> Result<(), SigstoreError> {
    let consistent = match (logged, &sig.payload) {
        (
            Logged::Message {
                signature,
                verifier: v,
                ..
            },
            None,
        ) => *signature == sig.signature && v == verifier,
        // Rekor v2's "hashedrekord over DSSE": the entry logs the hash of
        // the envelope's PAE and its signature (rekor-v2 spec §6.1.4).
        (
            Logged::Message {
                digest,
                signature,
                verifier: v,
            },
            Some((payload, payload_type)),
        ) => {
            digest[..] == Sha256::digest(pae(payload_type, payload))[..]
                && *signature == sig.signature
                && v == verifier
        }
        (
            Logged::Envelope {
                payload_hash,
                signatures,
            },
            Some((payload, _)),
        ) => {
            payload_hash[..] == Sha256::digest(payload)[..]
                && signatures
                    .iter()
                    .any(|(s, v)| *s == sig.signature && v == verifier)
        }
        (Logged::Envelope { .. }, None) => false,
    };
    if !consistent {
        return Err(tlog_err(
            "the log entry does not match the bundle's signature, certificate or key, or what they sign",
        ));
    }
    Ok(())
}

/// The SHA-256 digests the bundle and its log entry sign; they must agree.
fn signed_digests(
    raw: &RawBundle,
    logged: &Logged,
    bad: &dyn Fn(String) -> SigstoreError,
) -> Result<Vec<[u8; 32]>, SigstoreError> {
    match (&raw.message_signature, &raw.dsse_envelope, logged) {
        (Some(m), None, Logged::Message { digest, .. }) => {
            if let Some(d) = &m.message_digest {
                let inner = B64
                    .decode(&d.digest)
                    .map_err(|e| bad(format!("/messageSignature/messageDigest/digest: {e}")))?;
                if d.algorithm != "SHA2_256" || inner[..] != digest[..] {
                    return Err(SigstoreError::Tlog(format!(
                        "the bundle's message digest ({} {}) is not the logged one",
                        d.algorithm,
                        hex::encode(&inner)
                    )));
                }
            }
            Ok(vec![*digest])
        }
        (None, Some(env), _) => {
            let payload = B64
                .decode(&env.payload)
                .map_err(|e| bad(format!("/dsseEnvelope/payload: {e}")))?;
            let statement: Value = serde_json::from_slice(&payload).map_err(|e| {
                bad(format!(
                    "/dsseEnvelope/payload: not an in-toto statement: {e}"
                ))
            })?;
            let subjects = statement["subject"].as_array().ok_or_else(|| {
                bad("/dsseEnvelope/payload: the in-toto statement has no subject list".into())
            })?;
            if subjects.len() > 1024 {
                return Err(bad("/dsseEnvelope/payload: more than 1024 subjects".into()));
            }
            Ok(subjects
                .iter()
                .filter_map(|s| s["digest"]["sha256"].as_str().and_then(hex32))
                .collect())
        }
        (Some(_), None, Logged::Envelope { .. }) => Err(SigstoreError::Tlog(
            "a message signature is logged as an envelope entry".into(),
        )),
        _ => Err(bad(
            "carries neither exactly one messageSignature nor one dsseEnvelope".into(),
        )),
    }
}

fn leaf_certificate(
    material: &RawMaterial,
    bad: &dyn Fn(String) -> SigstoreError,
) -> Result<Vec<u8>, SigstoreError> {
    let raw = match (&material.x509_certificate_chain, &material.certificate) {
        (Some(chain), None) => chain.certificates.first(),
        (None, Some(cert)) => Some(cert),
        _ => None,
    }
    .ok_or_else(|| bad("/verificationMaterial: no signing certificate".into()))?;
    B64.decode(&raw.raw_bytes)
        .map_err(|e| bad(format!("/verificationMaterial: certificate: {e}")))
}

/// The bundle as `sigstore` 0.15 reads it: the v0.3 media type in the
/// spelling it knows (it refuses `…bundle+json;version=0.3`, the spelling
/// current clients write), without the RFC 3161 timestamps ferry verifies
/// itself.
fn crate_view(bundle: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let mut v: Value = serde_json::from_slice(bundle)?;
    if v["mediaType"] == "application/vnd.dev.sigstore.bundle+json;version=0.3" {
        v["mediaType"] = Value::from("application/vnd.dev.sigstore.bundle.v0.3+json");
    }
    if let Some(m) = v["verificationMaterial"].as_object_mut() {
        m.remove("timestampVerificationData");
    }
    serde_json::to_vec(&v)
}

/// The keyless checks `sigstore` 0.15 does: chain at issuance, SCT,
/// identity policy, signature. (Its own log-entry consistency check knows
/// only `hashedrekord`/`dsse` 0.0.1 and its time check only the log's
/// integrated time; ferry checks the entry for every kind it reads and
/// every verified time itself.)
fn keyless(
    bundle: &[u8],
    raw: &RawBundle,
    leaf: &[u8],
    digest: &[u8; 32],
    root: &TrustedRoot,
    policy: &IdentityPolicy,
    file: &str,
) -> Result<(), SigstoreError> {
    use sigstore::bundle::verify::Verifier;
    use sigstore::trust::sigstore::SigstoreTrustRoot;
    let bad = |message: String| SigstoreError::Bundle {
        file: file.to_owned(),
        message,
    };
    let view = crate_view(bundle).map_err(|e| bad(e.to_string()))?;
    let parsed: sigstore::bundle::Bundle =
        serde_json::from_slice(&view).map_err(|e| bad(e.to_string()))?;
    let trust = SigstoreTrustRoot::from_trusted_root_json_unchecked(&root.json).map_err(|e| {
        SigstoreError::TrustedRoot {
            origin: root.origin.clone(),
            message: e.to_string(),
        }
    })?;
    let verifier =
        Verifier::new(Default::default(), trust).map_err(|e| SigstoreError::TrustedRoot {
            origin: root.origin.clone(),
            message: e.to_string(),
        })?;
    let input = sigstore::bundle::verify::ArtifactDigest::Sha256(*digest);
    let observed = Observed {
        inner: policy,
        passed: std::cell::Cell::new(false),
    };
    let fut = verifier.verify_digest_with(input, parsed, &observed, true);
    match ready(fut) {
        Ok(()) => Ok(()),
        // The chain, SCT, policy and signature checks ran and passed; its
        // log-entry check (step 4) is the one that does not know Rekor v2
        // or intoto entries (sigstore-rs#285 leaves the log to callers):
        // ferry checks the entry itself (`check_logged`).
        Err(VerificationError::Signature(SignatureErrorKind::Transparency))
            if observed.passed.get() =>
        {
            Ok(())
        }
        // The time check (step 7) compares the log's integrated time, which
        // Rekor v2 entries do not have: ferry checks every verified time.
        Err(VerificationError::Certificate(CertificateErrorKind::Expired))
            if observed.passed.get() =>
        {
            Ok(())
        }
        // `sigstore` 0.15 reads the SHA-256 prehash of a message signature
        // as SHA-384 when the certificate key is P-384 (its aws-lc backend),
        // so such valid signatures fail there. The chain, SCT and policy
        // checks ran before (the policy was consulted and passed); ferry
        // verifies the signature over the digest itself.
        Err(VerificationError::Signature(SignatureErrorKind::VerificationFailed(_)))
            if observed.passed.get() =>
        {
            message_signature_fallback(raw, leaf, digest)
        }
        // `sigstore` 0.15 builds the issuer key hash of the SCT wrongly when
        // the trusted root's CA issued the leaf directly with a key over 127
        // bytes (module `sct`). Its chain check ran before and passed (a
        // chain failure is another error); ferry verifies the SCT, then the
        // steps the verifier did not reach: identity policy and signature.
        // (The log entry and signing times are checked by the caller.)
        Err(VerificationError::Certificate(CertificateErrorKind::Sct(e))) => {
            sct::verify(leaf, &root.ct_logs, &root.ca_keys)
                .map_err(|why| SigstoreError::Sct(format!("{why} (sigstore: {})", chain(&e))))?;
            let cert = Certificate::from_der(leaf)
                .map_err(|e| bad(format!("signing certificate: {e}")))?;
            policy
                .verify(&cert)
                .map_err(|e| SigstoreError::Identity(e.to_string()))?;
            let bsig = bundle_signature(raw, &bad)?;
            certificate_signature(&cert, &bsig, digest)
        }
        Err(e) => Err(map_verification_error(e, file)),
    }
}

/// Verifies the bundle's signature with the signing certificate's key: a
/// message signature over the artifact's SHA-256, or a DSSE envelope's
/// signature over its PAE.
fn certificate_signature(
    cert: &Certificate,
    sig: &BundleSignature,
    digest: &[u8; 32],
) -> Result<(), SigstoreError> {
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| SigstoreError::Signature(e.to_string()))?;
    match &sig.payload {
        None => verify_prehash(&spki, digest, &sig.signature)
            .map_err(|m| SigstoreError::Signature(format!("{m} with the certificate's key"))),
        Some((payload, payload_type)) => CosignVerificationKey::try_from_der(&spki)
            .map_err(|e| SigstoreError::Signature(e.to_string()))?
            .verify_signature(Signature::Raw(&sig.signature), &pae(payload_type, payload))
            .map_err(|_| {
                SigstoreError::Signature("does not verify with the certificate's key".into())
            }),
    }
}

/// The identity policy, noting whether the verifier consulted it and it passed.
struct Observed<'a> {
    inner: &'a IdentityPolicy,
    passed: std::cell::Cell<bool>,
}

impl VerificationPolicy for Observed<'_> {
    fn verify(&self, cert: &Certificate) -> Result<(), PolicyError> {
        let r = self.inner.verify(cert);
        self.passed.set(r.is_ok());
        r
    }
}

fn message_signature_fallback(
    raw: &RawBundle,
    leaf: &[u8],
    digest: &[u8; 32],
) -> Result<(), SigstoreError> {
    let Some(m) = &raw.message_signature else {
        return Err(SigstoreError::Signature(
            "does not verify with the certificate's key".into(),
        ));
    };
    let sig = B64
        .decode(&m.signature)
        .map_err(|e| SigstoreError::Signature(e.to_string()))?;
    let cert = Certificate::from_der(leaf).map_err(|e| SigstoreError::Signature(e.to_string()))?;
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| SigstoreError::Signature(e.to_string()))?;
    verify_prehash(&spki, digest, &sig)
        .map_err(|m| SigstoreError::Signature(format!("{m} with the certificate's key")))
}

/// Verifies an ECDSA (P-256 or P-384) signature over a SHA-256 digest.
fn verify_prehash(spki: &[u8], digest: &[u8; 32], sig: &[u8]) -> Result<(), String> {
    use aws_lc_rs::digest::SHA256;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA256_ASN1, UnparsedPublicKey};
    let key = CosignVerificationKey::try_from_der(spki).map_err(|e| e.to_string())?;
    let alg = match key {
        CosignVerificationKey::ECDSA_P256_SHA256_ASN1(_) => &ECDSA_P256_SHA256_ASN1,
        CosignVerificationKey::ECDSA_P384_SHA384_ASN1(_) => &ECDSA_P384_SHA256_ASN1,
        _ => {
            return Err(
                "message signatures are verified for ECDSA P-256 and P-384 keys only".into(),
            );
        }
    };
    let d = aws_lc_rs::digest::Digest::import_less_safe(digest, &SHA256)
        .map_err(|_| "bad digest".to_owned())?;
    UnparsedPublicKey::new(alg, spki)
        .verify_digest(&d, sig)
        .map_err(|_| "does not verify".to_owned())
}

/// Runs a future that never waits (the offline verifier does no I/O).
fn ready<F: std::future::Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn map_verification_error(e: VerificationError, file: &str) -> SigstoreError {
    match &e {
        VerificationError::Certificate(CertificateErrorKind::Sct(_)) => {
            SigstoreError::Sct(chain(&e))
        }
        VerificationError::Certificate(CertificateErrorKind::Expired) => {
            SigstoreError::Time(chain(&e))
        }
        VerificationError::Certificate(_) => SigstoreError::CertificateChain(chain(&e)),
        VerificationError::Policy(p) => SigstoreError::Identity(p.to_string()),
        VerificationError::Signature(SignatureErrorKind::Transparency) => SigstoreError::Tlog(
            "the log entry does not match the bundle's signature, certificate or digest".into(),
        ),
        VerificationError::Signature(SignatureErrorKind::SubjectDigestMismatch) => {
            SigstoreError::DigestMismatch {
                signed: "other subjects".into(),
                actual: "this artifact".into(),
            }
        }
        VerificationError::Signature(_) => SigstoreError::Signature(chain(&e)),
        VerificationError::Bundle(BundleErrorKind::RootInChain) => {
            SigstoreError::CertificateChain(chain(&e))
        }
        VerificationError::Bundle(_) | VerificationError::Input(_) => SigstoreError::Bundle {
            file: file.to_owned(),
            message: chain(&e),
        },
    }
}

fn verify_with_key(
    logged: &Logged,
    sig: &BundleSignature,
    spki: &[u8],
    origin: &str,
) -> Result<(), SigstoreError> {
    let key = CosignVerificationKey::try_from_der(spki).map_err(|e| SigstoreError::Key {
        origin: origin.to_owned(),
        message: e.to_string(),
    })?;
    match (&sig.payload, logged) {
        // A message signature signs the artifact's SHA-256 (pre-hashed).
        (None, Logged::Message { digest, .. }) => verify_prehash(spki, digest, &sig.signature)
            .map_err(|m| SigstoreError::Signature(format!("{m} with key {origin}")))?,
        (Some((payload, payload_type)), _) => key
            .verify_signature(Signature::Raw(&sig.signature), &pae(payload_type, payload))
            .map_err(|_| SigstoreError::Signature(format!("does not verify with key {origin}")))?,
        (None, Logged::Envelope { .. }) => {
            return Err(tlog_err(
                "a message signature is logged as an envelope entry",
            ));
        }
    }
    check_logged(logged, sig, &LoggedVerifier::Key(spki.to_vec())).map_err(|_| {
        tlog_err(format!(
            "the log entry does not record this signature by key {origin}"
        ))
    })
}
