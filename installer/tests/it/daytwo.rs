//! Day two on the fixture stack: the dashboards' queries return data from the live
//! Prometheus, alerts reach people, and `status` tells what fires.
//!
//! One stack is installed from the fixture images with Incus' metrics and events wired (the
//! daemon's core.https_address and logging keys are set for the test and put back by
//! `destroy` and by a guard), receivers for a webhook and an email, and short scrape and
//! grouping intervals. The webhook receiver and the SMTP sink run in a network namespace of
//! the test's own, attached to the stack's management bridge, with no default route.
//!
//! - every PromQL query of every panel, variables substituted as Grafana would, returns at
//!   least one series from the stack's Prometheus, queried inside prometheus01 through the
//!   Incus exec API (`atlas-init fetch`); the panels about alerts are checked while an alert
//!   is pending and firing; two panels may rightly be empty and say so (`noValue`);
//! - stopping node-exporter01 fires ServiceDown (the rule as shipped, `for: 2m`): the real
//!   Alertmanager delivers it to the webhook (with its bearer token) and by email (SMTP AUTH
//!   with the password from its file), `status` lists it, and none once it is resolved;
//! - a warning posted with its critical (same family and target) is inhibited, one for
//!   another target is not;
//! - LogQL parses with Grafana's own grammar (tests/logql): the Loki stand-in cannot run it.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atlas_install::engine::fetch;
use atlas_install::incus::{Client, StateAction};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::free_port;
use crate::common::{client_or_skip, have_path, have_tool, stderr, stdout, step_async};
use crate::stack::{Cleanup, Stack, caddy_status, fixtures_ready, has_tools};
// The server keys the wiring sets: unset before (else someone else's), unset again after.
use crate::wiring::SERVER_KEYS;

const SMTP_PASSWORD: &str = "smtp-pass-for-the-stack-test";
const HOOK_TOKEN: &str = "hook-token-for-the-stack-test";
/// The sink's host part on the management network.
const SINK_HOST: u8 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_alert_routes_and_status_on_the_fixture_stack() {
    let client = client_or_skip!();
    if !has_tools() || !fixtures_ready() || !have_tool("ip") || !logql_checker_ready() {
        return;
    }
    let _turn = crate::engine::STACKS.lock().await;
    let _server = crate::wiring::SERVER_LOCK.lock().await;
    let before = client.server().await.expect("server").value.config;
    let busy: Vec<&str> = SERVER_KEYS
        .iter()
        .copied()
        .filter(|k| before.get(*k).is_some_and(|v| !v.is_empty()))
        .collect();
    // Another install (the README demo, an operator's) holds Incus' one logging target and
    // HTTPS address: this stack then runs unwired, and the panels fed by the wiring (Incus'
    // metrics, Loki's ingestion of Incus events) are left out of the checks, said once.
    let wired = busy.is_empty();
    if !wired {
        eprintln!(
            "server keys {busy:?} are set on the shared daemon: this run leaves Incus' metrics and events out (their panels are not checked)"
        );
    }
    let stack = Stack::new(client.clone(), 'd').await;
    let mgmt = stack
        .names
        .networks
        .iter()
        .find(|(role, _, _)| *role == "management")
        .expect("a management network")
        .2
        .network()
        .octets();
    let sink_ip = Ipv4Addr::new(mgmt[0], mgmt[1], mgmt[2], SINK_HOST);
    write_secret(&stack.dir.path().join("smtp-password"), SMTP_PASSWORD);
    write_secret(&stack.dir.path().join("hook-token"), HOOK_TOKEN);
    stack.config_with(
        "\"127.0.0.1/32\"",
        &format!(
            r#"
[prometheus]
scrape_interval = "5s"
evaluation_interval = "5s"

[integrations]
incus_metrics = {wired}
incus_loki = {wired}
incus_https_port = {https_port}

[alertmanager]
group_wait = "5s"
group_interval = "10s"
repeat_interval = "1h"

[alertmanager.receivers.hook]
kind = "webhook"
url = "http://{sink_ip}:8080/alerts"
bearer_token_file = "hook-token"

[alertmanager.receivers.mail]
kind = "email"
smarthost = "{sink_ip}:2525"
from = "atlas@stack.test"
to = ["oncall@stack.test"]
auth_username = "atlas"
auth_password_file = "smtp-password"
require_tls = false

[alertmanager.routes.critical]
receivers = ["hook", "mail"]
repeat_interval = "1h"

[alertmanager.routes.warning]
receivers = ["hook"]
"#,
            https_port = free_port(),
        ),
    );
    let mut keys = ServerKeys(client.clone(), Vec::new(), before.clone());
    let _cleanup = Cleanup(&stack);

    // The install, then steps in order over it: a failure names its step.
    step_async("install", async {
        let o = stack.install();
        // The certificate the wiring trusted, recorded in the project (read even if install
        // failed, so the guard can remove it).
        if let Ok(p) = client.get_project(&stack.project).await {
            keys.1 = p
                .value
                .config
                .get(atlas_install::state::keys::METRICS_CERTS)
                .map(|v| v.split(',').map(String::from).collect())
                .unwrap_or_default();
        }
        assert!(o.status.success(), "install failed:\n{}", stderr(&o));
        assert!(
            !wired || !keys.1.is_empty(),
            "the metrics certificate is recorded"
        );
    })
    .await;
    let sink = Sink::start(&stack.nets[4], sink_ip, 24);
    let cfg = load_config(&stack);
    let pc = stack.project();
    let prom = Prom {
        client: pc.clone(),
        ip: stack.address("prometheus01", "eth0").await,
    };
    let am_ip = stack.address("alertmanager01", "eth0").await;

    let boards = atlas_install::render::dashboards::dashboards(
        &atlas_install::deployment::Deployment::standalone(&cfg),
    );
    let queries: Vec<PanelQuery> = promql_queries(&boards)
        .into_iter()
        .filter(|q| wired || !needs_wiring(&q.expr))
        .collect();
    let jobs: Vec<&'static str> = [
        "prometheus",
        "node-exporter",
        "alertmanager",
        "caddy",
        "incus",
        "grafana",
        "loki",
        "step-ca",
    ]
    .into_iter()
    .filter(|j| wired || *j != "incus")
    .collect();
    let d = Day2 {
        stack: &stack,
        pc,
        prom,
        jobs,
        wired,
        cfg,
        boards,
        queries,
    };
    step_async("targets up", every_target_scraped(&d)).await;
    step_async("status before", status_names_the_routes(&d)).await;
    step_async("ServiceDown fires", service_down_fires(&d)).await;
    step_async("notifications delivered", notifications_delivered(&sink)).await;
    step_async("ServiceDown resolves", service_down_resolves(&d, &sink)).await;
    step_async("panels have data", panels_have_data(&d)).await;
    step_async("inhibition", inhibition(&stack, am_ip, &sink)).await;
    step_async("logql", async { logs_dashboard_parses(&d) }).await;
    step_async("grafana's dashboards", grafana_has_the_dashboards(&d)).await;
    drop(sink);
    step_async(
        "destroy",
        destroy_restores_the_server(&client, &before, &keys.1, &stack),
    )
    .await;
}

