//! Incus clusters: what preflight checks, where instances go, and creating networks the
//! cluster way.
//!
//! - [`detect`] reads membership (`GET /1.0/cluster`, members, groups); a standalone server
//!   gives [`ClusterInfo::default`] (`clustered: false`) and everything here is a no-op.
//! - [`check`] lists preflight problems: members not online, a storage pool missing on a
//!   member, a configured `member`/`group` the cluster does not have.
//! - [`Placement`]: an instance with `member`/`group` in the config goes there; all others sit
//!   on one member chosen at first install and recorded in the Atlas project
//!   ([`KEY_PLACEMENT_MEMBER`]), so re-runs keep them where they are.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{self, Config};
use crate::incus::{ClusterGroup, ClusterMember, IncusError, Network, OptionalExt, StoragePool};

use super::error::EngineError;
use crate::incus::Client;

/// Project config key holding the member the stack was placed on at first install.
pub const KEY_PLACEMENT_MEMBER: &str = "user.atlas.placement.member";

/// What the cluster looks like; `clustered: false` and empty lists on a standalone server.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterInfo {
    pub clustered: bool,
    /// The member this client talks to.
    pub local: String,
    pub members: Vec<ClusterMember>,
    pub groups: Vec<ClusterGroup>,
}

impl ClusterInfo {
    pub fn member(&self, name: &str) -> Option<&ClusterMember> {
        self.members.iter().find(|m| m.server_name == name)
    }

    pub fn member_names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.server_name.clone()).collect()
    }

    fn names(&self) -> String {
        self.member_names().join(", ")
    }
}

/// Reads the cluster's membership and groups (GETs only).
pub async fn detect(client: &Client) -> Result<ClusterInfo, IncusError> {
    let root = client.on_target(None);
    let cluster = root.cluster().await?;
    if !cluster.enabled {
        return Ok(ClusterInfo::default());
    }
    let mut members = root.cluster_members().await?;
    members.sort_by(|a, b| a.server_name.cmp(&b.server_name));
    let mut groups = root.cluster_groups().await?;
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(ClusterInfo {
        clustered: true,
        local: cluster.server_name,
        members,
        groups,
    })
}

/// Members that are not online, each with what to do about it.
pub fn member_problems(info: &ClusterInfo) -> Vec<String> {
    info.members
        .iter()
        .filter(|m| !m.is_online())
        .map(|m| {
            let why = if m.message.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.message)
            };
            format!(
                "cluster member {} is {}{why}: pools, networks and instances are created on every member, so all must be online; start its incusd again (`incus cluster list` shows it ONLINE when back), `incus cluster restore {}` if it was evacuated, or `incus cluster remove {} --force` if it is gone for good",
                m.server_name,
                m.status.to_uppercase(),
                m.server_name,
                m.server_name
            )
        })
        .collect()
}

/// Members a pool (status, locations as Incus reports them) is missing on.
pub fn pool_problems(info: &ClusterInfo, pool: &StoragePool) -> Vec<String> {
    let missing: Vec<&str> = info
        .members
        .iter()
        .map(|m| m.server_name.as_str())
        .filter(|m| !pool.locations.iter().any(|l| l == m))
        .collect();
    let driver = if pool.driver.is_empty() {
        "dir"
    } else {
        &pool.driver
    };
    let name = &pool.name;
    let then = if pool.status == "Created" {
        String::new()
    } else {
        format!(", then once without --target: `incus storage create {name} {driver}`")
    };
    let mut out: Vec<String> = missing
        .iter()
        .map(|m| {
            format!(
                "storage pool {name} does not exist on cluster member {m}; create it there (`incus storage create {name} {driver} --target {m}`{then}) or set incus.storage_pool in atlas.toml to a pool every member has"
            )
        })
        .collect();
    if missing.is_empty() && pool.status != "Created" {
        out.push(format!(
            "storage pool {name} is {} on the cluster, not created; finish it with `incus storage create {name} {driver}` (no --target)",
            pool.status
        ));
    }
    out
}

