//! A registry with authentication (htpasswd, or bearer tokens from a token service of ours),
//! started and stopped by the test that needs it: the image-builder tests' helper, included
//! by path so both test suites run the same one.

pub use super::{have_tool, require_all};

/// `GET /v2/` answers 200 or 401.
pub fn registry_answers(addr: &str) -> bool {
    std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "3"])
        .arg(format!("http://{addr}/v2/"))
        .output()
        .is_ok_and(|o| matches!(&o.stdout[..], b"200" | b"401"))
}

#[path = "../../../../image-builder/tests/common/auth_registry.rs"]
pub mod auth;
