//! The five dashboards. Thresholds come from the alert rules (the constants below, which a
//! test reads back from assets/prometheus/alerts.yml) and from the configuration (retention,
//! volume size).

use serde_json::Value;

use crate::config::{Config, ServiceKind, prometheus_duration};
use crate::deployment::Deployment;

use super::Sources;
use super::board::{Board, Panel, Q, Steps, ds, label_var};

/// The alert rules' thresholds, by rule.
pub(crate) const HIGH_CPU_PERCENT: f64 = 80.0; // HighCPUUsage
pub(crate) const LOAD_PER_CPU: f64 = 2.0; // HighLoadAverage
pub(crate) const HOST_MEMORY_AVAILABLE_PERCENT: f64 = 10.0; // HostOutOfMemory
pub(crate) const MAJOR_FAULTS_PER_SECOND: f64 = 1000.0; // HostHighMemoryPressure
pub(crate) const DISK_WARNING_PERCENT: f64 = 20.0; // DiskSpaceWarning
pub(crate) const DISK_CRITICAL_PERCENT: f64 = 10.0; // DiskSpaceCritical
pub(crate) const CONTAINER_MEMORY_WARNING_PERCENT: f64 = 80.0; // HighMemoryUsage
pub(crate) const CONTAINER_MEMORY_CRITICAL_PERCENT: f64 = 95.0; // CriticalMemoryUsage
pub(crate) const RESTARTS_IN_10M: f64 = 5.0; // ServiceFlapping

/// The filesystems the disk rules look at.
const REAL_FS: &str = r#"fstype!~"tmpfs|ramfs|squashfs|overlay|nsfs""#;

pub(super) fn all(d: &Deployment, sources: &Sources) -> Vec<Value> {
    let config = &d.config;
    let mut out = Vec::new();
    if let Some(uid) = &sources.prometheus {
        let p = ds("prometheus", uid);
        if !d.instances_of(ServiceKind::NodeExporter).is_empty() {
            out.push(host(&p));
        }
        if config.integrations.incus_metrics {
            out.push(incus(config, &p));
        }
        out.push(services(d, &p));
        out.push(alerts(config, &p));
    }
    if let (Some(uid), true) = (&sources.loki, d.incus_loki()) {
        out.push(logs(&ds("loki", uid)));
    }
    out
}

