//! The built binary as a process: role from argv, serving, and a prompt exit 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn get(addr: &str, path: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// Kills the child if an assertion fails first, so no stand-in outlives the test.
use atlas_test_support::process::Reaped as Reap;

/// Starts the stand-in, its stderr piped (where it says it listens), killed when the test
/// ends.
fn spawn(cmd: &mut Command) -> Reap {
    Reap(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// A Loki config like the installer's, its data under `dir`.
fn loki_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let d = dir.display();
    let text = format!(
        "auth_enabled: false\nserver:\n  http_listen_port: 0\ncommon:\n  path_prefix: {d}/loki\n  \
         storage:\n    filesystem:\n      chunks_directory: {d}/loki/chunks\n      rules_directory: {d}/loki/rules\n\
         schema_config:\n  configs:\n    - from: \"2024-01-01\"\n      store: tsdb\n      object_store: filesystem\n      \
         schema: v13\n      index:\n        prefix: index_\n        period: 24h\n\
         compactor:\n  working_directory: {d}/loki/compactor\n  retention_enabled: true\n  delete_request_store: filesystem\n{extra}"
    );
    let path = dir.join("local-config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the stand-in to its exit (it must exit within 5 s): status and stderr.
fn run_to_exit(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = spawn(cmd);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still running after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

/// The address from the stand-in's first stderr line.
fn listening(child: &mut Child) -> String {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        stderr.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "exited before listening");
        if line.contains("listening on") {
            break;
        }
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    line.trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .replace("0.0.0.0", "127.0.0.1")
}

#[test]
fn loki_role_serves_and_exits_zero_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let config = loki_config(tmp.path(), "");
    let mut child = spawn(
        Command::new(env!("CARGO_BIN_EXE_atlas-standin"))
            .args(["--role", "loki"])
            .arg(format!("-config.file={}", config.display()))
            .env_clear(),
    );
    let addr = listening(&mut child.0);
    let ready = get(&addr, "/ready");
    assert!(
        ready.starts_with("HTTP/1.1 200 OK") && ready.ends_with("ready\n"),
        "{ready}"
    );
    assert!(get(&addr, "/metrics").contains("standin_loki_push_total 0\n"));
    for d in [
        "loki/chunks",
        "loki/rules",
        "loki/compactor",
        "loki/rules-temp",
        "loki/wal",
    ] {
        assert!(tmp.path().join(d).is_dir(), "{d} created as Loki does");
    }
    assert_eq!(sigterm_and_wait(&mut child.0), Some(0));
}

#[test]
fn loki_refuses_an_unknown_key_and_retention_without_a_delete_store() {
    let tmp = tempfile::tempdir().unwrap();
    let config = loki_config(tmp.path(), "limits_config:\n  retention_periods: 720h\n");
    let (code, err) = loki_exit(&config);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("field retention_periods not found in type validation.Limits"),
        "{err}"
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("  delete_request_store: filesystem\n", "")
        .replace("limits_config:\n  retention_periods: 720h\n", "");
    std::fs::write(&config, text).unwrap();
    let (code, err) = loki_exit(&config);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("compactor.delete-request-store should be configured"),
        "{err}"
    );
}

/// Runs the Loki stand-in on `config` until it exits: (exit code, stderr).
fn loki_exit(config: &std::path::Path) -> (Option<i32>, String) {
    run_to_exit(
        Command::new(env!("CARGO_BIN_EXE_atlas-standin"))
            .args(["--role", "loki"])
            .arg(format!("-config.file={}", config.display()))
            .env_clear(),
    )
}

/// Sends SIGTERM and waits at most 2 s; returns the exit code.
fn sigterm_and_wait(child: &mut Child) -> Option<i32> {
    // std can only SIGKILL a child; kill(1) sends the SIGTERM our PID 1 would forward.
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "still running 2 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    status.code()
}

/// A tunnel token the fixture edge accepts (account tag `atlas-fixture`).
const FIXTURE_TOKEN: &str = "eyJhIjoiYXRsYXMtZml4dHVyZSIsInQiOiI2YTllMmQ3ZS05YzQ4LTQwMWItYmRmZC1hYjIxOWQzZDRkZjUiLCJzIjoiYzJWamNtVjAifQ==";

#[test]
fn sigterm_exits_zero_even_when_stderr_is_gone() {
    // The parent that read our log died: writing the exit line must not stop the exit.
    let mut child = spawn(
        Command::new(env!("CARGO_BIN_EXE_atlas-standin"))
            .args([
                "--role",
                "cloudflared",
                "tunnel",
                "--metrics",
                "127.0.0.1:0",
                "run",
            ])
            .env_clear()
            .env("TUNNEL_TOKEN", FIXTURE_TOKEN),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("stand-in for cloudflared"), "{line}");
    drop(stderr);
    assert_eq!(sigterm_and_wait(&mut child.0), Some(0));
}

#[test]
fn cloudflared_needs_a_token_and_is_ready_once_connected() {
    let (code, err) = run_to_exit(
        Command::new(env!("CARGO_BIN_EXE_atlas-standin"))
            .args([
                "--role",
                "cloudflared",
                "--no-autoupdate",
                "tunnel",
                "--metrics",
                "127.0.0.1:0",
                "run",
            ])
            .env_clear(),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("requires the ID or name of the tunnel"),
        "{err}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("token");
    std::fs::write(&file, format!("{FIXTURE_TOKEN}\n")).unwrap();
    let mut child = spawn(
        Command::new(env!("CARGO_BIN_EXE_atlas-standin"))
            .args([
                "--role",
                "cloudflared",
                "--no-autoupdate",
                "tunnel",
                "--metrics",
                "127.0.0.1:0",
                "run",
                "--token-file",
            ])
            .arg(&file)
            .env_clear(),
    );
    let addr = listening(&mut child.0);
    let first = get(&addr, "/ready");
    assert!(
        first.starts_with("HTTP/1.1 503"),
        "not connected yet: {first}"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = get(&addr, "/ready");
        if r.starts_with("HTTP/1.1 200") {
            assert!(r.contains("\"readyConnections\":4"), "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "never connected: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sigterm_and_wait(&mut child.0), Some(0));
}

#[test]
fn grafana_exits_on_a_broken_datasource_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |s: &str| tmp.path().join(s);
    std::fs::create_dir_all(p("prov/datasources")).unwrap();
    std::fs::write(p("grafana.ini"), "").unwrap();
    std::fs::write(
        p("prov/datasources/broken.yaml"),
        "apiVersion: 1\ndatasources:\n  - name: [x\n",
    )
    .unwrap();
    let (code, err) = run_to_exit(
        Command::new(env!("CARGO_BIN_EXE_atlas-standin"))
            .args(["--role", "grafana", "server"])
            .arg(format!("--homepath={}", tmp.path().display()))
            .arg(format!("--config={}", p("grafana.ini").display()))
            .arg(format!("cfg:default.paths.data={}", p("data").display()))
            .arg(format!(
                "cfg:default.paths.provisioning={}",
                p("prov").display()
            ))
            .env_clear()
            .env("GF_SERVER_HTTP_PORT", "0"),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("Datasource provisioning error: yaml:") && err.contains("broken.yaml"),
        "{err}"
    );
}

#[test]
fn unknown_program_name_is_a_clear_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_atlas-standin"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--role ROLE"), "{err}");
}

#[test]
fn cloudflared_version_names_the_stand_in() {
    let out = Command::new(env!("CARGO_BIN_EXE_atlas-standin"))
        .args(["--role=cloudflared", "--no-autoupdate", "version"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("stand-in, not the real product"));
}
