//! Reproducible layers: the same files give the same bytes and the same digests, whatever
//! order they were added in, whenever and wherever the layer is built.
//!
//! Entries are sorted by path (parents first), every mtime is one fixed value, owners are
//! `0:0` unless given, user/group names and device fields are empty, missing parents are added
//! as `0755` root-owned directories, and the gzip wrapper has no file name and mtime 0 with a
//! fixed compression level. The gzip bytes are stable for a given zlib-rs version (pinned by
//! Cargo.lock); the uncompressed digest (diff_id) does not depend on it at all.

use std::collections::BTreeMap;
use std::io::{self, Write};

use sha2::{Digest, Sha256};

use super::error::LayerError;
use super::path::{ancestors, normalize};
use super::tar_write::{OutHeader, TarWriter};

/// The mtime of every entry unless [`LayerBuilder::with_mtime`] says otherwise: the epoch,
/// like `SOURCE_DATE_EPOCH=0`.
pub const DEFAULT_MTIME: i64 = 0;
/// Fixed gzip level: changing it changes every Atlas layer digest.
pub const GZIP_LEVEL: u32 = 6;

/// What a path holds in a built layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    File(Vec<u8>),
    Dir,
    /// The target exactly as it will be stored.
    Symlink(Vec<u8>),
    /// Another path of the same layer (a regular file); written after every other entry so
    /// its target always precedes it in the stream.
    Hardlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    item: Item,
    mode: u32,
    uid: u64,
    gid: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A member with all of its metadata, for [`LayerBuilder::entry`] (files copied out of
/// another image keep their mode, owner and extended attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySpec {
    pub item: Item,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// `(name, value)`, e.g. `security.capability`; written as PAX `SCHILY.xattr.*`.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Collects files, directories and symlinks, then writes them as a reproducible tar.
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: BTreeMap<Vec<u8>, Entry>,
    mtime: i64,
}

