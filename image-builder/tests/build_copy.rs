//! A recipe's `[[copy]]`: a path out of another OCI image (the Caddy-with-plugins binary in
//! production) laid into the Atlas layer with its mode, owner, xattrs and links, after the
//! source image's own whiteouts; symlinks on the way to the path followed inside the image;
//! reproducible; and read back by umoci.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use atlas_image::build::{self, AtlasSpec, BuildError};
use atlas_image::cache::BlobCache;
use atlas_image::digest::Digest;
use atlas_image::oci_layout::OciLayoutWriter;
use atlas_image::platform::Platform;
use atlas_image::progress::NoProgress;
use atlas_image::recipe::Recipe;
use atlas_image::source::{PullOptions, PulledImage, Source, pull};
use common::images::{Comp, Layer, build_image_with, umoci_unpack, write_image};
use common::*;

const RECIPE: &str = r#"
name = "web"
[base]
image = "127.0.0.1:5000/t-build/base:1"
[[copy]]
image = "127.0.0.1:5000/t-build/plugins:1"
from = "/opt/plug"
to = "/usr/lib/plug"
[[copy]]
image = "127.0.0.1:5000/t-build/plugins:1"
from = "/usr/local/bin/tool"
to = "/usr/bin/"
[[copy]]
image = "127.0.0.1:5000/t-build/plugins:1"
from = "/opt/plug/lib/b.so"
to = "/usr/lib/b.so"
[config]
cmd = ["/usr/bin/tool"]
[health]
tcp = { port = 8080 }
"#;

fn recipe(text: &str) -> Recipe {
    Recipe::parse(text, Path::new("images/web.toml")).unwrap()
}

struct Member {
    path: &'static str,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    data: &'static [u8],
    link: &'static str,
    xattr: Option<(&'static str, &'static [u8])>,
}

fn m(path: &'static str, kind: tar::EntryType, mode: u32, data: &'static [u8]) -> Member {
    Member {
        path,
        kind,
        mode,
        uid: 0,
        data,
        link: "",
        xattr: None,
    }
}

fn link(path: &'static str, kind: tar::EntryType, target: &'static str) -> Member {
    Member {
        link: target,
        ..m(path, kind, 0o777, b"")
    }
}

