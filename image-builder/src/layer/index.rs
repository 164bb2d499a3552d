//! Per-layer index: every member's header (never its data), computed in one streaming pass.
//!
//! The index is what the merge works on, so flattening never needs two layers open at once
//! and never holds file bytes. It is cheap to build while the blob downloads ([`Indexer`]) and
//! serializable so a cache can keep it next to the blob.

use std::io::{self, Read, Write};
use std::sync::mpsc;
use std::thread;

use serde::{Deserialize, Serialize};

use super::compress::{Compression, decompress};
use super::error::{LayerError, show};
use super::path::{base, join, normalize, parent};
use super::tar_read::{Kind, RawEntry, TarFault, TarReader};

/// Most members we accept in one layer; a bound on index memory (~130 bytes each).
pub const MAX_ENTRIES: usize = 1_000_000;
/// Most path, link target and xattr bytes one layer's index may hold. A hostile layer could
/// otherwise attach a megabyte of xattrs to every member; real layers use a few megabytes.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// What a member means for the merged tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A real member (file, dir, link, node).
    Node(Kind),
    /// `.wh.<name>`: hides `path` from lower layers. `path` is the hidden path.
    Whiteout,
    /// `.wh..wh..opq`: hides the lower layers' children of `path`.
    Opaque,
    /// Other `.wh..wh.*` members (aufs bookkeeping): carry no meaning for the tree.
    Ignored,
}

/// Where a byte string lives in [`LayerIndex::names`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

/// One member of a layer, in stream order, packed small (56 bytes): an index of a layer with
/// hundreds of thousands of files must fit, with the merge, in the memory budget of issue 8.
/// Read it through [`LayerIndex::get`] / [`LayerIndex::iter`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub path: Span,
    pub link: Span,
    /// Position in [`LayerIndex::xattrs`], or `u32::MAX` for none.
    pub xattrs: u32,
    pub kind: EntryKind,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
}

/// A member with its strings resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Normalized path (`a/b`; empty for the root). For whiteouts, the path they hide.
    pub path: &'a [u8],
    pub kind: EntryKind,
    /// Symlink target exactly as stored, or the normalized hard-link target.
    pub link: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// Data size; only regular files carry data.
    pub size: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// A member as classified from its header, before it is packed into an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub link: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub size: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Member {
    fn heap_bytes(&self) -> u64 {
        let x: usize = self.xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
        (self.path.len() + self.link.len() + x) as u64
    }
}

/// The headers of one layer: entries in stream order, their strings in one arena.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerIndex {
    pub digest: String,
    pub compression: Compression,
    /// Paths and link targets of all entries, back to back.
    pub names: Vec<u8>,
    /// Extended attributes of the entries that have any.
    pub xattrs: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    pub entries: Vec<IndexEntry>,
    /// What the bill of materials reads from this layer, found in the same pass (package
    /// databases, Go build info). Not in the cache format: a decoded index has none.
    #[serde(default)]
    pub contents: crate::sbom::LayerContents,
}

impl LayerIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry `i` with its strings. Spans outside the arena (a corrupt cached index) read as
    /// empty; [`crate::layer::Plan::merge`] validates an index before trusting it.
    pub fn get(&self, i: usize) -> Option<EntryRef<'_>> {
        let e = self.entries.get(i)?;
        Some(EntryRef {
            path: self.span(e.path),
            kind: e.kind,
            link: self.span(e.link),
            mode: u32::from(e.mode),
            uid: u64::from(e.uid),
            gid: u64::from(e.gid),
            mtime: e.mtime,
            size: e.size,
            dev_major: e.dev_major,
            dev_minor: e.dev_minor,
            xattrs: self
                .xattrs
                .get(e.xattrs as usize)
                .map_or(&[], Vec::as_slice),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = EntryRef<'_>> {
        (0..self.entries.len()).filter_map(|i| self.get(i))
    }

    pub(crate) fn span_ok(&self, s: Span) -> bool {
        (s.start as usize)
            .checked_add(s.len as usize)
            .is_some_and(|end| end <= self.names.len())
    }

    fn span(&self, s: Span) -> &[u8] {
        let start = s.start as usize;
        self.names
            .get(start..start.saturating_add(s.len as usize))
            .unwrap_or(b"")
    }

    fn intern(&mut self, bytes: &[u8]) -> Span {
        let span = Span {
            start: self.names.len() as u32,
            len: bytes.len() as u32,
        };
        self.names.extend_from_slice(bytes);
        span
    }

    /// Packs a member; the caller has bounded the arena (see [`MAX_INDEX_BYTES`]) and the
    /// ids (32-bit) and mode (12 bits).
    fn push(&mut self, m: Member) {
        let path = self.intern(&m.path);
        let link = self.intern(&m.link);
        let xattrs = if m.xattrs.is_empty() {
            u32::MAX
        } else {
            self.xattrs.push(m.xattrs);
            (self.xattrs.len() - 1) as u32
        };
        self.entries.push(IndexEntry {
            path,
            link,
            xattrs,
            kind: m.kind,
            mode: m.mode as u16,
            uid: m.uid as u32,
            gid: m.gid as u32,
            mtime: m.mtime,
            size: m.size,
            dev_major: m.dev_major,
            dev_minor: m.dev_minor,
        });
    }
}

