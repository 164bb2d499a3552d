//! A strict, bounded tar reader.
//!
//! We parse tar ourselves instead of using the `tar` crate's reader because layers are hostile
//! input: every extension header (PAX, GNU long name/link) is size-capped before it is buffered,
//! numeric fields are validated, and the caller can account for every byte. The reader never
//! allocates more than [`MAX_EXTENSION`] per entry and never holds file data.

use std::io::{self, Read, Write};

use super::path::MAX_PATH;

pub(crate) const BLOCK: usize = 512;
/// Cap on the PAX and GNU long-name headers of one member together; real ones are a few
/// hundred bytes.
pub const MAX_EXTENSION: u64 = 1 << 20;
/// Cap on one regular file; larger sizes in a header are taken as a lie, not as a file.
pub const MAX_ENTRY_SIZE: u64 = 64 << 30;

/// Type of a tar member after extension headers are folded in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

/// One member's header, with PAX/GNU extensions applied.
#[derive(Debug, Clone, Default)]
pub(crate) struct RawEntry {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub size: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Byte offset of the header in the uncompressed stream, for messages.
    pub offset: u64,
}

/// What went wrong, without context: the caller adds the layer digest and entry.
#[derive(Debug)]
pub(crate) enum TarFault {
    /// The underlying (decompressing) reader failed.
    Io(io::Error),
    /// The stream ended inside a header or inside data.
    Truncated(String),
    Malformed(String),
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    Unsupported(String),
    /// A fault inside a member whose path is known.
    In(Vec<u8>, Box<TarFault>),
}

impl TarFault {
    fn within(self, path: &[u8]) -> TarFault {
        match self {
            TarFault::In(..) => self,
            other => TarFault::In(path.to_vec(), Box::new(other)),
        }
    }
}

pub(crate) struct TarReader<R> {
    inner: R,
    offset: u64,
    /// Data bytes of the current entry not yet consumed.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    ended: bool,
    /// Path of the member whose data is being read, for messages.
    current: Vec<u8>,
    /// Where skipped data is read to: large reads let the decompressor work in big runs, and
    /// one buffer for the whole stream keeps the allocator out of the loop.
    scratch: Vec<u8>,
}

