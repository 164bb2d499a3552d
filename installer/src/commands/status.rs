//! `atlas-install status`: what is installed (the project, owned instances with state and
//! addresses, volumes, networks, profiles, the installed version), the server wiring, one
//! health probe per instance, the alerts firing in Alertmanager and where notifications go,
//! the services' certificates, and the outputs (endpoints, step-ca's root fingerprint and how
//! to trust it, how node-exporter sees the host; computed by `engine::outputs`). Read-only.
//! Exit 0 when every service is healthy, 1 otherwise (nothing installed included); firing
//! alerts are reported, not counted. `--json` puts the same report on stdout.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use atlas_install::config::Config;
use atlas_install::deployment::Deployment;
use atlas_install::engine::{alerts, certs, cluster, health, outputs, secrets, wiring};
use atlas_install::incus::{Client, OptionalExt as _};
use atlas_install::state::keys;
use serde::Serialize;

use crate::cli::GlobalArgs;

#[derive(Debug, Serialize)]
struct Report {
    endpoint: String,
    project: String,
    installed: bool,
    /// `user.atlas.version` of the project.
    version: Option<String>,
    instances: Vec<InstanceStatus>,
    volumes: Vec<Named>,
    networks: Vec<Named>,
    profiles: Vec<Named>,
    wiring: WiringStatus,
    /// The TLS services' certificates from step-ca, and when `install` renews them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    certificates: Vec<certs::CertStatus>,
    /// On a cluster: members that are not online, with the instances on them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    offline_members: Vec<cluster::OfflineMember>,
    alerts: AlertsStatus,
    /// Where things are reached and how to trust step-ca (absent when nothing is installed).
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<outputs::Outputs>,
    healthy: bool,
}

/// Alertmanager's alerts now, and where notifications go.
#[derive(Debug, Default, Serialize)]
struct AlertsStatus {
    /// Every alert Alertmanager holds, firing first; `None` when they could not be read.
    alerts: Option<Vec<alerts::Alert>>,
    firing: usize,
    /// Muted by the inhibition of a critical alert, or by a silence.
    suppressed: usize,
    /// Why the alerts could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// Empty: no receiver is configured and alerts stay in Alertmanager.
    routes: Vec<alerts::Route>,
}

#[derive(Debug, Serialize)]
struct InstanceStatus {
    name: String,
    managed: bool,
    state: String,
    addresses: Vec<String>,
    /// Description of the image the instance was created from.
    image: Option<String>,
    /// The cluster member it runs on (absent on a single server).
    #[serde(skip_serializing_if = "Option::is_none")]
    location: Option<String>,
    /// `None` when the config has no such instance (nothing to probe).
    health: Option<health::HealthReport>,
}

#[derive(Debug, Serialize)]
struct Named {
    name: String,
    managed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Debug, Serialize)]
