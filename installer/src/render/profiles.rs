//! Incus profiles, one per profile name in use, from the templates in `profiles/` (one per
//! service kind). The seed's composition: instances use `["default", <profile>]`.
//!
//! Per-instance devices (NIC addresses, the data volume) can only live in a profile that
//! serves one instance. When instances share a profile (say `grafana01` and `grafana02` both
//! use `grafana`), those devices move to the instances themselves: see [`instance_devices`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{Config, Instance, NetworkRole, ServiceKind};
use crate::deployment::{Deployment, MemberAddress, ports};

use super::{RenderError, templates};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSpec {
    pub name: String,
    pub description: String,
    pub config: BTreeMap<String, String>,
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
}

/// Every profile the enabled instances use, sorted by name.
pub fn profiles(d: &Deployment) -> Result<Vec<ProfileSpec>, RenderError> {
    let env = templates::environment();
    let mut by_profile: BTreeMap<&str, Vec<(&str, &Instance)>> = BTreeMap::new();
    for (name, inst) in d.enabled_instances() {
        by_profile
            .entry(inst.profile.as_str())
            .or_default()
            .push((name, inst));
    }
    let mut out = Vec::new();
    for (profile, users) in by_profile {
        let (first, inst) = users[0];
        for (other, o) in &users[1..] {
            let differs = [
                (o.service != inst.service, "service kind"),
                (o.cpu != inst.cpu, "cpu"),
                (o.memory != inst.memory, "memory"),
                (
                    o.nics
                        .iter()
                        .map(|n| n.network)
                        .ne(inst.nics.iter().map(|n| n.network)),
                    "networks",
                ),
            ];
            if let Some((_, field)) = differs.iter().find(|(d, _)| *d) {
                return Err(RenderError::ProfileConflict {
                    profile: profile.to_string(),
                    first: first.to_string(),
                    second: other.to_string(),
                    field: field.to_string(),
                });
            }
        }
        let exclusive = users.len() == 1;
        let kind = inst.service;
        let names: Vec<&str> = users.iter().map(|(n, _)| *n).collect();
        let ctx = profile_context(d, profile, first, inst, exclusive, &names)?;
        let template = format!("profiles/{}.toml.j2", kind.as_str());
        let text = templates::render(&env, &template, ctx)?;
        let spec: ProfileSpec =
            toml::from_str(&text).map_err(|source| RenderError::ProfileToml {
                kind: kind.as_str().to_string(),
                source,
            })?;
        out.push(spec);
    }
    Ok(out)
}

/// Devices an instance needs on itself because its profile is shared: its NICs with their
/// addresses and its data volume (they override the profile's devices of the same name).
/// Empty when the instance has its profile to itself.
pub fn instance_devices(
    d: &Deployment,
    instance: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let Some(inst) = d.instance(instance) else {
        return BTreeMap::new();
    };
    let config = &d.config;
    let mut devices = BTreeMap::new();
    // A per-member copy on a cluster (see `deployment`): its metrics port on the member's
    // address, for Prometheus on another member (bridges are per member).
    if let (Some(m), ServiceKind::NodeExporter) = (d.member_of(instance), inst.service) {
        let port = ports::NODE_EXPORTER_PORT;
        devices.insert(
            "metrics".to_string(),
            proxy_on_member(m, port, &format!("127.0.0.1:{port}")),
        );
    }
    // Loki on a cluster: published on its member's address for every member's Incus.
    if let (Some(m), Some(ip)) = (
        d.published_on(instance),
        inst.nics
            .iter()
            .find(|n| n.network != crate::config::NetworkRole::External)
            .and_then(|n| n.ipv4),
    ) {
        let port = ports::LOKI_PORT;
        devices.insert(
            "loki".to_string(),
            proxy_on_member(m, port, &format!("{ip}:{port}")),
        );
    }
    let sharing = d
        .enabled_instances()
        .iter()
        .filter(|(_, i)| i.profile == inst.profile)
        .count();
    if sharing <= 1 {
        return devices;
    }
    for nic in nics(config, inst, true) {
        let mut d = BTreeMap::from([
            ("type".to_string(), "nic".to_string()),
            (
                "name".to_string(),
                nic["device"].as_str().unwrap_or_default().to_string(),
            ),
            (
                "network".to_string(),
                nic["network"].as_str().unwrap_or_default().to_string(),
            ),
        ]);
        for key in ["ipv4", "ipv6"] {
            if let Some(a) = nic[key].as_str() {
                d.insert(format!("{key}.address"), a.to_string());
            }
        }
        devices.insert(nic["device"].as_str().unwrap_or_default().to_string(), d);
    }
    if let Some(v) = &inst.volume {
        devices.insert(
            "data".to_string(),
            BTreeMap::from([
                ("type".to_string(), "disk".to_string()),
                ("pool".to_string(), config.incus.storage_pool.clone()),
                ("source".to_string(), v.name.clone()),
                ("path".to_string(), v.path.clone()),
            ]),
        );
    }
    devices
}

