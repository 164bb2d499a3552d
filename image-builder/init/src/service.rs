//! Starting the service and supervising it until it exits.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::spec::ServiceSpec;
use crate::sys::{self, SignalSet};
use crate::user::{self, Credentials};
use crate::{Fatal, fatal};

/// Same default as Docker and runc when the image sets no PATH.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Shell conventions, which container runtimes follow too.
const EXIT_NOT_FOUND: u8 = 127;
const EXIT_CANNOT_EXEC: u8 = 126;

/// Signals that mean "stop the container": Incus sends SIGPWR, `docker stop`-like tools and
/// humans send SIGTERM or SIGINT. The service gets SIGTERM for all three.
const STOP_SIGNALS: [libc::c_int; 3] = [sys::SIGPWR, sys::SIGTERM, sys::SIGINT];
/// Passed through unchanged to the service (reload, log reopen, thread dumps).
const FORWARDED_SIGNALS: [libc::c_int; 4] = [sys::SIGHUP, sys::SIGUSR1, sys::SIGUSR2, sys::SIGQUIT];

pub fn stop_and_forwarded_signals() -> SignalSet {
    let mut all = vec![sys::SIGCHLD];
    all.extend(STOP_SIGNALS);
    all.extend(FORWARDED_SIGNALS);
    SignalSet::new(&all)
}

/// Everything resolved before the network is touched, so a bad service.json or an unknown
/// user changes nothing.
pub struct Prepared {
    program: PathBuf,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    creds: Credentials,
}

pub fn prepare(svc: &ServiceSpec, root: &Path) -> Result<Prepared, Fatal> {
    let passwd = read_optional(&root.join("etc/passwd"))?;
    let group = read_optional(&root.join("etc/group"))?;
    let creds = user::resolve(svc.user.as_deref(), passwd.as_deref(), group.as_deref())
        .map_err(|e| fatal(format!("service.json user: {e}")))?;
    let argv: Vec<String> = svc.argv().into_iter().map(String::from).collect();
    let cwd = PathBuf::from(svc.working_dir.as_deref().unwrap_or("/"));
    if !cwd.is_dir() {
        return Err(fatal(format!(
            "service.json working_dir {} is not a directory in the image",
            cwd.display()
        )));
    }
    let path_var = svc.env_var("PATH").unwrap_or(DEFAULT_PATH);
    let program = find_program(&argv[0], path_var, &cwd).ok_or_else(|| Fatal {
        code: EXIT_NOT_FOUND,
        message: format!(
            "cannot start the service: \"{}\" is not an executable file (PATH={path_var}, working_dir {})",
            argv[0],
            cwd.display()
        ),
    })?;
    let env = svc
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Prepared {
        program,
        argv,
        env,
        cwd,
        creds,
    })
}

fn read_optional(path: &Path) -> Result<Option<String>, Fatal> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fatal(format!("{}: cannot read: {e}", path.display()))),
    }
}

/// execvp's rule: a name with a slash is a path (relative ones from the service's working
/// dir, where the service itself would resolve them), otherwise the first executable file of
/// that name in PATH (the service's PATH, not ours).
fn find_program(name: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = cwd.join(name);
        return executable(&p).then_some(p);
    }
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|p| executable(p))
}

/// Starts the service and supervises it; returns its exit status (128 + signal if killed).
pub fn run(p: Prepared, signals: &SignalSet, grace_secs: u32) -> Result<u8, Fatal> {
    let mut cmd = Command::new(&p.program);
    cmd.arg0(&p.argv[0])
        .args(&p.argv[1..])
        .env_clear()
        .envs(p.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&p.cwd)
        // Its own process group, so a stop reaches the whole service (wrapper scripts and
        // their children), and only the service.
        .process_group(0);
    sys::exec_as(&mut cmd, p.creds.uid, p.creds.gid, p.creds.groups.clone());
    let child = cmd.spawn().map_err(|e| Fatal {
        code: if e.kind() == io::ErrorKind::NotFound {
            EXIT_NOT_FOUND
        } else {
            EXIT_CANNOT_EXEC
        },
        message: format!("cannot start the service {}: {e}", p.program.display()),
    })?;
    // Reaping is done with waitpid(-1) below (orphans too), so the Child handle is not used.
    let pid = child.id() as i32;
    eprintln!(
        "atlas-init: started {} as pid {pid} (uid {}, gid {})",
        p.program.display(),
        p.creds.uid,
        p.creds.gid
    );
    let code = supervise(pid, signals, Duration::from_secs(grace_secs.into()));
    eprintln!("atlas-init: service exited with status {code}");
    Ok(code)
}

fn supervise(pid: i32, signals: &SignalSet, grace: Duration) -> u8 {
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        // SIGCHLDs coalesce, so every wake-up reaps everything that is ready.
        while let Some((reaped, code)) = sys::reap_one() {
            if reaped == pid {
                return u8::try_from(code).unwrap_or(255);
            }
        }
        let timeout = kill_at.map(|t| t.saturating_duration_since(Instant::now()));
        if timeout == Some(Duration::ZERO) {
            eprintln!(
                "atlas-init: service still running after {}s, sending SIGKILL",
                grace.as_secs()
            );
            signal_service(pid, sys::SIGKILL);
            kill_at = None;
            killed = true;
            continue;
        }
        match signals.wait(timeout) {
            Ok(Some(sig)) if STOP_SIGNALS.contains(&sig) => {
                if kill_at.is_none() && !killed {
                    eprintln!(
                        "atlas-init: {} received, sending SIGTERM to the service",
                        signal_name(sig)
                    );
                    signal_service(pid, sys::SIGTERM);
                    kill_at = Some(Instant::now() + grace);
                }
            }
            Ok(Some(sig)) if FORWARDED_SIGNALS.contains(&sig) => {
                let _ = sys::kill(pid, sig);
            }
            Ok(_) => {}
            Err(e) => {
                // Cannot happen with a valid set; do not spin if it somehow does.
                eprintln!("atlas-init: waiting for signals failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Signals the service's process group, or just the service if it left its group.
fn signal_service(pid: i32, sig: libc::c_int) {
    if sys::kill(-pid, sig).is_err() {
        let _ = sys::kill(pid, sig);
    }
}

fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        sys::SIGPWR => "SIGPWR",
        sys::SIGTERM => "SIGTERM",
        sys::SIGINT => "SIGINT",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_lookup_follows_the_services_path() {
        let dir = std::env::temp_dir().join(format!("atlas-init-find-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("a/tool"), "not executable").unwrap();
        std::fs::write(dir.join("b/tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.join("b/tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let path = format!("{}:{}", dir.join("a").display(), dir.join("b").display());
        let root = Path::new("/");
        assert_eq!(find_program("tool", &path, root), Some(dir.join("b/tool")));
        assert_eq!(find_program("missing", &path, root), None);
        assert_eq!(
            find_program(dir.join("a/tool").to_str().unwrap(), "/bin", root),
            None
        );
        assert_eq!(
            find_program("./b/tool", "/nowhere", &dir),
            Some(dir.join("./b/tool"))
        );
        assert_eq!(
            find_program(dir.join("b/tool").to_str().unwrap(), "", Path::new("/tmp")),
            Some(dir.join("b/tool"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
