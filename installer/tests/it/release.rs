//! `release/build.sh` with a throwaway key made by Debian's `minisign -G`: Debian's
//! `minisign -V` verifies the release's SHA256SUMS and the bundle manifest's signature, and
//! the released install.sh (carrying the public key) checks SHA256SUMS.minisig with minisign
//! before it installs anything. The release binary is this test's binary (ATLAS_RELEASE_BIN),
//! so no static LTO build runs here; the bundle holds one small image (node-exporter).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::bundle::{fixture_lock, read_entries, registry_ready};
use crate::common::{have_tool, stderr, stdout, throwaway_key};
use crate::install_sh::{assert_nothing_installed, run_script, serve};

const REGISTRY: crate::common::FixtureRegistry = crate::common::FixtureRegistry;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}\n{}", stdout(o), stderr(o));
}

/// `minisign -V -p PUB -m FILE` (signature FILE.minisig); the trusted comment it prints.
fn minisign_verify(public: &Path, file: &Path) -> Output {
    Command::new("minisign")
        .args(["-V", "-p"])
        .arg(public)
        .arg("-m")
        .arg(file)
        .output()
        .expect("minisign")
}

#[test]
fn release_is_signed_and_debian_minisign_verifies_it() {
    if !have_tool("minisign") || !have_tool("sha256sum") || !registry_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // The release key, made by Debian's minisign (unencrypted: no terminal here).
    let (sec, public) = (t.join("release.key"), t.join("release.pub"));
    let o = Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&sec)
        .output()
        .unwrap();
    ok(&o, "minisign -G");
    fixture_lock(&t.join("images.lock"));
    let dist = t.join("dist");
    let o = Command::new("bash")
        .arg(repo().join("release/build.sh"))
        .args(["--registry-mirror", &REGISTRY, "--sign-key"])
        .arg(&sec)
        .arg("--sign-pubkey")
        .arg(&public)
        .arg("--out")
        .arg(&dist)
        .arg("--images-lock")
        .arg(t.join("images.lock"))
        .args(["--", "--service", "node-exporter"])
        .env("ATLAS_RELEASE_BIN", env!("CARGO_BIN_EXE_atlas-install"))
        .output()
        .unwrap();
    ok(&o, "release/build.sh");
    let dir = PathBuf::from(stdout(&o).lines().last().unwrap_or_default());
    // This test's binary was built without the key: the script says what that means.
    assert!(
        stderr(&o).contains("does not embed the release key"),
        "{}",
        stderr(&o)
    );

    // Debian's minisign, independently: SHA256SUMS and the manifest inside the bundle.
    let sums = dir.join("SHA256SUMS");
    let o = minisign_verify(&public, &sums);
    ok(&o, "minisign -V SHA256SUMS");
    assert!(stdout(&o).contains("file:SHA256SUMS"), "{}", stdout(&o));
    let version = atlas_install::VERSION;
    let arch = std::env::consts::ARCH;
    let bundle = dir.join(format!("atlas-{version}-{arch}.bundle"));
    let extracted = t.join("extracted");
    std::fs::create_dir(&extracted).unwrap();
    for e in read_entries(&bundle).iter().take(3) {
        let name = String::from_utf8(e.name.clone()).unwrap();
        std::fs::write(extracted.join(&name), &e.data).unwrap();
    }
    let manifest = extracted.join("atlas-bundle.json");
    let o = minisign_verify(&public, &manifest);
    ok(&o, "minisign -V atlas-bundle.json");
    assert!(
        stdout(&o).contains(&format!("atlas-install {version} {arch}")),
        "{}",
        stdout(&o)
    );
    // One byte of the manifest changed: Debian's minisign refuses it too.
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&manifest, bytes).unwrap();
    assert!(!minisign_verify(&public, &manifest).status.success());

    served_install_sh_checks_the_signature(t, &dir);
}