/// Size of [`TarReader`]'s skip buffer (under musl's mmap threshold, so a plain heap block).
const SCRATCH: usize = 64 * 1024;

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            offset: 0,
            remaining: 0,
            padding: 0,
            ended: false,
            current: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The next member, or `None` at the end-of-archive marker (or a clean EOF between members).
    pub fn next_entry(&mut self) -> Result<Option<RawEntry>, TarFault> {
        let current = std::mem::take(&mut self.current);
        self.skip_rest().map_err(|f| f.within(&current))?;
        if self.ended {
            return Ok(None);
        }
        let mut ext = Extensions::default();
        loop {
            let offset = self.offset;
            let Some(block) = self.read_header()? else {
                if ext.any {
                    return Err(TarFault::Truncated(
                        "an extension header is not followed by its member".into(),
                    ));
                }
                self.ended = true;
                return Ok(None);
            };
            let mut entry = parse_header(&block)?;
            entry.offset = offset;
            match entry.typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    // The cap is on all extension headers of one member together, so a chain
                    // of them cannot accumulate unbounded xattrs.
                    ext.bytes = ext.bytes.saturating_add(entry.size);
                    if ext.bytes > MAX_EXTENSION {
                        return Err(TarFault::TooLarge {
                            what: "extension header",
                            size: ext.bytes,
                            limit: MAX_EXTENSION,
                        });
                    }
                    let body = self.read_extension(entry.size)?;
                    match entry.typeflag {
                        b'x' => ext.pax(&body)?,
                        // Global PAX headers only carry defaults (comments, charset) in practice;
                        // they are read and bounded, then ignored.
                        b'g' => {}
                        b'L' => ext.path = Some(trim_nul(body)),
                        _ => ext.link = Some(trim_nul(body)),
                    }
                    ext.any = true;
                }
                _ => {
                    ext.apply(&mut entry);
                    Self::member_checks(&entry, ext.sparse).map_err(|f| f.within(&entry.path))?;
                    self.start_data(entry.size)?;
                    self.current = entry.path.clone();
                    return Ok(Some(entry));
                }
            }
        }
    }

    fn member_checks(entry: &RawEntry, sparse: bool) -> Result<(), TarFault> {
        if entry.typeflag == b'S' || sparse {
            return Err(TarFault::Unsupported(
                "sparse members are not supported; rebuild the layer without --sparse".into(),
            ));
        }
        // Members other than files may declare a size too (skipped, never emitted), so the
        // cap applies to every member.
        if entry.size > MAX_ENTRY_SIZE {
            return Err(TarFault::TooLarge {
                what: "file size",
                size: entry.size,
                limit: MAX_ENTRY_SIZE,
            });
        }
        Ok(())
    }

    /// Reads data of the current member; `Ok(0)` once all of it is consumed.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarFault> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = read_retry(&mut self.inner, &mut buf[..want])?;
        if n == 0 {
            return Err(TarFault::Truncated(format!(
                "{} data bytes missing at byte {}",
                self.remaining, self.offset
            )));
        }
        self.remaining -= n as u64;
        self.offset += n as u64;
        Ok(n)
    }

    /// Copies the current entry's data to `out`. The outer error is the layer's fault; the
    /// inner one is the writer's.
    pub fn copy_data(&mut self, out: &mut dyn Write) -> Result<Result<(), io::Error>, TarFault> {
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = self.read_data(&mut buf)?;
            if n == 0 {
                return Ok(Ok(()));
            }
            if let Err(e) = out.write_all(&buf[..n]) {
                return Ok(Err(e));
            }
        }
    }

    /// Reads the decompressed stream to its end so the decompressor verifies its checksum
    /// (gzip CRC, zstd frame checksum) even though tar stopped at its end marker.
    pub fn drain(&mut self) -> Result<(), TarFault> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = read_retry(&mut self.inner, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
        }
    }

    fn start_data(&mut self, size: u64) -> Result<(), TarFault> {
        self.remaining = size;
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        Ok(())
    }

    fn skip_rest(&mut self) -> Result<(), TarFault> {
        let mut buf = std::mem::take(&mut self.scratch);
        let skipped = self.skip_into(&mut buf);
        self.scratch = buf;
        skipped
    }

    fn skip_into(&mut self, buf: &mut Vec<u8>) -> Result<(), TarFault> {
        if self.remaining > 0 && buf.len() < SCRATCH {
            buf.resize(SCRATCH, 0);
        }
        while self.remaining > 0 {
            self.read_data(buf)?;
        }
        if self.padding > 0 {
            let pad = self.padding as usize;
            let mut block = [0u8; BLOCK];
            let n = read_full(&mut self.inner, &mut block[..pad])?;
            if n < pad {
                return Err(TarFault::Truncated(
                    "padding after the last member's data".into(),
                ));
            }
            self.offset += pad as u64;
            self.padding = 0;
        }
        Ok(())
    }

    /// A non-zero header block, or `None` at the end marker or a clean EOF.
    fn read_header(&mut self) -> Result<Option<[u8; BLOCK]>, TarFault> {
        let mut block = [0u8; BLOCK];
        let n = read_full(&mut self.inner, &mut block)?;
        if n == 0 {
            return Ok(None);
        }
        if n < BLOCK {
            return Err(TarFault::Truncated(format!(
                "header at byte {} has only {n} of 512 bytes",
                self.offset
            )));
        }
        self.offset += BLOCK as u64;
        if block.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        Ok(Some(block))
    }

    fn read_extension(&mut self, size: u64) -> Result<Vec<u8>, TarFault> {
        if size > MAX_EXTENSION {
            return Err(TarFault::TooLarge {
                what: "extension header",
                size,
                limit: MAX_EXTENSION,
            });
        }
        self.start_data(size)?;
        let mut body = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < body.len() {
            filled += self.read_data(&mut body[filled..])?;
        }
        self.skip_rest()?;
        Ok(body)
    }
}

fn read_retry<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, TarFault> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(TarFault::Io(e)),
        }
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, TarFault> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = read_retry(r, &mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|b| *b == 0) {
        v.truncate(i);
    }
    v
}

