//! Networks (`/1.0/networks`), always in the `default` project: bridges cannot live in
//! another one. Member-aware through [`Client::on_target`] (pending per-member creates).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Etagged, Scope, nullable};
use super::error::IncusError;
use super::resource::{Collection, MEMBER_DEFINED};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    /// `bridge`, `macvlan`, ... (`physical` etc. for host interfaces).
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
    /// False for host interfaces Incus merely sees.
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub managed: bool,
    /// `Created`, `Pending` (cluster: defined on some members only), `Errored`, ...
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub status: String,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub locations: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Network {
    pub fn bridge(name: &str, config: BTreeMap<String, String>) -> Network {
        Network {
            name: name.to_string(),
            kind: "bridge".into(),
            config,
            ..Network::default()
        }
    }
}

/// Member-defined: reads, creates and updates take the view's target.
const NETWORKS: Collection =
    Collection::new("/1.0/networks", Scope::DefaultProject, MEMBER_DEFINED);

impl Client {
    pub async fn networks(&self) -> Result<Vec<Network>, IncusError> {
        NETWORKS.list(self).await
    }

    pub async fn get_network(&self, name: &str) -> Result<Etagged<Network>, IncusError> {
        NETWORKS.get(self, name).await
    }

    pub async fn create_network(&self, network: &Network) -> Result<(), IncusError> {
        NETWORKS.create(self, network).await.map(|_| ())
    }

    pub async fn update_network(
        &self,
        network: &Network,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        NETWORKS.update(self, &network.name, network, etag).await
    }

    pub async fn delete_network(&self, name: &str) -> Result<(), IncusError> {
        NETWORKS.delete(self, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_nulls_decode_as_empty() {
        let n: Network = serde_json::from_value(serde_json::json!({
            "name": "lo", "type": "loopback", "managed": false, "config": null,
            "locations": null, "used_by": null, "status": ""
        }))
        .expect("decode");
        assert!(n.locations.is_empty() && n.config.is_empty() && !n.managed);
    }
}
