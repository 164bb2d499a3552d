//! The rendered configuration: snapshots of every file for the default config and variants,
//! and validation by the real tools (promtool, amtool, caddy, mosquitto). Loki and Grafana
//! have no checker on this host: their YAML is parsed and the fields that matter asserted.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{Ipv6Addr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atlas_install::config::{Config, ServiceKind, TlsIssuer, default_instance};
use atlas_install::deployment::Deployment;
use atlas_install::render::{
    self, Credentials, ExpectedFile, FileSource, MqttCredential, RenderedInstance, RenderedSet,
};

use crate::common::{atlas, have_path, have_tool, run, stderr, stdout};
use atlas_test_support::free_port;

// Fixed test secrets: the snapshots show exactly what these produce.
const GRAFANA_PW: &str = "test-grafana-admin-pw";
const STEP_CA_PW: &str = "test-step-ca-pw";
const MQTT_PW: &str = "test-mqtt-pw";
const CF_API_TOKEN: &str = "test-cf-api-token";
const TUNNEL_TOKEN: &str = "test-tunnel-token";
const SMTP_PW: &str = "test-smtp-pw";
const SLACK_URL: &str = "https://hooks.slack.com/services/test-slack-secret";
const HOOK_TOKEN: &str = "test-hook-token";

fn creds() -> Credentials {
    Credentials {
        grafana_admin_password: GRAFANA_PW.into(),
        step_ca_password: STEP_CA_PW.into(),
        mosquitto: BTreeMap::from([(
            "atlas".to_string(),
            MqttCredential {
                password: MQTT_PW.into(),
                salt: *b"0123456789ab",
            },
        )]),
    }
}

/// The default config and the variants the issue names, plus the other branches of the
/// templates (step-ca issuer, webhook, public domain with an allowlist, retention size).
/// The built-in config on a 3-member cluster: one node-exporter per member.
fn on_cluster() -> Deployment {
    use atlas_install::deployment::ClusterInfo;
    use atlas_install::incus::ClusterMember;
    let members = (1..=3)
        .map(|i| ClusterMember {
            server_name: format!("m{i}"),
            url: format!("https://198.51.100.1{i}:8443"),
            status: "Online".into(),
            ..ClusterMember::default()
        })
        .collect();
    let info = ClusterInfo {
        clustered: true,
        local: "m1".into(),
        members,
        groups: Vec::new(),
    };
    Deployment::new(&Config::builtin(), info, None)
}

