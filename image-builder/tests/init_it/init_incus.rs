//! A real container in the shared incusd, booted by atlas-init: a busybox rootfs built here
//! (busybox-static, atlas-init at /sbin/init, service.json running `busybox httpd`), imported
//! as a unified image into a project of our own, with a static NIC on a bridge of our own and
//! a proxy device on 127.0.0.1. Proves the service answers, stop signals work (restart < 5 s)
//! and the static network config applies. The incus CLI is the oracle.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use atlas_image::init::{
    HostEntry, INIT_MODE, INIT_PATH, InterfaceSpec, NETWORK_CONFIG_PATH, NetworkSpec,
    SERVICE_CONFIG_PATH, ServiceSpec,
};

use atlas_test_support::busybox::is_static_elf;
use atlas_test_support::free_port;
use atlas_test_support::incus::{ProjectGuard, incus, incus_ok};

use crate::common::{prerequisites, require_all, wait_until};

const BRIDGE: &str = "t-init-br";
const INSTANCE: &str = "t-init-web";

/// The test bridge's gateway and the container's address, on a /24 nothing on the host uses.
struct Net {
    gateway: std::net::Ipv4Addr,
    ip: std::net::Ipv4Addr,
}

/// Chosen once per process by looking at every route, address and Incus network of the host
/// (not hoping a fixed /24 is free), as the installer's tests choose theirs.
fn net() -> &'static Net {
    static NET: std::sync::OnceLock<Net> = std::sync::OnceLock::new();
    NET.get_or_init(|| {
        let o = atlas_test_support::net::free_subnets(1)[0]
            .network()
            .octets();
        Net {
            gateway: std::net::Ipv4Addr::new(o[0], o[1], o[2], 1),
            ip: std::net::Ipv4Addr::new(o[0], o[1], o[2], 10),
        }
    })
}
const ALIAS: &str = "t-init-busybox";
const BUSYBOX: &str = "/bin/busybox";

fn service_spec() -> ServiceSpec {
    ServiceSpec {
        entrypoint: vec![],
        cmd: ["busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
            .map(String::from)
            .to_vec(),
        env: vec!["PATH=/bin:/sbin".into(), "HOME=/www".into()],
        working_dir: Some("/www".into()),
        // A name: resolved inside the container from the image's /etc/passwd and /etc/group.
        user: Some("www".into()),
        stop_grace_period: 3,
    }
}

fn network_spec() -> NetworkSpec {
    NetworkSpec {
        interfaces: vec![InterfaceSpec {
            ipv4: Some(format!("{}/24", net().ip).parse().unwrap()),
            gateway4: Some(net().gateway),
            ..InterfaceSpec::named("eth0")
        }],
        dns: vec![net().gateway.into()],
        search: vec!["t-init.internal".into()],
        hosts: vec![HostEntry {
            ip: net().gateway.into(),
            names: vec!["gw.t-init.internal".into()],
        }],
    }
}

/// An uncompressed Incus unified image: metadata.yaml + rootfs/ with busybox, atlas-init at
/// /sbin/init and service.json. Everything root-owned; Incus shifts ids for the container.
fn write_image(path: &Path) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let metadata = format!(
        "architecture: x86_64\ncreation_date: {now}\nproperties:\n  description: atlas-init test image (busybox httpd)\n  os: busybox\n  release: test\n"
    );
    let files: Vec<(String, u32, Vec<u8>)> = vec![
        ("metadata.yaml".into(), 0o644, metadata.into_bytes()),
        (
            "rootfs/bin/busybox".into(),
            0o755,
            fs::read(BUSYBOX).unwrap(),
        ),
        (
            format!("rootfs/{INIT_PATH}"),
            INIT_MODE,
            atlas_image::init::binary().to_vec(),
        ),
        (
            format!("rootfs/{SERVICE_CONFIG_PATH}"),
            0o644,
            service_spec().to_json().unwrap().into_bytes(),
        ),
        (
            "rootfs/etc/passwd".into(),
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/false\n".to_vec(),
        ),
        (
            "rootfs/etc/group".into(),
            0o644,
            b"root:x:0:\nwww:x:33:\nweb:x:1500:www\n".to_vec(),
        ),
        (
            "rootfs/www/index.html".into(),
            0o644,
            b"hello from atlas-init\n".to_vec(),
        ),
    ];
    let dirs = [
        ("rootfs/dev", 0o755),
        ("rootfs/proc", 0o555),
        ("rootfs/sys", 0o555),
        ("rootfs/run", 0o755),
        ("rootfs/root", 0o700),
        ("rootfs/tmp", 0o1777),
    ];
    let header = |kind: tar::EntryType, mode: u32, size: usize| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(now);
        h
    };
    let mut tar = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, mode, data) in &files {
        let mut h = header(tar::EntryType::Regular, *mode, data.len());
        tar.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    for (name, mode) in dirs {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, name, std::io::empty()).unwrap();
    }
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    tar.append_link(&mut h, "rootfs/bin/sh", "busybox").unwrap();
    tar.into_inner().unwrap().flush().unwrap();
}

