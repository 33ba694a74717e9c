//! What the engine tells without changing anything (status, generations,
//! audit), and the small operator changes (pin, time floor repair).

use super::*;

/// Audit entries, oldest first, each with its chain hash (hex).
pub type HashedEntries = Vec<(AuditEntry, String)>;

/// What the device's state says of itself, for reports that leave the
/// device (the fleet status): read from `state.db` and the boot
/// environment, nothing else.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportState {
    pub generation: Option<u64>,
    pub revision: Option<String>,
    pub generation_time_ms: Option<i64>,
    /// The firmware slots as `ferry status --json` shows them, or
    /// `{"error": …}`.
    pub firmware: Option<serde_json::Value>,
    pub audit_head: u64,
    /// Rejected revisions, newest first.
    pub rejected: Vec<String>,
    /// Managed resources changed on the device and not restored.
    pub drifted: u64,
}

impl Engine {
    /// The current generation's number and its rule sets, compiled, in
    /// name order (what the rule engine runs).
    pub fn active_rulesets(&self) -> Result<ActiveRules> {
        let base = self.config.rules.ingest()?;
        let Some(n) = self.db.current_generation()? else {
            return Ok(ActiveRules {
                ingest: base,
                ..ActiveRules::default()
            });
        };
        let resources = self.db.resources(n)?;
        let rulesets: Vec<&ferry_core::Resource> = resources
            .iter()
            .filter(|r| r.kind == Kind::Ruleset)
            .collect();
        let mut parts = vec![("ferry.toml".to_owned(), base)];
        for r in &rulesets {
            parts.push((
                format!("ruleset {}", r.name),
                crate::activate::ruleset::ingest_plan(r)?,
            ));
        }
        let ingest = ferry_ingest::Plan::merge(parts)
            .map_err(|e| crate::activate::ActivateError::new("rule sets", e))?;
        let mut sets = Vec::new();
        for r in rulesets {
            let compiled =
                crate::activate::ruleset::load(&self.store, &r.name, r.content, &ingest)?;
            sets.push((r.name.clone(), compiled));
        }
        Ok(ActiveRules {
            generation: Some(n),
            sets,
            ingest,
        })
    }

    /// The current generation's number and its `wasm` resources, in name
    /// order (what the module host serves).
    pub fn active_modules(&self) -> Result<(Option<u64>, Vec<ferry_core::Resource>)> {
        let Some(n) = self.db.current_generation()? else {
            return Ok((None, Vec::new()));
        };
        let modules = self
            .db
            .resources(n)?
            .iter()
            .filter(|r| r.kind == Kind::Wasm)
            .cloned()
            .collect();
        Ok((Some(n), modules))
    }

    // ---- planning -----------------------------------------------------------------

    /// The resources of the current generation.
    pub fn actual(&self) -> Result<ResourceSet> {
        Ok(match self.db.current_generation()? {
            Some(n) => self.db.resources(n)?,
            None => ResourceSet::new(),
        })
    }

    pub fn status(&self) -> Result<Status> {
        let current = match self.db.current_generation()? {
            Some(n) => self.db.generation(n)?,
            None => None,
        };
        Ok(Status {
            state_dir: self.state_dir.clone(),
            resources: current.as_ref().map_or(0, |g| g.resources as usize),
            current,
            previous: self.db.previous_generation()?,
            current_link: self.gens.current().ok().flatten(),
            generations: self.db.generations()?.len(),
            last_transition: self.db.last_transition()?,
            awaiting_reboot: self.pending_switch()?.map(|(_, fw)| fw.target),
            open_transitions: self.db.open_transitions()?,
            audit_entries: self.db.audit_head()?.map_or(0, |(s, _)| s),
            rejected: self.db.rejections()?,
            drift: self.db.drift()?,
        })
    }

    pub fn generations(&self) -> Result<Vec<GenerationRow>> {
        Ok(self.db.generations()?)
    }

    pub fn pin(&mut self, n: u64, pinned: bool) -> Result<()> {
        if !self.db.set_pinned(n, pinned)? {
            return Err(EngineError::Refused(format!(
                "generation {n} does not exist"
            )));
        }
        let event = if pinned { "pinned" } else { "unpinned" };
        self.db.with_tx(|tx| {
            Db::append_audit(
                tx,
                &AuditEvent {
                    generation: Some(n),
                    event,
                    actor: LOCAL_OPERATOR,
                    details: json!({}),
                },
            )
        })?;
        Ok(())
    }

    /// The device's secure time floor.
    pub fn time_floor(&self) -> Result<ferry_source::TimeFloor> {
        Ok(crate::fetch::time_floor(&self.config, &self.state_dir)?)
    }

