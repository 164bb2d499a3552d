//! Plugins baked into an image: archives made by the real `zip` and GNU `tar`, served from a
//! loopback HTTP server (or a local path), fetched once into the cache and verified against
//! the recipe's sha256 pin, unpacked into `<plugins.dir>/<id>` with the flattener's safety
//! rules; the build stays reproducible and umoci reads the result.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use atlas_image::build::{self, AtlasSpec, PLUGINS_LABEL};
use atlas_image::cache::BlobCache;
use atlas_image::digest::Digest;
use atlas_image::layer::deterministic::Item;
use atlas_image::oci_layout::OciLayoutWriter;
use atlas_image::platform::Platform;
use atlas_image::plugin::{self, PluginError};
use atlas_image::progress::NoProgress;
use atlas_image::recipe::{PluginSource, Recipe};
use atlas_image::source::{PullOptions, Source, pull};
use common::images::{Comp, build_image_with};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A Grafana-like plugin tree under one top directory: a backend binary (0755), a
/// plugin.json, a nested directory and a relative symlink.
fn plugin_tree(dir: &Path, top: &str) {
    let t = dir.join(top);
    fs::create_dir_all(t.join("img")).unwrap();
    fs::write(t.join("plugin.json"), r#"{"id":"t-clock","type":"panel"}"#).unwrap();
    fs::write(t.join("gpx_clock_linux_amd64"), b"\x7fELF backend").unwrap();
    fs::set_permissions(
        t.join("gpx_clock_linux_amd64"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(t.join("img/logo.svg"), b"<svg/>").unwrap();
    symlink("img/logo.svg", t.join("logo.svg")).unwrap();
}

/// Serves `body` for every request on a loopback port; counts the requests.
async fn serve(body: Vec<u8>) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = listener.accept().await else {
                return;
            };
            h2.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = c.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = c.write_all(head.as_bytes()).await;
                let _ = c.write_all(&body).await;
            });
        }
    });
    (addr, hits, task)
}

fn source(id: &str, url: &str, bytes: &[u8]) -> PluginSource {
    PluginSource {
        id: id.to_owned(),
        url: url.to_owned(),
        sha256: Digest::of_bytes(bytes).to_string(),
    }
}

const RECIPE: &str = r#"
name = "grafana"
[base]
image = "127.0.0.1:5000/t-build/base:1"
[config]
cmd = ["/run.sh"]
[plugins]
dir = "/opt/atlas/grafana-plugins"
owner = "472:0"
[health]
http = { port = 3000, path = "/api/health" }
"#;

