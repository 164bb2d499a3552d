//! `install.sh` run by the real `sh` against release files served from a loopback HTTP
//! server started here (std only; it records every request path, and can cut a body short).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::common::{have_tool, stderr, stdout};

const ARCH: &str = std::env::consts::ARCH;

/// Files by URL path; `short` paths announce their full length but send half the body.
pub(crate) struct Server {
    pub base: String,
    requests: Arc<Mutex<Vec<String>>>,
}

pub(crate) fn serve(files: BTreeMap<String, Vec<u8>>, short: Vec<String>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            answer(conn, &files, &short, &log);
        }
    });
    Server { base, requests }
}

fn answer(
    mut conn: TcpStream,
    files: &BTreeMap<String, Vec<u8>>,
    short: &[String],
    log: &Mutex<Vec<String>>,
) {
    let mut line = String::new();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    if r.read_line(&mut line).is_err() {
        return;
    }
    // Skip the headers: the client's end of them is an empty line.
    let mut h = String::new();
    while r.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
    log.lock().unwrap().push(path.clone());
    let _ = match files.get(&path) {
        Some(body) => {
            let sent = if short.contains(&path) {
                &body[..body.len() / 2]
            } else {
                &body[..]
            };
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .and_then(|_| conn.write_all(sent))
        }
        None => write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    };
}

