//! Peak memory of flattening a large image (issue 8: under 100 MB for GB-sized images).
//! Ignored by default (it writes ~1 GB of layers to a temp dir); run with
//! `cargo test -p atlas-image-builder --test layer memory -- --ignored --nocapture --test-threads=1`
//! (one at a time: peak RSS is per process).

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::time::Instant;

use atlas_image::layer::{FlattenOptions, Layer, flatten};

/// Endless pseudo-random bytes, compressible about 2:1 (half the bytes are a small alphabet),
/// so gzip works like it does on binaries.
struct Noise(u64);

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let mut v = self.0.to_le_bytes();
            for b in v.iter_mut().skip(4) {
                *b &= 0x0f;
            }
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(buf.len())
    }
}

fn write_layer(
    path: &std::path::Path,
    seed: u64,
    files: std::ops::Range<usize>,
    size: u64,
    gzip: bool,
) {
    let file = BufWriter::new(File::create(path).unwrap());
    let sink: Box<dyn Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(zstd::stream::Encoder::new(file, 1).unwrap().auto_finish())
    };
    let mut b = tar::Builder::new(sink);
    for i in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("usr/lib/d{}/f{i}", i % 50)).unwrap();
        h.set_size(size);
        h.set_mode(0o755);
        h.set_cksum();
        b.append(&h, Noise(seed + i as u64).take(size)).unwrap();
    }
    // whiteouts and hard links in the upper layer, so the merge is not trivial
    let mut h = tar::Header::new_ustar();
    h.set_path("usr/lib/d1/.wh.f1").unwrap();
    h.set_size(0);
    h.set_cksum();
    b.append(&h, io::empty()).unwrap();
    b.into_inner().unwrap().flush().unwrap();
}

fn peak_rss_kb() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
#[ignore = "writes ~1 GB of layers; run explicitly"]
fn peak_rss_stays_under_100_mb_for_a_1_gb_image() {
    let tmp = tempfile::tempdir().unwrap();
    let l1 = tmp.path().join("l1");
    let l2 = tmp.path().join("l2");
    // 700 x 1 MiB in a gzip layer; 500 x 1 MiB in a zstd layer, 150 of them overwriting
    write_layer(&l1, 1, 0..700, 1 << 20, true);
    write_layer(&l2, 9, 550..1050, 1 << 20, false);
    let layers = vec![
        Layer::from_file("sha256:bench-l1", None, l1),
        Layer::from_file("sha256:bench-l2", None, l2),
    ];
    // Forget the generator's peak: only flattening is measured.
    fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = peak_rss_kb();
    let start = Instant::now();
    let mut out = Count(0);
    let stats = flatten(&layers, &mut out, &FlattenOptions::default()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let peak = peak_rss_kb();
    eprintln!(
        "flattened {} entries, {} MiB of file data, {} MiB tar in {secs:.2}s; peak RSS {} MiB (baseline {} MiB)",
        stats.entries,
        stats.file_bytes >> 20,
        out.0 >> 20,
        peak / 1024,
        before / 1024
    );
    assert_eq!(stats.tar_bytes, out.0);
    assert!(
        stats.file_bytes >= 1000 << 20,
        "the image is not GB-sized: {}",
        stats.file_bytes
    );
    assert!(peak < 100 * 1024, "peak RSS {peak} kB exceeds 100 MB");
}

/// Many small files: the index and the merge tree, not file data, dominate memory here.
#[test]
#[ignore = "builds a 300k-file layer; run explicitly"]
fn peak_rss_for_300k_files_across_two_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for (n, (seed, range)) in [(1u64, 0..200_000usize), (2, 100_000..300_000)]
        .into_iter()
        .enumerate()
    {
        let path = tmp.path().join(format!("l{n}"));
        let file = BufWriter::new(File::create(&path).unwrap());
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        for i in range {
            let mut h = tar::Header::new_ustar();
            // realistic path lengths: ~60 bytes, 1000 files per directory
            h.set_path(format!(
                "usr/lib/python3.11/site-packages/pkg{}/module_{i}.py",
                i / 1000
            ))
            .unwrap();
            h.set_size(16);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, Noise(seed + i as u64).take(16)).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap().flush().unwrap();
        paths.push(path);
    }
    let layers: Vec<Layer> = paths
        .into_iter()
        .enumerate()
        .map(|(i, p)| Layer::from_file(format!("sha256:many-{i}"), None, p))
        .collect();
    fs::write("/proc/self/clear_refs", "5").unwrap();
    let start = Instant::now();
    let mut out = Count(0);
    let stats = flatten(&layers, &mut out, &FlattenOptions::default()).unwrap();
    let peak = peak_rss_kb();
    eprintln!(
        "flattened {} entries in {:.2}s; peak RSS {} MiB",
        stats.entries,
        start.elapsed().as_secs_f64(),
        peak / 1024
    );
    assert!(stats.entries > 300_000);
    assert!(peak < 100 * 1024, "peak RSS {peak} kB exceeds 100 MB");
}
