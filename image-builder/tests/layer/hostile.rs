//! Hostile layers: each must fail with a message naming the layer digest and the entry, and
//! nothing may be written to the output (every check here happens before emission starts).

use atlas_image::layer::{FlattenOptions, LayerError, flatten};

use crate::common::*;

/// Flattens and expects a refusal mentioning `needles` and the digest of layer `bad`.
fn refused(blobs: Vec<Vec<u8>>, bad: usize, needles: &[&str]) -> LayerError {
    let mut out = Vec::new();
    let err = flatten(&layers_of(blobs), &mut out, &FlattenOptions::default())
        .expect_err("hostile input must be refused");
    let msg = err.to_string();
    assert!(msg.contains(&digest(bad)), "no digest in: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{n:?} not in: {msg}");
    }
    assert!(
        out.is_empty(),
        "output written before the refusal ({} bytes)",
        out.len()
    );
    err
}

#[test]
fn dotdot_path_is_refused() {
    let l = layer().file("ok", 0o644, b"").raw(
        b"../../etc/passwd",
        tar::EntryType::Regular,
        b"",
        4,
        b"root",
    );
    let e = refused(vec![l.tar()], 0, &["../../etc/passwd", ".."]);
    assert!(matches!(e, LayerError::UnsafePath { .. }));
    let l = layer().raw(b"a/b/../../../x", tar::EntryType::Directory, b"", 0, b"");
    refused(vec![l.tar()], 0, &["a/b/../../../x"]);
}

#[test]
fn dotdot_in_pax_path_is_refused() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("path", &b"x/../../escape"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("innocent").unwrap();
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    refused(vec![b.into_inner().unwrap()], 0, &["x/../../escape"]);
}

#[test]
fn hard_link_escaping_or_dangling_is_refused() {
    let l = layer().hardlink("evil", "../../etc/shadow");
    let e = refused(vec![l.tar()], 0, &["evil", "../../etc/shadow"]);
    assert!(matches!(e, LayerError::BadHardlink { .. }));
    let l1 = layer().file("a", 0o644, b"");
    let l2 = layer().hardlink("dangling", "no/such/file");
    refused(
        vec![l1.tar(), l2.tar()],
        1,
        &["dangling", "no/such/file", "does not exist"],
    );
    // the target is hidden by this layer's whiteout before the link is read
    let l2 = layer().whiteout("a").hardlink("late", "a");
    refused(
        vec![layer().file("a", 0o644, b"").tar(), l2.tar()],
        1,
        &["late", "does not exist"],
    );
    let l = layer().dir("d", 0o755).hardlink("dirlink", "d");
    refused(vec![l.tar()], 0, &["dirlink", "directory"]);
    // a link to a member that comes later in the same stream does not exist yet
    let l = layer().hardlink("early", "later").file("later", 0o644, b"");
    refused(vec![l.tar()], 0, &["early"]);
}

#[test]
fn member_below_a_symlink_is_refused() {
    let l1 = layer().symlink("etc", "/host/etc");
    let l2 = layer().file("etc/passwd", 0o644, b"pwned");
    let e = refused(
        vec![l1.tar(), l2.tar()],
        1,
        &["etc/passwd", "\"etc\"", "symlink"],
    );
    assert!(matches!(e, LayerError::ThroughSymlink { .. }));
    // same layer, and through a relative symlink deeper down
    let l = layer()
        .dir("a", 0o755)
        .symlink("a/b", "../..")
        .file("a/b/c/d", 0o644, b"");
    refused(vec![l.tar()], 0, &["a/b/c/d", "\"a/b\""]);
    // a whiteout that would delete through a symlink as well
    let l1 = layer().symlink("lnk", "/");
    let l2 = layer().whiteout("lnk/etc");
    refused(vec![l1.tar(), l2.tar()], 1, &["lnk/etc", "symlink"]);
}

#[test]
fn member_below_a_file_is_refused() {
    let l = layer().file("f", 0o644, b"").file("f/child", 0o644, b"");
    refused(vec![l.tar()], 0, &["f/child", "not a directory"]);
}

