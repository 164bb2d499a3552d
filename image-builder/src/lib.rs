//! The Atlas image pipeline: sources (registry, OCI layout, OCI archive) -> verified blobs ->
//! one flattened, safe tar stream + deterministic Atlas layers -> sinks (Incus unified tarball,
//! OCI layout, registry push). Nothing here knows about terminals or about Incus' API: sinks
//! produce byte streams that the installer hands to Incus.

pub mod init;
pub mod layer;
pub mod progress;

pub mod archive;
pub mod auth;
pub mod build;
pub mod cache;
pub mod digest;
pub mod download;
pub mod lock;
pub mod manifest;
pub mod oci_layout;
pub mod platform;
pub mod plugin;
pub mod recipe;
pub mod reference;
pub mod registry;
pub mod sbom;
pub mod source;
