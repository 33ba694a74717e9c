//! Rendering with minijinja, sandboxed to the verified revision.
//!
//! - Templates load only from the revision (through `RepoPath`, so `..` and
//!   absolute names are refused); nothing else on the device is readable.
//! - Undefined variables are errors (`UndefinedBehavior::Strict`).
//! - Output is deterministic: there is no clock, no randomness, and every
//!   map in the context is sorted.
//! - Work and output are bounded (fuel, size).
//!
//! The context: `device` (facts, see [`crate::render::facts`]), `vars` (repository
//! variables `vars/common.yaml`, `vars/groups/<group>.yaml`,
//! `vars/sites/<site>.yaml`, then the device's own), `revision` (its id),
//! and `secrets` (device-local). A render that reads any secret reports it,
//! so the resource it produces is redacted everywhere.

pub mod facts;
pub mod manifest;
pub mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_core::RepoPath;
use minijinja::value::{Object, Value};
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

use crate::render::facts::Facts;
use ferry_source::{SourceError, VerifiedRevision};

/// Largest template source, and largest rendered output, in bytes.
pub const MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
/// The work budget of one render. minijinja charges one fuel per
/// instruction and per 64 bytes of data made (output, captured blocks,
/// strings from `~`, `*`, filters): 1,000,000 is at most 64 MiB of data,
/// four times the output cap, so a refused template costs about the cap in
/// memory; real configuration templates use a few thousand.
pub const FUEL: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template {template}: {location}{message}")]
    Template {
        template: String,
        location: String,
        message: String,
    },
    #[error("template {template}: output is larger than {limit} bytes")]
    TooLarge { template: String, limit: usize },
    #[error("variables {file}: {message}")]
    Vars { file: String, message: String },
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// A rendered template.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub text: String,
    /// Whether the render read any secret.
    pub used_secrets: bool,
}

#[derive(Debug)]
struct Secrets {
    values: BTreeMap<String, String>,
    touched: AtomicBool,
}

impl Object for Secrets {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.touched.store(true, Ordering::SeqCst);
        key.as_str()
            .and_then(|k| self.values.get(k))
            .map(|v| Value::from(v.as_str()))
    }
}

pub struct Renderer {
    env: Environment<'static>,
    base: BTreeMap<&'static str, Value>,
    secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").finish_non_exhaustive()
    }
}

impl Renderer {
    pub fn new(rev: Arc<dyn VerifiedRevision>, facts: &Facts) -> Result<Renderer, RenderError> {
        let vars = repository_vars(&*rev, facts)?;
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.keep_trailing_newline(true);
        env.set_syntax(syntax.build().expect("default delimiters are valid"));
        // No auto-escaping: templates produce config files and YAML, not HTML.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        let loader_rev = rev.clone();
        env.set_loader(move |name| {
            let path = RepoPath::new(name).map_err(|e| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("template {name:?} is outside the revision: {}", e.reason),
                )
            })?;
            match loader_rev.read_small(&path, MAX_TEMPLATE_BYTES) {
                Ok(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        format!("template {name} is not UTF-8"),
                    )
                }),
                Err(SourceError::NotFound { .. }) => Ok(None),
                Err(e) => Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    e.to_string(),
                )),
            }
        });
        let base = BTreeMap::from([
            (
                "device",
                Value::from(minijinja::value::Serde(facts.device_value())),
            ),
            ("vars", Value::from(minijinja::value::Serde(vars))),
            ("revision", Value::from(rev.id())),
        ]);
        Ok(Renderer {
            env,
            base,
            secrets: facts.secrets.clone(),
        })
    }

    /// Renders the template at `path` of the revision.
    pub fn render(&self, path: &RepoPath) -> Result<Rendered, RenderError> {
        let name = path.as_str();
        let template = self
            .env
            .get_template(name)
            .map_err(|e| template_error(name, &e))?;
        let secrets = Arc::new(Secrets {
            values: self.secrets.clone(),
            touched: AtomicBool::new(false),
        });
        let mut ctx = self.base.clone();
        ctx.insert("secrets", Value::from_dyn_object(secrets.clone()));
        // Written through a bounded sink: output past the limit stops the
        // render there instead of growing a string that is refused later.
        let mut out = Bounded {
            buf: Vec::new(),
            limit: MAX_OUTPUT_BYTES,
            over: false,
        };
        let rendered = template
            .render_captured_to(Value::from(ctx), &mut out)
            .map(drop);
        if out.over {
            return Err(RenderError::TooLarge {
                template: name.to_owned(),
                limit: MAX_OUTPUT_BYTES,
            });
        }
        rendered.map_err(|e| {
            if secrets.touched.load(Ordering::SeqCst) {
                redacted_error(name, &e)
            } else {
                template_error(name, &e)
            }
        })?;
        let text = String::from_utf8(out.buf).map_err(|_| RenderError::Template {
            template: name.to_owned(),
            location: String::new(),
            message: "output is not UTF-8".to_owned(),
        })?;
        Ok(Rendered {
            text,
            used_secrets: secrets.touched.load(Ordering::SeqCst),
        })
    }
}

