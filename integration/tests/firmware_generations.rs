//! Firmware across generations, on image-file slots with a GRUB and a
//! U-Boot environment (the bootloader played with `grub-editenv` and
//! `fw_printenv`/`fw_setenv`, following images/bootloader/):
//! - rolling back to a generation that does not manage firmware releases
//!   it: the booted firmware stays, and the plan and audit say so;
//! - rolling forward to the firmware that runs rewrites no slot and needs
//!   no reboot;
//! - `ferry firmware cancel` undoes a switch that waits for its reboot;
//! - a kill -9 at each step of these leaves a device that boots a complete
//!   image and converges.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::time::SystemTime;

use common::gateway::{Gateway, SLOT_SIZE, image_bytes, uboot_env};
use common::{Fixture, stderr, tool};

/// A device with two image-file slots, slot A running firmware v1, health
/// checks that pass, and a reboot command that only counts.
trait Board {
    fn f(&self) -> &Fixture;
    /// Power on: the bootloader picks a slot (checked to hold a complete
    /// image); returns it.
    fn power_on(&self) -> String;
    fn reboots(&self) -> usize;

    fn slot(&self, name: &str) -> PathBuf {
        self.f()
            .dir
            .path()
            .join(format!("slot-{}.img", name.to_lowercase()))
    }

    fn written(&self, name: &str) -> SystemTime {
        fs::metadata(self.slot(name)).unwrap().modified().unwrap()
    }

    /// A revision: a file, and firmware `version` unless `None`.
    fn publish(&self, file: &str, version: Option<&str>) {
        let mut manifest = "apiVersion: ferry.dev/v1\nresources:\n  - {kind: file, path: /etc/site, source: files/site}\n".to_owned();
        let mut files = vec![("files/site".to_owned(), format!("{file}\n"))];
        if let Some(v) = version {
            manifest.push_str(&format!(
                "  - {{kind: firmware, name: gateway-os, version: \"{v}\", source: images/os.img}}\n"
            ));
            files.push((
                "images/os.img".to_owned(),
                String::from_utf8(image_bytes(v)).unwrap(),
            ));
        }
        self.f().publish_raw(&manifest, &files);
    }

    fn status(&self) -> serde_json::Value {
        self.f().json(&["status", "--json"])
    }

    fn open_transitions(&self) -> usize {
        self.status()["open_transitions"].as_array().unwrap().len()
    }

    fn current(&self) -> u64 {
        self.status()["current"]["id"].as_u64().unwrap()
    }

