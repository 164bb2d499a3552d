//! `upgrade` and `rollback`. An upgrade is the install sequence with a guarded instance step:
//! services are replaced one at a time in dependency order (step-ca, the stores, then
//! Grafana and Caddy); before one is touched, its data volumes are snapshotted as
//! `pre-upgrade-<from>-<to>` and its image, config and pushed files are saved in the project
//! (an instance snapshot would do, but Incus 6.0 refuses to rebuild an instance that has
//! one); after it, the service alone must pass its health gate. A service that fails is
//! returned to what was kept and started again, and the upgrade stops.
//! `rollback` returns every service that changed between the previous and the current
//! install to the same snapshots, after snapshotting its current data (`pre-rollback-<time>`).
//!
//! The snapshot names are stable for a given pair of installs, so an upgrade killed midway
//! and run again finds and keeps the snapshots of its first attempt: they hold the data from
//! before any change.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sha2::Digest as _;

use crate::deployment::Deployment;
use crate::incus::{Client, IncusError, OptionalExt, StateAction};
use crate::progress::Progress;

use super::backup::{self, IfExists, VolumeSet};
use super::error::EngineError;
use crate::state::record::{self, InstallRecord};
use crate::state::{SavedFile, SavedInstance, keys};

/// Short, stable name of an install: its version and a digest of what it runs.
pub fn release_tag(r: &InstallRecord) -> String {
    let bytes = serde_json::to_vec(&r.services).unwrap_or_default();
    let digest = hex::encode(sha2::Sha256::digest(&bytes));
    format!("{}.{}", r.version, &digest[..8])
}

/// `pre-upgrade-<from>-<to>`: the snapshots an upgrade takes and a rollback returns to.
pub fn snapshot_name(from: &InstallRecord, to: &InstallRecord) -> String {
    format!("pre-upgrade-{}-{}", release_tag(from), release_tag(to))
}

/// The enabled instances in the order an upgrade replaces them.
pub fn order(d: &Deployment) -> Vec<String> {
    d.enabled_instances()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect()
}

async fn read_saved(
    client: &Client,
    project: &str,
    instance: &str,
) -> Result<Option<SavedInstance>, EngineError> {
    Ok(crate::state::read(client, project)
        .await?
        .and_then(|s| s.upgrades.get(instance).cloned()))
}

async fn write_saved(
    client: &Client,
    project: &str,
    instance: &str,
    saved: Option<&SavedInstance>,
) -> Result<(), EngineError> {
    crate::state::update(client, project, |s| {
        match saved {
            Some(v) => s.upgrades.insert(instance.to_string(), v.clone()),
            None => s.upgrades.remove(instance),
        };
        Ok::<(), crate::state::StateError>(())
    })
    .await?;
    Ok(())
}

