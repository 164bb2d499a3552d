//! The effective configuration every other module consumes: fully resolved (every default
//! applied), validated, secrets held apart from what is ever printed.
//!
//! `atlas.toml` (see `assets/atlas.toml`, which is also the embedded default layer) is
//! deserialized, layered (defaults < file < `ATLAS_*` env < flags) and resolved into these
//! types by `config::load`.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// The whole deployment, as it should be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub incus: IncusConfig,
    pub networks: Networks,
    /// Every Atlas instance by name (`grafana01`, ...). Disabled instances stay listed so that
    /// `plan` can say they will be removed.
    pub instances: BTreeMap<String, Instance>,
    pub caddy: CaddyConfig,
    pub grafana: GrafanaConfig,
    pub prometheus: PrometheusConfig,
    pub loki: LokiConfig,
    pub alertmanager: AlertmanagerConfig,
    pub step_ca: StepCaConfig,
    pub mosquitto: MosquittoConfig,
    pub cloudflared: CloudflaredConfig,
    pub node_exporter: NodeExporterConfig,
    pub integrations: Integrations,
    pub images: ImagesConfig,
    /// Secrets resolved from the environment or `*_file` paths. Never serialized.
    #[serde(skip)]
    pub secrets: Secrets,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncusConfig {
    /// Unix socket of the local daemon; empty = discover (`INCUS_SOCKET`, `INCUS_DIR`,
    /// `/run/incus/unix.socket`, `/var/lib/incus/unix.socket`).
    pub socket: String,
    /// Incus project holding the Atlas instances, profiles, volumes and images.
    pub project: String,
    pub storage_pool: String,
    /// Bridge Caddy's third NIC joins for outside access (the seed's `incusbr0`).
    pub external_network: String,
    /// A remote Incus over HTTPS instead of the local socket.
    pub remote: Option<IncusRemote>,
    /// Seconds one Incus API request may take before atlas-install gives up and says which
    /// daemon did not answer what. Long work (image uploads, operations, exec) has its own
    /// limits.
    pub request_timeout: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncusRemote {
    /// `https://host:8443`
    pub url: String,
    pub client_cert: String,
    pub client_key: String,
    /// SHA-256 fingerprint of the server certificate (hex), pinned.
    pub server_fingerprint: String,
}

/// The five networks of the seed. Fixed roles; names and addresses are configurable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Networks {
    pub development: Network,
    pub testing: Network,
    pub staging: Network,
    pub production: Network,
    pub management: Network,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkRole {
    Development,
    Testing,
    Staging,
    Production,
    Management,
    /// The pre-existing external bridge (`incus.external_network`), not created by Atlas.
    External,
}

impl NetworkRole {
    pub const MANAGED: [NetworkRole; 5] = [
        NetworkRole::Development,
        NetworkRole::Testing,
        NetworkRole::Staging,
        NetworkRole::Production,
        NetworkRole::Management,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkRole::Development => "development",
            NetworkRole::Testing => "testing",
            NetworkRole::Staging => "staging",
            NetworkRole::Production => "production",
            NetworkRole::Management => "management",
            NetworkRole::External => "external",
        }
    }
}

impl Networks {
    /// The managed network of a role; `None` for [`NetworkRole::External`].
    pub fn get(&self, role: NetworkRole) -> Option<&Network> {
        match role {
            NetworkRole::Development => Some(&self.development),
            NetworkRole::Testing => Some(&self.testing),
            NetworkRole::Staging => Some(&self.staging),
            NetworkRole::Production => Some(&self.production),
            NetworkRole::Management => Some(&self.management),
            NetworkRole::External => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (NetworkRole, &Network)> {
        NetworkRole::MANAGED
            .into_iter()
            .filter_map(|r| self.get(r).map(|n| (r, n)))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// Incus network name (defaults to the role name).
    pub name: String,
    /// Gateway address and prefix, e.g. `10.50.0.1/24`.
    pub ipv4: ipnet::Ipv4Net,
    pub ipv4_nat: bool,
    /// Optional ULA gateway/prefix, e.g. `fd00:10:50::1/64`.
    pub ipv6: Option<ipnet::Ipv6Net>,
    pub ipv6_nat: bool,
}

impl Network {
    pub fn gateway(&self) -> Ipv4Addr {
        self.ipv4.addr()
    }
    pub fn gateway_v6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|n| n.addr())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    Caddy,
    Grafana,
    Prometheus,
    Loki,
    Alertmanager,
    StepCa,
    NodeExporter,
    Mosquitto,
    Cloudflared,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 9] = [
        ServiceKind::StepCa,
        ServiceKind::Prometheus,
        ServiceKind::Loki,
        ServiceKind::Alertmanager,
        ServiceKind::NodeExporter,
        ServiceKind::Mosquitto,
        ServiceKind::Grafana,
        ServiceKind::Caddy,
        ServiceKind::Cloudflared,
    ];

    /// Name as used for profiles, recipes (`images/<name>.toml`) and the config's `service` key.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Caddy => "caddy",
            ServiceKind::Grafana => "grafana",
            ServiceKind::Prometheus => "prometheus",
            ServiceKind::Loki => "loki",
            ServiceKind::Alertmanager => "alertmanager",
            ServiceKind::StepCa => "step-ca",
            ServiceKind::NodeExporter => "node-exporter",
            ServiceKind::Mosquitto => "mosquitto",
            ServiceKind::Cloudflared => "cloudflared",
        }
    }
}

