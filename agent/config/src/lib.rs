//! `ferry.toml`: layered, validated at load, errors name the file and key.
//!
//! Layers, later wins: built-in defaults → `/usr/lib/ferry/ferry.toml` →
//! `/etc/ferry/ferry.toml`. `--config FILE` replaces both files, so a test or
//! a workstation run never picks up the machine's configuration. Every key is
//! documented in `docs/configuration.md`.

use ferry_core::{Classify, ErrorClass};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const VENDOR_CONFIG: &str = "/usr/lib/ferry/ferry.toml";
pub const SYSTEM_CONFIG: &str = "/etc/ferry/ferry.toml";
/// The default device facts file.
pub const FACTS_FILE: &str = "/etc/ferry/facts.toml";

/// A setting that is one of a few names: `as_str`, `Display`, `FromStr`
/// and `Deserialize`, whose error names what it is and the names known
/// (`unknown source kind "svn" (known: tuf, git, dir)`).
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(format!(
                        concat!("unknown ", $what, " {:?} (known: {})"),
                        s,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {key}: {message}")]
    Invalid { key: &'static str, message: String },
    /// `[rules.coap]` or `[[rules.modbus]]` (the error names the key).
    #[error("config: {0}")]
    Ingest(#[from] ferry_ingest::ConfigError),
}

/// What every refusal of a part this build leaves out says: `what`, and the
/// cargo feature that brings it.
pub fn built_without(what: &str, feature: &str) -> String {
    format!(
        "this ferry is built without {what} (cargo feature `{feature}`; `ferry --version` lists what is built in)"
    )
}

impl ConfigError {
    /// `key` asks for `what`, which this build leaves out (cargo feature
    /// `feature`).
    pub fn not_built_in(key: &'static str, what: &str, feature: &str) -> ConfigError {
        ConfigError::Invalid {
            key,
            message: built_without(what, feature),
        }
    }
}

impl Classify for ConfigError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Config
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where state.db, the store and the generations live.
    pub state_dir: PathBuf,
    /// A time the device knows has passed (RFC 3339, e.g. the image build
    /// time): the secure time floor of every source starts here. (Older
    /// configurations say `source.tuf.time_floor`, which still works.)
    pub time_floor: Option<String>,
    /// Device facts file (labels, variables, secrets); see docs/manifests.md.
    pub facts: PathBuf,
    pub source: SourceConfig,
    pub files: FilesConfig,
    pub firmware: FirmwareConfig,
    pub health: HealthConfig,
    pub agent: AgentConfig,
    pub metrics: MetricsConfig,
    pub state: StateConfig,
    pub rules: RulesConfig,
    pub wasm: WasmConfig,
    pub sigstore: SigstoreConfig,
    /// `[fleet]` as written: read and checked by ferry-fleet
    /// (`ferry_fleet::settings`), which owns it.
    pub fleet: toml::Table,
}

/// `[sigstore]`: resources that must also carry a Sigstore bundle
/// (`<source>.sigstore.json` beside them in the revision), verified offline
/// (docs/sigstore.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigstoreConfig {
    /// `trusted_root.json`; default: the embedded Sigstore public-good root.
    pub trusted_root: Option<PathBuf>,
    /// Verified signing times a certificate bundle needs (the log's signed
    /// time, RFC 3161 timestamps), each within the certificate's validity.
    pub verified_times: usize,
    /// `[[sigstore.require]]`: the first rule whose `kind` and `path` match
    /// a resource applies to it.
    pub require: Vec<SigstoreRule>,
}

impl Default for SigstoreConfig {
    fn default() -> Self {
        SigstoreConfig {
            trusted_root: None,
            verified_times: 1,
            require: Vec::new(),
        }
    }
}

/// One `[[sigstore.require]]` rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigstoreRule {
    /// Resource kind (file, ruleset, wasm, firmware).
    pub kind: Option<String>,
    /// Glob (`*`) over the resource's source path in the revision.
    pub path: Option<String>,
    /// The certificate identity, exactly…
    pub identity: Option<String>,
    /// …or a regular expression over the whole identity.
    pub identity_regex: Option<String>,
    /// The OIDC issuer (with `identity`/`identity_regex`).
    pub issuer: Option<String>,
    /// A PEM public key instead of a certificate identity.
    pub key: Option<PathBuf>,
    pub github_workflow_trigger: Option<String>,
    pub github_workflow_sha: Option<String>,
    pub github_workflow_name: Option<String>,
    pub github_workflow_repository: Option<String>,
    pub github_workflow_ref: Option<String>,
}

impl SigstoreRule {
    /// The GitHub claims the rule pins, by config key.
    pub fn claims(&self) -> Vec<(&'static str, String)> {
        [
            ("github_workflow_trigger", &self.github_workflow_trigger),
            ("github_workflow_sha", &self.github_workflow_sha),
            ("github_workflow_name", &self.github_workflow_name),
            (
                "github_workflow_repository",
                &self.github_workflow_repository,
            ),
            ("github_workflow_ref", &self.github_workflow_ref),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            key: "sigstore.require",
            message: format!("[{i}]: {message}"),
        };
        if self.kind.is_none() && self.path.is_none() {
            return Err(bad("needs `kind`, `path` or both".to_owned()));
        }
        if let Some(k) = &self.kind {
            k.parse::<ferry_core::Kind>()
                .map_err(|e| bad(format!("kind: {e}")))?;
        }
        let signers = usize::from(self.identity.is_some())
            + usize::from(self.identity_regex.is_some())
            + usize::from(self.key.is_some());
        if signers != 1 {
            return Err(bad(
                "needs exactly one of `identity`, `identity_regex`, `key`".to_owned(),
            ));
        }
        if self.key.is_some() {
            if self.issuer.is_some() || !self.claims().is_empty() {
                return Err(bad(
                    "`issuer` and GitHub claims go with `identity`, not with `key`".to_owned(),
                ));
            }
        } else if self.issuer.as_deref().is_none_or(str::is_empty) {
            return Err(bad("`issuer` is required with an identity".to_owned()));
        }
        Ok(())
    }
}

