//! OCI semantics of the flattener, one behaviour per test, layers generated here.

use std::io::Write;

use atlas_image::layer::{
    Compression, FlattenOptions, Indexer, Layer, LayerIndex, flatten, flatten_indexed, index_layers,
};

use crate::common::*;

#[test]
fn metadata_is_kept_and_names_dropped() {
    let l = layer()
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file_owned("usr/bin/sudo", 0o4755, 0, 0, b"suid")
        .file_owned("usr/bin/wall", 0o2755, 0, 5, b"sgid")
        .dir("tmp", 0o1777)
        .file_owned("home/app/data", 0o600, 1000, 1001, b"hello")
        .file_owned("big-ids", 0o644, 3_000_000, 4_000_000, b"x");
    let f = flat(vec![l.tar()]);
    assert_eq!(f.get("usr/bin/sudo").mode, 0o4755);
    assert_eq!(f.get("usr/bin/wall").mode, 0o2755);
    assert_eq!(f.get("usr/bin/wall").gid, 5);
    assert_eq!(f.get("tmp").mode, 0o1777);
    let data = f.get("home/app/data");
    assert_eq!((data.uid, data.gid, data.mode), (1000, 1001, 0o600));
    assert_eq!(data.data, b"hello");
    assert_eq!(data.mtime, 1_700_000_000);
    // ids beyond the 7 octal digits of ustar travel in PAX records
    assert_eq!(
        (f.get("big-ids").uid, f.get("big-ids").gid),
        (3_000_000, 4_000_000)
    );
    // parents the layer omitted are synthesized root-owned 0755 with mtime 0
    let home = f.get("home");
    assert_eq!(
        (home.kind, home.mode, home.uid, home.mtime),
        ('d', 0o755, 0, 0)
    );
    assert!(
        f.map.values().all(|o| o.uname.is_empty()),
        "user names must be dropped"
    );
}

#[test]
fn order_is_parents_first_and_deterministic() {
    let l1 = layer()
        .file("z/late", 0o644, b"1")
        .file("a/b/c", 0o644, b"2")
        .symlink("a/link", "b");
    let l2 = layer().file("a/b/d", 0o644, b"3").dir("m", 0o700);
    let one = flat(vec![l1.tar(), l2.tar()]);
    let l1 = layer()
        .file("z/late", 0o644, b"1")
        .file("a/b/c", 0o644, b"2")
        .symlink("a/link", "b");
    let l2 = layer().file("a/b/d", 0o644, b"3").dir("m", 0o700);
    let two = flat(vec![l1.tar(), l2.tar()]);
    assert_eq!(one.bytes, two.bytes, "same input must give the same bytes");
    assert_eq!(one.order[0], ".");
    for (i, p) in one.order.iter().enumerate() {
        if let Some((parent, _)) = p.rsplit_once('/') {
            let pi = one
                .order
                .iter()
                .position(|q| q == parent)
                .expect("parent present");
            assert!(pi < i, "{parent} after {p}");
        }
    }
}

#[test]
fn whiteouts_hide_lower_files_and_subtrees_only() {
    let l1 = layer()
        .file("etc/keep", 0o644, b"k")
        .file("etc/gone", 0o644, b"g")
        .file("var/cache/a", 0o644, b"a")
        .file("var/cache/sub/b", 0o644, b"b");
    // The whiteout of etc/new in the same layer must not hide the layer's own etc/new.
    let l2 = layer()
        .whiteout("etc/gone")
        .whiteout("var/cache")
        .file("etc/new", 0o644, b"n")
        .whiteout("etc/new")
        .whiteout("does/not/exist");
    let f = flat(vec![l1.tar(), l2.tar()]);
    assert!(f.has("etc/keep"));
    assert!(!f.has("etc/gone"));
    assert!(!f.has("var/cache") && !f.has("var/cache/a") && !f.has("var/cache/sub/b"));
    assert!(f.has("var"));
    assert_eq!(f.get("etc/new").data, b"n");
    assert!(
        !f.order.iter().any(|p| p.contains(".wh.")),
        "whiteout markers leaked: {:?}",
        f.order
    );
}

#[test]
fn opaque_dir_hides_lower_children_keeps_own() {
    let l1 = layer()
        .dir("opt", 0o755)
        .file("opt/old1", 0o644, b"1")
        .file("opt/d/old2", 0o644, b"2")
        .file("other", 0o644, b"o");
    let l2 = layer()
        .dir("opt", 0o700)
        .opaque("opt")
        .file("opt/new", 0o644, b"n");
    let f = flat(vec![l1.tar(), l2.tar()]);
    assert!(!f.has("opt/old1") && !f.has("opt/d") && !f.has("opt/d/old2"));
    assert_eq!(f.get("opt/new").data, b"n");
    assert_eq!(f.get("opt").mode, 0o700);
    assert!(f.has("other"));
    assert!(!f.order.iter().any(|p| p.contains(".wh.")));
}

