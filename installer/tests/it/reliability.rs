//! Faults an unlucky operator meets, against the real incusd: ranges the host already routes,
//! a daemon that never answers, two runs at once, a pool without room. Each is refused (or
//! waited for) before the first write, with a message that says what and how to fix it, and
//! the host's Incus is left exactly as it was (`HostState`).

use std::path::PathBuf;
use std::process::{Command, Output};

use ipnet::Ipv4Net;

use crate::common::hermetic::{AtlasNames, HostState, free_subnets};
use crate::common::{atlas, client_or_skip, free_port, stderr};

/// One test's install: its own names, ranges and external bridge, a config file using them,
/// and a guard that removes whatever the test made (destroy, then the bridges), on panic too.
struct Setup {
    names: AtlasNames,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(tag: &str) -> Setup {
        let s = Setup {
            names: AtlasNames::new(tag),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        s.write("");
        s
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("atlas.toml")
    }

    /// atlas.toml: these names, host ports nobody uses, no server wiring, then `extra`.
    fn write(&self, extra: &str) {
        let t = format!(
            "{}\n[caddy]\nhttp_port = {}\nhttps_port = {}\nlisten_address = \"127.0.0.1\"\n\n\
             [mosquitto]\nmqtt_port = {}\nlisten_address = \"127.0.0.1\"\n\n\
             [node_exporter]\nfollow_host_mounts = false\n\n\
             [integrations]\nincus_loki = false\nincus_metrics = false\n{extra}",
            self.names.toml(),
            free_port(),
            free_port(),
            free_port()
        );
        std::fs::write(self.config(), t).expect("write config");
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = atlas();
        c.arg("-c")
            .arg(self.config())
            .args(["--progress", "plain"])
            .args(args)
            .env("ATLAS_CACHE_DIR", self.dir.path().join("cache"));
        c
    }

    fn atlas(&self, args: &[&str]) -> Output {
        let o = self.command(args).output().expect("run atlas-install");
        eprintln!("atlas-install {}: {}", args.join(" "), o.status);
        o
    }

    /// `install` (host size and images aside) that must be refused: its stderr.
    fn refused_install(&self) -> String {
        let o = self.atlas(&[
            "install",
            "--yes",
            "--ignore-preflight",
            "--existing-images",
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        err
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let o = self.atlas(&["destroy", "--delete-volumes", "--yes"]);
        if !o.status.success() {
            eprintln!("cleanup: destroy failed: {}", stderr(&o));
        }
        for n in self.names.bridge_names() {
            crate::common::hermetic::delete_network(&n);
        }
    }
}

/// A Linux bridge with an address, made with `ip` (not Incus): what an operator's own bridge,
/// a VPN or a docker network looks like. Removed on drop.
struct HostLink(String);

impl HostLink {
    fn create(name: &str, cidr: Ipv4Net) -> HostLink {
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().expect("ip");
            assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
        };
        ip(&["link", "add", name, "type", "bridge"]);
        let link = HostLink(name.to_string());
        ip(&["addr", "add", &cidr.to_string(), "dev", name]);
        ip(&["link", "set", name, "up"]);
        link
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// The subnet of the host's uplink: the non-default route on the interface of the default
/// route.
fn uplink_subnet() -> Option<(String, Ipv4Net)> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    let default_iface = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 7 && f[1] == "00000000" && f[7] == "00000000")?[0]
        .to_string();
    atlas_install::engine::preflight::parse_routes(&text)
        .into_iter()
        .find(|r| r.iface == default_iface && r.dest.prefix_len() <= 30)
        .map(|r| (r.iface, r.dest))
}

/// A range already routed on a host interface Incus does not manage, the uplink included, is
/// refused by preflight naming the route; nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_routed_on_host_interfaces_are_refused_before_any_change() {
    let _c = client_or_skip!();
    let _turn = crate::engine::STACKS.lock().await;
    let mut s = Setup::new("rr");
    let before = HostState::read();
    let gateway = |net: Ipv4Net| {
        Ipv4Net::new(
            std::net::Ipv4Addr::from(u32::from(net.network()) + 1),
            net.prefix_len(),
        )
        .expect("net")
    };

    // An operator's bridge (not Incus') holding a range; staging wants the same range.
    let taken = free_subnets(1)[0];
    let link = HostLink::create(&format!("trr{}", std::process::id() % 100_000), taken);
    s.names.networks[2].2 = gateway(taken);
    s.write("");
    let err = s.refused_install();
    assert!(
        err.contains(&format!("host route {} on {}", taken.trunc(), link.0))
            && err.contains("networks.staging.ipv4")
            && err.contains("nothing was changed"),
        "{err}"
    );
    HostState::read().assert_same(&before, "a refused install (host bridge)");

    // The uplink's own subnet.
    if let Some((iface, subnet)) = uplink_subnet() {
        s.names.networks[2].2 = gateway(subnet);
        s.write("");
        let err = s.refused_install();
        assert!(
            err.contains(&format!("host route {subnet} on {iface}")),
            "{err}"
        );
        HostState::read().assert_same(&before, "a refused install (uplink)");
    } else {
        eprintln!("no uplink subnet on this host: that half is not tried");
    }
}

/// A unix socket that accepts every connection and never answers: what a stuck daemon looks
/// like from here. The connections are held (not closed) until the listener's thread ends.
fn silent_socket(path: &std::path::Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
}

/// `status` and `install` against a daemon that never answers fail within the request
/// timeout, naming the daemon and the request it did not answer.
#[test]
fn a_daemon_that_never_answers_is_named_within_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("silent.socket");
    silent_socket(&socket);
    for args in [
        vec!["status"],
        vec!["install", "--yes", "--ignore-preflight"],
    ] {
        let started = std::time::Instant::now();
        let o = atlas()
            .args(["--progress", "plain", "--incus-socket"])
            .arg(&socket)
            .args(&args)
            .env("ATLAS_INCUS__REQUEST_TIMEOUT", "2")
            .env("ATLAS_CACHE_DIR", dir.path().join("cache"))
            .current_dir(dir.path())
            .output()
            .expect("run atlas-install");
        let took = started.elapsed();
        let err = stderr(&o);
        eprintln!("{args:?}: {:.1}s\n{err}", took.as_secs_f64());
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("Incus at unix socket {}", socket.display()))
                && err.contains("did not answer GET /1.0")
                && err.contains("within 2 s")
                && err.contains("incus.request_timeout"),
            "{args:?}: {err}"
        );
        assert!(
            took < std::time::Duration::from_secs(6),
            "{args:?} took {took:?} with a 2 s timeout"
        );
    }
}

