//! The U-Boot environment, as U-Boot, `fw_printenv`/`fw_setenv`
//! (libubootenv) and `mkenvimage` read and write it.
//!
//! ```text
//! single:    crc32(le, 4) | data
//! redundant: crc32(le, 4) | flag (1) | data        (two copies)
//! data:      name=value\0 … \0 padding             (crc covers all of data)
//! ```
//! A copy whose CRC does not match is ignored. With two valid copies the
//! higher flag wins, except that 0x00 is newer than 0xff (wrap-around); equal
//! flags pick the first. A write goes to the copy *not* in use, with the flag
//! incremented, and is fsynced: a power cut leaves the old copy in use.
//!
//! Copies are configured like `fw_env.config` (ferry reads that file):
//! `DEVICE OFFSET SIZE [SECTOR-SIZE [SECTORS]]`, numbers in hex (with or
//! without `0x`, as libubootenv parses them), `#` comments.

use super::env::FormatError;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::FirmwareError;
use super::env::{BootEnv, BootEnvStore, check_name};

/// One copy of the environment: where it is and how large.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub device: PathBuf,
    pub offset: u64,
    pub size: usize,
}

#[derive(Debug, Clone)]
pub struct UbootEnv {
    /// One copy (single) or two (redundant).
    pub copies: Vec<Copy>,
}

/// Parses an `fw_env.config`. Relative device paths are taken relative to
/// the current directory, as libubootenv does.
pub fn parse_config(path: &Path) -> Result<UbootEnv, FirmwareError> {
    let text = fs::read_to_string(path).map_err(|source| FirmwareError::EnvIo {
        path: path.to_path_buf(),
        source,
    })?;
    let err = |line: usize, message: String| FirmwareError::Env {
        path: path.to_path_buf(),
        message: format!("line {line}: {message}"),
    };
    let hex =
        |s: &str| u64::from_str_radix(s.trim_start_matches("0x").trim_start_matches("0X"), 16);
    let mut copies = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return Err(err(i + 1, "expected DEVICE OFFSET SIZE".to_owned()));
        }
        let offset =
            hex(fields[1]).map_err(|e| err(i + 1, format!("offset {:?}: {e}", fields[1])))?;
        let size =
            hex(fields[2]).map_err(|e| err(i + 1, format!("size {:?}: {e}", fields[2])))? as usize;
        if size < 16 {
            return Err(err(i + 1, format!("size {size} is too small")));
        }
        copies.push(Copy {
            device: PathBuf::from(fields[0]),
            offset,
            size,
        });
    }
    match copies.len() {
        1 | 2 => Ok(UbootEnv { copies }),
        n => Err(FirmwareError::Env {
            path: path.to_path_buf(),
            message: format!("{n} environment copies configured; want 1 or 2"),
        }),
    }
}

/// One copy as read: its flag (redundant only) and its variables, or why it is invalid.
#[derive(Debug)]
pub struct ReadCopy {
    pub flag: Option<u8>,
    pub env: Result<BootEnv, FormatError>,
}

fn header_len(redundant: bool) -> usize {
    if redundant { 5 } else { 4 }
}

/// Decodes one copy's bytes.
pub fn decode(bytes: &[u8], redundant: bool) -> ReadCopy {
    let h = header_len(redundant);
    let flag = redundant.then(|| bytes.get(4).copied().unwrap_or(0));
    if bytes.len() < h + 2 {
        return ReadCopy {
            flag,
            env: Err("too short".to_owned().into()),
        };
    }
    let stored = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    let data = &bytes[h..];
    if crc32fast::hash(data) != stored {
        return ReadCopy {
            flag,
            env: Err("bad CRC".to_owned().into()),
        };
    }
    let mut env = BootEnv::new();
    for entry in data.split(|&b| b == 0) {
        if entry.is_empty() {
            break; // the terminating empty entry
        }
        let text = match std::str::from_utf8(entry) {
            Ok(t) => t,
            Err(_) => {
                return ReadCopy {
                    flag,
                    env: Err("entry is not UTF-8".to_owned().into()),
                };
            }
        };
        // libubootenv (and U-Boot's import) skips an entry without `=`;
        // refusing the copy would make ferry use the other, older copy of
        // a redundant pair while the bootloader uses this one.
        if let Some((n, v)) = text.split_once('=') {
            env.set(n, v);
        }
    }
    ReadCopy { flag, env: Ok(env) }
}

