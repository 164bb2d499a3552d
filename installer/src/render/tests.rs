//! Pure-logic tests of the renderer: determinism, redaction and the errors for configs it
//! cannot render. (Output checked by the real tools lives in tests/it/render.rs.)

use std::collections::BTreeMap;

use super::*;
use crate::config::{Config, TlsIssuer};

// These tests are about what the config does: on a single server, the deployment is the
// config as it is.
fn render(c: &Config, cr: &Credentials) -> Result<RenderedSet, RenderError> {
    super::render(&Deployment::standalone(c), cr)
}

fn profiles(c: &Config) -> Result<Vec<ProfileSpec>, RenderError> {
    super::profiles(&Deployment::standalone(c))
}

fn instance_devices(c: &Config, instance: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    super::instance_devices(&Deployment::standalone(c), instance)
}

/// Why `c` cannot be rendered with the test credentials.
fn render_error(c: &Config) -> String {
    render(c, &creds()).unwrap_err().to_string()
}

/// Why `c`'s profiles cannot be rendered.
fn profiles_error(c: &Config) -> String {
    profiles(c).unwrap_err().to_string()
}

/// How grafana01 is served on the web.
fn grafana_web(c: &mut Config) -> &mut crate::config::WebRoute {
    c.instances
        .get_mut("grafana01")
        .unwrap()
        .web
        .as_mut()
        .unwrap()
}

/// Asserts that `err` says every one of `parts`.
fn assert_says(err: &str, parts: &[&str]) {
    assert!(parts.iter().all(|p| err.contains(p)), "{err}");
}

fn creds() -> Credentials {
    Credentials {
        grafana_admin_password: "gpw-secret".into(),
        step_ca_password: "spw-secret".into(),
        mosquitto: BTreeMap::from([(
            "atlas".to_string(),
            MqttCredential {
                password: "mpw-secret".into(),
                salt: [3; 12],
            },
        )]),
    }
}

#[test]
fn same_inputs_give_identical_bytes() {
    let c = Config::builtin();
    assert_eq!(render(&c, &creds()).unwrap(), render(&c, &creds()).unwrap());
    assert_eq!(profiles(&c).unwrap(), profiles(&c).unwrap());
}

#[test]
fn salt_and_password_change_the_password_file() {
    let c = Config::builtin();
    let file = |cr: &Credentials| {
        let set = render(&c, cr).unwrap();
        set.instances["mosquitto01"]
            .files
            .iter()
            .find(|f| f.path == mosquitto::PASSWORD_FILE)
            .unwrap()
            .contents
            .clone()
    };
    let base = file(&creds());
    let mut other_salt = creds();
    other_salt.mosquitto.get_mut("atlas").unwrap().salt = [4; 12];
    let mut other_pw = creds();
    other_pw.mosquitto.get_mut("atlas").unwrap().password = "other".into();
    assert_ne!(base, file(&other_salt));
    assert_ne!(base, file(&other_pw));
    assert!(
        !String::from_utf8_lossy(&base).contains("mpw-secret"),
        "only the hash is stored"
    );
}

#[test]
fn debug_output_never_shows_secrets() {
    let mut c = Config::builtin();
    c.secrets.cloudflare_api_token = Some("cf-secret".into());
    let set = render(&c, &creds()).unwrap();
    let shown = format!("{set:?} {:?}", creds());
    for secret in ["gpw-secret", "spw-secret", "mpw-secret", "cf-secret"] {
        assert!(!shown.contains(secret), "{secret} leaked into Debug output");
    }
    assert!(set.instances["caddy01"].secret_env.contains("CF_API_TOKEN"));
    assert!(
        set.instances["grafana01"]
            .secret_env
            .contains("GF_SECURITY_ADMIN_PASSWORD")
    );
}

#[test]
fn files_with_secrets_are_private_to_the_service_user() {
    let set = render(&Config::builtin(), &creds()).unwrap();
    let secrets: Vec<&RenderedFile> = set
        .instances
        .values()
        .flat_map(|i| &i.files)
        .filter(|f| f.secret)
        .collect();
    assert_eq!(
        secrets.len(),
        2,
        "step-ca password and the Mosquitto password file"
    );
    for f in secrets {
        assert_eq!(f.mode, 0o600, "{}", f.path);
        assert_ne!(f.uid, 0, "{} must belong to the service user", f.path);
    }
    for f in set.instances.values().flat_map(|i| &i.files) {
        assert!(f.path.starts_with('/'), "{} is not absolute", f.path);
    }
}