/// Deleting a network that meets Incus 6.0's transient "Failed to delete bridge children
/// interfaces" (another bridge's veths going away meanwhile) is tried again, as creating one
/// is, instead of failing destroy half-way.
#[tokio::test]
async fn destroy_retries_the_transient_bridge_error() {
    use crate::common::scripted::{ScriptedIncus, error, sync};
    use atlas_install::engine::resource::{ResourceAddress, ResourceKind};
    let deletes = std::sync::atomic::AtomicUsize::new(0);
    let incus = ScriptedIncus::start(move |method, path| {
        match (method, path.starts_with("/1.0/networks/tbr")) {
            ("GET", true) => sync(serde_json::json!({
                "name": "tbr", "type": "bridge", "managed": true,
                "config": {"user.atlas.managed": "true", "user.atlas.project": "p"}
            })),
            ("DELETE", true) => match deletes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => error(
                    500,
                    "Failed to delete bridge children interfaces: Failed to get interface \"veth1\": no such device",
                ),
                _ => sync(serde_json::Value::Null),
            },
            _ => error(404, "not found"),
        }
    });
    let c = atlas_install::incus::Client::unix_at(&incus.socket).expect("client");
    let addr = ResourceAddress {
        kind: ResourceKind::Network,
        name: "tbr".into(),
        pool: None,
    };
    atlas_install::engine::converge::delete(&c, &c.in_project("p"), &addr, false)
        .await
        .expect("deleted on the second try");
    let deletes: Vec<String> = incus
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("DELETE"))
        .cloned()
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
}

