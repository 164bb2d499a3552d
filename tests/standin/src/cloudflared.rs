//! cloudflared's command line and tunnel token, as strict as cloudflared 2026.8: flags are
//! those its `tunnel` and `run` commands define, each at its own level (`--metrics` belongs
//! to `tunnel`, so after `run` it is refused, as urfave/cli does); `tunnel run` needs a token
//! (`--token`/`TUNNEL_TOKEN`, else `--token-file`/`TUNNEL_TOKEN_FILE`) that decodes as a
//! tunnel token (base64 of JSON `{"a": account, "t": tunnel UUID, "s": base64 secret}`), and
//! exits 1 without one.
//!
//! Connecting: no edge is reachable from a test, so the fixture decides. A token whose
//! account tag is [`FIXTURE_ACCOUNT`], with a tunnel UUID and a non-empty secret, connects
//! its four HA connections [`CONNECT_DELAY`] after start; `/ready` answers 200 from then on.
//! Any other valid token never connects: `/ready` stays 503 with `readyConnections: 0`, as
//! a real cloudflared that cannot reach the edge or is refused by it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

/// The account tag that makes a fixture token connect (see the module docs).
pub const FIXTURE_ACCOUNT: &str = "atlas-fixture";
pub const CONNECT_DELAY: Duration = Duration::from_millis(500);
/// Where the metrics server listens by default in the container build (first free of
/// 20241..20245 upstream; the first here).
pub const DEFAULT_METRICS: &str = "0.0.0.0:20241";

/// Flags of the app and of `tunnel` (the same list upstream: `tunnel.Flags()`), extracted
/// from cloudflared 2026.8.2's cmd/cloudflared/tunnel/cmd.go. Bool flags take no value.
const TUNNEL_BOOL: &[&str] = &[
    "hello-world",
    "http2-origin",
    "is-autoupdated",
    "management-diagnostics",
    "no-autoupdate",
    "no-chunked-encoding",
    "no-prechecks",
    "no-tls-verify",
    "post-quantum",
    "pq",
    "proxy-dns",
    "proxy-no-happy-eyeballs",
    "quic-disable-pmtu-discovery",
    "socks5",
    "stdin-control",
    "ui",
    "use-reconnect-token",
];
const TUNNEL_VALUE: &[&str] = &[
    "api-ca-key",
    "api-email",
    "api-key",
    "api-url",
    "autoupdate-freq",
    "cacert",
    "compression-quality",
    "config",
    "cred-file",
    "credentials-file",
    "dial-edge-timeout",
    "edge",
    "edge-bind-address",
    "edge-ip-version",
    "grace-period",
    "ha-connections",
    "heartbeat-count",
    "heartbeat-interval",
    "hostname",
    "http-host-header",
    "id",
    "label",
    "lb-pool",
    "log-directory",
    "logfile",
    "loglevel",
    "management-hostname",
    "max-edge-addr-retries",
    "max-fetch-size",
    "metrics",
    "metrics-update-freq",
    "n",
    "name",
    "origin-ca-pool",
    "origin-server-name",
    "origincert",
    "pidfile",
    "proto-loglevel",
    "proxy-connect-timeout",
    "proxy-connection-timeout",
    "proxy-dns-address",
    "proxy-dns-bootstrap",
    "proxy-dns-max-upstream-conns",
    "proxy-dns-port",
    "proxy-dns-upstream",
    "proxy-expect-continue-timeout",
    "proxy-keepalive-connections",
    "proxy-keepalive-timeout",
    "proxy-tcp-keepalive",
    "proxy-tls-timeout",
    "quic-connection-level-flow-control-limit",
    "quic-stream-level-flow-control-limit",
    "quick-service",
    "region",
    "retries",
    "rpc-timeout",
    "service-op-ip",
    "tag",
    "trace-output",
    "transport-loglevel",
    "unix-socket",
    "url",
    "write-stream-timeout",
];
/// Flags of `tunnel run` (buildRunCommand in cmd/cloudflared/tunnel/subcommands.go).
const RUN_BOOL: &[&str] = &[
    "hello-world",
    "http2-origin",
    "no-chunked-encoding",
    "no-tls-verify",
    "post-quantum",
    "pq",
    "proxy-no-happy-eyeballs",
    "socks5",
];
const RUN_VALUE: &[&str] = &[
    "F",
    "cred-file",
    "credentials-contents",
    "credentials-file",
    "dns-resolver-addrs",
    "features",
    "http-host-header",
    "icmpv4-src",
    "icmpv6-src",
    "management-hostname",
    "max-active-flows",
    "origin-ca-pool",
    "origin-server-name",
    "p",
    "protocol",
    "proxy-connect-timeout",
    "proxy-connection-timeout",
    "proxy-expect-continue-timeout",
    "proxy-keepalive-connections",
    "proxy-keepalive-timeout",
    "proxy-tcp-keepalive",
    "proxy-tls-timeout",
    "service-op-ip",
    "token",
    "token-file",
    "unix-socket",
    "url",
];

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `version`, `--version`, `-v`: print and exit 0.
    Version,
    /// `tunnel run`: serve metrics and readiness on `metrics`.
    Run(Run),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub metrics: String,
    /// `--token` (or TUNNEL_TOKEN); wins over the file, as upstream.
    pub token: Option<String>,
    pub token_file: Option<String>,
    /// The positional TUNNEL argument (name or UUID), which needs a credentials file.
    pub tunnel_ref: Option<String>,
}

