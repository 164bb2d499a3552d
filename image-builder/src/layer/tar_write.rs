//! A small tar writer for streams we generate ourselves: POSIX ustar headers, PAX records only
//! when a value does not fit (long paths, xattrs, big ids or sizes), no user or group names.
//! Every field is a function of its inputs, which is what makes our layers reproducible.

use std::io::{self, Write};

use super::tar_read::BLOCK;

/// One header to write. `path` is final (prefix applied, trailing `/` for directories).
pub(crate) struct OutHeader<'a> {
    pub path: &'a [u8],
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub size: u64,
    pub link: &'a [u8],
    pub device: Option<(u32, u32)>,
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

const MAX_ID: u64 = 0o7777777;
const MAX_SIZE: u64 = 0o77777777777;

pub(crate) struct TarWriter<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out, written: 0 }
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Writes the header (and a PAX header before it when needed). For regular files the
    /// caller then writes exactly `size` bytes with [`TarWriter::data`] and calls [`TarWriter::pad`].
    pub fn header(&mut self, h: &OutHeader) -> io::Result<()> {
        let pax = pax_records(h);
        if !pax.is_empty() {
            let ext = OutHeader {
                path: b"././@PaxHeader",
                typeflag: b'x',
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: pax.len() as u64,
                link: b"",
                device: None,
                xattrs: &[],
            };
            self.raw_header(&ext)?;
            self.data(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        self.raw_header(h)
    }

    pub fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Pads the data of a member of `size` bytes to the block boundary.
    pub fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.data(&[0u8; BLOCK][..rem as usize])
    }

    /// Writes the end-of-archive marker and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.data(&[0u8; BLOCK * 2])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn raw_header(&mut self, h: &OutHeader) -> io::Result<()> {
        let mut b = [0u8; BLOCK];
        put_bytes(&mut b[0..100], h.path);
        put_octal(&mut b[100..108], u64::from(h.mode & 0o7777));
        put_octal(&mut b[108..116], h.uid.min(MAX_ID));
        put_octal(&mut b[116..124], h.gid.min(MAX_ID));
        put_octal(&mut b[124..136], h.size.min(MAX_SIZE));
        put_octal(
            &mut b[136..148],
            u64::try_from(h.mtime).unwrap_or(0).min(MAX_SIZE),
        );
        b[156] = h.typeflag;
        put_bytes(&mut b[157..257], h.link);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        if let Some((major, minor)) = h.device {
            put_octal(&mut b[329..337], u64::from(major).min(MAX_ID));
            put_octal(&mut b[337..345], u64::from(minor).min(MAX_ID));
        }
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|x| u64::from(*x)).sum();
        put_octal(&mut b[148..155], sum);
        b[155] = b' ';
        self.data(&b)
    }
}

fn put_bytes(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Zero-padded octal, NUL-terminated, filling the field.
fn put_octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    let text = &text.as_bytes()[text.len() - digits..];
    field[..digits].copy_from_slice(text);
    field[digits] = 0;
}

fn pax_records(h: &OutHeader) -> Vec<u8> {
    let mut out = Vec::new();
    if h.path.len() > 100 {
        record(&mut out, b"path", h.path);
    }
    if h.link.len() > 100 {
        record(&mut out, b"linkpath", h.link);
    }
    if h.uid > MAX_ID {
        record(&mut out, b"uid", h.uid.to_string().as_bytes());
    }
    if h.gid > MAX_ID {
        record(&mut out, b"gid", h.gid.to_string().as_bytes());
    }
    if h.size > MAX_SIZE {
        record(&mut out, b"size", h.size.to_string().as_bytes());
    }
    if h.mtime < 0 || h.mtime > MAX_SIZE as i64 {
        record(&mut out, b"mtime", h.mtime.to_string().as_bytes());
    }
    let mut xattrs: Vec<&(Vec<u8>, Vec<u8>)> = h.xattrs.iter().collect();
    xattrs.sort();
    for (name, value) in xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        record(&mut out, &key, value);
    }
    out
}

/// `"<len> <key>=<value>\n"` where len counts the whole record, its own digits included.
fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + base.to_string().len();
    if len.to_string().len() != base.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        for n in [1usize, 5, 90, 95, 96, 97, 990, 995, 996, 9990] {
            let mut out = Vec::new();
            record(&mut out, b"path", &vec![b'a'; n]);
            let space = out.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..space]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value length {n}");
        }
    }
}