struct WiringStatus {
    /// `converged`, `pending`, `conflict` or `unknown`.
    state: String,
    changes: Vec<wiring::WiringChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

pub fn run(global: &GlobalArgs) -> Result<ExitCode> {
    let config = super::load_config(global)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(collect(&config))?;
    if global.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &report).context("writing the JSON report")?;
        writeln!(out)?;
    } else {
        print_human(&report);
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn collect(config: &Config) -> Result<Report> {
    let client = Client::from_config(&config.incus).context("connecting to Incus")?;
    let project_name = config.incus.project.clone();
    let mut report = Report {
        endpoint: client.endpoint(),
        project: project_name.clone(),
        installed: false,
        version: None,
        instances: Vec::new(),
        volumes: Vec::new(),
        networks: Vec::new(),
        profiles: Vec::new(),
        wiring: WiringStatus {
            state: "unknown".into(),
            changes: Vec::new(),
            note: None,
        },
        offline_members: Vec::new(),
        alerts: AlertsStatus::default(),
        certificates: Vec::new(),
        outputs: None,
        healthy: false,
    };
    let Some(project) = client
        .get_project(&project_name)
        .await
        .optional()
        .with_context(|| format!("reading project {project_name}"))?
    else {
        return Ok(report);
    };
    report.installed = true;
    report.version = project.value.config.get(keys::VERSION).cloned();

    let d = Deployment::read(&client, config)
        .await
        .context("reading the cluster members")?;
    let info = &d.cluster;
    report.offline_members = cluster::offline_members(&client, config, info)
        .await
        .context("listing the instances on offline members")?;
    let health = health::check(&client, &d)
        .await
        .context("probing the services")?;
    let by_name: BTreeMap<&str, &health::HealthReport> =
        health.iter().map(|h| (h.instance.as_str(), h)).collect();
    for inst in client.instances().await.context("listing instances")? {
        let addresses = match client.instance_state(&inst.name).await {
            Ok(s) => ipv4_addresses(&s),
            Err(_) => Vec::new(),
        };
        report.instances.push(InstanceStatus {
            managed: keys::is_owned(&inst.config),
            state: inst.status.to_string(),
            addresses,
            image: inst.config.get("image.description").cloned(),
            health: by_name.get(inst.name.as_str()).map(|h| (*h).clone()),
            location: Some(inst.location.clone()).filter(|l| info.clustered && !l.is_empty()),
            name: inst.name,
        });
    }
    // Configured instances that do not exist count as unhealthy too.
    let missing: Vec<&health::HealthReport> = health
        .iter()
        .filter(|h| !report.instances.iter().any(|i| i.name == h.instance))
        .collect();
    for h in missing {
        report.instances.push(InstanceStatus {
            name: h.instance.clone(),
            managed: false,
            state: "Missing".into(),
            addresses: Vec::new(),
            image: None,
            location: None,
            health: Some(h.clone()),
        });
    }
    report.healthy = !health.is_empty() && health.iter().all(|h| h.healthy);

    let pool = &config.incus.storage_pool;
    // A missing pool means no volumes, not a failed status.
    report.volumes = client
        .volumes(pool)
        .await
        .optional()
        .with_context(|| format!("listing volumes of pool {pool}"))?
        .unwrap_or_default()
        .into_iter()
        .map(|v| Named {
            managed: keys::is_owned(&v.config),
            detail: Some(format!("pool {pool}")),
            name: v.name,
        })
        .collect();
    let wanted: Vec<&str> = config
        .networks
        .iter()
        .map(|(_, n)| n.name.as_str())
        .collect();
    report.networks = client
        .networks()
        .await
        .context("listing networks")?
        .into_iter()
        .filter(|n| keys::is_owned(&n.config) || wanted.contains(&n.name.as_str()))
        .map(|n| Named {
            managed: keys::is_owned(&n.config),
            detail: n.config.get("ipv4.address").cloned(),
            name: n.name,
        })
        .collect();
    report.profiles = client
        .profiles()
        .await
        .context("listing profiles")?
        .into_iter()
        .filter(|p| p.name != "default")
        .map(|p| Named {
            managed: keys::is_owned(&p.config),
            detail: None,
            name: p.name,
        })
        .collect();
    report.wiring = wiring_status(&client, &d).await;
    report.alerts = alerts_status(&client, config).await;
    report.certificates = certs::status(&client, &d)
        .await
        .context("reading the services' certificates")?;
    report.outputs = Some(
        outputs::collect(&client, &d)
            .await
            .context("collecting the outputs")?,
    );
    Ok(report)
}

/// Never fails the command: what cannot be read is said in `note`.
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

fn ipv4_addresses(state: &atlas_install::incus::InstanceState) -> Vec<String> {
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

/// The wiring plan, when the secrets it compares against are stored. Never fails the command:
/// status reports what it can.
async fn wiring_status(client: &Client, d: &Deployment) -> WiringStatus {
    let config = &d.config;
    let unknown = |note: String| WiringStatus {
        state: "unknown".into(),
        changes: Vec::new(),
        note: Some(note),
    };
    let secrets = match secrets::load(client, config).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return unknown(
                "the generated secrets are not (all) stored yet: install has not completed".into(),
            );
        }
        Err(e) => return unknown(format!("reading the stored secrets: {e}")),
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
        Err(e) => unknown(e.to_string()),
    }
}