fn tar_of(members: &[Member]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in members {
        if let Some((k, v)) = e.xattr {
            let key = format!("SCHILY.xattr.{k}");
            b.append_pax_extensions([(key.as_str(), v)]).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.uid);
        h.set_mtime(1_700_000_000);
        h.set_size(e.data.len() as u64);
        if !e.link.is_empty() {
            h.set_link_name(e.link).unwrap();
        }
        b.append_data(&mut h, e.path, e.data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The image copies are taken from: two layers, the second deleting and adding files.
fn plugin_layout(dir: &Path) -> Digest {
    use tar::EntryType::{Block, Directory, Link, Regular, Symlink};
    let lower = tar_of(&[
        m("opt/", Directory, 0o755, b""),
        m("opt/plug/", Directory, 0o750, b""),
        m("opt/plug/bin/", Directory, 0o755, b""),
        Member {
            uid: 1000,
            xattr: Some(("user.cap", b"bind")),
            ..m("opt/plug/bin/tool", Regular, 0o4755, b"#!tool v1\n")
        },
        m("opt/plug/lib/", Directory, 0o755, b""),
        m("opt/plug/lib/a.so", Regular, 0o644, b"shared object"),
        link("opt/plug/lib/b.so", Link, "opt/plug/lib/a.so"),
        m("opt/plug/lib/gone", Regular, 0o644, b"deleted above"),
        link("opt/plug/current", Symlink, "bin/tool"),
        link("opt/plug/abs", Symlink, "/etc/passwd"),
        m("opt/other", Regular, 0o644, b"not copied"),
        m("usr/", Directory, 0o755, b""),
        m("usr/local/", Directory, 0o755, b""),
        link("usr/local/bin", Symlink, "../../opt/plug/bin"),
        m("dev/", Directory, 0o755, b""),
        m("dev/sda", Block, 0o600, b""),
    ]);
    let upper = tar_of(&[
        m("opt/plug/lib/.wh.gone", Regular, 0o644, b""),
        m("opt/plug/lib/c.so", Regular, 0o644, b"added later"),
    ]);
    let mut w = OciLayoutWriter::create(dir).unwrap();
    let config =
        serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/x"]}});
    let layers = [
        Layer::compress(&lower, Comp::Gzip),
        Layer::compress(&upper, Comp::Gzip),
    ];
    let d = write_image(&mut w, &layers, config, "1");
    w.finish().unwrap();
    d
}

fn base_layout(dir: &Path) {
    let mut w = OciLayoutWriter::create(dir).unwrap();
    build_image_with(
        &mut w,
        "copy-base",
        &Platform::linux_amd64(),
        Some("1"),
        1000,
        &[Comp::Gzip],
    );
    w.finish().unwrap();
}

async fn pull_in(src: &str, cache: &Path) -> PulledImage {
    let cache = BlobCache::open(cache).unwrap();
    let opts = PullOptions {
        platform: Platform::linux_amd64(),
        ..PullOptions::default()
    };
    pull(&Source::parse(src).unwrap(), &cache, &opts, &NoProgress)
        .await
        .unwrap()
}

/// (path -> (type, mode, uid, link target, data, xattr user.cap)) of the Atlas layer.
type Row = (char, u32, u64, String, Vec<u8>, Option<Vec<u8>>);

fn layer_members(tar_bytes: &[u8]) -> BTreeMap<String, Row> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut cap = None;
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if x.key().unwrap() == "SCHILY.xattr.user.cap" {
                    cap = Some(x.value_bytes().to_vec());
                }
            }
        }
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            _ => '?',
        };
        let target = h
            .link_name()
            .unwrap()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(
            path.trim_end_matches('/').to_owned(),
            (kind, h.mode().unwrap(), h.uid().unwrap(), target, data, cap),
        );
    }
    out
}

