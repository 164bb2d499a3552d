//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod cyclonedx;
pub mod registry;

use std::path::Path;
use std::process::{Command, Output};

/// The `atlas-install` binary under test, with a clean environment for ATLAS_* variables.
pub fn atlas() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atlas-install"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ATLAS_") && k != "ATLAS_TEST_REQUIRE_ALL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// A TCP port on 127.0.0.1 free right now (for host ports a test's stack publishes).
pub use atlas_test_support::free_port;

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("failed to spawn atlas-install")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// Skip or fail (ATLAS_TEST_REQUIRE_ALL=1): one rule for every crate's tests.
pub use atlas_test_support::{have_busybox, have_path, have_tool, require_all, step, step_async};

/// Socket of the shared incusd the integration tests talk to.
pub const INCUS_SOCKET: &str = "/var/lib/incus/unix.socket";

/// The real daemon, or `None` (skip) when absent; under ATLAS_TEST_REQUIRE_ALL=1 absence fails.
pub async fn incus_client() -> Option<atlas_install::incus::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let why = if !Path::new(INCUS_SOCKET).exists() {
        format!("{INCUS_SOCKET} does not exist")
    } else {
        let c = atlas_install::incus::Client::unix_at(Path::new(INCUS_SOCKET)).expect("client");
        match c.server().await {
            Ok(_) => return Some(c),
            Err(e) => e.to_string(),
        }
    };
    assert!(
        !require_all(),
        "incusd is required (ATLAS_TEST_REQUIRE_ALL=1): {why}; run tests/start-services.sh"
    );
    eprintln!("skipping: no incusd ({why}); run tests/start-services.sh");
    None
}

/// `let c = client_or_skip!();` in an async test: the real incusd, or return (skip).
macro_rules! client_or_skip {
    () => {
        match $crate::common::incus_client().await {
            Some(c) => c,
            None => return,
        }
    };
}
pub(crate) use client_or_skip;

/// The registry holding the fixture "upstream" images (tests/fixtures/build-images.sh):
/// `ATLAS_TEST_FIXTURE_REGISTRY` (HOST:PORT), default 127.0.0.1:5000, so fixture work can be
/// tried from a registry of its own without changing what other tests install.
pub struct FixtureRegistry;

impl FixtureRegistry {
    fn get() -> &'static str {
        static VALUE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        VALUE.get_or_init(|| {
            std::env::var("ATLAS_TEST_FIXTURE_REGISTRY")
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "127.0.0.1:5000".to_string())
        })
    }
}

impl std::ops::Deref for FixtureRegistry {
    type Target = str;
    fn deref(&self) -> &str {
        Self::get()
    }
}

impl std::fmt::Display for FixtureRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::get())
    }
}

/// The upstream image the embedded recipe of `service` pins (`docker.io/prom/prometheus:v3.14.0`).
pub fn recipe_base(service: &str) -> String {
    atlas_image::recipe::Recipe::embedded_for(service)
        .unwrap_or_else(|| panic!("no embedded recipe {service}"))
        .expect("embedded recipe")
        .base
        .image
}

/// The same image as the fixture registry serves it (`prom/prometheus:v3.14.0`).
pub fn fixture_of(service: &str) -> String {
    recipe_base(service)
        .trim_start_matches("docker.io/")
        .to_string()
}

/// An images.lock pinning the recipe base of each of `services` to the fixture image under
/// the recipe's tag plus `suffix` (`""`, or `"-v2"` for the upgrade twins), by the digest of
/// the manifest bytes the registry serves for that tag (the index, where it serves one).
pub fn fixture_lock_text(services: &[&str], suffix: &str) -> Result<String, String> {
    use sha2::Digest as _;
    let mut text = String::from("version = 1\n[images]\n");
    for service in services {
        let fixture = format!("{FixtureRegistry}/{}{suffix}", fixture_of(service));
        let raw = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{fixture}"))
            .output()
            .map_err(|e| format!("skopeo: {e}"))?;
        if !raw.status.success() {
            return Err(format!("{fixture}: {}", stderr(&raw)));
        }
        let digest = hex::encode(sha2::Sha256::digest(&raw.stdout));
        text.push_str(&format!(
            "\"{}\" = \"sha256:{digest}\"\n",
            recipe_base(service)
        ));
    }
    Ok(text)
}

/// Says once per run, on stderr, what the fixture images under the recipes' tags really are
/// and which config features of the pinned releases they cannot check (their labels
/// `org.atlas.fixture.real-version` and `org.atlas.fixture.unchecked`, tests/fixtures).
pub fn announce_fixture_gaps() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lines = Vec::new();
        for recipe in atlas_image::recipe::Recipe::embedded().expect("embedded recipes") {
            let fixture = fixture_of(&recipe.name);
            let o = Command::new("skopeo")
                .args(["inspect", "--config", "--tls-verify=false"])
                .args(["--override-os", "linux", "--override-arch", "amd64"])
                .arg(format!("docker://{FixtureRegistry}/{fixture}"))
                .output();
            let labels = o
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .map(|v| v["config"]["Labels"].clone())
                .unwrap_or_default();
            let real = labels["org.atlas.fixture.real-version"].as_str();
            let unchecked = labels["org.atlas.fixture.unchecked"].as_str().unwrap_or("");
            match real {
                Some(real) => lines.push(format!(
                    "  {}: the fixture is {real}; not checked: {}",
                    recipe.base.image,
                    if unchecked.is_empty() { "-" } else { unchecked }
                )),
                None => lines.push(format!(
                    "  {}: no fixture label (not built by cargo xtask fixtures?)",
                    recipe.base.image
                )),
            }
        }
        eprintln!(
            "fixture images stand in for the pinned releases (tests/fixtures/README.md):\n{}",
            lines.join("\n")
        );
    });
}

/// A throwaway minisign key pair made for one test (unencrypted, like `minisign -G -W`):
/// release keys never live in the repository.
pub struct TestKey {
    pub secret: std::path::PathBuf,
    pub public: std::path::PathBuf,
    /// The base64 public key line (`minisign -P`'s argument).
    pub base64: String,
    /// The key ID as minisign prints it.
    pub id: String,
}

pub fn throwaway_key(dir: &Path, name: &str) -> TestKey {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().expect("key pair");
    let public = kp.pk.to_box().unwrap().into_string();
    let secret = kp.sk.to_box(None).unwrap().into_string();
    let (sec, pubf) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    );
    std::fs::write(&sec, &secret).unwrap();
    std::fs::write(&pubf, &public).unwrap();
    let base64 = public.lines().nth(1).unwrap().trim().to_owned();
    let id = atlas_install::signing::PublicKey::from_base64(&base64)
        .unwrap()
        .id
        .to_string();
    TestKey {
        secret: sec,
        public: pubf,
        base64,
        id,
    }
}

pub mod hermetic;
pub mod scripted;