/// A proxy device listening on `port` of the cluster member's address (in the member's
/// network namespace) and connecting to `connect` inside the container.
fn proxy_on_member(m: &MemberAddress, port: u16, connect: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("type".to_string(), "proxy".to_string()),
        ("bind".to_string(), "host".to_string()),
        ("listen".to_string(), format!("tcp:{}", m.at(port))),
        ("connect".to_string(), format!("tcp:{connect}")),
    ])
}

fn nics(config: &Config, inst: &Instance, with_addresses: bool) -> Vec<Value> {
    inst.nics
        .iter()
        .enumerate()
        .map(|(i, nic)| {
            let network = match nic.network {
                NetworkRole::External => config.incus.external_network.clone(),
                role => config
                    .networks
                    .get(role)
                    .map(|n| n.name.clone())
                    .unwrap_or_default(),
            };
            let has_v6 = config
                .networks
                .get(nic.network)
                .is_some_and(|n| n.ipv6.is_some());
            json!({
                "device": format!("eth{i}"),
                "network": network,
                "ipv4": nic.ipv4.filter(|_| with_addresses).map(|a| a.to_string()),
                "ipv6": nic.ipv6.filter(|_| with_addresses && has_v6).map(|a| a.to_string()),
            })
        })
        .collect()
}

fn profile_context(
    d: &Deployment,
    profile: &str,
    first: &str,
    inst: &Instance,
    exclusive: bool,
    users: &[&str],
) -> Result<Value, RenderError> {
    let kind = inst.service;
    // Per-member copies are named once, so a member joining does not change the profile.
    let mut named: Vec<String> = Vec::new();
    let config = &d.config;
    for u in users {
        let label = match d.member_of(u) {
            Some(m) => format!(
                "{} on every member",
                u.trim_end_matches(&format!("-{}", m.member))
            ),
            None => u.to_string(),
        };
        if !named.contains(&label) {
            named.push(label);
        }
    }
    let mut ctx = json!({
        "name": profile,
        "description": format!("Atlas {} ({})", kind.as_str(), named.join(", ")),
        "cpu": inst.cpu,
        "memory": inst.memory.text,
        "pool": config.incus.storage_pool,
        "nics": nics(config, inst, exclusive),
        "volume": inst.volume.as_ref().filter(|_| exclusive).map(|v| json!({"name": v.name, "path": v.path})),
    });
    let proxied = match kind {
        ServiceKind::Caddy => Some(json!({
            "listen_address": config.caddy.listen_address,
            "http_port": config.caddy.http_port,
            "https_port": config.caddy.https_port,
            "proxy_protocol": config.caddy.proxy_protocol.to_string(),
        })),
        ServiceKind::Mosquitto => Some(json!({
            "listen_address": config.mosquitto.listen_address,
            "mqtt_port": config.mosquitto.mqtt_port,
            "mqtts_port": config.mosquitto.mqtts_port,
            "tls": config.mosquitto.tls,
        })),
        _ => None,
    };
    if let Some(extra) = proxied {
        // A host port can be forwarded to one instance only.
        if let [_, second, ..] = users {
            return Err(RenderError::ProfileConflict {
                profile: profile.to_string(),
                first: first.to_string(),
                second: second.to_string(),
                field: "host ports (only one instance can own them)".to_string(),
            });
        }
        if let (Some(m), Value::Object(e)) = (ctx.as_object_mut(), extra) {
            m.extend(e);
        }
    }
    ctx["follow_host_mounts"] = json!(config.node_exporter.follow_host_mounts);
    Ok(ctx)
}
