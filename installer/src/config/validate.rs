//! Semantic checks of a resolved configuration. Every problem is collected with its key path,
//! the reason, and what to write instead; the loader adds where the value came from.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::error::Diagnostic;
use super::formats;
use super::model::*;
use super::resolve::{cpu_range, has_web_ui};

/// Loki refuses to delete sooner: chunks may still be in flight.
const MIN_DELETE_DELAY_MS: u64 = 2 * 3_600_000;

pub fn validate(c: &Config) -> Vec<Diagnostic> {
    validate_with(c, &|_| false)
}

/// `is_set` tells whether the operator set a key (file, env or flag), so that a conflict
/// between two values is reported at the one they wrote.
pub(crate) fn validate_with(c: &Config, is_set: &dyn Fn(&str) -> bool) -> Vec<Diagnostic> {
    let mut d = Vec::new();
    incus(c, &mut d);
    networks(&c.networks, &c.incus.external_network, is_set, &mut d);
    for (name, inst) in &c.instances {
        instance(c, name, inst, &mut d);
    }
    shared_resources(c, &mut d);
    host_ports(c, is_set, &mut d);
    services(c, &mut d);
    super::alerting::validate(c, &mut d);
    d
}

fn push(
    d: &mut Vec<Diagnostic>,
    path: impl Into<String>,
    msg: impl Into<String>,
    help: impl Into<String>,
) {
    d.push(Diagnostic::new(path, msg).help(help));
}

fn incus(c: &Config, d: &mut Vec<Diagnostic>) {
    if let Err(e) = formats::incus_label(&c.incus.project) {
        push(
            d,
            "incus.project",
            format!("project name {e}"),
            "use a name like `atlas`",
        );
    }
    if let Err(e) = formats::incus_label(&c.incus.storage_pool) {
        push(
            d,
            "incus.storage_pool",
            format!("storage pool name {e}"),
            "name an existing pool (`incus storage list`)",
        );
    }
    if !(1..=3600).contains(&c.incus.request_timeout) {
        push(
            d,
            "incus.request_timeout",
            format!("{} seconds is outside 1-3600", c.incus.request_timeout),
            "use a number of seconds like 60",
        );
    }
    if !c.incus.socket.is_empty() && !c.incus.socket.starts_with('/') {
        push(
            d,
            "incus.socket",
            format!("`{}` is not an absolute path", c.incus.socket),
            "write the full path, e.g. /var/lib/incus/unix.socket, or leave it empty to discover it",
        );
    }
    if let Some(r) = &c.incus.remote {
        if !r.url.starts_with("https://") {
            push(
                d,
                "incus.remote.url",
                format!("`{}` is not an https:// URL", r.url),
                "write it like https://incus.example.internal:8443",
            );
        }
        let fp = r.server_fingerprint.replace(':', "");
        if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
            push(
                d,
                "incus.remote.server_fingerprint",
                "is not a SHA-256 fingerprint (64 hex digits)",
                "copy it from `incus info` on the server (config.core.https_address certificate)",
            );
        }
    }
}

