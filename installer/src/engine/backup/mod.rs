//! Backups of the Atlas data volumes (the custom volumes `<instance>-data` of the config's
//! pool, in the Atlas project): snapshots, listing, export to tarballs and restore.
//!
//! - [`snapshot`] / [`snapshot_with`]: one snapshot per volume, same name on each.
//! - [`list`]: every volume with its snapshots.
//! - [`export::export`]: one tarball per volume, taken from a fresh snapshot so services keep
//!   running, plus a `manifest.json` with each file's size and SHA-256.
//! - [`restore::restore`]: checks every file against the manifest before talking to Incus,
//!   then puts each volume's data back while its instance is stopped, keeping a snapshot of
//!   the data it replaces.
//!
//! Incus mechanics (checked on 6.0.4, extensions `custom_volume_backup` and
//! `custom_volume_refresh`): a backup can only be made of a volume, not of a snapshot, so the
//! export copies the snapshot to a temporary volume and backs that up; a restore imports the
//! tarball as a temporary volume and refreshes the real one from it, which keeps the real
//! volume's identity, config, snapshots and attachments.

// Errors carry `IncusError` boxed; the results of the helpers below stay small enough.
pub mod export;
pub mod manifest;
pub mod restore;

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::incus::{Client, IncusError, OptionalExt as _, StorageVolume};
use crate::progress::Progress;

pub use export::export;
pub use manifest::{MANIFEST, Manifest, ManifestEntry, verify};
pub use restore::{RestoreReport, RestoredVolume, restore, restore_verified};

/// One data volume and the instance it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataVolume {
    pub volume: String,
    pub instance: String,
}

/// The volumes an operation works on, and where they live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSet {
    pub project: String,
    pub pool: String,
    pub volumes: Vec<DataVolume>,
}

impl VolumeSet {
    /// Every data volume of the config's enabled instances, in install order.
    pub fn from_config(config: &Config) -> VolumeSet {
        let volumes = config
            .enabled_instances()
            .into_iter()
            .filter_map(|(name, inst)| {
                inst.volume.as_ref().map(|v| DataVolume {
                    volume: v.name.clone(),
                    instance: name.to_string(),
                })
            })
            .collect();
        VolumeSet {
            project: config.incus.project.clone(),
            pool: config.incus.storage_pool.clone(),
            volumes,
        }
    }

    /// The volumes of the given instances only (an upgrade snapshots the changing ones).
    pub fn only(&self, instances: &[&str]) -> VolumeSet {
        VolumeSet {
            volumes: self
                .volumes
                .iter()
                .filter(|v| instances.contains(&v.instance.as_str()))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    pub fn find(&self, volume: &str) -> Option<&DataVolume> {
        self.volumes.iter().find(|v| v.volume == volume)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{what}: {source}")]
    Incus {
        what: String,
        source: Box<IncusError>,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "none of the data volumes of project `{project}` exists ({}); nothing to do. Is the \
         stack installed with this config (`incus.project`, `incus.storage_pool`)?",
        volumes.join(", ")
    )]
    NoVolumes {
        project: String,
        volumes: Vec<String>,
    },
    #[error(
        "snapshot name {name:?} is not usable: {why}. Use letters, digits, `-`, `_` and `.`, \
         at most 63 characters"
    )]
    InvalidName { name: String, why: String },
    #[error(
        "snapshot `{name}` already exists on {}; choose another name (--name) or delete it \
         (`incus storage volume snapshot delete`). Nothing was changed",
        volumes.join(", ")
    )]
    SnapshotExists { name: String, volumes: Vec<String> },
    #[error(
        "{} already holds an export ({MANIFEST}); export into an empty or new directory so \
         the earlier backup is not overwritten. Nothing was changed",
        dir.display()
    )]
    ExportExists { dir: PathBuf },
    /// A tarball of this export's name is there already (not ours to overwrite, or remove).
    #[error(
        "{} is there already; export into an empty or new directory so nothing in it is overwritten. Nothing was changed",
        path.display()
    )]
    ExportFileExists { path: PathBuf },
    /// The manifest is missing, unreadable or inconsistent.
    #[error("backup manifest {}: {why}. Nothing was restored", path.display())]
    Manifest { path: PathBuf, why: String },
    /// A file does not match its manifest entry.
    #[error(
        "backup file {} is damaged or changed: {why}. Nothing was restored; restore from an \
         intact copy of the export",
        path.display()
    )]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "the backup holds volume `{volume}`, which is not a data volume of project `{project}` \
         in this config ({}). Nothing was restored; restore with the config the backup was made \
         with, or enable that instance",
        known.join(", ")
    )]
    UnknownVolume {
        volume: String,
        project: String,
        known: Vec<String>,
    },
    #[error("this Incus server cannot {what}: it lacks API extension `{extension}`")]
    Unsupported { what: String, extension: String },
    /// Restoring one volume failed; says what state it and the others were left in.
    #[error("restoring volume `{volume}` failed: {cause}\n{state}")]
    Restore {
        volume: String,
        cause: String,
        state: String,
    },
}

