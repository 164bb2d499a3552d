//! From the file schema to the model: every key the operator left out takes its default,
//! new instances start from their kind's defaults with addresses that do not collide, and
//! text that must become an address is parsed here (so the problem carries its key path).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::defaults::default_instance;
use super::error::Diagnostic;
use super::model::*;
use super::raw::*;

pub(crate) fn resolve(mut raw: RawConfig, secrets: Secrets, diags: &mut Vec<Diagnostic>) -> Config {
    let mut c = Config::builtin();
    // Each section the file has sets the keys it names over the builtin's.
    macro_rules! apply {
        ($($section:ident),+) => {$(
            if let Some(s) = raw.$section.take() {
                s.apply(&mut c.$section);
            }
        )+};
    }
    apply!(
        incus,
        caddy,
        grafana,
        prometheus,
        loki,
        step_ca,
        mosquitto,
        cloudflared,
        node_exporter,
        integrations,
        images
    );
    if let Some(s) = raw.alertmanager.take() {
        s.apply(&mut c.alertmanager, diags);
    }
    if let Some(mut nets) = raw.networks.take() {
        for role in NetworkRole::MANAGED {
            if let (Some(rn), Some(net)) = (nets.take(role), network_mut(&mut c.networks, role)) {
                apply_network(role, rn, net, diags);
            }
        }
    }
    c.instances = resolve_instances(
        raw.instances.take().unwrap_or_default(),
        &c.networks,
        &secrets,
        diags,
    );
    c.secrets = secrets;
    c
}

fn network_mut(n: &mut Networks, role: NetworkRole) -> Option<&mut Network> {
    match role {
        NetworkRole::Development => Some(&mut n.development),
        NetworkRole::Testing => Some(&mut n.testing),
        NetworkRole::Staging => Some(&mut n.staging),
        NetworkRole::Production => Some(&mut n.production),
        NetworkRole::Management => Some(&mut n.management),
        NetworkRole::External => None,
    }
}

fn apply_network(
    role: NetworkRole,
    rn: RawNetwork,
    net: &mut Network,
    diags: &mut Vec<Diagnostic>,
) {
    let path = format!("networks.{}", role.as_str());
    if let Some(v) = rn.name {
        net.name = v;
    }
    if let Some(v) = rn.ipv4_nat {
        net.ipv4_nat = v;
    }
    if let Some(v) = rn.ipv6_nat {
        net.ipv6_nat = v;
    }
    if let Some(text) = rn.ipv4 {
        match parse_net(&text, "10.50.0.1/24") {
            Ok(n) => net.ipv4 = n,
            Err(e) => diags.push(Diagnostic::new(format!("{path}.ipv4"), e)),
        }
    }
    if let Some(text) = rn.ipv6 {
        if text.is_empty() {
            net.ipv6 = None;
        } else {
            match parse_net(&text, "fd00:10:50::1/64") {
                Ok(n) => net.ipv6 = Some(n),
                Err(e) => diags.push(
                    Diagnostic::new(format!("{path}.ipv6"), e)
                        .help("leave it empty (\"\") for no IPv6"),
                ),
            }
        }
    }
}

fn parse_net<N: std::str::FromStr>(text: &str, example: &str) -> Result<N, String> {
    if !text.contains('/') {
        return Err(format!(
            "`{text}` has no prefix length: write the gateway address and the prefix, like {example}"
        ));
    }
    text.parse::<N>()
        .map_err(|_| format!("`{text}` is not a valid gateway/prefix: write it like {example}"))
}