/// What the steps of the day-two scenario share: the installed stack and what was read of it.
struct Day2<'a> {
    stack: &'a Stack,
    pc: Client,
    prom: Prom,
    /// The jobs every scrape must have up (Incus' own only when wired).
    jobs: Vec<&'static str>,
    /// Whether the shared daemon's logging and metrics are this stack's (see the test).
    wired: bool,
    cfg: atlas_install::config::Config,
    boards: Vec<Value>,
    queries: Vec<PanelQuery>,
}

/// Every target is scraped, Incus' own /1.0/metrics included.
async fn every_target_scraped(d: &Day2<'_>) {
    let Day2 {
        stack, prom, jobs, ..
    } = d;
    prom.wait_up(jobs).await;
    // A request through Caddy, as an operator opening Grafana makes.
    assert_eq!(caddy_status(stack.https_port).await, 200);
}

/// `status` before: where notifications go, and no ServiceDown.
async fn status_names_the_routes(d: &Day2<'_>) {
    let Day2 { stack, .. } = d;
    let s = status_json(stack);
    let routes = &s["alerts"]["routes"];
    assert_eq!(routes[0]["severity"], "critical", "{routes}");
    assert_eq!(
        routes[0]["receivers"],
        json!(["hook (webhook)", "mail (email)"])
    );
    assert_eq!(routes[0]["repeat_interval"], "1h");
    assert_eq!(routes[1]["receivers"], json!(["hook (webhook)"]));
    assert!(
        s["alerts"]["alerts"].is_array(),
        "alerts read: {}",
        s["alerts"]
    );
    assert!(service_down(&s).is_none(), "{}", s["alerts"]);
}