/// `[agent]`: the daemon (`ferry run`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Time between polls (`30s`, `5m`, `1h`).
    pub poll_interval: String,
    /// Up to this much random delay is added to every poll.
    pub jitter: String,
    /// First retry delay after a failed poll; doubles per failure…
    pub backoff_base: String,
    /// …up to this.
    pub backoff_cap: String,
    /// How long health checks may take to pass after a switch before the
    /// agent rolls back.
    pub health_timeout: String,
    /// Pause between health check rounds while waiting.
    pub health_interval: String,
    /// The longest one reconcile (fetch, apply, health gate) may take; the
    /// agent then kills it (recovery finishes or undoes what it started).
    pub reconcile_timeout: String,
    /// Control socket of the running agent (`ferry status`, `ferry apply --now`).
    pub control_socket: PathBuf,
    /// The update policy file inside each revision (absent: no restrictions).
    pub policy: String,
    /// Where the machine id for rollout waves comes from.
    pub machine_id_file: PathBuf,
    /// Collect generations and blobs nothing keeps (as `ferry gc`) after a
    /// reconcile that leaves the device settled: a gateway's storage is small,
    /// and every firmware image would otherwise stay in the store.
    pub gc: bool,
    /// TUF over HTTP(S): before a poll, the agent asks for `timestamp.json`
    /// with the validators (ETag, Last-Modified) of the one its last
    /// settled reconcile saw; on `304 Not Modified` it skips the poll.
    pub conditional_poll: bool,
    /// With `conditional_poll`: a full reconcile at least this often
    /// anyway (expiry, clock and root checks run there).
    pub full_poll_interval: String,
    /// What a reconcile does about managed resources changed on the device
    /// (`restore`, `report`, `ignore`); a resource's `drift:` overrides it.
    pub drift: ferry_core::DriftPolicy,
    /// Drift is checked at every reconcile; with `conditional_poll`, a full
    /// reconcile runs at least this often for it (unless `drift` is
    /// `ignore`).
    pub drift_interval: String,
    /// `ferry run` watches the managed paths with inotify: a poll that saw
    /// no change skips the per-file check, and a change to a file whose
    /// drift policy is `restore` is put back at once. A full check still
    /// runs every `drift_interval`.
    pub drift_watch: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            poll_interval: "5m".into(),
            jitter: "1m".into(),
            backoff_base: "10s".into(),
            backoff_cap: "30m".into(),
            health_timeout: "2m".into(),
            health_interval: "5s".into(),
            reconcile_timeout: "2h".into(),
            control_socket: PathBuf::from("/run/ferry/ferry.sock"),
            policy: "ferry/policy.toml".into(),
            machine_id_file: PathBuf::from("/etc/machine-id"),
            gc: true,
            conditional_poll: true,
            full_poll_interval: "1h".into(),
            drift: ferry_core::DriftPolicy::Restore,
            drift_interval: "15m".into(),
            drift_watch: true,
        }
    }
}

/// The agent's durations, parsed.
#[derive(Debug, Clone, Copy)]
pub struct AgentTimes {
    pub poll_interval: std::time::Duration,
    pub jitter: std::time::Duration,
    pub backoff_base: std::time::Duration,
    pub backoff_cap: std::time::Duration,
    pub health_timeout: std::time::Duration,
    pub health_interval: std::time::Duration,
    pub reconcile_timeout: std::time::Duration,
    pub full_poll_interval: std::time::Duration,
    pub drift_interval: std::time::Duration,
}

impl AgentConfig {
    pub fn times(&self) -> Result<AgentTimes, ConfigError> {
        let d = |key: &'static str, v: &str| {
            ferry_core::duration::parse(v).ok_or_else(|| ConfigError::Invalid {
                key,
                message: format!("{v:?} is not a duration (e.g. 500ms, 30s, 5m, 1h, 7d)"),
            })
        };
        let t = AgentTimes {
            poll_interval: d("agent.poll_interval", &self.poll_interval)?,
            jitter: d("agent.jitter", &self.jitter)?,
            backoff_base: d("agent.backoff_base", &self.backoff_base)?,
            backoff_cap: d("agent.backoff_cap", &self.backoff_cap)?,
            health_timeout: d("agent.health_timeout", &self.health_timeout)?,
            health_interval: d("agent.health_interval", &self.health_interval)?,
            reconcile_timeout: d("agent.reconcile_timeout", &self.reconcile_timeout)?,
            full_poll_interval: d("agent.full_poll_interval", &self.full_poll_interval)?,
            drift_interval: d("agent.drift_interval", &self.drift_interval)?,
        };
        if t.reconcile_timeout <= t.health_timeout {
            return Err(ConfigError::Invalid {
                key: "agent.reconcile_timeout",
                message: "must be longer than agent.health_timeout (the health gate is part of a reconcile)".into(),
            });
        }
        if t.poll_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "agent.poll_interval",
                message: "must be more than 0".into(),
            });
        }
        Ok(t)
    }
}

