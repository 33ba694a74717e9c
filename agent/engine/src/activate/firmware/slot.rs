//! Writing an image into a slot: streamed with constant memory, length and
//! sha256 enforced while writing, fsynced, then read back and verified.
//! The caller has already marked the slot bad, so a crash or a mismatch
//! half-way leaves an invalid slot the bootloader skips, never a slot it
//! would boot.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use ferry_core::ContentRef;

use fail::fail_point;

use super::FirmwareError;
pub use crate::config::SlotConfig;
#[cfg_attr(not(feature = "failpoints"), allow(unused_imports))]
use crate::failpoints as fp;
use crate::store::{VerifyingReader, store_error};

/// Streaming buffer: the whole write uses this much memory.
const CHUNK: usize = 1024 * 1024;

impl SlotConfig {
    /// The slot's capacity: configured, else the block device's size.
    pub fn capacity(&self) -> Result<u64, FirmwareError> {
        if let Some(size) = self.size {
            return Ok(size);
        }
        let mut f = File::open(&self.device)
            .map_err(|e| self.err(format!("opening {}: {e}", self.device.display())))?;
        if f.metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false)
        {
            return Err(self.err("an image-file slot needs `size` in the configuration".to_owned()));
        }
        f.seek(SeekFrom::End(0))
            .map_err(|e| self.err(format!("size of {}: {e}", self.device.display())))
    }

    fn err(&self, message: String) -> FirmwareError {
        FirmwareError::Slot {
            slot: self.name.clone(),
            message,
        }
    }

    /// Streams `src` into the slot, enforcing `content`; then verifies what
    /// the slot holds. Returns the bytes written.
    pub fn write_image(
        &self,
        src: &mut dyn Read,
        content: ContentRef,
    ) -> Result<u64, FirmwareError> {
        let capacity = self.capacity()?;
        if content.length > capacity {
            return Err(self.err(format!(
                "image of {} bytes does not fit the slot ({capacity} bytes)",
                content.length
            )));
        }
        let is_file = fs::metadata(&self.device)
            .map(|m| m.is_file())
            .unwrap_or(true);
        let mut out = OpenOptions::new()
            .write(true)
            .create(is_file)
            .truncate(false)
            .open(&self.device)
            .map_err(|e| self.err(format!("opening {}: {e}", self.device.display())))?;
        let what = format!("image for slot {}", self.name);
        let mut reader = VerifyingReader::new(src, content, what.clone());
        let mut buf = vec![0u8; CHUNK];
        let mut written = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| self.err(store_error(&what, e).to_string()))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| self.err(format!("writing {}: {e}", self.device.display())))?;
            written += n as u64;
            fail_point!(fp::FIRMWARE_WRITE);
        }
        if is_file {
            out.set_len(written)
                .map_err(|e| self.err(format!("truncating {}: {e}", self.device.display())))?;
        }
        out.sync_all()
            .map_err(|e| self.err(format!("fsync {}: {e}", self.device.display())))?;
        drop(out);
        self.verify(content)?;
        Ok(written)
    }

    /// Reads the first `content.length` bytes of the slot back and checks them.
    pub fn verify(&self, content: ContentRef) -> Result<(), FirmwareError> {
        let f = File::open(&self.device)
            .map_err(|e| self.err(format!("opening {}: {e}", self.device.display())))?;
        let what = format!("slot {} read back", self.name);
        let mut reader = VerifyingReader::new(f.take(content.length), content, what.clone());
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| self.err(store_error(&what, e).to_string()))?;
        Ok(())
    }
}

/// Looks a slot up by name.
pub fn find<'a>(slots: &'a [SlotConfig], name: &str) -> Option<&'a SlotConfig> {
    slots.iter().find(|s| s.name == name)
}

/// The path of a slot, for messages.
pub fn describe(slot: &SlotConfig) -> String {
    format!("{} ({})", slot.name, Path::new(&slot.device).display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(dir: &Path, size: u64) -> SlotConfig {
        SlotConfig {
            name: "B".into(),
            device: dir.join("slot-b.img"),
            size: Some(size),
        }
    }

    #[test]
    fn writes_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let s = slot(dir.path(), 1 << 20);
        let image = vec![7u8; 300_000];
        let n = s
            .write_image(&mut &image[..], ContentRef::of(&image))
            .unwrap();
        assert_eq!(n, 300_000);
        assert_eq!(fs::read(&s.device).unwrap(), image);
    }

    #[test]
    fn too_large_and_mismatch_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = slot(dir.path(), 1000);
        let image = vec![1u8; 2000];
        let e = s
            .write_image(&mut &image[..], ContentRef::of(&image))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not fit"), "{e}");
        assert!(!s.device.exists(), "nothing written");
        let s = slot(dir.path(), 1 << 20);
        let mut forged = image.clone();
        forged[1500] = 9;
        let e = s
            .write_image(&mut &forged[..], ContentRef::of(&image))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256 mismatch"), "{e}");
    }
}