#[test]
fn header_size_larger_than_data_is_truncation() {
    // 10 bytes declared, 3 present, then EOF
    let mut t = layer().file("fine", 0o644, b"ok").tar();
    t.truncate(1024); // drop the end marker
    let mut h = tar::Header::new_ustar();
    h.set_path("liar").unwrap();
    h.set_size(100_000);
    h.set_cksum();
    t.extend_from_slice(h.as_bytes());
    t.extend_from_slice(b"abc");
    let e = refused(vec![t], 0, &["liar", "ends early"]);
    assert!(matches!(e, LayerError::Truncated { .. }), "{e:?}");
}

#[test]
fn header_size_smaller_than_data_is_caught_by_the_next_header() {
    let l = layer()
        .raw(b"liar", tar::EntryType::Regular, b"", 3, &[b'x'; 1500])
        .file("after", 0o644, b"");
    let e = refused(vec![l.tar()], 0, &["after \"liar\"", "checksum"]);
    assert!(matches!(e, LayerError::Malformed { .. }), "{e:?}");
}

#[test]
fn tar_truncated_mid_entry_and_mid_header() {
    let full = layer()
        .file("a", 0o644, &[1u8; 5000])
        .file("b", 0o644, b"b")
        .tar();
    refused(
        vec![full[..512 + 2000].to_vec()],
        0,
        &["\"a\"", "ends early"],
    );
    refused(
        vec![full[..512 + 5120 + 100].to_vec()],
        0,
        &["after \"a\"", "ends early"],
    );
}

#[test]
fn truncated_and_corrupt_gzip() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    let gz = layer().file("payload", 0o644, &data).gz();
    refused(vec![gz[..gz.len() / 2].to_vec()], 0, &["gzip"]);
    // cut only the trailer (CRC + size): the tar is complete, the gzip is not
    refused(vec![gz[..gz.len() - 4].to_vec()], 0, &["gzip"]);
    let mut bad = gz.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    bad[mid + 1] ^= 0x55;
    refused(vec![bad], 0, &["gzip"]);
}

#[test]
fn truncated_and_corrupt_zstd() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    // With a frame checksum (the zstd CLI's default) corruption cannot go unnoticed; without
    // one, only the registry digest (checked by the puller) can catch flipped literal bytes.
    let tar = layer().file("payload", 0o644, &data).tar();
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.include_checksum(true).unwrap();
    std::io::Write::write_all(&mut enc, &tar).unwrap();
    let zst = enc.finish().unwrap();
    refused(vec![zst[..zst.len() / 2].to_vec()], 0, &["zstd"]);
    let mut bad = zst.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    bad[mid + 7] ^= 0x55;
    refused(vec![bad], 0, &["zstd"]);
}

#[test]
fn declared_gzip_that_is_not_gzip() {
    let layers = vec![atlas_image::layer::Layer::from_bytes(
        digest(0),
        Some("application/vnd.oci.image.layer.v1.tar+gzip".into()),
        layer().file("a", 0o644, b"").tar(),
    )];
    let err = flatten(&layers, &mut Vec::new(), &FlattenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&digest(0)) && err.contains("declares gzip"),
        "{err}"
    );
}

#[test]
fn absurd_sizes_are_refused() {
    // a regular file claiming 2 TiB (base-256 size field)
    let mut h = tar::Header::new_gnu();
    h.set_path("huge").unwrap();
    h.set_size(2 << 40);
    h.set_cksum();
    let mut t = h.as_bytes().to_vec();
    t.extend_from_slice(&[0u8; 1024]);
    let e = refused(vec![t], 0, &["huge", "file size"]);
    assert!(matches!(e, LayerError::TooLarge { .. }));
    // a PAX header claiming 1 GiB: refused before any allocation
    let l = layer().raw(b"PaxHeaders/x", tar::EntryType::XHeader, b"", 1 << 30, b"");
    refused(vec![l.tar()], 0, &["extension header"]);
}