/// On a cluster Prometheus scrapes each member's node-exporter at the member's address (its
/// proxy device), labelled by member; each copy is pinned to its member.
#[test]
fn cluster_node_exporters_are_scraped_per_member() {
    let cfg = on_cluster();
    assert!(cfg.instance("node-exporter01").is_none());
    assert!(cfg.config.integrations.incus_metrics && cfg.incus_loki());
    // Loki is published on its member's address (m1, where the stack goes), and that is the
    // URL every member's Incus ships logs to.
    let loki = atlas_install::render::instance_devices(&cfg, "loki01");
    assert_eq!(loki["loki"]["listen"], "tcp:198.51.100.11:3100", "{loki:?}");
    assert_eq!(loki["loki"]["connect"], "tcp:10.50.0.13:3100", "{loki:?}");
    let opts = atlas_install::engine::wiring::WiringOptions::of(&cfg).unwrap();
    assert_eq!(opts.loki_url.as_deref(), Some("http://198.51.100.11:3100"));
    let set = rendered(&cfg);
    let prom = String::from_utf8(
        set.instances["prometheus01"]
            .files
            .iter()
            .find(|f| f.path.ends_with("prometheus.yml"))
            .expect("prometheus.yml")
            .contents
            .clone(),
    )
    .unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&prom).expect("yaml");
    let groups = |name: &str| -> Vec<(String, String)> {
        let job = v["scrape_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|j| j["job_name"] == name)
            .unwrap_or_else(|| panic!("{name} job"))
            .clone();
        job["static_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["targets"][0].as_str().unwrap().to_string(),
                    g["labels"]["member"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let at_port = |port: u16| -> Vec<(String, String)> {
        (1..=3)
            .map(|i| (format!("198.51.100.1{i}:{port}"), format!("m{i}")))
            .collect()
    };
    assert_eq!(groups("node-exporter"), at_port(9100));
    // Incus' metrics: every member on its cluster address.
    assert_eq!(groups("incus"), at_port(8443));
    for i in 1..=3 {
        let name = format!("node-exporter01-m{i}");
        let inst = cfg.instance(&name).expect("per-member copy");
        assert_eq!(
            inst.placement,
            Some(atlas_install::config::Placement::Member(format!("m{i}")))
        );
        let devices = atlas_install::render::instance_devices(&cfg, &name);
        assert_eq!(
            devices["metrics"]["listen"],
            format!("tcp:198.51.100.1{i}:9100"),
            "{devices:?}"
        );
        assert_eq!(devices["metrics"]["bind"], "host");
    }
}

/// Every variant as deployed: the single-server configs of [`configs`], and the built-in
/// one on a 3-member cluster.
fn variants() -> Vec<(&'static str, Deployment)> {
    let mut v: Vec<(&'static str, Deployment)> = configs()
        .into_iter()
        .map(|(n, c)| (n, Deployment::standalone(&c)))
        .collect();
    v.insert(1, ("cluster", on_cluster()));
    v
}

/// The default config and the variants on a single server.
fn configs() -> Vec<(&'static str, Config)> {
    let mut v = vec![("default", Config::builtin())];

    let mut tls = Config::builtin();
    for name in ["grafana01", "prometheus01", "loki01"] {
        tls.instances.get_mut(name).unwrap().tls = true;
    }
    tls.mosquitto.tls = true;
    v.push(("tls", tls));

    let mut cf = Config::builtin();
    cf.instances.get_mut("cloudflared01").unwrap().enabled = true;
    cf.secrets.cloudflared_token = Some(TUNNEL_TOKEN.into());
    cf.secrets.cloudflare_api_token = Some(CF_API_TOKEN.into());
    cf.caddy.acme_email = Some("ops@example.org".into());
    let g = cf
        .instances
        .get_mut("grafana01")
        .unwrap()
        .web
        .as_mut()
        .unwrap();
    g.domain = "grafana.example.org".into();
    g.allowed_ip_range = vec![
        "192.168.68.0/22".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    v.push(("cloudflared", cf));

    let mut v6 = Config::builtin();
    for (i, net) in [10u16, 20, 30, 40, 50].iter().zip([
        &mut v6.networks.development,
        &mut v6.networks.testing,
        &mut v6.networks.staging,
        &mut v6.networks.production,
        &mut v6.networks.management,
    ]) {
        net.ipv6 = Some(format!("fd00:10:{i}::1/64").parse().unwrap());
    }
    for inst in v6.instances.values_mut() {
        for nic in &mut inst.nics {
            if let (Some(a), Some(n)) = (nic.ipv4, v6.networks.get(nic.network)) {
                let prefix = n.ipv6.unwrap().network().segments();
                nic.ipv6 = Some(Ipv6Addr::new(
                    prefix[0],
                    prefix[1],
                    prefix[2],
                    0,
                    0,
                    0,
                    0,
                    u16::from(a.octets()[3]),
                ));
            }
        }
    }
    v.push(("ipv6", v6));

    let mut two = Config::builtin();
    let mut g2 = default_instance(ServiceKind::Grafana, "grafana02", &two.networks, 10);
    g2.web.as_mut().unwrap().domain = "grafana-dev.atlas.localhost".into();
    two.instances.insert("grafana02".into(), g2);
    v.push(("grafana02", two));

    let mut other = Config::builtin();
    other.caddy.tls_fallback = TlsIssuer::StepCa;
    other.caddy.rate_limit.enabled = false;
    other.alertmanager.webhook_url = Some("https://hooks.example.org/atlas/T0KEN".into());
    other.prometheus.retention_size = Some("90GB".to_string().try_into().unwrap());
    v.push(("stepca-webhook", other));
    v.push(("receivers", with_receivers()));
    v
}

/// Every receiver kind (email with and without SMTP AUTH, Slack, webhook with and without a
/// bearer token) on routes by severity, with their secrets.
fn with_receivers() -> Config {
    use atlas_install::config::{
        AlertRoutes, EmailReceiver, Receiver, SeverityRoute, SlackReceiver, WebhookReceiver,
    };
    let mut c = Config::builtin();
    let a = &mut c.alertmanager;
    let email = |auth: bool| {
        Receiver::Email(EmailReceiver {
            smarthost: "smtp.example.org:587".into(),
            from: "Atlas <atlas@example.org>".into(),
            to: vec!["oncall@example.org".into(), "ops@example.org".into()],
            auth_username: auth.then(|| "atlas@example.org".into()),
            auth_password_file: None,
            require_tls: auth,
        })
    };
    a.receivers.insert("oncall".into(), email(true));
    a.receivers.insert("relay".into(), email(false));
    a.receivers.insert(
        "chat".into(),
        Receiver::Slack(SlackReceiver {
            channel: Some("#alerts".into()),
            webhook_url_file: None,
        }),
    );
    a.receivers.insert(
        "pager".into(),
        Receiver::Webhook(WebhookReceiver {
            url: "https://hooks.example.org/alerts".into(),
            bearer_token_file: None,
        }),
    );
    a.receivers.insert(
        "audit".into(),
        Receiver::Webhook(WebhookReceiver {
            url: "http://audit.example.internal:8080/".into(),
            bearer_token_file: None,
        }),
    );
    a.routes = AlertRoutes {
        critical: Some(SeverityRoute {
            receivers: vec!["oncall".into(), "chat".into(), "pager".into()],
            repeat_interval: Some("1h".into()),
        }),
        warning: Some(SeverityRoute {
            receivers: vec!["chat".into(), "relay".into(), "audit".into()],
            repeat_interval: None,
        }),
    };
    let s = &mut c.secrets.receivers;
    s.insert("oncall".into(), SMTP_PW.into());
    s.insert("chat".into(), SLACK_URL.into());
    s.insert("pager".into(), HOOK_TOKEN.into());
    c
}

/// Everything rendered, as reviewable text (secret files included: the test secrets are fixed).
fn dump(set: &RenderedSet) -> String {
    let mut s = String::new();
    for (name, inst) in &set.instances {
        s.push_str(&format!("######## {name}\n"));
        if let Some(cmd) = &inst.command {
            if !cmd.wrapper.is_empty() {
                s.push_str(&format!("wrapper: {:?}\n", cmd.wrapper));
            }
            s.push_str(&format!("command: {:?}\n", cmd.argv));
        }
        for (k, v) in &inst.environment {
            let secret = if inst.secret_env.contains(k) {
                " (secret)"
            } else {
                ""
            };
            s.push_str(&format!("env {k}={v}{secret}\n"));
        }
        for e in &inst.expected_files {
            s.push_str(&format!(
                "expects {} ({:?}, {:o} {}:{})\n",
                e.path, e.source, e.mode, e.uid, e.gid
            ));
        }
        for f in &inst.files {
            s.push_str(&format!(
                "==== {} ({:o} {}:{}{})\n",
                f.path,
                f.mode,
                f.uid,
                f.gid,
                if f.secret { ", secret" } else { "" }
            ));
            if f.path.starts_with(render::dashboards::DIR) {
                // Large and checked on their own (render::dashboards tests, the stack test).
                s.push_str(&format!("<dashboard JSON, {} bytes>\n", f.contents.len()));
                continue;
            }
            s.push_str(&String::from_utf8_lossy(&f.contents));
            if !f.contents.ends_with(b"\n") {
                s.push_str("\n<no newline at end>\n");
            }
        }
    }
    s
}

fn rendered(d: &Deployment) -> RenderedSet {
    render::render(d, &creds()).expect("render")
}

/// `config` on a single server.
fn standalone(config: &Config) -> Deployment {
    Deployment::standalone(config)
}

#[test]
fn render_snapshots() {
    for (name, config) in variants() {
        let set = rendered(&config);
        insta::assert_snapshot!(format!("render_{name}"), dump(&set));
        let profiles = render::profiles(&config).expect("profiles");
        let mut devices = BTreeMap::new();
        for n in config.instances().keys() {
            let d = render::instance_devices(&config, n);
            if !d.is_empty() {
                devices.insert(n.clone(), d);
            }
        }
        insta::assert_snapshot!(
            format!("profiles_{name}"),
            format!("{profiles:#?}\ninstance devices: {devices:#?}")
        );
    }
}

#[test]
fn render_is_deterministic() {
    for (name, config) in variants() {
        assert_eq!(rendered(&config), rendered(&config), "variant {name}");
    }
}

/// A dummy but real PEM certificate and key for every file the rendered config points at.
fn write_expected(root: &Path, expected: &[ExpectedFile]) {
    let pair = rcgen::generate_simple_self_signed(vec!["atlas.test".to_string()]).unwrap();
    for e in expected {
        let pem = match e.source {
            FileSource::ServiceKey | FileSource::IncusMetricsKey => {
                pair.signing_key.serialize_pem()
            }
            _ => pair.cert.pem(),
        };
        write(root, &e.path, pem.as_bytes());
    }
}

fn write(root: &Path, container_path: &str, contents: &[u8]) -> PathBuf {
    let p = root.join(container_path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, contents).unwrap();
    p
}

/// The instance's files (and the certificates they refer to) in a temp dir mirroring the
/// container's paths.
fn container_tree(inst: &RenderedInstance) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in &inst.files {
        write(dir.path(), &f.path, &f.contents);
    }
    write_expected(dir.path(), &inst.expected_files);
    dir
}

/// Runs `cmd` in a private mount namespace where `container_dir` (e.g. /etc/prometheus) is the
/// rendered tree, so the tool resolves every absolute path exactly as in the container. The
/// host's own directory is untouched (the bind mount exists only in that namespace).
fn in_container_paths(
    tree: &Path,
    container_dir: &str,
    cmd: &[&str],
    env: &[(&str, &str)],
) -> (bool, String) {
    let script = r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#;
    let src = tree.join(container_dir.trim_start_matches('/'));
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(&src)
        .arg(container_dir)
        .args(cmd)
        .envs(env.iter().copied())
        .output()
        .expect("unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn have_mount_namespace(dir: &str) -> bool {
    have_tool("unshare")
        && have_path(
            Path::new(dir),
            "a mount point for the container path (from the Debian package)",
        )
}

#[test]
fn promtool_accepts_config_and_rules_of_every_variant() {
    if !have_tool("promtool") || !have_mount_namespace("/etc/prometheus") {
        return;
    }
    for (name, config) in variants() {
        let set = rendered(&config);
        let inst = &set.instances["prometheus01"];
        let tree = container_tree(inst);
        let (ok, out) = in_container_paths(
            tree.path(),
            "/etc/prometheus",
            &[
                "promtool",
                "check",
                "config",
                "/etc/prometheus/prometheus.yml",
            ],
            &[],
        );
        assert!(ok, "variant {name}: promtool check config failed:\n{out}");
        // The rule_files glob resolved to our file and all ten alerts loaded.
        assert!(
            out.contains("SUCCESS: 10 rules found"),
            "variant {name}:\n{out}"
        );
        let (ok, out) = in_container_paths(
            tree.path(),
            "/etc/prometheus",
            &[
                "promtool",
                "check",
                "rules",
                "/etc/prometheus/rules/atlas-alerts.yml",
            ],
            &[],
        );
        assert!(
            ok && out.contains("SUCCESS: 10 rules found"),
            "variant {name}: {out}"
        );
    }
}

#[test]
fn promtool_notices_a_missing_certificate() {
    // Proof that the check above is honest: without the Incus client key the same config fails.
    if !have_tool("promtool") || !have_mount_namespace("/etc/prometheus") {
        return;
    }
    let set = rendered(&standalone(&Config::builtin()));
    let tree = container_tree(&set.instances["prometheus01"]);
    std::fs::remove_file(tree.path().join("etc/prometheus/incus/metrics.key")).unwrap();
    let (ok, out) = in_container_paths(
        tree.path(),
        "/etc/prometheus",
        &[
            "promtool",
            "check",
            "config",
            "/etc/prometheus/prometheus.yml",
        ],
        &[],
    );
    assert!(
        !ok,
        "promtool accepted a config whose key file is missing:\n{out}"
    );
    assert!(out.contains("metrics.key"), "{out}");
}

#[test]
fn alert_rules_are_the_ten_of_the_seed() {
    let set = rendered(&standalone(&Config::builtin()));
    let file = set.instances["prometheus01"]
        .files
        .iter()
        .find(|f| f.path.ends_with("atlas-alerts.yml"))
        .unwrap();
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&file.contents).unwrap();
    let mut got = BTreeMap::new();
    for g in doc["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let ann = &r["annotations"];
            assert!(
                ann["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{r:?}"
            );
            assert!(
                ann["description"]
                    .as_str()
                    .is_some_and(|s| s.contains("$value")),
                "description without the current value: {r:?}"
            );
            got.insert(
                r["alert"].as_str().unwrap().to_string(),
                (
                    r["labels"]["severity"].as_str().unwrap().to_string(),
                    r["for"].as_str().unwrap_or("").to_string(),
                ),
            );
        }
    }
    let want: BTreeMap<String, (String, String)> = [
        ("ServiceDown", "critical", "2m"),
        ("ServiceFlapping", "warning", ""),
        ("HighMemoryUsage", "warning", "5m"),
        ("CriticalMemoryUsage", "critical", "2m"),
        ("HostOutOfMemory", "warning", "2m"),
        ("HostHighMemoryPressure", "warning", "5m"),
        ("DiskSpaceWarning", "warning", "5m"),
        ("DiskSpaceCritical", "critical", "2m"),
        ("HighCPUUsage", "warning", "10m"),
        ("HighLoadAverage", "warning", "5m"),
    ]
    .into_iter()
    .map(|(a, s, f)| (a.to_string(), (s.to_string(), f.to_string())))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn prometheus_scrapes_every_service_of_the_seed() {
    for (name, config) in variants() {
        let set = rendered(&config);
        let file = &set.instances["prometheus01"]
            .files
            .iter()
            .find(|f| f.path == "/etc/prometheus/prometheus.yml")
            .unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&file.contents).unwrap();
        assert_eq!(doc["global"]["scrape_interval"].as_str(), Some("15s"));
        let jobs: BTreeMap<String, &serde_yaml_ng::Value> = doc["scrape_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|j| (j["job_name"].as_str().unwrap().to_string(), j))
            .collect();
        let mut want = vec![
            "alertmanager",
            "caddy",
            "grafana",
            "incus",
            "loki",
            "node-exporter",
            "prometheus",
            "step-ca",
        ];
        if name == "cloudflared" {
            want.push("cloudflared");
            want.sort();
        }
        assert_eq!(
            jobs.keys().map(String::as_str).collect::<Vec<_>>(),
            want,
            "variant {name}"
        );
        let step_ca = jobs["step-ca"];
        assert_eq!(
            step_ca["static_configs"][0]["targets"][0].as_str(),
            Some(format!("step-ca01.incus:{}", render::STEP_CA_METRICS_PORT).as_str()),
            "step-ca's metrics listener, not the JSON health endpoint"
        );
        let incus = jobs["incus"];
        assert_eq!(incus["metrics_path"].as_str(), Some("/1.0/metrics"));
        // On a cluster every member on its cluster address (see the cluster test below).
        let incus_at = if name == "cluster" {
            "198.51.100.11:8443"
        } else {
            "10.50.0.1:8443"
        };
        assert_eq!(
            incus["static_configs"][0]["targets"][0].as_str(),
            Some(incus_at)
        );
        assert_eq!(
            incus["tls_config"]["cert_file"].as_str(),
            Some(render::INCUS_METRICS_CERT)
        );
        let am = &doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0];
        assert_eq!(am.as_str(), Some("alertmanager01.incus:9093"));
        if name == "grafana02" {
            let t = jobs["grafana"]["static_configs"][0]["targets"]
                .as_sequence()
                .unwrap();
            assert_eq!(t.len(), 2, "both Grafanas are scraped");
        }
        if name == "tls" {
            assert_eq!(jobs["grafana"]["scheme"].as_str(), Some("https"));
            assert_eq!(jobs["loki"]["scheme"].as_str(), Some("https"));
        }
    }
}

#[test]
fn amtool_accepts_every_variant() {
    if !have_tool("amtool") {
        return;
    }
    for (name, config) in variants() {
        let set = rendered(&config);
        let am = &set.instances["alertmanager01"];
        let tree = container_tree(am);
        let out = Command::new("amtool")
            .args(["check-config"])
            .arg(tree.path().join("etc/alertmanager/alertmanager.yml"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "variant {name}: {text}");
        assert!(text.contains("1 inhibit rules"), "{text}");
        let y = yaml_of(am, "/etc/alertmanager/alertmanager.yml");
        let receivers: Vec<&str> = y["receivers"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            text.contains(&format!("{} receivers", receivers.len())),
            "{text}"
        );
        assert!(receivers.contains(&y["route"]["receiver"].as_str().unwrap()));
        match name {
            "stepca-webhook" => {
                assert_eq!(y["route"]["receiver"], "webhook");
                assert!(y["receivers"][1]["webhook_configs"][0]["url"].is_string());
            }
            "receivers" => {}
            _ => {
                assert_eq!(receivers, ["default"], "variant {name}");
                assert!(y["route"]["routes"].is_null(), "variant {name}");
            }
        }
    }
}

/// Every receiver kind: routed by severity, each secret in a 0600 file of its own that the
/// config points at, and none of them in alertmanager.yml (which `render --out` may show).
#[test]
fn receivers_are_routed_by_severity_with_secrets_in_their_own_files() {
    let set = rendered(&standalone(&with_receivers()));
    let am = &set.instances["alertmanager01"];
    let config = am
        .files
        .iter()
        .find(|f| f.path == "/etc/alertmanager/alertmanager.yml")
        .unwrap();
    assert!(!config.secret && config.mode == 0o644, "{config:?}");
    let text = String::from_utf8_lossy(&config.contents);
    for secret in [SMTP_PW, SLACK_URL, HOOK_TOKEN] {
        assert!(!text.contains(secret), "{secret} in alertmanager.yml");
    }
    for (receiver, secret) in [
        ("oncall", SMTP_PW),
        ("chat", SLACK_URL),
        ("pager", HOOK_TOKEN),
    ] {
        let path = format!("/etc/alertmanager/secrets/{receiver}");
        let f = am.files.iter().find(|f| f.path == path).expect(&path);
        assert!(f.secret, "{f:?}");
        assert_eq!((f.mode, f.uid, f.gid), (0o600, 65534, 65534), "{path}");
        assert_eq!(f.contents, secret.as_bytes(), "{path}: exactly the secret");
    }
    let y = yaml_of(am, "/etc/alertmanager/alertmanager.yml");
    let by_name = |n: &str| {
        y["receivers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("no receiver {n}"))
            .clone()
    };
    let oncall = &by_name("oncall")["email_configs"][0];
    assert_eq!(
        oncall["auth_password_file"],
        "/etc/alertmanager/secrets/oncall"
    );
    assert_eq!(oncall["to"], "oncall@example.org, ops@example.org");
    assert_eq!(oncall["require_tls"], true);
    let relay = &by_name("relay")["email_configs"][0];
    assert!(relay["auth_username"].is_null() && relay["auth_password_file"].is_null());
    assert_eq!(
        by_name("chat")["slack_configs"][0]["api_url_file"],
        "/etc/alertmanager/secrets/chat"
    );
    let pager = &by_name("pager")["webhook_configs"][0];
    assert_eq!(
        pager["http_config"]["authorization"]["credentials_file"],
        "/etc/alertmanager/secrets/pager"
    );
    assert!(by_name("audit")["webhook_configs"][0]["http_config"].is_null());
    let routes: Vec<(String, String, Option<String>)> = y["route"]["routes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["continue"], true, "{r:?}");
            (
                r["matchers"][0].as_str().unwrap().to_string(),
                r["receiver"].as_str().unwrap().to_string(),
                r["repeat_interval"].as_str().map(String::from),
            )
        })
        .collect();
    let want = [
        ("severity=\"critical\"", "oncall", Some("1h")),
        ("severity=\"critical\"", "chat", Some("1h")),
        ("severity=\"critical\"", "pager", Some("1h")),
        ("severity=\"warning\"", "chat", None),
        ("severity=\"warning\"", "relay", None),
        ("severity=\"warning\"", "audit", None),
    ];
    let want: Vec<(String, String, Option<String>)> = want
        .iter()
        .map(|(m, r, i)| (m.to_string(), r.to_string(), i.map(String::from)))
        .collect();
    assert_eq!(routes, want);
    assert_eq!(
        y["route"]["receiver"], "default",
        "the rest stays in Alertmanager"
    );
}

/// Caddyfile blocks Debian's caddy 2.6 cannot load: the ratelimit and Cloudflare DNS plugins,
/// and the `proxy_protocol` listener wrapper (built into Caddy since 2.7, which the image ships).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Unloadable {
    RateLimit,
    CloudflareDns,
    ProxyProtocol,
}

const ALL_UNLOADABLE: [Unloadable; 3] = [
    Unloadable::RateLimit,
    Unloadable::CloudflareDns,
    Unloadable::ProxyProtocol,
];

/// Cuts the given blocks out (balanced braces) so the rest can be validated for real;
/// [`caddy_fails_only_on_plugins`] checks each of them is what stock Caddy rejects.
fn without_blocks(caddyfile: &str, cut: &[Unloadable]) -> String {
    let lines: Vec<&str> = caddyfile.lines().collect();
    let mut out = Vec::new();
    let mut depth = 0i32;
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if depth > 0 {
            depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
            continue;
        }
        let kind = match t {
            "rate_limit {" => Some(Unloadable::RateLimit),
            // The wrapper list exists only for proxy_protocol (`tls` alone is the default).
            "listener_wrappers {" => Some(Unloadable::ProxyProtocol),
            "tls {"
                if lines
                    .get(i + 1)
                    .is_some_and(|n| n.trim().starts_with("dns cloudflare")) =>
            {
                Some(Unloadable::CloudflareDns)
            }
            _ => None,
        };
        if kind.is_some_and(|k| cut.contains(&k)) {
            depth = 1;
            continue;
        }
        out.push(*line);
    }
    out.join("\n") + "\n"
}

fn caddy_env(home: &Path) -> Vec<(&'static str, String)> {
    // Keep the internal CA Caddy provisions during validation out of the host's own storage.
    vec![
        ("XDG_DATA_HOME", home.join("data").display().to_string()),
        ("XDG_CONFIG_HOME", home.join("config").display().to_string()),
        ("HOME", home.display().to_string()),
    ]
}

#[test]
fn caddy_validates_every_variant_it_can_load() {
    if !have_tool("caddy") || !have_mount_namespace("/etc/caddy") {
        return;
    }
    for (name, config) in variants() {
        let set = rendered(&config);
        let inst = &set.instances["caddy01"];
        let tree = container_tree(inst);
        let path = tree.path().join("etc/caddy/Caddyfile");
        let original = std::fs::read_to_string(&path).unwrap();
        // `caddy fmt` would change nothing: the template's layout is Caddy's own.
        let fmt = Command::new("caddy")
            .arg("fmt")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&fmt.stdout),
            original,
            "variant {name}: Caddyfile is not in `caddy fmt` form"
        );
        let stock = without_blocks(&original, &ALL_UNLOADABLE);
        assert!(
            !stock.contains("rate_limit")
                && !stock.contains("proxy_protocol")
                && !stock.contains("cloudflare")
        );
        std::fs::write(&path, &stock).unwrap();
        let home = tempfile::tempdir().unwrap();
        let env = caddy_env(home.path());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (ok, out) = in_container_paths(
            tree.path(),
            "/etc/caddy",
            &[
                "caddy",
                "validate",
                "--adapter",
                "caddyfile",
                "--config",
                "/etc/caddy/Caddyfile",
            ],
            &env,
        );
        assert!(
            ok && out.contains("Valid configuration"),
            "variant {name}: caddy validate failed:\n{out}\n---\n{stock}"
        );
    }
}

#[test]
fn caddy_fails_only_on_plugins() {
    if !have_tool("caddy") {
        return;
    }
    let config = variants()
        .into_iter()
        .find(|(n, _)| *n == "cloudflared")
        .unwrap()
        .1;
    let set = rendered(&config);
    let original =
        String::from_utf8_lossy(&set.instances["caddy01"].files[0].contents).into_owned();
    let cases = [
        (Unloadable::RateLimit, "unrecognized directive: rate_limit"),
        (Unloadable::CloudflareDns, "dns.providers.cloudflare"),
        (Unloadable::ProxyProtocol, "caddy.listeners.proxy_protocol"),
    ];
    for (keep, message) in cases {
        // Everything else cut: stock caddy must fail on this block, and only on it.
        let others: Vec<Unloadable> = ALL_UNLOADABLE.into_iter().filter(|u| *u != keep).collect();
        let text = without_blocks(&original, &others);
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "Caddyfile", text.as_bytes());
        let out = Command::new("caddy")
            .args(["adapt", "--adapter", "caddyfile", "--config"])
            .arg(&p)
            .envs(caddy_env(dir.path()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{keep:?}: stock caddy should not load it"
        );
        assert!(
            err.contains(message),
            "{keep:?}: failure is not the plugin: {err}"
        );
    }
}

#[test]
fn caddyfile_keeps_secrets_out_and_guards_every_site() {
    let config = variants()
        .into_iter()
        .find(|(n, _)| *n == "cloudflared")
        .unwrap()
        .1;
    let set = rendered(&config);
    let caddy = &set.instances["caddy01"];
    let text = String::from_utf8_lossy(&caddy.files[0].contents).into_owned();
    assert!(
        !text.contains(CF_API_TOKEN),
        "the token must not be in the Caddyfile"
    );
    assert!(text.contains("dns cloudflare {env.CF_API_TOKEN}"));
    assert_eq!(
        caddy.environment.get("CF_API_TOKEN").map(String::as_str),
        Some(CF_API_TOKEN)
    );
    assert!(caddy.secret_env.contains("CF_API_TOKEN"));
    assert!(
        text.contains("@denied not remote_ip 192.168.68.0/22 2001:db8::/32"),
        "{text}"
    );
    assert!(text.contains("respond @denied \"Forbidden\" 403"));
    assert!(text.contains("zone grafana01_login"));
    assert!(text.contains("events 10\n"), "login limit of the seed");
    assert!(text.contains("events 100\n"), "general limit of the seed");
}

fn uid_gid_of(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| (f[2].parse().ok(), f[3].parse().ok()))
            .and_then(|(u, g)| Some((u?, g?)))
    })
}

