//! The emission pass: writes the plan as one tar stream. Directories, symlinks and nodes come
//! first in path order (no data needed, and every parent precedes its children); then the
//! regular files that won; hard links come last, when every target already exists.
//!
//! The regular files are read by one thread per layer that decompresses its blob and hands
//! the wanted files' bytes over a small pool of buffers, so several layers decompress at once
//! on different cores while this thread only writes. The layers with files go in groups of
//! [`READERS`] (bottom to top); inside a group, files are written in a fixed schedule, by
//! where each member starts in its layer's tar stream (ties: the lower layer first), so
//! every reader keeps moving. The group size is a constant, not the core count: the output
//! must stay a function of the indexes alone, the same bytes (and Incus fingerprint) on
//! every machine.

use std::io::Write;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread;

use super::compress::decompress;
use super::error::{LayerError, show};
use super::index::{Ctx, EntryKind, EntryRef, LayerIndex, after, classify};
use super::merge::Plan;
use super::path::{ancestors, normalize};
use super::tar_read::{Kind, TarReader};
use super::tar_write::{OutHeader, TarWriter};
use super::{FlattenOptions, FlattenStats, Layer};

impl Plan<'_> {
    /// Streams the flattened image into `out`. `layers` are bottom to top, the ones whose
    /// indexes the plan was merged from.
    pub fn write<W: Write>(
        &self,
        layers: &[Layer],
        out: W,
        opts: &FlattenOptions,
    ) -> Result<FlattenStats, LayerError> {
        super::check_pairing(layers, self.indexes)?;
        let prefix = prefix_of(opts);
        let mut w = TarWriter::new(out);
        let mut stats = FlattenStats::default();
        write_leading(&mut w, opts, &prefix, &mut stats)?;
        let root_path = if prefix.is_empty() {
            b"./".to_vec()
        } else {
            prefix.clone()
        };
        let root = self.root.map(|r| self.member(r));
        put_meta(&mut w, &root_path, root, &mut stats)?;
        for (path, member) in &self.nodes {
            let member = member.map(|r| self.member(r));
            let dir = member.is_none_or(|m| is_dir(&m));
            put_meta(&mut w, &out_path(&prefix, path, dir), member, &mut stats)?;
        }
        self.copy_files(&mut w, layers, &prefix, &mut stats)?;
        for (path, target) in &self.links {
            let h = OutHeader {
                path: &out_path(&prefix, path, false),
                typeflag: b'1',
                mode: 0,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: 0,
                link: &out_path(&prefix, target, false),
                device: None,
                xattrs: &[],
            };
            w.header(&h).map_err(LayerError::Output)?;
            stats.entries += 1;
        }
        stats.tar_bytes = w.bytes_written() + 1024;
        w.finish().map_err(LayerError::Output)?;
        Ok(stats)
    }
}

fn write_leading<W: Write>(
    w: &mut TarWriter<W>,
    opts: &FlattenOptions,
    prefix: &[u8],
    stats: &mut FlattenStats,
) -> Result<(), LayerError> {
    let mut dirs: Vec<Vec<u8>> = Vec::new();
    let mut names: Vec<Vec<u8>> = Vec::new();
    for (name, data) in &opts.leading_files {
        let path = normalize(name.as_bytes()).map_err(|d| LayerError::Builder {
            path: name.clone(),
            detail: d,
        })?;
        let under_prefix =
            !prefix.is_empty() && (path.starts_with(prefix) || path == prefix[..prefix.len() - 1]);
        if names.contains(&path) || dirs.contains(&path) {
            return Err(LayerError::Builder {
                path: name.clone(),
                detail: "given twice, or also used as a directory".into(),
            });
        }
        names.push(path.clone());
        if path.is_empty() || under_prefix || prefix.is_empty() {
            return Err(LayerError::Builder {
                path: name.clone(),
                detail: "leading files need a prefix for the image tree and must lie outside it"
                    .into(),
            });
        }
        for dir in ancestors(&path) {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_vec());
                put_meta(w, &out_path(b"", dir, true), None, stats)?;
            }
        }
        let h = OutHeader {
            path: &path,
            typeflag: b'0',
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: data.len() as u64,
            link: b"",
            device: None,
            xattrs: &[],
        };
        w.header(&h).map_err(LayerError::Output)?;
        w.data(data).map_err(LayerError::Output)?;
        w.pad(data.len() as u64).map_err(LayerError::Output)?;
        stats.entries += 1;
    }
    Ok(())
}