    /// `ferry time-floor repair`: replaces a corrupt or unreadable floor with
    /// `at`, or the image's floor when `at` is `None`; audited as
    /// `time-floor-repaired` by the local operator. An intact floor is left
    /// alone (refused): lowering it would reopen expired metadata.
    pub fn repair_time_floor(&mut self, at: Option<i64>) -> Result<i64> {
        let floor = self.time_floor()?;
        let problem = match floor.stored() {
            Ok(stored) => {
                return Err(EngineError::Refused(format!(
                    "the secure time floor {} is intact ({}); nothing to repair",
                    floor.path().display(),
                    stored.map_or("none stored".to_owned(), |t| format!("{t}"))
                )));
            }
            Err(e) => e.problem,
        };
        let t = at.or(floor.baked()).ok_or_else(|| {
            EngineError::Refused(
                "the image has no time floor (source.tuf.time_floor); give the time with --at"
                    .to_owned(),
            )
        })?;
        floor
            .write(t)
            .map_err(|e| EngineError::io("writing the time floor", floor.path(), e))?;
        self.audit(
            "time-floor-repaired",
            LOCAL_OPERATOR,
            json!({"path": floor.path(), "problem": problem, "floor": t, "from_image": at.is_none()}),
        )?;
        Ok(t)
    }

    /// What the device's state says for a fleet status: the current
    /// generation, the firmware slots (a boot environment that cannot be
    /// read as its error), the audit head, the rejected revisions (newest
    /// first, at most `max_rejected`) and the drift count.
    pub fn report_state(&self, max_rejected: usize) -> Result<ReportState> {
        let current = match self.db.current_generation()? {
            Some(n) => self.db.generation(n)?,
            None => None,
        };
        let firmware = match self.firmware_status() {
            Ok(fw) => fw.and_then(|f| serde_json::to_value(f).ok()),
            Err(e) => Some(json!({"error": e.to_string()})),
        };
        Ok(ReportState {
            generation: current.as_ref().map(|g| g.id),
            revision: current.as_ref().map(|g| g.revision.clone()),
            generation_time_ms: current.as_ref().map(|g| g.created_ms),
            firmware,
            audit_head: self.db.audit_head()?.map_or(0, |(s, _)| s),
            rejected: self
                .db
                .rejections()?
                .into_iter()
                .take(max_rejected)
                .map(|r| r.revision)
                .collect(),
            drifted: self.db.drift()?.len() as u64,
        })
    }

    /// At most `limit` audit entries after seq `after`, oldest first, each
    /// with its chain hash (hex), and the hash of the entry before the
    /// first (none when the chain starts there).
    pub fn audit_after(&self, after: u64, limit: usize) -> Result<(HashedEntries, Option<String>)> {
        Ok(self.db.audit_after(after, limit)?)
    }

    pub fn audit_entries(&self) -> Result<Vec<AuditEntry>> {
        Ok(self
            .db
            .audit_entries()?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// Audit entries, oldest first, each with its chain hash (hex).
    pub fn audit_with_hashes(&self) -> Result<Vec<(AuditEntry, String)>> {
        Ok(self.db.audit_entries()?)
    }

    /// Recomputes the audit chain; returns the number of entries.
    pub fn audit_verify(&self) -> Result<u64> {
        let rows = self.db.audit_entries()?;
        // An unparseable stored hash can never match: treat it as zero.
        let hashes: Vec<Sha256> = rows
            .iter()
            .map(|(_, h)| h.parse().unwrap_or(Sha256::ZERO))
            .collect();
        let head = self
            .db
            .audit_head()?
            .map(|(seq, h)| (seq, h.parse().unwrap_or(Sha256::ZERO)));
        let base = self
            .db
            .audit_base()?
            .map(|(seq, h)| (seq, h.parse().unwrap_or(Sha256::ZERO)));
        let n = verify_chain(rows.iter().map(|(e, _)| e).zip(hashes.iter()), base, head)?;
        // The checkpoint itself is vouched for by the chain: the newest
        // `audit-pruned` entry names it.
        if let Some((seq, hash)) = base {
            let vouched = rows.iter().rev().find(|(e, _)| e.event == "audit-pruned");
            let ok = vouched.is_some_and(|(e, _)| {
                e.details["through_seq"] == seq && e.details["through_hash"] == hash.to_hex()
            });
            if !ok {
                return Err(EngineError::AuditBroken(ChainError::HashMismatch {
                    seq: seq + 1,
                }));
            }
        }
        Ok(n)
    }
}