/// The Terraform-style outputs: endpoints, step-ca trust, host metrics.
fn print_outputs(out: &mut impl std::io::Write, o: &outputs::Outputs) {
    let _ = writeln!(out, "\nEndpoints:");
    let width = o.endpoints.iter().map(|e| e.name.len()).max().unwrap_or(0);
    for reach in ["public", "internal"] {
        for e in o.endpoints.iter().filter(|e| e.reach == reach) {
            let note = e
                .note
                .as_deref()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {:width$}  {:8}  {}{note}", e.name, e.reach, e.url);
        }
    }
    for s in &o.step_ca {
        let _ = writeln!(out, "\nstep-ca {} ({}):", s.instance, s.ca_url);
        match (&s.root_fingerprint, &s.bootstrap) {
            (Some(fp), Some(cmd)) => {
                let _ = writeln!(out, "  root fingerprint: {fp}");
                let _ = writeln!(out, "  trust it:         {cmd}");
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  root fingerprint: unknown ({})",
                    s.note.as_deref().unwrap_or("not readable")
                );
            }
        }
        if let Some(acme) = &s.acme_directory {
            let _ = writeln!(out, "  ACME directory:   {acme}");
        }
    }
    for h in &o.host_metrics {
        match &h.limitation {
            None => {
                let _ = writeln!(
                    out,
                    "\nHost metrics: {} measures this host through /host, /host/proc and /host/sys.",
                    h.instance
                );
            }
            Some(why) => {
                let _ = writeln!(out, "\nHost metrics: {why}.");
            }
        }
    }
    let _ = writeln!(
        out,
        "\nSecrets are not shown here: `atlas-install secret list` names them, `atlas-install secret get NAME` prints one."
    );
}