fn archives_in(cache: &Path) -> usize {
    fs::read_dir(cache.join("archives/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_plugin_served_over_loopback_is_pinned_unpacked_and_reproducible() {
    init_tls();
    if !have_tool("zip") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    plugin_tree(&t.join("src"), "t-clock-panel");
    let zip_path = t.join("t-clock.zip");
    run(Command::new("zip")
        .args(["-q", "-r", "-y", "-X"])
        .arg(&zip_path)
        .arg("t-clock-panel")
        .current_dir(t.join("src")));
    let bytes = fs::read(&zip_path).unwrap();
    let (addr, hits, server) = serve(bytes.clone()).await;
    let url = format!("http://{addr}/t-clock.zip");
    let cache = t.join("cache");

    // A wrong pin: refused, nothing kept.
    let mut wrong = source("t-clock", &url, b"other bytes");
    let e = plugin::fetch(&wrong, &cache, t, &[]).await.unwrap_err();
    assert!(matches!(e, PluginError::Mismatch { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(&Digest::of_bytes(&bytes).to_string()),
        "names the digest it got: {e}"
    );
    assert_eq!(archives_in(&cache), 0, "a mismatch keeps nothing");

    // The right pin: fetched once, then served from the cache (the server is gone).
    wrong.sha256 = Digest::of_bytes(&bytes).to_string();
    let good = wrong;
    let archive = plugin::fetch(&good, &cache, t, &[]).await.unwrap();
    assert_eq!(fs::read(&archive).unwrap(), bytes);
    let before = hits.load(Ordering::SeqCst);
    server.abort();
    let again = plugin::fetch(&good, &cache, t, &[]).await.unwrap();
    assert_eq!(again, archive);
    assert_eq!(hits.load(Ordering::SeqCst), before);
    assert_eq!(archives_in(&cache), 1);

    // Plain HTTP is for loopback only: refused before any connection.
    let remote = source("t-clock", "http://plugins.invalid/x.zip", b"x");
    let e = plugin::fetch(&remote, &t.join("c2"), t, &[])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("plain HTTP"), "{e}");

    // Unpacked into <dir>/<id>, the zip's top directory dropped, modes and links kept.
    let recipe = Recipe::parse(RECIPE, Path::new("images/grafana.toml")).unwrap();
    let plugins = recipe.plugins.clone().unwrap();
    let entries = plugin::plugin_entries(&plugins, "t-clock", &archive).unwrap();
    let get = |p: &str| {
        entries
            .iter()
            .find(|e| e.path == p)
            .unwrap_or_else(|| panic!("{p} missing: {entries:#?}"))
    };
    let root = "/opt/atlas/grafana-plugins/t-clock";
    let bin = get(&format!("{root}/gpx_clock_linux_amd64"));
    assert_eq!((bin.spec.mode, bin.spec.uid), (0o755, 472));
    assert_eq!(bin.spec.item, Item::File(b"\x7fELF backend".to_vec()));
    assert_eq!(
        get(&format!("{root}/logo.svg")).spec.item,
        Item::Symlink(b"img/logo.svg".to_vec())
    );
    assert!(matches!(get(&format!("{root}/img")).spec.item, Item::Dir));
    assert!(!entries.iter().any(|e| e.path.contains("t-clock-panel")));

    // Built twice from two caches: one digest; labelled; umoci unpacks it.
    let layout = t.join("base");
    let mut w = OciLayoutWriter::create(&layout).unwrap();
    build_image_with(
        &mut w,
        "plugins-base",
        &Platform::linux_amd64(),
        Some("1"),
        100,
        &[Comp::Gzip],
    );
    w.finish().unwrap();
    let mut digests = Vec::new();
    let mut last = None;
    for c in ["p1", "p2"] {
        let base = pull(
            &Source::parse(&format!("oci:{}:1", layout.display())).unwrap(),
            &BlobCache::open(t.join(c)).unwrap(),
            &PullOptions::default(),
            &NoProgress,
        )
        .await
        .unwrap();
        let mut spec = AtlasSpec::from_recipe(&recipe, Vec::new()).unwrap();
        spec.add_plugins(&plugins, &[(good.clone(), archive.clone())])
            .unwrap();
        let image = build::build(&base, &spec).unwrap();
        digests.push(image.manifest_digest.clone());
        last = Some(image);
    }
    assert_eq!(digests[0], digests[1]);
    let image = last.unwrap();
    let config: serde_json::Value = serde_json::from_slice(&image.config_bytes).unwrap();
    assert_eq!(
        config["config"]["Labels"][PLUGINS_LABEL],
        format!("t-clock={}", good.sha256)
    );
    // Without plugins: another image, and the plugin directory is still there (empty).
    let mut bare = AtlasSpec::from_recipe(&recipe, Vec::new()).unwrap();
    bare.add_plugins(&plugins, &[]).unwrap();
    let bare = build::build(&image.base, &bare).unwrap();
    assert_ne!(bare.manifest_digest, image.manifest_digest);

    if !have_tool("umoci") {
        return;
    }
    let oci = t.join("oci");
    build::write_oci_layout(&image, &oci, Some("grafana")).unwrap();
    let bundle = t.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:grafana", oci.display()))
        .arg(&bundle));
    let r = bundle.join("rootfs").join(root.trim_start_matches('/'));
    let m = fs::metadata(r.join("gpx_clock_linux_amd64")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, 472, 0));
    assert_eq!(
        fs::read_link(r.join("logo.svg")).unwrap(),
        PathBuf::from("img/logo.svg")
    );
    assert!(
        fs::read_to_string(r.join("plugin.json"))
            .unwrap()
            .contains("t-clock")
    );
}

/// A tar.gz from a local path works too; hostile archives are refused naming the entry.
#[tokio::test]
async fn tar_plugins_from_a_path_and_hostile_archives() {
    if !have_tool("tar") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    plugin_tree(&t.join("src"), "t-tar");
    let tgz = t.join("repo/plugins/t-tar.tar.gz");
    fs::create_dir_all(tgz.parent().unwrap()).unwrap();
    run(Command::new("tar").arg("-czf").arg(&tgz).args([
        "-C",
        t.join("src").to_str().unwrap(),
        "t-tar",
    ]));
    let bytes = fs::read(&tgz).unwrap();
    let src = source("t-tar", "plugins/t-tar.tar.gz", &bytes);
    let archive = plugin::fetch(&src, &t.join("cache"), &t.join("repo"), &[])
        .await
        .unwrap();
    let recipe = Recipe::parse(RECIPE, Path::new("images/grafana.toml")).unwrap();
    let plugins = recipe.plugins.unwrap();
    let entries = plugin::plugin_entries(&plugins, "t-tar", &archive).unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.path == "/opt/atlas/grafana-plugins/t-tar/plugin.json"),
        "{entries:#?}"
    );

    // `..` in a tar member, an absolute zip member, a device node.
    let evil = t.join("evil");
    fs::create_dir_all(evil.join("a")).unwrap();
    fs::write(evil.join("x"), b"x").unwrap();
    let evil_tar = t.join("evil.tar");
    run(Command::new("tar").arg("-cf").arg(&evil_tar).args([
        "-C",
        evil.join("a").to_str().unwrap(),
        "--absolute-names",
        "../x",
    ]));
    let e = plugin::plugin_entries(&plugins, "evil", &evil_tar).unwrap_err();
    assert!(
        e.to_string().contains("entry ../x") && e.to_string().contains(".."),
        "{e}"
    );
    if have_tool("zip") {
        let abs_zip = t.join("abs.zip");
        run(Command::new("zip")
            .args(["-q", "-A"])
            .arg(&abs_zip)
            .arg(evil.join("x")));
        // Info-ZIP strips the leading '/'; rewrite the stored name to an absolute one.
        let mut z = fs::read(&abs_zip).unwrap();
        let name = evil
            .join("x")
            .to_string_lossy()
            .trim_start_matches('/')
            .to_owned();
        let abs = format!("/{}", &name[1..]);
        let mut i = 0;
        while let Some(p) = z[i..]
            .windows(name.len())
            .position(|w| w == name.as_bytes())
        {
            z[i + p..i + p + name.len()].copy_from_slice(abs.as_bytes());
            i += p + name.len();
        }
        fs::write(&abs_zip, &z).unwrap();
        let e = plugin::plugin_entries(&plugins, "evil", &abs_zip).unwrap_err();
        assert!(e.to_string().contains("absolute path"), "{e}");
    }
    let dev_tar = t.join("dev.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Char);
    h.set_size(0);
    h.set_mode(0o600);
    b.append_data(&mut h, "p/null", &[][..]).unwrap();
    fs::write(&dev_tar, b.into_inner().unwrap()).unwrap();
    let e = plugin::plugin_entries(&plugins, "dev", &dev_tar).unwrap_err();
    assert!(
        e.to_string().contains("p/null") && e.to_string().contains("not allowed"),
        "{e}"
    );
}
