//! Cluster membership (`/1.0/cluster`), for preflight and placement.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Req};
use super::error::IncusError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub server_name: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub url: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub database: bool,
    /// `Online`, `Offline`, `Evacuated`, ...
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub status: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub message: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub roles: Vec<String>,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub architecture: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub failure_domain: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub groups: Vec<String>,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ClusterMember {
    pub fn is_online(&self) -> bool {
        self.status == "Online"
    }
}

impl Client {
    /// Members with status and roles; empty on a standalone server.
    pub async fn cluster_members(&self) -> Result<Vec<ClusterMember>, IncusError> {
        match self
            .get_value(Req::get("/1.0/cluster/members", &[]).query("recursion", "1"))
            .await
        {
            Err(IncusError::Api { ref message, .. }) if message.contains("not clustered") => {
                Ok(Vec::new())
            }
            other => other,
        }
    }
}
