//! Step 1: read-only checks before anything is written. Daemon and capabilities, storage
//! pool, external bridge, host size against the seed's table, host ports the proxy devices
//! take, network CIDRs against existing networks and host routes, and (once the plan says
//! what gets created) whether the pool has room for it ([`capacity`]).
//!
//! Two kinds of finding: host-size *recommendations* (the seed's table), which
//! `--ignore-preflight` turns into warnings, and checks that predict a certain failure
//! (no room for the images, a port taken, a range in use), which nothing turns off.
//!
//! Host CPU and memory come from Incus (`GET /1.0/resources`: the daemon's host, which is
//! also right for a remote Incus); disk is the storage pool's free space
//! (`GET /1.0/storage-pools/<pool>/resources`). Port and route checks look at the machine
//! this binary runs on, so they are skipped for a remote Incus.

use std::net::{Ipv4Addr, TcpListener};

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

use crate::config::{Config, NetworkRole, ServiceKind};
use crate::deployment::Deployment;
use crate::incus::{Client, Network, OptionalExt, Server};

use super::error::EngineError;
use crate::state::keys;

/// The seed's host table: (minimum, recommended).
pub const CPU_CORES: (u64, u64) = (4, 8);
pub const MEMORY_BYTES: (u64, u64) = (8_000_000_000, 16_000_000_000);
pub const DISK_BYTES: (u64, u64) = (200_000_000_000, 500_000_000_000);

/// What preflight found, for the plan output.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PreflightReport {
    pub server_version: String,
    pub clustered: bool,
    pub oci: bool,
    pub local_buckets: bool,
    pub server_logging: bool,
    pub cpu_cores: u64,
    pub memory_bytes: u64,
    pub pool_free_bytes: u64,
    pub pool_driver: String,
    /// Whether the pool allocates a volume's whole size when it is created (LVM without a
    /// thin pool): then volumes need their room up front, like images.
    pub pool_thick: bool,
    pub warnings: Vec<String>,
    /// Members, roles, status and groups when the server is a cluster member.
    pub cluster: crate::deployment::ClusterInfo,
    /// The external bridge's gateway and prefix, when the config uses it.
    #[serde(skip)]
    pub external: Option<Ipv4Net>,
}

/// Host size in one place, so the thresholds can be tested without a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSize {
    pub cpu_cores: u64,
    pub memory_bytes: u64,
    pub disk_free_bytes: u64,
}

/// Problems (below minimum) and warnings (below recommended) for a host size.
pub fn judge_size(size: HostSize, pool: &str) -> (Vec<String>, Vec<String>) {
    let gb = |b: u64| format!("{:.1}GB", b as f64 / 1e9);
    let rows = [
        (
            "CPU",
            size.cpu_cores,
            CPU_CORES,
            size.cpu_cores.to_string(),
            "cores".to_string(),
            CPU_CORES.0.to_string(),
            CPU_CORES.1.to_string(),
        ),
        (
            "memory",
            size.memory_bytes,
            MEMORY_BYTES,
            gb(size.memory_bytes),
            String::new(),
            gb(MEMORY_BYTES.0),
            gb(MEMORY_BYTES.1),
        ),
        (
            "disk",
            size.disk_free_bytes,
            DISK_BYTES,
            gb(size.disk_free_bytes),
            format!("free in storage pool {pool}"),
            gb(DISK_BYTES.0),
            gb(DISK_BYTES.1),
        ),
    ];
    let (mut errors, mut warnings) = (Vec::new(), Vec::new());
    for (what, have, (min, rec), shown, unit, min_s, rec_s) in rows {
        let unit = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        if have < min {
            errors.push(format!(
                "host {what}: {shown}{unit}, below the minimum of {min_s} (recommended {rec_s}); add resources or pass --ignore-preflight to install anyway"
            ));
        } else if have < rec {
            warnings.push(format!(
                "host {what}: {shown}{unit}, below the recommended {rec_s}"
            ));
        }
    }
    (errors, warnings)
}

/// One host route from `/proc/net/route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub dest: Ipv4Net,
}

