//! The lock of each Atlas project, held in the config of Incus' `default` project (which
//! always exists; the Atlas project may not, yet) as [`keys::lock`]: a [`LockRecord`] as
//! JSON, taken and given back compare-and-swap under that project's ETag. What the record
//! means (who holds it, when it is stale) is `engine::lock`'s.

use serde::{Deserialize, Serialize};

use crate::incus::{Client, Etagged, IncusError, Project};

use super::keys;

/// Who holds the lock, since when, and until when it counts (the key's value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Random per run: what tells our own record from another run's.
    pub token: String,
    /// `install`, `destroy`, ...
    pub command: String,
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id` of the holder's host.
    pub boot_id: String,
    pub pid: u32,
    /// Start time of the holder's process (clock ticks after boot, `/proc/<pid>/stat`).
    pub pid_start: u64,
    /// Seconds since the epoch.
    pub started: u64,
    pub renewed: u64,
    pub lease_seconds: u64,
}

/// The lock key of one Atlas project as read, with what a compare-and-swap needs.
pub struct LockView {
    key: String,
    default: Etagged<Project>,
}

impl LockView {
    /// The record: `None` when free, `Err` (why) when it cannot be read.
    pub fn record(&self) -> Option<Result<LockRecord, String>> {
        self.default
            .value
            .config
            .get(&self.key)
            .map(|v| serde_json::from_str(v).map_err(|e| e.to_string()))
    }

    /// Writes `record` (`None` frees the lock) if nobody changed the `default` project since
    /// it was read; [`IncusError::PreconditionFailed`] when someone did.
    pub async fn swap(
        &self,
        client: &Client,
        record: Option<&LockRecord>,
    ) -> Result<(), IncusError> {
        let mut next = self.default.value.clone();
        match record {
            Some(r) => next.config.insert(
                self.key.clone(),
                serde_json::to_string(r).map_err(|e| IncusError::Invalid(e.to_string()))?,
            ),
            None => next.config.remove(&self.key),
        };
        client
            .in_project("default")
            .update_project(&next, self.default.etag.as_deref())
            .await
    }
}

/// The lock of Atlas project `project` as the `default` project holds it now.
pub async fn read(client: &Client, project: &str) -> Result<LockView, IncusError> {
    Ok(LockView {
        key: keys::lock(project),
        default: client.in_project("default").get_project("default").await?,
    })
}
