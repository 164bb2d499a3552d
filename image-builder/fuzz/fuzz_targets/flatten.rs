//! Arbitrary bytes as one or two layers: flattening must never panic, and whatever it
//! writes must be a tar whose paths are relative, `..`-free, unique, with every parent and
//! every hard-link target emitted before it.
#![no_main]

use std::collections::HashSet;
use std::io::Read;

use atlas_image::layer::{FlattenOptions, Layer, flatten};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    // Bit 0: one or two layers; bits 1-6: split point in blocks; bit 7: `rootfs/` prefix.
    let layers: Vec<Layer> = if ctl & 1 == 0 || rest.len() < 2 {
        vec![Layer::from_bytes("sha256:fuzz0", None, rest.to_vec())]
    } else {
        let cut = (usize::from((ctl >> 1) & 0x3f) * 512).min(rest.len());
        vec![
            Layer::from_bytes("sha256:fuzz0", None, rest[..cut].to_vec()),
            Layer::from_bytes("sha256:fuzz1", None, rest[cut..].to_vec()),
        ]
    };
    let prefix = if ctl & 0x80 != 0 { Some("rootfs".to_string()) } else { None };
    let opts = FlattenOptions {
        prefix,
        threads: 1,
        ..Default::default()
    };
    let mut out = Vec::new();
    match flatten(&layers, &mut out, &opts) {
        Ok(_) => check(&out),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("sha256:fuzz"), "error does not name the layer: {msg}");
        }
    }
});

fn check(out: &[u8]) {
    let mut archive = tar::Archive::new(out);
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    dirs.insert(Vec::new());
    for entry in archive.entries().expect("output is a tar") {
        let mut entry = entry.expect("output entry parses");
        let raw = entry.path_bytes().into_owned();
        assert!(!raw.starts_with(b"/"), "absolute path {raw:?}");
        let parts: Vec<&[u8]> = raw
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
            .collect();
        assert!(!parts.iter().any(|p| *p == b".."), "dotdot in {raw:?}");
        let norm = parts.join(&b'/');
        assert!(seen.insert(norm.clone()), "duplicate {raw:?}");
        if !norm.is_empty() {
            let parent = match norm.iter().rposition(|b| *b == b'/') {
                Some(i) => norm[..i].to_vec(),
                None => Vec::new(),
            };
            assert!(dirs.contains(&parent), "parent of {raw:?} not emitted before it");
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            dirs.insert(norm);
        } else if kind.is_hard_link() {
            let target = entry.link_name_bytes().expect("link target").into_owned();
            let t: Vec<&[u8]> = target
                .split(|b| *b == b'/')
                .filter(|p| !p.is_empty() && *p != b".")
                .collect();
            assert!(seen.contains(&t.join(&b'/')), "hard link target {target:?} not emitted before");
        }
        let mut sink = Vec::new();
        entry.read_to_end(&mut sink).expect("entry data readable");
    }
}