/// Parses `/proc/net/route` (little-endian hex destination and mask); the default route is
/// left out (it overlaps everything by design).
pub fn parse_routes(text: &str) -> Vec<Route> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.swap_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, mask) = (hex(f.get(1)?)?, hex(f.get(7)?)?);
            let prefix = u32::from(mask).count_ones() as u8;
            if prefix == 0 {
                return None;
            }
            Some(Route {
                iface: f[0].to_string(),
                dest: Ipv4Net::new(dest, prefix).ok()?.trunc(),
            })
        })
        .collect()
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// CIDR clashes of the configured networks with other networks Incus knows and host routes.
pub fn cidr_clashes(config: &Config, networks: &[Network], routes: &[Route]) -> Vec<String> {
    let ours: Vec<&str> = config
        .networks
        .iter()
        .map(|(_, n)| n.name.as_str())
        .collect();
    let mut out = Vec::new();
    for (role, want) in config.networks.iter() {
        let cidr = want.ipv4.trunc();
        for n in networks {
            let owned = n.config.get(keys::MANAGED).is_some_and(|v| v == "true");
            if n.name == want.name && owned {
                continue;
            }
            if owned && ours.contains(&n.name.as_str()) {
                continue;
            }
            let Some(theirs) = n
                .config
                .get("ipv4.address")
                .and_then(|a| a.parse::<Ipv4Net>().ok())
            else {
                continue;
            };
            if overlaps(cidr, theirs.trunc()) {
                out.push(format!(
                    "network {} ({}) wants {cidr}, which overlaps {theirs} of existing network {}{}; choose another range with networks.{}.ipv4 in atlas.toml",
                    want.name,
                    role.as_str(),
                    n.name,
                    if owned { "" } else { " (not managed by atlas-install)" },
                    role.as_str()
                ));
            }
        }
        for r in routes {
            // A managed Incus network's range is checked above, where its owner is known;
            // every other interface (the uplink, a host bridge Incus merely lists) counts.
            let managed = networks.iter().any(|n| n.name == r.iface && n.managed);
            if r.iface == want.name || managed {
                continue;
            }
            if overlaps(cidr, r.dest) {
                out.push(format!(
                    "network {} ({}) wants {cidr}, which overlaps the host route {} on {}; choose another range with networks.{}.ipv4 in atlas.toml",
                    want.name,
                    role.as_str(),
                    r.dest,
                    r.iface,
                    role.as_str()
                ));
            }
        }
    }
    out
}

/// `(address, port, what)` of every host port the proxy devices of enabled instances take.
pub fn proxy_ports(config: &Config) -> Vec<(String, u16, String)> {
    let mut out = Vec::new();
    if !config.instances_of(ServiceKind::Caddy).is_empty() {
        let a = &config.caddy.listen_address;
        out.push((
            a.clone(),
            config.caddy.http_port,
            "caddy.http_port".to_string(),
        ));
        out.push((
            a.clone(),
            config.caddy.https_port,
            "caddy.https_port".to_string(),
        ));
    }
    if !config.instances_of(ServiceKind::Mosquitto).is_empty() {
        let a = &config.mosquitto.listen_address;
        out.push((
            a.clone(),
            config.mosquitto.mqtt_port,
            "mosquitto.mqtt_port".to_string(),
        ));
        if config.mosquitto.tls {
            out.push((
                a.clone(),
                config.mosquitto.mqtts_port,
                "mosquitto.mqtts_port".to_string(),
            ));
        }
    }
    out
}