fn networks(n: &Networks, external: &str, is_set: &dyn Fn(&str) -> bool, d: &mut Vec<Diagnostic>) {
    let mut names: BTreeMap<&str, NetworkRole> = BTreeMap::new();
    for (role, net) in n.iter() {
        let p = format!("networks.{}", role.as_str());
        // Bridges are Linux interfaces: 15 characters at most.
        if let Err(e) = formats::incus_name(&net.name, 15) {
            push(
                d,
                format!("{p}.name"),
                format!("network name {e}"),
                "bridge names are at most 15 letters, digits and hyphens",
            );
        }
        if net.name == external {
            push(
                d,
                format!("{p}.name"),
                format!(
                    "`{}` is incus.external_network, which Atlas does not manage",
                    net.name
                ),
                "give the network its own name",
            );
        }
        if let Some(other) = names.insert(&net.name, role) {
            push(
                d,
                format!("{p}.name"),
                format!(
                    "`{}` is also the name of networks.{}",
                    net.name,
                    other.as_str()
                ),
                "give every network its own name",
            );
        }
        gateway_v4(&p, &net.ipv4, d);
        if let Some(v6) = &net.ipv6 {
            gateway_v6(&p, v6, d);
        }
    }
    let nets: Vec<_> = n.iter().collect();
    for (i, (ra, a)) in nets.iter().enumerate() {
        for (rb, b) in &nets[i + 1..] {
            if a.ipv4.trunc().contains(&b.ipv4.trunc()) || b.ipv4.trunc().contains(&a.ipv4.trunc())
            {
                // Blame the one the operator wrote; failing that, the wider one.
                let a_set = is_set(&format!("networks.{}.ipv4", ra.as_str()));
                let b_set = is_set(&format!("networks.{}.ipv4", rb.as_str()));
                let blame_a = match (a_set, b_set) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => a.ipv4.prefix_len() < b.ipv4.prefix_len(),
                };
                let ((rx, x), (ry, y)) = if blame_a {
                    ((ra, a), (rb, b))
                } else {
                    ((rb, b), (ra, a))
                };
                push(
                    d,
                    format!("networks.{}.ipv4", rx.as_str()),
                    format!(
                        "{} overlaps networks.{}.ipv4 ({})",
                        x.ipv4.trunc(),
                        ry.as_str(),
                        y.ipv4.trunc()
                    ),
                    "give each network its own range, e.g. 10.60.0.1/24",
                );
            }
            let v6_overlap = match (a.ipv6, b.ipv6) {
                (Some(x), Some(y)) => {
                    x.trunc().contains(&y.trunc()) || y.trunc().contains(&x.trunc())
                }
                _ => false,
            };
            if let (true, Some(x), Some(y)) = (v6_overlap, a.ipv6, b.ipv6) {
                push(
                    d,
                    format!("networks.{}.ipv6", rb.as_str()),
                    format!(
                        "{} overlaps networks.{}.ipv6 ({})",
                        y.trunc(),
                        ra.as_str(),
                        x.trunc()
                    ),
                    "give each network its own prefix, e.g. fd00:10:60::1/64",
                );
            }
        }
    }
}

/// IPv4 ranges no bridge can use: the kernel, or every host, treats them specially.
const SPECIAL_V4: [(&str, &str); 5] = [
    (
        "0.0.0.0/8",
        "unspecified (\"this network\", never a destination)",
    ),
    ("127.0.0.0/8", "loopback (every host keeps it for itself)"),
    (
        "169.254.0.0/16",
        "link-local (not routed, taken by automatic addressing)",
    ),
    ("224.0.0.0/4", "multicast (group addresses, not hosts)"),
    (
        "240.0.0.0/4",
        "reserved (class E and the broadcast address, not usable)",
    ),
];

/// Which special range `net` reaches into, and what it is.
pub(crate) fn special_v4(net: &ipnet::Ipv4Net) -> Option<(ipnet::Ipv4Net, &'static str)> {
    let net = net.trunc();
    SPECIAL_V4.iter().find_map(|(range, what)| {
        let range: ipnet::Ipv4Net = range.parse().ok()?;
        (range.contains(&net.network()) || net.contains(&range.network())).then_some((range, *what))
    })
}

fn gateway_v4(p: &str, net: &ipnet::Ipv4Net, d: &mut Vec<Diagnostic>) {
    let path = format!("{p}.ipv4");
    let example = format!(
        "{}/{}",
        Ipv4Addr::from(u32::from(net.network()).saturating_add(1)),
        net.prefix_len()
    );
    if let Some((range, what)) = special_v4(net) {
        push(
            d,
            path,
            format!("{} is inside {range}, which is {what}", net.trunc()),
            "use a private range (RFC 1918), e.g. 10.60.0.1/24",
        );
    } else if net.prefix_len() > 30 {
        push(
            d,
            path,
            format!("/{} leaves no room for instances", net.prefix_len()),
            "use a prefix of /30 or shorter, like /24",
        );
    } else if net.addr() == net.network() {
        push(
            d,
            path,
            format!("{net} is the network address, not a gateway"),
            format!("write the gateway address with the prefix, e.g. {example}"),
        );
    } else if net.addr() == net.broadcast() {
        push(
            d,
            path,
            format!("{net} is the broadcast address, not a gateway"),
            format!("write the gateway address with the prefix, e.g. {example}"),
        );
    }
}

