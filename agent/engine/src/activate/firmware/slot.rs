//! A slot: its capacity and read-back verification. Writing into one is
//! the install sequence's ([`super::install`]).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use ferry_core::ContentRef;

use super::FirmwareError;
pub use crate::config::SlotConfig;
use crate::store::{VerifyingReader, store_error};

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
