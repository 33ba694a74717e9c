//! `ferry verify`: every managed resource checked in full against what
//! ferry installed, and with `--firmware` a read-back of each slot that
//! holds an image ferry recorded, rate-bounded so a gateway keeps serving.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use ferry_core::{ContentRef, DriftPolicy, Resource};

/// What `ferry verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Resources and slots checked.
    pub checked: usize,
    /// Bytes read (store blobs and slots; files are read whole).
    pub bytes: u64,
    /// One entry per mismatch: what, where and how (never secret content).
    pub problems: Vec<Value>,
}

/// What the full check of the managed files found: drift by path, and
/// what it verified (for the checks cache).
#[derive(Default)]
struct FilesChecked {
    drift: HashMap<String, Vec<ferry_core::Drift>>,
    record: Vec<(String, crate::store::state::FileCheck)>,
}

/// Reads at most `rate` bytes per second (none: unbounded).
struct Throttled<R> {
    inner: R,
    rate: Option<u64>,
    start: Instant,
    read: u64,
}

impl<R: Read> Read for Throttled<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.read as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads `src` to its end at most `rate` bytes per second, verified against
/// `content`; the bytes read, or why it does not verify.
fn read_back(
    src: impl Read,
    content: ContentRef,
    what: &str,
    rate: Option<u64>,
) -> std::result::Result<u64, String> {
    let throttled = Throttled {
        inner: src,
        rate,
        start: Instant::now(),
        read: 0,
    };
    let mut reader = crate::store::VerifyingReader::new(throttled, content, what.to_owned());
    std::io::copy(&mut reader, &mut std::io::sink())
        .map_err(|e| crate::store::store_error(what, e).to_string())
}