/// Before `existing` is replaced: snapshots its data volumes as `snap` and saves its image,
/// config, devices, profiles and the files the previous install pushed (`from`), with those of
/// `also` it has (step-ca's root, the service's certificate and key: not in the record, since
/// they change apart from installs). When state
/// saved under the same `snap` is there, this is a re-run of an interrupted upgrade: it and
/// the volume snapshots of the first attempt, which hold the data from before any change,
/// are kept. Otherwise a volume snapshot of that name is a leftover of an upgrade rolled back
/// since; it is renamed out of the way so the new one holds today's data.
pub(crate) async fn guard(
    client: &Client,
    set: &VolumeSet,
    existing: &crate::incus::Instance,
    from: &InstallRecord,
    also: &[String],
    snap: &str,
    progress: &dyn Progress,
) -> Result<(), EngineError> {
    let instance = existing.name.as_str();
    let project = client.in_project(&set.project);
    let err = |e: IncusError| EngineError::object(format!("instance {instance}"), e);
    let rerun = read_saved(client, &set.project, instance)
        .await?
        .is_some_and(|s| s.snap == snap);
    let vols = set.only(&[instance]);
    if !rerun {
        retire_snapshots(&project, &vols, snap).await.map_err(err)?;
    }
    backup::snapshot_with(client, &vols, snap, IfExists::Keep, progress)
        .await
        .map_err(|e| EngineError::object(format!("volumes of {instance}"), e))?;
    if rerun {
        return Ok(());
    }
    let mut files = Vec::new();
    let recorded = from.services.get(instance).map(|s| s.files.keys());
    for (path, required) in recorded
        .into_iter()
        .flatten()
        .map(|p| (p, true))
        .chain(also.iter().map(|p| (p, false)))
    {
        let (bytes, meta) = match project.pull_file_with_meta(instance, path).await {
            Ok(f) => f,
            Err(e) if !required && e.is_not_found() => continue,
            Err(e) => return Err(err(e)),
        };
        files.push(SavedFile {
            path: path.clone(),
            uid: meta.uid,
            gid: meta.gid,
            mode: meta.mode,
            base64: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes),
        });
    }
    let saved = SavedInstance {
        snap: snap.to_string(),
        image: existing
            .config
            .get("volatile.base_image")
            .cloned()
            .unwrap_or_default(),
        config: existing
            .config
            .iter()
            .filter(|(k, _)| !k.starts_with("volatile."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        devices: existing.devices.clone(),
        profiles: existing.profiles.clone(),
        files,
    };
    write_saved(client, &set.project, instance, Some(&saved)).await
}

/// Returns `instance` to what [`guard`] kept under `snap` (image, config, devices, profiles,
/// files, volume data) and starts it.
pub(crate) async fn restore(
    client: &Client,
    set: &VolumeSet,
    instance: &str,
    snap: &str,
) -> Result<(), EngineError> {
    let project = client.in_project(&set.project);
    let err = |e: IncusError| EngineError::object(format!("instance {instance}"), e);
    let saved = read_saved(client, &set.project, instance)
        .await?
        .filter(|s| s.snap == snap)
        .ok_or_else(|| {
            EngineError::object(
                format!("instance {instance}"),
                format!(
                    "no state saved before upgrade {snap} (project key {})",
                    keys::upgrade(instance)
                ),
            )
        })?;
    let current = project.get_instance(instance).await.map_err(err)?;
    if current.value.config.get("volatile.base_image") != Some(&saved.image) {
        super::instances::rebuild(&project, instance, &saved.image)
            .await
            .map_err(err)?;
    } else {
        // Whatever status was read: a failing service may be between two restarts.
        super::converge::stop(&project, instance)
            .await
            .map_err(err)?;
    }
    super::instances::edit(&project, instance, |cur| {
        Some(crate::incus::Instance {
            config: super::converge::merged(&cur.config, &saved.config),
            devices: saved.devices.clone(),
            profiles: saved.profiles.clone(),
            ..cur.clone()
        })
    })
    .await?;
    for f in &saved.files {
        let contents =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &f.base64).map_err(
                |e| EngineError::object(format!("instance {instance}: file {}", f.path), e),
            )?;
        let file = super::state::PushFile {
            path: f.path.clone(),
            contents,
            uid: f.uid,
            gid: f.gid,
            mode: f.mode,
        };
        super::instances::push(&project, instance, &file).await?;
    }
    let vols = set.only(&[instance]);
    for v in &vols.volumes {
        if has_snapshot(&project, &vols.pool, &v.volume, snap)
            .await
            .map_err(err)?
        {
            project
                .restore_volume_snapshot(&vols.pool, &v.volume, snap)
                .await
                .map_err(|e| EngineError::incus_at(format!("volume {}", v.volume), e))?;
        }
    }
    super::converge::change_state(&project, instance, StateAction::Start, false)
        .await
        .map_err(err)
}

async fn has_snapshot(
    project: &Client,
    pool: &str,
    volume: &str,
    snap: &str,
) -> Result<bool, IncusError> {
    Ok(project
        .volume_snapshots(pool, volume)
        .await?
        .iter()
        .any(|s| s.name == snap))
}

/// Renames the volume snapshots `snap` of `vols` to `<snap>.<time>`: upgrade snapshots that
/// were used (or are stale) go out of the way of a later upgrade between the same installs.
async fn retire_snapshots(
    project: &Client,
    vols: &VolumeSet,
    snap: &str,
) -> Result<(), IncusError> {
    let stamp = crate::clock::compact(crate::clock::now_secs());
    for v in &vols.volumes {
        if has_snapshot(project, &vols.pool, &v.volume, snap).await? {
            project
                .rename_volume_snapshot(&vols.pool, &v.volume, snap, &format!("{snap}.{stamp}"))
                .await?;
        }
    }
    Ok(())
}

