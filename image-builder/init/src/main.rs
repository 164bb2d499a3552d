//! atlas-init: the PID 1 of every Atlas container (`/sbin/init`).
//!
//! Incus stops a container by sending SIGPWR to its PID 1 and waiting; the kernel drops signals
//! that a namespace's PID 1 neither handles nor blocks, so a service run directly as PID 1 never
//! stops. This program sits in between: it brings up the network from
//! `/etc/atlas/network.json` (minimal images have no DHCP client), runs the service described
//! by `/etc/atlas/service.json` as its only child, turns SIGPWR/SIGTERM/SIGINT into SIGTERM for
//! the service (SIGKILL after the grace period), reaps every orphan that reparents to it, and
//! exits with the service's status. Anything wrong is reported on stderr, which Incus keeps as
//! the container's console log (`incus console --show-log`).
//!
//! Usage: `atlas-init [--root DIR] [--no-network]` (also `ATLAS_INIT_ROOT`,
//! `ATLAS_INIT_NO_NETWORK=1`). `--root` relocates only atlas-init's own files (the two config
//! files, passwd/group, resolv.conf, hosts) so tests can run it outside a container; the service
//! itself still sees the real filesystem. `atlas-init probe URL` is the installer's
//! health probe, run inside the container by `incus exec`, and `atlas-init fetch URL` reads a
//! service's API the same way (see `probe.rs`).

// json and spec are shared with the image builder, which uses their writing half; here only
// the reading half runs.
#[allow(dead_code)]
mod json;
mod net;
mod probe;
mod service;
#[allow(dead_code)]
mod spec;
// `unsafe_code` is denied workspace-wide. PID 1 has to call a few kernel interfaces std does
// not wrap (sigtimedwait, waitpid(-1), kill, prctl, netlink, setgroups before exec); they are
// all in this one module, behind safe functions.
#[allow(unsafe_code)]
mod sys;
mod user;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use spec::{NetworkSpec, ServiceSpec};

const SERVICE_FILE: &str = "etc/atlas/service.json";
const NETWORK_FILE: &str = "etc/atlas/network.json";

/// Exit status when atlas-init itself cannot proceed (bad config, network failure).
const EXIT_CONFIG: u8 = 1;

#[derive(Debug, PartialEq, Eq)]
struct Options {
    root: PathBuf,
    network: bool,
}

/// A fatal problem and the exit status it maps to.
struct Fatal {
    code: u8,
    message: String,
}

fn fatal(message: impl Into<String>) -> Fatal {
    Fatal {
        code: EXIT_CONFIG,
        message: message.into(),
    }
}

fn main() -> ExitCode {
    // `atlas-init probe URL` is a short-lived helper run by `incus exec`, not PID 1.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("probe") => return ExitCode::from(probe::main(&args[1..])),
        Some("fetch") => return ExitCode::from(probe::fetch_main(&args[1..])),
        _ => {}
    }
    match run() {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("atlas-init: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run() -> Result<u8, Fatal> {
    // Block the signals we handle before anything else, so a stop request that arrives during
    // setup is queued and acted on once the service runs, instead of killing us half-way.
    let signals = service::stop_and_forwarded_signals();
    signals
        .block()
        .map_err(|e| fatal(format!("cannot block signals: {e}")))?;
    let opts = parse_options(std::env::args_os().skip(1).collect(), |k| {
        std::env::var_os(k)
    })?;
    if std::process::id() != 1 {
        // Outside a PID namespace orphans would go to the real init; keep them ours so the
        // reaping behaviour is the same as in a container.
        sys::set_child_subreaper()
            .map_err(|e| fatal(format!("cannot become a child subreaper: {e}")))?;
    }

    let mut svc: ServiceSpec = load(
        &opts.root,
        SERVICE_FILE,
        ServiceSpec::from_json,
        "the image builder writes it into every Atlas image; rebuild the image with atlas-install",
    )?;
    let network: Option<NetworkSpec> = if opts.network {
        Some(load(
            &opts.root,
            NETWORK_FILE,
            NetworkSpec::from_json,
            "atlas-install pushes it before the first start; push one (`incus file push`) or rebuild the image",
        )?)
    } else {
        None
    };
    // Non-UTF-8 variables cannot be written as KEY=VALUE strings of the spec: skipped.
    overlay_runtime_env(
        &mut svc,
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
    );
    let prepared = service::prepare(&svc, &opts.root)?;

    if let Some(network) = &network {
        net::setup(network).map_err(|e| fatal(format!("network setup failed: {e}")))?;
        for iface in &network.interfaces {
            eprintln!("atlas-init: {}", net::describe(iface));
        }
        write_network_files(&opts.root, network)?;
    }
    service::run(prepared, &signals, svc.stop_grace_period)
}

/// Incus hands an instance's `environment.*` keys to PID 1 as its own environment: that is
/// how the installer configures a service (Grafana's `GF_*`, step-ca's init variables), so
/// they override the image's env. What the runtime itself adds (`container=lxc`, a default
/// PATH or HOME) must not shadow the image's own values, and our test knobs stay ours.
fn overlay_runtime_env(svc: &mut ServiceSpec, vars: impl Iterator<Item = (String, String)>) {
    const RUNTIME_ONLY: [&str; 2] = ["container", "container_ttys"];
    const IMAGE_WINS: [&str; 4] = ["PATH", "HOME", "TERM", "LANG"];
    for (k, v) in vars {
        if RUNTIME_ONLY.contains(&k.as_str()) || k.starts_with("ATLAS_INIT_") || k.is_empty() {
            continue;
        }
        if IMAGE_WINS.contains(&k.as_str()) && svc.env_var(&k).is_some() {
            continue;
        }
        svc.set_env(&k, &v);
    }
}

fn parse_options(
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Options, Fatal> {
    let mut opts = Options {
        root: env("ATLAS_INIT_ROOT").map_or_else(|| PathBuf::from("/"), PathBuf::from),
        network: env("ATLAS_INIT_NO_NETWORK").is_none_or(|v| v.is_empty() || v == "0"),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--root") => {
                opts.root = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| fatal("--root needs a directory"))?;
            }
            Some("--no-network") => opts.network = false,
            _ => {
                return Err(fatal(format!(
                    "unknown argument {arg:?}; usage: atlas-init [--root DIR] [--no-network]"
                )));
            }
        }
    }
    Ok(opts)
}

