//! Small, real OCI test images written to a layout: tar layers built with the tar crate,
//! compressed with gzip or zstd, content derived from a seed so each test gets its own blobs;
//! images of layers a test made itself ([`write_image`]); and a layout unpacked by umoci.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use atlas_image::digest::Digest;
use atlas_image::manifest::{self, Descriptor};
use atlas_image::oci_layout::OciLayoutWriter;
use atlas_image::platform::Platform;
use sha2::{Digest as _, Sha256};

#[derive(Clone, Copy, Debug)]
pub enum Comp {
    Gzip,
    Zstd,
}

pub struct BuiltImage {
    pub manifest_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub layers: Vec<(Digest, u64, Vec<u8>)>,
}

/// Deterministic incompressible bytes (sha256 in counter mode).
pub fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(len);
    out
}

fn tar_layer(seed: &str, n: usize, big: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    b.append_data(&mut dir, format!("layer{n}"), &[][..])
        .unwrap();
    let files: [(String, Vec<u8>); 2] = [
        (
            format!("layer{n}/hello.txt"),
            format!("hello from {seed} layer {n}\n").into_bytes(),
        ),
        (
            format!("layer{n}/blob.bin"),
            noise(&format!("{seed}-{n}"), big),
        ),
    ];
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn compress(raw: &[u8], c: Comp) -> Vec<u8> {
    match c {
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, raw).unwrap();
            e.finish().unwrap()
        }
        Comp::Zstd => zstd::encode_all(raw, 3).unwrap(),
    }
}

/// Writes one image (a gzip and a zstd layer by default) into `layout` under `tag` (or
/// unnamed when `tag` is None, for use inside an index). `big` sizes the incompressible file.
pub fn build_image(
    w: &mut OciLayoutWriter,
    seed: &str,
    platform: &Platform,
    tag: Option<&str>,
    big: usize,
) -> BuiltImage {
    build_image_with(w, seed, platform, tag, big, &[Comp::Gzip, Comp::Zstd])
}

/// Like [`build_image`] with one layer per entry of `comps` (umoci 0.4 reads no zstd).
pub fn build_image_with(
    w: &mut OciLayoutWriter,
    seed: &str,
    platform: &Platform,
    tag: Option<&str>,
    big: usize,
    comps: &[Comp],
) -> BuiltImage {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut descs = Vec::new();
    for (n, &comp) in comps.iter().enumerate() {
        let raw = tar_layer(seed, n, big);
        diff_ids.push(Digest::of_bytes(&raw).to_string());
        let blob = compress(&raw, comp);
        let d = w.add_bytes(&blob).unwrap();
        let mt = match comp {
            Comp::Gzip => manifest::OCI_LAYER_GZIP,
            Comp::Zstd => manifest::OCI_LAYER_ZSTD,
        };
        descs.push(Descriptor::new(mt, d.clone(), blob.len() as u64));
        layers.push((d, blob.len() as u64, blob));
    }
    let mut config = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Env": ["PATH=/usr/bin:/bin", format!("SEED={seed}")],
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--serve"],
            "User": "65534:65534",
            "WorkingDir": "/srv",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"org.example.seed": seed},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(v) = &platform.variant {
        config["variant"] = serde_json::json!(v);
    }
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = w.add_bytes(&config_bytes).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": Descriptor::new(manifest::OCI_CONFIG, config_digest.clone(), config_bytes.len() as u64),
        "layers": descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let desc = if let Some(tag) = tag {
        w.add_manifest(&manifest_bytes, manifest::OCI_MANIFEST, Some(tag), None)
            .unwrap()
    } else {
        let d = w.add_bytes(&manifest_bytes).unwrap();
        Descriptor::new(manifest::OCI_MANIFEST, d, manifest_bytes.len() as u64)
    };
    BuiltImage {
        manifest_digest: desc.digest,
        manifest_bytes,
        config_digest,
        layers,
    }
}

/// A layout at `dir` with one image tagged `tag`.
pub fn single_image_layout(dir: &Path, seed: &str, tag: &str, big: usize) -> BuiltImage {
    let mut w = OciLayoutWriter::create(dir).unwrap();
    let img = build_image(&mut w, seed, &Platform::linux_amd64(), Some(tag), big);
    w.finish().unwrap();
    img
}

/// A layout with an image index (linux/amd64 + linux/arm64/v8) tagged `tag`.
pub fn multi_arch_layout(dir: &Path, seed: &str, tag: &str) -> (Digest, BuiltImage, BuiltImage) {
    let mut w = OciLayoutWriter::create(dir).unwrap();
    let amd = build_image(
        &mut w,
        &format!("{seed}-amd64"),
        &Platform::linux_amd64(),
        None,
        4096,
    );
    let arm = build_image(
        &mut w,
        &format!("{seed}-arm64"),
        &Platform::linux_arm64(),
        None,
        4096,
    );
    let entry = |img: &BuiltImage, p: Platform| {
        let mut d = Descriptor::new(
            manifest::OCI_MANIFEST,
            img.manifest_digest.clone(),
            img.manifest_bytes.len() as u64,
        );
        d.platform = Some(p);
        d
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": [entry(&amd, Platform::linux_amd64()), entry(&arm, Platform::linux_arm64())],
        "annotations": BTreeMap::from([("org.example", "multi")]),
    });
    let bytes = serde_json::to_vec(&index).unwrap();
    let desc = w
        .add_manifest(&bytes, manifest::OCI_INDEX, Some(tag), None)
        .unwrap();
    w.finish().unwrap();
    (desc.digest, amd, arm)
}

