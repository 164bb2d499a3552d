//! Networks (`/1.0/networks`), always in the `default` project: bridges cannot live in
//! another one. Member-aware through [`Client::on_target`] (pending per-member creates).

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Etagged, Req, Scope};
use super::error::IncusError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    /// `bridge`, `macvlan`, ... (`physical` etc. for host interfaces).
    #[serde(rename = "type", default, deserialize_with = "super::client::nullable")]
    pub kind: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "super::client::nullable")]
    pub config: BTreeMap<String, String>,
    /// False for host interfaces Incus merely sees.
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "super::client::nullable"
    )]
    pub managed: bool,
    /// `Created`, `Pending` (cluster: defined on some members only), `Errored`, ...
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "super::client::nullable"
    )]
    pub status: String,
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "super::client::nullable"
    )]
    pub used_by: Vec<String>,
    #[serde(
        default,
        skip_serializing,
        deserialize_with = "super::client::nullable"
    )]
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

impl Client {
    pub async fn networks(&self) -> Result<Vec<Network>, IncusError> {
        let req = Req::get("/1.0/networks", &[])
            .scope(Scope::DefaultProject)
            .query("recursion", "1");
        self.get_value(req).await
    }

    pub async fn get_network(&self, name: &str) -> Result<Etagged<Network>, IncusError> {
        self.get_tagged(
            Req::get("/1.0/networks", &[name])
                .scope(Scope::DefaultProject)
                .targeted(),
        )
        .await
    }

    pub async fn create_network(&self, network: &Network) -> Result<(), IncusError> {
        let req = Req::new(Method::POST, "/1.0/networks", &[])
            .scope(Scope::DefaultProject)
            .targeted()
            .json(network)?;
        self.write(req).await.map(|_| ())
    }

    pub async fn update_network(
        &self,
        network: &Network,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        let req = Req::new(Method::PUT, "/1.0/networks", &[&network.name])
            .scope(Scope::DefaultProject)
            .targeted()
            .json(network)?
            .if_match(etag)?;
        self.write(req).await.map(|_| ())
    }

    pub async fn delete_network(&self, name: &str) -> Result<(), IncusError> {
        let req = Req::new(Method::DELETE, "/1.0/networks", &[name]).scope(Scope::DefaultProject);
        self.write(req).await.map(|_| ())
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
