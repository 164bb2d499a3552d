//! Deterministic Atlas layers: same input, same digests, whatever the insertion order.

use std::io::Read;

use atlas_image::layer::deterministic::LayerBuilder;
use sha2::{Digest, Sha256};

use crate::common::parse;

type Add = fn(&mut LayerBuilder);

fn adds() -> Vec<Add> {
    vec![
        |b| {
            b.file("etc/atlas/app.toml", 0o640, b"x = 1\n".to_vec())
                .unwrap();
        },
        |b| {
            b.file("sbin/init", 0o755, vec![0x7f, b'E', b'L', b'F'])
                .unwrap();
        },
        |b| {
            b.dir_owned("var/lib/app", 0o750, 472, 472).unwrap();
        },
        |b| {
            b.file_owned("var/lib/app/seed", 0o600, 472, 472, b"seed".to_vec())
                .unwrap();
        },
        |b| {
            b.symlink("usr/bin/app", "/opt/app/bin/app").unwrap();
        },
        |b| {
            b.file(&format!("opt/{}", "n".repeat(150)), 0o644, b"long".to_vec())
                .unwrap();
        },
    ]
}

fn build(order: &[usize]) -> atlas_image::layer::deterministic::BuiltLayer {
    let all = adds();
    let mut b = LayerBuilder::new();
    for i in order {
        all[*i](&mut b);
    }
    b.build().unwrap()
}

#[test]
fn same_input_same_digest_in_any_order() {
    let a = build(&[0, 1, 2, 3, 4, 5]);
    let b = build(&[0, 1, 2, 3, 4, 5]);
    let c = build(&[5, 3, 1, 4, 0, 2]);
    let d = build(&[4, 2, 5, 0, 3, 1]);
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a, d);
    // digests are of the real bytes
    assert_eq!(
        a.diff_id,
        format!("sha256:{}", hex::encode(Sha256::digest(a.tar().unwrap())))
    );
    assert_eq!(
        a.digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&a.gzip)))
    );
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&a.gzip[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, a.tar().unwrap());
}

/// The tar is compressed as it is written, in the writer's chunks: the bytes must be those
/// of compressing the whole tar at once, so layer digests do not depend on how it is fed.
#[test]
fn streamed_gzip_is_the_gzip_of_the_whole_tar() {
    let mut b = LayerBuilder::new();
    let mut x: u32 = 7;
    let big: Vec<u8> = (0..3_000_000)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if i % 3 == 0 { b'a' } else { (x >> 16) as u8 }
        })
        .collect();
    b.file("usr/bin/big", 0o755, big).unwrap();
    b.file("etc/small", 0o644, b"small".to_vec()).unwrap();
    let built = b.build().unwrap();
    let whole = atlas_image::layer::deterministic::gzip(&built.tar().unwrap()).unwrap();
    assert_eq!(built.gzip, whole);
}

#[test]
fn content_mode_owner_and_mtime_change_the_digest() {
    let base = build(&[0, 1]).diff_id;
    let mut b = LayerBuilder::new();
    b.file("etc/atlas/app.toml", 0o644, b"x = 1\n".to_vec())
        .unwrap();
    b.file("sbin/init", 0o755, vec![0x7f, b'E', b'L', b'F'])
        .unwrap();
    assert_ne!(b.build().unwrap().diff_id, base, "mode must matter");
    let mut b = LayerBuilder::with_mtime(1);
    adds()[0](&mut b);
    adds()[1](&mut b);
    assert_ne!(b.build().unwrap().diff_id, base, "mtime must matter");
}