/// Incus refuses an instance update while another operation runs on the instance (seen in
/// the upgrade test: an autorestart's stop still running): "Instance is busy running a "stop"
/// operation", an operation that failed having changed nothing. The client sends the same
/// request again until Incus takes it; any other failure is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_while_the_instance_is_busy_is_sent_again() {
    use crate::common::scripted::{ScriptedIncus, error, sync};
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    const BUSY: &str =
        "Failed to create instance update operation: Instance is busy running a \"stop\" operation";
    let puts = AtomicUsize::new(0);
    let incus = ScriptedIncus::start(move |method, path| {
        let op = |n: usize| format!("op-{n}");
        match method {
            "PUT" if path.starts_with("/1.0/instances/busy?") => {
                let n = puts.fetch_add(1, SeqCst);
                (
                    202,
                    serde_json::json!({
                        "type": "async", "status": "Operation created", "status_code": 100,
                        "operation": format!("/1.0/operations/{}", op(n)),
                        "metadata": {"id": op(n), "status": "Running", "status_code": 103},
                    }),
                )
            }
            "PUT" if path.starts_with("/1.0/instances/broken?") => error(400, "Invalid config"),
            // The first two updates fail as busy, the third is done.
            "GET" if path.starts_with("/1.0/operations/op-") => {
                let busy = !path.starts_with("/1.0/operations/op-2/");
                sync(serde_json::json!({
                    "id": "op", "class": "task", "description": "Updating instance",
                    "status": if busy { "Failure" } else { "Success" },
                    "status_code": if busy { 400 } else { 200 },
                    "err": if busy { BUSY } else { "" },
                }))
            }
            _ => error(404, "not found"),
        }
    });
    let c = atlas_install::incus::Client::unix_at(&incus.socket)
        .expect("client")
        .in_project("p");
    let instance = |name: &str| {
        serde_json::from_value::<atlas_install::incus::Instance>(serde_json::json!({"name": name}))
            .expect("instance")
    };
    c.update_instance(&instance("busy"), None)
        .await
        .expect("updated on the third try");
    let seen = incus.seen.lock().unwrap().clone();
    let puts: Vec<&String> = seen.iter().filter(|r| r.starts_with("PUT")).collect();
    assert_eq!(puts.len(), 3, "{seen:?}");

    let e = c
        .update_instance(&instance("broken"), None)
        .await
        .expect_err("a refused config stays refused");
    assert!(e.to_string().contains("Invalid config"), "{e}");
    let broken = incus
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("PUT /1.0/instances/broken"))
        .count();
    assert_eq!(broken, 1, "sent once");
}

/// An instance's file server (`forkfile`) that breaks under a push, as the stack test saw
/// while `boot.autorestart` restarted a service that exits: "read unix
/// @->/proc/self/fd/77/forkfile.sock: read: connection reset by peer", HTTP 500, nothing
/// written. The client sends the push again, three sends in all; another 500 is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_push_the_file_server_dropped_is_sent_again_three_times_at_most() {
    use crate::common::scripted::{ScriptedIncus, error, sync};
    use atlas_install::incus::FileMeta;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    const DROPPED: &str =
        "read unix @->/proc/self/fd/77/forkfile.sock: read: connection reset by peer";
    let pushes = AtomicUsize::new(0);
    let incus = ScriptedIncus::start(move |method, path| match method {
        // Two drops, then written.
        "POST" if path.starts_with("/1.0/instances/flaky/files?") => {
            match pushes.fetch_add(1, SeqCst) {
                0 | 1 => error(500, DROPPED),
                _ => sync(serde_json::Value::Null),
            }
        }
        "POST" if path.starts_with("/1.0/instances/gone/files?") => error(500, DROPPED),
        "POST" if path.starts_with("/1.0/instances/full/files?") => {
            error(500, "Failed to write file: no space left on device")
        }
        _ => error(404, "not found"),
    });
    let c = atlas_install::incus::Client::unix_at(&incus.socket)
        .expect("client")
        .in_project("p");
    let sent = |name: &str| {
        incus
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(&format!("POST /1.0/instances/{name}/files")))
            .count()
    };
    let push = |name: &'static str| {
        c.push_file(
            name,
            "/etc/a.conf",
            b"a = 1\n".to_vec(),
            FileMeta::new(0, 0, 0o644),
        )
    };
    push("flaky").await.expect("written on the third send");
    assert_eq!(sent("flaky"), 3);
    let e = push("gone").await.expect_err("still dropped");
    assert!(e.is_file_server_hiccup(), "{e}");
    assert_eq!(sent("gone"), 3, "three sends in all");
    let e = push("full").await.expect_err("a full disk stays full");
    assert!(e.to_string().contains("no space left"), "{e}");
    assert_eq!(sent("full"), 1, "sent once");
}

/// A certificate named like ours that no Atlas project records: what `destroy` of earlier
/// versions left behind. Removed on drop.
struct LeftoverCert {
    client: atlas_install::incus::Client,
    fingerprint: String,
}

