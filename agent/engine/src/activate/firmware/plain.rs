//! A plain `name=value` file (one per line, no escapes): for tests and for
//! custom boot scripts that read it. Written atomically.

use std::fs;
use std::path::PathBuf;

use super::FirmwareError;
use super::env::{BootEnv, BootEnvStore, check_name};
use crate::fsutil::write_atomic;

#[derive(Debug, Clone)]
pub struct PlainEnv {
    pub path: PathBuf,
}

impl BootEnvStore for PlainEnv {
    fn load(&self) -> Result<BootEnv, FirmwareError> {
        let text = fs::read_to_string(&self.path).map_err(|source| FirmwareError::EnvIo {
            path: self.path.clone(),
            source,
        })?;
        let mut env = BootEnv::new();
        for (i, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (n, v) = line.split_once('=').ok_or_else(|| FirmwareError::Env {
                path: self.path.clone(),
                message: format!("line {}: expected name=value", i + 1),
            })?;
            env.set(n, v);
        }
        Ok(env)
    }

    fn store(&self, env: &BootEnv) -> Result<(), FirmwareError> {
        let mut text = String::new();
        for (n, v) in env.iter() {
            check_name(n).map_err(|message| FirmwareError::Env {
                path: self.path.clone(),
                message: message.to_string(),
            })?;
            if v.contains('\n') {
                return Err(FirmwareError::Env {
                    path: self.path.clone(),
                    message: format!("value of {n} contains a newline"),
                });
            }
            text.push_str(&format!("{n}={v}\n"));
        }
        write_atomic(&self.path, 0o644, &mut text.as_bytes()).map_err(|source| {
            FirmwareError::EnvIo {
                path: self.path.clone(),
                source,
            }
        })?;
        Ok(())
    }
}
