//! The firmware follow-up of a transition: reboots, confirmation of the
//! booted slot, and what undoing firmware needs.

use super::*;

impl Engine {
    /// The firmware undo records of `t`'s activations.
    pub(super) fn firmware_records(&self, t: &TransitionRow) -> Result<Vec<FirmwareUndo>> {
        Ok(self
            .db
            .activations(t.id)?
            .into_iter()
            .filter(|a| a.kind() == Some(Kind::Firmware))
            .filter_map(|a| serde_json::from_value(a.undo).ok())
            .collect())
    }

    /// A crash after a slot was activated, then a reboot into it, then the
    /// undo of that activation: the device runs firmware the state no longer
    /// has. The undo made the old slot boot next; reboot into it.
    pub(super) fn reboot_if_running_undone_firmware(&self, records: &[FirmwareUndo]) {
        let Ok(Some(fw)) = crate::activate::firmware::Firmware::from_config(&self.config.firmware)
        else {
            return;
        };
        let Ok(booted) = fw.booted() else {
            return;
        };
        if records
            .iter()
            .any(|r| r.target == booted && r.booted != booted)
        {
            crate::activate::health::reboot(&self.config.firmware.reboot_command);
        }
    }

    pub(crate) fn refuse_while_reboot_pending(&self) -> Result<()> {
        match self.pending_switch()? {
            Some((t, fw)) => Err(EngineError::Refused(format!(
                "transition {} waits for a reboot into firmware slot {}; reboot first",
                t.id, fw.target
            ))),
            None => Ok(()),
        }
    }

    /// The open transition whose firmware switch waits for its reboot, and
    /// what it wrote.
    pub(super) fn pending_switch(&self) -> Result<Option<(TransitionRow, FirmwareUndo)>> {
        for t in self.db.open_transitions()? {
            if let Some(fw) = pending_firmware(&self.db, &t)? {
                return Ok(Some((t, fw)));
            }
        }
        Ok(None)
    }

    /// After firmware was written: decides, from the booted slot and the
    /// health checks, whether the transition is confirmed or rolled back.
    pub(super) fn firmware_followup(&mut self, t: &mut TransitionRow) -> Result<()> {
        let pending = pending_firmware(&self.db, t)?.expect("checked by the caller");
        let fw = crate::activate::firmware::Firmware::from_config(&self.config.firmware)?
            .ok_or_else(|| {
                EngineError::Refused(
                    "a firmware transition is open but [firmware] is not configured".into(),
                )
            })?;
        if fw.boot_id()? == pending.boot_id {
            tracing::info!(transition = t.id, slot = %pending.target, "firmware written; waiting for the reboot");
            return Ok(());
        }
        let booted = fw.booted()?;
        if booted != pending.target {
            let failure = ActivateError::new(
                format!("firmware slot {}", pending.target),
                format!("the bootloader fell back to slot {booted}"),
            );
            let reason = failure.to_string();
            return match self.roll_back(t, failure) {
                EngineError::RolledBack { .. } => self.reject_rolled_back(t, &reason),
                other => Err(other),
            };
        }
        match crate::activate::health::run(&self.config.health) {
            Ok(()) => {
                fw.mark_good()?;
                let actor = t.actor.clone();
                let id = t.id;
                self.advance_with(t, Phase::Confirmed, None, |tx| {
                    Db::append_audit(
                        tx,
                        &AuditEvent {
                            generation: None,
                            event: "firmware-marked-good",
                            actor: &actor,
                            details: json!({"transition": id, "slot": booted}),
                        },
                    )
                })
            }
            Err(why) => {
                // Undo makes the old slot boot again; the reboot takes it there.
                let failure = ActivateError::new(
                    format!("firmware slot {booted}"),
                    format!("health check failed: {why}"),
                );
                let reason = failure.to_string();
                match self.roll_back(t, failure) {
                    EngineError::RolledBack { .. } => {}
                    other => return Err(other),
                }
                // Not retried: the agent would otherwise write the same
                // image again (into the good slot) before the reboot.
                self.reject_rolled_back(t, &reason)?;
                crate::activate::health::reboot(&self.config.firmware.reboot_command);
                Ok(())
            }
        }
    }

    /// After a healthy boot without a firmware update to confirm (a first
    /// boot, a reboot, a boot back into the old slot after a rollback):
    /// marks the booted slot good again, as the bootloader counted this boot
    /// as a try (GRUB `<S>_TRY=1`, U-Boot attempts). Without this the next
    /// reboot would find no bootable slot. A slot marked bad stays bad.
    /// `ferry recover` (after boot) calls it; other commands do not.
    pub fn confirm_booted_slot(&mut self) -> Result<()> {
        if self.early || !self.db.open_transitions()?.is_empty() {
            return Ok(());
        }
        let Some(fw) = crate::activate::firmware::Firmware::from_config(&self.config.firmware)?
        else {
            return Ok(());
        };
        let Ok(booted) = fw.booted() else {
            // Not booted from a slot (a development machine): nothing to confirm.
            return Ok(());
        };
        let env = fw.env.load()?;
        if !fw.scheme.state(&env, &booted).good {
            return Ok(());
        }
        let mut confirmed = env.clone();
        fw.scheme.mark_good(&mut confirmed, &booted);
        if confirmed == env {
            return Ok(());
        }
        if let Err(why) = crate::activate::health::run(&self.config.health) {
            tracing::warn!(slot = %booted, %why, "booted slot not confirmed: health check failed");
            return Ok(());
        }
        fw.mark_good()?;
        self.audit_refusal(
            "firmware-marked-good",
            "ferry",
            json!({"slot": booted, "reason": "healthy boot"}),
        )
    }

