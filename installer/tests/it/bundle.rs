//! `atlas-install bundle create|verify|inspect` and the install-side `open_for_install`.
//!
//! - From real images: the fixture registry's prometheus and node-exporter (through
//!   `--registry-mirror`), built by the real binary into a bundle; verified; listed; its OCI
//!   layout read by skopeo and umoci, in place (`oci-archive:`) and unpacked.
//! - Corruption: a small bundle made offline by the library (a two-image layout sharing a
//!   layer), rewritten member by member into each kind of damage; `bundle verify` must exit
//!   non-zero naming the member at fault, and `open_for_install` must leave no directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use atlas_image::layer::deterministic::LayerBuilder;
use atlas_image::lock::ImagesLock;
use atlas_image::oci_layout::OciLayoutWriter;
use atlas_image::progress::NoProgress;
use atlas_image::source::{PullOptions, Source, pull};
use atlas_install::bundle::{self, BundleError, CreateSpec, Expect};
use atlas_install::signing::Trust;
use atlas_test_support::oci::{Layer, umoci_stat, write_image};
use sha2::{Digest as _, Sha256};

use crate::common::{atlas, cyclonedx, have_tool, require_all, run, stderr, stdout};

const REGISTRY: crate::common::FixtureRegistry = crate::common::FixtureRegistry;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A layout with two images sharing their first layer: `one` = [l1], `two` = [l1, l2].
pub(crate) fn small_layout(dir: &Path) {
    let mut l1 = LayerBuilder::new();
    l1.file("etc/hello", 0o644, "shared layer\n").unwrap();
    // Incompressible, so the shared layer is the largest blob (what the damage tests hit).
    let noise: Vec<u8> = (0..2048u32)
        .flat_map(|i| Sha256::digest(i.to_le_bytes()))
        .collect();
    l1.file("var/noise", 0o644, noise).unwrap();
    let mut l2 = LayerBuilder::new();
    l2.file("etc/two", 0o644, "only in two\n").unwrap();
    let (l1, l2) = (l1.build().unwrap(), l2.build().unwrap());
    let mut w = OciLayoutWriter::create(dir).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
    });
    let layer = |l: &atlas_image::layer::deterministic::BuiltLayer| {
        Layer::gzip(l.gzip.clone(), l.diff_id.clone())
    };
    write_image(&mut w, &[layer(&l1)], config.clone(), "one");
    write_image(&mut w, &[layer(&l1), layer(&l2)], config, "two");
    w.finish().unwrap();
}

/// A small bundle made by the library from `small_layout` (a stand-in file as the binary:
/// verification does not run it).
pub(crate) fn small_bundle(dir: &Path) -> PathBuf {
    small_layout(&dir.join("layout"));
    let fake_binary = dir.join("atlas-install");
    std::fs::write(&fake_binary, b"#!/bin/sh\necho stand-in\n").unwrap();
    let mut spec = CreateSpec::for_this_binary(fake_binary, ImagesLock::new("test"));
    spec.layouts = vec![dir.join("layout")];
    let out = dir.join("small.bundle");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bundle::create(&spec, &out, &NoProgress))
        .unwrap();
    out
}

/// One tar member as read back, for rewriting.
#[derive(Clone)]
pub(crate) struct Entry {
    pub name: Vec<u8>,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
}

pub(crate) fn read_entries(path: &Path) -> Vec<Entry> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            Entry {
                name: e.path_bytes().into_owned(),
                kind: e.header().entry_type(),
                mode: e.header().mode().unwrap(),
                data,
            }
        })
        .collect()
}

/// Writes entries as given, names byte for byte (the tar crate refuses `..` in set_path).
pub(crate) fn write_entries(path: &Path, entries: &[Entry]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.as_mut_bytes()[..e.name.len()].copy_from_slice(&e.name);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_entry_type(e.kind);
        h.set_cksum();
        b.append(&h, &e.data[..]).unwrap();
    }
    b.finish().unwrap();
}