/// Encodes a copy of `size` bytes (variables sorted by name, as U-Boot does).
pub fn encode(env: &BootEnv, size: usize, flag: Option<u8>) -> Result<Vec<u8>, FormatError> {
    let h = header_len(flag.is_some());
    let mut data = Vec::with_capacity(size - h);
    for (n, v) in env.sorted() {
        // An empty name is not one ferry sets, but `fw_setenv` accepts it
        // and it may be there: written back as it was read, not a reason
        // to refuse the whole environment.
        if !n.is_empty() {
            check_name(n)?;
        }
        if v.contains('\0') {
            return Err(format!("value of {n} contains NUL").into());
        }
        data.extend_from_slice(n.as_bytes());
        data.push(b'=');
        data.extend_from_slice(v.as_bytes());
        data.push(0);
    }
    data.push(0);
    if data.len() > size - h {
        return Err(format!(
            "environment too large: {} bytes, copy holds {}",
            data.len(),
            size - h
        )
        .into());
    }
    data.resize(size - h, 0);
    let mut out = crc32fast::hash(&data).to_le_bytes().to_vec();
    out.extend(flag);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Which of two valid copies is current: the higher flag, 0x00 after 0xff,
/// the first on a tie.
pub fn newer_is_second(a: u8, b: u8) -> bool {
    match (a, b) {
        (0xff, 0x00) => true,
        (0x00, 0xff) => false,
        _ => b > a,
    }
}

impl UbootEnv {
    fn redundant(&self) -> bool {
        self.copies.len() == 2
    }

    fn read_copy(&self, c: &Copy) -> Result<ReadCopy, FirmwareError> {
        let io_err = |source| FirmwareError::EnvIo {
            path: c.device.clone(),
            source,
        };
        let f = fs::File::open(&c.device).map_err(io_err)?;
        let mut buf = vec![0u8; c.size];
        f.read_exact_at(&mut buf, c.offset).map_err(io_err)?;
        Ok(decode(&buf, self.redundant()))
    }

    /// Reads the copies; returns the index of the current one and its variables.
    pub fn current(&self) -> Result<(usize, Option<u8>, BootEnv), FirmwareError> {
        let copies: Vec<ReadCopy> = self
            .copies
            .iter()
            .map(|c| self.read_copy(c))
            .collect::<Result<_, _>>()?;
        let valid: Vec<(usize, &ReadCopy)> = copies
            .iter()
            .enumerate()
            .filter(|(_, c)| c.env.is_ok())
            .collect();
        let pick = match valid.as_slice() {
            [] => {
                let why: Vec<String> = copies
                    .iter()
                    .zip(&self.copies)
                    .map(|(r, c)| {
                        format!(
                            "{}@{:#x}: {}",
                            c.device.display(),
                            c.offset,
                            r.env.as_ref().err().map_or("", |s| s.0.as_str())
                        )
                    })
                    .collect();
                return Err(FirmwareError::Env {
                    path: self.copies[0].device.clone(),
                    message: format!("no valid environment copy ({})", why.join("; ")),
                });
            }
            [(i, _)] => *i,
            [(i, a), (j, b)] => {
                if newer_is_second(a.flag.unwrap_or(0), b.flag.unwrap_or(0)) {
                    *j
                } else {
                    *i
                }
            }
            _ => unreachable!("at most two copies"),
        };
        let c = &copies[pick];
        Ok((pick, c.flag, c.env.clone().expect("picked a valid copy")))
    }

    fn write_copy(&self, c: &Copy, bytes: &[u8]) -> io::Result<()> {
        let f = OpenOptions::new().write(true).open(&c.device)?;
        f.write_all_at(bytes, c.offset)?;
        f.sync_all()
    }
}

impl BootEnvStore for UbootEnv {
    fn load(&self) -> Result<BootEnv, FirmwareError> {
        Ok(self.current()?.2)
    }

    fn store(&self, env: &BootEnv) -> Result<(), FirmwareError> {
        let (target, flag) = if self.redundant() {
            // Never write over the copy in use; if neither is valid, start at copy 0.
            match self.current() {
                Ok((i, flag, _)) => (1 - i, Some(flag.unwrap_or(0).wrapping_add(1))),
                Err(_) => (0, Some(1)),
            }
        } else {
            (0, None)
        };
        let c = &self.copies[target];
        let bytes = encode(env, c.size, flag).map_err(|message| FirmwareError::Env {
            path: c.device.clone(),
            message: message.to_string(),
        })?;
        self.write_copy(c, &bytes)
            .map_err(|source| FirmwareError::EnvIo {
                path: c.device.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_and_corruption() {
        let env: BootEnv = [("BOOT_ORDER", "A B"), ("BOOT_A_LEFT", "3")]
            .into_iter()
            .collect();
        for flag in [None, Some(7)] {
            let mut bytes = encode(&env, 256, flag).unwrap();
            let back = decode(&bytes, flag.is_some());
            assert_eq!(back.flag, flag);
            assert_eq!(back.env.unwrap().sorted(), env.sorted());
            bytes[40] ^= 1;
            assert_eq!(decode(&bytes, flag.is_some()).env.unwrap_err().0, "bad CRC");
        }
    }

    /// `fw_setenv` accepts a variable with an empty name; ferry keeps it
    /// and still writes its own variables (`mark-good` used to refuse).
    #[test]
    fn an_empty_variable_name_is_kept_not_refused() {
        let h = header_len(false);
        let mut data = b"=from fw_setenv\0bootcmd=run a\0\0".to_vec();
        data.resize(256 - h, 0);
        let mut bytes = crc32fast::hash(&data).to_le_bytes().to_vec();
        bytes.extend_from_slice(&data);
        let mut env = decode(&bytes, false).env.unwrap();
        assert_eq!(env.get(""), Some("from fw_setenv"));
        env.set("BOOT_A_LEFT", "3");
        let written = encode(&env, 256, None).unwrap();
        let back = decode(&written, false).env.unwrap();
        assert_eq!(back.get(""), Some("from fw_setenv"));
        assert_eq!(back.get("bootcmd"), Some("run a"));
        assert_eq!(back.get("BOOT_A_LEFT"), Some("3"));
        // ferry itself still never writes an invalid name.
        let mut bad = BootEnv::new();
        bad.set("A=B", "x");
        assert!(encode(&bad, 256, None).is_err());
    }

    #[test]
    fn flag_order_wraps() {
        assert!(newer_is_second(1, 2));
        assert!(!newer_is_second(2, 1));
        assert!(newer_is_second(0xff, 0x00));
        assert!(!newer_is_second(0x00, 0xff));
        assert!(!newer_is_second(5, 5), "a tie picks the first");
    }
}
