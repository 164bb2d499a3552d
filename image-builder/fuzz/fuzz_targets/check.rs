//! Invariants every flattened stream must satisfy, checked with the `tar` crate (a parser
//! independent of ours).

use std::collections::HashSet;
use std::io::Read;

pub fn check(out: &[u8]) {
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
            assert!(
                dirs.contains(&parent),
                "parent of {raw:?} not emitted before it"
            );
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
            assert!(
                seen.contains(&t.join(&b'/')),
                "hard link target {target:?} not emitted before"
            );
        }
        let mut sink = Vec::new();
        entry.read_to_end(&mut sink).expect("entry data readable");
    }
}