pub(crate) fn name_of(e: &Entry) -> String {
    String::from_utf8_lossy(&e.name).into_owned()
}

/// The manifest as JSON, edited by `f`, written back with a matching checksum member (what
/// a deliberate forger, or another release, would produce).
pub(crate) fn edit_manifest(entries: &mut [Entry], f: impl FnOnce(&mut serde_json::Value)) {
    let mut m: serde_json::Value = serde_json::from_slice(&entries[0].data).unwrap();
    f(&mut m);
    entries[0].data = serde_json::to_vec_pretty(&m).unwrap();
    entries[1].data = format!("{}  atlas-bundle.json\n", sha256_hex(&entries[0].data)).into_bytes();
}

/// `bundle verify` of the structure: the small bundles here are unsigned (the signature
/// tests below sign theirs).
fn verify_cli(path: &Path) -> Output {
    run(atlas()
        .args(["--progress", "none", "bundle", "verify", "--allow-unsigned"])
        .arg(path))
}

/// What this binary expects of a bundle, accepting the unsigned test bundles.
fn unsigned_ok() -> Expect {
    Expect {
        trust: Trust::embedded().allowing_unsigned(true),
        ..Expect::this_binary()
    }
}

/// `bundle verify` refuses the file, naming `member` and saying `what`.
fn assert_refused(path: &Path, member: &str, what: &str) {
    let o = verify_cli(path);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "verify accepted a damaged bundle: {}",
        stdout(&o)
    );
    assert!(err.contains(member), "error does not name {member}: {err}");
    assert!(err.contains(what), "error does not say {what:?}: {err}");
    assert!(
        stdout(&o).is_empty(),
        "nothing on stdout when refused: {}",
        stdout(&o)
    );
}

/// The largest blob member (a layer): a flipped byte there is what a bad disk does.
fn largest_blob(entries: &[Entry]) -> usize {
    (0..entries.len())
        .filter(|&i| name_of(&entries[i]).starts_with("blobs/"))
        .max_by_key(|&i| entries[i].data.len())
        .unwrap()
}

#[test]
fn small_bundle_verifies_and_lists_shared_blobs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let b = small_bundle(tmp.path());
    let o = verify_cli(&b);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("OK "), "{}", stdout(&o));
    let entries = read_entries(&b);
    let names: Vec<String> = entries.iter().map(name_of).collect();
    assert_eq!(
        names[..7],
        [
            "atlas-bundle.json",
            "atlas-bundle.json.sha256",
            "atlas-install",
            "images.lock",
            "atlas.toml",
            "oci-layout",
            "index.json"
        ]
    );
    // Two images, three layers referenced, two distinct: + 2 configs + 2 manifests = 6 blobs.
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("blobs/sha256/"))
            .count(),
        6
    );
    assert_eq!(entries[2].mode, 0o755, "the binary is executable");
    // The manifest's record of each member is the member's real sha256 and size.
    let m: serde_json::Value = serde_json::from_slice(&entries[0].data).unwrap();
    for (rec, e) in m["members"].as_array().unwrap().iter().zip(&entries[2..]) {
        assert_eq!(rec["name"], name_of(e).as_str());
        assert_eq!(rec["sha256"], sha256_hex(&e.data).as_str());
        assert_eq!(rec["size"], e.data.len());
    }
    assert_eq!(m["version"], atlas_install::VERSION);
    assert_eq!(m["arch"], std::env::consts::ARCH);
    let o = run(atlas().args(["--json", "bundle", "inspect"]).arg(&b));
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let imgs: Vec<&str> = j["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(imgs, ["one", "two"]);
}

/// A small bundle with one byte flipped in its largest blob: the file and that member's name.
fn flipped_bundle(dir: &Path) -> (PathBuf, String) {
    let mut e = read_entries(&small_bundle(dir));
    let i = largest_blob(&e);
    let mid = e[i].data.len() / 2;
    e[i].data[mid] ^= 0x01;
    let bad = dir.join("bad.bundle");
    write_entries(&bad, &e);
    (bad, name_of(&e[i]))
}

