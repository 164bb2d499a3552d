//! A real Incus cluster: three `incusd` in network namespaces of this machine, brought up by
//! `tests/cluster/up.sh <prefix>` (see tests/cluster/README.md). Runs when
//! `ATLAS_TEST_CLUSTER` names that cluster's state file (tests/run-tests.sh brings one up);
//! skips otherwise, except under ATLAS_TEST_REQUIRE_ALL, where a missing cluster fails.
//!
//! The client talks to the members' unix sockets, which need no network namespace: nothing
//! here opens a network connection from this (root) namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use atlas_install::config::Config;
use atlas_install::config::Placement as Pin;
use atlas_install::deployment::cluster::{detect, member_host};
use atlas_install::deployment::{ClusterInfo, Deployment, Placement, Target, per_member_name};
use atlas_install::engine::cluster;
use atlas_install::incus::{
    Client, ImageImport, InstanceCreate, InstanceSource, Network, OptionalExt, Project,
    StoragePool, StorageVolume,
};
use atlas_install::progress::NoProgress;
use atlas_install::state::keys::PLACEMENT_MEMBER as KEY_PLACEMENT_MEMBER;
use atlas_test_support::busybox::BusyboxImage;

use crate::common::step_async;

/// One member as `up.sh` recorded it.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    socket: PathBuf,
    /// The process holding the member's network namespace.
    holder_pid: String,
}

#[derive(Debug, Clone)]
struct ClusterState {
    path: PathBuf,
    prefix: String,
    hub_pid: String,
    members: Vec<Member>,
}

fn read_state(path: &Path) -> ClusterState {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("ATLAS_TEST_CLUSTER={}: {e}", path.display()));
    let kv: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect();
    let get = |k: &str| {
        kv.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{} has no {k}", path.display()))
    };
    let members = get("MEMBERS")
        .split_whitespace()
        .map(|m| {
            let u = m.to_uppercase();
            Member {
                name: m.to_string(),
                socket: PathBuf::from(get(&format!("{u}_SOCKET"))),
                holder_pid: get(&format!("{u}_HOLDER_PID")),
            }
        })
        .collect();
    ClusterState {
        path: path.to_path_buf(),
        prefix: get("PREFIX"),
        hub_pid: get("HUB_PID"),
        members,
    }
}

fn cluster_or_skip() -> Option<ClusterState> {
    let Some(path) = std::env::var_os("ATLAS_TEST_CLUSTER") else {
        assert!(
            !crate::common::require_all(),
            "ATLAS_TEST_REQUIRE_ALL=1 but ATLAS_TEST_CLUSTER is not set (tests/run-tests.sh brings a cluster up)"
        );
        eprintln!(
            "skipping: no Incus cluster (bring one up with tests/cluster/up.sh <prefix> and set ATLAS_TEST_CLUSTER=/var/tmp/atlas-cluster/<prefix>/state)"
        );
        return None;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    Some(read_state(Path::new(&path)))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/cluster")
        .join(name)
}

fn run_script(name: &str, args: &[&str]) {
    let out = Command::new("bash")
        .arg(script(name))
        .args(args)
        .output()
        .expect("run cluster script");
    assert!(
        out.status.success(),
        "{name} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Starts a stopped member again and deletes what the test created, on panic too.
struct Guard {
    socket: PathBuf,
    /// (prefix, member) taken down by the test.
    stopped: Option<(String, String)>,
    pools: Vec<String>,
    networks: Vec<String>,
    projects: Vec<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some((prefix, member)) = self.stopped.take() {
            let _ = Command::new("bash")
                .arg(script("member.sh"))
                .args([&prefix, "start", &member])
                .status();
        }
        let (socket, pools, networks, projects) = (
            self.socket.clone(),
            std::mem::take(&mut self.pools),
            std::mem::take(&mut self.networks),
            std::mem::take(&mut self.projects),
        );
        // Drop cannot await: a thread with its own runtime and client does the deletes.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let c = Client::unix_at(&socket).expect("cleanup client");
                for p in projects {
                    let pc = c.in_project(&p);
                    for i in pc.instances().await.unwrap_or_default() {
                        let _ = pc.delete_instance(&i.name).await;
                    }
                    for img in pc.images().await.unwrap_or_default() {
                        let _ = pc.delete_image(&img.fingerprint).await;
                    }
                    for pool in &pools {
                        for v in pc.volumes(pool).await.unwrap_or_default() {
                            let on = pc.on_target(Some(&v.location));
                            let _ = on.delete_volume(pool, &v.name).await;
                        }
                    }
                    let _ = c.delete_project(&p).await;
                }
                for n in networks {
                    let _ = c.in_project("default").delete_network(&n).await;
                }
                for p in pools {
                    let _ = c.delete_storage_pool(&p).await;
                }
            });
        })
        .join();
    }
}

/// Preflight's cluster problems, with the deployment read now (as a run reads it).
async fn check(client: &Client, config: &Config) -> Vec<String> {
    let d = Deployment::read(client, config).await.expect("deployment");
    cluster::check(client, &d).await.expect("check")
}

/// Where the instances of `config` go, as a run reads it now (the recorded member included).
async fn placement(client: &Client, config: &Config) -> Placement {
    Deployment::read(client, config)
        .await
        .expect("deployment")
        .placement
}

