//! `atlas-install config ...` through the real binary: broken files are refused with a
//! message that names the place and the problem, and nothing is written.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use crate::common::*;

/// Runs `config validate` on `text` written to a fresh atlas.toml.
fn validate(text: &str) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("atlas.toml"), text).unwrap();
    let o = run(atlas().current_dir(dir.path()).args(["config", "validate"]));
    (o, dir)
}

/// The file must be refused (exit 1, nothing on stdout) with `want` in the message.
fn refused(text: &str, want: &[&str]) {
    let before = text.to_string();
    let (o, dir) = validate(text);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "not refused:\n{err}");
    assert!(!stdout(&o).contains("ok:"), "{}", stdout(&o));
    for w in want {
        assert!(err.contains(w), "missing {w:?} in:\n{err}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("atlas.toml")).unwrap(),
        before,
        "validate changed the file"
    );
}

#[test]
fn syntax_error_is_refused_with_line_and_column() {
    refused(
        "[incus]\nproject = atlas\n",
        &["error: atlas.toml:2:11: TOML syntax error"],
    );
}

#[test]
fn unknown_key_is_refused_with_position_and_suggestion() {
    refused(
        "[loki]\nretention_period = \"720h\"\nretention_delay = \"2h\"\n",
        &[
            "atlas.toml:3:1: loki.retention_delay: unknown key `retention_delay`",
            "did you mean `retention_delete_delay`?",
        ],
    );
}

#[test]
fn bad_cidr_is_refused() {
    refused(
        "[networks.management]\nipv4 = \"10.50.0.1\"\n",
        &[
            "atlas.toml:2:8: networks.management.ipv4: `10.50.0.1` has no prefix length",
            "like 10.50.0.1/24",
        ],
    );
    refused(
        "[networks.management]\nipv4 = \"10.50.0.0/24\"\n",
        &["10.50.0.0/24 is the network address, not a gateway"],
    );
}

/// Ranges a bridge cannot use are refused at the key, saying what the range is.
#[test]
fn loopback_multicast_link_local_and_unspecified_ranges_are_refused() {
    for (cidr, why) in [
        ("127.0.0.1/8", "127.0.0.0/8, which is loopback"),
        ("224.0.0.1/24", "224.0.0.0/4, which is multicast"),
        ("169.254.3.1/24", "169.254.0.0/16, which is link-local"),
        ("0.0.0.1/24", "0.0.0.0/8, which is unspecified"),
    ] {
        refused(
            &format!("[networks.management]\nipv4 = \"{cidr}\"\n"),
            &[
                "atlas.toml:2:8: networks.management.ipv4: ",
                why,
                "use a private range",
            ],
        );
    }
}

#[test]
fn overlapping_networks_are_refused() {
    refused(
        "[networks.testing]\nipv4 = \"10.10.0.129/25\"\n",
        &[
            "atlas.toml:2:8: networks.testing.ipv4: 10.10.0.128/25 overlaps networks.development.ipv4 (10.10.0.0/24)",
        ],
    );
}

#[test]
fn bad_size_and_cpu_are_refused() {
    refused(
        "[instances.prometheus01]\nmemory = \"2 gigs\"\ncpu = 65\n[instances.prometheus01.volume]\nsize = \"100\"\n",
        &[
            "atlas.toml:2:10: instances.prometheus01.memory:",
            "atlas.toml:3:7: instances.prometheus01.cpu: 65 CPUs is outside 1-64",
            "atlas.toml:5:8: instances.prometheus01.volume.size: `100` has no unit",
            "3 problems found",
        ],
    );
}

#[test]
fn public_domain_without_allowlist_is_refused() {
    refused(
        "[instances.grafana01.web]\ndomain = \"grafana.example.com\"\n",
        &[
            "instances.grafana01.web.allowed_ip_range: `grafana.example.com` is a public domain",
            "allowed_ip_range = [",
        ],
    );
}

#[test]
fn short_loki_delete_delay_is_refused() {
    refused(
        "[loki]\nretention_delete_delay = \"30m\"\n",
        &[
            "atlas.toml:2:26: loki.retention_delete_delay: 30m is shorter than 2h",
            "set it to 2h or more",
        ],
    );
}

#[test]
fn valid_file_says_ok() {
    let (o, dir) = validate(
        "[prometheus]\nretention_time = \"15d\"\n\n[instances.grafana02]\nservice = \"grafana\"\n",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "ok: atlas.toml");
    drop(dir);
    let empty = tempfile::tempdir().unwrap();
    let o = run(atlas()
        .current_dir(empty.path())
        .args(["config", "validate"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "ok: embedded defaults");
}

#[test]
fn unknown_atlas_variable_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(atlas()
        .current_dir(dir.path())
        .env("ATLAS_PROMETHEUS__RETENTON_TIME", "15d")
        .args(["config", "validate"]));
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(
            "ATLAS_PROMETHEUS__RETENTON_TIME (environment): prometheus.retenton_time: unknown key"
        ),
        "{err}"
    );
    assert!(err.contains("did you mean `retention_time`?"), "{err}");
}

