//! atlas-init as PID 1 of a fresh PID + mount + network namespace (`unshare`), with its config
//! under a root prefix (`--root`) and host tools as the service. The network test moves one end
//! of a veth pair into a named namespace of its own; nothing else is touched.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atlas_image::init::{HostEntry, InterfaceSpec, NetworkSpec, ServiceSpec};

use crate::common::{self, prerequisites, run_ok, send_signal, wait_until, wait_with_timeout};

const TOOLS: &[&str] = &["unshare", "sh", "kill"];

/// A root prefix with the config files, an output directory the service writes to (any uid),
/// and the embedded binary on disk.
struct Scenario {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Scenario {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(dir.path().join("root/etc/atlas")).unwrap();
        fs::create_dir_all(dir.path().join("out")).unwrap();
        fs::set_permissions(dir.path().join("out"), fs::Permissions::from_mode(0o777)).unwrap();
        let bin = common::init_binary(dir.path());
        let s = Scenario { dir, bin };
        s.network(&NetworkSpec::default());
        s
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn service(&self, spec: &ServiceSpec) {
        self.write("etc/atlas/service.json", &spec.to_json().unwrap());
    }

    fn network(&self, spec: &NetworkSpec) {
        self.write("etc/atlas/network.json", &spec.to_json().unwrap());
    }

    /// A `sh -c SCRIPT` service running in the output directory.
    fn sh(&self, script: &str) -> ServiceSpec {
        ServiceSpec {
            entrypoint: vec!["sh".into(), "-c".into()],
            cmd: vec![script.into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            working_dir: Some(self.out().display().to_string()),
            user: None,
            stop_grace_period: 10,
        }
    }

    fn read_out(&self, name: &str) -> String {
        fs::read_to_string(self.out().join(name))
            .unwrap_or_else(|e| panic!("service output {name}: {e}"))
    }

    /// Starts atlas-init as PID 1 of new namespaces; `netns` runs it inside that existing
    /// network namespace instead of a fresh empty one.
    fn start(&self, netns: Option<&str>) -> Running {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args([
                    "netns",
                    "exec",
                    ns,
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount-proc",
                ]);
                c
            }
            None => {
                let mut c = Command::new("unshare");
                c.args(["--pid", "--fork", "--mount-proc", "--net"]);
                c
            }
        };
        cmd.arg(&self.bin).arg("--root").arg(self.root());
        self.spawn(cmd)
    }

    /// Like `start(None)`, started through `env ENV_ARGS...` (e.g. `--ignore-signal=HUP`): what
    /// a runner such as `nohup` hands its children.
    fn start_through_env(&self, env_args: &[&str]) -> Running {
        let mut cmd = Command::new("env");
        cmd.args(env_args)
            .args(["unshare", "--pid", "--fork", "--mount-proc", "--net"])
            .arg(&self.bin)
            .arg("--root")
            .arg(self.root());
        self.spawn(cmd)
    }

    /// Like `start(None)`, with the root prefix's etc/ bind-mounted read-only in the new
    /// mount namespace (the shell that does it execs atlas-init, which keeps PID 1).
    fn start_with_read_only_etc(&self) -> Running {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--mount-proc", "--net", "sh", "-c"])
            .arg(r#"mount --bind -o ro "$1/etc" "$1/etc" && exec "$0" --root "$1""#)
            .arg(&self.bin)
            .arg(self.root());
        self.spawn(cmd)
    }

    fn spawn(&self, mut cmd: Command) -> Running {
        let stderr = self.dir.path().join("init.stderr");
        // The environment Incus gives PID 1: `container=lxc`, a PATH, and the instance's
        // `environment.*` keys (here one), nothing of the test runner's.
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("container", "lxc")
            .env("FROM_INCUS", "environment.FROM_INCUS");
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(self.dir.path().join("init.stdout")).unwrap())
            .stderr(fs::File::create(&stderr).unwrap());
        Running {
            child: cmd.spawn().unwrap(),
            stderr,
        }
    }
}

struct Running {
    /// `unshare`, whose only child is atlas-init.
    child: Child,
    stderr: PathBuf,
}