impl BackupError {
    pub(crate) fn incus(what: impl Into<String>) -> impl FnOnce(IncusError) -> BackupError {
        let what = what.into();
        move |e| BackupError::Incus {
            what,
            source: Box::new(e),
        }
    }

    pub(crate) fn io(
        what: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> BackupError {
        let (what, path) = (what.into(), path.into());
        move |source| BackupError::Io { what, path, source }
    }
}

/// A snapshot this module made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotTaken {
    pub volume: String,
    pub snapshot: String,
}

/// What to do when a volume already has a snapshot of the requested name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Refuse before snapshotting anything.
    Fail,
    /// Keep the existing one (a re-run of an interrupted upgrade keeps the older data).
    Keep,
}

/// Default snapshot name: `backup-20261126T140607Z`.
pub fn default_snapshot_name() -> String {
    format!("backup-{}", crate::clock::compact(crate::clock::now_secs()))
}

/// Snapshots every existing volume of `set` as `name` (default [`default_snapshot_name`]).
/// Refuses, before any change, when a volume already has a snapshot of that name. Missing
/// volumes are skipped with a warning; none at all is an error.
pub async fn snapshot(
    client: &Client,
    set: &VolumeSet,
    name: Option<&str>,
    progress: &dyn Progress,
) -> Result<Vec<SnapshotTaken>, BackupError> {
    let name = name.map_or_else(default_snapshot_name, str::to_string);
    snapshot_with(client, set, &name, IfExists::Fail, progress).await
}

/// [`snapshot`] with an explicit name and a choice for existing snapshots; the upgrade's
/// `pre-upgrade-<from>-<to>` uses [`IfExists::Keep`]. Returns the snapshots made or kept;
/// an empty `set` (services without data volumes) gives an empty list without any request.
pub async fn snapshot_with(
    client: &Client,
    set: &VolumeSet,
    name: &str,
    if_exists: IfExists,
    progress: &dyn Progress,
) -> Result<Vec<SnapshotTaken>, BackupError> {
    check_snapshot_name(name)?;
    if set.volumes.is_empty() {
        // A subset without data volumes (Caddy, node-exporter): nothing to keep.
        return Ok(Vec::new());
    }
    let pc = client.in_project(&set.project);
    let present = existing_volumes(&pc, set, progress).await?;
    let mut have = Vec::new();
    for v in &present {
        let snaps = pc
            .volume_snapshots(&set.pool, &v.volume)
            .await
            .map_err(BackupError::incus(format!(
                "listing snapshots of {}",
                v.volume
            )))?;
        if snaps.iter().any(|s| s.name == name) {
            have.push(v.volume.clone());
        }
    }
    if if_exists == IfExists::Fail && !have.is_empty() {
        return Err(BackupError::SnapshotExists {
            name: name.to_string(),
            volumes: have,
        });
    }
    let mut taken = Vec::new();
    for v in &present {
        let task = progress.task(&format!("snapshot {}/{name}", v.volume), None);
        if have.contains(&v.volume) {
            task.finish("kept (already there)");
        } else {
            pc.create_volume_snapshot(&set.pool, &v.volume, name, None)
                .await
                .map_err(|e| {
                    task.fail(&e.to_string());
                    BackupError::incus(format!("snapshotting volume {}", v.volume))(e)
                })?;
            task.finish("created");
        }
        taken.push(SnapshotTaken {
            volume: v.volume.clone(),
            snapshot: name.to_string(),
        });
    }
    Ok(taken)
}

