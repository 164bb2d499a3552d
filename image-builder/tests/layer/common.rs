//! Builders for test layers (with the `tar` crate, plus raw headers for hostile cases) and a
//! reader of our output (also with the `tar` crate, an independent parser).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use atlas_image::layer::{FlattenOptions, Layer, LayerError, flatten};

/// A layer under construction.
pub struct L {
    b: tar::Builder<Vec<u8>>,
}

pub fn layer() -> L {
    L {
        b: tar::Builder::new(Vec::new()),
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// Writes name/link bytes straight into the header so hostile paths survive.
fn raw_names(h: &mut tar::Header, name: &[u8], link: &[u8]) {
    let bytes = h.as_mut_bytes();
    bytes[0..100].fill(0);
    bytes[0..name.len()].copy_from_slice(name);
    bytes[157..257].fill(0);
    bytes[157..157 + link.len()].copy_from_slice(link);
    h.set_cksum();
}

impl L {
    pub fn file(self, path: &str, mode: u32, data: &[u8]) -> L {
        self.file_owned(path, mode, 0, 0, data)
    }

    pub fn file_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64, data: &[u8]) -> L {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        if path.len() > 100 {
            // The tar crate writes a GNU long-name member for us.
            let mut g = tar::Header::new_gnu();
            g.set_entry_type(tar::EntryType::Regular);
            g.set_mode(mode);
            g.set_uid(uid);
            g.set_gid(gid);
            g.set_mtime(1_700_000_000);
            g.set_size(data.len() as u64);
            self.b.append_data(&mut g, path, data).unwrap();
        } else {
            raw_names(&mut h, path.as_bytes(), b"");
            self.b.append(&h, data).unwrap();
        }
        self
    }

    pub fn dir(self, path: &str, mode: u32) -> L {
        self.dir_owned(path, mode, 0, 0)
    }

    pub fn dir_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> L {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        h.set_uid(uid);
        h.set_gid(gid);
        raw_names(&mut h, path.as_bytes(), b"");
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> L {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        if target.len() > 100 || path.len() > 100 {
            self.b
                .append_pax_extensions([("path", path.as_bytes()), ("linkpath", target.as_bytes())])
                .unwrap();
            raw_names(&mut h, b"placeholder", b"placeholder");
        } else {
            raw_names(&mut h, path.as_bytes(), target.as_bytes());
        }
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> L {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        if target.len() > 100 || path.len() > 100 {
            self.b
                .append_pax_extensions([("path", path.as_bytes()), ("linkpath", target.as_bytes())])
                .unwrap();
            raw_names(&mut h, b"placeholder", b"placeholder");
        } else {
            raw_names(&mut h, path.as_bytes(), target.as_bytes());
        }
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn whiteout(self, path: &str) -> L {
        let (dir, name) = match path.rfind('/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => ("", path),
        };
        self.file(&format!("{dir}.wh.{name}"), 0o644, b"")
    }

    pub fn opaque(self, dir: &str) -> L {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, b"")
    }

    pub fn node(mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> L {
        let mut h = header(kind, 0o620, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        raw_names(&mut h, path.as_bytes(), b"");
        self.b.append(&h, &[][..]).unwrap();
        self
    }

    pub fn with_xattrs(mut self, path: &str, xattrs: &[(&str, &[u8])], data: &[u8]) -> L {
        let recs: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        raw_names(&mut h, path.as_bytes(), b"");
        self.b.append(&h, data).unwrap();
        self
    }

    /// Appends a raw member: any name bytes, type, link, and a size that may lie.
    pub fn raw(
        mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: &[u8],
        size: u64,
        data: &[u8],
    ) -> L {
        let mut h = header(kind, 0o644, size);
        raw_names(&mut h, name, link);
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        bytes.extend(std::iter::repeat_n(0u8, pad));
        self.b.get_mut().extend_from_slice(&bytes);
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }

    pub fn gz(self) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&self.tar()).unwrap();
        e.finish().unwrap()
    }

    pub fn zst(self) -> Vec<u8> {
        zstd::encode_all(&self.tar()[..], 3).unwrap()
    }
}

/// One entry of a flattened stream, as the `tar` crate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub data: Vec<u8>,
    pub link: Option<String>,
    pub dev: Option<(u32, u32)>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub uname: Vec<u8>,
}

/// Entries by path (trailing `/` trimmed) and the order they came in.
pub struct Flat {
    pub map: BTreeMap<String, Out>,
    pub order: Vec<String>,
    pub bytes: Vec<u8>,
}

impl Flat {
    pub fn get(&self, p: &str) -> &Out {
        self.map
            .get(p)
            .unwrap_or_else(|| panic!("{p} missing from {:?}", self.order))
    }
    pub fn has(&self, p: &str) -> bool {
        self.map.contains_key(p)
    }
}

pub fn digest(i: usize) -> String {
    format!("sha256:{:064x}", i + 0xabc)
}

pub fn layers_of(blobs: Vec<Vec<u8>>) -> Vec<Layer> {
    blobs
        .into_iter()
        .enumerate()
        .map(|(i, b)| Layer::from_bytes(digest(i), None, b))
        .collect()
}

pub fn try_flat(blobs: Vec<Vec<u8>>) -> Result<Flat, LayerError> {
    try_flat_opts(blobs, &FlattenOptions::default())
}

pub fn try_flat_opts(blobs: Vec<Vec<u8>>, opts: &FlattenOptions) -> Result<Flat, LayerError> {
    let mut out = Vec::new();
    flatten(&layers_of(blobs), &mut out, opts)?;
    Ok(parse(out))
}

pub fn flat(blobs: Vec<Vec<u8>>) -> Flat {
    try_flat(blobs).unwrap_or_else(|e| panic!("flatten failed: {e}"))
}

pub fn parse(bytes: Vec<u8>) -> Flat {
    let mut map = BTreeMap::new();
    let mut order = Vec::new();
    let mut ar = tar::Archive::new(&bytes[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let path = path.trim_end_matches('/').to_string();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            other => panic!("unexpected type {other:?}"),
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let dev = match kind {
            'c' | 'b' => Some((
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
            )),
            _ => None,
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let out = Out {
            kind,
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            data,
            link,
            dev,
            xattrs,
            uname: h.username_bytes().unwrap_or_default().to_vec(),
        };
        assert!(
            map.insert(path.clone(), out).is_none(),
            "duplicate output path {path}"
        );
        order.push(path);
    }
    Flat { map, order, bytes }
}
