//! The boot-selection variables, compatible with RAUC's documented GRUB and
//! U-Boot integration, so an image built for RAUC can switch to ferry
//! without touching its bootloader script (snippets in `images/bootloader/`).
//!
//! GRUB (try once):
//! - `ORDER="A B"`: slots in boot preference;
//! - `<S>_OK=1|0`: slot holds a good image; `<S>_TRY=1|0`: it was tried.
//! - The script boots the first slot of `ORDER` with `OK=1` and `TRY=0`,
//!   setting its `TRY=1` (`save_env`) first. ferry marks a healthy boot good
//!   by resetting `TRY=0`; an unmarked slot is skipped at the next boot.
//!
//! U-Boot (boot counting):
//! - `BOOT_ORDER="A B"`; `BOOT_<S>_LEFT=N`: attempts left.
//! - The script boots the first slot of `BOOT_ORDER` with attempts left,
//!   decrementing it first (`saveenv`). ferry marks a healthy boot good by
//!   restoring the attempts; a slot that runs out is skipped.
//!
//! Install (both): the new slot goes first in the order and gets a fresh
//! try; marking a slot bad makes the script skip it.

use super::env::FormatError;
use serde::Serialize;

use super::env::BootEnv;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Grub,
    Uboot { attempts: u32 },
}

/// What the environment says about one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotBootState {
    pub slot: String,
    /// Position in the boot order (0 = first), if listed.
    pub order: Option<usize>,
    /// The bootloader would still pick it (good and not used up).
    pub bootable: bool,
    /// GRUB: `OK`; U-Boot: attempts left > 0.
    pub good: bool,
    /// GRUB: tried and not yet marked good.
    pub trying: bool,
    /// U-Boot: attempts left.
    pub attempts_left: Option<u32>,
}

impl Scheme {
    fn order_var(self) -> &'static str {
        match self {
            Scheme::Grub => "ORDER",
            Scheme::Uboot { .. } => "BOOT_ORDER",
        }
    }

    pub fn order(self, env: &BootEnv) -> Vec<String> {
        env.get(self.order_var())
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    fn set_first(self, env: &mut BootEnv, slot: &str, all: &[String]) {
        let mut order = vec![slot.to_owned()];
        order.extend(self.order(env).into_iter().filter(|s| s != slot));
        for s in all {
            if !order.contains(s) {
                order.push(s.clone());
            }
        }
        env.set(self.order_var(), &order.join(" "));
    }

    /// Makes `slot` the one to try at the next boot (after a successful write).
    pub fn mark_active(self, env: &mut BootEnv, slot: &str, all: &[String]) {
        self.set_first(env, slot, all);
        // A fresh try is the same variables as a good slot.
        self.mark_good(env, slot);
    }

    /// Records that `slot` booted and is healthy.
    pub fn mark_good(self, env: &mut BootEnv, slot: &str) {
        match self {
            Scheme::Grub => {
                env.set(&format!("{slot}_OK"), "1");
                env.set(&format!("{slot}_TRY"), "0");
            }
            Scheme::Uboot { attempts } => {
                env.set(&format!("BOOT_{slot}_LEFT"), &attempts.to_string())
            }
        }
    }

    /// Makes the bootloader skip `slot` (before writing into it).
    pub fn mark_bad(self, env: &mut BootEnv, slot: &str) {
        match self {
            Scheme::Grub => {
                env.set(&format!("{slot}_OK"), "0");
                env.set(&format!("{slot}_TRY"), "0");
            }
            Scheme::Uboot { .. } => env.set(&format!("BOOT_{slot}_LEFT"), "0"),
        }
    }

    pub fn state(self, env: &BootEnv, slot: &str) -> SlotBootState {
        let order = self.order(env).iter().position(|s| s == slot);
        let flag = |name: String| env.get(&name) == Some("1");
        match self {
            Scheme::Grub => {
                let good = flag(format!("{slot}_OK"));
                let trying = flag(format!("{slot}_TRY"));
                SlotBootState {
                    slot: slot.to_owned(),
                    order,
                    bootable: order.is_some() && good && !trying,
                    good,
                    trying,
                    attempts_left: None,
                }
            }
            Scheme::Uboot { .. } => {
                let left = env
                    .get(&format!("BOOT_{slot}_LEFT"))
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0);
                SlotBootState {
                    slot: slot.to_owned(),
                    order,
                    bootable: order.is_some() && left > 0,
                    good: left > 0,
                    trying: false,
                    attempts_left: Some(left),
                }
            }
        }
    }
}

