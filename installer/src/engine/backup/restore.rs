//! `backup restore DIR`: every file is checked against the manifest before Incus is
//! touched; then, one volume at a time:
//!
//! 1. the tarball is imported as the temporary volume `<volume>-atlas-restore` (the real
//!    volume is untouched; a volume that does not exist is imported under its own name and
//!    is done);
//! 2. the instances using the volume are stopped;
//! 3. the current data is kept as snapshot `pre-restore-<time>`;
//! 4. the volume is refreshed from the temporary one (same volume, config, snapshots and
//!    attachments, new content); should that fail, it is rolled back to the snapshot;
//! 5. the temporary volume is deleted and the instances that were running are started.

use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;

use super::manifest::{Manifest, ManifestEntry, verify};
use super::{BackupError, VolumeSet, get_volume, instances_using};
use crate::incus::{Client, IncusError, StateAction};
use crate::progress::{Progress, ProgressTask};

/// Suffix of the temporary volume a tarball is imported into.
pub const RESTORE_VOLUME_SUFFIX: &str = "-atlas-restore";
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub volumes: Vec<RestoredVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoredVolume {
    pub volume: String,
    /// The volume did not exist and was created from the backup.
    pub created: bool,
    /// Snapshot holding the data the restore replaced.
    pub safety_snapshot: Option<String>,
    /// Instances stopped for the restore and started again.
    pub restarted: Vec<String>,
}

/// Restores every volume of the export in `dir` into `set`'s project and pool: [`verify`]
/// first (nothing is touched when a file is damaged), then [`restore_verified`].
pub async fn restore(
    client: &Client,
    set: &VolumeSet,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<RestoreReport, BackupError> {
    // Hashing gigabytes blocks: on a multi-threaded runtime, tell it so.
    let manifest = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| verify(dir, progress))?
        }
        _ => verify(dir, progress)?,
    };
    restore_verified(client, set, dir, manifest, progress).await
}

/// The restore after [`verify`] gave `manifest` (a command that shows what will happen and
/// asks first need not hash twice). Each file is hashed again while it is imported, and a
/// file changed since is refused before its volume is touched.
pub async fn restore_verified(
    client: &Client,
    set: &VolumeSet,
    dir: &Path,
    manifest: Manifest,
    progress: &dyn Progress,
) -> Result<RestoreReport, BackupError> {
    for e in &manifest.volumes {
        if set.find(&e.volume).is_none() {
            return Err(BackupError::UnknownVolume {
                volume: e.volume.clone(),
                project: set.project.clone(),
                known: set.volumes.iter().map(|v| v.volume.clone()).collect(),
            });
        }
    }
    check_server(client).await?;
    let pc = client.in_project(&set.project);
    let stamp = crate::clock::compact(crate::clock::now_secs());
    let mut done: Vec<RestoredVolume> = Vec::new();
    for e in &manifest.volumes {
        match restore_volume(&pc, &set.pool, e, dir, &stamp, progress).await {
            Ok(r) => done.push(r),
            Err(err) => return Err(with_done(err, &done)),
        }
    }
    Ok(RestoreReport {
        manifest,
        volumes: done,
    })
}

async fn check_server(client: &Client) -> Result<(), BackupError> {
    let server = client
        .server()
        .await
        .map_err(BackupError::incus("reading the server's API extensions"))?;
    for ext in ["custom_volume_backup", "custom_volume_refresh"] {
        if !server.value.has(ext) {
            return Err(BackupError::Unsupported {
                what: "restore custom volumes".into(),
                extension: ext.into(),
            });
        }
    }
    Ok(())
}

