//! The whole stack, end to end: `install --yes` builds every Atlas image from its recipe over
//! the fixture "upstream" images (tests/fixtures/build-images.sh serves them on
//! 127.0.0.1:5000; prometheus, alertmanager, node-exporter, caddy and mosquitto are the real
//! Debian binaries), deploys it on the real incusd, and the services work together.
//!
//! Network: the test talks to 127.0.0.1 (registry, proxy devices) and to the bridges it
//! creates itself (its five networks and its own external bridge, on ranges nothing on the
//! host uses: `common::hermetic`); nothing else. So it runs beside the README demo.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use atlas_install::incus::{Client, FileMeta, OptionalExt, StateAction};
use serde_json::Value;

use crate::common::{
    atlas, fixture_of, free_port, have_tool, recipe_base, require_all, stderr, stdout, step,
    step_async,
};

pub(crate) const REGISTRY: crate::common::FixtureRegistry = crate::common::FixtureRegistry;
/// Where tests/fixtures/build-images.sh lays the recipes' downloads (Caddy's plugin build;
/// here the Debian binary), as a `file://` download mirror.
const DOWNLOADS: &str = "file:///var/tmp/atlas-test/downloads";
/// base64 of `{"a":"atlas-fixture","t":"6a9e2d7e-…","s":"c2VjcmV0"}`: a tunnel token whose
/// account tag makes the cloudflared fixture connect (tests/fixtures/README.md).
pub(crate) const FIXTURE_TUNNEL_TOKEN: &str = "eyJhIjoiYXRsYXMtZml4dHVyZSIsInQiOiI2YTllMmQ3ZS05YzQ4LTQwMWItYmRmZC1hYjIxOWQzZDRkZjUiLCJzIjoiYzJWamNtVjAifQ==";

/// The fixture images are in the local registry under the recipes' tags (run-tests.sh
/// builds them first); says once what they cannot check.
pub(crate) fn fixtures_ready() -> bool {
    let (repo, tag) = fixture_of("prometheus")
        .rsplit_once(':')
        .map(|(r, t)| (r.to_string(), t.to_string()))
        .expect("a tag");
    let ok = Command::new("curl")
        .args(["-fsS", "-o", "/dev/null", "--max-time", "5"])
        .arg(format!("http://{REGISTRY}/v2/{repo}/manifests/{tag}"))
        .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok || !require_all(),
        "fixture images missing on {REGISTRY}: run tests/fixtures/build-images.sh (ATLAS_TEST_REQUIRE_ALL=1)"
    );
    if !ok {
        eprintln!("skipping: no fixture images on {REGISTRY} (tests/fixtures/build-images.sh)");
    } else {
        crate::common::announce_fixture_gaps();
    }
    ok
}

pub(crate) struct Stack {
    pub(crate) project: String,
    pub(crate) nets: Vec<String>,
    /// Its project, bridges, ranges and external bridge.
    pub(crate) names: crate::common::hermetic::AtlasNames,
    pub(crate) https_port: u16,
    http_port: u16,
    pub(crate) mqtt_port: u16,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) client: Client,
}

impl Stack {
    /// `tag` keeps two tests of one process apart (project, bridges, ranges).
    pub(crate) async fn new(client: Client, tag: char) -> Stack {
        let names = crate::common::hermetic::AtlasNames::new(&format!("ts{tag}"));
        Stack {
            project: names.project.clone(),
            nets: names.bridge_names(),
            names,
            https_port: free_port(),
            http_port: free_port(),
            mqtt_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            client,
        }
    }

    pub(crate) fn config(&self, allowed: &str) -> PathBuf {
        self.config_with(allowed, "")
    }

    /// The test config with `extra` (TOML) laid over it, key by key.
    pub(crate) fn config_with(&self, allowed: &str, extra: &str) -> PathBuf {
        let mut t = format!(
            "{}\n\
             # A tunnel token the cloudflared fixture connects with (tests/fixtures/README.md).\n\
             [cloudflared]\ntoken_file = \"cloudflared-token\"\n\n\
             [caddy]\nhttp_port = {}\nhttps_port = {}\nlisten_address = \"127.0.0.1\"\n\
             # Debian's Caddy 2.6 has neither the PROXY protocol wrapper nor the rate-limit plugin.\n\
             proxy_protocol = false\n\n[caddy.rate_limit]\nenabled = false\n\n\
             [mosquitto]\nmqtt_port = {}\nlisten_address = \"127.0.0.1\"\n\n\
             # This host's / is a private mount (no systemd).\n\
             [node_exporter]\nfollow_host_mounts = false\n\n\
             # The daemon is shared with other tests: no server-wide wiring here.\n\
             [integrations]\nincus_loki = false\nincus_metrics = false\n\n\
             [images]\ndownload_mirror = \"{DOWNLOADS}\"\n\n\
             [instances.grafana01.web]\nallowed_ip_range = [{allowed}]\n",
            self.names.incus_toml(),
            self.http_port,
            self.https_port,
            self.mqtt_port
        );
        t += &self.names.networks_toml();
        let mut table: toml::Table = t.parse().expect("test config");
        merge(&mut table, extra.parse().expect("extra config"));
        let token = self.dir.path().join("cloudflared-token");
        std::fs::write(&token, FIXTURE_TUNNEL_TOKEN).expect("token file");
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod token file");
        let path = self.dir.path().join("atlas.toml");
        std::fs::write(&path, table.to_string()).expect("config");
        path
    }