/// Listen addresses (`tcp:a:p`) held by proxy devices of profiles atlas owns: on a re-run
/// our own containers hold the ports, which is not a clash.
async fn own_listeners(project: &Client, project_exists: bool) -> Result<Vec<String>, EngineError> {
    if !project_exists {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for p in project.profiles().await? {
        if !crate::state::keys::is_owned(&p.config) {
            continue;
        }
        for d in p.devices.values() {
            if d.get("type").map(String::as_str) == Some("proxy")
                && let Some(l) = d.get("listen")
            {
                out.push(l.clone());
            }
        }
    }
    Ok(out)
}

fn port_problems(config: &Config, own: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (addr, port, key) in proxy_ports(config) {
        if own.iter().any(|l| l == &format!("tcp:{addr}:{port}")) {
            continue;
        }
        if let Err(e) = TcpListener::bind((addr.as_str(), port)) {
            out.push(format!(
                "host port {addr}:{port} ({key}) is not free: {e}; stop what listens there (`ss -ltnp 'sport = :{port}'`) or set {key} in atlas.toml"
            ));
        }
    }
    out
}

/// Runs every check. `ignore_size` turns below-minimum host size into warnings.
pub async fn run(
    client: &Client,
    d: &Deployment,
    ignore_size: bool,
) -> Result<(Server, PreflightReport), EngineError> {
    let server = client
        .server()
        .await
        .map_err(|e| EngineError::Preflight(vec![format!("Incus daemon: {e}")]))?
        .value;
    let mut report = PreflightReport {
        server_version: server.environment.server_version.clone(),
        clustered: server.is_clustered(),
        oci: server.supports_oci(),
        local_buckets: server.supports_local_buckets(),
        server_logging: server.supports_server_logging(),
        ..PreflightReport::default()
    };
    let mut problems = server_problems(client, d, &server, &mut report).await?;
    problems.extend(pool_problems(client, &d.config, &mut report).await?);
    problems.extend(size_problems(client, &d.config, &mut report, ignore_size).await?);
    problems.extend(external_problems(client, &d.config, &mut report).await?);
    problems.extend(host_problems(client, &d.config, &mut report).await?);
    if problems.is_empty() {
        Ok((server, report))
    } else {
        Err(EngineError::Preflight(problems))
    }
}

/// The server: cluster membership as read at the start, trust, API extensions.
async fn server_problems(
    client: &Client,
    d: &Deployment,
    server: &Server,
    report: &mut PreflightReport,
) -> Result<Vec<String>, EngineError> {
    let mut problems = Vec::new();
    if report.clustered && !d.is_clustered() {
        problems.push(format!(
            "Incus at {} is a cluster member, but its membership could not be read when this run started; run again",
            client.endpoint()
        ));
    } else if report.clustered {
        report.cluster = d.cluster.clone();
        problems.extend(super::cluster::check(client, d).await?);
    }
    if server.auth != "trusted" {
        problems.push(format!(
            "Incus at {} does not trust this client (auth = {}); run as a member of the incus-admin group or add the client certificate",
            client.endpoint(),
            server.auth
        ));
    }
    for ext in ["projects", "storage_api_project", "instance_create_start"] {
        if !server.has(ext) {
            problems.push(format!(
                "Incus lacks API extension `{ext}`; upgrade Incus to 6.0 or later"
            ));
        }
    }
    Ok(problems)
}

/// The storage pool: that it exists, its driver and free space.
async fn pool_problems(
    client: &Client,
    config: &Config,
    report: &mut PreflightReport,
) -> Result<Vec<String>, EngineError> {
    let root = client.in_project("default");
    let pool_name = &config.incus.storage_pool;
    let Some(pool) = root.get_storage_pool(pool_name).await.optional()? else {
        // No pool: the disk check cannot run; the problem says why.
        report.pool_free_bytes = u64::MAX;
        return Ok(vec![format!(
            "storage pool {pool_name} does not exist; create it (`incus storage create {pool_name} dir`) or set incus.storage_pool in atlas.toml to an existing pool (`incus storage list`)"
        )]);
    };
    report.pool_driver = pool.value.driver.clone();
    report.pool_thick = pool.value.driver == "lvm"
        && pool
            .value
            .config
            .get("lvm.use_thinpool")
            .is_some_and(|v| v == "false");
    let res = root.storage_pool_resources(pool_name).await?;
    report.pool_free_bytes = res.space.free();
    Ok(Vec::new())
}

/// The host's size against the seed's minimum (warnings with `ignore_size`).
async fn size_problems(
    client: &Client,
    config: &Config,
    report: &mut PreflightReport,
    ignore_size: bool,
) -> Result<Vec<String>, EngineError> {
    let root = client.in_project("default");
    let resources: Value = root.get_path::<Value>("/1.0/resources", false).await?.value;
    report.cpu_cores = resources["cpu"]["total"].as_u64().unwrap_or(0);
    report.memory_bytes = resources["memory"]["total"].as_u64().unwrap_or(0);
    let size = HostSize {
        cpu_cores: report.cpu_cores,
        memory_bytes: report.memory_bytes,
        disk_free_bytes: report.pool_free_bytes,
    };
    let (size_errors, size_warnings) = judge_size(size, &config.incus.storage_pool);
    report.warnings.extend(size_warnings);
    if !ignore_size {
        return Ok(size_errors);
    }
    report.warnings.extend(
        size_errors
            .into_iter()
            .map(|e| format!("{e} (ignored: --ignore-preflight)")),
    );
    Ok(Vec::new())
}

/// The external network Caddy's outside NIC joins, when an instance has one.
async fn external_problems(
    client: &Client,
    config: &Config,
    report: &mut PreflightReport,
) -> Result<Vec<String>, EngineError> {
    let uses_external = config
        .enabled_instances()
        .iter()
        .any(|(_, i)| i.nics.iter().any(|n| n.network == NetworkRole::External));
    if !uses_external {
        return Ok(Vec::new());
    }
    let ext = &config.incus.external_network;
    let root = client.in_project("default");
    Ok(match root.get_network(ext).await.optional()? {
        None => vec![format!(
            "external network {ext} (Caddy's outside NIC) does not exist; create it (`incus network create {ext}`) or set incus.external_network in atlas.toml"
        )],
        Some(n) => match n
            .value
            .config
            .get("ipv4.address")
            .and_then(|a| a.parse::<Ipv4Net>().ok())
        {
            Some(net) => {
                report.external = Some(net);
                Vec::new()
            }
            None => vec![format!(
                "external network {ext} has no IPv4 address (ipv4.address); Caddy needs one there, give the bridge an IPv4 range or choose another incus.external_network"
            )],
        },
    })
}

/// Clashes with what the host already has: address ranges and routes, DNS names, and (on
/// this machine only) host ports and the host mount node-exporter needs.
async fn host_problems(
    client: &Client,
    config: &Config,
    report: &mut PreflightReport,
) -> Result<Vec<String>, EngineError> {
    let root = client.in_project("default");
    let networks = root.networks().await?;
    let local = client.endpoint().starts_with("unix socket");
    let routes = if local {
        parse_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
    } else {
        Vec::new()
    };
    let mut problems = cidr_clashes(config, &networks, &routes);
    problems.extend(dns_name_clashes(
        config,
        &client.instances_all_projects().await?,
    ));
    if !local {
        report.warnings.push(
            "remote Incus: host port and route checks skipped (they only see this machine)"
                .to_string(),
        );
        return Ok(problems);
    }
    let project_exists = root
        .get_project(&config.incus.project)
        .await
        .optional()?
        .is_some();
    let own = own_listeners(&client.in_project(&config.incus.project), project_exists).await?;
    problems.extend(port_problems(config, &own));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    problems.extend(host_mount_problem(config, &mountinfo));
    Ok(problems)
}

/// What an install will put into the storage pool, from its plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolNeed {
    /// `(what, bytes)` of every image the pool must unpack: one per instance created on a
    /// `dir` pool (each gets its own copy), one per image on copy-on-write pools.
    pub images: Vec<(String, u64)>,
    /// `(volume, declared size)` of the volumes created.
    pub volumes: Vec<(String, u64)>,
    /// Images whose size could not be told, and why (their room is not checked).
    pub unknown: Vec<String>,
}

