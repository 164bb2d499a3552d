//! Helpers shared by the atlas-init tests: tool detection with the ATLAS_TEST_REQUIRE_ALL
//! policy, the embedded binary on disk, and small process utilities.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Under CI (`ATLAS_TEST_REQUIRE_ALL=1`) a missing tool or privilege fails the test.
pub use atlas_test_support::require_all;

pub fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            dir.join(name)
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next().map(|uid| uid == "0"))
            .unwrap_or(false)
    })
}

/// Returns false (skip) when something is missing, or panics under ATLAS_TEST_REQUIRE_ALL.
pub fn prerequisites(test: &str, tools: &[&str], root: bool) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| !have_tool(t))
        .map(|t| format!("tool `{t}`"))
        .collect();
    if root && !is_root() {
        missing.push("root privileges (namespaces, netns)".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: missing {}", missing.join(", "));
    assert!(
        !require_all(),
        "{msg} (required because ATLAS_TEST_REQUIRE_ALL=1)"
    );
    eprintln!("SKIP {msg}");
    false
}

/// Writes the embedded atlas-init to `dir/atlas-init` (0755) and returns its path.
pub fn init_binary(dir: &Path) -> PathBuf {
    let path = dir.join("atlas-init");
    std::fs::write(&path, atlas_image::init::binary()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Polls until the child exits; kills it and panics after `limit`.
pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command to completion; panics with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kill -s SIG pid` through procps' kill (the workspace denies `unsafe`, also in tests).
pub fn send_signal(pid: u32, sig: &str) {
    run_ok(Command::new("kill").args(["-s", sig, &pid.to_string()]));
}
