use std::net::Ipv4Addr;
use std::path::Path;

use super::*;

fn opts(env: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..LoadOptions::default()
    }
}

fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    from_layers(
        Some("atlas.toml"),
        Some(text),
        Path::new("/nonexistent"),
        &opts(env),
    )
    .map(|(c, _)| c)
}

pub(super) fn errors(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    match load_str(text, env) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.diagnostics().iter().map(ToString::to_string).collect(),
    }
}

pub(super) fn has(errs: &[String], want: &str) {
    assert!(
        errs.iter().any(|e| e.contains(want)),
        "no error containing {want:?} in:\n{}",
        errs.join("\n")
    );
}

#[test]
fn default_file_loads_to_builtin() {
    assert_eq!(load_str(DEFAULT_FILE, &[]).unwrap(), Config::builtin());
}

/// "Every setting shown": each key `config show` prints for the defaults is in the file
/// (cloudflared01.enabled is left out on purpose: it follows the token).
#[test]
fn default_file_shows_every_setting() {
    fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                keys(v, &p, out);
                out.push(p);
            }
        }
    }
    let shown: toml::Value = toml::from_str(&to_toml(&Config::builtin())).unwrap();
    let file: toml::Value = toml::from_str(DEFAULT_FILE).unwrap();
    let (mut want, mut have) = (Vec::new(), Vec::new());
    keys(&shown, "", &mut want);
    keys(&file, "", &mut have);
    let missing: Vec<_> = want
        .iter()
        .filter(|k| !have.contains(k) && *k != "instances.cloudflared01.enabled")
        .collect();
    assert!(missing.is_empty(), "assets/atlas.toml lacks {missing:?}");
}

#[test]
fn show_output_loads_back_to_the_same_config() {
    let text = "[instances.grafana02]\nservice = \"grafana\"\n[networks.management]\nipv6 = \"fd00:10:50::1/64\"\n";
    let c = load_str(text, &[]).unwrap();
    assert_eq!(load_str(&to_toml(&c), &[]).unwrap(), c);
}

#[test]
fn shown_file_leaves_cloudflared_to_the_token() {
    let shown = to_toml(&load_str("", &[]).unwrap());
    let with_token = [("ATLAS_CLOUDFLARED_TOKEN", "t")];
    assert!(load_str(&shown, &with_token).unwrap().instances["cloudflared01"].enabled);
    let errs = errors("", &[("ATLAS_CADDY__CLOUDFLARE_API_TOKEN", "zz-secret")]);
    has(
        &errs,
        "ATLAS_CADDY__CLOUDFLARE_API_TOKEN (environment): caddy.cloudflare_api_token: a secret cannot be set as a config key",
    );
    assert!(errs.iter().all(|e| !e.contains("zz-secret")));
}

#[test]
fn syntax_error_has_line_and_column() {
    let errs = errors("[incus]\nproject = \"atlas\"\nstorage_pool = local\n", &[]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("atlas.toml:3:16: TOML syntax error"),
        "{}",
        errs[0]
    );
}

#[test]
fn unknown_keys_have_position_and_suggestion_and_all_are_reported() {
    let text =
        "[prometheus]\nretention_tim = \"15d\"\n\n[caddy]\nhttp_prot = 8080\n[nope]\nx = 1\n";
    let errs = errors(text, &[]);
    assert_eq!(errs.len(), 3, "{errs:?}");
    has(
        &errs,
        "atlas.toml:2:1: prometheus.retention_tim: unknown key `retention_tim`",
    );
    has(&errs, "did you mean `retention_time`?");
    has(
        &errs,
        "atlas.toml:5:1: caddy.http_prot: unknown key `http_prot`",
    );
    has(&errs, "atlas.toml:6:2: nope: unknown key `nope`");
    has(&errs, "valid keys here: incus, caddy");
}

