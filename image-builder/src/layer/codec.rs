//! A compact binary form of [`LayerIndex`] for the blob cache (JSON via serde works too, but
//! spells every path byte as a number). Decoding is bounds-checked and never allocates more
//! than the input can justify; a decoded index is still validated by the merge.

use super::compress::Compression;
use super::error::LayerError;
use super::index::{EntryKind, IndexEntry, LayerIndex, Span};
use super::tar_read::Kind;

const MAGIC: &[u8; 8] = b"ATLIDX1\n";
const ENTRY_BYTES: usize = 4 * 5 + 1 + 2 + 4 + 4 + 8 + 8 + 4 + 4;

impl LayerIndex {
    /// Serializes the index (stable format, versioned by its magic).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.names.len() + self.entries.len() * ENTRY_BYTES);
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, self.digest.as_bytes());
        out.push(match self.compression {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 2,
        });
        out.extend_from_slice(&(self.names.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.names);
        out.extend_from_slice(&(self.xattrs.len() as u32).to_le_bytes());
        for set in &self.xattrs {
            out.extend_from_slice(&(set.len() as u32).to_le_bytes());
            for (name, value) in set {
                put_bytes(&mut out, name);
                put_bytes(&mut out, value);
            }
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            for v in [e.path.start, e.path.len, e.link.start, e.link.len, e.xattrs] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.push(kind_code(e.kind));
            out.extend_from_slice(&e.mode.to_le_bytes());
            out.extend_from_slice(&e.uid.to_le_bytes());
            out.extend_from_slice(&e.gid.to_le_bytes());
            out.extend_from_slice(&e.mtime.to_le_bytes());
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&e.dev_major.to_le_bytes());
            out.extend_from_slice(&e.dev_minor.to_le_bytes());
        }
        out
    }

    /// Reads what [`LayerIndex::to_bytes`] wrote. `expected_digest` is the blob the caller
    /// means to flatten; an index for another blob is refused.
    pub fn from_bytes(expected_digest: &str, bytes: &[u8]) -> Result<LayerIndex, LayerError> {
        decode(bytes)
            .and_then(|index| {
                if index.digest == expected_digest {
                    Ok(index)
                } else {
                    Err(format!("it describes {}", index.digest))
                }
            })
            .map_err(|detail| LayerError::CorruptIndex {
                digest: expected_digest.to_string(),
                detail,
            })
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn kind_code(k: EntryKind) -> u8 {
    match k {
        EntryKind::Node(Kind::File) => 0,
        EntryKind::Node(Kind::Dir) => 1,
        EntryKind::Node(Kind::Symlink) => 2,
        EntryKind::Node(Kind::Hardlink) => 3,
        EntryKind::Node(Kind::Char) => 4,
        EntryKind::Node(Kind::Block) => 5,
        EntryKind::Node(Kind::Fifo) => 6,
        EntryKind::Whiteout => 7,
        EntryKind::Opaque => 8,
        EntryKind::Ignored => 9,
    }
}

fn kind_of(code: u8) -> Result<EntryKind, String> {
    Ok(match code {
        0 => EntryKind::Node(Kind::File),
        1 => EntryKind::Node(Kind::Dir),
        2 => EntryKind::Node(Kind::Symlink),
        3 => EntryKind::Node(Kind::Hardlink),
        4 => EntryKind::Node(Kind::Char),
        5 => EntryKind::Node(Kind::Block),
        6 => EntryKind::Node(Kind::Fifo),
        7 => EntryKind::Whiteout,
        8 => EntryKind::Opaque,
        9 => EntryKind::Ignored,
        other => return Err(format!("unknown entry kind {other}")),
    })
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err("it is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A count of records of at least `min` bytes each, bounded by what is left.
    fn count(&mut self, min: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err("a count exceeds the data".into());
        }
        Ok(n)
    }
}

fn decode(bytes: &[u8]) -> Result<LayerIndex, String> {
    let mut c = Cursor(bytes);
    if c.take(MAGIC.len())? != MAGIC {
        return Err("it is not an index of this version".into());
    }
    let digest = String::from_utf8(c.bytes()?.to_vec()).map_err(|_| "digest is not UTF-8")?;
    let compression = match c.u8()? {
        0 => Compression::None,
        1 => Compression::Gzip,
        2 => Compression::Zstd,
        other => return Err(format!("unknown compression {other}")),
    };
    let names_len = usize::try_from(c.u64()?).map_err(|_| "names too long")?;
    let names = c.take(names_len)?.to_vec();
    let sets = c.count(4)?;
    let mut xattrs = Vec::with_capacity(sets);
    for _ in 0..sets {
        let pairs = c.count(8)?;
        let mut set = Vec::with_capacity(pairs);
        for _ in 0..pairs {
            let name = c.bytes()?.to_vec();
            let value = c.bytes()?.to_vec();
            set.push((name, value));
        }
        xattrs.push(set);
    }
    let count = c.count(ENTRY_BYTES)?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let path = Span {
            start: c.u32()?,
            len: c.u32()?,
        };
        let link = Span {
            start: c.u32()?,
            len: c.u32()?,
        };
        entries.push(IndexEntry {
            path,
            link,
            xattrs: c.u32()?,
            kind: kind_of(c.u8()?)?,
            mode: c.u16()?,
            uid: c.u32()?,
            gid: c.u32()?,
            mtime: c.u64()? as i64,
            size: c.u64()?,
            dev_major: c.u32()?,
            dev_minor: c.u32()?,
        });
    }
    if !c.0.is_empty() {
        return Err("it has trailing bytes".into());
    }
    Ok(LayerIndex {
        digest,
        compression,
        names,
        xattrs,
        entries,
        contents: Default::default(),
    })
}
