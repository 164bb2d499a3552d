//! The install engine against the real incusd: full install, converged re-runs with zero
//! writes, interrupted runs, foreign objects, bad input, destroy. Each test has its own
//! project (`t-te<n>-<pid>`), bridges (`te<n>...`), external bridge, free /24s (see
//! `common::hermetic`), host ports and image aliases, and a guard deletes all of it with a
//! fresh client.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use atlas_install::config::{Config, LoadOptions};
use atlas_install::deployment::Deployment;
use atlas_install::engine::install::SecretsFuture;
use atlas_install::engine::secrets::Secrets;
use atlas_install::engine::{Engine, EngineError, Options, SecretSource};
use atlas_install::incus::{Client, ImageImport, Network, OptionalExt, StateAction};
use atlas_install::progress::NoProgress;
use atlas_install::render::{Credentials, MqttCredential};

use atlas_test_support::busybox::{self, BusyboxImage};

use crate::common::client_or_skip;
use crate::common::hermetic::AtlasNames;
use crate::common::{atlas, free_port, stderr, stdout};

const SOCKET: &str = "/var/lib/incus/unix.socket";
const POOL: &str = "default";
/// Each test service and the ports it serves /www on (Caddy: its site and its admin metrics).
pub(crate) const SERVICES: [(&str, &[u16]); 3] = [
    ("caddy", &[80, 2019]),
    ("mosquitto", &[1883]),
    ("alertmanager", &[9093]),
];
/// The tests take turns: the shared incusd of this machine times out state changes when
/// several stacks churn at once, and races bridge creation against bridge deletion.
pub(crate) static STACKS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's names, ranges, ports and files.
pub(crate) struct Env {
    n: u8,
    pub(crate) project: String,
    nets: Vec<String>,
    cidrs: Vec<String>,
    /// Its project, bridges and external bridge (removed after the guard's cleanup).
    names: AtlasNames,
    caddy_ports: (u16, u16),
    mqtt_port: u16,
    dir: tempfile::TempDir,
    /// Foreign objects the test made itself.
    foreign_networks: Vec<String>,
    /// With a Loki (a test image serving /ready on 3100) and the server wiring on.
    wiring: bool,
    /// With the wiring on: the server keys and trust store as they were, put back first.
    server: Option<crate::common::hermetic::ServerGuard>,
}

impl Env {
    pub(crate) async fn new(_c: &Client, n: u8) -> Env {
        let names = AtlasNames::new(&format!("te{n}"));
        Env {
            n,
            project: names.project.clone(),
            nets: names.bridge_names(),
            cidrs: names
                .networks
                .iter()
                .map(|(_, _, c)| c.to_string())
                .collect(),
            names,
            caddy_ports: (free_port(), free_port()),
            mqtt_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            foreign_networks: Vec::new(),
            wiring: false,
            server: None,
        }
    }

    /// Like [`Env::new`], with loki01 (a test image) and both integrations on: install wires
    /// the server (Incus logging to that Loki, the metrics certificate, core.https_address).
    pub(crate) async fn with_wiring(c: &Client, n: u8) -> Env {
        let mut env = Env::new(c, n).await;
        env.wiring = true;
        env.server = Some(crate::common::hermetic::ServerGuard::remember(
            crate::wiring::SERVER_KEYS,
        ));
        env
    }

    /// The test services of this env and the ports each serves.
    fn services(&self) -> Vec<(&'static str, &'static [u16])> {
        let mut all = SERVICES.to_vec();
        if self.wiring {
            all.push(("loki", &[3100]));
        }
        all
    }

    pub(crate) fn alias(&self, service: &str) -> String {
        format!("{}/{service}", self.project)
    }