/// Adds which volumes were already restored to a restore error.
fn with_done(err: BackupError, done: &[RestoredVolume]) -> BackupError {
    let earlier = if done.is_empty() {
        "No other volume was restored.".to_string()
    } else {
        format!(
            "Already restored before it: {}.",
            done.iter()
                .map(|d| d.volume.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match err {
        BackupError::Restore {
            volume,
            cause,
            state,
        } => BackupError::Restore {
            volume,
            cause,
            state: format!("{state}\n{earlier}"),
        },
        other => other,
    }
}

async fn restore_volume(
    pc: &Client,
    pool: &str,
    e: &ManifestEntry,
    dir: &Path,
    stamp: &str,
    progress: &dyn Progress,
) -> Result<RestoredVolume, BackupError> {
    let vol = &e.volume;
    let fail = |cause: String, state: &str| BackupError::Restore {
        volume: vol.clone(),
        cause,
        state: state.to_string(),
    };
    let untouched = "The volume was not changed.";
    let Some(current) = get_volume(pc, pool, vol).await? else {
        import(pc, pool, vol, &dir.join(&e.file), e, progress)
            .await
            .map_err(|c| fail(c, "The volume did not exist and was not created."))?;
        return Ok(RestoredVolume {
            volume: vol.clone(),
            created: true,
            safety_snapshot: None,
            restarted: Vec::new(),
        });
    };
    let temp = format!("{vol}{RESTORE_VOLUME_SUFFIX}");
    if get_volume(pc, pool, &temp).await?.is_some() {
        // Left by an interrupted restore; the tarball is the source of truth.
        delete_temp(pc, pool, &temp, progress).await;
    }
    import(pc, pool, &temp, &dir.join(&e.file), e, progress)
        .await
        .map_err(|c| fail(c, untouched))?;
    let stopped = match stop_users(pc, &instances_using(&current)).await {
        Ok(s) => s,
        Err((cause, stopped)) => {
            let restart = start_all(pc, &stopped).await;
            delete_temp(pc, pool, &temp, progress).await;
            return Err(fail(cause, &format!("{untouched}{restart}")));
        }
    };
    let snapshot = format!("pre-restore-{stamp}");
    let result = replace(pc, pool, vol, &temp, &snapshot, progress).await;
    delete_temp(pc, pool, &temp, progress).await;
    let restart = start_all(pc, &stopped).await;
    match result {
        Ok(()) if restart.is_empty() => Ok(RestoredVolume {
            volume: vol.clone(),
            created: false,
            safety_snapshot: Some(snapshot),
            restarted: stopped,
        }),
        Ok(()) => Err(fail(
            "the data was restored, but starting its instances again failed".into(),
            &format!("The data it replaced is in snapshot {vol}/{snapshot}.{restart}"),
        )),
        Err((cause, state)) => Err(fail(cause, &format!("{state}{restart}"))),
    }
}

/// Snapshot, then refresh; on a failed refresh, back to the snapshot. The error is (cause,
/// state of the volume).
async fn replace(
    pc: &Client,
    pool: &str,
    vol: &str,
    temp: &str,
    snapshot: &str,
    progress: &dyn Progress,
) -> Result<(), (String, String)> {
    pc.create_volume_snapshot(pool, vol, snapshot, None)
        .await
        .map_err(|e| {
            (
                format!("keeping the current data as snapshot {snapshot}: {e}"),
                "The volume was not changed.".to_string(),
            )
        })?;
    progress.info(&format!(
        "the current data of {vol} is kept as snapshot {vol}/{snapshot}"
    ));
    let task = progress.task(&format!("restore {vol}"), None);
    let Err(e) = pc.copy_volume(pool, vol, temp, true).await else {
        task.finish("restored");
        return Ok(());
    };
    task.fail(&e.to_string());
    let state = match pc.restore_volume_snapshot(pool, vol, snapshot).await {
        Ok(()) => format!(
            "The volume was rolled back to its data from before the restore (snapshot {vol}/{snapshot})."
        ),
        Err(e2) => format!(
            "Rolling it back failed too ({e2}); its data from before the restore is in snapshot {vol}/{snapshot}: `incus storage volume snapshot restore {pool} {vol} {snapshot} --project {}`.",
            pc.project()
        ),
    };
    Err((format!("refreshing {vol} from {temp}: {e}"), state))
}

/// Streams the tarball into a new volume `name`, hashing it again on the way: a file changed
/// since [`verify`] is caught and its volume deleted before anything uses it.
async fn import(
    pc: &Client,
    pool: &str,
    name: &str,
    path: &Path,
    e: &ManifestEntry,
    progress: &dyn Progress,
) -> Result<(), String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|err| format!("opening {}: {err}", path.display()))?;
    let task: Arc<dyn ProgressTask> =
        Arc::from(progress.task(&format!("import {}", e.file), Some(e.size)));
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let body = file_body(file, Arc::clone(&task), Arc::clone(&hasher));
    if let Err(err) = pc.import_volume_backup(pool, name, body).await {
        task.fail(&err.to_string());
        return Err(format!("importing {} as volume {name}: {err}", e.file));
    }
    let sha = hex::encode(
        std::mem::take(&mut *hasher.lock().unwrap_or_else(|p| p.into_inner())).finalize(),
    );
    if sha != e.sha256.to_ascii_lowercase() {
        task.fail("changed while importing");
        let _ = pc.delete_volume(pool, name).await;
        return Err(format!(
            "{} changed while it was imported (sha256 {sha}, the manifest says {})",
            path.display(),
            e.sha256
        ));
    }
    task.finish("imported");
    Ok(())
}

/// A request body that reads the file in chunks, advancing `task` and feeding `hasher`.
fn file_body(
    file: tokio::fs::File,
    task: Arc<dyn ProgressTask>,
    hasher: Arc<Mutex<Sha256>>,
) -> reqwest::Body {
    let stream = futures_util::stream::unfold(Some(file), move |state| {
        let (task, hasher) = (Arc::clone(&task), Arc::clone(&hasher));
        async move {
            let mut f = state?;
            let mut buf = vec![0u8; CHUNK];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    hasher
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .update(&buf);
                    task.advance(n as u64);
                    Some((Ok(Bytes::from(buf)), Some(f)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    reqwest::Body::wrap_stream(stream)
}

/// Stops the running instances among `names` (cleanly, forced after 30 s). Returns those it
/// stopped; on failure, the error and those stopped so far.
async fn stop_users(pc: &Client, names: &[String]) -> Result<Vec<String>, (String, Vec<String>)> {
    let mut stopped = Vec::new();
    for name in names {
        let running = match pc.get_instance(name).await {
            Ok(i) => i.value.is_running(),
            Err(e) => return Err((format!("reading instance {name}: {e}"), stopped)),
        };
        if !running {
            continue;
        }
        if let Err(e) = stop(pc, name).await {
            return Err((format!("stopping instance {name}: {e}"), stopped));
        }
        stopped.push(name.clone());
    }
    Ok(stopped)
}

async fn stop(pc: &Client, name: &str) -> Result<(), IncusError> {
    // A clean stop lets the service flush; one that does not stop in time is forced.
    match pc
        .set_instance_state(name, StateAction::Stop, 30, false)
        .await
    {
        Ok(()) => Ok(()),
        Err(_) => super::super::converge::change_state(pc, name, StateAction::Stop, true).await,
    }
}

/// Starts `names`; returns "" or a sentence saying which could not be started.
async fn start_all(pc: &Client, names: &[String]) -> String {
    let mut failed = Vec::new();
    for name in names {
        if let Err(e) =
            super::super::converge::change_state(pc, name, StateAction::Start, false).await
        {
            failed.push(format!("{name} ({e})"));
        }
    }
    if failed.is_empty() {
        String::new()
    } else {
        format!(
            " These instances were stopped for the restore and could not be started again: {}; start them with `incus start --project {}`.",
            failed.join(", "),
            pc.project()
        )
    }
}

async fn delete_temp(pc: &Client, pool: &str, temp: &str, progress: &dyn Progress) {
    if let Err(e) = pc.delete_volume(pool, temp).await {
        if !e.is_not_found() {
            progress.warn(&format!(
                "could not remove the temporary volume {temp} ({e}); remove it with `incus storage volume delete {pool} {temp} --project {}`",
                pc.project()
            ));
        }
    }
}
