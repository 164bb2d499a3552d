//! What gets deployed where: the user's [`Config`], exactly as written, together with the
//! facts read from Incus that decide how it lands (cluster members and their addresses,
//! where each instance goes, which member publishes Loki). Built once per run
//! ([`Deployment::read`]); `render` and the engine take it, and nothing writes into the
//! config.
//!
//! On a standalone server the deployment is the config itself. On a cluster:
//! - every enabled node-exporter becomes one copy per member (`<name>-<member>`, pinned
//!   there), each exposing its metrics on the member's own address through a proxy device,
//!   since bridges do not span members; Prometheus scrapes them there, labelled by member.
//!   Members without a usable address are skipped (preflight reports them offline).
//! - Incus' own metrics: every member already serves `/1.0/metrics` on its cluster address,
//!   so Prometheus scrapes each member there ([`Deployment::members`]).
//! - Incus' logging: the Loki settings are cluster-wide, so every member ships its events to
//!   one URL; Loki is published on the address of the member it is placed on, through a proxy
//!   device. A Loki placed on a cluster group has no member known in advance: logging is then
//!   skipped ([`Deployment::incus_loki`] is false) and the engine says so
//!   ([`LOKI_ON_A_GROUP`]).

pub mod cluster;
pub mod ports;

use std::collections::BTreeMap;

use crate::config::{self, Config, Instance, ServiceKind};
use crate::incus::{Client, IncusError};

pub use cluster::{ClusterInfo, MemberAddress, Placement, Target, per_member_name};

/// What the engine says when a Loki on a cluster group leaves Incus logging off.
pub const LOKI_ON_A_GROUP: &str = "Loki is placed on a cluster group, so the member whose address every member would ship Incus logs to is not known in advance: integrations.incus_loki is skipped; pin Loki with `member = \"...\"` to have it";

/// The config as written, and how it lands on this server or cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// Exactly what the user wrote; never changed.
    pub config: Config,
    /// The instances as deployed: the config's, with each enabled node-exporter replaced on a
    /// cluster by its per-member copies.
    instances: BTreeMap<String, Instance>,
    /// Membership (`clustered: false` on a standalone server).
    pub cluster: ClusterInfo,
    /// Every member and the address its Incus API is reached on; empty on a standalone server.
    pub members: Vec<MemberAddress>,
    /// The per-member copies: the member each runs on, and its address.
    member_of: BTreeMap<String, MemberAddress>,
    /// Loki instances published on their member's address (on a cluster).
    published_on: BTreeMap<String, MemberAddress>,
    /// Where each instance goes (empty on a standalone server).
    pub placement: Placement,
    /// Whether Incus ships its events to Loki (see the module docs).
    incus_loki: bool,
}

impl Deployment {
    /// A single server: the config as it is.
    pub fn standalone(config: &Config) -> Deployment {
        Deployment::new(config, ClusterInfo::default(), None)
    }

    /// Pure: `config` on the cluster `info` describes (standalone when not clustered), with
    /// `stored` the member recorded at first install.
    pub fn new(config: &Config, info: ClusterInfo, stored: Option<&str>) -> Deployment {
        let mut d = Deployment {
            config: config.clone(),
            instances: config.instances.clone(),
            members: Vec::new(),
            member_of: BTreeMap::new(),
            published_on: BTreeMap::new(),
            placement: Placement::default(),
            incus_loki: config.integrations.incus_loki,
            cluster: info,
        };
        if !d.cluster.clustered {
            return d;
        }
        d.members = d
            .cluster
            .members
            .iter()
            .filter_map(MemberAddress::of)
            .collect();
        d.expand_node_exporters();
        d.placement = Placement::resolve(&d.instances, &d.cluster, stored);
        d.publish_loki();
        d
    }

    /// Reads what the deployment depends on (membership, the recorded member; GETs only).
    pub async fn read(client: &Client, config: &Config) -> Result<Deployment, IncusError> {
        let info = cluster::detect(client).await?;
        let stored = match info.clustered {
            true => stored_member(client, config).await?,
            false => None,
        };
        Ok(Deployment::new(config, info, stored.as_deref()))
    }

    fn expand_node_exporters(&mut self) {
        let exporters: Vec<String> = self
            .config
            .instances_of(ServiceKind::NodeExporter)
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        for name in exporters {
            let Some(template) = self.instances.remove(&name) else {
                continue;
            };
            for m in &self.members {
                let mut copy = template.clone();
                copy.placement = Some(Target::Member(m.member.clone()));
                let copy_name = per_member_name(&name, &m.member);
                self.member_of.insert(copy_name.clone(), m.clone());
                self.instances.insert(copy_name, copy);
            }
        }
    }