    pub(crate) fn atlas(&self, args: &[&str]) -> Output {
        self.run(atlas(), args, "")
    }

    /// `atlas` in a network namespace of its own (`unshare --net`): only a loopback that is
    /// down, so no address at all, local or remote, can be reached. The Incus unix socket is a
    /// file and still works: the one connection an offline install may make.
    fn atlas_offline(&self, args: &[&str]) -> Output {
        let cmd = atlas();
        let mut offline = Command::new("unshare");
        offline.arg("--net").arg("--").arg(cmd.get_program());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => offline.env(k, v),
                None => offline.env_remove(k),
            };
        }
        self.run(offline, args, "(no network) ")
    }

    /// `cmd` (atlas-install, or what wraps it) on this stack's config and cache.
    pub(crate) fn run(&self, mut cmd: Command, args: &[&str], label: &str) -> Output {
        let out = cmd
            .arg("-c")
            .arg(self.dir.path().join("atlas.toml"))
            .args(["--progress", "plain"])
            .args(args)
            .env("ATLAS_CACHE_DIR", self.dir.path().join("cache"))
            .output()
            .expect("run atlas-install");
        eprintln!("{label}atlas-install {}: {}", args.join(" "), out.status);
        out
    }

    pub(crate) fn install(&self) -> Output {
        self.atlas(&[
            "install",
            "--yes",
            "--ignore-preflight",
            "--registry-mirror",
            &REGISTRY,
        ])
    }

    /// `upgrade --rotate-secrets` from the fixture registry.
    pub(crate) fn upgrade_rotating(&self) -> Output {
        self.atlas(&[
            "upgrade",
            "--yes",
            "--ignore-preflight",
            "--registry-mirror",
            &REGISTRY,
            "--rotate-secrets",
            "--health-timeout",
            "120",
        ])
    }

    pub(crate) fn project(&self) -> Client {
        self.client.in_project(&self.project)
    }

    pub(crate) async fn address(&self, instance: &str, nic: &str) -> Ipv4Addr {
        let state: Value = self
            .project()
            .get_path(&format!("/1.0/instances/{instance}/state"), true)
            .await
            .expect("instance state")
            .value;
        state["network"][nic]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["family"] == "inet")
            .and_then(|a| a["address"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("{instance} has no IPv4 on {nic}: {state}"))
    }

    /// Grafana's own HTTP address (as the health gate reaches it).
    async fn grafana_base(&self) -> String {
        let opts = atlas_install::config::LoadOptions {
            file: Some(self.dir.path().join("atlas.toml")),
            cwd: self.dir.path().to_path_buf(),
            env: vec![],
            project: None,
            incus_socket: None,
        };
        let cfg = atlas_install::config::load(&opts).expect("config").config;
        let probe = atlas_install::engine::health::probe_for(
            &cfg,
            "grafana01",
            &cfg.instances["grafana01"],
        )
        .expect("grafana01 has an address");
        match probe.check {
            atlas_install::engine::health::Check::Http { url, .. } => {
                url.trim_end_matches("/api/health").to_string()
            }
            other => panic!("grafana01 probe: {other:?}"),
        }
    }

    pub(crate) async fn secret(&self, key: &str) -> String {
        let p = self
            .client
            .get_project(&self.project)
            .await
            .expect("project")
            .value;
        p.config
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("secret {key} not stored in the project"))
    }
}

/// `over`'s keys replace `base`'s, tables merged key by key.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Removes everything the test made, volumes included, even when the test failed.
pub(crate) struct Cleanup<'a>(pub(crate) &'a Stack);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        // An instance whose service crash-loops can be busy with Incus' own restart: again.
        for attempt in 1..=3 {
            let o = self.0.atlas(&["destroy", "--delete-volumes", "--yes"]);
            if o.status.success() {
                break;
            }
            eprintln!(
                "cleanup: destroy failed (attempt {attempt}): {}",
                stderr(&o)
            );
            std::thread::sleep(Duration::from_secs(3));
        }
        for n in &self.0.nets {
            crate::common::hermetic::delete_network(n);
        }
    }
}