#[tokio::test]
async fn copy_takes_a_tree_and_a_linked_file_out_of_another_image() {
    let tmp = tempfile::tempdir().unwrap();
    base_layout(&tmp.path().join("base"));
    plugin_layout(&tmp.path().join("plug"));
    let base_src = format!("oci:{}:1", tmp.path().join("base").display());
    let plug_src = format!("oci:{}:1", tmp.path().join("plug").display());
    let r = recipe(RECIPE);

    let build_in = |cache: &'static str| {
        let (base_src, plug_src, r, tmp) = (&base_src, &plug_src, &r, tmp.path());
        async move {
            let base = pull_in(base_src, &tmp.join(cache)).await;
            let plug = pull_in(plug_src, &tmp.join(cache)).await;
            let spec =
                AtlasSpec::from_recipe_with(r, Vec::new(), &[plug.clone(), plug.clone(), plug])
                    .unwrap();
            build::build(&base, &spec).unwrap()
        }
    };
    let a = build_in("c1").await;
    let b = build_in("c2").await;
    assert_eq!(
        a.manifest_digest, b.manifest_digest,
        "same recipe, base and copy sources: same digest from two caches"
    );

    let layer = a.layer.as_ref().unwrap();
    let got = layer_members(&layer.tar().unwrap());
    let row = |p: &str| {
        got.get(p)
            .unwrap_or_else(|| panic!("{p} missing: {got:#?}"))
    };
    // The tree: modes, owners, xattrs kept; whiteouts of the source applied; links kept.
    assert_eq!(row("usr/lib/plug").0, 'd');
    assert_eq!(row("usr/lib/plug").1, 0o750);
    let tool = row("usr/lib/plug/bin/tool");
    assert_eq!((tool.0, tool.1, tool.2), ('f', 0o4755, 1000));
    assert_eq!(tool.4, b"#!tool v1\n");
    assert_eq!(tool.5.as_deref(), Some(&b"bind"[..]), "xattr kept");
    assert_eq!(row("usr/lib/plug/current").0, 'l');
    assert_eq!(
        row("usr/lib/plug/current").3,
        "bin/tool",
        "relative symlink as stored"
    );
    assert_eq!(
        row("usr/lib/plug/abs").3,
        "/etc/passwd",
        "absolute symlink as stored"
    );
    let (a_so, b_so) = (row("usr/lib/plug/lib/a.so"), row("usr/lib/plug/lib/b.so"));
    assert_eq!((a_so.0, a_so.4.as_slice()), ('f', &b"shared object"[..]));
    assert_eq!((b_so.0, b_so.3.as_str()), ('h', "usr/lib/plug/lib/a.so"));
    assert_eq!(row("usr/lib/plug/lib/c.so").4, b"added later");
    assert!(
        !got.contains_key("usr/lib/plug/lib/gone"),
        "whited out in the source"
    );
    assert!(
        !got.keys()
            .any(|k| k.contains("other") || k.starts_with("opt"))
    );
    // usr/local/bin -> ../../opt/plug/bin was followed; `to` ending in '/' takes the name.
    let copied = row("usr/bin/tool");
    assert_eq!(
        (copied.0, copied.1, copied.4.as_slice()),
        ('f', 0o4755, &b"#!tool v1\n"[..])
    );
    // A hard link copied alone is a regular file with the content of its group.
    let alone = row("usr/lib/b.so");
    assert_eq!((alone.0, alone.4.as_slice()), ('f', &b"shared object"[..]));
    for k in got.keys() {
        assert!(
            !k.starts_with('/') && !k.split('/').any(|c| c == ".."),
            "{k}"
        );
    }

    // umoci reads the OCI layout output and agrees: one inode for the link group.
    if !have_tool("umoci") {
        return;
    }
    let oci = tmp.path().join("oci");
    build::write_oci_layout(&a, &oci, Some("web")).unwrap();
    let bundle = tmp.path().join("bundle");
    umoci_unpack(&oci, "web", &bundle, false);
    let rootfs = bundle.join("rootfs");
    let meta = |p: &str| fs::symlink_metadata(rootfs.join(p)).unwrap();
    assert_eq!(
        meta("usr/lib/plug/lib/a.so").ino(),
        meta("usr/lib/plug/lib/b.so").ino()
    );
    assert_eq!(meta("usr/lib/plug/bin/tool").mode() & 0o7777, 0o4755);
    assert_eq!(
        fs::read_link(rootfs.join("usr/lib/plug/current")).unwrap(),
        Path::new("bin/tool")
    );
    assert_eq!(
        fs::read(rootfs.join("usr/bin/tool")).unwrap(),
        b"#!tool v1\n"
    );
    assert!(
        rootfs.join("layer0/hello.txt").is_file(),
        "base content kept"
    );
}

#[tokio::test]
async fn copy_errors_name_the_entry_and_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    plugin_layout(&tmp.path().join("plug"));
    let plug = pull_in(
        &format!("oci:{}:1", tmp.path().join("plug").display()),
        &tmp.path().join("c"),
    )
    .await;
    let one = |from: &str| {
        RECIPE.split("[[copy]]").next().unwrap().to_owned()
            + &format!(
                "[[copy]]\nimage = \"127.0.0.1:5000/t-build/plugins:1\"\nfrom = \"{from}\"\nto = \"/x\"\n\
                 [config]\ncmd = [\"/x\"]\n[health]\ntcp = {{ port = 1 }}\n"
            )
    };
    let err = |from: &str| {
        AtlasSpec::from_recipe_with(&recipe(&one(from)), Vec::new(), std::slice::from_ref(&plug))
            .unwrap_err()
            .to_string()
    };
    let e = err("/opt/plug/nope");
    assert!(
        e.contains("copy[0]") && e.contains("/opt/plug/nope does not exist"),
        "{e}"
    );
    let e = err("/opt/other/x");
    assert!(e.contains("/opt/other is not a directory"), "{e}");
    let e = err("/dev");
    assert!(e.contains("device node or fifo"), "{e}");
    let e = AtlasSpec::from_recipe(&recipe(RECIPE), Vec::new()).unwrap_err();
    assert!(
        matches!(e, BuildError::CopySourceMissing { index: 0, .. }),
        "{e}"
    );
}
