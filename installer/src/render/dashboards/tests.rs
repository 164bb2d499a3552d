//! The dashboards as Grafana provisions them: the provider file points at their directory,
//! each JSON has what Grafana needs (uid, title, panels on the grid with unique ids) and
//! queries only datasources Grafana is provisioned with; thresholds are the alert rules'.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::boards::*;
use super::*;
use crate::config::{Config, Size};
use crate::deployment::Deployment;
use crate::render::{Credentials, RenderedFile, render};

fn rendered_grafana(config: &Config) -> Vec<RenderedFile> {
    let creds = Credentials {
        grafana_admin_password: "pw".into(),
        step_ca_password: "pw".into(),
        mosquitto: BTreeMap::from([(
            "atlas".to_string(),
            crate::render::MqttCredential {
                password: "pw".into(),
                salt: [0; 12],
            },
        )]),
    };
    let mut set = render(&Deployment::standalone(config), &creds).expect("render");
    set.instances.remove("grafana01").expect("grafana01").files
}

fn yaml(f: &RenderedFile) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_slice(&f.contents).unwrap_or_else(|e| panic!("{}: {e}", f.path))
}

/// (uid, type) of every provisioned datasource.
fn datasources(files: &[RenderedFile]) -> BTreeSet<(String, String)> {
    let f = files
        .iter()
        .find(|f| f.path == crate::render::grafana_datasources_path())
        .expect("datasources file");
    yaml(f)["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["uid"].as_str().unwrap().to_string(),
                d["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The dashboards Grafana would load: the JSON files in the provider's directory.
fn provisioned(files: &[RenderedFile]) -> Vec<Value> {
    let provider = files
        .iter()
        .find(|f| f.path == PROVIDER)
        .expect("provider file");
    let y = yaml(provider);
    assert_eq!(y["apiVersion"].as_u64(), Some(1));
    let p = &y["providers"][0];
    assert_eq!(p["type"].as_str(), Some("file"));
    assert_eq!(p["folder"].as_str(), Some("Atlas"));
    assert_eq!(p["allowUiUpdates"].as_bool(), Some(true));
    let dir = p["options"]["path"].as_str().unwrap();
    files
        .iter()
        .filter(|f| f.path.starts_with(&format!("{dir}/")) && f.path.ends_with(".json"))
        .map(|f| {
            assert_eq!(f.mode, 0o644, "{}", f.path);
            serde_json::from_slice(&f.contents).unwrap_or_else(|e| panic!("{}: {e}", f.path))
        })
        .collect()
}

fn all_variants() -> Vec<(&'static str, Config)> {
    let mut tls = Config::builtin();
    for n in ["prometheus01", "loki01", "grafana01"] {
        tls.instances.get_mut(n).unwrap().tls = true;
    }
    let mut sized = Config::builtin();
    sized.prometheus.retention_size = Some(Size::parse("90GB").unwrap());
    sized.prometheus.retention_time = "15d".into();
    vec![
        ("default", Config::builtin()),
        ("tls", tls),
        ("sized", sized),
    ]
}

#[test]
fn every_dashboard_is_what_grafana_provisions() {
    const PANEL_TYPES: [&str; 6] = ["row", "timeseries", "stat", "table", "logs", "text"];
    for (variant, config) in all_variants() {
        let files = rendered_grafana(&config);
        let sources = datasources(&files);
        let boards = provisioned(&files);
        let uids: Vec<&str> = boards.iter().map(|b| b["uid"].as_str().unwrap()).collect();
        assert_eq!(
            uids,
            [
                "atlas-alerts",
                "atlas-host",
                "atlas-incus",
                "atlas-logs",
                "atlas-services"
            ],
            "{variant}: files in path order"
        );
        let titles: BTreeSet<&str> = boards
            .iter()
            .map(|b| b["title"].as_str().unwrap())
            .collect();
        assert_eq!(titles.len(), boards.len(), "titles are unique");
        for b in &boards {
            let uid = b["uid"].as_str().unwrap();
            assert!(
                uid.len() <= 40 && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{uid}"
            );
            assert!(
                b.get("id").is_none(),
                "{uid}: provisioned dashboards carry no id"
            );
            assert!(!b["title"].as_str().unwrap().is_empty());
            // Nothing a browser or Grafana would fetch from outside.
            let text = b.to_string();
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{uid} links outside"
            );
            let vars: BTreeSet<String> = b["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    check_source(&v["datasource"], &sources, uid);
                    v["name"].as_str().unwrap().to_string()
                })
                .collect();
            let panels = b["panels"].as_array().unwrap();
            assert!(!panels.is_empty(), "{uid}");
            let mut ids = BTreeSet::new();
            let mut cells = BTreeSet::new();
            for p in panels {
                let title = p["title"].as_str().unwrap();
                let kind = p["type"].as_str().unwrap();
                assert!(PANEL_TYPES.contains(&kind), "{uid}/{title}: {kind}");
                assert!(ids.insert(p["id"].as_u64().unwrap()), "{uid}: id reused");
                let g = &p["gridPos"];
                let (x, y, w, h) = (
                    g["x"].as_u64().unwrap(),
                    g["y"].as_u64().unwrap(),
                    g["w"].as_u64().unwrap(),
                    g["h"].as_u64().unwrap(),
                );
                assert!(w >= 1 && h >= 1 && x + w <= 24, "{uid}/{title}: {g}");
                for cx in x..x + w {
                    for cy in y..y + h {
                        assert!(
                            cells.insert((cx, cy)),
                            "{uid}/{title} overlaps at {cx},{cy}"
                        );
                    }
                }
                if matches!(kind, "row" | "text") {
                    assert!(p.get("targets").is_none(), "{uid}/{title}");
                    continue;
                }
                check_source(&p["datasource"], &sources, uid);
                let targets = p["targets"].as_array().unwrap();
                assert!(!targets.is_empty(), "{uid}/{title}");
                let refs: BTreeSet<&str> = targets
                    .iter()
                    .map(|t| t["refId"].as_str().unwrap())
                    .collect();
                assert_eq!(refs.len(), targets.len(), "{uid}/{title}: refIds");
                for t in targets {
                    check_source(&t["datasource"], &sources, uid);
                    assert_eq!(t["datasource"], p["datasource"]);
                    let expr = t["expr"].as_str().unwrap();
                    for v in variables_in(expr) {
                        assert!(
                            vars.contains(&v)
                                || ["__rate_interval", "__interval", "__range"]
                                    .contains(&v.as_str()),
                            "{uid}/{title}: ${v} is not a variable of the dashboard: {expr}"
                        );
                    }
                }
            }
        }
    }
}

fn check_source(ds: &Value, sources: &BTreeSet<(String, String)>, uid: &str) {
    let key = (
        ds["uid"].as_str().unwrap_or_default().to_string(),
        ds["type"].as_str().unwrap_or_default().to_string(),
    );
    assert!(
        sources.contains(&key),
        "{uid}: datasource {ds} is not provisioned ({sources:?})"
    );
}

/// `$name` references in a query.
fn variables_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        let name: String = rest[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.push(name);
        rest = &rest[i + 1..];
    }
    out
}

