//! From a verified revision to a checked desired state.
//!
//! The manifest is read from the revision with a size bound; a name ending
//! in `.j2` is first rendered for this device (see [`crate::render`]). The
//! YAML (or JSON) is parsed (errors carry line and column), validated
//! against `schemas/desired-state.schema.json` and the per-kind schemas in
//! `schemas/kinds/` (errors carry the JSON pointer), filtered by each
//! resource's `match:` selector, and resolved: each resource gets the
//! content address of its source file from the revision's signed metadata
//! (or the manifest's pin), or of its rendered template.

use ferry_core::{Classify, ErrorClass};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use ferry_core::{ContentRef, Kind, RepoPath, Resource, ResourceId, ResourceSet, Sha256};
use serde_json::Value;

use crate::render::facts::{Facts, glob_match};
use crate::render::{RenderError, Renderer};
use ferry_source::{SourceError, VerifiedRevision};

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

pub const DESIRED_STATE_SCHEMA: &str =
    include_str!("../../../../schemas/desired-state.schema.json");

/// The per-kind schemas, by the URI the desired-state schema refers to them with.
const KIND_SCHEMAS: &[(&str, &str)] = &[
    (
        "https://ferry.dev/schemas/kinds/file.schema.json",
        include_str!("../../../../schemas/kinds/file.schema.json"),
    ),
    (
        "https://ferry.dev/schemas/kinds/ruleset.schema.json",
        include_str!("../../../../schemas/kinds/ruleset.schema.json"),
    ),
    (
        "https://ferry.dev/schemas/kinds/wasm.schema.json",
        include_str!("../../../../schemas/kinds/wasm.schema.json"),
    ),
    (
        "https://ferry.dev/schemas/kinds/firmware.schema.json",
        include_str!("../../../../schemas/kinds/firmware.schema.json"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {file}: line {line}, column {column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("manifest {file}: {message}")]
    Unparseable { file: String, message: String },
    #[error("manifest {file}: {pointer}: unknown resource kind {kind:?} (known: {known})")]
    UnknownKind {
        file: String,
        pointer: String,
        kind: String,
        known: String,
    },
    #[error("manifest {file}: {pointer}: {message}")]
    Schema {
        file: String,
        pointer: String,
        message: String,
    },
    #[error("manifest {file}: {pointer}: duplicate resource {id} (first at {first})")]
    Duplicate {
        file: String,
        pointer: String,
        id: ResourceId,
        first: String,
    },
    #[error("manifest {file}: {pointer}: {message}")]
    Invalid {
        file: String,
        pointer: String,
        message: String,
    },
    #[error("manifest {file}: {pointer}: {source}")]
    Render {
        file: String,
        pointer: String,
        #[source]
        source: Box<RenderError>,
    },
    #[error("manifest {file}: {pointer}: {source}")]
    Source {
        file: String,
        pointer: String,
        #[source]
        source: SourceError,
    },
}

impl Classify for ManifestError {
    fn class(&self) -> ErrorClass {
        ErrorClass::InvalidInput
    }
}

/// Where a resource's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// A file of the revision.
    Source(RepoPath),
    /// A rendered template (already in memory).
    Rendered(Arc<Vec<u8>>),
}

/// A resolved desired state: the resources and where each one's content is.
#[derive(Debug, Clone)]
pub struct ResolvedManifest {
    pub resources: ResourceSet,
    pub contents: BTreeMap<ResourceId, Content>,
    /// Resources that may be delivered as a delta (`chunks:`).
    pub deltas: BTreeMap<ResourceId, DeltaRef>,
}

/// Where a resource's delta comes from: its chunk index (a file of the
/// revision, addressed by signed metadata) and its chunk store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRef {
    pub index_path: RepoPath,
    pub index: ContentRef,
    /// An http(s)/file URL, or a path below the source's base URL.
    pub store: String,
}

/// Serves the embedded per-kind schemas to the validator; nothing is
/// ever fetched from the network.
struct EmbeddedSchemas;

