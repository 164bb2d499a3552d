//! Profiles (`/1.0/profiles`), project-scoped.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Etagged, Req, Scope};
use super::error::IncusError;

/// Devices by name, each a map of keys (`type`, `path`, `pool`, ...).
pub type Devices = BTreeMap<String, BTreeMap<String, String>>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub devices: Devices,
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "super::client::nullable"
    )]
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

impl Client {
    pub async fn profiles(&self) -> Result<Vec<Profile>, IncusError> {
        self.get_value(
            Req::get("/1.0/profiles", &[])
                .scope(Scope::Project)
                .query("recursion", "1"),
        )
        .await
    }

    pub async fn get_profile(&self, name: &str) -> Result<Etagged<Profile>, IncusError> {
        self.get_tagged(Req::get("/1.0/profiles", &[name]).scope(Scope::Project))
            .await
    }

    pub async fn create_profile(&self, profile: &Profile) -> Result<(), IncusError> {
        let req = Req::new(Method::POST, "/1.0/profiles", &[])
            .scope(Scope::Project)
            .json(profile)?;
        self.write(req).await.map(|_| ())
    }

    /// PUT: replaces config, devices and description.
    pub async fn update_profile(
        &self,
        profile: &Profile,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        let req = Req::new(Method::PUT, "/1.0/profiles", &[&profile.name])
            .scope(Scope::Project)
            .json(profile)?
            .if_match(etag)?;
        self.write(req).await.map(|_| ())
    }

    pub async fn delete_profile(&self, name: &str) -> Result<(), IncusError> {
        let req = Req::new(Method::DELETE, "/1.0/profiles", &[name]).scope(Scope::Project);
        self.write(req).await.map(|_| ())
    }
}
