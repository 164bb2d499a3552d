//! Atlas image builds: reproducible digests (twice in a row, from two caches), the unified
//! tarball's content, OCI layout output read back by umoci, push read back by skopeo, and a
//! corrupt base layer refused with the layer named.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use atlas_image::build::{self, AtlasSpec, IncusMetadata};
use atlas_image::cache::BlobCache;
use atlas_image::init::ServiceSpec;
use atlas_image::oci_layout::OciLayoutWriter;
use atlas_image::platform::Platform;
use atlas_image::progress::NoProgress;
use atlas_image::recipe::Recipe;
use atlas_image::reference::ImageRef;
use atlas_image::registry::{PushOptions, push_image};
use atlas_image::source::{PullOptions, PulledImage, Source, pull};
use common::images::{Comp, build_image_with, umoci_unpack};
use common::*;

const RECIPE: &str = r#"
name = "web"
description = "test web server"
[base]
image = "127.0.0.1:5000/t-build/base:1"
[config]
cmd = ["/bin/app", "--port", "8080"]
user = "nobody"
ports = ["8080/tcp"]
labels = { "org.opencontainers.image.title" = "atlas-web" }
[config.env]
SEED = "recipe-wins"
EXTRA = "1"
[health]
http = { port = 8080, path = "/" }
"#;

fn recipe() -> Recipe {
    Recipe::parse(RECIPE, Path::new("images/web.toml")).unwrap()
}

fn opts() -> PullOptions {
    PullOptions {
        platform: Platform::linux_amd64(),
        ..PullOptions::default()
    }
}

fn base_layout(dir: &Path, seed: &str) -> common::images::BuiltImage {
    let mut w = OciLayoutWriter::create(dir).unwrap();
    let img = build_image_with(
        &mut w,
        seed,
        &Platform::linux_amd64(),
        Some("1"),
        2000,
        &[Comp::Gzip, Comp::Gzip],
    );
    w.finish().unwrap();
    img
}

async fn pull_in(src: &str, cache: &Path) -> PulledImage {
    let cache = BlobCache::open(cache).unwrap();
    pull(&Source::parse(src).unwrap(), &cache, &opts(), &NoProgress)
        .await
        .unwrap()
}

fn spec() -> AtlasSpec {
    AtlasSpec::from_recipe(&recipe(), Vec::new()).unwrap()
}

/// (path, bytes) of every member of a tar stream.
fn members(tar_bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(p, data);
    }
    out
}

