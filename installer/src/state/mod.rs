//! What atlas-install keeps in Incus about a deployment, as one typed document (bootc's
//! `spec`): [`ProjectState`], the `user.atlas.*` keys of the Atlas project's config. This
//! module is the only one that reads or writes them; every key is named once in [`keys`].
//!
//! - secrets ([`SecretStore`]): generated passwords, the metrics certificate, the hash key;
//! - the install records ([`record`]): what the current and the previous install run;
//! - the member the stack was placed on at first install (a cluster);
//! - whether the server can serve the state bucket ([`BucketSupport`]);
//! - what each instance was before an upgrade replaced it ([`SavedInstance`]);
//! - what the server wiring set on the server ([`WiringRecords`]);
//! - outside the project: the lock of each Atlas project, in the `default` project
//!   ([`lock`]).
//!
//! Reading is lenient where the engine always was: a garbled piece is kept as it is and said
//! so when used ([`Slot::Corrupt`]), never overwritten by a write of something else.
//! [`update`] writes compare-and-swap under the project's ETag and sends only the keys that
//! changed, so a converged run writes nothing.

pub mod keys;
pub mod lock;
pub mod record;
mod saved;
mod wiring;

use std::collections::BTreeMap;

use crate::incus::{Client, IncusError, OptionalExt as _};

pub use record::{InstallRecord, Records, ServiceRecord};
pub use saved::{SavedFile, SavedInstance};
pub use wiring::WiringRecords;

/// Attempts of a write when someone else changes the project between our read and write.
const WRITE_ATTEMPTS: usize = 3;

/// Everything of the Atlas project's config that is atlas state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectState {
    /// `user.atlas.version`: the atlas-install version that last wrote the project object.
    pub version: Option<String>,
    pub secrets: SecretStore,
    /// The current install.
    pub record: Slot<InstallRecord>,
    /// The install before it.
    pub previous: Slot<InstallRecord>,
    /// The cluster member the stack was placed on at first install.
    pub placement_member: Option<String>,
    pub bucket: BucketSupport,
    /// What each instance an upgrade replaced was before it, by instance name. Unreadable
    /// entries count as absent (an upgrade then saves afresh).
    pub upgrades: BTreeMap<String, SavedInstance>,
    pub wiring: WiringRecords,
}

/// A stored JSON value: absent, readable, or not (kept as it is, and named when used).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Slot<T> {
    #[default]
    Absent,
    Stored(T),
    Corrupt {
        raw: String,
        why: String,
    },
}

impl<T> Slot<T> {
    fn parse(raw: Option<&String>) -> Slot<T>
    where
        T: serde::de::DeserializeOwned,
    {
        match raw {
            None => Slot::Absent,
            Some(text) => match serde_json::from_str(text) {
                Ok(v) => Slot::Stored(v),
                Err(e) => Slot::Corrupt {
                    raw: text.clone(),
                    why: e.to_string(),
                },
            },
        }
    }

    fn raw(&self) -> Option<String>
    where
        T: serde::Serialize,
    {
        match self {
            Slot::Absent => None,
            Slot::Stored(v) => serde_json::to_string(v).ok(),
            Slot::Corrupt { raw, .. } => Some(raw.clone()),
        }
    }

    /// The value, or why it cannot be read.
    pub fn get(&self) -> Result<Option<&T>, String> {
        match self {
            Slot::Absent => Ok(None),
            Slot::Stored(v) => Ok(Some(v)),
            Slot::Corrupt { why, .. } => Err(why.clone()),
        }
    }
}

/// Whether the server can serve the state bucket, as recorded once found out (so re-runs
/// neither try nor write again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BucketSupport {
    /// Not found out yet, or the bucket exists.
    #[default]
    Unknown,
    /// The server cannot serve local buckets (no MinIO, Incus before 7.0).
    Unsupported,
    /// A leftover of an earlier failed attempt keeps Incus from creating it.
    Blocked,
}

