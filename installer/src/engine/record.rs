//! What atlas installed, recorded in Incus so upgrade and rollback know where they start:
//! the version, and per instance its image and the hash of every file pushed into it.
//!
//! Stored as JSON in the Atlas project's config: `user.atlas.record` is the current install,
//! `user.atlas.record.previous` the one before it (what `rollback` returns to). [`write`]
//! rotates current to previous under the project's ETag, so two writers cannot lose a record,
//! and writes nothing when the new record describes the same install as the current one (a
//! converged re-run stays at zero writes and keeps the real previous install).

// Like `secrets`, errors carry `IncusError` by value so callers can match on it.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::incus::{Client, IncusError, OptionalExt as _};

use super::desired::ImageChoice;
use super::resource::{Resource, ResourceKind};

pub const KEY_RECORD: &str = "user.atlas.record";
pub const KEY_PREVIOUS: &str = "user.atlas.record.previous";
/// Attempts when someone else changes the project between our read and write.
const WRITE_ATTEMPTS: usize = 3;

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
    /// Hash of each file pushed into the instance, by path (content, mode and owner).
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
    #[error(transparent)]
    Incus(#[from] IncusError),
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
    #[error(
        "project `{project}` kept changing while the install record was written \
         ({WRITE_ATTEMPTS} attempts); run again"
    )]
    Contended { project: String },
}

impl InstallRecord {
    /// A record stamped now.
    pub fn new(version: &str, services: BTreeMap<String, ServiceRecord>) -> InstallRecord {
        InstallRecord {
            version: version.to_string(),
            installed_at: super::clock::rfc3339(super::clock::now_secs()),
            services,
        }
    }

    /// The record of the instances among the desired `resources`: image fingerprint from
    /// their hash inputs, alias from `images`, file hashes from their `file:<path>` inputs.
    pub fn from_resources(
        version: &str,
        resources: &[Resource],
        images: &BTreeMap<String, ImageChoice>,
    ) -> InstallRecord {
        let services = resources
            .iter()
            .filter(|r| r.kind == ResourceKind::Instance)
            .map(|r| {
                let choice = images.get(&r.name);
                let files = r
                    .extra_hashes
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix("file:")?.to_string(), v.clone())))
                    .collect();
                let fingerprint = r
                    .extra_hashes
                    .get("image")
                    .cloned()
                    .or_else(|| choice.map(|c| c.fingerprint.clone()))
                    .unwrap_or_default();
                let service = ServiceRecord {
                    image_fingerprint: fingerprint,
                    image: choice.map(|c| c.alias.clone()).unwrap_or_default(),
                    files,
                };
                (r.name.clone(), service)
            })
            .collect();
        InstallRecord::new(version, services)
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

/// Reads both records of `project` (absent project: both `None`).
pub async fn read(client: &Client, project: &str) -> Result<Records, RecordError> {
    let Some(got) = client.get_project(project).await.optional()? else {
        return Ok(Records::default());
    };
    parse_records(project, &got.value.config)
}