#[test]
fn sparse_and_unknown_types_get_clear_errors() {
    let l = layer().raw(b"sparse-file", tar::EntryType::GNUSparse, b"", 0, b"");
    refused(vec![l.tar()], 0, &["sparse-file", "sparse"]);
    let l = layer().raw(b"volume-label", tar::EntryType::new(b'V'), b"", 0, b"");
    refused(vec![l.tar()], 0, &["volume-label", "unsupported"]);
}

#[test]
fn garbage_is_not_a_layer() {
    let e = refused(vec![vec![0x5a; 4096]], 0, &["checksum"]);
    assert!(matches!(e, LayerError::Malformed { .. }), "{e:?}");
    // empty blob = empty layer; a layer of only an end marker too
    let f = flat(vec![Vec::new(), vec![0u8; 1024]]);
    assert_eq!(f.order, vec!["."]);
}

#[test]
fn error_in_an_upper_layer_names_that_layer() {
    let good = layer().file("a", 0o644, b"").tar();
    let bad = layer()
        .raw(b"../x", tar::EntryType::Regular, b"", 0, b"")
        .tar();
    refused(vec![good.clone(), good, bad], 2, &["../x"]);
}

#[test]
fn whiteout_of_dot_or_dotdot_is_refused() {
    let l = layer().file("a/.wh...", 0o644, b"");
    refused(
        vec![layer().file("a/x", 0o644, b"").tar(), l.tar()],
        1,
        &["a/.wh...", "whiteout"],
    );
}

#[test]
fn tampered_cached_index_is_refused() {
    let blob = layer().file("etc/passwd", 0o644, b"x").tar();
    let mut index = atlas_image::layer::LayerIndex::from_blob(&digest(0), None, &blob[..]).unwrap();
    // same length, so only the arena changes
    let at = index
        .names
        .windows(10)
        .position(|w| w == b"etc/passwd")
        .unwrap();
    index.names[at..at + 10].copy_from_slice(b"../passwd0");
    let mut out = Vec::new();
    let err = atlas_image::layer::flatten_indexed(
        &layers_of(vec![blob]),
        &[index],
        &mut out,
        &FlattenOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&digest(0)) && err.contains("not normalized"),
        "{err}"
    );
    assert!(out.is_empty());
}

#[test]
fn chained_extension_headers_cannot_accumulate() {
    // 3 PAX headers of 400 KiB xattrs each, for one member: over the 1 MiB cap together
    let big = vec![b'v'; 400 << 10];
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..3 {
        let key = format!("SCHILY.xattr.user.k{i}");
        b.append_pax_extensions([(key.as_str(), &big[..])]).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_path("victim").unwrap();
    h.set_size(0);
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
    refused(vec![b.into_inner().unwrap()], 0, &["extension header"]);
}

#[test]
fn index_metadata_budget_is_enforced() {
    // 200 members with 500 KiB of xattrs each: 100 MB of header data in one layer
    let big = vec![b'v'; 500 << 10];
    let mut l = layer();
    for i in 0..200 {
        l = l.with_xattrs(&format!("f{i}"), &[("user.big", &big[..])], b"");
    }
    refused(vec![l.tar()], 0, &["index metadata"]);
}

#[test]
fn missing_blob_and_mismatched_indexes_are_named() {
    let gone = atlas_image::layer::Layer::from_file(
        digest(7),
        None,
        std::path::PathBuf::from("/nonexistent/blob"),
    );
    let err = flatten(&[gone], &mut Vec::new(), &FlattenOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&digest(7)) && err.contains("cannot open"),
        "{err}"
    );

    let layers = layers_of(vec![layer().file("a", 0o644, b"").tar(), layer().tar()]);
    let idx0 = layers[0].index().unwrap();
    let idx1 = layers[1].index().unwrap();
    let mut out = Vec::new();
    let opts = FlattenOptions::default();
    let err =
        atlas_image::layer::flatten_indexed(&layers, std::slice::from_ref(&idx0), &mut out, &opts)
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("2 layers") && err.contains("1 indexes"),
        "{err}"
    );
    let err = atlas_image::layer::flatten_indexed(&layers, &[idx1, idx0], &mut out, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&digest(0)) && err.contains(&digest(1)),
        "{err}"
    );
    assert!(out.is_empty());
}
