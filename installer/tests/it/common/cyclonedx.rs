//! The independent CycloneDX check: `tests/sbom/validate.py`, run in the venv
//! `tests/setup-host.sh` makes with cyclonedx-python-lib (the official JSON schema of the
//! declared specVersion, strict, and the library's own model checks).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{have_path, stderr, stdout};

/// The venv tests/setup-host.sh installs cyclonedx-python-lib into.
pub const VENV: &str = "/var/tmp/atlas-test/cdx-venv";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sbom/validate.py")
}

/// Whether the validator is installed: skips (false) on a laptop, panics under
/// ATLAS_TEST_REQUIRE_ALL=1.
pub fn validator_ready() -> bool {
    have_path(
        &Path::new(VENV).join("bin/python"),
        "the CycloneDX validator's venv (tests/setup-host.sh makes it)",
    )
}

/// Runs the validator on `file`.
pub fn validate(file: &Path) -> Output {
    Command::new(Path::new(VENV).join("bin/python"))
        .arg(script())
        .arg(file)
        .output()
        .expect("run tests/sbom/validate.py")
}

/// Writes `bytes` to `dir/name` and asserts the validator accepts it.
pub fn assert_valid(dir: &Path, name: &str, bytes: &[u8]) {
    let file = dir.join(name);
    std::fs::write(&file, bytes).unwrap();
    let o = validate(&file);
    assert!(
        o.status.success(),
        "{name} is not valid CycloneDX:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}