/// Incus refuses `/` in snapshot names; we also keep them to what any shell and file system
/// takes unquoted.
pub fn check_snapshot_name(name: &str) -> Result<(), BackupError> {
    let why = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > 63 {
        Some(format!("it is {} characters long", name.len()))
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(format!("it contains {c:?}"))
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("it starts with `.` or `-`".to_string())
    } else {
        None
    };
    match why {
        Some(why) => Err(BackupError::InvalidName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// The volumes of `set` that exist in Incus (with their current body); warns about the
/// others. None existing is [`BackupError::NoVolumes`].
pub(crate) async fn existing_volumes(
    pc: &Client,
    set: &VolumeSet,
    progress: &dyn Progress,
) -> Result<Vec<DataVolume>, BackupError> {
    let mut present = Vec::new();
    for v in &set.volumes {
        match get_volume(pc, &set.pool, &v.volume).await? {
            Some(_) => present.push(v.clone()),
            None => progress.warn(&format!(
                "volume {} of instance {} does not exist in project {}; skipped",
                v.volume, v.instance, set.project
            )),
        }
    }
    if present.is_empty() {
        return Err(BackupError::NoVolumes {
            project: set.project.clone(),
            volumes: set.volumes.iter().map(|v| v.volume.clone()).collect(),
        });
    }
    Ok(present)
}

pub(crate) async fn get_volume(
    pc: &Client,
    pool: &str,
    name: &str,
) -> Result<Option<StorageVolume>, BackupError> {
    pc.get_volume(pool, name)
        .await
        .optional()
        .map(|o| o.map(|t| t.value))
        .map_err(BackupError::incus(format!("reading volume {name}")))
}

/// One volume and its snapshots, for `backup list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeListing {
    pub volume: String,
    pub instance: String,
    pub exists: bool,
    /// Space used, when the pool driver reports it (`dir` pools without quotas do not).
    pub used_bytes: Option<u64>,
    pub snapshots: Vec<SnapshotInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub created_at: Option<String>,
    /// `None`: kept until deleted.
    pub expires_at: Option<String>,
}

/// Every volume of `set` with its snapshots, oldest first. Read-only.
pub async fn list(client: &Client, set: &VolumeSet) -> Result<Vec<VolumeListing>, BackupError> {
    let pc = client.in_project(&set.project);
    let mut out = Vec::new();
    for v in &set.volumes {
        let exists = get_volume(&pc, &set.pool, &v.volume).await?.is_some();
        let (used_bytes, snapshots) = if exists {
            let state = pc.volume_state(&set.pool, &v.volume).await.ok();
            let used = state.and_then(|s| s.usage).map(|u| u.used);
            let snaps =
                pc.volume_snapshots(&set.pool, &v.volume)
                    .await
                    .map_err(BackupError::incus(format!(
                        "listing snapshots of {}",
                        v.volume
                    )))?;
            (used, snaps.into_iter().map(snapshot_info).collect())
        } else {
            (None, Vec::new())
        };
        let mut snapshots: Vec<SnapshotInfo> = snapshots;
        snapshots.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        out.push(VolumeListing {
            volume: v.volume.clone(),
            instance: v.instance.clone(),
            exists,
            used_bytes,
            snapshots,
        });
    }
    Ok(out)
}

fn snapshot_info(s: crate::incus::VolumeSnapshot) -> SnapshotInfo {
    // Go's zero time means "never expires".
    let expires_at = s.expires_at.filter(|t| !t.starts_with("0001-01-01"));
    SnapshotInfo {
        name: s.name,
        created_at: s.created_at,
        expires_at,
    }
}

/// Instances named in a volume's `used_by` (`/1.0/instances/<name>?project=...`).
pub(crate) fn instances_using(volume: &StorageVolume) -> Vec<String> {
    volume
        .used_by
        .iter()
        .filter_map(|u| u.strip_prefix("/1.0/instances/"))
        .map(|rest| {
            rest.split(['?', '/'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_set_from_builtin_config_names_instance_data_volumes() {
        let cfg = Config::builtin();
        let set = VolumeSet::from_config(&cfg);
        assert_eq!(set.project, cfg.incus.project);
        assert_eq!(set.volumes.len(), 7, "{:?}", set.volumes);
        assert!(
            set.volumes
                .iter()
                .all(|v| v.volume == format!("{}-data", v.instance))
        );
        let only = set.only(&["grafana01", "node-exporter01"]);
        assert_eq!(only.volumes.len(), 1, "node-exporter has no data volume");
        assert_eq!(only.volumes[0].volume, "grafana01-data");
    }

    #[test]
    fn snapshot_names_are_checked() {
        assert!(check_snapshot_name("backup-20261126T140607Z").is_ok());
        assert!(check_snapshot_name("pre-upgrade-0.1.0-0.2.0").is_ok());
        for bad in ["", "a/b", "a b", "-x", &"x".repeat(64)] {
            let e = check_snapshot_name(bad).unwrap_err().to_string();
            assert!(e.contains("not usable"), "{bad:?}: {e}");
        }
        assert!(default_snapshot_name().starts_with("backup-2"));
        assert!(check_snapshot_name(&default_snapshot_name()).is_ok());
    }

    #[test]
    fn used_by_gives_instance_names() {
        let mut v = StorageVolume::filesystem("x", Default::default());
        v.used_by = vec![
            "/1.0/instances/grafana01?project=atlas".into(),
            "/1.0/profiles/p?project=atlas".into(),
            "/1.0/instances/loki01".into(),
        ];
        assert_eq!(instances_using(&v), vec!["grafana01", "loki01"]);
    }

    #[test]
    fn zero_expiry_means_never() {
        let s = crate::incus::VolumeSnapshot {
            name: "s".into(),
            expires_at: Some("0001-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(snapshot_info(s).expires_at, None);
    }
}