/// ServiceDown, the real way: node-exporter01 stops; pending first, then firing.
async fn service_down_fires(d: &Day2<'_>) {
    let Day2 {
        stack,
        pc,
        prom,
        queries,
        ..
    } = d;
    crate::engine::stop(pc, "node-exporter01").await;
    let t0 = Instant::now();
    prom.wait_for(
        r#"ALERTS{alertname="ServiceDown", alertstate="pending", job="node-exporter"}"#,
        Duration::from_secs(90),
    )
    .await;
    check_queries(prom, queries, Phase::Pending).await;
    let firing = wait_status(stack, Duration::from_secs(240), |s| {
        service_down(s).is_some_and(|a| a["state"] == "active")
    })
    .await;
    eprintln!(
        "ServiceDown firing in Alertmanager after {:?}",
        t0.elapsed()
    );
    let alert = service_down(&firing).unwrap();
    assert_eq!(alert["severity"], "critical");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("node-exporter01.incus:9100 is down"),
        "{alert}"
    );
    assert!(firing["alerts"]["firing"].as_u64().unwrap() >= 1);
    let human = stack.atlas(&["status"]);
    let text = stdout(&human);
    assert!(
        text.contains("firing: ") && text.contains("ServiceDown on node-exporter01.incus:9100"),
        "{text}"
    );
    assert!(
        text.contains(
            "Notifications: critical -> hook (webhook), mail (email) (repeated every 1h)"
        ),
        "{text}"
    );
    check_queries(prom, queries, Phase::Firing).await;
}

/// Delivered: the webhook with its bearer token, the email after SMTP AUTH.
async fn notifications_delivered(sink: &Sink) {
    let hook = sink
        .wait_webhook(Duration::from_secs(60), |h| {
            h.body["status"] == "firing" && has_alert(&h.body, "ServiceDown")
        })
        .await;
    assert_eq!(
        hook.authorization.as_deref(),
        Some(format!("Bearer {HOOK_TOKEN}").as_str())
    );
    assert_eq!(hook.body["receiver"], "hook");
    let mail = sink
        .wait_mail(Duration::from_secs(60), |m| m.data.contains("ServiceDown"))
        .await;
    assert_eq!(mail.auth, Some(format!("atlas:{SMTP_PASSWORD}")));
    assert_eq!(mail.rcpt, ["<oncall@stack.test>"]);
    assert!(sink.refused_logins() == 0, "a login was refused");
}

/// Resolved: node-exporter01 back; status lists no ServiceDown, the webhook hears it.
async fn service_down_resolves(d: &Day2<'_>, sink: &Sink) {
    let Day2 { stack, pc, .. } = d;
    pc.set_instance_state("node-exporter01", StateAction::Start, 30, false)
        .await
        .expect("start node-exporter01");
    wait_status(stack, Duration::from_secs(120), |s| {
        s["alerts"]["alerts"].is_array() && service_down(s).is_none()
    })
    .await;
    sink.wait_webhook(Duration::from_secs(60), |h| {
        h.body["status"] == "resolved" && has_alert(&h.body, "ServiceDown")
    })
    .await;
    let text = stdout(&stack.atlas(&["status"]));
    assert!(!text.contains("ServiceDown on"), "{text}");
}

/// Every other panel query returns data (node-exporter scraped again; Loki has taken
/// Incus' lifecycle events of the stop and start).
async fn panels_have_data(d: &Day2<'_>) {
    let Day2 {
        prom,
        jobs,
        wired,
        queries,
        ..
    } = d;
    prom.wait_up(jobs).await;
    // rate() needs two samples of the restarted exporter.
    tokio::time::sleep(Duration::from_secs(15)).await;
    if *wired {
        prom.wait_for(
            "loki_distributor_lines_received_total",
            Duration::from_secs(60),
        )
        .await;
    }
    check_queries(prom, queries, Phase::Healthy).await;
}

/// LogQL: Grafana's grammar accepts every query of the Logs dashboard. An unwired run
/// has no Logs dashboard; parsing needs no Loki, so it checks the one a wired stack gets.
fn logs_dashboard_parses(d: &Day2<'_>) {
    let Day2 {
        wired, cfg, boards, ..
    } = d;
    if *wired {
        check_logql(boards);
    } else {
        let mut as_wired = cfg.clone();
        as_wired.integrations.incus_loki = true;
        check_logql(&atlas_install::render::dashboards::dashboards(
            &atlas_install::deployment::Deployment::standalone(&as_wired),
        ));
    }
}

/// What Grafana finds in its container: the provider and the dashboards it points at.
async fn grafana_has_the_dashboards(d: &Day2<'_>) {
    let Day2 { pc, boards, .. } = d;
    let provider = pc
        .pull_file("grafana01", atlas_install::render::dashboards::PROVIDER)
        .await
        .expect("provider in grafana01");
    assert!(String::from_utf8_lossy(&provider).contains("/etc/grafana/dashboards/atlas"));
    for b in boards {
        let path = format!(
            "{}/{}.json",
            atlas_install::render::dashboards::DIR,
            b["uid"].as_str().unwrap()
        );
        let pushed: Value =
            serde_json::from_slice(&pc.pull_file("grafana01", &path).await.expect(&path))
                .expect("dashboard JSON");
        assert_eq!(&pushed, b, "{path}");
    }
}