fn host(p: &Value) -> Value {
    let mut b = Board::new(
        "atlas-host",
        "Atlas / Host",
        "The host (every member on a cluster) as node-exporter sees it.",
    );
    b.var(label_var(
        "member",
        "Member",
        p,
        "label_values(node_uname_info, member)",
        None,
    ));
    b.var(label_var(
        "instance",
        "Exporter",
        p,
        "label_values(node_uname_info{member=~\"$member\"}, instance)",
        None,
    ));
    let sel = r#"instance=~"$instance", member=~"$member""#;
    b.row("CPU and load");
    b.add(
        Panel::timeseries(
            "CPU usage",
            "Busy share of all CPUs. HighCPUUsage fires above 80% for 10 minutes.",
            p,
            "percent",
            &[Q(
                &format!(
                    r#"100 - avg by (instance, member) (rate(node_cpu_seconds_total{{mode="idle", {sel}}}[$__rate_interval])) * 100"#
                ),
                "{{instance}} {{member}}",
            )],
            Steps("green", &[(HIGH_CPU_PERCENT, "red")]),
        )
        .min_max(Some(0.0), Some(100.0)),
    );
    b.add(Panel::timeseries(
        "Load average",
        "1-minute load and the alert line: HighLoadAverage fires when load1 stays above twice the CPU count for 5 minutes.",
        p,
        "short",
        &[
            Q(&format!("node_load1{{{sel}}}"), "load1 {{instance}} {{member}}"),
            Q(&format!("node_load5{{{sel}}}"), "load5 {{instance}} {{member}}"),
            Q(
                &format!(
                    r#"{LOAD_PER_CPU} * count without (cpu, mode) (node_cpu_seconds_total{{mode="idle", {sel}}})"#
                ),
                "alert line (2 x CPUs) {{instance}} {{member}}",
            ),
        ],
        Steps("green", &[]),
    ));
    b.row("Memory");
    b.add(
        Panel::timeseries(
            "Memory available",
            "HostOutOfMemory fires below 10% for 2 minutes.",
            p,
            "percent",
            &[Q(
                &format!(
                    "node_memory_MemAvailable_bytes{{{sel}}} / node_memory_MemTotal_bytes{{{sel}}} * 100"
                ),
                "{{instance}} {{member}}",
            )],
            Steps("red", &[(HOST_MEMORY_AVAILABLE_PERCENT, "green")]),
        )
        .min_max(Some(0.0), Some(100.0)),
    );
    b.add(Panel::timeseries(
        "Major page faults",
        "Pages read back from disk: the host is short of memory. HostHighMemoryPressure fires above 1000/s for 5 minutes.",
        p,
        "ops",
        &[Q(
            &format!("rate(node_vmstat_pgmajfault{{{sel}}}[$__rate_interval])"),
            "{{instance}} {{member}}",
        )],
        Steps("green", &[(MAJOR_FAULTS_PER_SECOND, "red")]),
    ));
    b.row("Disks");
    b.add(
        Panel::timeseries(
            "Disk space available",
            "Per filesystem. DiskSpaceWarning below 20% (5 minutes), DiskSpaceCritical below 10% (2 minutes).",
            p,
            "percent",
            &[Q(
                &format!(
                    "node_filesystem_avail_bytes{{{REAL_FS}, {sel}}} / node_filesystem_size_bytes{{{REAL_FS}, {sel}}} * 100"
                ),
                "{{mountpoint}} ({{device}}) {{instance}} {{member}}",
            )],
            Steps(
                "red",
                &[
                    (DISK_CRITICAL_PERCENT, "orange"),
                    (DISK_WARNING_PERCENT, "green"),
                ],
            ),
        )
        .min_max(Some(0.0), Some(100.0)),
    );
    b.add(Panel::timeseries(
        "Disk I/O",
        "Bytes read and written per block device.",
        p,
        "Bps",
        &[
            Q(
                &format!("rate(node_disk_read_bytes_total{{{sel}}}[$__rate_interval])"),
                "read {{device}} {{instance}} {{member}}",
            ),
            Q(
                &format!("rate(node_disk_written_bytes_total{{{sel}}}[$__rate_interval])"),
                "written {{device}} {{instance}} {{member}}",
            ),
        ],
        Steps("green", &[]),
    ));
    b.row("Network");
    b.add(
        traffic(
            "Network traffic",
            "Bytes per second by interface, as node-exporter sees them. It runs in a container of its own network namespace, so these are that container's interfaces; the Incus dashboard has every instance's traffic.",
            p,
            "node_network",
            sel,
            None,
            "{{device}} {{instance}} {{member}}",
        )
        .size(24, 8),
    );
    b.json()
}

/// Received and sent bytes per second of `metric` (`node_network`, `incus_network`) on every
/// NIC but lo, summed `by` a label or per series.
fn traffic(
    title: &str,
    description: &str,
    p: &Value,
    metric: &str,
    sel: &str,
    by: Option<&str>,
    legend: &str,
) -> Panel {
    let query = |direction: &str| {
        let rate = format!(
            r#"rate({metric}_{direction}_bytes_total{{device!="lo", {sel}}}[$__rate_interval])"#
        );
        match by {
            Some(by) => format!("sum by ({by}) ({rate})"),
            None => rate,
        }
    };
    Panel::timeseries(
        title,
        description,
        p,
        "Bps",
        &[
            Q(&query("receive"), &format!("in {legend}")),
            Q(&query("transmit"), &format!("out {legend}")),
        ],
        Steps("green", &[]),
    )
}

