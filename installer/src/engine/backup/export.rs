//! `backup export`: one tarball per data volume, from a fresh snapshot so the services keep
//! running, streamed to disk, and a manifest written last (an interrupted export has none).
//! Every file is written under a temporary name (`.partial`) and renamed once complete; an
//! export that fails (a full disk, a lost daemon) removes every file it wrote, so the
//! directory is as it was: no half set of archives is ever mistaken for a backup.
//!
//! Per volume: snapshot `atlas-export-<time>`, copy it to the temporary volume
//! `<volume>-atlas-export` (Incus backs up volumes, not snapshots), back that up, download
//! the backup, then delete the backup, the temporary volume and the snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt as _;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::manifest::{FORMAT, MANIFEST, Manifest, ManifestEntry};
use super::{BackupError, DataVolume, VolumeSet, existing_volumes, get_volume};
use crate::incus::{Client, IncusError};
use crate::progress::{Progress, ProgressTask};

/// Suffix of the temporary volume a snapshot is copied to for the backup.
pub const EXPORT_VOLUME_SUFFIX: &str = "-atlas-export";
const SNAPSHOT_PREFIX: &str = "atlas-export-";
const BACKUP_NAME: &str = "atlas-export";
const COMPRESSION: &str = "gzip";

/// Exports every existing volume of `set` into `out` (created if missing) and returns the
/// manifest written there. Refuses a directory that already holds an export.
pub async fn export(
    client: &Client,
    set: &VolumeSet,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Manifest, BackupError> {
    if out.join(MANIFEST).exists() {
        return Err(BackupError::ExportExists {
            dir: out.to_path_buf(),
        });
    }
    let server = client
        .server()
        .await
        .map_err(BackupError::incus("reading the server's API extensions"))?;
    if !server.value.has("custom_volume_backup") {
        return Err(BackupError::Unsupported {
            what: "export custom volumes".into(),
            extension: "custom_volume_backup".into(),
        });
    }
    let pc = client.in_project(&set.project);
    let present = existing_volumes(&pc, set, progress).await?;
    // A failed export removes what it wrote: so it must not write over anything.
    if let Some(path) = present
        .iter()
        .map(|v| out.join(file_name(&v.volume)))
        .find(|p| p.exists())
    {
        return Err(BackupError::ExportFileExists { path });
    }
    let mut written = Written::new(out)?;
    let now = crate::clock::now_secs();
    let snapshot = format!("{SNAPSHOT_PREFIX}{}", crate::clock::compact(now));
    let mut volumes = Vec::new();
    for v in &present {
        let entry = export_volume(&pc, &set.pool, v, &snapshot, out, progress).await?;
        written.files.push(out.join(&entry.file));
        volumes.push(entry);
    }
    let manifest = Manifest {
        format: FORMAT,
        atlas_version: crate::VERSION.to_string(),
        created_at: crate::clock::rfc3339(now),
        project: set.project.clone(),
        pool: set.pool.clone(),
        volumes,
    };
    manifest.write(out)?;
    written.keep();
    Ok(manifest)
}

/// The files an export wrote so far, removed on drop unless [`Written::keep`] (an error, or
/// a panic, on the way), with the directory when the export created it.
struct Written {
    files: Vec<PathBuf>,
    created: Option<PathBuf>,
    kept: bool,
}

impl Written {
    fn new(out: &Path) -> Result<Written, BackupError> {
        let created = (!out.exists()).then(|| out.to_path_buf());
        std::fs::create_dir_all(out).map_err(BackupError::io("creating", out))?;
        Ok(Written {
            files: Vec::new(),
            created,
            kept: false,
        })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        if let Some(dir) = &self.created {
            // Only when empty: nothing of anyone else's goes.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// File name of a volume's tarball in the export directory.
pub fn file_name(volume: &str) -> String {
    format!("{volume}.tar.gz")
}

async fn export_volume(
    pc: &Client,
    pool: &str,
    v: &DataVolume,
    snapshot: &str,
    out: &Path,
    progress: &dyn Progress,
) -> Result<ManifestEntry, BackupError> {
    let temp = format!("{}{EXPORT_VOLUME_SUFFIX}", v.volume);
    // Left by an interrupted export: ours by name, holding nothing that is not elsewhere.
    if get_volume(pc, pool, &temp).await?.is_some() {
        pc.delete_volume(pool, &temp)
            .await
            .map_err(BackupError::incus(format!(
                "removing {temp}, left by an interrupted export"
            )))?;
    }
    let task: Arc<dyn ProgressTask> =
        Arc::from(progress.task(&format!("export {}", v.volume), None));
    let result = export_steps(pc, pool, v, &temp, snapshot, out, task.as_ref()).await;
    cleanup(pc, pool, &v.volume, &temp, snapshot, progress).await;
    match &result {
        Ok(e) => task.finish(&format!("{} bytes", e.size)),
        Err(e) => task.fail(&e.to_string()),
    }
    result
}

async fn export_steps(
    pc: &Client,
    pool: &str,
    v: &DataVolume,
    temp: &str,
    snapshot: &str,
    out: &Path,
    task: &dyn ProgressTask,
) -> Result<ManifestEntry, BackupError> {
    let vol = &v.volume;
    task.set_message("snapshot");
    pc.create_volume_snapshot(pool, vol, snapshot, None)
        .await
        .map_err(BackupError::incus(format!("snapshotting {vol}")))?;
    task.set_message("copying the snapshot");
    pc.copy_volume(pool, temp, &format!("{vol}/{snapshot}"), false)
        .await
        .map_err(BackupError::incus(format!(
            "copying snapshot {vol}/{snapshot} to {temp}"
        )))?;
    // Incus applies a volume's `initial.uid/gid/mode` to the root of a volume created from a
    // backup, as unshifted host ids, while the files keep their shifted ones: the restored
    // volume's root then belongs to nobody the container knows, and the service cannot open
    // its own data. Without those keys the root keeps the owner it has in the tarball.
    strip_initial_keys(pc, pool, temp)
        .await
        .map_err(BackupError::incus(format!("preparing {temp} for export")))?;
    task.set_message("packing");
    pc.create_volume_backup(pool, temp, BACKUP_NAME, COMPRESSION)
        .await
        .map_err(BackupError::incus(format!("creating the backup of {temp}")))?;
    task.set_message("downloading");
    let file = file_name(vol);
    let (sha256, size) = download(pc, pool, temp, &out.join(&file), task).await?;
    Ok(ManifestEntry {
        volume: vol.clone(),
        instance: v.instance.clone(),
        file,
        sha256,
        size,
        snapshot: snapshot.to_string(),
    })
}

/// Streams the backup to `<path>.partial`, hashing on the way, then renames it into place.
async fn download(
    pc: &Client,
    pool: &str,
    temp: &str,
    path: &Path,
    task: &dyn ProgressTask,
) -> Result<(String, u64), BackupError> {
    let mut dl = pc
        .download_volume_backup(pool, temp, BACKUP_NAME)
        .await
        .map_err(BackupError::incus(format!(
            "downloading the backup of {temp}"
        )))?;
    if let Some(n) = dl.length {
        task.set_total(n);
    }
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let got = stream_to(&mut dl, pc, temp, &partial, task).await;
    if got.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
        return got;
    }
    tokio::fs::rename(&partial, path)
        .await
        .map_err(BackupError::io("writing", path))?;
    got
}

/// Writes the download into `partial` (synced), hashing it: its sha256 and size.
async fn stream_to(
    dl: &mut crate::incus::BackupDownload,
    pc: &Client,
    temp: &str,
    partial: &Path,
    task: &dyn ProgressTask,
) -> Result<(String, u64), BackupError> {
    let mut f = tokio::fs::File::create(partial)
        .await
        .map_err(BackupError::io("creating", partial))?;
    let mut h = Sha256::new();
    let mut size = 0u64;
    // The head came in time; a body that stops flowing is the daemon not answering too.
    let stall = pc.request_timeout();
    loop {
        let next = tokio::time::timeout(stall, dl.stream.next())
            .await
            .map_err(|_| pc.no_answer("GET", &format!("backup export of {temp}")))
            .map_err(BackupError::incus(format!(
                "downloading the backup of {temp}"
            )))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(BackupError::incus(format!(
            "downloading the backup of {temp}"
        )))?;
        h.update(&chunk);
        f.write_all(&chunk)
            .await
            .map_err(BackupError::io("writing", partial))?;
        size += chunk.len() as u64;
        task.advance(chunk.len() as u64);
    }
    if dl.length.is_some_and(|n| n != size) {
        return Err(BackupError::Corrupt {
            path: partial.to_path_buf(),
            why: format!(
                "the download ended after {size} of {} bytes",
                dl.length.unwrap_or_default()
            ),
        });
    }
    f.sync_all()
        .await
        .map_err(BackupError::io("writing", partial))?;
    Ok((hex::encode(h.finalize()), size))
}

/// Removes the backup, the temporary volume and the snapshot; a failure here does not fail
/// the export (the tarball is complete) but is reported with the command that finishes it.
async fn cleanup(
    pc: &Client,
    pool: &str,
    volume: &str,
    temp: &str,
    snapshot: &str,
    progress: &dyn Progress,
) {
    if let Ok(Some(_)) = get_volume(pc, pool, temp).await {
        // Deleting the volume deletes its backups too; the temporary volume goes before the
        // snapshot, which it may be a clone of (zfs).
        let _ = pc.delete_volume_backup(pool, temp, BACKUP_NAME).await;
        if let Err(e) = pc.delete_volume(pool, temp).await {
            progress.warn(&format!(
                "could not remove the temporary volume {temp} ({e}); remove it with `incus storage volume delete {pool} {temp} --project {}`",
                pc.project()
            ));
        }
    }
    let has_snapshot = pc
        .volume_snapshots(pool, volume)
        .await
        .map(|s| s.iter().any(|s| s.name == snapshot))
        .unwrap_or(true);
    if !has_snapshot {
        return;
    }
    if let Err(e) = pc.delete_volume_snapshot(pool, volume, snapshot).await {
        progress.warn(&format!(
            "could not remove the export snapshot {volume}/{snapshot} ({e}); remove it with `incus storage volume snapshot delete {pool} {volume} {snapshot} --project {}`",
            pc.project()
        ));
    }
}

async fn strip_initial_keys(pc: &Client, pool: &str, volume: &str) -> Result<(), IncusError> {
    let got = pc.get_volume(pool, volume).await?;
    let mut next = got.value.clone();
    next.config.retain(|k, _| !k.starts_with("initial."));
    if next.config == got.value.config {
        return Ok(());
    }
    pc.update_volume(pool, &next, got.etag.as_deref()).await
}