/// `[metrics]`: Prometheus text format over HTTP (off unless `listen` is set).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `127.0.0.1:9469`; loopback addresses only.
    pub listen: Option<String>,
}

/// `[state]`: how much history `state.db` keeps (pruned by gc, which the
/// agent runs after every settled reconcile).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Settled transitions kept (with their activation records).
    pub keep_transitions: usize,
    /// Audit entries kept; older ones are replaced by a checkpoint the
    /// chain is verified from (export them first: `ferry audit export`).
    pub keep_audit_entries: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            keep_transitions: 100,
            keep_audit_entries: 10_000,
        }
    }
}

/// What the `rules`, `ingest` and `delta` features bring, in refusals.
pub const RULES_RUNTIME: &str = "the rules runtime";
pub const FIELD_SOURCES: &str = "field event sources (CoAP, Modbus)";
pub const DELTA_UPDATES: &str = "delta updates";

/// `[rules]`: where the rule engine in `ferry run` takes events from and
/// sends actions to. The engine runs when `mqtt`, `socket`, `coap` or a
/// `modbus` device is set; it evaluates the `ruleset` resources of the
/// current generation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// `mqtt://host[:port]` (port 1883 by default; no TLS: use a local broker).
    pub mqtt: Option<String>,
    /// MQTT client id; default `ferry-<hostname>`.
    pub client_id: Option<String>,
    /// A UNIX socket accepting JSON-lines events (mode 0600).
    pub socket: Option<PathBuf>,
    /// Also publish alerts, as JSON, to this MQTT topic.
    pub alert_topic: Option<String>,
    /// Events waiting for the evaluator at most; 0 means 4096. A CoAP
    /// request that finds the queue full is answered 5.03.
    pub queue: usize,
    /// `[rules.coap]`: a CoAP server whose POST/PUT requests become events
    /// (docs/ingest.md).
    pub coap: Option<ferry_ingest::config::CoapConfig>,
    /// `[[rules.modbus]]`: Modbus TCP devices polled for events and written
    /// by `modbus_write` (docs/ingest.md).
    pub modbus: Vec<ferry_ingest::config::ModbusDevice>,
}

impl RulesConfig {
    /// The field sources configured here, checked.
    pub fn ingest(&self) -> Result<ferry_ingest::Plan, ConfigError> {
        Ok(ferry_ingest::IngestConfig {
            coap: self.coap.clone(),
            modbus: self.modbus.clone(),
        }
        .plan("rules")?)
    }

    /// A build without the rules runtime (or its field sources) refuses
    /// the settings that would start it, naming the first.
    fn built_in(&self) -> Result<(), ConfigError> {
        let runtime = (cfg!(feature = "rules"), RULES_RUNTIME, "rules");
        let sources = (cfg!(feature = "ingest"), FIELD_SOURCES, "ingest");
        for (key, set, (built, what, feature)) in [
            ("rules.mqtt", self.mqtt.is_some(), runtime),
            ("rules.socket", self.socket.is_some(), runtime),
            ("rules.coap", self.coap.is_some(), sources),
            ("rules.modbus", !self.modbus.is_empty(), sources),
        ] {
            if set && !built {
                return Err(ConfigError::not_built_in(key, what, feature));
            }
        }
        Ok(())
    }

    /// Whether `ferry run` starts the rule engine.
    pub fn has_inputs(&self) -> bool {
        self.mqtt.is_some()
            || self.socket.is_some()
            || self.coap.is_some()
            || !self.modbus.is_empty()
    }
}

/// `[wasm]`: the module host that runs `wasm` resources (docs/wasm.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasmConfig {
    /// Root of the directories modules may be granted
    /// (`capabilities.dirs[].host` is relative to it); default
    /// `<state_dir>/wasm-data`.
    pub data_dir: Option<PathBuf>,
    /// Largest memory cap a module may declare, in MiB (sizes the pool).
    pub max_memory_mib: u32,
    /// Live module instances at most.
    pub max_instances: u32,
    /// Keep compiled modules in `<state_dir>/wasm-cache` (sealed).
    pub cache: bool,
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            data_dir: None,
            max_memory_mib: 256,
            max_instances: 64,
            cache: true,
        }
    }
}

/// `[health]`: what must pass after a boot into new firmware.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// `[[health.check]]` entries; all must exit 0.
    pub check: Vec<HealthCheck>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Program and arguments (no shell). One of `command`, `unit`, `url`.
    #[serde(default)]
    pub command: Vec<String>,
    /// A systemd unit that must be active.
    #[serde(default)]
    pub unit: Option<String>,
    /// A local HTTP URL that must answer 2xx.
    #[serde(default)]
    pub url: Option<String>,
    /// How long before the check counts as failed (`"60s"`, the default).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Deprecated: `timeout` in whole seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl HealthCheck {
    const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

    /// `timeout` or its deprecated `timeout_secs`, checked.
    fn checked_timeout(&self) -> Result<std::time::Duration, ConfigError> {
        timeout_setting(
            ("health.check.timeout", &self.timeout),
            ("health.check.timeout_secs", self.timeout_secs),
            Self::DEFAULT_TIMEOUT,
        )
    }

    /// How long the check may take (checked at load).
    pub fn timeout(&self) -> std::time::Duration {
        self.checked_timeout().unwrap_or(Self::DEFAULT_TIMEOUT)
    }
}