    fn activations(&self) -> Vec<serde_json::Value> {
        self.f()
            .json(&["audit", "list", "--json", "--event", "activated"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// After a power cut anywhere: boots a complete image, recovers, and
    /// nothing stays open.
    fn recover_after_power_cut(&self) -> String {
        let mut booted = self.power_on();
        let before = self.reboots();
        self.f().ok(&["recover"]);
        if self.reboots() > before {
            booted = self.power_on();
            self.f().ok(&["recover"]);
        }
        assert_eq!(self.open_transitions(), 0);
        self.f().ok(&["audit", "verify"]);
        booted
    }
}

impl Board for Gateway {
    fn f(&self) -> &Fixture {
        &self.d.f
    }
    fn power_on(&self) -> String {
        Gateway::power_on(self)
    }
    fn reboots(&self) -> usize {
        Gateway::reboots(self)
    }
}

/// The same device with a redundant U-Boot environment (boot counting).
struct Uboot {
    f: Fixture,
    cfg: PathBuf,
    cmdline: PathBuf,
    boot_id: PathBuf,
    reboots: PathBuf,
    boots: std::cell::Cell<u32>,
}

impl Uboot {
    fn new() -> Uboot {
        let f = Fixture::new();
        f.keep_generations();
        let dir = f.dir.path().to_path_buf();
        let cfg = uboot_env(&dir);
        let (cmdline, boot_id, reboots, healthy) = (
            dir.join("cmdline"),
            dir.join("boot_id"),
            dir.join("reboots"),
            dir.join("healthy"),
        );
        fs::write(dir.join("slot-a.img"), image_bytes("v1")).unwrap();
        fs::write(dir.join("slot-b.img"), b"").unwrap();
        fs::write(&healthy, "").unwrap();
        let text = fs::read_to_string(&f.config).unwrap();
        fs::write(
            &f.config,
            format!(
                "{text}[firmware]\nbootenv = \"uboot\"\nuboot_config = {cfg:?}\ncmdline = {cmdline:?}\nboot_id = {boot_id:?}\nreboot_command = [\"sh\", \"-c\", \"echo reboot >> {}\"]\nslots = [{{ name = \"A\", device = {:?}, size = {SLOT_SIZE} }}, {{ name = \"B\", device = {:?}, size = {SLOT_SIZE} }}]\n[[health.check]]\ncommand = [\"test\", \"-e\", {healthy:?}]\n",
                reboots.display(),
                dir.join("slot-a.img"),
                dir.join("slot-b.img"),
            ),
        )
        .unwrap();
        let u = Uboot {
            f,
            cfg,
            cmdline,
            boot_id,
            reboots,
            boots: std::cell::Cell::new(0),
        };
        assert_eq!(u.power_on(), "A");
        u.f.ok(&["firmware", "mark-good"]);
        u
    }

    fn get(&self, name: &str) -> Option<String> {
        let vars = tool("fw_printenv", &["-c", self.cfg.to_str().unwrap()]);
        vars.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }
}

impl Board for Uboot {
    fn f(&self) -> &Fixture {
        &self.f
    }

    /// The U-Boot script: the first slot of BOOT_ORDER with attempts left,
    /// decremented first.
    fn power_on(&self) -> String {
        self.boots.set(self.boots.get() + 1);
        fs::write(&self.boot_id, format!("boot-{}\n", self.boots.get())).unwrap();
        let c = self.cfg.to_str().unwrap();
        for slot in self
            .get("BOOT_ORDER")
            .unwrap_or_default()
            .split_whitespace()
        {
            let var = format!("BOOT_{slot}_LEFT");
            let left: u32 = self.get(&var).and_then(|v| v.parse().ok()).unwrap_or(0);
            if left > 0 {
                tool("fw_setenv", &["-c", c, &var, &(left - 1).to_string()]);
                fs::write(&self.cmdline, format!("console=ttyS0 rauc.slot={slot}\n")).unwrap();
                let content = fs::read(self.slot(slot)).unwrap();
                let version = content.split(|&b| b == b':').next().unwrap_or_default();
                let version = String::from_utf8_lossy(version).into_owned();
                assert!(
                    content == image_bytes(&version),
                    "slot {slot} booted with an incomplete image"
                );
                return slot.to_owned();
            }
        }
        panic!("U-Boot finds no bootable slot");
    }

    fn reboots(&self) -> usize {
        fs::read_to_string(&self.reboots)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

fn grub() -> Gateway {
    let g = Gateway::new();
    g.d.f.keep_generations();
    fs::write(&g.healthy, "").unwrap();
    g.d.f.ok(&["firmware", "mark-good"]);
    g
}

/// Generation 1 manages no firmware; generation 2 brings v2, confirmed in B.
fn two_generations(b: &dyn Board) {
    b.publish("one", None);
    b.f().ok(&["apply", "--no-reboot"]);
    b.publish("two", Some("v2"));
    let out = b.f().ok(&["apply", "--no-reboot"]);
    assert!(out.contains("firmware written to slot B"), "{out}");
    assert_eq!(b.power_on(), "B");
    b.f().ok(&["recover"]);
    assert_eq!((b.current(), b.open_transitions()), (2, 0));
}

fn across_generations(b: &dyn Board) {
    two_generations(b);
    let (a, bee) = (b.written("A"), b.written("B"));
    let reboots = b.reboots();

    // Back to generation 1: it does not manage firmware, so v2 keeps
    // running, and the plan and the audit say "release", not "remove".
    let out = b.f().run(&["--log-level", "info", "rollback", "--to", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((b.current(), b.open_transitions()), (1, 0));
    assert_eq!(b.reboots(), reboots, "a release needs no reboot");
    let released = b.activations().pop().unwrap();
    assert_eq!(released["details"]["op"], "release", "{released:#}");
    assert_eq!(released["details"]["notes"]["running"], "B", "{released:#}");
    let plan = b.f().ok(&["plan"]);
    assert!(plan.contains("+ firmware gateway-os"), "{plan}");
    let fw = b.f().json(&["firmware", "status", "--json"]);
    assert_eq!(
        (fw["booted"].as_str(), fw["order"][0].as_str()),
        (Some("B"), Some("B"))
    );

    // Forward again, by rollback and by apply: the booted slot runs v2
    // already, so no slot is written and no reboot is needed.
    let out = b.f().run(&["rollback", "--to", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!((b.current(), b.open_transitions()), (2, 0));
    assert_eq!(b.reboots(), reboots);
    let unchanged = b.activations().pop().unwrap();
    assert_eq!(
        unchanged["details"]["notes"]["unchanged"], true,
        "{unchanged:#}"
    );
    b.f().ok(&["rollback", "--to", "1"]);
    let out = b.f().ok(&["apply"]);
    assert!(out.contains("switched generation 1"), "{out}");
    assert_eq!(b.open_transitions(), 0, "nothing waits for a reboot");
    assert_eq!(b.reboots(), reboots);
    assert_eq!(
        (b.written("A"), b.written("B")),
        (a, bee),
        "no slot rewritten"
    );
    assert_eq!(b.power_on(), "B");
    b.f().ok(&["recover"]);

    // A pending switch, cancelled before the reboot.
    b.publish("three", Some("v3"));
    let out = b.f().ok(&["apply", "--no-reboot"]);
    assert!(out.contains("firmware written to slot A"), "{out}");
    let pending = b.current();
    let cancelled = b.f().json(&["firmware", "cancel", "--json"]);
    assert_eq!(cancelled["slot"], "A");
    assert_eq!(b.open_transitions(), 0);
    assert!(
        b.current() < pending,
        "the generation before is current again"
    );
    let rejected = &b.status()["rejected"][0];
    assert!(
        rejected["reason"]
            .as_str()
            .unwrap()
            .contains("cancelled by local-operator"),
        "{rejected:#}"
    );
    let out = b.f().run(&["firmware", "cancel"]);
    assert_eq!(
        out.status.code(),
        Some(8),
        "nothing waits: {}",
        stderr(&out)
    );
    let out = b.f().run(&["apply", "--no-reboot"]);
    assert_eq!(out.status.code(), Some(8), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(b.power_on(), "B", "slot A is marked bad");
    b.f().ok(&["recover"]);
    b.f().ok(&["audit", "verify"]);
}

#[test]
fn grub_firmware_across_generations() {
    across_generations(&grub());
}

#[test]
fn uboot_firmware_across_generations() {
    across_generations(&Uboot::new());
}

/// Runs `args` with ferry killed (SIGKILL) where it reaches `point`.
fn killed_at(f: &Fixture, args: &[&str], point: &str) {
    use std::io::BufRead as _;
    let mut child = f
        .cmd(args)
        .env("FERRY_CRASH_AT", format!("{point}:hang"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut reached = false;
    for l in lines {
        let l = l.unwrap();
        if l.contains("failpoint") && l.contains("reached") {
            reached = true;
            break;
        }
        seen.push(l);
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        reached,
        "{args:?} never reached {point}: {status:?}\n{}",
        seen.join("\n")
    );
    assert_eq!(status.signal(), Some(9));
}

fn killed_at_each_step(board: impl Fn() -> Box<dyn Board>) {
    use ferry_engine::failpoints as fp;
    // Forward to the running firmware: no slot is written whatever the
    // moment of the kill, and the device converges without a reboot.
    for point in [
        fp::ACTIVATE_BEFORE_APPLY,
        fp::ACTIVATE_AFTER_APPLY,
        fp::SWITCHED,
    ] {
        let b = board();
        two_generations(&*b);
        b.f().ok(&["rollback", "--to", "1"]);
        let (a, bee) = (b.written("A"), b.written("B"));
        killed_at(b.f(), &["rollback", "--to", "2"], point);
        assert_eq!(b.recover_after_power_cut(), "B", "{point}");
        b.f().ok(&["apply"]);
        assert_eq!(b.open_transitions(), 0, "{point}");
        assert_eq!(
            (b.written("A"), b.written("B")),
            (a, bee),
            "{point}: a slot rewritten"
        );
    }
    // Cancel: killed after the rejection, or after undoing a step.
    for point in [fp::FIRMWARE_CANCEL_REJECTED, fp::UNDO_AFTER_STEP] {
        let b = board();
        two_generations(&*b);
        b.publish("three", Some("v3"));
        b.f().ok(&["apply", "--no-reboot"]);
        killed_at(b.f(), &["firmware", "cancel"], point);
        // Before any reboot, the cancel is finished (by recovery or again).
        let out = b.f().run(&["firmware", "cancel"]);
        assert!(
            out.status.success() || out.status.code() == Some(8),
            "{point}: {}",
            stderr(&out)
        );
        assert_eq!(b.open_transitions(), 0, "{point}");
        assert_eq!(b.recover_after_power_cut(), "B", "{point}");
        let status = b.status();
        assert!(
            !status["rejected"].as_array().unwrap().is_empty(),
            "{point}"
        );
    }
}

#[test]
fn grub_kill_9_at_each_step_converges() {
    killed_at_each_step(|| Box::new(grub()));
}

#[test]
fn uboot_kill_9_at_each_step_converges() {
    killed_at_each_step(|| Box::new(Uboot::new()));
}