/// Error context for one layer.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub digest: &'a str,
    pub compression: Compression,
}

impl Ctx<'_> {
    pub fn fault(&self, entry: String, fault: TarFault) -> LayerError {
        let digest = self.digest.to_string();
        match fault {
            TarFault::In(path, inner) => self.fault(show(&path), *inner),
            TarFault::Io(source) => LayerError::Read {
                digest,
                entry,
                compression: self.compression.name(),
                source,
            },
            TarFault::Truncated(detail) => LayerError::Truncated {
                digest,
                entry,
                detail,
            },
            TarFault::Malformed(detail) => LayerError::Malformed {
                digest,
                entry,
                detail,
            },
            TarFault::TooLarge { what, size, limit } => LayerError::TooLarge {
                digest,
                entry,
                what,
                size,
                limit,
            },
            TarFault::Unsupported(detail) => LayerError::Unsupported {
                digest,
                entry,
                detail,
            },
        }
    }

    pub fn unsafe_path(&self, entry: &[u8], detail: String) -> LayerError {
        LayerError::UnsafePath {
            digest: self.digest.to_string(),
            entry: show(entry),
            detail,
        }
    }
}

/// Label for an entry in messages: the last member read, or where the stream broke.
pub(crate) fn after(last: Option<&[u8]>) -> String {
    match last {
        Some(p) => format!("after {}", show(p)),
        None => "at the first header".to_string(),
    }
}

impl LayerIndex {
    /// Indexes a layer blob (compressed or not) from any reader.
    pub fn from_blob<R: Read + Send>(
        digest: &str,
        media_type: Option<&str>,
        blob: R,
    ) -> Result<LayerIndex, LayerError> {
        let (compression, tar) =
            decompress(blob, media_type).map_err(|detail| LayerError::Compression {
                digest: digest.to_string(),
                detail,
            })?;
        Self::from_tar(digest, compression, tar)
    }

    /// Indexes an already uncompressed tar stream. `compression` only labels errors.
    pub fn from_tar<R: Read>(
        digest: &str,
        compression: Compression,
        tar: R,
    ) -> Result<LayerIndex, LayerError> {
        let ctx = Ctx {
            digest,
            compression,
        };
        let mut reader = TarReader::new(tar);
        let mut index = LayerIndex {
            digest: digest.to_string(),
            compression,
            names: Vec::new(),
            xattrs: Vec::new(),
            entries: Vec::new(),
            contents: Default::default(),
        };
        let mut scan = crate::sbom::Scanner::default();
        let mut buf = Vec::new();
        let mut held: u64 = 0;
        let mut last: Option<Vec<u8>> = None;
        loop {
            let raw = match reader.next_entry() {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(f) => return Err(ctx.fault(after(last.as_deref()), f)),
            };
            if index.entries.len() >= MAX_ENTRIES {
                return Err(LayerError::TooLarge {
                    digest: digest.to_string(),
                    entry: show(&raw.path),
                    what: "member count",
                    size: index.entries.len() as u64 + 1,
                    limit: MAX_ENTRIES as u64,
                });
            }
            let member = classify(&ctx, raw)?;
            held += member.heap_bytes();
            if held > MAX_INDEX_BYTES {
                return Err(LayerError::TooLarge {
                    digest: digest.to_string(),
                    entry: show(&member.path),
                    what: "index metadata (paths, link targets, xattrs)",
                    size: held,
                    limit: MAX_INDEX_BYTES,
                });
            }
            last = Some(member.path.clone());
            let ordinal = index.entries.len() as u32;
            if member.kind == EntryKind::Node(Kind::File)
                && scan.wants(ordinal, &member.path, member.mode, member.size)
            {
                // The data passes through the decompressor anyway; only these files are kept.
                buf.resize(64 * 1024, 0);
                loop {
                    let n = reader
                        .read_data(&mut buf)
                        .map_err(|f| ctx.fault(show(&member.path), f))?;
                    if n == 0 {
                        break;
                    }
                    scan.data(&buf[..n]);
                }
                scan.end();
            }
            index.push(member);
        }
        reader
            .drain()
            .map_err(|f| ctx.fault(after(last.as_deref()), f))?;
        index.names.shrink_to_fit();
        index.entries.shrink_to_fit();
        index.contents = scan.finish();
        Ok(index)
    }
}

