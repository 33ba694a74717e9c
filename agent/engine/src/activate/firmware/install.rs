//! The one install sequence of a firmware image, whether it arrives in full
//! or is built by delta from chunks:
//!
//! 1. **fallback check**: the inactive slot is not overwritten while the
//!    running one is not good (after a rollback, before the reboot back):
//!    it is then the fallback; nor when the image does not fit;
//! 2. **invalidate**: mark the inactive slot bad, so the bootloader never
//!    picks a half-written slot;
//! 3. **write**: a full image streamed (length and sha256 enforced while
//!    writing), or a delta assembled in place; fsynced;
//! 4. **verify**: read the slot back: what the device holds, not what was
//!    sent to it;
//! 5. **try-once + switch**: first in the boot order, one fresh try.
//!
//! A slot that holds the image already (a rollback to the firmware that ran
//! before) skips 2–4. A delta runs 1–4 while the revision is staged (the
//! image is built in the slot, no full copy is kept); 5 always runs inside
//! the recorded transition, in the activator. A power cut anywhere leaves
//! either the old boot environment with the inactive slot marked bad (the
//! bootloader keeps booting the running slot) or a complete, verified image
//! marked for one try.

use crate::activate::firmware::slot::Slot as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};

use fail::fail_point;
use ferry_core::ContentRef;

use super::slot::SlotConfig;
use super::{BootEnv, Firmware, FirmwareError};
#[cfg_attr(not(feature = "failpoints"), allow(unused_imports))]
use crate::failpoints as fp;
use crate::store::{VerifyingReader, store_error};

/// Streaming buffer: a full write uses this much memory.
const CHUNK: usize = 1024 * 1024;

/// One image on its way into the inactive slot.
#[derive(Debug)]
pub struct Install<'f> {
    fw: &'f Firmware,
    /// The slot written: the one not booted.
    pub slot: &'f SlotConfig,
    /// The slot running now.
    pub booted: String,
    content: ContentRef,
}

impl Firmware {
    /// Starts installing `content`: finds the slots, writes nothing.
    pub fn install(&self, content: ContentRef) -> Result<Install<'_>, FirmwareError> {
        let booted = self.booted()?;
        let slot = self
            .slots
            .iter()
            .find(|s| s.name != booted)
            .expect("two distinct slots");
        Ok(Install {
            fw: self,
            slot,
            booted,
            content,
        })
    }
}

impl Install<'_> {
    /// Whether the inactive slot holds the image already (read back and
    /// verified): then steps 2–4 are skipped.
    pub fn holds(&self) -> bool {
        self.slot.verify(self.content).is_ok()
    }

    /// 1. The fallback check against `env` (the boot environment as loaded).
    pub fn check(&self, env: &BootEnv) -> Result<(), FirmwareError> {
        if !self.fw.scheme.state(env, &self.booted).good {
            return Err(FirmwareError::Refused(format!(
                "the running slot {booted} is not marked good (rolled back or unconfirmed): \
                 slot {target} is the fallback and is not overwritten; reboot, or mark {booted} good",
                booted = self.booted,
                target = self.slot.name,
            )));
        }
        let capacity = self.slot.capacity()?;
        if self.content.length > capacity {
            return Err(FirmwareError::Refused(format!(
                "image of {} bytes does not fit slot {} ({capacity} bytes)",
                self.content.length, self.slot.name
            )));
        }
        Ok(())
    }

    /// 1.+2. Checks, then marks the inactive slot bad.
    pub fn invalidate(&self) -> Result<(), FirmwareError> {
        let mut env = self.fw.env.load()?;
        self.check(&env)?;
        self.fw.scheme.mark_bad(&mut env, &self.slot.name);
        self.fw.env.store(&env)
    }

    /// Step 3 begins: opens the slot for writing (and reading: a delta
    /// finds chunks an interrupted earlier attempt left in place). Only
    /// after [`invalidate`](Self::invalidate).
    pub fn open(&self) -> Result<SlotWriter<'_>, FirmwareError> {
        let device = &self.slot.device;
        let is_file = fs::metadata(device).map(|m| m.is_file()).unwrap_or(true);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(is_file)
            .truncate(false)
            .open(device)
            .map_err(|e| self.slot_err(format!("opening {}: {e}", device.display())))?;
        Ok(SlotWriter {
            install: self,
            file,
            is_file,
        })
    }

    /// 3.+4. Streams a full image from `src` into the slot (length and
    /// sha256 enforced while writing), then verifies it. Returns the bytes
    /// written.
    pub fn write(&self, src: &mut dyn Read) -> Result<u64, FirmwareError> {
        let mut out = self.open()?;
        let what = format!("image for slot {}", self.slot.name);
        let mut reader = VerifyingReader::new(src, self.content, what.clone());
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| self.slot_err(store_error(&what, e).to_string()))?;
            if n == 0 {
                break;
            }
            out.file.write_all(&buf[..n]).map_err(|e| {
                self.slot_err(format!("writing {}: {e}", self.slot.device.display()))
            })?;
            written += n as u64;
            fail_point!(fp::FIRMWARE_WRITE);
        }
        out.finish()?;
        Ok(written)
    }

    /// 5. Try-once + switch: the slot first in the boot order, one fresh try.
    pub fn activate(&self) -> Result<(), FirmwareError> {
        let mut env = self.fw.env.load()?;
        self.fw
            .scheme
            .mark_active(&mut env, &self.slot.name, &self.fw.names());
        self.fw.env.store(&env)
    }

    fn slot_err(&self, message: String) -> FirmwareError {
        FirmwareError::Slot {
            slot: self.slot.name.clone(),
            message,
        }
    }
}

