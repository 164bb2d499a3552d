//! Offline bundles: one file with everything an install needs where no registry is reachable.
//!
//! The file is an uncompressed POSIX tar with a fixed member order, so it can be written and
//! checked in one sequential pass (also through a pipe), and read in place as an
//! `oci-archive:` (the OCI layout sits at the tar's root):
//!
//! ```text
//! atlas-bundle.json          the manifest: format, version, arch, creation time, every
//!                            member's name, size and sha256 (first, so a reader knows what
//!                            to expect before the large members arrive)
//! atlas-bundle.json.sha256   sha256sum line of the manifest: catches a damaged manifest
//! atlas-bundle.json.minisig  (signed bundles) minisign signature of the manifest, which
//!                            lists every other member's sha256: one signature covers all
//! atlas-install              the binary that made the bundle (mode 0755)
//! images.lock                the upstream digests the images were built from
//! atlas.toml                 the commented default config (`config init`'s)
//! sbom/<image>.cdx.json      bill of materials (CycloneDX JSON) of each Atlas image, read
//!                            from its layers while they were pulled and built; listed in the
//!                            manifest like every member, so the signature covers it
//! oci-layout, index.json     an OCI image layout: one index entry per image, ref.name =
//! blobs/sha256/<hex>...      service name (Atlas images) or upstream reference (bases);
//!                            blobs shared between images are stored once
//! ```
//!
//! Only regular files with plain relative names are allowed; [`verify`] refuses anything
//! else and names the member at fault. The signature is checked before anything else, against
//! the release keys embedded in the binary and the operator's `--trust-key`s
//! ([`crate::signing::Trust`]); an unsigned bundle passes only with `--allow-unsigned`. The
//! signature member is not listed in the manifest (it signs it), so `tar -xf BUNDLE
//! atlas-bundle.json atlas-bundle.json.minisig && minisign -V -p KEY.pub -m atlas-bundle.json`
//! checks it without us.

mod create;
mod inspect;
mod manifest;
mod open;
mod signed;
mod verify;

use std::io;
use std::path::PathBuf;

pub use create::{CreateSpec, Created, RecipeBuild, RegistrySource, create};
pub use inspect::{BundleImage, Inspection, inspect, sbom};
pub use manifest::{BundleManifest, FORMAT, Member, format_rfc3339};
pub use open::{
    Expect, OpenedBundle, UnpackedLayout, extract_binary, free_space, open_for_install,
};
pub use signed::check_signature;
pub use verify::{Verified, read_manifest, verify};

/// Name of the manifest member (always first).
pub const MANIFEST: &str = "atlas-bundle.json";
/// Name of the manifest's checksum member (always second).
pub const MANIFEST_SUM: &str = "atlas-bundle.json.sha256";
/// Name of the manifest's signature member (third, when the bundle is signed).
pub const MANIFEST_SIG: &str = "atlas-bundle.json.minisig";
/// The binary inside the bundle.
pub const BINARY: &str = "atlas-install";
pub const LOCK: &str = "images.lock";
pub const CONFIG: &str = "atlas.toml";
pub const OCI_LAYOUT: &str = "oci-layout";
pub const OCI_INDEX: &str = "index.json";
/// Index annotation saying whether an image is an Atlas image or the upstream base of one.
pub const ROLE_ANNOTATION: &str = "io.atlas.bundle.role";
/// Index annotation: the upstream tag an image was built from (what `inspect` calls version).
pub const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";

/// The member holding the bill of materials of the Atlas image `name`.
pub fn sbom_member(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("sbom/{safe}.cdx.json")
}

