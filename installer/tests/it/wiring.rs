//! Secrets, server wiring and health gates against the real incusd of this machine. Each test
//! works in its own project (`t-wir-<pid>-<tag>`); a guard deletes what the test made and puts
//! back every server key it touched, using a fresh client (on panic too). The daemon is
//! shared: server-config tests run one at a time and only ever change keys they restore.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas_install::config::{Config, NetworkRole, ServiceKind};
use atlas_install::deployment::Deployment;
use atlas_install::engine::secrets::{self, SecretsError};
use atlas_install::engine::{health, wiring};
use atlas_install::incus::{
    Client, FileMeta, ImageImport, InstanceCreate, InstanceSource, Network, Project, StateAction,
};
use atlas_install::progress::NoProgress;
use atlas_install::state::keys::{self, secrets as name};

use atlas_test_support::busybox::{BusyboxImage, is_static_elf};

use crate::common::client_or_skip;
use crate::common::require_all;
use crate::common::step_async;

const SOCKET: &str = "/var/lib/incus/unix.socket";
const POOL: &str = "default";

/// Server config keys any test here may touch; the guard restores each to its value before.
pub(crate) const SERVER_KEYS: &[&str] = &[
    "loki.api.url",
    "loki.types",
    "loki.instance",
    "logging.atlas.target.type",
    "logging.atlas.target.address",
    "logging.atlas.types",
    "core.https_address",
];

/// Tests that change server config wait for each other (the server is one for all).
pub(crate) static SERVER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The wiring keys someone else holds on the shared daemon right now (the README demo, an
/// operator): a test that sets them would only measure their settings, or clobber them.
pub(crate) fn busy_server_keys(server: &atlas_install::incus::Server) -> Vec<&'static str> {
    SERVER_KEYS
        .iter()
        .copied()
        .filter(|k| server.config.get(*k).is_some_and(|v| !v.is_empty()))
        .collect()
}

fn unique(tag: &str) -> String {
    format!("t-wir-{}-{tag}", std::process::id())
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Everything a test made, undone in Drop with a fresh client on its own runtime.
#[derive(Default)]
struct Guard {
    project: Option<String>,
    networks: Vec<String>,
    certificates: Vec<String>,
    /// Server keys to put back, with their value before the test.
    server_keys: Option<BTreeMap<String, String>>,
}

impl Guard {
    async fn project(&mut self, client: &Client, tag: &str) -> String {
        let name = unique(tag);
        let mut p = Project::new(&name);
        p.config = map(&[
            ("features.images", "true"),
            ("features.profiles", "true"),
            ("features.storage.volumes", "true"),
        ]);
        p.description = "atlas-install wiring test".into();
        self.project = Some(name.clone());
        client
            .create_project(&p)
            .await
            .expect("create test project");
        name
    }

    async fn remember_server_keys(&mut self, client: &Client) {
        let s = client.server().await.expect("server").value;
        self.server_keys = Some(
            SERVER_KEYS
                .iter()
                .map(|k| (k.to_string(), s.config.get(*k).cloned().unwrap_or_default()))
                .collect(),
        );
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let project = self.project.take();
        let networks = std::mem::take(&mut self.networks);
        let certs = std::mem::take(&mut self.certificates);
        let keys = self.server_keys.take();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let client = Client::unix_at(Path::new(SOCKET)).expect("cleanup client");
            rt.block_on(cleanup(client, project, networks, certs, keys));
        })
        .join();
    }
}

async fn cleanup(
    client: Client,
    project: Option<String>,
    networks: Vec<String>,
    certs: Vec<String>,
    keys: Option<BTreeMap<String, String>>,
) {
    if let Some(before) = keys {
        if let Ok(now) = client.server().await {
            let restore: BTreeMap<String, String> = before
                .into_iter()
                .filter(|(k, v)| now.value.config.get(k).cloned().unwrap_or_default() != *v)
                .collect();
            if !restore.is_empty() {
                if let Err(e) = client.patch_server_config(&restore, None).await {
                    eprintln!(
                        "cleanup: could not restore server keys {:?}: {e}",
                        restore.keys()
                    );
                }
            }
        }
    }
    for fp in certs {
        let _ = client.delete_certificate(&fp).await;
    }
    if let Some(project) = project {
        let c = client.in_project(&project);
        for i in c.instances().await.unwrap_or_default() {
            if i.is_running() {
                let _ = c
                    .set_instance_state(&i.name, StateAction::Stop, 5, true)
                    .await;
            }
            let _ = c.delete_instance(&i.name).await;
        }
        for img in c.images().await.unwrap_or_default() {
            let _ = c.delete_image(&img.fingerprint).await;
        }
        for v in c.volumes(POOL).await.unwrap_or_default() {
            let _ = c.delete_volume(POOL, &v.name).await;
        }
        for p in c.profiles().await.unwrap_or_default() {
            if p.name != "default" {
                let _ = c.delete_profile(&p.name).await;
            }
        }
        if let Err(e) = client.delete_project(&project).await {
            eprintln!("cleanup: project {project} left behind: {e}");
        }
    }
    for n in networks {
        let _ = client.delete_network(&n).await;
    }
}

