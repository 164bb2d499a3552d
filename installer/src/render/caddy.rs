//! Caddy: one Caddyfile assembled from a site block per instance that has a `web` route.

use serde_json::json;

use crate::config::{NetworkRole, ServiceKind, TlsIssuer};

use super::paths::{expect_root, step_ca_root};
use super::{Ctx, RenderError, RenderedFile, RenderedInstance, ServiceCommand, check, hostname};

pub const CADDYFILE: &str = "/etc/caddy/Caddyfile";
/// ACME directory of the internal step-ca (its `acme` provisioner).
pub const STEP_CA_ACME_DIRECTORY: &str = "https://step-ca01.incus:9000/acme/acme/directory";
/// Environment variable the Cloudflare DNS module reads its token from.
pub const CF_TOKEN_ENV: &str = "CF_API_TOKEN";

/// With no `allowed_ip_range` the domain is local-only: loopback and private ranges.
const LOCAL_ONLY: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

pub(super) fn render(ctx: &Ctx) -> Result<RenderedInstance, RenderError> {
    let c = ctx.config;
    let mut out = RenderedInstance::default();
    let issuer = if let Some(token) = &c.secrets.cloudflare_api_token {
        out.environment
            .insert(CF_TOKEN_ENV.to_string(), token.clone());
        out.secret_env.insert(CF_TOKEN_ENV.to_string());
        "cloudflare"
    } else {
        match c.caddy.tls_fallback {
            TlsIssuer::Internal => "internal",
            TlsIssuer::StepCa => "step-ca",
        }
    };
    if issuer == "step-ca" && ctx.d.instances_of(ServiceKind::StepCa).is_empty() {
        return Err(RenderError::MissingService {
            instance: ctx.name.to_string(),
            service: "step-ca".to_string(),
            why: "caddy.tls_fallback = \"step-ca\" gets certificates from it".to_string(),
            fix: "enable step-ca01, set caddy.tls_fallback = \"internal\", or provide a Cloudflare API token".to_string(),
        });
    }

    let rl = &c.caddy.rate_limit;
    check::word("caddy.rate_limit.window", &rl.window)?;
    check::word("caddy.rate_limit.login_window", &rl.login_window)?;
    if let Some(email) = &c.caddy.acme_email {
        check::word("caddy.acme_email", email)?;
    }
    let mut sites = Vec::new();
    let mut upstream_tls = false;
    for (name, inst) in ctx.d.enabled_instances() {
        let Some(web) = &inst.web else { continue };
        check::word(&format!("instances.{name}.web.domain"), &web.domain)?;
        for p in &web.login_paths {
            check::word(&format!("instances.{name}.web.login_paths"), p)?;
        }
        let scheme = if inst.tls { "https://" } else { "" };
        upstream_tls |= inst.tls;
        let allowed: Vec<String> = if web.allowed_ip_range.is_empty() {
            LOCAL_ONLY.iter().map(|s| s.to_string()).collect()
        } else {
            web.allowed_ip_range.iter().map(|n| n.to_string()).collect()
        };
        sites.push(json!({
            "instance": name,
            "domain": web.domain,
            "zone": name.replace('-', "_"),
            "allowed": allowed,
            "login_paths": web.login_paths,
            "upstream": format!("{scheme}{}:{}", hostname(name), web.upstream_port),
            "upstream_tls": inst.tls,
        }));
    }

    // Metrics listen on Caddy's production and management addresses, not on the external NIC.
    let metrics_bind: Vec<String> = ctx
        .inst
        .nics
        .iter()
        .filter(|n| matches!(n.network, NetworkRole::Production | NetworkRole::Management))
        .filter_map(|n| n.ipv4.map(|a| a.to_string()))
        .collect();
    if metrics_bind.is_empty() {
        let index = ctx
            .inst
            .nics
            .iter()
            .position(|n| n.network == NetworkRole::Management)
            .unwrap_or(0);
        return Err(RenderError::MissingAddress {
            instance: ctx.name.to_string(),
            network: "management".to_string(),
            index,
            why: "Caddy serves its metrics there for Prometheus".to_string(),
        });
    }

    let text = ctx.template(
        "caddy/Caddyfile.j2",
        json!({
            "instance": ctx.name,
            "admin_port": c.caddy.admin_port,
            "proxy_protocol": c.caddy.proxy_protocol,
            "acme_email": c.caddy.acme_email,
            "issuer": issuer,
            "step_ca_directory": STEP_CA_ACME_DIRECTORY,
            "step_ca_root": step_ca_root(ServiceKind::Caddy),
            "metrics_bind": metrics_bind,
            "rate_limit": if rl.enabled { json!({
                "requests": rl.requests, "window": rl.window,
                "login_requests": rl.login_requests, "login_window": rl.login_window,
            }) } else { json!(null) },
            "sites": sites,
        }),
    )?;
    out.files.push(RenderedFile::config(CADDYFILE, text));
    out.command = Some(ServiceCommand::plain(&[
        "caddy",
        "run",
        "--config",
        CADDYFILE,
        "--adapter",
        "caddyfile",
    ]));
    if issuer == "step-ca" || upstream_tls {
        out.expected_files.push(expect_root(ServiceKind::Caddy));
    }
    Ok(out)
}
