//! RFC 3161 signed timestamps: a time stamping authority (TSA) of the
//! trusted root signs the time at which it saw a bundle's signature. Rekor
//! v2 logs sign no time, so for their entries this is the verified signing
//! time.
//!
//! Verified here, offline, with no trust in what the token carries:
//! - the token is a granted `TimeStampResp` (or a bare `TimeStampToken`):
//!   CMS `SignedData` (RFC 5652) around a `TSTInfo` (RFC 3161 §2.4.2);
//! - the `TSTInfo`'s message imprint is the hash of exactly the signature
//!   being timestamped;
//! - the signed attributes name the `TSTInfo` content type and carry its
//!   digest, and the signer's signature over them verifies;
//! - the signer is the leaf of a timestamp authority of the trusted root
//!   (found by issuer and serial, or subject key identifier; certificates
//!   embedded in the token are never trusted), its chain up to the
//!   authority's root verifies and every certificate of it is valid at the
//!   stamped time, and the time lies in the authority's validity window
//!   (both ends inclusive).
//!
//! The DER is walked by a small bounded reader: only what these checks need
//! is decoded, and certificates are parsed with `x509-cert`.

use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};

use super::SigstoreError;

/// A timestamp authority of the trusted root.
#[derive(Debug, Clone)]
pub(super) struct Authority {
    /// DER certificates, leaf first, the authority's root last.
    pub chain: Vec<Vec<u8>>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub name: String,
}

fn err(message: impl Into<String>) -> SigstoreError {
    SigstoreError::Time(format!("RFC 3161 timestamp: {}", message.into()))
}

/// One DER element: its tag byte, its whole encoding, and its content.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    raw: &'a [u8],
    value: &'a [u8],
}

/// Reads one element off the front of `input` (definite lengths, at most
/// four length bytes, single-byte tags: all this module needs).
fn next<'a>(input: &mut &'a [u8]) -> Result<Tlv<'a>, SigstoreError> {
    let bytes = *input;
    let (&tag, rest) = bytes.split_first().ok_or_else(|| err("truncated DER"))?;
    if tag & 0x1f == 0x1f {
        return Err(err("multi-byte DER tags are not expected here"));
    }
    let (&first, rest) = rest
        .split_first()
        .ok_or_else(|| err("truncated DER length"))?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(err("unsupported or truncated DER length"));
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(err("DER element longer than its container"));
    }
    let header = bytes.len() - rest.len();
    let tlv = Tlv {
        tag,
        raw: &bytes[..header + len],
        value: &rest[..len],
    };
    *input = &rest[len..];
    Ok(tlv)
}

/// Reads an element and requires its tag.
fn expect<'a>(input: &mut &'a [u8], tag: u8, what: &str) -> Result<Tlv<'a>, SigstoreError> {
    let t = next(input)?;
    if t.tag != tag {
        return Err(err(format!(
            "{what}: tag {:#04x}, expected {tag:#04x}",
            t.tag
        )));
    }
    Ok(t)
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const GENERALIZED_TIME: u8 = 0x18;
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_1: u8 = 0xa1;

// DER encodings (content bytes) of the object identifiers used.
const ID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const ID_CT_TST_INFO: &[u8] = &[
    0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x04,
];
const ID_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const ID_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
const RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const EKU_TIME_STAMPING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x08];

/// The digest of `data` with the algorithm named by `oid`.
fn digest(oid: &[u8], data: &[u8]) -> Result<Vec<u8>, SigstoreError> {
    use sha2::Digest as _;
    Ok(match oid {
        SHA256 => sha2::Sha256::digest(data).to_vec(),
        SHA384 => sha2::Sha384::digest(data).to_vec(),
        SHA512 => sha2::Sha512::digest(data).to_vec(),
        _ => return Err(err("an unsupported digest algorithm")),
    })
}

/// The OID of an `AlgorithmIdentifier`.
fn algorithm_oid<'a>(alg: Tlv<'a>) -> Result<&'a [u8], SigstoreError> {
    let mut inner = alg.value;
    Ok(expect(&mut inner, OID, "algorithm identifier")?.value)
}

