//! atlas-install as a library: everything the `atlas-install` binary does, without a terminal.
//!
//! - [`config`]: `atlas.toml`, defaults, validation.
//! - [`render`]: every service's configuration files from the config.
//!
//! Progress is reported through [`progress::Progress`]; the binary draws it.

pub mod bundle;
pub mod config;
pub mod engine;
pub mod imageops;
pub mod incus;
pub mod render;
pub mod signing;
pub mod supply;

pub use atlas_image::progress;

/// Version and the git commit the binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("ATLAS_GIT_COMMIT");
