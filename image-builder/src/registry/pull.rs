//! `docker://` pulls: manifest (digest-checked, pinned digest enforced), platform choice,
//! config and layers streamed into the blob cache with resume.

use std::io::{self, Write};

use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::client::BlobResponse;

use super::{RegistryError, Session, Target};
use crate::cache::{BlobCache, Reservation};
use crate::digest::Digest;
use crate::manifest::{ACCEPTED_MANIFEST_TYPES, Descriptor, ImageManifest, Manifest, OCI_MANIFEST};
use crate::oci_layout::BlobStore;
use crate::progress::{Progress, ProgressTask};
use crate::reference::ImageRef;
use crate::source::{
    Layer, LayerObserver, PullError, PullOptions, PulledImage, assemble, select_platform,
};

/// A session to `reference`'s registry with the pull's settings.
fn session_for(reference: &ImageRef, opts: &PullOptions) -> Result<Session, RegistryError> {
    Session::new(
        reference,
        &opts.insecure_registries,
        &opts.auth,
        opts.read_timeout,
    )
}

pub(crate) async fn pull(
    reference: &ImageRef,
    cache: &BlobCache,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PulledImage, PullError> {
    let session = session_for(reference, opts)?;
    let source_name = format!("docker://{reference}");
    let (manifest, bytes, digest, index_digest) =
        platform_manifest(&session, reference, opts, &source_name).await?;
    let resolved = reference.with_digest(digest.clone());
    let oci_ref = resolved.to_oci();

    if manifest.config.size > crate::manifest::MAX_DOCUMENT_SIZE {
        return Err(crate::manifest::ManifestError::TooLarge {
            what: format!("config {} of {source_name}", manifest.config.digest),
            size: manifest.config.size,
            max: crate::manifest::MAX_DOCUMENT_SIZE,
        }
        .into());
    }
    fetch_blob(
        &session,
        &oci_ref,
        &resolved,
        &manifest.config,
        cache,
        &source_name,
        None,
        blob_task(progress, &resolved, &manifest.config),
    )
    .await?;
    let config_bytes = cache.read_small(&manifest.config.digest)?;

    download_layers(
        Arc::new(session),
        &oci_ref,
        &resolved,
        &manifest.layers,
        cache,
        &source_name,
        opts,
        progress,
    )
    .await?;

    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| OCI_MANIFEST.to_owned());
    assemble(
        source_name,
        Some(resolved),
        digest,
        index_digest,
        media_type,
        bytes,
        manifest,
        config_bytes,
        BlobStore::Dir(cache.root().to_owned()),
        true,
    )
}

/// Downloads the layers as separate tasks, at most `opts.concurrency` at once, so hashing,
/// writing and the observers' sinks of different layers run on different cores. The first
/// error wins: the other downloads are aborted and awaited (their partial files stay for the
/// next pull to resume) before it is returned.
#[allow(clippy::too_many_arguments)]
async fn download_layers(
    session: Arc<Session>,
    oci_ref: &oci_client::Reference,
    resolved: &ImageRef,
    layers: &[Descriptor],
    cache: &BlobCache,
    source_name: &str,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<(), PullError> {
    let limit = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, d) in layers.iter().enumerate() {
        let sink = opts
            .observer
            .as_deref()
            .and_then(|o: &dyn LayerObserver| o.layer(i, &layer_of(d)));
        let task = blob_task(progress, resolved, d);
        let (session, oci_ref, resolved, d) = (
            session.clone(),
            oci_ref.clone(),
            resolved.clone(),
            d.clone(),
        );
        let (cache, source_name, limit) = (cache.clone(), source_name.to_owned(), limit.clone());
        set.spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = limit.acquire_owned().await.ok();
            fetch_blob(
                &session,
                &oci_ref,
                &resolved,
                &d,
                &cache,
                &source_name,
                sink,
                task,
            )
            .await
        });
    }
    while let Some(joined) = set.join_next().await {
        let result = joined
            .map_err(|e| PullError::Io {
                path: cache.root().to_owned(),
                source: io::Error::other(e),
            })
            .and_then(|r| r);
        if let Err(e) = result {
            // Nothing of this pull may still run once it has returned.
            set.abort_all();
            while set.join_next().await.is_some() {}
            return Err(e);
        }
    }
    Ok(())
}

fn blob_task(
    progress: &dyn Progress,
    reference: &ImageRef,
    d: &Descriptor,
) -> Box<dyn ProgressTask> {
    let label = format!(
        "{} {}",
        reference.repository,
        crate::source::local::short(&d.digest.to_string())
    );
    progress.task(&label, Some(d.size))
}