pub(crate) async fn http_get(url: &str) -> Result<(u16, String), String> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let r = c.get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.unwrap_or_default()))
}

/// Polls Prometheus until every job in `jobs` has a target with up == 1.
pub(crate) async fn wait_for_up(prom: Ipv4Addr, jobs: &[&str]) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut ups = Vec::new();
        if let Ok((200, body)) =
            http_get(&format!("http://{prom}:9090/api/v1/query?query=up")).await
        {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            for r in v["data"]["result"].as_array().into_iter().flatten() {
                let job = r["metric"]["job"].as_str().unwrap_or_default().to_string();
                let val = r["value"][1].as_str().unwrap_or_default().to_string();
                ups.push((job, val));
            }
        }
        let all = jobs
            .iter()
            .all(|j| ups.iter().any(|(job, v)| job == j && v == "1"));
        if all || Instant::now() > deadline {
            return ups;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// `https://grafana.atlas.localhost:PORT/` through the proxy device on 127.0.0.1, with the
/// name resolved to loopback (Caddy's internal CA is not trusted here: TLS is not the point).
async fn through_caddy(port: u16) -> Result<u16, String> {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .resolve(
            "grafana.atlas.localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .build()
        .map_err(|e| e.to_string())?;
    let r = c
        .get(format!("https://grafana.atlas.localhost:{port}/api/health"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.status().as_u16())
}

/// The same request until the answer settles (Caddy gets its internal certificate lazily).
pub(crate) async fn caddy_status(port: u16) -> u16 {
    let mut last = Err(String::new());
    for _ in 0..20 {
        last = through_caddy(port).await;
        if let Ok(s) = last {
            return s;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!("Caddy on 127.0.0.1:{port} did not answer: {last:?}");
}

fn mqtt_pub(port: u16, user: &str, password: &str) -> Output {
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args([
            "-u",
            user,
            "-P",
            password,
            "-t",
            "atlas/test",
            "-m",
            "hello",
        ])
        .args(["-i", "atlas-stack-test"])
        .output()
        .expect("mosquitto_pub")
}

pub(crate) async fn restart_seconds(pc: &Client, name: &str) -> f64 {
    let t = Instant::now();
    pc.set_instance_state(name, StateAction::Restart, 30, false)
        .await
        .unwrap_or_else(|e| panic!("restart {name}: {e}"));
    t.elapsed().as_secs_f64()
}

async fn read_marker(pc: &Client) -> String {
    let bytes = pc
        .pull_file("prometheus01", "/prometheus/atlas-test-marker")
        .await
        .expect("read marker");
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The daemon's turn for one stack and a fresh stack named by `tag` (see [`Stack::new`]);
/// None, and the test skips, when incusd, a tool or the fixture images are missing.
pub(crate) async fn fixture_stack(
    tag: char,
) -> Option<(tokio::sync::MutexGuard<'static, ()>, Stack)> {
    let client = crate::common::incus_client().await?;
    if !has_tools() || !fixtures_ready() {
        return None;
    }
    let turn = crate::engine::STACKS.lock().await;
    Some((turn, Stack::new(client, tag).await))
}

pub(crate) fn has_tools() -> bool {
    ["curl", "mosquitto_pub", "incus"]
        .iter()
        .all(|t| have_tool(t))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_stack_from_fixture_images_works_end_to_end() {
    let Some((_turn, stack)) = fixture_stack('a').await else {
        return;
    };
    stack.config("\"127.0.0.1/32\"");
    let _cleanup = Cleanup(&stack);

    // One install, then steps in order over it: a failure names its step.
    step_async("1 install", first_install(&stack)).await;
    step_async(
        "2 prometheus scrapes",
        prometheus_scrapes_and_alerts(&stack),
    )
    .await;
    step_async("3 caddy allows", async {
        assert_eq!(caddy_status(stack.https_port).await, 200, "allowed source");
    })
    .await;
    step_async("4 mosquitto credentials", mosquitto_credentials(&stack)).await;
    let marker = step_async("5 data survives restarts", data_survives_restarts(&stack)).await;
    step_async(
        "6 reinstall",
        second_install_changes_nothing(&stack, &marker),
    )
    .await;
    step_async("7 allowlist", allowlist_refuses(&stack)).await;
    let before = step_async("8a rotation refused", rotation_refused(&stack)).await;
    step_async("8b rotation", rotation_changes_every_secret(&stack, before)).await;
    step_async(
        "9 refused inputs",
        refused_inputs_fail_the_health_gate(&stack),
    )
    .await;
}

/// Install: every image built from its recipe, every service healthy.
async fn first_install(stack: &Stack) {
    let o = stack.install();
    assert!(o.status.success(), "install failed:\n{}", stderr(&o));
    let log = stderr(&o);
    assert!(log.contains("images:"), "{log}");
    assert!(
        log.contains(&format!(
            "not in images.lock: pinned {} to sha256:",
            recipe_base("prometheus")
        )),
        "first pull pins and says so: {log}"
    );
    assert!(
        log.contains(
            "not in images.lock: pinned https://caddyserver.com/api/download?os=linux&arch="
        ) && log.contains("on first download"),
        "Caddy's plugin build is pinned on first download: {log}"
    );
    for i in [
        "grafana01",
        "prometheus01",
        "loki01",
        "alertmanager01",
        "step-ca01",
        "node-exporter01",
        "mosquitto01",
        "caddy01",
        "cloudflared01",
    ] {
        assert!(
            log.contains(&format!("health {i}")),
            "{i} not health-gated: {log}"
        );
    }
    layouts_kept(stack).await;
    grafana_serves_the_provisioned_datasources(stack).await;
}

/// The real Prometheus scrapes the real exporters and has the ten alert rules.
async fn prometheus_scrapes_and_alerts(stack: &Stack) {
    let prom = stack.address("prometheus01", "eth0").await;
    // step-ca's metrics are on because the installer wrote metricsAddress into its ca.json.
    let jobs = [
        "prometheus",
        "node-exporter",
        "alertmanager",
        "caddy",
        "step-ca",
    ];
    let ups = wait_for_up(prom, &jobs).await;
    for job in jobs {
        assert!(
            ups.iter().any(|(j, v)| j == job && v == "1"),
            "up{{job={job:?}}} != 1: {ups:?}"
        );
    }
    let (s, rules) = http_get(&format!("http://{prom}:9090/api/v1/rules"))
        .await
        .expect("rules");
    assert_eq!(s, 200, "{rules}");
    let rules: Value = serde_json::from_str(&rules).expect("rules json");
    let n: usize = rules["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(n, 10, "alert rules loaded: {rules}");
}

/// Mosquitto takes the generated credentials and refuses wrong ones.
async fn mosquitto_credentials(stack: &Stack) {
    let pw = stack
        .secret("user.atlas.secret.mosquitto.atlas.password")
        .await;
    let ok = mqtt_pub(stack.mqtt_port, "atlas", &pw);
    assert!(
        ok.status.success(),
        "publish with the generated password: {}",
        stderr(&ok)
    );
    let bad = mqtt_pub(stack.mqtt_port, "atlas", "wrong-password");
    assert!(!bad.status.success(), "a wrong password must be refused");
}

/// Volumes at the seed's paths; data survives a restart. Returns the marker written.
async fn data_survives_restarts(stack: &Stack) -> String {
    let pc = stack.project();
    let marker = format!("atlas-stack-{}", std::process::id());
    // The image has no shell: write with the service's own files API.
    pc.push_file(
        "prometheus01",
        "/prometheus/atlas-test-marker",
        marker.as_bytes().to_vec(),
        FileMeta {
            uid: 65534,
            gid: 65534,
            mode: 0o644,
        },
    )
    .await
    .expect("write marker into the data volume");
    let mut slowest = (String::new(), 0.0f64);
    for name in [
        "prometheus01",
        "alertmanager01",
        "mosquitto01",
        "caddy01",
        "grafana01",
    ] {
        let secs = restart_seconds(&pc, name).await;
        if secs > slowest.1 {
            slowest = (name.to_string(), secs);
        }
    }
    eprintln!("slowest restart: {} {:.2}s", slowest.0, slowest.1);
    assert!(
        slowest.1 < 5.0,
        "incus restart of {} took {:.2}s",
        slowest.0,
        slowest.1
    );
    let read = read_marker(&pc).await;
    assert_eq!(read, marker, "data kept over restart");
    marker
}

/// A second install changes nothing, and plan agrees.
async fn second_install_changes_nothing(stack: &Stack, marker: &str) {
    let o = stack.install();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("No changes"), "{}", stderr(&o));
    let o = stack.atlas(&["plan", "--detailed-exitcode", "--ignore-preflight"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(
        read_marker(&stack.project()).await,
        marker,
        "data kept over a second install"
    );
}

/// An allowlist without this source: Caddy refuses it.
async fn allowlist_refuses(stack: &Stack) {
    stack.config("\"192.0.2.0/24\"");
    let o = stack.install();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        caddy_status(stack.https_port).await,
        403,
        "source outside allowed_ip_range"
    );
    assert!(
        stack
            .project()
            .get_instance("caddy01")
            .await
            .optional()
            .expect("get")
            .is_some(),
        "caddy01 kept"
    );
}

/// The generated secrets `upgrade --rotate-secrets` changes: Grafana's admin password, the
/// Mosquitto user's, step-ca's key password and the metrics certificate.
const ROTATED: [&str; 4] = [
    "user.atlas.secret.grafana-admin-password",
    "user.atlas.secret.mosquitto.atlas.password",
    "user.atlas.secret.step-ca-password",
    "user.atlas.secret.metrics-certificate",
];

/// The secrets of [`ROTATED`], in its order.
async fn rotated_secrets(stack: &Stack) -> Vec<String> {
    futures_util::future::join_all(ROTATED.map(|k| stack.secret(k))).await
}

/// step-ca's two encrypted keys as they are on its data volume (mounted while it runs).
async fn step_ca_keys(c: Client) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    for k in ["root_ca_key", "intermediate_ca_key"] {
        let path = format!("/home/step/secrets/{k}");
        let key = c.pull_file("step-ca01", &path).await;
        keys.push(key.unwrap_or_else(|e| panic!("step-ca key {path}: {e}")));
    }
    keys
}

/// The secrets and step-ca keys before a rotation.
struct BeforeRotation {
    secrets: Vec<String>,
    step_keys: Vec<Vec<u8>>,
}

/// Step-ca's keys are re-encrypted inside it: with step-ca stopped, the rotation is
/// refused before anything changes, and says why.
async fn rotation_refused(stack: &Stack) -> BeforeRotation {
    let keys_before = step_ca_keys(stack.project()).await;
    let before = rotated_secrets(stack).await;
    let pc = stack.project();
    crate::engine::stop(&pc, "step-ca01").await;
    let o = stack.atlas(&[
        "upgrade",
        "--yes",
        "--ignore-preflight",
        "--registry-mirror",
        &REGISTRY,
        "--rotate-secrets",
    ]);
    let log = stderr(&o);
    assert!(!o.status.success(), "rotation with step-ca stopped: {log}");
    assert!(
        log.contains("~ secrets: new Grafana admin password, step-ca key password"),
        "the plan names what rotates: {log}"
    );
    assert!(
        log.contains("step-ca01 must be running") && log.contains("Nothing was changed"),
        "{log}"
    );
    let unchanged = rotated_secrets(stack).await;
    assert_eq!(unchanged, before, "a refused rotation changes no secret");
    let project = stack
        .client
        .get_project(&stack.project)
        .await
        .expect("project")
        .value;
    assert!(
        !project.config.keys().any(|k| k.ends_with(".next")),
        "no password staged: {:?}",
        project.config.keys().collect::<Vec<_>>()
    );
    pc.set_instance_state("step-ca01", StateAction::Start, 30, false)
        .await
        .expect("start step-ca01 again");
    assert!(
        wait_healthy(stack).await,
        "step-ca back on its unchanged password"
    );
    // Read while running: the keys are on step-ca's data volume, mounted only then.
    assert_eq!(
        step_ca_keys(stack.project()).await,
        keys_before,
        "keys untouched"
    );
    BeforeRotation {
        secrets: before,
        step_keys: keys_before,
    }
}

/// Upgrade --rotate-secrets: every generated secret changes, each the service's way.
/// Grafana (which ignores its env var after the first start) takes the new admin password
/// through its API; Mosquitto gets a new password file; step-ca's keys are re-encrypted
/// with `step crypto change-pass` and the password file it starts with is replaced (the
/// stand-in, like step-ca, will not start when that file does not open its keys).
async fn rotation_changes_every_secret(stack: &Stack, was: BeforeRotation) {
    let (before, keys_before) = (was.secrets, was.step_keys);
    let o = stack.upgrade_rotating();
    assert!(
        o.status.success(),
        "upgrade --rotate-secrets: {}",
        stderr(&o)
    );
    let after = rotated_secrets(stack).await;
    assert_ne!(before[0], after[0], "grafana admin password rotated");
    assert_ne!(before[1], after[1], "mosquitto password rotated");
    assert_ne!(before[2], after[2], "step-ca password rotated");
    assert_ne!(before[3], after[3], "metrics certificate rotated");
    let log = stderr(&o);
    assert!(
        !log.contains(&after[0]) && !log.contains(&before[0]) && !log.contains(&after[1]),
        "no password in the output"
    );
    // Grafana (and the stand-in) keeps the admin password in its data volume from the first
    // start on and ignores the environment after that: only the API call changed it.
    let grafana = stack.grafana_base().await;
    assert_eq!(
        grafana_user(&grafana, &after[0]).await,
        200,
        "new admin password"
    );
    assert_eq!(
        grafana_user(&grafana, &before[0]).await,
        401,
        "old one refused"
    );
    let keys_after = step_ca_keys(stack.project()).await;
    assert!(
        keys_before.iter().zip(&keys_after).all(|(b, a)| b != a),
        "both step-ca keys re-encrypted"
    );
    let (file, meta) = stack
        .project()
        .pull_file_with_meta("step-ca01", "/home/step/secrets/password")
        .await
        .expect("step-ca's password file");
    assert_eq!(String::from_utf8_lossy(&file), after[2]);
    assert_eq!((meta.uid, meta.gid, meta.mode & 0o777), (1000, 1000, 0o600));
    assert!(
        !log.contains(&after[2]) && !log.contains(&before[2]),
        "no step-ca password in the output"
    );
    // step-ca runs on the new password: restarted, it must open its keys with it again.
    restart_seconds(&stack.project(), "step-ca01").await;
    assert!(
        wait_healthy(stack).await,
        "step-ca healthy after a restart on the rotated password"
    );
    let ok = mqtt_pub(stack.mqtt_port, "atlas", &after[1]);
    assert!(ok.status.success(), "new mqtt password: {}", stderr(&ok));
    let old = mqtt_pub(stack.mqtt_port, "atlas", &before[1]);
    assert!(
        !old.status.success(),
        "the old mqtt password must be refused"
    );
}

/// Pushes `bytes` to `path` in `instance` with `meta`.
async fn put(stack: &Stack, instance: &str, path: &str, bytes: &[u8], meta: FileMeta) {
    stack
        .project()
        .push_file(instance, path, bytes.to_vec(), meta)
        .await
        .unwrap_or_else(|e| panic!("push {instance}{path}: {e}"));
}

/// With one input broken inside a stopped instance, `install` (which starts it again) fails
/// its health gate naming the instance and showing the service's own complaint; with the
/// input restored, the next install is healthy again.
async fn health_gate_names(stack: &Stack, instance: &str, path: &str, broken: &[u8], says: &str) {
    let pc = stack.project();
    let (original, meta) = pc
        .pull_file_with_meta(instance, path)
        .await
        .unwrap_or_else(|e| panic!("{instance}{path}: {e}"));
    crate::engine::stop(&pc, instance).await;
    put(stack, instance, path, broken, meta).await;
    let install = || {
        stack.atlas(&[
            "install",
            "--yes",
            "--ignore-preflight",
            "--registry-mirror",
            &REGISTRY,
        ])
    };
    let o = install();
    let log = stderr(&o);
    assert!(!o.status.success(), "{instance} with {path} broken: {log}");
    assert!(
        log.contains(&format!("{instance} did not become healthy")) && log.contains(says),
        "the health gate names {instance} and shows why ({says}): {log}"
    );
    crate::engine::stop(&pc, instance).await;
    put(stack, instance, path, &original, meta).await;
    let o = install();
    assert!(o.status.success(), "{instance} restored: {}", stderr(&o));
}

async fn refused_inputs_fail_the_health_gate(stack: &Stack) {
    // A datasource file Grafana cannot parse: Grafana exits at start.
    health_gate_names(
        stack,
        "grafana01",
        "/etc/grafana/provisioning/datasources/atlas.yaml",
        b"apiVersion: 1\ndatasources:\n  - name: [unclosed\n",
        "Datasource provisioning error",
    )
    .await;
    // A key Loki does not have where it stands (retention_period belongs to limits_config).
    let pc = stack.project();
    let config = pc
        .pull_file("loki01", "/etc/loki/local-config.yaml")
        .await
        .expect("loki config");
    let text = String::from_utf8(config).expect("utf-8");
    let misplaced = text.replacen("compactor:\n", "compactor:\n  retention_period: 720h\n", 1);
    assert_ne!(misplaced, text, "the rendered config has a compactor block");
    health_gate_names(
        stack,
        "loki01",
        "/etc/loki/local-config.yaml",
        misplaced.as_bytes(),
        "field retention_period not found in type compactor.Config",
    )
    .await;
    // No tunnel token: cloudflared exits without one.
    health_gate_names(
        stack,
        "cloudflared01",
        "/etc/cloudflared/token",
        b"",
        "requires the ID or name of the tunnel",
    )
    .await;
}

/// The Atlas layer over the shapes the fixtures have: on cloudflared's usr-merged distroless
/// base `/sbin` is still the symlink to usr/sbin and `/sbin/init` is atlas-init; on the
/// alpine-like Mosquitto base, whose `/sbin/init` was a symlink to busybox, `/sbin/init` is
/// atlas-init and busybox is untouched.
async fn layouts_kept(stack: &Stack) {
    let pc = stack.project();
    let init = atlas_image::init::binary();
    let sbin = pc
        .pull_file("cloudflared01", "/sbin")
        .await
        .expect("cloudflared01:/sbin");
    // For a symlink the files API answers with its target (resolved), for a directory with
    // a listing.
    assert_eq!(
        String::from_utf8_lossy(&sbin).trim_start_matches('/'),
        "usr/sbin",
        "cloudflared01: /sbin is the base's symlink"
    );
    for instance in ["cloudflared01", "mosquitto01"] {
        let bytes = pc
            .pull_file(instance, "/sbin/init")
            .await
            .unwrap_or_else(|e| panic!("{instance}:/sbin/init: {e}"));
        assert!(bytes == init, "{instance}: /sbin/init is atlas-init");
    }
    let busybox = pc
        .pull_file("mosquitto01", "/bin/busybox")
        .await
        .expect("mosquitto01:/bin/busybox");
    assert!(
        busybox.starts_with(b"\x7fELF") && busybox != init,
        "mosquitto01: busybox kept"
    );
}

/// Grafana reads its datasources from the file the installer pushed: both are served on its
/// API with the uids, types and URLs the render wrote, Prometheus the default.
async fn grafana_serves_the_provisioned_datasources(stack: &Stack) {
    let base = stack.grafana_base().await;
    let password = stack
        .secret("user.atlas.secret.grafana-admin-password")
        .await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client");
    let r = c
        .get(format!("{base}/api/datasources"))
        .basic_auth("admin", Some(&password))
        .send()
        .await
        .expect("GET /api/datasources");
    assert_eq!(r.status().as_u16(), 200);
    let list: Value = r.json().await.expect("json");
    let find = |uid: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .find(|d| d["uid"] == uid)
            .unwrap_or_else(|| panic!("no datasource {uid}: {list}"))
            .clone()
    };
    let prom = find("atlas-prometheus01");
    assert_eq!(
        (prom["type"].as_str(), prom["isDefault"].as_bool()),
        (Some("prometheus"), Some(true))
    );
    assert!(
        prom["url"]
            .as_str()
            .is_some_and(|u| u.contains("prometheus01") && u.ends_with(":9090")),
        "{prom}"
    );
    let loki = find("atlas-loki01");
    assert_eq!(
        (loki["type"].as_str(), loki["isDefault"].as_bool()),
        (Some("loki"), Some(false))
    );
    assert!(
        loki["url"]
            .as_str()
            .is_some_and(|u| u.contains("loki01") && u.ends_with(":3100")),
        "{loki}"
    );
    let r = c
        .get(format!("{base}/api/datasources"))
        .basic_auth("admin", Some("wrong"))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        r.status().as_u16(),
        401,
        "the API wants the admin's password"
    );
}

/// Whether `status` reports every service healthy within 10 s.
pub(crate) async fn wait_healthy(stack: &Stack) -> bool {
    for _ in 0..20 {
        if stack.atlas(&["status"]).status.success() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// `GET /api/user` with the admin's basic auth: the status code.
async fn grafana_user(base: &str, password: &str) -> u16 {
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("client");
    c.get(format!("{base}/api/user"))
        .basic_auth("admin", Some(password))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// A storage pool (dir, on a 16 MB tmpfs) without room for the bundle's images: `install
/// --bundle` refuses before any change, saying how much it has and needs.
async fn pool_too_small_is_refused(stack: &Stack, bundle: &str, trust_key: &str) {
    let pool = crate::common::hermetic::TinyPool::create("stk", 16);
    let o = atlas()
        .arg("-c")
        .arg(stack.dir.path().join("atlas.toml"))
        .args([
            "--progress",
            "plain",
            "install",
            "--yes",
            "--ignore-preflight",
            "--trust-key",
            trust_key,
            "--bundle",
            bundle,
        ])
        .env("ATLAS_INCUS__STORAGE_POOL", &pool.name)
        .output()
        .expect("run atlas-install");
    let err = stderr(&o);
    assert!(!o.status.success(), "a pool without room must be refused");
    assert!(
        err.contains(&format!("storage pool {} has", pool.name))
            && err.contains("Nothing was changed"),
        "{err}"
    );
    assert!(
        stack.client.get_project(&stack.project).await.is_err(),
        "nothing created: {err}"
    );
}

/// The offline way in: `bundle create` from the fixture registry, then `install --bundle`
/// takes every image from the verified bundle and the stack comes up healthy, run in a
/// network namespace with no usable interface (so any request but the Incus socket fails,
/// the registries the config names included); a re-run changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_stack_from_a_bundle() {
    let Some((_turn, stack)) = fixture_stack('b').await else {
        return;
    };
    stack.config("\"127.0.0.1/32\"");
    let _cleanup = Cleanup(&stack);
    let bundle = stack.dir.path().join("atlas.bundle");
    let b = Bundle {
        stack: &stack,
        path: bundle.to_str().expect("utf-8 path"),
        // Signed by the operator's own key (a throwaway one), trusted at install.
        key: crate::common::throwaway_key(stack.dir.path(), "operator"),
    };
    // One bundle, one install, then steps in order over them: a failure names its step.
    step("bundle create", || bundle_create(&b));
    step_async(
        "pool too small",
        pool_too_small_is_refused(&stack, b.path, &b.key.base64),
    )
    .await;
    step("offline namespace", || offline_has_no_registry(&stack));
    step("install --bundle", || bundle_installs_offline(&b));
    step("reinstall", || bundle_reinstall_changes_nothing(&b));
    step("upgrade --bundle", || bundle_upgrade_changes_nothing(&b));
}

/// What the steps of the bundle scenario share: the stack, the bundle, the key it is signed
/// with.
struct Bundle<'a> {
    stack: &'a Stack,
    path: &'a str,
    key: crate::common::TestKey,
}

impl Bundle<'_> {
    /// `install --bundle` in the namespace without a network, trusting the bundle's key.
    fn install(&self) -> Output {
        self.stack.atlas_offline(&[
            "install",
            "--yes",
            "--ignore-preflight",
            "--trust-key",
            &self.key.base64,
            "--bundle",
            self.path,
        ])
    }
}

/// `bundle create` from the fixture registry and download mirror, signed.
fn bundle_create(b: &Bundle<'_>) {
    let (stack, bundle_arg, key) = (b.stack, b.path, &b.key);
    let o = stack.atlas(&[
        "bundle",
        "create",
        "--out",
        bundle_arg,
        "--registry-mirror",
        &REGISTRY,
        "--download-mirror",
        DOWNLOADS,
        "--sign",
        key.secret.to_str().expect("utf-8 path"),
    ]);
    assert!(o.status.success(), "bundle create:\n{}", stderr(&o));
}

/// First prove the namespace really has no network: the same registry that served `bundle
/// create` a moment ago is unreachable from it.
fn offline_has_no_registry(stack: &Stack) {
    let o = stack.atlas_offline(&[
        "image",
        "convert",
        &format!("docker://{REGISTRY}/{}", fixture_of("prometheus")),
        "--insecure-registry",
        &REGISTRY,
        "--out",
        "/dev/null",
    ]);
    assert!(
        !o.status.success(),
        "the registry must be unreachable without a network: {}",
        stderr(&o)
    );
}

/// The install from the bundle alone: verified, signer named, images from its layout.
fn bundle_installs_offline(b: &Bundle<'_>) {
    let key = &b.key;
    let o = b.install();
    let log = stderr(&o);
    assert!(o.status.success(), "install --bundle failed:\n{log}");
    assert!(
        log.contains(&format!(
            "signed by key ID {} (trusted with --trust-key)",
            key.id
        )),
        "the signer is named: {log}"
    );
    assert!(
        log.contains("verify "),
        "the bundle is verified first: {log}"
    );
    assert!(
        log.contains("import oci:"),
        "images come from the bundle's layout: {log}"
    );
    assert!(
        !log.contains("carries no service spec"),
        "the bundle's images keep their service spec, so the rendered commands apply: {log}"
    );
    assert!(
        !log.contains(&*REGISTRY) && !log.contains("docker://"),
        "no registry is contacted: {log}"
    );
    for i in ["prometheus01", "caddy01", "mosquitto01", "grafana01"] {
        assert!(
            log.contains(&format!("health {i}")),
            "{i} not health-gated: {log}"
        );
    }
}

/// A second install from the bundle changes nothing.
fn bundle_reinstall_changes_nothing(b: &Bundle<'_>) {
    let o = b.install();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("No changes"), "{}", stderr(&o));
}

/// The same bundle through `upgrade --bundle`: verified again, nothing to replace.
fn bundle_upgrade_changes_nothing(b: &Bundle<'_>) {
    let (stack, bundle_arg, key) = (b.stack, b.path, &b.key);
    let o = stack.atlas_offline(&[
        "upgrade",
        "--yes",
        "--ignore-preflight",
        "--trust-key",
        key.public.to_str().expect("utf-8 path"),
        "--bundle",
        bundle_arg,
    ]);
    let log = stderr(&o);
    assert!(o.status.success(), "upgrade --bundle: {log}");
    assert!(
        log.contains("verify ") && log.contains("No changes"),
        "{log}"
    );
    assert!(!log.contains(&*REGISTRY), "no registry is contacted: {log}");
}
