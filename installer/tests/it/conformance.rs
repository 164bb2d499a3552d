//! Conformance: what runs is what was configured. One fixture stack (prometheus,
//! alertmanager, node-exporter, caddy and mosquitto are the real Debian binaries, step-ca the
//! real one built from Debian's packages; grafana, loki and cloudflared the strict stand-ins),
//! installed with non-default settings and cloudflared enabled, then each claim checked
//! against the running service, never against a rendered file: the process's own argv and
//! environment (read from `/proc` on the host, under the container's PID 1 as the Incus API
//! names it), the services' APIs (read from inside the stack by `incus exec` of atlas-init's
//! probe mode: nothing from the host's default route), the bytes Caddy keeps, and what the
//! installer prints.
//!
//! Each claim is a function of its own; all run, and a failure names every claim that did
//! not hold. Claims that another piece of work completes are listed in [`PENDING`] and say
//! why when they are skipped.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use atlas_install::incus::{Client, FileMeta, OptionalExt as _, StateAction};
use serde_json::Value;

use atlas_test_support::step::{self, step};

use crate::common::{stderr, stdout};
use crate::stack::{Cleanup, REGISTRY, Stack, fixture_stack};

/// Scrape jobs whose `up` depends on work not done here, and why. Remove an entry when that
/// work lands: the claim then covers it.
const PENDING: &[(&str, &str)] = &[];

/// The tunnel token the stack's config gives cloudflared (a fixture token that connects to
/// the fixture edge; not a real credential).
const TUNNEL_TOKEN: &str = crate::stack::FIXTURE_TUNNEL_TOKEN;
const RETENTION_TIME: &str = "9d";
const RETENTION_SIZE: &str = "3GB";
/// How Prometheus shows it back: its size units are powers of 1024.
const RETENTION_SIZE_SHOWN: &str = "3GiB";

/// Collects claim outcomes; panics at the end naming each claim that failed.
#[derive(Default)]
struct Claims {
    failed: Vec<String>,
    held: Vec<String>,
}

impl Claims {
    /// Checks one claim; a claim that panics fails under its own name, like one that errs.
    async fn check<F: Future<Output = Result<(), String>>>(&mut self, claim: &str, f: F) {
        use futures_util::FutureExt as _;
        let outcome = std::panic::AssertUnwindSafe(f)
            .catch_unwind()
            .await
            .unwrap_or_else(|p| Err(format!("panicked: {}", step::message(p.as_ref()))));
        match outcome {
            Ok(()) => {
                eprintln!("claim holds: {claim}");
                self.held.push(claim.to_string());
            }
            Err(why) => {
                eprintln!("CLAIM FAILED: {claim}: {why}");
                self.failed.push(format!("{claim}: {why}"));
            }
        }
    }

    fn finish(self) {
        assert!(
            self.failed.is_empty(),
            "{} of {} claims failed:\n{}",
            self.failed.len(),
            self.failed.len() + self.held.len(),
            self.failed.join("\n")
        );
    }
}

