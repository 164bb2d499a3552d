//! Cross-check against umoci: the same hand-built OCI image unpacked by `umoci unpack` and
//! by GNU tar from our flattened stream must give the same tree (paths, types, modes, owners,
//! sizes, contents, symlink targets, mtimes of non-directories, hard-link groups, xattrs).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use atlas_image::layer::{FlattenOptions, Layer, flatten};
use sha2::{Digest, Sha256};

use crate::common::*;

fn have_tool(name: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var("ATLAS_TEST_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{name} is required (ATLAS_TEST_REQUIRE_ALL=1) but not installed");
    }
    if !found {
        eprintln!("skipping: {name} not installed");
    }
    found
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Writes an OCI image layout with the given gzip layers; returns (layout dir, layer digests).
fn write_layout(dir: &Path, blobs: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).unwrap();
    let put = |bytes: &[u8]| -> String {
        let h = sha(bytes);
        fs::write(blob_dir.join(&h), bytes).unwrap();
        format!("sha256:{h}")
    };
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut digests = Vec::new();
    for (tar, gz) in blobs {
        let d = put(gz);
        diff_ids.push(format!("sha256:{}", sha(tar)));
        layers.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d, "size": gz.len()
        }));
        digests.push(d);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "test"}
        }]
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    digests
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content: Option<String>,
    target: Option<String>,
    mtime: Option<i64>,
    rdev: u64,
    xattr_user_note: Option<String>,
}

/// Path -> node, and the hard-link groups (sets of paths sharing an inode, size > 1).
fn walk(root: &Path) -> (BTreeMap<String, Node>, BTreeSet<BTreeSet<String>>) {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![PathBuf::from(root)];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_file() {
                'f'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else if ft.is_fifo() {
                'p'
            } else {
                '?'
            };
            if kind == 'd' {
                stack.push(p.clone());
            } else {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .insert(rel.clone());
            }
            let note = Command::new("getfattr")
                .args(["-h", "--only-values", "-n", "user.note"])
                .arg(&p)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            nodes.insert(
                rel,
                Node {
                    kind,
                    mode: if kind == 'l' { 0 } else { m.mode() & 0o7777 },
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if kind == 'f' { m.size() } else { 0 },
                    content: (kind == 'f').then(|| sha(&fs::read(&p).unwrap())),
                    target: (kind == 'l')
                        .then(|| fs::read_link(&p).unwrap().to_string_lossy().into_owned()),
                    mtime: (kind != 'd').then(|| m.mtime()),
                    rdev: m.rdev(),
                    xattr_user_note: note,
                },
            );
        }
    }
    let groups = inodes.into_values().filter(|g| g.len() > 1).collect();
    (nodes, groups)
}

