//! Shared helpers for the image-builder integration tests: what the installer's tests share
//! too lives in the atlas-test-support crate (skip-or-fail rules, test images, registries).
#![allow(dead_code, unused_imports)]

pub mod proxy;

pub use atlas_test_support::oci as images;
pub use atlas_test_support::registry::auth as auth_registry;
pub use atlas_test_support::registry::{LOCAL as REGISTRY, registry_answers};
pub use atlas_test_support::{have_tool, require_all};

use std::process::Command;

/// Whether the local registry on 127.0.0.1:5000 answers /v2/; panics under CI when not.
pub fn have_registry() -> bool {
    atlas_test_support::registry::have_registry(REGISTRY)
}

/// skopeo + registry: the usual precondition of registry tests.
pub fn have_skopeo_and_registry() -> bool {
    have_tool("skopeo") && have_registry()
}

pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A repository name unique to this test and process.
pub fn unique_repo(test: &str) -> String {
    format!("t-registry/{test}-{}", std::process::id())
}

/// Runs skopeo, panicking with its stderr on failure; returns stdout.
pub fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("spawn skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies an OCI layout image into the local registry with skopeo.
pub fn skopeo_push(layout: &std::path::Path, tag: &str, dest: &str, all: bool) {
    let src = format!("oci:{}:{tag}", layout.display());
    let dst = format!("docker://{dest}");
    let mut args = vec!["copy", "-q", "--dest-tls-verify=false"];
    if all {
        args.push("--all");
    }
    args.extend([src.as_str(), dst.as_str()]);
    skopeo(&args);
}

/// The manifest digest skopeo reports for an image in a registry.
pub fn skopeo_digest(reference: &str) -> String {
    let raw = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--raw",
        &format!("docker://{reference}"),
    ]);
    atlas_image::digest::Digest::of_bytes(raw.as_bytes()).to_string()
}
