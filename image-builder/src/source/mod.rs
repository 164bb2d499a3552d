//! Image sources in skopeo's transport syntax and the pulled image they resolve to.
//!
//! - `docker://REF`: a registry (`docker://alpine:3.20`, `docker://127.0.0.1:5000/x/y@sha256:...`)
//! - `oci:PATH[:TAG]`: an OCI image layout directory
//! - `oci-archive:FILE[:TAG]`: a tar of an OCI layout, read in place
//!
//! As in skopeo, the path ends at the first ':' after the transport; a path containing ':'
//! cannot be named.

pub(crate) mod local;

use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::auth::AuthSource;
use crate::cache::{BlobCache, CacheError};
use crate::digest::Digest;
use crate::manifest::{
    Compression, Descriptor, ImageConfig, ImageIndex, ImageManifest, ManifestError,
};
use crate::oci_layout::{BlobStore, LayoutError};
use crate::platform::Platform;
use crate::progress::Progress;
use crate::reference::{ImageRef, ReferenceError};
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourceError {
    #[error("image source is empty: write docker://REF, oci:PATH[:TAG] or oci-archive:FILE[:TAG]")]
    Empty,
    #[error(
        "image source {input:?} has no transport: write docker://{input} for a registry, \
         oci:{input} for an OCI layout directory or oci-archive:{input} for a layout tar"
    )]
    NoTransport { input: String },
    #[error(
        "image source {input:?}: unknown transport {transport:?}; supported: docker://, oci:, oci-archive: (for a registry image write docker://{input})"
    )]
    UnknownTransport { input: String, transport: String },
    #[error("image source {input:?}: the docker transport is written docker://REF (two slashes)")]
    DockerSlashes { input: String },
    #[error(
        "image source {input:?}: {transport}: needs a path, e.g. {transport}:/srv/images/app:1.0"
    )]
    EmptyPath {
        input: String,
        transport: &'static str,
    },
    #[error(
        "image source {input:?}: tag {tag:?} is invalid: layout tags are letters, digits and . _ - + / : @ \
         and may not be empty"
    )]
    LayoutTag { input: String, tag: String },
    #[error("image source {input:?}: {source}")]
    Reference {
        input: String,
        source: ReferenceError,
    },
}

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Registry(ImageRef),
    OciLayout { path: PathBuf, tag: Option<String> },
    OciArchive { path: PathBuf, tag: Option<String> },
}

impl Source {
    pub fn parse(input: &str) -> Result<Self, SourceError> {
        if input.is_empty() {
            return Err(SourceError::Empty);
        }
        if let Some(reference) = input.strip_prefix("docker://") {
            return ImageRef::parse(reference)
                .map(Source::Registry)
                .map_err(|source| SourceError::Reference {
                    input: input.to_owned(),
                    source,
                });
        }
        let Some((transport, rest)) = input.split_once(':') else {
            return Err(SourceError::NoTransport {
                input: input.to_owned(),
            });
        };
        match transport {
            "docker" => Err(SourceError::DockerSlashes {
                input: input.to_owned(),
            }),
            "oci" => {
                let (path, tag) = split_path_tag(input, rest, "oci")?;
                Ok(Source::OciLayout { path, tag })
            }
            "oci-archive" => {
                let (path, tag) = split_path_tag(input, rest, "oci-archive")?;
                Ok(Source::OciArchive { path, tag })
            }
            // "host:5000/x" or "alpine:3" without a transport: a registry reference mistaken
            // for a source.
            t if t.contains('.')
                || t.contains('/')
                || rest.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                Err(SourceError::NoTransport {
                    input: input.to_owned(),
                })
            }
            t => Err(SourceError::UnknownTransport {
                input: input.to_owned(),
                transport: t.to_owned(),
            }),
        }
    }
}