fn http_get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "2", "-w", "\n%{http_code}", url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    (code == "200").then(|| body.to_string())
}

fn wait_for_http(url: &str) -> String {
    let mut body = None;
    wait_until(
        &format!("{url} to answer 200"),
        Duration::from_secs(30),
        || {
            body = http_get(url);
            body.is_some()
        },
    );
    body.unwrap()
}

fn timed(args: &[&str]) -> Duration {
    let start = Instant::now();
    incus_ok(args);
    start.elapsed()
}

#[test]
fn init_incus_container_serves_through_proxy_and_restarts_fast() {
    if !prerequisites(
        "init_incus_container_serves_through_proxy_and_restarts_fast",
        &["incus", "curl"],
        true,
    ) {
        return;
    }
    let busybox_ok = fs::read(BUSYBOX).is_ok_and(|b| is_static_elf(&b));
    if !busybox_ok {
        let msg = format!("{BUSYBOX} missing or not static (install Debian's busybox-static)");
        assert!(
            !require_all(),
            "{msg} (required because ATLAS_TEST_REQUIRE_ALL=1)"
        );
        eprintln!("SKIP init_incus: {msg}");
        return;
    }
    if !incus(&["info"]).status.success() {
        assert!(
            !require_all(),
            "incusd is not reachable (tests/start-services.sh starts it)"
        );
        eprintln!("SKIP init_incus: incusd is not reachable");
        return;
    }

    let project = format!("t-init-{}", std::process::id());
    let p = project.as_str();
    // Everything this test creates, removed in reverse order even when an assertion fails.
    let mut objects = ProjectGuard::new(&project);
    incus_ok(&[
        "project",
        "create",
        p,
        "-c",
        "features.images=true",
        "-c",
        "features.profiles=true",
    ]);
    let pool = incus_ok(&["storage", "list", "-f", "csv", "-c", "n"]);
    let pool = pool
        .lines()
        .find(|l| *l == "default")
        .or_else(|| pool.lines().next())
        .expect("no storage pool in incusd");
    incus_ok(&[
        "profile",
        "device",
        "add",
        "default",
        "root",
        "disk",
        "path=/",
        &format!("pool={pool}"),
        "--project",
        p,
    ]);
    if incus(&["network", "show", BRIDGE]).status.success() {
        // Left over from an interrupted run of this test; it is ours by name.
        let _ = incus(&["network", "delete", BRIDGE]);
    }
    // incusd lists every host link while it creates a bridge; a veth that another process
    // removes in between makes it fail with "Device ... does not exist". Retry that race.
    let create = [
        "network",
        "create",
        BRIDGE,
        &format!("ipv4.address={}/24", net().gateway),
        "ipv4.nat=false",
        "ipv6.address=none",
    ];
    for attempt in 1.. {
        let out = incus(&create);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            break;
        }
        assert!(
            attempt < 10 && err.contains("does not exist"),
            "incus network create {BRIDGE} failed: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    objects.network(BRIDGE);

    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.tar");
    write_image(&image);
    incus_ok(&[
        "image",
        "import",
        image.to_str().unwrap(),
        "--alias",
        ALIAS,
        "--project",
        p,
    ]);
    incus_ok(&["init", ALIAS, INSTANCE, "--project", p]);
    incus_ok(&[
        "config",
        "device",
        "add",
        INSTANCE,
        "eth0",
        "nic",
        &format!("network={BRIDGE}"),
        "name=eth0",
        &format!("ipv4.address={}", net().ip),
        "--project",
        p,
    ]);
    let port = free_port();
    incus_ok(&[
        "config",
        "device",
        "add",
        INSTANCE,
        "web",
        "proxy",
        &format!("listen=tcp:127.0.0.1:{port}"),
        "connect=tcp:127.0.0.1:8080",
        "--project",
        p,
    ]);
    let net_file = dir.path().join("network.json");
    fs::write(&net_file, network_spec().to_json().unwrap()).unwrap();
    incus_ok(&[
        "file",
        "push",
        net_file.to_str().unwrap(),
        &format!("{INSTANCE}/{NETWORK_CONFIG_PATH}"),
        "--project",
        p,
    ]);

    incus_ok(&["start", INSTANCE, "--project", p]);
    let proxy_url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        wait_for_http(&proxy_url),
        "hello from atlas-init\n",
        "through the proxy device (needs lo UP)"
    );
    let direct = http_get(&format!("http://{}:8080/", net().ip));
    assert_eq!(
        direct.as_deref(),
        Some("hello from atlas-init\n"),
        "eth0's static address is not reachable over the bridge"
    );

    let exec = |script: &str| {
        incus_ok(&[
            "exec",
            INSTANCE,
            "--project",
            p,
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            script,
        ])
    };
    assert_eq!(
        exec("cat /proc/1/cmdline | tr '\\0' ' '").trim(),
        "/sbin/init"
    );
    let ids = exec(concat!(
        "for d in /proc/[0-9]*; do tr '\\0' ' ' < $d/cmdline | grep -q '^busybox httpd' ",
        "&& grep -E '^(Uid|Gid|Groups):' $d/status; done; true"
    ));
    assert!(
        ids.contains("Uid:\t33\t33\t33\t33") && ids.contains("Gid:\t33\t33\t33\t33"),
        "httpd must run as www (33:33): {ids}"
    );
    assert!(
        ids.lines()
            .any(|l| l.starts_with("Groups:") && l.split_whitespace().skip(1).eq(["1500"])),
        "supplementary group web: {ids}"
    );
    let resolv = exec("cat /etc/resolv.conf");
    assert!(
        resolv.contains(&format!("nameserver {}", net().gateway))
            && resolv.contains("search t-init.internal"),
        "{resolv}"
    );
    assert!(
        exec("cat /etc/hosts").contains(&format!("{}\t{INSTANCE}\n", net().ip)),
        "own name in /etc/hosts"
    );

    let restart = timed(&["restart", INSTANCE, "--project", p]);
    eprintln!("init_incus: `incus restart` took {restart:?}");
    assert!(
        restart < Duration::from_secs(5),
        "incus restart took {restart:?}; must be under 5 s"
    );
    assert_eq!(
        wait_for_http(&proxy_url),
        "hello from atlas-init\n",
        "service back after restart"
    );
    let log = incus_ok(&["console", INSTANCE, "--show-log", "--project", p]);
    assert!(
        log.contains(&format!(
            "atlas-init: eth0 up: {}/24 via {}",
            net().ip,
            net().gateway
        )),
        "console log: {log}"
    );
    assert!(
        log.contains("atlas-init: started /bin/busybox as pid"),
        "console log: {log}"
    );

    let stop = timed(&["stop", INSTANCE, "--project", p]);
    eprintln!("init_incus: `incus stop` took {stop:?}");
    assert!(stop < Duration::from_secs(5), "incus stop took {stop:?}");
    let state = incus_ok(&["list", INSTANCE, "--project", p, "-f", "csv", "-c", "s"]);
    assert_eq!(state.trim(), "STOPPED");
    let log = incus_ok(&["console", INSTANCE, "--show-log", "--project", p]);
    assert!(
        log.contains("atlas-init: SIGPWR received, sending SIGTERM to the service"),
        "console log: {log}"
    );
    drop(objects);
}