fn prefix_of(opts: &FlattenOptions) -> Vec<u8> {
    let trimmed = opts.prefix.as_deref().unwrap_or("").trim_matches('/');
    if trimmed.is_empty() {
        Vec::new()
    } else {
        format!("{trimmed}/").into_bytes()
    }
}

fn is_dir(e: &EntryRef) -> bool {
    e.kind == EntryKind::Node(Kind::Dir)
}

fn out_path(prefix: &[u8], path: &[u8], dir: bool) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + path.len() + 1);
    p.extend_from_slice(prefix);
    p.extend_from_slice(path);
    if dir {
        p.push(b'/');
    }
    p
}

/// Writes a data-less member from its index entry; `None` is a synthesized directory.
fn put_meta<W: Write>(
    w: &mut TarWriter<W>,
    path: &[u8],
    member: Option<EntryRef>,
    stats: &mut FlattenStats,
) -> Result<(), LayerError> {
    let h = match member {
        None => OutHeader {
            path,
            typeflag: b'5',
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            link: b"",
            device: None,
            xattrs: &[],
        },
        Some(e) => header_for(&e, path),
    };
    w.header(&h).map_err(LayerError::Output)?;
    stats.entries += 1;
    Ok(())
}

fn header_for<'a>(e: &EntryRef<'a>, path: &'a [u8]) -> OutHeader<'a> {
    let EntryKind::Node(kind) = e.kind else {
        unreachable!("only real members reach the output")
    };
    let (typeflag, link, device): (u8, &[u8], _) = match kind {
        Kind::File => (b'0', b"", None),
        Kind::Dir => (b'5', b"", None),
        Kind::Symlink => (b'2', e.link, None),
        Kind::Char => (b'3', b"", Some((e.dev_major, e.dev_minor))),
        Kind::Block => (b'4', b"", Some((e.dev_major, e.dev_minor))),
        Kind::Fifo => (b'6', b"", None),
        Kind::Hardlink => unreachable!("hard links are resolved to their inode by the merge"),
    };
    OutHeader {
        path,
        typeflag,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        size: e.size,
        link,
        device,
        xattrs: e.xattrs,
    }
}

