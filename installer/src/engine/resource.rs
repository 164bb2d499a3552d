//! What the engine manages, described uniformly: every Incus object atlas owns is a
//! [`Resource`] with a kind, an address (name, project, pool) and the body we would send,
//! plus a content hash of that body stored on the object as `user.atlas.hash`.
//!
//! Comparing hashes instead of bodies makes a converged re-run cheap (one GET per object,
//! zero writes) and immune to keys Incus fills in by itself (`volatile.*`, defaults).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::state::keys;

/// Kinds in the fixed step order; `destroy` walks them backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    Project,
    Network,
    Profile,
    Volume,
    Instance,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Project => "project",
            ResourceKind::Network => "network",
            ResourceKind::Profile => "profile",
            ResourceKind::Volume => "volume",
            ResourceKind::Instance => "instance",
        }
    }

    /// Collection path for creation (POST) and the object path prefix.
    pub fn collection(self, pool: Option<&str>) -> String {
        match self {
            ResourceKind::Project => "/1.0/projects".to_string(),
            ResourceKind::Network => "/1.0/networks".to_string(),
            ResourceKind::Profile => "/1.0/profiles".to_string(),
            ResourceKind::Volume => format!(
                "/1.0/storage-pools/{}/volumes/custom",
                pool.unwrap_or_default()
            ),
            ResourceKind::Instance => "/1.0/instances".to_string(),
        }
    }

    /// Whether the object lives inside the Atlas project (networks and projects do not:
    /// bridges cannot live in a non-default project).
    pub fn project_scoped(self) -> bool {
        matches!(
            self,
            ResourceKind::Profile | ResourceKind::Volume | ResourceKind::Instance
        )
    }
}

/// One object atlas wants to exist, with the exact body it would create it with.
#[derive(Debug, Clone, Serialize)]
pub struct Resource {
    pub kind: ResourceKind,
    pub name: String,
    /// Storage pool, for volumes.
    pub pool: Option<String>,
    /// Creation body (POST). `config` carries the `user.atlas.*` keys.
    pub body: Value,
    /// Keys of `body.config` whose values are secrets: never shown in plans or logs.
    #[serde(skip)]
    pub secret_keys: Vec<String>,
    /// Extra inputs that change the object without being part of its body (files pushed
    /// into an instance, the image it runs). Their hashes go into the object's hash.
    pub extra_hashes: BTreeMap<String, String>,
    pub hash: String,
}

impl Resource {
    /// Builds a resource and stamps its body with the ownership keys and content hash.
    pub fn new(
        kind: ResourceKind,
        name: &str,
        pool: Option<&str>,
        body: Value,
        version: &str,
    ) -> Resource {
        let mut r = Resource {
            kind,
            name: name.to_string(),
            pool: pool.map(str::to_string),
            body,
            secret_keys: Vec::new(),
            extra_hashes: BTreeMap::new(),
            hash: String::new(),
        };
        r.restamp(version);
        r
    }

    /// Adds inputs that are not part of the body (rendered files, image) to the hash.
    pub fn with_extra(mut self, extra: BTreeMap<String, String>) -> Resource {
        self.extra_hashes = extra;
        let version = self.body["config"][keys::VERSION]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.restamp(&version);
        self
    }

    /// Hashes the body without the stamp keys (so the version alone never forces a change),
    /// then writes the stamp.
    fn restamp(&mut self, version: &str) {
        let mut unstamped = self.body.clone();
        if let Some(cfg) = unstamped.get_mut("config").and_then(Value::as_object_mut) {
            for k in keys::STAMP {
                cfg.remove(k);
            }
        }
        self.hash = content_hash(&unstamped, &self.extra_hashes);
        stamp(&mut self.body, version, &self.hash);
    }

    pub fn with_secret_keys(mut self, keys: Vec<String>) -> Resource {
        self.secret_keys = keys;
        self
    }

    /// `network management`, `volume local/grafana01-data`.
    pub fn address(&self) -> ResourceAddress {
        ResourceAddress {
            kind: self.kind,
            name: self.name.clone(),
            pool: self.pool.clone(),
        }
    }

