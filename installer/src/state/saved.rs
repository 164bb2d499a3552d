//! What an instance was before an upgrade replaced it: enough to rebuild it as it was. Kept
//! in the project's config (small: rendered files are a few kB per service), so it survives
//! a killed installer and serves a later `rollback` ([`super::keys::UPGRADE_PREFIX`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedInstance {
    /// The upgrade's snapshot name (`pre-upgrade-<from>-<to>`) this state belongs to.
    pub snap: String,
    /// Fingerprint of the image it ran.
    pub image: String,
    /// Its config, `volatile.*` keys aside.
    pub config: BTreeMap<String, String>,
    pub devices: crate::incus::Devices,
    pub profiles: Vec<String>,
    pub files: Vec<SavedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub base64: String,
}
