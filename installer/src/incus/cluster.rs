//! Clusters: membership and groups (`/1.0/cluster`), and the two-phase way server-wide
//! storage pools and networks are created on a cluster.
//!
//! On a cluster a pool or network is first *defined* on every member (`POST ?target=<member>`
//! with only the member-specific keys: it is then `Pending`), then *created* once without a
//! target and with the global config: every member then creates its local part. A plain
//! POST without the pending phase fails ("Pool not defined on nodes: ..."), and a member-
//! specific POST with a global key fails ("may not be used as member-specific key").

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Req, Scope, nullable};
use super::error::IncusError;
use super::network::Network;
use super::storage::StoragePool;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub server_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub url: String,
    #[serde(default, deserialize_with = "nullable")]
    pub database: bool,
    /// `Online`, `Offline`, `Evacuated`, ...
    #[serde(default, deserialize_with = "nullable")]
    pub status: String,
    #[serde(default, deserialize_with = "nullable")]
    pub message: String,
    #[serde(default, deserialize_with = "nullable")]
    pub roles: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub architecture: String,
    #[serde(default, deserialize_with = "nullable")]
    pub failure_domain: String,
    #[serde(default, deserialize_with = "nullable")]
    pub groups: Vec<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ClusterMember {
    pub fn is_online(&self) -> bool {
        self.status.eq_ignore_ascii_case("online")
    }
}

/// `GET /1.0/cluster`: whether clustering is on and which member answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// The member this client talks to (empty on a standalone server).
    #[serde(default, deserialize_with = "nullable")]
    pub server_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub enabled: bool,
    /// Member-specific keys a joining member must supply (`source` of a pool, ...).
    #[serde(default, deserialize_with = "nullable")]
    pub member_config: Vec<MemberConfigKey>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberConfigKey {
    /// `storage-pool` or `network`.
    #[serde(default, deserialize_with = "nullable")]
    pub entity: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub key: String,
    #[serde(default, deserialize_with = "nullable")]
    pub value: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
}

/// `GET /1.0/cluster/groups/<name>`: a named set of members (`@name` as an instance target).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterGroup {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub members: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Storage pool keys Incus keeps per member (Incus `db.NodeSpecificStorageConfig`).
pub const POOL_MEMBER_KEYS: &[&str] = &[
    "size",
    "source",
    "source.wipe",
    "volatile.initial_source",
    "zfs.pool_name",
    "lvm.thinpool_name",
    "lvm.vg_name",
    "lvm.vg.force_reuse",
];

/// Network keys Incus keeps per member (Incus `db.NodeSpecificNetworkConfig`); for bridges
/// `bridge.external_interfaces` is the one that matters. Addresses (`ipv4.address`) are
/// global: every member's bridge gets the same gateway.
pub const NETWORK_MEMBER_KEYS: &[&str] = &[
    "bgp.ipv4.nexthop",
    "bgp.ipv6.nexthop",
    "bridge.external_interfaces",
    "parent",
];

/// Splits a config into (member-specific, global) by the key list of its kind.
pub fn split_member_keys(
    config: &BTreeMap<String, String>,
    member_keys: &[&str],
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| member_keys.contains(&k.as_str()))
}

/// What a cluster-way create did; a converged re-run gives `defined_on` empty and `created`
/// false (and no request but GETs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterCreate {
    /// Members it was newly defined (made pending) on.
    pub defined_on: Vec<String>,
    /// Whether the global create was sent (it was not `Created` before).
    pub created: bool,
}

/// The one place pools and networks differ in the two-phase create.
struct Pendable<'a> {
    path: &'static str,
    scope: Scope,
    name: &'a str,
    /// `("driver", "dir")` for a pool, `("type", "bridge")` for a network.
    kind: (&'static str, &'a str),
    description: &'a str,
    config: &'a BTreeMap<String, String>,
    member_keys: &'static [&'static str],
}

impl Client {
    /// `GET /1.0/cluster`. A standalone server answers `enabled: false`.
    pub async fn cluster(&self) -> Result<Cluster, IncusError> {
        self.get_value(Req::get("/1.0/cluster", &[])).await
    }

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

    pub async fn cluster_member(&self, name: &str) -> Result<ClusterMember, IncusError> {
        self.get_value(Req::get("/1.0/cluster/members", &[name]))
            .await
    }

    /// Cluster groups with their members; empty on a standalone server.
    pub async fn cluster_groups(&self) -> Result<Vec<ClusterGroup>, IncusError> {
        match self
            .get_value(Req::get("/1.0/cluster/groups", &[]).query("recursion", "1"))
            .await
        {
            Err(IncusError::Api { ref message, .. }) if message.contains("not clustered") => {
                Ok(Vec::new())
            }
            other => other,
        }
    }

