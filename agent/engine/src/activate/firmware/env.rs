//! Boot variables in their stored order.

use super::FirmwareError;

/// Boot environment variables, in stored order (GRUB keeps it; new names go
/// at the end, as `grub-editenv set` does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootEnv {
    vars: Vec<(String, String)>,
}

impl BootEnv {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name`, in place if it exists, else at the end.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.vars.push((name.to_owned(), value.to_owned())),
        }
    }

    pub fn unset(&mut self, name: &str) {
        self.vars.retain(|(n, _)| n != name);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The variables sorted by name (how U-Boot stores and prints them).
    pub fn sorted(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<_> = self.iter().collect();
        v.sort();
        v
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for BootEnv {
    fn from_iter<T: IntoIterator<Item = (N, V)>>(iter: T) -> Self {
        let mut env = BootEnv::new();
        for (n, v) in iter {
            env.set(&n.into(), &v.into());
        }
        env
    }
}

/// Where a boot environment lives.
pub trait BootEnvStore: std::fmt::Debug + Send + Sync {
    fn load(&self) -> Result<BootEnv, FirmwareError>;
    /// Stores `env` so that a power cut leaves the old or the new one.
    fn store(&self, env: &BootEnv) -> Result<(), FirmwareError>;
}

ferry_core::message_error! {
    /// Boot-environment bytes or variables that cannot be read or written (the
    /// caller names the file).
    FormatError
}

/// Refuses names the formats cannot hold.
pub fn check_name(name: &str) -> Result<(), FormatError> {
    if name.is_empty()
        || name.contains('=')
        || name.contains('\n')
        || name.contains('\0')
        || name.starts_with('#')
    {
        return Err(format!("invalid variable name {name:?}").into());
    }
    Ok(())
}
