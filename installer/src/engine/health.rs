//! Health gates (step 10): Grafana `/api/health`, Loki `/ready`, Prometheus and Alertmanager
//! `/-/ready`, node-exporter `/metrics`, Caddy's metrics listener, step-ca's TLS listener,
//! Mosquitto TCP accept. On timeout: which service, and its last log lines.
//!
//! CONTRACT: `gate(client, config, timeout, progress)` waits for every enabled instance and
//! returns the first failure with the service named; `check(client, config)` probes once
//! (for `status`).
//!
//! Every probe runs inside its own container, through the Incus API: `incus exec` of our PID
//! 1 in probe mode (`/sbin/init probe URL`, in every Atlas image). The installer therefore
//! needs no route to the containers: it works the same against a remote server, on cluster
//! members whose bridges it cannot reach, and from a host (or network namespace) with no
//! network at all, where the Incus socket is its only connection. The probe targets the
//! address the service listens on (its fixed address on an Atlas bridge, which is also how
//! the other services reach it), so a service bound to the wrong address still fails.
//!
//! TLS: a service serving TLS (step-ca always, others with `tls = true`) is probed with a
//! TLS ClientHello that must be answered with a ServerHello; atlas-init carries no TLS stack
//! (see its `probe.rs`). [`probe_client`] is the host-side HTTP client that the few
//! operations needing a real HTTP exchange (rotating Grafana's admin password) use.

// Our errors carry `IncusError` (large, owned by the client module) by value so callers can
// match on it; boxing it would change the contract the install sequence is written against.
#![allow(clippy::result_large_err)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{Config, Instance, NetworkRole, ServiceKind};
use crate::deployment::Deployment;
use crate::incus::{Client, IncusError, InstanceStatus};
use crate::progress::{Progress, ProgressTask};

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Incus(#[from] IncusError),
    #[error(
        "{instance} did not become healthy (waited {waited:?} of {timeout:?}): {reason}\nlast log lines:\n{log_tail}"
    )]
    Unhealthy {
        instance: String,
        /// Less than `timeout` when waiting could not help (the instance stopped or gone).
        waited: Duration,
        timeout: Duration,
        reason: String,
        log_tail: String,
    },
    #[error("health probes: {0}")]
    Setup(String),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthReport {
    pub instance: String,
    pub healthy: bool,
    pub detail: String,
}

/// How one instance is checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    pub instance: String,
    pub service: ServiceKind,
    pub check: Check,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Check {
    /// GET answers 2xx (`http://`), or a TLS server answers the ClientHello (`https://`).
    Http { url: String },
    /// A TCP connection is accepted.
    Tcp { address: SocketAddr },
}

impl Check {
    /// The argument of `atlas-init probe`.
    pub fn url(&self) -> String {
        match self {
            Check::Http { url } => url.clone(),
            Check::Tcp { address } => format!("tcp://{address}"),
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Http { url } if url.starts_with("https://") => write!(f, "TLS {url}"),
            Check::Http { url } => write!(f, "GET {url}"),
            Check::Tcp { address } => write!(f, "TCP connect {address}"),
        }
    }
}

/// Host-side HTTP limits ([`probe_client`]); atlas-init applies the same ones in probe mode.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(4);
pub(crate) const LOG_LINES: usize = 30;

/// The probe of every enabled instance, in dependency order.
pub fn probes(d: &Deployment) -> Vec<Probe> {
    d.enabled_instances()
        .into_iter()
        .filter_map(|(name, inst)| probe_for(&d.config, name, inst))
        .collect()
}

