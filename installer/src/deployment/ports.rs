//! Ports a deployment publishes on cluster members' addresses (proxy devices), which render
//! writes into profiles and scrape configs and the engine points Incus at.

/// The port Loki is published on, on its member's address.
pub const LOKI_PORT: u16 = 3100;

/// The metrics port of node-exporter, also where its per-member proxy listens.
pub const NODE_EXPORTER_PORT: u16 = 9100;