struct Broker(std::process::Child);
impl Drop for Broker {
    fn drop(&mut self) {
        // SIGTERM, as Incus' stop does through our PID 1: Mosquitto saves its state on it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mqtt(tool: &str, port: u16, user: &str, password: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            user,
            "-P",
            password,
            "-i",
            &format!("atlas-test-{tool}"),
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A broker running the rendered mosquitto.conf, changed only where the test host differs from
/// the container: listeners on free loopback ports, and every `/mosquitto/...` path moved into
/// a temp dir holding the rendered files (and, with TLS, a real CA and server certificate).
struct RunningBroker {
    _broker: Broker,
    tree: tempfile::TempDir,
    mqtt: u16,
    mqtts: Option<u16>,
}

fn start_broker(set: &RenderedSet) -> RunningBroker {
    let inst = &set.instances["mosquitto01"];
    let tree = container_tree(inst);
    let root = tree.path();
    let conf_path = root.join("mosquitto/config/mosquitto.conf");
    std::fs::create_dir_all(root.join("mosquitto/data")).unwrap();
    let conf = std::fs::read_to_string(&conf_path).unwrap();
    assert!(
        conf.contains("\nlistener 1883\n") && conf.contains("allow_anonymous false"),
        "{conf}"
    );
    let mqtt = free_port();
    let mut conf = conf
        .replace(
            "\nlistener 1883\n",
            &format!("\nlistener {mqtt} 127.0.0.1\n"),
        )
        .replace(" /mosquitto/", &format!(" {}/mosquitto/", root.display()));
    let mut mqtts = None;
    if conf.contains("\nlistener 8883\n") {
        let port = free_port();
        conf = conf.replace(
            "\nlistener 8883\n",
            &format!("\nlistener {port} 127.0.0.1\n"),
        );
        mqtts = Some(port);
        // A real chain: the step-ca root stand-in signs the broker's certificate.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Atlas test root");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "mosquitto01.incus");
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        write(
            root,
            "/mosquitto/config/step-ca/root_ca.crt",
            ca.pem().as_bytes(),
        );
        write(root, "/mosquitto/config/tls/tls.crt", cert.pem().as_bytes());
        write(
            root,
            "/mosquitto/config/tls/tls.key",
            key.serialize_pem().as_bytes(),
        );
    }
    std::fs::write(&conf_path, conf).unwrap();
    // As in the container: the broker drops root for its own user, which owns the 0600 files.
    std::fs::set_permissions(
        root.join("mosquitto/config/passwd"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    if let Some((uid, gid)) = uid_gid_of("mosquitto") {
        chown_tree(root, uid, gid);
    }
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in [Some(mqtt), mqtts].into_iter().flatten() {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut log = String::new();
                child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut log)
                    .unwrap();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut log)
                    .unwrap();
                panic!("mosquitto exited ({status}) with the rendered config:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    RunningBroker {
        _broker: Broker(child),
        tree,
        mqtt,
        mqtts,
    }
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn mosquitto_runs_the_rendered_config_and_checks_passwords() {
    if !have_tool("mosquitto") || !have_tool("mosquitto_pub") || !have_tool("mosquitto_sub") {
        return;
    }
    let b = start_broker(&rendered(&standalone(&Config::builtin())));
    let port = b.mqtt;
    let (ok, out) = mqtt(
        "mosquitto_pub",
        port,
        "atlas",
        MQTT_PW,
        &["-t", "atlas/test", "-m", "hello", "-r", "-q", "1"],
    );
    assert!(ok, "the generated credentials were refused: {out}");
    let (ok, out) = mqtt(
        "mosquitto_sub",
        port,
        "atlas",
        MQTT_PW,
        &["-t", "atlas/test", "-C", "1", "-W", "5"],
    );
    assert!(
        ok && out.trim() == "hello",
        "retained message not delivered: {out}"
    );
    let (ok, out) = mqtt(
        "mosquitto_pub",
        port,
        "atlas",
        "wrong-password",
        &["-t", "atlas/test", "-m", "x"],
    );
    assert!(!ok, "a wrong password was accepted: {out}");
    assert!(
        out.to_lowercase().contains("not authorised") || out.to_lowercase().contains("refused"),
        "{out}"
    );
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "t",
            "-m",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "anonymous client accepted");
    // Persistence goes where the rendered config says (the data volume in the container).
    drop(b._broker);
    assert!(
        b.tree.path().join("mosquitto/data/mosquitto.db").is_file(),
        "no persistence file written"
    );
}

#[test]
fn mosquitto_serves_mqtts_with_the_rendered_tls_listener() {
    if !have_tool("mosquitto") || !have_tool("mosquitto_pub") {
        return;
    }
    let config = variants().into_iter().find(|(n, _)| *n == "tls").unwrap().1;
    let b = start_broker(&rendered(&config));
    let port = b
        .mqtts
        .expect("the TLS variant has an 8883 listener")
        .to_string();
    let ca = b.tree.path().join("mosquitto/config/step-ca/root_ca.crt");
    let pubx = |pw: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &port, "--cafile"])
            .arg(&ca)
            .args(["-u", "atlas", "-P", pw, "-t", "atlas/tls", "-m", "x"])
            .output()
            .unwrap()
    };
    let ok = pubx(MQTT_PW);
    assert!(
        ok.status.success(),
        "MQTTS publish failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !pubx("wrong-password").status.success(),
        "a wrong password was accepted over TLS"
    );
    // And plain MQTT on the same broker still works.
    let (ok, out) = mqtt(
        "mosquitto_pub",
        b.mqtt,
        "atlas",
        MQTT_PW,
        &["-t", "atlas/plain", "-m", "x"],
    );
    assert!(ok, "{out}");
}