impl Server {
    fn requested(&self, path: &str) -> bool {
        self.requests.lock().unwrap().iter().any(|p| p == path)
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A stand-in binary that shows the arguments it was given.
const FAKE: &[u8] = b"#!/bin/sh\necho \"fake atlas-install: $*\"\n";

fn asset(version: &str) -> String {
    format!("atlas-install-{version}-{ARCH}")
}

/// A release directory `/<dir>/` with the binary and a SHA256SUMS listing `sum` for it.
fn release(dir: &str, version: &str, binary: &[u8], sum: &str) -> BTreeMap<String, Vec<u8>> {
    let other = format!("{}  atlas-1.0.0-{ARCH}.bundle\n", "1".repeat(64));
    let sums = format!("{other}{sum}  {}\n", asset(version));
    BTreeMap::from([
        (format!("/{dir}/{}", asset(version)), binary.to_vec()),
        (format!("/{dir}/SHA256SUMS"), sums.into_bytes()),
    ])
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../install.sh")
}

pub(crate) fn run_sh(base: &str, bin_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    run_script(&script(), base, bin_dir, env, args)
}

/// Runs `script` (the repository's install.sh, or a release's copy) like `run_sh`.
pub(crate) fn run_script(
    script: &Path,
    base: &str,
    bin_dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(script)
        .args(args)
        .env("ATLAS_INSTALL_BASE_URL", base)
        .env("ATLAS_INSTALL_BIN_DIR", bin_dir)
        .env_remove("ATLAS_VERSION")
        .env_remove("ATLAS_INSTALL_SKIP_DOWNLOAD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ready() -> bool {
    have_tool("sh") && have_tool("curl") && have_tool("sha256sum")
}

/// Nothing but what the test put there: no binary, no partial download.
pub(crate) fn assert_nothing_installed(bin_dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(bin_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind in the bin dir: {left:?}");
}

#[test]
fn script_is_posix_sh() {
    // /bin/sh (dash on Debian), dash itself, and busybox's ash where the host has them.
    for shell in [&["sh"][..], &["dash"], &["busybox", "sh"]] {
        let mut cmd = Command::new(shell[0]);
        cmd.args(&shell[1..]);
        let Ok(o) = cmd.arg("-n").arg(script()).output() else {
            continue;
        };
        assert!(o.status.success(), "{shell:?} -n: {}", stderr(&o));
    }
    let text = std::fs::read_to_string(script()).unwrap();
    assert_eq!(
        text.lines().last(),
        Some("main \"$@\""),
        "a cut download must run nothing"
    );
}

/// The real binary: downloaded from latest/, verified, installed 0755, and run with the
/// script's arguments.
#[test]
fn installs_latest_and_passes_arguments() {
    if !ready() {
        return;
    }
    let real = std::fs::read(env!("CARGO_BIN_EXE_atlas-install")).unwrap();
    let srv = serve(
        release("latest", "9.9.9", &real, &sha256_hex(&real)),
        vec![],
    );
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let o = run_sh(&srv.base, &bin, &[], &["--version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!(
            "atlas-install {} (commit {})",
            atlas_install::VERSION,
            atlas_install::GIT_COMMIT
        )
    );
    let installed = bin.join("atlas-install");
    assert_eq!(std::fs::read(&installed).unwrap(), real);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(srv.requested(&format!("/latest/{}", asset("9.9.9"))));
}

#[test]
fn installs_a_named_version() {
    if !ready() {
        return;
    }
    let mut files = release("1.2.3", "1.2.3", FAKE, &sha256_hex(FAKE));
    // A latest/ that must not be used when a version is named.
    files.extend(release("latest", "2.0.0", b"wrong", &sha256_hex(b"wrong")));
    let srv = serve(files, vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let o = run_sh(
        &srv.base,
        tmp.path(),
        &[("ATLAS_VERSION", "1.2.3")],
        &["install", "--yes"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "fake atlas-install: install --yes");
    assert!(!srv.requested("/latest/SHA256SUMS"));
}

#[test]
fn wrong_checksum_is_refused_and_nothing_installed() {
    if !ready() {
        return;
    }
    let srv = serve(release("latest", "1.0.0", FAKE, &"0".repeat(64)), vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let o = run_sh(&srv.base, tmp.path(), &[], &["--version"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("checksum mismatch")
            && err.contains(&asset("1.0.0"))
            && err.contains("Nothing was installed"),
        "{err}"
    );
    assert!(
        stdout(&o).is_empty(),
        "the binary must not have run: {}",
        stdout(&o)
    );
    assert_nothing_installed(tmp.path());
}

#[test]
fn truncated_download_is_refused() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // A short file served whole: the checksum catches it.
    let mut files = release("latest", "1.0.0", FAKE, &sha256_hex(FAKE));
    files.insert(
        format!("/latest/{}", asset("1.0.0")),
        FAKE[..FAKE.len() / 2].to_vec(),
    );
    let srv = serve(files, vec![]);
    let o = run_sh(&srv.base, tmp.path(), &[], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    assert_nothing_installed(tmp.path());
    // A connection cut before the announced length: the download itself fails.
    let path = format!("/latest/{}", asset("1.0.0"));
    let srv = serve(
        release("latest", "1.0.0", FAKE, &sha256_hex(FAKE)),
        vec![path],
    );
    let o = run_sh(&srv.base, tmp.path(), &[], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("download of") && stderr(&o).contains("failed"),
        "{}",
        stderr(&o)
    );
    assert_nothing_installed(tmp.path());
}

#[test]
fn matching_installed_binary_is_not_downloaded_again() {
    if !ready() {
        return;
    }
    let srv = serve(release("latest", "1.0.0", FAKE, &sha256_hex(FAKE)), vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let o = run_sh(&srv.base, tmp.path(), &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    srv.requests.lock().unwrap().clear();
    let o = run_sh(&srv.base, tmp.path(), &[], &["status"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("already this release"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o).trim(), "fake atlas-install: status");
    assert_eq!(
        *srv.requests.lock().unwrap(),
        ["/latest/SHA256SUMS"],
        "only the sums were fetched"
    );
}

#[test]
fn local_file_is_checked_against_the_sums() {
    if !ready() {
        return;
    }
    let srv = serve(release("latest", "1.0.0", FAKE, &sha256_hex(FAKE)), vec![]);
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    let good = tmp.path().join("good");
    std::fs::write(&good, FAKE).unwrap();
    let o = run_sh(
        &srv.base,
        &bin,
        &[("ATLAS_INSTALL_SKIP_DOWNLOAD", good.to_str().unwrap())],
        &["x"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "fake atlas-install: x");
    assert!(
        !srv.requested(&format!("/latest/{}", asset("1.0.0"))),
        "a local file is not downloaded"
    );
    let bad = tmp.path().join("bad");
    std::fs::write(&bad, b"#!/bin/sh\necho evil\n").unwrap();
    let bin2 = tmp.path().join("bin2");
    let o = run_sh(
        &srv.base,
        &bin2,
        &[("ATLAS_INSTALL_SKIP_DOWNLOAD", bad.to_str().unwrap())],
        &["x"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("checksum mismatch"), "{}", stderr(&o));
    assert_nothing_installed(&bin2);
}
