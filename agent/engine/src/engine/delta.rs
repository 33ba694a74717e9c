//! Firmware by delta: the image is built straight in the inactive slot from
//! the chunks the device holds (the running slot, what an interrupted
//! earlier attempt wrote) and the chunks fetched from the store; no full
//! copy is staged. docs/delta.md.
//!
//! It runs the first four steps of the one install sequence
//! ([`crate::activate::firmware::install`]): fallback check → mark the
//! inactive slot bad → write (chunk by chunk, each verified against the
//! signed index, after a resume marker so that an interrupted write
//! resumes) → verify the whole slot against the signed sha256. The
//! activator then finds the slot holding the image and only switches.
//!
//! What cannot be delivered by delta (no index reachable, a chunk store
//! that is down or serves bad chunks) falls back to the full download.

use crate::activate::firmware::slot::Slot as _;
use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;

use ferry_core::{ContentRef, Resource};

use crate::config::Config;
use ferry_delta::{AssembleError, ChunkIndex, Report, Seed};

use super::apply::DeltaOutcome;
use super::firmware::running_image;
use super::*;
use crate::fetch::delta::{chunk_timeouts, delta_index};
use crate::render::manifest::DeltaRef;

/// Fills in the delta download of each plan step that has a chunk index.
/// `engine`: the device's state (absent before the first apply).
pub fn estimate_deltas(
    config: &Config,
    engine: Option<&Engine>,
    report: &mut crate::render::report::PlanReport,
    plan: &ferry_core::Plan,
    rev: &dyn VerifiedRevision,
    desired: &ResolvedManifest,
) {
    for (step, shown) in plan.steps.iter().zip(report.steps.iter_mut()) {
        let (Some(r), Some(download)) = (&step.to, shown.download.as_mut()) else {
            continue;
        };
        let Some(delta) = desired.deltas.get(&r.id()) else {
            continue;
        };
        download.delta = match r.kind {
            ferry_core::Kind::Firmware => delta_estimate(config, engine, rev, delta, r),
            _ => blob_estimate(engine, rev, step.from.as_ref(), delta, r),
        };
    }
}

/// The bytes a delta would download (missing chunks plus the index),
/// without changing anything. `None` without firmware or a usable index.
fn delta_estimate(
    config: &Config,
    engine: Option<&Engine>,
    rev: &dyn VerifiedRevision,
    delta: &DeltaRef,
    r: &Resource,
) -> Option<u64> {
    let fw = crate::activate::firmware::Firmware::from_config(&config.firmware)
        .ok()
        .flatten()?;
    let (index, bytes, _) = delta_index(rev, delta, r.content.length).ok()?;
    let booted = fw.booted().ok()?;
    let slot = crate::activate::firmware::slot::find(&fw.slots, &booted)?;
    let installs = engine
        .and_then(|e| e.db.firmware_activations().ok())
        .unwrap_or_default();
    let have: std::collections::HashSet<ferry_core::Sha256> =
        match cached_seed(&config.state_dir, &installs, &booted, &index) {
            Some(cached) => cached.chunks.iter().map(|c| c.sha256).collect(),
            None => {
                let file = File::open(&slot.device).ok()?;
                let limit = running_image_length(&installs, &booted, slot);
                Seed::scan("running slot", &file, &index.chunker, limit)
                    .ok()?
                    .1
                    .iter()
                    .map(|c| c.sha256)
                    .collect()
            }
        };
    let (missing, _) = index.missing_bytes(|sha| have.contains(sha));
    Some(missing + bytes.len() as u64)
}

/// The bytes a delta of a store blob (a WASM module) would download,
/// seeded by the version it replaces.
fn blob_estimate(
    engine: Option<&Engine>,
    rev: &dyn VerifiedRevision,
    from: Option<&Resource>,
    delta: &DeltaRef,
    r: &Resource,
) -> Option<u64> {
    let (index, bytes, _) = delta_index(rev, delta, r.content.length).ok()?;
    let have: std::collections::HashSet<ferry_core::Sha256> = match (engine, from) {
        (Some(e), Some(f)) if e.store.contains(&f.content.sha256) => {
            let file = File::open(e.store.path(&f.content.sha256)).ok()?;
            Seed::scan("previous version", &file, &index.chunker, f.content.length)
                .ok()?
                .1
                .iter()
                .map(|c| c.sha256)
                .collect()
        }
        _ => Default::default(),
    };
    let (missing, _) = index.missing_bytes(|sha| have.contains(sha));
    Some(missing + bytes.len() as u64)
}