fn field(block: &[u8], start: usize, len: usize) -> &[u8] {
    let f = &block[start..start + len];
    match f.iter().position(|b| *b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

/// Parses an octal or GNU base-256 numeric field.
fn number(raw: &[u8], name: &str) -> Result<i128, TarFault> {
    if let Some(&first) = raw.first()
        && first & 0x80 != 0
    {
        // GNU base-256: big-endian two's complement; the top bit of the first byte is the marker.
        let mut v = i128::from(first & 0x7f);
        if first & 0x40 != 0 {
            v -= 0x80;
        }
        for &b in &raw[1..] {
            if v.unsigned_abs() > (1u128 << 100) {
                return Err(TarFault::Malformed(format!("{name} field overflows")));
            }
            v = v * 256 + i128::from(b);
        }
        return Ok(v);
    }
    let text: Vec<u8> = raw
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| *b != 0 && *b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    if text.len() > 24 || !text.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(TarFault::Malformed(format!(
            "{name} field {:?} is not an octal number",
            String::from_utf8_lossy(raw)
        )));
    }
    let mut v: i128 = 0;
    for b in text {
        v = v * 8 + i128::from(b - b'0');
    }
    Ok(v)
}

fn unsigned(raw: &[u8], name: &str) -> Result<u64, TarFault> {
    let v = number(raw, name)?;
    u64::try_from(v).map_err(|_| TarFault::Malformed(format!("{name} field {v} is out of range")))
}

fn device_field(block: &[u8; BLOCK], at: usize, name: &str) -> Result<u32, TarFault> {
    if !matches!(block[156], b'3' | b'4') {
        return Ok(0);
    }
    let v = unsigned(&block[at..at + 8], name)?;
    u32::try_from(v).map_err(|_| TarFault::Malformed(format!("{name} {v} is out of range")))
}

fn parse_header(block: &[u8; BLOCK]) -> Result<RawEntry, TarFault> {
    let stored = unsigned(&block[148..156], "checksum")?;
    let mut unsigned_sum: u64 = 0;
    let mut signed_sum: i64 = 0;
    for (i, b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { *b };
        unsigned_sum += u64::from(b);
        signed_sum += i64::from(b as i8);
    }
    if stored != unsigned_sum && i64::try_from(stored).ok() != Some(signed_sum) {
        return Err(TarFault::Malformed(format!(
            "header checksum mismatch (stored {stored}, computed {unsigned_sum}); this is not a tar \
             header, often because an earlier member's size field lies"
        )));
    }
    let ustar = &block[257..263] == b"ustar\0";
    let mut path = field(block, 0, 100).to_vec();
    if ustar {
        let prefix = field(block, 345, 155);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&path);
            path = full;
        }
    }
    let mode = unsigned(&block[100..108], "mode")?;
    Ok(RawEntry {
        path,
        link: field(block, 157, 100).to_vec(),
        typeflag: block[156],
        mode: u32::try_from(mode & 0o7777).unwrap_or(0),
        uid: unsigned(&block[108..116], "uid")?,
        gid: unsigned(&block[116..124], "gid")?,
        size: unsigned(&block[124..136], "size")?,
        mtime: i64::try_from(number(&block[136..148], "mtime")?).unwrap_or(0),
        // Only device members give these fields a meaning; GNU and old writers leave junk in
        // them for everything else.
        dev_major: device_field(block, 329, "devmajor")?,
        dev_minor: device_field(block, 337, "devminor")?,
        xattrs: Vec::new(),
        offset: 0,
    })
}

/// Extension values collected from PAX / GNU headers for the next member.
#[derive(Default)]
struct Extensions {
    any: bool,
    bytes: u64,
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    sparse: bool,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Extensions {
    fn pax(&mut self, mut body: &[u8]) -> Result<(), TarFault> {
        while !body.is_empty() {
            let space = body
                .iter()
                .position(|b| *b == b' ')
                .ok_or_else(|| TarFault::Malformed("PAX record without a length".into()))?;
            let len: usize = std::str::from_utf8(&body[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|l| *l > space + 1 && *l <= body.len())
                .ok_or_else(|| TarFault::Malformed("PAX record length is invalid".into()))?;
            let record = &body[space + 1..len];
            body = &body[len..];
            let record = record.strip_suffix(b"\n").ok_or_else(|| {
                TarFault::Malformed("PAX record does not end in a newline".into())
            })?;
            let eq = record
                .iter()
                .position(|b| *b == b'=')
                .ok_or_else(|| TarFault::Malformed("PAX record without `=`".into()))?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            self.pax_record(key, value)?;
        }
        Ok(())
    }

    fn pax_record(&mut self, key: &[u8], value: &[u8]) -> Result<(), TarFault> {
        let num = |what: &str| -> Result<u64, TarFault> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| TarFault::Malformed(format!("PAX {what} is not a number")))
        };
        match key {
            b"path" => self.path = Some(value.to_vec()),
            b"linkpath" => self.link = Some(value.to_vec()),
            b"size" => self.size = Some(num("size")?),
            b"uid" => self.uid = Some(num("uid")?),
            b"gid" => self.gid = Some(num("gid")?),
            b"mtime" => {
                // Sub-second precision is dropped: the output keeps whole seconds.
                let text = String::from_utf8_lossy(value);
                let whole = text.split('.').next().unwrap_or("");
                let secs: i64 = whole
                    .parse()
                    .map_err(|_| TarFault::Malformed("PAX mtime is not a number".into()))?;
                self.mtime = Some(secs);
            }
            _ if key.starts_with(b"GNU.sparse.") => self.sparse = true,
            _ if key.starts_with(b"SCHILY.xattr.") => {
                let name = &key[b"SCHILY.xattr.".len()..];
                if name.is_empty() {
                    return Err(TarFault::Malformed("PAX xattr with an empty name".into()));
                }
                self.xattrs.retain(|(n, _)| n != name);
                self.xattrs.push((name.to_vec(), value.to_vec()));
            }
            _ => {}
        }
        Ok(())
    }

    fn apply(&mut self, entry: &mut RawEntry) {
        if let Some(p) = self.path.take() {
            entry.path = p;
        }
        if let Some(l) = self.link.take() {
            entry.link = l;
        }
        if let Some(s) = self.size {
            entry.size = s;
        }
        if let Some(u) = self.uid {
            entry.uid = u;
        }
        if let Some(g) = self.gid {
            entry.gid = g;
        }
        if let Some(m) = self.mtime {
            entry.mtime = m;
        }
        entry.xattrs = std::mem::take(&mut self.xattrs);
        if entry.path.len() > MAX_PATH * 2 {
            entry.path.truncate(MAX_PATH * 2);
        }
    }
}