#[test]
fn mosquitto_tls_listener_and_file_ownership() {
    let config = variants().into_iter().find(|(n, _)| *n == "tls").unwrap().1;
    let set = rendered(&config);
    let inst = &set.instances["mosquitto01"];
    let conf = String::from_utf8_lossy(
        &inst
            .files
            .iter()
            .find(|f| f.path.ends_with("mosquitto.conf"))
            .unwrap()
            .contents,
    )
    .into_owned();
    assert!(conf.contains("listener 8883\ncafile /mosquitto/config/step-ca/root_ca.crt\ncertfile /mosquitto/config/tls/tls.crt\nkeyfile /mosquitto/config/tls/tls.key"), "{conf}");
    let pw = inst
        .files
        .iter()
        .find(|f| f.path == "/mosquitto/config/passwd")
        .unwrap();
    assert_eq!(
        (pw.mode, pw.uid, pw.gid, pw.secret),
        (0o600, 1883, 1883, true)
    );
}

fn yaml_of(inst: &RenderedInstance, path: &str) -> serde_yaml_ng::Value {
    let f = inst
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} not rendered"));
    serde_yaml_ng::from_slice(&f.contents).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn loki_config_has_retention_and_compactor() {
    for (name, config) in variants() {
        let set = rendered(&config);
        let y = yaml_of(&set.instances["loki01"], "/etc/loki/local-config.yaml");
        let schema = &y["schema_config"]["configs"][0];
        assert_eq!(schema["schema"].as_str(), Some("v13"));
        assert_eq!(schema["store"].as_str(), Some("tsdb"));
        assert_eq!(schema["object_store"].as_str(), Some("filesystem"));
        assert_eq!(schema["index"]["period"].as_str(), Some("24h"));
        let c = &y["compactor"];
        assert_eq!(c["retention_enabled"].as_bool(), Some(true));
        assert_eq!(c["delete_request_store"].as_str(), Some("filesystem"));
        assert_eq!(c["retention_delete_delay"].as_str(), Some("2h"));
        assert!(
            c["working_directory"]
                .as_str()
                .unwrap()
                .starts_with("/loki/")
        );
        assert_eq!(
            y["limits_config"]["retention_period"].as_str(),
            Some("720h")
        );
        assert_eq!(y["analytics"]["reporting_enabled"].as_bool(), Some(false));
        assert_eq!(y["common"]["path_prefix"].as_str(), Some("/loki"));
        assert_eq!(y["server"]["http_listen_port"].as_u64(), Some(3100));
        let tls = &y["server"]["http_tls_config"];
        assert_eq!(
            tls["cert_file"].as_str().is_some(),
            name == "tls",
            "variant {name}"
        );
    }
}

