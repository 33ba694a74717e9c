//! Garbage collection: generations and blobs nothing keeps.

use super::*;

impl Engine {
    /// Generations that must survive GC: current, previous, pinned, and any
    /// an open transition refers to.
    pub(super) fn kept_generations(&self) -> Result<BTreeSet<u64>> {
        let mut keep = BTreeSet::new();
        keep.extend(self.db.current_generation()?);
        keep.extend(self.db.previous_generation()?);
        keep.extend(
            self.db
                .generations()?
                .iter()
                .filter(|g| g.pinned)
                .map(|g| g.id),
        );
        for t in self.db.open_transitions()? {
            keep.extend(t.from_gen);
            keep.extend(t.to_gen);
        }
        Ok(keep)
    }

    /// Blobs an activator's undo record keeps alive.
    pub(super) fn undo_blobs(&self, kind: Option<Kind>, undo: &Value) -> Vec<Sha256> {
        kind.and_then(|k| self.activators.get(k).ok())
            .map(|act| act.undo_blobs(undo))
            .unwrap_or_default()
    }

    /// Blobs referenced by surviving generations and open transitions.
    pub(super) fn referenced_blobs(
        &self,
        except_transition: Option<i64>,
    ) -> Result<BTreeSet<Sha256>> {
        let mut refs = BTreeSet::new();
        for (kind, undo) in self.db.originals()? {
            refs.extend(self.undo_blobs(kind.parse().ok(), &undo));
        }
        // Firmware images live in their slots once installed: the store keeps
        // them only while a transition that installs them is open.
        let open_gens: BTreeSet<u64> = self
            .db
            .open_transitions()?
            .iter()
            .filter(|t| Some(t.id) != except_transition && t.kind != TransitionKind::Gc)
            .flat_map(|t| t.from_gen.into_iter().chain(t.to_gen))
            .collect();
        for g in self.db.generations()? {
            refs.extend(
                self.db
                    .resources(g.id)?
                    .iter()
                    .filter(|r| r.kind != Kind::Firmware || open_gens.contains(&g.id))
                    .map(|r| r.content.sha256),
            );
        }
        for t in self.db.open_transitions()? {
            if Some(t.id) == except_transition {
                continue;
            }
            for a in self.db.activations(t.id)? {
                refs.extend(self.undo_blobs(a.kind(), &a.undo));
            }
        }
        Ok(refs)
    }

    pub fn gc(&mut self) -> Result<GcOutcome> {
        let state = &self.config.state;
        let pruned = self
            .db
            .prune(state.keep_transitions, state.keep_audit_entries)?;
        if pruned != Default::default() {
            tracing::info!(
                transitions = pruned.transitions,
                audit_entries = pruned.audit_entries,
                "pruned the state database"
            );
        }
        let keep = self.kept_generations()?;
        let collect: Vec<u64> = self
            .db
            .generations()?
            .iter()
            .map(|g| g.id)
            .filter(|g| !keep.contains(g))
            .collect();
        let referenced = self.referenced_blobs(None)?;
        let (blobs, partials) = self
            .store
            .list()
            .map_err(|e| EngineError::io("cannot list", self.store.dir(), e))?;
        // Partial fetches are never referenced; they only speed up a retry.
        for p in partials {
            let _ = fs::remove_file(p);
        }
        let garbage = blobs.iter().filter(|b| !referenced.contains(b)).count();
        if collect.is_empty() && garbage == 0 {
            return Ok(GcOutcome::default());
        }
        let current = self.db.current_generation()?;
        let details = json!({"generations": collect, "blobs": garbage});
        let mut t = self.db.with_tx(|tx| {
            Db::insert_transition(
                tx,
                TransitionKind::Gc,
                current,
                None,
                None,
                LOCAL_OPERATOR,
                &details,
            )
        })?;
        fail_point!(fp::GC_PLANNED);
        self.finish_gc(&mut t)
    }

    pub(super) fn finish_gc(&mut self, t: &mut TransitionRow) -> Result<GcOutcome> {
        if t.phase == Phase::Planned {
            self.advance(t, Phase::Activating, None)?;
        }
        let collect: Vec<u64> = t.details["generations"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let mut outcome = GcOutcome::default();
        for &g in &collect {
            self.gens
                .remove(g)
                .map_err(|e| EngineError::io("cannot remove generation", self.gens.path(g), e))?;
            self.db.with_tx(|tx| Db::delete_generation(tx, g))?;
            outcome.generations.push(g);
            fail_point!(fp::GC_AFTER_GENERATION);
        }
        let referenced = self.referenced_blobs(Some(t.id))?;
        let (blobs, leftovers) = self
            .store
            .list()
            .map_err(|e| EngineError::io("cannot list", self.store.dir(), e))?;
        for b in blobs.iter().filter(|b| !referenced.contains(b)) {
            let path = self.store.path(b);
            outcome.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            self.store
                .remove(b)
                .map_err(|e| EngineError::io("cannot remove blob", path, e))?;
            outcome.blobs += 1;
            fail_point!(fp::GC_AFTER_BLOB);
        }
        for l in leftovers {
            let _ = fs::remove_file(l);
        }
        // Compiled code of modules no longer in the store.
        #[cfg(feature = "wasm")]
        let cache = self.state_dir.join(crate::activate::wasm::CACHE_DIR);
        #[cfg(feature = "wasm")]
        if cache.is_dir() {
            let keep = referenced.iter().map(|s| s.to_hex()).collect();
            if let Err(e) = ferry_wasm::cache::retain(&cache, &keep) {
                tracing::warn!(error = %e, "gc: pruning the wasm cache failed");
            }
        }
        self.advance(t, Phase::Confirmed, None)?;
        Ok(outcome)
    }

    // ---- recovery -------------------------------------------------------------------------
}