/// `None` when the instance has no fixed address on an Atlas bridge.
pub fn probe_for(config: &Config, name: &str, inst: &Instance) -> Option<Probe> {
    let ip = IpAddr::V4(probe_address(inst)?);
    let port_of = |kind: ServiceKind| kind.defaults().port;
    let scheme = if inst.tls { "https" } else { "http" };
    let http = |scheme: &str, port: u16, path: &str| Check::Http {
        url: format!("{scheme}://{}{path}", SocketAddr::new(ip, port)),
    };
    let kind = inst.service;
    let check = match kind {
        ServiceKind::Grafana => http(scheme, port_of(kind), "/api/health"),
        ServiceKind::Loki => http(scheme, port_of(kind), "/ready"),
        ServiceKind::Prometheus => http(scheme, port_of(kind), "/-/ready"),
        ServiceKind::Alertmanager => http("http", port_of(kind), "/-/ready"),
        ServiceKind::NodeExporter => http("http", port_of(kind), "/metrics"),
        ServiceKind::Caddy => http("http", config.caddy.admin_port, "/metrics"),
        ServiceKind::Cloudflared => http("http", config.cloudflared.metrics_port, "/ready"),
        ServiceKind::StepCa => http("https", port_of(kind), "/health"),
        ServiceKind::Mosquitto => Check::Tcp {
            address: SocketAddr::new(ip, crate::render::mosquitto::MQTT_PORT),
        },
    };
    Some(Probe {
        instance: name.to_string(),
        service: kind,
        check,
    })
}

/// Caddy: its metrics listener binds the management and production addresses only. Others:
/// the first NIC on an Atlas bridge.
pub(crate) fn probe_address(inst: &Instance) -> Option<std::net::Ipv4Addr> {
    let on = |role: NetworkRole| {
        inst.nics
            .iter()
            .find(|n| n.network == role)
            .and_then(|n| n.ipv4)
    };
    if inst.service == ServiceKind::Caddy {
        return on(NetworkRole::Management).or_else(|| on(NetworkRole::Production));
    }
    inst.nics
        .iter()
        .filter(|n| n.network != NetworkRole::External)
        .find_map(|n| n.ipv4)
}

/// A host-side HTTP client for talking to a service's API (not for health probes): no proxy,
/// short timeouts, any server certificate: it is used on addresses the engine itself assigned,
/// before the host holds step-ca's root.
pub fn probe_client() -> Result<reqwest::Client, HealthError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HealthError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| HealthError::Setup(format!("building the HTTP client: {e}")))
}

/// One attempt, run inside `instance`; `Err` carries why it is not healthy (yet).
pub async fn probe_once(client: &Client, instance: &str, check: &Check) -> Result<String, String> {
    let init = format!("/{}", atlas_image::init::INIT_PATH);
    let url = check.url();
    let out = client
        .probe_exec(instance, &[&init, "probe", &url])
        .await
        .map_err(|e| format!("{check}: running the probe in {instance}: {e}"))?;
    probe_verdict(
        instance,
        out.exit_code,
        &out.stdout_str(),
        &out.stderr_str(),
    )
}

/// Reads atlas-init's answer. An image built before probe mode existed has an atlas-init that
/// refuses the argument: said as such, since waiting will not fix it.
fn probe_verdict(instance: &str, code: i64, stdout: &str, stderr: &str) -> Result<String, String> {
    let said = stdout.trim();
    match code {
        0 => Ok(said.to_string()),
        1 if said.is_empty() && stderr.contains("unknown argument") => Err(format!(
            "the /sbin/init of {instance}'s image predates health probes; rebuild the image with this atlas-install"
        )),
        1 => Err(said.to_string()),
        126 | 127 => Err(format!(
            "{instance} has no runnable /sbin/init (exit {code}): not an Atlas image; rebuild it with atlas-install"
        )),
        _ => Err(format!(
            "the probe in {instance} ended with status {code}: {}",
            if said.is_empty() { stderr.trim() } else { said }
        )),
    }
}

/// Waits until every enabled instance answers its probe, each with its own progress task and
/// retries with backoff; the whole gate gives up after `timeout`. Returns the first failure
/// in dependency order.
pub async fn gate(
    client: &Client,
    d: &Deployment,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<(), HealthError> {
    gate_probes(client, &d.config, probes(d), timeout, progress).await
}

/// [`gate`] over explicit probes. A failure's console-log excerpt is cut of every secret
/// value of `config`'s deployment ([`super::redact`]).
pub async fn gate_probes(
    client: &Client,
    config: &Config,
    probes: Vec<Probe>,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<(), HealthError> {
    let mut set = tokio::task::JoinSet::new();
    for (index, probe) in probes.into_iter().enumerate() {
        let task = progress.task(
            &format!("health {} ({})", probe.instance, probe.check),
            None,
        );
        let client = client.clone();
        set.spawn(async move { (index, wait_healthy(&client, &probe, timeout, task).await) });
    }
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((index, Err(e))) => failures.push((index, e)),
            Ok((_, Ok(()))) => {}
            Err(e) => {
                return Err(HealthError::Setup(format!(
                    "a health probe task ended abnormally: {e}"
                )));
            }
        }
    }
    failures.sort_by_key(|(i, _)| *i);
    match failures.into_iter().next() {
        Some((_, e)) => Err(e.redacted(client, config).await),
        None => Ok(()),
    }
}

