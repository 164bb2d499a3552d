//! The Atlas image pipeline: sources (registry, OCI layout, OCI archive) -> verified blobs ->
//! one flattened, safe tar stream + deterministic Atlas layers -> sinks (Incus unified tarball,
//! OCI layout, registry push). Nothing here knows about terminals or about Incus' API: sinks
//! produce byte streams that the installer hands to Incus.

pub mod layer;
pub mod progress;