impl LeftoverCert {
    async fn add(client: &atlas_install::incus::Client) -> LeftoverCert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let der = rcgen::CertificateParams::new(vec![
            atlas_install::engine::wiring::METRICS_CERT_NAME.to_string(),
        ])
        .expect("params")
        .self_signed(&key)
        .expect("cert")
        .der()
        .to_vec();
        let fingerprint = client
            .add_certificate(
                atlas_install::engine::wiring::METRICS_CERT_NAME,
                "metrics",
                &der,
            )
            .await
            .expect("add the leftover certificate");
        LeftoverCert {
            client: client.clone(),
            fingerprint,
        }
    }
}

impl Drop for LeftoverCert {
    fn drop(&mut self) {
        let (c, fp) = (self.client.clone(), self.fingerprint.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(c.delete_certificate(&fp))
                .is_ok()
        })
        .join();
    }
}

/// install wires the server (Incus logging to the stack's Loki, the metrics certificate,
/// core.https_address); `destroy --delete-volumes` undoes all of it before the project that
/// holds the records goes: the host's Incus (server config and trust store included) is
/// exactly as before the install. A metrics certificate an earlier version left behind is
/// named by install and destroy, with the command that removes it, and left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_undoes_the_server_wiring_install_did() {
    let c = client_or_skip!();
    let _turn = crate::engine::STACKS.lock().await;
    let _server = crate::wiring::SERVER_LOCK.lock().await;
    if !crate::engine::have_busybox() {
        return;
    }
    let server = c.server().await.expect("server").value;
    let busy = crate::wiring::busy_server_keys(&server);
    if !busy.is_empty() {
        eprintln!(
            "skipping: server keys {busy:?} are set on the shared daemon (another Atlas install?)"
        );
        return;
    }
    let env = crate::engine::Env::with_wiring(&c, 7).await;
    let leftover = LeftoverCert::add(&c).await;
    let before = HostState::read();

    let cfg = env.config("");
    env.project_with_images(&c, &cfg).await;
    let o = env.atlas(&["install", "--yes"]).output().expect("install");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let wired = c.server().await.expect("server").value;
    assert!(
        !crate::wiring::busy_server_keys(&wired).is_empty()
            && wired.config.contains_key("core.https_address"),
        "install wired the server: {:?}",
        wired.config
    );
    let leftover_note = format!("incus config trust remove {}", leftover.fingerprint);
    assert!(
        err.contains("no Atlas project on this server records adding it")
            && err.contains(&leftover_note),
        "install names the leftover certificate: {err}"
    );

    let o = env
        .atlas(&["destroy", "--delete-volumes", "--yes"])
        .output()
        .expect("destroy");
    let (out, err) = (crate::common::stdout(&o), stderr(&o));
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("- server config core.https_address: set by atlas-install")
            && out.contains("- certificate atlas-prometheus-metrics: trusted by atlas-install"),
        "the plan lists the wiring it undoes: {out}"
    );
    assert!(
        out.contains(&leftover_note),
        "destroy names the leftover: {out}"
    );
    HostState::read().assert_same(&before, "install, then destroy --delete-volumes");
    drop(leftover);
}

/// The lock record of `project` in the default project's config, as JSON, if any.
async fn lock_record(c: &atlas_install::incus::Client, project: &str) -> Option<serde_json::Value> {
    let p = c
        .get_project("default")
        .await
        .expect("default project")
        .value;
    p.config
        .get(&atlas_install::state::keys::lock(project))
        .map(|v| serde_json::from_str(v).expect("lock record is JSON"))
}

/// Removes the lock record of a project from the default project's config on drop (a test
/// that fails half-way must not leave one there).
struct LockKeyGone(String);

impl Drop for LockKeyGone {
    fn drop(&mut self) {
        let key = atlas_install::state::keys::lock(&self.0);
        let _ = Command::new("incus")
            .args(["project", "unset", "default", &key])
            .output();
    }
}

/// A child process killed (-9) and reaped on drop.
use atlas_test_support::process::Reaped as KilledOnDrop;

/// Writes a lock record for `project` as another host would (renewed `age` seconds ago).
async fn foreign_lock(c: &atlas_install::incus::Client, project: &str, age: u64) {
    let now = atlas_install::clock::now_secs();
    let record = serde_json::json!({
        "token": "0123456789abcdef", "command": "install", "host": "elsewhere.example",
        "boot_id": "b", "pid": 4242, "pid_start": 1, "started": now - age, "renewed": now - age,
        "lease_seconds": atlas_install::engine::lock::LEASE.as_secs(),
    });
    let set = std::collections::BTreeMap::from([(
        atlas_install::state::keys::lock(project),
        record.to_string(),
    )]);
    c.set_project_keys("default", &set, &[])
        .await
        .expect("write a foreign lock");
}

