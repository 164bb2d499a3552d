//! Prometheus: prometheus.yml with every scrape job of the seed, the ten alert rules, and the
//! command line (retention lives in flags: Prometheus before 3.8 has no config-file form).

use serde_json::{Value, json};

use crate::config::{Instance, NetworkRole, ServiceKind};

use super::paths::*;
use super::step_ca::STEP_CA_METRICS_PORT;
use super::templates::ALERT_RULES;
use super::{
    Ctx, ExpectedFile, FileSource, RenderError, RenderedFile, RenderedInstance, ServiceCommand,
    hostname, targets,
};

pub const CONFIG: &str = "/etc/prometheus/prometheus.yml";
pub const RULES: &str = "/etc/prometheus/rules/atlas-alerts.yml";
pub const WEB_CONFIG: &str = "/etc/prometheus/web.yml";

pub(super) fn render(ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    let c = ctx.config;
    let mut out = RenderedInstance::default();
    let root = step_ca_root(ServiceKind::Prometheus);
    let mut jobs = Vec::new();

    // Self: over TLS the certificate names <instance>.incus, not localhost.
    let self_tls = ctx
        .inst
        .tls
        .then(|| json!({"ca_file": root, "server_name": hostname(ctx.name)}));
    jobs.push(job(
        "prometheus",
        ctx.inst.tls,
        "/metrics",
        vec!["localhost:9090".to_string()],
        self_tls,
    ));

    for (kind, port) in [(ServiceKind::Grafana, 3000), (ServiceKind::Loki, 3100)] {
        jobs.extend(jobs_by_tls(
            ctx.d.instances_of(kind),
            kind.as_str(),
            port,
            &root,
        ));
    }
    let caddy = targets(ctx.d, ServiceKind::Caddy, c.caddy.admin_port);
    if !caddy.is_empty() {
        jobs.push(job("caddy", false, "/metrics", caddy, None));
    }
    // step-ca's API port (9000) answers /health with JSON, which Prometheus cannot parse; its
    // Prometheus metrics come from a separate plain-HTTP listener (`metricsAddress` in ca.json).
    let step_ca = targets(ctx.d, ServiceKind::StepCa, STEP_CA_METRICS_PORT);
    if !step_ca.is_empty() {
        jobs.push(job("step-ca", false, "/metrics", step_ca, None));
    }
    jobs.extend(node_exporter_job(ctx.d));
    let alertmanager = targets(ctx.d, ServiceKind::Alertmanager, 9093);
    if !alertmanager.is_empty() {
        jobs.push(job("alertmanager", false, "/metrics", alertmanager, None));
    }
    if c.integrations.incus_metrics {
        let gateway = c
            .networks
            .get(NetworkRole::Management)
            .map(|n| n.gateway())
            .expect("managed network");
        let tls = Some(json!({
            "ca_file": INCUS_SERVER_CERT,
            "cert_file": INCUS_METRICS_CERT,
            "key_file": INCUS_METRICS_KEY,
            "server_name": INCUS_TLS_SERVER_NAME,
        }));
        if ctx.d.members.is_empty() {
            let target = format!("{gateway}:{}", c.integrations.incus_https_port);
            jobs.push(job("incus", true, "/1.0/metrics", vec![target], tls));
        } else {
            // Every member on its cluster address, labelled by member.
            let mut j = job("incus", true, "/1.0/metrics", Vec::new(), tls);
            j["groups"] = json!(
                ctx.d
                    .members
                    .iter()
                    .map(|m| json!({"targets": [m.api], "labels": {"member": m.member}}))
                    .collect::<Vec<_>>()
            );
            jobs.push(j);
        }
        let (uid, gid) = service_user(ServiceKind::Prometheus);
        out.expected_files.extend([
            ExpectedFile {
                path: INCUS_METRICS_CERT.into(),
                source: FileSource::IncusMetricsCertificate,
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            ExpectedFile {
                path: INCUS_METRICS_KEY.into(),
                source: FileSource::IncusMetricsKey,
                mode: 0o600,
                uid,
                gid,
            },
            ExpectedFile {
                path: INCUS_SERVER_CERT.into(),
                source: FileSource::IncusServerCertificate,
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        ]);
    }
    let cloudflared = targets(ctx.d, ServiceKind::Cloudflared, c.cloudflared.metrics_port);
    if !cloudflared.is_empty() {
        jobs.push(job("cloudflared", false, "/metrics", cloudflared, None));
    }

    let text = ctx.template(
        "prometheus/prometheus.yml.j2",
        json!({
            "instance": ctx.name,
            "scrape_interval": c.prometheus.scrape_interval,
            "evaluation_interval": c.prometheus.evaluation_interval,
            "alertmanagers": targets(ctx.d, ServiceKind::Alertmanager, 9093),
            "jobs": jobs,
        }),
    )?;
    out.files.push(RenderedFile::config(CONFIG, text));
    out.files.push(RenderedFile::config(RULES, ALERT_RULES));
    let trusts_step_ca = jobs
        .iter()
        .any(|j| j["tls"]["ca_file"].as_str() == Some(root.as_str()));
    if trusts_step_ca {
        out.expected_files
            .push(expect_root(ServiceKind::Prometheus));
    }

    let data = ctx
        .inst
        .volume
        .as_ref()
        .map_or("/prometheus", |v| v.path.as_str());
    let mut cmd = vec![
        "/bin/prometheus".to_string(),
        format!("--config.file={CONFIG}"),
        format!("--storage.tsdb.path={data}"),
        format!(
            "--storage.tsdb.retention.time={}",
            c.prometheus.retention_time
        ),
    ];
    if let Some(size) = &c.prometheus.retention_size {
        cmd.push(format!("--storage.tsdb.retention.size={size}"));
    }
    // Lets the installer apply a new config with POST /-/reload instead of a restart.
    cmd.push("--web.enable-lifecycle".to_string());
    if ctx.inst.tls {
        let (cert, key) = service_cert(ServiceKind::Prometheus);
        let web = ctx.template(
            "prometheus/web.yml.j2",
            json!({"instance": ctx.name, "cert_file": cert, "key_file": key}),
        )?;
        out.files.push(RenderedFile::config(WEB_CONFIG, web));
        cmd.push(format!("--web.config.file={WEB_CONFIG}"));
        out.expected_files
            .extend(expect_service_cert(ServiceKind::Prometheus));
    }
    out.command = Some(ServiceCommand::plain(&cmd));
    Ok(out)
}

/// node-exporter: by name on a single host; on a cluster each member's copy at the member's
/// address (its proxy device), in a target group labelled `member`, so every series, and
/// every alert from the rules, says which member it is about.
fn node_exporter_job(d: &crate::deployment::Deployment) -> Option<Value> {
    let port = crate::deployment::ports::NODE_EXPORTER_PORT;
    let exporters = d.instances_of(ServiceKind::NodeExporter);
    if exporters.is_empty() {
        return None;
    }
    let mut local = Vec::new();
    let mut groups = Vec::new();
    for (name, _) in exporters {
        match d.member_of(name) {
            Some(m) => groups.push(json!({
                "targets": [m.at(port)],
                "labels": {"member": m.member},
            })),
            None => local.push(format!("{}:{port}", hostname(name))),
        }
    }
    let mut j = job("node-exporter", false, "/metrics", local, None);
    j["groups"] = json!(groups);
    Some(j)
}

fn job(name: &str, https: bool, path: &str, targets: Vec<String>, tls: Option<Value>) -> Value {
    json!({
        "name": name,
        "scheme": if https { "https" } else { "http" },
        "metrics_path": path,
        "targets": targets,
        "tls": tls,
    })
}

/// One job per kind; instances with TLS go in their own `<kind>-https` job when the kind is
/// mixed, since scheme and trust are per job.
fn jobs_by_tls(instances: Vec<(&str, &Instance)>, kind: &str, port: u16, root: &str) -> Vec<Value> {
    let (tls, plain): (Vec<_>, Vec<_>) = instances.into_iter().partition(|(_, i)| i.tls);
    let names = |v: &[(&str, &Instance)]| {
        v.iter()
            .map(|(n, _)| format!("{}:{port}", hostname(n)))
            .collect::<Vec<_>>()
    };
    let mut jobs = Vec::new();
    if !plain.is_empty() {
        jobs.push(job(kind, false, "/metrics", names(&plain), None));
    }
    if !tls.is_empty() {
        let name = if plain.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}-https")
        };
        jobs.push(job(
            &name,
            true,
            "/metrics",
            names(&tls),
            Some(json!({"ca_file": root})),
        ));
    }
    jobs
}