#[test]
fn semantic_errors_carry_path_position_and_fix() {
    let text = "[networks.management]\nipv4 = \"10.50.0.0/24\"\n\n[networks.staging]\nipv4 = \"10.40.0.1/16\"\n\n[instances.loki01]\nmemory = \"2XB\"\ncpu = 0\n";
    let errs = errors(text, &[]);
    has(
        &errs,
        "atlas.toml:2:8: networks.management.ipv4: 10.50.0.0/24 is the network address, not a gateway",
    );
    has(&errs, "e.g. 10.50.0.1/24");
    has(
        &errs,
        "atlas.toml:5:8: networks.staging.ipv4: 10.40.0.0/16 overlaps networks.production.ipv4 (10.40.0.0/24)",
    );
    has(
        &errs,
        "atlas.toml:8:10: instances.loki01.memory: `2XB` has an unknown unit `XB`",
    );
    has(
        &errs,
        "atlas.toml:9:7: instances.loki01.cpu: 0 CPUs is outside 1-64",
    );
}

#[test]
fn bad_cidr_and_public_domain_and_delete_delay() {
    let text = "[networks.testing]\nipv4 = \"10.20.0.300/24\"\n[loki]\nretention_delete_delay = \"1h\"\n[instances.grafana01.web]\ndomain = \"grafana.example.com\"\n";
    let errs = errors(text, &[]);
    has(
        &errs,
        "atlas.toml:2:8: networks.testing.ipv4: `10.20.0.300/24` is not a valid gateway/prefix",
    );
    has(
        &errs,
        "atlas.toml:4:26: loki.retention_delete_delay: 1h is shorter than 2h",
    );
    has(
        &errs,
        "instances.grafana01.web.allowed_ip_range: `grafana.example.com` is a public domain",
    );
    assert!(load_str("[instances.grafana01.web]\ndomain = \"grafana.example.com\"\nallowed_ip_range = [\"203.0.113.0/24\"]\n", &[]).is_ok());
}

#[test]
fn precedence_flag_over_env_over_file() {
    let file = "[incus]\nproject = \"from-file\"\n";
    assert_eq!(load_str(file, &[]).unwrap().incus.project, "from-file");
    let env = [("ATLAS_INCUS__PROJECT", "from-env")];
    assert_eq!(load_str(file, &env).unwrap().incus.project, "from-env");
    let mut o = opts(&env);
    o.project = Some("from-flag".into());
    let (c, _) = from_layers(Some("atlas.toml"), Some(file), Path::new("/"), &o).unwrap();
    assert_eq!(c.incus.project, "from-flag");
}

#[test]
fn env_values_are_typed_and_names_map_to_keys() {
    let env = [
        ("ATLAS_INSTANCES__GRAFANA01__MEMORY", "2GB"),
        ("ATLAS_INSTANCES__STEP_CA01__CPU", "2"),
        ("ATLAS_PROMETHEUS__RETENTION_TIME", "15d"),
        ("ATLAS_MOSQUITTO__USERS", "[\"a\", \"b\"]"),
        ("ATLAS_CADDY__RATE_LIMIT__ENABLED", "false"),
        ("ATLAS_GRAFANA__ADMIN_USER", "1234"),
        (
            "ATLAS_INSTANCES__GRAFANA01__ENVIRONMENT__GF_LOG_LEVEL",
            "debug",
        ),
        ("ATLAS_CONFIG", "/ignored"),
        ("ATLAS_TEST_ANYTHING", "x"),
    ];
    let c = load_str("", &env).unwrap();
    assert_eq!(c.instances["grafana01"].memory.text, "2GB");
    assert_eq!(c.instances["step-ca01"].cpu, 2);
    assert_eq!(c.prometheus.retention_time, "15d");
    assert_eq!(c.mosquitto.users, ["a", "b"]);
    assert!(!c.caddy.rate_limit.enabled);
    assert_eq!(
        c.grafana.admin_user, "1234",
        "a number where text is wanted stays text"
    );
    assert_eq!(
        c.instances["grafana01"].environment["GF_LOG_LEVEL"],
        "debug"
    );
}