impl Running {
    /// atlas-init's pid as seen from here (it is 1 only inside its namespace).
    fn init_pid(&self) -> u32 {
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        let mut pid = None;
        wait_until("unshare to fork atlas-init", Duration::from_secs(5), || {
            pid = fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok());
            pid.is_some()
        });
        pid.unwrap()
    }

    /// Exit code of atlas-init (unshare passes it through) and its stderr.
    fn finish(&mut self, limit: Duration) -> (i32, String) {
        let status = wait_with_timeout(&mut self.child, limit);
        let stderr = fs::read_to_string(&self.stderr).unwrap();
        (
            status
                .code()
                .unwrap_or_else(|| panic!("killed by a signal: {status:?}\n{stderr}")),
            stderr,
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed assertion must not leave a namespace with a looping service behind.
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.child.id()))
                .unwrap_or_default();
            for p in pid.split_whitespace() {
                let _ = Command::new("kill").args(["-s", "KILL", p]).status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_for_file(path: &Path) {
    wait_until(
        &format!("{}", path.display()),
        Duration::from_secs(10),
        || path.exists(),
    );
}

#[test]
fn init_process_runs_service_with_exact_env_cwd_and_user() {
    if !prerequisites(
        "init_process_runs_service_with_exact_env_cwd_and_user",
        TOOLS,
        true,
    ) {
        return;
    }
    let s = Scenario::new();
    s.write(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nsvc:x:4242:4343::/nonexistent:/bin/sh\n",
    );
    s.write(
        "etc/group",
        "root:x:0:\nsvcgrp:x:4343:\nextra:x:4444:other,svc\nnotmine:x:4545:root\n",
    );
    let work = s.out().join("work");
    fs::create_dir(&work).unwrap();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).unwrap();
    let mut spec = s.sh(concat!(
        "cat /proc/$$/environ > environ; ",
        "grep -E '^(Uid|Gid|Groups|PPid):' /proc/$$/status > status; ",
        "pwd > cwd; tr '\\0' ' ' < /proc/1/cmdline > pid1; exit 7"
    ));
    spec.env = vec![
        "PATH=/usr/bin:/bin".into(),
        "GREETING=hello world".into(),
        "EMPTY=".into(),
        "WITH_EQ=a=b".into(),
    ];
    spec.working_dir = Some(work.display().to_string());
    spec.user = Some("svc".into());
    s.service(&spec);

    let (code, stderr) = s.start(None).finish(Duration::from_secs(10));

    assert_eq!(
        code, 7,
        "init must exit with the service's status\n{stderr}"
    );
    assert!(stderr.contains("service exited with status 7"), "{stderr}");
    let environ = fs::read(work.join("environ")).unwrap();
    let mut environ: Vec<&[u8]> = environ
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .collect();
    let mut want: Vec<&[u8]> = spec.env.iter().map(|s| s.as_bytes()).collect();
    // Incus' `environment.*` keys reach the service; the runtime's own PATH and `container`
    // do not shadow or join the image's env.
    want.push(b"FROM_INCUS=environment.FROM_INCUS");
    // Same set, nothing else added or lost; the order is not kept (std's Command sorts by key).
    environ.sort();
    want.sort();
    assert_eq!(
        environ, want,
        "the service must get service.json's env plus Incus' environment keys"
    );
    let status = fs::read_to_string(work.join("status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {status}"));
        line[name.len()..]
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    assert_eq!(field("Uid:"), ["4242"; 4], "{status}");
    assert_eq!(field("Gid:"), ["4343"; 4], "{status}");
    assert_eq!(
        field("Groups:"),
        ["4444"],
        "supplementary groups from /etc/group: {status}"
    );
    assert_eq!(
        field("PPid:"),
        ["1"],
        "the service's parent must be PID 1: {status}"
    );
    assert_eq!(
        fs::read_to_string(work.join("cwd")).unwrap().trim(),
        work.display().to_string()
    );
    let pid1 = fs::read_to_string(work.join("pid1")).unwrap();
    assert!(
        pid1.starts_with(&s.bin.display().to_string()),
        "PID 1 is {pid1:?}, not atlas-init"
    );
}