/// The release directory served over loopback HTTP as `<base>/<version>/`; the released
/// install.sh (with the release key written in) installs from it.
fn served_install_sh_checks_the_signature(t: &Path, dir: &Path) {
    let version = atlas_install::VERSION;
    let script = dir.join("install.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("release_pubkey=\"RW")),
        "the released install.sh carries the key"
    );
    let files = |sums: &[u8], sig: Option<Vec<u8>>| {
        let mut f = BTreeMap::new();
        let name = format!("atlas-install-{version}-{}", std::env::consts::ARCH);
        f.insert(
            format!("/{version}/{name}"),
            std::fs::read(dir.join(&name)).unwrap(),
        );
        f.insert(format!("/{version}/SHA256SUMS"), sums.to_vec());
        if let Some(s) = sig {
            f.insert(format!("/{version}/SHA256SUMS.minisig"), s);
        }
        f
    };
    let sums = std::fs::read(dir.join("SHA256SUMS")).unwrap();
    let sig = std::fs::read(dir.join("SHA256SUMS.minisig")).unwrap();
    let env = [("ATLAS_VERSION", version)];
    let install = |files: BTreeMap<String, Vec<u8>>, bin: &Path, path: Option<&str>| {
        let srv = serve(files, vec![]);
        let mut env: Vec<(&str, &str)> = env.to_vec();
        if let Some(p) = path {
            env.push(("PATH", p));
        }
        run_script(&script, &srv.base, bin, &env, &["--version"])
    };

    let o = install(files(&sums, Some(sig.clone())), &t.join("bin-ok"), None);
    ok(&o, "install.sh");
    assert!(
        stderr(&o).contains("SHA256SUMS signature verified"),
        "{}",
        stderr(&o)
    );
    assert!(stdout(&o).contains(version), "{}", stdout(&o));

    // SHA256SUMS changed on the server (a line for another binary added), the signature kept.
    let mut forged = sums.clone();
    forged.extend_from_slice(format!("{}  evil\n", "0".repeat(64)).as_bytes());
    let bin = t.join("bin-forged");
    std::fs::create_dir(&bin).unwrap();
    let refused = |o: Output, why: &str| {
        assert!(!o.status.success(), "installed: {}", stderr(&o));
        assert!(stderr(&o).contains(why), "{}", stderr(&o));
        assert_nothing_installed(&bin);
    };
    refused(
        install(files(&forged, Some(sig.clone())), &bin, None),
        "does not match its signature",
    );

    // Forged and re-signed with another key: refused the same way.
    let other = throwaway_key(t, "other");
    let forged_file = t.join("SHA256SUMS");
    std::fs::write(&forged_file, &forged).unwrap();
    let o = crate::common::run(
        crate::common::atlas()
            .args(["signature", "sign", "--key"])
            .arg(&other.secret)
            .arg(&forged_file),
    );
    ok(&o, "signature sign");
    let other_sig = std::fs::read(t.join("SHA256SUMS.minisig")).unwrap();
    refused(
        install(files(&forged, Some(other_sig)), &bin, None),
        "does not match its signature",
    );

    // The signature removed: refused while the script carries a key.
    refused(install(files(&sums, None), &bin, None), "has no signature");

    // No minisign on PATH: installed, and said plainly that the signature was not checked.
    let tools = t.join("tools");
    std::fs::create_dir(&tools).unwrap();
    for tool in [
        "sh",
        "uname",
        "mktemp",
        "curl",
        "awk",
        "sha256sum",
        "cut",
        "chmod",
        "mv",
        "cp",
        "rm",
        "mkdir",
        "dirname",
        "basename",
        "cat",
    ] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found"));
        std::os::unix::fs::symlink(found, tools.join(tool)).unwrap();
    }
    let o = install(
        files(&sums, Some(sig)),
        &t.join("bin-nominisign"),
        Some(tools.to_str().unwrap()),
    );
    ok(&o, "install.sh without minisign");
    assert!(
        stderr(&o).contains("minisign is not installed, so the signature of SHA256SUMS")
            && stderr(&o).contains("NOT checked"),
        "{}",
        stderr(&o)
    );
}