#[test]
fn tar_is_sorted_fixed_and_has_implied_parents() {
    let built = build(&[5, 4, 3, 2, 1, 0]);
    let f = parse(built.tar().unwrap());
    let mut sorted = f.order.clone();
    sorted.sort();
    assert_eq!(f.order, sorted, "entries must be sorted");
    for (p, o) in &f.map {
        assert_eq!(o.mtime, 0, "{p}");
        assert!(o.uname.is_empty(), "{p}");
    }
    let opt = f.get("opt");
    assert_eq!((opt.kind, opt.mode, opt.uid, opt.gid), ('d', 0o755, 0, 0));
    assert_eq!(f.get("var/lib/app").uid, 472);
    assert_eq!(f.get("var/lib/app/seed").mode, 0o600);
    assert_eq!(
        f.get("usr/bin/app").link.as_deref(),
        Some("/opt/app/bin/app")
    );
    // device fields are empty for everything we write
    let tar = built.tar().unwrap();
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        assert_eq!(&e.header().as_bytes()[329..345], &[0u8; 16]);
    }
    // gzip header: no name flag, mtime 0, OS unknown
    assert_eq!(&built.gzip[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&built.gzip[4..8], &[0, 0, 0, 0]);
    assert_eq!(built.gzip[9], 255);
}

#[test]
fn builder_refuses_ambiguous_input() {
    let mut b = LayerBuilder::new();
    b.file("a", 0o644, b"".to_vec()).unwrap();
    let e = b.file("./a", 0o644, b"".to_vec()).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    assert!(
        b.file("a/b", 0o644, b"".to_vec())
            .unwrap_err()
            .to_string()
            .contains("parent")
    );
    assert!(
        b.file("../x", 0o644, b"".to_vec())
            .unwrap_err()
            .to_string()
            .contains("..")
    );
    assert!(b.file("/", 0o644, b"".to_vec()).is_err());
    b.file("d/x", 0o644, b"".to_vec()).unwrap();
    assert!(b.symlink("d", "/elsewhere").is_err());
    assert!(
        b.dir("d", 0o700).is_ok(),
        "an explicit dir over implied parent is fine"
    );
}

#[test]
fn flattening_a_deterministic_layer_round_trips() {
    let built = build(&[0, 1, 2, 3, 4, 5]);
    let layers = vec![atlas_image::layer::Layer::from_bytes(
        built.digest.clone(),
        None,
        built.gzip.clone(),
    )];
    let mut out = Vec::new();
    atlas_image::layer::flatten(&layers, &mut out, &Default::default()).unwrap();
    let f = parse(out);
    assert_eq!(f.get("etc/atlas/app.toml").data, b"x = 1\n");
    assert_eq!(f.get("var/lib/app/seed").uid, 472);
}

#[test]
fn hard_links_come_after_their_targets_and_must_point_at_a_file() {
    use atlas_image::layer::deterministic::{EntrySpec, Item};
    let spec = |item| EntrySpec {
        item,
        mode: 0o644,
        uid: 0,
        gid: 0,
        xattrs: Vec::new(),
    };
    let mut b = LayerBuilder::new();
    // "a/link" sorts before "b/file": the link must still follow its target in the stream.
    b.entry("a/link", spec(Item::Hardlink("/b/file".into())))
        .unwrap();
    b.entry("b/file", spec(Item::File(b"data".to_vec())))
        .unwrap();
    let built = b.build().unwrap();
    let layers = vec![atlas_image::layer::Layer::from_bytes(
        built.digest.clone(),
        None,
        built.gzip.clone(),
    )];
    let mut out = Vec::new();
    atlas_image::layer::flatten(&layers, &mut out, &Default::default()).unwrap();
    let f = parse(out);
    // The flattener accepted it (a link before its target is refused) and kept one group,
    // whose first path in sorted order now carries the data.
    assert_eq!(f.get("a/link").data, b"data");
    assert_eq!(f.get("b/file").link.as_deref(), Some("a/link"));

    let mut b = LayerBuilder::new();
    b.entry("l", spec(Item::Hardlink("missing".into())))
        .unwrap();
    b.dir("d", 0o755).unwrap();
    let e = b.build().unwrap_err().to_string();
    assert!(
        e.contains("\"l\"") && e.contains("not a regular file"),
        "{e}"
    );
}