#[test]
fn grafana_datasources_and_phone_home_off() {
    for (name, config) in variants() {
        let set = rendered(&config);
        for (gname, g) in set
            .instances
            .iter()
            .filter(|(_, i)| i.service == Some(ServiceKind::Grafana))
        {
            let y = yaml_of(g, "/etc/grafana/provisioning/datasources/atlas.yaml");
            assert_eq!(y["apiVersion"].as_u64(), Some(1));
            let ds = y["datasources"].as_sequence().unwrap();
            assert_eq!(ds.len(), 2, "{name}/{gname}");
            let scheme = if name == "tls" { "https" } else { "http" };
            assert_eq!(ds[0]["type"].as_str(), Some("prometheus"));
            assert_eq!(ds[0]["isDefault"].as_bool(), Some(true));
            assert_eq!(
                ds[0]["url"].as_str(),
                Some(format!("{scheme}://prometheus01.incus:9090").as_str())
            );
            assert_eq!(ds[1]["type"].as_str(), Some("loki"));
            assert_eq!(ds[1]["isDefault"].as_bool(), Some(false));
            assert_eq!(
                ds[1]["url"].as_str(),
                Some(format!("{scheme}://loki01.incus:3100").as_str())
            );
            if name == "tls" {
                assert_eq!(
                    ds[0]["secureJsonData"]["tlsCACert"].as_str(),
                    Some("$__file{/etc/grafana/step-ca/root_ca.crt}")
                );
                assert_eq!(g.environment["GF_SERVER_PROTOCOL"], "https");
            }
            for k in [
                "GF_ANALYTICS_REPORTING_ENABLED",
                "GF_ANALYTICS_CHECK_FOR_UPDATES",
                "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES",
            ] {
                assert_eq!(g.environment[k], "false", "{k}");
            }
            assert_eq!(g.environment["GF_SECURITY_ADMIN_PASSWORD"], GRAFANA_PW);
            assert!(g.secret_env.contains("GF_SECURITY_ADMIN_PASSWORD"));
        }
    }
}

