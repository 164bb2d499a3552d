//! What the seed's Terraform printed after `apply`, for `status`: where each service is
//! reached (through Caddy and the host ports, and inside the Atlas networks), step-ca's root
//! fingerprint with the command that makes a machine trust it, and how node-exporter sees
//! the host. Secrets are not outputs: `atlas-install secret get NAME` prints one on purpose.
//!
//! Computed here, from the configuration and what Incus holds (GETs only), so that every
//! front end shows the same thing; the CLI only prints it.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::config::{Config, ServiceKind};
use crate::deployment::{Deployment, ports};
use crate::incus::{Client, IncusError, Instance, OptionalExt as _};
use crate::render::{STEPPATH, hostname};

/// step-ca's root certificate inside step-ca (on its data volume).
pub const STEP_CA_ROOT: &str = "/home/step/certs/root_ca.crt";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outputs {
    pub endpoints: Vec<Endpoint>,
    /// One per step-ca instance.
    pub step_ca: Vec<StepCaTrust>,
    /// One per node-exporter instance.
    pub host_metrics: Vec<HostMetrics>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// What it is: `grafana01`, `mqtt`, `prometheus01`, ...
    pub name: String,
    pub url: String,
    /// Who can use it: `public` (Caddy's and Mosquitto's host ports) or `internal` (the
    /// Atlas networks: other instances, and this host through the bridges).
    pub reach: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepCaTrust {
    pub instance: String,
    pub ca_url: String,
    /// SHA-256 of the root certificate's DER, hex (step's fingerprint); `None` with `note`
    /// when it cannot be read (step-ca stopped or not initialised yet).
    pub root_fingerprint: Option<String>,
    /// `step ca bootstrap --ca-url ... --fingerprint ...`.
    pub bootstrap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How a node-exporter sees the host it is meant to measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostMetrics {
    pub instance: String,
    /// The host's /, /proc and /sys are all mounted where its command line reads them.
    pub host_mounts: bool,
    /// What it does not see, or why it measures its container; `None` when it sees it all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limitation: Option<String>,
}

/// Everything, from the configuration and Incus (GETs only). Never fails for a service
/// that cannot answer: its part says why.
pub async fn collect(client: &Client, d: &Deployment) -> Result<Outputs, IncusError> {
    let instances = client.instances().await?;
    let mut step_ca = Vec::new();
    for (name, _) in d.instances_of(ServiceKind::StepCa) {
        let running = instances.iter().any(|i| i.name == name && i.is_running());
        step_ca.push(step_ca_trust(client, &d.config, name, running).await);
    }
    Ok(Outputs {
        endpoints: endpoints(d),
        step_ca,
        host_metrics: host_metrics(d, &instances),
    })
}

/// Where each service is reached. Pure: from the configuration alone.
pub fn endpoints(d: &Deployment) -> Vec<Endpoint> {
    let config = &d.config;
    let mut out = Vec::new();
    let c = &config.caddy;
    let port = |scheme_default: u16, p: u16| {
        if p == scheme_default {
            String::new()
        } else {
            format!(":{p}")
        }
    };
    let has_caddy = !d.instances_of(ServiceKind::Caddy).is_empty();
    for (name, inst) in d.enabled_instances() {
        let Some(web) = inst.web.as_ref().filter(|_| has_caddy) else {
            continue;
        };
        out.push(Endpoint {
            name: name.to_string(),
            url: format!("https://{}{}/", web.domain, port(443, c.https_port)),
            reach: "public",
            note: Some(format!(
                "through Caddy on {}:{}",
                c.listen_address, c.https_port
            )),
        });
    }
    let m = &config.mosquitto;
    if !d.instances_of(ServiceKind::Mosquitto).is_empty() {
        out.push(Endpoint {
            name: "mqtt".into(),
            url: format!("mqtt://{}:{}", m.listen_address, m.mqtt_port),
            reach: "public",
            note: Some("users: mosquitto.users; passwords: `atlas-install secret get mosquitto.<user>.password`".into()),
        });
        if m.tls {
            out.push(Endpoint {
                name: "mqtts".into(),
                url: format!("mqtts://{}:{}", m.listen_address, m.mqtts_port),
                reach: "public",
                note: Some("certificate from step-ca: trust its root (see below)".into()),
            });
        }
    }
    for (name, inst) in d.enabled_instances() {
        let Some((scheme, port, path)) = internal(config, inst) else {
            continue;
        };
        let address = inst.nics.iter().find_map(|n| n.ipv4);
        out.push(Endpoint {
            name: name.to_string(),
            url: format!("{scheme}://{}:{port}{path}", hostname(name)),
            reach: "internal",
            note: address.map(|a| format!("{a}")),
        });
    }
    if config.integrations.incus_metrics
        && let Some(n) = config.networks.get(crate::config::NetworkRole::Management)
    {
        out.push(Endpoint {
            name: "incus-metrics".into(),
            url: format!(
                "https://{}:{}/1.0/metrics",
                n.gateway(),
                config.integrations.incus_https_port
            ),
            reach: "internal",
            note: Some("scraped by Prometheus with the metrics client certificate".into()),
        });
    }
    out
}

/// `(scheme, port, path)` of a service's own listener inside the Atlas networks.
fn internal(
    config: &Config,
    inst: &crate::config::Instance,
) -> Option<(&'static str, u16, &'static str)> {
    let tls = if inst.tls { "https" } else { "http" };
    Some(match inst.service {
        ServiceKind::Grafana => (tls, inst.service.defaults().port, "/"),
        ServiceKind::Prometheus => (tls, 9090, "/"),
        ServiceKind::Loki => (tls, 3100, "/"),
        ServiceKind::Alertmanager => ("http", 9093, "/"),
        ServiceKind::StepCa => ("https", 9000, ""),
        ServiceKind::NodeExporter => ("http", ports::NODE_EXPORTER_PORT, "/metrics"),
        ServiceKind::Cloudflared => ("http", config.cloudflared.metrics_port, "/metrics"),
        ServiceKind::Caddy => ("http", config.caddy.admin_port, "/metrics"),
        ServiceKind::Mosquitto => return None,
    })
}

async fn step_ca_trust(client: &Client, config: &Config, name: &str, running: bool) -> StepCaTrust {
    let ca_url = format!("https://{}:9000", hostname(name));
    let mut out = StepCaTrust {
        instance: name.to_string(),
        acme_directory: config
            .step_ca
            .acme
            .then(|| format!("{ca_url}/acme/acme/directory")),
        ca_url,
        root_fingerprint: None,
        bootstrap: None,
        note: None,
    };
    if !running {
        out.note = Some(format!(
            "{name} is not running: its root certificate lives on its data volume ({STEPPATH}), readable only while it runs"
        ));
        return out;
    }
    match client.pull_file(name, STEP_CA_ROOT).await.optional() {
        Ok(Some(pem)) => match root_fingerprint(&pem) {
            Some(fp) => {
                out.bootstrap = Some(format!(
                    "step ca bootstrap --ca-url {} --fingerprint {fp}",
                    out.ca_url
                ));
                out.root_fingerprint = Some(fp);
            }
            None => {
                out.note = Some(format!("{name}:{STEP_CA_ROOT} holds no PEM certificate"));
            }
        },
        Ok(None) => {
            out.note = Some(format!(
                "{name} has no {STEP_CA_ROOT} yet: step-ca initialises itself on its first start"
            ));
        }
        Err(e) => {
            out.note = Some(format!("reading {name}:{STEP_CA_ROOT}: {e}"));
        }
    }
    out
}

/// step's fingerprint of a root certificate: SHA-256 of the first certificate's DER, hex.
pub fn root_fingerprint(pem: &[u8]) -> Option<String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let der = CertificateDer::from_pem_slice(pem).ok()?;
    Some(hex::encode(Sha256::digest(der.as_ref())))
}

/// What each node-exporter sees of the host: its profile's mounts as Incus has them
/// (expanded devices), and what `node_exporter.follow_host_mounts = false` leaves out.
pub fn host_metrics(d: &Deployment, instances: &[Instance]) -> Vec<HostMetrics> {
    use crate::render::node_exporter::{HOST_PROC, HOST_ROOT, HOST_SYS};
    let config = &d.config;
    d.instances_of(ServiceKind::NodeExporter)
        .into_iter()
        .map(|(name, _)| {
            let Some(inst) = instances.iter().find(|i| i.name == name) else {
                return HostMetrics {
                    instance: name.to_string(),
                    host_mounts: false,
                    limitation: Some(format!("{name} does not exist")),
                };
            };
            let missing: Vec<&str> = [("/", HOST_ROOT), ("/proc", HOST_PROC), ("/sys", HOST_SYS)]
                .into_iter()
                .filter(|(source, path)| !mounts(inst, source, path))
                .map(|(_, path)| path)
                .collect();
            let limitation = if !missing.is_empty() {
                Some(format!(
                    "the host is not mounted at {} in {name}: it measures its own container there, not the host (its profile must carry the host-root, host-proc and host-sys disk devices)",
                    missing.join(", ")
                ))
            } else {
                follow_host_mounts_note(config, name)
            };
            HostMetrics {
                instance: name.to_string(),
                host_mounts: missing.is_empty(),
                limitation,
            }
        })
        .collect()
}

/// Whether a disk device of `inst` binds host `source` at `path`.
fn mounts(inst: &Instance, source: &str, path: &str) -> bool {
    inst.expanded_devices.values().any(|d| {
        d.get("type").map(String::as_str) == Some("disk")
            && d.get("source").map(String::as_str) == Some(source)
            && d.get("path").map(|p| p.trim_end_matches('/')) == Some(path)
    })
}

/// What a node-exporter misses with `follow_host_mounts = false` (plan and status say it).
pub fn follow_host_mounts_note(config: &Config, instance: &str) -> Option<String> {
    (!config.node_exporter.follow_host_mounts).then(|| {
        format!(
            "{instance} sees the host's root filesystem, /proc and /sys, but the host's / is bound without mount propagation (node_exporter.follow_host_mounts = false, for hosts whose / is not a shared mount): filesystems the host mounts below / are not visible under /host, so node_filesystem_* is right for / only"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_every_way_in() {
        let mut c = Config::builtin();
        c.caddy.https_port = 8443;
        c.mosquitto.tls = true;
        let e = endpoints(&Deployment::standalone(&c));
        let url = |n: &str| e.iter().find(|x| x.name == n).map(|x| x.url.as_str());
        assert_eq!(
            url("grafana01"),
            Some("https://grafana.atlas.localhost:8443/")
        );
        assert_eq!(url("mqtt"), Some("mqtt://0.0.0.0:1883"));
        assert_eq!(url("mqtts"), Some("mqtts://0.0.0.0:8883"));
        assert_eq!(url("prometheus01"), Some("http://prometheus01.incus:9090/"));
        assert_eq!(url("step-ca01"), Some("https://step-ca01.incus:9000"));
        assert_eq!(
            url("incus-metrics"),
            Some("https://10.50.0.1:8443/1.0/metrics")
        );
        let grafana_internal = e
            .iter()
            .filter(|x| x.name == "grafana01")
            .map(|x| x.reach)
            .collect::<Vec<_>>();
        assert_eq!(grafana_internal, ["public", "internal"]);
        c.caddy.https_port = 443;
        assert_eq!(
            endpoints(&Deployment::standalone(&c))[0].url,
            "https://grafana.atlas.localhost/",
            "no port for 443"
        );
    }

    #[test]
    fn the_root_fingerprint_is_the_sha256_of_the_der() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let want = hex::encode(Sha256::digest(cert.der()));
        assert_eq!(root_fingerprint(cert.pem().as_bytes()), Some(want));
        assert_eq!(root_fingerprint(b"not pem"), None);
    }

    #[test]
    fn a_node_exporter_without_the_host_mounts_says_it_measures_its_container() {
        let cfg = Config::builtin();
        let with = |devices: serde_json::Value| -> Instance {
            serde_json::from_value(serde_json::json!({
                "name": "node-exporter01", "status": "Running", "expanded_devices": devices
            }))
            .unwrap()
        };
        let all = with(serde_json::json!({
            "host-root": {"type": "disk", "source": "/", "path": "/host"},
            "host-proc": {"type": "disk", "source": "/proc", "path": "/host/proc"},
            "host-sys": {"type": "disk", "source": "/sys", "path": "/host/sys"},
        }));
        let seen = host_metrics(&Deployment::standalone(&cfg), std::slice::from_ref(&all));
        assert_eq!(
            (seen[0].host_mounts, seen[0].limitation.as_deref()),
            (true, None)
        );
        let mut cfg2 = cfg.clone();
        cfg2.node_exporter.follow_host_mounts = false;
        let seen = host_metrics(&Deployment::standalone(&cfg2), &[all]);
        assert!(
            seen[0]
                .limitation
                .as_deref()
                .unwrap()
                .contains("right for / only")
        );
        let partial = with(serde_json::json!({
            "host-root": {"type": "disk", "source": "/", "path": "/host"},
        }));
        let seen = host_metrics(&Deployment::standalone(&cfg), &[partial]);
        assert!(!seen[0].host_mounts);
        let why = seen[0].limitation.as_deref().unwrap();
        assert!(
            why.contains("/host/proc, /host/sys") && why.contains("its own container"),
            "{why}"
        );
    }
}
