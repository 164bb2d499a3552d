//! Where things live inside each container, and which user owns them (from the upstream
//! images: see UPSTREAM-IMAGES.md). The installer pushes certificates to these paths.

use crate::config::ServiceKind;

use super::{ExpectedFile, FileSource};

/// uid:gid the service runs as inside its image.
pub fn service_user(kind: ServiceKind) -> (u32, u32) {
    match kind {
        ServiceKind::Caddy => (0, 0),
        ServiceKind::Grafana => (472, 0),
        ServiceKind::Prometheus | ServiceKind::Alertmanager | ServiceKind::NodeExporter => {
            (65534, 65534)
        }
        ServiceKind::Loki => (10001, 10001),
        ServiceKind::StepCa => (1000, 1000),
        // The broker starts as root and drops to the `mosquitto` user (1883).
        ServiceKind::Mosquitto => (1883, 1883),
        ServiceKind::Cloudflared => (65532, 65532),
    }
}

/// Configuration directory of a service inside its container.
pub fn config_dir(kind: ServiceKind) -> &'static str {
    match kind {
        ServiceKind::Caddy => "/etc/caddy",
        ServiceKind::Grafana => "/etc/grafana",
        ServiceKind::Prometheus => "/etc/prometheus",
        ServiceKind::Loki => "/etc/loki",
        ServiceKind::Alertmanager => "/etc/alertmanager",
        ServiceKind::StepCa => "/etc/step-ca",
        ServiceKind::NodeExporter => "/etc/node-exporter",
        ServiceKind::Mosquitto => "/mosquitto/config",
        ServiceKind::Cloudflared => "/etc/cloudflared",
    }
}

/// step-ca's root certificate as trusted by a service (`<config dir>/step-ca/root_ca.crt`).
pub fn step_ca_root(kind: ServiceKind) -> String {
    format!("{}/step-ca/root_ca.crt", config_dir(kind))
}

/// The service's own certificate and key from step-ca (`<config dir>/tls/tls.{crt,key}`, the
/// seed's `/etc/<service>/tls/`).
pub fn service_cert(kind: ServiceKind) -> (String, String) {
    let dir = config_dir(kind);
    (format!("{dir}/tls/tls.crt"), format!("{dir}/tls/tls.key"))
}

/// Prometheus' client certificate for Incus' /1.0/metrics, its key, and the Incus server
/// certificate it pins.
pub const INCUS_METRICS_CERT: &str = "/etc/prometheus/incus/metrics.crt";
pub const INCUS_METRICS_KEY: &str = "/etc/prometheus/incus/metrics.key";
pub const INCUS_SERVER_CERT: &str = "/etc/prometheus/incus/server.crt";
/// Incus' self-signed server certificate names only the host name, 127.0.0.1 and ::1, never
/// the bridge gateway Prometheus dials. Verifying against 127.0.0.1 with that very certificate
/// as the only CA pins it exactly, without turning verification off.
pub const INCUS_TLS_SERVER_NAME: &str = "127.0.0.1";

pub(crate) fn expect_root(kind: ServiceKind) -> ExpectedFile {
    ExpectedFile {
        path: step_ca_root(kind),
        source: FileSource::StepCaRoot,
        mode: 0o644,
        uid: 0,
        gid: 0,
    }
}

/// The certificate is public; the key is readable by the service user only.
pub(crate) fn expect_service_cert(kind: ServiceKind) -> [ExpectedFile; 2] {
    let (cert, key) = service_cert(kind);
    let (uid, gid) = service_user(kind);
    [
        ExpectedFile {
            path: cert,
            source: FileSource::ServiceCertificate,
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        ExpectedFile {
            path: key,
            source: FileSource::ServiceKey,
            mode: 0o600,
            uid,
            gid,
        },
    ]
}
