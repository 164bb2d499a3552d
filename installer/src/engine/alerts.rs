//! Alerts firing now and where notifications go, for `status`.
//!
//! The alerts come from Alertmanager's API (`GET /api/v2/alerts`), read inside the
//! alertmanager container by `atlas-init fetch` through the Incus exec API (see `fetch`):
//! no route from the installer to the stack is needed. Alertmanager lists what Prometheus
//! sent it and has not resolved: `active` alerts are the ones notified, `suppressed` ones are
//! muted by an inhibition (a critical of the same family) or a silence.
//!
//! Where they go comes from the configuration alone ([`routing`]): no receiver configured
//! means alerts stay in Alertmanager, and the report says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Receiver, ServiceKind, Severity};
use crate::incus::{Client, InstanceStatus};

use super::fetch::{self, FetchError};
use super::health::probe_address;

/// Alertmanager's API port (the image's, as in the seed).
const PORT: u16 = 9093;

#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    #[error("no enabled alertmanager instance in the configuration")]
    NoAlertmanager,
    #[error("{0} has no fixed address on an Atlas network")]
    NoAddress(String),
    #[error("{instance} is {state}, so its alerts cannot be read")]
    NotRunning { instance: String, state: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("Alertmanager's answer is not the alert list of API v2: {0}")]
    Decode(String),
}

/// One alert as Alertmanager holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub name: String,
    pub severity: Option<String>,
    /// `active` (notified), `suppressed` (muted) or `unprocessed` (just arrived).
    pub state: String,
    /// What it is about: the container, filesystem or target, with the member on a cluster.
    pub target: String,
    pub summary: Option<String>,
    /// RFC 3339, as Alertmanager gives it.
    pub since: String,
    /// Fingerprints of the alerts that mute it (inhibition) and ids of the silences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inhibited_by: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub silenced_by: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl Alert {
    pub fn firing(&self) -> bool {
        self.state != "suppressed"
    }
}

/// The alerts of the stack's Alertmanager, firing ones first (critical before warning), then
/// the muted ones.
pub async fn current(client: &Client, config: &Config) -> Result<Vec<Alert>, AlertsError> {
    let (name, inst) = config
        .instances_of(ServiceKind::Alertmanager)
        .into_iter()
        .next()
        .ok_or(AlertsError::NoAlertmanager)?;
    let ip = probe_address(inst).ok_or_else(|| AlertsError::NoAddress(name.to_string()))?;
    if let Ok(state) = client.instance_state(name).await {
        if state.status != InstanceStatus::Running {
            return Err(AlertsError::NotRunning {
                instance: name.to_string(),
                state: state.status.to_string(),
            });
        }
    }
    let url = format!("http://{ip}:{PORT}/api/v2/alerts");
    let body = fetch::get(client, name, &url).await?;
    parse(&body)
}

#[derive(Deserialize)]
struct ApiAlert {
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    status: ApiStatus,
}

#[derive(Deserialize)]
struct ApiStatus {
    state: String,
    #[serde(rename = "inhibitedBy", default)]
    inhibited_by: Vec<String>,
    #[serde(rename = "silencedBy", default)]
    silenced_by: Vec<String>,
}

pub fn parse(body: &[u8]) -> Result<Vec<Alert>, AlertsError> {
    let api: Vec<ApiAlert> = serde_json::from_slice(body).map_err(|e| {
        let start = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
        AlertsError::Decode(format!("{e} (it starts with {start:?})"))
    })?;
    let mut alerts: Vec<Alert> = api
        .into_iter()
        .map(|a| Alert {
            name: a.labels.get("alertname").cloned().unwrap_or_default(),
            severity: a.labels.get("severity").cloned(),
            state: a.status.state,
            target: target(&a.labels),
            summary: a.annotations.get("summary").cloned(),
            since: a.starts_at,
            inhibited_by: a.status.inhibited_by,
            silenced_by: a.status.silenced_by,
            labels: a.labels,
        })
        .collect();
    let rank = |a: &Alert| {
        (
            !a.firing(),
            match a.severity.as_deref() {
                Some("critical") => 0,
                Some("warning") => 1,
                _ => 2,
            },
            a.name.clone(),
            a.target.clone(),
        )
    };
    alerts.sort_by_key(rank);
    Ok(alerts)
}

/// The most specific thing an alert names: a container (`name`), a filesystem on a target, or
/// the target; `@member` on a cluster.
fn target(labels: &BTreeMap<String, String>) -> String {
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty());
    let mut t = match (get("name"), get("mountpoint"), get("instance")) {
        (Some(name), _, _) => name.clone(),
        (None, Some(mp), Some(i)) => format!("{mp} on {i}"),
        (None, None, Some(i)) => i.clone(),
        (None, Some(mp), None) => mp.clone(),
        (None, None, None) => get("job").cloned().unwrap_or_default(),
    };
    if let Some(m) = get("member") {
        t.push_str(&format!(" @{m}"));
    }
    t
}

/// Where one severity's notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub severity: String,
    /// `name (kind)` of each receiver.
    pub receivers: Vec<String>,
    pub repeat_interval: String,
}

