//! OCI image layouts (`oci-layout`, `index.json`, `blobs/sha256/...`), read from a directory
//! or an `oci-archive:` tar, and written to a directory with blobs deduplicated.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::archive::{ArchiveError, ArchiveIndex, BlobLocation};
use crate::cache::{BlobCache, CacheError};
use crate::digest::{Digest, VerifyingReader};
use crate::manifest::{Descriptor, ImageIndex, OCI_INDEX, REF_NAME_ANNOTATION};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{location} is not an OCI image layout: {reason}")]
    NotALayout { location: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{location}/index.json is invalid: {source}")]
    Index {
        location: String,
        source: serde_json::Error,
    },
    #[error("{location} has no image tagged {tag:?}; tags present: {available}")]
    NoSuchTag {
        location: String,
        tag: String,
        available: String,
    },
    #[error(
        "{location} holds {count} images; name one with {scheme}:{location}:TAG (tags present: {available})"
    )]
    Ambiguous {
        location: String,
        scheme: &'static str,
        count: usize,
        available: String,
    },
    #[error("{location} holds no image (index.json lists no manifests)")]
    Empty { location: String },
    #[error("{location} lacks blob {digest}, which its {what} references")]
    MissingBlob {
        location: String,
        digest: Digest,
        what: String,
    },
    #[error("{location}: blob {digest} is corrupt: {source}")]
    Corrupt {
        location: String,
        digest: Digest,
        source: io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot write OCI layout {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// Where a layout's blobs live.
#[derive(Clone, Debug)]
pub enum BlobStore {
    /// A directory with `blobs/sha256/<hex>` (an OCI layout or our cache).
    Dir(PathBuf),
    /// Members of an uncompressed tar, read in place.
    Archive(Arc<ArchiveIndex>),
}

impl BlobStore {
    pub fn location(&self) -> String {
        match self {
            BlobStore::Dir(p) => p.display().to_string(),
            BlobStore::Archive(a) => a.path().display().to_string(),
        }
    }

    pub fn locate(&self, digest: &Digest) -> Option<BlobLocation> {
        let member = format!("blobs/{}/{}", digest.algorithm(), digest.hex());
        match self {
            BlobStore::Dir(root) => {
                let path = root.join(&member);
                let len = fs::metadata(&path).ok().filter(|m| m.is_file())?.len();
                Some(BlobLocation {
                    path,
                    offset: 0,
                    len,
                })
            }
            BlobStore::Archive(a) => a.locate(&member),
        }
    }

    /// Opens a blob as a reader that fails at EOF unless size and digest match.
    pub fn open_verified(
        &self,
        digest: &Digest,
        size: u64,
        what: &str,
    ) -> Result<VerifyingReader<io::Take<fs::File>>, LayoutError> {
        let loc = self
            .locate(digest)
            .ok_or_else(|| LayoutError::MissingBlob {
                location: self.location(),
                digest: digest.clone(),
                what: what.to_owned(),
            })?;
        // Limited to the stored length; the verifier then reports a size that differs from
        // the descriptor's, in either direction.
        let reader = loc.open().map_err(|source| LayoutError::Io {
            path: loc.path.clone(),
            source,
        })?;
        Ok(VerifyingReader::new(
            reader,
            digest.clone(),
            size,
            format!("{what} {digest} in {}", self.location()),
        ))
    }

    /// Reads and verifies a small blob (manifest, config).
    pub fn read_verified(
        &self,
        digest: &Digest,
        size: u64,
        what: &str,
    ) -> Result<Vec<u8>, LayoutError> {
        if size > crate::manifest::MAX_DOCUMENT_SIZE {
            return Err(LayoutError::NotALayout {
                location: self.location(),
                reason: format!(
                    "{what} {digest} claims {size} bytes, more than a manifest or config can be"
                ),
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        self.open_verified(digest, size, what)?
            .read_to_end(&mut out)
            .map_err(|source| LayoutError::Corrupt {
                location: self.location(),
                digest: digest.clone(),
                source,
            })?;
        Ok(out)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMarker {
    image_layout_version: String,
}

/// A layout opened for reading.
#[derive(Debug)]
pub struct OciLayout {
    store: BlobStore,
    scheme: &'static str,
    index: ImageIndex,
}

impl OciLayout {
    pub fn open_dir(path: &Path) -> Result<Self, LayoutError> {
        let location = path.display().to_string();
        let read = |name: &str| {
            let p = path.join(name);
            fs::read(&p).map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    LayoutError::NotALayout {
                        location: location.clone(),
                        reason: format!("it has no {name} file"),
                    }
                } else {
                    LayoutError::Io { path: p, source }
                }
            })
        };
        let marker = read("oci-layout")?;
        let index = read("index.json")?;
        Self::from_parts(BlobStore::Dir(path.to_owned()), "oci", &marker, &index)
    }

    pub fn open_archive(path: &Path) -> Result<Self, LayoutError> {
        let archive = ArchiveIndex::scan(path)?;
        let marker = archive.read_member("oci-layout")?;
        let index = archive.read_member("index.json")?;
        Self::from_parts(
            BlobStore::Archive(Arc::new(archive)),
            "oci-archive",
            &marker,
            &index,
        )
    }

    fn from_parts(
        store: BlobStore,
        scheme: &'static str,
        marker: &[u8],
        index: &[u8],
    ) -> Result<Self, LayoutError> {
        let location = store.location();
        let marker: LayoutMarker =
            serde_json::from_slice(marker).map_err(|e| LayoutError::NotALayout {
                location: location.clone(),
                reason: format!("oci-layout is not {{\"imageLayoutVersion\": \"1.0.0\"}} ({e})"),
            })?;
        if !marker.image_layout_version.starts_with("1.") {
            return Err(LayoutError::NotALayout {
                location,
                reason: format!("layout version {} is not 1.x", marker.image_layout_version),
            });
        }
        let index: ImageIndex =
            serde_json::from_slice(index).map_err(|source| LayoutError::Index {
                location: location.clone(),
                source,
            })?;
        Ok(Self {
            store,
            scheme,
            index,
        })
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    pub fn index(&self) -> &ImageIndex {
        &self.index
    }

    /// The manifest (or nested index) named `tag`, or the only one when no tag is given.
    pub fn resolve(&self, tag: Option<&str>) -> Result<&Descriptor, LayoutError> {
        let location = self.store.location();
        let available = || {
            let names: Vec<&str> = self
                .index
                .manifests
                .iter()
                .filter_map(Descriptor::ref_name)
                .collect();
            if names.is_empty() {
                "(none)".to_owned()
            } else {
                names.join(", ")
            }
        };
        match tag {
            Some(tag) => self
                .index
                .manifests
                .iter()
                .find(|d| d.ref_name() == Some(tag))
                .ok_or_else(|| LayoutError::NoSuchTag {
                    location,
                    tag: tag.to_owned(),
                    available: available(),
                }),
            None => match self.index.manifests.as_slice() {
                [] => Err(LayoutError::Empty { location }),
                [only] => Ok(only),
                many => Err(LayoutError::Ambiguous {
                    location,
                    scheme: self.scheme,
                    count: many.len(),
                    available: available(),
                }),
            },
        }
    }
}

/// Writes an OCI layout directory. Existing content is kept: index entries with the same
/// ref name are replaced, blobs already present are not rewritten.
pub struct OciLayoutWriter {
    root: PathBuf,
    blobs: BlobCache,
    index: ImageIndex,
}

impl OciLayoutWriter {
    pub fn create(root: &Path) -> Result<Self, LayoutError> {
        let werr = |source| LayoutError::Write {
            path: root.to_owned(),
            source,
        };
        fs::create_dir_all(root).map_err(werr)?;
        let blobs = BlobCache::open(root)?;
        let index_path = root.join("index.json");
        let index = match fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| LayoutError::Index {
                location: root.display().to_string(),
                source,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => ImageIndex {
                schema_version: 2,
                media_type: Some(OCI_INDEX.to_owned()),
                manifests: Vec::new(),
                annotations: None,
                extra: Default::default(),
            },
            Err(source) => {
                return Err(LayoutError::Io {
                    path: index_path,
                    source,
                });
            }
        };
        write_atomic(
            &root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        Ok(Self {
            root: root.to_owned(),
            blobs,
            index,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds a blob from a reader (verified against `digest`/`size`), skipping it when present.
    pub fn add_blob(
        &mut self,
        digest: &Digest,
        size: u64,
        reader: &mut dyn Read,
    ) -> Result<(), LayoutError> {
        let source = format!("the blob being written to {}", self.root.display());
        self.blobs
            .insert_reader(digest, size, &source, reader, None)?;
        Ok(())
    }

    /// Adds a small blob held in memory; returns its digest.
    pub fn add_bytes(&mut self, bytes: &[u8]) -> Result<Digest, LayoutError> {
        let digest = Digest::of_bytes(bytes);
        self.add_blob(&digest, bytes.len() as u64, &mut &bytes[..])?;
        Ok(digest)
    }

    /// Stores a manifest (or index) and lists it in index.json, under `ref_name` if given.
    pub fn add_manifest(
        &mut self,
        bytes: &[u8],
        media_type: &str,
        ref_name: Option<&str>,
        platform: Option<crate::platform::Platform>,
    ) -> Result<Descriptor, LayoutError> {
        let digest = self.add_bytes(bytes)?;
        let mut desc = Descriptor::new(media_type, digest, bytes.len() as u64);
        desc.platform = platform;
        if let Some(name) = ref_name {
            desc.annotations = Some(BTreeMap::from([(
                REF_NAME_ANNOTATION.to_owned(),
                name.to_owned(),
            )]));
            self.index.manifests.retain(|d| d.ref_name() != Some(name));
        }
        self.index.manifests.push(desc.clone());
        Ok(desc)
    }

    /// Copies a pulled image (blobs streamed, manifest bytes unchanged) under `ref_name`.
    /// Returns the manifest descriptor as listed in index.json.
    pub fn add_image(
        &mut self,
        image: &crate::source::PulledImage,
        ref_name: Option<&str>,
    ) -> Result<Descriptor, crate::source::PullError> {
        for blob in image.blobs() {
            let mut reader = image.open_blob(&blob.digest, blob.size)?;
            self.add_blob(&blob.digest, blob.size, &mut reader)?;
        }
        Ok(self.add_manifest(
            &image.manifest_bytes,
            &image.manifest_media_type,
            ref_name,
            None,
        )?)
    }

    /// Writes index.json (atomically). Call after the last `add_*`.
    pub fn finish(self) -> Result<(), LayoutError> {
        let bytes = serde_json::to_vec(&self.index).map_err(|source| LayoutError::Index {
            location: self.root.display().to_string(),
            source,
        })?;
        write_atomic(&self.root.join("index.json"), &bytes)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let werr = |source| LayoutError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(werr)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(werr)?;
    fs::rename(&tmp, path).map_err(werr)
}
