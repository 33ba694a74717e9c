//! A slot: its capacity and read-back verification. Writing into one is
//! the install sequence's ([`super::install`]).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use ferry_core::ContentRef;

use super::FirmwareError;
pub use crate::config::SlotConfig;
use crate::store::{VerifyingReader, store_error};

/// What a configured slot is to the firmware activator: a capacity and
/// bytes to read back.
pub trait Slot {
    /// The slot's capacity: configured, else the block device's size.
    fn capacity(&self) -> Result<u64, FirmwareError>;
    /// Reads the first `content.length` bytes of the slot back and checks them.
    fn verify(&self, content: ContentRef) -> Result<(), FirmwareError>;
}

fn slot_err(slot: &SlotConfig, message: String) -> FirmwareError {
    FirmwareError::Slot {
        slot: slot.name.clone(),
        message,
    }
}

impl Slot for SlotConfig {
    fn capacity(&self) -> Result<u64, FirmwareError> {
        if let Some(size) = self.size {
            return Ok(size);
        }
        let mut f = File::open(&self.device)
            .map_err(|e| slot_err(self, format!("opening {}: {e}", self.device.display())))?;
        if f.metadata()
            .map(|m| m.file_type().is_file())
            .unwrap_or(false)
        {
            return Err(slot_err(
                self,
                "an image-file slot needs `size` in the configuration".to_owned(),
            ));
        }
        f.seek(SeekFrom::End(0))
            .map_err(|e| slot_err(self, format!("size of {}: {e}", self.device.display())))
    }

    fn verify(&self, content: ContentRef) -> Result<(), FirmwareError> {
        let f = File::open(&self.device)
            .map_err(|e| slot_err(self, format!("opening {}: {e}", self.device.display())))?;
        let what = format!("slot {} read back", self.name);
        let mut reader = VerifyingReader::new(f.take(content.length), content, what.clone());
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| slot_err(self, store_error(&what, e).to_string()))?;
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
