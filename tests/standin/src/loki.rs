//! Loki's start, as strict as Loki 3.7: flags it does not define and config keys it does not
//! know (or knows elsewhere) stop it, as `yaml.UnmarshalStrict` does; `compactor` must be
//! consistent with `retention_enabled`, `schema_config` valid, and the directories the config
//! names creatable by the user Loki runs as. The key and flag lists are generated from Loki
//! v3.7.6's configuration reference (`data/`, `tools/loki-config-keys.py`).
//!
//! Not modelled: the meaning of most keys (only the listener, retention, schema and paths
//! matter here), `-config.expand-env`, and components other than the single binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_yaml_ng::Value;

static KEYS: &str = include_str!("../data/loki-keys.txt");
static FLAGS: &str = include_str!("../data/loki-flags.txt");
/// Flags of Loki's main that the configuration reference does not list.
const MAIN_FLAGS: &[&str] = &[
    "-config.file",
    "-config.expand-env",
    "-print-config-stderr",
    "-log-config-reverse-order",
    "-log-config",
    "-verify-config",
    "-list-targets",
    "-version",
    "-health",
    "-health.url",
];

/// What the rest of the stand-in needs from a valid config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    pub http_port: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Directories Loki creates at start (chunks, rules, compactor, WAL, TSDB).
    pub dirs: Vec<PathBuf>,
}

/// Key path (`compactor.retention_enabled`, `schema_config.configs[].from`) to its type.
fn keys() -> &'static BTreeMap<&'static str, &'static str> {
    static K: OnceLock<BTreeMap<&str, &str>> = OnceLock::new();
    K.get_or_init(|| {
        KEYS.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('\t'))
            .collect()
    })
}

/// Refuses a flag Loki does not define, as Go's flag package does.
pub fn check_flags(args: &[String]) -> Result<(), String> {
    static KNOWN: OnceLock<(BTreeSet<&str>, Vec<&str>)> = OnceLock::new();
    let (exact, prefixed) = KNOWN.get_or_init(|| {
        let all = FLAGS.lines().filter(|l| l.starts_with('-'));
        let (p, e): (Vec<&str>, Vec<&str>) = all.partition(|f| f.contains("<prefix>"));
        let tails = p
            .iter()
            .filter_map(|f| f.split_once("<prefix>"))
            .map(|(_, t)| t);
        (
            e.into_iter().chain(MAIN_FLAGS.iter().copied()).collect(),
            tails.collect(),
        )
    });
    for a in args {
        let Some(name) = a.strip_prefix('-') else {
            continue;
        };
        let name = format!("-{}", name.trim_start_matches('-'));
        let name = name.split_once('=').map_or(name.as_str(), |(n, _)| n);
        let known = exact.contains(name) || prefixed.iter().any(|t| name.ends_with(t));
        if !known {
            return Err(format!("flag provided but not defined: {name}"));
        }
    }
    Ok(())
}

/// Parses and validates `text` (the file at `path`) as Loki does at start.
pub fn check_config(path: &str, text: &str) -> Result<Checked, String> {
    let doc: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("failed parsing config: {path}: yaml: {e}"))?;
    let mut errors = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    if !matches!(doc, Value::Mapping(_) | Value::Null) {
        errors.push("line 1: cannot unmarshal the document into loki.ConfigWrapper".to_string());
    } else {
        walk(&doc, "", &lines, 0, &mut errors);
    }
    if !errors.is_empty() {
        return Err(format!(
            "failed parsing config: {path}: yaml: unmarshal errors:\n  {}",
            errors.join("\n  ")
        ));
    }
    validate(&doc)?;
    Ok(Checked {
        http_port: scalar(&doc, &["server", "http_listen_port"]),
        tls: match (
            scalar(&doc, &["server", "http_tls_config", "cert_file"]),
            scalar(&doc, &["server", "http_tls_config", "key_file"]),
        ) {
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            _ => None,
        },
        dirs: dirs(&doc),
    })
}

