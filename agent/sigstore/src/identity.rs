//! Who signed: the identity policy a keyless (Fulcio) certificate must
//! meet, and what ferry reads out of such a certificate.

use const_oid::ObjectIdentifier;
use regex::Regex;
use sigstore::bundle::verify::{PolicyError, VerificationPolicy};
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

/// Fulcio's certificate extensions (github.com/sigstore/fulcio, docs/oid-info.md).
const ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1");
const ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8");
const OTHERNAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.7");

/// GitHub Actions claims a policy may pin: (config key, v1 OID, v2 OID).
/// v1 extensions hold the raw string, v2 extensions a DER UTF8String.
pub const GITHUB_CLAIMS: [(&str, &str, &str); 5] = [
    (
        "github_workflow_trigger",
        "1.3.6.1.4.1.57264.1.2",
        "1.3.6.1.4.1.57264.1.20",
    ),
    (
        "github_workflow_sha",
        "1.3.6.1.4.1.57264.1.3",
        "1.3.6.1.4.1.57264.1.13",
    ),
    ("github_workflow_name", "1.3.6.1.4.1.57264.1.4", ""),
    ("github_workflow_repository", "1.3.6.1.4.1.57264.1.5", ""),
    (
        "github_workflow_ref",
        "1.3.6.1.4.1.57264.1.6",
        "1.3.6.1.4.1.57264.1.14",
    ),
];

/// How the certificate's subject alternative name must look.
#[derive(Debug, Clone)]
pub enum IdentityMatch {
    Exact(String),
    /// Matched against the whole name (anchored).
    Regex(Regex),
}

impl IdentityMatch {
    /// A regular expression matched against the whole name.
    pub fn regex(pattern: &str) -> Result<IdentityMatch, regex::Error> {
        Regex::new(&format!("^(?:{pattern})$")).map(IdentityMatch::Regex)
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            IdentityMatch::Exact(s) => s == name,
            IdentityMatch::Regex(r) => r.is_match(name),
        }
    }
}

impl std::fmt::Display for IdentityMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityMatch::Exact(s) => write!(f, "{s}"),
            IdentityMatch::Regex(r) => {
                let p = r.as_str();
                write!(f, "/{}/", &p[4..p.len() - 2])
            }
        }
    }
}

/// A keyless signer: certificate identity, OIDC issuer and optional
/// GitHub Actions claims.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    pub identity: IdentityMatch,
    pub issuer: String,
    /// (config key, expected value) pairs from [`GITHUB_CLAIMS`].
    pub claims: Vec<(&'static str, String)>,
}

/// The signer a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The subject alternative names (URI, email or Fulcio's otherName).
    pub names: Vec<String>,
    pub issuer: Option<String>,
}

fn extension(cert: &Certificate, v1: &str, v2: &str) -> Option<String> {
    let exts = cert.tbs_certificate().extensions()?;
    if let Ok(v2) = ObjectIdentifier::new(v2)
        && let Some(e) = exts.iter().find(|e| e.extn_id == v2)
        && let Ok(s) = String::from_der(e.extn_value.as_bytes())
    {
        return Some(s);
    }
    let v1 = ObjectIdentifier::new(v1).ok()?;
    let e = exts.iter().find(|e| e.extn_id == v1)?;
    std::str::from_utf8(e.extn_value.as_bytes())
        .ok()
        .map(str::to_owned)
}

/// Reads the signer out of a Fulcio certificate.
pub fn signer(cert: &Certificate) -> Signer {
    let names = match cert.tbs_certificate().get_extension::<SubjectAltName>() {
        Ok(Some((_, san))) => san
            .0
            .iter()
            .filter_map(|name| match name {
                GeneralName::Rfc822Name(n) => Some(n.as_str().to_owned()),
                GeneralName::UniformResourceIdentifier(n) => Some(n.as_str().to_owned()),
                GeneralName::OtherName(n) if n.type_id == OTHERNAME => {
                    std::str::from_utf8(n.value.value()).ok().map(str::to_owned)
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Signer {
        names,
        issuer: extension(cert, &ISSUER_V1.to_string(), &ISSUER_V2.to_string()),
    }
}

fn mismatch(extension: &str, expected: String, actual: String) -> PolicyError {
    PolicyError::ExtensionCheckFailed {
        extension: extension.to_owned(),
        expected,
        actual,
    }
}

impl VerificationPolicy for IdentityPolicy {
    fn verify(&self, cert: &Certificate) -> Result<(), PolicyError> {
        let s = signer(cert);
        if !s.names.iter().any(|n| self.identity.matches(n)) {
            return Err(mismatch(
                "identity (subject alternative name)",
                self.identity.to_string(),
                if s.names.is_empty() {
                    "none".to_owned()
                } else {
                    s.names.join(", ")
                },
            ));
        }
        match s.issuer {
            Some(i) if i == self.issuer => {}
            other => {
                return Err(mismatch(
                    "OIDC issuer",
                    self.issuer.clone(),
                    other.unwrap_or_else(|| "none".to_owned()),
                ));
            }
        }
        for (key, expected) in &self.claims {
            let (_, v1, v2) = GITHUB_CLAIMS
                .iter()
                .find(|(k, _, _)| k == key)
                .expect("claims come from GITHUB_CLAIMS");
            let v2 = if v2.is_empty() { v1 } else { v2 };
            let actual = extension(cert, v1, v2);
            if actual.as_deref() != Some(expected.as_str()) {
                return Err(mismatch(
                    key,
                    expected.clone(),
                    actual.unwrap_or_else(|| "none".to_owned()),
                ));
            }
        }
        Ok(())
    }
}