/// destroy leaves the server as it was: no wiring key set, our certificate gone.
async fn destroy_restores_the_server(
    client: &Client,
    before: &BTreeMap<String, String>,
    certs: &[String],
    stack: &Stack,
) {
    let o = stack.atlas(&["destroy", "--delete-volumes", "--yes"]);
    assert!(o.status.success(), "destroy: {}", stderr(&o));
    let after = client.server().await.expect("server").value.config;
    for k in SERVER_KEYS {
        assert_eq!(after.get(*k), before.get(*k), "{k} is not as it was");
    }
    let trusted = client.certificates().await.expect("certificates");
    assert!(
        !trusted.iter().any(|t| certs.contains(&t.fingerprint)),
        "the metrics certificate is still trusted"
    );
}

/// A panel fed only by the server wiring: Incus' own metrics, or Loki's counters of the
/// Incus events it took in.
fn needs_wiring(expr: &str) -> bool {
    expr.contains("incus_") || expr.contains("loki_distributor_")
}

fn write_secret(path: &Path, value: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, value).expect("secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

fn load_config(stack: &Stack) -> atlas_install::config::Config {
    let opts = atlas_install::config::LoadOptions {
        file: Some(stack.dir.path().join("atlas.toml")),
        cwd: stack.dir.path().to_path_buf(),
        ..Default::default()
    };
    atlas_install::config::load(&opts).expect("config").config
}

fn status_json(stack: &Stack) -> Value {
    let o = stack.atlas(&["--json", "status"]);
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}\n{}\n{}", stdout(&o), stderr(&o)))
}

fn service_down(s: &Value) -> Option<&Value> {
    s["alerts"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == "ServiceDown" && a["labels"]["job"] == "node-exporter")
}

async fn wait_status(stack: &Stack, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = status_json(stack);
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < within,
            "status did not get there in {within:?}: {}",
            s["alerts"]
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

fn has_alert(body: &Value, name: &str) -> bool {
    body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["labels"]["alertname"] == name)
}

/// Puts the server keys the wiring sets back to what they were before the test (unset, or
/// another install's values, which an unwired run never touches), and removes the metrics
/// certificate it trusted, in case `destroy` could not.
struct ServerKeys(Client, Vec<String>, BTreeMap<String, String>);

impl Drop for ServerKeys {
    fn drop(&mut self) {
        let c = self.0.clone();
        let certs = std::mem::take(&mut self.1);
        let before = std::mem::take(&mut self.2);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let Ok(now) = c.server().await else { return };
                let was = |k: &str| before.get(k).cloned().unwrap_or_default();
                let set: BTreeMap<String, String> = SERVER_KEYS
                    .iter()
                    .filter(|k| now.value.config.get(**k).cloned().unwrap_or_default() != was(k))
                    .map(|k| (k.to_string(), was(k)))
                    .collect();
                if !set.is_empty() {
                    eprintln!("cleanup: putting server keys {:?} back", set.keys());
                    let _ = c.patch_server_config(&set, None).await;
                }
                let trusted = c.certificates().await.unwrap_or_default();
                for fp in certs
                    .iter()
                    .filter(|fp| trusted.iter().any(|t| t.fingerprint == **fp))
                {
                    eprintln!("cleanup: removing the metrics certificate {fp}");
                    let _ = c.delete_certificate(fp).await;
                }
            });
        })
        .join();
    }
}

/// The stack's Prometheus, asked from inside prometheus01.
struct Prom {
    client: Client,
    ip: Ipv4Addr,
}

