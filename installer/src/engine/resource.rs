//! What the engine manages, described uniformly: every Incus object atlas owns is a
//! [`Resource`]: an address (kind, name, pool) and the [`Body`] it is created with, in the
//! Incus API's own types, plus a content hash of that body stored on the object as
//! `user.atlas.hash`.
//!
//! Comparing hashes instead of bodies makes a converged re-run cheap (one GET per object,
//! zero writes) and immune to keys Incus fills in by itself (`volatile.*`, defaults). The hash
//! is computed from the typed body ([`Body::hash_view`]: the fields atlas sets, in a fixed
//! shape), so what is hashed is what is sent.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::incus::{Devices, InstanceCreate, Network, Profile, Project, StorageVolume};
use crate::state::keys;

/// Kinds in the fixed step order; `destroy` walks them backwards.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
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

    /// Whether the object lives inside the Atlas project (networks and projects do not:
    /// bridges cannot live in a non-default project).
    pub fn project_scoped(self) -> bool {
        matches!(
            self,
            ResourceKind::Profile | ResourceKind::Volume | ResourceKind::Instance
        )
    }
}

/// The body an object is created with, in the API's own types.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Project(Project),
    Network(Network),
    Profile(Profile),
    /// A custom volume of the resource's pool.
    Volume(StorageVolume),
    Instance(InstanceCreate),
}

impl Body {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Body::Project(_) => ResourceKind::Project,
            Body::Network(_) => ResourceKind::Network,
            Body::Profile(_) => ResourceKind::Profile,
            Body::Volume(_) => ResourceKind::Volume,
            Body::Instance(_) => ResourceKind::Instance,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Body::Project(p) => &p.name,
            Body::Network(n) => &n.name,
            Body::Profile(p) => &p.name,
            Body::Volume(v) => &v.name,
            Body::Instance(i) => &i.name,
        }
    }

    pub fn description(&self) -> &str {
        match self {
            Body::Project(p) => &p.description,
            Body::Network(n) => &n.description,
            Body::Profile(p) => &p.description,
            Body::Volume(v) => &v.description,
            Body::Instance(i) => &i.description,
        }
    }

    pub fn config(&self) -> &BTreeMap<String, String> {
        match self {
            Body::Project(p) => &p.config,
            Body::Network(n) => &n.config,
            Body::Profile(p) => &p.config,
            Body::Volume(v) => &v.config,
            Body::Instance(i) => &i.config,
        }
    }

    fn config_mut(&mut self) -> &mut BTreeMap<String, String> {
        match self {
            Body::Project(p) => &mut p.config,
            Body::Network(n) => &mut n.config,
            Body::Profile(p) => &mut p.config,
            Body::Volume(v) => &mut v.config,
            Body::Instance(i) => &mut i.config,
        }
    }

    /// Devices of a profile or an instance (none for the other kinds).
    pub fn devices(&self) -> Option<&Devices> {
        match self {
            Body::Profile(p) => Some(&p.devices),
            Body::Instance(i) => Some(&i.devices),
            _ => None,
        }
    }

    /// The fields atlas sets, in the shape their hash has always been taken of (object keys
    /// sorted, the stamp keys left out), so that an object written by an earlier version
    /// with the same content counts as unchanged.
    pub fn hash_view(&self) -> Value {
        let config: BTreeMap<&String, &String> = self
            .config()
            .iter()
            .filter(|(k, _)| !keys::STAMP.contains(&k.as_str()))
            .collect();
        match self {
            Body::Project(p) => json!({
                "name": p.name, "description": p.description, "config": config,
            }),
            Body::Network(n) => json!({
                "name": n.name, "type": n.kind, "description": n.description, "config": config,
            }),
            Body::Profile(p) => json!({
                "name": p.name, "description": p.description, "config": config,
                "devices": p.devices,
            }),
            Body::Volume(v) => json!({
                "name": v.name, "type": "custom", "content_type": v.content_type,
                "description": v.description, "config": config,
            }),
            Body::Instance(i) => json!({
                "name": i.name, "type": i.kind, "description": i.description,
                "source": {"type": i.source.kind, "alias": i.source.alias},
                "profiles": i.profiles, "config": config, "devices": i.devices,
            }),
        }
    }
}

/// One object atlas wants to exist, with the exact body it would create it with.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Storage pool, for volumes.
    pub pool: Option<String>,
    /// Creation body; its `config` carries the `user.atlas.*` stamp.
    pub body: Body,
    /// Keys of the body's `config` whose values are secrets: never shown in plans or logs.
    pub secret_keys: Vec<String>,
    /// Inputs that change the object without being part of its body (files pushed into an
    /// instance, the image it runs). Their digests go into the object's hash.
    pub extra_hashes: BTreeMap<String, String>,
    pub hash: String,
}

impl Resource {
    /// Builds a resource and stamps its body with the ownership keys and content hash.
    pub fn new(body: Body, pool: Option<&str>, version: &str) -> Resource {
        let mut r = Resource {
            pool: pool.map(str::to_string),
            body,
            secret_keys: Vec::new(),
            extra_hashes: BTreeMap::new(),
            hash: String::new(),
        };
        r.restamp(version);
        r
    }

    pub fn kind(&self) -> ResourceKind {
        self.body.kind()
    }

