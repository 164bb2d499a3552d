//! Hermetic tests on the host's shared incusd: each test gets names, IPv4 ranges and an
//! external bridge of its own, chosen by looking at what the host uses (not by hope), so the
//! suite passes beside the README demo or any other Atlas install; and [`HostState`] proves
//! that a test left the host's Incus as it found it.
//!
//! Everything here drives Incus through the `incus` CLI: a guard must work from `Drop`, on a
//! panicking test, without the test's own client or runtime.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use ipnet::Ipv4Net;

/// Second octets the tests take their /24s from: far from the seed's defaults (10.10-10.50)
/// and from the 10.199 bridge tests/start-services.sh creates.
const SECOND_OCTETS: std::ops::RangeInclusive<u8> = 200..=254;

/// /24s handed out in this process: two tests running at once never get the same one.
static HANDED_OUT: Mutex<BTreeSet<Ipv4Net>> = Mutex::new(BTreeSet::new());

fn incus(args: &[&str]) -> Output {
    Command::new("incus")
        .args(args)
        .output()
        .expect("run the incus client")
}

/// Every IPv4 range in use on this host: routes of every interface (the uplink included),
/// addresses of every interface, and the ranges of every Incus network.
pub fn ranges_in_use() -> Vec<Ipv4Net> {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let mut used: Vec<Ipv4Net> = atlas_install::engine::preflight::parse_routes(&routes)
        .into_iter()
        .map(|r| r.dest)
        .collect();
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    used.extend(addrs.lines().filter_map(|l| {
        let mut f = l.split_whitespace();
        f.position(|w| w == "inet")?;
        f.next()?.parse::<Ipv4Net>().ok().map(|n| n.trunc())
    }));
    let nets = incus(&["query", "/1.0/networks?recursion=1"]);
    let nets: serde_json::Value = serde_json::from_slice(&nets.stdout).unwrap_or_default();
    used.extend(
        nets.as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                n["config"]["ipv4.address"]
                    .as_str()?
                    .parse::<Ipv4Net>()
                    .ok()
            })
            .map(|n| n.trunc()),
    );
    used
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// `n` /24s (as gateway `.1/24`) that clash with nothing on this host and were not handed to
/// another test of this process. The search starts at a place derived from the process id,
/// so concurrent test processes rarely even look at the same ranges.
pub fn free_subnets(n: usize) -> Vec<Ipv4Net> {
    let used = ranges_in_use();
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let seconds: Vec<u8> = SECOND_OCTETS.collect();
    let start = std::process::id() as usize;
    let mut out = Vec::new();
    for k in 0..seconds.len() * 256 {
        let i = (start + k * 7) % (seconds.len() * 256);
        let (second, third) = (seconds[i / 256], (i % 256) as u8);
        let net = Ipv4Net::new(Ipv4Addr::new(10, second, third, 0), 24).expect("a /24");
        if handed.contains(&net) || used.iter().any(|u| overlaps(u, &net)) {
            continue;
        }
        handed.insert(net);
        out.push(Ipv4Net::new(Ipv4Addr::new(10, second, third, 1), 24).expect("a /24"));
        if out.len() == n {
            return out;
        }
    }
    panic!("no {n} free /24s in 10.{SECOND_OCTETS:?}.0.0 on this host");
}

/// A managed bridge of the test's own (the external network its stack uses), removed on
/// drop, on panic too.
pub struct Bridge {
    pub name: String,
    /// Gateway and prefix (`10.x.y.1/24`).
    pub cidr: Ipv4Net,
}

impl Bridge {
    /// `t<tag><pid>` (at most 15 characters, the kernel's limit) on a free /24, no NAT,
    /// no IPv6, no route out: like the seed's `incusbr0`, but nobody else's.
    pub fn create(tag: &str) -> Bridge {
        let name: String = format!("t{tag}{}", std::process::id())
            .chars()
            .take(15)
            .collect();
        let cidr = free_subnets(1)[0];
        let o = incus(&[
            "network",
            "create",
            &name,
            &format!("ipv4.address={cidr}"),
            "ipv4.nat=false",
            "ipv6.address=none",
        ]);
        assert!(
            o.status.success(),
            "create bridge {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Bridge { name, cidr }
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

/// The five Atlas network roles, with the short tag each bridge name ends in.
pub const ROLES: [(&str, &str); 5] = [
    ("development", "dev"),
    ("testing", "tst"),
    ("staging", "stg"),
    ("production", "prd"),
    ("management", "mgt"),
];

/// One test's Atlas install on the shared daemon: its project, its five bridges on free /24s
/// and an external bridge of its own (never `incusbr0`, which the README demo's Caddy uses:
/// Incus wants instance names unique per network).
pub struct AtlasNames {
    pub project: String,
    /// `(role, bridge name, gateway/prefix)`, in [`ROLES`] order.
    pub networks: Vec<(&'static str, String, Ipv4Net)>,
    pub external: Bridge,
}

impl AtlasNames {
    /// `tag`: a few letters and digits that keep this test apart from the others of this
    /// process (project `t-<tag>-<pid>`, bridges `<tag><pid % 10000><role>`).
    pub fn new(tag: &str) -> AtlasNames {
        let pid = std::process::id();
        let cidrs = free_subnets(ROLES.len());
        AtlasNames {
            project: format!("t-{tag}-{pid}"),
            networks: ROLES
                .iter()
                .zip(cidrs)
                .map(|((role, short), cidr)| (*role, format!("{tag}{}{short}", pid % 10000), cidr))
                .collect(),
            external: Bridge::create(&format!("{tag}x")),
        }
    }

    pub fn bridge_names(&self) -> Vec<String> {
        self.networks.iter().map(|(_, n, _)| n.clone()).collect()
    }

    /// `[incus]` and `[networks.*]` of atlas.toml for these names, on pool `default`.
    pub fn toml(&self) -> String {
        self.incus_toml() + &self.networks_toml()
    }

    /// The `[incus]` table alone (more of its keys may follow).
    pub fn incus_toml(&self) -> String {
        format!(
            "[incus]\nproject = \"{}\"\nstorage_pool = \"default\"\nexternal_network = \"{}\"\n",
            self.project, self.external.name
        )
    }

    /// The `[networks.<role>]` tables.
    pub fn networks_toml(&self) -> String {
        self.networks
            .iter()
            .map(|(role, name, cidr)| {
                format!("\n[networks.{role}]\nname = \"{name}\"\nipv4 = \"{cidr}\"\n")
            })
            .collect()
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