fn layer_of(d: &Descriptor) -> Layer {
    Layer {
        digest: d.digest.clone(),
        size: d.size,
        media_type: d.media_type.clone(),
        compression: crate::manifest::Compression::from_media_type(&d.media_type)
            .unwrap_or(crate::manifest::Compression::None),
    }
}

/// Fetches a manifest and checks its bytes against the digest we asked for, if any. The
/// digest is computed here from the bytes: a registry's Docker-Content-Digest header is not
/// trusted on its own.
async fn fetch_manifest(
    session: &Session,
    reference: &ImageRef,
) -> Result<(Vec<u8>, Digest), PullError> {
    let oci_ref = reference.to_oci();
    let shown = reference.requested();
    let shown = shown.as_str();
    let result = session
        .client
        .pull_manifest_raw(&oci_ref, &session.auth, ACCEPTED_MANIFEST_TYPES)
        .await;
    let (bytes, _header_digest) = match result {
        Ok(v) => v,
        // oci-client refuses a body that does not hash to the pinned digest; report it as such.
        Err(oci_client::errors::OciDistributionError::DigestError(e)) => {
            return Err(RegistryError::Protocol {
                registry: session.registry.clone(),
                what: format!("manifest {shown}"),
                detail: format!(
                    "{e}: the registry served content that does not match the pinned digest"
                ),
            }
            .into());
        }
        Err(e) => {
            return Err(session
                .error(e, &reference.repository, Target::Manifest(shown), "pull")
                .into());
        }
    };
    let actual = Digest::of_bytes(&bytes);
    if let Some(expected) = &reference.digest {
        if *expected != actual {
            return Err(RegistryError::PinnedDigest {
                reference: reference.to_string(),
                expected: expected.clone(),
                actual,
            }
            .into());
        }
    }
    Ok((bytes.to_vec(), actual))
}

/// Streams one blob into the cache: nothing for a cached blob (its bytes go to the sink from
/// disk), a Range request when a partial file exists, a full download otherwise. Size and
/// digest are verified over the whole file before it gets its final name.
#[allow(clippy::too_many_arguments)]
async fn fetch_blob(
    session: &Session,
    oci_ref: &oci_client::Reference,
    reference: &ImageRef,
    desc: &Descriptor,
    cache: &BlobCache,
    source_name: &str,
    mut sink: Option<Box<dyn Write + Send>>,
    task: Box<dyn ProgressTask>,
) -> Result<(), PullError> {
    let digest = desc.digest.clone();
    let reservation = {
        let (c, d, size, name) = (
            cache.clone(),
            digest.clone(),
            desc.size,
            source_name.to_owned(),
        );
        tokio::task::spawn_blocking(move || c.reserve(&d, size, &name))
            .await
            .map_err(|e| PullError::Io {
                path: cache.root().to_owned(),
                source: io::Error::other(e),
            })??
    };
    let mut partial = match reservation {
        Reservation::Present(path) => {
            cache.stats_handle().hit();
            if let Some(sink) = sink.as_mut() {
                let mut f = std::fs::File::open(&path).map_err(|source| PullError::Io {
                    path: path.clone(),
                    source,
                })?;
                io::copy(&mut f, sink)
                    .map_err(|source| observer_error(source_name, &digest, source))?;
            }
            task.finish("cached");
            return Ok(());
        }
        Reservation::Write(p) => p,
    };
    let digest_str = digest.to_string();
    let blob_err = |e| session.error(e, &reference.repository, Target::Blob(&digest), "pull");
    let resumed = partial.offset() > 0;
    let stream_error = if partial.offset() == partial.expected_size() {
        // Every byte arrived before the last run stopped (it died before the rename): a
        // Range request would be answered 416, so only the verification is left to do.
        if let Some(sink) = sink.as_mut() {
            partial.replay_prefix(sink)?;
        }
        None
    } else {
        let body = if resumed {
            match session
                .client
                .pull_blob_stream_partial(oci_ref, digest_str.as_str(), partial.offset(), None)
                .await
            {
                Ok(BlobResponse::Partial(s)) => {
                    if let Some(sink) = sink.as_mut() {
                        partial.replay_prefix(sink)?;
                    }
                    task.advance(partial.offset());
                    s
                }
                // The registry ignored the Range header: start over.
                Ok(BlobResponse::Full(s)) => {
                    partial.restart()?;
                    s
                }
                Err(e) => return Err(blob_err(e).into()),
            }
        } else {
            session
                .client
                .pull_blob_stream(oci_ref, digest_str.as_str())
                .await
                .map_err(blob_err)?
        };
        stream_into(
            body,
            &mut partial,
            sink.as_mut(),
            cache,
            &*task,
            source_name,
            &digest,
        )
        .await?
    };
    let resumed = resumed && partial.resumed();
    // oci-client's own verifier reports a digest mismatch as a stream error after the last
    // byte; with every byte in hand our commit gives the precise error (and removes the file).
    if let Some(e) = stream_error {
        if partial.offset() < partial.expected_size() {
            task.fail("interrupted");
            // The partial file stays for the next pull to resume.
            return Err(RegistryError::Protocol {
                registry: session.registry.clone(),
                what: format!(
                    "download of blob {digest} (kept {} bytes to resume)",
                    partial.offset()
                ),
                detail: e.to_string(),
            }
            .into());
        }
    }
    match partial.commit() {
        Ok(_) => {
            cache.stats_handle().fetched(resumed);
            task.finish(if resumed { "resumed" } else { "downloaded" });
            Ok(())
        }
        Err(e) => {
            task.fail("corrupt");
            Err(e.into())
        }
    }
}