fn gb(b: u64) -> String {
    format!("{:.2}GB", b as f64 / 1e9)
}

/// Whether pool `pool` has room for `need`: `(problems, warnings)`. The images' room is
/// certain to be needed (their layers' compressed size is a lower bound of what they take
/// unpacked), so too little is a problem that `--ignore-preflight` does not turn off; so are
/// volumes on a pool that allocates them whole. Volumes on thin pools (dir, btrfs, zfs, thin
/// LVM) only take what their data grows to: too little room for their declared size is a
/// warning.
pub fn capacity(need: &PoolNeed, pool: &str, free: u64, thick: bool) -> (Vec<String>, Vec<String>) {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let images: u64 = need.images.iter().map(|(_, b)| b).sum();
    let volumes: u64 = need.volumes.iter().map(|(_, b)| b).sum();
    let certain = images + if thick { volumes } else { 0 };
    if certain > free {
        let what = match thick {
            true => format!(
                "its {} images and {} volumes",
                need.images.len(),
                need.volumes.len()
            ),
            false => format!("its {} images (unpacked, at least)", need.images.len()),
        };
        problems.push(format!(
            "storage pool {pool} has {} free ({free} bytes); this install needs {} ({certain} bytes) for {what}, so it would fail half-way. Free space in the pool, or use a larger one (incus.storage_pool). Nothing was changed",
            gb(free),
            gb(certain)
        ));
    } else if !thick && images + volumes > free {
        warnings.push(format!(
            "storage pool {pool}: {} free; the data volumes may grow to {} besides the {} the images take",
            gb(free),
            gb(volumes),
            gb(images)
        ));
    }
    for u in &need.unknown {
        warnings.push(format!("storage pool {pool}: room for {u} not checked"));
    }
    (problems, warnings)
}