impl BucketSupport {
    fn as_str(self) -> Option<&'static str> {
        match self {
            BucketSupport::Unknown => None,
            BucketSupport::Unsupported => Some("unsupported"),
            BucketSupport::Blocked => Some("blocked"),
        }
    }

    fn parse(v: Option<&String>) -> BucketSupport {
        match v.map(String::as_str) {
            Some("unsupported") => BucketSupport::Unsupported,
            Some("blocked") => BucketSupport::Blocked,
            _ => BucketSupport::Unknown,
        }
    }

    /// Whether the bucket is known not to be there (nothing to try).
    pub fn skipped(self) -> bool {
        self != BucketSupport::Unknown
    }
}

/// The stored secrets by name (`user.atlas.secret.<name>`). Values are never printed:
/// `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretStore(BTreeMap<String, String>);

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretStore {
    /// The value of `name`; an empty one counts as missing.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn set(&mut self, name: &str, value: String) {
        self.0.insert(name.to_string(), value);
    }

    pub fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }

    /// Names of the secrets that hold a value, sorted.
    pub fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every stored value (for redaction).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0
            .values()
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl ProjectState {
    /// The state held in a project's config map.
    pub fn from_config(config: &BTreeMap<String, String>) -> ProjectState {
        let upgrades = config
            .iter()
            .filter_map(|(k, v)| {
                let instance = k.strip_prefix(keys::UPGRADE_PREFIX)?;
                Some((instance.to_string(), serde_json::from_str(v).ok()?))
            })
            .collect();
        ProjectState {
            version: config.get(keys::VERSION).cloned(),
            secrets: SecretStore(
                config
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.strip_prefix(keys::SECRET_PREFIX)?.to_string(), v.clone()))
                    })
                    .collect(),
            ),
            record: Slot::parse(config.get(keys::RECORD)),
            previous: Slot::parse(config.get(keys::RECORD_PREVIOUS)),
            placement_member: config
                .get(keys::PLACEMENT_MEMBER)
                .filter(|s| !s.is_empty())
                .cloned(),
            bucket: BucketSupport::parse(config.get(keys::STATE_BUCKET)),
            upgrades,
            wiring: WiringRecords::from_config(config),
        }
    }

    /// The keys this state is written as (the project's own stamp excluded: the project
    /// object's update writes that).
    fn keys(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .secrets
            .0
            .iter()
            .map(|(k, v)| (keys::secret(k), v.clone()))
            .collect();
        out.extend(self.record.raw().map(|v| (keys::RECORD.to_string(), v)));
        out.extend(
            self.previous
                .raw()
                .map(|v| (keys::RECORD_PREVIOUS.to_string(), v)),
        );
        out.extend(
            self.placement_member
                .clone()
                .map(|m| (keys::PLACEMENT_MEMBER.to_string(), m)),
        );
        out.extend(
            self.bucket
                .as_str()
                .map(|b| (keys::STATE_BUCKET.to_string(), b.to_string())),
        );
        for (instance, saved) in &self.upgrades {
            if let Ok(v) = serde_json::to_string(saved) {
                out.insert(keys::upgrade(instance), v);
            }
        }
        self.wiring.write_into(&mut out);
        out
    }

    /// `config` with what changed between `before` and `self` set or removed; `None` when
    /// nothing did. Keys neither side models (someone else's, a garbled upgrade entry) stay.
    fn apply_to(
        &self,
        before: &ProjectState,
        config: &BTreeMap<String, String>,
    ) -> Option<BTreeMap<String, String>> {
        let (old, new) = (before.keys(), self.keys());
        if old == new {
            return None;
        }
        let mut next = config.clone();
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            next.remove(k);
        }
        for (k, v) in new {
            if old.get(&k) != Some(&v) {
                next.insert(k, v);
            }
        }
        Some(next)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Boxed: unboxed, every closure handed to [`update`] would return a large `Result`.
    #[error(transparent)]
    Incus(Box<IncusError>),
    #[error(
        "the Incus project `{project}` does not exist, and atlas-install keeps its state (secrets, \
         install records) in its config; it is created by install step 3 (or check \
         `incus.project` in atlas.toml)"
    )]
    MissingProject { project: String },
    #[error(
        "project `{project}` kept changing while atlas-install wrote its state ({WRITE_ATTEMPTS} \
         attempts); run again"
    )]
    Contended { project: String },
}