#[test]
fn env_variable_naming_no_key_is_an_error_naming_it() {
    let errs = errors(
        "",
        &[
            ("ATLAS_PROMETHEUS__RETENTION", "15d"),
            ("ATLAS_PROJECT", "x"),
        ],
    );
    has(
        &errs,
        "ATLAS_PROMETHEUS__RETENTION (environment): prometheus.retention: unknown key `retention`",
    );
    has(
        &errs,
        "ATLAS_PROJECT (environment): project: unknown key `project`",
    );
    let errs = errors("", &[("ATLAS_NETWORKS__MANAGEMENT__IPV4", "10.50.0.0/24")]);
    has(
        &errs,
        "ATLAS_NETWORKS__MANAGEMENT__IPV4 (environment): networks.management.ipv4: 10.50.0.0/24 is the network address",
    );
}

#[test]
fn new_instance_gets_kind_defaults_and_a_free_address() {
    let text = "[instances.grafana02]\nservice = \"grafana\"\n[instances.prometheus02]\nservice = \"prometheus\"\naddresses = { management = \"10.50.0.21\" }\n[instances.mosquitto01]\nenabled = false\n";
    let c = load_str(text, &[]).unwrap();
    let g = &c.instances["grafana02"];
    assert_eq!(g.cpu, 2);
    assert_eq!(g.memory.text, "1GB");
    assert_eq!(g.volume.as_ref().unwrap().name, "grafana02-data");
    // 10.50.0.21 is taken by prometheus02, so grafana02 moves on to .31.
    assert_eq!(g.nics[0].ipv4, Some(Ipv4Addr::new(10, 50, 0, 31)));
    assert_eq!(
        c.instances["prometheus02"].nics[0].ipv4,
        Some(Ipv4Addr::new(10, 50, 0, 21))
    );
    assert!(!c.instances["mosquitto01"].enabled);
    assert!(c.instances_of(ServiceKind::Mosquitto).is_empty());
}

#[test]
fn new_instance_needs_a_service_and_a_valid_name() {
    let errs = errors(
        "[instances.grafana02]\ncpu = 1\n[instances.2bad]\nservice = \"loki\"\n[instances.loki01]\nservice = \"grafana\"\n",
        &[],
    );
    has(
        &errs,
        "atlas.toml:1:1: instances.grafana02.service: new instance `grafana02` needs a `service`",
    );
    has(
        &errs,
        "instances.2bad: instance name `2bad` must start with a letter",
    );
    has(
        &errs,
        "instances.loki01.service: `loki01` is the built-in loki instance",
    );
}

#[test]
fn a_full_network_is_reported_not_papered_over() {
    let mut text = String::from("[networks.management]\nipv4 = \"10.50.0.1/27\"\n");
    for n in 2..5 {
        text.push_str(&format!("[instances.loki0{n}]\nservice = \"loki\"\n"));
    }
    let errs = errors(&text, &[]);
    // .13 is loki01, .23 loki02; .33 and up are outside a /27.
    has(
        &errs,
        "instances.loki03.addresses.management: no free address left for it on networks.management",
    );
    has(
        &errs,
        "instances.loki04.addresses.management: no free address left",
    );
    assert!(errs.iter().all(|e| !e.contains("loki02")), "{errs:?}");
}

#[test]
fn builtin_addresses_follow_a_renumbered_network() {
    let c = load_str("[networks.management]\nipv4 = \"192.168.50.1/24\"\n", &[]).unwrap();
    assert_eq!(
        c.instances["grafana01"].nics[0].ipv4,
        Some(Ipv4Addr::new(192, 168, 50, 11))
    );
}

#[test]
fn kind_mismatched_settings_are_refused() {
    let text = "[instances.mosquitto01.web]\ndomain = \"mqtt.atlas.localhost\"\n[instances.grafana01]\naddresses = { staging = \"10.30.0.5\" }\n[instances.caddy01]\ntls = true\n";
    let errs = errors(text, &[]);
    has(&errs, "instances.mosquitto01.web: mosquitto has no web UI");
    has(
        &errs,
        "instances.grafana01.addresses.staging: grafana instances have no NIC on `staging`",
    );
    has(
        &errs,
        "instances.caddy01.tls: caddy does not take a step-ca certificate",
    );
}

