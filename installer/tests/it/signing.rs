//! Signed bundles: `bundle verify`, `install --bundle` and `upgrade --bundle` check the
//! manifest's minisign signature before anything else. Keys are throwaway pairs made here.
//!
//! Each refusal (signed by a key not trusted, signature removed, manifest changed after
//! signing with its checksum made consistent) is asserted on `bundle verify` and on
//! `install --bundle` / `upgrade --bundle` against the real incusd, where nothing may appear.

use std::path::{Path, PathBuf};
use std::process::Output;

use atlas_image::progress::NoProgress;
use atlas_install::bundle::{self, BundleError, Expect};
use atlas_install::signing::{SecretKey, Signer, Trust};

use crate::bundle::{Entry, edit_manifest, read_entries, small_bundle, write_entries};
use crate::common::{TestKey, atlas, run, stderr, stdout, throwaway_key};

/// A small bundle signed with `key` by the library's `create`.
fn signed_bundle(dir: &Path, key: &TestKey) -> PathBuf {
    let unsigned = small_bundle(dir);
    // Sign the same manifest the way `create --sign` does, through the library.
    let sk = SecretKey::load(&key.secret, || None).unwrap();
    resign(&unsigned, &dir.join("signed.bundle"), Some(&sk))
}

/// A copy of `src` whose signature member is made by `key` (or removed with `None`).
fn resign(src: &Path, out: &Path, key: Option<&SecretKey>) -> PathBuf {
    let mut e: Vec<Entry> = read_entries(src);
    e.retain(|x| x.name != b"atlas-bundle.json.minisig");
    if let Some(k) = key {
        let sig = k.sign(&e[0].data, "file:atlas-bundle.json").unwrap();
        e.insert(
            2,
            Entry {
                name: b"atlas-bundle.json.minisig".to_vec(),
                kind: tar::EntryType::Regular,
                mode: 0o644,
                data: sig,
            },
        );
    }
    write_entries(out, &e);
    out.to_owned()
}

fn verify(path: &Path, extra: &[&str]) -> Output {
    run(atlas()
        .args(["--progress", "none", "bundle", "verify"])
        .args(extra)
        .arg(path))
}

fn trust(key: &TestKey) -> [String; 2] {
    ["--trust-key".to_owned(), key.public.display().to_string()]
}

fn refused(o: &Output, what: &str) -> String {
    let err = stderr(o);
    assert!(!o.status.success(), "accepted: {}", stdout(o));
    assert!(err.contains(what), "error does not say {what:?}: {err}");
    assert!(stdout(o).is_empty(), "{}", stdout(o));
    err
}

#[test]
fn bundle_create_sign_and_verify_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let key = throwaway_key(t, "ops");
    let layout = t.join("layout");
    crate::bundle::small_layout(&layout);
    let out = t.join("signed.bundle");
    let o = run(atlas()
        .args([
            "--progress",
            "none",
            "bundle",
            "create",
            "--no-build",
            "--oci",
        ])
        .arg(&layout)
        .arg("--out")
        .arg(&out)
        .arg("--sign")
        .arg(&key.secret));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("signed by key ID {}", key.id)),
        "{}",
        stderr(&o)
    );
    let names: Vec<String> = read_entries(&out)
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect();
    assert_eq!(
        names[..4],
        [
            "atlas-bundle.json",
            "atlas-bundle.json.sha256",
            "atlas-bundle.json.minisig",
            "atlas-install"
        ]
    );
    // Not embedded in this binary: refused without --trust-key, naming the key.
    let err = refused(&verify(&out, &[]), &key.id);
    assert!(err.contains("does not trust"), "{err}");
    // Trusted by file and by string.
    for arg in [key.public.display().to_string(), key.base64.clone()] {
        let o = verify(&out, &["--trust-key", &arg]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!(
                "signed by key ID {} (trusted with --trust-key)",
                key.id
            )),
            "{}",
            stdout(&o)
        );
    }
    let o = run(atlas()
        .args(["--json", "--progress", "none", "bundle", "verify"])
        .args(trust(&key))
        .arg(&out));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["signer"]["key_id"], key.id.as_str());
    assert_eq!(j["signer"]["source"], "trusted");
}

/// The three ways a signature can be wrong, each refused by `bundle verify` with its reason,
/// and the other key accepted once it is trusted.
#[test]
fn resigned_unsigned_and_changed_bundles_are_refused_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ours = throwaway_key(t, "ours");
    let other = throwaway_key(t, "other");
    let good = signed_bundle(t, &ours);
    let o = verify(&good, &trust(&ours).each_ref().map(String::as_str));
    assert!(o.status.success(), "{}", stderr(&o));

    let other_sk = SecretKey::load(&other.secret, || None).unwrap();
    let resigned = resign(&good, &t.join("resigned.bundle"), Some(&other_sk));
    let err = refused(
        &verify(&resigned, &trust(&ours).each_ref().map(String::as_str)),
        &format!("signed by key ID {}", other.id),
    );
    assert!(err.contains("does not trust"), "{err}");
    let o = verify(&resigned, &trust(&other).each_ref().map(String::as_str));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&other.id), "{}", stdout(&o));

    let stripped = resign(&good, &t.join("stripped.bundle"), None);
    refused(
        &verify(&stripped, &trust(&ours).each_ref().map(String::as_str)),
        "is not signed",
    );
    // Accepted unsigned only when asked, and said so.
    let o = verify(&stripped, &["--allow-unsigned"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("NOT signed"), "{}", stdout(&o));

    // A bad signature is refused even when unsigned bundles are allowed.
    let changed = changed_after_signing(&good, &t.join("changed.bundle"));
    let mut lenient = trust(&ours).to_vec();
    lenient.push("--allow-unsigned".to_owned());
    for extra in [&trust(&ours)[..], &lenient[..]] {
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        refused(&verify(&changed, &args), "changed after it was signed");
    }
}