impl HealthError {
    /// The same error with the log excerpt and the probe's words cut of secrets.
    async fn redacted(self, client: &Client, config: &Config) -> HealthError {
        match self {
            HealthError::Unhealthy {
                instance,
                waited,
                timeout,
                reason,
                log_tail,
            } => HealthError::Unhealthy {
                reason: super::redact::excerpt(client, config, &reason).await,
                log_tail: super::redact::excerpt(client, config, &log_tail).await,
                instance,
                waited,
                timeout,
            },
            other => other,
        }
    }
}

async fn wait_healthy(
    client: &Client,
    probe: &Probe,
    timeout: Duration,
    task: Box<dyn ProgressTask>,
) -> Result<(), HealthError> {
    let start = Instant::now();
    let mut delay = FIRST_DELAY;
    let mut stopped_seen = 0;
    let reason = loop {
        let last = match probe_once(client, &probe.instance, &probe.check).await {
            Ok(_) => {
                task.finish(&format!(
                    "healthy after {:.1}s",
                    start.elapsed().as_secs_f32()
                ));
                return Ok(());
            }
            Err(reason) => reason,
        };
        task.set_message(&last);
        // A stopped container will not come up by waiting: say so early. Seen twice, so a
        // restart by `boot.autorestart` in between is not mistaken for a crash.
        match client.instance_state(&probe.instance).await {
            Ok(s) if s.status == InstanceStatus::Running => stopped_seen = 0,
            Ok(s) => {
                stopped_seen += 1;
                if stopped_seen >= 2 {
                    break format!("the instance is {} ({last})", s.status);
                }
            }
            Err(e) if e.is_not_found() => break format!("the instance does not exist ({last})"),
            Err(_) => {}
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            break last;
        }
        tokio::time::sleep(delay.min(left)).await;
        delay = (delay * 2).min(MAX_DELAY);
    };
    task.fail(&reason);
    Err(HealthError::Unhealthy {
        instance: probe.instance.clone(),
        waited: round(start.elapsed()),
        timeout,
        reason: format!("{} ({}): {reason}", probe.service.as_str(), probe.check),
        log_tail: log_tail(client, &probe.instance, LOG_LINES).await,
    })
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

/// Probes every enabled instance once (concurrently), for `status`.
pub async fn check(client: &Client, d: &Deployment) -> Result<Vec<HealthReport>, HealthError> {
    // One listing instead of a state call per instance; a stopped or missing instance is
    // reported as such rather than as a refused connection.
    let status: std::collections::BTreeMap<String, InstanceStatus> = client
        .instances()
        .await?
        .into_iter()
        .map(|i| (i.name, i.status))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    let probes = probes(d);
    let mut reports: Vec<HealthReport> = d
        .enabled_instances()
        .into_iter()
        .filter(|(n, _)| !probes.iter().any(|p| p.instance == *n))
        .map(|(n, _)| HealthReport {
            instance: n.to_string(),
            healthy: false,
            detail: "no fixed address to probe".into(),
        })
        .collect();
    for (index, probe) in probes.into_iter().enumerate() {
        let client = client.clone();
        let state = status.get(&probe.instance).cloned();
        set.spawn(async move {
            let r = match state {
                None => Err("the instance does not exist".to_string()),
                Some(InstanceStatus::Running) => {
                    probe_once(&client, &probe.instance, &probe.check).await
                }
                Some(other) => Err(format!("the instance is {other}")),
            };
            let (healthy, detail) = match r {
                Ok(d) => (true, d),
                Err(d) => (false, d),
            };
            (
                index,
                HealthReport {
                    instance: probe.instance,
                    healthy,
                    detail,
                },
            )
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| {
            HealthError::Setup(format!("a health probe task ended abnormally: {e}"))
        })?;
        done.push((i, r));
    }
    done.sort_by_key(|(i, _)| *i);
    reports.splice(0..0, done.into_iter().map(|(_, r)| r));
    Ok(reports)
}

/// The last `lines` lines of the instance's console log (where atlas-init and the service
/// write), or a note saying why there are none. Never fails: it only decorates an error.
pub async fn log_tail(client: &Client, instance: &str, lines: usize) -> String {
    match console_log(client, instance).await {
        Ok(text) if text.trim().is_empty() => "  (the console log is empty)".to_string(),
        Ok(text) => last_lines(&text, lines),
        Err(e) => format!("  (console log unavailable: {e})"),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    all[all.len().saturating_sub(n)..]
        .iter()
        .map(|l| {
            let clean: String = l
                .chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .take(300)
                .collect();
            format!("  | {clean}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The instance's console log (where atlas-init and the service write), as text.
pub async fn console_log(client: &Client, instance: &str) -> Result<String, String> {
    let bytes = client
        .instance_console_log(instance)
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Accepts any server certificate whose handshake signature is valid (see the module docs
/// for why only health probes use it).
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(config: &Config) -> Vec<(String, String)> {
        probes(&Deployment::standalone(config))
            .into_iter()
            .map(|p| (p.instance, p.check.to_string()))
            .collect()
    }

    #[test]
    fn builtin_probes_hit_each_service_on_its_bridge_address() {
        let cfg = Config::builtin();
        let got = urls(&cfg);
        let want = [
            ("step-ca01", "TLS https://10.50.0.15:9000/health"),
            ("prometheus01", "GET http://10.50.0.12:9090/-/ready"),
            ("loki01", "GET http://10.50.0.13:3100/ready"),
            ("alertmanager01", "GET http://10.50.0.14:9093/-/ready"),
            ("node-exporter01", "GET http://10.50.0.16:9100/metrics"),
            ("mosquitto01", "TCP connect 10.40.0.17:1883"),
            ("grafana01", "GET http://10.50.0.11:3000/api/health"),
            ("caddy01", "GET http://10.50.0.10:2019/metrics"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        let mqtt = probes(&Deployment::standalone(&cfg))
            .into_iter()
            .find(|p| p.instance == "mosquitto01");
        assert_eq!(mqtt.unwrap().check.url(), "tcp://10.40.0.17:1883");
    }

    #[test]
    fn tls_services_are_probed_over_https() {
        let mut cfg = Config::builtin();
        cfg.instances.get_mut("grafana01").unwrap().tls = true;
        let g = urls(&cfg)
            .into_iter()
            .find(|(n, _)| n == "grafana01")
            .unwrap();
        assert_eq!(g.1, "TLS https://10.50.0.11:3000/api/health");
    }

    #[test]
    fn log_tail_keeps_the_last_lines_clean() {
        let text = "a\r\nb\n\n\x1b[31mred\x1b[0m\nlast\n";
        assert_eq!(last_lines(text, 2), "  | [31mred[0m\n  | last");
        assert_eq!(last_lines("x", 5), "  | x");
    }

    #[test]
    fn probe_answers_are_read_with_their_cause() {
        assert_eq!(
            probe_verdict("p", 0, "GET http://x:1/: HTTP 200\n", ""),
            Ok("GET http://x:1/: HTTP 200".into())
        );
        assert_eq!(
            probe_verdict("p", 1, "TCP connect 1.2.3.4:5: refused\n", ""),
            Err("TCP connect 1.2.3.4:5: refused".into())
        );
        let old = probe_verdict("p", 1, "", "atlas-init: unknown argument \"probe\"; usage");
        assert!(old.unwrap_err().contains("predates health probes"));
        assert!(
            probe_verdict("p", 127, "", "")
                .unwrap_err()
                .contains("not an Atlas image")
        );
        assert!(
            probe_verdict("p", 2, "usage: x", "")
                .unwrap_err()
                .contains("usage: x")
        );
    }
}
