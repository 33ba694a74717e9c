//! `recover()`: finish or undo whatever a crash interrupted.

use super::*;

impl Engine {
    /// Finishes or undoes every transition a crash left open, then removes
    /// leftovers and makes `current` agree with the database.
    pub fn recover(&mut self) -> Result<()> {
        for mut t in self.db.open_transitions()? {
            let action = t.phase.recovery(t.kind);
            // A firmware switch waiting for (or just back from) its reboot
            // was not interrupted: it is the normal follow-up.
            let waiting =
                action == RecoveryAction::Confirm && pending_firmware(&self.db, &t)?.is_some();
            if waiting {
                tracing::debug!(
                    transition = t.id,
                    "firmware transition: checking the reboot"
                );
            } else if action != RecoveryAction::Nothing {
                tracing::warn!(transition = t.id, kind = %t.kind, phase = %t.phase, ?action, "recovering interrupted transition");
            }
            match action {
                RecoveryAction::Nothing => {}
                RecoveryAction::MarkFailed => {
                    self.advance(
                        &mut t,
                        Phase::Failed,
                        Some("interrupted before activation; recovered at start"),
                    )?;
                }
                RecoveryAction::Undo => {
                    let failure = ActivateError::new(
                        format!("{} transition {}", t.kind, t.id),
                        format!("interrupted in phase {}; recovered at start", t.phase),
                    );
                    let firmware = self.firmware_records(&t)?;
                    match self.roll_back(&mut t, failure) {
                        EngineError::RolledBack { .. } => {}
                        other => return Err(other),
                    }
                    self.reboot_if_running_undone_firmware(&firmware);
                }
                RecoveryAction::Confirm if waiting => {
                    if !self.early {
                        self.firmware_followup(&mut t)?;
                    }
                }
                RecoveryAction::Confirm => {
                    let to = t.to_gen.expect("switched transitions have a target");
                    self.gens.switch(Some(to)).map_err(|e| {
                        EngineError::io("cannot switch", self.gens.current_link(), e)
                    })?;
                    self.advance(&mut t, Phase::Confirmed, None)?;
                }
                RecoveryAction::FinishGc => {
                    self.finish_gc(&mut t)?;
                }
            }
        }
        self.remove_leftovers()?;
        let want = self.db.current_generation()?;
        let link = self
            .gens
            .current()
            .map_err(|e| EngineError::io("cannot read", self.gens.current_link(), e))?;
        if link != want {
            tracing::warn!(
                ?link,
                ?want,
                "`current` disagrees with the state database; repairing"
            );
            self.gens
                .switch(want)
                .map_err(|e| EngineError::io("cannot switch", self.gens.current_link(), e))?;
            self.db.with_tx(|tx| {
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation: want,
                        event: "repaired-current",
                        actor: "ferry",
                        details: json!({"link_was": link, "now": want}),
                    },
                )
            })?;
        }
        Ok(())
    }

    /// Temp files and directories, and generation directories the database
    /// does not know (built by a transition that never reached `staged`).
    pub(super) fn remove_leftovers(&mut self) -> Result<()> {
        let (dirs, leftovers) = self
            .gens
            .list_dirs()
            .map_err(|e| EngineError::io("cannot list", self.state_dir.join("generations"), e))?;
        for l in leftovers {
            fs::remove_dir_all(&l).map_err(|e| EngineError::io("cannot remove", &l, e))?;
        }
        let known: BTreeSet<u64> = self.db.generations()?.iter().map(|g| g.id).collect();
        for n in dirs.into_iter().filter(|n| !known.contains(n)) {
            self.gens
                .remove(n)
                .map_err(|e| EngineError::io("cannot remove", self.gens.path(n), e))?;
        }
        // Partial blobs in the store stay: the next apply resumes them (and
        // verifies them whole); gc removes them.
        let _ = fs::remove_file(self.state_dir.join(".current.tmp"));
        Ok(())
    }

    // ---- bookkeeping ------------------------------------------------------------------------

    /// Taken-over paths whose original `t` restored by a remove that was
    /// not undone: they are unmanaged once `t` is confirmed.
    pub(super) fn removed_originals(&self, t: &TransitionRow) -> Result<Vec<(String, String)>> {
        Ok(self
            .db
            .activations(t.id)?
            .into_iter()
            .filter(|a| !a.undone)
            .filter_map(|a| serde_json::from_value::<Step>(a.step).ok())
            .filter(|step| step.op == Op::Remove)
            .map(|step| (step.id.kind.as_str().to_owned(), step.id.name))
            .collect())
    }
}