/// Configured `member`/`group` names the cluster does not have, and a recorded placement
/// member that left the cluster.
pub fn placement_problems(
    config: &Config,
    info: &ClusterInfo,
    stored: Option<&str>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, inst) in config.enabled_instances() {
        match &inst.placement {
            Some(config::Placement::Member(m)) if info.member(m).is_none() => out.push(format!(
                "instances.{name}.member = \"{m}\": the cluster has no member {m} (members: {}); use one of those",
                info.names()
            )),
            Some(config::Placement::Group(g)) => match info.groups.iter().find(|x| &x.name == g) {
                None => out.push(format!(
                    "instances.{name}.group = \"{g}\": the cluster has no group {g} (groups: {}); create it (`incus cluster group create {g}` and `incus cluster group assign <member> {g}`) or use another",
                    info.groups.iter().map(|x| x.name.as_str()).collect::<Vec<_>>().join(", ")
                )),
                Some(grp) if grp.members.is_empty() => out.push(format!(
                    "instances.{name}.group = \"{g}\": cluster group {g} has no members; assign one (`incus cluster group assign <member> {g}`)"
                )),
                Some(_) => {}
            },
            _ => {}
        }
    }
    if let Some(s) = stored
        && info.member(s).is_none()
    {
        out.push(format!(
            "the Atlas stack was placed on cluster member {s} (project key {KEY_PLACEMENT_MEMBER}), which is no longer in the cluster (members: {}); pin the instances with `member = \"...\"` in atlas.toml, or unset the key (`incus project unset {} {KEY_PLACEMENT_MEMBER}`) to choose again",
            info.names(),
            config.incus.project
        ));
    }
    out
}

/// What the engine says when [`expand`] had to turn Incus logging off.
pub const LOKI_ON_A_GROUP: &str = "Loki is placed on a cluster group, so the member whose address every member would ship Incus logs to is not known in advance: integrations.incus_loki is skipped; pin Loki with `member = \"...\"` to have it";

/// [`expand`] for the server `client` talks to: reads the members and the recorded member
/// (GETs only).
pub async fn expanded(
    client: &Client,
    config: &Config,
) -> Result<(Config, ClusterInfo), IncusError> {
    let info = detect(client).await?;
    let stored = match info.clustered {
        true => stored_member(client, config).await?,
        false => None,
    };
    Ok((expand(config, &info, stored.as_deref()), info))
}

/// The port Loki is published on, on its member's address.
pub const LOKI_PORT: u16 = 3100;

/// The metrics port of node-exporter, also where its per-member proxy listens.
pub const NODE_EXPORTER_PORT: u16 = 9100;