fn incus(config: &Config, p: &Value) -> Value {
    let mut b = Board::new(
        "atlas-incus",
        "Atlas / Incus",
        "Every instance as Incus measures it (/1.0/metrics, the incus job).",
    );
    b.var(label_var(
        "member",
        "Member",
        p,
        "label_values(incus_procs_total, member)",
        None,
    ));
    b.var(label_var(
        "project",
        "Project",
        p,
        "label_values(incus_procs_total{member=~\"$member\"}, project)",
        Some(&config.incus.project),
    ));
    b.var(label_var(
        "instance",
        "Instance",
        p,
        "label_values(incus_procs_total{member=~\"$member\", project=~\"$project\"}, name)",
        None,
    ));
    let sel = r#"project=~"$project", name=~"$instance", member=~"$member""#;
    b.row("CPU and processes");
    b.add(Panel::timeseries(
        "CPU",
        "CPU time used per second (1 = one full core).",
        p,
        "short",
        &[Q(
            &format!(
                r#"sum by (name, project) (rate(incus_cpu_seconds_total{{mode!="idle", {sel}}}[$__rate_interval]))"#
            ),
            "{{name}}",
        )],
        Steps("green", &[]),
    ));
    b.add(Panel::timeseries(
        "Processes",
        "",
        p,
        "short",
        &[Q(&format!("incus_procs_total{{{sel}}}"), "{{name}}")],
        Steps("green", &[]),
    ));
    b.row("Memory");
    b.add(
        Panel::timeseries(
            "Memory against the limit",
            "A container's MemTotal is its limits.memory. HighMemoryUsage fires above 80% for 5 minutes, CriticalMemoryUsage above 95% for 2 (at 100% the kernel kills it).",
            p,
            "percent",
            &[Q(
                &format!(
                    r#"(1 - incus_memory_MemAvailable_bytes{{type="container", {sel}}} / incus_memory_MemTotal_bytes{{type="container", {sel}}}) * 100"#
                ),
                "{{name}}",
            )],
            Steps(
                "green",
                &[
                    (CONTAINER_MEMORY_WARNING_PERCENT, "orange"),
                    (CONTAINER_MEMORY_CRITICAL_PERCENT, "red"),
                ],
            ),
        )
        .min_max(Some(0.0), Some(100.0)),
    );
    b.add(Panel::timeseries(
        "Memory used",
        "",
        p,
        "bytes",
        &[Q(
            &format!(
                "incus_memory_MemTotal_bytes{{{sel}}} - incus_memory_MemAvailable_bytes{{{sel}}}"
            ),
            "{{name}}",
        )],
        Steps("green", &[]),
    ));
    // No per-instance disk I/O panel: Incus 6.0.4 serves `incus_disk_*` for containers only
    // where the cgroup io controller reports them, which the test host's daemon does not.
    b.row("Filesystems");
    b.add(Panel::timeseries(
        "Filesystem used",
        "Per instance and disk device. Incus reports a pool volume only when it has a filesystem of its own (zfs, btrfs, lvm; a quota on dir), and host paths mounted in (node-exporter's /host).",
        p,
        "bytes",
        &[Q(
            &format!(
                "incus_filesystem_size_bytes{{{sel}}} - incus_filesystem_avail_bytes{{{sel}}}"
            ),
            "{{name}} {{mountpoint}}",
        )],
        Steps("green", &[]),
    ));
    b.row("Network");
    b.add(
        traffic(
            "Network traffic",
            "Bytes per second per instance (every NIC but lo).",
            p,
            "incus_network",
            sel,
            Some("name"),
            "{{name}}",
        )
        .size(24, 8),
    );
    b.json()
}

