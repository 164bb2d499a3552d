//! The install engine: desired state from the config, a plan against what Incus holds, and
//! the fixed, idempotent sequence that applies it.

pub mod plan;
pub mod resource;
pub mod desired;
pub mod netfile;
pub mod health;
pub mod secrets;
pub mod wiring;
