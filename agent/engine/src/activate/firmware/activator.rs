//! The `firmware` activator: an image into the inactive A/B slot.
//!
//! The steps are the install sequence's ([`super::install`]): fallback
//! check → mark the inactive slot bad → write → verify → try-once + switch.
//! A delta ran the first four while staging; the activator finds the slot
//! holding the image and only switches.
//!
//! The new firmware runs only after a reboot; the engine keeps the
//! transition in `switched` until the device has booted the new slot and
//! its health checks passed (then `mark-good` and `confirmed`), or the
//! bootloader fell back (then the transition is rolled back).
//!
//! Undo restores the boot environment as it was before the step and marks
//! the written slot bad: its old content is gone.

use std::fs::File;

use fail::fail_point;
use ferry_core::{Kind, Op, Resource, Sha256, Step};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::activate::firmware::{BootEnv, Firmware};
use crate::activate::{ActivateError, Activator};
#[cfg_attr(not(feature = "failpoints"), allow(unused_imports))]
use crate::failpoints as fp;
use crate::store::Store;

#[derive(Debug)]
pub struct FirmwareActivator {
    /// The configured firmware, or why there is none.
    fw: Result<Firmware, String>,
    /// Whether the booted slot runs an image, by its sha256: read once per
    /// process (staging and activation both ask; a slot is large).
    running: std::sync::Mutex<std::collections::HashMap<Sha256, bool>>,
}

/// What undo and the post-boot check need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirmwareUndo {
    /// The boot environment before the step.
    pub env: Vec<(String, String)>,
    /// The slot running when the update was written.
    pub booted: String,
    /// The slot written.
    pub target: String,
    /// The boot id when the update was written.
    pub boot_id: String,
}

impl FirmwareActivator {
    pub fn new(fw: Result<Option<Firmware>, crate::activate::firmware::FirmwareError>) -> Self {
        let fw = match fw {
            Ok(Some(fw)) => Ok(fw),
            Ok(None) => {
                Err("firmware resources need a [firmware] section in ferry.toml".to_owned())
            }
            Err(e) => Err(e.to_string()),
        };
        FirmwareActivator {
            fw,
            running: Default::default(),
        }
    }

    /// [`Firmware::runs`], remembered.
    fn runs(
        &self,
        fw: &Firmware,
        content: ferry_core::ContentRef,
    ) -> Result<bool, crate::activate::firmware::FirmwareError> {
        let mut known = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(runs) = known.get(&content.sha256) {
            return Ok(*runs);
        }
        let runs = fw.runs(content)?;
        known.insert(content.sha256, runs);
        Ok(runs)
    }

    fn fw(&self, step: &Step) -> Result<&Firmware, ActivateError> {
        self.fw
            .as_ref()
            .map_err(|e| ActivateError::new(&step.id, e))
    }
}

fn err(step: &Step) -> impl Fn(crate::activate::firmware::FirmwareError) -> ActivateError + '_ {
    move |e| ActivateError::new(&step.id, e)
}

impl Activator for FirmwareActivator {
    fn kind(&self) -> Kind {
        Kind::Firmware
    }

    fn prepare(&self, step: &Step, _store: &Store) -> Result<Value, ActivateError> {
        let Some(to) = step.to.as_ref().filter(|_| step.op != Op::Remove) else {
            // Dropping a firmware resource leaves the running firmware alone.
            return Ok(Value::Null);
        };
        let fw = self.fw(step)?;
        if step.op == Op::Add && self.runs(fw, to.content).map_err(err(step))? {
            // Nothing will be written or switched: nothing to undo, and no
            // reboot to wait for. (Only an `add` can meet the running image:
            // a `change` replaces what the current generation runs.)
            return Ok(Value::Null);
        }
        let install = fw.install(to.content).map_err(err(step))?;
        let env = fw.env.load().map_err(err(step))?;
        // 1. The fallback check, before the undo record exists: a refusal
        // leaves nothing to undo.
        install.check(&env).map_err(err(step))?;
        let undo = FirmwareUndo {
            env: env
                .iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            booted: install.booted.clone(),
            target: install.slot.name.clone(),
            boot_id: fw.boot_id().map_err(err(step))?,
        };
        Ok(serde_json::to_value(undo).expect("undo record serialises"))
    }