/// Incus wants instance names unique on a network (they are its DNS names there): an
/// instance of another project named like one of ours on the external network would make
/// ours fail to start, after everything else was created. Caught here instead.
pub fn dns_name_clashes(config: &Config, all: &[crate::incus::Instance]) -> Vec<String> {
    let ext = &config.incus.external_network;
    let ours: Vec<&str> = config
        .enabled_instances()
        .into_iter()
        .filter(|(_, i)| i.nics.iter().any(|n| n.network == NetworkRole::External))
        .map(|(n, _)| n)
        .collect();
    all.iter()
        .filter(|o| ours.contains(&o.name.as_str()))
        .filter_map(|o| {
            let project = o.extra.get("project").and_then(Value::as_str).unwrap_or("default");
            let on_ext = o.expanded_devices.values().any(|d| {
                d.get("type").map(String::as_str) == Some("nic")
                    && d.get("network") == Some(ext)
            });
            (project != config.incus.project && on_ext).then(|| {
                format!(
                    "instance name {} is already used on network {ext} by project {project}: Incus needs instance names unique on a network (they are its DNS names). Remove that instance (if it is another Atlas install: `atlas-install --project {project} destroy`), or set incus.external_network to another network",
                    o.name
                )
            })
        })
        .collect()
}

/// Whether the mount at `/` propagates (`shared:N` among its optional fields). Unknown
/// (no such line) counts as shared: the check must not refuse what it cannot see.
pub fn root_is_shared(mountinfo: &str) -> bool {
    mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .rfind(|f| f.len() > 6 && f[4] == "/")
        .is_none_or(|f| {
            f[6..]
                .iter()
                .take_while(|x| **x != "-")
                .any(|x| x.starts_with("shared:"))
        })
}

