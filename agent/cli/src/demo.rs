//! `ferry demo`: a complete signed reconcile from an embedded example
//! repository, in a temporary directory, with no network beyond loopback and
//! no root.
//!
//! It generates a key, signs a TUF repository with it (tough's
//! `RepositoryEditor`) and serves it on 127.0.0.1 from inside the process.
//! The device trusts only that repository's `root.json`. Revision 1 brings
//! files, a rule set and a WASM module; revision 2 changes them and is
//! rolled back; revision 3 brings an A/B firmware image, written into the
//! inactive slot of two image-file slots with a GRUB environment file, and
//! the demo plays the bootloader to boot it and let ferry confirm it. Every
//! transition is shown as it is recorded, and the audit chain is verified.
//! With `--dir` the device is left configured with the repository as a
//! `file://` URL, so `ferry plan`, `apply` and `run` keep working there.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferry_core::agent::{Outcome, Overrides};
use ferry_engine::activate::firmware::grub::GrubEnv;
use ferry_engine::activate::firmware::{BootEnv, BootEnvStore};
use ferry_engine::reconcile::{Goal, Request};
use ferry_engine::render::facts::Facts;
use ferry_engine::render::report::report;
use ferry_engine::{ApplyOutcome, Config, Engine};

use crate::demo_repo::DemoRepo;
use crate::exit::Code;
use crate::output;

macro_rules! files {
    ($rev:literal: $($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../demo/", $rev, "/", $path)))),*]
    };
}

const REV1: &[(&str, &str)] = files!("rev1":
    "ferry.yaml.j2",
    "templates/bridge.conf.j2",
    "templates/site.env.j2",
    "files/motd",
    "files/gw3000-serial.conf",
    "vars/common.yaml",
    "vars/sites/plant-7.yaml",
    "rules/overheat.rules",
);

const REV2: &[(&str, &str)] = files!("rev2":
    "ferry.yaml.j2",
    "templates/bridge.conf.j2",
    "templates/site.env.j2",
    "files/maintenance.txt",
    "files/gw3000-serial.conf",
    "vars/common.yaml",
    "vars/sites/plant-7.yaml",
    "rules/overheat.rules",
);

/// Resources appended to a revision's manifest.
#[cfg(feature = "rules")]
const RULESET: &str = include_str!("../demo/parts/ruleset.yaml");
#[cfg(feature = "wasm")]
const WASM: &str = include_str!("../demo/parts/wasm.yaml");
const FIRMWARE: &str = include_str!("../demo/parts/firmware.yaml");
/// The module of `parts/wasm.yaml`: the decoder the WASM tests use
/// (integration/wasm/modbus-decoder.wat), assembled; a test checks that it
/// is.
#[cfg(feature = "wasm")]
const DECODER: &[u8] = include_bytes!("../demo/modules/modbus-decoder.wasm");

const FACTS: &str = include_str!("../demo/facts.toml");

/// Size of each image-file firmware slot.
const SLOT_SIZE: usize = 1 << 20;

/// A firmware image of 256 KiB whose lines name its version.
fn firmware_image(version: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 << 10);
    let mut i = 0u32;
    while out.len() < 256 << 10 {
        out.extend_from_slice(format!("gateway-os {version} block {i:06}\n").as_bytes());
        i += 1;
    }
    out
}

/// A revision's files as published: the embedded files, the manifest with
/// the rule set and the WASM module appended (those built in), and extra
/// resources.
fn revision(
    files: &[(&str, &str)],
    extra: &[(&str, &str, Vec<u8>)],
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut manifest_tail = String::new();
    #[cfg(feature = "rules")]
    manifest_tail.push_str(RULESET);
    let mut added: Vec<(String, Vec<u8>)> = Vec::new();
    #[cfg(feature = "wasm")]
    {
        manifest_tail.push_str(WASM);
        added.push(("modules/modbus-decoder.wasm".to_owned(), DECODER.to_vec()));
    }
    for (part, name, content) in extra {
        manifest_tail.push_str(part);
        added.push((name.to_string(), content.clone()));
    }
    let mut out: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
        .collect();
    let manifest = out
        .iter_mut()
        .find(|(n, _)| n == "ferry.yaml.j2")
        .context("the demo revision has a manifest")?;
    manifest.1.extend_from_slice(manifest_tail.as_bytes());
    out.extend(added);
    Ok(out)
}

/// The gateway's boot side: two image-file slots, a GRUB environment file,
/// a kernel command line and a boot id, played by the demo as GRUB would
/// (images/bootloader/grub.cfg).
struct Gateway {
    grubenv: GrubEnv,
    cmdline: PathBuf,
    boot_id: PathBuf,
    boots: u32,
}

