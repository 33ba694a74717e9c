//! Resources and sets of them (desired or actual state).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::ContentRef;

/// What a resource is. The declaration order is the activation order
/// (DESIGN.md: files → rulesets → wasm → firmware); kinds are added here as
/// their activators land.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Ruleset,
    Wasm,
    Firmware,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown resource kind {0:?} (known: file, ruleset, wasm, firmware)")]
pub struct UnknownKind(pub String);

impl Kind {
    pub const ALL: &'static [Kind] = &[Kind::File, Kind::Ruleset, Kind::Wasm, Kind::Firmware];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Ruleset => "ruleset",
            Kind::Wasm => "wasm",
            Kind::Firmware => "firmware",
        }
    }
}

impl FromStr for Kind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource's identity: its kind and its name (for files, the path).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceId {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// One resolved resource: identity, the content it installs (by address) and
/// its kind-specific settings (mode, limits, version, ...), kept as a sorted
/// map so that comparing and hashing them is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub kind: Kind,
    pub name: String,
    pub content: ContentRef,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, Value>,
    /// Content is secret: its bytes, diffs and digests are never shown,
    /// logged or audited. Not a difference in itself for `plan`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

impl Resource {
    pub fn id(&self) -> ResourceId {
        ResourceId {
            kind: self.kind,
            name: self.name.clone(),
        }
    }
}

/// Two resources with one identity in one state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("duplicate resource {0}")]
pub struct DuplicateResource(pub ResourceId);

/// What should run: the resources resolved from a verified revision.
pub type DesiredState = ResourceSet;

/// What runs: the resources of the current generation.
pub type ActualState = ResourceSet;

/// A set of resources keyed by identity: a desired state or an actual state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceSet {
    items: BTreeMap<ResourceId, Resource>,
}

impl ResourceSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set, refusing duplicate identities.
    pub fn from_resources(
        resources: impl IntoIterator<Item = Resource>,
    ) -> Result<Self, DuplicateResource> {
        let mut set = ResourceSet::new();
        for r in resources {
            set.insert(r)?;
        }
        Ok(set)
    }

    pub fn insert(&mut self, r: Resource) -> Result<(), DuplicateResource> {
        // One search: a generation's 10,000 resources are inserted so.
        match self.items.entry(r.id()) {
            std::collections::btree_map::Entry::Occupied(e) => {
                Err(DuplicateResource(e.key().clone()))
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(r);
                Ok(())
            }
        }
    }

    /// Inserts or replaces.
    pub fn upsert(&mut self, r: Resource) {
        self.items.insert(r.id(), r);
    }

    pub fn remove(&mut self, id: &ResourceId) -> Option<Resource> {
        self.items.remove(id)
    }

    pub fn get(&self, id: &ResourceId) -> Option<&Resource> {
        self.items.get(id)
    }

    /// Resources in activation order (kind, then name).
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn map(&self) -> &BTreeMap<ResourceId, Resource> {
        &self.items
    }
}

impl Serialize for ResourceSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.items.values())
    }
}

impl<'de> Deserialize<'de> for ResourceSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Resource>::deserialize(d)?;
        ResourceSet::from_resources(list).map_err(serde::de::Error::custom)
    }
}