/// A decoded tunnel token (its secret is never printed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub account: String,
    pub tunnel_id: Option<String>,
    pub has_secret: bool,
}

impl Token {
    /// Whether this token reaches the (fixture) edge.
    pub fn connects(&self) -> bool {
        self.account == FIXTURE_ACCOUNT && self.tunnel_id.is_some() && self.has_secret
    }
}

/// Parses `args` (after argv[0]) as cloudflared does; `env` gives TUNNEL_* defaults.
pub fn parse(args: &[String], env: &BTreeMap<String, String>) -> Result<Command, String> {
    let mut flags: BTreeMap<String, String> = BTreeMap::new();
    let mut i = 0;
    let mut level = Level::App;
    let mut positional = Vec::new();
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if let Some(raw) = a.strip_prefix('-').filter(|r| !r.is_empty() && *r != "-") {
            let raw = raw.strip_prefix('-').unwrap_or(raw);
            let (name, inline) = match raw.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (raw, None),
            };
            if level == Level::App && matches!(name, "version" | "v") {
                return Ok(Command::Version);
            }
            let (bools, values) = level.flags();
            let value = if bools.contains(&name) {
                inline.unwrap_or_else(|| "true".to_string())
            } else if values.contains(&name) {
                match inline {
                    Some(v) => v,
                    None if i < args.len() => {
                        i += 1;
                        args[i - 1].clone()
                    }
                    None => {
                        return Err(format!("Incorrect Usage: flag needs an argument: -{name}"));
                    }
                }
            } else {
                return Err(format!(
                    "Incorrect Usage: flag provided but not defined: -{name}"
                ));
            };
            flags.insert(name.to_string(), value);
            continue;
        }
        match (level, a.as_str()) {
            (Level::App, "version") => return Ok(Command::Version),
            (Level::App, "tunnel") => level = Level::Tunnel,
            (Level::Tunnel, "run") => level = Level::Run,
            (Level::Run, _) => positional.push(a.clone()),
            (_, other) => {
                return Err(format!(
                    "atlas stand-in for cloudflared: `{other}` is not a command it stands in for (only `version` and `tunnel run`)"
                ));
            }
        }
    }
    if level != Level::Run {
        return Err(
            "atlas stand-in for cloudflared: only `tunnel run` is stood in for (a quick tunnel needs the edge)"
                .to_string(),
        );
    }
    if positional.len() > 1 {
        return Err(
            "\"cloudflared tunnel run\" accepts only one argument, the ID or name of the tunnel to run."
                .to_string(),
        );
    }
    let from = |flag: &str, var: &str| {
        flags
            .get(flag)
            .cloned()
            .or_else(|| env.get(var).cloned())
            .filter(|v| !v.is_empty())
    };
    Ok(Command::Run(Run {
        metrics: from("metrics", "TUNNEL_METRICS").unwrap_or_else(|| DEFAULT_METRICS.to_string()),
        token: from("token", "TUNNEL_TOKEN"),
        token_file: from("token-file", "TUNNEL_TOKEN_FILE"),
        tunnel_ref: positional.pop(),
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    App,
    Tunnel,
    Run,
}

impl Level {
    fn flags(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Level::App | Level::Tunnel => (TUNNEL_BOOL, TUNNEL_VALUE),
            Level::Run => (RUN_BOOL, RUN_VALUE),
        }
    }
}

/// The token `tunnel run` starts with, or why it exits (upstream's messages).
pub fn token(run: &Run, read: &dyn Fn(&Path) -> Result<String, String>) -> Result<Token, String> {
    let text = match (&run.token, &run.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => read(Path::new(f))
            .map_err(|e| format!("Failed to read token file: open {f}: {e}"))?
            .trim()
            .to_string(),
        (None, None) => String::new(),
    };
    if text.is_empty() {
        return Err(match &run.tunnel_ref {
            None => "\"cloudflared tunnel run\" requires the ID or name of the tunnel to run as the last command line argument or in the configuration file.".to_string(),
            Some(t) => format!(
                "Tunnel credentials file not found for {t}: the atlas stand-in runs tunnels by token only"
            ),
        });
    }
    decode(&text).ok_or_else(|| "Provided Tunnel token is not valid.".to_string())
}

/// `ParseToken`: standard base64 (padded), then JSON into `{a, s, t, e}`: `a` a string, `s`
/// base64 bytes, `t` a UUID; other fields are ignored, as Go's json.Unmarshal does.
fn decode(text: &str) -> Option<Token> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    if v.is_null() {
        return Some(Token {
            account: String::new(),
            tunnel_id: None,
            has_secret: false,
        });
    }
    let obj = v.as_object()?;
    let account = match obj.get("a") {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(a) => a.as_str()?.to_string(),
    };
    let has_secret = match obj.get("s") {
        None | Some(serde_json::Value::Null) => false,
        Some(s) => !base64::engine::general_purpose::STANDARD
            .decode(s.as_str()?)
            .ok()?
            .is_empty(),
    };
    let tunnel_id = match obj.get("t") {
        None | Some(serde_json::Value::Null) => None,
        Some(t) => Some(uuid(t.as_str()?)?),
    };
    Some(Token {
        account,
        tunnel_id,
        has_secret,
    })
}

