//! Typed client for the Incus REST API (unix socket or HTTPS with a pinned server).
//!
//! - [`Client`]: connect with [`Client::unix`], [`Client::remote`] or [`Client::from_config`];
//!   scope with [`Client::in_project`] / [`Client::on_target`].
//! - Reads return [`Etagged`] values; updates take the ETag back (`If-Match`), so a concurrent
//!   change is [`IncusError::PreconditionFailed`] instead of lost.
//! - Async operations are waited for inside the calls; their failure is an error.
//! - [`Client::writes`] counts every non-GET request: a converged re-run must leave it at 0.
//! - Decide behaviour from [`Server::has`] (`api_extensions`), never from the version.
//!
//! The engine's converge step for one object, e.g. a profile:
//!
//! ```no_run
//! # async fn f(client: &atlas_install::incus::Client, want: atlas_install::incus::Profile)
//! #     -> Result<(), atlas_install::incus::IncusError> {
//! use atlas_install::incus::OptionalExt;
//! use atlas_install::state::keys;
//! match client.get_profile(&want.name).await.optional()? {
//!     None => client.create_profile(&want).await?,
//!     Some(have) if !keys::is_owned(&have.value.config) => { /* foreign: report, touch nothing */ }
//!     Some(have) if have.value.config != want.config || have.value.devices != want.devices => {
//!         let mut next = have.value.clone(); // keeps fields we do not model
//!         next.config = want.config.clone();
//!         next.devices = want.devices.clone();
//!         client.update_profile(&next, have.etag.as_deref()).await?
//!     }
//!     Some(_) => {} // converged: no request sent, `writes()` unchanged
//! }
//! # Ok(()) }
//! ```

mod backups;
mod certificate;
mod client;
mod cluster;
mod daemon;
mod error;
mod exec;
#[cfg(any(test, feature = "fake-incus"))]
pub mod fake;
mod files;
mod image;
mod instance;
mod network;
mod operation;
mod profile;
mod project;
mod resource;
mod server;
mod storage;
mod transport;

pub use backups::{BackupDownload, VolumeState};
pub use certificate::Certificate;
pub use client::{Client, Etagged, RequestLog};
pub use cluster::{
    Cluster, ClusterCreate, ClusterGroup, ClusterMember, MemberConfigKey, NETWORK_MEMBER_KEYS,
    POOL_MEMBER_KEYS, split_member_keys,
};
pub use daemon::{Daemon, Exchange};
pub use error::{IncusError, OptionalExt};
pub use exec::ExecOutput;
pub use files::{FileEntry, FileMeta};
pub use image::{Image, ImageAlias, ImageAliasRef, ImageImport};
pub use instance::{
    Address, Instance, InstanceCreate, InstanceSource, InstanceState, InstanceStatus, NetworkState,
    StateAction,
};
pub use network::Network;
pub use operation::Operation;
pub use profile::{Devices, Profile};
pub use project::Project;
pub use server::{Environment, Server, StorageDriver};
pub use storage::{
    BucketKey, PoolResources, StorageBucket, StoragePool, StorageVolume, Usage, VolumeSnapshot,
};
pub use transport::{
    PinnedServer, RemoteSpec, cert_fingerprint, discover_socket, parse_fingerprint,
    socket_candidates, tls_config,
};
