//! What `atlas-install status` reports, read from Incus and never written: the project,
//! owned instances with state and addresses, volumes, networks, profiles, the installed
//! version, the server wiring, one health probe per instance, the alerts firing in
//! Alertmanager and where notifications go, the services' certificates, and the outputs
//! (computed by `engine::outputs`). The report is healthy when every configured service is;
//! firing alerts are reported, not counted. How it is shown is the binary's business.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::deployment::Deployment;
use crate::engine::{EngineError, alerts, certs, cluster, health, outputs, secrets, wiring};
use crate::incus::{Client, IncusError, InstanceState, OptionalExt as _};
use crate::state::keys;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading project {project}")]
    Project {
        project: String,
        #[source]
        source: IncusError,
    },
    #[error("reading the cluster members")]
    Members(#[source] IncusError),
    #[error("listing the instances on offline members")]
    OfflineMembers(#[source] IncusError),
    #[error("probing the services")]
    Health(#[source] health::HealthError),
    #[error("listing instances")]
    Instances(#[source] IncusError),
    #[error("listing volumes of pool {pool}")]
    Volumes {
        pool: String,
        #[source]
        source: IncusError,
    },
    #[error("listing networks")]
    Networks(#[source] IncusError),
    #[error("listing profiles")]
    Profiles(#[source] IncusError),
    #[error("reading the services' certificates")]
    Certificates(#[source] EngineError),
    #[error("collecting the outputs")]
    Outputs(#[source] IncusError),
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub endpoint: String,
    pub project: String,
    pub installed: bool,
    /// `user.atlas.version` of the project.
    pub version: Option<String>,
    pub instances: Vec<InstanceStatus>,
    pub volumes: Vec<Named>,
    pub networks: Vec<Named>,
    pub profiles: Vec<Named>,
    pub wiring: WiringStatus,
    /// The TLS services' certificates from step-ca, and when `install` renews them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<certs::CertStatus>,
    /// On a cluster: members that are not online, with the instances on them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub offline_members: Vec<cluster::OfflineMember>,
    pub alerts: AlertsStatus,
    /// Where things are reached and how to trust step-ca (absent when nothing is installed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<outputs::Outputs>,
    pub healthy: bool,
}

/// Alertmanager's alerts now, and where notifications go.
#[derive(Debug, Default, Serialize)]
pub struct AlertsStatus {
    /// Every alert Alertmanager holds, firing first; `None` when they could not be read.
    pub alerts: Option<Vec<alerts::Alert>>,
    pub firing: usize,
    /// Muted by the inhibition of a critical alert, or by a silence.
    pub suppressed: usize,
    /// Why the alerts could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Empty: no receiver is configured and alerts stay in Alertmanager.
    pub routes: Vec<alerts::Route>,
}

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub name: String,
    pub managed: bool,
    pub state: String,
    pub addresses: Vec<String>,
    /// Description of the image the instance was created from.
    pub image: Option<String>,
    /// The cluster member it runs on (absent on a single server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `None` when the config has no such instance (nothing to probe).
    pub health: Option<health::HealthReport>,
}

impl InstanceStatus {
    /// Configured but absent from Incus (unhealthy, with its probe's report).
    pub const MISSING: &str = "Missing";
}

#[derive(Debug, Serialize)]
pub struct Named {
    pub name: String,
    pub managed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct WiringStatus {
    /// `converged`, `pending`, `conflict` or `unknown`.
    pub state: String,
    pub changes: Vec<wiring::WiringChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl WiringStatus {
    fn unknown(note: Option<String>) -> WiringStatus {
        WiringStatus {
            state: "unknown".into(),
            changes: Vec::new(),
            note,
        }
    }
}

impl Report {
    /// Nothing installed yet: the project does not exist.
    fn empty(client: &Client, config: &Config) -> Report {
        Report {
            endpoint: client.endpoint(),
            project: config.incus.project.clone(),
            installed: false,
            version: None,
            instances: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
            profiles: Vec::new(),
            wiring: WiringStatus::unknown(None),
            offline_members: Vec::new(),
            alerts: AlertsStatus::default(),
            certificates: Vec::new(),
            outputs: None,
            healthy: false,
        }
    }
}

/// The whole report. Fails only when Incus cannot be read; what a service cannot tell
/// (its alerts, the wiring) is said in the report.
pub async fn collect(client: &Client, config: &Config) -> Result<Report, StatusError> {
    let mut report = Report::empty(client, config);
    let project_name = &report.project;
    let Some(project) = client
        .get_project(project_name)
        .await
        .optional()
        .map_err(|source| StatusError::Project {
            project: project_name.clone(),
            source,
        })?
    else {
        return Ok(report);
    };
    report.installed = true;
    report.version = project.value.config.get(keys::VERSION).cloned();

    let d = Deployment::read(client, config)
        .await
        .map_err(StatusError::Members)?;
    report.offline_members = cluster::offline_members(client, config, &d.cluster)
        .await
        .map_err(StatusError::OfflineMembers)?;
    let health = health::check(client, &d)
        .await
        .map_err(StatusError::Health)?;
    report.instances = instances(client, &d, &health).await?;
    report.healthy = !health.is_empty() && health.iter().all(|h| h.healthy);
    report.volumes = volumes(client, config).await?;
    report.networks = networks(client, config).await?;
    report.profiles = profiles(client).await?;
    report.wiring = wiring_status(client, &d).await;
    report.alerts = alerts_status(client, config).await;
    report.certificates = certs::status(client, &d)
        .await
        .map_err(StatusError::Certificates)?;
    report.outputs = Some(
        outputs::collect(client, &d)
            .await
            .map_err(StatusError::Outputs)?,
    );
    Ok(report)
}

/// Every instance in the project with its probe, then the configured ones that do not exist
/// (they count as unhealthy too).
async fn instances(
    client: &Client,
    d: &Deployment,
    health: &[health::HealthReport],
) -> Result<Vec<InstanceStatus>, StatusError> {
    let by_name: BTreeMap<&str, &health::HealthReport> =
        health.iter().map(|h| (h.instance.as_str(), h)).collect();
    let mut out = Vec::new();
    for inst in client.instances().await.map_err(StatusError::Instances)? {
        let addresses = match client.instance_state(&inst.name).await {
            Ok(s) => ipv4_addresses(&s),
            Err(_) => Vec::new(),
        };
        out.push(InstanceStatus {
            managed: keys::is_owned(&inst.config),
            state: inst.status.to_string(),
            addresses,
            image: inst.config.get("image.description").cloned(),
            health: by_name.get(inst.name.as_str()).map(|h| (*h).clone()),
            location: Some(inst.location.clone()).filter(|l| d.cluster.clustered && !l.is_empty()),
            name: inst.name,
        });
    }
    let missing: Vec<&health::HealthReport> = health
        .iter()
        .filter(|h| !out.iter().any(|i| i.name == h.instance))
        .collect();
    for h in missing {
        out.push(InstanceStatus {
            name: h.instance.clone(),
            managed: false,
            state: InstanceStatus::MISSING.into(),
            addresses: Vec::new(),
            image: None,
            location: None,
            health: Some(h.clone()),
        });
    }
    Ok(out)
}

/// The volumes of the config's pool; a missing pool means no volumes, not a failed status.
async fn volumes(client: &Client, config: &Config) -> Result<Vec<Named>, StatusError> {
    let pool = &config.incus.storage_pool;
    let volumes = client
        .volumes(pool)
        .await
        .optional()
        .map_err(|source| StatusError::Volumes {
            pool: pool.clone(),
            source,
        })?
        .unwrap_or_default();
    Ok(volumes
        .into_iter()
        .map(|v| Named {
            managed: keys::is_owned(&v.config),
            detail: Some(format!("pool {pool}")),
            name: v.name,
        })
        .collect())
}

/// The networks atlas owns or the config names.
async fn networks(client: &Client, config: &Config) -> Result<Vec<Named>, StatusError> {
    let wanted: Vec<&str> = config
        .networks
        .iter()
        .map(|(_, n)| n.name.as_str())
        .collect();
    Ok(client
        .networks()
        .await
        .map_err(StatusError::Networks)?
        .into_iter()
        .filter(|n| keys::is_owned(&n.config) || wanted.contains(&n.name.as_str()))
        .map(|n| Named {
            managed: keys::is_owned(&n.config),
            detail: n.config.get("ipv4.address").cloned(),
            name: n.name,
        })
        .collect())
}

/// The project's profiles but `default`.
async fn profiles(client: &Client) -> Result<Vec<Named>, StatusError> {
    Ok(client
        .profiles()
        .await
        .map_err(StatusError::Profiles)?
        .into_iter()
        .filter(|p| p.name != "default")
        .map(|p| Named {
            managed: keys::is_owned(&p.config),
            detail: None,
            name: p.name,
        })
        .collect())
}

/// Never fails the report: what cannot be read is said in `note`.
async fn alerts_status(client: &Client, config: &Config) -> AlertsStatus {
    let routes = alerts::routing(config);
    match alerts::current(client, config).await {
        Ok(list) => AlertsStatus {
            firing: list.iter().filter(|a| a.firing()).count(),
            suppressed: list.iter().filter(|a| !a.firing()).count(),
            alerts: Some(list),
            note: None,
            routes,
        },
        Err(e) => AlertsStatus {
            note: Some(e.to_string()),
            routes,
            ..AlertsStatus::default()
        },
    }
}

fn ipv4_addresses(state: &InstanceState) -> Vec<String> {
    let mut out: Vec<String> = state
        .network
        .iter()
        .flatten()
        .filter(|(nic, _)| nic.as_str() != "lo")
        .flat_map(|(_, n)| n.addresses.iter())
        .filter(|a| a.family == "inet")
        .map(|a| a.address.clone())
        .collect();
    out.sort();
    out
}

/// The wiring plan, when the secrets it compares against are stored. Never fails the
/// report: status reports what it can.
async fn wiring_status(client: &Client, d: &Deployment) -> WiringStatus {
    let secrets = match secrets::load(client, &d.config).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return WiringStatus::unknown(Some(
                "the generated secrets are not (all) stored yet: install has not completed".into(),
            ));
        }
        Err(e) => return WiringStatus::unknown(Some(format!("reading the stored secrets: {e}"))),
    };
    match wiring::plan(client, d, &secrets).await {
        Ok(changes) => {
            let state = if changes.is_empty() {
                "converged"
            } else if changes.iter().any(|c| c.is_conflict()) {
                "conflict"
            } else {
                "pending"
            };
            WiringStatus {
                state: state.into(),
                changes,
                note: None,
            }
        }
        Err(e) => WiringStatus::unknown(Some(e.to_string())),
    }
}
