//! Storage pools (server-wide, member-aware), custom volumes with snapshots, and buckets
//! (project-scoped).

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Etagged, Req, Scope, nullable};
use super::error::IncusError;
use super::resource::{Call, Collection, MEMBER_DEFINED};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoragePool {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub driver: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub status: String,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub locations: Vec<String>,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `GET /1.0/storage-pools/<pool>/resources`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolResources {
    #[serde(default, deserialize_with = "nullable")]
    pub space: Usage,
    #[serde(default, deserialize_with = "nullable")]
    pub inodes: Usage,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "nullable")]
    pub used: u64,
    #[serde(default, deserialize_with = "nullable")]
    pub total: u64,
}

impl Usage {
    pub fn free(&self) -> u64 {
        self.total.saturating_sub(self.used)
    }
}

/// A custom storage volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageVolume {
    pub name: String,
    /// `filesystem` or `block`.
    #[serde(default = "filesystem")]
    pub content_type: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    /// `size`, `snapshots.schedule`, `snapshots.expiry`, `snapshots.pattern`, `user.*`, ...
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(
        rename = "type",
        default,
        skip_serializing,
        deserialize_with = "nullable"
    )]
    pub kind: String,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub location: String,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

fn filesystem() -> String {
    "filesystem".into()
}

