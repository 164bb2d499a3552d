//! Hermetic tests on the host's shared incusd: each test gets names, IPv4 ranges and an
//! external bridge of its own, chosen by looking at what the host uses (not by hope), so the
//! suite passes beside the README demo or any other Atlas install; and [`HostState`] proves
//! that a test left the host's Incus as it found it.
//!
//! The free ranges and the cleanup guards themselves (bridges, pools, server settings) are
//! atlas-test-support's, shared with the image-builder's tests; what is here knows Atlas (its
//! network roles and the names of one install).

pub use atlas_test_support::incus::{
    Bridge, HostState, ServerGuard, TinyPool, Tmpfs, delete_network,
};
pub use atlas_test_support::net::free_subnets;
use ipnet::Ipv4Net;

/// A managed bridge of the test's own (the external network its stack uses) on a free /24,
/// removed on drop, on panic too: `t<tag><pid>` (at most 15 characters, the kernel's limit).
pub fn external_bridge(tag: &str) -> Bridge {
    let name: String = format!("t{tag}{}", std::process::id())
        .chars()
        .take(15)
        .collect();
    Bridge::create(&name, free_subnets(1)[0])
}

/// The five Atlas network roles, with the short tag each bridge name ends in.
pub const ROLES: [(&str, &str); 5] = [
    ("development", "dev"),
    ("testing", "tst"),
    ("staging", "stg"),
    ("production", "prd"),
    ("management", "mgt"),
];

/// One test's Atlas install on the shared daemon: its project, its five bridges on free /24s
/// and an external bridge of its own (never `incusbr0`, which the README demo's Caddy uses:
/// Incus wants instance names unique per network).
pub struct AtlasNames {
    pub project: String,
    /// `(role, bridge name, gateway/prefix)`, in [`ROLES`] order.
    pub networks: Vec<(&'static str, String, Ipv4Net)>,
    pub external: Bridge,
}

impl AtlasNames {
    /// `tag`: a few letters and digits that keep this test apart from the others of this
    /// process (project `t-<tag>-<pid>`, bridges `<tag><pid % 10000><role>`).
    pub fn new(tag: &str) -> AtlasNames {
        let pid = std::process::id();
        let cidrs = free_subnets(ROLES.len());
        AtlasNames {
            project: format!("t-{tag}-{pid}"),
            networks: ROLES
                .iter()
                .zip(cidrs)
                .map(|((role, short), cidr)| (*role, format!("{tag}{}{short}", pid % 10000), cidr))
                .collect(),
            external: external_bridge(&format!("{tag}x")),
        }
    }

    pub fn bridge_names(&self) -> Vec<String> {
        self.networks.iter().map(|(_, n, _)| n.clone()).collect()
    }

    /// `[incus]` and `[networks.*]` of atlas.toml for these names, on pool `default`.
    pub fn toml(&self) -> String {
        self.incus_toml() + &self.networks_toml()
    }

    /// The `[incus]` table alone (more of its keys may follow).
    pub fn incus_toml(&self) -> String {
        format!(
            "[incus]\nproject = \"{}\"\nstorage_pool = \"default\"\nexternal_network = \"{}\"\n",
            self.project, self.external.name
        )
    }

    /// The `[networks.<role>]` tables.
    pub fn networks_toml(&self) -> String {
        self.networks
            .iter()
            .map(|(role, name, cidr)| {
                format!("\n[networks.{role}]\nname = \"{name}\"\nipv4 = \"{cidr}\"\n")
            })
            .collect()
    }
}