fn gateway_v6(p: &str, net: &ipnet::Ipv6Net, d: &mut Vec<Diagnostic>) {
    let path = format!("{p}.ipv6");
    if net.prefix_len() > 64 {
        push(
            d,
            path,
            format!("/{} is too narrow for SLAAC", net.prefix_len()),
            "use a /64, e.g. fd00:10:50::1/64",
        );
    } else if net.addr() == net.network() {
        push(
            d,
            path,
            format!("{net} is the network address, not a gateway"),
            format!(
                "write the gateway, e.g. {}1/{}",
                net.network(),
                net.prefix_len()
            ),
        );
    } else if (net.addr().segments()[0] & 0xfe00) != 0xfc00 {
        push(
            d,
            path,
            format!("{net} is not a unique local (fd00::/8) prefix"),
            "Atlas networks are private: use a ULA like fd00:10:50::1/64",
        );
    }
}

fn instance(c: &Config, name: &str, i: &Instance, d: &mut Vec<Diagnostic>) {
    let p = format!("instances.{name}");
    let name_ok = formats::incus_name(name, 63).map_err(|e| {
        push(
            d,
            p.clone(),
            format!("instance name {e}"),
            "rename the [instances.<name>] table, e.g. grafana02",
        );
    });
    if !(1..=64).contains(&i.cpu) {
        d.push(cpu_range(&format!("{p}.cpu"), i64::from(i.cpu)));
    }
    if i.memory.bytes < 32_000_000 {
        push(
            d,
            format!("{p}.memory"),
            format!("{} is too little for any service here", i.memory),
            "give at least 32MB, e.g. 128MB",
        );
    }
    if let Err(e) = formats::incus_name(&i.profile, 63) {
        push(
            d,
            format!("{p}.profile"),
            format!("profile name {e}"),
            format!("use the service name, `{}`", i.service.as_str()),
        );
    }
    for k in i.environment.keys() {
        let ok = k.starts_with(|ch: char| ch.is_ascii_alphabetic() || ch == '_')
            && k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !ok {
            push(
                d,
                format!("{p}.environment.{k}"),
                format!("`{k}` is not a variable name"),
                "use letters, digits and underscores, not starting with a digit",
            );
        }
    }
    if i.tls
        && matches!(
            i.service,
            ServiceKind::Caddy | ServiceKind::StepCa | ServiceKind::Cloudflared
        )
    {
        push(
            d,
            format!("{p}.tls"),
            format!(
                "{} does not take a step-ca certificate for its listener",
                i.service.as_str()
            ),
            "remove `tls` here (Caddy terminates TLS itself; step-ca is the CA)",
        );
    }
    if i.web.is_some() && !has_web_ui(i.service) {
        push(
            d,
            format!("{p}.web"),
            format!("{} has no web UI to publish", i.service.as_str()),
            "remove the web section",
        );
    }
    if i.enabled && i.service == ServiceKind::Cloudflared && c.secrets.cloudflared_token.is_none() {
        push(
            d,
            format!("{p}.enabled"),
            "cloudflared needs a tunnel token and none is set",
            "set ATLAS_CLOUDFLARED_TOKEN or cloudflared.token_file, or leave the instance disabled",
        );
    }
    if let Some(pl) = &i.placement {
        placement(&p, pl, d);
    }
    nics(c, &p, i, d);
    // A bad instance name makes its default volume name bad too; one error is enough.
    if let (Some(v), Ok(())) = (&i.volume, name_ok) {
        volume(&p, v, d);
    }
    if let Some(w) = &i.web {
        web(&p, w, d);
    }
}

/// Only the form: whether the member or group exists is preflight's job (it needs the server).
fn placement(p: &str, pl: &Placement, d: &mut Vec<Diagnostic>) {
    let (key, name) = match pl {
        Placement::Member(n) => ("member", n),
        Placement::Group(n) => ("group", n),
    };
    let bad = if name.is_empty() {
        Some("is empty".to_string())
    } else if let Some(rest) = name.strip_prefix('@') {
        Some(format!(
            "starts with `@`; write the group name alone: `{rest}`"
        ))
    } else {
        name.chars()
            .find(|ch| ch.is_whitespace() || ch.is_control() || *ch == '/')
            .map(|ch| format!("contains {ch:?}"))
    };
    if let Some(why) = bad {
        push(
            d,
            format!("{p}.{key}"),
            format!("cluster {key} name `{name}` {why}"),
            format!(
                "use the name `incus cluster {}` shows",
                if key == "member" {
                    "list"
                } else {
                    "group list"
                }
            ),
        );
    }
}