/// One container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub service: ServiceKind,
    pub enabled: bool,
    /// CPU limit in cores (1-64); a soft limit, as in the seed.
    pub cpu: u32,
    /// Hard memory limit, Incus size syntax (`1GB`, `256MB`).
    pub memory: Size,
    /// Profile name (the seed names profiles after the service: `grafana`).
    pub profile: String,
    /// NICs in order: eth0, eth1, ... Caddy has production, management, external.
    pub nics: Vec<Nic>,
    pub volume: Option<Volume>,
    /// Exposure through Caddy (domain + allowlist), for instances with a web UI.
    pub web: Option<WebRoute>,
    /// TLS for the service's own listener with a certificate from step-ca.
    pub tls: bool,
    /// Extra environment for the service (merged over the recipe's).
    pub environment: BTreeMap<String, String>,
    /// Where the instance runs on an Incus cluster; `None`: on the member chosen at first
    /// install (recorded in the project, see `deployment::Placement`). Ignored on a single
    /// server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

/// A cluster member or cluster group an instance is pinned to (`member = "m2"` or
/// `group = "edge"` in the instance's table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    Member(String),
    Group(String),
}

impl Placement {
    /// The `?target=` value Incus takes for it (`m2`, `@edge`).
    pub fn query(&self) -> String {
        match self {
            Placement::Member(m) => m.clone(),
            Placement::Group(g) => format!("@{g}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub network: NetworkRole,
    /// Fixed address; for the external network it is chosen at install when unset.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub size: Size,
    /// Mount path inside the container.
    pub path: String,
    pub snapshots: Snapshots,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshots {
    pub enabled: bool,
    /// `@daily`, `@weekly` or a cron expression.
    pub schedule: String,
    /// `7d`, `2w`, `4w`.
    pub expiry: String,
    pub pattern: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebRoute {
    pub domain: String,
    /// Sources allowed through Caddy; empty means only the local default (a local-only domain).
    pub allowed_ip_range: Vec<ipnet::IpNet>,
    /// Port the service listens on inside its container.
    pub upstream_port: u16,
    /// Path prefixes that get the stricter login rate limit.
    pub login_paths: Vec<String>,
}

/// A size in Incus syntax, kept as written (`1GB`) plus its byte value for checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Size {
    pub text: String,
    pub bytes: u64,
}

impl Size {
    /// Parses `<n>MB|GB|TB|MiB|GiB|TiB|KB|KiB|B` the way Incus does (decimal for MB/GB, binary for MiB/GiB).
    pub fn parse(s: &str) -> Result<Size, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(format!(
                "`{s}` is not a size: expected a whole number and a unit, like 512MB or 10GB"
            ));
        }
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is too large"))?;
        let mult: u64 = match unit {
            "B" => 1,
            "kB" | "KB" => 1000,
            "MB" => 1000u64.pow(2),
            "GB" => 1000u64.pow(3),
            "TB" => 1000u64.pow(4),
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "" => {
                return Err(format!(
                    "`{s}` has no unit: write it like {num}MB or {num}GB"
                ));
            }
            _ => {
                return Err(format!(
                    "`{s}` has an unknown unit `{unit}`: use MB, GB, TB (or MiB, GiB, TiB)"
                ));
            }
        };
        let bytes = n
            .checked_mul(mult)
            .ok_or_else(|| format!("`{s}` is too large"))?;
        if bytes == 0 {
            return Err(format!("`{s}` is zero"));
        }
        Ok(Size {
            text: t.to_string(),
            bytes,
        })
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<Size> for String {
    fn from(s: Size) -> String {
        s.text
    }
}

impl TryFrom<String> for Size {
    type Error = String;
    fn try_from(s: String) -> Result<Size, String> {
        Size::parse(&s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaddyConfig {
    /// Host ports published by proxy devices on the host.
    pub http_port: u16,
    pub https_port: u16,
    /// Host address the proxy devices listen on (`0.0.0.0` in production, `127.0.0.1` in tests).
    pub listen_address: String,
    /// Caddy admin endpoint inside the container (metrics at `/metrics`).
    pub admin_port: u16,
    /// The host-port proxy devices prepend a PROXY protocol header and Caddy reads it, so
    /// the allowlist and rate limits see real client addresses. Needs Caddy 2.7+ (its
    /// `proxy_protocol` listener wrapper); off, every client looks like 127.0.0.1.
    pub proxy_protocol: bool,
    pub acme_email: Option<String>,
    /// `auto`: Cloudflare DNS-01 when a token is set, else `tls_fallback`.
    pub tls_fallback: TlsIssuer,
    pub rate_limit: RateLimit,
    /// File holding the Cloudflare API token for DNS-01 (the token itself never goes in
    /// the config; `ATLAS_CLOUDFLARE_API_TOKEN` overrides the file).
    #[serde(default)]
    pub cloudflare_api_token_file: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsIssuer {
    /// Caddy's own internal CA.
    Internal,
    /// ACME against the internal step-ca.
    StepCa,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    pub enabled: bool,
    /// Requests per window per client address for general endpoints (seed: 100/min).
    pub requests: u32,
    pub window: String,
    /// Stricter limit for login endpoints (seed: 10/min).
    pub login_requests: u32,
    pub login_window: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrafanaConfig {
    pub admin_user: String,
    /// Plugins baked into the image at build time (never fetched at start).
    pub plugins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrometheusConfig {
    pub retention_time: String,
    /// Optional size cap (`90GB`).
    pub retention_size: Option<Size>,
    pub scrape_interval: String,
    pub evaluation_interval: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LokiConfig {
    /// Hours form, e.g. `720h`.
    pub retention_period: String,
    /// At least `2h`.
    pub retention_delete_delay: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertmanagerConfig {
    /// Shorthand kept from earlier versions: one webhook for every alert, rendered into
    /// alertmanager.yml (which then holds it as a secret). Exclusive with `receivers`.
    pub webhook_url: Option<String>,
    pub group_wait: String,
    pub group_interval: String,
    pub repeat_interval: String,
    /// Where notifications go, by name (`[alertmanager.receivers.<name>]`). None: alerts stay
    /// in Alertmanager (and Grafana), as `status` says.
    #[serde(default)]
    pub receivers: BTreeMap<String, Receiver>,
    /// Which receivers each severity goes to, and how often a firing alert is repeated.
    #[serde(default)]
    pub routes: AlertRoutes,
}

/// A notification receiver. Its one secret (SMTP password, Slack webhook URL, webhook bearer
/// token) is never part of it: it comes from the environment or the `*_file` key, into
/// [`Secrets::receivers`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Receiver {
    Email(EmailReceiver),
    Slack(SlackReceiver),
    Webhook(WebhookReceiver),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailReceiver {
    /// `host:port` of the SMTP server.
    pub smarthost: String,
    pub from: String,
    pub to: Vec<String>,
    /// SMTP AUTH user; its password is the receiver's secret.
    pub auth_username: Option<String>,
    pub auth_password_file: Option<String>,
    /// STARTTLS required before anything is sent (Alertmanager's default).
    pub require_tls: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlackReceiver {
    /// `#channel` (or a user); empty: the webhook's own channel.
    pub channel: Option<String>,
    /// The incoming-webhook URL is the receiver's secret.
    pub webhook_url_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookReceiver {
    /// Where Alertmanager POSTs its JSON. Configuration, not a secret: a credential goes in
    /// the bearer token.
    pub url: String,
    pub bearer_token_file: Option<String>,
}

/// The two severities the alert rules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
}

impl Severity {
    pub const ALL: [Severity; 2] = [Severity::Critical, Severity::Warning];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertRoutes {
    pub critical: Option<SeverityRoute>,
    pub warning: Option<SeverityRoute>,
}

impl AlertRoutes {
    pub fn get(&self, s: Severity) -> Option<&SeverityRoute> {
        match s {
            Severity::Critical => self.critical.as_ref(),
            Severity::Warning => self.warning.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeverityRoute {
    /// Names in `alertmanager.receivers`; each gets every alert of the severity.
    pub receivers: Vec<String>,
    /// Overrides `alertmanager.repeat_interval` for this severity.
    pub repeat_interval: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCaConfig {
    pub ca_name: String,
    pub dns_names: Vec<String>,
    pub acme: bool,
    /// Lifetime of issued certificates (seed: 24h).
    pub cert_duration: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MosquittoConfig {
    pub mqtt_port: u16,
    pub mqtts_port: u16,
    /// Host address the proxy devices listen on.
    pub listen_address: String,
    /// TLS listener on `mqtts_port` with a step-ca certificate.
    pub tls: bool,
    /// Users that get generated passwords (stored in Incus, never printed).
    pub users: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudflaredConfig {
    /// Deployed only when a tunnel token is available (env or `token_file`).
    pub token_file: Option<String>,
    pub metrics_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeExporterConfig {
    /// Mount the host's / with rslave propagation, so disks mounted later show up without a
    /// restart. Needs / to be a shared mount on the host (systemd hosts have it); preflight
    /// says when it is not.
    pub follow_host_mounts: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Integrations {
    /// Prometheus scrapes Incus' `/1.0/metrics` with an mTLS client certificate.
    pub incus_metrics: bool,
    /// Incus ships lifecycle and logging events to Loki.
    pub incus_loki: bool,
    /// Port of `core.https_address` on the management gateway.
    pub incus_https_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagesConfig {
    /// Map docker.io, ghcr.io and quay.io references onto this mirror (`host[:port]`).
    pub registry_mirror: Option<String>,
    /// Fetch the recipes' `[[download]]` files from this mirror (`https://host/prefix` or
    /// `file:///dir`), laid out as `<mirror>/<host>/<path>`.
    #[serde(default)]
    pub download_mirror: Option<String>,
    /// Hosts allowed over plain HTTP besides loopback.
    pub insecure_registries: Vec<String>,
    /// Replaces the embedded images.lock.
    pub lock_file: Option<String>,
    /// Incus image alias (in the Atlas project) per service kind (`caddy`, `step-ca`, ...);
    /// a kind not listed uses `atlas/<kind>`.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
}

/// Secrets: resolved at load, never serialized, redacted in `Debug`.
#[derive(Clone, Default, PartialEq)]
pub struct Secrets {
    pub cloudflare_api_token: Option<String>,
    pub cloudflared_token: Option<String>,
    /// The secret of each alert receiver that has one, by receiver name.
    pub receivers: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = |s: &Option<String>| if s.is_some() { "<redacted>" } else { "<unset>" };
        f.debug_struct("Secrets")
            .field("cloudflare_api_token", &mark(&self.cloudflare_api_token))
            .field("cloudflared_token", &mark(&self.cloudflared_token))
            .field("receivers", &self.receivers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Config {
    /// Enabled instances in dependency order (step-ca, stores, then Grafana and Caddy).
    pub fn enabled_instances(&self) -> Vec<(&str, &Instance)> {
        enabled_in(&self.instances)
    }

    /// Instances of one service kind that are enabled, by name.
    pub fn instances_of(&self, kind: ServiceKind) -> Vec<(&str, &Instance)> {
        of_kind(&self.instances, kind)
    }
}

/// The enabled ones of `instances` in dependency order (step-ca, stores, then Grafana and
/// Caddy), by name within a service: the order everything is created and upgraded in.
pub fn enabled_in(instances: &BTreeMap<String, Instance>) -> Vec<(&str, &Instance)> {
    let mut v: Vec<_> = instances
        .iter()
        .filter(|(_, i)| i.enabled)
        .map(|(n, i)| (n.as_str(), i))
        .collect();
    v.sort_by_key(|(n, i)| {
        (
            ServiceKind::ALL.iter().position(|k| *k == i.service),
            n.to_string(),
        )
    });
    v
}

/// The enabled ones of `instances` of one service kind, by name.
pub fn of_kind(
    instances: &BTreeMap<String, Instance>,
    kind: ServiceKind,
) -> Vec<(&str, &Instance)> {
    enabled_in(instances)
        .into_iter()
        .filter(|(_, i)| i.service == kind)
        .collect()
}
