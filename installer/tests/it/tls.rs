//! `tls = true` end to end, on the fixture stack with the real step-ca (tests/fixtures/step-ca:
//! step-ca 0.19 from Debian's packages): every certificate the services serve comes from it
//! through the JWK provisioner, and clients that trust the Atlas root alone verify them.
//!
//! Network: clients run in a network namespace this test makes, with one leg on each of the
//! stack's bridges it needs and no default route; the host talks to the containers only over
//! those bridges and 127.0.0.1.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use atlas_install::incus::{Client, FileMeta, StateAction};

use crate::common::{client_or_skip, have_tool, stderr, stdout, step_async};
use crate::stack::{Cleanup, Stack, fixtures_ready};

const ROOT: &str = "/home/step/certs/root_ca.crt";
const PASSWORD_FILE: &str = "/home/step/secrets/password";
const KEY_STEP: &str = "user.atlas.secret.step-ca-password";
const KEY_MQTT: &str = "user.atlas.secret.mosquitto.atlas.password";

/// (instance, its certificate, its key, the key's owner) for every TLS service here.
fn tls_services() -> [(&'static str, &'static str, &'static str, (u32, u32)); 4] {
    [
        (
            "grafana01",
            "/etc/grafana/tls/tls.crt",
            "/etc/grafana/tls/tls.key",
            (472, 0),
        ),
        (
            "loki01",
            "/etc/loki/tls/tls.crt",
            "/etc/loki/tls/tls.key",
            (10001, 10001),
        ),
        (
            "mosquitto01",
            "/mosquitto/config/tls/tls.crt",
            "/mosquitto/config/tls/tls.key",
            (1883, 1883),
        ),
        (
            "prometheus01",
            "/etc/prometheus/tls/tls.crt",
            "/etc/prometheus/tls/tls.key",
            (65534, 65534),
        ),
    ]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn sh(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}{}", stdout(&o), stderr(&o));
    o
}

/// A network namespace of this test's own with a leg on some of the stack's bridges, names
/// resolved through its own hosts file, and no default route: clients run in here.
struct Netns {
    name: String,
}

impl Netns {
    /// `legs`: (bridge, address/prefix in it); `hosts`: lines of its /etc/hosts.
    fn new(name: &str, legs: &[(String, String)], hosts: &str) -> Netns {
        let ns = Netns {
            name: name.to_string(),
        };
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(Command::new("ip").args(["netns", "add", name]));
        for (i, (bridge, cidr)) in legs.iter().enumerate() {
            let (host, inner) = (format!("{name}h{i}"), format!("{name}n{i}"));
            sh(Command::new("ip")
                .args(["link", "add", &host, "type", "veth", "peer", "name", &inner]));
            sh(Command::new("ip").args(["link", "set", &inner, "netns", name]));
            sh(Command::new("ip").args(["link", "set", &host, "master", bridge, "up"]));
            sh(Command::new("ip").args(["-n", name, "addr", "add", cidr, "dev", &inner]));
            sh(Command::new("ip").args(["-n", name, "link", "set", &inner, "up"]));
        }
        sh(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]));
        // `ip netns exec` mounts /etc/netns/<name>/hosts over /etc/hosts.
        let dir = ns.etc();
        std::fs::create_dir_all(&dir).expect("netns etc");
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost\n{hosts}"))
            .expect("netns hosts");
        let routes = sh(Command::new("ip").args(["-n", name, "route", "show", "default"]));
        assert!(stdout(&routes).trim().is_empty(), "no default route");
        ns
    }

    fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The host ends of the veths go with the namespace.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// `curl` in the namespace, trusting only `ca` (none: the system's bundle): the HTTP status,
/// or curl's error.
fn curl(ns: &Netns, ca: Option<&Path>, url: &str) -> Result<String, String> {
    let mut c = ns.cmd("curl");
    c.args([
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ]);
    match ca {
        Some(ca) => c.arg("--cacert").arg(ca),
        None => c.args(["--cacert", "/etc/ssl/certs/ca-certificates.crt"]),
    };
    let o = c.arg(url).output().expect("curl");
    match o.status.success() {
        true => Ok(stdout(&o)),
        false => Err(stderr(&o)),
    }
}

