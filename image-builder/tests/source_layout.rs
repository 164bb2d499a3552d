//! oci: and oci-archive: sources, and layouts we write read back by skopeo and umoci.

mod common;

use std::io::Read;
use std::process::Command;

use atlas_image::auth::AuthSource;
use atlas_image::cache::BlobCache;
use atlas_image::oci_layout::{LayoutError, OciLayoutWriter};
use atlas_image::platform::Platform;
use atlas_image::progress::NoProgress;
use atlas_image::source::{PullError, PullOptions, PulledImage, Source, pull};
use common::images::{
    Comp, build_image, build_image_with, multi_arch_layout, single_image_layout, umoci_stat,
    umoci_unpack,
};
use common::*;

fn opts() -> PullOptions {
    PullOptions {
        platform: Platform::linux_amd64(),
        auth: AuthSource::Anonymous,
        ..PullOptions::default()
    }
}

async fn pull_src(src: &str, cache: &BlobCache) -> Result<PulledImage, PullError> {
    pull(&Source::parse(src).unwrap(), cache, &opts(), &NoProgress).await
}

fn read_layer(img: &PulledImage, i: usize) -> Vec<u8> {
    let mut v = Vec::new();
    img.open_layer(i).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn blob_count(cache: &BlobCache) -> usize {
    std::fs::read_dir(cache.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn oci_layout_by_tag_and_by_the_only_image() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let built = single_image_layout(&dir, "layout-tag", "1.0", 10_000);
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();

    let img = pull_src(&format!("oci:{}:1.0", dir.display()), &cache)
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
    assert_eq!(img.config.config.env[1], "SEED=layout-tag");
    for (i, (_, _, bytes)) in built.layers.iter().enumerate() {
        assert_eq!(&read_layer(&img, i), bytes);
    }
    let only = pull_src(&format!("oci:{}", dir.display()), &cache)
        .await
        .unwrap();
    assert_eq!(only.manifest_digest, built.manifest_digest);
    assert_eq!(
        blob_count(&cache),
        0,
        "a layout is read in place, not copied into the cache"
    );

    let err = pull_src(&format!("oci:{}:2.0", dir.display()), &cache)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no image tagged \"2.0\"; tags present: 1.0"),
        "{err}"
    );

    // A second image makes the tag mandatory, and the error says which exist.
    let mut w = OciLayoutWriter::create(&dir).unwrap();
    build_image(
        &mut w,
        "layout-tag-2",
        &Platform::linux_amd64(),
        Some("2.0"),
        1000,
    );
    w.finish().unwrap();
    let err = pull_src(&format!("oci:{}", dir.display()), &cache)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Layout(LayoutError::Ambiguous { count: 2, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("tags present: 1.0, 2.0"), "{err}");
    assert!(
        pull_src(&format!("oci:{}:2.0", dir.display()), &cache)
            .await
            .is_ok()
    );

    let err = pull_src(
        &format!("oci:{}", tmp.path().join("nothing").display()),
        &cache,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("is not an OCI image layout: it has no oci-layout file"),
        "{err}"
    );
}

#[tokio::test]
async fn oci_layout_platform_and_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let (_index, amd, arm) = multi_arch_layout(&dir, "layout-multi", "multi");
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let src = Source::parse(&format!("oci:{}:multi", dir.display())).unwrap();
    let mut o = opts();
    o.platform = "linux/arm64/v8".parse().unwrap();
    assert_eq!(
        pull(&src, &cache, &o, &NoProgress)
            .await
            .unwrap()
            .manifest_digest,
        arm.manifest_digest
    );
    assert_eq!(
        pull(&src, &cache, &opts(), &NoProgress)
            .await
            .unwrap()
            .manifest_digest,
        amd.manifest_digest
    );

    // Flip a byte of a layer in the layout: the pull refuses it, naming layer and location.
    let (digest, _, _) = &amd.layers[1];
    let path = dir.join("blobs/sha256").join(digest.hex());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = pull(&src, &cache, &opts(), &NoProgress).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&digest.to_string())
            && msg.contains("corrupt")
            && msg.contains(&dir.display().to_string()),
        "{msg}"
    );
}

