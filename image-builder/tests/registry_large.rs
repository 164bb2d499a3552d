//! A large layer (160 MiB of incompressible data by default; ATLAS_TEST_LARGE_MB to change)
//! pulled from the registry: memory stays flat because blobs are streamed to disk, never
//! held whole. Generation, push and pull all run in this process's own test binary, so its
//! peak RSS (VmHWM) covers everything we did.

mod common;

use std::io::{self, Read, Write};

use atlas_image::auth::AuthSource;
use atlas_image::cache::BlobCache;
use atlas_image::digest::Hasher;
use atlas_image::manifest::{self, Descriptor};
use atlas_image::oci_layout::OciLayoutWriter;
use atlas_image::platform::Platform;
use atlas_image::progress::NoProgress;
use atlas_image::source::{Layer, PullOptions, Source, pull};
use common::*;

/// xorshift64*: cheap, incompressible enough for gzip.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left as usize) / 8 * 8;
        let n = if n == 0 {
            buf.len().min(self.left as usize)
        } else {
            n
        };
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct HashingFile(std::fs::File, Hasher);

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_layer_is_pulled_with_flat_memory() {
    init_tls();
    if !have_skopeo_and_registry() {
        return;
    }
    let mib: u64 = std::env::var("ATLAS_TEST_LARGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(160);
    let tmp = tempfile::tempdir().unwrap();
    let layer_path = tmp.path().join("layer.tar.gz");
    let gz_out = HashingFile(std::fs::File::create(&layer_path).unwrap(), Hasher::new());
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        gz_out,
        flate2::Compression::fast(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(mib << 20);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(
        &mut h,
        "big.bin",
        Noise {
            state: 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64,
            left: mib << 20,
        },
    )
    .unwrap();
    let mut gz_out = tar.into_inner().unwrap().finish().unwrap();
    gz_out.flush().unwrap();
    let (layer_digest, layer_size) = gz_out.1.finish();

    let layout = tmp.path().join("layout");
    let mut w = OciLayoutWriter::create(&layout).unwrap();
    w.add_blob(
        &layer_digest,
        layer_size,
        &mut std::fs::File::open(&layer_path).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(&layer_path).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let config_digest = w.add_bytes(&config).unwrap();
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
        "config": Descriptor::new(manifest::OCI_CONFIG, config_digest, config.len() as u64),
        "layers": [Descriptor::new(manifest::OCI_LAYER_GZIP, layer_digest.clone(), layer_size)],
    }))
    .unwrap();
    w.add_manifest(&m, manifest::OCI_MANIFEST, Some("big"), None)
        .unwrap();
    w.finish().unwrap();
    let repo = unique_repo("large");
    skopeo_push(&layout, "big", &format!("{REGISTRY}/{repo}:big"), false);
    std::fs::remove_dir_all(&layout).unwrap();

    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = seen.clone();
    struct Count(std::sync::Arc<std::sync::atomic::AtomicU64>);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let opts = PullOptions {
        platform: Platform::linux_amd64(),
        auth: AuthSource::Anonymous,
        observer: Some(std::sync::Arc::new(move |_: usize, _: &Layer| {
            Some(Box::new(Count(counter.clone())) as Box<dyn Write + Send>)
        })),
        ..PullOptions::default()
    };
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let started = std::time::Instant::now();
    let src = Source::parse(&format!("docker://{REGISTRY}/{repo}:big")).unwrap();
    let img = pull(&src, &cache, &opts, &NoProgress).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(img.layers[0].digest, layer_digest);
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), layer_size);
    let mut whole = Hasher::new();
    let mut r = img.open_layer(0).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
    }
    assert_eq!(whole.finish(), (layer_digest, layer_size));
    let peak = peak_rss_kib();
    eprintln!(
        "large pull: {} MiB compressed in {:.2?}, peak RSS of the test process {} MiB",
        layer_size >> 20,
        elapsed,
        peak / 1024
    );
    assert!(
        peak < 100 * 1024,
        "peak RSS {peak} KiB for a {layer_size}-byte layer: something holds it in memory"
    );
}