/// A small bundle whose image `one` says its layer is one byte longer than it is, with
/// everything else made consistent again (the manifest blob renamed to its new digest,
/// index.json and atlas-bundle.json re-digested): what a buggy or forging builder writes.
/// Returns the file and the layer's member name.
fn resized_descriptor_bundle(dir: &Path) -> (PathBuf, String) {
    let mut e = read_entries(&small_bundle(dir));
    let at = |e: &[Entry], name: &str| e.iter().position(|x| name_of(x) == name).unwrap();
    let ii = at(&e, "index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&e[ii].data).unwrap();
    let old_hex = index["manifests"][0]["digest"].as_str().unwrap()[7..].to_string();
    let old_name = format!("blobs/sha256/{old_hex}");
    let mi = at(&e, &old_name);
    let mut manifest: serde_json::Value = serde_json::from_slice(&e[mi].data).unwrap();
    let layer = format!(
        "blobs/sha256/{}",
        &manifest["layers"][0]["digest"].as_str().unwrap()[7..]
    );
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    manifest["layers"][0]["size"] = (size + 1).into();
    e[mi].data = serde_json::to_vec(&manifest).unwrap();
    let new_hex = sha256_hex(&e[mi].data);
    e[mi].name = format!("blobs/sha256/{new_hex}").into_bytes();
    index["manifests"][0]["digest"] = format!("sha256:{new_hex}").into();
    index["manifests"][0]["size"] = e[mi].data.len().into();
    e[ii].data = serde_json::to_vec(&index).unwrap();
    let (manifest_blob, index_json) = (e[mi].data.clone(), e[ii].data.clone());
    edit_manifest(&mut e, |m| {
        for r in m["members"].as_array_mut().unwrap() {
            let (data, name) = if r["name"] == old_name.as_str() {
                (&manifest_blob, format!("blobs/sha256/{new_hex}"))
            } else if r["name"] == "index.json" {
                (&index_json, "index.json".to_string())
            } else {
                continue;
            };
            r["name"] = name.into();
            r["sha256"] = sha256_hex(data).into();
            r["size"] = data.len().into();
        }
    });
    let bad = dir.join("resized.bundle");
    write_entries(&bad, &e);
    (bad, layer)
}

/// A small bundle with its largest blob listed (and stored) twice, the manifest re-summed.
fn duplicated_member_bundle(dir: &Path) -> (PathBuf, String) {
    let mut e = read_entries(&small_bundle(dir));
    let i = largest_blob(&e);
    let name = name_of(&e[i]);
    e.insert(i + 1, e[i].clone());
    edit_manifest(&mut e, |m| {
        let members = m["members"].as_array_mut().unwrap();
        let j = members
            .iter()
            .position(|r| r["name"] == name.as_str())
            .unwrap();
        let twice = members[j].clone();
        members.insert(j + 1, twice);
    });
    let bad = dir.join("duplicated.bundle");
    write_entries(&bad, &e);
    (bad, name)
}

#[test]
fn descriptor_size_that_differs_from_its_blob_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (bad, layer) = resized_descriptor_bundle(tmp.path());
    assert_refused(&bad, &layer, "describes it as");
    let err = stderr(&verify_cli(&bad));
    assert!(err.contains("the image one"), "names the image: {err}");
}

#[test]
fn member_listed_twice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (bad, member) = duplicated_member_bundle(tmp.path());
    assert_refused(&bad, &member, "appears twice");
    let unpack = tmp.path().join("unpack");
    std::fs::create_dir(&unpack).unwrap();
    let e = open(&bad, &Expect::this_binary(), &unpack).expect_err("refused");
    assert!(matches!(e, BundleError::Duplicate { .. }), "{e}");
    assert_eq!(
        std::fs::read_dir(&unpack).unwrap().count(),
        0,
        "nothing unpacked"
    );
}

#[test]
fn flipped_byte_in_a_blob_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (bad, member) = flipped_bundle(tmp.path());
    assert_refused(&bad, &member, "is corrupt");
}