/// node-exporter's rslave mount of the host's / fails to start on a host whose / is private
/// (hosts without systemd, nested containers).
fn host_mount_problem(config: &Config, mountinfo: &str) -> Option<String> {
    let unused = config.instances_of(ServiceKind::NodeExporter).is_empty();
    (!unused && config.node_exporter.follow_host_mounts && !root_is_shared(mountinfo)).then(|| {
        "node-exporter: this host's / is not a shared mount, so Incus cannot mount it with rslave propagation and the container would not start; set node_exporter.follow_host_mounts = false in atlas.toml, or make / shared (`mount --make-rshared /`)".to_string()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn an_instance_name_taken_on_the_external_network_is_a_problem() {
        let cfg = Config::builtin();
        let inst = |name: &str, project: &str, network: &str| -> crate::incus::Instance {
            serde_json::from_value(serde_json::json!({
                "name": name, "project": project,
                "expanded_devices": {"eth0": {"type": "nic", "network": network}}
            }))
            .unwrap()
        };
        let ext = cfg.incus.external_network.clone();
        let found = dns_name_clashes(
            &cfg,
            &[
                inst("caddy01", "atlas-demo", &ext),
                // Ours, a name not on the external network, another network: all fine.
                inst("caddy01", &cfg.incus.project, &ext),
                inst("grafana01", "other", &ext),
                inst("caddy01", "elsewhere", "otherbr0"),
            ],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("instance name caddy01 is already used on network")
                && found[0].contains("by project atlas-demo")
                && found[0].contains("--project atlas-demo destroy"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn root_mount_propagation_is_read_from_mountinfo() {
        let shared = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n";
        let private = "22 1 8:1 / / rw,relatime - ext4 /dev/vda rw\n30 22 0:5 / /proc rw shared:2 - proc proc rw\n";
        assert!(root_is_shared(shared));
        assert!(!root_is_shared(private));
        assert!(root_is_shared(""));
        let mut c = Config::builtin();
        assert!(
            host_mount_problem(&c, private)
                .unwrap()
                .contains("follow_host_mounts = false")
        );
        assert!(host_mount_problem(&c, shared).is_none());
        c.node_exporter.follow_host_mounts = false;
        assert!(host_mount_problem(&c, private).is_none());
    }

    #[test]
    fn images_without_room_are_a_problem_volumes_on_thin_pools_a_warning() {
        let need = PoolNeed {
            images: vec![("a".into(), 40), ("b".into(), 40)],
            volumes: vec![("v".into(), 1_000)],
            unknown: vec![],
        };
        let (p, w) = capacity(&need, "tiny", 60, false);
        assert!(
            p.len() == 1
                && p[0].contains("storage pool tiny has")
                && p[0].contains("80 bytes")
                && p[0].contains("Nothing was changed"),
            "{p:?}"
        );
        assert!(w.is_empty(), "{w:?}");
        let (p, w) = capacity(&need, "tiny", 100, false);
        assert!(p.is_empty() && w[0].contains("may grow"), "{p:?} {w:?}");
        // A pool that allocates volumes whole needs their room now.
        let (p, _) = capacity(&need, "lvm", 100, true);
        assert!(
            p[0].contains("1080 bytes") && p[0].contains("volumes"),
            "{p:?}"
        );
        let (p, w) = capacity(&need, "big", 10_000, true);
        assert!(p.is_empty() && w.is_empty());
        let unknown = PoolNeed {
            unknown: vec!["the image of grafana (registry down)".into()],
            ..PoolNeed::default()
        };
        assert!(capacity(&unknown, "p", 0, false).1[0].contains("not checked"));
    }

    #[test]
    fn size_thresholds_follow_the_seed_table() {
        let ok = HostSize {
            cpu_cores: 8,
            memory_bytes: 16_000_000_000,
            disk_free_bytes: 600_000_000_000,
        };
        assert_eq!(judge_size(ok, "p"), (vec![], vec![]));
        let (e, w) = judge_size(HostSize { cpu_cores: 4, ..ok }, "p");
        assert!(
            e.is_empty() && w.len() == 1 && w[0].contains("CPU"),
            "{w:?}"
        );
        let (e, _) = judge_size(
            HostSize {
                cpu_cores: 2,
                memory_bytes: 4_000_000_000,
                ..ok
            },
            "local",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("2 cores") && e[0].contains("--ignore-preflight"),
            "{e:?}"
        );
        let (e, _) = judge_size(
            HostSize {
                disk_free_bytes: 100_000_000_000,
                ..ok
            },
            "local",
        );
        assert!(e[0].contains("storage pool local"), "{e:?}");
    }

    #[test]
    fn routes_are_parsed_without_the_default_route() {
        let text = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    incusbr0\t0000C70A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let r = parse_routes(text);
        assert_eq!(
            r,
            vec![Route {
                iface: "incusbr0".into(),
                dest: "10.199.0.0/24".parse().unwrap()
            }]
        );
    }

    #[test]
    fn cidr_clash_names_both_sides_and_skips_our_own() {
        let cfg = Config::builtin();
        let foreign = Network::bridge(
            "lab",
            [("ipv4.address".to_string(), "10.50.0.1/16".to_string())].into(),
        );
        let mut ours = Network::bridge(
            "management",
            [("ipv4.address".to_string(), "10.50.0.1/24".to_string())].into(),
        );
        ours.config.insert(keys::MANAGED.into(), "true".into());
        let clashes = cidr_clashes(&cfg, &[foreign, ours], &[]);
        assert_eq!(clashes.len(), 1, "{clashes:?}");
        assert!(
            clashes[0].contains("existing network lab")
                && clashes[0].contains("networks.management.ipv4"),
            "{clashes:?}"
        );
        let route = Route {
            iface: "eth1".into(),
            dest: "10.40.0.0/16".parse().unwrap(),
        };
        let clashes = cidr_clashes(&cfg, &[], std::slice::from_ref(&route));
        assert!(
            clashes.len() == 1 && clashes[0].contains("host route 10.40.0.0/16 on eth1"),
            "{clashes:?}"
        );
        // Incus lists every host interface, the uplink and unmanaged bridges too: listed
        // is not managed, and the route still clashes.
        let mut uplink = Network::bridge("eth1", BTreeMap::new());
        uplink.kind = "physical".into();
        uplink.managed = false;
        let clashes = cidr_clashes(&cfg, &[uplink.clone()], std::slice::from_ref(&route));
        assert_eq!(clashes.len(), 1, "{clashes:?}");
        // A managed bridge's route is its own range, judged by the network check above.
        uplink.managed = true;
        assert_eq!(
            cidr_clashes(&cfg, &[uplink], &[route]),
            Vec::<String>::new()
        );
    }
}
