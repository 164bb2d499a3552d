//! A second CNCF registry on a free loopback port with htpasswd (bcrypt) basic auth,
//! started and stopped by the test that needs it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct AuthRegistry {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bcrypt htpasswd hash made with perl's crypt(3) (libxcrypt knows $2b$).
fn bcrypt(password: &str) -> Option<String> {
    let out = Command::new("perl")
        .args([
            "-e",
            r#"print crypt($ARGV[0], '$2b$05$' . $ARGV[1])"#,
            password,
            "atlasinstalltestsalt..",
        ])
        .output()
        .ok()?;
    let hash = String::from_utf8(out.stdout).ok()?;
    hash.starts_with("$2b$05$").then_some(hash)
}

/// Starts the registry with one user; None (after saying why) when a tool is missing.
pub fn start(user: &str, password: &str) -> Option<AuthRegistry> {
    if !super::have_tool("docker-registry") || !super::have_tool("perl") {
        return None;
    }
    let Some(hash) = bcrypt(password) else {
        assert!(
            !super::require_all(),
            "perl crypt() cannot make bcrypt hashes"
        );
        eprintln!("skipping: perl crypt() cannot make bcrypt hashes");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
    let config = format!(
        "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {root}}}\n\
         http:\n  addr: {addr}\nauth:\n  htpasswd: {{realm: atlas-test, path: {htpasswd}}}\n",
        root = dir.path().join("data").display(),
        htpasswd = dir.path().join("htpasswd").display(),
    );
    std::fs::write(dir.path().join("config.yml"), config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg = AuthRegistry {
        addr,
        child,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !super::registry_answers(&reg.addr) {
        assert!(
            Instant::now() < deadline,
            "auth registry on {} did not come up",
            reg.addr
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(reg)
}