impl Plan<'_> {
    /// Writes every regular file of the plan, reading the layers concurrently: the layers
    /// that have files, bottom to top, in groups of [`READERS`], so at most that many
    /// decompressors (and their windows) are alive at once.
    fn copy_files<W: Write>(
        &self,
        w: &mut TarWriter<W>,
        layers: &[Layer],
        prefix: &[u8],
        stats: &mut FlattenStats,
    ) -> Result<(), LayerError> {
        let busy: Vec<usize> = (0..self.files.len())
            .filter(|&pos| !self.files[pos].is_empty())
            .collect();
        for positions in busy.chunks(READERS) {
            self.copy_group(w, layers, positions, prefix, stats)?;
        }
        Ok(())
    }

    /// Writes the files of the layers at `positions`, one reader thread per layer.
    fn copy_group<W: Write>(
        &self,
        w: &mut TarWriter<W>,
        layers: &[Layer],
        positions: &[usize],
        prefix: &[u8],
        stats: &mut FlattenStats,
    ) -> Result<(), LayerError> {
        let buffers = (POOL_BUDGET / positions.len()).clamp(2, POOL_MAX);
        thread::scope(|scope| {
            let mut feeds: Vec<Option<Feed>> = (0..self.files.len()).map(|_| None).collect();
            for &pos in positions {
                let (full_tx, full_rx) = mpsc::sync_channel(buffers * 2);
                let (free_tx, free_rx) = mpsc::sync_channel(buffers);
                let reader = LayerReader {
                    layer: &layers[pos],
                    index: &self.indexes[pos],
                    wanted: &self.files[pos],
                    out: full_tx,
                    free: free_rx,
                    buffers,
                };
                scope.spawn(move || reader.run());
                feeds[pos] = Some(Feed {
                    full: full_rx,
                    free: free_tx,
                });
            }
            for (pos, i) in self.schedule(positions) {
                let feed = feeds[pos]
                    .as_ref()
                    .expect("every layer of the group has a feed");
                let (ord, path) = self.files[pos][i];
                let expected = self.indexes[pos]
                    .get(ord as usize)
                    .expect("plan references are in range");
                let name = out_path(prefix, path, false);
                w.header(&header_for(&expected, &name))
                    .map_err(LayerError::Output)?;
                feed.copy_file(w, &layers[pos], &expected)?;
                w.pad(expected.size).map_err(LayerError::Output)?;
                stats.entries += 1;
                stats.file_bytes += expected.size;
            }
            Ok(())
        })
    }

    /// The order the files of the layers at `positions` are written in: (layer position,
    /// position in its file list), by the offset of the member's header in its layer's
    /// uncompressed tar stream (as far as the index tells it: extension headers are not
    /// counted), lower layer first on ties.
    fn schedule(&self, positions: &[usize]) -> Vec<(usize, usize)> {
        let mut keyed: Vec<(u64, usize, usize)> = Vec::new();
        for &pos in positions {
            let files = &self.files[pos];
            let index = &self.indexes[pos];
            let mut starts = Vec::with_capacity(index.entries.len());
            let mut offset = 0u64;
            for e in &index.entries {
                starts.push(offset);
                offset += BLOCK + e.size.div_ceil(BLOCK) * BLOCK;
            }
            keyed.extend(
                files
                    .iter()
                    .enumerate()
                    .map(|(i, (ord, _))| (starts[*ord as usize], pos, i)),
            );
        }
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, pos, i)| (pos, i)).collect()
    }
}

const BLOCK: u64 = super::tar_read::BLOCK as u64;
/// Layers read at once while writing. Fixed (see the module docs); 4 keeps a few cores busy
/// and bounds the decompressors' memory (a zstd window can be 8 MiB or more).
const READERS: usize = 4;
/// Bytes per buffer handed from a layer reader to the writer.
const CHUNK: usize = 256 * 1024;
/// Buffers in flight over a group's readers (so about 8 MiB), and at most per reader.
const POOL_BUDGET: usize = 32;
const POOL_MAX: usize = 8;

/// What a layer reader hands the writer: file data in order, the end of each wanted file, or
/// why it stopped.
enum Piece {
    /// A buffer and how many of its bytes are data.
    Data(Vec<u8>, usize),
    End,
    Failed(LayerError),
}

/// The writer's end of one layer reader.
struct Feed {
    full: Receiver<Piece>,
    /// Emptied buffers go back to the reader.
    free: SyncSender<Vec<u8>>,
}

impl Feed {
    /// Writes the data of the reader's next file (its header is already out).
    fn copy_file<W: Write>(
        &self,
        w: &mut TarWriter<W>,
        layer: &Layer,
        expected: &EntryRef,
    ) -> Result<(), LayerError> {
        let mut copied = 0u64;
        loop {
            match self.full.recv() {
                Ok(Piece::Data(buf, n)) => {
                    w.data(&buf[..n]).map_err(LayerError::Output)?;
                    copied += n as u64;
                    // The reader may be gone already (it sent its last file).
                    let _ = self.free.send(buf);
                }
                Ok(Piece::End) if copied == expected.size => return Ok(()),
                Ok(Piece::End) => {
                    return Err(LayerError::IndexMismatch {
                        digest: layer.digest.clone(),
                        entry: show(expected.path),
                        detail: format!("{copied} data bytes read, {} indexed", expected.size),
                    });
                }
                Ok(Piece::Failed(e)) => return Err(e),
                Err(_) => {
                    return Err(LayerError::Open {
                        digest: layer.digest.clone(),
                        source: std::io::Error::other("the layer reading thread stopped"),
                    });
                }
            }
        }
    }
}