#[test]
fn instance_environment_overrides_ours() {
    let mut c = Config::builtin();
    c.instances
        .get_mut("grafana01")
        .unwrap()
        .environment
        .insert("GF_ANALYTICS_REPORTING_ENABLED".into(), "true".into());
    let set = render(&c, &creds()).unwrap();
    assert_eq!(
        set.instances["grafana01"].environment["GF_ANALYTICS_REPORTING_ENABLED"],
        "true"
    );
}

#[test]
fn disabled_instances_are_not_rendered() {
    let set = render(&Config::builtin(), &creds()).unwrap();
    assert!(!set.instances.contains_key("cloudflared01"));
    assert_eq!(set.instances.len(), 8);
}

#[test]
fn cloudflared_without_token_names_the_fix() {
    let mut c = Config::builtin();
    c.instances.get_mut("cloudflared01").unwrap().enabled = true;
    let err = render_error(&c);
    assert!(
        err.starts_with("cloudflared01 needs a Cloudflare tunnel token"),
        "{err}"
    );
    assert_says(
        &err,
        &[
            "cloudflared.token_file",
            "instances.cloudflared01.enabled = false",
        ],
    );
}

#[test]
fn missing_mqtt_credential_is_an_error() {
    let mut c = Config::builtin();
    c.mosquitto.users.push("sensors".into());
    let err = render_error(&c);
    assert_says(&err, &["mosquitto01", "`sensors`"]);
}

#[test]
fn caddy_without_internal_addresses_is_an_error() {
    let mut c = Config::builtin();
    for nic in &mut c.instances.get_mut("caddy01").unwrap().nics {
        nic.ipv4 = None;
    }
    let err = render_error(&c);
    assert_eq!(
        err,
        "caddy01 needs a fixed IPv4 address on its management network (Caddy serves its metrics there for Prometheus); \
         set instances.caddy01.nics[1].ipv4 in atlas.toml"
    );
}

#[test]
fn step_ca_issuer_needs_step_ca() {
    let mut c = Config::builtin();
    c.caddy.tls_fallback = TlsIssuer::StepCa;
    c.instances.get_mut("step-ca01").unwrap().enabled = false;
    let err = render_error(&c);
    assert!(
        err.starts_with("caddy01 needs an enabled step-ca instance"),
        "{err}"
    );
    assert!(err.contains("caddy.tls_fallback = \"internal\""), "{err}");
}

#[test]
fn shared_profiles_must_agree_on_limits() {
    let mut c = Config::builtin();
    let mut g2 =
        crate::config::default_instance(ServiceKind::Grafana, "grafana02", &c.networks, 10);
    g2.cpu = 4;
    c.instances.insert("grafana02".into(), g2);
    let err = profiles_error(&c);
    assert_eq!(
        err,
        "profile `grafana` is shared by grafana01 and grafana02, which differ in cpu; \
         give one of them its own `profile` name in atlas.toml"
    );
    // With its own profile it renders, and the addresses stay in each profile.
    c.instances.get_mut("grafana02").unwrap().profile = "grafana02".into();
    let p = profiles(&c).unwrap();
    let g2 = p.iter().find(|p| p.name == "grafana02").unwrap();
    assert_eq!(g2.config["limits.cpu"], "4");
    assert_eq!(g2.devices["eth0"]["ipv4.address"], "10.50.0.21");
    assert!(instance_devices(&c, "grafana02").is_empty());
}

#[test]
fn host_ports_cannot_be_shared() {
    let mut c = Config::builtin();
    let m2 =
        crate::config::default_instance(ServiceKind::Mosquitto, "mosquitto02", &c.networks, 10);
    c.instances.insert("mosquitto02".into(), m2);
    let err = profiles_error(&c);
    assert_says(&err, &["mosquitto01 and mosquitto02", "host ports"]);
}