/// The notification routes of the configuration; empty: alerts stay in Alertmanager.
pub fn routing(config: &Config) -> Vec<Route> {
    let a = &config.alertmanager;
    if let Some(url) = &a.webhook_url {
        // The shorthand: one webhook for everything. Only its host is shown (the path may
        // carry a credential).
        let host = url
            .split_once("://")
            .map_or(url.as_str(), |(_, r)| r)
            .split(['/', '?'])
            .next()
            .unwrap_or_default();
        return vec![Route {
            severity: "all".into(),
            receivers: vec![format!("webhook (webhook to {host})")],
            repeat_interval: a.repeat_interval.clone(),
        }];
    }
    Severity::ALL
        .into_iter()
        .filter_map(|s| {
            let r = a.routes.get(s)?;
            Some(Route {
                severity: s.as_str().to_string(),
                receivers: r
                    .receivers
                    .iter()
                    .map(|n| {
                        let kind = a.receivers.get(n).map_or("?", Receiver::kind_name);
                        format!("{n} ({kind})")
                    })
                    .collect(),
                repeat_interval: r
                    .repeat_interval
                    .clone()
                    .unwrap_or_else(|| a.repeat_interval.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape Alertmanager 0.25 answers /api/v2/alerts with (fields it adds left in).
    const ANSWER: &str = r#"[
      {"annotations":{"summary":"Less than 20% disk space left on /"},"endsAt":"2026-01-01T00:10:00Z",
       "fingerprint":"a1","receivers":[{"name":"default"}],"startsAt":"2026-01-01T00:00:00Z",
       "status":{"inhibitedBy":["c3"],"silencedBy":[],"state":"suppressed"},"updatedAt":"2026-01-01T00:00:00Z",
       "labels":{"alertname":"DiskSpaceWarning","severity":"warning","family":"disk-space","instance":"10.0.0.1:9100","mountpoint":"/","member":"m2"}},
      {"annotations":{},"endsAt":"2026-01-01T00:10:00Z","fingerprint":"b2","receivers":[{"name":"default"}],
       "startsAt":"2026-01-01T00:01:00Z","status":{"inhibitedBy":[],"silencedBy":[],"state":"active"},
       "updatedAt":"2026-01-01T00:00:00Z","labels":{"alertname":"HighMemoryUsage","severity":"warning","name":"grafana01","project":"atlas","instance":"10.50.0.1:8443"}},
      {"annotations":{"summary":"node-exporter on node-exporter01.incus:9100 is down"},"endsAt":"2026-01-01T00:10:00Z",
       "fingerprint":"c3","receivers":[{"name":"oncall"}],"startsAt":"2026-01-01T00:02:00Z",
       "status":{"inhibitedBy":[],"silencedBy":[],"state":"active"},"updatedAt":"2026-01-01T00:00:00Z",
       "labels":{"alertname":"ServiceDown","severity":"critical","job":"node-exporter","instance":"node-exporter01.incus:9100"}}
    ]"#;

    #[test]
    fn alerts_are_read_firing_first_with_what_they_are_about() {
        let a = parse(ANSWER.as_bytes()).unwrap();
        let seen: Vec<(&str, &str, &str, bool)> = a
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.state.as_str(),
                    a.target.as_str(),
                    a.firing(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("ServiceDown", "active", "node-exporter01.incus:9100", true),
                ("HighMemoryUsage", "active", "grafana01", true),
                (
                    "DiskSpaceWarning",
                    "suppressed",
                    "/ on 10.0.0.1:9100 @m2",
                    false
                ),
            ]
        );
        assert_eq!(a[2].inhibited_by, ["c3"]);
        assert_eq!(
            a[0].summary.as_deref(),
            Some("node-exporter on node-exporter01.incus:9100 is down")
        );
        assert!(parse(b"[]").unwrap().is_empty());
        let e = parse(b"<html>").unwrap_err().to_string();
        assert!(e.contains("starts with \"<html>\""), "{e}");
    }

    #[test]
    fn routing_says_where_each_severity_goes() {
        use crate::config::{AlertRoutes, SeverityRoute, WebhookReceiver};
        let mut c = Config::builtin();
        assert!(routing(&c).is_empty(), "nothing configured: alerts stay");
        c.alertmanager.receivers.insert(
            "pager".into(),
            Receiver::Webhook(WebhookReceiver {
                url: "https://h.example/x".into(),
                bearer_token_file: None,
            }),
        );
        c.alertmanager.routes = AlertRoutes {
            critical: Some(SeverityRoute {
                receivers: vec!["pager".into()],
                repeat_interval: Some("1h".into()),
            }),
            warning: None,
        };
        assert_eq!(
            routing(&c),
            [Route {
                severity: "critical".into(),
                receivers: vec!["pager (webhook)".into()],
                repeat_interval: "1h".into(),
            }]
        );
        let mut legacy = Config::builtin();
        legacy.alertmanager.webhook_url = Some("https://hooks.example/T0KEN/x".into());
        let r = routing(&legacy);
        assert_eq!(r[0].receivers, ["webhook (webhook to hooks.example)"]);
        assert!(!format!("{r:?}").contains("T0KEN"));
    }
}
