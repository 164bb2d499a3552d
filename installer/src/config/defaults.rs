//! The seed's tables, in code: the embedded default layer of the configuration, and the
//! per-service defaults a new instance (say `grafana02`) starts from.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::model::*;

/// Defaults of one service kind, from the seed's resource, storage and snapshot tables.
pub struct KindDefaults {
    pub cpu: u32,
    pub memory: &'static str,
    /// (size, mount path); `None` for stateless services.
    pub volume: Option<(&'static str, &'static str)>,
    /// (schedule, expiry)
    pub snapshots: Option<(&'static str, &'static str)>,
    pub nics: &'static [NetworkRole],
    /// Last octet of the fixed address of the first instance on its first network.
    pub host_octet: u8,
    /// Port the service listens on (the one health gates and scrapes use).
    pub port: u16,
}

impl ServiceKind {
    pub fn defaults(self) -> KindDefaults {
        use NetworkRole::*;
        #[allow(clippy::type_complexity)] // one row of the seed's table, read as a row
        let (cpu, memory, volume, snapshots, nics, host_octet, port): (
            u32,
            &str,
            Option<(&str, &str)>,
            Option<(&str, &str)>,
            &'static [NetworkRole],
            u8,
            u16,
        ) = match self {
            // Not in the seed's storage table: Caddy keeps its internal CA, ACME account and
            // certificates under /data (XDG_DATA_HOME), which must outlive its root filesystem.
            ServiceKind::Caddy => (
                2,
                "1GB",
                Some(("1GB", "/data")),
                Some(("@weekly", "4w")),
                &[Production, Management, External],
                10,
                443,
            ),
            ServiceKind::Grafana => (
                2,
                "1GB",
                Some(("10GB", "/var/lib/grafana")),
                Some(("@daily", "7d")),
                &[Management],
                11,
                3000,
            ),
            ServiceKind::Prometheus => (
                2,
                "2GB",
                Some(("100GB", "/prometheus")),
                Some(("@weekly", "2w")),
                &[Management],
                12,
                9090,
            ),
            ServiceKind::Loki => (
                2,
                "2GB",
                Some(("50GB", "/loki")),
                Some(("@weekly", "2w")),
                &[Management],
                13,
                3100,
            ),
            ServiceKind::Alertmanager => (
                1,
                "256MB",
                Some(("1GB", "/alertmanager")),
                Some(("@daily", "7d")),
                &[Management],
                14,
                9093,
            ),
            ServiceKind::StepCa => (
                1,
                "512MB",
                Some(("1GB", "/home/step")),
                Some(("@weekly", "4w")),
                &[Management],
                15,
                9000,
            ),
            ServiceKind::NodeExporter => (1, "128MB", None, None, &[Management], 16, 9100),
            ServiceKind::Mosquitto => (
                1,
                "256MB",
                Some(("5GB", "/mosquitto/data")),
                Some(("@daily", "7d")),
                &[Production],
                17,
                1883,
            ),
            ServiceKind::Cloudflared => (1, "256MB", None, None, &[Management], 18, 2000),
        };
        KindDefaults {
            cpu,
            memory,
            volume,
            snapshots,
            nics,
            host_octet,
            port,
        }
    }
}

/// Snapshot name pattern of the seed.
pub const SNAPSHOT_PATTERN: &str = "auto-{{creation_date}}";

/// Local-only default domain: served by Caddy's internal issuer, reachable only where the
/// operator points it, so no allowlist is needed (a public domain requires one).
pub const DEFAULT_GRAFANA_DOMAIN: &str = "grafana.atlas.localhost";

fn network(name: &str, third_octet: u8) -> Network {
    Network {
        name: name.to_string(),
        ipv4: ipnet::Ipv4Net::new(Ipv4Addr::new(10, third_octet, 0, 1), 24)
            .expect("prefix 24 is valid"),
        ipv4_nat: true,
        ipv6: None,
        ipv6_nat: true,
    }
}

/// Builds an instance of `kind` named `name` from the kind's defaults, with addresses derived
/// from `networks` (`offset` moves the host octet for second and later instances).
pub fn default_instance(
    kind: ServiceKind,
    name: &str,
    networks: &Networks,
    offset: u8,
) -> Instance {
    let d = kind.defaults();
    let nics = d
        .nics
        .iter()
        .map(|role| Nic {
            network: *role,
            ipv4: networks.get(*role).map(|n| {
                let base = u32::from(n.ipv4.network());
                Ipv4Addr::from(base + u32::from(d.host_octet) + u32::from(offset))
            }),
            ipv6: None,
        })
        .collect();
    let volume = d.volume.map(|(size, path)| {
        let (schedule, expiry) = d.snapshots.unwrap_or(("@daily", "7d"));
        Volume {
            name: format!("{name}-data"),
            size: Size::parse(size).expect("seed sizes parse"),
            path: path.to_string(),
            snapshots: Snapshots {
                // The seed ships schedules but leaves snapshots off until enabled.
                enabled: false,
                schedule: schedule.to_string(),
                expiry: expiry.to_string(),
                pattern: SNAPSHOT_PATTERN.to_string(),
            },
        }
    });
    let web = (kind == ServiceKind::Grafana).then(|| WebRoute {
        domain: DEFAULT_GRAFANA_DOMAIN.to_string(),
        allowed_ip_range: Vec::new(),
        upstream_port: d.port,
        login_paths: vec!["/login".to_string(), "/api/login".to_string()],
    });
    Instance {
        service: kind,
        enabled: true,
        cpu: d.cpu,
        memory: Size::parse(d.memory).expect("seed sizes parse"),
        profile: kind.as_str().to_string(),
        nics,
        volume,
        web,
        tls: false,
        environment: BTreeMap::new(),
        placement: None,
    }
}

