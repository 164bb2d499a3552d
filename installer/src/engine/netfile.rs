//! `/etc/atlas/network.json` for each instance: the static addresses our PID 1 configures
//! (minimal images have no DHCP client), the resolver, and `/etc/hosts` entries for the
//! `<instance>.incus` names the rendered configs use.

use std::net::{IpAddr, Ipv4Addr};

use atlas_image::init::{HostEntry, InterfaceSpec, Ipv4Cidr, Ipv6Cidr, NetworkSpec, SpecError};

use crate::config::NetworkRole;
use crate::deployment::Deployment;

#[derive(Debug, thiserror::Error)]
pub enum NetfileError {
    #[error(
        "{instance}: NIC eth{index} on the {network} network has no IPv4 address; set one in atlas.toml"
    )]
    NoAddress {
        instance: String,
        index: usize,
        network: String,
    },
    #[error("{0}: no such instance in the deployment (internal error)")]
    Unknown(String),
    #[error("{instance}: the external network needs its address resolved first (internal error)")]
    UnresolvedExternal { instance: String },
    #[error("{instance}: network file refused: {source}")]
    Spec {
        instance: String,
        #[source]
        source: SpecError,
    },
}

/// The external bridge as found on the host (its gateway and prefix), for Caddy's third NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalNet {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// The address chosen for the instance on it.
    pub address: Ipv4Addr,
}

/// Builds the network file of `instance`. The default route and resolver go through the
/// external network when the instance has one (Caddy needs the outside for ACME), else through
/// its first NIC; every Atlas bridge runs dnsmasq on its gateway.
pub fn network_spec(
    d: &Deployment,
    instance: &str,
    external: Option<ExternalNet>,
) -> Result<NetworkSpec, NetfileError> {
    let config = &d.config;
    let Some(inst) = d.instance(instance) else {
        return Err(NetfileError::Unknown(instance.to_string()));
    };
    let route_via = inst
        .nics
        .iter()
        .position(|n| n.network == NetworkRole::External)
        .unwrap_or(0);
    let mut spec = NetworkSpec::default();
    for (index, nic) in inst.nics.iter().enumerate() {
        let mut iface = InterfaceSpec::named(&format!("eth{index}"));
        let (addr, gateway, prefix) = match config.networks.get(nic.network) {
            Some(net) => {
                let addr = nic.ipv4.ok_or_else(|| NetfileError::NoAddress {
                    instance: instance.to_string(),
                    index,
                    network: nic.network.as_str().to_string(),
                })?;
                if let (Some(v6), Some(net6)) = (nic.ipv6, net.ipv6) {
                    iface.ipv6 = Some(Ipv6Cidr {
                        addr: v6,
                        prefix: net6.prefix_len(),
                    });
                    if index == route_via {
                        iface.gateway6 = Some(net6.addr());
                    }
                }
                (addr, net.gateway(), net.ipv4.prefix_len())
            }
            None => {
                let ext = external.ok_or_else(|| NetfileError::UnresolvedExternal {
                    instance: instance.to_string(),
                })?;
                (ext.address, ext.gateway, ext.prefix)
            }
        };
        iface.ipv4 = Some(Ipv4Cidr { addr, prefix });
        if index == route_via {
            iface.gateway4 = Some(gateway);
            spec.dns.push(IpAddr::V4(gateway));
        }
        spec.interfaces.push(iface);
    }
    spec.search.push("incus".to_string());
    spec.hosts = crate::render::hosts_for(d, instance)
        .into_iter()
        .map(|h| HostEntry {
            ip: h.address,
            names: h.names,
        })
        .collect();
    spec.validate().map_err(|source| NetfileError::Spec {
        instance: instance.to_string(),
        source,
    })?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn prometheus_gets_its_fixed_address_gateway_and_hosts() {
        let cfg = Deployment::standalone(&Config::builtin());
        let spec = network_spec(&cfg, "prometheus01", None).unwrap();
        assert_eq!(spec.interfaces.len(), 1);
        let eth0 = &spec.interfaces[0];
        assert_eq!(eth0.ipv4.unwrap().to_string(), "10.50.0.12/24");
        assert_eq!(eth0.gateway4, Some(Ipv4Addr::new(10, 50, 0, 1)));
        assert_eq!(spec.dns, vec![IpAddr::V4(Ipv4Addr::new(10, 50, 0, 1))]);
        let names: Vec<&str> = spec
            .hosts
            .iter()
            .flat_map(|h| h.names.iter().map(String::as_str))
            .collect();
        assert!(
            names.contains(&"grafana01.incus") && names.contains(&"loki01.incus"),
            "{names:?}"
        );
        assert!(
            !names.contains(&"prometheus01.incus"),
            "an instance does not list itself"
        );
        assert!(spec.to_json().is_ok());
    }

    #[test]
    fn caddy_routes_through_the_external_network() {
        let cfg = Deployment::standalone(&Config::builtin());
        assert!(matches!(
            network_spec(&cfg, "caddy01", None),
            Err(NetfileError::UnresolvedExternal { .. })
        ));
        let ext = ExternalNet {
            gateway: Ipv4Addr::new(10, 199, 0, 1),
            prefix: 24,
            address: Ipv4Addr::new(10, 199, 0, 50),
        };
        let spec = network_spec(&cfg, "caddy01", Some(ext)).unwrap();
        assert_eq!(spec.interfaces.len(), 3);
        assert_eq!(spec.interfaces[0].gateway4, None);
        assert_eq!(spec.interfaces[1].gateway4, None);
        assert_eq!(
            spec.interfaces[2].ipv4.unwrap().to_string(),
            "10.199.0.50/24"
        );
        assert_eq!(spec.interfaces[2].gateway4, Some(ext.gateway));
    }
}