#[test]
fn directory_replaced_by_file_and_symlink_and_back() {
    let l1 = layer()
        .file("a/x", 0o644, b"x")
        .file("b/y", 0o644, b"y")
        .file("c", 0o644, b"was a file");
    let l2 = layer()
        .file("a", 0o600, b"now a file")
        .symlink("b", "/elsewhere")
        .dir("c", 0o750)
        .file("c/inside", 0o644, b"i");
    let f = flat(vec![l1.tar(), l2.tar()]);
    assert_eq!(f.get("a").kind, 'f');
    assert_eq!(f.get("a").data, b"now a file");
    assert!(!f.has("a/x"));
    assert_eq!(f.get("b").kind, 'l');
    assert_eq!(f.get("b").link.as_deref(), Some("/elsewhere"));
    assert!(!f.has("b/y"));
    assert_eq!(f.get("c").kind, 'd');
    assert_eq!(f.get("c").mode, 0o750);
    assert_eq!(f.get("c/inside").data, b"i");
}

#[test]
fn symlinks_kept_verbatim() {
    let l = layer()
        .symlink("lib64", "usr/lib64")
        .symlink("bin/sh", "/bin/busybox")
        .symlink("etc/up", "../../../outside")
        .symlink(
            &format!("long/{}", "l".repeat(150)),
            &format!("/{}", "t".repeat(200)),
        );
    let f = flat(vec![l.tar()]);
    assert_eq!(f.get("lib64").link.as_deref(), Some("usr/lib64"));
    assert_eq!(f.get("bin/sh").link.as_deref(), Some("/bin/busybox"));
    // a symlink may point anywhere: it is data, and nothing is extracted through it
    assert_eq!(f.get("etc/up").link.as_deref(), Some("../../../outside"));
    let long = f.get(&format!("long/{}", "l".repeat(150)));
    assert_eq!(
        long.link.as_deref(),
        Some(format!("/{}", "t".repeat(200)).as_str())
    );
}

#[test]
fn hard_links_within_and_across_layers() {
    let l1 = layer()
        .file("bin/busybox", 0o755, b"BB")
        .hardlink("bin/ls", "bin/busybox");
    let l2 = layer()
        .hardlink("bin/cat", "bin/busybox")
        .hardlink("bin/dd", "./bin/ls");
    let f = flat(vec![l1.tar(), l2.tar()]);
    assert_eq!(f.get("bin/busybox").kind, 'f');
    assert_eq!(f.get("bin/busybox").data, b"BB");
    for p in ["bin/cat", "bin/dd", "bin/ls"] {
        assert_eq!(f.get(p).kind, 'h', "{p}");
        assert_eq!(f.get(p).link.as_deref(), Some("bin/busybox"), "{p}");
    }
}

#[test]
fn hard_link_keeps_content_when_target_is_replaced_or_deleted() {
    let l1 = layer()
        .file("orig", 0o640, b"ORIGINAL")
        .file("other", 0o644, b"O");
    let l2 = layer()
        .hardlink("z-link", "orig")
        .hardlink("y-link", "other");
    let l3 = layer().file("orig", 0o644, b"REPLACED").whiteout("other");
    let f = flat(vec![l1.tar(), l2.tar(), l3.tar()]);
    assert_eq!(f.get("orig").data, b"REPLACED");
    assert_eq!(
        f.get("z-link").kind,
        'f',
        "the surviving path carries the inode's data"
    );
    assert_eq!(f.get("z-link").data, b"ORIGINAL");
    assert_eq!(f.get("z-link").mode, 0o640);
    assert!(!f.has("other"));
    assert_eq!(f.get("y-link").data, b"O");
}

#[test]
fn hard_link_group_primary_is_first_path_and_rest_link() {
    // The original path sorts after its link: the link becomes the primary.
    let l1 = layer()
        .file("z", 0o644, b"Z")
        .hardlink("a", "z")
        .hardlink("m", "z");
    let f = flat(vec![l1.tar()]);
    assert_eq!(f.get("a").kind, 'f');
    assert_eq!(f.get("a").data, b"Z");
    assert_eq!(f.get("m").link.as_deref(), Some("a"));
    assert_eq!(f.get("z").link.as_deref(), Some("a"));
    let ia = f.order.iter().position(|p| p == "a").unwrap();
    let iz = f.order.iter().position(|p| p == "z").unwrap();
    assert!(ia < iz, "link target must precede the link");
}