fn show_project(dir: &Path, env: Option<&str>, flag: Option<&str>) -> String {
    let mut cmd = atlas();
    cmd.current_dir(dir).args(["config", "show", "--json"]);
    if let Some(e) = env {
        cmd.env("ATLAS_INCUS__PROJECT", e);
    }
    if let Some(f) = flag {
        cmd.args(["--project", f]);
    }
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("show --json prints JSON");
    v["incus"]["project"].as_str().unwrap().to_string()
}

#[test]
fn project_precedence_is_flag_then_env_then_file_then_default() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(show_project(dir.path(), None, None), "atlas");
    std::fs::write(
        dir.path().join("atlas.toml"),
        "[incus]\nproject = \"from-file\"\n",
    )
    .unwrap();
    assert_eq!(show_project(dir.path(), None, None), "from-file");
    assert_eq!(show_project(dir.path(), Some("from-env"), None), "from-env");
    assert_eq!(
        show_project(dir.path(), Some("from-env"), Some("from-flag")),
        "from-flag"
    );
}

#[test]
fn config_flag_and_atlas_config_pick_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("other.toml"),
        "[incus]\nproject = \"other\"\n",
    )
    .unwrap();
    let path = dir.path().join("other.toml");
    let o = run(atlas()
        .args(["config", "show", "--json", "--config"])
        .arg(&path));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"project\": \"other\""));
    let o = run(atlas()
        .env("ATLAS_CONFIG", &path)
        .args(["config", "show", "--json"]));
    assert!(
        stdout(&o).contains("\"project\": \"other\""),
        "{}",
        stderr(&o)
    );
    let o = run(atlas()
        .args(["config", "validate", "--config"])
        .arg(dir.path().join("missing.toml")));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read config file"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn init_writes_the_defaults_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("atlas.toml");
    let o = run(atlas()
        .current_dir(dir.path())
        .args(["config", "init", "--out"])
        .arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);

    // Round trip: the written file is exactly the defaults, as `show` of no file at all.
    let empty = tempfile::tempdir().unwrap();
    let defaults = run(atlas().current_dir(empty.path()).args(["config", "show"]));
    let from_file = run(atlas().current_dir(dir.path()).args(["config", "show"]));
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    assert_eq!(stdout(&from_file), stdout(&defaults));
    assert!(stdout(&defaults).contains("[instances.grafana01]"));

    std::fs::write(&out, "# mine\n").unwrap();
    let o = run(atlas()
        .current_dir(dir.path())
        .args(["config", "init", "--out"])
        .arg(&out));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("already exists") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "# mine\n",
        "init overwrote without --force"
    );
    let o = run(atlas()
        .current_dir(dir.path())
        .args(["config", "init", "--force", "--out"])
        .arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("[instances.grafana01]")
    );
}

#[test]
fn show_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tunnel");
    std::fs::write(&token_file, "tunnel-token-zq81\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(
        dir.path().join("atlas.toml"),
        "[cloudflared]\ntoken_file = \"tunnel\"\n",
    )
    .unwrap();
    for json in [false, true] {
        let mut cmd = atlas();
        cmd.current_dir(dir.path())
            .env("ATLAS_CLOUDFLARE_API_TOKEN", "cf-api-token-x7k2")
            .args(["config", "show"]);
        if json {
            cmd.arg("--json");
        }
        let o = run(&mut cmd);
        assert!(o.status.success(), "{}", stderr(&o));
        let (out, err) = (stdout(&o), stderr(&o));
        for secret in ["cf-api-token-x7k2", "tunnel-token-zq81"] {
            assert!(
                !out.contains(secret) && !err.contains(secret),
                "secret leaked:\n{out}\n{err}"
            );
        }
        assert!(out.contains("<redacted>"), "{out}");
        // The tunnel token enabled cloudflared01; the loose mode earned a warning.
        assert!(
            err.contains("warning: cloudflared.token_file") && err.contains("chmod 600"),
            "{err}"
        );
    }
    let o = run(atlas()
        .current_dir(dir.path())
        .args(["config", "show", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["instances"]["cloudflared01"]["enabled"], true);
    assert_eq!(v["secrets"]["cloudflare_api_token"], "<unset>");
    assert_eq!(v["secrets"]["cloudflared_token"], "<redacted>");
}

#[test]
fn inline_secret_is_refused_and_not_echoed() {
    refused(
        "[cloudflared]\ntoken = \"eyJhIjoiinline-secret\"\n",
        &[
            "atlas.toml:2:1: cloudflared.token: secrets are not accepted in the config file",
            "ATLAS_CLOUDFLARED_TOKEN",
        ],
    );
    let (o, _dir) = validate("[cloudflared]\ntoken = \"eyJhIjoiinline-secret\"\n");
    assert!(!stderr(&o).contains("inline-secret") && !stdout(&o).contains("inline-secret"));
}
