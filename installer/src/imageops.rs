//! Image operations that join the image pipeline to Incus and to the local pin state:
//! streaming a unified tarball into `POST /1.0/images` without touching the disk, making an
//! alias point at an image idempotently, and pinning unlocked base images on first pull.
//!
//! The import pipe: a blocking thread flattens the image into a [`ChannelWriter`] (bounded:
//! at most [`PIPE_CHUNKS`] chunks of [`CHUNK`] bytes in flight, so memory stays flat whatever
//! the image size) that hashes what it writes; the receiving end is the request body. Every
//! layer is read and checked before the request starts, so a bad image never reaches Incus.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use atlas_image::build::{AtlasImage, BuildError, PreparedUnified};
use atlas_image::digest::Digest;
use atlas_image::layer::LayerIndex;
use atlas_image::lock::ImagesLock;
use atlas_image::progress::{Progress, ProgressTask};
use atlas_image::reference::ImageRef;
use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::incus::{Client, ImageImport, IncusError, OptionalExt};

/// The image property naming the unified tarball's bill of materials member and its sha256.
pub const SBOM_PROPERTY: &str = "atlas.sbom";

/// Bytes per chunk sent to Incus.
pub const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the flattening thread and the HTTP body.
pub const PIPE_CHUNKS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ImageOpsError {
    #[error(transparent)]
    Build(Box<BuildError>),
    #[error("importing {image} into Incus: {source}")]
    Incus {
        image: String,
        #[source]
        source: Box<IncusError>,
    },
    #[error(
        "importing {image}: the upload stopped: {reason}. Nothing was imported; run the import again"
    )]
    Stream { image: String, reason: String },
    #[error("alias {alias} in Incus: {source}")]
    Alias {
        alias: String,
        #[source]
        source: Box<IncusError>,
    },
    #[error("pin state {path}: {reason}")]
    Pins { path: PathBuf, reason: String },
}

impl From<BuildError> for ImageOpsError {
    fn from(e: BuildError) -> Self {
        ImageOpsError::Build(Box::new(e))
    }
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOutcome {
    /// The Incus fingerprint (SHA-256 of the tarball).
    pub fingerprint: String,
    /// False when Incus already had these exact bytes (re-import: nothing changed).
    pub created: bool,
    pub tar_bytes: u64,
    /// Aliases now pointing at `fingerprint`, with what was done to each.
    pub aliases: Vec<(String, AliasChange)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasChange {
    Created,
    Moved,
    Unchanged,
}

impl AliasChange {
    pub fn as_str(self) -> &'static str {
        match self {
            AliasChange::Created => "created",
            AliasChange::Moved => "updated",
            AliasChange::Unchanged => "unchanged",
        }
    }
}

/// A `Write` that hands fixed-size chunks to an async receiver and hashes everything.
///
/// Chunk buffers come back when the HTTP stack drops them and are used again: a fresh
/// buffer this size per chunk would be a map and unmap of memory each time under musl.
pub struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    returned: std::sync::mpsc::Receiver<Vec<u8>>,
    give_back: std::sync::mpsc::Sender<Vec<u8>>,
    hash: Sha256,
    written: u64,
    task: Option<Arc<dyn ProgressTask>>,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<io::Result<Bytes>>, task: Option<Arc<dyn ProgressTask>>) -> Self {
        let (give_back, returned) = std::sync::mpsc::channel();
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            returned,
            give_back,
            hash: Sha256::new(),
            written: 0,
            task,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = match self.returned.try_recv() {
            Ok(mut b) => {
                b.clear();
                b
            }
            Err(_) => Vec::with_capacity(CHUNK),
        };
        let chunk = std::mem::replace(&mut self.buf, next);
        self.hash.update(&chunk);
        let n = chunk.len() as u64;
        let owner = PooledChunk {
            buf: chunk,
            home: self.give_back.clone(),
        };
        self.tx
            .blocking_send(Ok(Bytes::from_owner(owner)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "Incus closed the upload"))?;
        self.written += n;
        if let Some(t) = &self.task {
            t.advance(n);
        }
        Ok(())
    }

    /// Sends what is buffered and returns (sha256 hex, bytes).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        self.send()?;
        Ok((hex::encode(self.hash.clone().finalize()), self.written))
    }

    /// Ends the body with an error, so the HTTP request fails instead of completing.
    pub fn abort(self, reason: String) {
        let _ = self.tx.blocking_send(Err(io::Error::other(reason)));
    }
}