#[test]
fn devices_and_fifos() {
    let l = layer()
        .node("dev/null", tar::EntryType::Char, 1, 3)
        .node("dev/sda", tar::EntryType::Block, 8, 0)
        .node("run/fifo", tar::EntryType::Fifo, 0, 0);
    let f = flat(vec![l.tar()]);
    assert_eq!(f.get("dev/null").kind, 'c');
    assert_eq!(f.get("dev/null").dev, Some((1, 3)));
    assert_eq!(f.get("dev/sda").kind, 'b');
    assert_eq!(f.get("dev/sda").dev, Some((8, 0)));
    assert_eq!(f.get("run/fifo").kind, 'p');
    assert_eq!(f.get("dev/null").mode, 0o620);
}

#[test]
fn xattrs_travel_as_pax() {
    let l = layer().with_xattrs(
        "usr/bin/ping",
        &[
            ("security.capability", b"\x01\x00\x00\x02\x00\x20"),
            ("user.note", b"hi"),
        ],
        b"PING",
    );
    let f = flat(vec![l.tar()]);
    let ping = f.get("usr/bin/ping");
    assert_eq!(ping.data, b"PING");
    let mut x = ping.xattrs.clone();
    x.sort();
    assert_eq!(
        x,
        vec![
            (
                "security.capability".to_string(),
                b"\x01\x00\x00\x02\x00\x20".to_vec()
            ),
            ("user.note".to_string(), b"hi".to_vec())
        ]
    );
}

#[test]
fn long_names_gnu_and_pax_and_long_link_targets() {
    let deep = format!("{}/{}", "d".repeat(120), "f".repeat(120));
    let l1 = layer().file(&deep, 0o644, b"deep");
    let l2 = layer().hardlink("short", &deep);
    let f = flat(vec![l1.tar(), l2.tar()]);
    assert_eq!(f.get(&deep).data, b"deep");
    // sorted first path of the group is the long one ('d' < 's')
    assert_eq!(f.get("short").link.as_deref(), Some(deep.as_str()));
}