fn test_config(project: &str, users: &[&str]) -> Config {
    let mut c = Config::builtin();
    c.incus.project = project.to_string();
    c.mosquitto.users = users.iter().map(|u| u.to_string()).collect();
    c
}

// ---------------------------------------------------------------------------------------
// Secrets

#[tokio::test]
async fn secrets_are_generated_once_stored_in_the_project_and_extended_per_user() {
    let c = client_or_skip!();
    let mut g = Guard::default();

    // No project: a clear error, and nothing written.
    let cfg = test_config(&unique("absent"), &["atlas"]);
    let w0 = c.writes();
    let e = secrets::load_or_generate(&c, &cfg)
        .await
        .expect_err("missing project");
    assert!(matches!(e, SecretsError::MissingProject { .. }), "{e}");
    assert!(
        e.to_string().contains(&cfg.incus.project) && e.to_string().contains("create the project"),
        "{e}"
    );
    assert_eq!(c.writes(), w0, "a missing project must not cause writes");
    assert!(secrets::load(&c, &cfg).await.expect("load").is_none());

    let project = g.project(&c, "sec").await;
    let cfg = test_config(&project, &["atlas", "sensor"]);
    assert!(
        secrets::load(&c, &cfg).await.expect("load").is_none(),
        "nothing stored yet"
    );

    let w0 = c.writes();
    let s = secrets::load_or_generate(&c, &cfg).await.expect("generate");
    assert_eq!(
        c.writes(),
        w0 + 1,
        "one project update stores every new secret"
    );
    let stored = c.get_project(&project).await.expect("project").value.config;
    assert_eq!(
        stored[&keys::secret(name::GRAFANA_ADMIN)],
        s.credentials.grafana_admin_password
    );
    assert_eq!(
        stored[&keys::secret(name::STEP_CA)],
        s.credentials.step_ca_password
    );
    assert_eq!(
        stored[&keys::secret(name::METRICS_CERT)],
        s.metrics_cert_pem,
        "PEM with newlines survives the project config"
    );
    assert_eq!(stored[&keys::secret(name::METRICS_KEY)], s.metrics_key_pem);
    for user in ["atlas", "sensor"] {
        assert_eq!(
            stored[&keys::secret(&name::mosquitto_password(user))],
            s.credentials.mosquitto[user].password
        );
        assert!(stored.contains_key(&keys::secret(&name::mosquitto_salt(user))));
    }
    assert_ne!(
        s.credentials.mosquitto["atlas"].password,
        s.credentials.mosquitto["sensor"].password
    );
    assert_ne!(
        s.credentials.mosquitto["atlas"].salt,
        s.credentials.mosquitto["sensor"].salt
    );
    assert!(
        s.metrics_cert_pem
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    // Debug never shows a value.
    let shown = format!("{s:?}");
    for v in [
        &s.credentials.grafana_admin_password,
        &s.credentials.step_ca_password,
        &s.credentials.mosquitto["atlas"].password,
    ] {
        assert!(!shown.contains(v.as_str()), "{shown}");
    }
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");

    // Second call: the same values, no write.
    let w1 = c.writes();
    let again = secrets::load_or_generate(&c, &cfg).await.expect("reload");
    assert_eq!(c.writes(), w1, "converged secrets must not write");
    assert_eq!(again.credentials, s.credentials);
    assert_eq!(
        (
            again.metrics_cert_pem.as_str(),
            again.metrics_key_pem.as_str()
        ),
        (s.metrics_cert_pem.as_str(), s.metrics_key_pem.as_str())
    );
    let loaded = secrets::load(&c, &cfg)
        .await
        .expect("load")
        .expect("complete");
    assert_eq!(loaded.credentials, s.credentials);

    // A new Mosquitto user: exactly its two keys are added, nothing else changes.
    let more = test_config(&project, &["atlas", "sensor", "newcomer"]);
    let (_, would) = secrets::preview(&c, &more).await.expect("preview");
    assert_eq!(
        would,
        vec![
            "mosquitto.newcomer.password".to_string(),
            "mosquitto.newcomer.salt".to_string()
        ]
    );
    assert_eq!(c.writes(), w1, "preview is read-only");
    let w2 = c.writes();
    let extended = secrets::load_or_generate(&c, &more).await.expect("extend");
    assert_eq!(c.writes(), w2 + 1);
    let after = c.get_project(&project).await.expect("project").value.config;
    let added: Vec<&String> = after.keys().filter(|k| !stored.contains_key(*k)).collect();
    assert_eq!(
        added,
        vec![
            &keys::secret(&name::mosquitto_password("newcomer")),
            &keys::secret(&name::mosquitto_salt("newcomer"))
        ]
    );
    assert!(
        stored.iter().all(|(k, v)| after.get(k) == Some(v)),
        "stored secrets unchanged"
    );
    assert!(extended.credentials.mosquitto["atlas"] == s.credentials.mosquitto["atlas"]);

    // A value damaged by hand: refused, named by key, never echoed, nothing written.
    let got = c.get_project(&project).await.expect("project");
    let mut p = got.value.clone();
    let bad_salt = "bm90LXR3ZWx2ZS1ieXRlcy1sb25n";
    p.config.insert(
        keys::secret(&name::mosquitto_salt("sensor")),
        bad_salt.into(),
    );
    c.update_project(&p, got.etag.as_deref())
        .await
        .expect("damage");
    let w3 = c.writes();
    let e = secrets::load_or_generate(&c, &more)
        .await
        .expect_err("damaged salt");
    let msg = e.to_string();
    assert!(
        msg.contains(&keys::secret(&name::mosquitto_salt("sensor")))
            && msg.contains("incus project unset"),
        "{msg}"
    );
    assert!(
        !msg.contains(bad_salt),
        "errors must not echo stored values: {msg}"
    );
    assert_eq!(c.writes(), w3);
}

// ---------------------------------------------------------------------------------------
// Server wiring

/// Stands in for Loki: records the method and path of every request, reads the whole body
/// and answers 204. (Answering before the body is read makes Incus' sender see a broken
/// connection and retry with a backoff of minutes, during which 6.0.4 blocks every API call
/// that emits an event: its Loki client takes events over an unbuffered channel.)
/// It runs on a runtime of its own thread: while the test's thread blocks (the cleanup guard
/// joins a thread), Incus must still be able to deliver.
async fn fake_loki() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    std::thread::spawn(move || {
        rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let sink = sink.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                // Read the head; the body (snappy protobuf or JSON) is not needed.
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let end = got.windows(4).position(|w| w == b"\r\n\r\n").map_or(got.len(), |p| p + 4);
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                    .unwrap_or(0);
                let mut body = got.len() - end;
                while body < length {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body += n,
                    }
                }
                if let Some(line) = head.lines().next() {
                    sink.lock().unwrap().push(line.to_string());
                }
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            });
        }
    })
    });
    (addr, seen)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `GET https://127.0.0.1:<port>/1.0/metrics` presenting the metrics certificate (or none)
