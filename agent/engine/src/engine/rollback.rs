//! Rolling back to an earlier generation.

use super::*;

impl Engine {
    /// The generation a rollback to `to` (default: the previous one) would
    /// switch to, or why there is none.
    pub fn rollback_target(&self, to: Option<u64>) -> Result<GenerationRow> {
        let current = self.db.current_generation()?.ok_or_else(|| {
            EngineError::Refused("no generation is active; nothing to roll back".into())
        })?;
        let target = match to {
            Some(n) => n,
            None => self.db.previous_generation()?.ok_or_else(|| {
                EngineError::Refused("no previous generation to roll back to".into())
            })?,
        };
        if target == current {
            return Err(EngineError::Refused(format!(
                "generation {target} is already current"
            )));
        }
        self.db.generation(target)?.ok_or_else(|| {
            EngineError::Refused(format!("generation {target} does not exist (collected?)"))
        })
    }

    /// Switches back to generation `to` (default: the previous one);
    /// `actor` is who asked (an operator, or the health gate of a
    /// reconcile).
    pub fn rollback(&mut self, to: Option<u64>, actor: &str) -> Result<ApplyOutcome> {
        self.refuse_while_reboot_pending()?;
        let row = self.rollback_target(to)?;
        let target = row.id;
        let current = self
            .db
            .current_generation()?
            .expect("a rollback target implies a current generation");
        let desired = self.db.resources(target)?;
        let p = plan(&desired, &self.db.resources(current)?);
        // Firmware comes back from the slot that still holds it (verified
        // by reading it back) or from the store: a slot whose image no
        // longer verifies is never switched to.
        for r in p.steps.iter().filter_map(|s| s.to.as_ref()) {
            if r.kind == Kind::Firmware
                && !self.store.contains(&r.content.sha256)
                && !self.activators.get(r.kind).is_ok_and(|a| a.holds(r))
            {
                return Err(EngineError::Refused(format!(
                    "generation {target} runs firmware {} {}, which no slot holds intact any more (read back, it does not verify) and the store does not keep: not switching to it; `ferry verify --firmware` names the slot",
                    r.name,
                    r.settings
                        .get("version")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                )));
            }
        }
        let mut details = plan_summary(&p);
        details["by"] = json!(actor);
        let mut t = self.db.with_tx(|tx| {
            Db::insert_transition(
                tx,
                TransitionKind::Rollback,
                Some(current),
                Some(target),
                Some(&row.revision),
                actor,
                &details,
            )
        })?;
        fail_point!(fp::PLANNED);
        let staged = (|| {
            self.advance(&mut t, Phase::Staging, None)?;
            for r in p.steps.iter().filter_map(|s| s.to.as_ref()) {
                let in_place = || self.activators.get(r.kind).is_ok_and(|a| a.holds(r));
                if !self.store.contains(&r.content.sha256) && !in_place() {
                    return Err(crate::store::StoreError::Missing(r.content.sha256).into());
                }
            }
            if self.gens.read_manifest(target).is_err() {
                // Rebuild a damaged directory from the database (same content).
                let m = GenerationManifest {
                    generation: target,
                    revision: row.revision.clone(),
                    source: row.source.clone(),
                    resources: desired.clone(),
                };
                self.gens.build(&m).map_err(|e| {
                    EngineError::io("cannot rebuild generation", self.gens.path(target), e)
                })?;
            }
            self.advance(&mut t, Phase::Staged, None)
        })();
        self.complete(t, &p, staged)
    }

    /// Remembers the revision of a firmware update that was rolled back
    /// after the reboot, so that it is not applied again.
    pub(super) fn reject_rolled_back(&mut self, t: &TransitionRow, reason: &str) -> Result<()> {
        match t.revision.clone() {
            Some(revision) => {
                let actor = t.actor.clone();
                self.reject_revision(&revision, &actor, reason)
            }
            None => Ok(()),
        }
    }

    // ---- gc -----------------------------------------------------------------------------
}
