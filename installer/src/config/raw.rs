//! The user-facing schema of `atlas.toml`: every key optional (a missing one keeps its
//! default), unknown keys refused. `apply` lays a section over the resolved model;
//! `from_model` turns the model back into this schema so `config show` prints a file that
//! loads to the same configuration.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::alerting::RawAlertmanager;
use super::model::*;

/// A section whose keys map one to one onto a model struct. `plain` fields replace the model
/// value, `opt` fields fill an `Option` in the model, `nested` fields are sub-sections.
macro_rules! overlay {
    ($raw:ident => $model:ty {
        $(plain $f:ident: $t:ty,)*
        $(opt $o:ident: $ot:ty,)*
        $(nested $n:ident: $nt:ty,)*
    }) => {
        #[derive(Debug, Default, Clone, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $raw {
            $(#[serde(default, skip_serializing_if = "Option::is_none")] pub $f: Option<$t>,)*
            $(#[serde(default, skip_serializing_if = "Option::is_none")] pub $o: Option<$ot>,)*
            $(#[serde(default, skip_serializing_if = "Option::is_none")] pub $n: Option<$nt>,)*
        }

        impl $raw {
            pub fn apply(self, m: &mut $model) {
                $(if let Some(v) = self.$f { m.$f = v; })*
                $(if let Some(v) = self.$o { m.$o = Some(v); })*
                $(if let Some(v) = self.$n { v.apply(&mut m.$n); })*
            }

            pub fn from_model(m: &$model) -> Self {
                $raw {
                    $($f: Some(m.$f.clone()),)*
                    $($o: m.$o.clone(),)*
                    $($n: Some(<$nt>::from_model(&m.$n)),)*
                }
            }
        }
    };
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incus: Option<RawIncus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caddy: Option<RawCaddy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grafana: Option<RawGrafana>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<RawPrometheus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loki: Option<RawLoki>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<RawAlertmanager>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ca: Option<RawStepCa>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mosquitto: Option<RawMosquitto>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudflared: Option<RawCloudflared>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_exporter: Option<RawNodeExporter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrations: Option<RawIntegrations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<RawImages>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<RawNetworks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<BTreeMap<String, RawInstance>>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIncus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RawRemote>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<u64>,
}

/// All four keys are needed to talk to a remote Incus safely, so none is optional.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRemote {
    pub url: String,
    pub client_cert: String,
    pub client_key: String,
    pub server_fingerprint: String,
}

impl RawIncus {
    pub fn apply(self, m: &mut IncusConfig) {
        if let Some(v) = self.socket {
            m.socket = v;
        }
        if let Some(v) = self.project {
            m.project = v;
        }
        if let Some(v) = self.storage_pool {
            m.storage_pool = v;
        }
        if let Some(v) = self.external_network {
            m.external_network = v;
        }
        if let Some(v) = self.request_timeout {
            m.request_timeout = v;
        }
        if let Some(r) = self.remote {
            m.remote = Some(IncusRemote {
                url: r.url,
                client_cert: r.client_cert,
                client_key: r.client_key,
                server_fingerprint: r.server_fingerprint,
            });
        }
    }

    pub fn from_model(m: &IncusConfig) -> Self {
        RawIncus {
            socket: Some(m.socket.clone()),
            project: Some(m.project.clone()),
            storage_pool: Some(m.storage_pool.clone()),
            external_network: Some(m.external_network.clone()),
            remote: m.remote.as_ref().map(|r| RawRemote {
                url: r.url.clone(),
                client_cert: r.client_cert.clone(),
                client_key: r.client_key.clone(),
                server_fingerprint: r.server_fingerprint.clone(),
            }),
            request_timeout: Some(m.request_timeout),
        }
    }
}

overlay!(RawCaddy => CaddyConfig {
    plain http_port: u16,
    plain https_port: u16,
    plain listen_address: String,
    plain admin_port: u16,
    plain proxy_protocol: bool,
    plain tls_fallback: TlsIssuer,
    opt acme_email: String,
    opt cloudflare_api_token_file: String,
    nested rate_limit: RawRateLimit,
});

overlay!(RawRateLimit => RateLimit {
    plain enabled: bool,
    plain requests: u32,
    plain window: String,
    plain login_requests: u32,
    plain login_window: String,
});

overlay!(RawGrafana => GrafanaConfig {
    plain admin_user: String,
    plain plugins: Vec<String>,
});

overlay!(RawPrometheus => PrometheusConfig {
    plain retention_time: String,
    plain scrape_interval: String,
    plain evaluation_interval: String,
    opt retention_size: Size,
});

overlay!(RawLoki => LokiConfig {
    plain retention_period: String,
    plain retention_delete_delay: String,
});

overlay!(RawStepCa => StepCaConfig {
    plain ca_name: String,
    plain dns_names: Vec<String>,
    plain acme: bool,
    plain cert_duration: String,
});

overlay!(RawMosquitto => MosquittoConfig {
    plain mqtt_port: u16,
    plain mqtts_port: u16,
    plain listen_address: String,
    plain tls: bool,
    plain users: Vec<String>,
});

overlay!(RawNodeExporter => NodeExporterConfig {
    plain follow_host_mounts: bool,
});

overlay!(RawCloudflared => CloudflaredConfig {
    plain metrics_port: u16,
    opt token_file: String,
});

overlay!(RawIntegrations => Integrations {
    plain incus_metrics: bool,
    plain incus_loki: bool,
    plain incus_https_port: u16,
});

overlay!(RawImages => ImagesConfig {
    plain insecure_registries: Vec<String>,
    plain aliases: std::collections::BTreeMap<String, String>,
    opt registry_mirror: String,
    opt download_mirror: String,
    opt lock_file: String,
});

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetworks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub development: Option<RawNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub testing: Option<RawNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging: Option<RawNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production: Option<RawNetwork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management: Option<RawNetwork>,
}