impl jsonschema::Retrieve for EmbeddedSchemas {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let (_, text) = KIND_SCHEMAS
            .iter()
            .find(|(u, _)| *u == uri.as_str())
            .ok_or_else(|| format!("no embedded schema {}", uri.as_str()))?;
        Ok(serde_json::from_str(text)?)
    }
}

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(DESIRED_STATE_SCHEMA).expect("schema is JSON");
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .with_retriever(EmbeddedSchemas)
            .build(&schema)
            .expect("schema compiles")
    })
}

/// Reads, renders, parses, validates and resolves the manifest of `rev`
/// for the device described by `facts`.
pub fn load(
    rev: &Arc<dyn VerifiedRevision>,
    manifest: &RepoPath,
    facts: &Facts,
) -> Result<ResolvedManifest, ManifestError> {
    let renderer = Renderer::new(rev.clone(), facts).map_err(|e| ManifestError::Render {
        file: manifest.to_string(),
        pointer: "(variables)".to_owned(),
        source: Box::new(e),
    })?;
    let doc = document(&**rev, &renderer, manifest)?;
    check(manifest.as_str(), &doc)?;
    resolve(&**rev, &renderer, facts, manifest.as_str(), &doc)
}

/// The manifest as a parsed document (rendered first if it is a template).
pub fn document(
    rev: &dyn VerifiedRevision,
    renderer: &Renderer,
    manifest: &RepoPath,
) -> Result<Value, ManifestError> {
    let file = manifest.to_string();
    let bytes = if file.ends_with(".j2") {
        let rendered = renderer
            .render(manifest)
            .map_err(|e| ManifestError::Render {
                file: file.clone(),
                pointer: "(render)".to_owned(),
                source: Box::new(e),
            })?;
        if rendered.used_secrets {
            // The manifest is shown in plans and recorded in the audit journal.
            return Err(ManifestError::Invalid {
                file,
                pointer: "(render)".to_owned(),
                message: "the manifest may not read `secrets`; use them in file templates, which are redacted".to_owned(),
            });
        }
        rendered.text.into_bytes()
    } else {
        rev.read_small(manifest, MAX_MANIFEST_BYTES)
            .map_err(|source| ManifestError::Source {
                file: file.clone(),
                pointer: "(file)".to_owned(),
                source,
            })?
    };
    parse(&file, &bytes)
}

/// Parses YAML (or JSON) into a JSON value.
///
/// A document that starts with `{` is JSON (a subset of YAML) and is read
/// with the much faster JSON parser; errors carry line and column either way.
pub fn parse(file: &str, bytes: &[u8]) -> Result<Value, ManifestError> {
    // Both parsers append " at line L column C" to their messages; the
    // location is reported in its own fields.
    let syntax = |line, column, e: &dyn std::fmt::Display| ManifestError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    if bytes.trim_ascii_start().starts_with(b"{") {
        return serde_json::from_slice::<Value>(bytes)
            .map_err(|e| syntax(e.line(), e.column(), &e));
    }
    serde_norway::from_slice::<Value>(bytes).map_err(|e| match e.location() {
        Some(loc) => syntax(loc.line(), loc.column(), &e),
        None => ManifestError::Unparseable {
            file: file.to_owned(),
            message: e.to_string(),
        },
    })
}