/// The architecture of this binary in release-asset terms (`x86_64`, `aarch64`).
pub fn host_arch() -> &'static str {
    std::env::consts::ARCH
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    // The io::Error is in the message, not `source`: a printed chain would say it twice.
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: io::Error },
    #[error("{path} is not an atlas-install bundle: {reason}")]
    NotABundle { path: PathBuf, reason: String },
    #[error("{path}: member {MANIFEST} is invalid: {reason}")]
    ManifestInvalid { path: PathBuf, reason: String },
    #[error(
        "{path}: member {MANIFEST} was altered: its sha256 is {actual}, but {MANIFEST_SUM} says {expected}; the bundle is damaged, fetch it again"
    )]
    ManifestTampered {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "{path}: member {name:?} has an unsafe name ({reason}); refusing the bundle, nothing was extracted"
    )]
    UnsafeName {
        path: PathBuf,
        name: String,
        reason: &'static str,
    },
    #[error("{path}: member {name:?} is a {kind}; a bundle holds only regular files")]
    NotRegular {
        path: PathBuf,
        name: String,
        kind: String,
    },
    #[error("{path}: member {name:?} is not listed in {MANIFEST} (unexpected extra member)")]
    Unexpected { path: PathBuf, name: String },
    #[error("{path}: member {name:?} appears twice")]
    Duplicate { path: PathBuf, name: String },
    #[error("{path}: member {name:?} is listed in {MANIFEST} but missing from the file{hint}")]
    Missing {
        path: PathBuf,
        name: String,
        hint: &'static str,
    },
    #[error(
        "{path}: member {name:?} is corrupt: {actual_size} bytes with sha256 {actual}, but {MANIFEST} records {expected_size} bytes with sha256 {expected}"
    )]
    Corrupt {
        path: PathBuf,
        name: String,
        expected: String,
        expected_size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("{path}: member {name:?} is truncated: the file ends after {got} of its {size} bytes")]
    Truncated {
        path: PathBuf,
        name: String,
        got: u64,
        size: u64,
    },
    #[error(
        "{path}: {MANIFEST} was tampered with: it records sha256 {recorded} for {name:?}, whose content hashes to the digest its name states"
    )]
    ManifestLies {
        path: PathBuf,
        name: String,
        recorded: String,
    },
    #[error("{path}: blob {name:?} holds content with sha256 {actual}, not the digest in its name")]
    BlobName {
        path: PathBuf,
        name: String,
        actual: String,
    },
    #[error("{path}: blob {digest} is missing (member blobs/sha256/{hex}), referenced by {by}", hex = digest.hex())]
    MissingBlob {
        path: PathBuf,
        digest: atlas_image::digest::Digest,
        by: String,
    },
    #[error("{path}: member {name:?} is a blob no image references")]
    Unreferenced { path: PathBuf, name: String },
    #[error("{path}: member {name:?}: {reason}")]
    BadMember {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error(
        "{path} was made by atlas-install {bundle}, this is {binary}: run the bundle's own binary (`tar -xf {file} atlas-install && ./atlas-install ...`) or a bundle of version {binary}", file = path.display()
    )]
    VersionMismatch {
        path: PathBuf,
        bundle: String,
        binary: String,
    },
    #[error(
        "{path} is for {bundle} hosts, this one is {binary}: use the {binary} bundle of the same release"
    )]
    ArchMismatch {
        path: PathBuf,
        bundle: String,
        binary: String,
    },
    #[error(
        "not enough free space in {dir}: unpacking the bundle's images needs {needed} bytes, {available} are free; free some space or point TMPDIR at a larger file system"
    )]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("{path}: {error}", path = path.display())]
    Signature {
        path: PathBuf,
        error: crate::signing::SignatureError,
    },
    #[error("the bundle would hold no image: give an OCI layout or recipes to build")]
    NoImages,
    #[error("{location}: image {index} of index.json has no {annotation} annotation; tag it (e.g. `skopeo copy ... oci:DIR:NAME`) so the bundle can name it", annotation = atlas_image::manifest::REF_NAME_ANNOTATION)]
    Untagged { location: String, index: usize },
    #[error("two images are named {name:?} (from {first} and {second}); give each a distinct name")]
    DuplicateImage {
        name: String,
        first: String,
        second: String,
    },
    #[error("recipe {recipe}: {error}")]
    Recipe {
        recipe: String,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Layout(#[from] atlas_image::oci_layout::LayoutError),
    // Boxed: these are large, and every Result of this module would carry their size.
    #[error(transparent)]
    Pull(Box<atlas_image::source::PullError>),
    #[error(transparent)]
    Build(Box<atlas_image::build::BuildError>),
    #[error(transparent)]
    Lock(#[from] atlas_image::lock::LockError),
}

impl From<atlas_image::source::PullError> for BundleError {
    fn from(e: atlas_image::source::PullError) -> Self {
        BundleError::Pull(Box::new(e))
    }
}

impl From<atlas_image::build::BuildError> for BundleError {
    fn from(e: atlas_image::build::BuildError) -> Self {
        BundleError::Build(Box::new(e))
    }
}
