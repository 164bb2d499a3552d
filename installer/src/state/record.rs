//! What atlas installed, recorded in Incus so upgrade and rollback know where they start:
//! the version, and per instance its image and a keyed hash of every file pushed into it.
//!
//! Stored as JSON: [`keys::RECORD`] is the current install, [`keys::RECORD_PREVIOUS`] the one
//! before it (what `rollback` returns to). [`write`] rotates current to previous under the
//! project's ETag, so two writers cannot lose a record, and writes nothing when the new record
//! describes the same install as the current one (a converged re-run stays at zero writes
//! and keeps the real previous install).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::incus::{Client, IncusError};

use super::{ProjectState, Slot, StateError, keys};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRecord {
    /// atlas-install version that installed.
    pub version: String,
    /// RFC 3339, UTC.
    pub installed_at: String,
    /// Per instance name.
    pub services: BTreeMap<String, ServiceRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Fingerprint of the Incus image the instance runs.
    pub image_fingerprint: String,
    /// Alias (or reference) the image was chosen by.
    pub image: String,
    /// Each file pushed into the instance, by path: an HMAC of its content, mode and owner
    /// keyed by the project's hash key, so that no stored value can be used to guess a secret
    /// the file holds.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// Both records of a project; either may be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Records {
    pub current: Option<InstallRecord>,
    pub previous: Option<InstallRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Boxed, so that every `Result` of this module stays small.
    #[error(transparent)]
    Incus(Box<IncusError>),
    #[error(
        "the Incus project `{project}` does not exist; the install record lives in its config, \
         so it can only be written after the project is created (install step 3)"
    )]
    MissingProject { project: String },
    #[error(
        "{key} in project `{project}` is not a valid install record ({why}); if it was edited \
         by hand, restore it or unset it (`incus project unset {project} {key}`)"
    )]
    Corrupt {
        project: String,
        key: String,
        why: String,
    },
    #[error("project `{project}` kept changing while the install record was written; run again")]
    Contended { project: String },
}

impl From<IncusError> for RecordError {
    fn from(e: IncusError) -> RecordError {
        RecordError::Incus(Box::new(e))
    }
}

impl From<StateError> for RecordError {
    fn from(e: StateError) -> RecordError {
        match e {
            StateError::Incus(e) => RecordError::Incus(e),
            StateError::MissingProject { project } => RecordError::MissingProject { project },
            StateError::Contended { project } => RecordError::Contended { project },
        }
    }
}

impl InstallRecord {
    /// A record stamped now.
    pub fn new(version: &str, services: BTreeMap<String, ServiceRecord>) -> InstallRecord {
        InstallRecord {
            version: version.to_string(),
            installed_at: crate::clock::rfc3339(crate::clock::now_secs()),
            services,
        }
    }

    /// Whether both describe the same install (the time stamp aside).
    pub fn same_install(&self, other: &InstallRecord) -> bool {
        self.version == other.version && self.services == other.services
    }

    /// Instances whose image or files differ from `other`'s, plus those only one side has.
    pub fn changed_services(&self, other: &InstallRecord) -> Vec<String> {
        let mut names: Vec<&String> = self.services.keys().chain(other.services.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|n| self.services.get(*n) != other.services.get(*n))
            .cloned()
            .collect()
    }
}

fn corrupt(project: &str, key: &str, why: String) -> RecordError {
    RecordError::Corrupt {
        project: project.to_string(),
        key: key.to_string(),
        why,
    }
}

impl ProjectState {
    /// Both records, or which one cannot be read.
    pub fn records(&self, project: &str) -> Result<Records, RecordError> {
        Ok(Records {
            current: self
                .record
                .get()
                .map_err(|why| corrupt(project, keys::RECORD, why))?
                .cloned(),
            previous: self
                .previous
                .get()
                .map_err(|why| corrupt(project, keys::RECORD_PREVIOUS, why))?
                .cloned(),
        })
    }

    /// `record` as the current install, the old current becoming the previous one. False when
    /// the current record already describes the same install. An unreadable current record is
    /// refused rather than rotated into `previous`, where rollback would trip over it.
    pub fn rotate_record(
        &mut self,
        project: &str,
        record: &InstallRecord,
    ) -> Result<bool, RecordError> {
        let current = self
            .record
            .get()
            .map_err(|why| corrupt(project, keys::RECORD, why))?;
        if current.is_some_and(|c| c.same_install(record)) {
            return Ok(false);
        }
        if current.is_some() {
            self.previous = std::mem::take(&mut self.record);
        }
        self.record = Slot::Stored(record.clone());
        Ok(true)
    }
}