/// The image length in the running slot, if the state knows it, else the
/// slot's capacity.
fn running_image_length(
    installs: &[(Phase, Value, Value)],
    booted: &str,
    slot: &crate::config::SlotConfig,
) -> u64 {
    running_image(installs, booted)
        .map(|c| c.length)
        .or_else(|| slot.capacity().ok())
        .unwrap_or(u64::MAX)
}

/// The cached index of the image in `slot` (kept from when ferry wrote or
/// read it), if it was chunked with `index`'s parameters.
fn cached_seed(
    state_dir: &std::path::Path,
    installs: &[(Phase, Value, Value)],
    slot: &str,
    index: &ChunkIndex,
) -> Option<ChunkIndex> {
    let image = running_image(installs, slot)?;
    let path = state_dir
        .join("delta")
        .join(format!("{}.chunks", image.sha256));
    let cached = ChunkIndex::parse(&fs::read(path).ok()?, "cached index").ok()?;
    (cached.image == image && cached.chunker == index.chunker).then_some(cached)
}

impl Engine {
    fn delta_dir(&self) -> Result<PathBuf> {
        let dir = self.state_dir.join("delta");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| EngineError::io("cannot create", &dir, e))?;
        Ok(dir)
    }

    /// Stages resource `r` (a WASM module) by delta into the store, seeded
    /// by the version it replaces (`from`, when the store holds it).
    pub(super) fn stage_blob_delta(
        &mut self,
        rev: &dyn VerifiedRevision,
        path: &ferry_core::RepoPath,
        r: &Resource,
        from: Option<&Resource>,
        delta: &DeltaRef,
    ) -> Result<DeltaOutcome> {
        let (index, index_bytes, store_url) = match delta_index(rev, delta, r.content.length) {
            Ok(x) => x,
            Err(reason) => return Ok(DeltaOutcome::Fallback(reason)),
        };
        if index.image != r.content {
            return Ok(DeltaOutcome::Fallback(format!(
                "{}: describes {}, the resource is {}",
                delta.index_path, index.image, r.content
            )));
        }
        let store = match ferry_delta::Remote::new(&store_url, chunk_timeouts(&self.config)) {
            Ok(s) => s,
            Err(reason) => return Ok(DeltaOutcome::Fallback(reason)),
        };
        let dir = self.delta_dir()?;
        let old = from
            .filter(|f| self.store.contains(&f.content.sha256))
            .and_then(|f| {
                File::open(self.store.path(&f.content.sha256))
                    .ok()
                    .map(|file| (f, file))
            });
        let mut seeds = Vec::new();
        if let Some((f, file)) = &old {
            let (seed, _) = Seed::scan("previous version", file, &index.chunker, f.content.length)
                .map_err(|e| {
                    EngineError::io("cannot read", self.store.path(&f.content.sha256), e)
                })?;
            seeds.push(seed);
        }
        // Assembled beside the state, then put into the store (verified
        // again while copied): modules are small.
        let scratch = dir.join(format!("{}.partial", r.content.sha256));
        let resume = scratch.exists();
        let out = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&scratch)
            .map_err(|e| EngineError::io("cannot write", &scratch, e))?;
        let what = format!("{} (by delta)", r.id());
        let report = match ferry_delta::assemble(
            &index,
            r.content,
            &seeds,
            &store,
            &out,
            &what,
            resume,
            &mut |_| {},
        ) {
            Ok(report) => report,
            Err(e) if e.full_download_may_help() => {
                tracing::warn!(error = %e, resource = %r.id(), "delta failed; fetching in full");
                let _ = fs::remove_file(&scratch);
                return Ok(DeltaOutcome::Fallback(e.to_string()));
            }
            Err(AssembleError::Io { source, .. }) => {
                return Err(EngineError::io("cannot assemble", &scratch, source));
            }
            Err(e) => unreachable!("{e}"),
        };
        out.set_len(r.content.length)
            .map_err(|e| EngineError::io("cannot truncate", &scratch, e))?;
        drop(out);
        let assembled =
            File::open(&scratch).map_err(|e| EngineError::io("cannot read", &scratch, e))?;
        // Held to the address the revision signed for the module's path.
        let mut src = rev.verified_from(path, Box::new(assembled), r.content)?;
        super::apply::as_planned(&src, r, &what)?;
        self.store.put(&mut src, &what)?;
        let _ = fs::remove_file(&scratch);
        let mut details = audit_details(r, delta, &store_url, &report, index_bytes.len(), resume);
        details["resource"] = json!(r.id().to_string());
        Ok(DeltaOutcome::Done(details))
    }

    /// Stages firmware resource `r` by delta into the inactive slot.
    pub(super) fn stage_firmware_delta(
        &mut self,
        rev: &dyn VerifiedRevision,
        r: &Resource,
        delta: &DeltaRef,
    ) -> Result<DeltaOutcome> {
        let Some(fw) = crate::activate::firmware::Firmware::from_config(&self.config.firmware)?
        else {
            return Ok(DeltaOutcome::Fallback(
                "[firmware] is not configured".to_owned(),
            ));
        };
        let install = fw.install(r.content)?;
        let (booted, slot) = (install.booted.clone(), install.slot.clone());
        // 1. The fallback check, before anything is fetched.
        install.check(&fw.env.load()?)?;
        if install.holds() {
            tracing::info!(slot = %slot.name, "slot holds the image already");
            return Ok(DeltaOutcome::Done(
                json!({"slot": slot.name, "in_place": true}),
            ));
        }
        let (index, index_bytes, store_url) = match delta_index(rev, delta, r.content.length) {
            Ok(x) => x,
            Err(reason) => return Ok(DeltaOutcome::Fallback(reason)),
        };
        if index.image != r.content {
            return Ok(DeltaOutcome::Fallback(format!(
                "{}: describes image {}, the resource is {}",
                delta.index_path, index.image, r.content
            )));
        }
        let store = match ferry_delta::Remote::new(&store_url, chunk_timeouts(&self.config)) {
            Ok(s) => s,
            Err(reason) => return Ok(DeltaOutcome::Fallback(reason)),
        };
        let dir = self.delta_dir()?;
        // Seed: the running slot, by its cached index or by reading it.
        let running = crate::activate::firmware::slot::find(&fw.slots, &booted)
            .expect("the booted slot is configured")
            .clone();
        let seed_file = File::open(&running.device)
            .map_err(|e| EngineError::io("cannot open the running slot", &running.device, e))?;
        let installs = self.db.firmware_activations()?;
        let seed = match cached_seed(&self.state_dir, &installs, &booted, &index) {
            Some(cached) => Seed::from_index(format!("slot {booted}"), &seed_file, &cached),
            None => {
                let limit = running_image_length(&installs, &booted, &running);
                let (seed, chunks) =
                    Seed::scan(format!("slot {booted}"), &seed_file, &index.chunker, limit)
                        .map_err(|e| {
                            EngineError::io("cannot read the running slot", &running.device, e)
                        })?;
                if let Some(image) = running_image(&installs, &booted)
                    && chunks.iter().map(|c| u64::from(c.length)).sum::<u64>() == image.length
                {
                    write_cache(&dir, &index, image, chunks);
                }
                seed
            }
        };
        // 2. Invalidate the slot.
        install.invalidate()?;
        fail_point!(fp::DELTA_INVALIDATED);
        // The resume marker: the slot may hold chunks of this image.
        let marker = dir.join(format!("{}.{}.partial", r.content.sha256, slot.name));
        let resume = marker.exists();
        if !resume {
            File::create(&marker)
                .and_then(|f| f.sync_all())
                .and_then(|()| ferry_fs::fsync_dir(&dir))
                .map_err(|e| EngineError::io("cannot write", &marker, e))?;
        }
        // 3. Write: the chunks placed in the open slot.
        let out = install.open()?;
        tracing::info!(slot = %slot.name, chunks = index.chunks.len(), store = %store_url, resume, "firmware: slot marked bad, writing the image by delta");
        let mut after = |_: &Report| {
            fail_point!(fp::DELTA_CHUNK);
        };
        let result = ferry_delta::assemble(
            &index,
            r.content,
            &[seed],
            &store,
            out.file(),
            &format!("slot {}", slot.name),
            resume,
            &mut after,
        );
        let report = match result {
            Ok(report) => report,
            Err(e) if e.full_download_may_help() => {
                tracing::warn!(error = %e, "delta update failed; fetching the full image");
                return Ok(DeltaOutcome::Fallback(e.to_string()));
            }
            Err(AssembleError::Io { what, source }) => {
                return Err(EngineError::Firmware(
                    crate::activate::firmware::FirmwareError::Slot {
                        slot: slot.name.clone(),
                        message: format!("{what}: {source}"),
                    },
                ));
            }
            Err(e) => unreachable!("{e}"),
        };
        // 4. Read back: what the device holds, not what was sent to it.
        out.finish()?;
        fail_point!(fp::DELTA_WRITTEN);
        // The written image's index seeds the next update once it runs.
        save_cache(&dir, &index);
        let keep = [
            format!("{}.chunks", r.content.sha256),
            running_image(&installs, &booted)
                .map(|c| format!("{}.chunks", c.sha256))
                .unwrap_or_default(),
        ];
        prune(&dir, &keep);
        let mut details = audit_details(r, delta, &store_url, &report, index_bytes.len(), resume);
        tracing::info!(slot = %slot.name, %details, "firmware written by delta");
        details["slot"] = json!(slot.name);
        Ok(DeltaOutcome::Done(details))
    }
}