/// Two real processes on one project: while an install holds the lock (paused half-way), a
/// second install, a destroy and a `--json` run are refused naming the holder, and one with
/// `--lock-timeout` waits that long first; after the holder is killed -9 the next run takes
/// the lock over at once and converges; a holder on another host counts until its lease runs
/// out. No lock record is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_at_a_time_per_project_and_a_killed_holder_does_not_wedge_it() {
    let c = client_or_skip!();
    let _turn = crate::engine::STACKS.lock().await;
    if !crate::engine::have_busybox() {
        return;
    }
    let env = crate::engine::Env::new(&c, 8).await;
    let _no_record_left = LockKeyGone(env.project.clone());
    let cfg = env.config("");
    env.project_with_images(&c, &cfg).await;

    // The holder: an install paused after its networks (ATLAS_TEST_PAUSE_AT).
    let mut install = env.atlas(&["install", "--yes"]);
    install.env("ATLAS_TEST_PAUSE_AT", "after-networks");
    let mut holder = paused(install, "paused at after-networks");
    let holder = &mut holder.0;
    let pid = holder.id();
    let record = lock_record(&c, &env.project)
        .await
        .expect("the holder's lock");
    assert_eq!(
        (record["pid"].as_u64(), record["command"].as_str()),
        (Some(pid as u64), Some("install"))
    );

    let refused = |args: &[&str]| {
        let started = std::time::Instant::now();
        let o = env.atlas(args).output().expect("run");
        (o, started.elapsed())
    };
    let (o, took) = refused(&["install", "--yes"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "project {} is being changed by another atlas-install run",
            env.project
        )) && err.contains(&format!("atlas-install install (pid {pid} on host "))
            && err.contains("--lock-timeout"),
        "{err}"
    );
    assert!(
        took < std::time::Duration::from_secs(10),
        "refused at once: {took:?}"
    );
    let (o, _) = refused(&["destroy", "--yes"]);
    assert!(
        o.status.code() == Some(1) && stderr(&o).contains(&format!("pid {pid}")),
        "destroy waits its turn too: {}",
        stderr(&o)
    );
    let (o, _) = refused(&["install", "--yes", "--json"]);
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("--json says why on stdout");
    assert_eq!(v["error"], "locked", "{v}");
    assert_eq!(v["holder"]["pid"], pid, "{v}");
    assert_eq!(v["holder"]["command"], "install", "{v}");
    let (o, took) = refused(&["install", "--yes", "--lock-timeout", "4"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("waiting up to 4 s for the lock")
            && took >= std::time::Duration::from_secs(4),
        "waited {took:?}: {}",
        stderr(&o)
    );

    // kill -9: the record stays, but its process is gone; the next run takes over at once.
    holder.kill().expect("kill -9");
    holder.wait().expect("reap");
    assert!(
        lock_record(&c, &env.project).await.is_some(),
        "a killed run cannot release"
    );
    let o = env.atlas(&["install", "--yes"]).output().expect("install");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("taking over the lock of project {}", env.project))
            && err.contains(&format!("its process {pid} on this host is gone")),
        "{err}"
    );
    assert_eq!(lock_record(&c, &env.project).await, None, "released");

    // A holder on another host: held while its lease runs, free once it ran out.
    foreign_lock(&c, &env.project, 5).await;
    let (o, _) = refused(&["install", "--yes"]);
    assert!(
        o.status.code() == Some(1) && stderr(&o).contains("pid 4242 on host elsewhere.example"),
        "{}",
        stderr(&o)
    );
    foreign_lock(&c, &env.project, 600).await;
    let o = env.atlas(&["install", "--yes"]).output().expect("install");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("its lease ran out"), "{}", stderr(&o));
    assert_eq!(lock_record(&c, &env.project).await, None, "released");
}