/// Maps a raw member to its meaning, normalizing and checking its paths.
pub(crate) fn classify(ctx: &Ctx, raw: RawEntry) -> Result<Member, LayerError> {
    let path = normalize(&raw.path).map_err(|d| ctx.unsafe_path(&raw.path, d))?;
    let name = base(&path);
    let (kind, path, link) = if let Some(hidden) = name.strip_prefix(b".wh.") {
        let dir = parent(&path).to_vec();
        if hidden == b".wh..opq" {
            (EntryKind::Opaque, dir, Vec::new())
        } else if hidden.starts_with(b".wh.") {
            (EntryKind::Ignored, path, Vec::new())
        } else if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ctx.unsafe_path(&raw.path, "whiteout of an empty, `.` or `..` name".into()));
        } else {
            (EntryKind::Whiteout, join(&dir, hidden), Vec::new())
        }
    } else {
        let kind = node_kind(&raw).map_err(|detail| LayerError::Unsupported {
            digest: ctx.digest.to_string(),
            entry: show(&raw.path),
            detail,
        })?;
        let link = match kind {
            Kind::Hardlink => {
                let target = normalize(&raw.link).map_err(|d| LayerError::BadHardlink {
                    digest: ctx.digest.to_string(),
                    entry: show(&raw.path),
                    target: String::from_utf8_lossy(&raw.link).into_owned(),
                    detail: format!("the target {d}"),
                })?;
                if target.is_empty() {
                    return Err(LayerError::BadHardlink {
                        digest: ctx.digest.to_string(),
                        entry: show(&raw.path),
                        target: String::from_utf8_lossy(&raw.link).into_owned(),
                        detail: "the target is the root directory".into(),
                    });
                }
                target
            }
            Kind::Symlink => {
                if raw.link.contains(&0) || raw.link.is_empty() {
                    return Err(
                        ctx.unsafe_path(&raw.path, "symlink target is empty or has NUL".into())
                    );
                }
                raw.link
            }
            _ => Vec::new(),
        };
        if path.is_empty() && kind != Kind::Dir {
            return Err(ctx.unsafe_path(&raw.path, "the root can only be a directory".into()));
        }
        (EntryKind::Node(kind), path, link)
    };
    let data = kind == EntryKind::Node(Kind::File);
    // Linux ids are 32-bit; a larger one cannot be extracted faithfully.
    for (what, v) in [("uid", raw.uid), ("gid", raw.gid)] {
        if u32::try_from(v).is_err() {
            return Err(LayerError::Malformed {
                digest: ctx.digest.to_string(),
                entry: show(&path),
                detail: format!("{what} {v} does not fit in 32 bits"),
            });
        }
    }
    Ok(Member {
        path,
        kind,
        link,
        mode: raw.mode,
        uid: raw.uid,
        gid: raw.gid,
        mtime: raw.mtime,
        size: if data { raw.size } else { 0 },
        dev_major: raw.dev_major,
        dev_minor: raw.dev_minor,
        xattrs: raw.xattrs,
    })
}

fn node_kind(raw: &RawEntry) -> Result<Kind, String> {
    Ok(match raw.typeflag {
        // Pre-POSIX archives mark directories only by a trailing slash.
        b'0' | b'\0' | b'7' if raw.path.ends_with(b"/") => Kind::Dir,
        b'0' | b'\0' | b'7' => Kind::File,
        b'1' => Kind::Hardlink,
        b'2' => Kind::Symlink,
        b'3' => Kind::Char,
        b'4' => Kind::Block,
        b'5' => Kind::Dir,
        b'6' => Kind::Fifo,
        other => {
            return Err(format!(
                "tar type {:?} is not a file, directory, link, device or fifo",
                char::from(other)
            ));
        }
    })
}