    /// The body's `config` map with secret values replaced, for display.
    pub fn redacted_config(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Some(cfg) = self.body.get("config").and_then(Value::as_object) {
            for (k, v) in cfg {
                let shown = if self.secret_keys.iter().any(|s| s == k) {
                    "<redacted>".to_string()
                } else {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                };
                out.insert(k.clone(), shown);
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceAddress {
    pub kind: ResourceKind,
    pub name: String,
    pub pool: Option<String>,
}

impl fmt::Display for ResourceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pool {
            Some(pool) => write!(f, "{} {}/{}", self.kind.as_str(), pool, self.name),
            None => write!(f, "{} {}", self.kind.as_str(), self.name),
        }
    }
}

/// sha256 over the canonical JSON of the body (serde_json maps are sorted) and the extras.
fn content_hash(body: &Value, extra: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(body).expect("JSON values always serialize"));
    for (k, v) in extra {
        h.update(b"\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
}

fn stamp(body: &mut Value, version: &str, hash: &str) {
    if let Some(obj) = body.as_object_mut() {
        let cfg = obj
            .entry("config")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(cfg) = cfg.as_object_mut() {
            cfg.insert(keys::MANAGED.to_string(), Value::String("true".to_string()));
            cfg.insert(
                keys::VERSION.to_string(),
                Value::String(version.to_string()),
            );
            cfg.insert(keys::HASH.to_string(), Value::String(hash.to_string()));
        }
    }
}

/// What the engine found at an address.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Absent,
    /// Exists and carries our ownership key; `hash` is its recorded content hash.
    Owned {
        hash: Option<String>,
        etag: Option<String>,
    },
    /// Exists without our ownership key: never changed or deleted by atlas.
    Foreign,
    /// Managed by atlas-install for another Atlas project (a network, which lives outside
    /// projects): that install's, never changed or deleted by this one.
    OtherProject {
        project: String,
    },
}

impl Observed {
    /// Classifies an object's `config` map as read from Incus.
    pub fn from_config(
        config: Option<&serde_json::Map<String, Value>>,
        etag: Option<String>,
    ) -> Observed {
        let Some(cfg) = config else {
            return Observed::Foreign;
        };
        if cfg.get(keys::MANAGED).and_then(Value::as_str) != Some("true") {
            return Observed::Foreign;
        }
        Observed::Owned {
            hash: cfg
                .get(keys::HASH)
                .and_then(Value::as_str)
                .map(str::to_string),
            etag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = Resource::new(
            ResourceKind::Network,
            "n",
            None,
            json!({"name":"n","config":{"ipv4.address":"10.0.0.1/24"}}),
            "1",
        );
        let b = Resource::new(
            ResourceKind::Network,
            "n",
            None,
            json!({"config":{"ipv4.address":"10.0.0.1/24"},"name":"n"}),
            "2",
        );
        assert_eq!(
            a.hash, b.hash,
            "key order and version must not change the hash"
        );
        let c = Resource::new(
            ResourceKind::Network,
            "n",
            None,
            json!({"name":"n","config":{"ipv4.address":"10.0.0.2/24"}}),
            "1",
        );
        assert_ne!(a.hash, c.hash);
        assert_eq!(a.body["config"][keys::HASH], a.hash.as_str());
        assert_eq!(a.body["config"][keys::MANAGED], "true");
    }

    #[test]
    fn extras_change_the_hash_and_the_stamp() {
        let a = Resource::new(ResourceKind::Instance, "i", None, json!({"name":"i"}), "1");
        let mut extra = BTreeMap::new();
        extra.insert("file:/etc/x".to_string(), "abc".to_string());
        let b = a.clone().with_extra(extra);
        assert_ne!(a.hash, b.hash);
        assert_eq!(b.body["config"][keys::HASH], b.hash.as_str());
    }

    #[test]
    fn ownership_is_read_from_config() {
        let owned = json!({"user.atlas.managed":"true","user.atlas.hash":"h"});
        assert_eq!(
            Observed::from_config(owned.as_object(), None),
            Observed::Owned {
                hash: Some("h".into()),
                etag: None
            }
        );
        let foreign = json!({"ipv4.address":"10.0.0.1/24"});
        assert_eq!(
            Observed::from_config(foreign.as_object(), None),
            Observed::Foreign
        );
    }

    #[test]
    fn secrets_are_redacted_for_display() {
        let r = Resource::new(
            ResourceKind::Instance,
            "g",
            None,
            json!({"config":{"environment.PW":"hunter2"}}),
            "1",
        )
        .with_secret_keys(vec!["environment.PW".into()]);
        let shown = r.redacted_config();
        assert_eq!(shown["environment.PW"], "<redacted>");
        assert!(!format!("{shown:?}").contains("hunter2"));
    }
}
