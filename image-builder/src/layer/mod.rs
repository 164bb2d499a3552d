//! OCI layers: flattening a stack of layers into one safe tar stream, and writing our own
//! layers reproducibly.
//!
//! # Flattening
//!
//! Three steps, each usable on its own:
//! 1. **Index** every layer ([`LayerIndex::from_blob`], [`index_layers`] in parallel, or
//!    [`Indexer`] as a tee while the blob downloads): headers only, validated, data skipped.
//! 2. **Merge** the indexes bottom to top ([`Plan::merge`]): OCI whiteouts and opaque
//!    directories, replacement of directories by files and back, hard links resolved to the
//!    content they had when linked, missing parents synthesized (0755, root-owned, mtime 0).
//! 3. **Write** ([`Plan::write`]): one tar stream into any `Write`, reading each layer blob
//!    once more and copying only the winning files' bytes. Memory holds headers, never data.
//!
//! [`flatten`] does all three; [`flatten_indexed`] the last two, with indexes from the tee or a
//! cache ([`LayerIndex::to_bytes`] / [`LayerIndex::from_bytes`] is the cache format).
//! [`FlattenOptions::leading_files`] puts `metadata.yaml` (and templates) in front of a
//! `rootfs/`-prefixed tree for an Incus unified tarball.
//!
//! # Output stream
//! - Paths are relative (`usr/bin/x`, or `rootfs/usr/bin/x` with a prefix), never absolute,
//!   never with `..`, each exactly once. The root is `./` (or the prefix directory).
//! - Order: the root; then directories, symlinks, devices and fifos sorted by path (so parents
//!   precede children); then regular files: the layers that have any, bottom to top, in
//!   groups of four, and inside a group by where each member starts in its layer's tar stream
//!   (lower layer first on ties; stream order inside a layer), so that a group's layers are
//!   read at once, each on its own thread; then hard links sorted by path. Same input, same
//!   bytes, on any machine.
//! - Kept: mode including setuid/setgid/sticky, numeric uid/gid, mtime (whole seconds), xattrs
//!   (as PAX `SCHILY.xattr.*`), device numbers, symlink targets exactly as stored. Dropped:
//!   user and group names (extraction must use numeric owners), sub-second times, atime/ctime.
//! - Hard-link groups stay groups: the first path of a group in sorted order carries the data
//!   and the rest link to it, even when the original target path was replaced or deleted.
//!
//! # Refused input (every error names the layer digest and the entry)
//! - `..` components in paths or hard-link targets (leading `/` and `./` are normalized away:
//!   they name the same path inside the image);
//! - hard links to a path that does not exist (at that point of the stack) or to a directory;
//! - members whose parent is a symlink (extraction would write through it) or a file;
//! - truncated tar, truncated or corrupt gzip/zstd (the stream is read to its end so checksums
//!   are verified), header checksum mismatches (a size that lies lands the reader in data),
//!   files over [`MAX_ENTRY_SIZE`], extension headers over [`MAX_EXTENSION`], paths over
//!   [`MAX_PATH`], more than [`MAX_ENTRIES`] members or [`MAX_INDEX_BYTES`] of header data in
//!   one layer, uids/gids above 32 bits, whiteouts of `.` or `..`, sparse files, unknown
//!   member types. aufs bookkeeping members (`.wh..wh.*` other than the opaque marker) are
//!   dropped silently.
//!
//! # Memory
//! Peak RSS measured by the ignored tests in `tests/layer/memory.rs`: 18 MiB for a 1 GiB image
//! of two layers, 76 MiB for 300k files across two layers (indexes dominate: ~56 bytes per
//! member plus its path, once).
//!
//! On error, whatever was already written to the sink must be discarded. Every check on the
//! layers' headers happens before the first byte is written; only a blob that changes between
//! the passes (or an output error) can fail mid-stream.

mod codec;
mod compress;
pub mod deterministic;
mod emit;
mod error;
mod extract;
mod index;
mod merge;
mod path;
mod tar_read;
mod tar_write;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

pub use compress::{Compression, decompress};
pub use error::LayerError;
pub use extract::{Extracted, extract_subtree};
pub use index::{
    EntryKind, EntryRef, IndexEntry, Indexer, LayerIndex, MAX_ENTRIES, MAX_INDEX_BYTES, Span,
};
pub use merge::{Placer, Plan};
pub use path::MAX_PATH;
pub use tar_read::{Kind, MAX_ENTRY_SIZE, MAX_EXTENSION};

type Opener = dyn Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync;

/// One layer blob that can be opened (more than once: indexing and writing each read it).
#[derive(Clone)]
pub struct Layer {
    /// `sha256:...`, used in every error about this layer.
    pub digest: String,
    /// The descriptor's media type; magic bytes are checked against it.
    pub media_type: Option<String>,
    open: Arc<Opener>,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("digest", &self.digest)
            .field("media_type", &self.media_type)
            .finish_non_exhaustive()
    }
}

