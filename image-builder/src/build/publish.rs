//! OCI outputs of an Atlas image: an image layout directory and a registry push. Base blobs
//! are streamed from where the pull left them; the Atlas layer and config are small.

use std::path::Path;

use super::{AtlasImage, BuildError, MANIFEST_MEDIA_TYPE};
use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::oci_layout::{BlobStore, OciLayoutWriter};
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::{PushOptions, push_manifest_and_blobs};

/// Writes `image` into the OCI layout at `dir` (created if needed; other images in it are
/// kept) under `ref_name`. Returns the manifest digest.
pub fn write_oci_layout(
    image: &AtlasImage,
    dir: &Path,
    ref_name: Option<&str>,
) -> Result<Digest, BuildError> {
    let mut w = OciLayoutWriter::create(dir)?;
    for d in &image.base.manifest.layers {
        let mut r = image.base.open_blob(&d.digest, d.size)?;
        w.add_blob(&d.digest, d.size, &mut r)?;
    }
    if let Some(l) = &image.layer {
        w.add_bytes(&l.gzip)?;
    }
    w.add_bytes(&image.config_bytes)?;
    let platform = Some(image.base.platform.clone()).filter(|p| !p.os.is_empty());
    w.add_manifest(
        &image.manifest_bytes,
        MANIFEST_MEDIA_TYPE,
        ref_name,
        platform,
    )?;
    w.finish()?;
    Ok(image.manifest_digest.clone())
}

/// Pushes `image` to `dest`. The Atlas layer and config go through `cache` (verified, by
/// digest); base blobs the destination registry already has are skipped, and on the same
/// registry they are mounted from the base repository instead of uploaded.
pub async fn push(
    image: &AtlasImage,
    cache: &BlobCache,
    dest: &ImageRef,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<Digest, BuildError> {
    if let Some(l) = &image.layer {
        let d = Digest::parse(&l.digest).map_err(|e| BuildError::BaseConfig {
            what: image.spec.name.clone(),
            detail: e.to_string(),
        })?;
        cache.insert_reader(
            &d,
            l.gzip.len() as u64,
            "the Atlas layer",
            &mut &l.gzip[..],
            None,
        )?;
    }
    cache.insert_reader(
        &image.config_digest,
        image.config_bytes.len() as u64,
        "the Atlas image config",
        &mut &image.config_bytes[..],
        None,
    )?;
    let mut opts = opts.clone();
    if let Some(r) = &image.base.reference {
        opts.mount_from.push(r.clone());
    }
    let ours = BlobStore::Dir(cache.root().to_owned());
    let digest = push_manifest_and_blobs(
        &[image.base.blob_store(), &ours],
        &image.blobs(),
        &image.manifest_bytes,
        MANIFEST_MEDIA_TYPE,
        dest,
        &opts,
        progress,
    )
    .await?;
    Ok(digest)
}
