//! The base image shapes real registries serve, with the Atlas layer built over them: a
//! usr-merged root (`/sbin -> usr/sbin`, `/lib64 -> /usr/lib64`) whose `/sbin/init` already
//! exists as one of busybox's hard links, a binary carrying `security.capability` (setcap'd,
//! as Caddy and step-ca ship), a second zstd layer with a whiteout and an opaque directory.
//! atlas-init must land where `/sbin/init` resolves, the symlinks, hard links and file
//! capabilities must survive, in our unified tarball and for a runtime unpacking the OCI
//! layout (umoci, as root, so it may set the capability).

mod common;
#[allow(dead_code)]
#[path = "layer/common.rs"]
mod layers;

use std::path::Path;
use std::process::Command;

use atlas_image::build::{self, AtlasSpec, ExtraFile};
use atlas_image::cache::BlobCache;
use atlas_image::oci_layout::OciLayoutWriter;
use atlas_image::platform::Platform;
use atlas_image::progress::NoProgress;
use atlas_image::recipe::Recipe;
use atlas_image::source::{PullOptions, PulledImage, Source, pull};
use atlas_test_support::skip::have_root;
use common::have_tool;
use common::images::{Comp, Layer, umoci_unpack, write_image};
use layers::{Flat, layer, parse};

/// `cap_net_bind_service=+ep` as setcap(8) stores it (VFS_CAP_REVISION_2, 20 bytes).
const CAP_NET_BIND_SERVICE: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];
const BUSYBOX: &[u8] = b"busybox stand-in: every applet is a hard link to this file\n";

const RECIPE: &str = r#"
name = "shapes"
description = "usr-merged busybox base"
[base]
image = "127.0.0.1:5000/t-build/shapes:1"
[config]
cmd = ["/bin/httpd", "-f", "-p", "80"]
user = "1000:1000"
[health]
http = { port = 80, path = "/" }
"#;

/// A usr-merged busybox root, then a layer (compressed as `second`) deleting one file and
/// replacing a directory's contents.
fn base_layout(dir: &Path, second: Comp) {
    let l1 = layer()
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir("usr/sbin", 0o755)
        .dir("usr/lib64", 0o755)
        .file("usr/lib64/ld-stand-in.so", 0o755, b"loader")
        .file("usr/bin/busybox", 0o755, BUSYBOX)
        .hardlink("usr/bin/sh", "usr/bin/busybox")
        .hardlink("usr/bin/httpd", "usr/bin/busybox")
        .hardlink("usr/sbin/init", "usr/bin/busybox")
        .symlink("bin", "usr/bin")
        .symlink("sbin", "usr/sbin")
        .symlink("lib64", "/usr/lib64")
        .with_xattrs(
            "usr/bin/ping",
            &[("security.capability", &CAP_NET_BIND_SERVICE)],
            b"setcap'd binary",
        )
        .dir("etc", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .file("etc/old.conf", 0o644, b"removed by layer 2")
        .dir("etc/conf.d", 0o755)
        .file(
            "etc/conf.d/a.conf",
            0o644,
            b"hidden by the opaque directory",
        )
        .tar();
    let l2 = layer()
        .whiteout("etc/old.conf")
        .opaque("etc/conf.d")
        .file("etc/conf.d/b.conf", 0o644, b"layer 2")
        .tar();
    let mut w = OciLayoutWriter::create(dir).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
    });
    let layers = [
        Layer::compress(&l1, Comp::Gzip),
        Layer::compress(&l2, second),
    ];
    write_image(&mut w, &layers, config, "1");
    w.finish().unwrap();
}

async fn pull_layout(dir: &Path, cache: &Path) -> PulledImage {
    let cache = BlobCache::open(cache).unwrap();
    let opts = PullOptions {
        platform: Platform::linux_amd64(),
        ..PullOptions::default()
    };
    let src = Source::parse(&format!("oci:{}:1", dir.display())).unwrap();
    pull(&src, &cache, &opts, &NoProgress).await.unwrap()
}

/// The recipe plus a `[[file]]` at /sbin/atlas-extra, which must follow the symlink too.
fn spec() -> AtlasSpec {
    let recipe = Recipe::parse(RECIPE, Path::new("images/shapes.toml")).unwrap();
    let extra = ExtraFile {
        dest: "/sbin/atlas-extra".into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
        contents: b"#!/bin/sh\n".to_vec(),
    };
    AtlasSpec::from_recipe(&recipe, vec![extra]).unwrap()
}