/// The health gate of one instance (instances without a probe pass).
pub(crate) async fn gate_one(
    client: &Client,
    d: &Deployment,
    instance: &str,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<(), EngineError> {
    let Some(inst) = d.instance(instance) else {
        return Ok(());
    };
    let Some(probe) = super::health::probe_for(&d.config, instance, inst) else {
        return Ok(());
    };
    super::health::gate_probes(client, &d.config, vec![probe], timeout, progress)
        .await
        .map_err(Into::into)
}

/// Why an upgrade stopped, and what state it left the failed service in.
pub(crate) fn failed(
    instance: &str,
    cause: &EngineError,
    back: Result<(), EngineError>,
    snap: &str,
) -> EngineError {
    let state = match back {
        Ok(()) => format!(
            "{instance} was returned to its previous image, files and data (snapshot {snap}) and runs again."
        ),
        Err(e) => format!(
            "returning {instance} to what it was failed too: {e}. What it was is intact: its volume snapshots `{snap}` (incus storage volume snapshot restore) and its image, config and files in the project key {} (`atlas-install upgrade` again goes on from there).",
            keys::upgrade(instance)
        ),
    };
    EngineError::Upgrade {
        instance: instance.to_string(),
        cause: cause.to_string(),
        state,
    }
}

/// What `rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub from: String,
    pub to: String,
    pub snapshot: String,
    /// Instances returned to the snapshot, in the order it was done.
    pub instances: Vec<String>,
    /// Snapshots of the data as it was before the rollback.
    pub safety_snapshots: BTreeMap<String, String>,
}

/// Returns the stack to the previously installed version: every instance that differs
/// between the previous and the current install record goes back to its
/// `pre-upgrade-<previous>-<current>` snapshots. Checks first that all of them exist, so a
/// rollback that cannot be complete changes nothing.
pub async fn rollback(
    client: &Client,
    d: &Deployment,
    health_timeout: Duration,
    progress: &dyn Progress,
) -> Result<RollbackReport, EngineError> {
    let config = &d.config;
    let project_name = &config.incus.project;
    let project = client.in_project(project_name);
    let recs = record::read(client, project_name)
        .await
        .map_err(|e| EngineError::object("install record", e))?;
    let (Some(current), Some(previous)) = (recs.current, recs.previous) else {
        return Err(EngineError::object(
            "rollback",
            format!(
                "project {project_name} records no earlier install to return to (an upgrade records one). Nothing was changed."
            ),
        ));
    };
    let snap = snapshot_name(&previous, &current);
    let targets = targets(client, d, &previous, &current, &snap).await?;
    let set = VolumeSet::from_config(config);
    let safety_name = format!(
        "pre-rollback-{}",
        crate::clock::compact(crate::clock::now_secs())
    );
    let names: Vec<&str> = targets.iter().map(String::as_str).collect();
    let kept = backup::snapshot_with(
        client,
        &set.only(&names),
        &safety_name,
        IfExists::Fail,
        progress,
    )
    .await
    .map_err(|e| EngineError::object("safety snapshot before rollback", e))?;
    for name in &targets {
        let task = progress.task(&format!("rollback {name}"), None);
        let out = back_one(client, d, &set, name, &snap, health_timeout, progress).await;
        match &out {
            Ok(()) => task.finish(&format!("back on {}", previous.version)),
            Err(e) => task.fail(e.to_string().lines().next().unwrap_or_default()),
        }
        out?;
    }
    restore_aliases(&project, &previous, &targets).await?;
    let back = InstallRecord::new(&previous.version, previous.services.clone());
    record::write(client, project_name, &back)
        .await
        .map_err(|e| EngineError::object("install record", e))?;
    Ok(RollbackReport {
        from: release_tag(&current),
        to: release_tag(&previous),
        snapshot: snap,
        instances: targets,
        safety_snapshots: kept.into_iter().map(|t| (t.volume, t.snapshot)).collect(),
    })
}