#[test]
fn profiles_carry_the_seed_resource_table() {
    let config = standalone(&Config::builtin());
    let profiles = render::profiles(&config).unwrap();
    let by: BTreeMap<&str, &render::ProfileSpec> =
        profiles.iter().map(|p| (p.name.as_str(), p)).collect();
    // cloudflared is disabled by default, so it has no profile.
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>(),
        [
            "alertmanager",
            "caddy",
            "grafana",
            "loki",
            "mosquitto",
            "node-exporter",
            "prometheus",
            "step-ca"
        ]
    );
    let table = [
        ("caddy", "2", "1GB"),
        ("grafana", "2", "1GB"),
        ("prometheus", "2", "2GB"),
        ("loki", "2", "2GB"),
        ("alertmanager", "1", "256MB"),
        ("step-ca", "1", "512MB"),
        ("node-exporter", "1", "128MB"),
        ("mosquitto", "1", "256MB"),
    ];
    for (name, cpu, mem) in table {
        let p = by[name];
        assert_eq!(p.config["limits.cpu"], cpu, "{name}");
        assert_eq!(p.config["limits.memory"], mem, "{name}");
        assert_eq!(p.config["limits.memory.enforce"], "hard");
        assert_eq!(p.config["boot.autorestart"], "true");
        assert_eq!(p.devices["root"]["pool"], "local");
    }
    let caddy = by["caddy"];
    assert_eq!(caddy.devices["eth0"]["network"], "production");
    assert_eq!(caddy.devices["eth1"]["network"], "management");
    assert_eq!(caddy.devices["eth2"]["network"], "incusbr0");
    assert_eq!(caddy.devices["https"]["listen"], "tcp:0.0.0.0:443");
    assert_eq!(caddy.devices["https"]["connect"], "tcp:127.0.0.1:443");
    assert_eq!(caddy.devices["https"]["proxy_protocol"], "true");
    let m = by["mosquitto"];
    assert_eq!(m.devices["mqtt"]["listen"], "tcp:0.0.0.0:1883");
    assert!(
        !m.devices.contains_key("mqtts"),
        "no TLS listener by default"
    );
    assert_eq!(by["grafana"].devices["data"]["source"], "grafana01-data");
    assert_eq!(by["grafana"].devices["data"]["path"], "/var/lib/grafana");
    assert_eq!(
        by["prometheus"].devices["eth0"]["ipv4.address"],
        "10.50.0.12"
    );
    let ne = by["node-exporter"];
    assert_eq!(ne.devices["host-root"]["source"], "/");
    assert_eq!(ne.devices["host-root"]["path"], "/host");
    assert_eq!(ne.devices["host-root"]["readonly"], "true");
    let total_cpu: u32 = profiles
        .iter()
        .map(|p| p.config["limits.cpu"].parse::<u32>().unwrap())
        .sum();
    assert_eq!(
        total_cpu, 12,
        "the seed's 13 cores minus the disabled cloudflared"
    );
}