fn image_layers(root: bool) -> Vec<L> {
    let l1 = layer()
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, b"BUSYBOX-v1")
        .hardlink("bin/sh", "bin/busybox")
        .hardlink("bin/ls", "bin/busybox")
        .symlink("bin/rel", "busybox")
        .symlink("abs", "/bin/busybox")
        .dir("etc", 0o755)
        .file("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n")
        .file("etc/shadow", 0o640, b"secret")
        .dir("etc/conf.d", 0o755)
        .file("etc/conf.d/a", 0o644, b"a")
        .file("etc/conf.d/b", 0o644, b"b")
        .dir("var", 0o755)
        .dir("var/lib", 0o755)
        .file("var/lib/old", 0o644, b"old")
        .dir("opt", 0o755)
        .dir("opt/app", 0o755)
        .file("opt/app/bin", 0o755, b"app v1")
        .file("replace-me-dir", 0o644, b"file first")
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .file_owned("usr/bin/sudo", 0o4755, 0, 0, b"sudo")
        .dir_owned("home", 0o755, 0, 0)
        .dir_owned("home/user", 0o700, 1000, 1000)
        .file_owned("home/user/.profile", 0o644, 1000, 1000, b"export X=1")
        .dir("tmp", 0o1777)
        .with_xattrs("etc/noted", &[("user.note", b"kept")], b"noted")
        .file("srv/implied/deep", 0o644, b"parents omitted by the layer")
        .dir("long", 0o755)
        .file(&format!("long/{}", "n".repeat(140)), 0o644, b"long name");
    let l1 = if root {
        l1.dir("dev", 0o755)
            .node("dev/null", tar::EntryType::Char, 1, 3)
            .node("fifo", tar::EntryType::Fifo, 0, 0)
    } else {
        l1
    };
    let l2 = layer()
        .dir("etc", 0o755)
        .whiteout("etc/shadow")
        .opaque("etc/conf.d")
        .dir("etc/conf.d", 0o755)
        .file("etc/conf.d/c", 0o644, b"c")
        .dir("var", 0o755)
        .whiteout("var/lib")
        .hardlink("etc/passwd-link", "etc/passwd")
        .dir("opt", 0o755)
        .file("opt/app", 0o755, b"app dir replaced by a file")
        .dir("replace-me-dir", 0o750)
        .file("replace-me-dir/inside", 0o644, b"inside")
        .dir("bin", 0o755)
        .file("bin/busybox", 0o755, b"BUSYBOX-v2 replaced");
    let l3 = layer()
        .dir("etc", 0o755)
        .whiteout("etc/passwd")
        .dir("bin", 0o755)
        .hardlink("bin/cat", "bin/busybox")
        .symlink("opt/app2", "../opt/app")
        .dir("abs", 0o711)
        .file("abs/now-a-dir", 0o644, b"symlink replaced by a directory")
        .hardlink(
            &format!("long/{}", "m".repeat(130)),
            &format!("long/{}", "n".repeat(140)),
        );
    vec![l1, l2, l3]
}

#[test]
fn flattened_tree_matches_umoci_unpack() {
    if !have_tool("umoci") || !have_tool("tar") || !have_tool("getfattr") {
        return;
    }
    let root = is_root();
    let tmp = tempfile::tempdir().unwrap();
    let layers: Vec<(Vec<u8>, Vec<u8>)> = image_layers(root)
        .into_iter()
        .map(|l| {
            let tar = l.tar();
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &tar).unwrap();
            (tar, e.finish().unwrap())
        })
        .collect();
    let layout = tmp.path().join("layout");
    let digests = write_layout(&layout, &layers);

    let bundle = tmp.path().join("bundle");
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if !root {
        cmd.arg("--rootless");
    }
    let out = cmd
        .arg("--image")
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ours = tmp.path().join("ours");
    fs::create_dir(&ours).unwrap();
    let input: Vec<Layer> = digests
        .iter()
        .map(|d| {
            Layer::from_file(
                d.clone(),
                Some("application/vnd.oci.image.layer.v1.tar+gzip".into()),
                layout
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
        })
        .collect();
    let tar_path = tmp.path().join("flat.tar");
    let file = fs::File::create(&tar_path).unwrap();
    flatten(
        &input,
        std::io::BufWriter::new(file),
        &FlattenOptions::default(),
    )
    .unwrap();
    let out = Command::new("tar")
        .args([
            "-x",
            "--numeric-owner",
            "-p",
            "--xattrs",
            "--xattrs-include=*",
            "-f",
        ])
        .arg(&tar_path)
        .arg("-C")
        .arg(&ours)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -x: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (theirs_nodes, theirs_links) = walk(&bundle.join("rootfs"));
    let (our_nodes, our_links) = walk(&ours);
    let theirs_paths: Vec<&String> = theirs_nodes.keys().collect();
    let our_paths: Vec<&String> = our_nodes.keys().collect();
    assert_eq!(our_paths, theirs_paths, "different path sets");
    for (p, theirs) in &theirs_nodes {
        assert_eq!(
            &our_nodes[p], theirs,
            "{p} differs (left: ours, right: umoci)"
        );
    }
    assert_eq!(our_links, theirs_links, "hard-link groups differ");
    eprintln!(
        "umoci cross-check: {} paths, {} hard-link groups identical",
        our_nodes.len(),
        our_links.len()
    );
    // the test must exercise what it claims
    assert!(
        our_links
            .iter()
            .any(|g| g.contains("bin/sh") && g.contains("bin/ls"))
    );
    assert_eq!(
        our_nodes["etc/passwd-link"].size, 26,
        "link keeps deleted target's content"
    );
    assert!(!our_nodes.contains_key("etc/shadow") && !our_nodes.contains_key("var/lib"));
    assert_eq!(our_nodes["opt/app"].kind, 'f');
    assert_eq!(
        our_nodes["etc/noted"].xattr_user_note.as_deref(),
        Some("kept")
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Layers of `tag` in an OCI layout, bottom to top, as cache-backed [`Layer`]s.
fn layout_layers(layout: &Path, tag: &str) -> Vec<Layer> {
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(desc["digest"].as_str().unwrap())).unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap().to_string();
            Layer::from_file(
                d.clone(),
                l["mediaType"].as_str().map(String::from),
                blob(&d),
            )
        })
        .collect()
}

