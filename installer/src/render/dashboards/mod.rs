//! Grafana dashboards of our own, provisioned from files: Host, Incus, Services, Logs and
//! Alerts, in a folder "Atlas". They are built here (not copied from anywhere) from the
//! configuration: the datasource uids Grafana is provisioned with, the thresholds of the alert
//! rules, the retention settings, the Atlas project and the instances that exist.
//!
//! Every query uses metrics a target of ours serves: node-exporter 1.5+, Incus'
//! `/1.0/metrics`, Prometheus, Alertmanager, Caddy (its `servers { metrics }`), Loki's
//! distributor counters and step-ca's `step_ca_*` (0.25.3+). Mosquitto has no Prometheus
//! endpoint: its row says so and shows what Incus measures of its container.
//!
//! Provisioning: a file provider (`allowUiUpdates`, so a dashboard can be edited and saved;
//! the next install puts our version back, "Save as" keeps a copy) reads the JSON from
//! [`DIR`]. Nothing in them reaches the network when Grafana starts.

mod board;
mod boards;

use serde_json::Value;

use crate::config::ServiceKind;
use crate::deployment::Deployment;

use super::{RenderedFile, datasource_uid};

pub use board::NO_VALUE_KEY;

/// The file provider Grafana reads at start.
pub const PROVIDER: &str = "/etc/grafana/provisioning/dashboards/atlas.yaml";
/// Where the dashboards' JSON lives in the Grafana container.
pub const DIR: &str = "/etc/grafana/dashboards/atlas";
/// The Grafana folder they appear in.
pub const FOLDER: &str = "Atlas";
pub const FOLDER_UID: &str = "atlas";

/// The uids of the datasources the dashboards query (the first instance of each kind is the
/// one Grafana names plainly, "Prometheus" and "Loki").
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    pub prometheus: Option<String>,
    pub loki: Option<String>,
}

impl Sources {
    fn of(d: &Deployment) -> Sources {
        let first = |k: ServiceKind| d.instances_of(k).first().map(|(n, _)| datasource_uid(n));
        Sources {
            prometheus: first(ServiceKind::Prometheus),
            loki: first(ServiceKind::Loki),
        }
    }
}

/// Every dashboard, as the JSON Grafana provisions (by uid). Dashboards without their
/// datasource are left out.
pub fn dashboards(d: &Deployment) -> Vec<Value> {
    boards::all(d, &Sources::of(d))
}

/// The provider file and one JSON file per dashboard.
pub(super) fn files(d: &Deployment) -> Vec<RenderedFile> {
    let boards = dashboards(d);
    if boards.is_empty() {
        return Vec::new();
    }
    let mut files = vec![RenderedFile::config(PROVIDER, provider())];
    for b in boards {
        let uid = b["uid"].as_str().expect("every dashboard has a uid");
        let mut text = serde_json::to_string_pretty(&b).expect("JSON values serialize");
        text.push('\n');
        files.push(RenderedFile::config(&format!("{DIR}/{uid}.json"), text));
    }
    files
}

fn provider() -> String {
    format!(
        "# Grafana dashboard provider, rendered by atlas-install. Edits are overwritten by the\n\
         # next install. The dashboards can be edited and saved in Grafana; the next install\n\
         # restores ours (use \"Save as\" to keep a copy of your own).\n\
         apiVersion: 1\n\
         \n\
         providers:\n\
         \x20 - name: \"atlas\"\n\
         \x20   orgId: 1\n\
         \x20   folder: \"{FOLDER}\"\n\
         \x20   folderUid: \"{FOLDER_UID}\"\n\
         \x20   type: file\n\
         \x20   disableDeletion: true\n\
         \x20   allowUiUpdates: true\n\
         \x20   options:\n\
         \x20     path: \"{DIR}\"\n\
         \x20     foldersFromFilesStructure: false\n"
    )
}

#[cfg(test)]
mod tests;
