//! Placing a new layer's paths through the symlinks of the merged image (`Placer`), the way
//! an extraction that follows symlinks would: what the Atlas layer relies on to put
//! atlas-init where `/sbin/init` resolves.

use atlas_image::layer::{Placer, index_layers};

use crate::common::*;

fn placer_over(blobs: Vec<Vec<u8>>) -> Vec<atlas_image::layer::LayerIndex> {
    index_layers(&layers_of(blobs), 1).unwrap()
}

#[test]
fn paths_follow_relative_absolute_and_chained_symlinks() {
    let l1 = layer()
        .dir("usr/sbin", 0o755)
        .dir("usr/lib/x86_64", 0o755)
        .symlink("sbin", "usr/sbin")
        .symlink("lib", "/usr/lib")
        .symlink("usr/lib64", "lib/x86_64")
        .symlink("lib64", "usr/lib64")
        .symlink("up", "../../usr")
        .file("etc/hostname", 0o644, b"x")
        .symlink("usr/sbin/init", "../../bin/busybox")
        .tar();
    let idx = placer_over(vec![l1]);
    let p = Placer::new(&idx).unwrap();
    assert_eq!(p.place("/sbin/init", false).unwrap(), "usr/sbin/init");
    assert_eq!(p.place("sbin", true).unwrap(), "usr/sbin");
    assert_eq!(
        p.place("sbin", false).unwrap(),
        "sbin",
        "a file replaces the link"
    );
    assert_eq!(p.place("/lib/libc.so", false).unwrap(), "usr/lib/libc.so");
    assert_eq!(
        p.place("lib64/ld.so", false).unwrap(),
        "usr/lib/x86_64/ld.so"
    );
    assert_eq!(
        p.place("up/bin/x", false).unwrap(),
        "usr/bin/x",
        ".. stops at /"
    );
    // Missing parents stay as written; the layer creates them.
    assert_eq!(
        p.place("/etc/atlas/service.json", false).unwrap(),
        "etc/atlas/service.json"
    );
    assert_eq!(p.place("opt/new/dir", true).unwrap(), "opt/new/dir");
    // The last component of a file is never followed: ours replaces the symlink.
    assert_eq!(p.place("usr/sbin/init", false).unwrap(), "usr/sbin/init");
}

#[test]
fn a_dangling_symlink_leads_to_the_directory_it_names() {
    let l1 = layer().symlink("sbin", "usr/sbin").tar();
    let idx = placer_over(vec![l1]);
    let p = Placer::new(&idx).unwrap();
    assert_eq!(p.place("sbin/init", false).unwrap(), "usr/sbin/init");
}

#[test]
fn later_layers_decide_what_a_path_is() {
    // Layer 2 deletes the symlink and makes /sbin a real directory.
    let l1 = layer()
        .dir("usr/sbin", 0o755)
        .symlink("sbin", "usr/sbin")
        .tar();
    let l2 = layer().whiteout("sbin").dir("sbin", 0o755).tar();
    let idx = placer_over(vec![l1, l2]);
    let p = Placer::new(&idx).unwrap();
    assert_eq!(p.place("sbin/init", false).unwrap(), "sbin/init");
}

#[test]
fn loops_and_files_on_the_way_are_refused_with_the_path() {
    let l1 = layer()
        .symlink("a", "b")
        .symlink("b", "a")
        .file("etc", 0o644, b"not a directory")
        .tar();
    let idx = placer_over(vec![l1]);
    let p = Placer::new(&idx).unwrap();
    let e = p.place("a/init", false).unwrap_err().to_string();
    assert!(e.contains("a/init") && e.contains("too many levels"), "{e}");
    let e = p
        .place("/etc/atlas/service.json", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/etc is a file"), "{e}");
}
