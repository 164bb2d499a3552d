//! Custom volume backups (`.../volumes/custom/<v>/backups`, extension `custom_volume_backup`),
//! volume copies and refreshes, and volume state. Backup tarballs are streamed both ways:
//! never held whole in memory.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Req, Scope, nullable};
use super::error::IncusError;
use super::storage::{IN_POOL, ON_VOLUME, Usage};

const POOLS: &str = "/1.0/storage-pools";

/// `GET /1.0/storage-pools/<pool>/volumes/custom/<v>/state`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeState {
    /// `None` when the driver cannot tell (a `dir` pool without quotas).
    #[serde(default, deserialize_with = "nullable")]
    pub usage: Option<Usage>,
}

/// A backup tarball being downloaded: its length when the server sent one, and the body.
pub struct BackupDownload {
    pub length: Option<u64>,
    pub stream: Pin<Box<dyn Stream<Item = Result<Bytes, IncusError>> + Send>>,
}

impl std::fmt::Debug for BackupDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupDownload")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Creates backup `name` of a custom volume (waits for it). `volume_only` leaves its
    /// snapshots out; the tarball is portable (not driver-optimized), compressed with
    /// `compression` (`gzip`, `zstd`, `none`, ...).
    pub async fn create_volume_backup(
        &self,
        pool: &str,
        volume: &str,
        name: &str,
        compression: &str,
    ) -> Result<(), IncusError> {
        let body = serde_json::json!({
            "name": name,
            "volume_only": true,
            "optimized_storage": false,
            "compression_algorithm": compression,
        });
        let parent = [pool, "volumes", "custom", volume, "backups"];
        ON_VOLUME
            .under(&parent)
            .create(self, &body)
            .await
            .map(|_| ())
    }

    /// Starts the download of a backup's tarball; the caller drains [`BackupDownload::stream`].
    pub async fn download_volume_backup(
        &self,
        pool: &str,
        volume: &str,
        name: &str,
    ) -> Result<BackupDownload, IncusError> {
        let req = Req::get(
            POOLS,
            &[pool, "volumes", "custom", volume, "backups", name, "export"],
        )
        .scope(Scope::Project)
        .targeted()
        .deadline(super::client::Deadline::Head);
        let (resp, method, path) = self.send_streaming(req).await?;
        let length = resp.content_length();
        let endpoint = self.endpoint();
        let stream = resp.bytes_stream().map(move |r| {
            r.map_err(|e| IncusError::Transport {
                endpoint: endpoint.clone(),
                method: method.clone(),
                path: path.clone(),
                message: e.to_string(),
            })
        });
        Ok(BackupDownload {
            length,
            stream: Box::pin(stream),
        })
    }

    pub async fn delete_volume_backup(
        &self,
        pool: &str,
        volume: &str,
        name: &str,
    ) -> Result<(), IncusError> {
        let parent = [pool, "volumes", "custom", volume, "backups"];
        ON_VOLUME.under(&parent).delete(self, name).await
    }

    /// Creates custom volume `name` from a backup tarball streamed as `body` (waits for it).
    /// An existing `name` fails.
    pub async fn import_volume_backup(
        &self,
        pool: &str,
        name: &str,
        body: reqwest::Body,
    ) -> Result<(), IncusError> {
        let req = Req::new(Method::POST, POOLS, &[pool, "volumes", "custom"])
            .scope(Scope::Project)
            .targeted()
            .header("x-incus-name", name)?
            .body_stream(body);
        self.write(req).await.map(|_| ())
    }

    /// Copies custom volume (or snapshot, `vol/snap`) `source` of the same pool and project
    /// to `name`, without snapshots. With `refresh`, `name` must exist and its content is
    /// made equal to the source's while its own snapshots, config and attachments stay
    /// (extension `custom_volume_refresh`).
    pub async fn copy_volume(
        &self,
        pool: &str,
        name: &str,
        source: &str,
        refresh: bool,
    ) -> Result<(), IncusError> {
        let mut src = serde_json::json!({
            "type": "copy",
            "pool": pool,
            "name": source,
            "volume_only": true,
        });
        if refresh {
            src["refresh"] = Value::Bool(true);
        }
        let body = serde_json::json!({
            "name": name,
            "type": "custom",
            "content_type": "filesystem",
            "source": src,
        });
        let volumes = IN_POOL.under(&[pool, "volumes", "custom"]);
        volumes.create(self, &body).await.map(|_| ())
    }

    pub async fn volume_state(&self, pool: &str, volume: &str) -> Result<VolumeState, IncusError> {
        let req = Req::get(POOLS, &[pool, "volumes", "custom", volume, "state"])
            .scope(Scope::Project)
            .targeted();
        self.get_value(req).await
    }
}
