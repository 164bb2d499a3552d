//! Grafana: datasources and our dashboards (see `dashboards`) provisioned from files,
//! everything else through `GF_*` variables (they override grafana.ini, so the image's own
//! ini stays untouched).

use serde_json::json;

use crate::config::ServiceKind;

use super::paths::{expect_root, expect_service_cert, service_cert, step_ca_root};
use super::{Ctx, RenderError, RenderedFile, RenderedInstance, ServiceCommand, hostname};

pub const DATASOURCES: &str = "/etc/grafana/provisioning/datasources/atlas.yaml";
/// Grafana's home (binaries, public assets) and its ini file in the upstream image.
const HOME: &str = "/usr/share/grafana";
const INI: &str = "/etc/grafana/grafana.ini";

fn data_dir<'a>(ctx: &'a Ctx) -> &'a str {
    ctx.inst
        .volume
        .as_ref()
        .map_or("/var/lib/grafana", |v| v.path.as_str())
}

pub(super) fn render(ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    let c = ctx.config;
    let mut out = RenderedInstance::default();
    let env = &mut out.environment;
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_string(), v.to_string());
    };
    set("GF_SECURITY_ADMIN_USER", &c.grafana.admin_user);
    set(
        "GF_SECURITY_ADMIN_PASSWORD",
        &ctx.creds.grafana_admin_password,
    );
    // Air-gapped hosts: no telemetry, no update checks, no plugin downloads at start.
    set("GF_ANALYTICS_REPORTING_ENABLED", "false");
    set("GF_ANALYTICS_CHECK_FOR_UPDATES", "false");
    set("GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES", "false");
    set("GF_ANALYTICS_FEEDBACK_LINKS_ENABLED", "false");
    set("GF_PLUGINS_PREINSTALL_DISABLED", "true");
    set("GF_NEWS_NEWS_FEED_ENABLED", "false");
    set("GF_USERS_ALLOW_SIGN_UP", "false");
    // Grafana's data directory is wherever its volume is mounted.
    set("GF_PATHS_DATA", data_dir(ctx));
    if let Some(web) = &ctx.inst.web {
        set("GF_SERVER_DOMAIN", &web.domain);
        set("GF_SERVER_ROOT_URL", &format!("https://{}/", web.domain));
        set("GF_SERVER_HTTP_PORT", &web.upstream_port.to_string());
    }
    if ctx.inst.tls {
        let (cert, key) = service_cert(ServiceKind::Grafana);
        set("GF_SERVER_PROTOCOL", "https");
        set("GF_SERVER_CERT_FILE", &cert);
        set("GF_SERVER_CERT_KEY", &key);
        out.expected_files
            .extend(expect_service_cert(ServiceKind::Grafana));
    }
    out.secret_env
        .insert("GF_SECURITY_ADMIN_PASSWORD".to_string());

    let mut datasources = Vec::new();
    let mut needs_root = false;
    for (kind, label, port) in [
        (ServiceKind::Prometheus, "Prometheus", 9090),
        (ServiceKind::Loki, "Loki", 3100),
    ] {
        for (i, (name, inst)) in ctx.d.instances_of(kind).into_iter().enumerate() {
            needs_root |= inst.tls;
            datasources.push(json!({
                "name": if i == 0 { label.to_string() } else { format!("{label} ({name})") },
                "uid": super::datasource_uid(name),
                "type": kind.as_str(),
                "url": format!("{}://{}:{port}", if inst.tls { "https" } else { "http" }, hostname(name)),
                // The first Prometheus is the default datasource, as in the seed.
                "is_default": kind == ServiceKind::Prometheus && i == 0,
                "ca_file": inst.tls.then(|| step_ca_root(ServiceKind::Grafana)),
            }));
        }
    }
    let text = ctx.template(
        "grafana/datasources.yaml.j2",
        json!({"instance": ctx.name, "datasources": datasources}),
    )?;
    out.files.push(RenderedFile::config(DATASOURCES, text));
    out.files.extend(super::dashboards::files(ctx.d));
    // What the image's /run.sh ends in (`exec grafana server ...`), run directly: the script
    // only re-exports the GF_PATHS_* variables, which Grafana reads itself.
    out.command = Some(ServiceCommand::plain(&[
        "grafana",
        "server",
        &format!("--homepath={HOME}"),
        &format!("--config={INI}"),
        "--packaging=docker",
        "cfg:default.log.mode=console",
    ]));
    if needs_root {
        out.expected_files.push(expect_root(ServiceKind::Grafana));
    }
    Ok(out)
}