#[test]
fn truncated_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = small_bundle(tmp.path());
    let bytes = std::fs::read(&good).unwrap();
    // Cut inside the largest blob's data: find where it starts in the file.
    let mut a = tar::Archive::new(std::fs::File::open(&good).unwrap());
    let (name, start, size) = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .filter(|(n, _, _)| n.starts_with("blobs/"))
        .max_by_key(|(_, _, s)| *s)
        .unwrap();
    let bad = tmp.path().join("bad.bundle");
    std::fs::write(&bad, &bytes[..(start + size / 2) as usize]).unwrap();
    assert_refused(&bad, &name, "truncated");
    // Cut between members: the next one listed is missing, and the file is called truncated.
    let e = read_entries(&good);
    let short = tmp.path().join("short.bundle");
    write_entries(&short, &e[..e.len() - 1]);
    assert_refused(&short, &name_of(&e[e.len() - 1]), "truncated");
}

#[test]
fn missing_blob_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = read_entries(&small_bundle(tmp.path()));
    let i = largest_blob(&e);
    let gone = name_of(&e[i]);
    // Left out of the file only: the manifest still lists it.
    let mut only_file = e.clone();
    only_file.remove(i);
    let bad = tmp.path().join("bad.bundle");
    write_entries(&bad, &only_file);
    assert_refused(&bad, &gone, "missing");
    // Left out of both, manifest re-summed: the image that uses it is named.
    e.remove(i);
    edit_manifest(&mut e, |m| {
        m["members"]
            .as_array_mut()
            .unwrap()
            .retain(|r| r["name"] != gone.as_str());
    });
    write_entries(&bad, &e);
    // The shared layer: both images use it, the first one checked is named.
    assert_refused(&bad, &gone, "referenced by the image one");
}

#[test]
fn extra_member_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut e = read_entries(&small_bundle(tmp.path()));
    e.push(Entry {
        name: b"blobs/sha256/extra".to_vec(),
        kind: tar::EntryType::Regular,
        mode: 0o644,
        data: b"smuggled".to_vec(),
    });
    let bad = tmp.path().join("bad.bundle");
    write_entries(&bad, &e);
    assert_refused(&bad, "blobs/sha256/extra", "unexpected extra member");
}

#[test]
fn tampered_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = read_entries(&small_bundle(tmp.path()));
    let bad = tmp.path().join("bad.bundle");
    // Any changed byte, even in a field nothing else checks (the creation time).
    let mut changed = e.clone();
    let text = String::from_utf8(changed[0].data.clone()).unwrap();
    changed[0].data = text
        .replacen("\"created\": \"2", "\"created\": \"1", 1)
        .into_bytes();
    assert_ne!(changed[0].data, e[0].data);
    write_entries(&bad, &changed);
    assert_refused(&bad, "atlas-bundle.json", "was altered");
    // Re-summed, but recording another digest for a blob whose content matches its name.
    let mut forged = e.clone();
    let i = largest_blob(&forged);
    let victim = name_of(&forged[i]);
    edit_manifest(&mut forged, |m| {
        for r in m["members"].as_array_mut().unwrap() {
            if r["name"] == victim.as_str() {
                r["sha256"] = "0".repeat(64).into();
            }
        }
    });
    write_entries(&bad, &forged);
    assert_refused(&bad, "atlas-bundle.json was tampered with", &victim);
}

#[test]
fn unsafe_names_and_links_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let e = read_entries(&small_bundle(tmp.path()));
    let bad = tmp.path().join("bad.bundle");
    for (name, kind, what) in [
        ("../evil", tar::EntryType::Regular, "unsafe name"),
        ("/etc/evil", tar::EntryType::Regular, "absolute path"),
        ("blobs/link", tar::EntryType::Symlink, "symbolic link"),
        ("blobs/hard", tar::EntryType::Link, "hard link"),
    ] {
        let mut e = e.clone();
        // Right after the manifest: refused before anything else is read.
        e.insert(
            2,
            Entry {
                name: name.as_bytes().to_vec(),
                kind,
                mode: 0o644,
                data: Vec::new(),
            },
        );
        write_entries(&bad, &e);
        assert_refused(&bad, name, what);
    }
}