/// A timeout written as a duration (`stall_timeout = "30s"`) or, in the
/// deprecated spelling, in whole seconds under its old name
/// (`stall_timeout_secs = 30`); at most one of them, never zero, and at
/// most a day (a deadline is `now + timeout`, which must not overflow).
const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(86_400);

fn timeout_setting(
    (key, text): (&'static str, &Option<String>),
    (old_key, secs): (&'static str, Option<u64>),
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    let d = match (text, secs) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid {
                key,
                message: format!("set {key} or its deprecated spelling {old_key}, not both"),
            });
        }
        (Some(t), None) => ferry_core::duration::parse(t).ok_or_else(|| ConfigError::Invalid {
            key,
            message: format!("{t:?} is not a duration (e.g. 500ms, 30s, 2m)"),
        })?,
        (None, Some(s)) => std::time::Duration::from_secs(s),
        (None, None) => default,
    };
    let key = if text.is_some() { key } else { old_key };
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            key,
            message: "must be longer than zero".into(),
        });
    }
    if d > MAX_TIMEOUT {
        return Err(ConfigError::Invalid {
            key,
            message: "must be at most 1d".into(),
        });
    }
    Ok(d)
}

/// One `[[firmware.slots]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// `A`, `B`: the names the bootloader variables use.
    pub name: String,
    /// An image file or a block device.
    pub device: PathBuf,
    /// Capacity in bytes; for block devices it is read from the device.
    #[serde(default)]
    pub size: Option<u64>,
}

/// Where the boot environment lives (`firmware.bootenv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEnvKind {
    /// GRUB's environment block (`firmware.grubenv`).
    Grub,
    /// U-Boot's environment, as `fw_env.config` describes it.
    Uboot,
    /// A plain file (`firmware.envfile`), for tests and other loaders.
    File,
}

/// How a new slot is tried (`firmware.scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootScheme {
    /// Try once: the new slot boots once; unconfirmed, the old one is next.
    Grub,
    /// Boot counting: `firmware.attempts` tries, then the old slot.
    Uboot,
}

named_enum!(BootEnvKind, "boot environment", { Grub = "grub", Uboot = "uboot", File = "file" });
named_enum!(BootScheme, "boot scheme", { Grub = "grub", Uboot = "uboot" });

impl FirmwareConfig {
    /// The scheme in force: configured, else the one that goes with the
    /// boot environment (GRUB: try once; otherwise boot counting).
    pub fn scheme(&self) -> Option<BootScheme> {
        let env = self.bootenv?;
        Some(self.scheme.unwrap_or(match env {
            BootEnvKind::Grub => BootScheme::Grub,
            BootEnvKind::Uboot | BootEnvKind::File => BootScheme::Uboot,
        }))
    }
}

/// `[firmware]`: A/B slots and the boot environment (docs/configuration.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirmwareConfig {
    /// `grub`, `uboot` or `file`; none: no firmware management.
    pub bootenv: Option<BootEnvKind>,
    pub grubenv: PathBuf,
    pub uboot_config: PathBuf,
    /// The `file` backend's path.
    pub envfile: PathBuf,
    /// `grub` (try once) or `uboot` (boot counting); default follows `bootenv`.
    pub scheme: Option<BootScheme>,
    /// Boot attempts for the `uboot` scheme.
    pub attempts: u32,
    /// Where the kernel command line is read from.
    pub cmdline: PathBuf,
    /// The command-line parameter naming the booted slot.
    pub slot_param: String,
    /// Changes on every boot: tells "not rebooted yet" from "rebooted".
    pub boot_id: PathBuf,
    /// Run after a firmware image is written (`ferry apply --no-reboot` skips it).
    pub reboot_command: Vec<String>,
    pub slots: Vec<SlotConfig>,
}

impl Default for FirmwareConfig {
    fn default() -> Self {
        FirmwareConfig {
            bootenv: None,
            grubenv: PathBuf::from("/boot/efi/EFI/ferry/grubenv"),
            uboot_config: PathBuf::from("/etc/fw_env.config"),
            envfile: PathBuf::from("/var/lib/ferry/bootenv"),
            scheme: None,
            attempts: 3,
            cmdline: PathBuf::from("/proc/cmdline"),
            slot_param: "rauc.slot".to_owned(),
            boot_id: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            reboot_command: vec!["systemctl".to_owned(), "reboot".to_owned()],
            slots: Vec::new(),
        }
    }
}

/// Which source a device pulls from (`source.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A TUF repository (`[source.tuf]`).
    Tuf,
    /// Signed commits of a git branch (`[source.git]`).
    Git,
    /// An unsigned directory, for development (`[source.dir]`).
    Dir,
}

named_enum!(SourceKind, "source kind", { Tuf = "tuf", Git = "git", Dir = "dir" });

