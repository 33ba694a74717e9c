//! Command-line syntax.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  internal error (I/O, database, bug)
  2  usage or configuration error
  3  invalid desired state (manifest, schema, kinds, paths)
  4  verification failed (signatures, rollback or expiry of signed metadata,
     hash or length mismatch, broken audit chain)
  5  the state directory is in use by another ferry
  6  the state database or the secure time floor is corrupt
  7  an activation or the health checks after a change failed; the
     transition was rolled back
  8  refused in the current state (e.g. nothing to roll back to; the update
     policy holds the revision; it was rejected before; import: no bundle
     on the stick, or one for another device)
 10  `plan --exit-code` only: the plan is not empty
`wasm run` exits with the module's own status instead (134: it trapped,
125: ferry could not run it).";

/// `ferry --version`: the version and what this build includes.
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let mut sources = vec!["dir"];
        let mut kinds = vec!["file", "firmware"];
        if cfg!(feature = "rules") {
            kinds.push("ruleset");
        }
        if cfg!(feature = "tuf") {
            sources.push("tuf");
        }
        if cfg!(feature = "git") {
            sources.push("git");
        }
        if cfg!(feature = "wasm") {
            kinds.push("wasm");
        }
        let features: Vec<&str> = [
            ("tuf", cfg!(feature = "tuf")),
            ("git", cfg!(feature = "git")),
            ("wasm", cfg!(feature = "wasm")),
            ("sigstore", cfg!(feature = "sigstore")),
            ("fleet", cfg!(feature = "fleet")),
            ("delta", cfg!(feature = "delta")),
            ("rules", cfg!(feature = "rules")),
            ("ingest", cfg!(feature = "ingest")),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        format!(
            "{}\ncommit: {}\ntarget: {}\nfeatures: {}\nsources: {}\nresource kinds: {}",
            env!("CARGO_PKG_VERSION"),
            env!("FERRY_COMMIT"),
            env!("FERRY_TARGET"),
            if features.is_empty() {
                "none".to_owned()
            } else {
                features.join(", ")
            },
            sources.join(", "),
            kinds.join(", ")
        )
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    long_version = long_version(),
    about = "Declarative, signed, crash-safe updates for IoT and edge gateways",
    long_about = "ferry fetches a desired state from a source, plans it against what runs, \
and switches to it atomically as a new generation, recording every transition in a \
hash-chained audit journal.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Configuration file; replaces /usr/lib/ferry/ferry.toml and /etc/ferry/ferry.toml.
    #[arg(long, global = true, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory; overrides `state_dir` from the configuration.
    #[arg(long, global = true, env = "FERRY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Device facts file; replaces probing this system (plan for another device, tests).
    #[arg(long, global = true, env = "FERRY_FACTS", value_name = "FILE")]
    pub facts: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing
    /// directive) for stderr (default warn) and for journald under systemd
    /// (default info); audit events always reach the journal.
    #[arg(long, global = true, env = "FERRY_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum TimeFloorAction {
    /// Replace a corrupt or unreadable floor (nothing is verified until it is
    /// repaired) with the image's floor (`source.tuf.time_floor`) or the time
    /// given; audited. An intact floor is refused (exit 8).
    Repair {
        /// The new floor (RFC 3339, e.g. 2026-11-30T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

/// What an operator may override in a reconcile they start; each override
/// is audited (`policy-overridden`, `rejection-overridden`) with who did it.
#[derive(Debug, Args, Clone, Copy)]
pub struct OverrideFlags {
    /// Apply now although the revision's update policy holds it (outside
    /// its update windows or rollout wave), and reboot outside its reboot
    /// windows. A policy that forbids reboots still holds.
    #[arg(long)]
    pub ignore_window: bool,
    /// Apply a revision that was rolled back after failing its health
    /// checks (`ferry status` lists them). Healthy this time, it is no
    /// longer rejected.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct JsonFlag {
    /// Machine-readable output (JSON on stdout). Also after a subcommand
    /// (`ferry generations pin 3 --json`).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the current generation, the last transition and anything pending.
    Status(JsonFlag),
    /// Finish or undo a transition interrupted by a crash (also runs before every
    /// change). After boot (not --early): confirm or roll back a firmware update, or
    /// mark the booted slot good again when its health checks pass.
    Recover {
        #[command(flatten)]
        out: JsonFlag,
        /// Early boot: leave a firmware update waiting for confirmation
        /// (its health checks need the running system) to a later run.
        #[arg(long)]
        early: bool,
        /// Wait up to SECS for another ferry process (the agent) to release
        /// the state directory instead of failing (exit 5).
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
    },
    /// Fetch the desired state and show what would change, without changing anything.
    /// Planned against the device as it is: managed files changed on the device
    /// (drift) are shown with `!` (to restore) or `?` (reported only)
    Plan {
        #[command(flatten)]
        out: JsonFlag,
        /// Exit with 10 when the plan is not empty or anything drifted.
        #[arg(long)]
        exit_code: bool,
        /// Plan against this revision instead of the newest (dir source: a directory).
        #[arg(long, value_name = "R")]
        revision: Option<String>,
    },
    /// Show the desired state the manifest renders to for this device.
    Render {
        #[command(flatten)]
        out: JsonFlag,
        /// Render this revision instead of the newest (dir source: a directory).
        #[arg(long, value_name = "R")]
        revision: Option<String>,
    },
    /// Fetch, verify, plan and switch to the desired state: one reconcile
    /// as the agent does it (update policy, health gate with automatic
    /// rollback, rejected revisions skipped, reboot for firmware, gc),
    /// audited as local-operator. Exit 7 when the health checks failed and
    /// it was rolled back; 8 when the policy holds it, the revision was
    /// rejected before, or a firmware reboot is pending.
    Apply {
        #[command(flatten)]
        out: JsonFlag,
        #[command(flatten)]
        overrides: OverrideFlags,
        /// After writing firmware, do not run firmware.reboot_command.
        #[arg(long)]
        no_reboot: bool,
        /// Ask the running agent (`ferry run`) to reconcile now instead.
        #[arg(long, conflicts_with_all = ["no_reboot", "ignore_window", "force"])]
        now: bool,
    },
    /// Run the agent: poll, apply, health-gate, roll back, gc (for systemd).
    /// Each reconcile runs in a short-lived `ferry run --once` process, so
    /// the long-running agent stays small. The agent watches the managed
    /// paths with inotify (agent.drift_watch): a hand edit of a managed
    /// file is put back within seconds, and idle polls skip the per-file
    /// drift check.
    Run {
        /// One reconcile as the agent does it (update policy, apply, health
        /// gate, roll back; gc once settled unless `agent.gc = false`), in
        /// the foreground, then exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Import an offline bundle (a mounted USB stick, a bundle directory or
    /// a FAT image file): verified with this device's own trust roots,
    /// rollback and freeze state, then reconciled like `apply` (update
    /// policy, health gate with automatic rollback, rejected revisions
    /// skipped); audited with actor usb:LABEL. Exit 8 when PATH holds no
    /// bundle, or the policy or a rejection holds it; 7 when rolled back.
    Import {
        /// The bundle: a directory (e.g. a stick mounted read-only) or a FAT image.
        path: PathBuf,
        /// The stick's name in the audit journal (default: LABEL/SERIAL of
        /// the FAT volume, else the directory's name).
        #[arg(long, value_name = "LABEL")]
        label: Option<String>,
        /// The partition PATH is mounted from: the stick is named by its
        /// FAT volume label and serial (LABEL/XXXX-XXXX), as for an image.
        #[arg(long, value_name = "DEV")]
        device: Option<PathBuf>,
        /// Wait up to SECS for a running reconcile to release the state directory.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        wait: u64,
        /// After writing firmware, do not run firmware.reboot_command.
        #[arg(long)]
        no_reboot: bool,
        #[command(flatten)]
        overrides: OverrideFlags,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Make offline bundles (for `ferry import` on devices without network).
    Bundle {
        #[command(subcommand)]
        action: BundleAction,
    },
    /// List generations, or pin/unpin one so gc keeps it.
    Generations {
        #[command(flatten)]
        out: JsonFlag,
        #[command(subcommand)]
        action: Option<GenerationsAction>,
    },
    /// Switch back to the previous generation (or to generation N), then
    /// gate on the health checks like any change: unhealthy, it returns to
    /// the generation it left (exit 7). A generation whose revision was
    /// rejected needs --force.
    Rollback {
        /// The generation to switch to.
        #[arg(long, value_name = "N")]
        to: Option<u64>,
        /// Switch to a generation whose revision was rejected.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        out: JsonFlag,
        /// After switching firmware, do not run firmware.reboot_command.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Delete generations and blobs that are not current, previous, pinned or in use.
    Gc(JsonFlag),
    /// Check every managed resource of the current generation in full against
    /// what ferry installed (files: content, mode, owner, type; rule sets and
    /// WASM modules: their blob, read back) and with --firmware read back every
    /// slot holding an image ferry recorded. Exit 0 clean, 4 on any mismatch,
    /// naming what and where. Changes nothing
    Verify {
        #[command(flatten)]
        out: JsonFlag,
        /// Also read back the firmware slots (the booted one and the rollback
        /// target).
        #[arg(long)]
        firmware: bool,
        /// Read store blobs and slots at most this fast, in MiB per second, so
        /// the gateway keeps serving (0: unbounded, and the managed files are
        /// read on up to four cores at once).
        #[arg(long, value_name = "MIB", default_value_t = 32)]
        rate: u64,
    },
    /// A/B firmware slots: show them, or mark the booted slot good.
    Firmware {
        #[command(subcommand)]
        action: FirmwareAction,
    },
    /// Show the secure time floor (the newest time this device trusted; TUF
    /// expiry is never judged earlier), or repair a corrupt one.
    TimeFloor {
        #[command(subcommand)]
        action: Option<TimeFloorAction>,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Read or verify the audit journal.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// The fleet channel over MQTT (docs/fleet.md): what devices report
    /// (`status`, `audit`), and what this device would report (`report`).
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
    },
    /// Check, try out or run rule sets (the `ruleset` resource language).
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Try WASM modules the way the agent runs them.
    Wasm {
        #[command(subcommand)]
        action: WasmAction,
    },
    /// Verify Sigstore bundles offline (the check `[[sigstore.require]]` applies to resources).
    Sigstore {
        #[command(subcommand)]
        action: SigstoreAction,
    },
    /// Cut a firmware image into content-defined chunks for delta updates
    /// (publisher side): each chunk not yet in OUT/chunks/ is written there
    /// zstd-compressed, named by its sha256; the index goes to
    /// OUT/IMAGE.chunks. Publish the index as a signed file beside the image,
    /// serve OUT/chunks/ as static files, and name the index in the resource
    /// (`chunks: {index: …}`). See docs/delta.md.
    Chunk {
        /// The image.
        image: PathBuf,
        /// Where the chunk store (`chunks/`) and the index go; one store
        /// serves every image published into it.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Smallest chunk, in bytes.
        #[arg(long, default_value_t = 8 << 10)]
        min: u32,
        /// Average chunk, in bytes (a power of two).
        #[arg(long, default_value_t = 32 << 10)]
        avg: u32,
        /// Largest chunk, in bytes (at most 4 MiB).
        #[arg(long, default_value_t = 128 << 10)]
        max: u32,
        /// zstd level of the stored chunks (1-19).
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(i32).range(1..=19))]
        level: i32,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Run a complete signed reconcile from an embedded example repository in a
    /// temp dir: files, a rule set, a WASM module and A/B firmware (no root).
    Demo {
        /// Work in DIR and keep it as a working device (its ferry.toml reads the
        /// demo repository through file:// URLs) instead of a temporary directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// With --dir, after a demo kept there: sign the files under
        /// DIR/source (the newest revision's, to edit) as the next version of
        /// DIR/repository with the key the demo keeps there, and exit; then
        /// `ferry --config DIR/ferry.toml apply` takes it.
        #[arg(long, requires = "dir")]
        publish: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SigstoreAction {
    /// Verify a Sigstore bundle (v0.1–v0.3) for a file or a digest, offline:
    /// the transparency log's SET and/or inclusion proof with checkpoint,
    /// RFC 3161 timestamps, and either the certificate (chain to a Fulcio CA
    /// of the trusted root, SCT, identity, signature, every verified signing
    /// time within its validity) or the signature of a known key. Exit 0
    /// only when verified; 4 when refused, naming the failed check.
    #[command(group(clap::ArgGroup::new("signer").required(true).args(["certificate_identity", "certificate_identity_regexp", "key"])))]
    VerifyBundle {
        /// The bundle (`<artifact>.sigstore.json`).
        #[arg(long, value_name = "FILE")]
        bundle: PathBuf,
        /// The signer's certificate identity (subject alternative name), exactly.
        #[arg(long, value_name = "IDENTITY", requires = "certificate_oidc_issuer")]
        certificate_identity: Option<String>,
        /// The signer's identity as a regular expression over the whole name.
        #[arg(
            long,
            value_name = "REGEX",
            requires = "certificate_oidc_issuer",
            conflicts_with = "certificate_identity"
        )]
        certificate_identity_regexp: Option<String>,
        /// The OIDC issuer that vouched for the identity.
        #[arg(long, value_name = "URL")]
        certificate_oidc_issuer: Option<String>,
        /// A PEM public key the artifact was signed with (instead of an identity).
        #[arg(long, value_name = "PEM", conflicts_with_all = ["certificate_identity", "certificate_identity_regexp", "certificate_oidc_issuer"])]
        key: Option<PathBuf>,
        /// The trusted root (`trusted_root.json`); default: the embedded
        /// Sigstore public-good root (never fetched).
        #[arg(long, value_name = "FILE")]
        trusted_root: Option<PathBuf>,
        /// Verified signing times (log SET, RFC 3161 timestamps) a
        /// certificate-signed bundle needs.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        verified_times: u32,
        /// The artifact, or `sha256:<64 hex>` (then no file is read).
        #[arg(value_name = "FILE|sha256:DIGEST")]
        artifact: String,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum BundleAction {
    /// Fetch the configured source's newest revision (verified with the
    /// configured trust roots, like a fresh device), and write it as a
    /// self-contained bundle: the signed TUF metadata (root chain included)
    /// and targets, or a git bundle of the signed branch. Read back and
    /// verified before the marker file is written.
    Export {
        /// A new or empty directory, or FILE.img for a FAT32 image (made
        /// without root; write it to a stick with dd, or copy the directory).
        #[arg(long, value_name = "DIR|FILE.img")]
        out: PathBuf,
        /// Only what the device described by this facts file needs (TUF;
        /// repeatable). Every manifest must render for it.
        #[arg(long = "for-device", value_name = "FACTS")]
        for_device: Vec<PathBuf>,
        /// Volume label of the FAT image.
        #[arg(long, value_name = "LABEL", default_value = "FERRY")]
        label: String,
        /// Size of the FAT image in MiB (default: what the bundle needs, at least 64).
        #[arg(long, value_name = "MIB")]
        image_size: Option<u64>,
        /// A delta bundle for devices running the image this chunk index
        /// describes (`ferry chunk` output): firmware with a chunk index
        /// travels as the chunks that image lacks, not whole. Needs
        /// --for-device. Devices running another image fall back to the
        /// full image, which the bundle does not hold (docs/delta.md).
        #[arg(long, value_name = "INDEX")]
        delta_from: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum GenerationsAction {
    /// Keep generation N through gc.
    Pin { n: u64 },
    /// Let gc collect generation N again.
    Unpin { n: u64 },
}

#[derive(Debug, Subcommand)]
pub enum FirmwareAction {
    /// Slots, boot order, booted slot and what the boot environment says of each.
    Status(JsonFlag),
    /// Mark the booted slot good (run after a healthy boot).
    MarkGood(JsonFlag),
    /// Cancel a firmware switch that waits for its reboot: the booted slot
    /// stays first, the written slot is marked bad, the generation before
    /// it is current again, and its revision is rejected (`apply --force`
    /// applies it anyway). Audited. Exit 8 when nothing waits, or when the
    /// device has rebooted since (then `ferry recover` decides).
    Cancel(JsonFlag),
}

#[derive(Debug, Subcommand)]
pub enum AuditAction {
    /// Print audit entries, oldest first.
    List {
        #[command(flatten)]
        out: JsonFlag,
        /// Only the last N entries (of those selected).
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        #[command(flatten)]
        filter: AuditFilter,
    },
    /// Print entries as JSON lines for a fleet server: a header line (device,
    /// head of the chain), then one line per entry with its chain hash and
    /// the previous one, so the receiver can verify and join the chain.
    Export {
        /// Only entries after sequence number SEQ (what the receiver has).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
        #[command(flatten)]
        filter: AuditFilter,
    },
    /// Recompute the hash chain; name the first broken entry.
    Verify(JsonFlag),
    /// Append the entries the agent's WASM module host left in the audit
    /// spool (state_dir/audit-spool) to the journal. The agent runs it after
    /// each such entry and every reconcile does it; prints how many.
    Flush(JsonFlag),
}

/// How the admin reaches the broker.
#[derive(Debug, Args, Clone)]
pub struct BrokerArgs {
    /// The broker: `mqtts://host[:port]` or `mqtt://host[:port]`.
    #[arg(long, value_name = "URL", env = "FERRY_FLEET_MQTT")]
    pub mqtt: String,
    /// CA certificates (PEM) the broker's certificate chains to (mqtts).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), with --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The first topic levels, as the devices' `fleet.topic_prefix`.
    #[arg(long, value_name = "PREFIX", default_value = "ferry")]
    pub prefix: String,
    /// MQTT client id; default `ferry-admin-<pid>`.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Stop collecting retained messages after this long without one
    /// (messages devices publish meanwhile are not waited for).
    #[arg(long, value_name = "DURATION", default_value = "500ms")]
    pub quiet: String,
}

#[derive(Debug, Subcommand)]
pub enum FleetAction {
    /// The devices' retained status messages as a table: failing devices
    /// first, then devices not on the fleet's newest revision (lagging),
    /// then devices not heard from (stale), then the rest; within each,
    /// the longest unseen first.
    Status {
        #[command(flatten)]
        broker: BrokerArgs,
        /// Measure devices against this revision: devices on another one
        /// are lagging. Without it (or --from-source) no device is lagging:
        /// what devices report never sets the target.
        #[arg(long, value_name = "REVISION")]
        revision: Option<String>,
        /// Measure devices against the newest revision of the signed
        /// repository the configuration (--config) names, fetched and
        /// verified as a device does.
        #[arg(long, conflicts_with = "revision")]
        from_source: bool,
        /// A device not heard from for this long is stale.
        #[arg(long, value_name = "DURATION", default_value = "15m")]
        stale: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// A device's reported audit entries, in order, with their hash chain
    /// verified (exit 4 naming the first entry that breaks it).
    Audit {
        #[command(flatten)]
        broker: BrokerArgs,
        /// The device id.
        device: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Print what this device reports (JSON): its generation, revision,
    /// firmware slots and the audit entries after SEQ. `ferry run` calls
    /// it for the fleet channel.
    Report {
        /// Only entries after sequence number SEQ.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
        /// At most N entries.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Debug, Args, Clone)]
pub struct AuditFilter {
    /// Only entries at or after TIME: RFC 3339 (2026-11-26T08:00:00Z), a
    /// date (2026-11-26, UTC), or an age (90m, 24h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only entries whose actor starts with PREFIX (e.g. usb: for offline installs).
    #[arg(long, value_name = "PREFIX")]
    pub actor: Option<String>,
    /// Only entries of this event (switched, imported, source-refused, …).
    #[arg(long, value_name = "EVENT")]
    pub event: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum WasmAction {
    /// Run a WASI (preview 1) command module once, sandboxed as the agent
    /// sandboxes modules: same engine, memory cap, only the directories and
    /// variables given here, no network, a zero clock unless --clocks.
    /// stdin/stdout/stderr are the terminal's. Exits with the module's exit
    /// status; 134 when it traps; 125 when ferry cannot run it.
    #[command(trailing_var_arg = true)]
    Run {
        /// Grant directory HOST, seen by the module as GUEST (default: the
        /// same path), read-write. Repeatable.
        #[arg(long = "dir", value_name = "HOST[::GUEST]")]
        dirs: Vec<String>,
        /// Grant the variable NAME=VAL (NAME alone: its value here). Repeatable.
        #[arg(long = "env", value_name = "NAME[=VAL]")]
        env: Vec<String>,
        /// Bound the run to N fuel units (about one per instruction).
        #[arg(long, value_name = "N")]
        fuel: Option<u64>,
        /// Memory cap in MiB (the agent's default is 16).
        #[arg(long, value_name = "MIB", default_value_t = 16)]
        max_memory_mib: u32,
        /// Grant the real wall and monotonic clocks.
        #[arg(long)]
        clocks: bool,
        /// The module (a .wasm binary; assemble text with `wat2wasm`).
        file: PathBuf,
        /// Arguments for the module (argv[1..]).
        #[arg(allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesAction {
    /// Parse, type-check and compile a rule file; print every problem as
    /// FILE:LINE:COL (exit 3 when there is one).
    Check {
        file: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
        /// Print the rule set in canonical form (fully parenthesised).
        #[arg(long)]
        print: bool,
        /// Also check `modbus_write` actions against the devices of this
        /// TOML file (`[[modbus]]` tables, as `[[rules.modbus]]`).
        #[arg(long, value_name = "FILE")]
        modbus: Option<PathBuf>,
    },
    /// Run events from a JSON-lines file through a rule file and print the
    /// actions. Each line: {"topic": "...", "time": SECONDS, "payload": {...}};
    /// without "time" an event happens when the previous one did.
    Test {
        file: PathBuf,
        /// The events file (`-` for stdin).
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Run rule files in the foreground on live events (MQTT, a local
    /// JSON-lines socket, CoAP, Modbus TCP) until interrupted; actions go to
    /// MQTT, Modbus devices and the log.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// MQTT broker: mqtt://HOST[:PORT].
        #[arg(long, value_name = "URL")]
        mqtt: Option<String>,
        /// MQTT client id.
        #[arg(long, value_name = "ID", default_value = "ferry-rules")]
        client_id: String,
        /// Also accept JSON-lines events on this UNIX socket.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Also publish alerts (as JSON) to this MQTT topic.
        #[arg(long, value_name = "TOPIC")]
        alert_topic: Option<String>,
        /// Serve CoAP on this UDP address (IP:PORT; port 0 picks one, printed
        /// on stderr): POST/PUT to /a/b become events on topic coap/a/b.
        #[arg(long, value_name = "ADDR")]
        coap: Option<String>,
        /// Largest CoAP request payload, assembled from blocks if need be.
        #[arg(long, value_name = "BYTES", default_value_t = 65536)]
        coap_max_payload: usize,
        /// Poll the Modbus TCP devices of this TOML file (`[[modbus]]`
        /// tables, as `[[rules.modbus]]` in ferry.toml); rules may write
        /// their `writable` registers.
        #[arg(long, value_name = "FILE")]
        modbus: Option<PathBuf>,
        /// Events waiting for the rules at most (a CoAP request finding the
        /// queue full is answered 5.03).
        #[arg(long, value_name = "N", default_value_t = 4096)]
        queue: usize,
        /// Print each action as a JSON line on stdout.
        #[arg(long)]
        print: bool,
    },
}

/// The error for a part this build leaves out (used only by builds that
/// leave one out).
#[allow(dead_code)]
pub(crate) fn not_built_in(what: &str, feature: &str) -> String {
    format!(
        "{what} needs ferry's `{feature}` feature, which this build leaves out (`ferry --version` lists what is built in)"
    )
}