/// A render's output, refusing to grow past `limit` bytes.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("render output over its limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `template NAME: line L, column C: message`, pointing into the template
/// where the error is (which may be an included one).
fn template_error(name: &str, e: &minijinja::Error) -> RenderError {
    let template = e.name().unwrap_or(name).to_owned();
    let mut location = String::new();
    if let Some(line) = e.line() {
        location = format!("line {line}");
        if let (Some(range), Some(src)) = (e.range(), e.template_source()) {
            let start = range.start.min(src.len());
            let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
            let column = src[line_start..start].chars().count() + 1;
            location.push_str(&format!(", column {column}"));
        }
        location.push_str(": ");
    }
    let mut message = e.kind().to_string();
    if let Some(detail) = e.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if e.kind() == ErrorKind::OutOfFuel {
        message.push_str(" (the render exceeds its work limit)");
    }
    RenderError::Template {
        template,
        location,
        message,
    }
}

/// The error of a render that read secrets: a secret may be anywhere in
/// minijinja's message (`{% include secrets.pw %}` names it as the missing
/// template), so only the kind of error and where it is are kept. The
/// message goes to stderr, the audit journal and the fleet.
fn redacted_error(name: &str, e: &minijinja::Error) -> RenderError {
    let location = match (e.name(), e.line()) {
        (Some(n), Some(line)) if n == name => format!("line {line}: "),
        _ => String::new(),
    };
    RenderError::Template {
        template: name.to_owned(),
        location,
        message: format!("{} (details redacted: the render read secrets)", e.kind()),
    }
}

/// Repository variables for this device, merged in order (later wins):
/// common, group, site; then the device's own `vars`.
fn repository_vars(
    rev: &dyn VerifiedRevision,
    facts: &Facts,
) -> Result<serde_json::Value, RenderError> {
    let mut files = vec!["vars/common.yaml".to_owned()];
    for (label, dir) in [("group", "groups"), ("site", "sites")] {
        if let Some(value) = facts.labels.get(label) {
            files.push(format!("vars/{dir}/{value}.yaml"));
        }
    }
    let mut merged = serde_json::Map::new();
    for file in files {
        let path = RepoPath::new(file.clone()).map_err(|e| RenderError::Vars {
            file: file.clone(),
            message: format!("a label names no valid file: {}", e.reason),
        })?;
        if !rev.exists(&path)? {
            continue;
        }
        let bytes = rev.read_small(&path, MAX_TEMPLATE_BYTES)?;
        let value: serde_json::Value =
            serde_norway::from_slice(&bytes).map_err(|e| RenderError::Vars {
                file: file.clone(),
                message: e.to_string(),
            })?;
        match value {
            serde_json::Value::Object(map) => merged.extend(map),
            serde_json::Value::Null => {}
            _ => {
                return Err(RenderError::Vars {
                    file,
                    message: "must be a mapping of names to values".to_owned(),
                });
            }
        }
    }
    for (k, v) in &facts.vars {
        merged.insert(k.clone(), v.clone());
    }
    Ok(serde_json::Value::Object(merged))
}