/// The stack's config (cloudflared enabled with a token file of the fixture token) with the
/// settings these claims check.
fn configure(stack: &Stack) {
    stack.config_with(
        "\"127.0.0.1/32\"",
        &format!(
            "[prometheus]\nretention_time = \"{RETENTION_TIME}\"\nretention_size = \"{RETENTION_SIZE}\"\n"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_stack_does_what_it_was_configured_to_do() {
    let Some((_turn, stack)) = fixture_stack('c').await else {
        return;
    };
    configure(&stack);
    let _cleanup = Cleanup(&stack);
    step("install", || {
        let o = stack.install();
        assert!(o.status.success(), "install failed:\n{}", stderr(&o));
    });

    // Each claim is checked and named on its own; all of them are reported at the end.
    let mut claims = Claims::default();
    claims
        .check("a second install writes nothing", second_install(&stack))
        .await;
    claims
        .check(
            "every service runs the command line `render --out` shows",
            argv_is_rendered(&stack),
        )
        .await;
    claims
        .check(
            "the rendered environment reaches the service through its spec, out of the instance config",
            environment_in_spec(&stack),
        )
        .await;
    claims
        .check(
            "Prometheus keeps data for the configured time and size",
            prometheus_retention(&stack),
        )
        .await;
    claims
        .check("every Prometheus scrape target is up", targets_up(&stack))
        .await;
    claims
        .check(
            "cloudflared has its token from the pushed file, and nowhere visible",
            cloudflared_has_token(&stack),
        )
        .await;
    claims
        .check(
            "a failed health gate prints the console log without stored secrets",
            health_error_is_redacted(&stack),
        )
        .await;
    claims
        .check(
            "Caddy's internal root survives upgrade and rollback byte for byte",
            caddy_root_survives(&stack),
        )
        .await;
    claims
        .check(
            "cloudflared refuses to start without its token",
            cloudflared_needs_token(&stack),
        )
        .await;
    claims.finish();
}

async fn second_install(stack: &Stack) -> Result<(), String> {
    let o = stack.install();
    let log = stderr(&o);
    if !o.status.success() {
        return Err(format!("the re-run failed: {log}"));
    }
    if !log.contains("No changes") || !log.contains("(0 writing API calls)") {
        return Err(format!("the re-run wrote: {log}"));
    }
    Ok(())
}

/// `command = [...]` of every `<instance>.service.toml` that `render --out` wrote.
fn rendered_commands(stack: &Stack) -> Result<BTreeMap<String, Vec<String>>, String> {
    let out = stack.dir.path().join("rendered");
    let o = stack.atlas(&["render", "--out", out.to_str().expect("utf-8")]);
    if !o.status.success() {
        return Err(format!("render failed: {}", stderr(&o)));
    }
    let mut commands = BTreeMap::new();
    for entry in std::fs::read_dir(&out).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(instance) = name.strip_suffix(".service.toml") else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("command = "))
            .ok_or_else(|| format!("{name} shows no command"))?;
        let argv: Vec<String> = serde_json::from_str(line).map_err(|e| format!("{name}: {e}"))?;
        commands.insert(instance.to_string(), argv);
    }
    Ok(commands)
}

/// The service atlas-init runs in `instance`: the one child of the container's PID 1 (its
/// host PID from the Incus API), as the host's /proc shows it.
async fn service_pid(pc: &Client, instance: &str) -> Result<u32, String> {
    let state: Value = pc
        .get_path(&format!("/1.0/instances/{instance}/state"), true)
        .await
        .map_err(|e| format!("{instance} state: {e}"))?
        .value;
    let init = state["pid"]
        .as_u64()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{instance} has no init pid (status {})", state["status"]))?;
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .map_err(|e| format!("{instance}: children of pid {init}: {e}"))?;
    let kids: Vec<u32> = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    match kids.as_slice() {
        [one] => Ok(*one),
        other => Err(format!(
            "{instance}: PID 1 ({init}) has children {other:?}, expected the service alone"
        )),
    }
}

fn nul_list(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn proc_file(pid: u32, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(format!("/proc/{pid}/{what}")).map_err(|e| format!("/proc/{pid}/{what}: {e}"))
}

async fn argv_is_rendered(stack: &Stack) -> Result<(), String> {
    let rendered = rendered_commands(stack)?;
    let pc = stack.project();
    let running: Vec<String> = pc
        .instances()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|i| i.name)
        .collect();
    if rendered.keys().collect::<Vec<_>>() != running.iter().collect::<Vec<_>>() {
        return Err(format!(
            "render shows {:?}, Incus runs {running:?}",
            rendered.keys().collect::<Vec<_>>()
        ));
    }
    let mut wrong = Vec::new();
    for (instance, want) in &rendered {
        let pid = service_pid(&pc, instance).await?;
        let argv = nul_list(&proc_file(pid, "cmdline")?);
        if &argv != want {
            wrong.push(format!("{instance}: runs {argv:?}, render shows {want:?}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

async fn environment_in_spec(stack: &Stack) -> Result<(), String> {
    let pc = stack.project();
    let password = stack
        .secret("user.atlas.secret.grafana-admin-password")
        .await;
    let pid = service_pid(&pc, "grafana01").await?;
    let environ = nul_list(&proc_file(pid, "environ")?);
    let want = format!("GF_SECURITY_ADMIN_PASSWORD={password}");
    if !environ.contains(&want) {
        return Err(
            "Grafana's process has no GF_SECURITY_ADMIN_PASSWORD with the stored password".into(),
        );
    }
    if !environ
        .iter()
        .any(|e| e == "GF_ANALYTICS_REPORTING_ENABLED=false")
    {
        return Err(format!(
            "Grafana's process lacks the rendered settings: {environ:?}"
        ));
    }
    let shown: Value = pc
        .get_path("/1.0/instances/grafana01", true)
        .await
        .map_err(|e| e.to_string())?
        .value;
    if shown.to_string().contains(&password) {
        return Err("the admin password is in grafana01's config (incus config show)".into());
    }
    Ok(())
}

/// GET `url` from inside `instance` (`atlas-init fetch`, run as the health probes are): the
/// body of a 2xx answer.
async fn get_inside(pc: &Client, instance: &str, url: &str) -> Result<String, String> {
    atlas_install::engine::fetch::get(pc, instance, url)
        .await
        .map(|body| String::from_utf8_lossy(&body).into_owned())
        .map_err(|e| format!("GET {url} in {instance}: {e}"))
}

async fn prometheus_api(stack: &Stack, path: &str) -> Result<Value, String> {
    let prom = stack.address("prometheus01", "eth0").await;
    let body = get_inside(
        &stack.project(),
        "prometheus01",
        &format!("http://{prom}:9090{path}"),
    )
    .await?;
    serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))
}

async fn prometheus_retention(stack: &Stack) -> Result<(), String> {
    let flags = prometheus_api(stack, "/api/v1/status/flags").await?;
    let flag = |k: &str| flags["data"][k].as_str().unwrap_or_default().to_string();
    if flag("storage.tsdb.retention.time") != RETENTION_TIME
        || flag("storage.tsdb.retention.size") != RETENTION_SIZE_SHOWN
    {
        return Err(format!(
            "flags: retention.time {:?}, retention.size {:?}",
            flag("storage.tsdb.retention.time"),
            flag("storage.tsdb.retention.size")
        ));
    }
    // What Prometheus itself applies: "<time> or <size>" (sizes in IEC units).
    let info = prometheus_api(stack, "/api/v1/status/runtimeinfo").await?;
    let applied = info["data"]["storageRetention"]
        .as_str()
        .unwrap_or_default();
    if applied != format!("{RETENTION_TIME} or {RETENTION_SIZE_SHOWN}") {
        return Err(format!("runtimeinfo storageRetention is {applied:?}"));
    }
    Ok(())
}

async fn targets_up(stack: &Stack) -> Result<(), String> {
    let want = [
        "prometheus",
        "grafana",
        "loki",
        "caddy",
        "step-ca",
        "node-exporter",
        "alertmanager",
        "cloudflared",
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let targets = prometheus_api(stack, "/api/v1/targets").await?;
        let active: Vec<(String, String, String)> = targets["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (s(&t["labels"]["job"]), s(&t["health"]), s(&t["lastError"]))
            })
            .collect();
        let mut problems = Vec::new();
        for job in want {
            let of_job: Vec<&(String, String, String)> =
                active.iter().filter(|(j, _, _)| j == job).collect();
            if let Some((_, why)) = PENDING.iter().find(|(j, _)| *j == job) {
                eprintln!(
                    "skipped: scrape target {job} ({:?}): {why}",
                    of_job.iter().map(|(_, h, _)| h).collect::<Vec<_>>()
                );
                continue;
            }
            if of_job.is_empty() {
                problems.push(format!("no {job} target"));
            }
            for (_, health, error) in of_job.iter().filter(|(_, h, _)| h != "up") {
                problems.push(format!("{job} is {health}: {error}"));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(problems.join("; "));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

async fn cloudflared_has_token(stack: &Stack) -> Result<(), String> {
    let pc = stack.project();
    let pid = service_pid(&pc, "cloudflared01").await?;
    let argv = nul_list(&proc_file(pid, "cmdline")?);
    let environ = nul_list(&proc_file(pid, "environ")?);
    let token_file = "/etc/cloudflared/token";
    if !argv
        .windows(2)
        .any(|w| w[0] == "--token-file" && w[1] == token_file)
    {
        return Err(format!("argv {argv:?} has no --token-file {token_file}"));
    }
    if argv
        .iter()
        .chain(&environ)
        .any(|a| a.contains(TUNNEL_TOKEN))
    {
        return Err("the token is in the process's argv or environment".into());
    }
    let config: Value = pc
        .get_path("/1.0/instances/cloudflared01", true)
        .await
        .map_err(|e| e.to_string())?
        .value;
    if config.to_string().contains(TUNNEL_TOKEN) {
        return Err("the token is in the instance's config (incus config show)".into());
    }
    // The file the process reads, through its own root, and what the service makes of it.
    let held = proc_file(pid, &format!("root{token_file}"))?;
    if held != TUNNEL_TOKEN.as_bytes() {
        return Err(format!("{token_file} holds {} other bytes", held.len()));
    }
    // Only that token connects to the (fixture) edge: /ready says so once the tunnel's
    // connections are registered, as cloudflared's readiness endpoint does.
    let ip = stack.address("cloudflared01", "eth0").await;
    let url = format!("http://{ip}:2000/ready");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = get_inside(&pc, "cloudflared01", &url)
            .await
            .and_then(|b| serde_json::from_str::<Value>(&b).map_err(|e| format!("{e}: {b}")));
        match ready {
            Ok(v) if v["readyConnections"].as_u64().is_some_and(|n| n > 0) => return Ok(()),
            other if Instant::now() > deadline => {
                return Err(format!(
                    "cloudflared is not connected with the token: {other:?}"
                ));
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Caddy's internal root certificate (Caddy makes it at its first start).
async fn caddy_root(pc: &Client) -> Result<Vec<u8>, String> {
    let path = "/data/caddy/pki/authorities/local/root.crt";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match pc.pull_file("caddy01", path).await.optional() {
            Ok(Some(b)) => return Ok(b),
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(None) => return Err(format!("caddy01 has no {path}")),
            Err(e) => return Err(format!("caddy01:{path}: {e}")),
        }
    }
}

/// Which fixture variant (`v1`, `v2`) an instance's image was built from.
async fn variant(pc: &Client, instance: &str) -> Result<String, String> {
    let text = pc
        .pull_file(instance, "/etc/atlas-fixture-version")
        .await
        .map_err(|e| format!("{instance}: {e}"))?;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix("variant="))
        .map(str::to_string)
        .ok_or_else(|| format!("{instance}: no variant line"))
}

/// An images.lock pinning every recipe base to its fixture's `-v2` twin.
fn v2_lock(dir: &Path) -> Result<std::path::PathBuf, String> {
    let services: Vec<String> = atlas_image::recipe::Recipe::embedded()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| r.name)
        .collect();
    let services: Vec<&str> = services.iter().map(String::as_str).collect();
    let text = crate::common::fixture_lock_text(&services, "-v2")?;
    let path = dir.join("images-v2.lock");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

async fn caddy_root_survives(stack: &Stack) -> Result<(), String> {
    let pc = stack.project();
    let before = caddy_root(&pc).await?;
    let lock = v2_lock(stack.dir.path())?;
    let o = stack.atlas(&[
        "upgrade",
        "--yes",
        "--ignore-preflight",
        "--registry-mirror",
        &REGISTRY,
        "--images-lock",
        lock.to_str().expect("utf-8"),
        "--health-timeout",
        "120",
    ]);
    if !o.status.success() {
        return Err(format!("upgrade to v2 failed: {}", stderr(&o)));
    }
    if variant(&pc, "caddy01").await? != "v2" {
        return Err("caddy01 does not run the v2 image after the upgrade".into());
    }
    if caddy_root(&pc).await? != before {
        return Err("the root certificate changed with the upgrade".into());
    }
    let o = stack.atlas(&["rollback", "--yes", "--health-timeout", "120"]);
    if !o.status.success() {
        return Err(format!("rollback failed: {}", stderr(&o)));
    }
    if variant(&pc, "caddy01").await? != "v1" {
        return Err("caddy01 does not run the v1 image after the rollback".into());
    }
    if caddy_root(&pc).await? != before {
        return Err("the root certificate changed with the rollback".into());
    }
    Ok(())
}

async fn cloudflared_needs_token(stack: &Stack) -> Result<(), String> {
    let pc = stack.project();
    let path = "/etc/cloudflared/token";
    let (token, meta) = pc
        .pull_file_with_meta("cloudflared01", path)
        .await
        .map_err(|e| e.to_string())?;
    pc.delete_file("cloudflared01", path)
        .await
        .map_err(|e| e.to_string())?;
    let refused = async {
        pc.set_instance_state("cloudflared01", StateAction::Restart, 30, true)
            .await
            .map_err(|e| format!("restart: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Incus answers errors for a container caught between stop and start: ask again.
            let Ok(state) = pc.instance_state("cloudflared01").await else {
                if Instant::now() > deadline {
                    return Err("Incus could not say what state cloudflared01 is in".into());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let serving = match service_pid(&pc, "cloudflared01").await {
                Ok(pid) => nul_list(&proc_file(pid, "cmdline").unwrap_or_default())
                    .first()
                    .is_some_and(|a| a.contains("cloudflared")),
                Err(_) => false,
            };
            if state.status != "Running" || !serving {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("cloudflared kept running without a token".to_string());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    .await;
    // Put it back as it was, whatever happened, and wait for cloudflared to run again.
    pc.push_file(
        "cloudflared01",
        path,
        token,
        FileMeta::new(meta.uid, meta.gid, meta.mode),
    )
    .await
    .map_err(|e| format!("restoring the token: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = pc
            .instance_state("cloudflared01")
            .await
            .is_ok_and(|s| s.status == "Running");
        if !running {
            let _ = pc
                .set_instance_state("cloudflared01", StateAction::Start, 30, false)
                .await;
        } else if service_pid(&pc, "cloudflared01").await.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err("cloudflared01 did not run again with its token back".into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    refused
}

async fn health_error_is_redacted(stack: &Stack) -> Result<(), String> {
    let pc = stack.project();
    let password = stack.secret("user.atlas.secret.step-ca-password").await;
    let ca_json = "/home/step/config/ca.json";
    let (original, meta) = pc
        .pull_file_with_meta("step-ca01", ca_json)
        .await
        .map_err(|e| format!("ca.json: {e}"))?;
    let failed = async {
        // The real step-ca listening elsewhere than where the health gate probes it (its
        // ca.json with another address), so the gate fails.
        let mut moved: Value =
            serde_json::from_slice(&original).map_err(|e| format!("ca.json: {e}"))?;
        moved["address"] = Value::String(":9443".into());
        pc.push_file("step-ca01", ca_json, moved.to_string().into_bytes(), meta)
            .await
            .map_err(|e| format!("ca.json: {e}"))?;
        pc.set_instance_state("step-ca01", StateAction::Restart, 30, true)
            .await
            .map_err(|e| format!("restart step-ca01: {e}"))?;
        // The upstream entrypoint prints the CA password on its first start; put it on the
        // console the same way. (Not read back here: reading a running container's console
        // log through the API drains it.)
        let say = format!("echo 'Your CA administrative password is: {password}' > /dev/console");
        let out = pc
            .exec("step-ca01", &["/bin/sh", "-c", &say], &BTreeMap::new())
            .await
            .map_err(|e| format!("writing to the console: {e}"))?;
        if out.exit_code != 0 {
            return Err(format!("writing to the console: {}", out.stderr_str()));
        }
        Ok(stack.atlas(&[
            "install",
            "--yes",
            "--ignore-preflight",
            "--registry-mirror",
            &REGISTRY,
            "--health-timeout",
            "8",
        ]))
    }
    .await;
    // step-ca back where it was, whatever happened, for the claims after this one (its
    // volume is mounted while it runs, and it still runs: it only listens elsewhere).
    let _ = pc.push_file("step-ca01", ca_json, original, meta).await;
    pc.set_instance_state("step-ca01", StateAction::Restart, 30, true)
        .await
        .map_err(|e| format!("restart step-ca01: {e}"))?;
    let o = failed?;
    let printed = format!("{}{}", stdout(&o), stderr(&o));
    if o.status.success() {
        return Err("install passed the health gate of a step-ca that listens elsewhere".into());
    }
    if !printed.contains("step-ca01 did not become healthy") || !printed.contains("last log lines")
    {
        return Err(format!("no health error with a log excerpt: {printed}"));
    }
    if printed.contains(&password) {
        return Err("the stored step-ca password is in the printed error".into());
    }
    // The line is there, its secret cut out: the excerpt was shown, and redacted.
    if !printed.contains("Your CA administrative password is: <redacted>") {
        return Err(format!(
            "the excerpt does not show the redacted line: {printed}"
        ));
    }
    Ok(())
}
