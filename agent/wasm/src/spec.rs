//! What a module is allowed: its limits and capabilities, as declared by a
//! `wasm` resource (`limits:` and `capabilities:`) or by `ferry wasm run`
//! flags. Nothing is granted that is not listed here.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::WasmError;

/// Memory a module may use when its resource does not say.
pub const DEFAULT_MEMORY_MIB: u32 = 16;
/// Fuel (roughly, WebAssembly instructions) one event may burn when the
/// resource does not say.
pub const DEFAULT_FUEL_PER_EVENT: u64 = 10_000_000;
/// Largest module accepted unless the resource declares a smaller bound.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;
/// Most outputs one event may emit, and the largest one.
pub const MAX_EMITS_PER_EVENT: usize = 1024;
pub const MAX_EMIT_BYTES: usize = 1 << 20;
pub const MAX_TOPIC_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory cap in MiB (the module's memory can never grow past it).
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// CPU bound for one call (event, probe or health check), in fuel units.
    #[serde(default = "default_fuel")]
    pub fuel_per_event: u64,
    /// The module file may not be larger than this (bytes).
    #[serde(default = "default_module_bytes")]
    pub max_module_bytes: u64,
    /// Table elements cap.
    #[serde(default = "default_table_elements")]
    pub table_elements: u32,
}

fn default_memory() -> u32 {
    DEFAULT_MEMORY_MIB
}
fn default_fuel() -> u64 {
    DEFAULT_FUEL_PER_EVENT
}
fn default_module_bytes() -> u64 {
    MAX_MODULE_BYTES
}
fn default_table_elements() -> u32 {
    10_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: DEFAULT_MEMORY_MIB,
            fuel_per_event: DEFAULT_FUEL_PER_EVENT,
            max_module_bytes: MAX_MODULE_BYTES,
            table_elements: default_table_elements(),
        }
    }
}

/// A directory a module may see: `host` on the device appears as `guest`
/// inside the module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    pub host: PathBuf,
    pub guest: String,
    #[serde(default)]
    pub writable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Preopened directories. In a resource, `host` is relative to
    /// `[wasm] data_dir` (created on first use); `ferry wasm run --dir` takes
    /// any path.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
    /// Environment variables, exactly these.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whether the module may read the real wall and monotonic clocks;
    /// without it both read a fixed zero.
    #[serde(default)]
    pub clocks: bool,
}

/// A call made after instantiation to check a module before it serves:
/// `export` is called with `input` and must return 0. Modules that export
/// `ferry_health` are checked with that instead (or as well).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub export: String,
    /// Input bytes as a UTF-8 string, or hex with `hex:` in front.
    #[serde(default)]
    pub input: String,
}

impl Probe {
    pub fn input_bytes(&self) -> Result<Vec<u8>, WasmError> {
        match self.input.strip_prefix("hex:") {
            Some(h) => hex::decode(h).map_err(|e| WasmError::Spec(format!("probe.input: {e}"))),
            None => Ok(self.input.clone().into_bytes()),
        }
    }
}

/// Everything about a module except its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleSpec {
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
}

