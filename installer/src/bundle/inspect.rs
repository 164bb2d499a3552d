//! What a bundle holds, read from its manifest, index.json and image manifests (seeking to
//! them, so a multi-GB bundle is listed at once). Not a verification: see [`super::verify`].

use std::path::Path;

use atlas_image::archive::ArchiveIndex;
use atlas_image::build::BASE_NAME_LABEL;
use atlas_image::digest::Hasher;
use atlas_image::manifest::{ImageIndex, Manifest};
use serde::Serialize;

use super::manifest::BundleManifest;
use super::verify::read_manifest;
use super::{BundleError, OCI_INDEX, ROLE_ANNOTATION, VERSION_ANNOTATION};

/// One image of the bundle's OCI layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BundleImage {
    /// The index entry's ref name: a service (`prometheus`) or an upstream reference.
    pub name: String,
    /// `atlas` (ready to import) or `base` (the upstream image an Atlas image is built on).
    pub role: String,
    pub digest: String,
    /// Manifest, config and layers (shared blobs counted in every image using them).
    pub size: u64,
    pub layers: usize,
    /// Upstream tag the image comes from, when known.
    pub version: Option<String>,
    /// Upstream reference of the base, for Atlas images.
    pub base: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub file: String,
    pub file_size: u64,
    pub manifest: BundleManifest,
    pub images: Vec<BundleImage>,
}

/// Lists the bundle's images. Small members read here are still checked against the manifest.
pub fn inspect(path: &Path) -> Result<Inspection, BundleError> {
    let manifest = read_manifest(path)?;
    let archive = ArchiveIndex::scan(path).map_err(|e| BundleError::NotABundle {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let read = |name: &str| read_checked(path, &archive, &manifest, name);
    let index: ImageIndex =
        serde_json::from_slice(&read(OCI_INDEX)?).map_err(|e| BundleError::BadMember {
            path: path.to_owned(),
            name: OCI_INDEX.to_owned(),
            reason: format!("not an OCI image index: {e}"),
        })?;
    let images = images_of(path, &index, |hex| {
        read(&format!("blobs/sha256/{hex}")).ok()
    })?;
    let file_size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    Ok(Inspection {
        file: path.display().to_string(),
        file_size,
        manifest,
        images,
    })
}

/// The bill of materials of the bundle's Atlas image `name` (its member, checked against the
/// manifest; run `bundle verify` to check the manifest's signature too).
pub fn sbom(path: &Path, name: &str) -> Result<Vec<u8>, BundleError> {
    let manifest = read_manifest(path)?;
    let archive = ArchiveIndex::scan(path).map_err(|e| BundleError::NotABundle {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    read_checked(path, &archive, &manifest, &super::sbom_member(name))
}

/// A small member's bytes, refused unless they match the manifest's size and sha256.
fn read_checked(
    path: &Path,
    archive: &ArchiveIndex,
    manifest: &BundleManifest,
    name: &str,
) -> Result<Vec<u8>, BundleError> {
    let missing = || BundleError::Missing {
        path: path.to_owned(),
        name: name.to_owned(),
        hint: "",
    };
    let want = manifest.member(name).ok_or_else(missing)?;
    let bytes = archive.read_member(name).map_err(|_| missing())?;
    let mut h = Hasher::new();
    h.update(&bytes);
    let (digest, size) = h.finish();
    if digest.hex() != want.sha256 || size != want.size {
        return Err(BundleError::Corrupt {
            path: path.to_owned(),
            name: name.to_owned(),
            expected: want.sha256.clone(),
            expected_size: want.size,
            actual: digest.hex().to_owned(),
            actual_size: size,
        });
    }
    Ok(bytes)
}

/// The images of `index`, their manifests fetched by hex digest through `manifest_of`.
pub(crate) fn images_of(
    path: &Path,
    index: &ImageIndex,
    manifest_of: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<Vec<BundleImage>, BundleError> {
    let mut out = Vec::new();
    for d in &index.manifests {
        let bytes = manifest_of(d.digest.hex()).ok_or_else(|| BundleError::MissingBlob {
            path: path.to_owned(),
            digest: d.digest.clone(),
            by: "index.json".to_owned(),
        })?;
        let what = format!("image manifest {}", d.digest);
        let m = match Manifest::parse(&bytes, Some(&d.media_type), &what) {
            Ok(Manifest::Image(m)) => m,
            _ => {
                return Err(BundleError::BadMember {
                    path: path.to_owned(),
                    name: format!("blobs/sha256/{}", d.digest.hex()),
                    reason: "not a single-platform image manifest".to_owned(),
                });
            }
        };
        let note = |k: &str| d.annotations.as_ref().and_then(|a| a.get(k)).cloned();
        out.push(BundleImage {
            name: d.ref_name().unwrap_or("").to_owned(),
            role: note(ROLE_ANNOTATION).unwrap_or_else(|| "image".to_owned()),
            digest: d.digest.to_string(),
            size: d.size + m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>(),
            layers: m.layers.len(),
            version: note(VERSION_ANNOTATION),
            base: note(BASE_NAME_LABEL),
        });
    }
    Ok(out)
}
