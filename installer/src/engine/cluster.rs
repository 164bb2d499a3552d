//! Incus clusters, as the engine meets them: what preflight checks, recording the member
//! chosen at first install, and creating networks the cluster way. Membership and placement
//! themselves are facts of the [`Deployment`] (see `deployment::cluster`).
//!
//! - [`check`] lists preflight problems: members not online, a storage pool missing on a
//!   member, a configured `member`/`group` the cluster does not have.
//! - [`record`] stores the member chosen at first install ([`KEY_PLACEMENT_MEMBER`]), so
//!   re-runs keep the stack where it is.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{self, Config};
use crate::deployment::{ClusterInfo, Deployment, Placement, Target};
use crate::incus::{ClusterMember, IncusError, Network, OptionalExt, StoragePool};

use super::error::EngineError;
use crate::incus::Client;

use crate::state::keys::PLACEMENT_MEMBER as KEY_PLACEMENT_MEMBER;

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
                info.member_names().join(", ")
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
            info.member_names().join(", "),
            config.incus.project
        ));
    }
    out
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
pub async fn check(client: &Client, d: &Deployment) -> Result<Vec<String>, IncusError> {
    let (config, info) = (&d.config, &d.cluster);
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
    out.extend(placement_problems(config, info, d.placement.recorded()));
    Ok(out)
}

/// Plan notes for existing instances that run somewhere else than their placement says.
/// Nothing is moved automatically (a move stops the service); the note says how.
/// `located`: `(instance, member it runs on)` as Incus reports them.
pub fn misplaced(placement: &Placement, located: &[(String, String)]) -> Vec<String> {
    located
        .iter()
        .filter_map(|(name, at)| {
            let want = placement.target_for(name)?;
            let fine = match &want {
                // A group: any of its members is right; Incus chose one at create.
                Target::Group(_) => true,
                Target::Member(m) => m == at,
            };
            let want = want.query();
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

/// Stores a newly chosen default member in the Atlas project's state (the project must
/// exist). No write when there is nothing to record, or when someone recorded one meanwhile
/// (the first choice wins, so nothing moves).
pub async fn record(
    client: &Client,
    config: &Config,
    placement: &Placement,
) -> Result<(), EngineError> {
    let (true, Some(member)) = (placement.record, &placement.default_member) else {
        return Ok(());
    };
    crate::state::update(client, &config.incus.project, |s| {
        if s.placement_member.is_none() {
            s.placement_member = Some(member.clone());
        }
        Ok::<(), crate::state::StateError>(())
    })
    .await?;
    Ok(())
}

/// Creates a network: the plain way on a standalone server, the cluster way (pending on
/// every member, then global) on a cluster.
pub async fn create_network(root: &Client, network: &Network) -> Result<(), IncusError> {
    let info = crate::deployment::cluster::detect(root).await?;
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
    use crate::deployment::cluster::tests::cluster;

    #[test]
    fn ipv6_member_addresses_are_bracketed_wherever_a_port_follows() {
        let mut info = cluster("m1", &[("m1", "Online"), ("m2", "Online")]);
        info.members[0].url = "https://[fd00:5::11]:8443".into();
        info.members[1].url = "https://198.51.100.12:8443".into();
        let d = Deployment::new(&Config::builtin(), info, None);
        let m1 = &d.members[0];
        assert_eq!(m1.api, "[fd00:5::11]:8443");
        assert_eq!(m1.at(9100), "[fd00:5::11]:9100");
        assert_eq!(d.members[1].at(3100), "198.51.100.12:3100");
        let copy = crate::deployment::per_member_name("node-exporter01", "m1");
        let dev = crate::render::instance_devices(&d, &copy);
        assert_eq!(dev["metrics"]["listen"], "tcp:[fd00:5::11]:9100");
        let loki = crate::render::instance_devices(&d, "loki01");
        assert_eq!(loki["loki"]["listen"], "tcp:[fd00:5::11]:3100");
        let opts = super::super::wiring::WiringOptions::of(&d).unwrap();
        assert_eq!(opts.loki_url.as_deref(), Some("http://[fd00:5::11]:3100"));
    }

    /// grafana01 pinned to member m1 and loki01 to group edge, on a cluster of three online
    /// members seen from m2.
    fn pinned_on_three_members() -> (Config, ClusterInfo) {
        let mut cfg = Config::builtin();
        cfg.instances.get_mut("grafana01").unwrap().placement = Some(Pin::Member("m1".into()));
        cfg.instances.get_mut("loki01").unwrap().placement = Some(Pin::Group("edge".into()));
        let info = cluster(
            "m2",
            &[("m1", "Online"), ("m2", "Online"), ("m3", "Online")],
        );
        (cfg, info)
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
        // Members and groups that exist, and a recorded member still there: no problem.
        let (cfg, info) = pinned_on_three_members();
        assert!(placement_problems(&cfg, &info, Some("m2")).is_empty());
    }

    #[test]
    fn misplaced_instances_are_noted_not_moved() {
        let (cfg, info) = pinned_on_three_members();
        let p = Placement::resolve(&cfg.instances, &info, Some("m2"));
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