impl Engine {
    /// Checks every resource of the current generation in full (files:
    /// content, mode, owner and type, ignoring what earlier checks
    /// remembered; rule sets and WASM modules: their blob in the store,
    /// read back), and with `firmware` every slot holding an image ferry
    /// recorded. `rate`: bytes per second for the large reads.
    pub fn verify(&self, firmware: bool, rate: Option<u64>) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let actual = self.actual()?;
        let known = Arc::new(self.db.file_checks()?);
        let running = self.running_drift(&actual)?;
        let mut files = self.verify_files(&actual, &known, rate)?;
        for r in actual.iter() {
            report.checked += 1;
            match r.kind {
                Kind::File => {
                    let drift = files.drift.remove(&r.name).unwrap_or_default();
                    if !drift.is_empty() {
                        report.problems.push(json!({
                            "kind": r.kind.as_str(),
                            "resource": r.name,
                            "policy": DriftPolicy::of(r, self.config.agent.drift).as_str(),
                            "problem": drift.iter().map(|d| d.describe(r.secret)).collect::<Vec<_>>().join(", "),
                            "drift": drift.iter().map(|d| d.audit(r.secret)).collect::<Vec<_>>(),
                        }));
                    }
                }
                Kind::Ruleset | Kind::Wasm => {
                    let path = self.store.path(&r.content.sha256);
                    let checked = std::fs::File::open(&path)
                        .map_err(|e| e.to_string())
                        .and_then(|f| {
                            let what = format!("{} in the store", r.id());
                            read_back(f, r.content, &what, rate)
                        });
                    match checked {
                        Ok(n) => report.bytes += n,
                        Err(e) => report.problems.push(json!({
                            "kind": r.kind.as_str(),
                            "resource": r.name,
                            "problem": format!("its blob {} does not verify: {e}", path.display()),
                        })),
                    }
                    if let Some(d) = &running {
                        report.problems.push(json!({
                            "kind": r.kind.as_str(),
                            "resource": r.name,
                            "problem": d.describe(false),
                            "drift": [d.audit(false)],
                        }));
                    }
                }
                // The slots are read with --firmware; the boot side always.
                Kind::Firmware => {
                    let drift = self.boot_drift(r)?;
                    if !drift.is_empty() {
                        report.problems.push(json!({
                            "kind": r.kind.as_str(),
                            "resource": r.name,
                            "problem": drift.iter().map(|d| d.describe(false)).collect::<Vec<_>>().join("; "),
                            "drift": drift.iter().map(|d| d.audit(false)).collect::<Vec<_>>(),
                        }));
                    }
                }
            }
        }
        let checks = crate::activate::FileChecks {
            known,
            record: files.record,
        };
        self.save_checks(&checks, &actual);
        if firmware {
            self.verify_slots(&mut report, rate)?;
        }
        Ok(report)
    }

    /// Reads and hashes every managed file of `actual`, split over the
    /// machine's cores (at most four) unless `rate` bounds the reads, in
    /// which case one thread does it: a full check costs about what hashing
    /// the bytes once on one core does (integration/bench/README.md).
    fn verify_files(
        &self,
        actual: &ResourceSet,
        known: &Arc<HashMap<String, crate::store::state::FileCheck>>,
        rate: Option<u64>,
    ) -> Result<FilesChecked> {
        let files: Vec<&Resource> = actual.iter().filter(|r| r.kind == Kind::File).collect();
        let mut out = FilesChecked::default();
        if files.is_empty() {
            return Ok(out);
        }
        let act = self
            .activators
            .get(Kind::File)
            .map_err(|e| EngineError::Refused(e.to_string()))?;
        let threads = match rate {
            Some(_) => 1,
            None => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        };
        // Contiguous parts: files of one directory (sorted by path) mostly
        // land in one part, which opens that directory once.
        let part = files.len().div_ceil(threads);
        let check = |part: &[&Resource]| {
            let mut pass = crate::activate::DriftPass::default();
            pass.checks.known = Arc::clone(known);
            let mut found = Vec::new();
            for r in part {
                let drift = act
                    .drift(r, &mut pass, true)
                    .map_err(|e| EngineError::Refused(format!("verifying {}: {e}", r.id())))?;
                if !drift.is_empty() {
                    found.push((r.name.clone(), drift));
                }
            }
            Ok::<_, EngineError>((found, pass.checks.record))
        };
        let parts: Vec<Result<_>> = std::thread::scope(|s| {
            let handles: Vec<_> = files
                .chunks(part)
                .map(|p| s.spawn(move || check(p)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        for p in parts {
            let (found, mut record) = p?;
            out.drift.extend(found);
            out.record.append(&mut record);
        }
        Ok(out)
    }

    /// Reads back each slot that holds an image ferry recorded (the one it
    /// last wrote there; for the booted slot, the current generation's).
    fn verify_slots(&self, report: &mut VerifyReport, rate: Option<u64>) -> Result<()> {
        let Some(fw) = crate::activate::firmware::Firmware::from_config(&self.config.firmware)?
        else {
            return Err(crate::config::ConfigError::Invalid {
                key: "firmware.bootenv",
                message: "--firmware needs a [firmware] section in ferry.toml".to_owned(),
            }
            .into());
        };
        let installs = self.db.firmware_activations()?;
        let booted = fw.booted().ok();
        let firmware_of = |generation: Option<u64>| -> Result<Option<Resource>> {
            Ok(match generation {
                Some(n) => self
                    .db
                    .resources(n)?
                    .iter()
                    .find(|r| r.kind == Kind::Firmware)
                    .cloned(),
                None => None,
            })
        };
        let current_fw = firmware_of(self.db.current_generation()?)?;
        // The rollback target: what the previous generation runs, when it
        // is not what runs now.
        let previous_fw = firmware_of(self.db.previous_generation()?)?
            .filter(|p| current_fw.as_ref().is_none_or(|c| c.content != p.content));
        let label = |r: &Resource| {
            let version = r.settings.get("version").and_then(Value::as_str);
            format!("{} {}", r.name, version.unwrap_or_default())
        };
        // A firmware switch waiting for its reboot: the current generation's
        // image is in the other slot, the booted one runs the previous.
        let (current_fw, previous_fw) = if self.pending_switch()?.is_some() {
            (previous_fw, current_fw)
        } else {
            (current_fw, previous_fw)
        };
        for slot in &fw.slots {
            let is_booted = booted.as_deref() == Some(slot.name.as_str());
            let recorded = super::firmware::running_image(&installs, &slot.name)
                .map(|c| (format!("image {}…", &c.sha256.to_hex()[..12]), c));
            let expected = match (&current_fw, &previous_fw) {
                (Some(r), _) if is_booted => Some((label(r), r.content)),
                _ if recorded.is_some() => recorded,
                (_, Some(p)) if !is_booted => Some((label(p), p.content)),
                _ => None,
            };
            let Some((name, content)) = expected else {
                continue;
            };
            report.checked += 1;
            let checked = std::fs::File::open(&slot.device)
                .map_err(|e| format!("opening {}: {e}", slot.device.display()))
                .and_then(|f| {
                    let what = format!("slot {} read back", slot.name);
                    read_back(f.take(content.length), content, &what, rate)
                });
            match checked {
                Ok(n) => report.bytes += n,
                Err(e) => report.problems.push(json!({
                    "kind": "firmware",
                    "resource": name,
                    "slot": slot.name,
                    "booted": booted.as_deref() == Some(slot.name.as_str()),
                    "problem": format!("slot {} ({}) no longer holds it: {e}", slot.name, slot.device.display()),
                })),
            }
        }
        Ok(())
    }
}
