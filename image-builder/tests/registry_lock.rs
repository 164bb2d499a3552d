//! Recipes in images/ and images.lock: every seed service has a valid recipe; `lock`
//! resolves tags to the digests the registry serves (also through a mirror mapping), and a
//! pinned pull through the mirror verifies them.

mod common;

use std::path::Path;

use atlas_image::auth::AuthSource;
use atlas_image::cache::BlobCache;
use atlas_image::lock::{ImagesLock, lock_references};
use atlas_image::platform::Platform;
use atlas_image::progress::NoProgress;
use atlas_image::recipe::Recipe;
use atlas_image::reference::ImageRef;
use atlas_image::registry::map_to_mirror;
use atlas_image::source::{PullError, PullOptions, Source, pull};
use common::images::{multi_arch_layout, single_image_layout};
use common::*;

#[test]
fn every_seed_service_has_a_valid_recipe() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
    let recipes = Recipe::load_dir(&dir).unwrap();
    let names: Vec<&str> = recipes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "alertmanager",
            "caddy",
            "cloudflared",
            "grafana",
            "loki",
            "mosquitto",
            "node-exporter",
            "prometheus",
            "step-ca"
        ]
    );
    for r in &recipes {
        assert!(
            r.base_ref().unwrap().tag.is_some(),
            "{}: base without tag",
            r.name
        );
        assert!(!r.config.ports.is_empty(), "{}: no ports", r.name);
    }
    let caddy = recipes.iter().find(|r| r.name == "caddy").unwrap();
    assert_eq!(
        caddy.upstream_refs().len(),
        1,
        "caddy builds on the official image"
    );
    let plugin_build: Vec<String> = caddy
        .downloads
        .iter()
        .map(|d| d.url_for("x86_64"))
        .collect();
    assert_eq!(plugin_build.len(), 1, "caddy's binary is downloaded");
    assert!(
        plugin_build[0].starts_with("https://caddyserver.com/api/download?os=linux&arch=amd64&")
            && plugin_build[0].contains("caddy-dns%2Fcloudflare")
            && plugin_build[0].contains("mholt%2Fcaddy-ratelimit"),
        "from Caddy's build service, with both plugins: {plugin_build:?}"
    );
    assert_eq!(caddy.downloads[0].to, "/usr/bin/caddy");
    assert!(
        recipes
            .iter()
            .find(|r| r.name == "grafana")
            .unwrap()
            .plugins
            .is_some()
    );
    // What the binary embeds is exactly what is in images/.
    assert_eq!(Recipe::embedded().unwrap(), recipes);
    assert!(Recipe::embedded_for("loki").unwrap().is_ok());
    assert!(Recipe::embedded_for("nginx").is_none());
    // The embedded lock parses (it is empty until `image lock` runs against registries).
    ImagesLock::embedded().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_resolves_tags_and_pins_pulls_through_a_mirror() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    let multi = tmp.path().join("multi");
    let built = single_image_layout(&single, "lock-single", "v1", 1000);
    let (index_digest, amd, _arm) = multi_arch_layout(&multi, "lock-multi", "v2");
    let repo_single = unique_repo("lock-single");
    let repo_multi = unique_repo("lock-multi");
    // The local registry plays the mirror of docker.io and quay.io.
    skopeo_push(
        &single,
        "v1",
        &format!("{REGISTRY}/{repo_single}:v1"),
        false,
    );
    skopeo_push(&multi, "v2", &format!("{REGISTRY}/{repo_multi}:v2"), true);
    let upstream_single = ImageRef::parse(&format!("docker.io/{repo_single}:v1")).unwrap();
    let upstream_multi = ImageRef::parse(&format!("quay.io/{repo_multi}:v2")).unwrap();

    let opts = PullOptions {
        platform: Platform::linux_amd64(),
        auth: AuthSource::Anonymous,
        ..PullOptions::default()
    };
    let lock = lock_references(
        &[upstream_single.clone(), upstream_multi.clone()],
        Some(REGISTRY),
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(
        lock.digest_for(&upstream_single),
        Some(&built.manifest_digest)
    );
    assert_eq!(
        lock.digest_for(&upstream_multi),
        Some(&index_digest),
        "a multi-arch image locks its index"
    );
    assert_eq!(
        lock.digest_for(&upstream_single).unwrap().to_string(),
        skopeo_digest(&format!("{REGISTRY}/{repo_single}:v1"))
    );

    // Written and read back, byte-stable.
    let path = tmp.path().join("images.lock");
    std::fs::write(&path, lock.to_toml()).unwrap();
    let loaded = ImagesLock::load(&path).unwrap();
    assert_eq!(loaded.to_toml(), lock.to_toml());

    // Pin, map onto the mirror, pull: the index digest is verified, the platform chosen.
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let pinned = map_to_mirror(&loaded.pin(&upstream_multi).unwrap(), REGISTRY);
    assert_eq!(
        pinned.to_string(),
        format!("{REGISTRY}/{repo_multi}:v2@{index_digest}")
    );
    let img = pull(&Source::Registry(pinned), &cache, &opts, &NoProgress)
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, amd.manifest_digest);
    assert_eq!(img.index_digest.as_ref(), Some(&index_digest));

    // A lock that pins another digest (the mirror serves something else): refused.
    let stale_text = lock.to_toml().replace(
        &built.manifest_digest.to_string(),
        &amd.manifest_digest.to_string(),
    );
    let stale = ImagesLock::parse(&stale_text, "stale").unwrap();
    let pinned = map_to_mirror(&stale.pin(&upstream_single).unwrap(), REGISTRY);
    let err = pull(&Source::Registry(pinned), &cache, &opts, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::Registry(_)), "{err}");
    assert!(err.to_string().contains("no such image"), "{err}");
}
