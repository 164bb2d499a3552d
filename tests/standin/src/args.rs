//! Which product we stand in for, and where to listen, read from the same argv, environment
//! and config files the real product would get. Flags we do not understand are ignored so the
//! Atlas recipes can pass the upstream command lines unchanged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Grafana,
    Loki,
    Cloudflared,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Grafana => "grafana",
            Role::Loki => "loki",
            Role::Cloudflared => "cloudflared",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "grafana" | "grafana-server" | "run.sh" => Role::Grafana,
            "loki" => Role::Loki,
            "cloudflared" => Role::Cloudflared,
            _ => return None,
        })
    }
}

/// A listener: address plus optional PEM cert/key files for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: String,
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Listen {
    fn plain(addr: impl Into<String>) -> Self {
        Listen {
            addr: addr.into(),
            tls: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Print this line and exit 0 (e.g. `cloudflared version`).
    Print(String),
    /// Serve until SIGTERM.
    Serve(Box<Settings>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub role: Role,
    /// The main port (health endpoints).
    pub main: Listen,
    /// What only one role needs (its parsed command line, its config file).
    pub setup: Setup,
}

/// Role-specific start-up input, checked when the role starts (`main::run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setup {
    Grafana(crate::grafana::Paths),
    /// Loki's `-config.file` path and text (`None` when it could not be read).
    Loki(Option<(String, Option<String>)>),
    Tunnel(crate::cloudflared::Run),
}

#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

/// `argv` includes argv[0]. `read` reads a config file (injected for tests).
pub fn plan(
    argv: &[String],
    env: &BTreeMap<String, String>,
    read: &dyn Fn(&Path) -> Option<String>,
) -> Result<Plan, UsageError> {
    let prog = argv.first().map(String::as_str).unwrap_or("");
    let base = prog.rsplit('/').next().unwrap_or(prog);
    let mut args: Vec<String> = argv.iter().skip(1).cloned().collect();
    let role = match flag_value(&mut args, &["--role"]) {
        Some(r) => Role::parse(&r).ok_or_else(|| UsageError(format!("unknown --role {r:?}")))?,
        None => Role::parse(base).ok_or_else(|| {
            UsageError(format!(
                "cannot tell the role from the program name {base:?}: install the binary as \
                 grafana, run.sh, loki or cloudflared, or pass --role ROLE"
            ))
        })?,
    };
    let version = || {
        Plan::Print(format!(
            "{} version standin (atlas stand-in, not the real product)",
            role.name()
        ))
    };
    let settings = match role {
        Role::Grafana => {
            let mut full = vec![base.to_string()];
            full.extend(args);
            match crate::grafana::parse(&full, env).map_err(UsageError)? {
                crate::grafana::Command::Version => return Ok(version()),
                crate::grafana::Command::ResetAdminPassword(paths, pw) => {
                    return crate::grafana::reset_admin_password(&paths, &pw)
                        .map(Plan::Print)
                        .map_err(UsageError);
                }
                crate::grafana::Command::Server(paths) => grafana(env, paths),
            }
        }
        Role::Loki => {
            if args.iter().any(|a| a == "-version" || a == "--version") {
                return Ok(version());
            }
            crate::loki::check_flags(&args).map_err(UsageError)?;
            loki(&mut args, read)
        }
        Role::Cloudflared => match crate::cloudflared::parse(&args, env).map_err(UsageError)? {
            crate::cloudflared::Command::Version => return Ok(version()),
            crate::cloudflared::Command::Run(run) => Settings {
                role: Role::Cloudflared,
                main: Listen::plain(go_addr(&run.metrics)),
                setup: Setup::Tunnel(run),
            },
        },
    };
    Ok(Plan::Serve(Box::new(settings)))
}

/// Grafana takes its server settings from `GF_SERVER_*` (they override grafana.ini).
fn grafana(env: &BTreeMap<String, String>, paths: crate::grafana::Paths) -> Settings {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty());
    let addr = get("GF_SERVER_HTTP_ADDR").map_or("0.0.0.0", String::as_str);
    let port = get("GF_SERVER_HTTP_PORT").map_or("3000", String::as_str);
    let tls = match (
        get("GF_SERVER_PROTOCOL").map(String::as_str),
        get("GF_SERVER_CERT_FILE"),
        get("GF_SERVER_CERT_KEY"),
    ) {
        (Some("https"), Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
        _ => None,
    };
    Settings {
        role: Role::Grafana,
        main: Listen {
            addr: join(addr, port),
            tls,
        },
        setup: Setup::Grafana(paths),
    }
}

/// Loki: `-config.file=` (YAML) gives `server.http_listen_port` and `http_tls_config`;
/// `-server.http-listen-port=` overrides the port as in the real CLI.
fn loki(args: &mut Vec<String>, read: &dyn Fn(&Path) -> Option<String>) -> Settings {
    let mut port = "3100".to_string();
    let mut tls = None;
    let file = flag_value(args, &["-config.file", "--config.file"]);
    let text = file.as_deref().and_then(|p| read(Path::new(p)));
    if let Some(text) = &text {
        let cfg = yaml_scalars(text);
        if let Some(p) = cfg.get("server.http_listen_port") {
            port = p.clone();
        }
        if let (Some(c), Some(k)) = (
            cfg.get("server.http_tls_config.cert_file"),
            cfg.get("server.http_tls_config.key_file"),
        ) {
            tls = Some((PathBuf::from(c), PathBuf::from(k)));
        }
    }
    if let Some(p) = flag_value(
        args,
        &["-server.http-listen-port", "--server.http-listen-port"],
    ) {
        port = p;
    }
    Settings {
        role: Role::Loki,
        main: Listen {
            addr: join("0.0.0.0", &port),
            tls,
        },
        setup: Setup::Loki(file.map(|f| (f, text))),
    }
}

/// Removes `name VALUE` or `name=VALUE` from args and returns VALUE (last one wins).
fn flag_value(args: &mut Vec<String>, names: &[&str]) -> Option<String> {
    let mut found = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if names.contains(&a.as_str()) && i + 1 < args.len() {
            found = Some(args.remove(i + 1));
            args.remove(i);
            continue;
        }
        if let Some((k, v)) = a.split_once('=')
            && names.contains(&k)
        {
            found = Some(v.to_string());
            args.remove(i);
            continue;
        }
        i += 1;
    }
    found
}

/// Go-style ":9000" means all interfaces.
fn go_addr(a: &str) -> String {
    if a.starts_with(':') {
        format!("0.0.0.0{a}")
    } else {
        a.to_string()
    }
}

fn join(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Just enough YAML for Loki's server block: `a.b.c -> scalar` for block mappings, by
/// indentation. Lists and flow style are skipped; quotes are stripped.
pub fn yaml_scalars(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for raw in text.lines() {
        let line = raw.split(" #").next().unwrap_or("");
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path: Vec<&str> = stack
            .iter()
            .map(|(_, k)| k.as_str())
            .chain([key.trim()])
            .collect();
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        if value.is_empty() {
            stack.push((indent, key.trim().to_string()));
        } else {
            out.insert(path.join("."), value.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn env(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn no_files(_: &Path) -> Option<String> {
        None
    }

    fn serve(p: Result<Plan, UsageError>) -> Settings {
        match p {
            Ok(Plan::Serve(s)) => *s,
            other => panic!("expected Serve, got {other:?}"),
        }
    }

    #[test]
    fn role_from_program_name_or_flag() {
        let s = serve(plan(&argv(&["/run.sh"]), &env(&[]), &no_files));
        assert_eq!(
            (s.role, s.main.addr.as_str()),
            (Role::Grafana, "0.0.0.0:3000")
        );
        let s = serve(plan(
            &argv(&["/usr/bin/atlas-standin", "--role", "loki"]),
            &env(&[]),
            &no_files,
        ));
        assert_eq!(s.role, Role::Loki);
        let err = plan(&argv(&["/usr/bin/atlas-standin"]), &env(&[]), &no_files).unwrap_err();
        assert!(err.0.contains("--role ROLE"), "{}", err.0);
        assert!(plan(&argv(&["x", "--role=nope"]), &env(&[]), &no_files).is_err());
    }

    #[test]
    fn grafana_follows_gf_server_env() {
        let e = env(&[
            ("GF_SERVER_HTTP_PORT", "3300"),
            ("GF_SERVER_PROTOCOL", "https"),
            ("GF_SERVER_CERT_FILE", "/c.pem"),
            ("GF_SERVER_CERT_KEY", "/k.pem"),
        ]);
        let s = serve(plan(
            &argv(&["grafana", "server", "--homepath=/usr/share/grafana"]),
            &e,
            &no_files,
        ));
        assert_eq!(s.main.addr, "0.0.0.0:3300");
        assert_eq!(s.main.tls, Some(("/c.pem".into(), "/k.pem".into())));
    }

    #[test]
    fn loki_reads_port_and_tls_from_its_config_file() {
        let cfg = "auth_enabled: false\n\nserver:\n  http_listen_port: 3101 # c\n  grpc_listen_port: 9096\n  http_tls_config:\n    cert_file: \"/etc/loki/tls/c.pem\"\n    key_file: /etc/loki/tls/k.pem\ncommon:\n  path_prefix: /loki\n";
        let read =
            |p: &Path| (p == Path::new("/etc/loki/local-config.yaml")).then(|| cfg.to_string());
        let s = serve(plan(
            &argv(&[
                "/usr/bin/loki",
                "-config.file=/etc/loki/local-config.yaml",
                "-target=all",
            ]),
            &env(&[]),
            &read,
        ));
        assert_eq!(s.main.addr, "0.0.0.0:3101");
        assert_eq!(
            s.main.tls,
            Some(("/etc/loki/tls/c.pem".into(), "/etc/loki/tls/k.pem".into()))
        );
        let s = serve(plan(
            &argv(&[
                "loki",
                "-config.file",
                "/etc/loki/local-config.yaml",
                "-server.http-listen-port=3999",
            ]),
            &env(&[]),
            &read,
        ));
        assert_eq!(s.main.addr, "0.0.0.0:3999");
        let s = serve(plan(&argv(&["loki"]), &env(&[]), &no_files));
        assert_eq!(
            (s.main.addr.as_str(), s.main.tls.is_none()),
            ("0.0.0.0:3100", true)
        );
    }

    #[test]
    fn cloudflared_version_and_run() {
        assert!(matches!(
            plan(&argv(&["cloudflared", "--no-autoupdate", "version"]), &env(&[]), &no_files),
            Ok(Plan::Print(s)) if s.contains("stand-in")
        ));
        let s = serve(plan(
            &argv(&[
                "cloudflared",
                "--no-autoupdate",
                "tunnel",
                "--metrics",
                "0.0.0.0:2001",
                "run",
                "--token-file",
                "/etc/cloudflared/token",
            ]),
            &env(&[]),
            &no_files,
        ));
        assert_eq!(s.main.addr, "0.0.0.0:2001");
        assert!(
            matches!(s.setup, Setup::Tunnel(r) if r.token_file.as_deref() == Some("/etc/cloudflared/token"))
        );
        // A flag of `tunnel` after `run` is a usage error, as upstream.
        let err = plan(
            &argv(&["cloudflared", "tunnel", "run", "--metrics", "0.0.0.0:2000"]),
            &env(&[]),
            &no_files,
        )
        .unwrap_err();
        assert!(
            err.0.contains("flag provided but not defined: -metrics"),
            "{}",
            err.0
        );
    }

    #[test]
    fn yaml_scalars_tracks_nesting() {
        let m = yaml_scalars("a:\n  b: 1\n  c:\n    d: 'x'\ne: 2\n# comment\nlist:\n  - item\n");
        assert_eq!(m.get("a.b").map(String::as_str), Some("1"));
        assert_eq!(m.get("a.c.d").map(String::as_str), Some("x"));
        assert_eq!(m.get("e").map(String::as_str), Some("2"));
        assert_eq!(m.len(), 3);
    }
}
