//! Instances (`/1.0/instances`), project-scoped: create from an image, read, update, state
//! changes, delete. Files and exec live in `files.rs` and `exec.rs`.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Etagged, Req, Scope, nullable};
use super::error::{IncusError, OptionalExt as _};
use super::profile::Devices;
use super::resource::{Call, Collection};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub devices: Devices,
    #[serde(default, deserialize_with = "nullable")]
    pub profiles: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub ephemeral: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub stateful: bool,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub status: InstanceStatus,
    #[serde(
        rename = "type",
        default,
        skip_serializing,
        deserialize_with = "nullable"
    )]
    pub kind: String,
    /// Cluster member the instance is on.
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub location: String,
    /// Config with the profiles applied.
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub expanded_config: BTreeMap<String, String>,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub expanded_devices: Devices,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Instance {
    pub fn is_running(&self) -> bool {
        self.status == InstanceStatus::Running
    }
}

/// What an instance is doing, as Incus says it (`status` of an instance or its state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum InstanceStatus {
    Running,
    Stopped,
    Frozen,
    Error,
    /// Anything else Incus may say (a transition), as said.
    Other(String),
    /// No status in the answer.
    #[default]
    Unknown,
}

impl From<String> for InstanceStatus {
    fn from(s: String) -> InstanceStatus {
        match s.as_str() {
            "Running" => InstanceStatus::Running,
            "Stopped" => InstanceStatus::Stopped,
            "Frozen" => InstanceStatus::Frozen,
            "Error" => InstanceStatus::Error,
            "" => InstanceStatus::Unknown,
            _ => InstanceStatus::Other(s),
        }
    }
}

impl InstanceStatus {
    /// Incus' word for it.
    pub fn as_str(&self) -> &str {
        match self {
            InstanceStatus::Running => "Running",
            InstanceStatus::Stopped => "Stopped",
            InstanceStatus::Frozen => "Frozen",
            InstanceStatus::Error => "Error",
            InstanceStatus::Other(s) => s,
            InstanceStatus::Unknown => "",
        }
    }
}

impl std::fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for InstanceStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// So that `status == "Running"` reads as Incus' own word.
impl PartialEq<&str> for InstanceStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Where a new instance's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceSource {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl InstanceSource {
    pub fn alias(alias: &str) -> InstanceSource {
        InstanceSource {
            kind: "image".into(),
            alias: Some(alias.to_string()),
            fingerprint: None,
        }
    }
    pub fn fingerprint(fp: &str) -> InstanceSource {
        InstanceSource {
            kind: "image".into(),
            alias: None,
            fingerprint: Some(fp.to_string()),
        }
    }
}

/// `POST /1.0/instances` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceCreate {
    pub name: String,
    /// `container` (the only kind these hosts run).
    #[serde(rename = "type")]
    pub kind: String,
    pub source: InstanceSource,
    pub profiles: Vec<String>,
    pub config: BTreeMap<String, String>,
    pub devices: Devices,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Start right after creating; we push files first, so usually false.
    pub start: bool,
}