fn resolve_instances(
    raws: BTreeMap<String, RawInstance>,
    networks: &Networks,
    secrets: &Secrets,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Instance> {
    let builtin: BTreeMap<String, ServiceKind> = ServiceKind::ALL
        .iter()
        .map(|k| (format!("{}01", k.as_str()), *k))
        .collect();
    let mut out = BTreeMap::new();
    for (name, kind) in &builtin {
        let mut inst = default_instance(*kind, name, networks, 0);
        if *kind == ServiceKind::Cloudflared {
            inst.enabled = secrets.cloudflared_token.is_some();
        }
        out.insert(name.clone(), inst);
    }
    // Addresses an operator fixed are claimed first, so new instances go around them.
    let mut pending_new = Vec::new();
    for (name, ri) in raws {
        let path = format!("instances.{name}");
        let kind = match (builtin.get(&name), ri.service) {
            (Some(b), Some(k)) if *b != k => {
                diags.push(
                    Diagnostic::new(
                        format!("{path}.service"),
                        format!(
                            "`{name}` is the built-in {} instance and cannot be a {}",
                            b.as_str(),
                            k.as_str()
                        ),
                    )
                    .help(format!(
                        "give the {} instance another name, e.g. {}02",
                        k.as_str(),
                        k.as_str()
                    )),
                );
                continue;
            }
            (Some(b), _) => *b,
            (None, Some(k)) => k,
            (None, None) => {
                let kinds: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.as_str()).collect();
                diags.push(
                    Diagnostic::new(
                        format!("{path}.service"),
                        format!("new instance `{name}` needs a `service`"),
                    )
                    .help(format!(
                        "add service = \"...\" with one of: {}",
                        kinds.join(", ")
                    )),
                );
                continue;
            }
        };
        let is_new = !builtin.contains_key(&name);
        let mut inst = out
            .remove(&name)
            .unwrap_or_else(|| default_instance(kind, &name, networks, 0));
        if is_new {
            // Placeholder addresses until a free slot is chosen below.
            inst.nics.iter_mut().for_each(|n| n.ipv4 = None);
        }
        let explicit_v4 = ri
            .addresses
            .as_ref()
            .map(|a| a.keys().cloned().collect::<BTreeSet<_>>())
            .unwrap_or_default();
        overlay_instance(&path, &name, ri, &mut inst, diags);
        if is_new {
            pending_new.push((name.clone(), explicit_v4));
        }
        out.insert(name, inst);
    }
    assign_free_addresses(&mut out, pending_new, networks);
    out
}

/// Second and later instances of a kind take the kind's host octet plus 10, 20, ... on
/// each of their networks, skipping any address already taken.
fn assign_free_addresses(
    instances: &mut BTreeMap<String, Instance>,
    pending: Vec<(String, BTreeSet<String>)>,
    networks: &Networks,
) {
    let mut used: BTreeSet<Ipv4Addr> = instances
        .values()
        .flat_map(|i| i.nics.iter().filter_map(|n| n.ipv4))
        .collect();
    for (name, explicit) in pending {
        let Some(inst) = instances.get_mut(&name) else {
            continue;
        };
        let octet = u32::from(inst.service.defaults().host_octet);
        for step in 1..=24u32 {
            let candidate: Vec<Option<Ipv4Addr>> = inst
                .nics
                .iter()
                .map(|nic| {
                    if explicit.contains(nic.network.as_str()) {
                        return nic.ipv4;
                    }
                    let net = networks.get(nic.network)?.ipv4;
                    let addr =
                        Ipv4Addr::from(u32::from(net.network()).saturating_add(octet + 10 * step));
                    Some(addr)
                })
                .collect();
            let fits = inst.nics.iter().zip(&candidate).all(|(nic, a)| {
                explicit.contains(nic.network.as_str())
                    || match (networks.get(nic.network), a) {
                        (Some(net), Some(a)) => {
                            net.ipv4.contains(a) && *a != net.ipv4.broadcast() && !used.contains(a)
                        }
                        _ => true,
                    }
            });
            if fits {
                for (nic, a) in inst.nics.iter_mut().zip(candidate) {
                    nic.ipv4 = a;
                }
                used.extend(inst.nics.iter().filter_map(|n| n.ipv4));
                break;
            }
        }
    }
}