/// The unified tarball's rootfs, `rootfs/` stripped.
fn rootfs(image: &build::AtlasImage) -> Flat {
    let mut out = Vec::new();
    build::write_unified(image, &mut out, 0).unwrap();
    let mut flat = parse(out);
    flat.map = flat
        .map
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("rootfs/")?.to_owned(), v)))
        .collect();
    flat
}

#[tokio::test]
async fn atlas_layer_follows_a_usr_merged_base_and_keeps_links_and_capabilities() {
    let tmp = tempfile::tempdir().unwrap();
    base_layout(&tmp.path().join("base"), Comp::Zstd);
    let base = pull_layout(&tmp.path().join("base"), &tmp.path().join("c")).await;
    let image = build::build(&base, &spec()).unwrap();

    // The Atlas layer itself (what every runtime applies) never names /sbin.
    let atlas = image.layer.as_ref().unwrap();
    let mut tar = Vec::new();
    let (_, mut r) = atlas_image::layer::decompress(&atlas.gzip[..], None).unwrap();
    std::io::Read::read_to_end(&mut r, &mut tar).unwrap();
    let own = parse(tar);
    assert!(
        own.order
            .iter()
            .all(|p| p != "sbin" && !p.starts_with("sbin/")),
        "the Atlas layer must not replace the /sbin symlink: {:?}",
        own.order
    );
    assert!(own.has("usr/sbin/init") && own.has("usr/sbin/atlas-extra"));

    let f = rootfs(&image);
    let sbin = f.get("sbin");
    assert_eq!((sbin.kind, sbin.link.as_deref()), ('l', Some("usr/sbin")));
    assert_eq!(f.get("lib64").link.as_deref(), Some("/usr/lib64"));
    let init = f.get("usr/sbin/init");
    assert_eq!((init.kind, init.mode), ('f', 0o755));
    assert_eq!(init.data, atlas_image::init::binary(), "/sbin/init is ours");
    assert_eq!(f.get("usr/sbin/atlas-extra").data, b"#!/bin/sh\n");
    // busybox keeps its other hard links; only the init path left the group.
    assert_eq!(f.get("usr/bin/busybox").data, BUSYBOX);
    for applet in ["usr/bin/httpd", "usr/bin/sh"] {
        let a = f.get(applet);
        assert_eq!(
            (a.kind, a.link.as_deref()),
            ('h', Some("rootfs/usr/bin/busybox")),
            "{applet}"
        );
    }
    assert_eq!(
        f.get("usr/bin/ping").xattrs,
        [(
            "security.capability".to_string(),
            CAP_NET_BIND_SERVICE.to_vec()
        )],
        "file capabilities kept"
    );
    assert!(!f.has("etc/old.conf"), "whiteout applied");
    assert!(
        !f.has("etc/conf.d/a.conf") && f.has("etc/conf.d/b.conf"),
        "opaque directory applied"
    );
    assert!(f.has("etc/atlas/service.json") && f.has("etc/passwd"));
}

/// A runtime applying the layers itself (umoci, as root so it may set file capabilities and
/// owners) gets the same tree: the Atlas layer is right as an OCI layer, not only through
/// our flattener. umoci 0.4 reads no zstd, so both layers are gzip here.
#[tokio::test]
async fn umoci_unpacks_the_atlas_image_of_a_usr_merged_base_with_capabilities() {
    if !have_tool("umoci") || !have_tool("getcap") {
        return;
    }
    if !have_root(
        "umoci without --rootless",
        "umoci sets file capabilities only as root",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    base_layout(&tmp.path().join("base"), Comp::Gzip);
    let base = pull_layout(&tmp.path().join("base"), &tmp.path().join("c")).await;
    let image = build::build(&base, &spec()).unwrap();
    let oci = tmp.path().join("oci");
    build::write_oci_layout(&image, &oci, Some("shapes")).unwrap();
    let bundle = tmp.path().join("bundle");
    umoci_unpack(&oci, "shapes", &bundle, false);
    let r = bundle.join("rootfs");
    assert!(
        std::fs::symlink_metadata(r.join("sbin"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "/sbin is still a symlink"
    );
    assert_eq!(
        std::fs::read(r.join("sbin/init")).unwrap(),
        atlas_image::init::binary()
    );
    assert!(r.join("usr/bin/sh").exists() && r.join("sbin/atlas-extra").exists());
    let o = Command::new("getcap")
        .arg(r.join("usr/bin/ping"))
        .output()
        .unwrap();
    let caps = String::from_utf8_lossy(&o.stdout);
    assert!(caps.contains("cap_net_bind_service"), "getcap: {caps:?}");
}
