//! atlas-install as a library: everything the `atlas-install` binary does, without a terminal.
//!
//! - [`config`]: `atlas.toml`, defaults, validation: exactly what the user wrote.
//! - [`deployment`]: the config with the facts read from Incus (cluster members, placement).
//! - [`render`]: every service's configuration files from the deployment.
//! - [`status`]: what is installed and how it is doing, read from Incus.
//!
//! Progress is reported through [`progress::Progress`]; the binary draws it.

pub mod bundle;
pub mod clock;
pub mod config;
pub mod deployment;
pub mod engine;
pub mod hmac;
pub mod imageops;
pub mod incus;
pub mod render;
pub mod signing;
pub mod state;
pub mod status;
pub mod supply;

pub use atlas_image::progress;

/// Version and the git commit the binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("ATLAS_GIT_COMMIT");