fn nics(c: &Config, p: &str, i: &Instance, d: &mut Vec<Diagnostic>) {
    for nic in &i.nics {
        let Some(net) = c.networks.get(nic.network) else {
            continue;
        };
        let role = nic.network.as_str();
        if nic.ipv4.is_none() {
            push(
                d,
                format!("{p}.addresses.{role}"),
                format!("no free address left for it on networks.{role}"),
                format!("set one inside {}, or widen the network", net.ipv4.trunc()),
            );
        }
        if let Some(a) = nic.ipv4 {
            let path = format!("{p}.addresses.{role}");
            let fix = format!("pick a free host address inside {}", net.ipv4.trunc());
            if !net.ipv4.contains(&a) {
                push(
                    d,
                    path,
                    format!("{a} is outside networks.{role}.ipv4 ({})", net.ipv4.trunc()),
                    fix,
                );
            } else if a == net.ipv4.network() || a == net.ipv4.broadcast() || a == net.gateway() {
                let what = if a == net.gateway() {
                    "the gateway"
                } else if a == net.ipv4.network() {
                    "the network address"
                } else {
                    "the broadcast address"
                };
                push(d, path, format!("{a} is {what} of networks.{role}"), fix);
            }
        }
        if let Some(a) = nic.ipv6 {
            let path = format!("{p}.ipv6_addresses.{role}");
            match &net.ipv6 {
                None => push(
                    d,
                    path,
                    format!("networks.{role} has no IPv6"),
                    format!("set networks.{role}.ipv6 first, or remove this address"),
                ),
                Some(n6) if !n6.contains(&a) || a == n6.addr() || a == n6.network() => {
                    push(
                        d,
                        path,
                        format!("{a} is not a free host address of {}", n6.trunc()),
                        format!(
                            "pick an address inside {} other than the gateway",
                            n6.trunc()
                        ),
                    );
                }
                Some(_) => {}
            }
        }
    }
}

fn volume(p: &str, v: &Volume, d: &mut Vec<Diagnostic>) {
    if let Err(e) = formats::incus_name(&v.name, 63) {
        push(
            d,
            format!("{p}.volume.name"),
            format!("volume name {e}"),
            "use a name like grafana01-data",
        );
    }
    if !v.path.starts_with('/') {
        push(
            d,
            format!("{p}.volume.path"),
            format!("`{}` is not an absolute path", v.path),
            "write the mount path inside the container, e.g. /var/lib/grafana",
        );
    }
    if v.size.bytes < 100_000_000 {
        push(
            d,
            format!("{p}.volume.size"),
            format!("{} is too small for a data volume", v.size),
            "give at least 100MB, e.g. 1GB",
        );
    }
    let s = &v.snapshots;
    if let Err(e) = formats::snapshot_schedule(&s.schedule) {
        push(
            d,
            format!("{p}.snapshots.schedule"),
            e,
            "e.g. @daily or \"0 2 * * *\"",
        );
    }
    if let Err(e) = formats::snapshot_expiry(&s.expiry) {
        push(d, format!("{p}.snapshots.expiry"), e, "e.g. 7d or 2w");
    }
    if s.pattern.trim().is_empty() {
        push(
            d,
            format!("{p}.snapshots.pattern"),
            "is empty",
            format!("use {}", super::SNAPSHOT_PATTERN),
        );
    }
}

fn web(p: &str, w: &WebRoute, d: &mut Vec<Diagnostic>) {
    if let Err(e) = formats::domain_name(&w.domain) {
        push(
            d,
            format!("{p}.web.domain"),
            e,
            "write a host name like grafana.atlas.localhost",
        );
    } else if !formats::is_local_domain(&w.domain) && w.allowed_ip_range.is_empty() {
        push(
            d,
            format!("{p}.web.allowed_ip_range"),
            format!(
                "`{}` is a public domain and no allowed_ip_range is set, so anyone on the internet could reach it",
                w.domain
            ),
            "list the client ranges that may connect, e.g. allowed_ip_range = [\"203.0.113.0/24\"], or use a local-only domain (*.localhost, *.internal, *.home.arpa, *.lan)",
        );
    }
    for (n, lp) in w.login_paths.iter().enumerate() {
        if !lp.starts_with('/') {
            push(
                d,
                format!("{p}.web.login_paths[{n}]"),
                format!("`{lp}` is not a path"),
                "start it with /, e.g. /login",
            );
        }
    }
}