    pub fn name(&self) -> &str {
        self.body.name()
    }

    /// Adds inputs that are not part of the body (rendered files, image) to the hash.
    pub fn with_extra(mut self, extra: BTreeMap<String, String>) -> Resource {
        self.extra_hashes = extra;
        let version = self
            .body
            .config()
            .get(keys::VERSION)
            .cloned()
            .unwrap_or_default();
        self.restamp(&version);
        self
    }

    /// Hashes the body without the stamp keys (so the version alone never forces a change),
    /// then writes the stamp.
    fn restamp(&mut self, version: &str) {
        self.hash = content_hash(&self.body.hash_view(), &self.extra_hashes);
        let cfg = self.body.config_mut();
        cfg.insert(keys::MANAGED.to_string(), "true".to_string());
        cfg.insert(keys::VERSION.to_string(), version.to_string());
        cfg.insert(keys::HASH.to_string(), self.hash.clone());
    }

    pub fn with_secret_keys(mut self, keys: Vec<String>) -> Resource {
        self.secret_keys = keys;
        self
    }

    /// `network management`, `volume local/grafana01-data`.
    pub fn address(&self) -> ResourceAddress {
        ResourceAddress {
            kind: self.kind(),
            name: self.name().to_string(),
            pool: self.pool.clone(),
        }
    }

    /// The body's `config` map with secret values replaced, for display.
    pub fn redacted_config(&self) -> BTreeMap<String, String> {
        self.body
            .config()
            .iter()
            .map(|(k, v)| {
                let shown = match self.secret_keys.contains(k) {
                    true => "<redacted>".to_string(),
                    false => v.clone(),
                };
                (k.clone(), shown)
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
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

/// sha256 over the canonical JSON of the hash view (serde_json maps are sorted) and the
/// extras.
fn content_hash(view: &Value, extra: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(view).expect("JSON values always serialize"));
    for (k, v) in extra {
        h.update(b"\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    hex::encode(h.finalize())
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
    pub fn from_config(config: &BTreeMap<String, String>, etag: Option<String>) -> Observed {
        if !keys::is_owned(config) {
            return Observed::Foreign;
        }
        Observed::Owned {
            hash: config.get(keys::HASH).cloned(),
            etag,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn network(name: &str, addr: &str) -> Body {
        Body::Network(Network::bridge(
            name,
            BTreeMap::from([("ipv4.address".to_string(), addr.to_string())]),
        ))
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = Resource::new(network("n", "10.0.0.1/24"), None, "1");
        let b = Resource::new(network("n", "10.0.0.1/24"), None, "2");
        assert_eq!(a.hash, b.hash, "the version must not change the hash");
        let c = Resource::new(network("n", "10.0.0.2/24"), None, "1");
        assert_ne!(a.hash, c.hash);
        assert_eq!(a.body.config()[keys::HASH], a.hash);
        assert_eq!(a.body.config()[keys::MANAGED], "true");
        // Restamping an already stamped body gives the same hash: the stamp is not content.
        let again = Resource::new(a.body.clone(), None, "3");
        assert_eq!(again.hash, a.hash);
    }

    #[test]
    fn the_hash_is_the_one_earlier_versions_stored() {
        // The shape (and so the hash) of a network body as versions before the typed bodies
        // hashed it: an object they wrote stays unchanged.
        let r = Resource::new(network("n", "10.0.0.1/24"), None, "1");
        let old = json!({"name": "n", "type": "bridge", "description": "",
            "config": {"ipv4.address": "10.0.0.1/24"}});
        assert_eq!(r.hash, content_hash(&old, &BTreeMap::new()));
    }

    #[test]
    fn extras_change_the_hash_and_the_stamp() {
        let a = Resource::new(
            Body::Instance(InstanceCreate::container(
                "i",
                crate::incus::InstanceSource::alias("a"),
            )),
            None,
            "1",
        );
        let mut extra = BTreeMap::new();
        extra.insert("file:/etc/x".to_string(), "abc".to_string());
        let b = a.clone().with_extra(extra);
        assert_ne!(a.hash, b.hash);
        assert_eq!(b.body.config()[keys::HASH], b.hash);
    }

    #[test]
    fn ownership_is_read_from_config() {
        let owned = BTreeMap::from([
            (keys::MANAGED.to_string(), "true".to_string()),
            (keys::HASH.to_string(), "h".to_string()),
        ]);
        assert_eq!(
            Observed::from_config(&owned, None),
            Observed::Owned {
                hash: Some("h".into()),
                etag: None
            }
        );
        let foreign = BTreeMap::from([("ipv4.address".to_string(), "10.0.0.1/24".to_string())]);
        assert_eq!(Observed::from_config(&foreign, None), Observed::Foreign);
    }

    #[test]
    fn secrets_are_redacted_for_display() {
        let mut create = InstanceCreate::container("g", crate::incus::InstanceSource::alias("a"));
        create
            .config
            .insert("environment.PW".into(), "hunter2".into());
        let r = Resource::new(Body::Instance(create), None, "1")
            .with_secret_keys(vec!["environment.PW".into()]);
        let shown = r.redacted_config();
        assert_eq!(shown["environment.PW"], "<redacted>");
        assert!(!format!("{shown:?}").contains("hunter2"));
    }
}
