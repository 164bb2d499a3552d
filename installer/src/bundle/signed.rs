//! The bundle's signature: `atlas-bundle.json.minisig`, right after the manifest and its
//! checksum, a minisign signature of the manifest's bytes. Checked before anything else is
//! read, so a bundle from an untrusted key is refused before its members are even looked at.

use std::path::Path;

use super::manifest::BundleManifest;
use super::verify::{next_member, open_tar, read_head_bytes, read_small};
use super::{BundleError, MANIFEST, MANIFEST_SIG};
use crate::signing::{SecretKey, Signer, Trust};

/// Reads the manifest (checked against its checksum) and its signature, and checks the
/// signature against `trust`. The error says why a bundle is refused: unsigned, signed by a
/// key not trusted, or changed after it was signed.
pub fn check_signature(
    path: &Path,
    trust: &Trust,
) -> Result<(BundleManifest, Signer), BundleError> {
    let mut tar = open_tar(path)?;
    let mut entries = tar.entries().map_err(|e| BundleError::NotABundle {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let (manifest, bytes) = read_head_bytes(path, &mut entries)?;
    let signature = match next_member(path, &mut entries)? {
        Some((name, mut entry)) if name == MANIFEST_SIG => {
            Some(read_small(path, &name, &mut entry)?)
        }
        _ => None,
    };
    let signer = trust
        .check(MANIFEST, &bytes, signature.as_deref())
        .map_err(|error| BundleError::Signature {
            path: path.to_owned(),
            error,
        })?;
    Ok((manifest, signer))
}

/// The signature member's bytes for a manifest: its trusted comment names the bundle's
/// version, arch and creation time, which `minisign -V` prints.
pub(crate) fn sign_manifest(
    key: &SecretKey,
    manifest: &BundleManifest,
    bytes: &[u8],
) -> Result<Vec<u8>, BundleError> {
    let comment = format!(
        "file:{MANIFEST}\tatlas-install {} {} created {}",
        manifest.version, manifest.arch, manifest.created
    );
    key.sign(bytes, &comment)
        .map_err(|error| BundleError::Signature {
            path: MANIFEST.into(),
            error,
        })
}