/// A built layer: the tar, its digest (the image config's diff_id), and the gzip blob with
/// its digest (the manifest's layer descriptor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    pub gzip: Vec<u8>,
    pub digest: String,
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder::with_mtime(DEFAULT_MTIME)
    }

    pub fn with_mtime(mtime: i64) -> LayerBuilder {
        LayerBuilder {
            entries: BTreeMap::new(),
            mtime,
        }
    }

    /// A root-owned regular file.
    pub fn file(
        &mut self,
        path: &str,
        mode: u32,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, LayerError> {
        self.file_owned(path, mode, 0, 0, bytes)
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, LayerError> {
        self.add(path, Item::File(bytes.into()), mode, uid, gid)
    }

    /// A root-owned directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, LayerError> {
        self.dir_owned(path, mode, 0, 0)
    }

    pub fn dir_owned(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Result<&mut Self, LayerError> {
        self.add(path, Item::Dir, mode, uid, gid)
    }

    /// A root-owned symlink; the target is stored as given.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, LayerError> {
        if target.is_empty() || target.contains('\0') {
            return Err(builder_err(
                path,
                "a symlink target must be non-empty and without NUL",
            ));
        }
        self.add(path, Item::Symlink(target.as_bytes().to_vec()), 0o777, 0, 0)
    }

    /// Any member with its full metadata. A hard link's target is checked when the layer is
    /// written (it may be added later).
    pub fn entry(&mut self, path: &str, spec: EntrySpec) -> Result<&mut Self, LayerError> {
        let item = match spec.item {
            Item::Symlink(t) if t.is_empty() || t.contains(&0) => {
                return Err(builder_err(
                    path,
                    "a symlink target must be non-empty and without NUL",
                ));
            }
            Item::Hardlink(t) => {
                let norm = normalize(t.as_bytes()).map_err(|d| builder_err(path, &d))?;
                Item::Hardlink(String::from_utf8_lossy(&norm).into_owned())
            }
            other => other,
        };
        self.add(path, item, spec.mode, spec.uid, spec.gid)?;
        if !spec.xattrs.is_empty() {
            let norm = normalize(path.as_bytes()).map_err(|d| builder_err(path, &d))?;
            if let Some(e) = self.entries.get_mut(&norm) {
                e.xattrs = spec.xattrs;
            }
        }
        Ok(self)
    }

    /// Whether `path` (normalized) was added.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path.as_bytes()).is_ok_and(|n| self.entries.contains_key(&n))
    }

    fn add(
        &mut self,
        path: &str,
        item: Item,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Result<&mut Self, LayerError> {
        let norm = normalize(path.as_bytes()).map_err(|d| builder_err(path, &d))?;
        if norm.is_empty() {
            return Err(builder_err(path, "the root itself cannot be an entry"));
        }
        if mode > 0o7777 {
            return Err(builder_err(path, "mode has bits outside 0o7777"));
        }
        if self.entries.contains_key(&norm) {
            return Err(builder_err(
                path,
                "added twice; a layer holds each path once",
            ));
        }
        for dir in ancestors(&norm) {
            if let Some(e) = self.entries.get(dir)
                && e.item != Item::Dir
            {
                return Err(builder_err(path, "a parent was added as a file or symlink"));
            }
        }
        if item != Item::Dir {
            let mut lo = norm.clone();
            lo.push(b'/');
            let mut hi = norm.clone();
            hi.push(b'/' + 1);
            if self.entries.range(lo..hi).next().is_some() {
                return Err(builder_err(path, "it has children but is not a directory"));
            }
        }
        self.entries.insert(
            norm,
            Entry {
                item,
                mode,
                uid,
                gid,
                xattrs: Vec::new(),
            },
        );
        Ok(self)
    }

    /// Writes the uncompressed tar to `out` and returns its digest (`sha256:<hex>`).
    pub fn write_tar<W: Write>(&self, out: W) -> Result<String, LayerError> {
        self.check_links()?;
        let mut hashed = HashWriter {
            inner: out,
            hash: Sha256::new(),
        };
        self.write_into(&mut hashed).map_err(LayerError::Output)?;
        Ok(format!("sha256:{}", hex::encode(hashed.hash.finalize())))
    }

    /// Builds the deterministic gzip form in memory, the tar streamed through the compressor
    /// (never held whole: a layer with a large downloaded binary would otherwise be in memory
    /// three times, as entries, tar and gzip).
    pub fn build(&self) -> Result<BuiltLayer, LayerError> {
        let mut enc = FixedChunks::new(gzip_encoder(Vec::new()));
        let diff_id = self.write_tar(&mut enc)?;
        let gzip = enc
            .finish()
            .and_then(flate2::write::GzEncoder::finish)
            .map_err(LayerError::Output)?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&gzip)));
        Ok(BuiltLayer {
            diff_id,
            gzip,
            digest,
        })
    }

    fn write_into<W: Write>(&self, out: W) -> io::Result<()> {
        let mut all: BTreeMap<&[u8], Option<&Entry>> = BTreeMap::new();
        for (path, e) in &self.entries {
            for dir in ancestors(path) {
                all.entry(dir).or_insert(None);
            }
            all.insert(path, Some(e));
        }
        let mut w = TarWriter::new(out);
        for (path, e) in all {
            let implied = Entry {
                item: Item::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                xattrs: Vec::new(),
            };
            let e = e.unwrap_or(&implied);
            if !matches!(e.item, Item::Hardlink(_)) {
                self.write_entry(&mut w, path, e)?;
            }
        }
        for (path, e) in &self.entries {
            if matches!(e.item, Item::Hardlink(_)) {
                self.write_entry(&mut w, path, e)?;
            }
        }
        w.finish()?;
        Ok(())
    }

    fn write_entry<W: Write>(
        &self,
        w: &mut TarWriter<W>,
        path: &[u8],
        e: &Entry,
    ) -> io::Result<()> {
        let (typeflag, link, data): (u8, &[u8], &[u8]) = match &e.item {
            Item::File(bytes) => (b'0', b"", bytes),
            Item::Dir => (b'5', b"", b""),
            Item::Symlink(target) => (b'2', target, b""),
            Item::Hardlink(target) => (b'1', target.as_bytes(), b""),
        };
        let mut name = path.to_vec();
        if e.item == Item::Dir {
            name.push(b'/');
        }
        w.header(&OutHeader {
            path: &name,
            typeflag,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: self.mtime,
            size: data.len() as u64,
            link,
            device: None,
            xattrs: &e.xattrs,
        })?;
        w.data(data)?;
        w.pad(data.len() as u64)
    }

    /// Every hard link must point at a regular file of this layer.
    fn check_links(&self) -> Result<(), LayerError> {
        for (path, e) in &self.entries {
            if let Item::Hardlink(target) = &e.item {
                let ok = matches!(
                    self.entries.get(target.as_bytes()).map(|t| &t.item),
                    Some(Item::File(_))
                );
                if !ok {
                    return Err(builder_err(
                        &String::from_utf8_lossy(path),
                        &format!(
                            "hard link to {target}, which is not a regular file of this layer"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Gzip with a fixed header (no name, mtime 0, OS "unknown") and a fixed level, fed in
/// [`FixedChunks`] so the bytes are the same as [`LayerBuilder::build`]'s streamed ones.
pub fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = FixedChunks::new(gzip_encoder(Vec::new()));
    enc.write_all(data)?;
    enc.finish()?.finish()
}

/// The deflate stream of zlib-rs depends on how its input is split into writes, not only on
/// the input. This hands the encoder the data in chunks of one fixed size whatever the
/// writer above does, so the compressed bytes (and the layer digest) are a function of the
/// content alone.
struct FixedChunks<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

const GZIP_CHUNK: usize = 256 * 1024;

impl<W: Write> FixedChunks<W> {
    fn new(inner: W) -> Self {
        FixedChunks {
            inner,
            buf: Vec::with_capacity(GZIP_CHUNK),
        }
    }

    /// Writes what is left and returns the inner writer.
    fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for FixedChunks<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(GZIP_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == GZIP_CHUNK {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Passing a partial chunk on would make the output depend on when flush is called.
        Ok(())
    }
}

fn gzip_encoder<W: Write>(out: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(out, flate2::Compression::new(GZIP_LEVEL))
}

impl BuiltLayer {
    /// The uncompressed tar, decompressed again (for inspection and tests).
    pub fn tar(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&self.gzip[..]), &mut out)?;
        Ok(out)
    }
}

fn builder_err(path: &str, detail: &str) -> LayerError {
    LayerError::Builder {
        path: path.to_string(),
        detail: detail.to_string(),
    }
}

struct HashWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