    /// Says in the audit entry what a step did that writes nothing: a
    /// release (the generation does not manage firmware: what runs stays)
    /// or an install of the firmware that runs already.
    fn apply_noted(&self, step: &Step, store: &Store) -> Result<Value, ActivateError> {
        let running = || self.fw(step).ok().and_then(|fw| fw.booted().ok());
        let Some(to) = step.to.as_ref().filter(|_| step.op != Op::Remove) else {
            return Ok(serde_json::json!({
                "released": true,
                "running": running(),
                "note": "the generation does not manage firmware: the booted firmware stays as it is",
            }));
        };
        if step.op == Op::Add && self.runs(self.fw(step)?, to.content).map_err(err(step))? {
            tracing::info!(resource = %step.id, "the booted slot runs this image already; nothing to write, no reboot");
            return Ok(serde_json::json!({
                "running": running(),
                "unchanged": true,
                "note": "the booted slot runs this image already: nothing written, no reboot",
            }));
        }
        self.apply(step, store).map(|()| Value::Null)
    }

    fn apply(&self, step: &Step, store: &Store) -> Result<(), ActivateError> {
        let Some(to) = step.to.as_ref().filter(|_| step.op != Op::Remove) else {
            return Ok(());
        };
        let fw = self.fw(step)?;
        let install = fw.install(to.content).map_err(err(step))?;
        if install.holds() {
            // The slot holds exactly this image already (a rollback to the
            // firmware that ran before, or a delta built it while staging):
            // activating it is enough, and saves the flash a rewrite.
            tracing::info!(slot = %install.slot.name, "slot already holds the image; not rewriting it");
        } else {
            install.invalidate().map_err(err(step))?;
            fail_point!(fp::FIRMWARE_INVALIDATED);
            tracing::info!(slot = %install.slot.name, bytes = to.content.length, "firmware: slot marked bad, writing the image");
            let path = store.path(&to.content.sha256);
            let mut image = File::open(&path).map_err(|e| {
                ActivateError::new(&step.id, format!("opening {}: {e}", path.display()))
            })?;
            install.write(&mut image).map_err(err(step))?;
            fail_point!(fp::FIRMWARE_WRITTEN);
        }
        install.activate().map_err(err(step))?;
        fail_point!(fp::FIRMWARE_ACTIVATED);
        Ok(())
    }

    fn undo(&self, step: &Step, undo: &Value, _store: &Store) -> Result<(), ActivateError> {
        if undo.is_null() {
            return Ok(());
        }
        let fw = self.fw(step)?;
        let undo: FirmwareUndo = serde_json::from_value(undo.clone())
            .map_err(|e| ActivateError::new(&step.id, format!("undo record: {e}")))?;
        let mut env: BootEnv = undo.env.iter().cloned().collect();
        fw.scheme.mark_bad(&mut env, &undo.target);
        fw.env.store(&env).map_err(err(step))
    }

    /// A slot holds the image already: the inactive one (a rollback: it
    /// is activated, not rewritten) or the booted one (it runs: nothing to
    /// do). Either way the image need not be fetched.
    fn holds(&self, resource: &Resource) -> bool {
        let Ok(fw) = self.fw.as_ref() else {
            return false;
        };
        fw.install(resource.content)
            .is_ok_and(|install| install.holds())
            || self.runs(fw, resource.content).unwrap_or(false)
    }

    fn undo_blobs(&self, _undo: &Value) -> Vec<Sha256> {
        Vec::new()
    }
}