/// Reads and parses one config file; every failure names the file and says how to fix it.
fn load<T, E: std::fmt::Display>(
    root: &Path,
    rel: &str,
    parse: impl Fn(&str) -> Result<T, E>,
    hint: &str,
) -> Result<T, Fatal> {
    let path = root.join(rel);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(fatal(format!("{}: not found; {hint}", path.display())));
        }
        Err(e) => return Err(fatal(format!("{}: cannot read: {e}", path.display()))),
    };
    parse(&text).map_err(|e| fatal(format!("{}: {e}", path.display())))
}

/// Writes resolv.conf (only when DNS settings are given) and hosts. A read-only rootfs is not
/// an error: the image's own files stay, and the console log says so.
fn write_network_files(root: &Path, network: &NetworkSpec) -> Result<(), Fatal> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let files = [
        ("etc/resolv.conf", network.resolv_conf()),
        (
            "etc/hosts",
            Some(network.hosts_file(hostname.as_deref().map(str::trim))),
        ),
    ];
    for (rel, content) in files {
        let Some(content) = content else { continue };
        let path = root.join(rel);
        match replace_file(&path, content.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                eprintln!(
                    "atlas-init: {}: read-only filesystem, left as it is",
                    path.display()
                );
            }
            Err(e) => return Err(fatal(format!("{}: cannot write: {e}", path.display()))),
        }
    }
    Ok(())
}

/// Writes via a temporary file and rename, which also replaces a symlink (some images link
/// resolv.conf to a resolver stub that does not exist here) instead of writing through it.
fn replace_file(path: &Path, content: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(".atlas-init.tmp");
    std::fs::write(&tmp, content)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str], env: &[(&str, &str)]) -> Result<Options, String> {
        let env: Vec<(String, OsString)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        parse_options(args.iter().map(OsString::from).collect(), |k| {
            env.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
        .map_err(|f| f.message)
    }

    #[test]
    fn defaults_are_the_container_case() {
        assert_eq!(
            opts(&[], &[]),
            Ok(Options {
                root: "/".into(),
                network: true
            })
        );
    }

    #[test]
    fn runtime_environment_overrides_the_image_but_not_its_path() {
        let mut svc = ServiceSpec::from_json(
            r#"{"cmd":["/bin/true"],"env":["PATH=/image/bin","GF_X=image","KEEP=1"]}"#,
        )
        .unwrap();
        let vars = [
            ("container", "lxc"),
            ("PATH", "/runtime/bin"),
            ("GF_X", "incus"),
            ("NEW", "2"),
            ("ATLAS_INIT_ROOT", "/tmp"),
        ];
        overlay_runtime_env(
            &mut svc,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        );
        assert_eq!(svc.env_var("PATH"), Some("/image/bin"));
        assert_eq!(svc.env_var("GF_X"), Some("incus"));
        assert_eq!(svc.env_var("KEEP"), Some("1"));
        assert_eq!(svc.env_var("NEW"), Some("2"));
        assert_eq!(svc.env_var("container"), None);
        assert_eq!(svc.env_var("ATLAS_INIT_ROOT"), None);
    }

    #[test]
    fn flags_and_environment_select_test_mode() {
        let want = Ok(Options {
            root: "/tmp/r".into(),
            network: false,
        });
        assert_eq!(opts(&["--root", "/tmp/r", "--no-network"], &[]), want);
        assert_eq!(
            opts(
                &[],
                &[
                    ("ATLAS_INIT_ROOT", "/tmp/r"),
                    ("ATLAS_INIT_NO_NETWORK", "1")
                ]
            ),
            want
        );
        assert!(
            opts(&[], &[("ATLAS_INIT_NO_NETWORK", "0")])
                .unwrap()
                .network
        );
    }

    #[test]
    fn bad_arguments_are_refused_with_usage() {
        assert!(
            opts(&["--root"], &[])
                .unwrap_err()
                .contains("needs a directory")
        );
        assert!(
            opts(&["--bogus"], &[])
                .unwrap_err()
                .contains("usage: atlas-init")
        );
    }
}