/// Verifies `signature` over `message` with the key of `cert`, for the
/// signature algorithm `sig_alg` (an OID).
pub(super) fn verify_with_cert(
    cert: &Certificate,
    sig_alg: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SigstoreError> {
    use aws_lc_rs::signature as sig;
    let spki = cert.tbs_certificate().subject_public_key_info();
    let key_alg = spki.algorithm.oid.as_bytes();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<x509_cert::der::asn1::ObjectIdentifier>().ok());
    let curve = curve.as_ref().map(|c| c.as_bytes());
    let key = spki.subject_public_key.raw_bytes();
    let alg: &dyn sig::VerificationAlgorithm = match (sig_alg, curve) {
        (ECDSA_SHA256, Some(P256)) => &sig::ECDSA_P256_SHA256_ASN1,
        (ECDSA_SHA384, Some(P256)) => &sig::ECDSA_P256_SHA384_ASN1,
        (ECDSA_SHA256, Some(P384)) => &sig::ECDSA_P384_SHA256_ASN1,
        (ECDSA_SHA384, Some(P384)) => &sig::ECDSA_P384_SHA384_ASN1,
        (ECDSA_SHA512, Some(P384)) => &sig::ECDSA_P384_SHA512_ASN1,
        (RSA_SHA256, _) => &sig::RSA_PKCS1_2048_8192_SHA256,
        (RSA_SHA384, _) => &sig::RSA_PKCS1_2048_8192_SHA384,
        (RSA_SHA512, _) => &sig::RSA_PKCS1_2048_8192_SHA512,
        (ED25519, _) if key_alg == ED25519 => &sig::ED25519,
        _ => return Err(err("an unsupported signature or key algorithm")),
    };
    sig::UnparsedPublicKey::new(alg, key)
        .verify(message, signature)
        .map_err(|_| err("a signature does not verify"))
}

/// The seconds since the epoch a certificate is valid from and to.
fn validity(cert: &Certificate) -> (i64, i64) {
    let v = cert.tbs_certificate().validity();
    (
        v.not_before.to_unix_duration().as_secs() as i64,
        v.not_after.to_unix_duration().as_secs() as i64,
    )
}

/// `YYYYMMDDHHMMSS[.f*]Z` → seconds since the epoch (fractions dropped).
fn generalized_time(value: &[u8]) -> Result<i64, SigstoreError> {
    let text = std::str::from_utf8(value).map_err(|_| err("genTime is not text"))?;
    let text = text
        .strip_suffix('Z')
        .ok_or_else(|| err("genTime is not in UTC"))?;
    let whole = text.split('.').next().unwrap_or_default();
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(format!("genTime {text:?} is malformed")));
    }
    let n = |r: std::ops::Range<usize>| whole[r].parse::<i16>().unwrap_or(0);
    let civil = jiff::civil::DateTime::new(
        n(0..4),
        n(4..6) as i8,
        n(6..8) as i8,
        n(8..10) as i8,
        n(10..12) as i8,
        n(12..14) as i8,
        0,
    )
    .map_err(|e| err(format!("genTime {text:?}: {e}")))?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp().as_second())
        .map_err(|e| err(format!("genTime {text:?}: {e}")))
}

/// What the signer info names its signer by.
enum SignerId<'a> {
    IssuerSerial { issuer: &'a [u8], serial: &'a [u8] },
    KeyId(&'a [u8]),
}

impl SignerId<'_> {
    fn matches(&self, cert: &Certificate) -> bool {
        let tbs = cert.tbs_certificate();
        match self {
            SignerId::IssuerSerial { issuer, serial } => {
                tbs.issuer().to_der().is_ok_and(|i| i == *issuer)
                    && tbs.serial_number().as_bytes() == strip_sign(serial)
            }
            SignerId::KeyId(id) => tbs
                .get_extension::<x509_cert::ext::pkix::SubjectKeyIdentifier>()
                .ok()
                .flatten()
                .is_some_and(|(_, ski)| ski.0.as_bytes() == *id),
        }
    }
}

/// An INTEGER's content without a leading zero byte added for the sign.
fn strip_sign(b: &[u8]) -> &[u8] {
    match b {
        [0, rest @ ..] if !rest.is_empty() && rest[0] & 0x80 != 0 => rest,
        _ => b,
    }
}