    /// Cancels a firmware switch that waits for its reboot (RAUC's
    /// `mark-active booted`): its revision is rejected first (so that no
    /// reconcile writes it again), then the transition is undone like a
    /// failed one: the boot environment as it was, the written slot marked
    /// bad, the generation before it current again. Returns the
    /// transition and the slot; `None` when nothing waits. Interrupted, the
    /// undo is finished by `recover()`.
    pub fn firmware_cancel(&mut self, actor: &str) -> Result<Option<(i64, String)>> {
        let Some((mut t, pending)) = self.pending_switch()? else {
            return Ok(None);
        };
        let fw = crate::activate::firmware::Firmware::from_config(&self.config.firmware)?
            .ok_or_else(|| {
                EngineError::Refused(
                    "a firmware transition is open but [firmware] is not configured".into(),
                )
            })?;
        if fw.boot_id()? != pending.boot_id {
            return Err(EngineError::Refused(format!(
                "the device rebooted since firmware was written into slot {}: `ferry recover` confirms or rolls back transition {}",
                pending.target, t.id
            )));
        }
        let reason = format!(
            "firmware switch to slot {} cancelled by {actor}",
            pending.target
        );
        if let Some(revision) = t.revision.clone() {
            self.reject_revision(&revision, actor, &reason)?;
        }
        fail_point!(fp::FIRMWARE_CANCEL_REJECTED);
        let failure = ActivateError::new(format!("firmware slot {}", pending.target), reason);
        match self.roll_back(&mut t, failure) {
            EngineError::RolledBack { .. } => Ok(Some((t.id, pending.target))),
            other => Err(other),
        }
    }

    /// `ferry firmware status`: the boot environment's view plus what the
    /// state knows of each slot's image and of a pending update.
    pub fn firmware_status(&self) -> Result<Option<crate::activate::firmware::FirmwareStatus>> {
        let Some(fw) = crate::activate::firmware::Firmware::from_config(&self.config.firmware)?
        else {
            return Ok(None);
        };
        let mut status = fw.status()?;
        let installs = self.db.firmware_activations()?;
        for slot in &mut status.slots {
            slot.image = firmware_image(&installs, &slot.name);
        }
        Ok(Some(status))
    }

    /// Marks the booted firmware slot good (after a healthy boot), audited
    /// when it changed anything. `None` without `[firmware]`.
    pub fn firmware_mark_good(&mut self) -> Result<Option<(String, bool)>> {
        let Some(fw) = crate::activate::firmware::Firmware::from_config(&self.config.firmware)?
        else {
            return Ok(None);
        };
        let (slot, changed) = fw.mark_good()?;
        if changed {
            self.db.with_tx(|tx| {
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation: None,
                        event: "firmware-marked-good",
                        actor: LOCAL_OPERATOR,
                        details: json!({"slot": slot}),
                    },
                )
            })?;
        }
        Ok(Some((slot, changed)))
    }
}

/// The image ferry last wrote into `slot`, from the firmware activations.
pub(super) fn running_image(
    installs: &[(Phase, Value, Value)],
    slot: &str,
) -> Option<ferry_core::ContentRef> {
    let image = firmware_image(installs, slot)?;
    let sha256 = image.sha256.parse().ok()?;
    let length = installs
        .iter()
        .rev()
        .find(|(_, _, undo)| undo["target"] == slot)
        .and_then(|(_, step, _)| step["to"]["content"]["length"].as_u64())?;
    Some(ferry_core::ContentRef { sha256, length })
}

/// The latest image written into `slot`, from the firmware activations.
pub(super) fn firmware_image(
    installs: &[(Phase, Value, Value)],
    slot: &str,
) -> Option<crate::activate::firmware::SlotImage> {
    let (phase, step, _) = installs
        .iter()
        .rev()
        .find(|(_, _, undo)| undo["target"] == slot)?;
    let to = &step["to"];
    Some(crate::activate::firmware::SlotImage {
        name: to["name"].as_str().unwrap_or_default().to_owned(),
        version: to["settings"]["version"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        sha256: to["content"]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        state: match phase {
            Phase::Confirmed => "confirmed",
            Phase::RollingBack | Phase::RolledBack | Phase::Failed => "rolled-back",
            _ => "pending",
        }
        .to_owned(),
    })
}
