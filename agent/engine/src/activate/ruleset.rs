//! The `ruleset` activator: a rule set is compiled when it is activated, so
//! one that does not parse, type-check or compile fails the transition (which
//! rolls back) and never reaches the running rule engine. The engine that
//! evaluates events (`ferry run`) loads the sets of the current generation
//! from the store with [`load`] and hot-swaps them in.

use std::io::Read;

use ferry_core::{ContentRef, Kind, Op, Resource, Sha256, Step};
use ferry_rules::Compiled;
use serde_json::Value;

use super::{ActivateError, Activator};
use crate::store::Store;

/// Activates `ruleset` resources; `base` is ferry.toml's field sources.
#[derive(Debug, Clone, Default)]
pub struct RulesetActivator {
    pub base: ferry_ingest::Plan,
}

/// The field sources a ruleset resource brings (its `ingest` setting).
pub fn ingest_plan(resource: &Resource) -> Result<ferry_ingest::Plan, ActivateError> {
    match resource.settings.get("ingest") {
        None => Ok(ferry_ingest::Plan::default()),
        Some(v) => ferry_ingest::IngestConfig::from_json(v)
            .and_then(|c| c.plan("ingest"))
            .map_err(|e| ActivateError::new(format!("ruleset {}", resource.name), e)),
    }
}

/// The sources of ferry.toml joined with the set's own: what its
/// `modbus_write`s are checked against.
pub fn writable_plan(
    base: &ferry_ingest::Plan,
    resource: &Resource,
) -> Result<ferry_ingest::Plan, ActivateError> {
    let own = ingest_plan(resource)?;
    ferry_ingest::Plan::merge(vec![
        ("ferry.toml".to_owned(), base.clone()),
        (format!("ruleset {}", resource.name), own),
    ])
    .map_err(|e| ActivateError::new(format!("ruleset {}", resource.name), e))
}

/// Reads a rule set from the store (re-verified while read) and compiles
/// it; every `modbus_write` must name a register `writable` allows.
/// Errors are `name:line:col: message`, one per problem.
pub fn load(
    store: &Store,
    name: &str,
    content: ContentRef,
    writable: &ferry_ingest::Plan,
) -> Result<Compiled, ActivateError> {
    let what = format!("ruleset {name}");
    if content.length > ferry_rules::parse::MAX_SOURCE_BYTES as u64 {
        return Err(ActivateError::new(
            &what,
            format!(
                "{} bytes; the limit is {}",
                content.length,
                ferry_rules::parse::MAX_SOURCE_BYTES
            ),
        ));
    }
    let mut text = String::new();
    store
        .open_verified(content)
        .map_err(|e| ActivateError::new(&what, e))?
        .read_to_string(&mut text)
        .map_err(|e| ActivateError::new(&what, format!("reading the rule file: {e}")))?;
    let render = |e: ferry_rules::RulesError| {
        let rendered: Vec<String> = e.0.iter().map(|d| format!("{name}:{d}")).collect();
        ActivateError::new(&what, rendered.join("; "))
    };
    let compiled = ferry_rules::compile_source(&text).map_err(render)?;
    compiled
        .check_writes(|device, register| writable.writable(device, register))
        .map_err(render)?;
    Ok(compiled)
}

impl Activator for RulesetActivator {
    fn kind(&self) -> Kind {
        Kind::Ruleset
    }

    fn prepare(&self, _step: &Step, _store: &Store) -> Result<Value, ActivateError> {
        // Nothing outside the generation changes: the rule engine takes the
        // sets from whichever generation is current.
        Ok(Value::Null)
    }

    fn apply(&self, step: &Step, store: &Store) -> Result<(), ActivateError> {
        match (&step.to, step.op) {
            (Some(to), Op::Add | Op::Change) => {
                let writable = writable_plan(&self.base, to)?;
                load(store, &step.id.name, to.content, &writable).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    fn undo(&self, _step: &Step, _undo: &Value, _store: &Store) -> Result<(), ActivateError> {
        Ok(())
    }

    fn undo_blobs(&self, _undo: &Value) -> Vec<Sha256> {
        Vec::new()
    }
}