/// A UUID in one of the text forms google/uuid accepts; `None` (invalid) otherwise. The nil
/// UUID counts as no tunnel ID.
fn uuid(s: &str) -> Option<String> {
    let s = s
        .strip_prefix("urn:uuid:")
        .unwrap_or(s)
        .trim_start_matches('{')
        .trim_end_matches('}');
    let hex: String = match s.len() {
        36 => {
            let dashes = [8, 13, 18, 23];
            if !dashes.iter().all(|&i| s.as_bytes()[i] == b'-') {
                return None;
            }
            s.chars().filter(|c| *c != '-').collect()
        }
        32 => s.to_string(),
        _ => return None,
    };
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (hex.chars().any(|c| c != '0')).then(|| hex.to_ascii_lowercase())
}

/// A fixture token that connects.
#[cfg(test)]
pub fn fixture_token(tunnel_id: &str) -> String {
    let json = serde_json::json!({
        "a": FIXTURE_ACCOUNT,
        "t": tunnel_id,
        "s": base64::engine::general_purpose::STANDARD.encode(b"atlas fixture tunnel secret"),
    });
    base64::engine::general_purpose::STANDARD.encode(json.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6a9e2d7e-9c48-401b-bdfd-ab219d3d4df5";

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn run(a: &[&str], env: &[(&str, &str)]) -> Result<Run, String> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(&args(a), &env)? {
            Command::Run(r) => Ok(r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_the_installer_renders_is_accepted() {
        let r = run(
            &[
                "--no-autoupdate",
                "tunnel",
                "--metrics",
                "0.0.0.0:2000",
                "run",
                "--token-file",
                "/etc/cloudflared/token",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(r.metrics, "0.0.0.0:2000");
        assert_eq!(r.token_file.as_deref(), Some("/etc/cloudflared/token"));
        assert_eq!(r.token, None);
    }

    #[test]
    fn flags_at_the_wrong_level_or_unknown_are_refused() {
        let e = run(&["tunnel", "run", "--metrics", "0.0.0.0:2000"], &[]).unwrap_err();
        assert_eq!(
            e,
            "Incorrect Usage: flag provided but not defined: -metrics"
        );
        let e = run(&["tunnel", "--token-file", "/x", "run"], &[]).unwrap_err();
        assert!(e.contains("not defined: -token-file"), "{e}");
        let e = run(&["--no-autoupdat", "tunnel", "run"], &[]).unwrap_err();
        assert!(e.contains("not defined: -no-autoupdat"), "{e}");
        assert!(
            run(&["tunnel", "run", "--token-file"], &[])
                .unwrap_err()
                .contains("needs an argument")
        );
        assert!(run(&["tunnel", "list"], &[]).is_err());
        assert!(run(&["tunnel"], &[]).is_err());
        assert_eq!(
            parse(&args(&["--no-autoupdate", "version"]), &BTreeMap::new()),
            Ok(Command::Version)
        );
        assert_eq!(
            parse(&args(&["--version"]), &BTreeMap::new()),
            Ok(Command::Version)
        );
    }

    #[test]
    fn the_token_comes_from_flag_env_or_file_and_must_decode() {
        let files = |p: &Path| match p.to_str() {
            Some("/t") => Ok(format!("{}\n", fixture_token(ID))),
            Some("/empty") => Ok("\n".to_string()),
            _ => Err("no such file or directory".to_string()),
        };
        let r = run(&["tunnel", "run", "--token-file", "/t"], &[]).unwrap();
        let t = token(&r, &files).unwrap();
        assert!(t.connects(), "{t:?}");
        assert_eq!(
            t.tunnel_id.as_deref(),
            Some("6a9e2d7e9c48401bbdfdab219d3d4df5")
        );
        // TUNNEL_TOKEN wins over the file, as --token does.
        let r = run(
            &["tunnel", "run", "--token-file", "/t"],
            &[("TUNNEL_TOKEN", "not base64!")],
        )
        .unwrap();
        assert_eq!(
            token(&r, &files).unwrap_err(),
            "Provided Tunnel token is not valid."
        );
        let r = run(&["tunnel", "run"], &[("TUNNEL_TOKEN_FILE", "/missing")]).unwrap();
        assert_eq!(
            token(&r, &files).unwrap_err(),
            "Failed to read token file: open /missing: no such file or directory"
        );
        for missing in [
            run(&["tunnel", "run"], &[]),
            run(&["tunnel", "run", "--token-file", "/empty"], &[]),
        ] {
            assert!(
                token(&missing.unwrap(), &files)
                    .unwrap_err()
                    .contains("requires the ID or name of the tunnel")
            );
        }
    }

    #[test]
    fn only_fixture_tokens_connect() {
        let enc =
            |v: serde_json::Value| base64::engine::general_purpose::STANDARD.encode(v.to_string());
        let secret = base64::engine::general_purpose::STANDARD.encode(b"s3cret");
        let real = decode(&enc(
            serde_json::json!({"a": "0123abcd", "t": ID, "s": secret}),
        ))
        .unwrap();
        assert!(!real.connects());
        let no_secret = decode(&enc(serde_json::json!({"a": FIXTURE_ACCOUNT, "t": ID}))).unwrap();
        assert!(!no_secret.connects());
        assert!(
            decode(&enc(serde_json::json!({}))).is_some(),
            "Go accepts an empty object"
        );
        assert!(decode(&enc(serde_json::json!({"t": "not-a-uuid"}))).is_none());
        assert!(decode(&enc(serde_json::json!({"s": "%%%"}))).is_none());
        assert!(decode(&enc(serde_json::json!({"a": 5}))).is_none());
        assert!(decode(&enc(serde_json::json!([1]))).is_none());
        assert!(decode("eyJhIjoi").is_none(), "truncated base64");
    }
}