impl Config {
    /// The embedded defaults: the seed's deployment on a local-only domain. Cloudflared is
    /// listed but disabled (it is enabled when a tunnel token is present).
    pub fn builtin() -> Config {
        let networks = Networks {
            development: network("development", 10),
            testing: network("testing", 20),
            staging: network("staging", 30),
            production: network("production", 40),
            management: network("management", 50),
        };
        let mut instances = BTreeMap::new();
        for kind in ServiceKind::ALL {
            let name = format!("{}01", kind.as_str());
            let mut inst = default_instance(kind, &name, &networks, 0);
            if kind == ServiceKind::Cloudflared {
                inst.enabled = false;
            }
            instances.insert(name, inst);
        }
        Config {
            incus: IncusConfig {
                socket: String::new(),
                project: "atlas".to_string(),
                storage_pool: "local".to_string(),
                external_network: "incusbr0".to_string(),
                remote: None,
                request_timeout: 60,
            },
            networks,
            instances,
            caddy: CaddyConfig {
                http_port: 80,
                https_port: 443,
                listen_address: "0.0.0.0".to_string(),
                admin_port: 2019,
                proxy_protocol: true,
                acme_email: None,
                tls_fallback: TlsIssuer::Internal,
                rate_limit: RateLimit {
                    enabled: true,
                    requests: 100,
                    window: "1m".to_string(),
                    login_requests: 10,
                    login_window: "1m".to_string(),
                },
                cloudflare_api_token_file: None,
            },
            grafana: GrafanaConfig {
                admin_user: "admin".to_string(),
                plugins: Vec::new(),
            },
            prometheus: PrometheusConfig {
                retention_time: "30d".to_string(),
                retention_size: None,
                scrape_interval: "15s".to_string(),
                evaluation_interval: "15s".to_string(),
            },
            loki: LokiConfig {
                retention_period: "720h".to_string(),
                retention_delete_delay: "2h".to_string(),
            },
            alertmanager: AlertmanagerConfig {
                webhook_url: None,
                group_wait: "30s".to_string(),
                group_interval: "5m".to_string(),
                repeat_interval: "4h".to_string(),
                receivers: BTreeMap::new(),
                routes: AlertRoutes::default(),
            },
            step_ca: StepCaConfig {
                ca_name: "Atlas Internal CA".to_string(),
                dns_names: vec![
                    "step-ca01.incus".to_string(),
                    "step-ca01".to_string(),
                    "localhost".to_string(),
                ],
                acme: true,
                cert_duration: "24h".to_string(),
            },
            mosquitto: MosquittoConfig {
                mqtt_port: 1883,
                mqtts_port: 8883,
                listen_address: "0.0.0.0".to_string(),
                tls: false,
                users: vec!["atlas".to_string()],
            },
            cloudflared: CloudflaredConfig {
                token_file: None,
                metrics_port: 2000,
            },
            node_exporter: NodeExporterConfig {
                follow_host_mounts: true,
            },
            integrations: Integrations {
                incus_metrics: true,
                incus_loki: true,
                incus_https_port: 8443,
            },
            images: ImagesConfig {
                registry_mirror: None,
                download_mirror: None,
                insecure_registries: Vec::new(),
                lock_file: None,
                aliases: BTreeMap::new(),
            },
            secrets: Secrets::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_matches_the_seed_tables() {
        let c = Config::builtin();
        let total_cpu: u32 = c.instances.values().map(|i| i.cpu).sum();
        assert_eq!(total_cpu, 13, "seed total CPU");
        let mem: u64 = c.instances.values().map(|i| i.memory.bytes).sum();
        assert_eq!(mem, 7_408_000_000, "seed total memory is 7.4GB");
        let vol: u64 = c
            .instances
            .values()
            .filter_map(|i| i.volume.as_ref())
            .map(|v| v.size.bytes)
            .sum();
        assert_eq!(
            vol, 168_000_000_000,
            "seed total storage is 167GB, plus Caddy's 1GB /data"
        );
        let caddy = c.instances["caddy01"]
            .volume
            .as_ref()
            .expect("caddy01 has /data");
        assert_eq!(
            (caddy.name.as_str(), caddy.path.as_str()),
            ("caddy01-data", "/data")
        );
        assert!(
            !caddy.snapshots.enabled,
            "snapshots off until enabled, as the seed"
        );
        assert_eq!(c.networks.management.ipv4.to_string(), "10.50.0.1/24");
        assert_eq!(c.instances["caddy01"].nics.len(), 3);
        assert_eq!(
            c.instances["prometheus01"].nics[0].ipv4,
            Some(Ipv4Addr::new(10, 50, 0, 12))
        );
        assert!(!c.instances["cloudflared01"].enabled);
    }

    #[test]
    fn size_parsing_names_the_problem() {
        assert_eq!(Size::parse("256MB").unwrap().bytes, 256_000_000);
        assert_eq!(Size::parse("1GiB").unwrap().bytes, 1 << 30);
        assert!(Size::parse("12").unwrap_err().contains("no unit"));
        assert!(Size::parse("12XB").unwrap_err().contains("unknown unit"));
        assert!(Size::parse("GB").unwrap_err().contains("not a size"));
    }
}