/// Checks every key of `v` (at `path`) against the reference; `from` is the line to search
/// keys after, so the reported line is the key's own.
fn walk(v: &Value, path: &str, lines: &[&str], from: usize, errors: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            for (k, child) in m {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let line = find_line(lines, from, &key);
                let exact = join(path, &key);
                let any = join(path, "*");
                let (full, kind) = match (keys().get(exact.as_str()), keys().get(any.as_str())) {
                    (Some(t), _) => (exact, *t),
                    (None, Some(t)) => (any, *t),
                    (None, None) => {
                        errors.push(format!(
                            "line {}: field {key} not found in type {}",
                            line + 1,
                            go_type(path)
                        ));
                        continue;
                    }
                };
                match kind {
                    "map" => {
                        if !matches!(child, Value::Mapping(_) | Value::Null) {
                            errors.push(format!(
                                "line {}: cannot unmarshal {} into {}",
                                line + 1,
                                tag(child),
                                go_type(&full)
                            ));
                        } else {
                            walk(child, &full, lines, line, errors);
                        }
                    }
                    "list" => {
                        if let Value::Sequence(items) = child {
                            for item in items {
                                walk(item, &format!("{full}[]"), lines, line, errors);
                            }
                        } else if !child.is_null() {
                            errors.push(format!(
                                "line {}: cannot unmarshal {} into a list ({full})",
                                line + 1,
                                tag(child)
                            ));
                        }
                    }
                    scalar => {
                        if let Some(e) = type_error(scalar, child) {
                            errors.push(format!("line {}: {e}", line + 1));
                        }
                    }
                }
            }
        }
        Value::Null => {}
        // A list element that is a scalar where a block is expected.
        other
            if path.ends_with("[]")
                && keys().keys().any(|k| k.starts_with(&format!("{path}."))) =>
        {
            errors.push(format!(
                "cannot unmarshal {} into {}",
                tag(other),
                go_type(path)
            ));
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The first line at or after `from` that holds `key:` (also as a list item's first key).
fn find_line(lines: &[&str], from: usize, key: &str) -> usize {
    let want = |l: &str| {
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        let t = t.trim_start_matches(['"', '\'']);
        t.strip_prefix(key).is_some_and(|rest| {
            rest.trim_start_matches(['"', '\''])
                .trim_start()
                .starts_with(':')
        })
    };
    (from..lines.len())
        .find(|&i| want(lines[i]))
        .or_else(|| (0..lines.len()).find(|&i| want(lines[i])))
        .unwrap_or(from)
}

/// The Go type Loki unmarshals a block into, as its errors name it.
fn go_type(path: &str) -> String {
    let known = [
        ("", "loki.ConfigWrapper"),
        ("server", "server.Config"),
        ("common", "common.Config"),
        ("common.storage", "common.Storage"),
        ("common.storage.filesystem", "common.FilesystemConfig"),
        ("common.ring", "ring.RingConfig"),
        ("common.ring.kvstore", "kv.Config"),
        ("compactor", "compactor.Config"),
        ("schema_config", "config.SchemaConfig"),
        ("schema_config.configs[]", "config.PeriodConfig"),
        (
            "schema_config.configs[].index",
            "config.IndexPeriodicTableConfig",
        ),
        ("limits_config", "validation.Limits"),
        ("analytics", "analytics.Config"),
        ("storage_config", "storage.Config"),
        ("ruler", "ruler.Config"),
        ("ingester", "ingester.Config"),
        ("querier", "querier.Config"),
        ("query_range", "queryrange.Config"),
        ("frontend", "frontend.Config"),
        ("distributor", "distributor.Config"),
    ];
    known
        .iter()
        .find(|(p, _)| *p == path)
        .map_or_else(|| format!("<{path}>"), |(_, t)| (*t).to_string())
}

fn tag(v: &Value) -> &'static str {
    match v {
        Value::Null => "!!null",
        Value::Bool(_) => "!!bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "!!int",
        Value::Number(_) => "!!float",
        Value::String(_) => "!!str",
        Value::Sequence(_) => "!!seq",
        Value::Mapping(_) => "!!map",
        Value::Tagged(_) => "!!tagged",
    }
}

/// What yaml.v2 says when a scalar does not fit the field's type.
fn type_error(kind: &str, v: &Value) -> Option<String> {
    let show = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    };
    let bad = |into: &str| {
        Some(format!(
            "cannot unmarshal {} `{}` into {into}",
            tag(v),
            show(v)
        ))
    };
    match (kind, v) {
        (_, Value::Null) => None,
        ("boolean", Value::Bool(_)) => None,
        ("boolean", _) => bad("bool"),
        ("int", Value::Number(n)) if n.is_i64() || n.is_u64() => None,
        ("int", _) => bad("int"),
        ("float", Value::Number(_)) => None,
        ("float", _) => bad("float64"),
        ("duration", Value::String(s)) if duration_ok(s) => None,
        ("duration", Value::Number(n)) if n.is_i64() => None,
        ("duration", _) => bad("time.Duration"),
        ("string" | "url" | "daytime" | "time", Value::Sequence(_) | Value::Mapping(_)) => {
            bad("string")
        }
        _ => None,
    }
}

