//! Pushing to the real registry, read back by skopeo (and by our pull); basic auth against
//! a second registry with htpasswd.

mod common;

use std::io::Read;

use atlas_image::auth::AuthSource;
use atlas_image::cache::BlobCache;
use atlas_image::digest::Digest;
use atlas_image::platform::Platform;
use atlas_image::progress::NoProgress;
use atlas_image::reference::ImageRef;
use atlas_image::registry::{PushOptions, push_image};
use atlas_image::source::{PullOptions, PulledImage, Source, pull};
use base64::Engine as _;
use common::images::single_image_layout;
use common::proxy::Proxy;
use common::*;

fn pull_opts(auth: AuthSource) -> PullOptions {
    PullOptions {
        platform: Platform::linux_amd64(),
        auth,
        ..PullOptions::default()
    }
}

async fn pull_src(
    src: &str,
    cache: &BlobCache,
    auth: AuthSource,
) -> Result<PulledImage, atlas_image::source::PullError> {
    pull(
        &Source::parse(src).unwrap(),
        cache,
        &pull_opts(auth),
        &NoProgress,
    )
    .await
}

fn push_opts(auth: AuthSource) -> PushOptions {
    PushOptions {
        auth,
        ..PushOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_from_a_layout_is_read_by_skopeo_and_skips_existing_blobs() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = single_image_layout(&layout, "push-layout", "v1", 100_000);
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let img = pull_src(
        &format!("oci:{}:v1", layout.display()),
        &cache,
        AuthSource::Anonymous,
    )
    .await
    .unwrap();
    let repo = unique_repo("push-layout");
    let proxy = Proxy::start(REGISTRY).await;

    let dest = ImageRef::parse(&format!("{}/{repo}:v1", proxy.addr)).unwrap();
    let digest = push_image(&img, &dest, &push_opts(AuthSource::Anonymous), &NoProgress)
        .await
        .unwrap();
    assert_eq!(digest, built.manifest_digest);
    let reference = format!("{REGISTRY}/{repo}:v1");
    assert_eq!(skopeo_digest(&reference), built.manifest_digest.to_string());
    let inspect = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ]);
    let inspect: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["Digest"], built.manifest_digest.to_string());
    assert_eq!(inspect["Labels"]["org.example.seed"], "push-layout");
    let layers: Vec<&str> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let expected: Vec<String> = built.layers.iter().map(|l| l.0.to_string()).collect();
    assert_eq!(layers, expected);
    let uploads = proxy
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/"))
        .count();
    assert_eq!(uploads, 3, "config and two layers uploaded");

    // skopeo copies it out and gets the same bytes.
    let out = tmp.path().join("out");
    skopeo(&[
        "copy",
        "-q",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:v1", out.display()),
    ]);
    for (d, _, bytes) in &built.layers {
        assert_eq!(
            &std::fs::read(out.join("blobs/sha256").join(d.hex())).unwrap(),
            bytes
        );
    }

    // Pushing again: HEAD finds every blob, nothing is uploaded, the manifest is re-put.
    proxy.clear();
    let again = push_image(&img, &dest, &push_opts(AuthSource::Anonymous), &NoProgress)
        .await
        .unwrap();
    assert_eq!(again, built.manifest_digest);
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .filter(|s| s.method == "HEAD" && s.path.contains("/blobs/"))
            .count(),
        3,
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.path.contains("/blobs/uploads/")),
        "re-uploaded: {seen:?}"
    );

    // Our own pull of what we pushed.
    let back = pull_src(
        &format!("docker://{reference}"),
        &cache,
        AuthSource::Anonymous,
    )
    .await
    .unwrap();
    assert_eq!(back.manifest_digest, built.manifest_digest);
    let mut layer = Vec::new();
    back.open_layer(1).unwrap().read_to_end(&mut layer).unwrap();
    assert_eq!(layer, built.layers[1].2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_from_the_cache_to_another_repository() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = single_image_layout(&layout, "push-copy", "v1", 10_000);
    let from = unique_repo("push-copy-from");
    let to = unique_repo("push-copy-to");
    skopeo_push(&layout, "v1", &format!("{REGISTRY}/{from}:v1"), false);
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let img = pull_src(
        &format!("docker://{REGISTRY}/{from}:v1"),
        &cache,
        AuthSource::Anonymous,
    )
    .await
    .unwrap();
    // Through the proxy, with the source repository offered for cross-repository mounts:
    // every blob is mounted, none uploaded.
    let proxy = Proxy::start(REGISTRY).await;
    let dest = ImageRef::parse(&format!("{}/{to}:copied", proxy.addr)).unwrap();
    let mut opts = push_opts(AuthSource::Anonymous);
    opts.mount_from = vec![ImageRef::parse(&format!("{}/{from}:v1", proxy.addr)).unwrap()];
    let d = push_image(&img, &dest, &opts, &NoProgress).await.unwrap();
    assert_eq!(d, built.manifest_digest);
    assert_eq!(
        skopeo_digest(&format!("{REGISTRY}/{to}:copied")),
        built.manifest_digest.to_string()
    );
    let seen = proxy.seen.lock().unwrap().clone();
    let mounts = seen
        .iter()
        .filter(|s| s.method == "POST" && s.path.contains("mount=") && s.status == 201)
        .count();
    assert_eq!(mounts, 3, "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "PUT" && s.path.contains("/blobs/uploads/")),
        "uploaded: {seen:?}"
    );

    // A destination pinned to another digest is refused before anything is sent.
    let wrong = Digest::of_bytes(b"not this manifest");
    let dest = ImageRef::parse(&format!("{REGISTRY}/{to}:x@{wrong}")).unwrap();
    let err = push_image(&img, &dest, &push_opts(AuthSource::Anonymous), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&wrong.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_an_auth_file() {
    init_tls();
    if !have_tool("skopeo") {
        return;
    }
    let Some(reg) = common::auth_registry::start("alice", "wonder-land") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = single_image_layout(&layout, "auth", "v1", 10_000);
    let repo = unique_repo("auth");
    let reference = format!("{}/{repo}:v1", reg.addr);
    skopeo(&[
        "copy",
        "-q",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:wonder-land",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{reference}"),
    ]);
    let write_auth = |name: &str, creds: &str| {
        let path = tmp.path().join(name);
        let b = base64::engine::general_purpose::STANDARD.encode(creds);
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"{}":{{"auth":"{b}"}}}}}}"#, reg.addr),
        )
        .unwrap();
        AuthSource::File(path)
    };
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let src = format!("docker://{reference}");

    let err = pull_src(&src, &cache, AuthSource::Anonymous)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("registry {} refused pull of {repo}", reg.addr)),
        "{msg}"
    );
    assert!(msg.contains("no credentials"), "{msg}");

    let err = pull_src(&src, &cache, write_auth("bad.json", "alice:wrong"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("were rejected"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password leaked into the error: {err}"
    );

    let good = write_auth("auth.json", "alice:wonder-land");
    let img = pull_src(&src, &cache, good.clone()).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);

    // Push with the same credentials; skopeo reads it back with them.
    let dest = ImageRef::parse(&format!("{}/{repo}-pushed:v2", reg.addr)).unwrap();
    let d = push_image(&img, &dest, &push_opts(good), &NoProgress)
        .await
        .unwrap();
    assert_eq!(d, built.manifest_digest);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "alice:wonder-land",
        &format!("docker://{dest}"),
    ]);
    assert_eq!(Digest::of_bytes(raw.as_bytes()), built.manifest_digest);
}