/// Indexes a blob while it is being written somewhere else (a download tee).
///
/// Bytes given to [`Write::write`] are gathered into chunks of [`TEE_CHUNK`] bytes and handed
/// to a thread that decompresses and indexes them, so indexing costs no extra read of the blob
/// and runs on another core. The chunks come from a pool of [`TEE_CHUNKS`] buffers that the
/// thread gives back, so memory stays flat and the allocator stays out of the loop; `write`
/// blocks only when the indexer is that far behind. If the layer turns out malformed the
/// indexer stops consuming and `write` keeps accepting (and discarding) bytes so the download
/// itself is not disturbed; [`Indexer::finish`] reports the error. `write` may block briefly,
/// so call it from blocking code (a `spawn_blocking` task or the thread that writes the blob
/// cache).
pub struct Indexer {
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    /// Buffers the worker is done with.
    free: mpsc::Receiver<Vec<u8>>,
    /// Buffers not yet allocated.
    unallocated: usize,
    pending: Vec<u8>,
    worker: Option<thread::JoinHandle<Result<LayerIndex, LayerError>>>,
}

/// Bytes per chunk handed to the indexing thread.
pub const TEE_CHUNK: usize = 256 * 1024;
/// Chunks in flight between a download and its indexing thread (so about 2 MiB per layer).
pub const TEE_CHUNKS: usize = 8;

impl Indexer {
    pub fn new(digest: &str, media_type: Option<&str>) -> Indexer {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(TEE_CHUNKS);
        let (free_tx, free) = mpsc::sync_channel::<Vec<u8>>(TEE_CHUNKS);
        let digest = digest.to_string();
        let media_type = media_type.map(str::to_string);
        let worker = thread::spawn(move || {
            let reader = ChannelReader {
                rx,
                free: free_tx,
                buf: Vec::new(),
                pos: 0,
            };
            LayerIndex::from_blob(&digest, media_type.as_deref(), reader)
        });
        Indexer {
            tx: Some(tx),
            free,
            unallocated: TEE_CHUNKS - 1,
            pending: Vec::with_capacity(TEE_CHUNK),
            worker: Some(worker),
        }
    }

    /// Ends the input and returns the index (or why the layer is refused).
    pub fn finish(mut self) -> Result<LayerIndex, LayerError> {
        self.send();
        drop(self.tx.take());
        let worker = self.worker.take().expect("finish is called once");
        worker.join().unwrap_or_else(|_| {
            Err(LayerError::Output(io::Error::other(
                "the indexing thread panicked",
            )))
        })
    }

    /// Hands the gathered bytes to the worker and takes an empty buffer for the next ones.
    fn send(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Some(tx) = &self.tx else {
            self.pending.clear();
            return;
        };
        let next = match self.free.try_recv() {
            Ok(buf) => Some(buf),
            Err(_) if self.unallocated > 0 => {
                self.unallocated -= 1;
                Some(Vec::with_capacity(TEE_CHUNK))
            }
            Err(_) => None,
        };
        let full = std::mem::take(&mut self.pending);
        if tx.send(full).is_err() {
            // The worker stopped early (malformed layer); finish() returns its error.
            self.tx = None;
        }
        self.pending = match next {
            Some(buf) => buf,
            // Every buffer is out: wait for one (or make one if the worker is gone).
            None => self
                .free
                .recv()
                .unwrap_or_else(|_| Vec::with_capacity(TEE_CHUNK)),
        };
        self.pending.clear();
    }
}

impl Write for Indexer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tx.is_none() {
            return Ok(buf.len());
        }
        let n = buf.len().min(TEE_CHUNK - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == TEE_CHUNK {
            self.send();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

struct ChannelReader {
    rx: mpsc::Receiver<Vec<u8>>,
    /// Where read-out buffers go back to the [`Indexer`].
    free: mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    let done = std::mem::replace(&mut self.buf, chunk);
                    if done.capacity() > 0 {
                        // Never blocks: the pool holds fewer buffers than the channel; a
                        // finished Indexer just drops it.
                        let _ = self.free.try_send(done);
                    }
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