/// A registry install into a `dir` pool on a 16 MB tmpfs: preflight, knowing the images'
/// sizes from the registry's manifests, refuses before the first write, even with
/// `--ignore-preflight` (which skips host-size recommendations only); nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_install_into_a_pool_without_room_is_refused_before_any_change() {
    let _c = client_or_skip!();
    if !crate::stack::fixtures_ready() {
        return;
    }
    let _turn = crate::engine::STACKS.lock().await;
    let s = Setup::new("rp");
    s.write("\n[images]\ndownload_mirror = \"file:///var/tmp/atlas-test/downloads\"\n");
    let pool = crate::common::hermetic::TinyPool::create("rp", 16);
    let before = HostState::read();
    let o = s
        .command(&[
            "install",
            "--yes",
            "--ignore-preflight",
            "--registry-mirror",
            &crate::stack::REGISTRY,
        ])
        .env("ATLAS_INCUS__STORAGE_POOL", &pool.name)
        .output()
        .expect("install");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("storage pool {} has", pool.name))
            && err.contains("images (unpacked, at least)")
            && err.contains("Nothing was changed"),
        "{err}"
    );
    assert!(
        !err.contains("pulling"),
        "refused before pulling anything: {err}"
    );
    HostState::read().assert_same(&before, "an install refused for want of room");
}

/// A network of this install's name that atlas-install manages for another Atlas project
/// (its `user.atlas.project` key): the refusal names that project and says to leave it, not
/// to remove it (which would break that install); nothing is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_of_another_atlas_install_is_named_as_that_install_s() {
    let _c = client_or_skip!();
    let _turn = crate::engine::STACKS.lock().await;
    let s = Setup::new("ow");
    let name = s.names.networks[4].1.clone();
    let other = format!("t-other-{}", std::process::id());
    let o = Command::new("incus")
        .args(["network", "create", &name])
        .arg(format!("ipv4.address={}", free_subnets(1)[0]))
        .args([
            "ipv4.nat=false",
            "ipv6.address=none",
            "user.atlas.managed=true",
        ])
        .arg(format!("user.atlas.project={other}"))
        .output()
        .expect("incus");
    assert!(o.status.success(), "{}", stderr(&o));
    let before = HostState::read();
    let err = s.refused_install();
    assert!(
        err.contains(&format!(
            "network {name} (atlas-install manages it for the Atlas project {other}, whose install uses it: leave it"
        )),
        "{err}"
    );
    assert!(
        !err.contains("remove it") && !err.contains("Rename or remove"),
        "no advice to remove another install's network: {err}"
    );
    HostState::read().assert_same(&before, "a refused install (another install's network)");
}

/// Spawns `cmd` and reads its stderr until a line holds `marker`: the process is then paused
/// there (ATLAS_TEST_PAUSE_AT). Killed on drop.
fn paused(mut cmd: Command, marker: &str) -> KilledOnDrop {
    use std::io::BufRead as _;
    let mut child = KilledOnDrop(
        cmd.stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let lines = std::io::BufReader::new(child.0.stderr.take().expect("stderr"));
    let mut seen = Vec::new();
    for line in lines.lines() {
        let line = line.expect("line");
        let found = line.contains(marker);
        seen.push(line);
        if found {
            return child;
        }
    }
    panic!("never got to {marker:?}: {seen:?}");
}

/// Killed during its health checks, a run has changed everything but the install record. The
/// re-run's plan says so (`plan --detailed-exitcode` 2, the record to write), and the re-run
/// makes exactly that one write; then the plan is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_during_health_checks_the_plan_and_the_writes_agree() {
    let c = client_or_skip!();
    let _turn = crate::engine::STACKS.lock().await;
    if !crate::engine::have_busybox() {
        return;
    }
    let env = crate::engine::Env::new(&c, 9).await;
    let cfg = env.config("");
    env.project_with_images(&c, &cfg).await;
    let mut install = env.atlas(&["install", "--yes"]);
    install.env("ATLAS_TEST_PAUSE_AT", "after-wiring");
    drop(paused(install, "paused at after-wiring"));

    let o = env
        .atlas(&["plan", "--detailed-exitcode"])
        .output()
        .expect("plan");
    let shown = crate::common::stdout(&o);
    assert_eq!(o.status.code(), Some(2), "{shown}{}", stderr(&o));
    assert!(shown.contains("~ install record"), "{shown}");
    // A change to confirm, like any other.
    let o = env
        .atlas(&["install", "--json"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("install");
    assert!(
        !o.status.success() && stderr(&o).contains("pass --yes"),
        "{}",
        stderr(&o)
    );
    let o = env
        .atlas(&["install", "--json", "--yes"])
        .output()
        .expect("install");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("install --json");
    assert_eq!(v["writes"], 1, "the record, and nothing else: {v}");
    assert_eq!(v["report"]["record_pending"], true, "{v}");
    let o = env
        .atlas(&["plan", "--detailed-exitcode"])
        .output()
        .expect("plan");
    assert_eq!(o.status.code(), Some(0), "{}", crate::common::stdout(&o));
}