#[test]
fn gzip_zstd_and_plain_by_magic_and_media_type() {
    let mk = || layer().file("f", 0o644, b"same");
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (mk().tar(), None),
        (mk().gz(), None),
        (mk().zst(), None),
        (
            mk().gz(),
            Some("application/vnd.oci.image.layer.v1.tar+gzip"),
        ),
        (
            mk().zst(),
            Some("application/vnd.oci.image.layer.v1.tar+zstd"),
        ),
        // Docker labels uncompressed layers tar.gzip at times: the magic wins.
        (mk().tar(), Some("application/vnd.oci.image.layer.v1.tar")),
        (
            mk().zst(),
            Some("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ),
    ];
    for (i, (blob, mt)) in cases.into_iter().enumerate() {
        let layers = vec![Layer::from_bytes(digest(i), mt.map(String::from), blob)];
        let mut out = Vec::new();
        flatten(&layers, &mut out, &FlattenOptions::default())
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(parse(out).get("f").data, b"same", "case {i}");
    }
    let idx = Layer::from_bytes(digest(0), None, mk().zst())
        .index()
        .unwrap();
    assert_eq!(idx.compression, Compression::Zstd);
}

#[test]
fn prefix_puts_everything_under_rootfs() {
    let l = layer()
        .file("etc/hosts", 0o644, b"h")
        .file("bin/a", 0o755, b"a")
        .hardlink("bin/b", "bin/a");
    let opts = FlattenOptions {
        prefix: Some("rootfs".into()),
        threads: 0,
        leading_files: vec![
            ("metadata.yaml".into(), b"architecture: x86_64\n".to_vec()),
            ("templates/hosts.tpl".into(), b"h".to_vec()),
        ],
    };
    let f = try_flat_opts(vec![l.tar()], &opts).unwrap();
    assert_eq!(
        f.order[..4],
        [
            "metadata.yaml",
            "templates",
            "templates/hosts.tpl",
            "rootfs"
        ]
    );
    assert_eq!(f.get("metadata.yaml").data, b"architecture: x86_64\n");
    assert!(
        f.order[3..]
            .iter()
            .all(|p| p == "rootfs" || p.starts_with("rootfs/")),
        "{:?}",
        f.order
    );
    assert_eq!(f.get("rootfs/bin/b").link.as_deref(), Some("rootfs/bin/a"));
}

#[test]
fn absolute_and_dot_paths_are_normalized() {
    let l = layer()
        .raw(b"/etc/abs", tar::EntryType::Regular, b"", 1, b"A")
        .raw(b"./etc/./dot", tar::EntryType::Regular, b"", 1, b"D");
    let f = flat(vec![l.tar()]);
    assert_eq!(f.get("etc/abs").data, b"A");
    assert_eq!(f.get("etc/dot").data, b"D");
    assert!(f.order.iter().all(|p| !p.starts_with('/')));
}

#[test]
fn root_entry_metadata_is_taken_from_the_top_layer() {
    let l1 = layer().dir("./", 0o755).file("x", 0o644, b"");
    let l2 = layer().dir_owned("./", 0o750, 0, 0);
    let f = flat(vec![l1.tar(), l2.tar()]);
    assert_eq!(f.order[0], ".");
    assert_eq!(f.get(".").mode, 0o750);
}

#[test]
fn indexer_tee_matches_direct_index_and_flatten_indexed_works() {
    let blob = layer()
        .file("a", 0o644, &vec![7u8; 300_000])
        .hardlink("b", "a")
        .gz();
    let direct = LayerIndex::from_blob(&digest(0), None, &blob[..]).unwrap();
    let mut tee = Indexer::new(
        &digest(0),
        Some("application/vnd.oci.image.layer.v1.tar+gzip"),
    );
    for chunk in blob.chunks(1000) {
        tee.write_all(chunk).unwrap();
    }
    let teed = tee.finish().unwrap();
    assert_eq!(direct, teed);
    // the index round-trips through JSON (what a cache would store)
    let json = serde_json::to_vec(&teed).unwrap();
    let back: LayerIndex = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, direct);
    let layers = layers_of(vec![blob]);
    let mut a = Vec::new();
    flatten_indexed(&layers, &[back], &mut a, &FlattenOptions::default()).unwrap();
    let mut b = Vec::new();
    flatten(&layers, &mut b, &FlattenOptions::default()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn indexer_tee_reports_malformed_layer_at_finish() {
    let mut tee = Indexer::new("sha256:teebad", None);
    tee.write_all(&[0x42; 2000]).unwrap();
    let err = tee.finish().unwrap_err().to_string();
    assert!(err.contains("sha256:teebad"), "{err}");
}

#[test]
fn parallel_indexing_reports_the_lowest_failing_layer() {
    let blobs = vec![
        layer().file("ok", 0o644, b"1").tar(),
        vec![1u8; 1024],
        vec![2u8; 1024],
    ];
    let layers = layers_of(blobs);
    for _ in 0..5 {
        let err = index_layers(&layers, 3).unwrap_err().to_string();
        assert!(err.contains(&digest(1)), "{err}");
    }
}

#[test]
fn file_contents_stream_intact_across_big_layers() {
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let l1 = layer().file("big", 0o644, &big).file("small", 0o644, b"s");
    let l2 = layer().file("big2", 0o644, &big[..1_000_001]);
    let f = flat(vec![l1.zst(), l2.gz()]);
    assert_eq!(f.get("big").data, big);
    assert_eq!(f.get("big2").data, &big[..1_000_001]);
}

#[test]
fn each_blob_is_read_once_per_pass_and_shadowed_layers_not_at_all() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let counted = |i: usize, blob: Vec<u8>, opens: Arc<AtomicUsize>| {
        let blob: Arc<[u8]> = blob.into();
        Layer::new(digest(i), None, move || {
            opens.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(std::io::Cursor::new(Arc::clone(&blob))) as Box<dyn std::io::Read + Send>)
        })
    };
    let opens: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    // layer 0's only file is replaced by layer 1: its data is never needed
    let layers = vec![
        counted(0, layer().file("f", 0o644, b"old").gz(), opens[0].clone()),
        counted(1, layer().file("f", 0o644, b"new").gz(), opens[1].clone()),
    ];
    let indexes = index_layers(&layers, 2).unwrap();
    assert_eq!(opens[0].load(Ordering::SeqCst), 1);
    let mut out = Vec::new();
    flatten_indexed(&layers, &indexes, &mut out, &FlattenOptions::default()).unwrap();
    assert_eq!(
        opens[0].load(Ordering::SeqCst),
        1,
        "shadowed layer reopened"
    );
    assert_eq!(opens[1].load(Ordering::SeqCst), 2);
    assert_eq!(parse(out).get("f").data, b"new");
}