/// Validates a parsed document: kinds first (for a plain message), then the schemas.
pub fn check(file: &str, doc: &Value) -> Result<(), ManifestError> {
    if let Some(items) = doc.get("resources").and_then(Value::as_array) {
        for (i, item) in items.iter().enumerate() {
            if let Some(kind) = item.get("kind").and_then(Value::as_str)
                && kind.parse::<Kind>().is_err()
            {
                return Err(ManifestError::UnknownKind {
                    file: file.to_owned(),
                    pointer: format!("/resources/{i}/kind"),
                    kind: kind.to_owned(),
                    known: Kind::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    // Report the first error in document order, so the message is stable.
    // Properties a failing kind schema did not get to evaluate are also
    // reported as "unevaluated"; that is noise beside the real error.
    let mut errors: Vec<(bool, String, String)> = validator()
        .iter_errors(doc)
        .map(|e| {
            use jsonschema::error::ValidationErrorKind as K;
            let unevaluated = matches!(e.kind(), K::UnevaluatedProperties { .. });
            let message = match e.kind() {
                K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. } => {
                    "needs exactly one of `source` or `template` (pins `sha256`/`length` only with `source`)"
                        .to_owned()
                }
                _ => e.to_string(),
            };
            (unevaluated, e.instance_path().to_string(), message)
        })
        .collect();
    if errors.iter().any(|(unevaluated, _, _)| !unevaluated) {
        errors.retain(|(unevaluated, _, _)| !unevaluated);
    }
    let mut errors: Vec<(String, String)> = errors.into_iter().map(|(_, p, m)| (p, m)).collect();
    errors.sort();
    if let Some((pointer, message)) = errors.into_iter().next() {
        return Err(ManifestError::Schema {
            file: file.to_owned(),
            pointer: if pointer.is_empty() {
                "/".to_owned()
            } else {
                pointer
            },
            message,
        });
    }
    Ok(())
}

fn resolve(
    rev: &dyn VerifiedRevision,
    renderer: &Renderer,
    facts: &Facts,
    file: &str,
    doc: &Value,
) -> Result<ResolvedManifest, ManifestError> {
    let items = doc["resources"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut resources = ResourceSet::new();
    let mut contents = BTreeMap::new();
    let mut first_seen: BTreeMap<ResourceId, usize> = BTreeMap::new();
    let mut deltas = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if !selected(item, facts) {
            continue;
        }
        // Built only for errors: formatting 10,000 pointers is measurable.
        let pointer = || format!("/resources/{i}");
        let invalid = |field: &str, message: String| ManifestError::Invalid {
            file: file.to_owned(),
            pointer: format!("/resources/{i}/{field}"),
            message,
        };
        // The schema guarantees the shape; kinds are matched exhaustively.
        let kind: Kind = item["kind"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e: ferry_core::UnknownKind| invalid("kind", e.to_string()))?;
        let (name, settings) = match kind {
            Kind::File => {
                let path = item["path"].as_str().unwrap_or_default();
                // The schema pattern refuses empty components; refuse `.`/`..` too.
                RepoPath::new(&path[1..]).map_err(|e| invalid("path", e.reason.to_owned()))?;
                let mode = item.get("mode").and_then(Value::as_str).unwrap_or("0644");
                let bits =
                    u32::from_str_radix(mode, 8).map_err(|e| invalid("mode", e.to_string()))?;
                let mut settings =
                    BTreeMap::from([("mode".to_owned(), Value::String(format!("{bits:04o}")))]);
                if let Some(policy) = item.get("drift") {
                    settings.insert("drift".to_owned(), policy.clone());
                }
                (path.to_owned(), settings)
            }
            Kind::Ruleset => {
                if !cfg!(feature = "rules") {
                    return Err(invalid(
                        "kind",
                        crate::config::built_without(crate::config::RULES_RUNTIME, "rules"),
                    ));
                }
                // Field sources the set brings (docs/ingest.md), checked
                // here so a bad one names its JSON pointer.
                let mut settings = BTreeMap::new();
                if let Some(ingest) = item.get("ingest") {
                    if !cfg!(feature = "ingest") {
                        return Err(invalid(
                            "ingest",
                            crate::config::built_without(crate::config::FIELD_SOURCES, "ingest"),
                        ));
                    }
                    ferry_ingest::IngestConfig::from_json(ingest)
                        .and_then(|c| c.plan(""))
                        .map_err(|e| {
                            // `modbus[0].blocks[1].count` → `ingest/modbus/0/blocks/1/count`.
                            let at = e.key.replace(['.', '['], "/").replace(']', "");
                            let at = at.trim_start_matches("ingest").trim_start_matches('/');
                            let field = if at.is_empty() {
                                "ingest".to_owned()
                            } else {
                                format!("ingest/{at}")
                            };
                            invalid(&field, e.message)
                        })?;
                    settings.insert("ingest".to_owned(), ingest.clone());
                }
                (
                    item["name"].as_str().unwrap_or_default().to_owned(),
                    settings,
                )
            }
            Kind::Wasm => {
                let settings: BTreeMap<String, Value> = ["limits", "capabilities", "probe"]
                    .into_iter()
                    .filter_map(|k| item.get(k).map(|v| (k.to_owned(), v.clone())))
                    .collect();
                check_module_settings(&settings).map_err(|(field, m)| invalid(&field, m))?;
                (
                    item["name"].as_str().unwrap_or_default().to_owned(),
                    settings,
                )
            }
            Kind::Firmware => (
                item["name"].as_str().unwrap_or_default().to_owned(),
                BTreeMap::from([("version".to_owned(), item["version"].clone())]),
            ),
        };
        let id = ResourceId {
            kind,
            name: name.clone(),
        };
        if let Some(first) = first_seen.get(&id) {
            return Err(ManifestError::Duplicate {
                file: file.to_owned(),
                pointer: pointer(),
                id,
                first: format!("/resources/{first}"),
            });
        }
        first_seen.insert(id.clone(), i);
        let mut secret = item.get("secret").and_then(Value::as_bool).unwrap_or(false);
        let (content, bytes) = if let Some(template) = item.get("template").and_then(Value::as_str)
        {
            let path = RepoPath::new(template).map_err(|e| invalid("template", e.to_string()))?;
            let rendered = renderer.render(&path).map_err(|e| ManifestError::Render {
                file: file.to_owned(),
                pointer: format!("/resources/{i}/template"),
                source: Box::new(e),
            })?;
            secret |= rendered.used_secrets;
            let bytes = rendered.text.into_bytes();
            (ContentRef::of(&bytes), Content::Rendered(Arc::new(bytes)))
        } else {
            let source_path = RepoPath::new(item["source"].as_str().unwrap_or_default())
                .map_err(|e| invalid("source", e.to_string()))?;
            let content = content_of(rev, item, &source_path).map_err(|e| match e {
                Resolve::Source(source) => ManifestError::Source {
                    file: file.to_owned(),
                    pointer: format!("/resources/{i}/source"),
                    source,
                },
                Resolve::Invalid(field, message) => invalid(field, message),
            })?;
            (content, Content::Source(source_path))
        };
        if let Some(chunks) = item.get("chunks") {
            let index_path = RepoPath::new(chunks["index"].as_str().unwrap_or_default())
                .map_err(|e| invalid("chunks/index", e.to_string()))?;
            let index = content_of(rev, &Value::Null, &index_path).map_err(|e| match e {
                Resolve::Source(source) => ManifestError::Source {
                    file: file.to_owned(),
                    pointer: format!("/resources/{i}/chunks/index"),
                    source,
                },
                Resolve::Invalid(field, message) => invalid(field, message),
            })?;
            let store = chunks
                .get("store")
                .and_then(Value::as_str)
                .unwrap_or("chunks/")
                .to_owned();
            check_store(&store).map_err(|m| invalid("chunks/store", m))?;
            deltas.insert(
                id.clone(),
                DeltaRef {
                    index_path,
                    index,
                    store,
                },
            );
        }
        resources
            .insert(Resource {
                kind,
                name,
                content,
                settings,
                secret,
            })
            .expect("duplicates checked above");
        contents.insert(id, bytes);
    }
    // One device has one pair of slots: two images would overwrite each other.
    if resources
        .iter()
        .filter(|r| r.kind == Kind::Firmware)
        .count()
        > 1
    {
        return Err(ManifestError::Invalid {
            file: file.to_owned(),
            pointer: "/resources".to_owned(),
            message: "more than one firmware resource selected for this device".to_owned(),
        });
    }
    Ok(ResolvedManifest {
        resources,
        contents,
        deltas,
    })
}

/// A chunk store is an http(s)/file URL or a relative path without `..`.
fn check_store(store: &str) -> Result<(), String> {
    if let Some((scheme, _)) = store.split_once("://") {
        return match scheme {
            "http" | "https" | "file" => Ok(()),
            _ => Err(format!(
                "{store}: only http, https and file URLs (or a relative path) are supported"
            )),
        };
    }
    if store.starts_with('/') || store.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!(
            "{store}: a relative store is a path below the source's base URL, without `.` or `..`"
        ));
    }
    Ok(())
}

/// Whether the resource's `match:` selector (if any) selects this device.
fn selected(item: &Value, facts: &Facts) -> bool {
    let Some(selector) = item.get("match").and_then(Value::as_object) else {
        return true;
    };
    selector.iter().all(|(key, pattern)| {
        let pattern = pattern.as_str().unwrap_or_default();
        facts
            .lookup(key)
            .is_some_and(|value| glob_match(pattern, value))
    })
}

enum Resolve {
    Source(SourceError),
    Invalid(&'static str, String),
}

/// The content address of a resource: signed metadata wins; a pin in the
/// manifest must agree with it. Only an unsigned source without a pin makes
/// ferry hash the bytes itself.
fn content_of(
    rev: &dyn VerifiedRevision,
    item: &Value,
    source: &RepoPath,
) -> Result<ContentRef, Resolve> {
    let pin_sha = match item.get("sha256").and_then(Value::as_str) {
        Some(s) => Some(
            s.parse::<Sha256>()
                .map_err(|e| Resolve::Invalid("sha256", e.to_string()))?,
        ),
        None => None,
    };
    let pin_len = item.get("length").and_then(Value::as_u64);
    let signed = rev.signed_target(source).map_err(Resolve::Source)?;
    let content = match signed {
        Some(c) => c,
        None => match (pin_sha, pin_len) {
            (Some(sha256), Some(length)) => return Ok(ContentRef { sha256, length }),
            // Unsigned (the dir source): hashed once, by the revision.
            _ => rev.content(source).map_err(Resolve::Source)?,
        },
    };
    if let Some(sha) = pin_sha
        && sha != content.sha256
    {
        return Err(Resolve::Invalid(
            "sha256",
            format!("pins {sha} but {source} has {}", content.sha256),
        ));
    }
    if let Some(len) = pin_len
        && len != content.length
    {
        return Err(Resolve::Invalid(
            "length",
            format!("pins {len} bytes but {source} has {}", content.length),
        ));
    }
    Ok(content)
}

/// A `wasm` resource's settings must make a module spec: the offending
/// field and why, if not.
#[cfg(feature = "wasm")]
fn check_module_settings(settings: &BTreeMap<String, Value>) -> Result<(), (String, String)> {
    ferry_wasm::ModuleSpec::from_settings(settings)
        .map(drop)
        .map_err(|e| match e {
            ferry_wasm::WasmError::Spec(m) => {
                let field = m.split([':', '.', '[']).next().unwrap_or("").to_owned();
                (field, m)
            }
            e => ("limits".to_owned(), e.to_string()),
        })
}

/// Without the module host, a `wasm` resource cannot run here.
#[cfg(not(feature = "wasm"))]
fn check_module_settings(_: &BTreeMap<String, Value>) -> Result<(), (String, String)> {
    Err((
        "kind".to_owned(),
        crate::config::built_without("WASM modules", "wasm"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_source::Source;
    use ferry_source::dir::DirSource;
    use proptest::prelude::*;
    use serde_json::json;

    fn fleet() -> DirSource {
        let repo =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../integration/fleet/repo");
        DirSource::new(repo, RepoPath::new("ferry.yaml.j2").unwrap())
    }

    /// Everything a load produced, as bytes: resources and rendered contents,
    /// or the error message.
    fn outcome(src: &DirSource, facts: &Facts) -> String {
        match load(&src.fetch().unwrap(), src.manifest_path(), facts) {
            Ok(m) => {
                let mut out = serde_json::to_string(&m.resources).unwrap();
                for (id, c) in &m.contents {
                    if let Content::Rendered(bytes) = c {
                        out.push_str(&format!("\n{id}: {}", String::from_utf8_lossy(bytes)));
                    }
                }
                out
            }
            Err(e) => e.to_string(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn rendering_is_deterministic_and_replanning_is_empty(
            hostname in "[a-z][a-z0-9-]{0,15}",
            site in prop::sample::select(vec!["plant-7", "plant-9", "plant-x"]),
            model in prop::sample::select(vec!["Acme GW-3000", "Acme GW-5000", "Other"]),
            arch in prop::sample::select(vec!["aarch64", "x86_64"]),
            macs in prop::collection::btree_map("[a-z]{2,5}[0-9]", "([0-9a-f]{2}:){5}[0-9a-f]{2}", 0..4),
            secret in "[ -~]{0,24}",
        ) {
            let facts = Facts {
                hostname: Some(hostname),
                machine_id: Some("0".repeat(32)),
                arch: Some(arch.to_owned()),
                model: Some(model.to_owned()),
                os: BTreeMap::from([("pretty_name".to_owned(), "Test OS".to_owned())]),
                macs,
                labels: BTreeMap::from([("site".to_owned(), site.to_owned())]),
                vars: BTreeMap::new(),
                secrets: BTreeMap::from([("mqtt_password".to_owned(), secret)]),
            };
            let src = fleet();
            let first = outcome(&src, &facts);
            prop_assert_eq!(&first, &outcome(&src, &facts));
            if let Ok(m) = load(&src.fetch().unwrap(), src.manifest_path(), &facts) {
                prop_assert!(ferry_core::plan(&m.resources, &m.resources).is_empty());
            } else {
                // Only the site without variables fails, and says why.
                prop_assert_eq!(site, "plant-x");
                prop_assert!(first.contains("vars.broker"), "{}", first);
            }
        }
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let e = parse(
            "ferry.yaml",
            b"apiVersion: ferry.dev/v1\nresources:\n  - kind: file\n   path: x\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ManifestError::Syntax { line: 4, .. }), "{msg}");
        assert!(
            msg.starts_with("manifest ferry.yaml: line 4, column"),
            "{msg}"
        );
    }

    #[test]
    fn json_manifests_are_parsed_as_json_with_positions() {
        let v = parse(
            "m.json",
            b" {\"apiVersion\": \"ferry.dev/v1\", \"resources\": []}",
        )
        .unwrap();
        assert_eq!(v["apiVersion"], "ferry.dev/v1");
        let e = parse("m.json", b"{\n  \"a\": 1,\n  oops\n}").unwrap_err();
        assert!(
            matches!(
                e,
                ManifestError::Syntax {
                    line: 3,
                    column: 3,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn schema_errors_name_the_pointer() {
        let doc = json!({"apiVersion": "ferry.dev/v1", "resources": [
            {"kind": "file", "path": "/etc/a", "source": "a"},
            {"kind": "file", "path": "relative", "source": "b"}
        ]});
        let e = check("m.yaml", &doc).unwrap_err().to_string();
        assert!(e.contains("/resources/1/path"), "{e}");

        let doc = json!({"apiVersion": "ferry.dev/v1", "resources": [{"kind": "file", "path": "/a", "source": "a", "mode": "4755"}]});
        let e = check("m.yaml", &doc).unwrap_err().to_string();
        assert!(e.contains("/resources/0/mode"), "{e}");

        let doc = json!({"apiVersion": "ferry.dev/v2", "resources": []});
        let e = check("m.yaml", &doc).unwrap_err().to_string();
        assert!(e.contains("/apiVersion"), "{e}");
    }

    #[test]
    fn unknown_kind_is_named() {
        let doc =
            json!({"apiVersion": "ferry.dev/v1", "resources": [{"kind": "docker", "name": "x"}]});
        let e = check("m.yaml", &doc).unwrap_err().to_string();
        assert_eq!(
            e,
            "manifest m.yaml: /resources/0/kind: unknown resource kind \"docker\" (known: file, ruleset, wasm, firmware)"
        );
    }
}
