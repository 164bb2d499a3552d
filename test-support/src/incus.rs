//! Incus cleanup guards for tests on the host's shared incusd: each removes what its test made
//! when dropped, on a panicking test too, and [`HostState`] proves that a test left the
//! host's Incus as it found it.
//!
//! Everything here drives Incus through the `incus` CLI: a guard must work from `Drop`, on a
//! panicking test, without the test's own client or runtime.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use ipnet::Ipv4Net;

/// Runs the `incus` client (panics only when it cannot be started).
pub fn incus(args: &[&str]) -> Output {
    Command::new("incus")
        .args(args)
        .output()
        .expect("run the incus client")
}

/// Runs the `incus` client, panicking with its stderr when it fails; returns its stdout.
pub fn incus_ok(args: &[&str]) -> String {
    let o = incus(args);
    assert!(
        o.status.success(),
        "incus {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The non-empty lines of `incus <args>`' stdout (a `-f csv` listing).
fn lines(args: &[&str]) -> Vec<String> {
    String::from_utf8_lossy(&incus(args).stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A test's project and the networks it created outside it, removed on drop in dependency
/// order (instances, images, the project, then the networks), on panic too.
pub struct ProjectGuard {
    pub project: String,
    /// Networks (in the default project) the test created and this guard deletes.
    pub networks: Vec<String>,
}

impl ProjectGuard {
    /// Guards `project` (created or not yet: an absent one is fine).
    pub fn new(project: &str) -> ProjectGuard {
        ProjectGuard {
            project: project.to_string(),
            networks: Vec::new(),
        }
    }

    /// Deletes `network` too, after the project (the test created it).
    pub fn network(&mut self, network: &str) {
        self.networks.push(network.to_string());
    }
}

impl Drop for ProjectGuard {
    fn drop(&mut self) {
        let p = self.project.as_str();
        for name in lines(&["list", "--project", p, "-c", "n", "-f", "csv"]) {
            let _ = incus(&["delete", "--force", "--project", p, &name]);
        }
        for fp in lines(&["image", "list", "--project", p, "-c", "F", "-f", "csv"]) {
            let _ = incus(&["image", "delete", "--project", p, &fp]);
        }
        let _ = incus(&["project", "delete", p]);
        for n in &self.networks {
            delete_network(n);
        }
    }
}

/// A managed bridge of the test's own, removed on drop, on panic too.
pub struct Bridge {
    pub name: String,
    /// Gateway and prefix (`10.x.y.1/24`).
    pub cidr: Ipv4Net,
}

impl Bridge {
    /// `name` (at most 15 characters, the kernel's limit) on `cidr`, no NAT, no IPv6, no
    /// route out: like the seed's `incusbr0`, but nobody else's.
    pub fn create(name: &str, cidr: Ipv4Net) -> Bridge {
        let o = incus(&[
            "network",
            "create",
            name,
            &format!("ipv4.address={cidr}"),
            "ipv4.nat=false",
            "ipv6.address=none",
        ]);
        assert!(
            o.status.success(),
            "create bridge {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Bridge {
            name: name.to_string(),
            cidr,
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        delete_network(&self.name);
    }
}

/// Deletes a network, retrying Incus 6.0's transient errors (a bridge delete races with the
/// veths of containers going away); absent is fine.
pub fn delete_network(name: &str) {
    for _ in 0..5 {
        let o = incus(&["network", "delete", name]);
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.success() || err.contains("not found") {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("cleanup: network {name} left behind");
}

/// What the host's Incus holds that a test must leave as it found it (tests/incus-state.sh:
/// server config, trust store, managed networks, projects, default-project images and
/// profiles, every project's storage volumes), one line per object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState(Vec<String>);

impl HostState {
    pub fn read() -> HostState {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/incus-state.sh");
        let o = Command::new("bash")
            .arg(&script)
            .output()
            .expect("run tests/incus-state.sh");
        assert!(
            o.status.success(),
            "tests/incus-state.sh: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        HostState(
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
        )
    }

    /// Lines only before (`-`) and only after (`+`).
    pub fn diff(&self, after: &HostState) -> Vec<String> {
        let (b, a): (BTreeSet<&String>, BTreeSet<&String>) =
            (self.0.iter().collect(), after.0.iter().collect());
        b.difference(&a)
            .map(|l| format!("- {l}"))
            .chain(a.difference(&b).map(|l| format!("+ {l}")))
            .collect()
    }

    pub fn assert_same(&self, after: &HostState, what: &str) {
        let d = self.diff(after);
        assert!(
            d.is_empty(),
            "{what} changed the host's Incus:\n{}",
            d.join("\n")
        );
    }
}

/// A tmpfs of `megabytes` mounted on a fresh directory: a full disk on demand. Unmounted
/// on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(megabytes: u32) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount");
        assert!(
            o.status.success(),
            "mount a tmpfs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

/// A `dir` storage pool on a tmpfs of `megabytes`: a pool without room. The pool goes on
/// drop, then the mount.
pub struct TinyPool {
    pub name: String,
    _mount: Tmpfs,
}

impl TinyPool {
    pub fn create(tag: &str, megabytes: u32) -> TinyPool {
        let mount = Tmpfs::mount(megabytes);
        let name = format!("t-{tag}-{}-tiny", std::process::id());
        let o = incus(&[
            "storage",
            "create",
            &name,
            "dir",
            &format!("source={}", mount.path().display()),
        ]);
        assert!(
            o.status.success(),
            "create pool {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        TinyPool {
            name,
            _mount: mount,
        }
    }
}

impl Drop for TinyPool {
    fn drop(&mut self) {
        let _ = incus(&["storage", "delete", &self.name]);
    }
}

/// Server-wide settings a test may change (wiring keys, trusted certificates), put back as
/// they were on drop, on panic too: the server config and trust store are everyone's.
pub struct ServerGuard {
    /// Each key with its value before (`None`: unset).
    keys: Vec<(String, Option<String>)>,
    certificates: BTreeSet<String>,
}

fn server_state() -> (serde_json::Value, BTreeSet<String>) {
    let server = incus(&["query", "/1.0"]);
    let server: serde_json::Value = serde_json::from_slice(&server.stdout).unwrap_or_default();
    let certs = incus(&["query", "/1.0/certificates?recursion=1"]);
    let certs: serde_json::Value = serde_json::from_slice(&certs.stdout).unwrap_or_default();
    let fps = certs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["fingerprint"].as_str().map(str::to_string))
        .collect();
    (server["config"].clone(), fps)
}

impl ServerGuard {
    /// Remembers `keys` of the server config and the trusted certificates now.
    pub fn remember(keys: &[&str]) -> ServerGuard {
        let (config, certificates) = server_state();
        ServerGuard {
            keys: keys
                .iter()
                .map(|k| (k.to_string(), config[k].as_str().map(str::to_string)))
                .collect(),
            certificates,
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let (config, certificates) = server_state();
        for (k, before) in &self.keys {
            let now = config[k.as_str()].as_str().map(str::to_string);
            if now == *before {
                continue;
            }
            let o = match before {
                Some(v) => incus(&["config", "set", k, v]),
                None => incus(&["config", "unset", k]),
            };
            if !o.status.success() {
                eprintln!(
                    "cleanup: server key {k} not restored: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        for fp in certificates.difference(&self.certificates) {
            let _ = incus(&["config", "trust", "remove", fp]);
        }
    }
}