impl StorageVolume {
    pub fn filesystem(name: &str, config: BTreeMap<String, String>) -> StorageVolume {
        StorageVolume {
            name: name.to_string(),
            content_type: filesystem(),
            description: String::new(),
            config,
            kind: "custom".into(),
            location: String::new(),
            used_by: Vec::new(),
            extra: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VolumeSnapshot {
    /// The snapshot's own name (`snap0`), without the volume prefix.
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    pub created_at: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub expires_at: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StorageBucket {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub s3_url: String,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub location: String,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The admin key Incus returns when it creates a bucket. Holds a secret: Debug redacts it.
#[derive(Clone, Default, PartialEq, Deserialize)]
pub struct BucketKey {
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub role: String,
    #[serde(rename = "access-key", default, deserialize_with = "nullable")]
    pub access_key: String,
    #[serde(rename = "secret-key", default, deserialize_with = "nullable")]
    pub secret_key: String,
}

impl std::fmt::Debug for BucketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

const POOLS: &str = "/1.0/storage-pools";
/// Pools are server-wide and member-defined.
const POOL_COLLECTION: Collection = Collection::new(POOLS, Scope::Global, MEMBER_DEFINED);
/// What lives in a pool (volumes, their snapshots, buckets) is in a project and on a member:
/// every call goes to the view's target but the listing of a pool's volumes.
pub(super) const IN_POOL: Collection = Collection::new(
    POOLS,
    Scope::Project,
    &[Call::Get, Call::Create, Call::Update, Call::Delete],
);
/// What hangs off a volume (snapshots, backups) is on its member, listings included.
pub(super) const ON_VOLUME: Collection = Collection::new(
    POOLS,
    Scope::Project,
    &[
        Call::List,
        Call::Get,
        Call::Create,
        Call::Update,
        Call::Delete,
    ],
);

impl Client {
    pub async fn storage_pools(&self) -> Result<Vec<StoragePool>, IncusError> {
        POOL_COLLECTION.list(self).await
    }

    pub async fn get_storage_pool(&self, name: &str) -> Result<Etagged<StoragePool>, IncusError> {
        POOL_COLLECTION.get(self, name).await
    }

    /// On a cluster: first once per member via [`Client::on_target`], then without target.
    pub async fn create_storage_pool(&self, pool: &StoragePool) -> Result<(), IncusError> {
        POOL_COLLECTION.create(self, pool).await.map(|_| ())
    }

    pub async fn update_storage_pool(
        &self,
        pool: &StoragePool,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        POOL_COLLECTION.update(self, &pool.name, pool, etag).await
    }

    pub async fn delete_storage_pool(&self, name: &str) -> Result<(), IncusError> {
        POOL_COLLECTION.delete(self, name).await
    }

    /// Space and inodes of a pool (per member with [`Client::on_target`]).
    pub async fn storage_pool_resources(&self, name: &str) -> Result<PoolResources, IncusError> {
        self.get_value(Req::get(POOLS, &[name, "resources"]).targeted())
            .await
    }

    /// The custom volumes of a pool, without their snapshots.
    pub async fn volumes(&self, pool: &str) -> Result<Vec<StorageVolume>, IncusError> {
        let volumes = IN_POOL.under(&[pool, "volumes", "custom"]);
        Ok(without_snapshots(volumes.list(self).await?))
    }

    pub async fn get_volume(
        &self,
        pool: &str,
        name: &str,
    ) -> Result<Etagged<StorageVolume>, IncusError> {
        IN_POOL
            .under(&[pool, "volumes", "custom"])
            .get(self, name)
            .await
    }

    /// A duplicate answers [`IncusError::AlreadyExists`].
    pub async fn create_volume(
        &self,
        pool: &str,
        volume: &StorageVolume,
    ) -> Result<(), IncusError> {
        let volumes = IN_POOL.under(&[pool, "volumes", "custom"]);
        volumes.create(self, volume).await.map(|_| ())
    }

    pub async fn update_volume(
        &self,
        pool: &str,
        volume: &StorageVolume,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        let volumes = IN_POOL.under(&[pool, "volumes", "custom"]);
        volumes.update(self, &volume.name, volume, etag).await
    }

    pub async fn delete_volume(&self, pool: &str, name: &str) -> Result<(), IncusError> {
        let volumes = IN_POOL.under(&[pool, "volumes", "custom"]);
        volumes.delete(self, name).await
    }

    pub async fn volume_snapshots(
        &self,
        pool: &str,
        volume: &str,
    ) -> Result<Vec<VolumeSnapshot>, IncusError> {
        let parent = [pool, "volumes", "custom", volume, "snapshots"];
        let mut snaps: Vec<VolumeSnapshot> = ON_VOLUME.under(&parent).list(self).await?;
        // Some versions name snapshots "<volume>/<snap>".
        for s in &mut snaps {
            if let Some((_, own)) = s.name.rsplit_once('/') {
                s.name = own.to_string();
            }
        }
        Ok(snaps)
    }

    /// `expires_at`: RFC 3339, or `None` for the volume's `snapshots.expiry`.
    pub async fn create_volume_snapshot(
        &self,
        pool: &str,
        volume: &str,
        snapshot: &str,
        expires_at: Option<&str>,
    ) -> Result<(), IncusError> {
        let mut body = serde_json::json!({ "name": snapshot });
        if let Some(at) = expires_at {
            body["expires_at"] = Value::String(at.to_string());
        }
        let parent = [pool, "volumes", "custom", volume, "snapshots"];
        ON_VOLUME
            .under(&parent)
            .create(self, &body)
            .await
            .map(|_| ())
    }

    pub async fn delete_volume_snapshot(
        &self,
        pool: &str,
        volume: &str,
        snapshot: &str,
    ) -> Result<(), IncusError> {
        let parent = [pool, "volumes", "custom", volume, "snapshots"];
        ON_VOLUME.under(&parent).delete(self, snapshot).await
    }

    /// Renames a snapshot of a custom volume.
    pub async fn rename_volume_snapshot(
        &self,
        pool: &str,
        volume: &str,
        snapshot: &str,
        new_name: &str,
    ) -> Result<(), IncusError> {
        let req = Req::new(
            Method::POST,
            POOLS,
            &[pool, "volumes", "custom", volume, "snapshots", snapshot],
        )
        .scope(Scope::Project)
        .targeted()
        .json(&serde_json::json!({ "name": new_name }))?;
        self.write(req).await.map(|_| ())
    }

    /// Rolls the volume back to `snapshot` (the volume must not be in use by a running instance).
    pub async fn restore_volume_snapshot(
        &self,
        pool: &str,
        volume: &str,
        snapshot: &str,
    ) -> Result<(), IncusError> {
        let body = serde_json::json!({ "restore": snapshot });
        let volumes = IN_POOL.under(&[pool, "volumes", "custom"]);
        volumes.update(self, volume, &body, None).await
    }

    pub async fn get_bucket(
        &self,
        pool: &str,
        name: &str,
    ) -> Result<Etagged<StorageBucket>, IncusError> {
        IN_POOL.under(&[pool, "buckets"]).get(self, name).await
    }

    /// Creates a bucket and returns its admin key. A server that cannot serve buckets on this
    /// pool (6.0 without MinIO tools on the host, a driver without object storage) answers
    /// [`IncusError::Unsupported`].
    pub async fn create_bucket(
        &self,
        pool: &str,
        bucket: &StorageBucket,
    ) -> Result<BucketKey, IncusError> {
        match IN_POOL.under(&[pool, "buckets"]).create(self, bucket).await {
            Ok(v) => super::client::decode(v, "POST", &format!("{POOLS}/{pool}/buckets")),
            Err(e) => Err(bucket_unsupported(pool, e)),
        }
    }

    pub async fn delete_bucket(&self, pool: &str, name: &str) -> Result<(), IncusError> {
        IN_POOL.under(&[pool, "buckets"]).delete(self, name).await
    }
}

/// [seen] 6.0.4 lists every snapshot as a volume `<volume>/<snapshot>` carrying the volume's
/// config (ownership keys included); a volume name cannot contain `/`.
fn without_snapshots(mut volumes: Vec<StorageVolume>) -> Vec<StorageVolume> {
    volumes.retain(|v| !v.name.contains('/'));
    volumes
}

/// Turns the answers that mean "this server cannot do local buckets" into `Unsupported`.
fn bucket_unsupported(pool: &str, e: IncusError) -> IncusError {
    let IncusError::Api { ref message, .. } = e else {
        return e;
    };
    let m = message.to_ascii_lowercase();
    let reason = if m.contains("minio") {
        format!(
            "{message}. Local buckets on Incus 6.0 need the `minio` server and the MinIO client \
             (`mc`/`mcli`) in incusd's PATH; install them or use Incus 7.0+, which serves S3 itself"
        )
    } else if m.contains("not supported")
        || m.contains("doesn't support")
        || m.contains("does not support")
    {
        format!("{message}. Pool {pool}'s driver has no object storage")
    } else {
        return e;
    };
    IncusError::Unsupported {
        what: format!("storage buckets on pool {pool}"),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minio_missing_becomes_unsupported_with_a_fix() {
        let api = IncusError::Api {
            status: 500,
            code: 500,
            message: "Failed creating storage bucket: Couldn't find the MinIO client tool".into(),
            method: "POST".into(),
            path: "/1.0/storage-pools/default/buckets".into(),
        };
        let e = bucket_unsupported("default", api);
        let s = e.to_string();
        assert!(matches!(e, IncusError::Unsupported { .. }), "{s}");
        assert!(
            s.contains("MinIO client tool") && s.contains("Incus 7.0"),
            "{s}"
        );
        let other = IncusError::Api {
            status: 400,
            code: 400,
            message: "Invalid name".into(),
            method: "POST".into(),
            path: "/".into(),
        };
        assert!(matches!(
            bucket_unsupported("p", other),
            IncusError::Api { .. }
        ));
    }

    #[test]
    fn snapshot_entries_are_not_volumes() {
        let v = |n: &str| StorageVolume::filesystem(n, BTreeMap::new());
        let got = without_snapshots(vec![v("a-data"), v("a-data/snap0"), v("b-data")]);
        let names: Vec<&str> = got.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["a-data", "b-data"]);
    }

    #[test]
    fn bucket_key_debug_hides_the_secret() {
        let k = BucketKey {
            name: "admin".into(),
            role: "admin".into(),
            access_key: "AK".into(),
            secret_key: "SUPERSECRET".into(),
        };
        assert!(!format!("{k:?}").contains("SUPERSECRET"));
    }

    #[test]
    fn volume_keeps_unknown_fields_and_skips_read_only_ones() {
        let v: StorageVolume = serde_json::from_value(serde_json::json!({
            "name": "v", "type": "custom", "content_type": "filesystem", "config": {"size": "1GiB"},
            "used_by": ["/1.0/instances/a"], "location": "none", "created_at": "2026-01-01T00:00:00Z"
        }))
        .expect("decode");
        let back = serde_json::to_value(&v).expect("encode");
        assert_eq!(back["created_at"], "2026-01-01T00:00:00Z");
        assert!(back.get("used_by").is_none() && back.get("type").is_none());
    }
}
