//! Profiles (`/1.0/profiles`), project-scoped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Etagged, Scope, nullable};
use super::error::IncusError;
use super::resource::Collection;

/// Devices by name, each a map of keys (`type`, `path`, `pool`, ...).
pub type Devices = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub devices: Devices,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Profile {
    pub fn new(name: &str) -> Profile {
        Profile {
            name: name.to_string(),
            ..Profile::default()
        }
    }
}

const PROFILES: Collection = Collection::new("/1.0/profiles", Scope::Project, &[]);

impl Client {
    pub async fn profiles(&self) -> Result<Vec<Profile>, IncusError> {
        PROFILES.list(self).await
    }

    pub async fn get_profile(&self, name: &str) -> Result<Etagged<Profile>, IncusError> {
        PROFILES.get(self, name).await
    }

    pub async fn create_profile(&self, profile: &Profile) -> Result<(), IncusError> {
        PROFILES.create(self, profile).await.map(|_| ())
    }

    /// PUT: replaces config, devices and description.
    pub async fn update_profile(
        &self,
        profile: &Profile,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        PROFILES.update(self, &profile.name, profile, etag).await
    }

    pub async fn delete_profile(&self, name: &str) -> Result<(), IncusError> {
        PROFILES.delete(self, name).await
    }
}