impl ModuleSpec {
    /// Reads the `limits`, `capabilities` and `probe` settings of a `wasm`
    /// resource. Errors name the setting.
    pub fn from_settings(
        settings: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Self, WasmError> {
        let mut spec = ModuleSpec::default();
        for (key, value) in settings {
            let bad = |e: serde_json::Error| WasmError::Spec(format!("{key}: {e}"));
            match key.as_str() {
                "limits" => spec.limits = serde_json::from_value(value.clone()).map_err(bad)?,
                "capabilities" => {
                    spec.capabilities = serde_json::from_value(value.clone()).map_err(bad)?
                }
                "probe" => spec.probe = serde_json::from_value(value.clone()).map_err(bad)?,
                _ => {}
            }
        }
        spec.check()?;
        Ok(spec)
    }

    /// Limits are sane; guest paths are absolute or `.`-relative names
    /// without `..`.
    pub fn check(&self) -> Result<(), WasmError> {
        let l = &self.limits;
        if l.memory_mib == 0 || l.memory_mib > 4096 {
            return Err(WasmError::Spec(format!(
                "limits.memory_mib: {} is outside 1..=4096",
                l.memory_mib
            )));
        }
        if l.fuel_per_event == 0 {
            return Err(WasmError::Spec("limits.fuel_per_event: must be > 0".into()));
        }
        for (i, d) in self.capabilities.dirs.iter().enumerate() {
            if d.guest.is_empty() || d.guest.split('/').any(|c| c == "..") {
                return Err(WasmError::Spec(format!(
                    "capabilities.dirs[{i}].guest: {:?} must be a path without '..'",
                    d.guest
                )));
            }
        }
        for k in self.capabilities.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(WasmError::Spec(format!(
                    "capabilities.env: {k:?} is not a variable name"
                )));
            }
        }
        Ok(())
    }

    /// Resolves resource-declared host directories under `data_dir`: each
    /// must be a relative path without `..` (a signed manifest cannot hand
    /// a module `/etc`). Missing directories are created (0700).
    pub fn confine_dirs(&mut self, data_dir: &Path) -> Result<(), WasmError> {
        for (i, d) in self.capabilities.dirs.iter_mut().enumerate() {
            let rel = &d.host;
            let ok = !rel.as_os_str().is_empty()
                && rel
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
            if !ok {
                return Err(WasmError::Spec(format!(
                    "capabilities.dirs[{i}].host: {} must be relative to [wasm] data_dir, without '..'",
                    rel.display()
                )));
            }
            // Walked component by component without following symlinks, and
            // created only after each parent was checked: a symlink planted
            // inside data_dir can neither lead out of it nor make ferry
            // create directories elsewhere.
            let root = ferry_fs::Dir::create(data_dir, 0o700)
                .map_err(|e| WasmError::Io(format!("{}: {e}", data_dir.display())))?;
            root.open_beneath(rel, Some(0o700)).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidInput {
                    WasmError::Spec(format!(
                        "capabilities.dirs[{i}].host: {} leads outside [wasm] data_dir: {e}",
                        rel.display()
                    ))
                } else {
                    WasmError::Io(format!("creating {}: {e}", data_dir.join(rel).display()))
                }
            })?;
            let real = data_dir
                .canonicalize()
                .map_err(|e| WasmError::Io(format!("{}: {e}", data_dir.display())))?
                .join(
                    rel.components()
                        .filter(|c| matches!(c, Component::Normal(_)))
                        .collect::<PathBuf>(),
                );
            d.host = real;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(v: serde_json::Value) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_value(v).expect("map")
    }

    #[test]
    fn defaults_and_errors_name_the_setting() {
        let s = ModuleSpec::from_settings(&BTreeMap::new()).expect("defaults");
        assert_eq!(s.limits.memory_mib, DEFAULT_MEMORY_MIB);
        assert!(s.capabilities.dirs.is_empty() && s.capabilities.env.is_empty());
        let e = ModuleSpec::from_settings(&settings(json!({"limits": {"memory_mb": 3}})))
            .expect_err("unknown key");
        assert!(
            e.to_string().contains("limits: unknown field `memory_mb`"),
            "{e}"
        );
        let e = ModuleSpec::from_settings(&settings(json!({"limits": {"memory_mib": 0}})))
            .expect_err("zero");
        assert!(e.to_string().contains("limits.memory_mib"), "{e}");
        let e = ModuleSpec::from_settings(&settings(
            json!({"capabilities": {"dirs": [{"host": "a", "guest": "../x"}]}}),
        ))
        .expect_err("guest ..");
        assert!(e.to_string().contains("capabilities.dirs[0].guest"), "{e}");
    }

    #[test]
    fn host_dirs_are_confined_to_the_data_dir() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        for bad in ["/etc", "../x", "a/../../x", ""] {
            let mut s = ModuleSpec::default();
            s.capabilities.dirs.push(DirGrant {
                host: bad.into(),
                guest: "/d".into(),
                writable: false,
            });
            let e = s.confine_dirs(&data).expect_err(bad);
            assert!(e.to_string().contains("capabilities.dirs[0].host"), "{e}");
        }
        std::os::unix::fs::symlink(tmp.path(), data.join("escape")).expect("symlink");
        let mut s = ModuleSpec::default();
        s.capabilities.dirs.push(DirGrant {
            host: "escape".into(),
            guest: "/d".into(),
            writable: false,
        });
        let e = s.confine_dirs(&data).expect_err("symlink escape");
        assert!(e.to_string().contains("leads outside"), "{e}");
        // Regression: a grant below a planted link created directories
        // outside data_dir before the escape was noticed.
        let mut s = ModuleSpec::default();
        s.capabilities.dirs.push(DirGrant {
            host: "escape/made-outside".into(),
            guest: "/d".into(),
            writable: false,
        });
        let e = s.confine_dirs(&data).expect_err("symlink escape below");
        assert!(e.to_string().contains("leads outside"), "{e}");
        assert!(!tmp.path().join("made-outside").exists());
        let mut s = ModuleSpec::default();
        s.capabilities.dirs.push(DirGrant {
            host: "decoder/state".into(),
            guest: "/state".into(),
            writable: true,
        });
        s.confine_dirs(&data).expect("inside");
        assert!(data.join("decoder/state").is_dir());
    }
}