/// The `delta` audit entry of a delta that built `r`: bytes fetched (the
/// index included) and reused, chunk counts, whether it resumed.
fn audit_details(
    r: &Resource,
    delta: &DeltaRef,
    store_url: &str,
    report: &Report,
    index_bytes: usize,
    resume: bool,
) -> Value {
    json!({
        "index": delta.index_path.as_str(),
        "store": store_url,
        "image_bytes": r.content.length,
        "bytes_fetched": report.bytes_fetched + index_bytes as u64,
        "bytes_reused": report.bytes_reused + report.bytes_in_place,
        "chunks": report.chunks,
        "chunks_fetched": report.fetched,
        "chunks_reused": report.reused + report.in_place,
        "resumed": resume,
    })
}

/// Caches the index of the running slot's image (chunked now).
fn write_cache(
    dir: &std::path::Path,
    index: &ChunkIndex,
    image: ContentRef,
    chunks: Vec<ferry_delta::Chunk>,
) {
    let cached = ChunkIndex {
        format: index.format.clone(),
        chunker: index.chunker.clone(),
        image,
        compression: index.compression.clone(),
        chunks: chunks
            .into_iter()
            .map(|mut c| {
                // A cache of what a slot holds has no store; keep the index valid.
                c.stored = c.length;
                c
            })
            .collect(),
    };
    if cached.check().is_ok() {
        save_cache(dir, &cached);
    }
}

/// Writes `index` as `<image sha256>.chunks` (plain JSON, streamed: no
/// copy of it in memory). A cache: failing to write it costs only time.
fn save_cache(dir: &std::path::Path, index: &ChunkIndex) {
    let name = format!("{}.chunks", index.image.sha256);
    let written = ferry_fs::Dir::open(dir).and_then(|d| {
        let mut tmp = d.temp_file(std::ffi::OsStr::new(&name))?;
        let mut w = std::io::BufWriter::new(tmp.file());
        serde_json::to_writer(&mut w, index)?;
        std::io::Write::flush(&mut w)?;
        drop(w);
        tmp.commit(std::ffi::OsStr::new(&name), ferry_fs::FileMode::perm(0o600))
    });
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot cache the chunk index; the next update reads the slot again");
    }
}

/// Removes cached indexes and resume markers other than `keep`.
fn prune(dir: &std::path::Path, keep: &[String]) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            let _ = fs::remove_file(e.path());
        }
    }
}