#[test]
fn shared_profile_moves_addresses_and_volume_to_the_instances() {
    let config = variants()
        .into_iter()
        .find(|(n, _)| *n == "grafana02")
        .unwrap()
        .1;
    let profiles = render::profiles(&config).unwrap();
    let g = profiles.iter().find(|p| p.name == "grafana").unwrap();
    assert!(!g.devices.contains_key("data"));
    assert!(!g.devices["eth0"].contains_key("ipv4.address"));
    let d1 = render::instance_devices(&config, "grafana01");
    let d2 = render::instance_devices(&config, "grafana02");
    assert_eq!(d1["eth0"]["ipv4.address"], "10.50.0.11");
    assert_eq!(d2["eth0"]["ipv4.address"], "10.50.0.21");
    assert_eq!(d2["data"]["source"], "grafana02-data");
    assert!(render::instance_devices(&config, "prometheus01").is_empty());
    // Both sites are proxied.
    let set = rendered(&config);
    let caddyfile =
        String::from_utf8_lossy(&set.instances["caddy01"].files[0].contents).into_owned();
    assert!(
        caddyfile.contains("grafana-dev.atlas.localhost {")
            && caddyfile.contains("reverse_proxy grafana02.incus:3000")
    );
    assert!(caddyfile.contains("zone grafana02_login"));
}

#[test]
fn render_command_writes_container_paths_and_keeps_secrets_private() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(atlas().args(["render", "--out"]).arg(dir.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    let prom = dir
        .path()
        .join("prometheus01/etc/prometheus/prometheus.yml");
    assert!(prom.is_file(), "missing {}", prom.display());
    assert!(dir.path().join("caddy01/etc/caddy/Caddyfile").is_file());
    assert!(
        dir.path()
            .join("loki01/etc/loki/local-config.yaml")
            .is_file()
    );
    let step_pw = dir.path().join("step-ca01/etc/step-ca/password");
    let passwd = dir.path().join("mosquitto01/mosquitto/config/passwd");
    for secret in [&step_pw, &passwd] {
        let mode = std::fs::metadata(secret).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", secret.display());
    }
    assert_eq!(
        std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // The step-ca password is a generated secret: nowhere in the output or the other files.
    let pw = std::fs::read_to_string(&step_pw).unwrap();
    assert!(pw.len() >= 32);
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!printed.contains(&pw));
    let grafana = std::fs::read_to_string(dir.path().join("grafana01.service.toml")).unwrap();
    assert!(
        grafana.contains("\"GF_SECURITY_ADMIN_PASSWORD\" = \"<secret, not written>\""),
        "{grafana}"
    );
    assert!(grafana.contains("\"GF_ANALYTICS_REPORTING_ENABLED\" = \"false\""));
    // A second run over the same directory still leaves the secrets private.
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(atlas().args(["render", "--out"]).arg(dir.path()));
    assert!(out.status.success());
    assert_eq!(
        std::fs::metadata(&passwd).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// `render --out` with an email receiver: the SMTP password (from the environment) lands in
/// its own 0600 file, alertmanager.yml stays 0644 without it, and nothing printed has it.
#[test]
fn render_command_keeps_receiver_secrets_in_their_own_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("atlas.toml");
    std::fs::write(
        &cfg,
        "[alertmanager.receivers.oncall]\nkind = \"email\"\nsmarthost = \"smtp.example.org:587\"\n\
         from = \"atlas@example.org\"\nto = [\"oncall@example.org\"]\nauth_username = \"atlas\"\n\
         [alertmanager.routes.critical]\nreceivers = [\"oncall\"]\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = run(atlas()
        .arg("-c")
        .arg(&cfg)
        .args(["render", "--out"])
        .arg(&out_dir)
        .env("ATLAS_RECEIVER_SECRET_ONCALL", "smtp-pw-from-env"));
    assert!(out.status.success(), "{}", stderr(&out));
    let am = out_dir.join("alertmanager01/etc/alertmanager");
    let secret = am.join("secrets/oncall");
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "smtp-pw-from-env"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&secret), 0o600);
    let config = am.join("alertmanager.yml");
    assert_eq!(mode(&config), 0o644);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains("smtp-pw-from-env"), "{text}");
    assert!(text.contains("auth_password_file: \"/etc/alertmanager/secrets/oncall\""));
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!printed.contains("smtp-pw-from-env"), "{printed}");
}

/// Incus objects this test created, removed in reverse order even when the test fails.
struct IncusScratch {
    project: String,
    networks: Vec<String>,
    volumes: Vec<String>,
    profiles: Vec<String>,
}

impl Drop for IncusScratch {
    fn drop(&mut self) {
        let p = ["--project", self.project.as_str()];
        for name in &self.profiles {
            let _ = Command::new("incus")
                .args(["profile", "delete", name])
                .args(p)
                .output();
        }
        for v in &self.volumes {
            let _ = Command::new("incus")
                .args(["storage", "volume", "delete", "default", v])
                .args(p)
                .output();
        }
        let _ = Command::new("incus")
            .args(["project", "delete", &self.project])
            .output();
        for n in &self.networks {
            let _ = Command::new("incus")
                .args(["network", "delete", n])
                .output();
        }
    }
}