/// Names and addresses that must be unique across instances.
fn shared_resources(c: &Config, d: &mut Vec<Diagnostic>) {
    let enabled = c.enabled_instances();
    let mut volumes: BTreeMap<&str, &str> = BTreeMap::new();
    let mut addrs: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (name, i) in &enabled {
        if let Some(other) = i
            .volume
            .as_ref()
            .and_then(|v| volumes.insert(&v.name, name))
        {
            let v = i.volume.as_ref().expect("checked above");
            push(
                d,
                format!("instances.{name}.volume.name"),
                format!("volume `{}` is also used by {other}", v.name),
                format!("name it after the instance, e.g. {name}-data"),
            );
        }
        for nic in &i.nics {
            let role = nic.network.as_str();
            let pairs = [
                (nic.ipv4.map(IpAddr::V4), "addresses"),
                (nic.ipv6.map(IpAddr::V6), "ipv6_addresses"),
            ];
            for (a, key) in pairs {
                if let Some((a, other)) =
                    a.and_then(|a| addrs.insert(a, name.to_string()).map(|o| (a, o)))
                {
                    push(
                        d,
                        format!("instances.{name}.{key}.{role}"),
                        format!("{a} is also the address of {other}"),
                        "give each instance its own address",
                    );
                }
            }
        }
    }
    let mut tls_users: Vec<String> = enabled
        .iter()
        .filter(|(_, i)| i.tls)
        .map(|(n, _)| format!("instances.{n}.tls"))
        .collect();
    if c.mosquitto.tls && !c.instances_of(ServiceKind::Mosquitto).is_empty() {
        tls_users.push("mosquitto.tls".into());
    }
    if let Some(first) = tls_users.first() {
        if c.instances_of(ServiceKind::StepCa).is_empty() {
            push(
                d,
                first.clone(),
                "TLS certificates come from step-ca, which is disabled",
                "enable instances.step-ca01 or turn tls off",
            );
        } else if !c.step_ca.dns_names.iter().any(|n| n == "localhost") {
            // The installer signs inside step-ca01 over https://localhost:9000, and step-ca
            // accepts only tokens for, and serves only, its own names.
            push(
                d,
                "step_ca.dns_names",
                format!(
                    "lacks \"localhost\", which the installer uses to have step-ca sign certificates ({first} is on)"
                ),
                "add \"localhost\" to step_ca.dns_names (a CA initialised without it keeps its names: turn tls off there)",
            );
        }
    }
    if c.instances_of(ServiceKind::StepCa).len() > 1 {
        push(
            d,
            "instances",
            "more than one step-ca instance is enabled; Atlas has one CA",
            "disable all but one step-ca instance",
        );
    }
}

/// Ports published on the host by proxy devices; two listeners on one port cannot both bind.
/// A clash is reported at the key the operator set, when only one of the two was set.
fn host_ports(c: &Config, is_set: &dyn Fn(&str) -> bool, d: &mut Vec<Diagnostic>) {
    struct Claim {
        ip: IpAddr,
        port: u16,
        key: String,
        owner: String,
    }
    let mut wanted: Vec<(&str, &str, u16, String, &str)> = Vec::new();
    for (name, _) in c.instances_of(ServiceKind::Caddy) {
        wanted.push((
            &c.caddy.listen_address,
            "caddy.listen_address",
            c.caddy.http_port,
            "caddy.http_port".into(),
            name,
        ));
        wanted.push((
            &c.caddy.listen_address,
            "caddy.listen_address",
            c.caddy.https_port,
            "caddy.https_port".into(),
            name,
        ));
    }
    for (name, _) in c.instances_of(ServiceKind::Mosquitto) {
        let m = &c.mosquitto;
        wanted.push((
            &m.listen_address,
            "mosquitto.listen_address",
            m.mqtt_port,
            "mosquitto.mqtt_port".into(),
            name,
        ));
        wanted.push((
            &m.listen_address,
            "mosquitto.listen_address",
            m.mqtts_port,
            "mosquitto.mqtts_port".into(),
            name,
        ));
    }
    let mut taken: Vec<Claim> = Vec::new();
    for (addr, addr_key, port, key, owner) in wanted {
        let Ok(ip) = addr.parse::<IpAddr>() else {
            push(
                d,
                addr_key,
                format!("`{addr}` is not an IP address"),
                "use 0.0.0.0 for every interface or 127.0.0.1 for local only",
            );
            continue;
        };
        if port == 0 {
            push(
                d,
                key,
                "port 0 cannot be published",
                "use a port from 1 to 65535",
            );
            continue;
        }
        let clash = taken.iter().find(|t| {
            t.port == port && (t.ip == ip || t.ip.is_unspecified() || ip.is_unspecified())
        });
        match clash {
            Some(t) => {
                let (blamed, other, other_owner) = if is_set(&t.key) && !is_set(&key) {
                    (t.key.clone(), key.clone(), owner)
                } else {
                    (key.clone(), t.key.clone(), t.owner.as_str())
                };
                let by = if blamed == other {
                    format!("another {other_owner} instance")
                } else {
                    format!("{other} ({other_owner})")
                };
                push(
                    d,
                    blamed,
                    format!("host port {port} is already published by {by}"),
                    "choose another port, or disable the other listener",
                );
            }
            None => taken.push(Claim {
                ip,
                port,
                key,
                owner: owner.to_string(),
            }),
        }
    }
}

