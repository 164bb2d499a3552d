//! The `/etc/hosts` entries each instance needs for the names the rendered configs use
//! (`<instance>.incus`). Instances with several NICs (Caddy) are reachable at several
//! addresses; each viewer gets the address on a network it shares with the target, so
//! traffic stays on that bridge and lands on a listener that exists there (Caddy binds its
//! metrics to its production and management addresses only).

use std::net::IpAddr;

use crate::deployment::Deployment;

use super::hostname;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub address: IpAddr,
    pub names: Vec<String>,
}

/// Entries for every other enabled instance, as seen from `viewer`, sorted by instance name.
/// Instances without a fixed address are left out (nothing can name them reliably).
pub fn hosts_for(d: &Deployment, viewer: &str) -> Vec<HostEntry> {
    let Some(me) = d.instance(viewer) else {
        return Vec::new();
    };
    let mine: Vec<_> = me.nics.iter().map(|n| n.network).collect();
    let mut out = Vec::new();
    for (name, inst) in d.instances() {
        // Per-member copies on a cluster share one bridge address on different members and
        // are reached at their member's address instead: not by name.
        if name == viewer || !inst.enabled || d.member_of(name).is_some() {
            continue;
        }
        let with_v4 = || inst.nics.iter().filter(|n| n.ipv4.is_some());
        let Some(nic) = with_v4()
            .find(|n| mine.contains(&n.network))
            .or_else(|| with_v4().next())
        else {
            continue;
        };
        let names = vec![hostname(name), name.clone()];
        if let Some(v4) = nic.ipv4 {
            out.push(HostEntry {
                address: IpAddr::V4(v4),
                names: names.clone(),
            });
        }
        if let Some(v6) = nic.ipv6.filter(|_| {
            d.config
                .networks
                .get(nic.network)
                .is_some_and(|n| n.ipv6.is_some())
        }) {
            out.push(HostEntry {
                address: IpAddr::V6(v6),
                names,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn addr(entries: &[HostEntry], name: &str) -> Option<String> {
        entries
            .iter()
            .find(|e| e.names[0] == format!("{name}.incus"))
            .map(|e| e.address.to_string())
    }

    #[test]
    fn each_viewer_gets_the_address_on_a_shared_network() {
        let c = Deployment::standalone(&Config::builtin());
        let prom = hosts_for(&c, "prometheus01");
        // Prometheus is on management: Caddy's management address, where its metrics listen.
        assert_eq!(addr(&prom, "caddy01").as_deref(), Some("10.50.0.10"));
        assert_eq!(addr(&prom, "grafana01").as_deref(), Some("10.50.0.11"));
        // Mosquitto is on production only, which no management service shares: first address.
        assert_eq!(addr(&prom, "mosquitto01").as_deref(), Some("10.40.0.17"));
        assert!(addr(&prom, "prometheus01").is_none(), "not itself");
        assert!(
            addr(&prom, "cloudflared01").is_none(),
            "disabled instances are left out"
        );
        let mqtt = hosts_for(&c, "mosquitto01");
        assert_eq!(addr(&mqtt, "caddy01").as_deref(), Some("10.40.0.10"));
        assert_eq!(prom[0].names, ["alertmanager01.incus", "alertmanager01"]);
    }
}