/// Go/Prometheus durations: `30s`, `1h30m`, `24h`, `7d`, `1w` (Loki accepts both syntaxes).
pub fn duration_ok(s: &str) -> bool {
    parse_duration(s).is_some()
}

/// Seconds in a Go or Prometheus duration.
fn parse_duration(s: &str) -> Option<f64> {
    if s == "0" {
        return Some(0.0);
    }
    let mut total = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if n == 0 {
            return None;
        }
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            "y" => 31_536_000.0,
            _ => return None,
        };
        total += value * unit;
        rest = &rest[u..];
    }
    Some(total)
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn scalar(v: &Value, path: &[&str]) -> Option<String> {
    match get(v, path)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Loki's `Validate` for what our config uses: the compactor with retention, the schema.
fn validate(doc: &Value) -> Result<(), String> {
    let fail = |block: &str, e: &str| Err(format!("CONFIG ERROR: invalid {block} config: {e}"));
    let retention = get(doc, &["compactor", "retention_enabled"]) == Some(&Value::Bool(true));
    let store = scalar(doc, &["compactor", "delete_request_store"]).unwrap_or_default();
    if retention && store.is_empty() {
        return fail(
            "compactor",
            "compactor.delete-request-store should be configured when retention is enabled",
        );
    }
    let configs = get(doc, &["schema_config", "configs"])
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    if configs.is_empty() {
        return fail("schema", "must specify at least one schema configuration");
    }
    let mut last_from = String::new();
    for c in &configs {
        let from = scalar(c, &["from"]).unwrap_or_default();
        if from <= last_from {
            return fail(
                "schema",
                "from time in schemas must be distinct and in increasing order",
            );
        }
        last_from = from;
        let schema = scalar(c, &["schema"]).unwrap_or_default();
        let version: Option<u32> = schema.strip_prefix('v').and_then(|n| n.parse().ok());
        if !version.is_some_and(|n| (1..=13).contains(&n)) {
            return fail("schema", "invalid schema version");
        }
        let period = scalar(c, &["index", "period"]).and_then(|p| parse_duration(&p));
        let store = scalar(c, &["store"]).unwrap_or_default();
        if store == "tsdb" && period != Some(86_400.0) {
            return fail(
                "schema",
                "tsdb must always have periodic config for index set to 24h",
            );
        }
        if period.is_some_and(|p| p % 86_400.0 != 0.0) {
            return fail(
                "schema",
                "the table period must be a multiple of 24h (1h for schema v1)",
            );
        }
        if retention && store != "tsdb" && store != "boltdb-shipper" {
            return fail(
                "compactor",
                "retention only works with the tsdb and boltdb-shipper index stores",
            );
        }
    }
    Ok(())
}

/// The directories Loki creates at start, with `common.path_prefix` as the default root.
fn dirs(doc: &Value) -> Vec<PathBuf> {
    let prefix = scalar(doc, &["common", "path_prefix"]).filter(|p| !p.is_empty());
    let under = |sub: &str| prefix.as_ref().map(|p| Path::new(p).join(sub));
    let mut out: Vec<PathBuf> = [
        scalar(
            doc,
            &["common", "storage", "filesystem", "chunks_directory"],
        )
        .or_else(|| scalar(doc, &["storage_config", "filesystem", "directory"]))
        .map(PathBuf::from)
        .or_else(|| under("chunks")),
        scalar(doc, &["common", "storage", "filesystem", "rules_directory"])
            .map(PathBuf::from)
            .or_else(|| under("rules")),
        scalar(doc, &["compactor", "working_directory"])
            .map(PathBuf::from)
            .or_else(|| under("compactor")),
        scalar(doc, &["ingester", "wal", "dir"])
            .map(PathBuf::from)
            .or_else(|| under("wal")),
        scalar(doc, &["ruler", "rule_path"])
            .map(PathBuf::from)
            .or_else(|| under("rules-temp")),
        under("tsdb-index"),
        under("tsdb-cache"),
    ]
    .into_iter()
    .flatten()
    .collect();
    out.dedup();
    out
}

/// Creates the directories (as the user we run as), failing as Loki does when one cannot be.
pub fn make_dirs(dirs: &[PathBuf]) -> Result<(), String> {
    for d in dirs {
        std::fs::create_dir_all(d).map_err(|e| {
            format!(
                "error initialising module: store: mkdir {}: {}",
                d.display(),
                go_error(&e)
            )
        })?;
        let probe = d.join(".atlas-standin-write-check");
        std::fs::write(&probe, b"").map_err(|e| {
            format!(
                "error initialising module: store: open {}: {}",
                probe.display(),
                go_error(&e)
            )
        })?;
        let _ = std::fs::remove_file(probe);
    }
    Ok(())
}

fn go_error(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied",
        std::io::ErrorKind::NotFound => "no such file or directory",
        std::io::ErrorKind::ReadOnlyFilesystem => "read-only file system",
        _ => "input/output error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the installer renders (assets/loki/config.yaml.j2) with TLS on.
    const RENDERED: &str = r#"auth_enabled: false

server:
  http_listen_port: 3100
  grpc_listen_port: 9096
  http_tls_config:
    cert_file: "/etc/loki/tls/loki.crt"
    key_file: "/etc/loki/tls/loki.key"

common:
  instance_addr: 127.0.0.1
  path_prefix: /loki
  replication_factor: 1
  storage:
    filesystem:
      chunks_directory: /loki/chunks
      rules_directory: /loki/rules
  ring:
    kvstore:
      store: inmemory

schema_config:
  configs:
    - from: "2024-01-01"
      store: tsdb
      object_store: filesystem
      schema: v13
      index:
        prefix: index_
        period: 24h

compactor:
  working_directory: /loki/compactor
  compaction_interval: 10m
  retention_enabled: true
  retention_delete_delay: "2h"
  retention_delete_worker_count: 150
  delete_request_store: filesystem

limits_config:
  retention_period: "720h"

analytics:
  reporting_enabled: false
"#;

    #[test]
    fn the_rendered_config_is_accepted() {
        let c = check_config("/etc/loki/local-config.yaml", RENDERED).unwrap();
        assert_eq!(c.http_port.as_deref(), Some("3100"));
        assert_eq!(
            c.tls,
            Some((
                "/etc/loki/tls/loki.crt".into(),
                "/etc/loki/tls/loki.key".into()
            ))
        );
        assert!(c.dirs.contains(&PathBuf::from("/loki/compactor")));
        assert!(c.dirs.contains(&PathBuf::from("/loki/rules-temp")));
    }

    #[test]
    fn unknown_and_misplaced_keys_are_refused_with_their_lines() {
        let bad = RENDERED.replace(
            "  compaction_interval: 10m\n",
            "  compaction_interval: 10m\n  retention_period: 720h\n",
        );
        let e = check_config("/etc/loki/local-config.yaml", &bad).unwrap_err();
        assert!(
            e.starts_with(
                "failed parsing config: /etc/loki/local-config.yaml: yaml: unmarshal errors:"
            ),
            "{e}"
        );
        assert!(
            e.contains("line 35: field retention_period not found in type compactor.Config"),
            "{e}"
        );
        let typo = RENDERED.replace(
            "auth_enabled: false",
            "auth_enabled: false\nanalytic:\n  x: 1",
        );
        let e = check_config("c.yaml", &typo).unwrap_err();
        assert!(
            e.contains("line 2: field analytic not found in type loki.ConfigWrapper"),
            "{e}"
        );
        let deep = RENDERED.replace(
            "        period: 24h",
            "        period: 24h\n        shards: 2",
        );
        let e = check_config("c.yaml", &deep).unwrap_err();
        assert!(
            e.contains("field shards not found in type config.IndexPeriodicTableConfig"),
            "{e}"
        );
    }

    #[test]
    fn values_of_the_wrong_type_are_refused() {
        let bad = RENDERED.replace("retention_enabled: true", "retention_enabled: yes please");
        let e = check_config("c.yaml", &bad).unwrap_err();
        assert!(
            e.contains("cannot unmarshal !!str `yes please` into bool"),
            "{e}"
        );
        let bad = RENDERED.replace(
            "compaction_interval: 10m",
            "compaction_interval: ten minutes",
        );
        assert!(
            check_config("c.yaml", &bad)
                .unwrap_err()
                .contains("into time.Duration")
        );
        let bad = RENDERED.replace("http_listen_port: 3100", "http_listen_port: \"3100\"");
        assert!(
            check_config("c.yaml", &bad)
                .unwrap_err()
                .contains("into int")
        );
    }

    #[test]
    fn retention_needs_a_delete_request_store_and_a_24h_tsdb_period() {
        let bad = RENDERED.replace("  delete_request_store: filesystem\n", "");
        assert_eq!(
            check_config("c.yaml", &bad).unwrap_err(),
            "CONFIG ERROR: invalid compactor config: compactor.delete-request-store should be configured when retention is enabled"
        );
        let bad = RENDERED.replace("period: 24h", "period: 168h");
        assert!(
            check_config("c.yaml", &bad)
                .unwrap_err()
                .contains("set to 24h")
        );
        let bad = RENDERED.replace("schema: v13", "schema: v14");
        assert!(
            check_config("c.yaml", &bad)
                .unwrap_err()
                .contains("invalid schema version")
        );
        let none = "auth_enabled: false\n";
        assert!(
            check_config("c.yaml", none)
                .unwrap_err()
                .contains("at least one schema")
        );
    }

    #[test]
    fn yaml_syntax_errors_name_the_file() {
        let e = check_config(
            "/etc/loki/local-config.yaml",
            "server:\n  http_listen_port: [\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("failed parsing config: /etc/loki/local-config.yaml: yaml:"),
            "{e}"
        );
    }

    #[test]
    fn flags_loki_does_not_define_are_refused() {
        let ok: Vec<String> = [
            "-config.file=/etc/loki/x.yaml",
            "-target=all",
            "-server.http-listen-port",
            "3101",
            "-querier.frontend-client.grpc-max-send-msg-size=5",
        ]
        .map(String::from)
        .to_vec();
        check_flags(&ok).unwrap();
        let e = check_flags(&[
            "--config.file=/x".to_string(),
            "-retention.period=1d".to_string(),
        ])
        .unwrap_err();
        assert_eq!(e, "flag provided but not defined: -retention.period");
    }

    #[test]
    fn durations_in_both_syntaxes() {
        for ok in ["10m", "1h30m", "24h", "7d", "1w", "0", "1.5h", "500ms"] {
            assert!(duration_ok(ok), "{ok}");
        }
        for bad in ["", "h", "10", "ten minutes", "1x"] {
            assert!(!duration_ok(bad), "{bad}");
        }
    }
}