/// The manifest edited (the binary member replaced, the manifest's record and checksum
/// made to match, as a forger would), the signature left as it was.
fn changed_after_signing(src: &Path, out: &Path) -> PathBuf {
    use sha2::Digest as _;
    let mut e = read_entries(src);
    let bin = e.iter().position(|x| x.name == b"atlas-install").unwrap();
    e[bin].data = b"#!/bin/sh\necho not the real binary\n".to_vec();
    let (sum, len) = (
        hex::encode(sha2::Sha256::digest(&e[bin].data)),
        e[bin].data.len(),
    );
    edit_manifest(&mut e, |m| {
        for r in m["members"].as_array_mut().unwrap() {
            if r["name"] == "atlas-install" {
                r["sha256"] = sum.clone().into();
                r["size"] = len.into();
            }
        }
    });
    write_entries(out, &e);
    out.to_owned()
}

/// `open_for_install` (the library side of `install --bundle`) refuses the same three before
/// it creates its unpack directory, and reports the signer of one it accepts.
#[test]
fn open_for_install_checks_the_signature_first() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ours = throwaway_key(t, "ours");
    let other = throwaway_key(t, "other");
    let good = signed_bundle(t, &ours);
    let other_sk = SecretKey::load(&other.secret, || None).unwrap();
    let bad = [
        resign(&good, &t.join("resigned.bundle"), Some(&other_sk)),
        resign(&good, &t.join("stripped.bundle"), None),
        changed_after_signing(&good, &t.join("changed.bundle")),
    ];
    let pk = |k: &TestKey| atlas_install::signing::PublicKey::from_base64(&k.base64).unwrap();
    let expect = Expect {
        trust: Trust::embedded().with_trusted(vec![pk(&ours)]),
        ..Expect::this_binary()
    };
    let unpack = t.join("unpack");
    for b in &bad {
        let e = bundle::open_for_install(b, &expect, &unpack, &NoProgress).unwrap_err();
        assert!(matches!(e, BundleError::Signature { .. }), "{e}");
        assert!(
            !unpack.exists(),
            "{} created the unpack directory",
            b.display()
        );
    }
    let opened = bundle::open_for_install(&good, &expect, &unpack, &NoProgress).unwrap();
    assert!(matches!(opened.signer, Signer::Signed { .. }));
    drop(opened);
    let other_trusted = Expect {
        trust: Trust::embedded().with_trusted(vec![pk(&other)]),
        ..Expect::this_binary()
    };
    bundle::open_for_install(&bad[0], &other_trusted, &unpack, &NoProgress).unwrap();
}

/// `install --bundle` and `upgrade --bundle` refuse each bad bundle before anything is
/// written to Incus, naming the reason; the project never appears. Trusting the other key
/// gets the re-signed one past the check (the install then stops at the unreachable Incus
/// socket given here, so nothing of this fake bundle is installed anywhere).
#[test]
fn install_and_upgrade_refuse_bad_signatures_before_any_write() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Some(c) = rt.block_on(crate::common::incus_client()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let ours = throwaway_key(t, "ours");
    let other = throwaway_key(t, "other");
    let good = signed_bundle(t, &ours);
    let other_sk = SecretKey::load(&other.secret, || None).unwrap();
    let cases = [
        (
            resign(&good, &t.join("resigned.bundle"), Some(&other_sk)),
            format!("signed by key ID {}", other.id),
        ),
        (
            resign(&good, &t.join("stripped.bundle"), None),
            "is not signed".to_owned(),
        ),
        (
            changed_after_signing(&good, &t.join("changed.bundle")),
            "changed after it was signed".to_owned(),
        ),
    ];
    let project = format!("t-sig-{}", std::process::id());
    let images_before = rt.block_on(c.images()).map(|i| i.len()).unwrap_or(0);
    for (bundle, reason) in &cases {
        for command in ["install", "upgrade"] {
            let o = run(atlas()
                .args([
                    "--progress",
                    "plain",
                    "--yes",
                    "--project",
                    &project,
                    command,
                ])
                .args(trust(&ours))
                .arg("--bundle")
                .arg(bundle));
            let err = stderr(&o);
            assert!(
                !o.status.success(),
                "{command} accepted {}",
                bundle.display()
            );
            assert!(
                err.contains("refused before touching Incus") && err.contains(reason),
                "{command} {}: {err}",
                bundle.display()
            );
            assert!(
                rt.block_on(c.get_project(&project)).is_err(),
                "{command} created project {project}"
            );
        }
    }
    assert_eq!(
        rt.block_on(c.images()).map(|i| i.len()).unwrap_or(0),
        images_before,
        "no image was imported"
    );
    let o = run(atlas()
        .args([
            "--progress",
            "plain",
            "--yes",
            "--incus-socket",
            "/nonexistent/incus.socket",
        ])
        .args(["install", "--trust-key"])
        .arg(&other.public)
        .arg("--bundle")
        .arg(&cases[0].0));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "signed by key ID {} (trusted with --trust-key)",
            other.id
        )),
        "the other key, trusted, is accepted: {err}"
    );
}