fn incus(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut child = Command::new("incus")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every profile `render::profiles` produces is accepted by the real incusd: keys, proxy devices
/// in NAT mode, host mounts, NIC addresses checked against real bridges, data volumes.
/// Runs in its own project with its own bridges (10.23x.y.0/24), all deleted afterwards.
#[test]
fn incus_accepts_every_rendered_profile() {
    if !have_tool("incus")
        || !have_path(
            Path::new("/var/lib/incus/unix.socket"),
            "the incusd socket (tests/start-services.sh)",
        )
    {
        return;
    }
    let id = std::process::id() % 200;
    let tag = format!("tr{id}");
    let mut scratch = IncusScratch {
        project: format!("t-render-{id}"),
        networks: vec![],
        volumes: vec![],
        profiles: vec![],
    };
    // Cloudflared on too, so all nine profiles are checked; TLS on for the MQTTS proxy device.
    let mut config = configs()
        .into_iter()
        .find(|(n, _)| *n == "cloudflared")
        .unwrap()
        .1;
    config.mosquitto.tls = true;
    config.incus.storage_pool = "default".into();
    for (k, (role, net)) in [
        ("p", &mut config.networks.production),
        ("m", &mut config.networks.management),
        ("d", &mut config.networks.development),
        ("t", &mut config.networks.testing),
        ("s", &mut config.networks.staging),
    ]
    .into_iter()
    .enumerate()
    {
        net.name = format!("{tag}{role}");
        net.ipv4 = format!("10.23{k}.{id}.1/24").parse().unwrap();
        net.ipv6 = Some(format!("fd00:23{k}:{id}::1/64").parse().unwrap());
    }
    config.incus.external_network = format!("{tag}e");
    for net in [&config.networks.production, &config.networks.management] {
        // Static IPv6 reservations need stateful DHCPv6 on the bridge (Incus refuses them otherwise).
        let (ok, out) = incus(
            &[
                "network",
                "create",
                &net.name,
                &format!("ipv4.address={}", net.ipv4),
                "ipv4.nat=false",
                &format!("ipv6.address={}", net.ipv6.unwrap()),
                "ipv6.nat=false",
                "ipv6.dhcp.stateful=true",
            ],
            None,
        );
        assert!(ok, "creating bridge {}: {out}", net.name);
        scratch.networks.push(net.name.clone());
    }
    let ext = config.incus.external_network.clone();
    let (ok, out) = incus(
        &[
            "network",
            "create",
            &ext,
            &format!("ipv4.address=10.238.{id}.1/24"),
            "ipv4.nat=false",
            "ipv6.address=none",
        ],
        None,
    );
    assert!(ok, "creating bridge {ext}: {out}");
    scratch.networks.push(ext);
    // Instances get their addresses from the new bridges, as the config loader would derive them.
    let names: Vec<(String, ServiceKind, bool)> = config
        .instances
        .iter()
        .map(|(n, i)| (n.clone(), i.service, i.enabled))
        .collect();
    for (name, kind, enabled) in names {
        let mut inst = default_instance(kind, &name, &config.networks, 0);
        inst.enabled = enabled;
        for nic in &mut inst.nics {
            if let (Some(a), Some(n)) = (nic.ipv4, config.networks.get(nic.network)) {
                let p = n.ipv6.unwrap().network().segments();
                nic.ipv6 = Some(Ipv6Addr::new(
                    p[0],
                    p[1],
                    p[2],
                    0,
                    0,
                    0,
                    0,
                    u16::from(a.octets()[3]),
                ));
            }
        }
        config.instances.insert(name, inst);
    }
    let (ok, out) = incus(&["project", "create", &scratch.project], None);
    assert!(ok, "{out}");
    let project = scratch.project.clone();
    let p = ["--project", project.as_str()];
    for inst in config.instances.values().filter(|i| i.enabled) {
        if let Some(v) = &inst.volume {
            let (ok, out) = incus(
                &[&["storage", "volume", "create", "default", &v.name][..], &p].concat(),
                None,
            );
            assert!(ok, "{out}");
            scratch.volumes.push(v.name.clone());
        }
    }
    let profiles = render::profiles(&standalone(&config)).unwrap();
    assert_eq!(profiles.len(), 9, "one profile per service kind");
    for spec in &profiles {
        let (ok, out) = incus(&[&["profile", "create", &spec.name][..], &p].concat(), None);
        assert!(ok, "{out}");
        scratch.profiles.push(spec.name.clone());
        // JSON is YAML: `incus profile edit` reads it from stdin.
        let body = serde_json::to_vec(&serde_json::json!({
            "description": spec.description, "config": spec.config, "devices": spec.devices,
        }))
        .unwrap();
        let (ok, out) = incus(
            &[&["profile", "edit", &spec.name][..], &p].concat(),
            Some(&body),
        );
        assert!(ok, "incus refused profile {}: {out}\n{spec:#?}", spec.name);
        let (_, shown) = incus(&[&["profile", "show", &spec.name][..], &p].concat(), None);
        let shown: serde_yaml_ng::Value = serde_yaml_ng::from_str(&shown).unwrap();
        assert_eq!(
            shown["config"]["limits.memory"].as_str(),
            Some(spec.config["limits.memory"].as_str())
        );
        assert_eq!(
            shown["devices"].as_mapping().unwrap().len(),
            spec.devices.len(),
            "{}",
            spec.name
        );
    }
    let prom = profiles.iter().find(|p| p.name == "prometheus").unwrap();
    assert!(
        prom.devices["eth0"].contains_key("ipv6.address"),
        "the IPv6 reservation was exercised"
    );
}

#[test]
fn render_command_refuses_a_foreign_directory_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let out = run(atlas().args(["render", "--out"]).arg(dir.path()));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("is not empty and was not written by `atlas-install render`"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["notes.txt"], "the directory was changed");
}

#[test]
fn render_command_replaces_its_own_previous_output() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        run(atlas().args(["render", "--out"]).arg(dir.path()))
            .status
            .success()
    );
    // A stale instance from an earlier run (listed in the marker) disappears on the next one.
    std::fs::create_dir_all(dir.path().join("old01/etc")).unwrap();
    std::fs::write(dir.path().join("old01.service.toml"), "").unwrap();
    let marker = dir.path().join(".atlas-render");
    let listed = std::fs::read_to_string(&marker).unwrap();
    assert!(listed.lines().any(|l| l == "prometheus01"), "{listed}");
    std::fs::write(&marker, format!("{listed}old01\n")).unwrap();
    let out = run(atlas().args(["render", "--out"]).arg(dir.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.path().join("old01").exists() && !dir.path().join("old01.service.toml").exists());
    assert!(
        dir.path()
            .join("prometheus01/etc/prometheus/prometheus.yml")
            .is_file()
    );
}
