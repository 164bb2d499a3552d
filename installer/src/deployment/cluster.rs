//! The cluster facts a deployment is built from: membership, each member's address, and
//! where each instance goes.
//!
//! - [`detect`] reads membership (`GET /1.0/cluster`, members, groups); a standalone server
//!   gives [`ClusterInfo::default`] (`clustered: false`) and everything here is a no-op.
//! - [`Placement`]: an instance with `member`/`group` in the config goes there; all others sit
//!   on one member chosen at first install and recorded in the Atlas project, so re-runs keep
//!   them where they are.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Instance;
use crate::incus::{Client, ClusterGroup, ClusterMember, IncusError};

/// Where an instance runs on a cluster: a member, or any member of a cluster group (the
/// config's `member = "..."` / `group = "..."`, or the member chosen at first install).
pub use crate::config::Placement as Target;

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

/// A cluster member and the address other members reach it on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemberAddress {
    pub member: String,
    pub host: String,
    /// `host:port` of its Incus API (`core.https_address`, the cluster address), which also
    /// serves `/1.0/metrics`.
    pub api: String,
}

impl MemberAddress {
    /// `host:port` on the member's address (`[v6]:port` for an IPv6 one).
    pub fn at(&self, port: u16) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{port}", self.host),
            false => format!("{}:{port}", self.host),
        }
    }

    /// Of a member, from its cluster URL; `None` when it has no usable one.
    pub fn of(m: &ClusterMember) -> Option<MemberAddress> {
        let url = reqwest::Url::parse(&m.url).ok()?;
        let mut addr = MemberAddress {
            member: m.server_name.clone(),
            host: member_host(m)?,
            api: String::new(),
        };
        addr.api = addr.at(url.port_or_known_default()?);
        Some(addr)
    }
}

/// The address part of a member's cluster URL (`https://198.51.100.12:8443` -> `198.51.100.12`),
/// where its metrics and proxy devices are reachable from the other members.
pub fn member_host(member: &ClusterMember) -> Option<String> {
    let url = reqwest::Url::parse(&member.url).ok()?;
    url.host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
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

/// Where each instance goes. Built by [`Placement::resolve`]; the engine asks
/// [`Placement::target_for`] when it creates an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Member of every instance without its own `member`/`group`; `None` on a standalone
    /// server.
    pub default_member: Option<String>,
    /// Whether `default_member` was chosen now and still has to be recorded.
    pub record: bool,
    /// Instances that name their own member or group.
    pub pinned: BTreeMap<String, Target>,
}

impl Placement {
    /// Pure: the recorded member when there is one, else the member this client talks to
    /// when online, else the first online member by name.
    pub fn resolve(
        instances: &BTreeMap<String, Instance>,
        info: &ClusterInfo,
        stored: Option<&str>,
    ) -> Placement {
        if !info.clustered {
            return Placement::default();
        }
        let pinned = instances
            .iter()
            .filter_map(|(n, i)| i.placement.clone().map(|p| (n.clone(), p)))
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

    /// Where `instance` is created: its own member or group, else the default member;
    /// `None` on a standalone server.
    pub fn target_for(&self, instance: &str) -> Option<Target> {
        self.pinned
            .get(instance)
            .cloned()
            .or_else(|| self.default_member.clone().map(Target::Member))
    }

    /// The member recorded at an earlier install (not chosen now), if any.
    pub fn recorded(&self) -> Option<&str> {
        self.default_member.as_deref().filter(|_| !self.record)
    }

    /// The member `instance` is created on, when one is known in advance (not a group).
    pub fn member_for(&self, instance: &str) -> Option<String> {
        match self.target_for(instance)? {
            Target::Member(m) => Some(m),
            Target::Group(_) => None,
        }
    }

    /// `(instance, where)` of `names`, for `plan`; empty when not clustered.
    pub fn describe<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
        if self.default_member.is_none() && self.pinned.is_empty() {
            return Vec::new();
        }
        names
            .into_iter()
            .filter_map(|n| {
                self.target_for(n).map(|t| {
                    let place = match t {
                        Target::Group(g) => format!("cluster group {g}"),
                        Target::Member(m) if self.pinned.contains_key(n) => format!("member {m}"),
                        Target::Member(m) if self.record => {
                            format!("member {m} (chosen now, recorded)")
                        }
                        Target::Member(m) => format!("member {m}"),
                    };
                    (n.to_string(), place)
                })
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;

    pub(crate) fn member(name: &str, status: &str) -> ClusterMember {
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

    pub(crate) fn cluster(local: &str, statuses: &[(&str, &str)]) -> ClusterInfo {
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

    fn names(cfg: &Config) -> Vec<&str> {
        cfg.enabled_instances()
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn standalone_places_nothing() {
        let cfg = Config::builtin();
        let p = Placement::resolve(&cfg.instances, &ClusterInfo::default(), None);
        assert_eq!(p.target_for("grafana01"), None);
        assert!(p.describe(names(&cfg)).is_empty() && !p.record);
    }

    #[test]
    fn first_install_picks_the_local_member_and_records_it() {
        let info = cluster(
            "m2",
            &[("m1", "Online"), ("m2", "Online"), ("m3", "Online")],
        );
        let cfg = Config::builtin();
        let p = Placement::resolve(&cfg.instances, &info, None);
        assert_eq!(p.target_for("grafana01"), Some(Target::Member("m2".into())));
        assert_eq!(p.target_for("loki01"), Some(Target::Member("m2".into())));
        assert!(p.record);
        let shown = p.describe(names(&cfg));
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
        let p = Placement::resolve(&Config::builtin().instances, &info, Some("m3"));
        assert_eq!(p.member_for("prometheus01").as_deref(), Some("m3"));
        assert!(!p.record);
    }

    #[test]
    fn offline_local_member_is_not_chosen() {
        let info = cluster(
            "m1",
            &[("m1", "Offline"), ("m2", "Online"), ("m3", "Online")],
        );
        let p = Placement::resolve(&Config::builtin().instances, &info, None);
        assert_eq!(p.default_member.as_deref(), Some("m2"));
    }

    #[test]
    fn pinned_instances_go_to_their_member_or_group() {
        let mut cfg = Config::builtin();
        cfg.instances.get_mut("grafana01").unwrap().placement = Some(Target::Member("m1".into()));
        cfg.instances.get_mut("loki01").unwrap().placement = Some(Target::Group("edge".into()));
        let info = cluster(
            "m2",
            &[("m1", "Online"), ("m2", "Online"), ("m3", "Online")],
        );
        let p = Placement::resolve(&cfg.instances, &info, Some("m2"));
        assert_eq!(p.target_for("grafana01"), Some(Target::Member("m1".into())));
        assert_eq!(p.target_for("loki01"), Some(Target::Group("edge".into())));
        assert_eq!(
            p.target_for("loki01").map(|t| t.query()).as_deref(),
            Some("@edge")
        );
        assert_eq!(p.member_for("loki01"), None, "a group is no member");
        assert_eq!(p.member_for("caddy01").as_deref(), Some("m2"));
        let shown: BTreeMap<_, _> = p.describe(names(&cfg)).into_iter().collect();
        assert_eq!(shown["loki01"], "cluster group edge");
        assert_eq!(shown["grafana01"], "member m1");
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
}