/// Whole-cluster monitoring: on a cluster, every enabled node-exporter of the config becomes
/// one copy per member (`<name>-<member>`, pinned there), each exposing its metrics on the
/// member's own address through a proxy device, since bridges do not span members; Prometheus
/// scrapes them there, labelled by member. Pure; a standalone server's config is returned as
/// it is. Members without a usable address are skipped (preflight reports them offline).
///
/// Incus' own metrics: every member already serves `/1.0/metrics` on its cluster address, so
/// Prometheus scrapes each member there (the wiring only trusts the metrics certificate, which
/// is cluster-wide) and leaves `core.https_address` alone.
///
/// Incus' logging: the Loki settings are cluster-wide, so every member ships its events to
/// one URL; Loki is published on the address of the member it is placed on (`stored`: the
/// recorded default member), through a proxy device. A Loki placed on a cluster group has no
/// member known in advance: logging is then skipped and the engine says so
/// ([`LOKI_ON_A_GROUP`]).
pub fn expand(config: &Config, info: &ClusterInfo, stored: Option<&str>) -> Config {
    let mut out = config.clone();
    if !info.clustered {
        return out;
    }
    out.cluster_members = info.members.iter().filter_map(member_address).collect();
    let placement = Placement::resolve(config, info, stored);
    for (name, _) in config.instances_of(config::ServiceKind::Loki) {
        let on = placement
            .target_for(name)
            .filter(|t| !t.starts_with('@'))
            .and_then(|m| out.cluster_members.iter().find(|a| a.member == m).cloned());
        match on {
            Some(addr) => {
                if let Some(i) = out.instances.get_mut(name) {
                    i.published_on = Some(addr);
                }
            }
            None => out.integrations.incus_loki = false,
        }
    }
    let exporters: Vec<String> = config
        .instances_of(config::ServiceKind::NodeExporter)
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    for name in exporters {
        let Some(template) = out.instances.remove(&name) else {
            continue;
        };
        for m in &info.members {
            let Some(addr) = member_address(m) else {
                continue;
            };
            let mut copy = template.clone();
            copy.placement = Some(config::Placement::Member(m.server_name.clone()));
            copy.member_address = Some(addr);
            out.instances
                .insert(per_member_name(&name, &m.server_name), copy);
        }
    }
    out
}

fn member_address(m: &ClusterMember) -> Option<config::MemberAddress> {
    let url = reqwest::Url::parse(&m.url).ok()?;
    let mut addr = config::MemberAddress {
        member: m.server_name.clone(),
        host: member_host(m)?,
        api: String::new(),
    };
    addr.api = addr.at(url.port_or_known_default()?);
    Some(addr)
}

/// `node-exporter01` on `m2`: `node-exporter01-m2` (instance names allow letters, digits
/// and `-` only).
pub fn per_member_name(name: &str, member: &str) -> String {
    let clean: String = member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("{name}-{}", clean.trim_matches('-'))
}

/// A member that is not online and the Atlas instances located on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfflineMember {
    pub member: String,
    pub status: String,
    pub instances: Vec<String>,
}

/// Members not online, each with the instances of `config`'s project that sit on it (from
/// their `location`; GETs only). Empty on a standalone server.
pub async fn offline_members(
    client: &Client,
    config: &Config,
    info: &ClusterInfo,
) -> Result<Vec<OfflineMember>, IncusError> {
    let down: Vec<&ClusterMember> = info.members.iter().filter(|m| !m.is_online()).collect();
    if down.is_empty() {
        return Ok(Vec::new());
    }
    let root = client.on_target(None);
    let located: Vec<(String, String)> =
        match root.get_project(&config.incus.project).await.optional()? {
            Some(_) => root
                .in_project(&config.incus.project)
                .instances()
                .await?
                .into_iter()
                .map(|i| (i.name, i.location))
                .collect(),
            None => Vec::new(),
        };
    Ok(down
        .into_iter()
        .map(|m| OfflineMember {
            member: m.server_name.clone(),
            status: m.status.to_uppercase(),
            instances: located
                .iter()
                .filter(|(_, l)| *l == m.server_name)
                .map(|(n, _)| n.clone())
                .collect(),
        })
        .collect())
}

/// Every cluster problem preflight reports (GETs only). Empty on a standalone server.
pub async fn check(
    client: &Client,
    config: &Config,
    info: &ClusterInfo,
) -> Result<Vec<String>, IncusError> {
    if !info.clustered {
        return Ok(Vec::new());
    }
    let root = client.on_target(None).in_project("default");
    let mut out = member_problems(info);
    // Say what of the stack sits on each member that is down: it is left as it is.
    for (line, down) in out
        .iter_mut()
        .zip(offline_members(client, config, info).await?)
    {
        if !down.instances.is_empty() {
            line.push_str(&format!(
                ". On {}: {} (left as they are; nothing is changed or destroyed until it is back)",
                down.member,
                down.instances.join(", ")
            ));
        }
    }
    if let Some(pool) = root
        .get_storage_pool(&config.incus.storage_pool)
        .await
        .optional()?
    {
        out.extend(pool_problems(info, &pool.value));
    }
    let stored = stored_member(&root, config).await?;
    out.extend(placement_problems(config, info, stored.as_deref()));
    Ok(out)
}

