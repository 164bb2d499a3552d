//! Pulls from the real local registry (images pushed there by skopeo), through a recording
//! proxy where the test must see or disturb the traffic.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use atlas_image::auth::AuthSource;
use atlas_image::cache::{BlobCache, CacheError};
use atlas_image::platform::Platform;
use atlas_image::progress::NoProgress;
use atlas_image::source::{Layer, PullError, PullOptions, PulledImage, Source, pull};
use common::images::{multi_arch_layout, single_image_layout};
use common::proxy::Proxy;
use common::*;

fn opts() -> PullOptions {
    PullOptions {
        platform: Platform::linux_amd64(),
        auth: AuthSource::Anonymous,
        ..PullOptions::default()
    }
}

async fn pull_ref(
    reference: &str,
    cache: &BlobCache,
    opts: &PullOptions,
) -> Result<PulledImage, PullError> {
    let source = Source::parse(&format!("docker://{reference}")).unwrap();
    pull(&source, cache, opts, &NoProgress).await
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<Vec<u8>>>>);

struct Sink(Arc<Mutex<Vec<Vec<u8>>>>, usize);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap()[self.1].extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn observer(&self, layers: usize) -> Arc<dyn atlas_image::source::LayerObserver> {
        *self.0.lock().unwrap() = vec![Vec::new(); layers];
        let inner = self.0.clone();
        Arc::new(move |i: usize, _l: &Layer| {
            Some(Box::new(Sink(inner.clone(), i)) as Box<dyn Write + Send>)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_matches_skopeo_and_second_pull_uses_only_the_cache() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = single_image_layout(&layout, "pull-basic", "v1", 200_000);
    let repo = unique_repo("pull-basic");
    skopeo_push(&layout, "v1", &format!("{REGISTRY}/{repo}:v1"), false);
    let proxy = Proxy::start(REGISTRY).await;

    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let captured = Captured::default();
    let mut o = opts();
    o.observer = Some(captured.observer(2));
    let img = pull_ref(&format!("{}/{repo}:v1", proxy.addr), &cache, &o)
        .await
        .unwrap();

    // Same digest we wrote, skopeo reports, and we computed from the pulled bytes.
    assert_eq!(img.manifest_digest, built.manifest_digest);
    assert_eq!(
        img.manifest_digest.to_string(),
        skopeo_digest(&format!("{REGISTRY}/{repo}:v1"))
    );
    assert_eq!(
        img.reference.as_ref().unwrap().digest.as_ref(),
        Some(&built.manifest_digest)
    );
    assert_eq!(img.config_descriptor.digest, built.config_digest);
    assert_eq!(img.config.config.entrypoint, vec!["/bin/app"]);
    assert_eq!(img.config.config.cmd, vec!["--serve"]);
    assert_eq!(img.config.config.user, "65534:65534");
    assert_eq!(img.config.config.working_dir, "/srv");
    assert!(img.config.config.exposed_ports.contains_key("8080/tcp"));
    assert_eq!(img.config.config.labels["org.example.seed"], "pull-basic");
    assert_eq!(img.layers.len(), 2);
    for (i, (digest, size, bytes)) in built.layers.iter().enumerate() {
        assert_eq!(&img.layers[i].digest, digest);
        assert_eq!(img.layers[i].size, *size);
        let mut read = Vec::new();
        img.open_layer(i).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(&read, bytes, "layer {i} read back from the cache");
        assert_eq!(
            &captured.0.lock().unwrap()[i],
            bytes,
            "observer saw layer {i} exactly"
        );
    }
    assert_eq!(
        proxy.blob_gets().len(),
        3,
        "config + 2 layers fetched once: {:?}",
        proxy.blob_gets()
    );
    let s = cache.stats();
    assert_eq!((s.hits, s.fetched, s.resumed), (0, 3, 0));

    // Second pull, new cache handle on the same directory: no blob request at all.
    proxy.clear();
    let cache2 = BlobCache::open(tmp.path().join("cache")).unwrap();
    let captured2 = Captured::default();
    let mut o = opts();
    o.observer = Some(captured2.observer(2));
    let again = pull_ref(&format!("{}/{repo}:v1", proxy.addr), &cache2, &o)
        .await
        .unwrap();
    assert_eq!(again.manifest_digest, built.manifest_digest);
    assert!(
        proxy.blob_gets().is_empty(),
        "second pull requested blobs: {:?}",
        proxy.blob_gets()
    );
    let s = cache2.stats();
    assert_eq!((s.hits, s.fetched, s.bytes_fetched), (3, 0, 0));
    for (i, (_, _, bytes)) in built.layers.iter().enumerate() {
        assert_eq!(
            &captured2.0.lock().unwrap()[i],
            bytes,
            "observer fed from the cache for layer {i}"
        );
    }

    // Pinned by digest (tag kept) resolves to the same manifest.
    let pinned = format!("{REGISTRY}/{repo}:v1@{}", built.manifest_digest);
    let img = pull_ref(&pinned, &cache2, &opts()).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pull_resumes_with_a_range_request_or_restarts() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = single_image_layout(&layout, "pull-resume", "v1", 300_000);
    let repo = unique_repo("pull-resume");
    skopeo_push(&layout, "v1", &format!("{REGISTRY}/{repo}:v1"), false);
    let proxy = Proxy::start(REGISTRY).await;
    let reference = format!("{}/{repo}:v1", proxy.addr);
    let root = tmp.path().join("cache");
    pull_ref(&reference, &BlobCache::open(&root).unwrap(), &opts())
        .await
        .unwrap();

    let (digest, size, bytes) = built.layers[0].clone();
    let truncate = |cache: &BlobCache, keep: usize| {
        std::fs::remove_file(cache.blob_path(&digest)).unwrap();
        std::fs::write(cache.partial_path(&digest), &bytes[..keep]).unwrap();
    };

    // A download cut off halfway: the error says what was kept, the next pull resumes it.
    let cache = BlobCache::open(&root).unwrap();
    std::fs::remove_file(cache.blob_path(&digest)).unwrap();
    proxy.faults.lock().unwrap().cut_blob = Some(digest.to_string());
    let err = pull_ref(&reference, &cache, &opts()).await.unwrap_err();
    let kept = std::fs::metadata(cache.partial_path(&digest))
        .unwrap()
        .len();
    assert!(kept > 0 && kept < size, "kept {kept} of {size}");
    assert!(
        err.to_string()
            .contains(&format!("kept {kept} bytes to resume")),
        "{err}"
    );
    assert!(!cache.blob_path(&digest).exists());
    proxy.faults.lock().unwrap().cut_blob = None;
    proxy.clear();
    let cache = BlobCache::open(&root).unwrap();
    pull_ref(&reference, &cache, &opts()).await.unwrap();
    let gets = proxy.blob_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(
        gets[0].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_eq!(std::fs::read(cache.blob_path(&digest)).unwrap(), bytes);
    let s = cache.stats();
    assert_eq!((s.resumed, s.bytes_fetched), (1, size - kept));

    // A partial file as an interrupted pull leaves it: the next pull asks only for the rest.
    let cache = BlobCache::open(&root).unwrap();
    let keep = bytes.len() / 2;
    truncate(&cache, keep);
    proxy.clear();
    let captured = Captured::default();
    let mut o = opts();
    o.observer = Some(captured.observer(2));
    pull_ref(&reference, &cache, &o).await.unwrap();
    let gets = proxy.blob_gets();
    assert_eq!(
        gets.len(),
        1,
        "only the truncated blob is requested: {gets:?}"
    );
    assert_eq!(
        gets[0].range.as_deref(),
        Some(format!("bytes={keep}-").as_str())
    );
    assert_eq!(gets[0].status, 206);
    let s = cache.stats();
    assert_eq!(
        (s.fetched, s.resumed, s.bytes_fetched),
        (1, 1, size - keep as u64)
    );
    assert_eq!(std::fs::read(cache.blob_path(&digest)).unwrap(), bytes);
    assert!(!cache.partial_path(&digest).exists());
    assert_eq!(
        captured.0.lock().unwrap()[0],
        bytes,
        "observer sees the replayed prefix + the rest once"
    );

    // A registry that ignores Range: the download restarts from byte 0 and still verifies.
    let cache = BlobCache::open(&root).unwrap();
    truncate(&cache, keep);
    proxy.faults.lock().unwrap().ignore_range = true;
    let captured = Captured::default();
    let mut o = opts();
    o.observer = Some(captured.observer(2));
    pull_ref(&reference, &cache, &o).await.unwrap();
    let s = cache.stats();
    assert_eq!((s.fetched, s.resumed, s.bytes_fetched), (1, 0, size));
    assert_eq!(std::fs::read(cache.blob_path(&digest)).unwrap(), bytes);
    assert_eq!(
        captured.0.lock().unwrap()[0],
        bytes,
        "observer does not see the prefix twice"
    );

    // A partial file that is already complete (the run died before the rename): verified
    // and moved into place without any request.
    let cache = BlobCache::open(&root).unwrap();
    truncate(&cache, bytes.len());
    proxy.clear();
    pull_ref(&reference, &cache, &opts()).await.unwrap();
    assert!(proxy.blob_gets().is_empty(), "{:?}", proxy.blob_gets());
    let s = cache.stats();
    assert_eq!((s.fetched, s.resumed, s.bytes_fetched), (1, 1, 0));
    assert!(cache.contains(&digest, size));

    // A partial file with wrong content: the resumed blob fails verification over the
    // whole file and nothing stays; the next pull starts clean and succeeds.
    proxy.faults.lock().unwrap().ignore_range = false;
    let cache = BlobCache::open(&root).unwrap();
    std::fs::remove_file(cache.blob_path(&digest)).unwrap();
    std::fs::write(cache.partial_path(&digest), vec![0u8; keep]).unwrap();
    let err = pull_ref(&reference, &cache, &opts()).await.unwrap_err();
    assert!(
        matches!(err, PullError::Cache(CacheError::DigestMismatch { .. })),
        "{err}"
    );
    assert!(!cache.partial_path(&digest).exists() && !cache.blob_path(&digest).exists());
    pull_ref(&reference, &cache, &opts()).await.unwrap();
    assert_eq!(std::fs::read(cache.blob_path(&digest)).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_refused_and_leaves_the_cache_clean() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = single_image_layout(&layout, "pull-corrupt", "v1", 50_000);
    let repo = unique_repo("pull-corrupt");
    skopeo_push(&layout, "v1", &format!("{REGISTRY}/{repo}:v1"), false);
    let proxy = Proxy::start(REGISTRY).await;
    let bad = built.layers[1].0.clone();
    proxy.faults.lock().unwrap().corrupt_blob = Some(bad.to_string());
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let reference = format!("{}/{repo}:v1", proxy.addr);

    let err = pull_ref(&reference, &cache, &opts()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, PullError::Cache(CacheError::DigestMismatch { .. })),
        "{msg}"
    );
    assert!(msg.contains(&bad.to_string()), "names the blob: {msg}");
    assert!(
        msg.contains(&format!("docker://{reference}")),
        "names the source: {msg}"
    );
    assert!(!cache.blob_path(&bad).exists(), "corrupt blob kept");
    assert!(!cache.partial_path(&bad).exists(), "corrupt partial kept");

    // A manifest pulled by digest whose bytes do not match the pin: refused, nothing cached.
    let mut before: Vec<_> = std::fs::read_dir(cache.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    proxy.faults.lock().unwrap().corrupt_blob = Some(built.manifest_digest.to_string());
    let pinned = format!("{}/{repo}@{}", proxy.addr, built.manifest_digest);
    let err = pull_ref(&pinned, &cache, &opts()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&built.manifest_digest.to_string()) && msg.contains("pinned"),
        "{msg}"
    );
    let mut after: Vec<_> = std::fs::read_dir(cache.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    before.sort();
    after.sort();
    assert_eq!(before, after);

    proxy.faults.lock().unwrap().corrupt_blob = None;
    let img = pull_ref(&reference, &cache, &opts()).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_is_chosen_from_a_multi_arch_index() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let (index_digest, amd, arm) = multi_arch_layout(&layout, "pull-multi", "v1");
    let repo = unique_repo("pull-multi");
    let reference = format!("{REGISTRY}/{repo}:v1");
    skopeo_push(&layout, "v1", &reference, true);
    assert_eq!(skopeo_digest(&reference), index_digest.to_string());
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();

    let mut o = opts();
    o.platform = "linux/arm64".parse().unwrap();
    let img = pull_ref(&reference, &cache, &o).await.unwrap();
    assert_eq!(img.manifest_digest, arm.manifest_digest);
    assert_eq!(img.index_digest.as_ref(), Some(&index_digest));
    assert_eq!(img.platform.to_string(), "linux/arm64/v8");

    o.platform = "linux/amd64".parse().unwrap();
    let img = pull_ref(&reference, &cache, &o).await.unwrap();
    assert_eq!(img.manifest_digest, amd.manifest_digest);
    assert_eq!(img.config.architecture, "amd64");

    o.platform = "linux/s390x".parse().unwrap();
    let err = pull_ref(&reference, &cache, &o).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/amd64, linux/arm64/v8"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_errors_say_what_and_where() {
    init_tls();
    if !have_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let repo = unique_repo("pull-missing");
    let err = pull_ref(&format!("{REGISTRY}/{repo}:nope"), &cache, &opts())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string()
            .split(": no such image or tag")
            .next()
            .unwrap(),
        format!("registry {REGISTRY} answered 404 for manifest {repo}:nope")
    );
    let zero = format!("sha256:{}", "0".repeat(64));
    let err = pull_ref(&format!("{REGISTRY}/{repo}@{zero}"), &cache, &opts())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("for manifest {repo}@{zero}: no such image")),
        "{err}"
    );
    // Nothing listens on port 1 of loopback.
    let err = pull_ref("127.0.0.1:1/x/y:1", &cache, &opts())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot reach registry 127.0.0.1:1 over http"),
        "{err}"
    );
    // A non-loopback registry is never spoken to over plain HTTP: the error says https.
    // (10.255.255.1 is unroutable here: the connection fails without leaving the host.)
    assert!(!atlas_image::registry::plain_http_allowed(
        "10.255.255.1:5000",
        &[]
    ));
    let entries: Vec<_> = std::fs::read_dir(cache.root().join("blobs/sha256"))
        .unwrap()
        .collect();
    assert!(entries.is_empty(), "failed pulls wrote to the cache");
}