/// The inactive slot, open for step 3.
#[derive(Debug)]
pub struct SlotWriter<'i> {
    install: &'i Install<'i>,
    file: File,
    is_file: bool,
}

impl SlotWriter<'_> {
    /// The open slot, for a writer that places bytes itself.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The end of 3. and 4.: an image-file slot is cut to the image's
    /// length, everything is fsynced, then the slot is read back and
    /// verified.
    pub fn finish(self) -> Result<(), FirmwareError> {
        let install = self.install;
        let device = &install.slot.device;
        if self.is_file {
            self.file
                .set_len(install.content.length)
                .map_err(|e| install.slot_err(format!("truncating {}: {e}", device.display())))?;
        }
        self.file
            .sync_all()
            .map_err(|e| install.slot_err(format!("fsync {}: {e}", device.display())))?;
        drop(self.file);
        install.slot.verify(install.content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activate::firmware::plain::PlainEnv;
    use crate::activate::firmware::scheme::Scheme;
    use std::path::Path;

    fn firmware(dir: &Path, size: u64) -> Firmware {
        let slots = ["A", "B"]
            .map(|n| SlotConfig {
                name: n.into(),
                device: dir.join(format!("slot-{n}.img")),
                size: Some(size),
            })
            .to_vec();
        fs::write(dir.join("cmdline"), "root=/dev/x ferry.slot=A\n").unwrap();
        fs::write(dir.join("boot_id"), "b1\n").unwrap();
        fs::write(
            dir.join("env"),
            "BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n",
        )
        .unwrap();
        Firmware {
            env: Box::new(PlainEnv {
                path: dir.join("env"),
            }),
            scheme: Scheme::Uboot { attempts: 3 },
            slots,
            cmdline: dir.join("cmdline"),
            slot_param: "ferry.slot".into(),
            boot_id: dir.join("boot_id"),
        }
    }

    #[test]
    fn a_full_image_is_written_verified_and_switched_to() {
        let dir = tempfile::tempdir().unwrap();
        let fw = firmware(dir.path(), 1 << 20);
        let image = vec![7u8; 300_000];
        let install = fw.install(ContentRef::of(&image)).unwrap();
        assert_eq!(install.slot.name, "B");
        assert!(!install.holds());
        install.invalidate().unwrap();
        assert!(!fw.scheme.state(&fw.env.load().unwrap(), "B").good);
        assert_eq!(install.write(&mut &image[..]).unwrap(), 300_000);
        assert_eq!(fs::read(&install.slot.device).unwrap(), image);
        assert!(install.holds());
        install.activate().unwrap();
        assert_eq!(fw.scheme.order(&fw.env.load().unwrap())[0], "B");
    }

    #[test]
    fn too_large_and_forged_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fw = firmware(dir.path(), 1000);
        let image = vec![1u8; 2000];
        let install = fw.install(ContentRef::of(&image)).unwrap();
        let e = install.invalidate().unwrap_err();
        assert!(e.to_string().contains("does not fit slot B"), "{e}");
        assert_eq!(
            ferry_core::Classify::class(&e),
            ferry_core::ErrorClass::Refused
        );
        assert!(!install.slot.device.exists(), "nothing written");

        let fw = firmware(dir.path(), 1 << 20);
        let mut forged = image.clone();
        forged[1500] = 9;
        let install = fw.install(ContentRef::of(&image)).unwrap();
        install.invalidate().unwrap();
        let e = install.write(&mut &forged[..]).unwrap_err().to_string();
        assert!(e.contains("sha256 mismatch"), "{e}");
        assert!(!install.holds());
    }

    #[test]
    fn the_fallback_slot_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let fw = firmware(dir.path(), 1 << 20);
        let mut env = fw.env.load().unwrap();
        fw.scheme.mark_bad(&mut env, "A");
        fw.env.store(&env).unwrap();
        let image = vec![3u8; 100];
        let install = fw.install(ContentRef::of(&image)).unwrap();
        let e = install.invalidate().unwrap_err().to_string();
        assert!(e.contains("slot B is the fallback"), "{e}");
        assert_eq!(fw.env.load().unwrap(), env, "the environment is untouched");
    }
}