#[tokio::test]
async fn oci_archive_is_read_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let built = single_image_layout(&dir, "archive", "v1", 20_000);
    let tar_path = tmp.path().join("image.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    b.append_dir_all(".", &dir).unwrap();
    b.into_inner().unwrap();
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();

    let img = pull_src(&format!("oci-archive:{}:v1", tar_path.display()), &cache)
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
    for (i, (_, _, bytes)) in built.layers.iter().enumerate() {
        assert_eq!(&read_layer(&img, i), bytes);
    }
    assert_eq!(blob_count(&cache), 0);
    let untagged = pull_src(&format!("oci-archive:{}", tar_path.display()), &cache)
        .await
        .unwrap();
    assert_eq!(untagged.manifest_digest, built.manifest_digest);

    // What skopeo writes as oci-archive reads the same.
    if have_tool("skopeo") {
        let sk = tmp.path().join("skopeo.tar");
        skopeo(&[
            "copy",
            "-q",
            &format!("oci:{}:v1", dir.display()),
            &format!("oci-archive:{}:v1", sk.display()),
        ]);
        let img = pull_src(&format!("oci-archive:{}:v1", sk.display()), &cache)
            .await
            .unwrap();
        assert_eq!(img.manifest_digest, built.manifest_digest);
        assert_eq!(read_layer(&img, 1), built.layers[1].2);
    }

    // A compressed archive is refused with the fix in the message.
    let gz = tmp.path().join("image.tar.gz");
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut std::fs::File::open(&tar_path).unwrap(), &mut e).unwrap();
    e.finish().unwrap();
    let err = pull_src(&format!("oci-archive:{}", gz.display()), &cache)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("gzip-compressed")
            && err.to_string().contains("decompress it first"),
        "{err}"
    );
}

#[tokio::test]
async fn written_layout_is_read_by_skopeo_and_umoci() {
    if !have_tool("skopeo") || !have_tool("umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src_dir = tmp.path().join("src");
    // gzip layers only: the umoci here predates zstd support.
    let mut w = OciLayoutWriter::create(&src_dir).unwrap();
    let built = build_image_with(
        &mut w,
        "write",
        &Platform::linux_amd64(),
        Some("v1"),
        5_000,
        &[Comp::Gzip, Comp::Gzip],
    );
    w.finish().unwrap();
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let img = pull_src(&format!("oci:{}:v1", src_dir.display()), &cache)
        .await
        .unwrap();

    let out = tmp.path().join("out");
    let mut w = OciLayoutWriter::create(&out).unwrap();
    w.add_image(&img, Some("copy")).unwrap();
    w.add_image(&img, Some("copy2")).unwrap();
    w.finish().unwrap();
    // Blobs deduplicated: config + 2 layers + manifest, once each.
    assert_eq!(
        std::fs::read_dir(out.join("blobs/sha256")).unwrap().count(),
        4
    );

    let raw = skopeo(&["inspect", "--raw", &format!("oci:{}:copy", out.display())]);
    assert_eq!(
        atlas_image::digest::Digest::of_bytes(raw.as_bytes()),
        built.manifest_digest
    );
    let ls = Command::new("umoci")
        .args(["ls", "--layout"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let tags = String::from_utf8_lossy(&ls.stdout);
    assert!(tags.contains("copy") && tags.contains("copy2"), "{tags}");
    umoci_stat(&out, "copy");
    let bundle = tmp.path().join("bundle");
    umoci_unpack(&out, "copy", &bundle, true);
    let hello = std::fs::read_to_string(bundle.join("rootfs/layer1/hello.txt")).unwrap();
    assert_eq!(hello, "hello from write layer 1\n");
}

#[derive(Default)]
struct Warnings(std::sync::Mutex<Vec<String>>);

impl atlas_image::progress::Progress for Warnings {
    fn task(
        &self,
        _label: &str,
        _total: Option<u64>,
    ) -> Box<dyn atlas_image::progress::ProgressTask> {
        Box::new(NoProgress)
    }
    fn info(&self, _message: &str) {}
    fn warn(&self, message: &str) {
        self.0.lock().unwrap().push(message.to_owned());
    }
}

#[tokio::test]
async fn a_single_image_for_another_platform_is_pulled_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let mut w = OciLayoutWriter::create(&dir).unwrap();
    let built = build_image(
        &mut w,
        "arm-only",
        &Platform::linux_arm64(),
        Some("v1"),
        100,
    );
    w.finish().unwrap();
    let cache = BlobCache::open(tmp.path().join("cache")).unwrap();
    let src = Source::parse(&format!("oci:{}:v1", dir.display())).unwrap();
    let warnings = Warnings::default();
    let img = pull(&src, &cache, &opts(), &warnings).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
    let w = warnings.0.lock().unwrap().clone();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("built for linux/arm64/v8, not linux/amd64"),
        "{w:?}"
    );

    let mut arm = opts();
    arm.platform = Platform::linux_arm64();
    let quiet = Warnings::default();
    pull(&src, &cache, &arm, &quiet).await.unwrap();
    assert!(quiet.0.lock().unwrap().is_empty());
}