#[test]
fn init_process_stop_signals_become_sigterm_for_the_service() {
    if !prerequisites(
        "init_process_stop_signals_become_sigterm_for_the_service",
        TOOLS,
        true,
    ) {
        return;
    }
    for sig in ["PWR", "TERM", "INT"] {
        let s = Scenario::new();
        // The trap only runs for SIGTERM: exit 42 proves the service got SIGTERM whatever was
        // sent to init (a forwarded SIGINT/SIGPWR would kill sh with 130/158 instead).
        s.service(
            &s.sh(
                "trap 'echo TERM > got; exit 42' TERM; touch ready; while :; do sleep 0.05; done",
            ),
        );
        let mut run = s.start(None);
        let init = run.init_pid();
        wait_for_file(&s.out().join("ready"));
        send_signal(init, sig);
        let (code, stderr) = run.finish(Duration::from_secs(10));
        assert_eq!(
            code, 42,
            "after SIG{sig} init must exit with the service's status\n{stderr}"
        );
        assert_eq!(s.read_out("got").trim(), "TERM");
        assert!(
            stderr.contains(&format!("SIG{sig} received, sending SIGTERM")),
            "{stderr}"
        );
    }
}

#[test]
fn init_process_kills_a_service_that_ignores_sigterm_after_the_grace_period() {
    if !prerequisites(
        "init_process_kills_a_service_that_ignores_sigterm_after_the_grace_period",
        TOOLS,
        true,
    ) {
        return;
    }
    let s = Scenario::new();
    let mut spec = s.sh("trap '' TERM; touch ready; while :; do sleep 0.05; done");
    spec.stop_grace_period = 1;
    s.service(&spec);
    let mut run = s.start(None);
    let init = run.init_pid();
    wait_for_file(&s.out().join("ready"));
    let sent = Instant::now();
    send_signal(init, "TERM");
    let (code, stderr) = run.finish(Duration::from_secs(10));
    let took = sent.elapsed();
    assert_eq!(
        code,
        128 + 9,
        "a SIGKILLed service means exit 137\n{stderr}"
    );
    assert!(
        took >= Duration::from_millis(950),
        "SIGKILL came before the 1 s grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "SIGKILL came late: {took:?}");
    assert!(
        stderr.contains("still running after 1s, sending SIGKILL"),
        "{stderr}"
    );
}

#[test]
fn init_process_reaps_orphaned_grandchildren() {
    if !prerequisites("init_process_reaps_orphaned_grandchildren", TOOLS, true) {
        return;
    }
    let s = Scenario::new();
    // The inner sh exits at once, orphaning its background sleep; it must reparent to init
    // and, once it exits, be reaped rather than stay a zombie.
    s.service(&s.sh(concat!(
        "sh -c 'sleep 0.5 & echo $! > orphan'; o=$(cat orphan); ",
        "grep PPid /proc/$o/status > orphan_parent; echo $PPID > init_pid; sleep 1.5; ",
        "if [ -e /proc/$o ]; then grep State /proc/$o/status > orphan_state; else echo reaped > orphan_state; fi"
    )));
    let (code, stderr) = s.start(None).finish(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.read_out("init_pid").trim(), "1");
    assert_eq!(
        s.read_out("orphan_parent").trim(),
        "PPid:\t1",
        "the orphan must reparent to atlas-init"
    );
    assert_eq!(
        s.read_out("orphan_state").trim(),
        "reaped",
        "the orphan was left a zombie"
    );
}

#[test]
fn init_process_refuses_bad_config_and_changes_nothing() {
    if !prerequisites(
        "init_process_refuses_bad_config_and_changes_nothing",
        TOOLS,
        true,
    ) {
        return;
    }
    let good_net = NetworkSpec {
        dns: vec!["10.233.0.1".parse().unwrap()],
        ..NetworkSpec::default()
    };
    type Setup = fn(&Scenario, &NetworkSpec);
    let cases: [(&str, Setup, i32, &str); 7] = [
        (
            "no service.json",
            |s, _| fs::remove_file(s.root().join("etc/atlas/service.json")).unwrap(),
            1,
            "etc/atlas/service.json: not found; the image builder writes it",
        ),
        (
            "service.json syntax",
            |s, _| s.write("etc/atlas/service.json", "{\"cmd\": [\"true\"],\n}"),
            1,
            "service.json: not valid JSON: line 2, column 1",
        ),
        (
            "no network.json",
            |s, _| fs::remove_file(s.root().join("etc/atlas/network.json")).unwrap(),
            1,
            "etc/atlas/network.json: not found; atlas-install pushes it",
        ),
        (
            "gateway outside the subnet",
            |s, _| {
                s.write("etc/atlas/network.json", r#"{"interfaces": [{"name": "eth0", "ipv4": "10.233.0.2/24", "gateway4": "10.234.0.1"}], "dns": ["10.233.0.1"]}"#)
            },
            1,
            "network.json: interfaces[0].gateway4: 10.234.0.1 is not inside 10.233.0.2/24",
        ),
        (
            "unknown user",
            |s, _| s.write("etc/passwd", "root:x:0:0::/:/bin/sh\n"),
            1,
            "user \"ghost\" is not in the image's /etc/passwd",
        ),
        (
            "missing interface",
            |s, n| {
                let mut n = n.clone();
                n.interfaces.push(InterfaceSpec {
                    ipv4: Some("10.233.0.2/24".parse().unwrap()),
                    ..InterfaceSpec::named("eth9")
                });
                s.network(&n);
            },
            1,
            "network setup failed: interface eth9: looking it up: no such interface",
        ),
        (
            "missing program",
            |s, _| {
                s.write(
                    "etc/atlas/service.json",
                    r#"{"cmd": ["no-such-program"], "env": ["PATH=/bin"]}"#,
                )
            },
            127,
            "\"no-such-program\" is not an executable file (PATH=/bin, working_dir",
        ),
    ];
    for (name, setup, want_code, want_msg) in cases {
        let s = Scenario::new();
        let mut spec = s.sh("touch started");
        if name == "unknown user" {
            spec.user = Some("ghost".into());
        }
        s.service(&spec);
        s.network(&good_net);
        setup(&s, &good_net);
        let (code, stderr) = s.start(None).finish(Duration::from_secs(10));
        assert_eq!(code, want_code, "{name}: {stderr}");
        assert!(
            stderr.contains(want_msg),
            "{name}: stderr lacks {want_msg:?}:\n{stderr}"
        );
        assert!(
            !s.out().join("started").exists(),
            "{name}: the service was started anyway"
        );
        for f in ["etc/resolv.conf", "etc/hosts"] {
            assert!(!s.root().join(f).exists(), "{name}: {f} was written anyway");
        }
    }
}

/// A named network namespace with a veth pair: `tinit<n>h` on the host side with the gateway
/// addresses, the other end renamed to eth0 inside. Deleted on drop (which removes both ends).
struct VethNamespace {
    name: String,
}

impl VethNamespace {
    fn create(name: &str, host_if: &str, gw4: &str, gw6: &str) -> Self {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", host_if])
            .stderr(Stdio::null())
            .status();
        run_ok(Command::new("ip").args(["netns", "add", name]));
        let ns = VethNamespace {
            name: name.to_string(),
        };
        run_ok(Command::new("ip").args([
            "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", name,
        ]));
        run_ok(Command::new("ip").args(["addr", "add", gw4, "dev", host_if]));
        run_ok(Command::new("ip").args(["-6", "addr", "add", gw6, "dev", host_if, "nodad"]));
        run_ok(Command::new("ip").args(["link", "set", host_if, "up"]));
        ns
    }

    fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let out = run_ok(Command::new("ip").args(["-n", &self.name, "-j"]).args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {args:?}: {e}: {out}"))
    }
}

impl Drop for VethNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn init_process_configures_lo_eth0_routes_and_resolver_files() {
    if !prerequisites(
        "init_process_configures_lo_eth0_routes_and_resolver_files",
        &["unshare", "ip", "kill", "busybox", "curl"],
        true,
    ) {
        return;
    }
    let n = std::process::id() % 250;
    let (addr4, gw4, addr6, gw6) = (
        format!("10.232.{n}.2"),
        format!("10.232.{n}.1"),
        format!("fd00:232:{n}::2"),
        format!("fd00:232:{n}::1"),
    );
    let ns = VethNamespace::create(
        &format!("t-init-{}", std::process::id()),
        &format!("tinit{}h", std::process::id() % 100_000),
        &format!("{gw4}/24"),
        &format!("{gw6}/64"),
    );

    let s = Scenario::new();
    let www = s.out().join("www");
    fs::create_dir(&www).unwrap();
    fs::write(www.join("index.html"), "atlas-init network test\n").unwrap();
    s.service(&ServiceSpec {
        entrypoint: vec!["busybox".into()],
        cmd: vec![
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            www.display().to_string(),
        ],
        env: vec!["PATH=/usr/bin:/bin".into()],
        working_dir: None,
        user: Some("65534:65534".into()),
        stop_grace_period: 5,
    });
    s.network(&NetworkSpec {
        interfaces: vec![InterfaceSpec {
            ipv4: Some(format!("{addr4}/24").parse().unwrap()),
            gateway4: Some(gw4.parse().unwrap()),
            ipv6: Some(format!("{addr6}/64").parse().unwrap()),
            gateway6: Some(gw6.parse().unwrap()),
            mtu: Some(1400),
            ..InterfaceSpec::named("eth0")
        }],
        dns: vec![gw4.parse().unwrap()],
        search: vec!["t-init.internal".into()],
        hosts: vec![HostEntry {
            ip: gw4.parse().unwrap(),
            names: vec!["gw.t-init.internal".into(), "gw".into()],
        }],
    });
    // The image's resolv.conf may be a dangling symlink to a resolver stub: it is replaced.
    std::os::unix::fs::symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        s.root().join("etc/resolv.conf"),
    )
    .unwrap();

    let mut run = s.start(Some(&ns.name));
    let init = run.init_pid();
    let url = format!("http://{addr4}:8080/");
    wait_until(
        &format!("{url} to answer from inside the namespace"),
        Duration::from_secs(10),
        || {
            Command::new("curl")
                .args(["-sf", "--max-time", "1", "-o", "/dev/null", &url])
                .status()
                .is_ok_and(|st| st.success())
        },
    );
    let body = run_ok(Command::new("curl").args(["-s", "--max-time", "2", &url]));
    assert_eq!(body, "atlas-init network test\n");

    let lo = ns.ip_json(&["link", "show", "lo"]);
    assert!(
        lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "lo is not UP: {lo}"
    );
    let eth0 = ns.ip_json(&["addr", "show", "dev", "eth0"]);
    assert_eq!(eth0[0]["mtu"], 1400, "{eth0}");
    assert!(
        eth0[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP"),
        "eth0 is not UP: {eth0}"
    );
    let addrs: Vec<(String, u64)> = eth0[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["local"].as_str().unwrap().to_string(),
                a["prefixlen"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(addrs.contains(&(addr4.clone(), 24)), "{addrs:?}");
    assert!(addrs.contains(&(addr6.clone(), 64)), "{addrs:?}");
    let route4 = ns.ip_json(&["route", "show", "default"]);
    assert_eq!(
        (route4[0]["gateway"].as_str(), route4[0]["dev"].as_str()),
        (Some(gw4.as_str()), Some("eth0")),
        "{route4}"
    );
    let route6 = ns.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(
        (route6[0]["gateway"].as_str(), route6[0]["dev"].as_str()),
        (Some(gw6.as_str()), Some("eth0")),
        "{route6}"
    );

    let resolv_path = s.root().join("etc/resolv.conf");
    assert!(
        !resolv_path.is_symlink(),
        "resolv.conf symlink was written through, not replaced"
    );
    let resolv = fs::read_to_string(resolv_path).unwrap();
    assert!(
        resolv.contains(&format!("nameserver {gw4}\n"))
            && resolv.contains("search t-init.internal\n"),
        "{resolv}"
    );
    let hosts = fs::read_to_string(s.root().join("etc/hosts")).unwrap();
    assert!(hosts.contains("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(
        hosts.contains(&format!("{gw4}\tgw.t-init.internal gw\n")),
        "{hosts}"
    );
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(
        hosts.contains(&format!("{addr4}\t{}\n", hostname.trim())),
        "own name on own address: {hosts}"
    );

    send_signal(init, "TERM");
    let (code, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(
        code,
        128 + 15,
        "httpd dies of the forwarded SIGTERM\n{stderr}"
    );
}

#[test]
fn init_process_passes_sighup_through_unchanged() {
    if !prerequisites("init_process_passes_sighup_through_unchanged", TOOLS, true) {
        return;
    }
    let s = Scenario::new();
    s.service(&s.sh(concat!(
        "trap 'echo HUP >> got' HUP; trap 'echo TERM >> got; exit 0' TERM; touch ready; ",
        "while :; do sleep 0.05; done"
    )));
    let mut run = s.start(None);
    let init = run.init_pid();
    wait_for_file(&s.out().join("ready"));
    send_signal(init, "HUP");
    wait_until("the service to see SIGHUP", Duration::from_secs(5), || {
        fs::read_to_string(s.out().join("got")).is_ok_and(|g| g.contains("HUP"))
    });
    send_signal(init, "TERM");
    let (code, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        s.read_out("got"),
        "HUP\nTERM\n",
        "SIGHUP must reach the service as SIGHUP, and not stop it"
    );
}

/// Started with SIGHUP and SIGUSR2 ignored and SIGUSR1 blocked (as under `nohup`, or a runner
/// that sets them so), atlas-init hands the service every signal at its default and an empty
/// mask, as tini and dumb-init do: a shell can trap them, and they arrive.
#[test]
fn init_process_resets_inherited_signal_dispositions_and_mask_for_the_service() {
    if !prerequisites(
        "init_process_resets_inherited_signal_dispositions_and_mask_for_the_service",
        &["unshare", "sh", "kill", "env"],
        true,
    ) {
        return;
    }
    let s = Scenario::new();
    s.service(&s.sh(concat!(
        // The shell's own state, read by a builtin: while it waits for a child it blocks
        // every signal, so a forked `grep` would see that instead.
        "while read -r k v; do case $k in SigIgn:|SigBlk:) echo \"$k $v\" >> sigs;; esac; ",
        "done < /proc/$$/status; ",
        "trap 'echo HUP >> got' HUP; trap 'echo USR1 >> got' USR1; ",
        "trap 'echo USR2 >> got' USR2; trap 'echo TERM >> got; exit 0' TERM; touch ready; ",
        "while :; do sleep 0.05; done"
    )));
    let mut run = s.start_through_env(&[
        "--ignore-signal=HUP",
        "--ignore-signal=USR2",
        "--block-signal=USR1",
    ]);
    let init = run.init_pid();
    let status = fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    // Bit n-1 is signal n: SIGHUP (1) and SIGUSR2 (12).
    assert_eq!(
        ignored & 0x801,
        0x801,
        "the test must start atlas-init with SIGHUP and SIGUSR2 ignored: {status}"
    );
    wait_for_file(&s.out().join("ready"));
    let sigs = s.read_out("sigs");
    let mask = |key: &str| {
        sigs.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {key} in {sigs:?}"))
    };
    // Signals 32-34 belong to the C library (thread cancellation, timers): it refuses to let
    // anyone change them, and a runner may hand them over ignored.
    let libc_reserved = 0b111u64 << 31;
    assert_eq!(
        (mask("SigBlk:"), mask("SigIgn:") & !libc_reserved),
        (0, 0),
        "the service starts with no signal ignored or blocked: {sigs}"
    );
    for (sig, want) in [
        ("HUP", "HUP\n"),
        ("USR1", "HUP\nUSR1\n"),
        ("USR2", "HUP\nUSR1\nUSR2\n"),
    ] {
        send_signal(init, sig);
        wait_until(
            &format!("the service to see SIG{sig}"),
            Duration::from_secs(5),
            || fs::read_to_string(s.out().join("got")).is_ok_and(|g| g == want),
        );
    }
    send_signal(init, "TERM");
    let (code, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s.read_out("got"), "HUP\nUSR1\nUSR2\nTERM\n");
}

#[test]
fn init_process_leaves_resolver_files_alone_on_a_read_only_rootfs() {
    if !prerequisites(
        "init_process_leaves_resolver_files_alone_on_a_read_only_rootfs",
        &["unshare", "sh", "mount"],
        true,
    ) {
        return;
    }
    let s = Scenario::new();
    s.write("etc/resolv.conf", "nameserver 192.0.2.53\n");
    s.network(&NetworkSpec {
        dns: vec!["10.233.0.1".parse().unwrap()],
        ..NetworkSpec::default()
    });
    s.service(&s.sh("touch started"));
    let (code, stderr) = s.start_with_read_only_etc().finish(Duration::from_secs(10));
    assert_eq!(code, 0, "a read-only rootfs is not an error\n{stderr}");
    assert!(
        s.out().join("started").exists(),
        "the service did not run\n{stderr}"
    );
    assert!(
        stderr.contains("etc/resolv.conf: read-only filesystem, left as it is"),
        "{stderr}"
    );
    assert!(
        stderr.contains("etc/hosts: read-only filesystem, left as it is"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(s.root().join("etc/resolv.conf")).unwrap(),
        "nameserver 192.0.2.53\n"
    );
    assert!(!s.root().join("etc/hosts").exists());
}