impl Layer {
    /// A layer read through `open`, which must return the same bytes every time.
    pub fn new(
        digest: impl Into<String>,
        media_type: Option<String>,
        open: impl Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync + 'static,
    ) -> Layer {
        Layer {
            digest: digest.into(),
            media_type,
            open: Arc::new(open),
        }
    }

    /// A layer blob stored in a file (the blob cache).
    pub fn from_file(
        digest: impl Into<String>,
        media_type: Option<String>,
        path: PathBuf,
    ) -> Layer {
        Layer::new(digest, media_type, move || {
            Ok(Box::new(File::open(&path)?) as Box<dyn Read + Send>)
        })
    }

    /// A layer blob held in memory (tests, small generated layers).
    pub fn from_bytes(
        digest: impl Into<String>,
        media_type: Option<String>,
        bytes: impl Into<Arc<[u8]>>,
    ) -> Layer {
        let bytes: Arc<[u8]> = bytes.into();
        Layer::new(digest, media_type, move || {
            Ok(Box::new(io::Cursor::new(Arc::clone(&bytes))) as Box<dyn Read + Send>)
        })
    }

    /// Opens the raw (still compressed) blob.
    pub fn open(&self) -> Result<Box<dyn Read + Send>, LayerError> {
        (self.open)().map_err(|source| LayerError::Open {
            digest: self.digest.clone(),
            source,
        })
    }

    /// Indexes this layer (reads the whole blob once).
    pub fn index(&self) -> Result<LayerIndex, LayerError> {
        LayerIndex::from_blob(&self.digest, self.media_type.as_deref(), self.open()?)
    }
}

/// How to write the flattened stream.
#[derive(Debug, Clone, Default)]
pub struct FlattenOptions {
    /// Directory every path is placed under, e.g. `rootfs` for an Incus unified tarball.
    pub prefix: Option<String>,
    /// Threads for indexing layers in parallel; 0 means one per available core.
    pub threads: usize,
    /// Files written before the image tree, outside the prefix: `metadata.yaml` and templates
    /// of an Incus unified tarball. Root-owned, 0644, mtime 0; missing parents become 0755
    /// directories.
    pub leading_files: Vec<(String, Vec<u8>)>,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlattenStats {
    /// Members written (root, directories, files, links, nodes).
    pub entries: u64,
    /// Regular file bytes copied.
    pub file_bytes: u64,
    /// Size of the tar stream.
    pub tar_bytes: u64,
}

/// Indexes layers in parallel (bounded by `threads`, 0 = cores). On failure, returns the error
/// of the lowest failing layer so the message does not depend on thread timing.
pub fn index_layers(layers: &[Layer], threads: usize) -> Result<Vec<LayerIndex>, LayerError> {
    let threads = match threads {
        0 => thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(layers.len())
    .max(1);
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<Result<LayerIndex, LayerError>>> =
        (0..layers.len()).map(|_| None).collect();
    let done: Vec<Vec<(usize, Result<LayerIndex, LayerError>)>> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(layer) = layers.get(i) else { break };
                        mine.push((i, layer.index()));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    for (i, r) in done.into_iter().flatten() {
        results[i] = Some(r);
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(LayerError::Open {
                    digest: layers[i].digest.clone(),
                    source: io::Error::other("the indexing thread panicked"),
                })
            })
        })
        .collect()
}

/// Flattens `layers` (bottom to top) into one tar stream written to `out`.
pub fn flatten<W: Write>(
    layers: &[Layer],
    out: W,
    opts: &FlattenOptions,
) -> Result<FlattenStats, LayerError> {
    let indexes = index_layers(layers, opts.threads)?;
    flatten_indexed(layers, &indexes, out, opts)
}

/// Like [`flatten`] with indexes computed earlier (during the download, or from a cache).
pub fn flatten_indexed<W: Write>(
    layers: &[Layer],
    indexes: &[LayerIndex],
    out: W,
    opts: &FlattenOptions,
) -> Result<FlattenStats, LayerError> {
    check_pairing(layers, indexes)?;
    let plan = Plan::merge(indexes)?;
    plan.write(layers, out, opts)
}

/// Layers and indexes must correspond one to one, in the same order.
fn check_pairing(layers: &[Layer], indexes: &[LayerIndex]) -> Result<(), LayerError> {
    if layers.len() != indexes.len() {
        return Err(LayerError::IndexCount {
            count: layers.len(),
            indexes: indexes.len(),
        });
    }
    for (layer, index) in layers.iter().zip(indexes) {
        if layer.digest != index.digest {
            return Err(LayerError::IndexMismatch {
                digest: layer.digest.clone(),
                entry: "(whole layer)".into(),
                detail: format!("the index given at this position is for {}", index.digest),
            });
        }
    }
    Ok(())
}