fn open(b: &Path, expect: &Expect, parent: &Path) -> Result<bundle::OpenedBundle, BundleError> {
    bundle::open_for_install(b, expect, parent, &NoProgress)
}

#[test]
fn open_for_install_refuses_other_versions_and_arches_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let good = small_bundle(tmp.path());
    let unpack = tmp.path().join("unpack");
    let this = unsigned_ok();
    let other_version = Expect {
        version: "0.0.0-other".to_owned(),
        ..this.clone()
    };
    let e = open(&good, &other_version, &unpack).unwrap_err();
    assert!(matches!(e, BundleError::VersionMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains(atlas_install::VERSION) && e.to_string().contains("0.0.0-other"),
        "{e}"
    );
    // A bundle made for another arch (manifest consistently re-summed): refused as such.
    let mut entries = read_entries(&good);
    edit_manifest(&mut entries, |m| m["arch"] = "riscv64".into());
    let other = tmp.path().join("riscv.bundle");
    write_entries(&other, &entries);
    let e = open(&other, &this, &unpack).unwrap_err();
    assert!(matches!(e, BundleError::ArchMismatch { .. }), "{e}");
    assert!(e.to_string().contains("riscv64"), "{e}");
    // A damaged one is refused after the unpack started: its directory is gone too.
    let mut entries = read_entries(&good);
    let i = largest_blob(&entries);
    entries[i].data[0] ^= 0xff;
    let bad = tmp.path().join("bad.bundle");
    write_entries(&bad, &entries);
    let e = open(&bad, &this, &unpack).unwrap_err();
    assert!(e.to_string().contains(&name_of(&entries[i])), "{e}");
    let left: Vec<_> = std::fs::read_dir(&unpack)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a refused bundle left {left:?} in the temp dir"
    );
    // The good one unpacks to a layout the image pipeline reads; dropped, it is removed.
    let opened = open(&good, &this, &unpack).unwrap();
    let dir = opened.layout.path().to_owned();
    assert!(dir.join("index.json").is_file() && dir.join("oci-layout").is_file());
    assert_eq!(
        opened.source("two").unwrap().to_string(),
        format!("oci:{}:two", dir.display())
    );
    assert!(opened.source("three").is_none());
    // What install does with it: the image pipeline pulls (and re-verifies) from the layout;
    // the bundle file itself also reads in place as an oci-archive.
    let cache = atlas_image::cache::BlobCache::open(tmp.path().join("cache")).unwrap();
    let in_place = Source::OciArchive {
        path: good.clone(),
        tag: Some("two".to_owned()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for src in [opened.source("two").unwrap(), in_place] {
        let img = rt
            .block_on(pull(&src, &cache, &PullOptions::default(), &NoProgress))
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        assert_eq!(img.layers.len(), 2, "{src}");
        assert_eq!(
            img.manifest_digest.to_string(),
            opened
                .images
                .iter()
                .find(|i| i.name == "two")
                .unwrap()
                .digest
        );
    }
    drop(opened);
    assert!(
        !dir.exists(),
        "the unpacked layout outlived its OpenedBundle"
    );
}

pub(crate) fn registry_ready() -> bool {
    let tools = ["skopeo", "umoci"].iter().all(|t| have_tool(t));
    let prom = crate::common::fixture_of("prometheus");
    let up = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{REGISTRY}/{prom}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if tools && !up {
        assert!(
            !require_all(),
            "the fixture registry on {REGISTRY} is required (ATLAS_TEST_REQUIRE_ALL=1): run tests/start-services.sh and tests/fixtures/build-images.sh"
        );
        eprintln!("skipping: fixture {prom} not in {REGISTRY}");
    }
    tools && up
}

/// images.lock pinning the embedded recipes' bases to the fixture images, digests computed
/// from the manifest bytes the registry serves.
pub(crate) fn fixture_lock(path: &Path) {
    let text = crate::common::fixture_lock_text(&["prometheus", "node-exporter"], "")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, text).unwrap();
}

