//! Planning and applying a revision: fetch and verify, stage the
//! generation, activate step by step, switch; undo on failure.

use super::*;

/// A fetched revision, its desired state, the plan against the device, and
/// the drift found (restored by the plan or only reported).
pub type Planned = (
    Arc<dyn VerifiedRevision>,
    ResolvedManifest,
    Plan,
    Vec<Found>,
);

impl Engine {
    /// Fetches and resolves the desired state of `source`, and plans it
    /// against the device as it is: drift to restore is in the plan; every
    /// drift found (restored or only reported) is returned beside it.
    pub fn plan(
        &self,
        source: &dyn Source,
        revision: Option<&str>,
        facts: &Facts,
    ) -> Result<Planned> {
        let (rev, desired) = resolve_source(source, revision, facts)?;
        let actual = self.actual()?;
        let found = self.find_drift(&actual, Some(&desired.resources))?;
        let restore = super::drift::to_restore(&found);
        let p = ferry_core::plan_with_drift(&desired.resources, &actual, &restore);
        Ok((rev, desired, p, found))
    }

    // ---- apply ----------------------------------------------------------------------

    /// One reconcile: fetch, verify, plan, and if anything changed, stage,
    /// build a generation, activate and switch.
    ///
    /// A revision the source refuses (bad signatures, rollback, expiry) or
    /// whose manifest is invalid is audited; nothing else changes.
    ///
    /// This is the bare step, with no update policy, health gate or
    /// rejection check: devices reconcile through [`crate::reconcile`].
    pub fn apply(&mut self, source: &dyn Source, facts: &Facts) -> Result<ApplyOutcome> {
        let (rev, desired) = self.fetch_desired(source, facts)?;
        self.apply_desired(&*rev, &desired, LOCAL_OPERATOR)
    }

    /// Fetches, verifies and resolves the newest revision; refusals are
    /// audited (see [`Engine::apply`]).
    pub fn fetch_desired(
        &mut self,
        source: &dyn Source,
        facts: &Facts,
    ) -> Result<(Arc<dyn VerifiedRevision>, ResolvedManifest)> {
        let rev = match source.fetch() {
            Ok(rev) => rev,
            Err(e) => {
                if let Some(details) = e.audit_details() {
                    self.audit_refusal("source-refused", source.refusal_actor(), details)?;
                }
                return Err(e.into());
            }
        };
        // A verified move of the source's trust state (git: the accepted
        // commit) is audited before it is made, changes or not.
        if let Some(details) = rev.acceptance() {
            self.audit("source-accepted", rev.actor(), details)?;
            rev.accept()?;
        }
        let desired = match manifest::load(&rev, source.manifest_path(), facts) {
            Ok(d) => d,
            Err(e) => {
                let details = json!({"revision": rev.id(), "source": rev.source_name(), "error": e.to_string()});
                self.audit_refusal("revision-refused", rev.actor(), details)?;
                return Err(e.into());
            }
        };
        self.check_sigstore(&*rev, &desired)?;
        Ok((rev, desired))
    }

    /// The update policy of `rev` (the file `agent.policy` names; none: no
    /// restrictions). A policy that does not parse refuses the revision,
    /// audited as `revision-refused` like an invalid manifest.
    pub fn update_policy(
        &mut self,
        rev: &dyn VerifiedRevision,
    ) -> Result<ferry_core::agent::UpdatePolicy> {
        match crate::fetch::policy::load(rev, &self.config.agent.policy) {
            Ok(p) => Ok(p),
            Err(e) => {
                use ferry_core::Classify as _;
                if matches!(
                    e.class(),
                    ferry_core::ErrorClass::InvalidInput | ferry_core::ErrorClass::Verification
                ) {
                    let details = json!({"revision": rev.id(), "source": rev.source_name(), "policy": self.config.agent.policy, "error": e.to_string()});
                    self.audit_refusal("revision-refused", rev.actor(), details)?;
                }
                Err(e.into())
            }
        }
    }