/// The instances a rollback from `current` to `previous` returns, in reverse upgrade order:
/// those that changed and exist. Refused, changing nothing, when one of them has nothing
/// saved from upgrade `snap`.
async fn targets(
    client: &Client,
    d: &Deployment,
    previous: &InstallRecord,
    current: &InstallRecord,
    snap: &str,
) -> Result<Vec<String>, EngineError> {
    let project_name = &d.config.incus.project;
    let changed = previous.changed_services(current);
    let existing: Vec<String> = client
        .in_project(project_name)
        .instances()
        .await?
        .into_iter()
        .map(|i| i.name)
        .collect();
    let mut targets = Vec::new();
    let mut missing = Vec::new();
    for name in order(d).into_iter().rev() {
        if !changed.contains(&name) || !existing.contains(&name) {
            continue;
        }
        if read_saved(client, project_name, &name)
            .await?
            .is_some_and(|s| s.snap == snap)
        {
            targets.push(name);
        } else {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        return Err(EngineError::object(
            "rollback",
            format!(
                "nothing saved before upgrade {snap} for {}: they were not replaced by `upgrade` (or what it saved was removed), so there is nothing to return them to. Nothing was changed.",
                missing.join(", ")
            ),
        ));
    }
    Ok(targets)
}

/// One instance of a rollback: back to what upgrade `snap` kept, health-gated; what was kept
/// is then retired, out of the way of a later upgrade between the same two installs.
async fn back_one(
    client: &Client,
    d: &Deployment,
    set: &VolumeSet,
    name: &str,
    snap: &str,
    health_timeout: Duration,
    progress: &dyn Progress,
) -> Result<(), EngineError> {
    let project_name = &d.config.incus.project;
    restore(client, set, name, snap).await?;
    gate_one(client, d, name, health_timeout, progress).await?;
    write_saved(client, project_name, name, None).await?;
    let project = client.in_project(project_name);
    let _ = retire_snapshots(&project, &set.only(&[name]), snap).await;
    Ok(())
}

/// Points each alias the previous install chose the images of `targets` by back at the image
/// it chose. Left on the upgrade's images, the next `install` (which resolves aliases) would
/// put the services rolled back on them again.
async fn restore_aliases(
    project: &Client,
    previous: &InstallRecord,
    targets: &[String],
) -> Result<(), EngineError> {
    let wanted: BTreeMap<&str, &str> = targets
        .iter()
        .filter_map(|name| previous.services.get(name))
        .filter(|s| !s.image.is_empty() && !s.image_fingerprint.is_empty())
        .map(|s| (s.image.as_str(), s.image_fingerprint.as_str()))
        .collect();
    for (alias, fingerprint) in wanted {
        let err = |e| EngineError::object(format!("image alias {alias}"), e);
        match project
            .get_image_alias(alias)
            .await
            .optional()
            .map_err(err)?
        {
            Some(a) if a.value.target == fingerprint => {}
            Some(a) => project
                .update_image_alias(alias, fingerprint, &a.value.description, a.etag.as_deref())
                .await
                .map_err(err)?,
            None => project
                .create_image_alias(alias, fingerprint, "")
                .await
                .map_err(err)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ServiceRecord;

    fn rec(version: &str, fp: &str) -> InstallRecord {
        InstallRecord::new(
            version,
            BTreeMap::from([(
                "mosquitto01".to_string(),
                ServiceRecord {
                    image_fingerprint: fp.into(),
                    image: "atlas/mosquitto".into(),
                    files: BTreeMap::new(),
                },
            )]),
        )
    }

    #[test]
    fn snapshot_names_depend_on_what_runs_not_on_when() {
        let (a, b) = (rec("0.1.0", "aaa"), rec("0.1.0", "bbb"));
        let later = InstallRecord {
            installed_at: "2030-01-01T00:00:00Z".into(),
            ..a.clone()
        };
        assert_eq!(release_tag(&a), release_tag(&later));
        assert_ne!(
            release_tag(&a),
            release_tag(&b),
            "same version, other image"
        );
        let name = snapshot_name(&a, &b);
        assert!(name.starts_with("pre-upgrade-0.1.0."), "{name}");
        backup::check_snapshot_name(&name).expect("a valid snapshot name");
        assert_ne!(name, snapshot_name(&b, &a));
    }
}