#[tokio::test]
async fn build_is_reproducible_and_unified_tarball_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("base");
    let base_img = base_layout(&layout, "build-repro");
    let src = format!("oci:{}:1", layout.display());
    let a = build::build(&pull_in(&src, &tmp.path().join("c1")).await, &spec()).unwrap();
    let b = build::build(&pull_in(&src, &tmp.path().join("c2")).await, &spec()).unwrap();
    let c = build::build(&a.base, &spec()).unwrap();
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(a.manifest_digest, c.manifest_digest);
    assert_eq!(a.layer, b.layer);
    assert_eq!(a.layers.len(), 3, "two base layers + the Atlas layer");

    let config: serde_json::Value = serde_json::from_slice(&a.config_bytes).unwrap();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/sbin/init"])
    );
    let labels = &config["config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.base.digest"],
        base_img.manifest_digest.to_string()
    );
    assert_eq!(labels["org.opencontainers.image.title"], "atlas-web");
    assert_eq!(
        labels["org.example.seed"], "build-repro",
        "base labels kept"
    );
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);

    let mut one = Vec::new();
    let stats = build::write_unified(&a, &mut one, 0).unwrap();
    let mut two = Vec::new();
    build::write_unified(&b, &mut two, 2).unwrap();
    assert_eq!(
        one, two,
        "same image, same tarball bytes (same Incus fingerprint)"
    );
    assert_eq!(stats.tar_bytes, one.len() as u64);
    let m = members(&one);
    let first = tar::Archive::new(&one[..])
        .entries()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .unwrap()
        .into_owned();
    assert_eq!(first, Path::new("metadata.yaml"), "metadata.yaml leads");
    let yaml = String::from_utf8(m["metadata.yaml"].clone()).unwrap();
    assert!(yaml.contains("architecture: \"x86_64\""), "{yaml}");
    assert!(yaml.contains("\"atlas.service\": \"web\""), "{yaml}");
    assert!(
        yaml.contains(&format!(
            "\"atlas.base.digest\": \"{}\"",
            base_img.manifest_digest
        )),
        "{yaml}"
    );
    assert!(yaml.contains("\"atlas.recipe.hash\": \"sha256:"), "{yaml}");
    assert!(!yaml.contains("\"type\""), "{yaml}");
    assert_eq!(m["rootfs/sbin/init"], atlas_image::init::binary());
    assert!(m.contains_key("rootfs/layer0/blob.bin") && m.contains_key("rootfs/layer1/hello.txt"));
    let svc =
        ServiceSpec::from_json(std::str::from_utf8(&m["rootfs/etc/atlas/service.json"]).unwrap())
            .unwrap();
    assert_eq!(svc.entrypoint, ["/bin/app"], "inherited from the base");
    assert_eq!(svc.cmd, ["/bin/app", "--port", "8080"]);
    assert_eq!(svc.user.as_deref(), Some("nobody"));
    assert_eq!(svc.working_dir.as_deref(), Some("/srv"));
    assert_eq!(
        svc.env,
        [
            "PATH=/usr/bin:/bin",
            "SEED=recipe-wins",
            "EXTRA=1",
            "HOME=/"
        ]
    );
    assert!(m.contains_key("rootfs/etc/atlas/network.json"));
    // The same spec rides along as a label and an Incus property: the installer derives each
    // instance's spec from it without reading the image's files.
    let label = labels["io.atlas.service.spec"]
        .as_str()
        .expect("spec label");
    assert_eq!(ServiceSpec::from_json(label).unwrap(), svc);
    assert_eq!(a.incus_properties()["atlas.service.spec"], label);

    // A different recipe gives a different image.
    let mut other = recipe();
    other.config.user = Some("root".into());
    let o = build::build(
        &a.base,
        &AtlasSpec::from_recipe(&other, Vec::new()).unwrap(),
    )
    .unwrap();
    assert_ne!(o.manifest_digest, a.manifest_digest);

    // An Atlas image converted again passes through: no second init layer.
    let out = tmp.path().join("atlas");
    build::write_oci_layout(&a, &out, Some("web")).unwrap();
    let again = pull_in(
        &format!("oci:{}:web", out.display()),
        &tmp.path().join("c3"),
    )
    .await;
    assert!(build::is_atlas_image(&again));
    let passed = build::build(&again, &AtlasSpec::convert("web")).unwrap();
    assert_eq!(passed.manifest_digest, a.manifest_digest);
    assert!(passed.layer.is_none());
    // ... and keeps its service spec (read back from the label) for the installer.
    assert_eq!(passed.service.as_ref(), Some(&svc));
    assert_eq!(passed.incus_properties()["atlas.service.spec"], label);
    let meta = IncusMetadata::for_image(&passed);
    assert_eq!(
        meta.creation_date,
        build::NO_CREATION_DATE,
        "no `created`: fixed, never 0"
    );
    let keep = |m: IncusMetadata| {
        m.properties
            .into_iter()
            .filter(|(k, _)| k.starts_with("atlas.") || k == "os")
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        keep(meta),
        keep(IncusMetadata::for_image(&a)),
        "a passed-through image keeps service, base digest and recipe hash"
    );
}