impl Gateway {
    /// Slot A holds firmware 1.0 and is booted; B is empty.
    fn install(base: &Path) -> Result<(Gateway, String)> {
        let boot = base.join("boot");
        fs::create_dir_all(&boot)?;
        let mut a = firmware_image("1.0");
        a.resize(SLOT_SIZE, 0);
        fs::write(boot.join("slot-a.img"), a)?;
        fs::write(boot.join("slot-b.img"), vec![0u8; SLOT_SIZE])?;
        let grubenv = GrubEnv {
            path: boot.join("grubenv"),
        };
        let env: BootEnv = [
            ("ORDER", "A B"),
            ("A_OK", "1"),
            ("A_TRY", "0"),
            ("B_OK", "0"),
            ("B_TRY", "0"),
        ]
        .into_iter()
        .collect();
        grubenv.store(&env)?;
        let gw = Gateway {
            grubenv,
            cmdline: boot.join("cmdline"),
            boot_id: boot.join("boot_id"),
            boots: 0,
        };
        gw.write_boot("A", 0)?;
        let config = format!(
            "\n[firmware]\nbootenv = \"grub\"\ngrubenv = {:?}\ncmdline = {:?}\nboot_id = {:?}\n# The demo plays the bootloader itself; a device reboots.\nreboot_command = [\"true\"]\nslots = [\n  {{ name = \"A\", device = {:?}, size = {SLOT_SIZE} }},\n  {{ name = \"B\", device = {:?}, size = {SLOT_SIZE} }},\n]\n",
            gw.grubenv.path,
            gw.cmdline,
            gw.boot_id,
            boot.join("slot-a.img"),
            boot.join("slot-b.img"),
        );
        Ok((gw, config))
    }

    fn write_boot(&self, slot: &str, n: u32) -> Result<()> {
        fs::write(&self.cmdline, format!("quiet rauc.slot={slot}\n"))?;
        fs::write(&self.boot_id, format!("demo-boot-{n}\n"))?;
        Ok(())
    }

    /// GRUB's script: the first slot in ORDER with OK=1 and TRY=0 is tried
    /// (TRY=1 saved) and booted.
    fn reboot(&mut self) -> Result<Option<String>> {
        let mut env = self.grubenv.load()?;
        let order = env.get("ORDER").unwrap_or_default().to_owned();
        for slot in order.split_whitespace() {
            let ok = env.get(&format!("{slot}_OK")) == Some("1");
            let fresh = env.get(&format!("{slot}_TRY")) == Some("0");
            if ok && fresh {
                env.set(&format!("{slot}_TRY"), "1");
                self.grubenv.store(&env)?;
                self.boots += 1;
                self.write_boot(slot, self.boots)?;
                return Ok(Some(slot.to_owned()));
            }
        }
        Ok(None)
    }

    fn show_env(&self) -> Result<()> {
        let env = self.grubenv.load()?;
        let vars: Vec<String> = env.iter().map(|(n, v)| format!("{n}={v}")).collect();
        println!("    {}: {}", self.grubenv.path.display(), vars.join(" "));
        Ok(())
    }
}

/// Prints the audit entries recorded since `seen`, returns the new count.
fn show_transitions(engine: &Engine, seen: usize) -> Result<usize> {
    let entries = engine.audit_entries()?;
    for e in &entries[seen.min(entries.len())..] {
        let what = match (e.details.get("resource"), e.details.get("kind")) {
            (Some(r), Some(k)) => format!(
                "{} {} {}",
                e.details["op"].as_str().unwrap_or("?"),
                k.as_str().unwrap_or("?"),
                r.as_str().unwrap_or("?")
            ),
            (None, Some(k)) => format!(
                "{} transition #{}",
                k.as_str().unwrap_or("?"),
                e.details["transition"]
            ),
            _ => String::new(),
        };
        println!(
            "    audit #{:<3} gen {:<2} {:<11} {what}",
            e.seq,
            e.generation.map_or("-".to_owned(), |g| g.to_string()),
            e.event
        );
    }
    Ok(entries.len())
}

fn show_plan(engine: &Engine, src: &dyn ferry_source::Source, facts: &Facts) -> Result<()> {
    let (rev, desired, plan, _) = engine.plan(src, None, facts)?;
    output::plan(
        &report(&plan, &*rev, &desired, Some(engine.store()), &|id| {
            engine.installed_reader(id)
        }),
        false,
    )
}