/// An image written by umoci itself (its own whiteouts and hard-link encoding) in two
/// generations: a tree with a setuid file, hard links and symlinks, then deletions, a
/// directory replaced by a file and back, and a new hard link to an old file. Tagged `t2`.
fn umoci_two_generations(tmp: &Path) -> PathBuf {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let layout = tmp.join("layout");
    let l = |tag: &str| format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &l("t")]));

    // first generation: a small tree
    let b1 = tmp.join("b1");
    run(Command::new("umoci")
        .args(["unpack", "--image", &l("t")])
        .arg(&b1));
    let r = b1.join("rootfs");
    fs::create_dir_all(r.join("etc/conf.d")).unwrap();
    fs::create_dir_all(r.join("opt/app/lib")).unwrap();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::write(r.join("etc/conf.d/a"), "a").unwrap();
    fs::write(r.join("etc/conf.d/b"), "b").unwrap();
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(r.join("etc/motd"), "hello").unwrap();
    fs::write(r.join("opt/app/lib/x.so"), "x").unwrap();
    fs::write(r.join("usr/bin/busybox"), "bb").unwrap();
    fs::set_permissions(
        r.join("usr/bin/busybox"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::hard_link(r.join("usr/bin/busybox"), r.join("usr/bin/sh")).unwrap();
    symlink("busybox", r.join("usr/bin/ls")).unwrap();
    symlink("/etc/passwd", r.join("passwd-abs")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &l("t")])
        .arg(&b1));

    // second generation: deletions, dir -> file, file -> dir, a new hard link to an old file
    let b2 = tmp.join("b2");
    run(Command::new("umoci")
        .args(["unpack", "--image", &l("t")])
        .arg(&b2));
    let r = b2.join("rootfs");
    fs::remove_file(r.join("etc/conf.d/a")).unwrap();
    fs::remove_dir_all(r.join("opt/app")).unwrap();
    fs::write(r.join("opt/app"), "now a file").unwrap();
    fs::remove_file(r.join("etc/motd")).unwrap();
    fs::create_dir(r.join("etc/motd")).unwrap();
    fs::write(r.join("etc/motd/inside"), "i").unwrap();
    fs::hard_link(r.join("usr/bin/busybox"), r.join("usr/bin/cat")).unwrap();
    fs::write(r.join("usr/bin/busybox.new"), "v2").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &l("t2")])
        .arg(&b2));

    layout
}