    /// atlas.toml for this test: three instances (caddy, mosquitto, alertmanager). Server
    /// wiring is off unless [`Env::with_wiring`] (then loki01 too): the daemon is shared with
    /// other tests (tests/it/wiring.rs covers the wiring on its own, restoring what it changes).
    fn toml(&self, extra: &str) -> String {
        let mut t = format!(
            "{}socket = \"{SOCKET}\"\n\n\
             [caddy]\nhttp_port = {}\nhttps_port = {}\nlisten_address = \"127.0.0.1\"\n\n\
             [mosquitto]\nmqtt_port = {}\nlisten_address = \"127.0.0.1\"\n\n\
             [instances.mosquitto01.snapshots]\nenabled = true\n\n\
             [integrations]\nincus_loki = {w}\nincus_metrics = {w}\n\n[images.aliases]\n",
            self.names.incus_toml(),
            self.caddy_ports.0,
            self.caddy_ports.1,
            self.mqtt_port,
            w = self.wiring,
        );
        for (s, _) in self.services() {
            t += &format!("{s} = \"{}\"\n", self.alias(s));
        }
        t += &self.names.networks_toml();
        // node-exporter is off: its host-root bind mount cannot be set up in a nested container.
        for off in [
            "grafana01",
            "prometheus01",
            "loki01",
            "node-exporter01",
            "step-ca01",
        ] {
            if off == "loki01" && self.wiring {
                continue;
            }
            t += &format!("\n[instances.{off}]\nenabled = false\n");
        }
        t + extra
    }

    fn write_config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("atlas.toml");
        std::fs::write(&path, self.toml(extra)).expect("write config");
        path
    }

    pub(crate) fn config(&self, extra: &str) -> Config {
        let file = self.write_config(extra);
        let opts = LoadOptions {
            file: Some(file),
            cwd: self.dir.path().to_path_buf(),
            env: vec![],
            project: None,
            incus_socket: None,
        };
        atlas_install::config::load(&opts)
            .expect("test config loads")
            .config
    }

    fn secrets_file(&self) -> PathBuf {
        let s = test_secrets();
        let path = self.dir.path().join("secrets.json");
        let v = serde_json::json!({
            "grafana_admin_password": s.credentials.grafana_admin_password,
            "step_ca_password": s.credentials.step_ca_password,
            "mosquitto": {"atlas": s.credentials.mosquitto["atlas"].password},
            "metrics_cert_pem": s.metrics_cert_pem,
            "metrics_key_pem": s.metrics_key_pem,
            "hash_key": s.hash_key,
        });
        std::fs::write(&path, v.to_string()).expect("write secrets");
        path
    }

    /// The binary on this test's config and secrets.
    pub(crate) fn atlas(&self, args: &[&str]) -> Command {
        let mut cmd = atlas();
        cmd.arg("-c")
            .arg(self.dir.path().join("atlas.toml"))
            .args(["--progress", "plain"])
            .args(args);
        if matches!(args.first(), Some(&"install" | &"upgrade")) {
            // This machine is below the seed's minimum host size; the test imported its
            // own images under the aliases.
            cmd.args(["--ignore-preflight", "--existing-images"]);
        }
        if args.first() == Some(&"plan") {
            cmd.args(["--existing-images", "--ignore-preflight"]);
        }
        cmd.env("ATLAS_TEST_SECRETS_FILE", self.secrets_file());
        cmd
    }

    /// The project, and the test images imported into it under the aliases of the config.
    pub(crate) async fn project_with_images(&self, c: &Client, cfg: &Config) {
        atlas_install::engine::ensure_project(c, cfg)
            .await
            .expect("ensure project");
        let pc = c.in_project(&self.project);
        for (service, ports) in self.services() {
            let tarball = image_tarball(service, ports);
            let body =
                reqwest::Body::from(tokio::fs::File::open(tarball).await.expect("open image"));
            let import = ImageImport {
                aliases: vec![self.alias(service)],
                ..ImageImport::default()
            };
            pc.import_image(body, &import)
                .await
                .expect("import test image");
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Before Loki goes: Incus would wait on a Loki that is gone.
        drop(self.server.take());
        if std::env::var_os("T_ENG_KEEP").is_some() {
            eprintln!(
                "T_ENG_KEEP: leaving project {} and networks {:?}",
                self.project, self.nets
            );
            return;
        }
        let (project, mut nets) = (self.project.clone(), self.nets.clone());
        nets.extend(self.foreign_networks.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let c = Client::unix_at(Path::new(SOCKET)).expect("cleanup client");
            rt.block_on(cleanup(c, project, nets));
        })
        .join();
    }
}

