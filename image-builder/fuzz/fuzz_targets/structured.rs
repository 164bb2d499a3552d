//! Structure-aware: layers built from a small alphabet of paths and member kinds, so the merge
//! (whiteouts, opaque dirs, replacements, hard links, symlink parents) is reached with valid
//! tar framing. Same invariants as `flatten`, plus: indexing through the download tee gives the
//! same index, and a second run gives the same bytes.
#![no_main]

use std::io::Write;

use atlas_image::layer::{FlattenOptions, Indexer, Layer, LayerIndex, flatten};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[path = "check.rs"]
mod check;

const NAMES: &[&str] = &[
    "a",
    "b",
    "c",
    ".wh.a",
    ".wh.b",
    ".wh..wh..opq",
    ".wh..wh.plnk",
    "..",
    ".",
    "",
    "/",
    "\u{e9}",
];

#[derive(Arbitrary, Debug)]
struct Member {
    kind: u8,
    path: Vec<u8>,
    link: Vec<u8>,
    mode: u16,
    uid: u32,
    data: u8,
    xattr: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    layers: Vec<Vec<Member>>,
    prefix: bool,
    gzip_mask: u8,
}

fn path(idx: &[u8]) -> String {
    let parts: Vec<&str> = idx
        .iter()
        .take(4)
        .map(|i| NAMES[*i as usize % NAMES.len()])
        .collect();
    parts.join("/")
}

fn build(members: &[Member]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members.iter().take(24) {
        let name = path(&m.path);
        let link = path(&m.link);
        let kind = match m.kind % 7 {
            0 | 1 => tar::EntryType::Regular,
            2 => tar::EntryType::Directory,
            3 => tar::EntryType::Symlink,
            4 => tar::EntryType::Link,
            5 => tar::EntryType::Fifo,
            _ => tar::EntryType::Char,
        };
        let data = vec![
            m.data;
            if kind == tar::EntryType::Regular {
                m.data as usize % 7
            } else {
                0
            }
        ];
        if m.xattr {
            b.append_pax_extensions([("SCHILY.xattr.user.x", &[m.data][..])])
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(u32::from(m.mode) & 0o7777);
        h.set_uid(u64::from(m.uid));
        h.set_size(data.len() as u64);
        // Raw names: the tar crate would refuse `..`, which is exactly what we want to feed.
        if name.len() <= 100 && link.len() <= 100 {
            let bytes = h.as_mut_bytes();
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            bytes[157..157 + link.len()].copy_from_slice(link.as_bytes());
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
    }
    b.into_inner().unwrap()
}

fn gz(tar: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(tar).unwrap();
    e.finish().unwrap()
}

fuzz_target!(|input: Input| {
    let layers: Vec<Layer> = input
        .layers
        .iter()
        .take(4)
        .enumerate()
        .map(|(i, members)| {
            let tar = build(members);
            let blob = if input.gzip_mask & (1 << i) != 0 {
                gz(&tar)
            } else {
                tar
            };
            Layer::from_bytes(format!("sha256:layer{i}"), None, blob)
        })
        .collect();
    let opts = FlattenOptions {
        prefix: input.prefix.then(|| "rootfs".to_string()),
        threads: 2,
        ..Default::default()
    };
    let mut out = Vec::new();
    match flatten(&layers, &mut out, &opts) {
        Ok(_) => {
            check::check(&out);
            let mut again = Vec::new();
            flatten(&layers, &mut again, &opts).expect("second run fails");
            assert_eq!(out, again, "flattening is not deterministic");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("sha256:layer"),
                "error does not name the layer: {msg}"
            );
        }
    }
    if let Some(first) = layers.first() {
        let direct = first.index();
        let blob = {
            let mut v = Vec::new();
            std::io::copy(&mut first_blob(first), &mut v).unwrap();
            v
        };
        let mut tee = Indexer::new(&first.digest, None);
        for chunk in blob.chunks(97) {
            tee.write_all(chunk).unwrap();
        }
        let teed: Result<LayerIndex, _> = tee.finish();
        match (direct, teed) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("tee and direct indexing disagree: {a:?} vs {b:?}"),
        }
    }
});

fn first_blob(layer: &Layer) -> Box<dyn std::io::Read + Send> {
    layer.open().unwrap()
}
