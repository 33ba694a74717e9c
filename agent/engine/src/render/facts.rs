//! Device facts: what templates know about the device they render for.
//!
//! Probed from the system (hostname, machine-id, architecture, os-release,
//! hardware model from the device tree or DMI, MAC addresses) and merged
//! with `/etc/ferry/facts.toml` (labels, variables, secrets; it may also
//! override probed values). `--facts FILE` replaces probing entirely, so a
//! workstation can plan for a device and tests are deterministic.

use ferry_core::{Classify, ErrorClass};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::config::FACTS_FILE;

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("facts {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("facts {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classify for FactsError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Config
    }
}

/// The facts of one device. Missing values stay missing: a template that
/// uses one fails with an undefined-variable error instead of rendering "".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `/etc/os-release`, keys lowercased (`id`, `version_id`, `pretty_name`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub os: BTreeMap<String, String>,
    /// Interface name → MAC address (loopback excluded).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub macs: BTreeMap<String, String>,
    /// Labels for selection (`match:`) and templates (`site`, `group`, `role`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Device-local variables; they override the repository's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, Value>,
    /// Device-local secrets. A file rendered with any of them is secret.
    #[serde(default, skip_serializing)]
    pub secrets: BTreeMap<String, String>,
}

impl Facts {
    /// Reads a facts file (the `--facts` format is the same as facts.toml).
    pub fn from_file(path: &Path) -> Result<Facts, FactsError> {
        let text = fs::read_to_string(path).map_err(|source| FactsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            FactsError::Invalid {
                path: path.to_path_buf(),
                message: match line {
                    Some(l) => format!("line {l}: {}", e.message()),
                    None => e.message().to_owned(),
                },
            }
        })
    }

    /// Probes this system, then applies `facts_file` if it exists.
    pub fn probe(facts_file: &Path) -> Result<Facts, FactsError> {
        let mut facts = Facts {
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            machine_id: read_trimmed("/etc/machine-id"),
            arch: Some(std::env::consts::ARCH.to_owned()),
            model: read_trimmed("/proc/device-tree/model").or_else(dmi_model),
            os: os_release(),
            macs: macs(),
            ..Facts::default()
        };
        if facts_file.exists() {
            facts.overlay(Facts::from_file(facts_file)?);
        }
        Ok(facts)
    }

    /// Values set in `other` win.
    pub fn overlay(&mut self, other: Facts) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(hostname, machine_id, arch, model);
        self.os.extend(other.os);
        self.macs.extend(other.macs);
        self.labels.extend(other.labels);
        self.vars.extend(other.vars);
        self.secrets.extend(other.secrets);
    }

    /// A selector value: a label, or one of the built-in facts.
    pub fn lookup(&self, key: &str) -> Option<&str> {
        if let Some(v) = self.labels.get(key) {
            return Some(v);
        }
        match key {
            "hostname" => self.hostname.as_deref(),
            "machine_id" => self.machine_id.as_deref(),
            "arch" => self.arch.as_deref(),
            "model" => self.model.as_deref(),
            _ => None,
        }
    }

    /// The `device` object templates see (secrets excluded).
    pub fn device_value(&self) -> Value {
        serde_json::to_value(FactsView {
            hostname: &self.hostname,
            machine_id: &self.machine_id,
            arch: &self.arch,
            model: &self.model,
            os: &self.os,
            macs: &self.macs,
            labels: &self.labels,
        })
        .expect("facts serialise")
    }
}

#[derive(Serialize)]
struct FactsView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    machine_id: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arch: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    model: &'a Option<String>,
    os: &'a BTreeMap<String, String>,
    macs: &'a BTreeMap<String, String>,
    labels: &'a BTreeMap<String, String>,
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_owned())
}

fn dmi_model() -> Option<String> {
    let product = read_trimmed("/sys/class/dmi/id/product_name")?;
    Some(match read_trimmed("/sys/class/dmi/id/sys_vendor") {
        Some(vendor) => format!("{vendor} {product}"),
        None => product,
    })
}

fn os_release() -> BTreeMap<String, String> {
    let text = fs::read_to_string("/etc/os-release")
        .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    parse_os_release(&text)
}

/// os-release(5): `KEY=value` lines, values optionally quoted.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_lowercase(), v.replace("\\\"", "\""))
        })
        .collect()
}

fn macs() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Ok(rd) = fs::read_dir("/sys/class/net") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "lo" {
                continue;
            }
            if let Some(mac) = read_trimmed(e.path().join("address")) {
                out.insert(name, mac);
            }
        }
    }
    out
}

/// Glob match for selectors ([`ferry_core::glob::selector`]): `*` any
/// run, `?` one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    ferry_core::glob::selector(pattern, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("gw-*", "gw-3000"));
        assert!(glob_match("*", ""));
        assert!(glob_match("plant-?", "plant-7"));
        assert!(!glob_match("plant-?", "plant-17"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn probing_this_system() {
        let f = Facts::probe(Path::new("/nonexistent/facts.toml")).unwrap();
        assert_eq!(f.arch.as_deref(), Some(std::env::consts::ARCH));
        let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(f.hostname.as_deref(), Some(hostname.trim()));
        assert!(!f.macs.contains_key("lo"));
        if Path::new("/etc/os-release").exists() {
            assert!(f.os.contains_key("id"), "{:?}", f.os);
        }
        assert!(f.secrets.is_empty() && f.labels.is_empty());
    }

    #[test]
    fn os_release_parsing() {
        let m = parse_os_release("NAME=\"Debian GNU/Linux\"\nID=debian\n# c\nVERSION_ID='12'\n");
        assert_eq!(m["name"], "Debian GNU/Linux");
        assert_eq!(m["id"], "debian");
        assert_eq!(m["version_id"], "12");
    }

    #[test]
    fn facts_file_errors_name_line_and_overlay_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("facts.toml");
        fs::write(&p, "hostname = \"gw\"\nbogus = 1\n").unwrap();
        let e = Facts::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("bogus"), "{e}");
        fs::write(&p, "hostname = \"gw-9\"\n[labels]\nsite = \"plant-7\"\n").unwrap();
        let mut f = Facts {
            hostname: Some("probed".into()),
            arch: Some("x86_64".into()),
            ..Facts::default()
        };
        f.overlay(Facts::from_file(&p).unwrap());
        assert_eq!(f.hostname.as_deref(), Some("gw-9"));
        assert_eq!(f.arch.as_deref(), Some("x86_64"));
        assert_eq!(f.lookup("site"), Some("plant-7"));
        assert_eq!(f.lookup("arch"), Some("x86_64"));
    }
}