async fn cleanup(c: Client, project: String, nets: Vec<String>) {
    if c.get_project(&project)
        .await
        .optional()
        .ok()
        .flatten()
        .is_some()
    {
        let pc = c.in_project(&project);
        for i in pc.instances().await.unwrap_or_default() {
            if i.is_running() {
                let _ = pc
                    .set_instance_state(&i.name, StateAction::Stop, 5, true)
                    .await;
            }
            let _ = pc.delete_instance(&i.name).await;
        }
        for img in pc.images().await.unwrap_or_default() {
            let _ = pc.delete_image(&img.fingerprint).await;
        }
        for p in pc.profiles().await.unwrap_or_default() {
            if p.name != "default" {
                let _ = pc.delete_profile(&p.name).await;
            }
        }
        for v in pc.volumes(POOL).await.unwrap_or_default() {
            for s in pc.volume_snapshots(POOL, &v.name).await.unwrap_or_default() {
                let _ = pc.delete_volume_snapshot(POOL, &v.name, &s.name).await;
            }
            let _ = pc.delete_volume(POOL, &v.name).await;
        }
        if let Err(e) = c.delete_project(&project).await {
            eprintln!("cleanup: project {project} left behind: {e}");
        }
    }
    for n in nets {
        // A bridge delete can race another test's bridge in Incus 6.0: try a few times.
        for _ in 0..3 {
            match c.delete_network(&n).await {
                Err(e) if !e.is_not_found() => tokio::time::sleep(Duration::from_secs(1)).await,
                _ => break,
            }
        }
    }
}

/// The test's secrets: fixed passwords and a real metrics certificate.
fn test_secrets() -> Secrets {
    static S: OnceLock<Secrets> = OnceLock::new();
    S.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["atlas-prometheus".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let salt: [u8; 12] = std::array::from_fn(|i| b"atlas".get(i).copied().unwrap_or(0));
        Secrets {
            credentials: Credentials {
                grafana_admin_password: "t-eng-grafana-pw".into(),
                step_ca_password: "t-eng-step-pw".into(),
                mosquitto: BTreeMap::from([(
                    "atlas".to_string(),
                    MqttCredential {
                        password: "t-eng-mqtt-pw".into(),
                        salt,
                    },
                )]),
            },
            metrics_cert_pem: cert.pem(),
            metrics_key_pem: key.serialize_pem(),
            hash_key: "t-eng-hash-key".into(),
        }
    })
    .clone()
}

pub(crate) struct TestSecrets;

impl SecretSource for TestSecrets {
    fn load_or_generate<'a>(
        &'a self,
        _client: &'a Client,
        _config: &'a Config,
    ) -> SecretsFuture<'a> {
        Box::pin(async { Ok(test_secrets()) })
    }
}

/// The engine as the binary builds it: the config on this server (or cluster), read now.
pub(crate) async fn engine(c: &Client, cfg: &Config, fail_at: Option<&str>) -> Engine<'static> {
    let deployment = Deployment::read(c, cfg).await.expect("read the deployment");
    Engine {
        client: c.in_project(&cfg.incus.project),
        deployment,
        secrets: &TestSecrets,
        progress: &NoProgress,
        options: Options {
            ignore_preflight: true,
            fail_at: fail_at.map(str::to_string),
            health_timeout: Duration::from_secs(30),
            ..Options::default()
        },
    }
}