fn overlay_instance(
    path: &str,
    name: &str,
    ri: RawInstance,
    inst: &mut Instance,
    diags: &mut Vec<Diagnostic>,
) {
    if let Some(v) = ri.enabled {
        inst.enabled = v;
    }
    if let Some(v) = ri.cpu {
        match u32::try_from(v) {
            Ok(n) => inst.cpu = n,
            Err(_) => diags.push(cpu_range(&format!("{path}.cpu"), v)),
        }
    }
    if let Some(v) = ri.memory {
        inst.memory = v;
    }
    if let Some(v) = ri.profile {
        inst.profile = v;
    }
    if let Some(v) = ri.tls {
        inst.tls = v;
    }
    if let Some(v) = ri.environment {
        inst.environment = v;
    }
    match (ri.member, ri.group) {
        (Some(_), Some(_)) => diags.push(
            Diagnostic::new(
                format!("{path}.group"),
                "both `member` and `group` are set; an instance runs on one member",
            )
            .help("keep `member` to pin it to that member, or `group` to let Incus pick one of the group's members"),
        ),
        (Some(m), None) => inst.placement = Some(Placement::Member(m)),
        (None, Some(g)) => inst.placement = Some(Placement::Group(g)),
        (None, None) => {}
    }
    for (role, text) in ri.addresses.unwrap_or_default() {
        let p = format!("{path}.addresses.{role}");
        if let Some(nic) = nic_for(&p, &role, inst, diags) {
            match text.parse::<Ipv4Addr>() {
                Ok(a) => nic.ipv4 = Some(a),
                Err(_) => diags.push(Diagnostic::new(
                    p,
                    format!("`{text}` is not an IPv4 address (like 10.50.0.21)"),
                )),
            }
        }
    }
    for (role, text) in ri.ipv6_addresses.unwrap_or_default() {
        let p = format!("{path}.ipv6_addresses.{role}");
        if let Some(nic) = nic_for(&p, &role, inst, diags) {
            match text.parse::<Ipv6Addr>() {
                Ok(a) => nic.ipv6 = Some(a),
                Err(_) => diags.push(Diagnostic::new(
                    p,
                    format!("`{text}` is not an IPv6 address (like fd00:10:50::21)"),
                )),
            }
        }
    }
    if let Some(rv) = ri.volume {
        overlay_volume(&format!("{path}.volume"), name, rv, inst, diags);
    }
    if let Some(rs) = ri.snapshots {
        overlay_snapshots(&format!("{path}.snapshots"), rs, inst, diags);
    }
    if let Some(rw) = ri.web {
        overlay_web(&format!("{path}.web"), rw, inst, diags);
    }
}

pub(crate) fn cpu_range(path: &str, v: i64) -> Diagnostic {
    Diagnostic::new(path, format!("{v} CPUs is outside 1-64"))
        .help("set cpu to a whole number of cores from 1 to 64")
}

fn nic_for<'a>(
    path: &str,
    role: &str,
    inst: &'a mut Instance,
    diags: &mut Vec<Diagnostic>,
) -> Option<&'a mut Nic> {
    let joins: Vec<&str> = inst.nics.iter().map(|n| n.network.as_str()).collect();
    let found = inst.nics.iter().position(|n| n.network.as_str() == role);
    if found.is_none() {
        diags.push(
            Diagnostic::new(
                path,
                format!(
                    "{} instances have no NIC on `{role}`",
                    inst.service.as_str()
                ),
            )
            .help(format!(
                "give addresses only for the networks it joins: {}",
                joins.join(", ")
            )),
        );
    }
    found.map(|i| &mut inst.nics[i])
}