/// A layout tagged `tag` with an index the way BuildKit pushes it (Docker Hub's official
/// images): an attestation manifest (platform unknown/unknown, an in-toto SBOM layer,
/// `vnd.docker.reference.type: attestation-manifest`) listed before the linux/amd64 image
/// (gzip + zstd layers) it describes. Returns the index digest and the image.
pub fn attested_layout(dir: &Path, seed: &str, tag: &str) -> (Digest, BuiltImage) {
    let mut w = OciLayoutWriter::create(dir).unwrap();
    let amd = build_image(&mut w, seed, &Platform::linux_amd64(), None, 4096);
    let sbom = serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": seed, "digest": {"sha256": amd.manifest_digest.hex()}}],
        "predicate": {"spdxVersion": "SPDX-2.3", "name": seed},
    }))
    .unwrap();
    let sbom_digest = w.add_bytes(&sbom).unwrap();
    let config = br#"{"architecture":"unknown","os":"unknown","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = w.add_bytes(config).unwrap();
    let mut layer = Descriptor::new(
        "application/vnd.in-toto+json",
        sbom_digest,
        sbom.len() as u64,
    );
    layer.annotations = Some(BTreeMap::from([(
        "in-toto.io/predicate-type".to_owned(),
        "https://spdx.dev/Document".to_owned(),
    )]));
    let att = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": Descriptor::new(manifest::OCI_CONFIG, config_digest, config.len() as u64),
        "layers": [layer],
    }))
    .unwrap();
    let att_digest = w.add_bytes(&att).unwrap();
    let mut att_entry = Descriptor::new(manifest::OCI_MANIFEST, att_digest, att.len() as u64);
    att_entry.platform = Some(Platform::new("unknown", "unknown", None));
    att_entry.annotations = Some(BTreeMap::from([
        (
            "vnd.docker.reference.digest".to_owned(),
            amd.manifest_digest.to_string(),
        ),
        (
            "vnd.docker.reference.type".to_owned(),
            "attestation-manifest".to_owned(),
        ),
    ]));
    let mut amd_entry = Descriptor::new(
        manifest::OCI_MANIFEST,
        amd.manifest_digest.clone(),
        amd.manifest_bytes.len() as u64,
    );
    amd_entry.platform = Some(Platform::linux_amd64());
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": [att_entry, amd_entry],
    }))
    .unwrap();
    let desc = w
        .add_manifest(&index, manifest::OCI_INDEX, Some(tag), None)
        .unwrap();
    w.finish().unwrap();
    (desc.digest, amd)
}

/// One layer of an image a test writes: its blob, media type and diff ID.
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: String,
}

impl Layer {
    /// The tar stream `raw` compressed as `c`.
    pub fn compress(raw: &[u8], c: Comp) -> Layer {
        Layer {
            blob: compress(raw, c),
            media_type: match c {
                Comp::Gzip => manifest::OCI_LAYER_GZIP,
                Comp::Zstd => manifest::OCI_LAYER_ZSTD,
            },
            diff_id: Digest::of_bytes(raw).to_string(),
        }
    }

    /// A gzip blob already made, with the diff ID of its tar stream.
    pub fn gzip(blob: Vec<u8>, diff_id: String) -> Layer {
        Layer {
            blob,
            media_type: manifest::OCI_LAYER_GZIP,
            diff_id,
        }
    }
}

/// Writes an image of `layers` into `w` tagged `tag`: `config` is the image config (the
/// layers' `rootfs` is added), the manifest an OCI one. Returns the manifest's digest.
pub fn write_image(
    w: &mut OciLayoutWriter,
    layers: &[Layer],
    mut config: serde_json::Value,
    tag: &str,
) -> Digest {
    let mut descs = Vec::new();
    for l in layers {
        let d = w.add_bytes(&l.blob).unwrap();
        descs.push(Descriptor::new(l.media_type, d, l.blob.len() as u64));
    }
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
    let config = serde_json::to_vec(&config).unwrap();
    let cd = w.add_bytes(&config).unwrap();
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
        "config": Descriptor::new(manifest::OCI_CONFIG, cd, config.len() as u64),
        "layers": descs,
    });
    w.add_manifest(
        &serde_json::to_vec(&m).unwrap(),
        manifest::OCI_MANIFEST,
        Some(tag),
        None,
    )
    .unwrap()
    .digest
}

/// Unpacks `layout:tag` with umoci into the bundle `bundle` (its rootfs at `bundle/rootfs`),
/// `--rootless` or as root (which may set file capabilities); panics with umoci's stderr.
pub fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path, rootless: bool) {
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if rootless {
        cmd.arg("--rootless");
    }
    let o = cmd
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `umoci stat` of `layout:tag` (its history), panicking with umoci's stderr.
pub fn umoci_stat(layout: &Path, tag: &str) -> String {
    let stat = Command::new("umoci")
        .args(["stat", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .output()
        .unwrap();
    assert!(
        stat.status.success(),
        "umoci stat: {}",
        String::from_utf8_lossy(&stat.stderr)
    );
    String::from_utf8_lossy(&stat.stdout).into_owned()
}
