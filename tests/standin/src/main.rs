//! atlas-standin: a test fixture standing in for Grafana, Loki and cloudflared where
//! no real binary is available. It answers their health and metrics endpoints on their ports
//! and says in every answer that it is a stand-in. The role comes from argv[0] (the binary is
//! installed under the upstream program paths) or `--role`.

mod args;
mod cloudflared;
mod grafana;
mod http;
mod loki;
mod roles;
mod tls;

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use args::{Listen, Plan, Settings, Setup};
use http::{Handler, Transport};
use roles::State;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
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
    let main_transport = match &s.main.tls {
        Some((cert, key)) => Transport::Tls(tls::from_pem_files(cert, key)?),
        None => Transport::Plain,
    };
    let main = bind(&s.main)?;
    // The bound address (not the requested one), so tests can ask for port 0.
    eprintln!(
        "atlas-standin: stand-in for {} (not the real product) listening on {}",
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