    /// Without Sigstore built in, `[[sigstore.require]]` is refused (at
    /// load already; here too, so that no revision passes unchecked).
    #[cfg(not(feature = "sigstore"))]
    pub(super) fn check_sigstore(
        &mut self,
        _rev: &dyn VerifiedRevision,
        _desired: &ResolvedManifest,
    ) -> Result<()> {
        if self.config.sigstore.require.is_empty() {
            return Ok(());
        }
        Err(crate::config::ConfigError::not_built_in(
            "sigstore.require",
            "Sigstore verification",
            "sigstore",
        )
        .into())
    }

    /// Verifies the Sigstore bundles `[[sigstore.require]]` asks for; a
    /// refusal is audited like any refused revision, naming the resource,
    /// the bundle and the failed check.
    #[cfg(feature = "sigstore")]
    pub(super) fn check_sigstore(
        &mut self,
        rev: &dyn VerifiedRevision,
        desired: &ResolvedManifest,
    ) -> Result<()> {
        if self.config.sigstore.require.is_empty() {
            return Ok(());
        }
        let policy =
            crate::fetch::sigstore::Policy::from_config(&self.config.sigstore).map_err(|e| {
                crate::config::ConfigError::Invalid {
                    key: "sigstore",
                    message: e.to_string(),
                }
            })?;
        match policy.check(rev, desired) {
            Ok(verified) => {
                // Which identity signed, where it was logged and what
                // vouched for the time of signing, for every resource.
                for (id, v) in verified {
                    tracing::info!(resource = %id, signer = %v.signer, log_index = v.log_index, "sigstore: verified");
                    self.audit(
                        "sigstore-verified",
                        rev.actor(),
                        json!({
                            "revision": rev.id(),
                            "resource": id.to_string(),
                            "kind": v.kind,
                            "signer": v.signer,
                            "issuer": v.issuer,
                            "log": v.log,
                            "log_index": v.log_index,
                            "signed_time": v.signed_time,
                            "time_sources": v.time_sources,
                        }),
                    )?;
                }
                Ok(())
            }
            Err(crate::fetch::sigstore::CheckError::Source(e)) => {
                if e.is_revision_at_fault() {
                    let details = json!({"revision": rev.id(), "source": rev.source_name(), "error": e.to_string()});
                    self.audit_refusal("revision-refused", rev.actor(), details)?;
                }
                Err(e.into())
            }
            Err(crate::fetch::sigstore::CheckError::Refused(r)) => {
                let details = json!({
                    "revision": rev.id(),
                    "source": rev.source_name(),
                    "resource": r.resource.to_string(),
                    "bundle": r.bundle,
                    "check": r.error.check(),
                    "error": r.to_string(),
                });
                self.audit_refusal("revision-refused", rev.actor(), details)?;
                Err(ferry_source::SourceError::untrusted(
                    rev.source_name(),
                    r.resource.to_string(),
                    r.reason(),
                )
                .into())
            }
        }
    }

    /// Why `revision` was rejected (rolled back after failing its health
    /// checks), if it was.
    pub fn rejection(&self, revision: &str) -> Result<Option<Rejection>> {
        Ok(self.db.rejection(revision)?)
    }

    /// Remembers `revision` as rejected (never applied again unless an
    /// operator forces it) and audits why.
    pub fn reject_revision(&mut self, revision: &str, actor: &str, reason: &str) -> Result<()> {
        let generation = self.db.current_generation()?;
        let rejection = Rejection {
            revision: revision.to_owned(),
            time_ms: crate::store::state::now_ms(),
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        };
        self.db.with_tx(|tx| {
            Db::insert_rejection(tx, &rejection)?;
            Db::append_audit(
                tx,
                &AuditEvent {
                    generation,
                    event: "revision-rejected",
                    actor,
                    details: json!({"revision": revision, "reason": reason}),
                },
            )
        })?;
        Ok(())
    }