/// Reads one layer on its own thread: decompresses the blob, checks each wanted member
/// against the index and sends its data to the writer.
struct LayerReader<'a> {
    layer: &'a Layer,
    index: &'a LayerIndex,
    /// (member ordinal, output path), in stream order.
    wanted: &'a [(u32, &'a [u8])],
    out: SyncSender<Piece>,
    free: Receiver<Vec<u8>>,
    /// Buffers this reader may allocate; then it waits for the writer to return one.
    buffers: usize,
}

/// The writer went away (it failed elsewhere and returned); nothing to report.
struct Gone;

impl LayerReader<'_> {
    fn run(mut self) {
        match self.read() {
            Ok(()) => {}
            Err(Stop::Failed(e)) => {
                let _ = self.out.send(Piece::Failed(e));
            }
            Err(Stop::Gone(Gone)) => {}
        }
    }

    fn read(&mut self) -> Result<(), Stop> {
        let layer = self.layer;
        let blob = layer.open()?;
        let (compression, tar) =
            decompress(blob, layer.media_type.as_deref()).map_err(|detail| {
                LayerError::Compression {
                    digest: layer.digest.clone(),
                    detail,
                }
            })?;
        let ctx = Ctx {
            digest: &layer.digest,
            compression,
        };
        let mut reader = TarReader::new(tar);
        let mut ordinal: u32 = 0;
        let mut last: Option<Vec<u8>> = None;
        for (want, _) in self.wanted {
            let expected = self
                .index
                .get(*want as usize)
                .expect("plan references are in range");
            loop {
                let raw = match reader.next_entry() {
                    Ok(Some(raw)) => raw,
                    Ok(None) => {
                        return Err(mismatch(&ctx, &expected, "the blob has fewer members").into());
                    }
                    Err(f) => return Err(ctx.fault(after(last.as_deref()), f).into()),
                };
                let here = ordinal;
                ordinal += 1;
                let member = classify(&ctx, raw)?;
                if here == *want {
                    if member.path != expected.path || member.size != expected.size {
                        return Err(mismatch(&ctx, &expected, "path or size differ").into());
                    }
                    break;
                }
                last = Some(member.path);
            }
            let mut left = expected.size;
            while left > 0 {
                let mut buf = self.buffer()?;
                let n = reader
                    .read_data(&mut buf)
                    .map_err(|f| ctx.fault(show(expected.path), f))?;
                if n == 0 {
                    // Cannot happen (the reader checked the size); the writer reports it.
                    break;
                }
                left = left.saturating_sub(n as u64);
                self.out.send(Piece::Data(buf, n)).map_err(|_| Gone)?;
            }
            self.out.send(Piece::End).map_err(|_| Gone)?;
            last = Some(expected.path.to_vec());
        }
        Ok(())
    }

    /// A buffer of [`CHUNK`] bytes (contents undefined): a returned one, a new one while under
    /// the limit, else wait for the writer to return one.
    fn buffer(&mut self) -> Result<Vec<u8>, Gone> {
        match self.free.try_recv() {
            Ok(buf) => Ok(buf),
            Err(TryRecvError::Empty) if self.buffers > 0 => {
                self.buffers -= 1;
                Ok(vec![0; CHUNK])
            }
            Err(TryRecvError::Empty) => self.free.recv().map_err(|_| Gone),
            Err(TryRecvError::Disconnected) => Err(Gone),
        }
    }
}

enum Stop {
    Failed(LayerError),
    Gone(Gone),
}

impl From<LayerError> for Stop {
    fn from(e: LayerError) -> Self {
        Stop::Failed(e)
    }
}

impl From<Gone> for Stop {
    fn from(g: Gone) -> Self {
        Stop::Gone(g)
    }
}

fn mismatch(ctx: &Ctx, expected: &EntryRef, detail: &str) -> LayerError {
    LayerError::IndexMismatch {
        digest: ctx.digest.to_string(),
        entry: show(expected.path),
        detail: detail.to_string(),
    }
}