fn split_path_tag(
    input: &str,
    rest: &str,
    transport: &'static str,
) -> Result<(PathBuf, Option<String>), SourceError> {
    let (path, tag) = match rest.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(SourceError::EmptyPath {
            input: input.to_owned(),
            transport,
        });
    }
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-+/:@".contains(&b));
        if !ok {
            return Err(SourceError::LayoutTag {
                input: input.to_owned(),
                tag: t.to_owned(),
            });
        }
    }
    Ok((PathBuf::from(path), tag.map(str::to_owned)))
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, path, tag) = match self {
            Source::Registry(r) => return write!(f, "docker://{r}"),
            Source::OciLayout { path, tag } => ("oci", path, tag),
            Source::OciArchive { path, tag } => ("oci-archive", path, tag),
        };
        write!(f, "{scheme}:{}", path.display())?;
        if let Some(t) = tag {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

impl FromStr for Source {
    type Err = SourceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Receives each layer's bytes as they arrive, e.g. to index a layer while it downloads.
/// Called once per layer; the returned sink gets the whole compressed blob in order, exactly
/// once, whether it comes from the network, a resumed partial file, the cache or a layout.
/// Dropping the sink marks the end; a failed pull drops it early, so the caller must also
/// look at the pull's result. Layers download concurrently, so the sinks of different layers
/// are fed interleaved (each in its own byte order). Sinks run on the pulling task: hand
/// heavy work (decompression, indexing) to a thread through a channel.
pub trait LayerObserver: Send + Sync {
    fn layer(&self, index: usize, layer: &Layer) -> Option<Box<dyn Write + Send>>;
}

impl<F> LayerObserver for F
where
    F: Fn(usize, &Layer) -> Option<Box<dyn Write + Send>> + Send + Sync,
{
    fn layer(&self, index: usize, layer: &Layer) -> Option<Box<dyn Write + Send>> {
        self(index, layer)
    }
}

#[derive(Clone)]
pub struct PullOptions {
    /// The platform picked out of an image index. Defaults to the host's.
    pub platform: Platform,
    /// Registries (`host[:port]`) spoken to over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    pub auth: AuthSource,
    pub observer: Option<Arc<dyn LayerObserver>>,
    /// Layers downloaded at once.
    pub concurrency: usize,
    /// How long a registry may send nothing (no answer, or a stalled download) before the
    /// pull fails naming it.
    pub read_timeout: std::time::Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            platform: Platform::host().unwrap_or_else(|_| Platform::linux_amd64()),
            insecure_registries: Vec::new(),
            auth: AuthSource::Environment,
            observer: None,
            concurrency: 4,
            read_timeout: crate::registry::READ_TIMEOUT,
        }
    }
}

impl fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullOptions")
            .field("platform", &self.platform)
            .field("insecure_registries", &self.insecure_registries)
            .field("auth", &self.auth)
            .field("observer", &self.observer.is_some())
            .field("concurrency", &self.concurrency)
            .field("read_timeout", &self.read_timeout)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub compression: Compression,
}

impl Layer {
    fn from_descriptor(d: &Descriptor) -> Self {
        Self {
            digest: d.digest.clone(),
            size: d.size,
            media_type: d.media_type.clone(),
            // Manifest::parse refused unknown layer types already.
            compression: Compression::from_media_type(&d.media_type).unwrap_or(Compression::None),
        }
    }
}

/// A resolved image whose blobs are all present and verified.
#[derive(Clone, Debug)]
pub struct PulledImage {
    /// The source as given, for messages.
    pub source: String,
    /// Registry pulls: the reference pinned to the platform manifest's digest.
    pub reference: Option<ImageRef>,
    pub manifest_digest: Digest,
    /// The digest of the index the manifest was chosen from, if there was one.
    pub index_digest: Option<Digest>,
    pub manifest_media_type: String,
    pub manifest_bytes: Vec<u8>,
    pub manifest: ImageManifest,
    pub config_descriptor: Descriptor,
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    pub platform: Platform,
    store: BlobStore,
    /// Blobs in `store` were verified when written (the cache) rather than on every read.
    verified_at_rest: bool,
}

impl PulledImage {
    pub fn blob_store(&self) -> &BlobStore {
        &self.store
    }

    /// Opens layer `index` for reading (compressed as stored; see `layers[index].compression`).
    pub fn open_layer(&self, index: usize) -> Result<Box<dyn Read + Send>, PullError> {
        let layer = self
            .layers
            .get(index)
            .ok_or_else(|| PullError::NoSuchLayer {
                source_name: self.source.clone(),
                index,
                count: self.layers.len(),
            })?;
        self.open_blob(&layer.digest, layer.size)
    }

    /// Opens any blob of the image (layer or config).
    pub fn open_blob(&self, digest: &Digest, size: u64) -> Result<Box<dyn Read + Send>, PullError> {
        if self.verified_at_rest {
            let loc = self.store.locate(digest).ok_or_else(|| {
                PullError::Cache(CacheError::Missing {
                    digest: digest.clone(),
                    root: self.store.location().into(),
                })
            })?;
            let f = loc.open().map_err(|source| PullError::Io {
                path: loc.path.clone(),
                source,
            })?;
            return Ok(Box::new(f));
        }
        Ok(Box::new(self.store.open_verified(digest, size, "blob")?))
    }

    /// Every blob the manifest references: config first, then layers.
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut out = vec![self.config_descriptor.clone()];
        out.extend(self.manifest.layers.iter().cloned());
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "{source_name} has no image for platform {wanted}; it offers {available}. Pass one of those as the platform"
    )]
    Platform {
        source_name: String,
        wanted: String,
        available: String,
    },
    #[error(
        "{source_name}: the index entry for {wanted} points to another index; nested indexes are not supported"
    )]
    NestedIndex { source_name: String, wanted: String },
    #[error("{source_name}: layer {index} does not exist, the image has {count} layers")]
    NoSuchLayer {
        source_name: String,
        index: usize,
        count: usize,
    },
    #[error("{source_name}: layer {digest} could not be read: {source}")]
    LayerRead {
        source_name: String,
        digest: Digest,
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Picks the manifest for `want` out of an index: the first entry whose platform accepts.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    want: &Platform,
    source_name: &str,
) -> Result<&'a Descriptor, PullError> {
    if let Some(d) = index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| want.accepts(p)))
    {
        if d.is_index() {
            return Err(PullError::NestedIndex {
                source_name: source_name.to_owned(),
                wanted: want.to_string(),
            });
        }
        return Ok(d);
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(Platform::to_string)
        .collect();
    Err(PullError::Platform {
        source_name: source_name.to_owned(),
        wanted: want.to_string(),
        available: if available.is_empty() {
            "no platforms".to_owned()
        } else {
            available.join(", ")
        },
    })
}