fn services(c: &Config, d: &mut Vec<Diagnostic>) {
    type Check = fn(&str) -> Result<u64, String>;
    let durations: [(&str, &str, Check); 10] = [
        (
            "caddy.rate_limit.window",
            &c.caddy.rate_limit.window,
            formats::go_duration,
        ),
        (
            "caddy.rate_limit.login_window",
            &c.caddy.rate_limit.login_window,
            formats::go_duration,
        ),
        (
            "prometheus.retention_time",
            &c.prometheus.retention_time,
            formats::prometheus_duration,
        ),
        (
            "prometheus.scrape_interval",
            &c.prometheus.scrape_interval,
            formats::prometheus_duration,
        ),
        (
            "prometheus.evaluation_interval",
            &c.prometheus.evaluation_interval,
            formats::prometheus_duration,
        ),
        (
            "alertmanager.group_wait",
            &c.alertmanager.group_wait,
            formats::prometheus_duration,
        ),
        (
            "alertmanager.group_interval",
            &c.alertmanager.group_interval,
            formats::prometheus_duration,
        ),
        (
            "alertmanager.repeat_interval",
            &c.alertmanager.repeat_interval,
            formats::prometheus_duration,
        ),
        (
            "step_ca.cert_duration",
            &c.step_ca.cert_duration,
            formats::go_duration,
        ),
        (
            "loki.retention_delete_delay",
            &c.loki.retention_delete_delay,
            formats::go_duration,
        ),
    ];
    for (path, value, check) in durations {
        if let Err(e) = check(value) {
            push(
                d,
                path,
                e,
                "e.g. 30d for retention, 15s for intervals, 24h for certificates",
            );
        }
    }
    if formats::go_duration(&c.loki.retention_delete_delay).is_ok_and(|ms| ms < MIN_DELETE_DELAY_MS)
    {
        push(
            d,
            "loki.retention_delete_delay",
            format!(
                "{} is shorter than 2h; Loki may delete chunks that are still being written",
                c.loki.retention_delete_delay
            ),
            "set it to 2h or more",
        );
    }
    match formats::hours(&c.loki.retention_period) {
        Err(e) => push(
            d,
            "loki.retention_period",
            e,
            "e.g. 720h for 30 days, 168h for 7 days",
        ),
        Ok(h) if h == 0 || h % 24 != 0 => push(
            d,
            "loki.retention_period",
            format!("{h}h is not a whole number of days; Loki's index period is 24h"),
            "use a multiple of 24h, e.g. 168h or 720h",
        ),
        Ok(_) => {}
    }
    let prom_volume = c
        .instances_of(ServiceKind::Prometheus)
        .into_iter()
        .find_map(|(n, i)| i.volume.as_ref().map(|v| (n, v)));
    if let (Some(size), Some((name, vol))) = (&c.prometheus.retention_size, prom_volume) {
        if size.bytes > vol.size.bytes {
            push(
                d,
                "prometheus.retention_size",
                format!("{size} is larger than the {name} volume ({})", vol.size),
                "keep it below the volume size, e.g. 90% of it",
            );
        }
    }
    let rl = &c.caddy.rate_limit;
    if rl.enabled && (rl.requests == 0 || rl.login_requests == 0) {
        let key = if rl.requests == 0 {
            "requests"
        } else {
            "login_requests"
        };
        push(
            d,
            format!("caddy.rate_limit.{key}"),
            "0 would refuse every request",
            "use at least 1, or set caddy.rate_limit.enabled = false",
        );
    }
    if c.caddy.admin_port == 0 {
        push(
            d,
            "caddy.admin_port",
            "port 0 cannot be scraped",
            "use 2019",
        );
    }
    if let Some(e) = c.caddy.acme_email.as_ref().filter(|e| !e.contains('@')) {
        push(
            d,
            "caddy.acme_email",
            format!("`{e}` is not an email address"),
            "write it like ops@example.com",
        );
    }
    if c.grafana.admin_user.trim().is_empty() {
        push(d, "grafana.admin_user", "is empty", "use `admin`");
    }
    if let Some(u) = c
        .alertmanager
        .webhook_url
        .as_ref()
        .filter(|u| !(u.starts_with("http://") || u.starts_with("https://")))
    {
        push(
            d,
            "alertmanager.webhook_url",
            format!("`{u}` is not an http(s) URL"),
            "write it like https://hooks.example.internal/alerts",
        );
    }
    if c.step_ca.ca_name.trim().is_empty() {
        push(d, "step_ca.ca_name", "is empty", "use `Atlas Internal CA`");
    }
    if c.step_ca.dns_names.is_empty() {
        push(
            d,
            "step_ca.dns_names",
            "is empty; services could not verify the CA",
            "keep [\"step-ca01.incus\", \"step-ca01\", \"localhost\"]",
        );
    }
    for (n, name) in c.step_ca.dns_names.iter().enumerate() {
        if let Err(e) = formats::domain_name(name) {
            push(
                d,
                format!("step_ca.dns_names[{n}]"),
                e,
                "list host names the CA is reached by",
            );
        }
    }
    mosquitto(&c.mosquitto, d);
    if c.cloudflared.metrics_port == 0 {
        push(
            d,
            "cloudflared.metrics_port",
            "port 0 cannot be scraped",
            "use 2000",
        );
    }
    if c.integrations.incus_https_port == 0 {
        push(
            d,
            "integrations.incus_https_port",
            "port 0 cannot be reached",
            "use 8443",
        );
    }
    if let Some(m) = c
        .images
        .registry_mirror
        .as_ref()
        .filter(|m| m.contains("://") || m.contains('/') || m.is_empty())
    {
        push(
            d,
            "images.registry_mirror",
            format!("`{m}` is not host[:port]"),
            "write only the host and port, e.g. mirror.internal:5000",
        );
    }
    if let Some(m) = c.images.download_mirror.as_ref().filter(|m| {
        !(m.starts_with("https://") || m.starts_with("http://") || m.starts_with("file:///"))
    }) {
        push(
            d,
            "images.download_mirror",
            format!("`{m}` is not an http(s):// URL or a file:/// directory"),
            "write e.g. https://mirror.internal/downloads or file:///srv/atlas-downloads",
        );
    }
}