fn services(d: &Deployment, p: &Value) -> Value {
    let config = &d.config;
    let mut b = Board::new(
        "atlas-services",
        "Atlas / Services",
        "Every Atlas service: availability, restarts and what each one does.",
    );
    b.var(label_var(
        "job",
        "Service",
        p,
        "label_values(up, job)",
        None,
    ));
    b.var(label_var(
        "instance",
        "Target",
        p,
        "label_values(up{job=~\"$job\"}, instance)",
        None,
    ));
    let sel = r#"job=~"$job", instance=~"$instance""#;
    b.row("Availability");
    b.add(
        Panel::stat(
            "Up",
            "Whether Prometheus reaches each target (ServiceDown fires after 2 minutes down).",
            p,
            "none",
            &[Q(&format!("up{{{sel}}}"), "{{job}} {{instance}}")],
            Steps("red", &[(1.0, "green")]),
        )
        .mappings(&[("0", "DOWN", "red"), ("1", "UP", "green")])
        .size(24, 5),
    );
    b.add(Panel::timeseries(
        "Restarts in the last 10 minutes",
        "Changes of the process start time. ServiceFlapping fires above 5.",
        p,
        "short",
        &[Q(
            &format!("changes(process_start_time_seconds{{{sel}}}[10m])"),
            "{{job}} {{instance}}",
        )],
        Steps("green", &[(RESTARTS_IN_10M + 1.0, "red")]),
    ));
    b.add(Panel::timeseries(
        "Scrape duration",
        "How long each target takes to answer Prometheus.",
        p,
        "s",
        &[Q(
            &format!("scrape_duration_seconds{{{sel}}}"),
            "{{job}} {{instance}}",
        )],
        Steps("green", &[]),
    ));
    prometheus_row(config, p, &mut b);
    b.row("Alertmanager");
    b.add(Panel::timeseries(
        "Alerts",
        "Active (notified) and suppressed (inhibited or silenced).",
        p,
        "short",
        &[Q(
            r#"sum by (state) (alertmanager_alerts{job="alertmanager"})"#,
            "{{state}}",
        )],
        Steps("green", &[]),
    ));
    b.add(Panel::timeseries(
        "Notifications",
        "Sent and failed, per integration (email, slack, webhook, ...).",
        p,
        "short",
        &[
            Q(
                r#"sum by (integration) (increase(alertmanager_notifications_total{job="alertmanager"}[$__rate_interval]))"#,
                "sent {{integration}}",
            ),
            Q(
                r#"sum by (integration) (increase(alertmanager_notifications_failed_total{job="alertmanager"}[$__rate_interval]))"#,
                "failed {{integration}}",
            ),
        ],
        Steps("green", &[]),
    ));
    if !d.instances_of(ServiceKind::Loki).is_empty() {
        b.row("Loki");
        b.add(Panel::timeseries(
            "Log lines received",
            "Lines per second Loki's distributor takes in (Incus events, per tenant).",
            p,
            "short",
            &[Q(
                "sum by (tenant) (rate(loki_distributor_lines_received_total[$__rate_interval]))",
                "{{tenant}}",
            )],
            Steps("green", &[]),
        ));
        b.add(Panel::timeseries(
            "Log bytes received",
            "",
            p,
            "Bps",
            &[Q(
                "sum by (tenant) (rate(loki_distributor_bytes_received_total[$__rate_interval]))",
                "{{tenant}}",
            )],
            Steps("green", &[]),
        ));
    }
    if !d.instances_of(ServiceKind::Caddy).is_empty() {
        caddy_row(p, &mut b);
    }
    mosquitto_row(config, p, &mut b);
    if !d.instances_of(ServiceKind::StepCa).is_empty() {
        b.row("step-ca");
        b.add(
            Panel::stat(
                "step-ca up",
                "",
                p,
                "none",
                &[Q(r#"up{job="step-ca"}"#, "{{instance}}")],
                Steps("red", &[(1.0, "green")]),
            )
            .mappings(&[("0", "DOWN", "red"), ("1", "UP", "green")]),
        );
        b.add(
            Panel::stat(
                "Certificates signed",
                "X.509 certificates step-ca signed in the time range, per provisioner (step-ca 0.25.3 and later count them; the counter appears with the first signature).",
                p,
                "short",
                &[Q(
                    "sum by (provisioner) (increase(step_ca_x509_signed_total[$__range]))",
                    "{{provisioner}}",
                )],
                Steps("green", &[]),
            )
            .no_value("none yet")
            .size(18, 4),
        );
    }
    b.json()
}

fn prometheus_row(config: &Config, p: &Value, b: &mut Board) {
    let c = &config.prometheus;
    b.row("Prometheus");
    // Thresholds at the configured limits: retention by size (and the data volume), and the
    // age of the oldest data against retention by time.
    let mut size_steps = Vec::new();
    if let Some(size) = &c.retention_size {
        size_steps.push((size.bytes as f64, "orange"));
    }
    let volume = config
        .instances_of(ServiceKind::Prometheus)
        .first()
        .and_then(|(_, i)| i.volume.as_ref())
        .map(|v| v.size.bytes as f64);
    if let Some(v) = volume {
        size_steps.push((v, "red"));
    }
    b.add(Panel::timeseries(
        "TSDB size",
        &format!(
            "Bytes of persisted blocks. Lines: retention_size ({}) and the data volume.",
            c.retention_size
                .as_ref()
                .map_or("not set".to_string(), |s| s.to_string())
        ),
        p,
        "bytes",
        &[Q(
            r#"prometheus_tsdb_storage_blocks_bytes{job="prometheus"}"#,
            "{{instance}}",
        )],
        Steps("green", &size_steps),
    ));
    let retention_s = prometheus_duration(&c.retention_time).map_or(0.0, |ms| ms as f64 / 1000.0);
    b.add(Panel::timeseries(
        "Age of the oldest data",
        &format!(
            "Data older than retention_time ({}) is deleted: the line is where the curve levels off.",
            c.retention_time
        ),
        p,
        "s",
        &[Q(
            r#"time() - prometheus_tsdb_lowest_timestamp_seconds{job="prometheus"}"#,
            "{{instance}}",
        )],
        Steps("green", &[(retention_s, "orange")]),
    ));
    b.add(Panel::timeseries(
        "Series in memory",
        "",
        p,
        "short",
        &[Q(
            r#"prometheus_tsdb_head_series{job="prometheus"}"#,
            "{{instance}}",
        )],
        Steps("green", &[]),
    ));
    b.add(Panel::timeseries(
        "Rule evaluation",
        "Last evaluation time of each rule group, and failed evaluations per second.",
        p,
        "s",
        &[
            Q(
                r#"prometheus_rule_group_last_duration_seconds{job="prometheus"}"#,
                "{{rule_group}}",
            ),
            Q(
                r#"sum by (rule_group) (rate(prometheus_rule_evaluation_failures_total{job="prometheus"}[$__rate_interval]))"#,
                "failures/s {{rule_group}}",
            ),
        ],
        Steps("green", &[]),
    ));
}

fn caddy_row(p: &Value, b: &mut Board) {
    b.row("Caddy");
    b.add(Panel::timeseries(
        "Requests by server and status",
        "Per Caddy server (srv0, srv1, ... in Caddyfile order; one is the metrics listener Prometheus scrapes) and status code; 429 is a rate-limited request. By server, not host: Caddy 2.6 has no host label, and newer ones add it only with the global `metrics { per_host }` option, which is not turned on here.",
        p,
        "reqps",
        &[Q(
            "sum by (server, code) (rate(caddy_http_request_duration_seconds_count[$__rate_interval]))",
            "{{server}} {{code}}",
        )],
        Steps("green", &[]),
    ));
    b.add(Panel::timeseries(
        "Response time (95th percentile)",
        "",
        p,
        "s",
        &[Q(
            "histogram_quantile(0.95, sum by (le, server) (rate(caddy_http_request_duration_seconds_bucket[$__rate_interval])))",
            "{{server}}",
        )],
        Steps("green", &[]),
    ));
    b.add(
        Panel::stat(
            "Rate-limited requests",
            "Requests answered 429 by the rate limits in the time range.",
            p,
            "short",
            &[Q(
                r#"sum(increase(caddy_http_request_duration_seconds_count{code="429"}[$__range]))"#,
                "",
            )],
            Steps("green", &[(1.0, "orange")]),
        )
        .no_value("0")
        .size(12, 4),
    );
    b.add(
        Panel::stat(
            "Requests in flight",
            "",
            p,
            "short",
            &[Q(
                "sum by (server) (caddy_http_requests_in_flight)",
                "{{server}}",
            )],
            Steps("green", &[]),
        )
        .size(12, 4),
    );
}

/// Mosquitto serves no Prometheus metrics (its counters are $SYS topics, which need an
/// exporter): say so, and show its container as Incus measures it.
fn mosquitto_row(config: &Config, p: &Value, b: &mut Board) {
    let names: Vec<&str> = config
        .instances_of(ServiceKind::Mosquitto)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if names.is_empty() {
        return;
    }
    b.row("Mosquitto");
    b.add(Panel::text(
        "About these panels",
        "Mosquitto has no Prometheus endpoint: its clients and message counts are `$SYS/#` topics, which would need an MQTT exporter. `atlas-install status` checks that it accepts connections; the panels here are its container, as Incus measures it.",
        8,
        8,
    ));
    if !config.integrations.incus_metrics {
        return;
    }
    let sel = format!(
        r#"project="{}", name=~"{}""#,
        config.incus.project,
        names.join("|")
    );
    b.add(
        traffic(
            "MQTT container traffic",
            "Bytes per second through the broker's container (all its NICs but lo).",
            p,
            "incus_network",
            &sel,
            Some("name"),
            "{{name}}",
        )
        .size(8, 8),
    );
    b.add(
        Panel::timeseries(
            "Broker memory against the limit",
            "",
            p,
            "percent",
            &[Q(
                &format!(
                    "(1 - incus_memory_MemAvailable_bytes{{{sel}}} / incus_memory_MemTotal_bytes{{{sel}}}) * 100"
                ),
                "{{name}}",
            )],
            Steps(
                "green",
                &[
                    (CONTAINER_MEMORY_WARNING_PERCENT, "orange"),
                    (CONTAINER_MEMORY_CRITICAL_PERCENT, "red"),
                ],
            ),
        )
        .size(8, 8),
    );
}

fn alerts(config: &Config, p: &Value) -> Value {
    let mut b = Board::new(
        "atlas-alerts",
        "Atlas / Alerts",
        "The ten alert rules, what fires now, and what Alertmanager does with it.",
    );
    b.row("Now");
    b.add(
        Panel::stat(
            "Alerts firing",
            "",
            p,
            "short",
            &[Q(r#"count(ALERTS{alertstate="firing"})"#, "")],
            Steps("green", &[(1.0, "red")]),
        )
        .no_value("0"),
    );
    b.add(
        Panel::stat(
            "Alerts pending",
            "Conditions met, waiting for their `for:` duration.",
            p,
            "short",
            &[Q(r#"count(ALERTS{alertstate="pending"})"#, "")],
            Steps("green", &[(1.0, "orange")]),
        )
        .no_value("0"),
    );
    b.add(Panel::stat(
        "Rules loaded",
        "Alert rules Prometheus evaluates (10 are shipped).",
        p,
        "short",
        &[Q(
            r#"sum(prometheus_rule_group_rules{job="prometheus"})"#,
            "",
        )],
        Steps("green", &[]),
    ));
    b.add(Panel::stat(
        "In Alertmanager",
        "Active: notified. Suppressed: muted by a critical of the same family, or silenced.",
        p,
        "short",
        &[Q(
            r#"sum by (state) (alertmanager_alerts{job="alertmanager", state=~"active|suppressed"})"#,
            "{{state}}",
        )],
        Steps("green", &[]),
    ));
    b.add(
        Panel::table(
            "Firing and pending",
            "One row per alert Prometheus holds now.",
            p,
            &[Q("ALERTS", "")],
        )
        .no_value("No alert is firing or pending"),
    );
    b.add(
        Panel::timeseries(
            "Firing over time",
            "",
            p,
            "short",
            &[Q(
                r#"sum by (alertname, severity) (ALERTS{alertstate="firing"})"#,
                "{{alertname}} ({{severity}})",
            )],
            Steps("green", &[]),
        )
        .no_value("No alert fired in the time range")
        .size(24, 8),
    );
    b.row("The rules");
    b.add(Panel::text("Alert rules", &rules_markdown(config), 24, 12));
    b.json()
}

/// The rules as a table (name, severity, condition, for): written here, checked against the
/// rules file by a test.
fn rules_markdown(config: &Config) -> String {
    let mut s = String::from("| Alert | Severity | Fires when | For |\n|---|---|---|---|\n");
    for (name, severity, when, r#for) in RULES {
        s.push_str(&format!("| {name} | {severity} | {when} | {for} |\n"));
    }
    s.push_str(&format!(
        "\nA warning is not notified while the critical alert of its family fires for the same target. Notifications: {}.",
        match config.alertmanager.receivers.is_empty() && config.alertmanager.webhook_url.is_none() {
            true => "none configured, so alerts stay in Alertmanager (see `atlas-install status`)",
            false => "see `atlas-install status` for where each severity goes",
        }
    ));
    s
}

/// (alert, severity, condition, for) of each shipped rule.
pub(crate) const RULES: [(&str, &str, &str, &str); 10] = [
    (
        "ServiceDown",
        "critical",
        "a target does not answer Prometheus",
        "2m",
    ),
    (
        "ServiceFlapping",
        "warning",
        "a service restarted more than 5 times in 10 minutes",
        "0s",
    ),
    (
        "HighMemoryUsage",
        "warning",
        "a container uses more than 80% of its memory limit",
        "5m",
    ),
    (
        "CriticalMemoryUsage",
        "critical",
        "a container uses more than 95% of its memory limit",
        "2m",
    ),
    (
        "HostOutOfMemory",
        "warning",
        "less than 10% of the host's memory is available",
        "2m",
    ),
    (
        "HostHighMemoryPressure",
        "warning",
        "more than 1000 major page faults per second",
        "5m",
    ),
    (
        "DiskSpaceWarning",
        "warning",
        "a filesystem has less than 20% space left",
        "5m",
    ),
    (
        "DiskSpaceCritical",
        "critical",
        "a filesystem has less than 10% space left",
        "2m",
    ),
    ("HighCPUUsage", "warning", "host CPU usage above 80%", "10m"),
    (
        "HighLoadAverage",
        "warning",
        "1-minute load above twice the CPU count",
        "5m",
    ),
];

fn logs(l: &Value) -> Value {
    let mut b = Board::new(
        "atlas-logs",
        "Atlas / Logs",
        "Incus lifecycle and logging events, as Incus ships them to Loki.",
    );
    b.var(label_var(
        "member",
        "Member",
        l,
        r#"label_values({app="incus"}, location)"#,
        None,
    ));
    b.var(label_var(
        "instance",
        "Instance",
        l,
        r#"label_values({app="incus", type="lifecycle"}, name)"#,
        None,
    ));
    let lifecycle = r#"{app="incus", type="lifecycle", location=~"$member", name=~"$instance"}"#;
    let logging = r#"{app="incus", type="logging", location=~"$member"}"#;
    b.add(Panel::timeseries(
        "Lifecycle events per instance",
        "Created, started, stopped, restarted, ... per instance.",
        l,
        "short",
        &[Q(
            &format!("sum by (name) (count_over_time({lifecycle} [$__interval]))"),
            "{{name}}",
        )],
        Steps("green", &[]),
    ));
    b.add(Panel::timeseries(
        "Incus warnings and errors",
        "Log messages of level warning or error, per member.",
        l,
        "short",
        &[Q(
            &format!(
                r#"sum by (location) (count_over_time({logging} |~ "level=\"(warning|error)\"" [$__interval]))"#
            ),
            "{{location}}",
        )],
        Steps("green", &[(1.0, "orange")]),
    ));
    b.add(Panel::logs("Lifecycle events", "", l, lifecycle));
    b.add(Panel::logs("Incus log messages", "", l, logging));
    b.json()
}