/// plan + apply through the library; returns the writes of the whole run.
async fn install(c: &Client, cfg: &Config, fail_at: Option<&str>) -> Result<u64, EngineError> {
    let w0 = c.writes();
    let e = engine(c, cfg, fail_at).await;
    let report = e.plan().await?;
    e.apply(&report).await?;
    Ok(c.writes() - w0)
}

/// A unified tarball (uncompressed) per service: static busybox, atlas-init as /sbin/init and
/// a service that serves /www on the service's port. Built once per test process.
fn image_tarball(service: &str, ports: &[u16]) -> PathBuf {
    image_tarball_variant(service, ports, "v1")
}

/// A test image of `service` serving `ports`, with `variant` in /www/version; the variant
/// `broken` starts and exits at once (it never passes a health gate).
pub(crate) fn image_tarball_variant(service: &str, ports: &[u16], variant: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let tarball = dir.path().join(format!("{service}-{variant}.tar"));
    if tarball.exists() {
        return tarball;
    }
    // httpd without -f daemonizes: all ports but the last in the background.
    let serve = if variant == "broken" {
        "echo 'broken test image: exits at once' >&2; exit 3".to_string()
    } else {
        ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let fg = if i + 1 == ports.len() { "exec " } else { "" };
                let f = if fg.is_empty() { "" } else { " -f" };
                format!("{fg}/bin/busybox httpd{f} -p {p} -h /www")
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut image = BusyboxImage::new(
        &dir.path().join(format!("{service}-{variant}")),
        &format!("atlas engine test {service} {variant}"),
    )
    .dir("www")
    .dir("mosquitto/data")
    .file("www/metrics", format!("up{{service=\"{service}\"}} 1\n"))
    .file("www/version", format!("{variant}\n"))
    .file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nmosquitto:x:1883:1883::/:/bin/false\n",
    )
    .file("etc/group", "root:x:0:\nmosquitto:x:1883:\n")
    .service(busybox::service(&["/bin/sh", "-c", &serve]));
    // Every health path the engine probes, so any service's gate can pass.
    for path in ["-/ready", "ready", "health", "api/health"] {
        image = image.file(&format!("www/{path}"), "ok\n");
    }
    image.tarball(&tarball)
}

pub(crate) use crate::common::have_busybox;

/// Forced stop; a busy daemon may time out the request while the instance does stop.
pub(crate) async fn stop(pc: &Client, name: &str) {
    for _ in 0..3 {
        let _ = pc
            .set_instance_state(name, StateAction::Stop, 10, true)
            .await;
        if pc.get_instance(name).await.expect("instance").value.status == "Stopped" {
            return;
        }
    }
    panic!("{name} does not stop");
}

pub(crate) async fn sh(pc: &Client, instance: &str, script: &str) -> String {
    let out = pc
        .exec(
            instance,
            &["/bin/busybox", "sh", "-c", script],
            &BTreeMap::new(),
        )
        .await
        .expect("exec");
    assert_eq!(
        out.exit_code,
        0,
        "{instance}: `{script}` failed: {}",
        out.stderr_str()
    );
    out.stdout_str()
}

