//! atlas-standin: a test fixture standing in for Grafana, Loki, step-ca and cloudflared where
//! no real binary is available. It answers their health and metrics endpoints on their ports
//! and says in every answer that it is a stand-in. The role comes from argv[0] (the binary is
//! installed under the upstream program paths) or `--role`.

mod args;
mod cloudflared;
mod grafana;
mod http;
mod loki;
mod roles;
mod stepkey;
mod tls;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use args::{Listen, Plan, Role, Settings, Setup};
use http::{Handler, Transport};
use roles::State;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // Installed as `step` too: the step CLI's `crypto change-pass` (see stepkey.rs).
    if argv
        .first()
        .is_some_and(|a| a.rsplit('/').next() == Some("step"))
    {
        return match stepkey::step_cli(&argv[1..]) {
            Ok(line) => {
                let _ = writeln!(std::io::stdout(), "{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let env = std::env::vars().collect();
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let settings = match args::plan(&argv, &env, &read) {
        Ok(Plan::Print(line)) => {
            let _ = writeln!(std::io::stdout(), "{line}");
            return ExitCode::SUCCESS;
        }
        Ok(Plan::Serve(s)) => *s,
        Err(e) => {
            eprintln!("atlas-standin: {}", e.0);
            return ExitCode::from(2);
        }
    };
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atlas-standin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(s: Settings) -> Result<(), String> {
    exit_on_stop_signals()?;
    let state = Arc::new(State::new(s.role));
    start_role(&state, &s.setup)?;
    let main_transport = match (s.role, &s.main.tls) {
        (Role::StepCa, _) => {
            let dir = s.step_path.as_deref().unwrap_or(Path::new("/home/step"));
            stepkey::check_or_create(dir, s.password_file.as_deref())?;
            let (cfg, root_pem) = tls::step_ca(dir, &step_ca_names())?;
            let _ = state.root_pem.set(root_pem);
            Transport::Tls(cfg)
        }
        (_, Some((cert, key))) => Transport::Tls(tls::from_pem_files(cert, key)?),
        (_, None) => Transport::Plain,
    };
    let main = bind(&s.main)?;
    let mut metrics_note = String::new();
    if let Some(m) = &s.metrics {
        let listener = bind(m)?;
        metrics_note = format!(", metrics on {}", bound(&listener));
        let st = state.clone();
        let h: Handler = Arc::new(move |r| roles::handle_metrics_port(&st, r));
        std::thread::spawn(move || http::serve(listener, Transport::Plain, h));
    }
    // The bound address (not the requested one), so tests can ask for port 0.
    eprintln!(
        "atlas-standin: stand-in for {} (not the real product) listening on {}{metrics_note}",
        s.role.name(),
        bound(&main),
    );
    let h: Handler = Arc::new(move |r| roles::handle(&state, r));
    http::serve(main, main_transport, h);
    Ok(())
}

/// What a role does before it listens, failing as the product does (config, token, data).
fn start_role(state: &State, setup: &Setup) -> Result<(), String> {
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    match setup {
        Setup::None => {}
        Setup::Grafana(paths) => {
            let mut log = |line: String| eprintln!("atlas-standin (grafana): {line}");
            let g = grafana::start(paths, &env, &mut log)?;
            eprintln!(
                "atlas-standin (grafana): provisioned {} datasources, {} dashboards",
                g.datasources.len(),
                g.dashboards.len()
            );
            let _ = state.grafana.set(g);
        }
        Setup::Loki(file) => {
            let (path, text) = file.clone().ok_or(
                "failed parsing config: -config.file is required (the atlas stand-in needs a config file)",
            )?;
            let text = text.ok_or_else(|| {
                format!("failed parsing config: {path}: open {path}: cannot read the file")
            })?;
            let checked = loki::check_config(&path, &text)?;
            loki::make_dirs(&checked.dirs)?;
        }
        Setup::Tunnel(run) => {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
                    std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                    _ => e.to_string(),
                })
            };
            let token = cloudflared::token(run, &read)?;
            let at = token
                .connects()
                .then(|| std::time::Instant::now() + cloudflared::CONNECT_DELAY);
            if at.is_none() {
                eprintln!(
                    "atlas-standin (cloudflared): the token does not reach the fixture edge (account tag {:?}, not {:?}): /ready stays 503",
                    token.account,
                    cloudflared::FIXTURE_ACCOUNT
                );
            }
            let _ = state.tunnel.set(at);
        }
    }
    Ok(())
}

fn bound(l: &TcpListener) -> String {
    l.local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string())
}

fn bind(l: &Listen) -> Result<TcpListener, String> {
    TcpListener::bind(&l.addr).map_err(|e| format!("cannot listen on {}: {e}", l.addr))
}

/// The names step-ca's certificate is for: those the upstream entrypoint would initialise
/// with, plus loopback so local health probes verify.
fn step_ca_names() -> Vec<String> {
    let mut names: Vec<String> = std::env::var("DOCKER_STEPCA_INIT_DNS_NAMES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    for n in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    names
}

/// SIGTERM (forwarded by our PID 1), SIGINT and SIGPWR (Incus' halt signal, should we ever
/// run as PID 1 ourselves) end the process with status 0 at once: there is nothing to flush.
fn exit_on_stop_signals() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("signal runtime: {e}"))?;
    // Registered before serving starts, so no early SIGTERM is lost.
    let mut sigs = {
        let _guard = rt.enter();
        [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::from_raw(30),
        ]
        .into_iter()
        .map(signal)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot handle signals: {e}"))?
    };
    std::thread::spawn(move || {
        rt.block_on(async move {
            let [a, b, c] = &mut sigs[..] else { return };
            tokio::select! {
                _ = a.recv() => {}
                _ = b.recv() => {}
                _ = c.recv() => {}
            }
        });
        // Not eprintln!: it panics when stderr is gone (a closed pipe), and a panic here
        // would leave the process running after SIGTERM.
        let _ = writeln!(std::io::stderr(), "atlas-standin: stop signal, exiting");
        std::process::exit(0);
    });
    Ok(())
}
