//! `GET/PATCH /1.0`: capabilities (`api_extensions`), environment, server config; metrics.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::client::{Client, Etagged, Req, Scope, nullable};
use super::error::IncusError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Server {
    #[serde(default, deserialize_with = "nullable")]
    pub api_extensions: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub api_version: String,
    /// "trusted" when our credentials are accepted.
    #[serde(default, deserialize_with = "nullable")]
    pub auth: String,
    #[serde(default, deserialize_with = "string_map")]
    pub config: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub environment: Environment,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    #[serde(default, deserialize_with = "nullable")]
    pub server_version: String,
    #[serde(default, deserialize_with = "nullable")]
    pub server_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub server_clustered: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub kernel: String,
    #[serde(default, deserialize_with = "nullable")]
    pub kernel_version: String,
    #[serde(default, deserialize_with = "nullable")]
    pub kernel_architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    pub architectures: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub firewall: String,
    /// Storage drivers of the pools in use, comma separated (`dir`, `zfs | btrfs`).
    #[serde(default, deserialize_with = "nullable")]
    pub storage: String,
    #[serde(default, deserialize_with = "nullable")]
    pub storage_supported_drivers: Vec<StorageDriver>,
    /// PEM of the server certificate.
    #[serde(default, deserialize_with = "nullable")]
    pub certificate: String,
    #[serde(default, deserialize_with = "nullable")]
    pub certificate_fingerprint: String,
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageDriver {
    #[serde(
        rename = "Name",
        alias = "name",
        default,
        deserialize_with = "nullable"
    )]
    pub name: String,
    #[serde(
        rename = "Version",
        alias = "version",
        default,
        deserialize_with = "nullable"
    )]
    pub version: String,
    #[serde(
        rename = "Remote",
        alias = "remote",
        default,
        deserialize_with = "nullable"
    )]
    pub remote: bool,
}

impl Server {
    /// Whether the server has API extension `name` (decide behaviour from these, never from
    /// the version string).
    pub fn has(&self, name: &str) -> bool {
        self.api_extensions.iter().any(|e| e == name)
    }

    /// OCI application containers (Incus 6.3+).
    pub fn supports_oci(&self) -> bool {
        self.has("instance_oci")
    }

    /// `logging.<name>.target.*` keys instead of the older `loki.*` ones.
    pub fn supports_server_logging(&self) -> bool {
        self.has("server_logging")
    }

    /// Whether the API has buckets on local pools at all. Even then a 6.0 host may lack the
    /// MinIO tools: creating a bucket answers [`IncusError::Unsupported`] in that case.
    pub fn supports_local_buckets(&self) -> bool {
        self.has("storage_buckets") && self.has("storage_buckets_local")
    }

    pub fn is_clustered(&self) -> bool {
        self.environment.server_clustered
    }

    pub fn storage_drivers(&self) -> Vec<&str> {
        self.environment
            .storage_supported_drivers
            .iter()
            .map(|d| d.name.as_str())
            .collect()
    }
}

/// Server config values are strings in Incus; tolerate numbers/bools from odd servers.
fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: Option<BTreeMap<String, Value>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, s)
        })
        .collect())
}

impl Client {
    /// `GET /1.0` (with `?target=` for a cluster member's view).
    pub async fn server(&self) -> Result<Etagged<Server>, IncusError> {
        self.get_tagged(Req::get("/1.0", &[]).targeted()).await
    }

    /// `PATCH /1.0`: sets only the given keys (empty value = unset). Member-specific keys
    /// (`core.https_address`, ...) go to the member of [`Client::on_target`].
    pub async fn patch_server_config(
        &self,
        config: &BTreeMap<String, String>,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        let body = serde_json::json!({ "config": config });
        let req = Req::new(Method::PATCH, "/1.0", &[])
            .targeted()
            .json(&body)?
            .if_match(etag)?;
        self.write(req).await.map(|_| ())
    }

    /// `GET /1.0/metrics` (of this client's project when it has one): Prometheus text.
    /// [seen] 6.0.4 sometimes answers a bare "# EOF" while it refreshes its metrics cache.
    pub async fn metrics(&self) -> Result<String, IncusError> {
        let req = Req::get("/1.0/metrics", &[]).scope(Scope::Project);
        let bytes = self.get_raw(req).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_6_0_4_server_and_answers_capabilities() {
        let v = serde_json::json!({
            "api_extensions": ["storage_buckets", "storage_buckets_local", "instance_oci"],
            "api_version": "1.0", "auth": "trusted",
            "config": {"core.https_address": ":8443", "images.auto_update_interval": 6},
            "environment": {
                "server_version": "6.0.4", "server_clustered": false, "kernel_version": "6.1",
                "storage_supported_drivers": [{"Name": "dir", "Version": "1", "Remote": false}],
                "lxc_features": {"cgroup2": "true"}
            },
            "public": false
        });
        let s: Server = serde_json::from_value(v).expect("decode");
        assert!(s.supports_oci() && s.supports_local_buckets() && !s.supports_server_logging());
        assert_eq!(s.storage_drivers(), vec!["dir"]);
        assert_eq!(s.config["images.auto_update_interval"], "6");
        assert!(s.extra.contains_key("public"));
        assert!(s.environment.extra.contains_key("lxc_features"));
    }
}