/// `curl` until it answers 200 (a service restarted a moment ago may not listen yet).
async fn curl_200(ns: &Netns, ca: &Path, url: &str) {
    let mut last = Err(String::new());
    for _ in 0..30 {
        last = curl(ns, Some(ca), url);
        if last.as_deref() == Ok("200") {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{url} with only the Atlas root trusted: {last:?}");
}

async fn pull(c: &Client, instance: &str, path: &str) -> Vec<u8> {
    c.pull_file(instance, path)
        .await
        .unwrap_or_else(|e| panic!("{instance}:{path}: {e}"))
}

/// `openssl verify` of the chain in `chain` (leaf first) against `root` alone.
fn openssl_verify(root: &Path, chain: &Path) -> Output {
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(chain)
        .arg(chain)
        .output()
        .expect("openssl")
}

/// `(notBefore, notAfter)` of the first certificate in `pem`, as openssl prints them.
fn dates(pem: &Path) -> String {
    stdout(&sh(Command::new("openssl")
        .args(["x509", "-noout", "-startdate", "-enddate", "-in"])
        .arg(pem)))
}

/// Days between the certificate's notBefore and notAfter.
fn lifetime_days(pem: &Path) -> i64 {
    let d = dates(pem);
    let field = |k: &str| {
        let v = d
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {d}"));
        let o = sh(Command::new("date").args(["-u", "-d", v, "+%s"]));
        stdout(&o).trim().parse::<i64>().expect("epoch")
    };
    (field("notAfter=") - field("notBefore=")) / 86_400
}

/// MQTT over TLS from the namespace, trusting `ca` only: a subscriber gets what a publisher
/// sends. Returns the subscriber's output, or the first failure.
fn mqtts_roundtrip(ns: &Netns, ca: &Path, port: u16, password: &str) -> Result<String, String> {
    let common = |c: &mut Command| {
        c.args(["-h", "mosquitto01.incus", "-p", &port.to_string()])
            .arg("--cafile")
            .arg(ca)
            .args(["-u", "atlas", "-P", password, "-t", "atlas/tls"]);
    };
    let mut sub = ns.cmd("mosquitto_sub");
    common(&mut sub);
    let sub = sub
        .args(["-C", "1", "-W", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub");
    std::thread::sleep(Duration::from_secs(2));
    let mut publ = ns.cmd("mosquitto_pub");
    common(&mut publ);
    let p = publ
        .args(["-m", "hello over tls", "-q", "1"])
        .output()
        .expect("mosquitto_pub");
    let s = sub.wait_with_output().expect("mosquitto_sub");
    if !p.status.success() {
        return Err(format!("publish: {}", stderr(&p)));
    }
    match s.status.success() {
        true => Ok(stdout(&s)),
        false => Err(format!("subscribe: {}", stderr(&s))),
    }
}

/// `up` per scrape job, asked of Prometheus over HTTPS from the namespace (trusting `ca`
/// only), until every job of `jobs` is up or two minutes have passed.
async fn up_over_https(ns: &Netns, ca: &Path, jobs: &[&str]) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let o = ns
            .cmd("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(ca)
            .arg("https://prometheus01.incus:9090/api/v1/query?query=up")
            .output()
            .expect("curl");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let ups: Vec<(String, String)> = v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (s(&r["metric"]["job"]), s(&r["value"][1]))
            })
            .collect();
        let all = jobs
            .iter()
            .all(|j| ups.iter().any(|(job, v)| job == j && v == "1"));
        if all || std::time::Instant::now() > deadline {
            return ups;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Runs `argv` in step-ca01 as the step user.
async fn in_step_ca(c: &Client, argv: &[&str]) -> atlas_install::incus::ExecOutput {
    c.exec_as("step-ca01", argv, &Default::default(), Some((1000, 1000)))
        .await
        .expect("exec in step-ca01")
}

/// Replaces loki01's certificate by one that step-ca signs for 4 hours, 3 of them past: a
/// real certificate with less than a third of its life left.
async fn age_lokis_certificate(stack: &Stack, work: &Path, loki_ip: Ipv4Addr) {
    let pc = stack.project();
    let (key, csr) = (work.join("old.key"), work.join("old.csr"));
    sh(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .args(["-subj", "/CN=loki01.incus", "-addext"])
        .arg(format!(
            "subjectAltName=DNS:loki01.incus,DNS:loki01,IP:{loki_ip}"
        ))
        .arg("-out")
        .arg(&csr));
    let password = stack.secret(KEY_STEP).await;
    let step = FileMeta::new(1000, 1000, 0o600);
    pc.push_file(
        "step-ca01",
        "/tmp/aged.csr",
        std::fs::read(&csr).unwrap(),
        step,
    )
    .await
    .unwrap();
    pc.push_file("step-ca01", "/tmp/aged.pw", password.into_bytes(), step)
        .await
        .unwrap();
    let o = in_step_ca(
        &pc,
        &[
            "step",
            "ca",
            "sign",
            "/tmp/aged.csr",
            "/tmp/aged.crt",
            "--provisioner",
            "admin",
            "--provisioner-password-file",
            "/tmp/aged.pw",
            "--ca-url",
            "https://localhost:9000",
            "--root",
            ROOT,
            "--not-before=-3h",
            "--not-after=4h",
        ],
    )
    .await;
    let crt = pc.pull_file("step-ca01", "/tmp/aged.crt").await;
    for f in ["/tmp/aged.csr", "/tmp/aged.pw", "/tmp/aged.crt"] {
        let _ = pc.delete_file("step-ca01", f).await;
    }
    assert_eq!(o.exit_code, 0, "step ca sign: {}", o.stderr_str());
    pc.push_file(
        "loki01",
        "/etc/loki/tls/tls.crt",
        crt.expect("aged certificate"),
        FileMeta::new(0, 0, 0o644),
    )
    .await
    .unwrap();
    pc.push_file(
        "loki01",
        "/etc/loki/tls/tls.key",
        std::fs::read(&key).unwrap(),
        FileMeta::new(10001, 10001, 0o600),
    )
    .await
    .unwrap();
}

/// Waits until `instance` is stopped (its service exited and took atlas-init with it).
async fn stopped_within(c: &Client, instance: &str, secs: u64) -> bool {
    for _ in 0..secs {
        let i = c.get_instance(instance).await.expect("instance").value;
        if i.status == "Stopped" {
            return true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_services_verify_against_the_atlas_root_and_renew() {
    let client = client_or_skip!();
    let tools = [
        "curl",
        "mosquitto_pub",
        "mosquitto_sub",
        "openssl",
        "ip",
        "incus",
    ];
    if !tools.iter().all(|t| have_tool(t)) || !fixtures_ready() {
        return;
    }
    let _turn = crate::engine::STACKS.lock().await;
    let stack = Stack::new(client, 't').await;
    let mqtts_port = free_port();
    stack.config_with(
        "\"127.0.0.1/32\"",
        &format!(
            "[mosquitto]\ntls = true\nmqtts_port = {mqtts_port}\n\n\
             [instances.grafana01]\ntls = true\n\n[instances.loki01]\ntls = true\n\n\
             [instances.prometheus01]\ntls = true\n"
        ),
    );
    let _cleanup = Cleanup(&stack);
    let work = tempfile::tempdir().expect("tempdir");
    let t = Tls {
        stack: &stack,
        pc: stack.project(),
        work: work.path(),
        root: work.path().join("root.crt"),
        other: work.path().join("other.crt"),
    };
    // One install, then steps in order over it: a failure names its step.
    step_async("1 first install", first_install(&t)).await;
    step_async("2 certificates verify", certificates_verify(&t)).await;
    let (ips, ns) = step_async("3 client namespace", client_namespace(&t)).await;
    step_async("3 clients over TLS", clients_reach_services(&t, &ns, &ips)).await;
    step_async(
        "4 prometheus over HTTPS",
        prometheus_scrapes_over_https(&t, &ns),
    )
    .await;
    step_async("5 re-run", rerun_writes_nothing(&t)).await;
    step_async("6 renewal", aged_certificate_is_renewed(&t, &ns, &ips)).await;
    let (before, after) = step_async("7 rotation", rotation_keeps_the_root(&t, &ns)).await;
    step_async(
        "8 old password",
        old_password_is_refused(&t, &before, &after),
    )
    .await;
}

/// What the steps of the TLS scenario share: the installed stack, its project client, and
/// the work directory with the Atlas root (`root`) and the system's CAs (`other`) in it.
struct Tls<'a> {
    stack: &'a Stack,
    pc: Client,
    work: &'a Path,
    root: PathBuf,
    other: PathBuf,
}

/// The stack's services by instance name, with their addresses.
type Ips = std::collections::BTreeMap<&'static str, Ipv4Addr>;

/// A first install: each TLS service starts with a certificate step-ca signed.
async fn first_install(t: &Tls<'_>) {
    let Tls { stack, .. } = t;
    let o = stack.atlas(&["plan", "--ignore-preflight"]);
    let plan = format!("{}{}", stdout(&o), stderr(&o));
    assert!(
        plan.contains("~ certificate loki01: issued by step-ca01 (90 days) before loki01 starts"),
        "{plan}"
    );
    let o = stack.install();
    let log = stderr(&o);
    assert!(o.status.success(), "install failed:\n{log}");
    let password = stack.secret(KEY_STEP).await;
    assert!(
        !log.contains(&password),
        "no step-ca password in the output"
    );
    for (name, ..) in tls_services() {
        assert!(
            log.contains(&format!(
                "{name}: certificate issued by step-ca01 for {name}.incus, {name}"
            )),
            "{name}: {log}"
        );
    }
}

/// The root, and every certificate verifying against it alone (openssl). The key is the
/// service user's, 0600; the chain is leaf + intermediate, for 90 days.
async fn certificates_verify(t: &Tls<'_>) {
    let Tls {
        pc,
        work,
        root,
        other,
        ..
    } = t;
    std::fs::write(root, pull(pc, "step-ca01", ROOT).await).unwrap();
    let fp = in_step_ca(pc, &["step", "certificate", "fingerprint", ROOT]).await;
    let der = sh(Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(root));
    use sha2::Digest as _;
    assert_eq!(
        fp.stdout_str().trim(),
        hex::encode(sha2::Sha256::digest(&der.stdout)),
        "step certificate fingerprint is the SHA-256 of the root's DER"
    );
    for (name, cert, key, owner) in tls_services() {
        let chain = work.join(format!("{name}.crt"));
        std::fs::write(&chain, pull(pc, name, cert).await).unwrap();
        let v = openssl_verify(root, &chain);
        assert!(v.status.success(), "{name}: {}{}", stdout(&v), stderr(&v));
        assert_eq!(lifetime_days(&chain), 90, "{name}: {}", dates(&chain));
        let (_, meta) = pc.pull_file_with_meta(name, key).await.expect("key");
        assert_eq!(
            (meta.uid, meta.gid, meta.mode & 0o777),
            (owner.0, owner.1, 0o600),
            "{name}"
        );
    }
    // What the services trust is that root.
    for (name, path) in [
        ("mosquitto01", "/mosquitto/config/step-ca/root_ca.crt"),
        ("grafana01", "/etc/grafana/step-ca/root_ca.crt"),
        ("prometheus01", "/etc/prometheus/step-ca/root_ca.crt"),
    ] {
        assert_eq!(
            pull(pc, name, path).await,
            std::fs::read(root).unwrap(),
            "{name}"
        );
    }
    std::fs::write(
        other,
        std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap(),
    )
    .unwrap();
    let chain = work.join("loki01.crt");
    assert!(
        !openssl_verify(other, &chain).status.success(),
        "the system's CAs do not vouch for it"
    );
}

/// Clients in a namespace of their own on the management and production bridges,
/// trusting the Atlas root only, reach the services by name over TLS.
async fn client_namespace(t: &Tls<'_>) -> (Ips, Netns) {
    let Tls { stack, .. } = t;
    let mut ips = Ips::new();
    for name in [
        "grafana01",
        "loki01",
        "prometheus01",
        "mosquitto01",
        "step-ca01",
    ] {
        ips.insert(name, stack.address(name, "eth0").await);
    }
    let hosts: String = ips
        .iter()
        .map(|(n, ip)| format!("{ip} {n}.incus {n}\n"))
        .collect();
    // .250 of the subnet of `member` on bridge `net` (the stack's management and production).
    let leg = |net: usize, member: &str| {
        let o = ips[member].octets();
        (
            stack.nets[net].clone(),
            format!("{}.{}.{}.250/24", o[0], o[1], o[2]),
        )
    };
    let ns = Netns::new(
        &format!("atls{}", std::process::id() % 100_000),
        &[leg(4, "grafana01"), leg(3, "mosquitto01")],
        &hosts,
    );
    (ips, ns)
}

async fn clients_reach_services(t: &Tls<'_>, ns: &Netns, ips: &Ips) {
    let Tls {
        stack, root, other, ..
    } = t;
    curl_200(ns, root, "https://grafana01.incus:3000/api/health").await;
    curl_200(ns, root, "https://loki01.incus:3100/ready").await;
    curl_200(ns, root, "https://prometheus01.incus:9090/-/ready").await;
    // By address too: Incus ships logs to Loki by address.
    curl_200(ns, root, &format!("https://{}:3100/ready", ips["loki01"])).await;
    // Caddy proxies its Grafana route to https://grafana01.incus:3000, trusting the root.
    assert_eq!(
        crate::stack::caddy_status(stack.https_port).await,
        200,
        "Grafana through Caddy, upstream over HTTPS"
    );
    let refused = curl(ns, None, "https://grafana01.incus:3000/api/health");
    assert!(
        refused.is_err(),
        "a client that trusts other CAs only: {refused:?}"
    );
    let mqtt_pw = stack.secret(KEY_MQTT).await;
    let got = mqtts_roundtrip(ns, root, 8883, &mqtt_pw);
    assert_eq!(
        got.as_deref().map(str::trim),
        Ok("hello over tls"),
        "MQTT over TLS on 8883"
    );
    let wrong = mqtts_roundtrip(ns, other, 8883, &mqtt_pw);
    assert!(
        wrong.is_err(),
        "a client that trusts other CAs only: {wrong:?}"
    );
    let wrong = mqtts_roundtrip(ns, root, 8883, "wrong-password");
    assert!(wrong.is_err(), "a wrong MQTT password over TLS");
}

/// Prometheus (itself over HTTPS now) scrapes step-ca's metrics (metricsAddress written
/// by the installer), itself, Grafana and Loki over HTTPS, trusting the root it was given.
async fn prometheus_scrapes_over_https(t: &Tls<'_>, ns: &Netns) {
    let Tls { pc, root, .. } = t;
    let jobs = ["step-ca", "prometheus", "grafana", "loki"];
    let ups = up_over_https(ns, root, &jobs).await;
    for job in jobs {
        assert!(
            ups.iter().any(|(j, v)| j == job && v == "1"),
            "up{{job={job:?}}} != 1: {ups:?}"
        );
    }
    let ca_json: serde_json::Value =
        serde_json::from_slice(&pull(pc, "step-ca01", "/home/step/config/ca.json").await)
            .expect("ca.json");
    assert_eq!(ca_json["metricsAddress"], ":9290");
}

/// A re-run with fresh certificates writes nothing, and plan agrees.
async fn rerun_writes_nothing(t: &Tls<'_>) {
    let Tls { stack, .. } = t;
    let o = stack.install();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("No changes"), "{}", stderr(&o));
    let o = stack.atlas(&["plan", "--detailed-exitcode", "--ignore-preflight"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
}

/// A certificate with less than a third of its life left: plan says so, install
/// re-issues it (90 days again) and restarts Loki, which then serves the new one.
async fn aged_certificate_is_renewed(t: &Tls<'_>, ns: &Netns, ips: &Ips) {
    let Tls {
        stack,
        pc,
        work,
        root,
        ..
    } = t;
    age_lokis_certificate(stack, work, ips["loki01"]).await;
    let o = stack.atlas(&["plan", "--detailed-exitcode", "--ignore-preflight"]);
    let plan = format!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(2), "{plan}");
    assert!(
        plan.contains("~ certificate loki01: re-issued by step-ca01 (90 days; loki01 restarts): ")
            && plan.contains(" of its 4 hours left, less than a third")
            && plan.contains("Resources unchanged; install would make the changes above."),
        "{plan}"
    );
    let o = stack.install();
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("loki01 renewed and restarted"), "{log}");
    let renewed = work.join("loki01-renewed.crt");
    std::fs::write(&renewed, pull(pc, "loki01", "/etc/loki/tls/tls.crt").await).unwrap();
    assert_eq!(lifetime_days(&renewed), 90, "{}", dates(&renewed));
    curl_200(ns, root, "https://loki01.incus:3100/ready").await;
    let served = stdout(&sh(ns
        .cmd("sh")
        .arg("-c")
        .arg("openssl s_client -connect loki01.incus:3100 -servername loki01.incus </dev/null 2>/dev/null | openssl x509 -noout -enddate")));
    assert_eq!(
        served.trim(),
        dates(&renewed)
            .lines()
            .find(|l| l.starts_with("notAfter"))
            .unwrap(),
        "Loki serves the re-issued certificate"
    );
    let o = stack.install();
    assert!(stderr(&o).contains("No changes"), "{}", stderr(&o));
}

/// Upgrade --rotate-secrets re-encrypts the CA keys and the provisioner key: step-ca
/// restarts on the new password, and a certificate issued after it still verifies.
async fn rotation_keeps_the_root(t: &Tls<'_>, ns: &Netns) -> (String, String) {
    let Tls {
        stack,
        pc,
        work,
        root,
        ..
    } = t;
    let before = stack.secret(KEY_STEP).await;
    let o = stack.upgrade_rotating();
    let log = stderr(&o);
    assert!(o.status.success(), "upgrade --rotate-secrets: {log}");
    let after = stack.secret(KEY_STEP).await;
    assert_ne!(before, after, "step-ca password rotated");
    assert!(
        !log.contains(&before) && !log.contains(&after),
        "no password in the output"
    );
    assert_eq!(
        String::from_utf8_lossy(&pull(pc, "step-ca01", PASSWORD_FILE).await),
        after
    );
    let _ = pc
        .delete_file("grafana01", "/etc/grafana/tls/tls.crt")
        .await;
    let o = stack.install();
    let log = stderr(&o);
    assert!(o.status.success(), "re-issue after the rotation: {log}");
    assert!(
        log.contains("grafana01: certificate issued by step-ca01"),
        "{log}"
    );
    let chain = work.join("grafana01-after.crt");
    std::fs::write(
        &chain,
        pull(pc, "grafana01", "/etc/grafana/tls/tls.crt").await,
    )
    .unwrap();
    assert!(
        openssl_verify(root, &chain).status.success(),
        "same root after the rotation"
    );
    curl_200(ns, root, "https://grafana01.incus:3000/api/health").await;
    (before, after)
}

/// Step-ca refuses to start on a password that does not open its keys: the old one
/// (last: the file lives on step-ca's volume, which is mounted only while it runs).
async fn old_password_is_refused(t: &Tls<'_>, before: &str, after: &str) {
    let Tls { stack, pc, .. } = t;
    let (_, meta) = pc
        .pull_file_with_meta("step-ca01", PASSWORD_FILE)
        .await
        .unwrap();
    pc.push_file("step-ca01", PASSWORD_FILE, before.as_bytes().to_vec(), meta)
        .await
        .unwrap();
    pc.set_instance_state("step-ca01", StateAction::Stop, 30, false)
        .await
        .expect("stop step-ca01");
    // The start itself may be reported as done or failed: step-ca exits at once, and our PID 1
    // with it.
    let _ = pc
        .set_instance_state("step-ca01", StateAction::Start, 30, false)
        .await;
    assert!(
        stopped_within(pc, "step-ca01", 60).await,
        "step-ca must not run on the old password"
    );
    // Incus may still be writing the console log of the run that just ended.
    let mut console = String::new();
    for _ in 0..10 {
        console = atlas_install::engine::health::console_log(pc, "step-ca01")
            .await
            .unwrap_or_else(|e| format!("(console log: {e})"));
        if console.contains("decryption password incorrect") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        console.contains("decryption password incorrect"),
        "step-ca says why: {console}"
    );
    assert!(
        !console.contains(after),
        "no password on the console after the first start"
    );
    let o = stack.atlas(&["status"]);
    assert!(!o.status.success(), "status sees step-ca down");
}