    fn publish_loki(&mut self) {
        let lokis: Vec<String> = self
            .instances_of(ServiceKind::Loki)
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        for name in lokis {
            let on = self
                .placement
                .member_for(&name)
                .and_then(|m| self.members.iter().find(|a| a.member == m).cloned());
            match on {
                Some(addr) => {
                    self.published_on.insert(name, addr);
                }
                None => self.incus_loki = false,
            }
        }
    }

    /// Every instance as deployed (disabled ones included), by name.
    pub fn instances(&self) -> &BTreeMap<String, Instance> {
        &self.instances
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.get(name)
    }

    /// Enabled instances in dependency order (see [`config::enabled_in`]).
    pub fn enabled_instances(&self) -> Vec<(&str, &Instance)> {
        config::enabled_in(&self.instances)
    }

    /// Enabled instances of one service kind, by name.
    pub fn instances_of(&self, kind: ServiceKind) -> Vec<(&str, &Instance)> {
        config::of_kind(&self.instances, kind)
    }

    /// The member a per-member copy runs on, with its address.
    pub fn member_of(&self, instance: &str) -> Option<&MemberAddress> {
        self.member_of.get(instance)
    }

    /// The member address Loki `instance` is published on (a cluster).
    pub fn published_on(&self, instance: &str) -> Option<&MemberAddress> {
        self.published_on.get(instance)
    }

    pub fn is_clustered(&self) -> bool {
        self.cluster.clustered
    }

    /// Whether Incus ships its events to Loki: the config's wish, unless Loki's member is
    /// not known in advance (see the module docs).
    pub fn incus_loki(&self) -> bool {
        self.incus_loki
    }

    /// The config asks for Incus logging but the cluster placement rules it out.
    pub fn loki_on_a_group(&self) -> bool {
        self.config.integrations.incus_loki && !self.incus_loki
    }

    /// The Atlas project's name.
    pub fn project(&self) -> &str {
        &self.config.incus.project
    }
}

/// The member recorded at first install, if any (GET only).
pub async fn stored_member(client: &Client, config: &Config) -> Result<Option<String>, IncusError> {
    Ok(crate::state::read(client, &config.incus.project)
        .await?
        .and_then(|s| s.placement_member))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::tests::cluster;

    #[test]
    fn standalone_is_the_config_as_written() {
        let cfg = Config::builtin();
        let d = Deployment::standalone(&cfg);
        assert_eq!(d.instances(), &cfg.instances);
        assert!(d.members.is_empty() && !d.is_clustered());
        assert_eq!(d.incus_loki(), cfg.integrations.incus_loki);
        assert_eq!(d.config, cfg);
    }

    #[test]
    fn on_a_cluster_each_member_gets_its_exporter_and_loki_is_published() {
        let mut info = cluster("m1", &[("m1", "Online"), ("m2", "Online")]);
        info.members[0].url = "https://[fd00:5::11]:8443".into();
        info.members[1].url = "https://198.51.100.12:8443".into();
        let cfg = Config::builtin();
        let d = Deployment::new(&cfg, info, None);
        assert_eq!(d.config, cfg, "the config stays as written");
        assert_eq!(d.members[0].api, "[fd00:5::11]:8443");
        assert_eq!(d.members[0].at(9100), "[fd00:5::11]:9100");
        assert_eq!(d.members[1].at(3100), "198.51.100.12:3100");
        assert!(d.instance("node-exporter01").is_none());
        let copy = per_member_name("node-exporter01", "m2");
        assert_eq!(d.member_of(&copy).map(|m| m.member.as_str()), Some("m2"));
        assert_eq!(
            d.instance(&copy).and_then(|i| i.placement.clone()),
            Some(Target::Member("m2".into()))
        );
        assert_eq!(
            d.published_on("loki01").map(|m| m.member.as_str()),
            Some("m1")
        );
        assert!(d.incus_loki());
    }

    #[test]
    fn loki_on_a_group_turns_incus_logging_off() {
        let mut cfg = Config::builtin();
        cfg.instances.get_mut("loki01").unwrap().placement = Some(Target::Group("edge".into()));
        let d = Deployment::new(&cfg, cluster("m1", &[("m1", "Online")]), None);
        assert!(!d.incus_loki() && d.loki_on_a_group());
        assert!(
            d.config.integrations.incus_loki,
            "the config keeps the wish"
        );
        assert!(d.published_on("loki01").is_none());
    }
}
