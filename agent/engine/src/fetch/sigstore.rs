//! `[[sigstore.require]]`: which resources of a revision must carry a
//! Sigstore bundle, and checking them with `ferry-sigstore` against the
//! digests the revision's signed metadata gives.

use ferry_sigstore::{
    BUNDLE_SUFFIX, IdentityMatch, IdentityPolicy, MAX_BUNDLE_BYTES, Requirement, SigstoreError,
    TrustedRoot, Verified, verify_with,
};

/// The device's `[[sigstore.require]]` rules, with keys and trusted root loaded.
#[derive(Debug)]
pub struct Policy {
    root: Option<TrustedRoot>,
    rules: Vec<Rule>,
    verified_times: usize,
}

#[derive(Debug)]
struct Rule {
    kind: Option<ferry_core::Kind>,
    path: Option<String>,
    requirement: Requirement,
}

/// Why a resource's bundle was refused.
#[derive(Debug, thiserror::Error)]
#[error("{resource}: {}", self.reason())]
pub struct Refusal {
    pub resource: ferry_core::ResourceId,
    pub bundle: String,
    pub error: SigstoreError,
}

impl Refusal {
    /// The error, naming the bundle file (bundle errors name it already).
    pub fn reason(&self) -> String {
        match self.error {
            SigstoreError::Bundle { .. } => self.error.to_string(),
            _ => format!("Sigstore bundle {}: {}", self.bundle, self.error),
        }
    }
}

/// Checking the resources of a revision failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Refused(Box<Refusal>),
    /// The revision could not be read.
    #[error(transparent)]
    Source(#[from] ferry_source::SourceError),
}

impl ferry_core::Classify for CheckError {
    fn class(&self) -> ferry_core::ErrorClass {
        match self {
            CheckError::Refused(r) => r.error.class(),
            CheckError::Source(e) => e.class(),
        }
    }
}

impl Policy {
    /// Loads the trusted root and key files the configuration names.
    pub fn from_config(config: &crate::config::SigstoreConfig) -> Result<Policy, SigstoreError> {
        let root = config
            .trusted_root
            .as_deref()
            .map(TrustedRoot::load)
            .transpose()?;
        let mut rules = Vec::new();
        for r in &config.require {
            let requirement = match (&r.key, &r.identity, &r.identity_regex) {
                (Some(key), _, _) => Requirement::key_file(key)?,
                (None, identity, regex) => Requirement::Identity(IdentityPolicy {
                    identity: match (identity, regex) {
                        (Some(i), _) => IdentityMatch::Exact(i.clone()),
                        (None, Some(r)) => IdentityMatch::regex(r).map_err(|e| {
                            SigstoreError::Unsupported(format!("identity_regex {r:?}: {e}"))
                        })?,
                        (None, None) => {
                            return Err(SigstoreError::Unsupported(
                                "a rule without identity or key".into(),
                            ));
                        }
                    },
                    issuer: r.issuer.clone().unwrap_or_default(),
                    claims: r.claims(),
                }),
            };
            rules.push(Rule {
                kind: r.kind.as_deref().and_then(|k| k.parse().ok()),
                path: r.path.clone(),
                requirement,
            });
        }
        Ok(Policy {
            root,
            rules,
            verified_times: config.verified_times,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn root(&self) -> &TrustedRoot {
        self.root
            .as_ref()
            .unwrap_or_else(|| TrustedRoot::production())
    }

    /// The requirement for a resource of `kind` whose content is `source`
    /// (`None` for rendered templates).
    fn requirement(
        &self,
        kind: ferry_core::Kind,
        source: Option<&ferry_core::RepoPath>,
    ) -> Option<&Requirement> {
        self.rules
            .iter()
            .find(|r| {
                r.kind.is_none_or(|k| k == kind)
                    && r.path.as_deref().is_none_or(|p| {
                        source.is_some_and(|s| crate::render::facts::glob_match(p, s.as_str()))
                    })
            })
            .map(|r| &r.requirement)
    }

    /// Verifies the bundle of every resource a rule covers, against the
    /// digest from the revision's signed metadata (the bytes are not read).
    pub fn check(
        &self,
        rev: &dyn ferry_source::VerifiedRevision,
        desired: &crate::render::manifest::ResolvedManifest,
    ) -> Result<Vec<(ferry_core::ResourceId, Verified)>, CheckError> {
        use crate::render::manifest::Content;
        use ferry_source::SourceError;
        let mut out = Vec::new();
        for resource in desired.resources.iter() {
            let id = resource.id();
            let source = match desired.contents.get(&id) {
                Some(Content::Source(p)) => Some(p),
                _ => None,
            };
            let Some(requirement) = self.requirement(resource.kind, source) else {
                continue;
            };
            let refuse = |bundle: String, error: SigstoreError| {
                CheckError::Refused(Box::new(Refusal {
                    resource: id.clone(),
                    bundle,
                    error,
                }))
            };
            let Some(source) = source else {
                return Err(refuse(
                    "(none)".into(),
                    SigstoreError::Unsupported(
                        "the resource is a rendered template; only files of the revision carry bundles"
                            .into(),
                    ),
                ));
            };
            let name = format!("{source}{BUNDLE_SUFFIX}");
            let path = ferry_core::RepoPath::new(&name).map_err(|e| {
                refuse(
                    name.clone(),
                    SigstoreError::Bundle {
                        file: name.clone(),
                        message: e.to_string(),
                    },
                )
            })?;
            let bytes = match rev.read_small(&path, MAX_BUNDLE_BYTES) {
                Ok(b) => b,
                Err(SourceError::NotFound { .. }) => {
                    return Err(refuse(
                        name.clone(),
                        SigstoreError::Bundle {
                            file: name,
                            message:
                                "missing: the device requires a Sigstore bundle for this resource"
                                    .into(),
                        },
                    ));
                }
                Err(SourceError::TooLarge { .. }) => {
                    return Err(refuse(
                        name.clone(),
                        SigstoreError::Bundle {
                            file: name,
                            message: format!("larger than {MAX_BUNDLE_BYTES} bytes"),
                        },
                    ));
                }
                Err(e) => return Err(e.into()),
            };
            let digest = resource.content.sha256.as_bytes();
            match verify_with(
                &bytes,
                &name,
                digest,
                self.root(),
                requirement,
                self.verified_times,
            ) {
                Ok(v) => out.push((id, v)),
                Err(e) => return Err(refuse(name, e)),
            }
        }
        Ok(out)
    }
}