fn skopeo_digest(source: &str) -> String {
    let o = Command::new("skopeo")
        .args(["inspect", source])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo inspect {source}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["Digest"].as_str().unwrap().to_owned()
}

/// The real binary builds two embedded recipes from the fixture registry into a bundle;
/// skopeo and umoci read its layout in place and unpacked, and the digests agree with inspect.
#[test]
fn bundle_from_fixture_registry_is_readable_by_skopeo_and_umoci() {
    if !registry_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    fixture_lock(&t.join("images.lock"));
    let out = t.join("atlas.bundle");
    let o = run(atlas()
        .args(["--progress", "none", "--json", "bundle", "create", "--out"])
        .arg(&out)
        .args(["--service", "prometheus", "--service", "node-exporter"])
        .args(["--registry-mirror", &REGISTRY, "--images-lock"])
        .arg(t.join("images.lock"))
        .arg("--cache-dir")
        .arg(t.join("cache")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("not in the images lock"),
        "{}",
        stderr(&o)
    );
    let o = verify_cli(&out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("4 images checked"), "{}", stdout(&o));
    // The bundle carries the lock its bases were pulled by.
    let given = ImagesLock::load(&t.join("images.lock")).unwrap();
    let entries = read_entries(&out);
    let lock = entries.iter().find(|e| e.name == b"images.lock").unwrap();
    let carried = ImagesLock::parse(std::str::from_utf8(&lock.data).unwrap(), "bundle").unwrap();
    assert_eq!(
        carried.iter().collect::<Vec<_>>(),
        given.iter().collect::<Vec<_>>()
    );
    // Each Atlas image's bill of materials, as the bundle carries it, checked by an
    // independent CycloneDX tool against the schema of the specVersion it declares.
    if cyclonedx::validator_ready() {
        let mut sboms = Vec::new();
        for e in entries.iter().filter(|e| e.name.starts_with(b"sbom/")) {
            let name = String::from_utf8_lossy(&e.name).replace('/', "-");
            cyclonedx::assert_valid(t, &name, &e.data);
            sboms.push(name);
        }
        sboms.sort();
        assert_eq!(
            sboms,
            ["sbom-node-exporter.cdx.json", "sbom-prometheus.cdx.json"]
        );
    }
    // The binary inside is this binary, byte for byte.
    let bin = entries.iter().find(|e| e.name == b"atlas-install").unwrap();
    let me = std::fs::read(env!("CARGO_BIN_EXE_atlas-install")).unwrap();
    assert!(
        bin.data == me,
        "the bundled binary differs from the one that made it"
    );
    let o = run(atlas().args(["--json", "bundle", "inspect"]).arg(&out));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let images = j["images"].as_array().unwrap();
    let find = |n: &str| {
        images
            .iter()
            .find(|i| i["name"] == n)
            .unwrap_or_else(|| panic!("{n} not in {j}"))
    };
    let prom = find("prometheus");
    assert_eq!(prom["role"], "atlas");
    let base = crate::common::recipe_base("prometheus");
    assert_eq!(prom["base"], base.as_str());
    assert_eq!(find(&base)["role"], "base");
    // Read in place, as an oci-archive, and unpacked by the install path, as an oci: layout.
    let in_place = skopeo_digest(&format!("oci-archive:{}:prometheus", out.display()));
    assert_eq!(in_place, prom["digest"].as_str().unwrap());
    let opened =
        bundle::open_for_install(&out, &unsigned_ok(), &t.join("unpack"), &NoProgress).unwrap();
    let dir = opened.layout.path();
    for img in images {
        let name = img["name"].as_str().unwrap();
        assert_eq!(
            skopeo_digest(&format!("oci:{}:{name}", dir.display())),
            img["digest"].as_str().unwrap()
        );
    }
    let ls = Command::new("umoci")
        .args(["ls", "--layout"])
        .arg(dir)
        .output()
        .unwrap();
    let tags = String::from_utf8_lossy(&ls.stdout);
    assert!(
        tags.lines().any(|l| l == "node-exporter"),
        "umoci ls: {tags}"
    );
    assert!(umoci_stat(dir, "prometheus").contains("atlas layer"));
}

/// Handing over to another version: the bundle's binary comes out byte for byte, executable;
/// a damaged one is refused and not written.
#[test]
fn extract_binary_checks_the_binary_member() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let good = small_bundle(tmp.path());
    let dest = tmp.path().join("handover");
    let m = bundle::extract_binary(&good, &dest).unwrap();
    assert_eq!(m.version, atlas_install::VERSION);
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(tmp.path().join("atlas-install")).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let mut e = read_entries(&good);
    e[2].data[0] ^= 0x20;
    let bad = tmp.path().join("bad.bundle");
    write_entries(&bad, &e);
    let dest2 = tmp.path().join("handover2");
    let err = bundle::extract_binary(&bad, &dest2).unwrap_err();
    assert!(
        err.to_string().contains("\"atlas-install\" is corrupt"),
        "{err}"
    );
    assert!(!dest2.exists() && !dest2.with_extension("partial").exists());
}

