//! What `ferry plan` shows: each step with its reasons, a unified diff for
//! text content, and secrets redacted. The JSON form is documented by
//! `schemas/plan.schema.json`.

use std::io::Read;

use ferry_core::{ContentRef, Op, Plan, Reason, Resource, Step};
use serde::Serialize;
use serde_json::{Value, json};

use crate::render::manifest::{Content, ResolvedManifest};
use crate::store::{Store, VerifyingReader};
use ferry_source::VerifiedRevision;

/// Content larger than this is not diffed.
pub const MAX_DIFF_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub revision: String,
    pub summary: Summary,
    pub steps: Vec<StepReport>,
    /// Every managed resource found changed on the device: restored by the
    /// plan's steps (policy `restore`) or only reported (`report`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub remove: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub op: Op,
    pub kind: String,
    pub name: String,
    pub secret: bool,
    pub reasons: Vec<Value>,
    /// The resource now (change, remove), secrets redacted.
    pub from: Option<Value>,
    /// The resource as planned (add, change), secrets redacted.
    pub to: Option<Value>,
    /// A unified diff of the content, for text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// Why there is no diff (secret, binary, too large), when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Bytes to download, full and by delta (added and changed resources).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<Download>,
    /// The reasons for humans (redacted like the rest).
    #[serde(skip)]
    pub reason_texts: Vec<String>,
    /// The step only puts back what changed on the device.
    #[serde(skip)]
    pub restores_drift: bool,
}

/// Bytes a step downloads.
#[derive(Debug, Clone, Serialize)]
pub struct Download {
    /// The full content; 0 when the store holds it or it is rendered.
    pub full: u64,
    /// By delta (missing chunks plus the index), when the resource has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<u64>,
}

/// A resource for display: digests and length removed for secrets.
fn view(r: &Resource, secret: bool) -> Value {
    let mut v = serde_json::to_value(r).expect("resources serialise");
    if secret {
        v["content"] = json!("<redacted>");
        v["secret"] = json!(true);
    }
    v
}

fn reason_value(r: &Reason, secret: bool) -> Value {
    match r {
        Reason::ContentChanged { .. } if secret => json!({"reason": "content_changed"}),
        Reason::Drifted { drift } => json!({"reason": "drifted", "drift": drift.audit(secret)}),
        other => serde_json::to_value(other).expect("reasons serialise"),
    }
}

/// What is installed on the device for a resource (drifted content).
pub type OnDevice<'a> = &'a dyn Fn(&ferry_core::ResourceId) -> Option<Box<dyn Read>>;

/// Builds the report. `store` holds the content of the current generation
/// (absent before the first apply); `on_device` reads what is on the
/// device, for the diff of drifted content.
pub fn report(
    plan: &Plan,
    rev: &dyn VerifiedRevision,
    desired: &ResolvedManifest,
    store: Option<&Store>,
    on_device: OnDevice<'_>,
) -> PlanReport {
    let (add, change, remove) = plan.counts();
    let steps = plan
        .steps
        .iter()
        .map(|s| {
            let secret = s.is_secret();
            let (diff, mut note) = diff(s, secret, rev, desired, store, on_device);
            if s.verb() == "release" {
                note = Some(
                    "released: the generation does not manage firmware; the booted firmware stays as it runs"
                        .to_owned(),
                );
            }
            StepReport {
                op: s.op,
                kind: s.id.kind.as_str().to_owned(),
                name: s.id.name.clone(),
                secret,
                reasons: s.reasons.iter().map(|r| reason_value(r, secret)).collect(),
                from: s.from.as_ref().map(|r| view(r, secret)),
                to: s.to.as_ref().map(|r| view(r, secret)),
                diff,
                note,
                download: s.to.as_ref().filter(|_| !secret).map(|r| Download {
                    full: match desired.contents.get(&r.id()) {
                        Some(Content::Source(_))
                            if !store.is_some_and(|st| st.contains(&r.content.sha256)) =>
                        {
                            r.content.length
                        }
                        _ => 0,
                    },
                    delta: None,
                }),
                reason_texts: s.describe_reasons(),
                restores_drift: s.restores_drift(),
            }
        })
        .collect();
    PlanReport {
        revision: rev.id().to_owned(),
        summary: Summary {
            add,
            change,
            remove,
        },
        steps,
        drift: Vec::new(),
    }
}

fn diff(
    s: &Step,
    secret: bool,
    rev: &dyn VerifiedRevision,
    desired: &ResolvedManifest,
    store: Option<&Store>,
    on_device: OnDevice<'_>,
) -> (Option<String>, Option<String>) {
    let drifted = s.drift().find_map(|d| match d {
        ferry_core::Drift::Content { found, .. } => Some(*found),
        _ => None,
    });
    let content_changed = s.op == Op::Add
        || drifted.is_some()
        || s.reasons
            .iter()
            .any(|r| matches!(r, Reason::ContentChanged { .. }));
    if s.op == Op::Remove || !content_changed {
        return (None, None);
    }
    if secret {
        return (None, Some("secret content; diff not shown".to_owned()));
    }
    // Drifted content: the diff is from what is on the device.
    let on_device = drifted.map(|found| match on_device(&s.id) {
        Some(reader) => read_text(reader, found),
        None => Err("the content on the device is unavailable".to_owned()),
    });
    let old = match (&s.from, store) {
        _ if on_device.is_some() => on_device.expect("checked"),
        (Some(from), Some(store)) => match store.open_verified(from.content) {
            Ok(reader) => read_text(reader, from.content),
            Err(e) => Err(format!("current content unavailable: {e}")),
        },
        (Some(_), None) => Err("current content unavailable".to_owned()),
        (None, _) => Ok(String::new()),
    };
    let new = match (s.to.as_ref(), desired.contents.get(&s.id)) {
        (Some(to), Some(Content::Rendered(bytes))) => read_text(&bytes[..], to.content),
        (Some(to), Some(Content::Source(path))) => match rev.open(path) {
            Ok(reader) => read_text(reader, to.content),
            Err(e) => Err(e.to_string()),
        },
        _ => Err("planned content unavailable".to_owned()),
    };
    match (old, new) {
        (Ok(old), Ok(new)) => {
            // Files are named by their absolute path, other kinds by name.
            let name = &s.id.name;
            let sep = if name.starts_with('/') { "" } else { "/" };
            let from_label = if s.from.is_some() {
                format!("a{sep}{name}")
            } else {
                "/dev/null".to_owned()
            };
            let text = similar::TextDiff::from_lines(&old, &new)
                .unified_diff()
                .context_radius(3)
                .header(&from_label, &format!("b{sep}{name}"))
                .to_string();
            (Some(text), None)
        }
        (Err(note), _) | (_, Err(note)) => (None, Some(note)),
    }
}

/// Reads content for a diff, verified against its address; refuses binary
/// and large content.
fn read_text(reader: impl Read, content: ContentRef) -> Result<String, String> {
    if content.length > MAX_DIFF_BYTES {
        return Err(format!("{} bytes; diff not shown", content.length));
    }
    let mut bytes = Vec::with_capacity(content.length as usize);
    VerifyingReader::new(reader, content, "content")
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.contains(&0) {
        return Err("binary content; diff not shown".to_owned());
    }
    String::from_utf8(bytes).map_err(|_| "binary content; diff not shown".to_owned())
}