/// A chunk's buffer that goes back to its [`ChannelWriter`] when the last `Bytes` of it drops.
struct PooledChunk {
    buf: Vec<u8>,
    home: std::sync::mpsc::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        // The writer may be finished; then the buffer is simply freed.
        let _ = self.home.send(std::mem::take(&mut self.buf));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Streams the unified tarball of `image` into Incus (`client`'s project) and points
/// `aliases` at it. `indexes` are base layer indexes taken during the pull (may be empty). A re-import of the same image finds the same fingerprint and is not an
/// error; aliases are created or moved only when needed.
pub async fn import(
    client: &Client,
    image: &AtlasImage,
    indexes: Vec<Option<LayerIndex>>,
    aliases: &[String],
    progress: &dyn Progress,
) -> Result<ImportOutcome, ImageOpsError> {
    let name = image.base.source.clone();
    let prepared = {
        let image = image.clone();
        tokio::task::spawn_blocking(move || {
            PreparedUnified::with_indexes(&image, indexes, 0)
                .map(Arc::new)
                .map_err(ImageOpsError::from)
        })
        .await
        .map_err(|e| ImageOpsError::Stream {
            image: name.clone(),
            reason: e.to_string(),
        })??
    };
    let task: Arc<dyn ProgressTask> = Arc::from(progress.task(&format!("import {name}"), None));
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(PIPE_CHUNKS);
    let writer_task = Some(Arc::clone(&task));
    let for_producer = Arc::clone(&prepared);
    let producer = tokio::task::spawn_blocking(move || {
        let prepared = for_producer;
        let mut w = ChannelWriter::new(tx, writer_task);
        match prepared.write(&mut w) {
            Ok(_) => w.finish().map_err(|e| e.to_string()),
            Err(e) => {
                let reason = e.to_string();
                w.abort(reason.clone());
                Err(reason)
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body = reqwest::Body::wrap_stream(stream);
    let mut import = ImageImport {
        properties: image.incus_properties(),
        ..ImageImport::default()
    };
    // Where the bill of materials is (`image inspect --sbom` reads it back) and its sha256.
    import.properties.insert(
        SBOM_PROPERTY.to_owned(),
        format!(
            "{} sha256:{}",
            atlas_image::build::SBOM_MEMBER,
            hex::encode(Sha256::digest(prepared.sbom()))
        ),
    );
    import.properties.retain(|k, _| k != "type");
    let answer = client.import_image(body, &import).await;
    let produced = producer.await.map_err(|e| ImageOpsError::Stream {
        image: name.clone(),
        reason: e.to_string(),
    })?;
    let (fingerprint, created, tar_bytes) = match (answer, produced) {
        (Err(e), Err(reason)) if !e.is_already_exists() => {
            // The request failed and took the pipe down with it: Incus' answer is the cause.
            task.fail(&reason);
            return Err(ImageOpsError::Stream {
                image: name,
                reason: format!("{reason} (Incus said: {e})"),
            });
        }
        (Ok(_), Err(reason)) => {
            task.fail(&reason);
            return Err(ImageOpsError::Stream {
                image: name,
                reason,
            });
        }
        (Ok(fp), Ok((hash, n))) => {
            if fp != hash {
                task.fail("fingerprint mismatch");
                return Err(ImageOpsError::Stream {
                    image: name,
                    reason: format!("Incus computed fingerprint {fp}, we sent {hash}"),
                });
            }
            (fp, true, n)
        }
        // Incus reads the whole upload before it compares fingerprints, so the hash of
        // what we sent is the fingerprint of the image it already has.
        (Err(e), Ok((hash, n))) if e.is_already_exists() => (hash, false, n),
        // Should Incus answer before reading it all, hash the same bytes once more (no disk).
        (Err(_), Err(_)) => {
            let (hash, n) = tokio::task::spawn_blocking(move || hash_of(&prepared))
                .await
                .map_err(|e| ImageOpsError::Stream {
                    image: name.clone(),
                    reason: e.to_string(),
                })??;
            (hash, false, n)
        }
        (Err(source), Ok(_)) => {
            task.fail("import failed");
            return Err(ImageOpsError::Incus {
                image: name,
                source: Box::new(source),
            });
        }
    };
    task.finish(if created {
        "imported"
    } else {
        "already present"
    });
    let mut done = Vec::new();
    for alias in aliases {
        let change = ensure_alias(client, alias, &fingerprint, &image.spec.name).await?;
        done.push((alias.clone(), change));
    }
    Ok(ImportOutcome {
        fingerprint,
        created,
        tar_bytes,
        aliases: done,
    })
}

/// SHA-256 and length of the tarball, written to nowhere.
fn hash_of(prepared: &PreparedUnified) -> Result<(String, u64), ImageOpsError> {
    struct HashSink(Sha256, u64);
    impl Write for HashSink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.update(b);
            self.1 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut sink = HashSink(Sha256::new(), 0);
    prepared.write(&mut sink)?;
    Ok((hex::encode(sink.0.finalize()), sink.1))
}

/// Makes `alias` point at `fingerprint`: create, move, or leave alone.
pub async fn ensure_alias(
    client: &Client,
    alias: &str,
    fingerprint: &str,
    description: &str,
) -> Result<AliasChange, ImageOpsError> {
    let err = |source| ImageOpsError::Alias {
        alias: alias.to_owned(),
        source: Box::new(source),
    };
    match client
        .get_image_alias(alias)
        .await
        .optional()
        .map_err(err)?
    {
        None => {
            client
                .create_image_alias(alias, fingerprint, description)
                .await
                .map_err(err)?;
            Ok(AliasChange::Created)
        }
        Some(have) if have.value.target == fingerprint => Ok(AliasChange::Unchanged),
        Some(have) => {
            client
                .update_image_alias(
                    alias,
                    fingerprint,
                    &have.value.description,
                    have.etag.as_deref(),
                )
                .await
                .map_err(err)?;
            Ok(AliasChange::Moved)
        }
    }
}

/// Digests pinned on first pull of images the lock does not know: `pins.toml` in the cache
/// directory, same format as `images.lock`.
pub struct Pins {
    path: PathBuf,
    lock: ImagesLock,
}

impl Pins {
    pub fn file_in(cache_dir: &Path) -> PathBuf {
        cache_dir.join("pins.toml")
    }

    pub fn load(path: &Path) -> Result<Pins, ImageOpsError> {
        let lock = if path.exists() {
            ImagesLock::load(path).map_err(|e| ImageOpsError::Pins {
                path: path.to_owned(),
                reason: format!("{e}; delete it to pin again on the next pull"),
            })?
        } else {
            ImagesLock::new(&path.display().to_string())
        };
        Ok(Pins {
            path: path.to_owned(),
            lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, reference: &ImageRef) -> Option<&Digest> {
        self.lock.digest_for(reference)
    }

    pub fn get_file(&self, url: &str) -> Option<&Digest> {
        self.lock.file_digest(url)
    }

    /// Records a pin and writes the file (0644, atomically).
    pub fn record(&mut self, reference: &ImageRef, digest: Digest) -> Result<(), ImageOpsError> {
        self.lock.insert(reference, digest);
        self.save()
    }

    /// Records the digest of a downloaded file and writes the file.
    pub fn record_file(&mut self, url: &str, digest: Digest) -> Result<(), ImageOpsError> {
        self.lock.insert_file(url, digest);
        self.save()
    }

    fn save(&self) -> Result<(), ImageOpsError> {
        use std::os::unix::fs::PermissionsExt as _;
        let err = |e: io::Error| ImageOpsError::Pins {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.path.with_extension("toml.tmp");
        std::fs::write(&tmp, self.lock.to_toml()).map_err(err)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

/// The properties shown for an import in `--json` output.
pub fn properties_json(props: &BTreeMap<String, String>) -> serde_json::Value {
    serde_json::to_value(props).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_writer_chunks_hashes_and_reports_a_closed_pipe() {
        let (tx, mut rx) = mpsc::channel(PIPE_CHUNKS);
        let data: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            let mut w = ChannelWriter::new(tx, None);
            w.write_all(&sent).unwrap();
            w.finish().unwrap()
        });
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            let chunk = chunk.unwrap();
            sizes.push(chunk.len());
            got.extend_from_slice(&chunk);
        }
        let (hash, n) = writer.join().unwrap();
        assert_eq!(got, data);
        assert_eq!(sizes, [CHUNK, CHUNK, 123]);
        assert_eq!(n, data.len() as u64);
        assert_eq!(hash, hex::encode(Sha256::digest(&data)));

        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut w = ChannelWriter::new(tx, None);
        let e = w.write_all(&vec![0u8; CHUNK]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn pins_are_written_0644_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = Pins::file_in(&dir.path().join("cache"));
        let r = ImageRef::parse("docker.io/prom/prometheus:v2.42.0").unwrap();
        let d = Digest::of_bytes(b"manifest");
        let mut pins = Pins::load(&path).unwrap();
        assert!(pins.get(&r).is_none());
        pins.record(&r, d.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(Pins::load(&path).unwrap().get(&r), Some(&d));
        std::fs::write(&path, "version = 9\n").unwrap();
        let e = Pins::load(&path).err().unwrap().to_string();
        assert!(e.contains("delete it"), "{e}");
    }
}