/// and pinning the server certificate. Returns the status and the body.
async fn scrape(
    secrets: &secrets::Secrets,
    server_fp: &str,
    port: u16,
    with_cert: bool,
) -> Result<(u16, String), String> {
    let tls = if with_cert {
        secrets
            .metrics_tls_config(server_fp)
            .map_err(|e| e.to_string())?
    } else {
        // No client certificate, the same pinned server.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pin = atlas_install::incus::parse_fingerprint(server_fp).map_err(|e| e.to_string())?;
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(atlas_install::incus::PinnedServer::new(
                pin,
            )))
            .with_no_client_auth()
    };
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = http
        .get(format!("https://127.0.0.1:{port}/1.0/metrics"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

#[tokio::test]
async fn wiring_sets_logging_trusts_the_metrics_cert_converges_and_is_removed() {
    let c = client_or_skip!();
    let t0 = Instant::now();
    c.set_request_log(Some(Arc::new(move |m: &str, p: &str| {
        eprintln!("{:>7.2}s {m} {p}", t0.elapsed().as_secs_f32())
    })));
    let _serial = SERVER_LOCK.lock().await;
    // Lives here, not in a step, so that it restores the server keys and deletes what the
    // steps made on a panic in any step; the first step records in it what it creates.
    let mut g = Guard::default();
    g.remember_server_keys(&c).await;
    let before = c.server().await.expect("server").value;
    let busy = busy_server_keys(&before);
    if !busy.is_empty() {
        // Someone else's test (or the operator) holds these right now: the test would only
        // measure their settings. Not a failure of this code.
        eprintln!("skipping: server keys {busy:?} are set on the shared daemon");
        return;
    }
    let s = step_async("1 set up", Scenario::set_up(&c, &mut g, &before, t0)).await;
    step_async("2 unready Loki", unready_loki_is_refused(&s)).await;
    let planned = step_async("3 plan", plan_lists_every_change(&s)).await;
    let server_fp = step_async("4 apply", apply_does_what_plan_said(&s, planned)).await;
    step_async("5 converged", converged_apply_writes_nothing(&s)).await;
    step_async("6 metrics", metrics_need_the_cert(&s, &server_fp)).await;
    step_async("7 logging", logging_reaches_loki(&s)).await;
    let operator_url = step_async("8 operator edit", operator_edit_is_refused(&s)).await;
    step_async("9 remove", remove_resets_atlas_keys(&s, &operator_url)).await;
    step_async("10 remove again", remove_again_writes_nothing(&s)).await;
    step_async("11 restored", guard_restores(&s, g, &before)).await;
}

/// What the steps of the wiring scenario share: the daemon's client, the test's project,
/// config and secrets, the certificates (ours and a foreign one with our name), the fake
/// Loki and what it saw, the metrics port and the wiring options, and which logging scheme
/// the server has.
struct Scenario<'a> {
    c: &'a Client,
    t0: Instant,
    project: String,
    cfg: Config,
    s: secrets::Secrets,
    fp: String,
    foreign: String,
    loki: SocketAddr,
    loki_seen: Arc<Mutex<Vec<String>>>,
    port: u16,
    opts: wiring::WiringOptions,
    new_scheme: bool,
}

impl<'a> Scenario<'a> {
    /// What atlas records in the test's project config.
    async fn records(&self) -> BTreeMap<String, String> {
        self.c
            .get_project(&self.project)
            .await
            .expect("project")
            .value
            .config
    }

    /// The test's project and secrets, and a certificate with our name that atlas did not
    /// add (it must survive everything after); both certificates recorded in `g`.
    async fn set_up(
        c: &'a Client,
        g: &mut Guard,
        before: &atlas_install::incus::Server,
        t0: Instant,
    ) -> Scenario<'a> {
        let project = g.project(c, "wire").await;
        let cfg = test_config(&project, &["atlas"]);
        let s = secrets::load_or_generate(c, &cfg).await.expect("secrets");
        let fp = s.metrics_fingerprint().expect("fingerprint");
        g.certificates.push(fp.clone());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let foreign_der = rcgen::CertificateParams::new(vec!["foreign".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert")
            .der()
            .to_vec();
        let foreign = c
            .add_certificate(wiring::METRICS_CERT_NAME, "metrics", &foreign_der)
            .await
            .expect("foreign cert");
        g.certificates.push(foreign.clone());
        let (loki, loki_seen) = fake_loki().await;
        let port = free_port();
        let opts = wiring::WiringOptions {
            metrics_endpoint: Some((IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
            cluster_metrics: false,
            loki_url: Some(format!("http://{loki}")),
            loki_instance: None,
            loki_ca_pem: None,
            loki_ready_timeout: Duration::from_secs(5),
        };
        Scenario {
            c,
            t0,
            project,
            cfg,
            s,
            fp,
            foreign,
            loki,
            loki_seen,
            port,
            opts,
            new_scheme: before.supports_server_logging(),
        }
    }

    /// The server key that holds the Loki URL, in the server's logging scheme.
    fn url_server_key(&self) -> &'static str {
        if self.new_scheme {
            "logging.atlas.target.address"
        } else {
            "loki.api.url"
        }
    }

    /// The server key that holds the log types, in the server's logging scheme.
    fn types_key(&self) -> &'static str {
        if self.new_scheme {
            "logging.atlas.types"
        } else {
            "loki.types"
        }
    }
}

/// A Loki that does not answer: refused before anything is written (Incus would block).
async fn unready_loki_is_refused(sc: &Scenario<'_>) {
    let Scenario { c, cfg, s, .. } = sc;
    let closed = free_port();
    let unready = wiring::WiringOptions {
        loki_url: Some(format!("http://127.0.0.1:{closed}")),
        loki_ready_timeout: Duration::from_secs(1),
        ..sc.opts.clone()
    };
    let w0 = c.writes();
    let e = wiring::apply_with(c, cfg, s, &unready, &NoProgress)
        .await
        .expect_err("unready Loki");
    assert!(
        e.to_string().contains("not ready") && e.to_string().contains(&closed.to_string()),
        "{e}"
    );
    assert_eq!(c.writes(), w0, "refused before any write");
}

/// Plan: read-only, lists every change.
async fn plan_lists_every_change(sc: &Scenario<'_>) -> Vec<wiring::WiringChange> {
    let Scenario {
        c, cfg, s, opts, ..
    } = sc;
    let w0 = c.writes();
    let planned = wiring::plan_with(c, cfg, s, opts).await.expect("plan");
    assert_eq!(c.writes(), w0, "plan must not write");
    let whats: Vec<&str> = planned.iter().map(|x| x.what.as_str()).collect();
    let url_key = format!("server config {}", sc.url_server_key());
    assert!(whats.contains(&url_key.as_str()), "{whats:?}");
    assert!(
        whats.contains(&"server config core.https_address"),
        "{whats:?}"
    );
    assert!(
        whats.contains(&"certificate atlas-prometheus-metrics"),
        "{whats:?}"
    );
    assert!(planned.iter().all(|x| !x.is_conflict()), "{planned:?}");
    planned
}

/// Apply does what plan said: the Loki keys, the metrics address, our certificate trusted,
/// and what atlas set recorded in the project. Returns the server's certificate fingerprint.
async fn apply_does_what_plan_said(
    sc: &Scenario<'_>,
    planned: Vec<wiring::WiringChange>,
) -> String {
    let Scenario {
        c,
        cfg,
        s,
        opts,
        fp,
        ..
    } = sc;
    let applied = wiring::apply_with(c, cfg, s, opts, &NoProgress)
        .await
        .expect("apply");
    assert_eq!(applied, planned, "apply does what plan said");
    let now = c.server().await.expect("server").value;
    loki_keys_point_at_the_fake(sc, &now);
    // `lifecycle,logging` is the server's default for the types key: 6.0.4 stores nothing for
    // it, and atlas records that it set it anyway (so a re-run is converged).
    let types_key = sc.types_key();
    let records = sc.records().await;
    match now.config.get(types_key).map(String::as_str) {
        Some(v) if !v.is_empty() => assert_eq!(v, "lifecycle,logging"),
        _ => assert!(
            records
                .get(keys::SERVER_DEFAULTS)
                .is_some_and(|d| d.split(',').any(|k| k == types_key)),
            "{types_key} unset and not recorded as defaulted: {records:?}"
        ),
    }
    assert_eq!(
        now.config["core.https_address"],
        format!("127.0.0.1:{}", sc.port)
    );
    let certs = c.certificates().await.expect("certificates");
    let mine = certs
        .iter()
        .find(|x| x.fingerprint == *fp)
        .expect("metrics certificate trusted");
    assert_eq!(
        (mine.name.as_str(), mine.kind.as_str()),
        (wiring::METRICS_CERT_NAME, "metrics")
    );
    assert!(
        records[keys::SERVER_KEYS].contains("core.https_address"),
        "{:?}",
        records.get(keys::SERVER_KEYS)
    );
    assert_eq!(records[keys::METRICS_CERTS], *fp);
    now.environment.certificate_fingerprint.clone()
}

/// The server sends its logs to the fake Loki, in the server's logging scheme.
fn loki_keys_point_at_the_fake(sc: &Scenario<'_>, now: &atlas_install::incus::Server) {
    let loki = sc.loki;
    if sc.new_scheme {
        assert_eq!(
            now.config["logging.atlas.target.address"],
            format!("http://{loki}")
        );
        assert_eq!(now.config["logging.atlas.target.type"], "loki");
    } else {
        assert_eq!(now.config["loki.api.url"], format!("http://{loki}"));
        assert!(!now.config["loki.instance"].is_empty());
    }
}

/// Converged: no write, nothing planned.
async fn converged_apply_writes_nothing(sc: &Scenario<'_>) {
    let Scenario {
        c, cfg, s, opts, ..
    } = sc;
    let w1 = c.writes();
    let again = wiring::apply_with(c, cfg, s, opts, &NoProgress)
        .await
        .expect("apply again");
    assert!(again.is_empty(), "{again:?}");
    assert!(
        wiring::plan_with(c, cfg, s, opts)
            .await
            .expect("plan")
            .is_empty()
    );
    assert_eq!(
        c.writes(),
        w1,
        "a converged apply must send no writing request"
    );
}

/// The certificate works: Incus serves /1.0/metrics to it on the address atlas set, and
/// refuses a client without it.
async fn metrics_need_the_cert(sc: &Scenario<'_>, server_fp: &str) {
    let (s, port) = (&sc.s, sc.port);
    let mut last = Err(String::from("not tried"));
    for _ in 0..20 {
        last = scrape(s, server_fp, port, true).await;
        if matches!(&last, Ok((200, body)) if body.contains("# TYPE")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, body) = last.expect("scrape with the metrics certificate");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("# TYPE"),
        "not Prometheus text: {}",
        &body[..body.len().min(200)]
    );
    // A refused handshake (Err) is refusal too.
    if let Ok((status, _)) = scrape(s, server_fp, port, false).await {
        assert!(
            status == 403 || status == 401,
            "no client cert must be refused, got {status}"
        );
    }
}

/// Logging works: a lifecycle event in our project reaches the Loki push path.
async fn logging_reaches_loki(sc: &Scenario<'_>) {
    let pc = sc.c.in_project(&sc.project);
    pc.create_profile(&atlas_install::incus::Profile::new("t-wir-event"))
        .await
        .expect("profile");
    let start = Instant::now();
    let mut pushes = Vec::new();
    while start.elapsed() < Duration::from_secs(20) {
        pushes = sc.loki_seen.lock().unwrap().clone();
        if pushes
            .iter()
            .any(|l| l.starts_with("POST /loki/api/v1/push"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        pushes
            .iter()
            .any(|l| l.starts_with("POST /loki/api/v1/push")),
        "Incus pushed nothing to Loki: {pushes:?}"
    );
}

/// The operator changes an atlas key: it is theirs now; apply refuses and changes nothing.
/// Another live listener: pointed at an unreachable URL, Incus 6.0.4 retries queued events
/// with a backoff of minutes, and the PATCH that changes the key waits for that. Returns the
/// operator's URL.
async fn operator_edit_is_refused(sc: &Scenario<'_>) -> String {
    let Scenario {
        c, cfg, s, opts, ..
    } = sc;
    let (operator_loki, _) = fake_loki().await;
    let operator_url = format!("http://{operator_loki}");
    let url_server_key = sc.url_server_key();
    c.patch_server_config(&map(&[(url_server_key, operator_url.as_str())]), None)
        .await
        .expect("operator edit");
    let w2 = c.writes();
    let e = wiring::apply_with(c, cfg, s, opts, &NoProgress)
        .await
        .expect_err("operator value");
    let msg = e.to_string();
    assert!(
        msg.contains(url_server_key)
            && msg.contains("nothing was changed")
            && msg.contains("incus config unset"),
        "{msg}"
    );
    assert_eq!(c.writes(), w2, "a refused apply must not write");
    assert_eq!(
        c.server().await.expect("server").value.config[url_server_key],
        operator_url
    );
    operator_url
}

/// remove: atlas' keys reset, the operator's key stays, our certificate goes, the foreign
/// one stays, nothing is left recorded in the project.
async fn remove_resets_atlas_keys(sc: &Scenario<'_>, operator_url: &str) {
    let Scenario {
        c,
        cfg,
        fp,
        foreign,
        ..
    } = sc;
    wiring::remove(c, cfg).await.expect("remove");
    let after = c.server().await.expect("server").value;
    let unset = |k: &str| {
        after
            .config
            .get(k)
            .map(String::as_str)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(unset("core.https_address"), "");
    assert_eq!(unset(sc.types_key()), "");
    assert_eq!(
        after.config[sc.url_server_key()],
        operator_url,
        "remove must not reset what the operator set"
    );
    let certs = c.certificates().await.expect("certificates");
    assert!(
        !certs.iter().any(|x| x.fingerprint == *fp),
        "metrics certificate removed"
    );
    assert!(
        certs.iter().any(|x| x.fingerprint == *foreign),
        "the foreign certificate with our name stays"
    );
    let records = sc.records().await;
    for k in [
        keys::SERVER_KEYS,
        keys::METRICS_CERTS,
        keys::SERVER_DEFAULTS,
    ] {
        assert!(
            !records.contains_key(k),
            "{k} left in the project after remove"
        );
    }
}

/// Nothing recorded any more: a second remove writes nothing. Then the operator's edit is
/// undone.
async fn remove_again_writes_nothing(sc: &Scenario<'_>) {
    let Scenario { c, cfg, .. } = sc;
    let w3 = c.writes();
    wiring::remove(c, cfg).await.expect("remove again");
    assert_eq!(c.writes(), w3, "nothing recorded: remove writes nothing");
    c.patch_server_config(&map(&[(sc.url_server_key(), "")]), None)
        .await
        .expect("undo operator edit");
}

/// The guard, dropped, puts back every server key the test touched, as it was before.
async fn guard_restores(sc: &Scenario<'_>, g: Guard, before: &atlas_install::incus::Server) {
    let (c, t0) = (sc.c, sc.t0);
    eprintln!("{:>7.2}s cleanup starts", t0.elapsed().as_secs_f32());
    drop(g);
    eprintln!("{:>7.2}s cleanup done", t0.elapsed().as_secs_f32());
    let restored = c.server().await.expect("server").value;
    for k in SERVER_KEYS {
        assert_eq!(
            restored.config.get(*k),
            before.config.get(*k),
            "{k} restored"
        );
    }
}

#[tokio::test]
async fn https_address_set_by_the_operator_is_left_alone() {
    let c = client_or_skip!();
    let _serial = SERVER_LOCK.lock().await;
    let mut g = Guard::default();
    g.remember_server_keys(&c).await;
    let before = c.server().await.expect("server").value;
    if !busy_server_keys(&before).is_empty() {
        eprintln!("skipping: wiring keys are set on the shared daemon right now");
        return;
    }
    let project = g.project(&c, "addr").await;
    let cfg = test_config(&project, &[]);
    let s = secrets::load_or_generate(&c, &cfg).await.expect("secrets");
    g.certificates.push(s.metrics_fingerprint().expect("fp"));
    let port = free_port();
    let operator = format!("127.0.0.1:{port}");
    c.patch_server_config(&map(&[("core.https_address", &operator)]), None)
        .await
        .expect("operator address");

    // It already covers the endpoint: nothing to change there, and it is not recorded as ours.
    let covered = wiring::WiringOptions {
        metrics_endpoint: Some((IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        cluster_metrics: false,
        loki_url: None,
        loki_instance: None,
        loki_ca_pem: None,
        loki_ready_timeout: Duration::from_secs(5),
    };
    let changes = wiring::apply_with(&c, &cfg, &s, &covered, &NoProgress)
        .await
        .expect("apply");
    assert!(
        changes
            .iter()
            .all(|x| x.what != "server config core.https_address"),
        "{changes:?}"
    );
    wiring::remove(&c, &cfg).await.expect("remove");
    assert_eq!(
        c.server().await.expect("server").value.config["core.https_address"],
        operator,
        "the operator's address stays"
    );

    // Elsewhere: refused with what to do, nothing written.
    let other = wiring::WiringOptions {
        metrics_endpoint: Some((IpAddr::V4(Ipv4Addr::LOCALHOST), free_port())),
        cluster_metrics: false,
        ..covered
    };
    let w0 = c.writes();
    let e = wiring::apply_with(&c, &cfg, &s, &other, &NoProgress)
        .await
        .expect_err("address elsewhere");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("core.https_address is {operator}"))
            && msg.contains("core.metrics_address"),
        "{msg}"
    );
    assert_eq!(c.writes(), w0);
    assert_eq!(
        c.server().await.expect("server").value.config["core.https_address"],
        operator
    );
}

// ---------------------------------------------------------------------------------------
// Health gates

const BUSYBOX: &str = "/bin/busybox";
const MARKER: &str = "t-wir-marker: service starting";

/// A unified image: busybox, atlas-init as /sbin/init, and a service that prints a marker
/// and serves /www (with a `ready` file) on port `port`.
fn build_image(dir: &Path, port: u16) -> std::path::PathBuf {
    let service = atlas_image::init::ServiceSpec {
        entrypoint: vec![],
        cmd: vec![
            "/bin/busybox".into(),
            "sh".into(),
            "-c".into(),
            format!("echo '{MARKER}'; exec /bin/busybox httpd -f -p {port} -h /www"),
        ],
        env: vec!["PATH=/bin:/sbin".into()],
        working_dir: Some("/www".into()),
        user: None,
        stop_grace_period: 3,
    };
    BusyboxImage::new(&dir.join("img"), "t-wir health test")
        .file("www/ready", "ready\n")
        .service(service)
        .no_network()
        .tarball(&dir.join("image.tar"))
}

#[tokio::test]
async fn health_gate_passes_on_a_serving_instance_and_names_a_stopped_one_with_its_log() {
    let c = client_or_skip!();
    // Not while the wiring test points Incus at a Loki: 6.0.4 then slows every call (even
    // stops time out) on a daemon this busy.
    let _serial = SERVER_LOCK.lock().await;
    let busybox_ok = std::fs::read(BUSYBOX).is_ok_and(|b| is_static_elf(&b));
    if !busybox_ok {
        assert!(
            !require_all(),
            "{BUSYBOX} missing or not static (install busybox-static); required under ATLAS_TEST_REQUIRE_ALL=1"
        );
        eprintln!("skipping: {BUSYBOX} missing or not static (install Debian's busybox-static)");
        return;
    }
    let mut g = Guard::default();
    let project = g.project(&c, "health").await;
    let pc = c.in_project(&project);
    let pid = std::process::id();
    let bridge = format!("t-wir-br{}", pid % 10000);
    // A range nothing on the host uses (routes, addresses, Incus networks).
    let net = crate::common::hermetic::free_subnets(1)[0];
    let gateway = net.addr();
    let address = Ipv4Addr::from(u32::from(net.network()) + 10);
    g.networks.push(bridge.clone());
    c.create_network(&Network::bridge(
        &bridge,
        map(&[
            ("ipv4.address", &format!("{gateway}/24")),
            ("ipv4.nat", "false"),
            ("ipv6.address", "none"),
        ]),
    ))
    .await
    .expect("bridge");

    // The config the gate reads: one Loki instance on a management network that is our bridge.
    let mut cfg = test_config(&project, &[]);
    cfg.networks.management.name = bridge.clone();
    cfg.networks.management.ipv4 = ipnet::Ipv4Net::new(gateway, 24).expect("net");
    let name = "t-wir-loki";
    let mut inst =
        atlas_install::config::default_instance(ServiceKind::Loki, name, &cfg.networks, 0);
    inst.nics[0].ipv4 = Some(address);
    assert_eq!(inst.nics[0].network, NetworkRole::Management);
    cfg.instances = BTreeMap::from([(name.to_string(), inst)]);
    let port = ServiceKind::Loki.defaults().port;

    let dir = tempfile::tempdir().expect("tempdir");
    let tarball = build_image(dir.path(), port);
    let file = tokio::fs::File::open(&tarball).await.expect("open");
    let import = ImageImport {
        aliases: vec!["t-wir-busybox".into()],
        ..ImageImport::default()
    };
    pc.import_image(reqwest::Body::from(file), &import)
        .await
        .expect("import image");
    let mut create = InstanceCreate::container(name, InstanceSource::alias("t-wir-busybox"));
    create.devices.insert(
        "root".into(),
        map(&[("type", "disk"), ("path", "/"), ("pool", POOL)]),
    );
    create.devices.insert(
        "eth0".into(),
        map(&[
            ("type", "nic"),
            ("network", &bridge),
            ("name", "eth0"),
            ("ipv4.address", &address.to_string()),
        ]),
    );
    pc.create_instance(&create).await.expect("create instance");
    let spec =
        atlas_install::engine::netfile::network_spec(&Deployment::standalone(&cfg), name, None)
            .expect("network spec");
    pc.push_file(
        name,
        "/etc/atlas/network.json",
        spec.to_json().expect("json").into_bytes(),
        FileMeta::new(0, 0, 0o644),
    )
    .await
    .expect("push network.json");
    pc.set_instance_state(name, StateAction::Start, 30, false)
        .await
        .expect("start");

    let gate_cfg = cfg.clone();
    let start = Instant::now();
    health::gate(
        &pc,
        &Deployment::standalone(&gate_cfg),
        Duration::from_secs(60),
        &NoProgress,
    )
    .await
    .expect("gate passes on a serving instance");
    eprintln!("health gate passed after {:?}", start.elapsed());
    let reports = health::check(&pc, &Deployment::standalone(&gate_cfg))
        .await
        .expect("check");
    assert_eq!(reports.len(), 1);
    assert!(reports[0].healthy, "{:?}", reports[0]);
    assert!(
        reports[0]
            .detail
            .contains(&format!("http://{address}:{port}/ready")),
        "{:?}",
        reports[0]
    );

    // `status` sees the same: exit 0 when all healthy. The config reaches it through env.
    let out = status_json(&project, &bridge, gateway, address);
    assert_eq!(out.0, Some(0), "status should be healthy: {}", out.1);
    let v: serde_json::Value = serde_json::from_str(&out.1).expect("status --json is JSON");
    assert_eq!(v["installed"], true);
    assert_eq!(v["healthy"], true);
    let inst = v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["name"] == name)
        .expect("instance listed")
        .clone();
    assert_eq!(inst["state"], "Running");
    assert!(
        inst["addresses"]
            .as_array()
            .expect("addresses")
            .iter()
            .any(|a| a == &serde_json::json!(address.to_string())),
        "{inst}"
    );

    // Stopped: the gate fails within its timeout, naming the instance and showing its log.
    pc.set_instance_state(name, StateAction::Stop, 10, true)
        .await
        .expect("stop");
    let start = Instant::now();
    let e = health::gate(
        &pc,
        &Deployment::standalone(&gate_cfg),
        Duration::from_secs(8),
        &NoProgress,
    )
    .await
    .expect_err("stopped instance");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "gate took {took:?} with an 8 s timeout"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{name} did not become healthy (waited")),
        "{msg}"
    );
    // A stopped instance is not waited for: the time taken, and the time it had.
    assert!(
        msg.contains(" of 8s): ") && msg.contains("Stopped"),
        "{msg}"
    );
    assert!(msg.contains("loki") && msg.contains("/ready"), "{msg}");
    assert!(
        msg.contains(MARKER),
        "the console log tail must be in the error: {msg}"
    );
    let reports = health::check(&pc, &Deployment::standalone(&gate_cfg))
        .await
        .expect("check");
    assert!(
        !reports[0].healthy && reports[0].detail.contains("Stopped"),
        "{:?}",
        reports[0]
    );
    let out = status_json(&project, &bridge, gateway, address);
    assert_eq!(
        out.0,
        Some(1),
        "status must fail when a service is unhealthy: {}",
        out.1
    );
}

/// Runs `atlas-install status --json` on a config that matches the test's bridge and instance.
fn status_json(
    project: &str,
    bridge: &str,
    gateway: Ipv4Addr,
    address: Ipv4Addr,
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        r#"[incus]
project = "{project}"
storage_pool = "{POOL}"
socket = "{SOCKET}"

[networks.management]
name = "{bridge}"
ipv4 = "{gateway}/24"

[instances.step-ca01]
enabled = false
[instances.prometheus01]
enabled = false
[instances.loki01]
enabled = false
[instances.alertmanager01]
enabled = false
[instances.node-exporter01]
enabled = false
[instances.mosquitto01]
enabled = false
[instances.grafana01]
enabled = false
[instances.caddy01]
enabled = false

[instances.t-wir-loki]
service = "loki"
addresses = {{ management = "{address}" }}
"#
    );
    let file = dir.path().join("atlas.toml");
    std::fs::write(&file, toml).expect("write config");
    let out = crate::common::run(
        crate::common::atlas()
            .arg("--config")
            .arg(&file)
            .args(["status", "--json"]),
    );
    let stdout = crate::common::stdout(&out);
    let stderr = crate::common::stderr(&out);
    (out.status.code(), format!("{stdout}{stderr}"))
}