impl Prom {
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("http://{}:9090/api/v1/query", self.ip),
            &[("query", expr)],
        )
        .map_err(|e| e.to_string())?;
        let body = fetch::get(&self.client, "prometheus01", url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if v["status"] != "success" {
            return Err(v.to_string());
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    async fn wait_for(&self, expr: &str, within: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let last = self.query(expr).await;
            if let Ok(r) = &last {
                if !r.is_empty() {
                    return r.clone();
                }
            }
            assert!(
                start.elapsed() < within,
                "{expr}: nothing within {within:?} ({last:?})"
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    async fn wait_up(&self, jobs: &[&str]) {
        let start = Instant::now();
        loop {
            let up = self.query("up == 1").await.unwrap_or_default();
            let missing: Vec<&&str> = jobs
                .iter()
                .filter(|j| !up.iter().any(|r| r["metric"]["job"] == **j))
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "not up: {missing:?}; {:?}",
                self.query("up").await
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    /// `label_values(selector, label)`: the values, as Grafana's variable query finds them.
    async fn label_values(&self, selector: &str, label: &str) -> Vec<String> {
        let r = self
            .query(&format!("group by ({label}) ({selector})"))
            .await
            .unwrap_or_else(|e| panic!("label_values({selector}, {label}): {e}"));
        let mut v: Vec<String> = r
            .iter()
            .filter_map(|s| s["metric"][label].as_str().map(String::from))
            .filter(|s| !s.is_empty())
            .collect();
        v.sort();
        v
    }
}

/// When a query is checked: panels about alerts need one pending, or firing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Healthy,
    Pending,
    Firing,
}

fn phase_of(expr: &str) -> Phase {
    match (
        expr.contains("ALERTS"),
        expr.contains("alertstate=\"pending\""),
    ) {
        (true, true) => Phase::Pending,
        (true, false) => Phase::Firing,
        _ => Phase::Healthy,
    }
}

/// A panel query: where it is, its text, its dashboard's variables, and whether the panel may
/// rightly be empty (`noValue`).
struct PanelQuery {
    place: String,
    expr: String,
    vars: Vec<Value>,
    may_be_empty: bool,
}

fn promql_queries(boards: &[Value]) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for b in boards {
        let vars = b["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for p in b["panels"].as_array().unwrap() {
            if p["datasource"]["type"] != "prometheus" {
                continue;
            }
            for t in p["targets"].as_array().unwrap() {
                out.push(PanelQuery {
                    place: format!("{} / {} / {}", b["uid"], p["title"], t["refId"]),
                    expr: t["expr"].as_str().unwrap().to_string(),
                    vars: vars.clone(),
                    may_be_empty: p["fieldConfig"]["defaults"]
                        .get(atlas_install::render::dashboards::NO_VALUE_KEY)
                        .is_some(),
                });
            }
        }
    }
    // Every dashboard but the logs one draws from Prometheus: each must have given queries
    // (a board whose panels lost their datasource would silently check nothing).
    for b in boards.iter().filter(|b| b["uid"] != "atlas-logs") {
        let place = format!("{} /", b["uid"]);
        assert!(
            out.iter().any(|q| q.place.starts_with(&place)),
            "dashboard {} has no Prometheus query",
            b["uid"]
        );
    }
    out
}

/// Runs the queries of `phase` with the variables as a dashboard opens: their current value
/// ("All" is the regex `.*`, which also matches series without the label).
async fn check_queries(prom: &Prom, queries: &[PanelQuery], phase: Phase) {
    let mut empty = Vec::new();
    let mut checked = 0;
    for q in queries.iter().filter(|q| phase_of(&q.expr) == phase) {
        let expr = substitute(prom, &q.expr, &q.vars).await;
        let r = prom
            .query(&expr)
            .await
            .unwrap_or_else(|e| panic!("{}: {expr}: {e}", q.place));
        checked += 1;
        if r.is_empty() {
            empty.push((q.place.clone(), expr, q.may_be_empty));
        }
    }
    eprintln!("{phase:?}: {checked} panel queries, {} empty", empty.len());
    assert!(checked > 0, "no query for {phase:?}");
    // Only the two panels about things that may not have happened yet (a rate-limited
    // request, a certificate signed) may be empty, and only where they say what to show.
    let unexpected: Vec<&(String, String, bool)> = empty
        .iter()
        .filter(|(place, _, allowed)| {
            !(*allowed
                && phase == Phase::Healthy
                && (place.contains("Rate-limited requests")
                    || place.contains("Certificates signed")))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "queries without data: {unexpected:#?}"
    );
}

async fn substitute(prom: &Prom, expr: &str, vars: &[Value]) -> String {
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for v in vars {
        let name = v["name"].as_str().unwrap().to_string();
        let value = match v["current"]["value"][0].as_str().unwrap_or("$__all") {
            "$__all" => v["allValue"].as_str().unwrap().to_string(),
            current => regex_escape(current),
        };
        // The variable's own query finds values (a single server has no `member`).
        let def = apply(v["definition"].as_str().unwrap(), &values);
        let (selector, label) = parse_label_values(&def);
        let found = prom.label_values(&selector, &label).await;
        assert!(
            !found.is_empty() || label == "member",
            "variable {name}: {def} finds nothing"
        );
        if let Some(c) = v["current"]["value"][0].as_str().filter(|c| *c != "$__all") {
            assert!(found.iter().any(|f| f == c), "{name}: {c} not in {found:?}");
        }
        values.insert(name, value);
    }
    values.insert("__rate_interval".into(), "1m".into());
    values.insert("__interval".into(), "1m".into());
    values.insert("__range".into(), "1h".into());
    apply(expr, &values)
}

fn apply(expr: &str, values: &BTreeMap<String, String>) -> String {
    // Longest names first, so `$__range` is not taken for `$__rate_interval`'s prefix.
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_string();
    for n in names {
        out = out.replace(&format!("${n}"), &values[n]);
    }
    out
}

fn parse_label_values(def: &str) -> (String, String) {
    let inner = def
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {def}"));
    let (selector, label) = inner.rsplit_once(',').expect("selector, label");
    (selector.trim().to_string(), label.trim().to_string())
}

/// What Grafana's Prometheus datasource does to a variable value inside `=~"..."`.
fn regex_escape(v: &str) -> String {
    let mut out = String::new();
    for c in v.chars() {
        if "\\$^*{}[]'+?.()|".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

async fn inhibition(stack: &Stack, am_ip: Ipv4Addr, sink: &Sink) {
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(include_str!("../../../assets/prometheus/alerts.yml")).unwrap();
    let rule_labels = |name: &str| -> BTreeMap<String, String> {
        rules["groups"]
            .as_sequence()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_sequence().unwrap())
            .find(|r| r["alert"] == name)
            .and_then(|r| r["labels"].as_mapping())
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
            .collect()
    };
    let tag = std::process::id();
    let alert = |name: &str, container: &str| {
        let mut labels = rule_labels(name);
        labels.insert("alertname".into(), name.into());
        labels.insert("job".into(), "incus".into());
        labels.insert("instance".into(), "10.0.0.1:8443".into());
        labels.insert("project".into(), stack.project.clone());
        labels.insert("name".into(), container.into());
        labels.insert("type".into(), "container".into());
        json!({
            "labels": labels,
            "annotations": {"summary": format!("{name} posted by the test")},
            "endsAt": time_in(Duration::from_secs(600)),
        })
    };
    let muted = format!("inhibit-{tag}");
    let other = format!("other-{tag}");
    let body = json!([
        alert("CriticalMemoryUsage", &muted),
        alert("HighMemoryUsage", &muted),
        alert("HighMemoryUsage", &other),
    ]);
    // Posted from the host to the bridge address, as Prometheus posts from its container.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = http
        .post(format!("http://{am_ip}:9093/api/v2/alerts"))
        .json(&body)
        .send()
        .await
        .expect("post alerts");
    assert!(r.status().is_success(), "{}", r.status());
    let s = wait_status(stack, Duration::from_secs(60), |s| {
        let find = |container: &str| {
            s["alerts"]["alerts"].as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["name"] == "HighMemoryUsage" && x["labels"]["name"] == container)
                    .cloned()
            })
        };
        find(&muted).is_some_and(|a| a["state"] == "suppressed")
            && find(&other).is_some_and(|a| a["state"] == "active")
    })
    .await;
    let muted_alert = s["alerts"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "HighMemoryUsage" && x["labels"]["name"] == muted.as_str())
        .unwrap()
        .clone();
    assert!(
        !muted_alert["inhibited_by"].as_array().unwrap().is_empty(),
        "{muted_alert}"
    );
    let text = stdout(&stack.atlas(&["status"]));
    assert!(
        text.contains(&format!(
            "HighMemoryUsage on {muted} (inhibited by a critical alert)"
        )),
        "{text}"
    );
    // The webhook gets the critical and the other warning; never the muted one.
    sink.wait_webhook(Duration::from_secs(60), |h| {
        has_container(&h.body, "CriticalMemoryUsage", &muted)
    })
    .await;
    sink.wait_webhook(Duration::from_secs(60), |h| {
        has_container(&h.body, "HighMemoryUsage", &other)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(
        !sink
            .webhooks()
            .iter()
            .any(|h| has_container(&h.body, "HighMemoryUsage", &muted)),
        "the inhibited warning was delivered"
    );
}

fn has_container(body: &Value, alert: &str, container: &str) -> bool {
    body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["labels"]["alertname"] == alert && a["labels"]["name"] == container)
}

/// RFC 3339 (UTC) of now + `d`, for an alert's `endsAt`.
fn time_in(d: Duration) -> String {
    let secs = (std::time::SystemTime::now() + d)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    atlas_install::clock::rfc3339(secs)
}

// ---- LogQL ----

fn logql_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/logql")
}

fn logql_checker_ready() -> bool {
    have_tool("node")
        && have_path(
            &logql_dir().join("node_modules/@grafana/lezer-logql"),
            "Grafana's LogQL grammar (tests/setup-host.sh runs npm ci in tests/logql)",
        )
}

/// Every LogQL query of every panel and variable, variables substituted, parsed by
/// `@grafana/lezer-logql` (what Grafana's Loki editor validates with).
fn check_logql(boards: &[Value]) {
    let mut queries = Vec::new();
    for b in boards {
        for p in b["panels"].as_array().unwrap() {
            if p["datasource"]["type"] == "loki" {
                for t in p["targets"].as_array().unwrap() {
                    queries.push(t["expr"].as_str().unwrap().to_string());
                }
            }
        }
        for v in b["templating"]["list"].as_array().unwrap() {
            if v["datasource"]["type"] == "loki" {
                let (selector, _) = parse_label_values(v["definition"].as_str().unwrap());
                queries.push(selector);
            }
        }
    }
    assert!(queries.len() >= 4, "{queries:?}");
    let values: BTreeMap<String, String> = [
        ("member", ".*"),
        ("instance", ".*"),
        ("__interval", "1m"),
        ("__range", "1h"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let substituted: Vec<String> = queries.iter().map(|q| apply(q, &values)).collect();
    let results = run_logql_checker(&substituted);
    let bad: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    assert!(bad.is_empty(), "LogQL syntax errors: {bad:#?}");
    // The checker itself tells a bad query from a good one.
    let control = run_logql_checker(&[r#"sum(count_over_time({app="incus"}[1m])"#.to_string()]);
    assert_eq!(control[0]["ok"], false, "{control:?}");
}

fn run_logql_checker(queries: &[String]) -> Vec<Value> {
    let mut child = Command::new("node")
        .arg("check.mjs")
        .current_dir(logql_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(queries).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("node check.mjs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("checker output")
}

// ---- The sink: a webhook receiver and an SMTP server in a network namespace ----

#[derive(Debug, Clone)]
struct Webhook {
    authorization: Option<String>,
    body: Value,
}

#[derive(Debug, Clone, Default)]
struct Mail {
    /// `user:password` of the AUTH LOGIN exchange.
    auth: Option<String>,
    rcpt: Vec<String>,
    data: String,
}

#[derive(Default)]
struct Seen {
    webhooks: Vec<Webhook>,
    mails: Vec<Mail>,
    refused_logins: usize,
}

/// A network namespace with one veth on the stack's bridge and no default route; its
/// listeners are bound inside it (the thread that binds them enters it with setns).
struct Sink {
    ns: String,
    host_if: String,
    seen: Arc<Mutex<Seen>>,
}

impl Sink {
    fn start(bridge: &str, ip: Ipv4Addr, prefix: u8) -> Sink {
        let tag = std::process::id() % 100_000;
        let ns = format!("t-d2-{tag}");
        let host_if = format!("vd2h{tag}");
        let ns_if = format!("vd2n{tag}");
        let sink = Sink {
            ns: ns.clone(),
            host_if: host_if.clone(),
            seen: Arc::new(Mutex::new(Seen::default())),
        };
        ip_cmd(&["netns", "add", &ns]);
        ip_cmd(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns,
        ]);
        ip_cmd(&["link", "set", &host_if, "master", bridge, "up"]);
        ip_cmd(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip}/{prefix}"),
            "dev",
            &ns_if,
        ]);
        ip_cmd(&["-n", &ns, "link", "set", &ns_if, "up"]);
        ip_cmd(&["-n", &ns, "link", "set", "lo", "up"]);
        let routes = Command::new("ip")
            .args(["-n", &ns, "route", "show", "default"])
            .output()
            .expect("ip route");
        assert!(
            String::from_utf8_lossy(&routes.stdout).trim().is_empty(),
            "the sink's namespace has no default route"
        );
        let (webhook, smtp) = bind_in_namespace(&ns, ip);
        let seen = sink.seen.clone();
        std::thread::spawn(move || serve(webhook, seen, webhook_conn));
        let seen = sink.seen.clone();
        std::thread::spawn(move || serve(smtp, seen, smtp_conn));
        sink
    }

    fn webhooks(&self) -> Vec<Webhook> {
        self.seen.lock().unwrap().webhooks.clone()
    }

    fn refused_logins(&self) -> usize {
        self.seen.lock().unwrap().refused_logins
    }

    async fn wait_webhook(&self, within: Duration, f: impl Fn(&Webhook) -> bool) -> Webhook {
        let start = Instant::now();
        loop {
            if let Some(h) = self.webhooks().into_iter().find(|h| f(h)) {
                return h;
            }
            assert!(
                start.elapsed() < within,
                "no such webhook within {within:?}; got {:#?}",
                self.webhooks()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn wait_mail(&self, within: Duration, f: impl Fn(&Mail) -> bool) -> Mail {
        let start = Instant::now();
        loop {
            let mails = self.seen.lock().unwrap().mails.clone();
            if let Some(m) = mails.iter().find(|m| f(m)) {
                return m.clone();
            }
            assert!(
                start.elapsed() < within,
                "no such mail within {within:?}; got {mails:#?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

fn ip_cmd(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Binds the webhook (8080) and SMTP (2525) listeners inside `ns`: a thread enters the
/// namespace, binds, and ends; the sockets stay in it.
fn bind_in_namespace(ns: &str, ip: Ipv4Addr) -> (TcpListener, TcpListener) {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("namespace file");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&f),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the sink's namespace");
        let bind = |port| TcpListener::bind(SocketAddr::from((ip, port))).expect("bind in ns");
        (bind(8080), bind(2525))
    })
    .join()
    .expect("bind thread")
}

fn serve(
    l: TcpListener,
    seen: Arc<Mutex<Seen>>,
    conn: fn(TcpStream, &Mutex<Seen>) -> std::io::Result<()>,
) {
    for s in l.incoming().flatten() {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
            if let Err(e) = conn(s, &seen) {
                eprintln!("sink: {e}");
            }
        });
    }
}

/// One HTTP/1.1 request per connection; the body is the Alertmanager webhook JSON.
fn webhook_conn(s: TcpStream, seen: &Mutex<Seen>) -> std::io::Result<()> {
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut len = 0usize;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "authorization" => authorization = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().unwrap().webhooks.push(Webhook {
        authorization,
        body,
    });
    let mut s = s;
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

/// Enough SMTP for Alertmanager: EHLO offering AUTH LOGIN (no STARTTLS), the login checked
/// against the receiver's password, MAIL, RCPT, DATA, QUIT.
fn smtp_conn(s: TcpStream, seen: &Mutex<Seen>) -> std::io::Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let mut mail = Mail::default();
    let say = |w: &mut TcpStream, text: &str| w.write_all(format!("{text}\r\n").as_bytes());
    say(&mut w, "220 sink.stack.test ESMTP")?;
    let read = |r: &mut BufReader<TcpStream>| -> std::io::Result<String> {
        let mut l = String::new();
        r.read_line(&mut l)?;
        Ok(l.trim_end().to_string())
    };
    loop {
        let line = read(&mut r)?;
        if line.is_empty() {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") {
            say(&mut w, "250-sink.stack.test")?;
            say(&mut w, "250-AUTH LOGIN")?;
            say(&mut w, "250 8BITMIME")?;
        } else if upper.starts_with("HELO") {
            say(&mut w, "250 sink.stack.test")?;
        } else if upper == "AUTH LOGIN" {
            say(&mut w, &format!("334 {}", b64.encode("Username:")))?;
            let user = String::from_utf8(b64.decode(read(&mut r)?).unwrap_or_default())
                .unwrap_or_default();
            say(&mut w, &format!("334 {}", b64.encode("Password:")))?;
            let password = String::from_utf8(b64.decode(read(&mut r)?).unwrap_or_default())
                .unwrap_or_default();
            if user == "atlas" && password == SMTP_PASSWORD {
                mail.auth = Some(format!("{user}:{password}"));
                say(&mut w, "235 2.7.0 Authentication successful")?;
            } else {
                seen.lock().unwrap().refused_logins += 1;
                say(&mut w, "535 5.7.8 Authentication credentials invalid")?;
            }
        } else if upper.starts_with("MAIL FROM:") {
            if mail.auth.is_none() {
                say(&mut w, "530 5.7.0 Authentication required")?;
            } else {
                say(&mut w, "250 OK")?;
            }
        } else if upper.starts_with("RCPT TO:") {
            mail.rcpt.push(line[8..].trim().to_string());
            say(&mut w, "250 OK")?;
        } else if upper == "DATA" {
            say(&mut w, "354 End data with <CR><LF>.<CR><LF>")?;
            loop {
                let l = read(&mut r)?;
                if l == "." {
                    break;
                }
                mail.data.push_str(&l);
                mail.data.push('\n');
            }
            seen.lock().unwrap().mails.push(mail.clone());
            say(&mut w, "250 OK queued")?;
        } else if upper == "QUIT" {
            say(&mut w, "221 Bye")?;
            return Ok(());
        } else if upper == "RSET" || upper == "NOOP" {
            say(&mut w, "250 OK")?;
        } else {
            say(&mut w, "502 5.5.2 Command not recognized")?;
        }
    }
}