/// Verifies the timestamp `token` (a DER `TimeStampResp` or
/// `TimeStampToken`) over `signature` against `authorities`; returns the
/// stamped time (seconds since the epoch) and the authority's name.
pub(super) fn verify(
    token: &[u8],
    signature: &[u8],
    authorities: &[Authority],
) -> Result<(i64, String), SigstoreError> {
    let mut input = token;
    let top = expect(&mut input, SEQUENCE, "TimeStampResp")?;
    // A TimeStampResp starts with its PKIStatusInfo (a SEQUENCE); a bare
    // token with its content type (an OID).
    let content_info = {
        let mut inner = top.value;
        let first = next(&mut inner)?;
        if first.tag == SEQUENCE {
            let mut status = first.value;
            let code = expect(&mut status, INTEGER, "PKIStatus")?;
            if !(code.value == [0] || code.value == [1]) {
                return Err(err("the authority did not grant the timestamp"));
            }
            expect(&mut inner, SEQUENCE, "TimeStampToken")?.value
        } else {
            top.value
        }
    };
    let mut ci = content_info;
    if expect(&mut ci, OID, "content type")?.value != ID_SIGNED_DATA {
        return Err(err("the token is not CMS SignedData"));
    }
    let mut explicit = expect(&mut ci, CONTEXT_0, "content")?.value;
    let mut sd = expect(&mut explicit, SEQUENCE, "SignedData")?.value;
    expect(&mut sd, INTEGER, "SignedData version")?;
    expect(&mut sd, SET, "digestAlgorithms")?;
    let mut eci = expect(&mut sd, SEQUENCE, "encapContentInfo")?.value;
    if expect(&mut eci, OID, "eContentType")?.value != ID_CT_TST_INFO {
        return Err(err("the signed content is not a TSTInfo"));
    }
    let mut econtent = expect(&mut eci, CONTEXT_0, "eContent")?.value;
    let tst_info = expect(&mut econtent, OCTET_STRING, "eContent")?.value;
    // certificates [0] and crls [1] are optional; neither is trusted.
    let mut el = next(&mut sd)?;
    if el.tag == CONTEXT_0 {
        el = next(&mut sd)?;
    }
    if el.tag == CONTEXT_1 {
        el = next(&mut sd)?;
    }
    if el.tag != SET {
        return Err(err("signerInfos missing"));
    }
    let mut infos = el.value;
    let info = expect(&mut infos, SEQUENCE, "SignerInfo")?;
    if !infos.is_empty() {
        return Err(err("more than one signer"));
    }

    // TSTInfo: version, policy, messageImprint, serialNumber, genTime, …
    let mut tst = expect(&mut &tst_info[..], SEQUENCE, "TSTInfo")?.value;
    expect(&mut tst, INTEGER, "TSTInfo version")?;
    expect(&mut tst, OID, "TSTInfo policy")?;
    let mut imprint = expect(&mut tst, SEQUENCE, "messageImprint")?.value;
    let imprint_alg = algorithm_oid(expect(&mut imprint, SEQUENCE, "hashAlgorithm")?)?;
    let hashed = expect(&mut imprint, OCTET_STRING, "hashedMessage")?.value;
    expect(&mut tst, INTEGER, "serialNumber")?;
    let gen_time = generalized_time(expect(&mut tst, GENERALIZED_TIME, "genTime")?.value)?;
    if digest(imprint_alg, signature)? != hashed {
        return Err(err("it stamps other bytes than the bundle's signature"));
    }

    // SignerInfo: version, sid, digestAlgorithm, [0] signedAttrs,
    // signatureAlgorithm, signature.
    let mut si = info.value;
    expect(&mut si, INTEGER, "SignerInfo version")?;
    let sid_tlv = next(&mut si)?;
    let sid = match sid_tlv.tag {
        SEQUENCE => {
            let mut v = sid_tlv.value;
            let issuer = expect(&mut v, SEQUENCE, "issuer")?.raw;
            let serial = expect(&mut v, INTEGER, "serial")?.value;
            SignerId::IssuerSerial { issuer, serial }
        }
        0x80 => SignerId::KeyId(sid_tlv.value),
        _ => return Err(err("an unknown signer identifier")),
    };
    let digest_alg = algorithm_oid(expect(&mut si, SEQUENCE, "digestAlgorithm")?)?;
    let attrs = expect(&mut si, CONTEXT_0, "signedAttrs")?;
    let sig_alg = algorithm_oid(expect(&mut si, SEQUENCE, "signatureAlgorithm")?)?;
    let sig = expect(&mut si, OCTET_STRING, "signature")?.value;
    let mut content_type_ok = false;
    let mut message_digest = None;
    let mut a = attrs.value;
    while !a.is_empty() {
        let mut attr = expect(&mut a, SEQUENCE, "attribute")?.value;
        let oid = expect(&mut attr, OID, "attribute type")?.value;
        let mut values = expect(&mut attr, SET, "attribute values")?.value;
        let value = next(&mut values)?;
        match oid {
            ID_CONTENT_TYPE => content_type_ok = value.tag == OID && value.value == ID_CT_TST_INFO,
            ID_MESSAGE_DIGEST if value.tag == OCTET_STRING => message_digest = Some(value.value),
            _ => {}
        }
    }
    if !content_type_ok {
        return Err(err("the signed attributes do not name a TSTInfo"));
    }
    if message_digest != Some(&digest(digest_alg, tst_info)?[..]) {
        return Err(err(
            "the signed attributes do not carry the TSTInfo's digest",
        ));
    }
    // The signature covers the attributes as a SET (RFC 5652 §5.4).
    let mut signed = attrs.raw.to_vec();
    signed[0] = SET;

    let mut refusals = Vec::new();
    for authority in authorities {
        match check_authority(authority, &sid, sig_alg, &signed, sig, gen_time) {
            Ok(()) => return Ok((gen_time, authority.name.clone())),
            Err(Some(why)) => refusals.push(format!("{}: {why}", authority.name)),
            Err(None) => {}
        }
    }
    Err(if refusals.is_empty() {
        err("signed by a time stamping authority that is not in the trusted root")
    } else {
        err(refusals.join("; "))
    })
}