impl RawNetworks {
    pub fn take(&mut self, role: NetworkRole) -> Option<RawNetwork> {
        match role {
            NetworkRole::Development => self.development.take(),
            NetworkRole::Testing => self.testing.take(),
            NetworkRole::Staging => self.staging.take(),
            NetworkRole::Production => self.production.take(),
            NetworkRole::Management => self.management.take(),
            NetworkRole::External => None,
        }
    }

    pub fn from_model(m: &Networks) -> Self {
        let n = |net: &Network| Some(RawNetwork::from_model(net));
        RawNetworks {
            development: n(&m.development),
            testing: n(&m.testing),
            staging: n(&m.staging),
            production: n(&m.production),
            management: n(&m.management),
        }
    }
}

/// Addresses stay text here so that a bad one is reported with its path and a way to fix it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_nat: Option<bool>,
    /// Empty string: no IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_nat: Option<bool>,
}

impl RawNetwork {
    fn from_model(m: &Network) -> Self {
        RawNetwork {
            name: Some(m.name.clone()),
            ipv4: Some(m.ipv4.to_string()),
            ipv4_nat: Some(m.ipv4_nat),
            ipv6: Some(m.ipv6.map(|n| n.to_string()).unwrap_or_default()),
            ipv6_nat: Some(m.ipv6_nat),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInstance {
    /// Required for a new instance; for a built-in one (`grafana01`) it may be left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Wider than the model so that `cpu = -1` is reported as out of range, not as a type error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// Fixed IPv4 address per network the instance joins (`management = "10.50.0.11"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_addresses: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<RawVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<RawSnapshots>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<RawWeb>,
    /// Cluster member to run on (Incus cluster only); exclusive with `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Cluster group to run in (Incus picks the member); exclusive with `member`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVolume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSnapshots {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWeb {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Text, so each bad entry is reported with its index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ip_range: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_paths: Option<Vec<String>>,
}

impl RawInstance {
    pub fn from_model(m: &Instance) -> Self {
        let addresses: BTreeMap<_, _> = m
            .nics
            .iter()
            .filter_map(|n| {
                n.ipv4
                    .map(|a| (n.network.as_str().to_string(), a.to_string()))
            })
            .collect();
        let ipv6: BTreeMap<_, _> = m
            .nics
            .iter()
            .filter_map(|n| {
                n.ipv6
                    .map(|a| (n.network.as_str().to_string(), a.to_string()))
            })
            .collect();
        RawInstance {
            service: Some(m.service),
            enabled: Some(m.enabled),
            cpu: Some(i64::from(m.cpu)),
            memory: Some(m.memory.clone()),
            profile: Some(m.profile.clone()),
            tls: Some(m.tls),
            addresses: Some(addresses),
            ipv6_addresses: (!ipv6.is_empty()).then_some(ipv6),
            environment: (!m.environment.is_empty()).then(|| m.environment.clone()),
            volume: Some(match &m.volume {
                Some(v) => RawVolume {
                    enabled: Some(true),
                    name: Some(v.name.clone()),
                    size: Some(v.size.clone()),
                    path: Some(v.path.clone()),
                },
                None => RawVolume {
                    enabled: Some(false),
                    ..RawVolume::default()
                },
            }),
            snapshots: m.volume.as_ref().map(|v| RawSnapshots {
                enabled: Some(v.snapshots.enabled),
                schedule: Some(v.snapshots.schedule.clone()),
                expiry: Some(v.snapshots.expiry.clone()),
                pattern: Some(v.snapshots.pattern.clone()),
            }),
            web: m.web.as_ref().map(|w| RawWeb {
                enabled: Some(true),
                domain: Some(w.domain.clone()),
                allowed_ip_range: Some(
                    w.allowed_ip_range.iter().map(ToString::to_string).collect(),
                ),
                login_paths: Some(w.login_paths.clone()),
            }),
            member: match &m.placement {
                Some(Placement::Member(n)) => Some(n.clone()),
                _ => None,
            },
            group: match &m.placement {
                Some(Placement::Group(n)) => Some(n.clone()),
                _ => None,
            },
        }
    }
}

impl RawConfig {
    /// The configuration in file form, every value spelled out (secrets excluded: the model
    /// keeps them apart).
    pub fn from_model(c: &Config) -> Self {
        RawConfig {
            incus: Some(RawIncus::from_model(&c.incus)),
            caddy: Some(RawCaddy::from_model(&c.caddy)),
            grafana: Some(RawGrafana::from_model(&c.grafana)),
            prometheus: Some(RawPrometheus::from_model(&c.prometheus)),
            loki: Some(RawLoki::from_model(&c.loki)),
            alertmanager: Some(RawAlertmanager::from_model(&c.alertmanager)),
            step_ca: Some(RawStepCa::from_model(&c.step_ca)),
            mosquitto: Some(RawMosquitto::from_model(&c.mosquitto)),
            cloudflared: Some(RawCloudflared::from_model(&c.cloudflared)),
            node_exporter: Some(RawNodeExporter::from_model(&c.node_exporter)),
            integrations: Some(RawIntegrations::from_model(&c.integrations)),
            images: Some(RawImages::from_model(&c.images)),
            networks: Some(RawNetworks::from_model(&c.networks)),
            instances: Some(
                c.instances
                    .iter()
                    .map(|(n, i)| (n.clone(), RawInstance::from_model(i)))
                    .collect(),
            ),
        }
    }
}