    /// Creates `pool` on every one of `members` the cluster way: pending per member with its
    /// member-specific keys (those of `pool.config`, overridden by `per_member[member]`), then
    /// globally with the rest. Idempotent: members it is already defined on are skipped, and
    /// a pool already `Created` is left alone (no write at all).
    pub async fn create_storage_pool_clustered(
        &self,
        pool: &StoragePool,
        members: &[String],
        per_member: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<ClusterCreate, IncusError> {
        let p = Pendable {
            path: "/1.0/storage-pools",
            scope: Scope::Global,
            name: &pool.name,
            kind: ("driver", &pool.driver),
            description: &pool.description,
            config: &pool.config,
            member_keys: POOL_MEMBER_KEYS,
        };
        self.create_clustered(&p, members, per_member).await
    }

    /// [`Client::create_storage_pool_clustered`] for a network (in the `default` project).
    pub async fn create_network_clustered(
        &self,
        network: &Network,
        members: &[String],
        per_member: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<ClusterCreate, IncusError> {
        let p = Pendable {
            path: "/1.0/networks",
            scope: Scope::DefaultProject,
            name: &network.name,
            kind: ("type", &network.kind),
            description: &network.description,
            config: &network.config,
            member_keys: NETWORK_MEMBER_KEYS,
        };
        self.create_clustered(&p, members, per_member).await
    }

    async fn create_clustered(
        &self,
        p: &Pendable<'_>,
        members: &[String],
        per_member: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<ClusterCreate, IncusError> {
        if let Some(bad) = per_member
            .values()
            .flat_map(|c| c.keys())
            .find(|k| !p.member_keys.contains(&k.as_str()))
        {
            return Err(IncusError::Invalid(format!(
                "{} {}: `{bad}` is not a member-specific key (member-specific: {})",
                p.path,
                p.name,
                p.member_keys.join(", ")
            )));
        }
        let root = self.on_target(None);
        let (status, locations) = match root
            .get_value::<Value>(Req::get(p.path, &[p.name]).scope(p.scope))
            .await
        {
            Ok(v) => (
                v["status"].as_str().unwrap_or_default().to_string(),
                v["locations"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Err(e) if e.is_not_found() => (String::new(), Vec::<String>::new()),
            Err(e) => return Err(e),
        };
        let mut out = ClusterCreate::default();
        if status == "Created" {
            return Ok(out);
        }
        let (shared_member, global) = split_member_keys(p.config, p.member_keys);
        for m in members.iter().filter(|m| !locations.contains(m)) {
            let mut config = shared_member.clone();
            config.extend(per_member.get(m).cloned().unwrap_or_default());
            let body = serde_json::json!({
                "name": p.name, p.kind.0: p.kind.1, "config": config,
            });
            let req = Req::new(Method::POST, p.path, &[])
                .scope(p.scope)
                .query("target", m.as_str())
                .json(&body)?;
            match root.write(req).await {
                Ok(_) => out.defined_on.push(m.clone()),
                // Defined meanwhile by a concurrent run: that is what we wanted.
                Err(IncusError::Api { ref message, .. }) if message.contains("already defined") => {
                }
                Err(e) => return Err(e),
            }
        }
        let body = serde_json::json!({
            "name": p.name, p.kind.0: p.kind.1, "description": p.description, "config": global,
        });
        let req = Req::new(Method::POST, p.path, &[])
            .scope(p.scope)
            .json(&body)?;
        match root.write(req).await {
            Ok(_) => out.created = true,
            Err(IncusError::Api { ref message, .. }) if message.contains("already created") => {}
            Err(e) => return Err(e),
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_specific_keys_are_split_off() {
        let config: BTreeMap<String, String> = [
            ("source", "/srv/pool"),
            ("rsync.bwlimit", "10MB"),
            ("volatile.initial_source", "/dev/sdb"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (member, global) = split_member_keys(&config, POOL_MEMBER_KEYS);
        assert_eq!(
            member.keys().collect::<Vec<_>>(),
            ["source", "volatile.initial_source"]
        );
        assert_eq!(global.keys().collect::<Vec<_>>(), ["rsync.bwlimit"]);
        let net: BTreeMap<String, String> = [
            ("ipv4.address", "10.50.0.1/24"),
            ("bridge.external_interfaces", "eth1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (member, global) = split_member_keys(&net, NETWORK_MEMBER_KEYS);
        assert!(member.contains_key("bridge.external_interfaces") && member.len() == 1);
        assert!(global.contains_key("ipv4.address") && global.len() == 1);
    }

    #[test]
    fn decodes_members_groups_and_the_cluster() {
        let m: ClusterMember = serde_json::from_value(serde_json::json!({
            "server_name": "m3", "url": "https://198.51.100.13:8443", "database": true,
            "status": "Offline", "message": "No heartbeat for 12s", "roles": ["database"],
            "groups": null, "config": null, "failure_domain": "default"
        }))
        .expect("member");
        assert!(!m.is_online() && m.groups.is_empty() && m.roles == ["database"]);
        let g: ClusterGroup = serde_json::from_value(serde_json::json!({
            "name": "default", "description": "Default cluster group", "members": ["m1", "m2"]
        }))
        .expect("group");
        assert_eq!(g.members, ["m1", "m2"]);
        let c: Cluster = serde_json::from_value(serde_json::json!({
            "server_name": "m1", "enabled": true, "member_config": [{"entity": "storage-pool",
            "name": "data", "key": "source", "value": "", "description": "\"source\" property"}]
        }))
        .expect("cluster");
        assert!(c.enabled && c.member_config[0].key == "source");
    }
}