#[test]
fn without_their_source_dashboards_are_left_out() {
    let mut c = Config::builtin();
    c.integrations.incus_loki = false;
    c.integrations.incus_metrics = false;
    let uids: Vec<String> = dashboards(&Deployment::standalone(&c))
        .iter()
        .map(|b| b["uid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(uids, ["atlas-host", "atlas-services", "atlas-alerts"]);
    c.instances.get_mut("prometheus01").unwrap().enabled = false;
    c.instances.get_mut("loki01").unwrap().enabled = false;
    let files = rendered_grafana(&c);
    assert!(
        !files
            .iter()
            .any(|f| f.path == PROVIDER || f.path.starts_with(DIR)),
        "no datasource, no dashboards"
    );
}

/// The thresholds drawn are the ones the rules fire at (read from the rules file).
#[test]
fn thresholds_are_the_alert_rules() {
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(crate::render::templates::ALERT_RULES).unwrap();
    let mut found = BTreeMap::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap().to_string();
            let expr = r["expr"].as_str().unwrap().to_string();
            let severity = r["labels"]["severity"].as_str().unwrap().to_string();
            let r#for = r["for"].as_str().unwrap_or("0s").to_string();
            found.insert(name, (expr, severity, r#for));
        }
    }
    let threshold = |name: &str| -> f64 {
        let expr = &found[name].0;
        let i = expr.rfind(['>', '<']).expect("a comparison");
        expr[i + 1..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {expr}"))
    };
    assert_eq!(threshold("HighCPUUsage"), HIGH_CPU_PERCENT);
    assert_eq!(threshold("HighLoadAverage"), LOAD_PER_CPU);
    assert_eq!(threshold("HostOutOfMemory"), HOST_MEMORY_AVAILABLE_PERCENT);
    assert_eq!(threshold("HostHighMemoryPressure"), MAJOR_FAULTS_PER_SECOND);
    assert_eq!(threshold("DiskSpaceWarning"), DISK_WARNING_PERCENT);
    assert_eq!(threshold("DiskSpaceCritical"), DISK_CRITICAL_PERCENT);
    assert_eq!(
        threshold("HighMemoryUsage"),
        CONTAINER_MEMORY_WARNING_PERCENT
    );
    assert_eq!(
        threshold("CriticalMemoryUsage"),
        CONTAINER_MEMORY_CRITICAL_PERCENT
    );
    assert_eq!(threshold("ServiceFlapping"), RESTARTS_IN_10M);
    // The table of rules on the Alerts dashboard: the ten, with their severity and `for`.
    let table: BTreeMap<String, (String, String)> = RULES
        .iter()
        .map(|(n, s, _, f)| (n.to_string(), (s.to_string(), f.to_string())))
        .collect();
    let file: BTreeMap<String, (String, String)> = found
        .iter()
        .map(|(n, (_, s, f))| (n.clone(), (s.clone(), f.clone())))
        .collect();
    assert_eq!(table, file);
    // And the panels carry them: the disk panel's steps are 10 and 20.
    let host = &dashboards(&Deployment::standalone(&Config::builtin()))[0];
    let disk = host["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Disk space available")
        .unwrap();
    let steps: Vec<f64> = disk["fieldConfig"]["defaults"]["thresholds"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["value"].as_f64())
        .collect();
    assert_eq!(steps, [DISK_CRITICAL_PERCENT, DISK_WARNING_PERCENT]);
}

/// Retention lines follow the configuration.
#[test]
fn retention_thresholds_follow_the_config() {
    let (_, sized) = all_variants().remove(2);
    let services = dashboards(&Deployment::standalone(&sized))
        .into_iter()
        .find(|b| b["uid"] == "atlas-services")
        .unwrap();
    let steps = |title: &str| -> Vec<f64> {
        services["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == title)
            .unwrap_or_else(|| panic!("{title}"))["fieldConfig"]["defaults"]["thresholds"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["value"].as_f64())
            .collect()
    };
    assert_eq!(
        steps("TSDB size"),
        [90e9, 100e9],
        "retention_size, then the volume"
    );
    assert_eq!(steps("Age of the oldest data"), [15.0 * 86400.0]);
}

/// Only panels whose query may rightly be empty on a healthy stack say what to show instead;
/// the live test holds every other query to returning data.
#[test]
fn panels_allowed_to_be_empty_are_few_and_named() {
    let mut named = Vec::new();
    for b in dashboards(&Deployment::standalone(&Config::builtin())) {
        for p in b["panels"].as_array().unwrap() {
            if p["fieldConfig"]["defaults"].get(NO_VALUE_KEY).is_some() {
                named.push(format!(
                    "{}/{}",
                    b["uid"].as_str().unwrap(),
                    p["title"].as_str().unwrap()
                ));
            }
        }
    }
    assert_eq!(
        named,
        [
            "atlas-services/Rate-limited requests",
            "atlas-services/Certificates signed",
            "atlas-alerts/Alerts firing",
            "atlas-alerts/Alerts pending",
            "atlas-alerts/Firing and pending",
            "atlas-alerts/Firing over time",
        ]
    );
}