/// The configured source with its section.
#[derive(Debug, Clone, Copy)]
pub enum SourceSpec<'a> {
    Tuf(&'a TufSourceConfig),
    Git(&'a GitSourceConfig),
    Dir(&'a DirSourceConfig),
}

impl SourceConfig {
    /// The source `kind` names, with its section; `None` when no source is
    /// configured.
    pub fn spec(&self) -> Option<SourceSpec<'_>> {
        Some(match self.kind? {
            SourceKind::Tuf => SourceSpec::Tuf(&self.tuf),
            SourceKind::Git => SourceSpec::Git(&self.git),
            SourceKind::Dir => SourceSpec::Dir(&self.dir),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `tuf` or `git` (signed, for devices) or `dir` (development only).
    pub kind: Option<SourceKind>,
    /// Where a chunk store may redirect a fetch: `same-origin` (default:
    /// the store's scheme, host and port) or `any` (a CDN on another host;
    /// chunks are verified either way, but a store could otherwise steer
    /// the device at internal addresses).
    pub chunk_redirects: Option<String>,
    pub dir: DirSourceConfig,
    pub tuf: TufSourceConfig,
    pub git: GitSourceConfig,
}

/// `[source.git]`: signed commits of one branch.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitSourceConfig {
    /// `https://…`, `http://…` or `file:///…`.
    pub url: Option<String>,
    pub branch: String,
    /// Directory with `allowed_signers` (SSH) and/or `keyring.asc` (OpenPGP).
    pub trust_dir: Option<PathBuf>,
    /// The signers policy inside the repository.
    pub policy: String,
    /// A fresh device accepts only this commit or its descendants.
    pub pin: Option<String>,
    /// Shallow first fetch of this many commits (without `pin` only).
    pub depth: Option<u32>,
    /// The manifest inside the repository.
    pub manifest: String,
    /// Largest file read from a commit.
    pub max_file_bytes: u64,
    /// A signers policy on the device (baked into the image): changes must
    /// be allowed by it as well as by the repository's policy.
    pub device_policy: Option<PathBuf>,
    /// The signed freshness record inside the repository.
    pub freshness: String,
    /// When set, the tip must carry a freshness record issued no longer
    /// ago than this (`7d`, `36h`): a server serving an old tip for ever is
    /// refused once it is this stale.
    pub freshness_max_age: Option<String>,
}

impl Default for GitSourceConfig {
    fn default() -> Self {
        GitSourceConfig {
            url: None,
            branch: "main".to_owned(),
            trust_dir: None,
            policy: "ferry/signers.toml".to_owned(),
            pin: None,
            depth: None,
            manifest: "ferry.yaml".to_owned(),
            max_file_bytes: 64 << 20,
            device_policy: None,
            freshness: "ferry/freshness.toml".to_owned(),
            freshness_max_age: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TufSourceConfig {
    /// Base URL of the metadata (`https://…/metadata/` or `file:///…`).
    pub metadata_url: Option<String>,
    /// Base URL of the targets.
    pub targets_url: Option<String>,
    /// The trusted `root.json` baked into the image.
    pub root: PathBuf,
    /// The target holding the desired-state manifest.
    pub manifest: String,
    /// Silence after which a fetch gives up (stalled server); `"30s"`.
    pub stall_timeout: Option<String>,
    /// Deprecated: `stall_timeout` in whole seconds.
    pub stall_timeout_secs: Option<u64>,
    /// How long a whole metadata file may take (slow-drip server); `"60s"`.
    pub metadata_timeout: Option<String>,
    /// Deprecated: `metadata_timeout` in whole seconds.
    pub metadata_timeout_secs: Option<u64>,
    /// Slowest average a target may arrive at (bytes/s): a target of n
    /// bytes must arrive within the stall timeout + n / this.
    pub min_rate_bytes_per_sec: u64,
    /// A time the device knows has passed (RFC 3339, e.g. the image build
    /// time): the secure time floor starts here.
    pub time_floor: Option<String>,
}

impl TufSourceConfig {
    const DEFAULT_STALL: std::time::Duration = std::time::Duration::from_secs(30);
    const DEFAULT_METADATA: std::time::Duration = std::time::Duration::from_secs(60);

    fn checked_stall_timeout(&self) -> Result<std::time::Duration, ConfigError> {
        timeout_setting(
            ("source.tuf.stall_timeout", &self.stall_timeout),
            ("source.tuf.stall_timeout_secs", self.stall_timeout_secs),
            Self::DEFAULT_STALL,
        )
    }

    fn checked_metadata_timeout(&self) -> Result<std::time::Duration, ConfigError> {
        timeout_setting(
            ("source.tuf.metadata_timeout", &self.metadata_timeout),
            (
                "source.tuf.metadata_timeout_secs",
                self.metadata_timeout_secs,
            ),
            Self::DEFAULT_METADATA,
        )
    }

    /// Silence after which a fetch gives up (checked at load).
    pub fn stall_timeout(&self) -> std::time::Duration {
        self.checked_stall_timeout().unwrap_or(Self::DEFAULT_STALL)
    }

    /// How long a whole metadata file may take (checked at load).
    pub fn metadata_timeout(&self) -> std::time::Duration {
        self.checked_metadata_timeout()
            .unwrap_or(Self::DEFAULT_METADATA)
    }
}

impl Default for TufSourceConfig {
    fn default() -> Self {
        TufSourceConfig {
            metadata_url: None,
            targets_url: None,
            root: PathBuf::from("/etc/ferry/trust/root.json"),
            manifest: "ferry/manifest.yaml".to_owned(),
            stall_timeout: None,
            stall_timeout_secs: None,
            metadata_timeout: None,
            metadata_timeout_secs: None,
            min_rate_bytes_per_sec: 1024,
            time_floor: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirSourceConfig {
    pub path: Option<PathBuf>,
    /// Must be `true`: the dir source is not signed.
    pub insecure: bool,
    /// The manifest inside the directory.
    pub manifest: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Prefix for the absolute paths of `file` resources (`/` on a device).
    pub root: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/ferry"),
            time_floor: None,
            facts: PathBuf::from(FACTS_FILE),
            source: SourceConfig::default(),
            files: FilesConfig::default(),
            firmware: FirmwareConfig::default(),
            health: HealthConfig::default(),
            agent: AgentConfig::default(),
            metrics: MetricsConfig::default(),
            state: StateConfig::default(),
            rules: RulesConfig::default(),
            wasm: WasmConfig::default(),
            sigstore: SigstoreConfig::default(),
            fleet: toml::Table::new(),
        }
    }
}

impl Default for DirSourceConfig {
    fn default() -> Self {
        DirSourceConfig {
            path: None,
            insecure: false,
            manifest: "ferry.yaml".to_owned(),
        }
    }
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            root: PathBuf::from("/"),
        }
    }
}

impl Config {
    /// Loads the layers: `explicit` alone if given, else the vendor and system files that exist.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let (merged, last) = Self::merged_layers(explicit)?;
        Self::from_table(merged, last)
    }

    /// [`Config::load`], also returning the merged layers as one TOML
    /// document that [`Config::from_toml`] reads back to the same
    /// configuration (the agent hands the configuration it accepted to its
    /// reconcile processes this way).
    pub fn load_with_text(explicit: Option<&Path>) -> Result<(Config, String), ConfigError> {
        let (merged, last) = Self::merged_layers(explicit)?;
        let text = toml::to_string(&merged).map_err(|e| ConfigError::Parse {
            path: last.clone(),
            message: e.to_string(),
        })?;
        Ok((Self::from_table(merged, last)?, text))
    }

    /// The configuration layers merged, and the last layer's path.
    fn merged_layers(explicit: Option<&Path>) -> Result<(toml::Table, PathBuf), ConfigError> {
        let layers: Vec<PathBuf> = match explicit {
            Some(p) => vec![p.to_path_buf()],
            None => [VENDOR_CONFIG, SYSTEM_CONFIG]
                .into_iter()
                .map(PathBuf::from)
                .filter(|p| p.exists())
                .collect(),
        };
        let mut merged = toml::Table::new();
        for path in &layers {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            merge(&mut merged, parse_layer(path, &text)?);
        }
        Ok((merged, layers.last().cloned().unwrap_or_default()))
    }

    fn from_table(merged: toml::Table, path: PathBuf) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::Value::Table(merged)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path,
                    message: e.message().to_owned(),
                })?;
        // One floor for every source: the top-level key is the source of
        // truth; the TUF source reads it where it always did.
        if let Some(t) = &config.time_floor {
            if config
                .source
                .tuf
                .time_floor
                .as_ref()
                .is_some_and(|old| old != t)
            {
                return Err(ConfigError::Invalid {
                    key: "time_floor",
                    message: "differs from source.tuf.time_floor; set one of them".into(),
                });
            }
            config.source.tuf.time_floor = Some(t.clone());
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses a configuration from text (one layer over the defaults).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::from_table(parse_layer(path, text)?, path.to_path_buf())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "state_dir",
                message: format!("must be an absolute path, not {:?}", self.state_dir),
            });
        }
        if !self.files.root.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "files.root",
                message: format!("must be an absolute path, not {:?}", self.files.root),
            });
        }
        let fw = &self.firmware;
        if fw.bootenv.is_some() {
            let names: Vec<&str> = fw.slots.iter().map(|s| s.name.as_str()).collect();
            let valid = |n: &&str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric());
            if names.len() != 2 || !names.iter().all(valid) || names[0] == names[1] {
                return Err(ConfigError::Invalid {
                    key: "firmware.slots",
                    message: format!(
                        "want two slots with distinct alphanumeric names, got {names:?}"
                    ),
                });
            }
            if fw.attempts == 0 {
                return Err(ConfigError::Invalid {
                    key: "firmware.attempts",
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        if let Some(url) = &self.rules.mqtt {
            ferry_rules::target::MqttTarget::parse(url).map_err(|message| {
                ConfigError::Invalid {
                    key: "rules.mqtt",
                    message: message.to_string(),
                }
            })?;
        }
        self.rules.ingest()?;
        self.rules.built_in()?;
        if self.rules.queue > 1 << 20 {
            return Err(ConfigError::Invalid {
                key: "rules.queue",
                message: format!("{} is above 1048576", self.rules.queue),
            });
        }
        if let Some(t) = &self.rules.alert_topic
            && (t.is_empty() || t.contains(['+', '#']))
        {
            return Err(ConfigError::Invalid {
                key: "rules.alert_topic",
                message: format!("{t:?} must be a non-empty topic without + or #"),
            });
        }
        if let Some(d) = &self.wasm.data_dir
            && !d.is_absolute()
        {
            return Err(ConfigError::Invalid {
                key: "wasm.data_dir",
                message: format!("must be an absolute path, not {d:?}"),
            });
        }
        if !(1..=4096).contains(&self.wasm.max_memory_mib) {
            return Err(ConfigError::Invalid {
                key: "wasm.max_memory_mib",
                message: format!("{} is outside 1..=4096", self.wasm.max_memory_mib),
            });
        }
        if !(2..=10_000).contains(&self.wasm.max_instances) {
            return Err(ConfigError::Invalid {
                key: "wasm.max_instances",
                message: format!("{} is outside 2..=10000", self.wasm.max_instances),
            });
        }
        if self.sigstore.verified_times == 0 {
            return Err(ConfigError::Invalid {
                key: "sigstore.verified_times",
                message: "must be at least 1 (a certificate is placed by a verified time)".into(),
            });
        }
        for (i, rule) in self.sigstore.require.iter().enumerate() {
            rule.validate(i)?;
        }
        for c in &self.health.check {
            let kinds = usize::from(!c.command.is_empty())
                + usize::from(c.unit.is_some())
                + usize::from(c.url.is_some());
            if kinds != 1 {
                return Err(ConfigError::Invalid {
                    key: "health.check",
                    message: "each check needs exactly one of command, unit, url".to_owned(),
                });
            }
            c.checked_timeout()?;
            if let Some(u) = &c.url
                && !(u.starts_with("http://127.0.0.1")
                    || u.starts_with("http://localhost")
                    || u.starts_with("http://[::1]"))
            {
                return Err(ConfigError::Invalid {
                    key: "health.check.url",
                    message: format!("{u:?}: only http:// URLs on this device are checked"),
                });
            }
        }
        self.agent.times()?;
        if self.state.keep_transitions == 0 {
            return Err(ConfigError::Invalid {
                key: "state.keep_transitions",
                message: "must be at least 1".into(),
            });
        }
        if self.state.keep_audit_entries < 100 {
            return Err(ConfigError::Invalid {
                key: "state.keep_audit_entries",
                message: "must be at least 100".into(),
            });
        }
        if let Some(l) = &self.metrics.listen {
            match l.parse::<std::net::SocketAddr>() {
                Ok(a) if a.ip().is_loopback() => {}
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "metrics.listen",
                        message: format!("{l:?} is not a loopback address:port"),
                    });
                }
            }
        }
        if let Some(r) = self.source.chunk_redirects.as_deref()
            && !matches!(r, "same-origin" | "any")
        {
            return Err(ConfigError::Invalid {
                key: "source.chunk_redirects",
                message: format!("{r:?}: expected \"same-origin\" or \"any\""),
            });
        }
        match self.source.spec() {
            None => {}
            Some(SourceSpec::Dir(dir)) => {
                if !dir.insecure {
                    return Err(ConfigError::Invalid {
                        key: "source.dir.insecure",
                        message: "the dir source is unsigned and for development only; \
                                  set `insecure = true` to use it"
                            .to_owned(),
                    });
                }
                if dir.path.is_none() {
                    return Err(ConfigError::Invalid {
                        key: "source.dir.path",
                        message: "required when source.kind = \"dir\"".to_owned(),
                    });
                }
            }
            Some(SourceSpec::Tuf(tuf)) => {
                for (key, url) in [
                    ("source.tuf.metadata_url", &tuf.metadata_url),
                    ("source.tuf.targets_url", &tuf.targets_url),
                ] {
                    match url.as_deref() {
                        None => {
                            return Err(ConfigError::Invalid {
                                key,
                                message: "required when source.kind = \"tuf\"".to_owned(),
                            });
                        }
                        Some(u)
                            if !["https://", "http://", "file://"]
                                .iter()
                                .any(|p| u.starts_with(p)) =>
                        {
                            return Err(ConfigError::Invalid {
                                key,
                                message: format!("{u:?} is not an https, http or file URL"),
                            });
                        }
                        Some(_) => {}
                    }
                }
                if tuf.min_rate_bytes_per_sec == 0 {
                    return Err(ConfigError::Invalid {
                        key: "source.tuf.min_rate_bytes_per_sec",
                        message: "must be at least 1".to_owned(),
                    });
                }
                tuf.checked_stall_timeout()?;
                tuf.checked_metadata_timeout()?;
                if let Some(t) = &tuf.time_floor
                    && t.parse::<jiff::Timestamp>().is_err()
                {
                    return Err(ConfigError::Invalid {
                        key: "source.tuf.time_floor",
                        message: format!("{t:?} is not an RFC 3339 time"),
                    });
                }
            }
            Some(SourceSpec::Git(git)) => {
                for (key, v) in [
                    ("source.git.url", git.url.is_some()),
                    ("source.git.trust_dir", git.trust_dir.is_some()),
                ] {
                    if !v {
                        return Err(ConfigError::Invalid {
                            key,
                            message: "required when source.kind = \"git\"".into(),
                        });
                    }
                }
                if let Some(d) = &git.trust_dir
                    && !d.is_absolute()
                {
                    return Err(ConfigError::Invalid {
                        key: "source.git.trust_dir",
                        message: format!("must be an absolute path, not {d:?}"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Parses one file and checks it alone, so that errors carry its line and key.
fn parse_layer(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let err = |e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: describe(text, &e),
    };
    let table: toml::Table = toml::from_str(text).map_err(err)?;
    toml::from_str::<Config>(text).map_err(err)?;
    Ok(table)
}

fn describe(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let at = span.start.min(text.len());
            let line = text[..at].matches('\n').count() + 1;
            match key_at(text, at) {
                Some(key) if !e.message().contains(&key) => {
                    format!("line {line}: {key}: {}", e.message())
                }
                _ => format!("line {line}: {}", e.message()),
            }
        }
        None => e.message().to_owned(),
    }
}

/// The dotted key whose value starts on the line of byte `at` (`key =` on
/// that line under the nearest `[table]` header), for errors that toml
/// reports by position only.
fn key_at(text: &str, at: usize) -> Option<String> {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    // A bare or quoted dotted key only (not `{name` of an inline table on
    // a continuation line of a multi-line array).
    let bare = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if key.is_empty() || !key.chars().all(bare) {
        return None;
    }
    let header = text[..start]
        .lines()
        .rev()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(['[', ']']).trim().to_owned());
    Some(match header {
        Some(h) if !h.is_empty() => format!("{h}.{key}"),
        _ => key.to_owned(),
    })
}

fn merge(into: &mut toml::Table, layer: toml::Table) {
    for (k, v) in layer {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn named_settings_are_typed_and_unknown_names_are_listed() {
        let load = |text: &str| Config::from_toml(Path::new("t.toml"), text);
        let c = load(
            "[source]\nkind = \"git\"\n[source.git]\nurl = \"file:///r\"\ntrust_dir = \"/t\"\n",
        )
        .unwrap();
        assert!(matches!(c.source.spec(), Some(SourceSpec::Git(g)) if g.branch == "main"));
        let c = load("[firmware]\nbootenv = \"grub\"\nslots = [{name = \"A\", device = \"/a\"}, {name = \"B\", device = \"/b\"}]\n").unwrap();
        assert_eq!(
            c.firmware.scheme(),
            Some(BootScheme::Grub),
            "GRUB tries once"
        );
        let c = load("[firmware]\nbootenv = \"file\"\nslots = [{name = \"A\", device = \"/a\"}, {name = \"B\", device = \"/b\"}]\n").unwrap();
        assert_eq!(
            c.firmware.scheme(),
            Some(BootScheme::Uboot),
            "others count boots"
        );
        assert_eq!(Config::default().firmware.scheme(), None);
        for (text, want) in [
            (
                "[source]\nkind = \"svn\"\n",
                "line 2: source.kind: unknown source kind \"svn\" (known: tuf, git, dir)",
            ),
            (
                "[firmware] # A/B\n\nbootenv = \"lilo\"\n",
                "line 3: firmware.bootenv: unknown boot environment \"lilo\" (known: grub, uboot, file)",
            ),
            (
                "[firmware]\nscheme = 3\n",
                "line 2: firmware.scheme: invalid type: integer `3`, expected a string",
            ),
            ("state_dir = 3\n", "line 1: state_dir: invalid type"),
            (
                "[firmware]\nslots = [\n  {name = 3, device = \"/a\"},\n]\n",
                "line 3: invalid type",
            ),
            (
                "[[sigstore.require]]\nkind = 3\n",
                "line 2: sigstore.require.kind: invalid type",
            ),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn defaults_and_dir_source() {
        let c = Config::from_toml(
            Path::new("t.toml"),
            "state_dir = \"/tmp/s\"\n[source]\nkind = \"dir\"\n[source.dir]\npath = \"/r\"\ninsecure = true\n",
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/tmp/s"));
        assert_eq!(c.source.dir.manifest, "ferry.yaml");
        assert_eq!(c.files.root, Path::new("/"));
    }

    #[test]
    fn timeouts_are_durations_and_the_old_seconds_still_read() {
        let load = |section: &str| {
            Config::from_toml(
                Path::new("t.toml"),
                &format!("state_dir = \"/tmp/s\"\n{section}"),
            )
        };
        let check = |t: &str| format!("[[health.check]]\ncommand = [\"true\"]\n{t}");
        let c = load(&check("timeout = \"1500ms\"")).unwrap();
        assert_eq!(c.health.check[0].timeout(), Duration::from_millis(1500));
        let c = load(&check("timeout_secs = 7")).unwrap();
        assert_eq!(c.health.check[0].timeout(), Duration::from_secs(7));
        assert_eq!(
            load(&check("")).unwrap().health.check[0].timeout(),
            Duration::from_secs(60)
        );
        let c = load("[source.tuf]\nstall_timeout = \"5s\"\nmetadata_timeout_secs = 9\n").unwrap();
        assert_eq!(c.source.tuf.stall_timeout(), Duration::from_secs(5));
        assert_eq!(c.source.tuf.metadata_timeout(), Duration::from_secs(9));
        assert_eq!(
            Config::default().source.tuf.stall_timeout(),
            Duration::from_secs(30)
        );
        for (section, says) in [
            (
                check("timeout = \"0s\""),
                "health.check.timeout: must be longer than zero",
            ),
            (
                check("timeout_secs = 0"),
                "health.check.timeout_secs: must be longer than zero",
            ),
            (
                check("timeout_secs = 9223372036854775807"),
                "health.check.timeout_secs: must be at most 1d",
            ),
            (
                check("timeout = \"2000w\""),
                "health.check.timeout: must be at most 1d",
            ),
            (
                check("timeout = \"a while\""),
                "health.check.timeout: \"a while\" is not a duration",
            ),
            (
                check("timeout = \"5s\"\ntimeout_secs = 5"),
                "set health.check.timeout or its deprecated spelling health.check.timeout_secs, not both",
            ),
        ] {
            let e = load(&section).unwrap_err().to_string();
            assert!(e.contains(says), "{section}: {e}");
        }
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = Config::from_toml(Path::new("t.toml"), "state_dir = \"/x\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml") && e.contains("line 2") && e.contains("bogus"),
            "{e}"
        );

        let e = Config::from_toml(
            Path::new("t.toml"),
            "[source]\nkind = \"dir\"\n[source.dir]\npath = \"/r\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("source.dir.insecure"), "{e}");

        let e = Config::from_toml(Path::new("t.toml"), "state_dir = \"rel\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("state_dir") && e.contains("absolute"), "{e}");
    }

    #[test]
    fn layers_merge_tables() {
        let mut a: toml::Table =
            toml::from_str("[source]\nkind = \"dir\"\n[source.dir]\npath = \"/a\"\n").unwrap();
        merge(
            &mut a,
            toml::from_str("[source.dir]\ninsecure = true\n").unwrap(),
        );
        let c: Config = toml::Value::Table(a).try_into().unwrap();
        assert_eq!(c.source.dir.path.as_deref(), Some(Path::new("/a")));
        assert!(c.source.dir.insecure);
    }
}