/// skopeo and a registry with bearer tokens (push for bob:builder), or None (skip).
async fn token_registry() -> Option<common::auth_registry::AuthRegistry> {
    init_tls();
    if !have_tool("skopeo") {
        return None;
    }
    common::auth_registry::start_token("bob", "builder").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_anonymous_pull_and_authenticated_push() {
    let Some(reg) = token_registry().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = single_image_layout(&layout, "token", "v1", 10_000);
    let repo = unique_repo("token");
    let reference = format!("{}/{repo}:v1", reg.addr);
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    // Anonymous pull: the registry's 401 challenge sends us to the token service, which
    // hands out a pull-only token without credentials.
    let img = push_then_pull_anonymously(&reg, &layout, &reference, &cache).await;
    assert_eq!(img.manifest_digest, built.manifest_digest);
    let requests = reg.token_requests.lock().unwrap().clone();
    assert!(
        requests.contains(&(format!("repository:{repo}:pull"), false)),
        "{requests:?}"
    );

    // Anonymous push: the token grants no push, the registry refuses, the error says how to log in.
    let dest = ImageRef::parse(&format!("{}/{repo}-pushed:v1", reg.addr)).unwrap();
    let err = push_image(&img, &dest, &push_opts(AuthSource::Anonymous), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("registry {} refused push", reg.addr)),
        "{err}"
    );
    assert!(err.to_string().contains("no credentials"), "{err}");

    // With credentials from an auth file the token service grants push.
    let auth = tmp.path().join("auth.json");
    let b = base64::engine::general_purpose::STANDARD.encode("bob:builder");
    std::fs::write(
        &auth,
        format!(r#"{{"auths":{{"{}":{{"auth":"{b}"}}}}}}"#, reg.addr),
    )
    .unwrap();
    let d = push_image(&img, &dest, &push_opts(AuthSource::File(auth)), &NoProgress)
        .await
        .unwrap();
    assert_eq!(d, built.manifest_digest);
    let requests = reg.token_requests.lock().unwrap().clone();
    assert!(
        requests.contains(&(format!("repository:{repo}-pushed:pull,push"), true)),
        "{requests:?}"
    );
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "bob:builder",
        &format!("docker://{dest}"),
    ]);
    assert_eq!(Digest::of_bytes(raw.as_bytes()), built.manifest_digest);
}

