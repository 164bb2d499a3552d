//! Skip or fail: whether a missing external dependency fails the test (CI sets
//! `ATLAS_TEST_REQUIRE_ALL=1`) or only skips it with a reason on stderr (a laptop).

use std::path::Path;
use std::process::Command;

/// Whether a missing external dependency must fail the test (CI) or only skip it (a laptop).
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

/// Whether a path exists; panics under CI when it does not.
pub fn have_path(path: &Path, what: &str) -> bool {
    let ok = path.exists();
    if !ok {
        assert!(
            !require_all(),
            "{what} ({}) is required (ATLAS_TEST_REQUIRE_ALL=1)",
            path.display()
        );
        eprintln!("skipping: {what} not found at {}", path.display());
    }
    ok
}

/// Whether the host's static busybox ([`crate::busybox::HOST_BUSYBOX`]) is there; panics
/// under CI when it is not.
pub fn have_busybox() -> bool {
    let ok = Path::new(crate::busybox::HOST_BUSYBOX).exists();
    assert!(
        ok || !require_all(),
        "/bin/busybox (busybox-static) is required (ATLAS_TEST_REQUIRE_ALL=1)"
    );
    if !ok {
        eprintln!("skipping: /bin/busybox missing (apt-get install busybox-static)");
    }
    ok
}

/// Whether the test runs as root; when not, skips saying `skip` (under CI it fails, saying
/// the test needs root for `need`).
pub fn have_root(need: &str, skip: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        assert!(!require_all(), "this test needs root ({need})");
        eprintln!("skipping: {skip}");
    }
    root
}