/// A registry that accepts connections and never answers: the pull fails once the read
/// timeout passed, naming the registry and what was asked, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_never_answers_is_named_within_the_read_timeout() {
    init_tls();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let opts = PullOptions {
        read_timeout: std::time::Duration::from_secs(2),
        ..opts()
    };
    let started = std::time::Instant::now();
    let err = pull_ref(&format!("127.0.0.1:{port}/x/y:1"), &cache, &opts)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(
        err.to_string(),
        format!(
            "registry 127.0.0.1:{port} did not answer (manifest x/y:1) within 2 s: it accepted the connection but sent nothing; check the registry (or the mirror in front of it) and run again"
        )
    );
    // Two reads wait: oci-client first asks /v2/ how to authenticate (that answer never
    // comes either, and it goes on anonymously), then the manifest.
    assert!(took < std::time::Duration::from_secs(7), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_into_one_cache_download_each_blob_once() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let built = single_image_layout(&layout, "pull-concurrent", "v1", 400_000);
    let repo = unique_repo("pull-concurrent");
    skopeo_push(&layout, "v1", &format!("{REGISTRY}/{repo}:v1"), false);
    let reference = format!("{REGISTRY}/{repo}:v1");
    // Two handles on one directory, like two processes: the partial-file lock serialises
    // each blob, the loser of the race finds it finished.
    let a = BlobCache::open(tmp.path().join("cache")).unwrap();
    let b = BlobCache::open(tmp.path().join("cache")).unwrap();
    let spawn = |cache: BlobCache| {
        let reference = reference.clone();
        tokio::spawn(async move { pull_ref(&reference, &cache, &opts()).await })
    };
    let (ta, tb) = (spawn(a.clone()), spawn(b.clone()));
    let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
    assert_eq!(ra.unwrap().manifest_digest, built.manifest_digest);
    assert_eq!(rb.unwrap().manifest_digest, built.manifest_digest);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.fetched + sb.fetched, 3, "{sa:?} {sb:?}");
    assert_eq!(sa.hits + sb.hits, 3, "{sa:?} {sb:?}");
    for (d, _, bytes) in &built.layers {
        assert_eq!(&std::fs::read(a.blob_path(d)).unwrap(), bytes);
        assert!(!a.partial_path(d).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_listed_twice_is_downloaded_once_and_observed_twice() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    use atlas_image::manifest::{self, Descriptor};
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mut w = atlas_image::oci_layout::OciLayoutWriter::create(&layout).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(&mut gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    b.append_data(&mut h, format!("dup-{}", std::process::id()), &b"hello"[..])
        .unwrap();
    b.finish().unwrap();
    drop(b);
    let layer = gz.finish().unwrap();
    let ld = w.add_bytes(&layer).unwrap();
    let config = br#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cd = w.add_bytes(config).unwrap();
    let l = Descriptor::new(manifest::OCI_LAYER_GZIP, ld.clone(), layer.len() as u64);
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
        "config": Descriptor::new(manifest::OCI_CONFIG, cd, config.len() as u64),
        "layers": [l.clone(), l],
    }))
    .unwrap();
    w.add_manifest(&m, manifest::OCI_MANIFEST, Some("v1"), None)
        .unwrap();
    w.finish().unwrap();
    let repo = unique_repo("pull-dup");
    skopeo_push(&layout, "v1", &format!("{REGISTRY}/{repo}:v1"), false);

    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let captured = Captured::default();
    let mut o = opts();
    o.observer = Some(captured.observer(2));
    let img = pull_ref(&format!("{REGISTRY}/{repo}:v1"), &cache, &o)
        .await
        .unwrap();
    assert_eq!(img.layers.len(), 2);
    let s = cache.stats();
    assert_eq!(
        (s.fetched, s.hits),
        (2, 1),
        "config + layer fetched once, the repeat hit: {s:?}"
    );
    assert_eq!(captured.0.lock().unwrap()[0], layer);
    assert_eq!(captured.0.lock().unwrap()[1], layer);
}
