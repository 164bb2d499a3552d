// Records the git commit for `--version` (falls back to "unknown" outside a checkout, e.g.
// building from a source tarball), and copies the release public keys the binary trusts into
// OUT_DIR: `ATLAS_RELEASE_PUBKEYS=FILE`, else the repository's `release/keys.pub`.
use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Checks the keys file's shape (the base64 is decoded by the library's own test) and copies
/// it to OUT_DIR for `include_str!`.
fn embed_release_keys() {
    println!("cargo:rerun-if-env-changed=ATLAS_RELEASE_PUBKEYS");
    let path = match std::env::var_os("ATLAS_RELEASE_PUBKEYS").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
            .join("../release/keys.pub"),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("release public keys {}: {e}", path.display()));
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("untrusted comment:") {
            continue;
        }
        // A minisign public key: "Ed" + 8-byte key ID + 32-byte key, base64 (56 characters).
        let b64 = line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
        assert!(
            line.len() == 56 && line.starts_with("RW") && b64,
            "{}:{}: not a minisign public key line (RW..., 56 base64 characters); a secret key never goes here",
            path.display(),
            n + 1
        );
    }
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("release-keys.pub");
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

fn main() {
    embed_release_keys();
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ATLAS_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: watch HEAD itself and the branch file it points to (works in
    // linked worktrees too, where .git is a file).
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