/// Finds the booted slot on the kernel command line (`param=NAME`, e.g.
/// `rauc.slot=A` or `ferry.slot=A`). Never guessed: absent or unknown is an error.
pub fn booted_slot(cmdline: &str, param: &str, slots: &[String]) -> Result<String, FormatError> {
    let prefix = format!("{param}=");
    let value = cmdline
        .split_whitespace()
        .find_map(|arg| arg.strip_prefix(&prefix))
        .ok_or_else(|| {
            format!("the kernel command line has no {prefix}… (cannot tell which slot booted)")
        })?;
    if slots.iter().any(|s| s == value) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{prefix}{value} names no configured slot (slots: {})",
            slots.join(", ")
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> Vec<String> {
        vec!["A".into(), "B".into()]
    }

    /// The documented GRUB script: first slot in ORDER with OK=1, TRY=0; sets TRY=1.
    fn boot_grub(env: &mut BootEnv) -> Option<String> {
        for s in Scheme::Grub.order(env) {
            if env.get(&format!("{s}_OK")) == Some("1") && env.get(&format!("{s}_TRY")) == Some("0")
            {
                env.set(&format!("{s}_TRY"), "1");
                return Some(s);
            }
        }
        None
    }

    /// The documented U-Boot script: first slot in BOOT_ORDER with LEFT > 0; decrements it.
    fn boot_uboot(env: &mut BootEnv) -> Option<String> {
        for s in (Scheme::Uboot { attempts: 3 }).order(env) {
            let var = format!("BOOT_{s}_LEFT");
            let left: u32 = env.get(&var).and_then(|v| v.parse().ok()).unwrap_or(0);
            if left > 0 {
                env.set(&var, &(left - 1).to_string());
                return Some(s);
            }
        }
        None
    }

    #[test]
    fn grub_update_good_and_bad() {
        let g = Scheme::Grub;
        let mut env = BootEnv::new();
        g.mark_active(&mut env, "A", &slots());
        g.mark_bad(&mut env, "B");
        assert_eq!(boot_grub(&mut env).as_deref(), Some("A"));
        g.mark_good(&mut env, "A");
        // Update into B: invalidate, write, activate, reboot, healthy.
        g.mark_bad(&mut env, "B");
        g.mark_active(&mut env, "B", &slots());
        assert_eq!(env.get("ORDER"), Some("B A"));
        assert_eq!(boot_grub(&mut env).as_deref(), Some("B"));
        g.mark_good(&mut env, "B");
        assert_eq!(boot_grub(&mut env).as_deref(), Some("B"));
        g.mark_good(&mut env, "B");
        // A bad update into A: never marked good, falls back to B.
        g.mark_bad(&mut env, "A");
        g.mark_active(&mut env, "A", &slots());
        assert_eq!(boot_grub(&mut env).as_deref(), Some("A"));
        assert!(g.state(&env, "A").trying);
        assert_eq!(
            boot_grub(&mut env).as_deref(),
            Some("B"),
            "falls back after one try"
        );
    }

    #[test]
    fn uboot_counts_attempts() {
        let u = Scheme::Uboot { attempts: 3 };
        let mut env = BootEnv::new();
        u.mark_active(&mut env, "A", &slots());
        u.mark_bad(&mut env, "B");
        u.mark_good(&mut env, "A");
        u.mark_bad(&mut env, "B");
        u.mark_active(&mut env, "B", &slots());
        for _ in 0..3 {
            assert_eq!(boot_uboot(&mut env).as_deref(), Some("B"));
        }
        assert_eq!(u.state(&env, "B").attempts_left, Some(0));
        assert_eq!(
            boot_uboot(&mut env).as_deref(),
            Some("A"),
            "falls back after 3 attempts"
        );
    }

    #[test]
    fn booted_slot_is_read_never_guessed() {
        let s = slots();
        assert_eq!(
            booted_slot("quiet rauc.slot=B root=/dev/sda3", "rauc.slot", &s).unwrap(),
            "B"
        );
        assert!(
            booted_slot("quiet root=/dev/sda3", "rauc.slot", &s)
                .unwrap_err()
                .0
                .contains("no rauc.slot=")
        );
        assert!(
            booted_slot("rauc.slot=C", "rauc.slot", &s)
                .unwrap_err()
                .0
                .contains("names no configured slot")
        );
    }
}