/// Layers written by umoci itself, flattened by us and unpacked by umoci, give the same tree.
#[test]
fn layers_written_by_umoci_repack_flatten_like_umoci_unpacks_them() {
    if !have_tool("umoci") || !have_tool("tar") || !have_tool("getfattr") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = umoci_two_generations(tmp.path());
    let l = |tag: &str| format!("{}:{tag}", layout.display());
    let theirs = tmp.path().join("theirs");
    run(Command::new("umoci")
        .args(["unpack", "--image", &l("t2")])
        .arg(&theirs));
    let layers = layout_layers(&layout, "t2");
    assert!(layers.len() >= 2, "expected two generations of layers");
    let top = layers.last().unwrap().index().unwrap();
    assert!(
        top.iter()
            .any(|e| e.kind == atlas_image::layer::EntryKind::Whiteout),
        "umoci's top layer should carry whiteouts: {:?}",
        top.iter()
            .map(|e| String::from_utf8_lossy(e.path))
            .collect::<Vec<_>>()
    );
    let tar_path = tmp.path().join("flat.tar");
    let file = fs::File::create(&tar_path).unwrap();
    flatten(
        &layers,
        std::io::BufWriter::new(file),
        &FlattenOptions::default(),
    )
    .unwrap();
    let ours = tmp.path().join("ours");
    fs::create_dir(&ours).unwrap();
    run(Command::new("tar")
        .args([
            "-x",
            "--numeric-owner",
            "-p",
            "--xattrs",
            "--xattrs-include=*",
            "-f",
        ])
        .arg(&tar_path)
        .arg("-C")
        .arg(&ours));
    let (their_nodes, their_links) = walk(&theirs.join("rootfs"));
    let (our_nodes, our_links) = walk(&ours);
    assert_eq!(
        our_nodes.keys().collect::<Vec<_>>(),
        their_nodes.keys().collect::<Vec<_>>(),
        "different path sets"
    );
    for (p, n) in &their_nodes {
        assert_eq!(&our_nodes[p], n, "{p} differs (left: ours, right: umoci)");
    }
    assert_eq!(our_links, their_links);
    assert!(!our_nodes.contains_key("etc/conf.d/a") && !our_nodes.contains_key("opt/app/lib"));
    assert_eq!(our_nodes["etc/motd"].kind, 'd');
    assert!(
        our_links.iter().any(|g| g.len() == 3),
        "busybox, sh and cat share an inode"
    );
}

const REGISTRY: &str = "127.0.0.1:5000";

fn have_registry() -> bool {
    let up = std::net::TcpStream::connect(REGISTRY).is_ok();
    if !up {
        assert!(
            std::env::var("ATLAS_TEST_REQUIRE_ALL").as_deref() != Ok("1"),
            "the registry on {REGISTRY} is required (ATLAS_TEST_REQUIRE_ALL=1): run tests/start-services.sh"
        );
        eprintln!("skipping: no registry on {REGISTRY} (run tests/start-services.sh)");
    }
    up
}

/// What the Atlas conversion adds (atlas-init and its files); the rest must be the image's.
const ATLAS_ADDED: [&str; 5] = [
    "sbin",
    "sbin/init",
    "etc/atlas",
    "etc/atlas/service.json",
    "etc/atlas/network.json",
];