/// `Err(None)`: `authority` did not sign this; `Err(Some(why))`: it did,
/// but the signature, chain or time does not hold.
fn check_authority(
    authority: &Authority,
    sid: &SignerId<'_>,
    sig_alg: &[u8],
    signed: &[u8],
    sig: &[u8],
    at: i64,
) -> Result<(), Option<String>> {
    let certs: Vec<Certificate> = authority
        .chain
        .iter()
        .map(|der| Certificate::from_der(der))
        .collect::<Result<_, _>>()
        .map_err(|e| Some(format!("its certificate does not parse: {e}")))?;
    let Some(leaf) = certs.first() else {
        return Err(None);
    };
    if !sid.matches(leaf) {
        return Err(None);
    }
    verify_with_cert(leaf, sig_alg, signed, sig).map_err(|e| Some(e.to_string()))?;
    let eku = leaf
        .tbs_certificate()
        .get_extension::<x509_cert::ext::pkix::ExtendedKeyUsage>()
        .ok()
        .flatten();
    if !eku.is_some_and(|(_, e)| e.0.iter().any(|o| o.as_bytes() == EKU_TIME_STAMPING)) {
        return Err(Some("its certificate is not for time stamping".into()));
    }
    for (i, cert) in certs.iter().enumerate() {
        let (from, to) = validity(cert);
        if at < from || at > to {
            return Err(Some(format!(
                "certificate {i} of its chain is not valid at the stamped time {at}"
            )));
        }
        let issuer = certs.get(i + 1).unwrap_or(cert);
        let tbs = cert
            .tbs_certificate()
            .to_der()
            .map_err(|e| Some(e.to_string()))?;
        let alg = cert.signature_algorithm().oid.as_bytes();
        let signature = cert.signature().raw_bytes();
        verify_with_cert(issuer, alg, &tbs, signature).map_err(|_| {
            Some(format!(
                "certificate {i} of its chain is not signed by its issuer"
            ))
        })?;
    }
    if authority.start.is_some_and(|s| at < s) || authority.end.is_some_and(|e| at > e) {
        return Err(Some(format!(
            "the stamped time {at} lies outside the authority's validity in the trusted root"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generalized_times_with_and_without_fractions() {
        assert_eq!(generalized_time(b"20250612120220Z").unwrap(), 1_749_729_740);
        assert_eq!(
            generalized_time(b"20250612120220.123Z").unwrap(),
            1_749_729_740
        );
        assert!(generalized_time(b"20250612120220").is_err());
        assert!(generalized_time(b"2025061212022Z").is_err());
    }

    #[test]
    fn der_reader_is_bounded() {
        assert!(next(&mut &[0x30, 0x05, 0x01][..]).is_err());
        assert!(next(&mut &[0x30, 0x85, 1, 1, 1, 1, 1][..]).is_err());
        assert!(next(&mut &[0x1f, 0x00][..]).is_err());
        let mut b = &[0x04, 0x02, 0xaa, 0xbb, 0x05, 0x00][..];
        let t = next(&mut b).unwrap();
        assert_eq!((t.tag, t.value, b.len()), (0x04, &[0xaa, 0xbb][..], 2));
    }
}