#[test]
fn inline_secret_is_refused_without_echoing_it() {
    let errs = errors(
        "[cloudflared]\ntoken = \"s3cr3t-value\"\n[caddy]\ncloudflare_api_token = \"other-s3cr3t\"\n",
        &[],
    );
    has(
        &errs,
        "atlas.toml:2:1: cloudflared.token: secrets are not accepted in the config file",
    );
    has(&errs, "set ATLAS_CLOUDFLARED_TOKEN");
    has(
        &errs,
        "caddy.cloudflare_api_token: secrets are not accepted",
    );
    assert!(errs.iter().all(|e| !e.contains("s3cr3t")), "{errs:?}");
}

#[test]
fn secrets_come_from_env_or_file_and_never_show() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tunnel"), "tunnel-secret-123\n").unwrap();
    std::fs::set_permissions(
        dir.path().join("tunnel"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let text = "[cloudflared]\ntoken_file = \"tunnel\"\n";
    let o = opts(&[("ATLAS_CLOUDFLARE_API_TOKEN", "api-secret-456")]);
    let (c, warnings) = from_layers(Some("atlas.toml"), Some(text), dir.path(), &o).unwrap();
    assert_eq!(
        c.secrets.cloudflared_token.as_deref(),
        Some("tunnel-secret-123")
    );
    assert_eq!(
        c.secrets.cloudflare_api_token.as_deref(),
        Some("api-secret-456")
    );
    assert!(
        c.instances["cloudflared01"].enabled,
        "a token enables cloudflared01"
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("chmod 600"), "{warnings:?}");
    for out in [to_toml(&c), to_json(&c).to_string(), format!("{c:?}")] {
        assert!(
            !out.contains("secret-123") && !out.contains("secret-456"),
            "{out}"
        );
        assert!(out.contains("<redacted>"), "{out}");
    }
    std::fs::set_permissions(
        dir.path().join("tunnel"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let (_, warnings) = from_layers(Some("atlas.toml"), Some(text), dir.path(), &o).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn missing_token_file_and_cloudflared_without_token() {
    let errs = errors("[cloudflared]\ntoken_file = \"/nonexistent/tunnel\"\n", &[]);
    has(
        &errs,
        "atlas.toml:2:14: cloudflared.token_file: cannot read token file /nonexistent/tunnel",
    );
    let errs = errors("[instances.cloudflared01]\nenabled = true\n", &[]);
    has(
        &errs,
        "instances.cloudflared01.enabled: cloudflared needs a tunnel token",
    );
    let c = load_str("", &[("ATLAS_CLOUDFLARED_TOKEN", "t")]).unwrap();
    assert!(c.instances["cloudflared01"].enabled);
    assert!(!load_str("", &[]).unwrap().instances["cloudflared01"].enabled);
}

#[test]
fn type_errors_are_collected_too() {
    let errs = errors(
        "[caddy]\nhttp_port = \"eighty\"\n[mosquitto]\nmqtt_port = 70000\n[instances.grafana01]\nenabled = \"yes\"\n",
        &[],
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
    has(&errs, "atlas.toml:2:13: caddy.http_port: invalid type");
    has(&errs, "atlas.toml:4:13: mosquitto.mqtt_port:");
    has(
        &errs,
        "atlas.toml:6:11: instances.grafana01.enabled: invalid type",
    );
}

#[test]
fn durations_schedules_and_duplicates() {
    let text = "[prometheus]\nretention_time = \"30days\"\n[loki]\nretention_period = \"30d\"\n[instances.grafana01.snapshots]\nschedule = \"@fortnightly\"\nexpiry = \"7 days\"\n[instances.loki01.volume]\nname = \"grafana01-data\"\n[mosquitto]\nusers = [\"ok\", \"bad user\"]\n";
    let errs = errors(text, &[]);
    has(
        &errs,
        "prometheus.retention_time: `30days` has an unknown unit",
    );
    has(&errs, "loki.retention_period: `30d` is not in hours form");
    has(
        &errs,
        "instances.grafana01.snapshots.schedule: `@fortnightly`",
    );
    has(&errs, "instances.grafana01.snapshots.expiry: `7 days`");
    has(&errs, "volume `grafana01-data` is also used by");
    has(
        &errs,
        "atlas.toml:11:16: mosquitto.users[1]: `bad user` is not a usable MQTT user name",
    );
}

#[test]
fn no_file_means_defaults_and_missing_explicit_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = LoadOptions {
        cwd: dir.path().to_path_buf(),
        ..LoadOptions::default()
    };
    let l = load(&o).unwrap();
    assert_eq!(l.config, Config::builtin());
    assert!(l.file.is_none());
    let o = LoadOptions {
        file: Some(dir.path().join("nope.toml")),
        ..o
    };
    let e = load(&o).unwrap_err().to_string();
    assert!(
        e.contains("cannot read config file") && e.contains("config init"),
        "{e}"
    );
}

#[test]
fn cluster_placement_member_or_group() {
    let c = load_str(
        "[instances.grafana01]\nmember = \"m2\"\n[instances.loki01]\ngroup = \"storage\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        c.instances["grafana01"].placement,
        Some(Placement::Member("m2".into()))
    );
    assert_eq!(
        c.instances["loki01"]
            .placement
            .as_ref()
            .map(Placement::query),
        Some("@storage".to_string())
    );
    assert_eq!(c.instances["prometheus01"].placement, None);
    // `config show` prints a file that loads back to the same placement.
    let shown = toml::to_string(&raw::RawConfig::from_model(&c)).unwrap();
    assert_eq!(load_str(&shown, &[]).unwrap(), c);

    let errs = errors(
        "[instances.grafana01]\nmember = \"m2\"\ngroup = \"edge\"\n",
        &[],
    );
    has(&errs, "instances.grafana01.group");
    has(&errs, "both `member` and `group` are set");
    let errs = errors("[instances.grafana01]\ngroup = \"@edge\"\n", &[]);
    has(&errs, "write the group name alone: `edge`");
    let errs = errors("[instances.grafana01]\nmember = \"\"\n", &[]);
    has(&errs, "cluster member name `` is empty");
}

#[test]
fn mirrors_must_be_what_they_are_used_as() {
    let errs = errors(
        "[images]\nregistry_mirror = \"https://m.internal\"\ndownload_mirror = \"/srv/dl\"\n",
        &[],
    );
    has(
        &errs,
        "images.registry_mirror: `https://m.internal` is not host[:port]",
    );
    has(
        &errs,
        "images.download_mirror: `/srv/dl` is not an http(s):// URL or a file:/// directory",
    );
    has(&errs, "file:///srv/atlas-downloads");
    let ok = load_str("[images]\ndownload_mirror = \"file:///srv/dl\"\n", &[]).unwrap();
    assert_eq!(ok.images.download_mirror.as_deref(), Some("file:///srv/dl"));
}

#[test]
fn tls_needs_step_ca_reachable_as_localhost() {
    let errs = errors(
        "[step_ca]\ndns_names = [\"step-ca01.incus\"]\n[mosquitto]\ntls = true\n",
        &[],
    );
    has(
        &errs,
        "step_ca.dns_names: lacks \"localhost\", which the installer uses to have step-ca sign certificates (mosquitto.tls is on)",
    );
    let errs = errors(
        "[instances.step-ca01]\nenabled = false\n[instances.loki01]\ntls = true\n",
        &[],
    );
    has(
        &errs,
        "instances.loki01.tls: TLS certificates come from step-ca, which is disabled",
    );
    assert!(
        load_str(
            "[instances.loki01]\ntls = true\n[mosquitto]\ntls = true\n",
            &[]
        )
        .is_ok()
    );
}