/// Converts `source` like `image convert` does (pull, Atlas build, unified tarball), extracts
/// the tarball with GNU tar and walks its rootfs without the Atlas additions.
fn convert_and_walk(
    source: &str,
    work: &Path,
) -> (BTreeMap<String, Node>, BTreeSet<BTreeSet<String>>) {
    use atlas_image::build::{self, AtlasSpec};
    use atlas_image::cache::BlobCache;
    use atlas_image::progress::NoProgress;
    use atlas_image::source::{PullOptions, Source, pull};
    let _ = rustls::crypto::ring::default_provider().install_default();
    fs::create_dir_all(work).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cache = BlobCache::open(work.join("cache")).unwrap();
    let image = rt
        .block_on(pull(
            &Source::parse(source).unwrap(),
            &cache,
            &PullOptions::default(),
            &NoProgress,
        ))
        .unwrap_or_else(|e| panic!("pull {source}: {e}"));
    let atlas = build::build(&image, &AtlasSpec::convert("xcheck")).unwrap();
    assert!(atlas.layer.is_some(), "converted, not passed through");
    let tarball = work.join("unified.tar");
    let f = fs::File::create(&tarball).unwrap();
    build::write_unified(&atlas, std::io::BufWriter::new(f), 0).unwrap();
    let out = work.join("x");
    fs::create_dir(&out).unwrap();
    run(Command::new("tar")
        .args([
            "-x",
            "--numeric-owner",
            "-p",
            "--xattrs",
            "--xattrs-include=*",
            "-f",
        ])
        .arg(&tarball)
        .arg("-C")
        .arg(&out));
    let (mut nodes, links) = walk(&out.join("rootfs"));
    for p in ATLAS_ADDED {
        assert!(nodes.remove(p).is_some(), "{p} missing from the conversion");
    }
    (nodes, links)
}

/// Compares our conversion of `tag` in `layout` with `umoci unpack`, through the `oci:`
/// transport and, after `skopeo copy` into the local registry, through `docker://`.
fn cross_check_transports(layout: &Path, tag: &str, repo: &str, work: &Path) -> usize {
    // Conversion needs something to run; `umoci config` rewrites the tag's config only.
    run(Command::new("umoci")
        .args(["config", "--config.cmd=/bin/true", "--image"])
        .arg(format!("{}:{tag}", layout.display())));
    let theirs = work.join("theirs");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&theirs));
    let (their_nodes, their_links) = walk(&theirs.join("rootfs"));
    let dest = format!("{REGISTRY}/{repo}-{}:{tag}", std::process::id());
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}")));
    for (name, source) in [
        ("oci", format!("oci:{}:{tag}", layout.display())),
        ("docker", format!("docker://{dest}")),
    ] {
        let (nodes, links) = convert_and_walk(&source, &work.join(name));
        assert_eq!(
            nodes.keys().collect::<Vec<_>>(),
            their_nodes.keys().collect::<Vec<_>>(),
            "{source}: different path sets"
        );
        for (p, n) in &their_nodes {
            assert_eq!(
                &nodes[p], n,
                "{source}: {p} differs (left: ours, right: umoci)"
            );
        }
        assert_eq!(links, their_links, "{source}: hard-link groups differ");
    }
    their_nodes.len()
}

/// The issue's cross-check: images written by umoci (its own whiteouts and hard links) and by
/// skopeo (our hand-built layers with opaque directories, whiteouts, hard links, symlinks,
/// devices, xattrs, copied into the registry), converted by us through the `oci:` and the
/// `docker://` transport, entry by entry against `umoci unpack`.
#[test]
fn conversions_through_oci_and_docker_transports_match_umoci_unpack() {
    if !have_tool("umoci")
        || !have_tool("skopeo")
        || !have_tool("tar")
        || !have_tool("getfattr")
        || !have_registry()
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = umoci_two_generations(tmp.path());
    let n = cross_check_transports(&layout, "t2", "t-umoci/repacked", &tmp.path().join("a"));
    eprintln!("umoci-written image: {n} paths identical through oci: and docker://");

    let root = is_root();
    let layers: Vec<(Vec<u8>, Vec<u8>)> = image_layers(root)
        .into_iter()
        .map(|l| {
            let tar = l.tar();
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, &tar).unwrap();
            (tar, e.finish().unwrap())
        })
        .collect();
    let hand = tmp.path().join("hand");
    write_layout(&hand, &layers);
    let n = cross_check_transports(&hand, "test", "t-umoci/hand", &tmp.path().join("b"));
    eprintln!(
        "hand-built image (opaque dirs, devices, xattrs): {n} paths identical through oci: and docker://"
    );
}