/// Copies a response body into the partial file (and the observer). Returns the stream's
/// error, if it ended with one, for the caller to judge.
async fn stream_into(
    mut body: oci_client::client::SizedStream,
    partial: &mut crate::cache::PartialBlob,
    mut sink: Option<&mut Box<dyn Write + Send>>,
    cache: &BlobCache,
    task: &dyn ProgressTask,
    source_name: &str,
    digest: &Digest,
) -> Result<Option<io::Error>, PullError> {
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => {
                partial.write(&bytes)?;
                if let Some(sink) = sink.as_mut() {
                    sink.write_all(&bytes)
                        .map_err(|source| observer_error(source_name, digest, source))?;
                }
                cache.stats_handle().bytes(bytes.len() as u64);
                task.advance(bytes.len() as u64);
            }
            Err(e) => return Ok(Some(e)),
        }
    }
    Ok(None)
}

fn observer_error(source_name: &str, digest: &Digest, source: io::Error) -> PullError {
    PullError::LayerRead {
        source_name: source_name.to_owned(),
        digest: digest.clone(),
        source,
    }
}

/// The image manifest `reference` names for `opts.platform` (through an index when the
/// registry serves one), read without pulling any layer: what an image will take is known
/// from its layers' sizes before anything is downloaded.
pub async fn image_manifest(
    reference: &ImageRef,
    opts: &PullOptions,
) -> Result<ImageManifest, PullError> {
    let session = session_for(reference, opts)?;
    let source_name = format!("docker://{reference}");
    let (manifest, ..) = platform_manifest(&session, reference, opts, &source_name).await?;
    Ok(manifest)
}

/// The image manifest `reference` names for `opts.platform`, through an index when the
/// registry serves one: the manifest, its bytes, its digest, and the index's digest if any.
async fn platform_manifest(
    session: &Session,
    reference: &ImageRef,
    opts: &PullOptions,
    source_name: &str,
) -> Result<(ImageManifest, Vec<u8>, Digest, Option<Digest>), PullError> {
    let (bytes, digest) = fetch_manifest(session, reference).await?;
    let what = format!("manifest {digest} of {source_name}");
    Ok(match Manifest::parse(&bytes, None, &what)? {
        Manifest::Image(m) => (*m, bytes, digest, None),
        Manifest::Index(index) => {
            let chosen = select_platform(&index, &opts.platform, source_name)?.clone();
            let pinned = reference.with_digest(chosen.digest.clone());
            let (child, child_digest) = fetch_manifest(session, &pinned).await?;
            let what = format!("manifest {child_digest} of {source_name}");
            match Manifest::parse(&child, Some(&chosen.media_type), &what)? {
                Manifest::Image(m) => (*m, child, child_digest, Some(digest)),
                Manifest::Index(_) => {
                    return Err(PullError::NestedIndex {
                        source_name: source_name.to_owned(),
                        wanted: opts.platform.to_string(),
                    });
                }
            }
        }
    })
}

/// The digest of what `reference`'s tag points to now (the index for multi-platform images),
/// computed from the manifest bytes the registry serves.
pub async fn resolve_digest(reference: &ImageRef, opts: &PullOptions) -> Result<Digest, PullError> {
    let session = session_for(reference, opts)?;
    let (bytes, digest) = fetch_manifest(&session, reference).await?;
    // Parsing refuses what is not an image (schema 1, artifacts) before it gets locked.
    Manifest::parse(
        &bytes,
        None,
        &format!("manifest {digest} of docker://{reference}"),
    )?;
    Ok(digest)
}