/// Resolves `source` to one image for `opts.platform`, with every blob verified. Registry
/// blobs land in `cache`; layouts and archives are read in place (not copied).
pub async fn pull(
    source: &Source,
    cache: &BlobCache,
    opts: &PullOptions,
    progress: &dyn Progress,
) -> Result<PulledImage, PullError> {
    let image = match source {
        Source::Registry(r) => crate::registry::pull(r, cache, opts, progress).await?,
        Source::OciLayout { path, tag } => {
            let layout = crate::oci_layout::OciLayout::open_dir(path)?;
            local::pull_layout(source, &layout, tag.as_deref(), opts, progress)?
        }
        Source::OciArchive { path, tag } => {
            let layout = crate::oci_layout::OciLayout::open_archive(path)?;
            local::pull_layout(source, &layout, tag.as_deref(), opts, progress)?
        }
    };
    // A single-platform image is taken as named (the operator pointed at it), but a
    // mismatch is worth a warning: it will not run on this platform.
    let built_for = &image.platform;
    if !built_for.os.is_empty() && !opts.platform.accepts(built_for) {
        progress.warn(&format!(
            "{} is built for {built_for}, not {}: it will not run here",
            image.source, opts.platform
        ));
    }
    Ok(image)
}

/// Assembles the pulled image once manifest and config are known.
#[allow(clippy::too_many_arguments)]
pub(crate) fn assemble(
    source: String,
    reference: Option<ImageRef>,
    manifest_digest: Digest,
    index_digest: Option<Digest>,
    manifest_media_type: String,
    manifest_bytes: Vec<u8>,
    manifest: ImageManifest,
    config_bytes: Vec<u8>,
    store: BlobStore,
    verified_at_rest: bool,
) -> Result<PulledImage, PullError> {
    let config = ImageConfig::parse(
        &config_bytes,
        &format!("config {} of {source}", manifest.config.digest),
    )?;
    let layers = manifest.layers.iter().map(Layer::from_descriptor).collect();
    Ok(PulledImage {
        platform: config.platform(),
        source,
        reference,
        manifest_digest,
        index_digest,
        manifest_media_type,
        manifest_bytes,
        config_descriptor: manifest.config.clone(),
        manifest,
        config_bytes,
        config,
        layers,
        store,
        verified_at_rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transports() {
        let s = Source::parse("docker://alpine:3.20").unwrap();
        assert_eq!(s.to_string(), "docker://docker.io/library/alpine:3.20");
        let s = Source::parse("oci:/srv/img:1.0").unwrap();
        assert_eq!(
            s,
            Source::OciLayout {
                path: "/srv/img".into(),
                tag: Some("1.0".into())
            }
        );
        let s = Source::parse("oci:rel/dir").unwrap();
        assert_eq!(
            s,
            Source::OciLayout {
                path: "rel/dir".into(),
                tag: None
            }
        );
        let s = Source::parse("oci-archive:/tmp/a.tar:v1").unwrap();
        assert_eq!(
            s,
            Source::OciArchive {
                path: "/tmp/a.tar".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(s.to_string(), "oci-archive:/tmp/a.tar:v1");
    }

    #[test]
    fn precise_errors() {
        assert_eq!(Source::parse(""), Err(SourceError::Empty));
        assert!(matches!(
            Source::parse("alpine"),
            Err(SourceError::NoTransport { .. })
        ));
        assert!(matches!(
            Source::parse("alpine:3.20"),
            Err(SourceError::NoTransport { .. })
        ));
        assert!(matches!(
            Source::parse("127.0.0.1:5000/x"),
            Err(SourceError::NoTransport { .. })
        ));
        assert!(matches!(
            Source::parse("docker:alpine"),
            Err(SourceError::DockerSlashes { .. })
        ));
        assert!(matches!(
            Source::parse("dir:/x"),
            Err(SourceError::UnknownTransport { .. })
        ));
        assert!(matches!(
            Source::parse("oci:"),
            Err(SourceError::EmptyPath { .. })
        ));
        assert!(matches!(
            Source::parse("oci:/x:"),
            Err(SourceError::LayoutTag { .. })
        ));
        let e = Source::parse("docker://Alpine").unwrap_err();
        assert!(e.to_string().contains("uppercase"), "{e}");
        let e = Source::parse("alpine:3.20").unwrap_err();
        assert!(e.to_string().contains("docker://alpine:3.20"), "{e}");
    }
}