#[tokio::test]
async fn build_from_two_caches_via_registry_push_and_umoci() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("base");
    base_layout(&layout, &format!("build-reg-{}", std::process::id()));
    let local = pull_in(
        &format!("oci:{}:1", layout.display()),
        &tmp.path().join("c0"),
    )
    .await;
    let repo = format!("127.0.0.1:5000/t-build/base-{}:1", std::process::id());
    let dest = ImageRef::parse(&repo).unwrap();
    push_image(&local, &dest, &PushOptions::default(), &NoProgress)
        .await
        .unwrap();
    let src = format!("docker://{repo}");
    let a = build::build(&pull_in(&src, &tmp.path().join("ca")).await, &spec()).unwrap();
    let b = build::build(&pull_in(&src, &tmp.path().join("cb")).await, &spec()).unwrap();
    assert_eq!(
        a.manifest_digest, b.manifest_digest,
        "two caches, one digest"
    );

    // Push and read back with skopeo.
    let out_ref = format!("127.0.0.1:5000/t-build/atlas-{}:1", std::process::id());
    let cache = BlobCache::open(tmp.path().join("ca")).unwrap();
    let pushed = build::push(
        &a,
        &cache,
        &ImageRef::parse(&out_ref).unwrap(),
        &PushOptions::default(),
        &NoProgress,
    )
    .await
    .unwrap();
    assert_eq!(pushed, a.manifest_digest);
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{out_ref}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Digest"], a.manifest_digest.to_string());
    assert_eq!(v["Layers"].as_array().unwrap().len(), 3);

    // OCI layout output unpacked by umoci.
    if !have_tool("umoci") {
        return;
    }
    let oci = tmp.path().join("oci");
    build::write_oci_layout(&a, &oci, Some("web")).unwrap();
    let bundle = tmp.path().join("bundle");
    umoci_unpack(&oci, "web", &bundle, true);
    let init = std::fs::read(bundle.join("rootfs/sbin/init")).unwrap();
    assert_eq!(init, atlas_image::init::binary());
    let svc = std::fs::read_to_string(bundle.join("rootfs/etc/atlas/service.json")).unwrap();
    assert_eq!(
        ServiceSpec::from_json(&svc).unwrap(),
        a.service.clone().unwrap()
    );
}

#[tokio::test]
async fn build_refuses_a_layer_whose_digest_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("base");
    let img = base_layout(&layout, "build-corrupt");
    let (bad, _, blob) = &img.layers[1];
    let path = layout.join("blobs/sha256").join(bad.hex());
    let mut tampered = blob.clone();
    let n = tampered.len();
    tampered[n - 9] ^= 0xff; // inside the gzip trailer's CRC: decompression alone might pass
    std::fs::write(&path, &tampered).unwrap();
    // The pull verifies every blob of a layout; should it not, the flattener's read must.
    let cache = BlobCache::open(tmp.path().join("c")).unwrap();
    let src = Source::parse(&format!("oci:{}:1", layout.display())).unwrap();
    let msg = match pull(&src, &cache, &opts(), &NoProgress).await {
        Err(e) => e.to_string(),
        Ok(base) => {
            let image = build::build(&base, &spec()).unwrap();
            let mut out = Vec::new();
            let e = build::write_unified(&image, &mut out, 0)
                .expect_err("a corrupt layer must be refused");
            assert!(out.is_empty(), "nothing written before the check failed");
            e.to_string()
        }
    };
    assert!(
        msg.contains(&bad.to_string()),
        "error must name the layer: {msg}"
    );
    assert!(msg.contains("corrupt") || msg.contains("digest"), "{msg}");
}