    /// Forgets the rejection of `revision` (an operator forced it and it
    /// proved healthy), audited as `rejection-cleared`.
    pub fn clear_rejection(&mut self, revision: &str, actor: &str) -> Result<()> {
        let generation = self.db.current_generation()?;
        self.db.with_tx(|tx| {
            if Db::delete_rejection(tx, revision)? {
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation,
                        event: "rejection-cleared",
                        actor,
                        details: json!({"revision": revision}),
                    },
                )?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Audits an operator's override of the update policy or of a
    /// rejection, before it takes effect.
    pub fn record_override(&mut self, o: &ferry_core::agent::Override, actor: &str) -> Result<()> {
        use ferry_core::agent::Override;
        let details = match o {
            Override::Hold { revision, hold } => {
                json!({"revision": revision, "overridden": "update window", "hold": hold})
            }
            Override::RebootWindow { slot } => {
                json!({"overridden": "reboot window", "slot": slot})
            }
            Override::Rejection { revision } => {
                let reason = self.db.rejection(revision)?.map(|r| r.reason);
                json!({"revision": revision, "rejected_for": reason})
            }
        };
        self.audit(o.event(), actor, details)
    }

    pub(super) fn audit_refusal(
        &mut self,
        event: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<()> {
        let generation = self.db.current_generation()?;
        self.db.with_tx(|tx| {
            Db::append_audit(
                tx,
                &AuditEvent {
                    generation,
                    event,
                    actor,
                    details,
                },
            )
        })?;
        Ok(())
    }

    /// Applies a fetched revision; `by` (the agent, an operator, a USB
    /// stick) is recorded with the transition beside its signer.
    pub fn apply_desired(
        &mut self,
        rev: &dyn VerifiedRevision,
        desired: &ResolvedManifest,
        by: &str,
    ) -> Result<ApplyOutcome> {
        self.refuse_while_reboot_pending()?;
        let from = self.db.current_generation()?;
        // The device as it is: what drifted since the current generation
        // was installed is put back (policy `restore`) with the rest.
        let actual = self.actual()?;
        let found = self.find_drift(&actual, Some(&desired.resources))?;
        let restore = self.record_drift(&found, by)?;
        let p = ferry_core::plan_with_drift(&desired.resources, &actual, &restore);
        if p.only_restores_drift() {
            return self.restore_drift(rev, desired, &p, by);
        }
        if p.is_empty() {
            // A no-change poll touches no blob and records no transition.
            return Ok(ApplyOutcome::NoChange {
                generation: from,
                revision: rev.id().to_owned(),
            });
        }
        for step in &p.steps {
            self.activators
                .get(step.id.kind)
                .map_err(|e| EngineError::Refused(e.to_string()))?;
        }
        let mut details = plan_summary(&p);
        details["by"] = json!(by);
        let mut t = self.db.with_tx(|tx| {
            let n = Db::allocate_generation(tx)?;
            Db::insert_transition(
                tx,
                TransitionKind::Apply,
                from,
                Some(n),
                Some(rev.id()),
                rev.actor(),
                &details,
            )
        })?;
        fail_point!(fp::PLANNED);
        let staged = self.stage(&mut t, rev, desired, &p);
        self.complete(t, &p, staged)
    }

    /// Puts the content of `r` into the store from the revision (resuming
    /// what an interrupted fetch left) or from its rendering; the bytes
    /// fetched from the source.
    pub(super) fn fetch_content(
        &self,
        rev: &dyn VerifiedRevision,
        desired: &ResolvedManifest,
        r: &ferry_core::Resource,
    ) -> Result<u64> {
        match desired.contents.get(&r.id()) {
            Some(Content::Source(path)) => {
                let what = format!("{path} ({})", r.id());
                // Resume what an interrupted fetch left; a partial that
                // fails verification is dropped and fetched again.
                let offset = self.store.partial_len(&r.content);
                let mut src = rev.fetch(path, offset, r.content)?;
                as_planned(&src, r, &what)?;
                match self.store.put(&mut src, &what) {
                    Err(e) if offset > 0 && e.is_verification() => {
                        tracing::warn!(blob = %r.content.sha256, error = %e, "resumed blob failed verification; fetching it again");
                        let mut again = rev.fetch(path, 0, r.content)?;
                        self.store.put(&mut again, &what)?;
                        Ok(src.bytes_read() + again.bytes_read())
                    }
                    other => {
                        other?;
                        Ok(src.bytes_read())
                    }
                }
            }
            Some(Content::Rendered(bytes)) => {
                let what = format!("rendered {}", r.id());
                let mut src = Verified::rendered(bytes);
                as_planned(&src, r, &what)?;
                self.store.put(&mut src, &what)?;
                Ok(0)
            }
            None => Err(EngineError::Refused(format!(
                "{}: the revision does not provide its content",
                r.id()
            ))),
        }
    }

    pub(super) fn stage(
        &mut self,
        t: &mut TransitionRow,
        rev: &dyn VerifiedRevision,
        desired: &ResolvedManifest,
        p: &Plan,
    ) -> Result<()> {
        self.advance(t, Phase::Staging, None)?;
        // Only what the plan installs: unchanged resources are in place (and
        // a firmware image that gc dropped is not fetched again).
        let mut deltas = Vec::new();
        let mut fetched = Fetched::default();
        for (r, from) in p
            .steps
            .iter()
            .filter_map(|s| s.to.as_ref().map(|to| (to, s.from.as_ref())))
        {
            if self.store.contains(&r.content.sha256) {
                continue;
            }
            // Firmware a generation takes over as it runs (the current one
            // manages none): a slot holds the image already, nothing to
            // fetch.
            if r.kind == ferry_core::Kind::Firmware
                && from.is_none()
                && self.activators.get(r.kind).is_ok_and(|a| a.holds(r))
            {
                continue;
            }
            if r.kind == ferry_core::Kind::Wasm
                && let Some(delta) = desired.deltas.get(&r.id())
                && let Some(Content::Source(path)) = desired.contents.get(&r.id())
            {
                match self.stage_blob_delta(rev, path, r, from, delta)? {
                    DeltaOutcome::Done(report) => {
                        deltas.push(report);
                        continue;
                    }
                    DeltaOutcome::Fallback(reason) => {
                        deltas.push(json!({"resource": r.id().to_string(), "fallback": reason}));
                    }
                }
            }
            if r.kind == ferry_core::Kind::Firmware
                && let Some(delta) = desired.deltas.get(&r.id())
            {
                match self.stage_firmware_delta(rev, r, delta)? {
                    DeltaOutcome::Done(report) => {
                        deltas.push(report);
                        continue;
                    }
                    DeltaOutcome::Fallback(reason) => {
                        deltas.push(json!({"resource": r.id().to_string(), "fallback": reason}));
                    }
                }
            }
            fetched.bytes += self.fetch_content(rev, desired, r)?;
            fetched.blobs += 1;
        }
        if fetched.blobs > 0 {
            tracing::info!(
                bytes = fetched.bytes,
                blobs = fetched.blobs,
                source = rev.source_name(),
                "fetched {} bytes in {} blobs",
                fetched.bytes,
                fetched.blobs
            );
        }
        t.details["fetched"] = json!(fetched);
        let to = t.to_gen.expect("apply transitions have a target");
        let manifest = GenerationManifest {
            generation: to,
            revision: rev.id().to_owned(),
            source: rev.source_name().to_owned(),
            resources: desired.resources.clone(),
        };
        self.gens
            .build(&manifest)
            .map_err(|e| EngineError::io("cannot build generation", self.gens.path(to), e))?;
        let new = NewGeneration {
            id: to,
            revision: rev.id(),
            source: rev.source_name(),
            resources: &desired.resources,
        };
        let actor = t.actor.clone();
        let generation = t.to_gen;
        self.advance_with(t, Phase::Staged, None, |tx| {
            Db::insert_generation(tx, &new)?;
            for details in deltas {
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation,
                        event: "delta",
                        actor: &actor,
                        details,
                    },
                )?;
            }
            Ok(())
        })
    }

    // ---- rollback -------------------------------------------------------------------

    /// The common end of apply and rollback: record a staging failure, or
    /// activate, switch and confirm.
    pub(super) fn complete(
        &mut self,
        mut t: TransitionRow,
        p: &Plan,
        staged: Result<()>,
    ) -> Result<ApplyOutcome> {
        if let Err(e) = staged {
            self.fail(&mut t, &e);
            return Err(e);
        }
        fail_point!(fp::STAGED);
        let to = t
            .to_gen
            .expect("apply and rollback transitions have a target");
        self.activate_and_switch(&mut t, p, to)?;
        if let Some(fw) = pending_firmware(&self.db, &t)? {
            return Ok(ApplyOutcome::RebootRequired {
                transition: t.id,
                from: t.from_gen,
                to,
                revision: t.revision.clone().unwrap_or_default(),
                slot: fw.target,
            });
        }
        let (added, changed, removed) = p.counts();
        Ok(ApplyOutcome::Switched {
            transition: t.id,
            from: t.from_gen,
            to,
            revision: t.revision.clone().unwrap_or_default(),
            added,
            changed,
            removed,
        })
    }

    // ---- activation and switch --------------------------------------------------------

    pub(super) fn activate_and_switch(
        &mut self,
        t: &mut TransitionRow,
        p: &Plan,
        to: u64,
    ) -> Result<()> {
        self.advance(t, Phase::Activating, None)?;
        for (seq, step) in p.steps.iter().enumerate() {
            if let Err(failure) = self.activate_step(t, seq as u64, step) {
                return Err(self.roll_back(t, failure));
            }
        }
        let from = t.from_gen;
        let previous_before = self.db.previous_generation()?;
        let seq = p.steps.len() as u64;
        let record = json!({"switch": {"from": from, "to": to, "previous": previous_before}});
        self.db
            .with_tx(|tx| Db::insert_activation(tx, t.id, seq, &record, &Value::Null))?;
        if let Err(e) = self.gens.switch(Some(to)) {
            let failure = ActivateError::new(format!("switch to generation {to}"), e);
            return Err(self.roll_back(t, failure));
        }
        let id = t.id;
        self.advance_with(t, Phase::Switched, None, |tx| {
            Db::set_current(tx, from, Some(to))?;
            Db::mark_activation(tx, id, seq, false)
        })?;
        fail_point!(fp::SWITCHED);
        if pending_firmware(&self.db, t)?.is_some() {
            // Confirmed only after the reboot into the new slot (recover()).
            return Ok(());
        }
        self.advance(t, Phase::Confirmed, None)
    }

    pub(super) fn activate_step(
        &mut self,
        t: &TransitionRow,
        seq: u64,
        step: &Step,
    ) -> Result<(), ActivateError> {
        let act = self.activators.get(step.id.kind)?;
        let undo = act.prepare(step, &self.store)?;
        let record = serde_json::to_value(step).expect("steps serialise");
        let db_err = |e: crate::store::state::StateError| ActivateError::new(&step.id, e);
        let (kind, name) = (step.id.kind.as_str(), step.id.name.as_str());
        // Removing what ferry took over restores what was there before it.
        let original = match step.op {
            Op::Remove => self.db.original(kind, name).map_err(db_err)?,
            _ => None,
        };
        self.db
            .with_tx(|tx| {
                Db::insert_activation(tx, t.id, seq, &record, &undo)?;
                if step.op == Op::Add && act.is_original(&undo) {
                    Db::insert_original(tx, kind, name, &undo)?;
                }
                Ok(())
            })
            .map_err(db_err)?;
        fail_point!(fp::ACTIVATE_BEFORE_APPLY, |_| Err(ActivateError::new(
            &step.id,
            "injected failure (failpoint activate::before-apply)"
        )));
        let notes = match &original {
            Some(original) => {
                act.undo(step, original, &self.store)?;
                Value::Null
            }
            None => act.apply_noted(step, &self.store)?,
        };
        fail_point!(fp::ACTIVATE_AFTER_APPLY);
        let installed = act.installed(step);
        let actor = t.actor.clone();
        // The `originals` row stays until the transition is confirmed: an
        // undo of this remove brings the managed content back, and a later
        // remove must again restore what the OS shipped.
        self.db
            .with_tx(|tx| {
                Db::mark_activation(tx, t.id, seq, false)?;
                if let Some((name, check)) = &installed {
                    Db::record_file_check(tx, name, check)?;
                }
                Db::append_audit(
                    tx,
                    &AuditEvent {
                        generation: t.to_gen,
                        event: if step.restores_drift() {
                            "drift-restored"
                        } else {
                            "activated"
                        },
                        actor: &actor,
                        details: {
                            let mut d = json!({"transition": t.id, "op": step.verb(), "kind": step.id.kind.as_str(), "resource": step.id.name});
                            if !notes.is_null() {
                                d["notes"] = notes.clone();
                            }
                            let secret = step.is_secret();
                            let drift: Vec<Value> = step.drift().map(|d| d.audit(secret)).collect();
                            if !drift.is_empty() {
                                d["drift"] = json!(drift);
                            }
                            d
                        },
                    },
                )
            })
            .map_err(db_err)
    }

    /// Undoes the recorded activations of `t` after `failure`.
    pub(super) fn roll_back(
        &mut self,
        t: &mut TransitionRow,
        failure: ActivateError,
    ) -> EngineError {
        let message = failure.to_string();
        if t.phase != Phase::RollingBack
            && let Err(e) = self.advance(t, Phase::RollingBack, Some(&message))
        {
            return e;
        }
        match self.undo_activations(t) {
            Ok(()) => {
                if let Err(e) = self.advance(t, Phase::RolledBack, None) {
                    return e;
                }
                let restored = match t.from_gen {
                    Some(n) => format!("generation {n}"),
                    None => "the state before any generation".to_owned(),
                };
                EngineError::RolledBack { failure, restored }
            }
            Err(undo) => EngineError::UndoFailed {
                failure: message,
                undo,
            },
        }
    }

    pub(super) fn undo_activations(&mut self, t: &TransitionRow) -> Result<(), ActivateError> {
        let rows = self
            .db
            .activations(t.id)
            .map_err(|e| ActivateError::new("rollback", e))?;
        for row in rows.iter().rev().filter(|r| !r.undone) {
            let label;
            if let Some(sw) = row.step.get("switch") {
                let from = sw["from"].as_u64();
                let previous = sw["previous"].as_u64();
                label = format!(
                    "switch back to {}",
                    from.map_or("nothing".to_owned(), |n| format!("generation {n}"))
                );
                self.gens
                    .switch(from)
                    .map_err(|e| ActivateError::new(&label, e))?;
                self.db
                    .with_tx(|tx| {
                        // Restore exactly the current/previous pair from before the switch.
                        Db::restore_current(tx, from, previous)?;
                        Db::mark_activation(tx, t.id, row.seq, true)
                    })
                    .map_err(|e| ActivateError::new(&label, e))?;
            } else {
                let step: Step = serde_json::from_value(row.step.clone()).map_err(|e| {
                    ActivateError::new("rollback", format!("activation record {}: {e}", row.seq))
                })?;
                label = step.id.to_string();
                let act = self.activators.get(step.id.kind)?;
                act.undo(&step, &row.undo, &self.store)?;
                let actor = t.actor.clone();
                self.db
                    .with_tx(|tx| {
                        if step.op == Op::Add {
                            // The take-over is undone: what is there is unmanaged again.
                            Db::delete_original(tx, step.id.kind.as_str(), &step.id.name)?;
                        }
                        Db::mark_activation(tx, t.id, row.seq, true)?;
                        Db::append_audit(
                            tx,
                            &AuditEvent {
                                generation: t.from_gen,
                                event: "undone",
                                actor: &actor,
                                details: json!({"transition": t.id, "op": step.op.as_str(), "kind": step.id.kind.as_str(), "resource": step.id.name}),
                            },
                        )
                    })
                    .map_err(|e| ActivateError::new(&label, e))?;
            }
            fail_point!(fp::UNDO_AFTER_STEP);
        }
        Ok(())
    }

    // ---- firmware ------------------------------------------------------------------
}

/// What a delta stage did.
#[derive(Debug)]
#[cfg_attr(not(feature = "delta"), allow(dead_code))]
pub(super) enum DeltaOutcome {
    /// Staged by delta (what the audit records of it).
    Done(serde_json::Value),
    /// Not delivered by delta; fetch the full image. The reason, for the audit.
    Fallback(String),
}

/// What staging read from the source into the store (the audit's `staged`
/// entry carries it): bytes through the revision's verified readers, and
/// blobs fetched or rendered. Deltas report their own bytes.
#[derive(Debug, Default, Serialize)]
struct Fetched {
    bytes: u64,
    blobs: u64,
}

/// The plan's address of `r` must be the one the revision gives for its
/// bytes (from signed metadata, as the renderer took it).
pub(super) fn as_planned(src: &Verified<'_>, r: &ferry_core::Resource, what: &str) -> Result<()> {
    if src.content() == r.content {
        Ok(())
    } else {
        Err(EngineError::Refused(format!(
            "{what}: the revision's address is {}, the plan's {}",
            src.content(),
            r.content
        )))
    }
}