/// Reads both records of `project` (absent project: both `None`).
pub async fn read(client: &Client, project: &str) -> Result<Records, RecordError> {
    match super::read(client, project).await? {
        Some(s) => s.records(project),
        None => Ok(Records::default()),
    }
}

/// Stores `record` as the current install of `project` ([`ProjectState::rotate_record`]).
/// Returns false (and sends nothing) when the current record already describes the same
/// install.
pub async fn write(
    client: &Client,
    project: &str,
    record: &InstallRecord,
) -> Result<bool, RecordError> {
    super::update(client, project, |s| s.rotate_record(project, record)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: &str, fp: &str) -> InstallRecord {
        let svc = ServiceRecord {
            image_fingerprint: fp.into(),
            image: "atlas/grafana".into(),
            files: BTreeMap::from([("/etc/grafana/grafana.ini".to_string(), "ab12".to_string())]),
        };
        InstallRecord::new(version, BTreeMap::from([("grafana01".to_string(), svc)]))
    }

    /// The project config after rotating `record` in; `None` when nothing is written.
    fn rotated(
        config: &BTreeMap<String, String>,
        record: &InstallRecord,
    ) -> Result<Option<BTreeMap<String, String>>, RecordError> {
        let before = ProjectState::from_config(config);
        let mut s = before.clone();
        s.rotate_record("p", record)?;
        Ok(s.apply_to(&before, config))
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let r = record("0.1.0", "f1");
        let text = serde_json::to_string(&r).unwrap();
        let back: InstallRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["services"]["grafana01"]["image_fingerprint"], "f1");
        assert_eq!(
            v["services"]["grafana01"]["files"]["/etc/grafana/grafana.ini"],
            "ab12"
        );
        assert!(
            r.installed_at.ends_with('Z') && r.installed_at.len() == 20,
            "{}",
            r.installed_at
        );
    }

    #[test]
    fn first_write_has_no_previous_and_second_rotates() {
        let empty = BTreeMap::from([("features.images".to_string(), "true".to_string())]);
        let v1 = record("0.1.0", "f1");
        let after1 = rotated(&empty, &v1).unwrap().expect("written");
        assert!(!after1.contains_key(keys::RECORD_PREVIOUS));
        assert_eq!(after1["features.images"], "true", "other keys stay");
        let v2 = record("0.2.0", "f2");
        let after2 = rotated(&after1, &v2).unwrap().expect("written");
        let got = ProjectState::from_config(&after2).records("p").unwrap();
        assert_eq!(got.current.as_ref(), Some(&v2));
        assert_eq!(got.previous.as_ref(), Some(&v1));
        // A third install drops the oldest.
        let v3 = record("0.3.0", "f3");
        let after3 = rotated(&after2, &v3).unwrap().expect("written");
        let got = ProjectState::from_config(&after3).records("p").unwrap();
        assert_eq!(got.previous, Some(v2));
    }

    #[test]
    fn same_install_is_not_rewritten_even_with_a_new_time() {
        let v1 = record("0.1.0", "f1");
        let cfg = rotated(&BTreeMap::new(), &v1).unwrap().unwrap();
        let mut again = v1.clone();
        again.installed_at = "2099-01-01T00:00:00Z".into();
        assert!(rotated(&cfg, &again).unwrap().is_none());
        let mut changed = v1.clone();
        changed
            .services
            .get_mut("grafana01")
            .unwrap()
            .files
            .insert("/x".into(), "1".into());
        assert!(rotated(&cfg, &changed).unwrap().is_some());
    }

    #[test]
    fn corrupt_current_is_refused_and_named() {
        let cfg = BTreeMap::from([(keys::RECORD.to_string(), "{not json".to_string())]);
        let before = ProjectState::from_config(&cfg);
        let e = before
            .clone()
            .rotate_record("atlas", &record("0.1.0", "f"))
            .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains(keys::RECORD) && s.contains("incus project unset atlas"),
            "{s}"
        );
    }

    #[test]
    fn changed_services_names_image_file_and_presence_changes() {
        let a = record("0.1.0", "f1");
        let mut b = record("0.2.0", "f2");
        b.services.insert("loki01".into(), ServiceRecord::default());
        assert_eq!(a.changed_services(&b), vec!["grafana01", "loki01"]);
        assert!(a.changed_services(&a.clone()).is_empty());
    }
}
