//! Shared helpers for the image-builder integration tests (a small equivalent of the
//! installer's `tests/it/common`: tool checks that fail under ATLAS_TEST_REQUIRE_ALL=1).
#![allow(dead_code)]

pub mod auth_registry;
pub mod images;
pub mod proxy;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

pub const REGISTRY: &str = "127.0.0.1:5000";

/// Whether a missing external dependency must fail the test (CI) or only skip it.
pub fn require_all() -> bool {
    std::env::var_os("ATLAS_TEST_REQUIRE_ALL").is_some_and(|v| v == "1")
}

/// Returns false (and says why) when `tool` is not on PATH; panics instead under CI.
pub fn have_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        assert!(
            !require_all(),
            "{tool} is required (ATLAS_TEST_REQUIRE_ALL=1); run tests/setup-host.sh"
        );
        eprintln!("skipping: {tool} not installed (run tests/setup-host.sh)");
    }
    found
}

/// Whether the local registry on 127.0.0.1:5000 answers /v2/; panics under CI when not.
pub fn have_registry() -> bool {
    let ok = registry_answers(REGISTRY);
    if !ok {
        assert!(
            !require_all(),
            "the registry on {REGISTRY} is required (ATLAS_TEST_REQUIRE_ALL=1): run tests/start-services.sh"
        );
        eprintln!("skipping: no registry on {REGISTRY} (run tests/start-services.sh)");
    }
    ok
}

pub fn registry_answers(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    if s.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    // "HTTP/1.x 200" (or 401 for a registry with auth).
    s.read_exact(&mut buf).is_ok()
        && buf.starts_with(b"HTTP/1.")
        && (&buf[9..] == b"200" || &buf[9..] == b"401")
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