#[test]
fn index_binary_form_round_trips_and_refuses_damage() {
    let blob = layer()
        .file("a", 0o4755, b"data")
        .hardlink("b", "a")
        .symlink("c", "/x")
        .whiteout("gone")
        .with_xattrs("x", &[("user.k", b"v")], b"")
        .node("dev/null", tar::EntryType::Char, 1, 3)
        .zst();
    let index = LayerIndex::from_blob(&digest(0), None, &blob[..]).unwrap();
    let bytes = index.to_bytes();
    assert_eq!(LayerIndex::from_bytes(&digest(0), &bytes).unwrap(), index);
    let wrong = LayerIndex::from_bytes(&digest(1), &bytes)
        .unwrap_err()
        .to_string();
    assert!(
        wrong.contains(&digest(1)) && wrong.contains(&digest(0)),
        "{wrong}"
    );
    // every truncation is an error, never a panic
    for cut in 0..bytes.len() {
        let err = LayerIndex::from_bytes(&digest(0), &bytes[..cut])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unreadable"), "{err}");
    }
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let _ = LayerIndex::from_bytes(&digest(0), &flipped); // may decode; the merge validates it
}

/// Layers are read concurrently while writing (in groups of four); whatever the number of
/// layers, their compression or the size of their files, every winning file arrives whole,
/// the regular files of one layer keep their stream order, and the bytes are the same on
/// every run.
#[test]
fn many_layers_read_concurrently_keep_content_order_and_bytes() {
    let big = |seed: u8| -> Vec<u8> {
        (0..(700 * 1024 + seed as usize))
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    };
    let make = || -> Vec<Vec<u8>> {
        (0..7u8)
            .map(|n| {
                let l = layer()
                    .file(&format!("l{n}/first"), 0o644, &[n; 3])
                    .file(&format!("l{n}/big"), 0o644, &big(n))
                    .file(&format!("l{n}/empty"), 0o644, b"")
                    .file("shared", 0o644, &[b'a' + n; 5])
                    .file(&format!("l{n}/last"), 0o644, &[n; 1000]);
                let l = if n == 3 { l.whiteout("l1") } else { l };
                match n % 3 {
                    0 => l.tar(),
                    1 => l.gz(),
                    _ => l.zst(),
                }
            })
            .collect()
    };
    let f = flat(make());
    for n in 0..7u8 {
        if n == 1 {
            assert!(!f.has("l1/big"), "whited out by layer 3");
            continue;
        }
        assert_eq!(f.get(&format!("l{n}/first")).data, vec![n; 3]);
        assert_eq!(f.get(&format!("l{n}/big")).data, big(n), "l{n}/big");
        assert_eq!(f.get(&format!("l{n}/empty")).data, b"");
        assert_eq!(f.get(&format!("l{n}/last")).data, vec![n; 1000]);
        let pos = |p: &str| f.order.iter().position(|o| o == p).unwrap();
        assert!(pos(&format!("l{n}/first")) < pos(&format!("l{n}/big")));
        assert!(pos(&format!("l{n}/big")) < pos(&format!("l{n}/last")));
    }
    assert_eq!(f.get("shared").data, b"ggggg", "the top layer wins");
    assert_eq!(flat(make()).bytes, f.bytes, "same input, same bytes");
}

/// A blob that changed between indexing and writing (same digest, other bytes) fails the
/// write with an error naming the layer, in any layer of a concurrently read group, and the
/// other readers do not keep the write from returning.
#[test]
fn a_blob_that_changes_after_indexing_fails_the_write_without_hanging() {
    let make = |n: u8, size: usize| {
        layer()
            .file(&format!("l{n}/a"), 0o644, &vec![n; 300 * 1024])
            .file(&format!("l{n}/b"), 0o644, &vec![n; size])
            .gz()
    };
    let indexed: Vec<Vec<u8>> = (0..3).map(|n| make(n, 1000)).collect();
    let indexes = index_layers(&layers_of(indexed), 0).unwrap();
    for changed in 0..3u8 {
        let blobs: Vec<Vec<u8>> = (0..3)
            .map(|n| make(n, if n == changed { 999 } else { 1000 }))
            .collect();
        let mut out = Vec::new();
        let err = flatten_indexed(
            &layers_of(blobs),
            &indexes,
            &mut out,
            &FlattenOptions::default(),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&digest(changed as usize)), "{msg}");
        assert!(msg.contains(&format!("l{changed}/b")), "{msg}");
    }
}
