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
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn loki_role_serves_and_exits_zero_on_sigterm() {
    let mut child = Reap(
        Command::new(env!("CARGO_BIN_EXE_atlas-standin"))
            .args([
                "--role",
                "loki",
                "-config.file=/nonexistent.yaml",
                "-server.http-listen-port=0",
            ])
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .replace("0.0.0.0", "127.0.0.1");
    assert!(line.contains("stand-in for loki"), "{line}");

    let ready = get(&addr, "/ready");
    assert!(
        ready.starts_with("HTTP/1.1 200 OK") && ready.ends_with("ready\n"),
        "{ready}"
    );
    assert!(get(&addr, "/metrics").contains("standin_loki_push_total 0\n"));

    assert_eq!(sigterm_and_wait(&mut child.0), Some(0));
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

#[test]
fn sigterm_exits_zero_even_when_stderr_is_gone() {
    // The parent that read our log died: writing the exit line must not stop the exit.
    let mut child = Reap(
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
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("stand-in for cloudflared"), "{line}");
    drop(stderr);
    assert_eq!(sigterm_and_wait(&mut child.0), Some(0));
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
