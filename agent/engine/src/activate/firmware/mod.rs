//! Firmware A/B: boot environments, the slot scheme, slot writes.
//!
//! - [`env`]: an ordered set of boot variables and the [`BootEnvStore`] trait;
//! - [`grub`]: the GRUB environment block, byte-compatible with `grub-editenv`;
//! - [`uboot`]: the U-Boot environment (single or redundant, CRC32), as
//!   `fw_printenv`/`fw_setenv`/`mkenvimage` read and write it;
//! - [`plain`]: a `name=value` file for tests and custom boot scripts;
//! - [`scheme`]: the RAUC-compatible variables for boot order, try-once and
//!   boot counting, and the booted-slot detection;
//! - [`install`]: the one install sequence of an image, full or by delta;
//! - [`slot`]: a slot's capacity and read-back verification.

mod activator;
pub mod env;
pub mod grub;
pub mod install;
pub mod plain;
pub mod scheme;
pub mod slot;
pub mod uboot;

use crate::activate::firmware::slot::Slot as _;
use crate::config::{BootEnvKind, BootScheme};
use ferry_core::{Classify, ErrorClass};
use std::path::PathBuf;

pub use activator::{FirmwareActivator, FirmwareUndo};
pub use env::{BootEnv, BootEnvStore};

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("boot environment {path}: {message}")]
    Env { path: PathBuf, message: String },
    #[error("boot environment {path}: {source}")]
    EnvIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("slot {slot}: {message}")]
    Slot { slot: String, message: String },
    #[error("booted slot: {0}")]
    Booted(String),
    /// An install that would break the A/B promise (overwrite the fallback,
    /// an image larger than its slot).
    #[error("{0}")]
    Refused(String),
}

impl Classify for FirmwareError {
    fn class(&self) -> ErrorClass {
        match self {
            FirmwareError::Booted(_) | FirmwareError::Refused(_) => ErrorClass::Refused,
            _ => ErrorClass::Internal,
        }
    }
}

/// The configured firmware set-up: boot environment, scheme, slots.
#[derive(Debug)]
pub struct Firmware {
    pub env: Box<dyn BootEnvStore>,
    pub scheme: scheme::Scheme,
    pub slots: Vec<slot::SlotConfig>,
    cmdline: PathBuf,
    slot_param: String,
    boot_id: PathBuf,
}

/// `ferry firmware status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FirmwareStatus {
    pub scheme: String,
    /// The booted slot, if the kernel command line names one.
    pub booted: Option<String>,
    /// Why the booted slot is unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booted_error: Option<String>,
    pub order: Vec<String>,
    pub slots: Vec<SlotStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub device: PathBuf,
    pub booted: bool,
    /// The image ferry last wrote into this slot, as far as the state knows.
    pub image: Option<SlotImage>,
    #[serde(flatten)]
    pub boot: scheme::SlotBootState,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotImage {
    pub name: String,
    pub version: String,
    pub sha256: String,
    /// `confirmed`, `pending` (waiting for the reboot) or `rolled-back`.
    pub state: String,
}

impl Firmware {
    /// From `[firmware]`; `None` when no boot environment is configured.
    pub fn from_config(
        c: &crate::config::FirmwareConfig,
    ) -> Result<Option<Firmware>, FirmwareError> {
        let (Some(kind), Some(scheme)) = (c.bootenv, c.scheme()) else {
            return Ok(None);
        };
        let env: Box<dyn BootEnvStore> = match kind {
            BootEnvKind::Grub => Box::new(grub::GrubEnv {
                path: c.grubenv.clone(),
            }),
            BootEnvKind::Uboot => Box::new(uboot::parse_config(&c.uboot_config)?),
            BootEnvKind::File => Box::new(plain::PlainEnv {
                path: c.envfile.clone(),
            }),
        };
        let scheme = match scheme {
            BootScheme::Grub => scheme::Scheme::Grub,
            BootScheme::Uboot => scheme::Scheme::Uboot {
                attempts: c.attempts,
            },
        };
        Ok(Some(Firmware {
            env,
            scheme,
            slots: c.slots.clone(),
            cmdline: c.cmdline.clone(),
            slot_param: c.slot_param.clone(),
            boot_id: c.boot_id.clone(),
        }))
    }

    /// The current boot's id (changes at every boot).
    pub fn boot_id(&self) -> Result<String, FirmwareError> {
        std::fs::read_to_string(&self.boot_id)
            .map(|s| s.trim().to_owned())
            .map_err(|e| FirmwareError::Booted(format!("reading {}: {e}", self.boot_id.display())))
    }

    pub fn names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.name.clone()).collect()
    }

    /// The slot the running system booted from (kernel command line).
    pub fn booted(&self) -> Result<String, FirmwareError> {
        let cmdline = std::fs::read_to_string(&self.cmdline).map_err(|e| {
            FirmwareError::Booted(format!("reading {}: {e}", self.cmdline.display()))
        })?;
        scheme::booted_slot(&cmdline, &self.slot_param, &self.names())
            .map_err(|e| FirmwareError::Booted(e.0))
    }

    /// Whether the booted slot already runs `content` and stays the one the
    /// bootloader picks (first in the order, good): then installing it is
    /// nothing to do (rolling forward to the firmware that runs).
    pub fn runs(&self, content: ferry_core::ContentRef) -> Result<bool, FirmwareError> {
        let booted = self.booted()?;
        let env = self.env.load()?;
        let first = self.scheme.order(&env).first() == Some(&booted);
        if !first || !self.scheme.state(&env, &booted).good {
            return Ok(false);
        }
        let slot = slot::find(&self.slots, &booted).expect("the booted slot is configured");
        Ok(slot.verify(content).is_ok())
    }

    pub fn status(&self) -> Result<FirmwareStatus, FirmwareError> {
        let env = self.env.load()?;
        let booted = self.booted().map_err(|e| e.to_string());
        Ok(FirmwareStatus {
            scheme: match self.scheme {
                scheme::Scheme::Grub => "grub (try once)".to_owned(),
                scheme::Scheme::Uboot { attempts } => format!("uboot ({attempts} attempts)"),
            },
            order: self.scheme.order(&env),
            slots: self
                .slots
                .iter()
                .map(|s| SlotStatus {
                    name: s.name.clone(),
                    device: s.device.clone(),
                    booted: booted.as_deref().ok() == Some(s.name.as_str()),
                    image: None,
                    boot: self.scheme.state(&env, &s.name),
                })
                .collect(),
            booted_error: booted.as_ref().err().cloned(),
            booted: booted.ok(),
        })
    }

    /// Marks the booted slot good. Returns its name and whether anything changed.
    pub fn mark_good(&self) -> Result<(String, bool), FirmwareError> {
        let booted = self.booted()?;
        let mut env = self.env.load()?;
        let before = env.clone();
        self.scheme.mark_good(&mut env, &booted);
        let changed = env != before;
        if changed {
            self.env.store(&env)?;
        }
        Ok((booted, changed))
    }
}