/// Re-reads the cluster until `ok` holds (heartbeats take seconds), up to `limit`.
async fn wait_for(
    client: &Client,
    limit: Duration,
    what: &str,
    ok: impl Fn(&ClusterInfo) -> bool,
) -> ClusterInfo {
    let start = Instant::now();
    loop {
        let info = detect(client).await.expect("detect");
        if ok(&info) {
            return info;
        }
        assert!(
            start.elapsed() < limit,
            "{what} not seen within {limit:?}; last: {:?}",
            info.members
                .iter()
                .map(|m| format!("{}={}", m.server_name, m.status))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One scenario, in order: the phases share the cluster (pausing a member in parallel with
/// a create would fail the create). Each phase is a step: a failure names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cluster_detection_creation_offline_member_and_join() {
    let Some(state) = cluster_or_skip() else {
        return;
    };
    let s = Scenario::new(state);
    // Lives here, not in a step, so that it cleans up on a panic in any step; the offline
    // step records in it the member it stops.
    let mut guard = Guard {
        socket: s.first().socket.clone(),
        stopped: None,
        pools: vec![s.pool_name.clone(), s.half_pool.clone()],
        networks: vec![s.net_name.clone(), s.engine_net.clone()],
        projects: vec![s.project.clone()],
    };
    step_async("1 detection", detection(&s)).await;
    step_async("2 pool the cluster way", pool_the_cluster_way(&s)).await;
    step_async("3 global key per member", global_key_is_refused(&s)).await;
    step_async("4 pending pool", pending_pool_is_completed(&s)).await;
    step_async("5 bridge the cluster way", bridge_the_cluster_way(&s)).await;
    step_async("6 engine network", engine_network_takes_the_cluster_way(&s)).await;
    step_async("7 placement", placement_is_recorded_and_kept(&s)).await;
    let stack = step_async("8 engine install", engine_install(&s)).await;
    let monitoring = step_async("9 monitoring", whole_cluster_monitoring(&s)).await;
    let victim = step_async("10 member offline", member_down(&s, &mut guard, &stack)).await;
    step_async("11 member back", member_up(&s, &mut guard, &victim, stack)).await;
    let grown = step_async("12 member joins", member_joins(&s)).await;
    step_async("13 newcomer", newcomer_monitored(&s, monitoring, &grown)).await;
    step_async("14 placement stays", placement_stays(&s)).await;
    step_async("15 cleanup", guard_removes_what_was_made(&s, guard)).await;
}

/// What the steps of the cluster scenario share: the cluster as `up.sh` recorded it, a
/// client on its first member, the member names, the names of what the test creates, and
/// the start (for the timings it prints).
struct Scenario {
    state: ClusterState,
    client: Client,
    names: Vec<String>,
    pool_name: String,
    half_pool: String,
    net_name: String,
    engine_net: String,
    project: String,
    t0: Instant,
}

impl Scenario {
    fn new(state: ClusterState) -> Scenario {
        let t0 = Instant::now();
        let client = Client::unix_at(&state.members[0].socket).expect("client");
        let names: Vec<String> = state.members.iter().map(|m| m.name.clone()).collect();
        Scenario {
            client,
            names,
            pool_name: format!("{}-tpool", state.prefix),
            half_pool: format!("{}-thalf", state.prefix),
            net_name: format!("{}tbr", state.prefix.replace('-', "")),
            engine_net: format!("{}tbe", state.prefix.replace('-', "")),
            project: format!("{}-tatlas", state.prefix),
            state,
            t0,
        }
    }

    fn first(&self) -> &Member {
        &self.state.members[0]
    }

    /// The config the checks read: the test's project on the test's (complete) pool.
    fn config(&self) -> Config {
        let mut config = Config::builtin();
        config.incus.storage_pool = self.pool_name.clone();
        config.incus.project = self.project.clone();
        config
    }
}

/// Detection: every member of the state file, ONLINE, with roles; then each member's
/// metrics address.
async fn detection(s: &Scenario) {
    let Scenario { client, names, .. } = s;
    let first = s.first();
    let info = wait_for(client, Duration::from_secs(30), "all members online", |i| {
        i.members.iter().all(|m| m.is_online())
    })
    .await;
    assert!(info.clustered);
    assert_eq!(info.local, first.name);
    assert_eq!(info.member_names(), *names);
    assert!(names.len() >= 3, "{names:?}");
    assert!(
        info.members
            .iter()
            .any(|m| m.roles.iter().any(|r| r == "database-leader")),
        "{:?}",
        info.members
    );
    assert!(
        info.groups
            .iter()
            .any(|g| g.name == "default" && g.members == *names)
    );
    eprintln!("detection ok after {:?}", s.t0.elapsed());
    member_addresses(client, &s.state, &info).await;
    eprintln!("member addresses ok after {:?}", s.t0.elapsed());
}

/// A dir pool named `name`, nothing else set (as the steps create their pools).
fn test_pool(name: &str) -> StoragePool {
    StoragePool {
        name: name.to_string(),
        driver: "dir".into(),
        ..StoragePool::default()
    }
}

/// A dir pool the cluster way, then again: the second run only reads.
async fn pool_the_cluster_way(s: &Scenario) {
    let Scenario {
        client,
        names,
        pool_name,
        ..
    } = s;
    let pool = test_pool(pool_name);
    let done = client
        .create_storage_pool_clustered(&pool, names, &BTreeMap::new())
        .await
        .expect("pool, cluster way");
    assert_eq!(done.defined_on, *names);
    assert!(done.created);
    let got = client
        .get_storage_pool(pool_name)
        .await
        .expect("pool")
        .value;
    assert_eq!(got.status, "Created");
    let mut locs = got.locations.clone();
    locs.sort();
    assert_eq!(locs, *names);
    for m in names {
        let per = client
            .on_target(Some(m))
            .get_storage_pool(pool_name)
            .await
            .expect("pool on member")
            .value;
        assert!(
            per.config["source"].contains(&format!("/{m}/var/storage-pools/{pool_name}")),
            "{m}: {:?}",
            per.config
        );
    }
    let writes = client.writes();
    let again = client
        .create_storage_pool_clustered(&pool, names, &BTreeMap::new())
        .await
        .expect("pool again");
    assert!(again.defined_on.is_empty() && !again.created, "{again:?}");
    assert_eq!(
        client.writes(),
        writes,
        "a converged pool must cost no write"
    );
}

/// A global key where only member keys may go is refused before anything is sent.
async fn global_key_is_refused(s: &Scenario) {
    let Scenario { client, names, .. } = s;
    let writes = client.writes();
    let bad = client
        .create_storage_pool_clustered(
            &test_pool(&s.pool_name),
            names,
            &[(names[0].clone(), map(&[("rsync.bwlimit", "1MB")]))].into(),
        )
        .await
        .expect_err("global key per member");
    assert!(
        bad.to_string()
            .contains("`rsync.bwlimit` is not a member-specific key"),
        "{bad}"
    );
    assert_eq!(client.writes(), writes);
}

/// A pool left pending on one member (an interrupted create): preflight names the members
/// without it; the cluster-way create completes it on exactly those.
async fn pending_pool_is_completed(s: &Scenario) {
    let Scenario {
        client,
        names,
        half_pool,
        ..
    } = s;
    let half = test_pool(half_pool);
    client
        .on_target(Some(&names[0]))
        .create_storage_pool(&half)
        .await
        .expect("pending on the first member");
    let mut config = s.config();
    config.incus.storage_pool = half_pool.clone();
    let problems = check(client, &config).await;
    for m in &names[1..] {
        assert!(
            problems.iter().any(|p| p.contains(&format!(
                "storage pool {half_pool} does not exist on cluster member {m}; create it there (`incus storage create {half_pool} dir --target {m}`"
            ))),
            "{problems:?}"
        );
    }
    assert_eq!(problems.len(), names.len() - 1, "{problems:?}");
    let done = client
        .create_storage_pool_clustered(&half, names, &BTreeMap::new())
        .await
        .expect("finish the pending pool");
    assert_eq!(done.defined_on, names[1..].to_vec());
    assert!(done.created);
    let problems = check(client, &s.config()).await;
    assert!(problems.is_empty(), "{problems:?}");
    eprintln!("pools ok after {:?}", s.t0.elapsed());
}

/// A bridge the cluster way; its address is global, so every member has the same gateway
/// (on its own bridge, inside its own namespace). Again: the second run only reads.
async fn bridge_the_cluster_way(s: &Scenario) {
    let Scenario {
        client,
        names,
        net_name,
        ..
    } = s;
    let net = Network::bridge(
        net_name,
        map(&[
            ("ipv4.address", "10.231.77.1/24"),
            ("ipv4.nat", "false"),
            ("ipv6.address", "none"),
        ]),
    );
    let done = client
        .create_network_clustered(&net, names, &BTreeMap::new())
        .await
        .expect("network, cluster way");
    assert_eq!(done.defined_on, *names);
    let got = client
        .in_project("default")
        .get_network(net_name)
        .await
        .expect("network")
        .value;
    assert_eq!(got.status, "Created");
    assert_eq!(got.config["ipv4.address"], "10.231.77.1/24");
    assert_eq!(got.locations.len(), names.len());
    let writes = client.writes();
    let again = client
        .create_network_clustered(&net, names, &BTreeMap::new())
        .await
        .expect("network again");
    assert!(again.defined_on.is_empty() && !again.created, "{again:?}");
    assert_eq!(
        client.writes(),
        writes,
        "a converged network must cost no write"
    );
}

/// The engine's network create takes the cluster way by itself on a cluster.
async fn engine_network_takes_the_cluster_way(s: &Scenario) {
    let Scenario {
        client,
        names,
        engine_net,
        ..
    } = s;
    let plain = Network::bridge(
        engine_net,
        map(&[("ipv4.address", "10.231.78.1/24"), ("ipv6.address", "none")]),
    );
    cluster::create_network(&client.in_project("default"), &plain)
        .await
        .expect("engine network create on a cluster");
    let got = client
        .in_project("default")
        .get_network(engine_net)
        .await
        .expect("engine network")
        .value;
    assert!(
        got.status == "Created" && got.locations.len() == names.len(),
        "{got:?}"
    );
    eprintln!("networks ok after {:?}", s.t0.elapsed());
}

/// Placement: chosen once, recorded in the project, read back on the next run, also when
/// asked through another member; instances then land where it says.
async fn placement_is_recorded_and_kept(s: &Scenario) {
    let Scenario { client, state, .. } = s;
    let (first, config) = (s.first(), s.config());
    client
        .create_project(&Project::new(&s.project))
        .await
        .expect("project");
    let p = placement(client, &config).await;
    assert_eq!(p.default_member.as_deref(), Some(first.name.as_str()));
    assert!(p.record);
    cluster::record(client, &config, &p).await.expect("record");
    let stored = client.get_project(&s.project).await.expect("project").value;
    assert_eq!(stored.config[KEY_PLACEMENT_MEMBER], first.name);
    // Asked through another member now: the stack stays where it was put.
    let other = Client::unix_at(&state.members[1].socket).expect("second member client");
    let other_info = detect(&other).await.expect("detect via member 2");
    assert_eq!(other_info.local, state.members[1].name);
    let p2: Placement = placement(&other, &config).await;
    assert!(!p2.record);
    assert_eq!(
        p2.target_for("grafana01"),
        Some(Target::Member(first.name.clone()))
    );
    let writes = other.writes();
    cluster::record(&other, &config, &p2)
        .await
        .expect("record again");
    assert_eq!(other.writes(), writes);
    instances_land_where_placed(client, &state.prefix, &s.project, &s.pool_name, &s.names).await;
    eprintln!("placement ok after {:?}", s.t0.elapsed());
}

/// The engine installs a stack on the cluster (see [`engine_install_on_the_cluster`]); it
/// stays for the offline-member steps.
async fn engine_install(s: &Scenario) -> ClusterStack {
    let stack = engine_install_on_the_cluster(&s.client, &s.pool_name, &s.net_name, &s.names).await;
    eprintln!(
        "engine install on the cluster ok after {:?}",
        s.t0.elapsed()
    );
    stack
}

/// Monitoring of the whole cluster: an exporter per member, every member up and logging to
/// Loki. It stays for the join.
async fn whole_cluster_monitoring(s: &Scenario) -> Monitoring {
    let monitoring = Monitoring::install(&s.client, &s.pool_name, &s.net_name, s.first()).await;
    monitoring.every_member_is_up(&s.names).await;
    monitoring
        .every_member_logs_to_loki(&s.client, &s.names)
        .await;
    eprintln!("whole-cluster monitoring ok after {:?}", s.t0.elapsed());
    monitoring
}

/// One member goes down: the cluster marks it OFFLINE and preflight names it (and the
/// stack's instance on it). A clean shutdown, not SIGSTOP: after a SIGCONT the other
/// members' API stalled for ~2.5 min in 3 of 7 runs (see tests/cluster/README.md).
/// Records the stopped member in `guard`, which starts it again if a later step fails.
async fn member_down(s: &Scenario, guard: &mut Guard, stack: &ClusterStack) -> Member {
    let Scenario { client, state, .. } = s;
    let victim = state.members.last().expect("a member").clone();
    run_script("member.sh", &[&state.prefix, "stop", &victim.name]);
    guard.stopped = Some((state.prefix.clone(), victim.name.clone()));
    let stopped_at = Instant::now();
    wait_for(client, Duration::from_secs(60), "member offline", |i| {
        i.member(&victim.name).is_some_and(|m| !m.is_online())
    })
    .await;
    eprintln!(
        "{} seen offline {:?} after its shutdown",
        victim.name,
        stopped_at.elapsed()
    );
    let problems = check(client, &s.config()).await;
    assert!(
        problems.iter().any(|p| p
            .starts_with(&format!("cluster member {} is OFFLINE", victim.name))
            && p.contains("start its incusd again")),
        "{problems:?}"
    );
    stack.while_member_is_down(client, &victim.name).await;
    victim
}

/// The member is started again: every member ONLINE, the stack converges with its data and
/// is destroyed.
async fn member_up(s: &Scenario, guard: &mut Guard, victim: &Member, stack: ClusterStack) {
    let client = &s.client;
    run_script("member.sh", &[&s.state.prefix, "start", &victim.name]);
    guard.stopped = None;
    wait_for(client, Duration::from_secs(60), "member back online", |i| {
        i.members.iter().all(|m| m.is_online())
    })
    .await;
    stack.after_member_is_back(client).await;
    eprintln!("offline member ok after {:?}", s.t0.elapsed());
}

/// The member `add-member.sh` added last.
fn newcomer(grown: &ClusterState) -> &str {
    &grown.members.last().expect("new member").name
}

/// A member joins later: it shows up ONLINE and got the pool and the bridge on joining;
/// preflight has nothing to say. Returns the grown cluster.
async fn member_joins(s: &Scenario) -> ClusterState {
    let Scenario { client, names, .. } = s;
    run_script("add-member.sh", &[&s.state.prefix]);
    let grown = read_state(&s.state.path);
    let newcomer = newcomer(&grown).to_string();
    assert_eq!(grown.members.len(), names.len() + 1);
    let info = wait_for(client, Duration::from_secs(30), "new member online", |i| {
        i.members.len() == names.len() + 1 && i.members.iter().all(|m| m.is_online())
    })
    .await;
    assert!(info.member(&newcomer).is_some());
    let got = client
        .get_storage_pool(&s.pool_name)
        .await
        .expect("pool")
        .value;
    assert!(got.locations.contains(&newcomer), "{:?}", got.locations);
    let got = client
        .in_project("default")
        .get_network(&s.net_name)
        .await
        .expect("network")
        .value;
    assert!(got.locations.contains(&newcomer), "{:?}", got.locations);
    assert!(check(client, &s.config()).await.is_empty());
    grown
}

/// Monitoring follows: a re-run adds the newcomer's exporter and its scrape target, and
/// changes nothing else.
async fn newcomer_monitored(s: &Scenario, monitoring: Monitoring, grown: &ClusterState) {
    monitoring
        .member_added(&s.client, newcomer(grown), grown)
        .await;
    eprintln!("new member monitored after {:?}", s.t0.elapsed());
}

/// The recorded placement does not move because a member arrived.
async fn placement_stays(s: &Scenario) {
    let p3 = placement(&s.client, &s.config()).await;
    assert_eq!(p3.default_member.as_deref(), Some(s.first().name.as_str()));
    assert!(!p3.record);
    eprintln!("join ok after {:?}", s.t0.elapsed());
}

/// The guard, dropped, deletes what the test made: the pool is gone (asked with a fresh
/// client).
async fn guard_removes_what_was_made(s: &Scenario, guard: Guard) {
    drop(guard);
    let c = Client::unix_at(&s.first().socket).expect("client");
    assert!(
        c.get_storage_pool(&s.pool_name)
            .await
            .optional()
            .expect("get")
            .is_none()
    );
}

/// A busybox image (unified tarball) small enough to copy between members quickly.
fn tiny_image(dir: &Path) -> PathBuf {
    BusyboxImage::bare(dir, "atlas cluster test").tarball(&dir.join("image.tar"))
}

/// The engine itself on the cluster: networks the cluster way, every instance and its
/// volumes on the member the placement gives (two pinned elsewhere by the config), healthy
/// through probes run inside the containers (their bridges exist only in the members'
/// namespaces); a re-run plans nothing and writes nothing. The stack stays for the
/// offline-member part, then [`ClusterStack::after_member_is_back`] destroys it.
async fn engine_install_on_the_cluster(
    client: &Client,
    pool: &str,
    external: &str,
    names: &[String],
) -> ClusterStack {
    let env = crate::engine::Env::new(client, 7).await;
    let mut cfg = env.config("");
    cfg.incus.storage_pool = pool.to_string();
    cfg.incus.external_network = external.to_string();
    let pinned = names[1].clone();
    let last = names.last().expect("members").clone();
    cfg.instances.get_mut("caddy01").expect("caddy01").placement =
        Some(Pin::Member(pinned.clone()));
    // On the member the offline part stops.
    cfg.instances
        .get_mut("mosquitto01")
        .expect("mosquitto01")
        .placement = Some(Pin::Member(last.clone()));
    env.project_with_images(client, &cfg).await;
    let pc = client.in_project(&cfg.incus.project);

    let e = crate::engine::engine(client, &cfg, None).await;
    let report = e.plan().await.expect("plan on the cluster");
    let placement: BTreeMap<String, String> = report.placement.iter().cloned().collect();
    assert_eq!(
        placement["caddy01"],
        format!("member {pinned}"),
        "{placement:?}"
    );
    assert_eq!(
        placement["alertmanager01"],
        format!("member {} (chosen now, recorded)", names[0]),
        "{placement:?}"
    );
    assert!(
        report
            .to_string()
            .contains(&format!("@ caddy01 on member {pinned}")),
        "plan shows the placement: {report}"
    );
    let stack = ClusterStack {
        env,
        cfg: cfg.clone(),
    };
    if let Err(err) = e.apply(&report).await {
        stack.destroy(client).await;
        panic!("install on the cluster: {err}");
    }
    let stored = client
        .get_project(&cfg.incus.project)
        .await
        .expect("project")
        .value;
    assert_eq!(stored.config[KEY_PLACEMENT_MEMBER], names[0]);
    let mut location = BTreeMap::new();
    for (name, _) in cfg.enabled_instances() {
        let i = pc.get_instance(name).await.expect("instance").value;
        let want = match name {
            "caddy01" => &pinned,
            "mosquitto01" => &last,
            _ => &names[0],
        };
        assert_eq!(&i.location, want, "{name}");
        assert_eq!(i.status, "Running", "{name}");
        location.insert(name.to_string(), i.location);
    }
    let volumes = pc.volumes(pool).await.expect("volumes");
    assert!(!volumes.is_empty());
    for v in &volumes {
        let owner = v.name.strip_suffix("-data").and_then(|n| location.get(n));
        let owner = owner.unwrap_or_else(|| panic!("volume {} of no instance", v.name));
        assert_eq!(
            &v.location, owner,
            "volume {} sits with its instance",
            v.name
        );
    }

    // Converged: nothing to do, and doing it writes nothing.
    let (w0, p0) = (client.writes(), client.probes());
    let e = crate::engine::engine(client, &cfg, None).await;
    let again = e.plan().await.expect("plan again");
    assert!(!again.has_changes(), "a converged cluster install: {again}");
    e.apply(&again).await.expect("re-run");
    assert_eq!(
        client.writes(),
        w0,
        "a converged re-run on the cluster writes nothing"
    );
    assert!(
        client.probes() > p0,
        "the re-run still health-gates every instance, inside it"
    );
    // Data on the member that is about to go down.
    crate::engine::sh(&pc, "mosquitto01", "echo kept > /mosquitto/data/marker").await;
    stack
}

/// Prometheus and node-exporter from the fixture images (built by the engine from the local
/// registry, imported into the cluster): one exporter per member, scraped at the member's
/// address, labelled by member.
struct Monitoring {
    #[allow(dead_code)]
    env: crate::engine::Env,
    /// The config as written, before the per-member expansion.
    base: Config,
    cache: tempfile::TempDir,
    /// Where curl runs to ask Prometheus: the first member's network namespace.
    first: Member,
}

impl Monitoring {
    async fn install(client: &Client, pool: &str, external: &str, first: &Member) -> Monitoring {
        let env = crate::engine::Env::new(client, 8).await;
        let mut base = env.config("");
        base.incus.storage_pool = pool.to_string();
        base.incus.external_network = external.to_string();
        base.node_exporter.follow_host_mounts = false;
        // Incus' own metrics too (each member on its cluster address), and its logs to Loki
        // (published on its member's address, where every member ships).
        base.integrations.incus_metrics = true;
        base.integrations.incus_loki = true;
        for (name, on) in [
            ("prometheus01", true),
            ("node-exporter01", true),
            ("loki01", true),
            ("caddy01", false),
            ("mosquitto01", false),
        ] {
            base.instances.get_mut(name).expect(name).enabled = on;
        }
        let m = Monitoring {
            env,
            base,
            cache: tempfile::tempdir().expect("tempdir"),
            first: first.clone(),
        };
        atlas_install::engine::ensure_project(client, &m.base)
            .await
            .expect("project");
        let (w, _) = m.run(client).await;
        assert!(w > 0);
        // Converged: nothing to do, and doing it writes nothing.
        let (w, changed) = m.run(client).await;
        assert_eq!(
            (w, changed.len()),
            (0, 0),
            "converged monitoring: {changed:?}"
        );
        m
    }

    /// plan + apply with the fixture registry as image source; the writes and what the
    /// plan changed. The engine reads the deployment (one exporter per member) itself.
    async fn run(&self, client: &Client) -> (u64, Vec<String>) {
        let mut e = crate::engine::engine(client, &self.base, None).await;
        e.options.health_timeout = Duration::from_secs(120);
        e.options.supply = Some(atlas_install::supply::ImageSupply {
            registry_mirror: Some(crate::common::FixtureRegistry.to_string()),
            download_mirror: None,
            insecure_registries: Vec::new(),
            cache_dir: self.cache.path().to_path_buf(),
            lock: atlas_image::lock::ImagesLock::embedded().expect("lock"),
            layout: None,
        });
        let w0 = client.writes();
        let report = e.plan().await.expect("plan monitoring");
        let changed = report.plan.changed();
        if let Err(err) = e.apply(&report).await {
            self.destroy(client).await;
            panic!("monitoring install on the cluster: {err}");
        }
        (client.writes() - w0, changed)
    }

    /// `up{job=...}` by member, asked from inside the first member's namespace.
    fn up_by_member(&self, job: &str) -> BTreeMap<String, String> {
        let query = format!("query=up{{job=\"{job}\"}}");
        let v = self.get(
            "prometheus01",
            9090,
            "/api/v1/query",
            &["--data-urlencode", &query],
        );
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["metric"]["member"].as_str().unwrap_or("?").to_string(),
                    r["value"][1].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    }

    /// GET on an instance's management address from inside the first member's namespace.
    fn get(&self, instance: &str, port: u16, path: &str, args: &[&str]) -> serde_json::Value {
        let ip = self.base.instances[instance]
            .nics
            .iter()
            .find_map(|n| n.ipv4)
            .expect("address");
        let out = Command::new("nsenter")
            .args([
                "-t",
                &self.first.holder_pid,
                "-n",
                "--",
                "curl",
                "-sf",
                "--max-time",
                "5",
            ])
            .arg(format!("http://{ip}:{port}{path}"))
            .args(args)
            .output()
            .expect("curl in the member namespace");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Every member's Incus ships its events to Loki: a restart of the exporter on each
    /// member makes lifecycle events there, and Loki then holds a stream from each member
    /// (`location`, the label Incus puts on every event).
    async fn every_member_logs_to_loki(&self, client: &Client, members: &[String]) {
        let pc = client.in_project(&self.base.incus.project);
        for m in members {
            let name = per_member_name("node-exporter01", m);
            pc.set_instance_state(&name, atlas_install::incus::StateAction::Restart, 30, true)
                .await
                .unwrap_or_else(|e| panic!("restart {name}: {e}"));
        }
        let want: Vec<String> = members.to_vec();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.get("loki01", 3100, "/loki/api/v1/label/location/values", &[]);
            let mut got: Vec<String> = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect();
            got.sort();
            if want.iter().all(|m| got.contains(m)) {
                return;
            }
            if Instant::now() > deadline {
                panic!("Loki has streams from {got:?}, want every member {want:?}");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Waits (scrapes every 15 s) until each of `members` reports up == 1, for its
    /// node-exporter and for its Incus metrics.
    async fn every_member_is_up(&self, members: &[String]) {
        let want: BTreeMap<String, String> = members
            .iter()
            .map(|m| (m.clone(), "1".to_string()))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(90);
        for job in ["node-exporter", "incus"] {
            loop {
                let got = self.up_by_member(job);
                if got == want {
                    break;
                }
                if Instant::now() > deadline {
                    panic!("up{{job=\"{job}\"}} by member: {got:?}, want {want:?}");
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
        }
    }

    async fn member_added(self, client: &Client, newcomer: &str, grown: &ClusterState) {
        let (_, mut changed) = self.run(client).await;
        changed.sort();
        let exporter = per_member_name("node-exporter01", newcomer);
        assert_eq!(
            changed,
            vec![
                format!("instance {exporter}"),
                "instance prometheus01".to_string()
            ],
            "exactly the newcomer's exporter, and Prometheus' scrape targets"
        );
        let names: Vec<String> = grown.members.iter().map(|m| m.name.clone()).collect();
        self.every_member_is_up(&names).await;
        self.every_member_logs_to_loki(client, &names).await;
        self.destroy(client).await;
    }

    async fn destroy(&self, client: &Client) {
        let cfg = &self.base;
        let plan = atlas_install::engine::destroy::plan(client, cfg, true)
            .await
            .expect("destroy plan");
        atlas_install::engine::destroy::apply(client, cfg, &plan, &NoProgress)
            .await
            .expect("destroy monitoring");
    }
}

/// The stack [`engine_install_on_the_cluster`] left installed.
struct ClusterStack {
    /// Keeps the test's names (and the host-side cleanup of nothing) alive.
    #[allow(dead_code)]
    env: crate::engine::Env,
    cfg: Config,
}

impl ClusterStack {
    /// A member is down: preflight (so `plan` and `install`) names it and the instances on
    /// it, refuses, and changes nothing.
    async fn while_member_is_down(&self, client: &Client, member: &str) {
        let info = detect(client).await.expect("detect");
        let down = cluster::offline_members(client, &self.cfg, &info)
            .await
            .expect("offline members");
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(down[0].member, member);
        assert_eq!(down[0].instances, vec!["mosquitto01".to_string()]);
        let w0 = client.writes();
        let mut e = crate::engine::engine(client, &self.cfg, None).await;
        e.options.ignore_preflight = false;
        let err = e
            .plan()
            .await
            .expect_err("plan with a member down")
            .to_string();
        assert!(
            err.contains(&format!("cluster member {member} is OFFLINE"))
                && err.contains(&format!("On {member}: mosquitto01"))
                && err.contains("nothing is changed or destroyed"),
            "{err}"
        );
        assert_eq!(
            client.writes(),
            w0,
            "nothing written while a member is down"
        );
    }

    /// Back online: the instance on it is still there with its data, and an install run
    /// converges; then the stack is destroyed.
    async fn after_member_is_back(self, client: &Client) {
        let pc = client.in_project(&self.cfg.incus.project);
        let e = crate::engine::engine(client, &self.cfg, None).await;
        let report = e.plan().await.expect("plan after the member is back");
        assert!(
            !report.plan.has_changes(),
            "nothing to recreate after the member is back: {report}"
        );
        e.apply(&report)
            .await
            .expect("install after the member is back");
        let marker = crate::engine::sh(&pc, "mosquitto01", "cat /mosquitto/data/marker").await;
        assert_eq!(marker, "kept\n", "the data on the member that was down");
        self.destroy(client).await;
        assert!(
            client
                .get_project(&self.cfg.incus.project)
                .await
                .optional()
                .expect("get")
                .is_none(),
            "destroy removed the project"
        );
    }

    async fn destroy(&self, client: &Client) {
        let plan = atlas_install::engine::destroy::plan(client, &self.cfg, true)
            .await
            .expect("destroy plan");
        atlas_install::engine::destroy::apply(client, &self.cfg, &plan, &NoProgress)
            .await
            .expect("destroy on the cluster");
    }
}

/// Instances (and their volumes) go where `target_for` says: a pinned member, a group, the
/// recorded default member.
async fn instances_land_where_placed(
    client: &Client,
    prefix: &str,
    project: &str,
    pool: &str,
    names: &[String],
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tarball = tiny_image(dir.path());
    let pc = client.in_project(project);
    let file = tokio::fs::File::open(&tarball).await.expect("open");
    let alias = format!("{prefix}/tiny");
    pc.import_image(
        reqwest::Body::from(file),
        &ImageImport {
            aliases: vec![alias.clone()],
            ..ImageImport::default()
        },
    )
    .await
    .expect("import image");

    let mut config = Config::builtin();
    config.incus.project = project.to_string();
    config.incus.storage_pool = pool.to_string();
    let pinned = names[1].clone();
    config
        .instances
        .get_mut("grafana01")
        .expect("grafana01")
        .placement = Some(Pin::Member(pinned.clone()));
    config
        .instances
        .get_mut("loki01")
        .expect("loki01")
        .placement = Some(Pin::Group("default".into()));
    let placement = placement(client, &config).await;
    let default_member = placement.default_member.clone().expect("a default member");

    for (atlas_name, with_volume) in [("grafana01", true), ("loki01", false), ("caddy01", true)] {
        let target = placement
            .target_for(atlas_name)
            .expect("clustered: a target")
            .query();
        let name = format!("{prefix}-{}", atlas_name.trim_end_matches("01"));
        let mut create = InstanceCreate::container(&name, InstanceSource::alias(&alias));
        create.devices.insert(
            "root".into(),
            map(&[("type", "disk"), ("path", "/"), ("pool", pool)]),
        );
        if with_volume {
            // Local pools: the volume must be on the member the instance goes to.
            let vol = format!("{name}-data");
            pc.on_target(Some(&target))
                .create_volume(pool, &StorageVolume::filesystem(&vol, BTreeMap::new()))
                .await
                .expect("volume on the target member");
            create.devices.insert(
                "data".into(),
                map(&[
                    ("type", "disk"),
                    ("path", "/data"),
                    ("pool", pool),
                    ("source", &vol),
                ]),
            );
        }
        pc.on_target(Some(&target))
            .create_instance(&create)
            .await
            .unwrap_or_else(|e| panic!("create {name} on {target}: {e}"));
        let got = pc.get_instance(&name).await.expect("instance").value;
        let expected = match atlas_name {
            "grafana01" => pinned.as_str(),
            "caddy01" => default_member.as_str(),
            // A group: Incus picks one of its members.
            _ => {
                assert!(names.contains(&got.location), "{name} on {}", got.location);
                got.location.as_str()
            }
        };
        assert_eq!(got.location, expected, "{name} (target {target})");
    }
}

/// On the standalone incusd of this machine the cluster code stays out of the way: not
/// clustered, no problems, no placement, and networks are created the plain way.
#[tokio::test]
async fn standalone_server_is_not_a_cluster() {
    let c = crate::common::client_or_skip!();
    let info = detect(&c).await.expect("detect");
    assert_eq!(info, ClusterInfo::default());
    let mut config = Config::builtin();
    config.incus.project = format!("t-cl-{}-none", std::process::id());
    assert!(check(&c, &config).await.is_empty());
    let p = placement(&c, &config).await;
    assert_eq!(p.target_for("grafana01"), None);

    let name = format!("tcl{}", std::process::id() % 100_000);
    let root = c.in_project("default");
    let net = Network::bridge(
        &name,
        map(&[
            ("ipv4.address", "10.233.41.1/24"),
            ("ipv4.nat", "false"),
            ("ipv6.address", "none"),
        ]),
    );
    let made = cluster::create_network(&root, &net).await;
    let got = root.get_network(&name).await.optional();
    let _ = root.delete_network(&name).await;
    made.expect("plain network create");
    let got = got.expect("get").expect("network exists").value;
    assert_eq!(got.status, "Created");
    assert_eq!(got.config["ipv4.address"], "10.233.41.1/24");
}

/// `core.metrics_address` per member (a member-specific key): set on each, idempotent, and
/// the member then serves metrics there, seen over HTTPS from inside the hub namespace.
async fn member_addresses(client: &Client, state: &ClusterState, info: &ClusterInfo) {
    let mut wanted = Vec::new();
    for m in &info.members {
        let host = member_host(m).expect("member address");
        let want = map(&[("core.metrics_address", &format!("{host}:8444"))]);
        assert!(
            cluster::ensure_member_config(client, &m.server_name, &want)
                .await
                .expect("set metrics address")
        );
        wanted.push((m.server_name.clone(), host, want));
    }
    let writes = client.writes();
    for (member, host, want) in &wanted {
        assert!(
            !cluster::ensure_member_config(client, member, want)
                .await
                .expect("again")
        );
        let got = client
            .on_target(Some(member))
            .server()
            .await
            .expect("server")
            .value;
        assert_eq!(got.config["core.metrics_address"], format!("{host}:8444"));
        // Only this member has it: the key is member-specific.
        assert_eq!(got.environment.server_name, *member);
        // The client call runs inside the hub namespace: these addresses exist only there.
        let out = Command::new("nsenter")
            .args([
                "-t",
                &state.hub_pid,
                "-n",
                "--",
                "curl",
                "-sk",
                "-o",
                "/dev/null",
            ])
            .args(["-w", "%{http_code}", "--max-time", "10"])
            .arg(format!("https://{host}:8444/1.0/metrics"))
            .output()
            .expect("curl in the hub namespace");
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        // Untrusted client: 403, but an Incus answer from that member's metrics listener.
        assert_eq!(code, "403", "{member} metrics at {host}:8444");
    }
    assert_eq!(client.writes(), writes);
    for (member, _, _) in &wanted {
        let unset = map(&[("core.metrics_address", "")]);
        cluster::ensure_member_config(client, member, &unset)
            .await
            .expect("unset");
    }
}