/// Everything the test's project and networks hold, by kind, for "nothing duplicated" and
/// "nothing changed" checks.
async fn inventory(c: &Client, env: &Env) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    let nets: Vec<String> = c
        .networks()
        .await
        .expect("networks")
        .into_iter()
        .filter(|n| env.nets.contains(&n.name))
        .map(|n| n.name)
        .collect();
    m.insert("networks".to_string(), nets);
    if c.get_project(&env.project)
        .await
        .optional()
        .expect("project")
        .is_none()
    {
        return m;
    }
    let pc = c.in_project(&env.project);
    m.insert(
        "instances".into(),
        pc.instances()
            .await
            .expect("instances")
            .into_iter()
            .map(|i| format!("{} {}", i.name, i.status))
            .collect(),
    );
    m.insert(
        "profiles".into(),
        pc.profiles()
            .await
            .expect("profiles")
            .into_iter()
            .map(|p| p.name)
            .collect(),
    );
    m.insert(
        "volumes".into(),
        pc.volumes(POOL)
            .await
            .expect("volumes")
            .into_iter()
            .map(|v| v.name)
            .collect(),
    );
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_install_converges_reruns_with_zero_writes_and_destroys() {
    let c = client_or_skip!();
    let _turn = STACKS.lock().await;
    if !have_busybox() {
        return;
    }
    let env = Env::new(&c, 1).await;
    let cfg = env.config("");
    env.project_with_images(&c, &cfg).await;
    let pc = c.in_project(&env.project);

    let started = Instant::now();
    let first = install(&c, &cfg, None).await.expect("first install");
    eprintln!(
        "first install: {first} writes in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(first > 0);

    // Instances run, with the files pushed before first start (owner and mode from render).
    for (name, _) in cfg.enabled_instances() {
        let i = pc.get_instance(name).await.expect("instance").value;
        assert_eq!(i.status, "Running", "{name}");
        assert_eq!(
            i.profiles,
            vec!["default".to_string(), cfg.instances[name].profile.clone()]
        );
        assert_eq!(
            i.config.get("user.atlas.managed").map(String::as_str),
            Some("true")
        );
    }
    let stat = sh(
        &pc,
        "mosquitto01",
        "busybox stat -c '%u:%g %a' /mosquitto/config/passwd /mosquitto/config/mosquitto.conf",
    )
    .await;
    assert_eq!(
        stat, "1883:1883 600\n0:0 644\n",
        "owner/mode of rendered files"
    );
    let conf = pc
        .pull_file("mosquitto01", "/mosquitto/config/mosquitto.conf")
        .await
        .expect("pull");
    let rendered =
        atlas_install::render::render(&Deployment::standalone(&cfg), &test_secrets().credentials)
            .expect("render");
    let want = &rendered.instances["mosquitto01"]
        .files
        .iter()
        .find(|f| f.path.ends_with("mosquitto.conf"))
        .expect("conf")
        .contents;
    assert_eq!(&conf, want, "pushed bytes are the rendered bytes");

    // The network file was applied by atlas-init: fixed addresses on every NIC.
    let mosq_addr = cfg.instances["mosquitto01"].nics[0]
        .ipv4
        .expect("address")
        .to_string();
    let ip = sh(&pc, "mosquitto01", "busybox ip -4 addr show eth0").await;
    assert!(ip.contains(&format!("{mosq_addr}/24")), "{ip}");
    let caddy = pc.get_instance("caddy01").await.expect("caddy").value;
    let ext = caddy
        .config
        .get("user.atlas.external-address")
        .expect("external address recorded")
        .clone();
    let ip = sh(&pc, "caddy01", "busybox ip -4 addr").await;
    for nic in &cfg.instances["caddy01"].nics {
        if let Some(a) = nic.ipv4 {
            assert!(ip.contains(&a.to_string()), "caddy lacks {a}: {ip}");
        }
    }
    assert!(
        ip.contains(&format!("{ext}/24")),
        "caddy lacks its external address {ext}: {ip}"
    );
    // The data volume is mounted at the seed path, and the proxy ports listen on the host.
    let mounts = sh(&pc, "mosquitto01", "cat /proc/mounts").await;
    assert!(mounts.contains(" /mosquitto/data "), "{mounts}");
    assert!(
        TcpListener::bind(("127.0.0.1", env.mqtt_port)).is_err(),
        "the mqtt proxy device holds its host port"
    );
    let vol = pc
        .get_volume(POOL, "mosquitto01-data")
        .await
        .expect("volume")
        .value;
    assert_eq!(
        vol.config.get("snapshots.schedule").map(String::as_str),
        Some("@daily")
    );

    // Converged: the plan is empty and a re-run makes zero writing calls.
    let started = Instant::now();
    let e = engine(&c, &cfg, None).await;
    let w0 = c.writes();
    let report = e.plan().await.expect("plan");
    assert!(!report.has_changes(), "{report}");
    assert!(report.to_string().contains("No changes"), "{report}");
    e.apply(&report).await.expect("re-run");
    assert_eq!(c.writes() - w0, 0, "a converged re-run writes nothing");
    eprintln!(
        "converged re-run: 0 writes in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The binary agrees: plan --detailed-exitcode 0, install says no changes with 0 writes.
    let o = env
        .atlas(&["plan", "--detailed-exitcode"])
        .output()
        .expect("plan");
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("No changes"), "{}", stdout(&o));
    let o = env
        .atlas(&["install", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("install");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("install --json");
    assert_eq!(v["writes"], 0, "{v}");
    for secret in ["t-eng-grafana-pw", "t-eng-mqtt-pw", "PRIVATE KEY"] {
        assert!(
            !stdout(&o).contains(secret) && !stderr(&o).contains(secret),
            "secret in output"
        );
    }
    // Same external address on every run.
    assert_eq!(
        pc.get_instance("caddy01")
            .await
            .expect("caddy")
            .value
            .config["user.atlas.external-address"],
        ext
    );

    // One value changes one object.
    let cfg2 = env.config("\n[instances.alertmanager01]\nmemory = \"192MB\"\n");
    let e2 = engine(&c, &cfg2, None).await;
    let report = e2.plan().await.expect("plan");
    assert_eq!(report.plan.changed(), ["profile alertmanager"], "{report}");
    let o = env
        .atlas(&["plan", "--detailed-exitcode", "--json"])
        .output()
        .expect("plan");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("plan --json");
    assert_eq!(v["has_changes"], true);
    assert_eq!(v["writes"], 0);
    let w0 = c.writes();
    e2.apply(&report).await.expect("apply one change");
    assert_eq!(c.writes() - w0, 1, "one PUT of one profile");
    assert_eq!(
        pc.get_profile("alertmanager")
            .await
            .expect("profile")
            .value
            .config["limits.memory"],
        "192MB"
    );

    // destroy: needs --yes off a terminal; keeps the volume (and so the project) by default.
    let o = env
        .atlas(&["destroy"])
        .stdin(Stdio::null())
        .output()
        .expect("destroy");
    assert!(
        !o.status.success() && stderr(&o).contains("--yes"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        pc.instances().await.expect("instances").len(),
        3,
        "refused destroy changed nothing"
    );
    let o = env.atlas(&["destroy", "--yes"]).output().expect("destroy");
    assert!(o.status.success(), "{}", stderr(&o));
    let inv = inventory(&c, &env).await;
    assert_eq!(inv["networks"], Vec::<String>::new());
    assert!(
        inv["instances"].is_empty() && inv["profiles"] == ["default"],
        "{inv:?}"
    );
    assert_eq!(
        inv["volumes"],
        ["alertmanager01-data", "caddy01-data", "mosquitto01-data"],
        "data volumes kept"
    );
    let o = env
        .atlas(&["destroy", "--yes", "--delete-volumes"])
        .output()
        .expect("destroy");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        c.get_project(&env.project)
            .await
            .optional()
            .expect("get")
            .is_none(),
        "project removed with the volumes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_runs_converge_without_duplicates() {
    let c = client_or_skip!();
    let _turn = STACKS.lock().await;
    if !have_busybox() {
        return;
    }
    let env = Env::new(&c, 2).await;
    let cfg = env.config("");
    env.project_with_images(&c, &cfg).await;
    let pc = c.in_project(&env.project);

    // Injected failures between and inside steps.
    for point in [
        "after-networks",
        "after-volumes",
        "instance-created",
        "files-pushed",
        "instance-started",
    ] {
        let e = install(&c, &cfg, Some(point))
            .await
            .expect_err("failure point");
        assert!(
            matches!(e, EngineError::FailPoint(ref p) if p == point),
            "{e}"
        );
    }
    // An instance stopped at "files-pushed" carries the pending hash: not mistaken for done.
    let pending: Vec<String> = pc
        .instances()
        .await
        .expect("instances")
        .into_iter()
        .filter(|i| {
            i.config
                .get("user.atlas.hash")
                .is_some_and(|h| h == "pending")
        })
        .map(|i| i.name)
        .collect();
    assert!(
        !pending.is_empty(),
        "an interrupted instance must be marked pending"
    );

    // A real kill -9 of the binary in the middle of the instance step.
    let inst = pc.instances().await.expect("instances");
    for i in inst {
        // Remove the instances so that the killed run has work in the instance step.
        if i.is_running() {
            stop(&pc, &i.name).await;
        }
        pc.delete_instance(&i.name).await.expect("delete");
    }
    let mut child = env
        .atlas(&["install", "--yes"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn");
    let lines = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = Vec::new();
    for line in lines.lines() {
        let line = line.expect("line");
        seen.push(line.clone());
        if line.contains("instances ...") {
            std::thread::sleep(Duration::from_millis(700));
            child.kill().expect("kill -9");
            break;
        }
    }
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the run was killed: {seen:?}");

    // Re-run converges: everything once, running, and then nothing more to do.
    let o = env.atlas(&["install", "--yes"]).output().expect("install");
    assert!(o.status.success(), "{}", stderr(&o));
    let inv = inventory(&c, &env).await;
    assert_eq!(inv["networks"].len(), 5, "{inv:?}");
    let mut want_instances = vec![
        "alertmanager01 Running",
        "caddy01 Running",
        "mosquitto01 Running",
    ];
    want_instances.sort();
    let mut got = inv["instances"].clone();
    got.sort();
    assert_eq!(got, want_instances);
    assert_eq!(
        inv["volumes"],
        ["alertmanager01-data", "caddy01-data", "mosquitto01-data"]
    );
    assert_eq!(inv["profiles"].len(), 4, "{inv:?}");
    let w0 = c.writes();
    let report = engine(&c, &cfg, None).await.plan().await.expect("plan");
    assert!(!report.has_changes(), "{report}");
    assert_eq!(c.writes(), w0);
    let o = env
        .atlas(&["plan", "--detailed-exitcode"])
        .output()
        .expect("plan");
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_object_with_our_name_is_reported_and_untouched() {
    let c = client_or_skip!();
    let _turn = STACKS.lock().await;
    let mut env = Env::new(&c, 3).await;
    // A bridge with our management network's name but no atlas keys, on another free range.
    let name = env.nets[4].clone();
    let foreign_cidr = crate::common::hermetic::free_subnets(1)[0].to_string();
    let cfg_map: BTreeMap<String, String> = [
        ("ipv4.address", foreign_cidr.as_str()),
        ("ipv4.nat", "false"),
        ("ipv6.address", "none"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    c.create_network(&Network::bridge(&name, cfg_map))
        .await
        .expect("foreign network");
    env.foreign_networks.push(name.clone());
    let before = c.get_network(&name).await.expect("get").value;
    let cfg = env.config("");

    let w0 = c.writes();
    let e = engine(&c, &cfg, None).await;
    let report = e.plan().await.expect("plan shows the conflict");
    assert_eq!(report.conflicts(), [format!("network {name}")]);
    assert!(
        report
            .to_string()
            .contains(&format!("! network {name} (exists but is not managed")),
        "{report}"
    );
    let err = e.apply(&report).await.expect_err("conflict aborts");
    assert!(
        matches!(err, EngineError::Conflicts(_))
            && err.to_string().contains(&format!("network {name}")),
        "{err}"
    );
    assert_eq!(c.writes(), w0, "no writes at all");
    assert_eq!(
        c.get_network(&name).await.expect("get").value,
        before,
        "foreign network untouched"
    );
    assert!(
        c.get_project(&env.project)
            .await
            .optional()
            .expect("get")
            .is_none(),
        "nothing created"
    );

    let o = env.atlas(&["install", "--yes"]).output().expect("install");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!("network {name}"))
            && stderr(&o).contains("not managed by atlas-install"),
        "{}",
        stderr(&o)
    );
    assert_eq!(c.get_network(&name).await.expect("get").value, before);
}

/// Runs plan+apply expecting a preflight error; checks the message and that nothing changed.
async fn refused(c: &Client, env: &Env, cfg: &Config, wants: &[&str]) {
    let before = inventory(c, env).await;
    let w0 = c.writes();
    let err = install(c, cfg, None)
        .await
        .expect_err("bad input must fail");
    let msg = err.to_string();
    for w in wants {
        assert!(msg.contains(w), "error lacks `{w}`: {msg}");
    }
    assert!(matches!(err, EngineError::Preflight(_)), "{msg}");
    assert_eq!(c.writes(), w0, "no writes: {msg}");
    assert_eq!(inventory(c, env).await, before, "nothing changed");
    assert!(
        c.get_project(&env.project)
            .await
            .optional()
            .expect("get")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_clear_error_and_changes_nothing() {
    let c = client_or_skip!();
    let _turn = STACKS.lock().await;
    let mut env = Env::new(&c, 4).await;

    // Daemon unreachable.
    env.write_config("");
    let o = env
        .atlas(&[
            "install",
            "--yes",
            "--incus-socket",
            "/nonexistent/incus/unix.socket",
        ])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("/nonexistent/incus/unix.socket")
            && stderr(&o).contains("incusd running"),
        "{}",
        stderr(&o)
    );

    // Missing pool.
    let cfg = env.config("");
    let mut no_pool = cfg.clone();
    no_pool.incus.storage_pool = format!("t-eng-nopool-{}", std::process::id());
    refused(
        &c,
        &env,
        &no_pool,
        &[&no_pool.incus.storage_pool, "incus storage create"],
    )
    .await;

    // Clashing CIDR: a foreign bridge on our management range.
    let foreign = format!("te{}{}x", env.n, std::process::id() % 10000);
    let cfg_map: BTreeMap<String, String> = [
        ("ipv4.address", env.cidrs[4].as_str()),
        ("ipv4.nat", "false"),
        ("ipv6.address", "none"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    c.create_network(&Network::bridge(&foreign, cfg_map))
        .await
        .expect("foreign bridge");
    env.foreign_networks.push(foreign.clone());
    let before = c.get_network(&foreign).await.expect("get").value;
    refused(
        &c,
        &env,
        &cfg,
        &[
            &format!("existing network {foreign}"),
            "networks.management.ipv4",
        ],
    )
    .await;
    assert_eq!(c.get_network(&foreign).await.expect("get").value, before);
    c.delete_network(&foreign)
        .await
        .expect("remove foreign bridge");

    // Port taken: something listens on Caddy's HTTP port.
    let listener = TcpListener::bind(("127.0.0.1", env.caddy_ports.0)).expect("hold the port");
    refused(
        &c,
        &env,
        &cfg,
        &[
            &format!("127.0.0.1:{}", env.caddy_ports.0),
            "caddy.http_port",
        ],
    )
    .await;
    let o = env.atlas(&["install", "--yes"]).output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("caddy.http_port") && stderr(&o).contains("nothing was changed"),
        "{}",
        stderr(&o)
    );
    drop(listener);

    // Below-minimum host without --ignore-preflight: refused or fine, depending on the host,
    // but never a partial change.
    let e = Engine {
        options: Options::default(),
        ..engine(&c, &cfg, None).await
    };
    let w0 = c.writes();
    if let Err(err) = e.plan().await {
        assert!(err.to_string().contains("--ignore-preflight"), "{err}");
    }
    assert_eq!(c.writes(), w0);
}