/// Where each instance goes. Built by [`Placement::resolve`]; the engine asks
/// [`Placement::target_for`] when it creates an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Member of every instance without its own `member`/`group`; `None` on a standalone
    /// server.
    pub default_member: Option<String>,
    /// Whether `default_member` was chosen now and still has to be recorded.
    pub record: bool,
    /// `?target=` per instance that names its own member (`m2`) or group (`@edge`).
    pub pinned: BTreeMap<String, String>,
}

impl Placement {
    /// Pure: the recorded member when there is one, else the member this client talks to
    /// when online, else the first online member by name.
    pub fn resolve(config: &Config, info: &ClusterInfo, stored: Option<&str>) -> Placement {
        if !info.clustered {
            return Placement::default();
        }
        let pinned = config
            .instances
            .iter()
            .filter_map(|(n, i)| i.placement.as_ref().map(|p| (n.clone(), p.target())))
            .collect();
        let online = |name: &str| info.member(name).is_some_and(ClusterMember::is_online);
        let (default_member, record) = match stored {
            Some(s) => (Some(s.to_string()), false),
            None if online(&info.local) => (Some(info.local.clone()), true),
            None => (
                info.members
                    .iter()
                    .find(|m| m.is_online())
                    .map(|m| m.server_name.clone()),
                true,
            ),
        };
        Placement {
            default_member,
            record,
            pinned,
        }
    }

    /// `?target=` for creating `instance`: its own member or `@group`, else the default
    /// member; `None` on a standalone server.
    pub fn target_for(&self, instance: &str) -> Option<String> {
        self.pinned
            .get(instance)
            .cloned()
            .or_else(|| self.default_member.clone())
    }

    /// `(instance, where)` of every enabled instance, for `plan`; empty when not clustered.
    pub fn describe(&self, config: &Config) -> Vec<(String, String)> {
        if self.default_member.is_none() && self.pinned.is_empty() {
            return Vec::new();
        }
        config
            .enabled_instances()
            .into_iter()
            .filter_map(|(n, _)| {
                self.target_for(n).map(|t| {
                    let place = match t.strip_prefix('@') {
                        Some(g) => format!("cluster group {g}"),
                        None if self.pinned.contains_key(n) => format!("member {t}"),
                        None if self.record => format!("member {t} (chosen now, recorded)"),
                        None => format!("member {t}"),
                    };
                    (n.to_string(), place)
                })
            })
            .collect()
    }
}

/// Plan notes for existing instances that run somewhere else than their placement says.
/// Nothing is moved automatically (a move stops the service); the note says how.
/// `located`: `(instance, member it runs on)` as Incus reports them.
pub fn misplaced(placement: &Placement, located: &[(String, String)]) -> Vec<String> {
    located
        .iter()
        .filter_map(|(name, at)| {
            let want = placement.target_for(name)?;
            let fine = match want.strip_prefix('@') {
                // A group: any of its members is right; Incus chose one at create.
                Some(_) => true,
                None => &want == at,
            };
            (!fine && !at.is_empty()).then(|| {
                format!(
                    "instance {name} runs on cluster member {at}, its placement says {want}; it is left where it is (to move it: `incus stop {name} && incus move {name} --target {want} && incus start {name}` in its project)"
                )
            })
        })
        .collect()
}