fn show_last_line(path: &Path) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    println!(
        "    {}: {}",
        path.display(),
        text.lines().last().unwrap_or_default()
    );
    Ok(())
}

pub fn run(dir: Option<&Path>) -> Result<Code> {
    let temp;
    let base: PathBuf = match dir {
        Some(d) => {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            std::path::absolute(d)?
        }
        None => {
            temp = tempfile::Builder::new().prefix("ferry-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let published = base.join("repository");
    let root = base.join("root");
    let state = base.join("state");
    fs::create_dir_all(&root)?;
    let facts_path = base.join("facts.toml");
    fs::write(&facts_path, FACTS)?;
    let repo = DemoRepo::create(&published).context("creating the demo TUF repository")?;
    let url = repo.serve().context("serving the demo repository")?;
    let trusted_root = repo.root();
    let (mut gateway, firmware_config) = Gateway::install(&base)?;
    let device_config = |metadata: &str, targets: &str| {
        format!(
            "state_dir = {state:?}\nfacts = {facts_path:?}\n\n[source]\nkind = \"tuf\"\n\n[source.tuf]\nmetadata_url = \"{metadata}\"\ntargets_url = \"{targets}\"\nroot = {trusted_root:?}\nmanifest = \"ferry.yaml.j2\"\n\n[files]\nroot = {root:?}\n{firmware_config}",
        )
    };
    let config_text = device_config(&format!("{url}/metadata"), &format!("{url}/targets"));
    let config_path = base.join("ferry.toml");
    fs::write(&config_path, &config_text)?;
    let config = Config::from_toml(&config_path, &config_text)?;
    let src = ferry_engine::fetch::source(&config)?;
    let facts = Facts::from_file(&facts_path)?;

    println!("ferry demo in {}", base.display());
    println!(
        "  config {}; files are installed under {}",
        config_path.display(),
        root.display()
    );
    println!(
        "  device facts {} (gw-demo-01, an Acme GW-3000 at site plant-7)",
        facts_path.display()
    );
    println!(
        "  firmware slots A and B: image files in {} with a GRUB environment; slot A runs 1.0",
        base.join("boot").display()
    );
    println!(
        "  TUF repository {} signed with a key made just now, served at {url};\n  the device trusts only {}\n",
        published.display(),
        trusted_root.display()
    );

    let mut engine = Engine::open(config.clone())?;
    let mut seen = 0;

    println!("1. revision 1 is published: files, a rule set and a WASM module. Plan and apply;");
    println!("   the rule set is compiled and the module probed before the switch:");
    repo.publish(1, &revision(REV1, &[])?)?;
    show_plan(&engine, &*src, &facts)?;
    let newest = Goal::Newest {
        source: &*src,
        facts: &facts,
    };
    output::outcome(&step(&mut engine, newest)?, false)?;
    seen = show_transitions(&engine, seen)?;

    println!("\n2. a second apply of the same revision changes nothing:");
    output::outcome(&step(&mut engine, newest)?, false)?;

    println!("\n3. revision 2 changes the bridge and lowers the rule's threshold. Plan and apply:");
    repo.publish(2, &revision(REV2, &[])?)?;
    show_plan(&engine, &*src, &facts)?;
    output::outcome(&step(&mut engine, newest)?, false)?;
    seen = show_transitions(&engine, seen)?;
    let bridge = root.join("etc/mosquitto/conf.d/bridge.conf");
    show_last_line(&bridge)?;

    println!(
        "\n4. an operator rolls back to the previous generation (files and rule set together):"
    );
    output::outcome(&step(&mut engine, Goal::Generation(None))?, false)?;
    seen = show_transitions(&engine, seen)?;
    show_last_line(&bridge)?;

    println!("\n5. revision 3 brings firmware 2.0. It is written into the inactive slot B,");
    println!("   read back and verified, and B is set to boot once:");
    let image = firmware_image("2.0");
    let rev3 = revision(REV2, &[(FIRMWARE, "images/gateway-os-2.0.img", image)])?;
    repo.publish(3, &rev3)?;
    let outcome = step(&mut engine, newest)?;
    output::outcome(&outcome, false)?;
    seen = show_transitions(&engine, seen)?;
    gateway.show_env()?;
    anyhow::ensure!(
        matches!(outcome, ApplyOutcome::RebootRequired { .. }),
        "the firmware update did not ask for a reboot: {outcome:?}"
    );

    println!("\n6. the gateway reboots; GRUB tries slot B, and ferry's recovery at start finds");
    println!("   the new slot booted and healthy, marks it good and confirms the transition:");
    drop(engine);
    let booted = gateway.reboot()?.context("no slot is bootable")?;
    println!("    GRUB booted slot {booted}");
    let engine = Engine::open(config.clone())?;
    seen = show_transitions(&engine, seen)?;
    gateway.show_env()?;
    if let Some(fw) = engine.firmware_status()? {
        output::firmware(&fw, false)?;
    }
    let _ = seen;

    println!("\n7. the audit chain verifies:");
    output::audit_ok(engine.audit_verify()?, false)?;

    println!("\n8. status:");
    output::status(&state, Some(&engine.status()?), None, false)?;
    if dir.is_some() {
        // The loopback server dies with the demo: leave the device pointing
        // at the same signed repository through file:// URLs.
        let metadata = format!("file://{}/metadata", published.display());
        let targets = format!("file://{}/targets", published.display());
        fs::write(&config_path, device_config(&metadata, &targets))?;
        // What revision 3 was made from, for the next one.
        let source = base.join(SOURCE);
        let _ = fs::remove_dir_all(&source);
        for (name, content) in &rev3 {
            let p = source.join(name);
            fs::create_dir_all(p.parent().context("target names have parents")?)?;
            fs::write(&p, content)?;
        }
        let config = config_path.display();
        println!(
            "\nkept {}; the device now reads the repository from {}. Try:\n  ferry --config {config} generations\n  ferry --config {config} plan\n  ferry --config {config} firmware status\nto publish a next revision: edit {}, then\n  ferry demo --dir {} --publish\n  ferry --config {config} apply",
            base.display(),
            published.display(),
            source.display(),
            base.display(),
        );
    }
    Ok(Code::Success)
}

/// The directory of a kept demo that holds the newest revision's files.
const SOURCE: &str = "source";

/// `ferry demo --dir DIR --publish`: signs the files under `DIR/source` as
/// the next version of the kept demo's repository, with the key it keeps.
pub fn publish(dir: &Path) -> Result<Code> {
    let repo = DemoRepo::open(&dir.join("repository"))?;
    let source = dir.join(SOURCE);
    let mut files = Vec::new();
    collect(&source, &source, &mut files)?;
    anyhow::ensure!(
        files.iter().any(|(n, _)| n == "ferry.yaml.j2"),
        "{} has no ferry.yaml.j2 (the manifest the device reads)",
        source.display()
    );
    let version = repo.next_version()?;
    repo.publish(version, &files)
        .with_context(|| format!("publishing {}", source.display()))?;
    println!(
        "published {} files from {} as version {version} of {}, signed with {}",
        files.len(),
        source.display(),
        repo.dir.display(),
        repo.dir.join("keys/demo-ed25519.pk8").display()
    );
    Ok(Code::Success)
}

/// The regular files below `dir`, by their names relative to `base`; a
/// symlink or special file is refused, naming it.
fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let e = e?;
        let path = e.path();
        let kind = e.file_type()?;
        if kind.is_dir() {
            collect(base, &path, out)?;
        } else if kind.is_file() {
            let name = path
                .strip_prefix(base)?
                .to_str()
                .with_context(|| format!("{}: not a UTF-8 name", path.display()))?
                .to_owned();
            let content = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            out.push((name, content));
        } else {
            anyhow::bail!(
                "{}: not a regular file or directory (symlinks are not published)",
                path.display()
            );
        }
    }
    Ok(())
}

/// One reconcile as an operator's `apply` (or `rollback`) runs it: update
/// policy, health gate, gc. The demo plays the reboot itself.
fn step(engine: &mut Engine, goal: Goal<'_>) -> Result<ApplyOutcome> {
    let req = Request {
        goal,
        actor: ferry_engine::engine::LOCAL_OPERATOR,
        overrides: Overrides {
            no_reboot: true,
            ..Overrides::default()
        },
        clock: None,
    };
    let done = ferry_engine::reconcile::reconcile(engine, &req)?;
    match (done.outcome, done.applied) {
        (Outcome::Applied { .. } | Outcome::NoChange, Some(applied)) => Ok(applied),
        (outcome, _) => anyhow::bail!("the demo's reconcile ended otherwise: {outcome}"),
    }
}

#[cfg(all(test, feature = "wasm"))]
mod tests {
    #[test]
    fn the_demo_module_is_the_assembled_decoder() {
        let source = include_str!("../../../integration/wasm/modbus-decoder.wat");
        assert_eq!(
            super::DECODER,
            wat::parse_str(source).unwrap().as_slice(),
            "reassemble agent/cli/demo/modules/modbus-decoder.wasm with wat2wasm"
        );
    }
}