#[tokio::test]
async fn build_indexes_taken_while_pulling_give_the_same_tarball() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("base");
    base_layout(&layout, "build-tee");
    let observer = build::IndexingObserver::new();
    let opts = PullOptions {
        observer: Some(observer.clone()),
        ..opts()
    };
    let cache = BlobCache::open(tmp.path().join("c")).unwrap();
    let src = Source::parse(&format!("oci:{}:1", layout.display())).unwrap();
    let base = pull(&src, &cache, &opts, &NoProgress).await.unwrap();
    let indexes = observer.take();
    assert_eq!(indexes.len(), 2);
    assert!(
        indexes.iter().all(Option::is_some),
        "every layer indexed during the pull"
    );
    let image = build::build(&base, &spec()).unwrap();
    let mut teed = Vec::new();
    build::PreparedUnified::with_indexes(&image, indexes, 0)
        .unwrap()
        .write(&mut teed)
        .unwrap();
    let mut plain = Vec::new();
    build::write_unified(&image, &mut plain, 0).unwrap();
    assert_eq!(teed, plain);
    // Indexes for other layers are ignored, not trusted.
    let wrong = vec![Some(
        atlas_image::layer::LayerIndex::from_blob("sha256:0", None, &b""[..])
            .unwrap_or_else(|_| panic!("empty tar indexes")),
    )];
    let mut again = Vec::new();
    build::PreparedUnified::with_indexes(&image, wrong, 0)
        .unwrap()
        .write(&mut again)
        .unwrap();
    assert_eq!(again, plain);
}

/// Pushing an Atlas image next to its base on the same registry: every base layer is mounted
/// from the base's repository (POST ...?mount=&from=, 201), only the Atlas layer and config
/// are uploaded (seen by a recording proxy in front of the real registry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_push_mounts_the_base_layers_instead_of_uploading_them() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("base");
    let pid = std::process::id();
    let base_img = base_layout(&layout, &format!("build-mount-{pid}"));
    let base_repo = format!("t-build/mount-base-{pid}");
    skopeo_push(&layout, "1", &format!("{REGISTRY}/{base_repo}:1"), false);

    // The base is pulled through the recording proxy, so its reference names the registry
    // the push goes to (as with --registry-mirror and --push on the same registry).
    let proxy = common::proxy::Proxy::start(REGISTRY).await;
    let base = pull_in(
        &format!("docker://{}/{base_repo}:1", proxy.addr),
        &tmp.path().join("c"),
    )
    .await;
    let image = build::build(&base, &spec()).unwrap();
    proxy.seen.lock().unwrap().clear();
    let dest = ImageRef::parse(&format!("{}/t-build/mount-atlas-{pid}:1", proxy.addr)).unwrap();
    let cache = BlobCache::open(tmp.path().join("c")).unwrap();
    let pushed = build::push(&image, &cache, &dest, &PushOptions::default(), &NoProgress)
        .await
        .unwrap();
    assert_eq!(pushed, image.manifest_digest);

    let seen = proxy.seen.lock().unwrap().clone();
    let mounted: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == "POST" && s.status == 201)
        .filter(|s| {
            s.path
                .contains(&format!("from={}", base_repo.replace('/', "%2F")))
                || s.path.contains(&format!("from={base_repo}"))
        })
        .map(|s| s.path.as_str())
        .collect();
    for (d, _, _) in &base_img.layers {
        assert!(
            mounted.iter().any(|p| p.contains(&format!("mount={d}"))
                || p.contains(&format!("mount={}", d.to_string().replace(':', "%3A")))),
            "base layer {d} not mounted: {seen:#?}"
        );
    }
    assert_eq!(mounted.len(), base_img.layers.len(), "{seen:#?}");
    // Uploads finish with a PUT on an upload session: only the Atlas layer and the config.
    let uploads: Vec<&str> = seen
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/"))
        .map(|s| s.path.as_str())
        .collect();
    let atlas_layer = &image.layer.as_ref().unwrap().digest;
    assert_eq!(uploads.len(), 2, "{uploads:#?}");
    for d in [atlas_layer.clone(), image.config_digest.to_string()] {
        assert!(
            uploads
                .iter()
                .any(|p| p.contains(&d) || p.contains(&d.replace(':', "%3A"))),
            "{d} not uploaded: {uploads:#?}"
        );
    }
    for (d, _, _) in &base_img.layers {
        assert!(
            !uploads.iter().any(|p| p.contains(d.hex())),
            "base layer {d} was uploaded: {uploads:#?}"
        );
    }
    assert_eq!(
        skopeo_digest(&format!("{REGISTRY}/t-build/mount-atlas-{pid}:1")),
        image.manifest_digest.to_string()
    );
}
