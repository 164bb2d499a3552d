//! `atlas-install status`: what is installed and how it is doing, as `atlas_install::status`
//! collects it (read-only). Exit 0 when every service is healthy, 1 otherwise (nothing
//! installed included); firing alerts are reported, not counted. `--json` puts the same
//! report on stdout.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use atlas_install::engine::{alerts, health, outputs};
use atlas_install::status::{self, AlertsStatus, InstanceStatus, Named, Report};

use super::Context;

pub fn run(ctx: &Context) -> Result<ExitCode> {
    let (config, client) = (ctx.config()?, ctx.client()?);
    let report = ctx.block_on(status::collect(client, config))??;
    if ctx.printer.json_mode() {
        ctx.printer.json(&report)?;
    } else {
        ctx.printer.text(&human(&report))?;
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The report as the operator reads it.
fn human(r: &Report) -> String {
    let mut out = String::new();
    if !r.installed {
        let _ = writeln!(
            out,
            "Nothing installed: the Incus project `{}` does not exist on {}.\nRun `atlas-install install` to install Atlas (or pass --project if it lives in another project).",
            r.project, r.endpoint
        );
        return out;
    }
    let version = r.version.as_deref().unwrap_or("unknown version");
    let _ = writeln!(
        out,
        "Atlas in project `{}` on {} ({version})",
        r.project, r.endpoint
    );
    print_instances(&mut out, &r.instances);
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
        let _ = writeln!(out, "{title}: {}", named_list(items));
    }
    print_wiring(&mut out, r);
    print_alerts(&mut out, &r.alerts);
    print_certificates(&mut out, r);
    if let Some(o) = &r.outputs {
        print_outputs(&mut out, o);
    }
    print_verdict(&mut out, &r.instances);
    out
}

/// One line per instance: name, state, addresses, health, and where it runs.
fn print_instances(out: &mut String, instances: &[InstanceStatus]) {
    let _ = writeln!(out, "\nInstances:");
    if instances.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    let width = instances.iter().map(|i| i.name.len()).max().unwrap_or(0);
    for i in instances {
        let health = match &i.health {
            Some(h) if h.healthy => format!("healthy ({})", h.detail),
            Some(h) => format!("UNHEALTHY: {}", h.detail),
            None => "not in the config, not probed".to_string(),
        };
        let foreign = if i.managed || i.state == InstanceStatus::MISSING {
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
}

/// `a (detail), b [not managed by atlas]`, or `(none)`.
fn named_list(items: &[Named]) -> String {
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
    if shown.is_empty() {
        "(none)".to_string()
    } else {
        shown.join(", ")
    }
}

fn print_wiring(out: &mut String, r: &Report) {
    let _ = write!(out, "Server wiring: {}", r.wiring.state);
    if let Some(n) = &r.wiring.note {
        let _ = write!(out, " ({n})");
    }
    let _ = writeln!(out);
    for c in &r.wiring.changes {
        let _ = writeln!(out, "  {c}");
    }
}

fn print_certificates(out: &mut String, r: &Report) {
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
}

/// The last line: how many of the probed services are healthy.
fn print_verdict(out: &mut String, instances: &[InstanceStatus]) {
    let probed: Vec<&health::HealthReport> =
        instances.iter().filter_map(|i| i.health.as_ref()).collect();
    let bad = probed.iter().filter(|h| !h.healthy).count();
    if probed.is_empty() {
        let _ = writeln!(out, "\nNo enabled services to probe.");
    } else if bad == 0 {
        let _ = writeln!(out, "\nAll {} services healthy.", probed.len());
    } else {
        let _ = writeln!(out, "\n{bad} of {} services unhealthy.", probed.len());
    }
}

/// The Terraform-style outputs: endpoints, step-ca trust, host metrics.
fn print_outputs(out: &mut String, o: &outputs::Outputs) {
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

fn print_alerts(out: &mut String, a: &AlertsStatus) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_lists_mark_what_atlas_does_not_manage() {
        let items = [
            Named {
                name: "grafana01-data".into(),
                managed: true,
                detail: Some("pool default".into()),
            },
            Named {
                name: "atlas-mgmt".into(),
                managed: false,
                detail: None,
            },
        ];
        assert_eq!(
            named_list(&items),
            "grafana01-data (pool default), atlas-mgmt [not managed by atlas]"
        );
        assert_eq!(named_list(&[]), "(none)");
    }
}
