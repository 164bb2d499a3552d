//! Pushing an image: blobs streamed from wherever the image lives (cache, layout, archive),
//! skipped when the registry already has them (HEAD), then the manifest bytes unchanged, so
//! the pushed digest is the digest we computed.

use futures_util::TryStreamExt;
use oci_client::errors::OciDistributionError;
use reqwest::header::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{RegistryError, Session, Target};
use crate::auth::AuthSource;
use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::oci_layout::BlobStore;
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::source::PulledImage;

#[derive(Clone, Debug, Default)]
pub struct PushOptions {
    pub insecure_registries: Vec<String>,
    pub auth: AuthSource,
    /// Repositories that may already hold some of the blobs (e.g. the base image's). On the
    /// destination's registry a missing blob is first mounted from them (no upload), falling
    /// back to an upload when the registry declines.
    pub mount_from: Vec<ImageRef>,
}

/// Pushes `image` to `dest` (its tag, or its digest when no tag is given). Returns the
/// manifest digest, which is the image's own: the manifest bytes are pushed unchanged.
pub async fn push_image(
    image: &PulledImage,
    dest: &ImageRef,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<Digest, RegistryError> {
    push_manifest_and_blobs(
        &[image.blob_store()],
        &image.blobs(),
        &image.manifest_bytes,
        &image.manifest_media_type,
        dest,
        opts,
        progress,
    )
    .await
}

/// The general form: any manifest whose blobs are in one of `stores` (e.g. a base image's
/// layout and the cache holding the layers built on top of it).
pub async fn push_manifest_and_blobs(
    stores: &[&BlobStore],
    blobs: &[Descriptor],
    manifest_bytes: &[u8],
    media_type: &str,
    dest: &ImageRef,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<Digest, RegistryError> {
    let session = Session::new(
        dest,
        &opts.insecure_registries,
        &opts.auth,
        super::READ_TIMEOUT,
    )?;
    let digest = Digest::of_bytes(manifest_bytes);
    if let Some(pinned) = &dest.digest {
        if *pinned != digest {
            return Err(RegistryError::PinnedDigest {
                reference: dest.to_string(),
                expected: pinned.clone(),
                actual: digest,
            });
        }
    }
    let oci_ref = dest.to_oci();
    session
        .client
        .auth(&oci_ref, &session.auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(|e| {
            session.error(
                e,
                &dest.repository,
                Target::Manifest(&dest.requested()),
                "push",
            )
        })?;
    for blob in blobs {
        push_blob(&session, stores, &oci_ref, dest, blob, opts, progress).await?;
    }
    let content_type = HeaderValue::from_str(media_type).map_err(|e| RegistryError::Protocol {
        registry: session.registry.clone(),
        what: "manifest push".to_owned(),
        detail: format!("media type {media_type:?} is not a valid header value: {e}"),
    })?;
    session
        .client
        .push_manifest_raw(&oci_ref, manifest_bytes.to_vec(), content_type)
        .await
        .map_err(|e| {
            session.error(
                e,
                &dest.repository,
                Target::Manifest(&dest.requested()),
                "push",
            )
        })?;
    Ok(digest)
}

async fn push_blob(
    session: &Session,
    stores: &[&BlobStore],
    oci_ref: &oci_client::Reference,
    dest: &ImageRef,
    blob: &Descriptor,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<(), RegistryError> {
    let digest = blob.digest.to_string();
    let task: std::sync::Arc<dyn crate::progress::ProgressTask> =
        std::sync::Arc::from(progress.task(
            &format!("push {}", crate::source::local::short(&digest)),
            Some(blob.size),
        ));
    let err = |e| session.error(e, &dest.repository, Target::Blob(&blob.digest), "push");
    if session
        .client
        .blob_exists(oci_ref, &digest)
        .await
        .map_err(err)?
    {
        task.finish("exists");
        return Ok(());
    }
    let mount_sources = opts
        .mount_from
        .iter()
        .filter(|f| f.registry == dest.registry && f.repository != dest.repository);
    for from in mount_sources {
        if session
            .client
            .mount_blob(oci_ref, &from.to_oci(), &digest)
            .await
            .is_ok()
        {
            task.finish("mounted");
            return Ok(());
        }
    }
    let loc = stores
        .iter()
        .find_map(|s| s.locate(&blob.digest))
        .ok_or_else(|| RegistryError::Io {
            what: format!("push of blob {digest}"),
            path: stores
                .iter()
                .map(|s| s.location())
                .collect::<Vec<_>>()
                .join(", ")
                .into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the blob is in none of the image's stores",
            ),
        })?;
    let io_err = |source| RegistryError::Io {
        what: format!("push of blob {digest}"),
        path: loc.path.clone(),
        source,
    };
    let mut file = tokio::fs::File::open(&loc.path).await.map_err(io_err)?;
    file.seek(std::io::SeekFrom::Start(loc.offset))
        .await
        .map_err(io_err)?;
    // The registry verifies the digest of what it receives; the store's length is what we send.
    let advance = task.clone();
    let stream = ReaderStream::with_capacity(file.take(loc.len), 256 * 1024)
        .inspect_ok(move |chunk| advance.advance(chunk.len() as u64))
        .map_err(OciDistributionError::IoError);
    let result = session
        .client
        .push_blob_stream(oci_ref, stream, &digest, Some(loc.len))
        .await;
    match result {
        Ok(_) => {
            task.finish("pushed");
            Ok(())
        }
        Err(e) => {
            task.fail("failed");
            Err(err(e))
        }
    }
}