#[test]
fn retention_goes_to_flags_and_config() {
    let mut c = Config::builtin();
    c.prometheus.retention_time = "7d".into();
    c.prometheus.retention_size = Some("90GB".to_string().try_into().unwrap());
    c.loki.retention_period = "168h".into();
    let set = render(&c, &creds()).unwrap();
    let cmd = set.instances["prometheus01"].command.clone().unwrap().argv;
    assert!(
        cmd.contains(&"--storage.tsdb.retention.time=7d".to_string()),
        "{cmd:?}"
    );
    assert!(
        cmd.contains(&"--storage.tsdb.retention.size=90GB".to_string()),
        "{cmd:?}"
    );
    let loki = String::from_utf8_lossy(&set.instances["loki01"].files[0].contents).into_owned();
    assert!(loki.contains("  retention_period: \"168h\"\n"), "{loki}");
}

#[test]
fn digest_is_stable_and_sees_every_change() {
    let c = Config::builtin();
    let a = render(&c, &creds()).unwrap();
    let b = render(&c, &creds()).unwrap();
    for (name, inst) in &a.instances {
        assert_eq!(inst.digest(), b.instances[name].digest(), "{name}");
        assert_eq!(inst.digest().len(), 64);
    }
    let base = a.instances["prometheus01"].clone();
    let mut content = base.clone();
    content.files[0].contents.push(b' ');
    let mut mode = base.clone();
    mode.files[0].mode = 0o600;
    let mut env = base.clone();
    env.environment.insert("X".into(), "1".into());
    let mut cmd = base.clone();
    cmd.command.as_mut().unwrap().argv.push("--x".into());
    let mut wrapper = base.clone();
    wrapper.command.as_mut().unwrap().wrapper.push("/x".into());
    for (what, changed) in [
        ("content", content),
        ("mode", mode),
        ("env", env),
        ("command", cmd),
        ("wrapper", wrapper),
    ] {
        assert_ne!(base.digest(), changed.digest(), "{what} change not seen");
    }
}

#[test]
fn values_that_would_break_a_caddyfile_are_refused() {
    let mut c = Config::builtin();
    grafana_web(&mut c).login_paths.push("/log in".into());
    let err = render_error(&c);
    assert!(
        err.starts_with("instances.grafana01.web.login_paths = \"/log in\" cannot be used"),
        "{err}"
    );
    let mut c = Config::builtin();
    grafana_web(&mut c).domain = "grafana.example.org {".into();
    assert!(render_error(&c).starts_with("instances.grafana01.web.domain"));
}

#[test]
fn mqtt_user_names_cannot_split_the_password_file() {
    let mut c = Config::builtin();
    c.mosquitto.users = vec!["a:b".into()];
    let mut cr = creds();
    cr.mosquitto.insert(
        "a:b".into(),
        MqttCredential {
            password: "x".into(),
            salt: [0; 12],
        },
    );
    let err = render(&c, &cr).unwrap_err().to_string();
    assert!(err.contains("cannot contain `:`"), "{err}");
}

/// With the default settings, the command line each recipe bakes into its image is the one
/// the render produces, so a service runs right even where only the image's own command
/// runs (a converted image, `incus launch`): cloudflared reads the token file the installer
/// pushes, Loki the config it renders.
#[test]
fn recipes_run_the_rendered_command_by_default() {
    let mut c = Config::builtin();
    c.secrets.cloudflared_token = Some("t0ken".into());
    c.instances.get_mut("cloudflared01").unwrap().enabled = true;
    let set = render(&c, &creds()).unwrap();
    for (instance, service) in [("cloudflared01", "cloudflared"), ("loki01", "loki")] {
        let rendered = set.instances[instance]
            .command
            .clone()
            .unwrap_or_else(|| panic!("{instance} renders a command"));
        let recipe = atlas_image::recipe::Recipe::embedded_for(service)
            .unwrap()
            .unwrap();
        let baked: Vec<String> = recipe
            .config
            .entrypoint
            .iter()
            .chain(&recipe.config.cmd)
            .flatten()
            .cloned()
            .collect();
        let rendered: Vec<String> = rendered
            .wrapper
            .iter()
            .chain(&rendered.argv)
            .cloned()
            .collect();
        assert_eq!(baked, rendered, "images/{service}.toml");
    }
}