/// Brings member-specific server keys (`core.https_address`, `core.metrics_address`, ...) of
/// one member to `want` with `PATCH /1.0?target=<member>`; no write when they already match.
/// Returns whether it wrote.
pub async fn ensure_member_config(
    client: &Client,
    member: &str,
    want: &BTreeMap<String, String>,
) -> Result<bool, IncusError> {
    let on = client.on_target(Some(member));
    let have = on.server().await?;
    let changed: BTreeMap<String, String> = want
        .iter()
        .filter(|(k, v)| have.value.config.get(*k).map(String::as_str).unwrap_or("") != v.as_str())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if changed.is_empty() {
        return Ok(false);
    }
    on.patch_server_config(&changed, have.etag.as_deref())
        .await
        .map(|()| true)
}

/// The address part of a member's cluster URL (`https://198.51.100.12:8443` -> `198.51.100.12`),
/// where its metrics and proxy devices are reachable from the other members.
pub fn member_host(member: &ClusterMember) -> Option<String> {
    let url = reqwest::Url::parse(&member.url).ok()?;
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// The member recorded at first install, if any (GET only).
pub async fn stored_member(client: &Client, config: &Config) -> Result<Option<String>, IncusError> {
    let root = client.on_target(None);
    Ok(root
        .get_project(&config.incus.project)
        .await
        .optional()?
        .and_then(|p| p.value.config.get(KEY_PLACEMENT_MEMBER).cloned())
        .filter(|s| !s.is_empty()))
}

/// Reads what is recorded and resolves the placement (GETs only; for `plan` and `install`).
pub async fn placement(
    client: &Client,
    config: &Config,
    info: &ClusterInfo,
) -> Result<Placement, IncusError> {
    if !info.clustered {
        return Ok(Placement::default());
    }
    let stored = stored_member(client, config).await?;
    Ok(Placement::resolve(config, info, stored.as_deref()))
}

/// Stores a newly chosen default member in the Atlas project (which must exist). No write
/// when there is nothing to record.
pub async fn record(
    client: &Client,
    config: &Config,
    placement: &Placement,
) -> Result<(), EngineError> {
    let (true, Some(member)) = (placement.record, &placement.default_member) else {
        return Ok(());
    };
    let root = client.on_target(None);
    let project = &config.incus.project;
    for _ in 0..3 {
        let got = root.get_project(project).await?;
        if let Some(have) = got.value.config.get(KEY_PLACEMENT_MEMBER)
            && !have.is_empty()
        {
            // Someone recorded one meanwhile; the first choice wins so nothing moves.
            return Ok(());
        }
        let mut next = got.value.clone();
        next.config
            .insert(KEY_PLACEMENT_MEMBER.to_string(), member.clone());
        match root.update_project(&next, got.etag.as_deref()).await {
            Ok(()) => return Ok(()),
            Err(IncusError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(EngineError::object(
        format!("project {project}"),
        format!("kept changing while {KEY_PLACEMENT_MEMBER} was recorded; run again"),
    ))
}

/// Creates a network: the plain way on a standalone server, the cluster way (pending on
/// every member, then global) on a cluster.
pub async fn create_network(root: &Client, network: &Network) -> Result<(), IncusError> {
    let info = detect(root).await?;
    if !info.clustered {
        return root.create_network(network).await;
    }
    root.create_network_clustered(network, &info.member_names(), &BTreeMap::new())
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Placement as Pin;

    fn member(name: &str, status: &str) -> ClusterMember {
        ClusterMember {
            server_name: name.into(),
            status: status.into(),
            message: if status == "Online" {
                "Fully operational".into()
            } else {
                "No heartbeat for 12s".into()
            },
            ..ClusterMember::default()
        }
    }

    fn cluster(local: &str, statuses: &[(&str, &str)]) -> ClusterInfo {
        ClusterInfo {
            clustered: true,
            local: local.into(),
            members: statuses.iter().map(|(n, s)| member(n, s)).collect(),
            groups: vec![ClusterGroup {
                name: "edge".into(),
                members: vec!["m3".into()],
                ..ClusterGroup::default()
            }],
        }
    }

    #[test]
    fn ipv6_member_addresses_are_bracketed_wherever_a_port_follows() {
        let mut info = cluster("m1", &[("m1", "Online"), ("m2", "Online")]);
        info.members[0].url = "https://[fd00:5::11]:8443".into();
        info.members[1].url = "https://198.51.100.12:8443".into();
        let cfg = expand(&Config::builtin(), &info, None);
        let m1 = &cfg.cluster_members[0];
        assert_eq!(m1.api, "[fd00:5::11]:8443");
        assert_eq!(m1.at(9100), "[fd00:5::11]:9100");
        assert_eq!(cfg.cluster_members[1].at(3100), "198.51.100.12:3100");
        let dev = crate::render::instance_devices(&cfg, &per_member_name("node-exporter01", "m1"));
        assert_eq!(dev["metrics"]["listen"], "tcp:[fd00:5::11]:9100");
        let loki = crate::render::instance_devices(&cfg, "loki01");
        assert_eq!(loki["loki"]["listen"], "tcp:[fd00:5::11]:3100");
        let opts = super::super::wiring::WiringOptions::from_config(&cfg).unwrap();
        assert_eq!(opts.loki_url.as_deref(), Some("http://[fd00:5::11]:3100"));
    }

    #[test]
    fn standalone_places_nothing() {
        let p = Placement::resolve(&Config::builtin(), &ClusterInfo::default(), None);
        assert_eq!(p.target_for("grafana01"), None);
        assert!(p.describe(&Config::builtin()).is_empty() && !p.record);
    }

    #[test]
    fn first_install_picks_the_local_member_and_records_it() {
        let info = cluster(
            "m2",
            &[("m1", "Online"), ("m2", "Online"), ("m3", "Online")],
        );
        let p = Placement::resolve(&Config::builtin(), &info, None);
        assert_eq!(p.target_for("grafana01").as_deref(), Some("m2"));
        assert_eq!(p.target_for("loki01").as_deref(), Some("m2"));
        assert!(p.record);
        let shown = p.describe(&Config::builtin());
        assert!(
            shown
                .iter()
                .all(|(_, w)| w == "member m2 (chosen now, recorded)"),
            "{shown:?}"
        );
    }

    #[test]
    fn recorded_member_stays_whoever_answers() {
        let info = cluster(
            "m1",
            &[("m1", "Online"), ("m2", "Online"), ("m3", "Online")],
        );
        let p = Placement::resolve(&Config::builtin(), &info, Some("m3"));
        assert_eq!(p.target_for("prometheus01").as_deref(), Some("m3"));
        assert!(!p.record);
    }

    #[test]
    fn offline_local_member_is_not_chosen() {
        let info = cluster(
            "m1",
            &[("m1", "Offline"), ("m2", "Online"), ("m3", "Online")],
        );
        let p = Placement::resolve(&Config::builtin(), &info, None);
        assert_eq!(p.default_member.as_deref(), Some("m2"));
    }

    #[test]
    fn pinned_instances_go_to_their_member_or_group() {
        let mut cfg = Config::builtin();
        cfg.instances.get_mut("grafana01").unwrap().placement = Some(Pin::Member("m1".into()));
        cfg.instances.get_mut("loki01").unwrap().placement = Some(Pin::Group("edge".into()));
        let info = cluster(
            "m2",
            &[("m1", "Online"), ("m2", "Online"), ("m3", "Online")],
        );
        let p = Placement::resolve(&cfg, &info, Some("m2"));
        assert_eq!(p.target_for("grafana01").as_deref(), Some("m1"));
        assert_eq!(p.target_for("loki01").as_deref(), Some("@edge"));
        assert_eq!(p.target_for("caddy01").as_deref(), Some("m2"));
        let shown: BTreeMap<_, _> = p.describe(&cfg).into_iter().collect();
        assert_eq!(shown["loki01"], "cluster group edge");
        assert_eq!(shown["grafana01"], "member m1");
        assert!(placement_problems(&cfg, &info, Some("m2")).is_empty());
    }

    #[test]
    fn unknown_member_group_and_departed_recorded_member_are_problems() {
        let mut cfg = Config::builtin();
        cfg.instances.get_mut("grafana01").unwrap().placement = Some(Pin::Member("m9".into()));
        cfg.instances.get_mut("loki01").unwrap().placement = Some(Pin::Group("gpu".into()));
        let info = cluster("m1", &[("m1", "Online"), ("m2", "Online")]);
        let p = placement_problems(&cfg, &info, Some("m7"));
        assert_eq!(p.len(), 3, "{p:?}");
        let has = |want: &[&str]| p.iter().any(|x| want.iter().all(|w| x.contains(w)));
        assert!(
            has(&["instances.grafana01.member = \"m9\"", "members: m1, m2"]),
            "{p:?}"
        );
        assert!(
            has(&["instances.loki01.group", "no group gpu (groups: edge)"]),
            "{p:?}"
        );
        assert!(has(&["member m7", "incus project unset atlas"]), "{p:?}");
    }

    #[test]
    fn misplaced_instances_are_noted_not_moved() {
        let mut cfg = Config::builtin();
        cfg.instances.get_mut("grafana01").unwrap().placement = Some(Pin::Member("m1".into()));
        cfg.instances.get_mut("loki01").unwrap().placement = Some(Pin::Group("edge".into()));
        let info = cluster(
            "m2",
            &[("m1", "Online"), ("m2", "Online"), ("m3", "Online")],
        );
        let p = Placement::resolve(&cfg, &info, Some("m2"));
        let at = |n: &str, m: &str| (n.to_string(), m.to_string());
        let notes = misplaced(
            &p,
            &[
                at("grafana01", "m3"),
                at("loki01", "m1"),
                at("caddy01", "m2"),
                at("prometheus01", "m1"),
            ],
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes[0].contains("grafana01 runs on cluster member m3, its placement says m1"));
        assert!(notes[1].contains("prometheus01 runs on cluster member m1, its placement says m2"));
        assert!(misplaced(&Placement::default(), &[at("grafana01", "x")]).is_empty());
    }

    #[test]
    fn member_host_from_its_url() {
        let mut m = member("m1", "Online");
        m.url = "https://198.51.100.11:8443".into();
        assert_eq!(member_host(&m).as_deref(), Some("198.51.100.11"));
        m.url = "https://[fd00::11]:8443".into();
        assert_eq!(member_host(&m).as_deref(), Some("fd00::11"));
        m.url = String::new();
        assert_eq!(member_host(&m), None);
    }

    #[test]
    fn offline_member_is_named_with_the_fix() {
        let info = cluster(
            "m1",
            &[("m1", "Online"), ("m2", "Online"), ("m3", "Offline")],
        );
        let p = member_problems(&info);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].starts_with("cluster member m3 is OFFLINE (No heartbeat for 12s)")
                && p[0].contains("incus cluster remove m3 --force"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn pool_missing_on_a_member_names_it() {
        let info = cluster(
            "m1",
            &[("m1", "Online"), ("m2", "Online"), ("m3", "Online")],
        );
        let mut pool = StoragePool {
            name: "data".into(),
            driver: "dir".into(),
            status: "Pending".into(),
            locations: vec!["m1".into(), "m2".into()],
            ..StoragePool::default()
        };
        let p = pool_problems(&info, &pool);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("does not exist on cluster member m3")
                && p[0].contains("incus storage create data dir --target m3")
                && p[0].contains("once without --target"),
            "{}",
            p[0]
        );
        pool.locations.push("m3".into());
        let p = pool_problems(&info, &pool);
        assert!(
            p.len() == 1 && p[0].contains("is Pending on the cluster"),
            "{p:?}"
        );
        pool.status = "Created".into();
        assert!(pool_problems(&info, &pool).is_empty());
    }
}