/// Callers spawn pulls and pushes on a multi-threaded runtime: their futures must be Send.
#[test]
fn pull_push_and_lock_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path()).unwrap();
    let src = Source::parse("docker://127.0.0.1:5000/x/y:1").unwrap();
    let opts = pull_opts(AuthSource::Anonymous);
    assert_send(&pull(&src, &cache, &opts, &NoProgress));
    let refs = [ImageRef::parse("127.0.0.1:5000/x/y:1").unwrap()];
    assert_send(&atlas_image::lock::lock_references(&refs, None, &opts));
    let layout = tmp.path().join("l");
    single_image_layout(&layout, "send", "v1", 10);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let img = rt
        .block_on(pull_src(
            &format!("oci:{}:v1", layout.display()),
            &cache,
            AuthSource::Anonymous,
        ))
        .unwrap();
    assert_send(&push_image(
        &img,
        &refs[0],
        &push_opts(AuthSource::Anonymous),
        &NoProgress,
    ));
}

/// What Docker Hub serves for the official images, behind the Bearer challenge: an index
/// whose first entry is a BuildKit attestation manifest (unknown/unknown), then the image,
/// whose layers are gzip and zstd. The pull takes the linux/amd64 image (pinned by the
/// index digest), never the attestation, and the image builds and flattens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_index_with_zstd_layers_through_a_token_registry() {
    let Some(reg) = token_registry().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let (index, amd) = common::images::attested_layout(&layout, "attested", "v1");
    let repo = unique_repo("attested");
    let reference = format!("{}/{repo}:v1", reg.addr);
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let img = push_then_pull_anonymously(&reg, &layout, &reference, &cache).await;
    assert_eq!(img.index_digest.as_ref(), Some(&index));
    assert_eq!(
        img.manifest_digest, amd.manifest_digest,
        "the image, not its attestation"
    );
    assert_eq!(
        img.layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect::<Vec<_>>(),
        [
            atlas_image::manifest::OCI_LAYER_GZIP,
            atlas_image::manifest::OCI_LAYER_ZSTD
        ]
    );
    let requests = reg.token_requests.lock().unwrap().clone();
    assert!(
        requests.contains(&(format!("repository:{repo}:pull"), false)),
        "the Bearer challenge was followed: {requests:?}"
    );
    let image =
        atlas_image::build::build(&img, &atlas_image::build::AtlasSpec::convert("attested"))
            .unwrap();
    let mut out = Vec::new();
    atlas_image::build::write_unified(&image, &mut out, 0).unwrap();
    let mut names = Vec::new();
    for e in tar::Archive::new(&out[..]).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    for want in [
        "rootfs/sbin/init",
        "rootfs/layer0/hello.txt",
        "rootfs/layer1/blob.bin",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
}

/// Pushes `layout`'s `v1` (every manifest of an index) as bob, forgets the token requests so
/// far, and pulls `reference` back without credentials.
async fn push_then_pull_anonymously(
    reg: &common::auth_registry::AuthRegistry,
    layout: &std::path::Path,
    reference: &str,
    cache: &BlobCache,
) -> PulledImage {
    skopeo(&[
        "copy",
        "-q",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        "bob:builder",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{reference}"),
    ]);
    reg.token_requests.lock().unwrap().clear();
    pull_src(
        &format!("docker://{reference}"),
        cache,
        AuthSource::Anonymous,
    )
    .await
    .unwrap()
}