/// `bundle create --no-build --oci DIR` on the command line: every tagged image of the layout,
/// nothing pulled; an untagged image is refused with how to tag it, and no file is written.
#[test]
fn create_from_an_oci_layout_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    small_layout(&layout);
    let out = tmp.path().join("from-oci.bundle");
    let create = |out: &Path, layout: &Path| {
        run(atlas()
            .args([
                "--progress",
                "none",
                "bundle",
                "create",
                "--no-build",
                "--out",
            ])
            .arg(out)
            .arg("--oci")
            .arg(layout))
    };
    let o = create(&out, &layout);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(atlas().arg("bundle").arg("inspect").arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    let listing = stdout(&o);
    for name in ["one", "two"] {
        assert!(
            listing.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{listing}"
        );
    }
    assert!(verify_cli(&out).status.success());
    // The same layout with its tags removed.
    let index = layout.join("index.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&index).unwrap()).unwrap();
    for m in j["manifests"].as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("annotations");
    }
    std::fs::write(&index, serde_json::to_vec(&j).unwrap()).unwrap();
    let bad_out = tmp.path().join("untagged.bundle");
    let o = create(&bad_out, &layout);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("org.opencontainers.image.ref.name"),
        "{}",
        stderr(&o)
    );
    assert!(!bad_out.exists());
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".untagged")),
        "scratch left: {names:?}"
    );
}

/// `install --bundle` and `upgrade --bundle` with a damaged bundle: refused before Incus is
/// touched, naming the damaged member; the project does not appear.
#[test]
fn install_and_upgrade_refuse_a_corrupt_bundle_and_change_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(c) = rt.block_on(crate::common::incus_client()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let before = crate::common::hermetic::HostState::read();
    let project = format!("t-bnd-{}", std::process::id());
    let damaged = [
        flipped_bundle(tmp.path()),
        resized_descriptor_bundle(tmp.path()),
        duplicated_member_bundle(tmp.path()),
    ];
    for ((bad, member), command) in damaged
        .iter()
        .flat_map(|b| ["install", "upgrade"].map(|c| (b, c)))
    {
        let o = run(atlas()
            .args([
                "--progress",
                "plain",
                "--yes",
                "--project",
                &project,
                command,
                "--allow-unsigned",
                "--bundle",
            ])
            .arg(bad));
        let err = stderr(&o);
        assert!(!o.status.success(), "{command} accepted a corrupt bundle");
        assert!(
            err.contains("refused before touching Incus") && err.contains(member.as_str()),
            "{command}: {err}"
        );
        assert!(
            rt.block_on(c.get_project(&project)).is_err(),
            "{command} created project {project}"
        );
    }
    let after = crate::common::hermetic::HostState::read();
    before.assert_same(&after, "refused bundle installs");
}