fn mosquitto(m: &MosquittoConfig, d: &mut Vec<Diagnostic>) {
    if m.mqtt_port == m.mqtts_port {
        push(
            d,
            "mosquitto.mqtts_port",
            format!("{} is also mosquitto.mqtt_port", m.mqtts_port),
            "use 8883 for MQTTS and 1883 for MQTT",
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (n, u) in m.users.iter().enumerate() {
        let path = format!("mosquitto.users[{n}]");
        // The password file is `user:hash` per line, so these would corrupt it.
        let bad = u.is_empty()
            || u.len() > 64
            || u.chars()
                .any(|ch| ch == ':' || ch.is_whitespace() || ch.is_control());
        if bad {
            push(
                d,
                path,
                format!("`{u}` is not a usable MQTT user name"),
                "use 1-64 characters without spaces or `:`",
            );
        } else if !seen.insert(u.as_str()) {
            push(
                d,
                path,
                format!("`{u}` is listed twice"),
                "list each user once",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(c: &Config) -> Vec<String> {
        validate(c)
            .iter()
            .map(|d| format!("{}: {}", d.path, d.message))
            .collect()
    }

    #[test]
    fn builtin_is_valid() {
        assert_eq!(validate(&Config::builtin()), Vec::new());
    }

    #[test]
    fn special_ranges_are_refused_with_what_they_are() {
        for (cidr, range, what) in [
            ("127.0.0.1/8", "127.0.0.0/8", "loopback"),
            ("127.5.0.1/24", "127.0.0.0/8", "loopback"),
            ("224.0.0.1/24", "224.0.0.0/4", "multicast"),
            ("169.254.10.1/24", "169.254.0.0/16", "link-local"),
            ("0.0.0.1/24", "0.0.0.0/8", "unspecified"),
            ("240.0.0.1/24", "240.0.0.0/4", "reserved"),
            // Wider than a special range and covering it.
            ("96.0.0.1/3", "127.0.0.0/8", "loopback"),
        ] {
            let mut c = Config::builtin();
            c.networks.staging.ipv4 = cidr.parse().unwrap();
            let p = problems(&c);
            assert!(
                p.iter().any(|m| m.starts_with("networks.staging.ipv4: ")
                    && m.contains(&format!("is inside {range}, which is {what}"))),
                "{cidr}: {p:?}"
            );
        }
        for ok in [
            "10.60.0.1/24",
            "172.16.5.1/24",
            "192.168.7.1/24",
            "100.64.1.1/24",
        ] {
            let mut c = Config::builtin();
            c.networks.staging.ipv4 = ok.parse().unwrap();
            assert_eq!(problems(&c), Vec::<String>::new(), "{ok}");
        }
    }

    #[test]
    fn network_gateway_form_and_overlap() {
        let mut c = Config::builtin();
        c.networks.management.ipv4 = "10.50.0.0/24".parse().unwrap();
        c.networks.staging.ipv4 = "10.40.0.1/16".parse().unwrap();
        let p = problems(&c);
        assert!(
            p.iter()
                .any(|m| m
                    .starts_with("networks.management.ipv4: 10.50.0.0/24 is the network address")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("networks.staging.ipv4: 10.40.0.0/16 overlaps networks.production.ipv4 (10.40.0.0/24)")), "{p:?}");
    }

    #[test]
    fn collects_every_problem() {
        let mut c = Config::builtin();
        c.instances.get_mut("grafana01").unwrap().cpu = 65;
        c.loki.retention_delete_delay = "1h".into();
        c.instances
            .get_mut("grafana01")
            .unwrap()
            .web
            .as_mut()
            .unwrap()
            .domain = "grafana.example.com".into();
        c.mosquitto.users.push("bad:user".into());
        c.instances
            .get_mut("loki01")
            .unwrap()
            .volume
            .as_mut()
            .unwrap()
            .name = "grafana01-data".into();
        c.mosquitto.mqtt_port = 443;
        let p = problems(&c);
        for want in [
            "instances.grafana01.cpu: 65 CPUs is outside 1-64",
            "loki.retention_delete_delay: 1h is shorter than 2h",
            "instances.grafana01.web.allowed_ip_range: `grafana.example.com` is a public domain",
            "mosquitto.users[1]: `bad:user`",
            "volume `grafana01-data` is also used by",
            "mosquitto.mqtt_port: host port 443 is already published by caddy.https_port (caddy01)",
        ] {
            assert!(
                p.iter().any(|m| m.contains(want)),
                "missing {want:?} in {p:?}"
            );
        }
    }

    #[test]
    fn addresses_must_be_free_hosts_of_their_network() {
        let mut c = Config::builtin();
        c.instances.get_mut("loki01").unwrap().nics[0].ipv4 = Some(Ipv4Addr::new(10, 50, 0, 1));
        c.instances.get_mut("grafana01").unwrap().nics[0].ipv4 = Some(Ipv4Addr::new(10, 40, 0, 5));
        c.instances.get_mut("alertmanager01").unwrap().nics[0].ipv4 =
            Some(Ipv4Addr::new(10, 50, 0, 12));
        let p = problems(&c);
        assert!(
            p.iter()
                .any(|m| m
                    .contains("instances.loki01.addresses.management: 10.50.0.1 is the gateway")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m
                    .contains("instances.grafana01.addresses.management: 10.40.0.5 is outside")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("10.50.0.12 is also the address of")),
            "{p:?}"
        );
    }

    #[test]
    fn local_domain_needs_no_allowlist_and_public_with_one_is_fine() {
        let mut c = Config::builtin();
        let w = c
            .instances
            .get_mut("grafana01")
            .unwrap()
            .web
            .as_mut()
            .unwrap();
        w.domain = "grafana.example.com".into();
        w.allowed_ip_range = vec!["203.0.113.0/24".parse().unwrap()];
        assert_eq!(problems(&c), Vec::<String>::new());
    }

    #[test]
    fn cloudflared_needs_its_token() {
        let mut c = Config::builtin();
        c.instances.get_mut("cloudflared01").unwrap().enabled = true;
        assert!(
            problems(&c)
                .iter()
                .any(|m| m.contains("cloudflared01.enabled: cloudflared needs a tunnel token"))
        );
        c.secrets.cloudflared_token = Some("t".into());
        assert_eq!(problems(&c), Vec::<String>::new());
    }
}
