//! The declarative configuration (`atlas.toml`): model, embedded defaults, loading with
//! precedence (flags > `ATLAS_*` env > file > defaults) and validation.

mod defaults;
mod model;

pub use defaults::{default_instance, KindDefaults, DEFAULT_GRAFANA_DOMAIN, SNAPSHOT_PATTERN};
pub use model::*;