impl From<IncusError> for StateError {
    fn from(e: IncusError) -> StateError {
        StateError::Incus(Box::new(e))
    }
}

/// The state of `project`; `None` when the project does not exist (GET only).
pub async fn read(client: &Client, project: &str) -> Result<Option<ProjectState>, IncusError> {
    Ok(client
        .on_target(None)
        .get_project(project)
        .await
        .optional()?
        .map(|p| ProjectState::from_config(&p.value.config)))
}

/// Changes the state of `project` with `change` and writes what changed (nothing when
/// nothing did), compare-and-swap under the project's ETag: when someone else wrote the
/// project meanwhile, `change` runs again on what is there now. `change` may refuse with an
/// error, which is returned as it is.
pub async fn update<T, E>(
    client: &Client,
    project: &str,
    mut change: impl FnMut(&mut ProjectState) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<StateError>,
{
    let root = client.on_target(None);
    for _ in 0..WRITE_ATTEMPTS {
        let got = root
            .get_project(project)
            .await
            .optional()
            .map_err(StateError::from)?
            .ok_or_else(|| StateError::MissingProject {
                project: project.to_string(),
            })?;
        let before = ProjectState::from_config(&got.value.config);
        let mut state = before.clone();
        let out = change(&mut state)?;
        let Some(config) = state.apply_to(&before, &got.value.config) else {
            return Ok(out);
        };
        let mut next = got.value.clone();
        next.config = config;
        match root.update_project(&next, got.etag.as_deref()).await {
            Ok(()) => return Ok(out),
            Err(IncusError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(StateError::from(e).into()),
        }
    }
    Err(StateError::Contended {
        project: project.to_string(),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_key_reads_into_its_field_and_back() {
        let c = config(&[
            ("features.images", "true"),
            (keys::VERSION, "0.1.0"),
            ("user.atlas.secret.grafana-admin-password", "pw"),
            (keys::PLACEMENT_MEMBER, "m2"),
            (keys::STATE_BUCKET, "blocked"),
            (keys::METRICS_CERTS, "aa,bb"),
            ("user.atlas.other", "kept"),
        ]);
        let s = ProjectState::from_config(&c);
        assert_eq!(s.version.as_deref(), Some("0.1.0"));
        assert_eq!(s.secrets.get(keys::secrets::GRAFANA_ADMIN), Some("pw"));
        assert_eq!(s.placement_member.as_deref(), Some("m2"));
        assert_eq!(s.bucket, BucketSupport::Blocked);
        assert_eq!(s.wiring.certs.len(), 2);
        // Unchanged: nothing to write.
        assert_eq!(s.apply_to(&s.clone(), &c), None);
        let mut t = s.clone();
        t.bucket = BucketSupport::Unknown;
        t.secrets.set("metrics-key", "k".into());
        let next = t.apply_to(&s, &c).expect("changed");
        assert!(!next.contains_key(keys::STATE_BUCKET));
        assert_eq!(next["user.atlas.secret.metrics-key"], "k");
        assert_eq!(next["features.images"], "true", "other keys stay");
        assert_eq!(next["user.atlas.other"], "kept", "keys nobody models stay");
        assert_eq!(next[keys::VERSION], "0.1.0", "the stamp is the object's");
    }

    #[test]
    fn a_garbled_record_stays_as_it_is_and_is_named() {
        let c = config(&[(keys::RECORD, "{not json")]);
        let s = ProjectState::from_config(&c);
        assert!(s.record.get().is_err());
        let mut t = s.clone();
        t.placement_member = Some("m1".into());
        let next = t.apply_to(&s, &c).expect("changed");
        assert_eq!(next[keys::RECORD], "{not json");
    }

    #[test]
    fn secret_values_are_not_shown() {
        let mut s = SecretStore::default();
        s.set("grafana-admin-password", "hunter2-secret".into());
        s.set("empty", String::new());
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.names(), ["grafana-admin-password"]);
        assert!(!s.has("empty"));
    }
}
