//! A gateway for firmware tests: a GRUB environment, two image-file slots
//! and a kernel command line file. The tests play the bootloader with
//! grub-editenv, following the script in images/bootloader/grub.cfg.
#![allow(dead_code, clippy::unwrap_used)]

use std::fs;

use super::{Fixture, grub_firmware, tool};

/// A device with a GRUB environment, two image-file slots and a kernel
/// command line file; the test plays the bootloader with grub-editenv,
/// following the script in images/bootloader/grub.cfg.
pub struct Device {
    pub f: Fixture,
    pub grubenv: std::path::PathBuf,
    pub cmdline: std::path::PathBuf,
}

impl Device {
    pub fn new() -> Device {
        let f = Fixture::new();
        let (grubenv, cmdline) = grub_firmware(&f);
        Device {
            f,
            grubenv,
            cmdline,
        }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        let list = tool("grub-editenv", &[self.grubenv.to_str().unwrap(), "list"]);
        list.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    /// The GRUB script: first slot in ORDER with OK=1 and TRY=0; TRY=1 saved; booted.
    pub fn boot(&self) -> Option<String> {
        let order = self.get("ORDER").unwrap_or_default();
        for slot in order.split_whitespace() {
            if self.get(&format!("{slot}_OK")).as_deref() == Some("1")
                && self.get(&format!("{slot}_TRY")).as_deref() == Some("0")
            {
                tool(
                    "grub-editenv",
                    &[
                        self.grubenv.to_str().unwrap(),
                        "set",
                        &format!("{slot}_TRY=1"),
                    ],
                );
                fs::write(
                    &self.cmdline,
                    format!("quiet root=/dev/slot{slot} rauc.slot={slot}\n"),
                )
                .unwrap();
                return Some(slot.to_owned());
            }
        }
        None
    }
}

pub const SLOT_SIZE: usize = 4 << 20;

/// A redundant U-Boot environment in `dir` (two copies made by
/// `mkenvimage -r`), A booting with three attempts; returns its
/// fw_env.config.
pub fn uboot_env(dir: &std::path::Path) -> std::path::PathBuf {
    let txt = dir.join("env.txt");
    fs::write(&txt, "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=0\n").unwrap();
    let image = dir.join("env.bin");
    let (image_s, txt_s) = (image.to_str().unwrap(), txt.to_str().unwrap());
    tool("mkenvimage", &["-r", "-s", "0x2000", "-o", image_s, txt_s]);
    let (c1, c2) = (dir.join("copy1.bin"), dir.join("copy2.bin"));
    fs::copy(&image, &c1).unwrap();
    fs::copy(&image, &c2).unwrap();
    let cfg = dir.join("fw_env.config");
    fs::write(
        &cfg,
        format!("{} 0x0 0x2000\n{} 0x0 0x2000\n", c1.display(), c2.display()),
    )
    .unwrap();
    cfg
}

pub fn image_bytes(version: &str) -> Vec<u8> {
    // 3 MiB: several write chunks, so a crash can land mid-write.
    let mut out = Vec::with_capacity(3 << 20);
    let mut i: u32 = 0;
    while out.len() < 3 << 20 {
        out.extend_from_slice(format!("{version}:{i:08}\n").as_bytes());
        i += 1;
    }
    out
}

/// A device with two 4 MiB image-file slots, slot A holding firmware v1,
/// GRUB booting A; health = a marker file; reboots counted in a file.
pub struct Gateway {
    pub d: Device,
    pub healthy: std::path::PathBuf,
    pub reboots: std::path::PathBuf,
    pub boot_id: std::path::PathBuf,
    pub boots: std::cell::Cell<u32>,
}

impl Gateway {
    pub fn new() -> Gateway {
        let d = Device::new();
        let dir = d.f.dir.path().to_path_buf();
        let (healthy, reboots, boot_id) = (
            dir.join("healthy"),
            dir.join("reboots"),
            dir.join("boot_id"),
        );
        let text = fs::read_to_string(&d.f.config)
            .unwrap()
            .replace("size = 1048576", &format!("size = {SLOT_SIZE}"));
        fs::write(
            &d.f.config,
            text.replace(
                "[firmware]\n",
                &format!(
                    "[firmware]\nboot_id = {boot_id:?}\nreboot_command = [\"sh\", \"-c\", \"echo reboot >> {}\"]\n",
                    reboots.display()
                ),
            ) + &format!("[[health.check]]\ncommand = [\"test\", \"-e\", {healthy:?}]\n"),
        )
        .unwrap();
        fs::write(dir.join("slot-a.img"), image_bytes("v1")).unwrap();
        fs::write(dir.join("slot-b.img"), b"").unwrap();
        let g = Gateway {
            d,
            healthy,
            reboots,
            boot_id,
            boots: std::cell::Cell::new(0),
        };
        g.power_on();
        g
    }

    /// Power on: a new boot id, GRUB picks a slot; returns it. The slot it
    /// boots must hold a complete, verified image.
    pub fn power_on(&self) -> String {
        self.boots.set(self.boots.get() + 1);
        fs::write(&self.boot_id, format!("boot-{}\n", self.boots.get())).unwrap();
        let slot = self.d.boot().expect("GRUB finds a bootable slot");
        let content = fs::read(
            self.d
                .f
                .dir
                .path()
                .join(format!("slot-{}.img", slot.to_lowercase())),
        )
        .unwrap();
        let version = content
            .split(|&b| b == b':')
            .next()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        assert!(
            content == image_bytes(&version),
            "slot {slot} booted with an incomplete image ({} bytes)",
            content.len()
        );
        slot
    }

    /// The firmware version in `slot` (the image's own first bytes).
    pub fn version_in(&self, slot: &str) -> String {
        let content = self.slot_image(slot);
        let v = content.split(|&b| b == b':').next().unwrap_or_default();
        String::from_utf8_lossy(v).into_owned()
    }

    pub fn reboots(&self) -> usize {
        fs::read_to_string(&self.reboots)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    pub fn publish(&self, version: &str) {
        self.d.f.publish_raw(
            &format!(
                "apiVersion: ferry.dev/v1\nresources:\n  - {{kind: file, path: /etc/os-version, source: files/version}}\n  - {{kind: firmware, name: gateway-os, version: \"{version}\", source: images/os.img}}\n"
            ),
            &[("files/version".to_owned(), format!("{version}\n")), ("images/os.img".to_owned(), String::from_utf8(image_bytes(version)).unwrap())],
        );
    }

    pub fn slot_image(&self, slot: &str) -> Vec<u8> {
        fs::read(
            self.d
                .f
                .dir
                .path()
                .join(format!("slot-{}.img", slot.to_lowercase())),
        )
        .unwrap()
    }

    pub fn open_transitions(&self) -> usize {
        self.d.f.json(&["status", "--json"])["open_transitions"]
            .as_array()
            .unwrap()
            .len()
    }

    pub fn audit_events(&self) -> Vec<String> {
        let a = self.d.f.json(&["audit", "list", "--json"]);
        a.as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    }
}
