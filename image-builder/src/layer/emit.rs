//! The emission pass: writes the plan as one tar stream. Directories, symlinks and nodes come
//! first in path order (no data needed, and every parent precedes its children); then each
//! layer is streamed once, bottom to top, copying only the regular files that won; hard links
//! come last, when every target already exists in the stream.

use std::io::{self, Read, Write};
use std::sync::mpsc;
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
        for (pos, files) in self.files.iter().enumerate() {
            if !files.is_empty() {
                let index = &self.indexes[pos];
                copy_files(&mut w, &layers[pos], index, files, &prefix, &mut stats)?;
            }
        }
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

/// Streams one layer and copies the wanted regular files (ordinal, output path).
fn copy_files<W: Write>(
    w: &mut TarWriter<W>,
    layer: &Layer,
    index: &LayerIndex,
    wanted: &[(u32, &[u8])],
    prefix: &[u8],
    stats: &mut FlattenStats,
) -> Result<(), LayerError> {
    let blob = layer.open()?;
    let (compression, tar) = decompress(blob, layer.media_type.as_deref()).map_err(|detail| {
        LayerError::Compression {
            digest: layer.digest.clone(),
            detail,
        }
    })?;
    let ctx = Ctx {
        digest: &layer.digest,
        compression,
    };
    thread::scope(|scope| {
        // Decompression runs on its own core, ahead of the copy into the sink.
        let tar = read_ahead(scope, tar);
        let mut reader = TarReader::new(tar);
        let mut ordinal: u32 = 0;
        let mut last: Option<Vec<u8>> = None;
        for (want, path) in wanted {
            let expected = index
                .get(*want as usize)
                .expect("plan references are in range");
            loop {
                let raw = match reader.next_entry() {
                    Ok(Some(raw)) => raw,
                    Ok(None) => {
                        return Err(mismatch(&ctx, &expected, "the blob has fewer members"));
                    }
                    Err(f) => return Err(ctx.fault(after(last.as_deref()), f)),
                };
                let here = ordinal;
                ordinal += 1;
                let member = classify(&ctx, raw)?;
                if here == *want {
                    if member.path != expected.path || member.size != expected.size {
                        return Err(mismatch(&ctx, &expected, "path or size differ"));
                    }
                    break;
                }
                last = Some(member.path);
            }
            let name = out_path(prefix, path, false);
            w.header(&header_for(&expected, &name))
                .map_err(LayerError::Output)?;
            let mut sink = SinkCounter { w };
            reader
                .copy_data(&mut sink)
                .map_err(|f| ctx.fault(show(expected.path), f))?
                .map_err(LayerError::Output)?;
            w.pad(expected.size).map_err(LayerError::Output)?;
            stats.entries += 1;
            stats.file_bytes += expected.size;
            last = Some(expected.path.to_vec());
        }
        Ok(())
    })
}

fn mismatch(ctx: &Ctx, expected: &EntryRef, detail: &str) -> LayerError {
    LayerError::IndexMismatch {
        digest: ctx.digest.to_string(),
        entry: show(expected.path),
        detail: detail.to_string(),
    }
}

struct SinkCounter<'a, W: Write> {
    w: &'a mut TarWriter<W>,
}

impl<W: Write> Write for SinkCounter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.data(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const AHEAD_CHUNK: usize = 256 * 1024;

/// Moves reading (and so decompression) of `src` to a scoped thread, 8 chunks ahead.
fn read_ahead<'scope, 'env, R: Read + Send + 'scope>(
    scope: &'scope thread::Scope<'scope, 'env>,
    mut src: R,
) -> AheadReader {
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
    scope.spawn(move || {
        loop {
            let mut buf = vec![0u8; AHEAD_CHUNK];
            let res = match src.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(buf)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = res.is_err();
            // A closed channel means the consumer is done (all wanted files copied).
            if tx.send(res).is_err() || failed {
                return;
            }
        }
    });
    AheadReader {
        rx,
        buf: Vec::new(),
        pos: 0,
    }
}

struct AheadReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for AheadReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