fn print_human(r: &Report) {
    let mut out = std::io::stdout().lock();
    if !r.installed {
        let _ = writeln!(
            out,
            "Nothing installed: the Incus project `{}` does not exist on {}.\nRun `atlas-install install` to install Atlas (or pass --project if it lives in another project).",
            r.project, r.endpoint
        );
        return;
    }
    let version = r.version.as_deref().unwrap_or("unknown version");
    let _ = writeln!(
        out,
        "Atlas in project `{}` on {} ({version})",
        r.project, r.endpoint
    );
    let _ = writeln!(out, "\nInstances:");
    if r.instances.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let width = r.instances.iter().map(|i| i.name.len()).max().unwrap_or(0);
    for i in &r.instances {
        let health = match &i.health {
            Some(h) if h.healthy => format!("healthy ({})", h.detail),
            Some(h) => format!("UNHEALTHY: {}", h.detail),
            None => "not in the config, not probed".to_string(),
        };
        let foreign = if i.managed || i.state == "Missing" {
            ""
        } else {
            " [not managed by atlas]"
        };
        let on = i
            .location
            .as_deref()
            .map(|l| format!(" [on {l}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:width$}  {:8}  {:15}  {health}{foreign}{on}",
            i.name,
            i.state,
            i.addresses.join(","),
        );
    }
    for m in &r.offline_members {
        let what = match m.instances.is_empty() {
            true => "no Atlas instance on it".to_string(),
            false => format!("affected: {}", m.instances.join(", ")),
        };
        let _ = writeln!(
            out,
            "\nCluster member {} is {}: {what}. Nothing was changed; start its incusd again.",
            m.member, m.status
        );
    }
    for (title, items) in [
        ("Volumes", &r.volumes),
        ("Networks", &r.networks),
        ("Profiles", &r.profiles),
    ] {
        let shown: Vec<String> = items
            .iter()
            .map(|n| {
                let mut s = n.name.clone();
                if let Some(d) = &n.detail {
                    s.push_str(&format!(" ({d})"));
                }
                if !n.managed {
                    s.push_str(" [not managed by atlas]");
                }
                s
            })
            .collect();
        let list = if shown.is_empty() {
            "(none)".to_string()
        } else {
            shown.join(", ")
        };
        let _ = writeln!(out, "{title}: {list}");
    }
    let _ = write!(out, "Server wiring: {}", r.wiring.state);
    if let Some(n) = &r.wiring.note {
        let _ = write!(out, " ({n})");
    }
    let _ = writeln!(out);
    for c in &r.wiring.changes {
        let _ = writeln!(out, "  {c}");
    }
    print_alerts(&mut out, &r.alerts);
    if !r.certificates.is_empty() {
        let _ = writeln!(out, "Certificates (from step-ca):");
    }
    for c in &r.certificates {
        let until = c
            .expires
            .as_deref()
            .map(|e| format!(" until {e}"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {}  {}{until}: {}", c.instance, c.state, c.detail);
    }
    if let Some(o) = &r.outputs {
        print_outputs(&mut out, o);
    }
    let probed: Vec<&health::HealthReport> = r
        .instances
        .iter()
        .filter_map(|i| i.health.as_ref())
        .collect();
    let bad = probed.iter().filter(|h| !h.healthy).count();
    if probed.is_empty() {
        let _ = writeln!(out, "\nNo enabled services to probe.");
    } else if bad == 0 {
        let _ = writeln!(out, "\nAll {} services healthy.", probed.len());
    } else {
        let _ = writeln!(out, "\n{bad} of {} services unhealthy.", probed.len());
    }
}

fn print_alerts(out: &mut impl std::io::Write, a: &AlertsStatus) {
    match &a.alerts {
        None => {
            let why = a.note.as_deref().unwrap_or("unknown");
            let _ = writeln!(out, "Alerts: cannot be read ({why})");
        }
        Some(_) if a.firing == 0 => {
            let _ = writeln!(out, "Alerts: none firing");
        }
        Some(list) => {
            let firing: Vec<&alerts::Alert> = list.iter().filter(|x| x.firing()).collect();
            let names: Vec<String> = firing
                .iter()
                .map(|x| format!("{} on {}", x.name, x.target))
                .collect();
            let plural = if a.firing == 1 { "" } else { "s" };
            let _ = writeln!(
                out,
                "Alerts: {} alert{plural} firing: {}",
                a.firing,
                names.join(", ")
            );
            for x in firing {
                let severity = x.severity.as_deref().unwrap_or("-");
                let summary = x.summary.as_deref().unwrap_or("");
                let _ = writeln!(
                    out,
                    "  {severity:8}  {} on {} since {}  {summary}",
                    x.name, x.target, x.since
                );
            }
        }
    }
    if let Some(list) = a.alerts.as_ref().filter(|_| a.suppressed > 0) {
        let muted: Vec<String> = list
            .iter()
            .filter(|x| !x.firing())
            .map(|x| {
                let why = match x.inhibited_by.is_empty() {
                    false => "inhibited by a critical alert",
                    true => "silenced",
                };
                format!("{} on {} ({why})", x.name, x.target)
            })
            .collect();
        let _ = writeln!(out, "  muted: {}", muted.join(", "));
    }
    if a.routes.is_empty() {
        let _ = writeln!(
            out,
            "Notifications: none configured, so alerts stay in Alertmanager (and Grafana); add receivers and routes under [alertmanager] in atlas.toml"
        );
    } else {
        let routes: Vec<String> = a
            .routes
            .iter()
            .map(|r| {
                format!(
                    "{} -> {} (repeated every {})",
                    r.severity,
                    r.receivers.join(", "),
                    r.repeat_interval
                )
            })
            .collect();
        let _ = writeln!(out, "Notifications: {}", routes.join("; "));
    }
}