impl InstanceCreate {
    pub fn container(name: &str, source: InstanceSource) -> InstanceCreate {
        InstanceCreate {
            name: name.to_string(),
            kind: "container".into(),
            source,
            profiles: vec!["default".into()],
            config: BTreeMap::new(),
            devices: BTreeMap::new(),
            description: String::new(),
            start: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateAction {
    Start,
    Stop,
    Restart,
    Freeze,
    Unfreeze,
}

impl StateAction {
    fn as_str(self) -> &'static str {
        match self {
            StateAction::Start => "start",
            StateAction::Stop => "stop",
            StateAction::Restart => "restart",
            StateAction::Freeze => "freeze",
            StateAction::Unfreeze => "unfreeze",
        }
    }
}

/// `GET /1.0/instances/<n>/state`: runtime state, addresses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct InstanceState {
    #[serde(default, deserialize_with = "nullable")]
    pub status: InstanceStatus,
    #[serde(default, deserialize_with = "nullable")]
    pub pid: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub network: Option<BTreeMap<String, NetworkState>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NetworkState {
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<Address>,
    #[serde(default, deserialize_with = "nullable")]
    pub state: String,
    #[serde(default, deserialize_with = "nullable")]
    pub hwaddr: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Address {
    #[serde(default, deserialize_with = "nullable")]
    pub family: String,
    #[serde(default, deserialize_with = "nullable")]
    pub address: String,
    #[serde(default, deserialize_with = "nullable")]
    pub netmask: String,
    #[serde(default, deserialize_with = "nullable")]
    pub scope: String,
}

const INSTANCES: &str = "/1.0/instances";
/// A create is placed on the view's target (a member or `@group`).
const COLLECTION: Collection = Collection::new(INSTANCES, Scope::Project, &[Call::Create]);

impl Client {
    pub async fn instances(&self) -> Result<Vec<Instance>, IncusError> {
        COLLECTION.list(self).await
    }

    /// Every instance of every project (each with its `project` in `extra`).
    pub async fn instances_all_projects(&self) -> Result<Vec<Instance>, IncusError> {
        self.get_value(
            Req::get(INSTANCES, &[])
                .query("all-projects", "true")
                .query("recursion", "1"),
        )
        .await
    }

    pub async fn get_instance(&self, name: &str) -> Result<Etagged<Instance>, IncusError> {
        COLLECTION.get(self, name).await
    }

    /// Whether `name` exists and is running.
    pub async fn instance_is_running(&self, name: &str) -> Result<bool, IncusError> {
        let got = self.get_instance(name).await.optional()?;
        Ok(got.is_some_and(|i| i.value.is_running()))
    }

    /// Creates (and waits for) an instance; placed on the member or `@group` of
    /// [`Client::on_target`]. A duplicate name is [`IncusError::AlreadyExists`].
    pub async fn create_instance(&self, create: &InstanceCreate) -> Result<(), IncusError> {
        COLLECTION.create(self, create).await.map(|_| ())
    }

    /// PUT: replaces config, devices, profiles, description (a running instance applies
    /// what it can live).
    pub async fn update_instance(
        &self,
        instance: &Instance,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        COLLECTION
            .update(self, &instance.name, instance, etag)
            .await
    }

    /// Deletes a stopped instance.
    pub async fn delete_instance(&self, name: &str) -> Result<(), IncusError> {
        COLLECTION.delete(self, name).await
    }

    pub async fn instance_state(&self, name: &str) -> Result<InstanceState, IncusError> {
        self.get_value(Req::get(INSTANCES, &[name, "state"]).scope(Scope::Project))
            .await
    }

    /// `GET /1.0/instances/<n>/console`: the console log, raw bytes (not a JSON envelope).
    pub async fn instance_console_log(&self, name: &str) -> Result<Vec<u8>, IncusError> {
        self.get_raw(Req::get(INSTANCES, &[name, "console"]).scope(Scope::Project))
            .await
    }

    /// Start/stop/restart and wait. `timeout_s` bounds a clean stop; `force` kills after it.
    pub async fn set_instance_state(
        &self,
        name: &str,
        action: StateAction,
        timeout_s: u32,
        force: bool,
    ) -> Result<(), IncusError> {
        let body =
            serde_json::json!({ "action": action.as_str(), "timeout": timeout_s, "force": force });
        let req = Req::new(Method::PUT, INSTANCES, &[name, "state"])
            .scope(Scope::Project)
            .json(&body)?;
        self.write(req).await.map(|_| ())
    }

    /// Replaces the root filesystem of a stopped instance with image `fingerprint`, keeping
    /// its config, devices and snapshots.
    pub async fn rebuild_instance(&self, name: &str, fingerprint: &str) -> Result<(), IncusError> {
        let body = serde_json::json!({
            "source": { "type": "image", "fingerprint": fingerprint }
        });
        let req = Req::new(Method::POST, INSTANCES, &[name, "rebuild"])
            .scope(Scope::Project)
            .json(&body)?;
        self.write(req).await.map(|_| ())
    }
}