/// Stores `record` as the current install of `project`, the former current becoming the
/// previous one. Returns false (and sends nothing) when the current record already describes
/// the same install.
pub async fn write(
    client: &Client,
    project: &str,
    record: &InstallRecord,
) -> Result<bool, RecordError> {
    for _ in 0..WRITE_ATTEMPTS {
        let got = client
            .get_project(project)
            .await
            .optional()?
            .ok_or_else(|| RecordError::MissingProject {
                project: project.to_string(),
            })?;
        let Some(config) = rotated(project, &got.value.config, record)? else {
            return Ok(false);
        };
        let mut next = got.value.clone();
        next.config = config;
        match client.update_project(&next, got.etag.as_deref()).await {
            Ok(()) => return Ok(true),
            Err(IncusError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(RecordError::Contended {
        project: project.to_string(),
    })
}

/// The records in a project's config (as [`read`] gets it).
pub fn parse_records(
    project: &str,
    config: &BTreeMap<String, String>,
) -> Result<Records, RecordError> {
    Ok(Records {
        current: parse_key(project, config, KEY_RECORD)?,
        previous: parse_key(project, config, KEY_PREVIOUS)?,
    })
}

fn parse_key(
    project: &str,
    config: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<InstallRecord>, RecordError> {
    config
        .get(key)
        .map(|text| {
            serde_json::from_str(text).map_err(|e| RecordError::Corrupt {
                project: project.to_string(),
                key: key.to_string(),
                why: e.to_string(),
            })
        })
        .transpose()
}

/// The project config with `record` as current and the old current as previous; `None`
/// when nothing needs writing. An unreadable current record is refused rather than rotated
/// into `previous`, where rollback would trip over it.
fn rotated(
    project: &str,
    config: &BTreeMap<String, String>,
    record: &InstallRecord,
) -> Result<Option<BTreeMap<String, String>>, RecordError> {
    let current = parse_key(project, config, KEY_RECORD)?;
    if current.as_ref().is_some_and(|c| c.same_install(record)) {
        return Ok(None);
    }
    let json = serde_json::to_string(record).map_err(|e| RecordError::Corrupt {
        project: project.to_string(),
        key: KEY_RECORD.to_string(),
        why: e.to_string(),
    })?;
    let mut next = config.clone();
    if let Some(old) = config.get(KEY_RECORD) {
        next.insert(KEY_PREVIOUS.to_string(), old.clone());
    }
    next.insert(KEY_RECORD.to_string(), json);
    Ok(Some(next))
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
        let after1 = rotated("p", &empty, &v1).unwrap().expect("written");
        assert!(!after1.contains_key(KEY_PREVIOUS));
        assert_eq!(after1["features.images"], "true", "other keys stay");
        let v2 = record("0.2.0", "f2");
        let after2 = rotated("p", &after1, &v2).unwrap().expect("written");
        let got = parse_records("p", &after2).unwrap();
        assert_eq!(got.current.as_ref(), Some(&v2));
        assert_eq!(got.previous.as_ref(), Some(&v1));
        // A third install drops the oldest.
        let v3 = record("0.3.0", "f3");
        let after3 = rotated("p", &after2, &v3).unwrap().expect("written");
        let got = parse_records("p", &after3).unwrap();
        assert_eq!(got.previous, Some(v2));
    }

    #[test]
    fn same_install_is_not_rewritten_even_with_a_new_time() {
        let v1 = record("0.1.0", "f1");
        let cfg = rotated("p", &BTreeMap::new(), &v1).unwrap().unwrap();
        let mut again = v1.clone();
        again.installed_at = "2099-01-01T00:00:00Z".into();
        assert!(rotated("p", &cfg, &again).unwrap().is_none());
        let mut changed = v1.clone();
        changed
            .services
            .get_mut("grafana01")
            .unwrap()
            .files
            .insert("/x".into(), "1".into());
        assert!(rotated("p", &cfg, &changed).unwrap().is_some());
    }

    #[test]
    fn corrupt_current_is_refused_and_named() {
        let cfg = BTreeMap::from([(KEY_RECORD.to_string(), "{not json".to_string())]);
        let e = rotated("atlas", &cfg, &record("0.1.0", "f")).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains(KEY_RECORD) && s.contains("incus project unset atlas"),
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

    #[test]
    fn from_resources_takes_image_and_files_of_instances_only() {
        let mut inst = Resource::new(
            ResourceKind::Instance,
            "grafana01",
            None,
            serde_json::json!({"name": "grafana01", "config": {}}),
            "0.1.0",
        );
        inst = inst.with_extra(BTreeMap::from([
            ("image".to_string(), "fp1".to_string()),
            ("file:/etc/a".to_string(), "h1".to_string()),
            ("command".to_string(), "x".to_string()),
        ]));
        let vol = Resource::new(
            ResourceKind::Volume,
            "grafana01-data",
            Some("default"),
            serde_json::json!({"name": "grafana01-data", "config": {}}),
            "0.1.0",
        );
        let images = BTreeMap::from([(
            "grafana01".to_string(),
            ImageChoice {
                alias: "atlas/grafana".into(),
                fingerprint: "fp1".into(),
                service: None,
            },
        )]);
        let r = InstallRecord::from_resources("0.1.0", &[inst, vol], &images);
        assert_eq!(r.services.len(), 1);
        let g = &r.services["grafana01"];
        assert_eq!(g.image_fingerprint, "fp1");
        assert_eq!(g.image, "atlas/grafana");
        assert_eq!(
            g.files,
            BTreeMap::from([("/etc/a".to_string(), "h1".to_string())])
        );
    }
}
