//! A build without delta updates (cargo feature `delta` left out): a
//! resource that offers a chunk index (`chunks:`) is fetched whole, and the
//! audit says why, so a fleet can serve lean and full devices from one
//! repository.

use ferry_core::Resource;
use ferry_source::VerifiedRevision;

use super::apply::DeltaOutcome;
use super::{Engine, Result};
use crate::config::Config;
use crate::render::manifest::{DeltaRef, ResolvedManifest};

/// Why a chunk index was not used, for the audit.
fn not_built_in() -> DeltaOutcome {
    DeltaOutcome::Fallback(crate::config::built_without(
        crate::config::DELTA_UPDATES,
        "delta",
    ))
}

/// Without delta updates a plan shows no delta download.
pub fn estimate_deltas(
    _: &Config,
    _: Option<&Engine>,
    _: &mut crate::render::report::PlanReport,
    _: &ferry_core::Plan,
    _: &dyn VerifiedRevision,
    _: &ResolvedManifest,
) {
}

impl Engine {
    pub(super) fn stage_blob_delta(
        &mut self,
        _: &dyn VerifiedRevision,
        _: &ferry_core::RepoPath,
        _: &Resource,
        _: Option<&Resource>,
        _: &DeltaRef,
    ) -> Result<DeltaOutcome> {
        Ok(not_built_in())
    }

    pub(super) fn stage_firmware_delta(
        &mut self,
        _: &dyn VerifiedRevision,
        _: &Resource,
        _: &DeltaRef,
    ) -> Result<DeltaOutcome> {
        Ok(not_built_in())
    }
}