fn overlay_volume(
    path: &str,
    name: &str,
    rv: RawVolume,
    inst: &mut Instance,
    diags: &mut Vec<Diagnostic>,
) {
    if rv.enabled == Some(false) {
        inst.volume = None;
        return;
    }
    let vol = match inst.volume.take() {
        Some(v) => Some(v),
        None => {
            match (rv.size.clone(), rv.path.clone()) {
                (Some(size), Some(mount)) => Some(Volume {
                    name: format!("{name}-data"),
                    size,
                    path: mount,
                    snapshots: Snapshots {
                        enabled: false,
                        schedule: "@daily".into(),
                        expiry: "7d".into(),
                        pattern: super::SNAPSHOT_PATTERN.into(),
                    },
                }),
                _ => {
                    diags.push(
                    Diagnostic::new(path, format!("{} has no default data volume", inst.service.as_str()))
                        .help("set both size and path to add one, e.g. size = \"1GB\", path = \"/data\""),
                );
                    None
                }
            }
        }
    };
    inst.volume = vol.map(|mut v| {
        if let Some(n) = rv.name {
            v.name = n;
        }
        if let Some(s) = rv.size {
            v.size = s;
        }
        if let Some(p) = rv.path {
            v.path = p;
        }
        v
    });
}

fn overlay_snapshots(
    path: &str,
    rs: RawSnapshots,
    inst: &mut Instance,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(vol) = inst.volume.as_mut() else {
        if rs.enabled == Some(true) {
            diags.push(
                Diagnostic::new(
                    format!("{path}.enabled"),
                    "snapshots need a data volume and this instance has none",
                )
                .help("remove the snapshots section or enable the volume"),
            );
        }
        return;
    };
    let s = &mut vol.snapshots;
    if let Some(v) = rs.enabled {
        s.enabled = v;
    }
    if let Some(v) = rs.schedule {
        s.schedule = v;
    }
    if let Some(v) = rs.expiry {
        s.expiry = v;
    }
    if let Some(v) = rs.pattern {
        s.pattern = v;
    }
}

/// Kinds with an HTTP UI worth publishing through Caddy.
pub(crate) fn has_web_ui(kind: ServiceKind) -> bool {
    matches!(
        kind,
        ServiceKind::Grafana | ServiceKind::Prometheus | ServiceKind::Alertmanager
    )
}

fn overlay_web(path: &str, rw: RawWeb, inst: &mut Instance, diags: &mut Vec<Diagnostic>) {
    if rw.enabled == Some(false) {
        inst.web = None;
        return;
    }
    if !has_web_ui(inst.service) {
        diags.push(
            Diagnostic::new(path, format!("{} has no web UI to publish through Caddy", inst.service.as_str()))
                .help("remove this section; only grafana, prometheus and alertmanager instances take [web]"),
        );
        return;
    }
    let mut web = match inst.web.take() {
        Some(w) => w,
        None => match &rw.domain {
            Some(d) => WebRoute {
                domain: d.clone(),
                allowed_ip_range: Vec::new(),
                upstream_port: inst.service.defaults().port,
                login_paths: Vec::new(),
            },
            None => {
                diags.push(
                    Diagnostic::new(format!("{path}.domain"), "publishing this instance needs a domain")
                        .help("set domain = \"prometheus.atlas.localhost\" (or a public name with allowed_ip_range)"),
                );
                return;
            }
        },
    };
    if let Some(d) = rw.domain {
        web.domain = d;
    }
    if let Some(paths) = rw.login_paths {
        web.login_paths = paths;
    }
    if let Some(ranges) = rw.allowed_ip_range {
        web.allowed_ip_range = ranges
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match parse_range(r) {
                Ok(n) => Some(n),
                Err(e) => {
                    diags.push(Diagnostic::new(format!("{path}.allowed_ip_range[{i}]"), e));
                    None
                }
            })
            .collect();
    }
    inst.web = Some(web);
}

/// `192.0.2.0/24`, `2001:db8::/32`, or a single address (taken as /32 or /128).
fn parse_range(r: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(ip) = r.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    let net: ipnet::IpNet = r
        .parse()
        .map_err(|_| format!("`{r}` is not an address or CIDR range (like 203.0.113.0/24)"))?;
    if net.addr() != net.network() {
        return Err(format!(
            "`{r}` has host bits set: the range is {}",
            net.trunc()
        ));
    }
    Ok(net)
}
