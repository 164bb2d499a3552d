//! The install engine: desired state from the config, a plan against what Incus holds, and
//! the fixed, idempotent sequence that applies it.
//!
//! - [`install::Engine::plan`] runs preflight and computes the [`plan::Plan`] from GETs only.
//! - [`install::Engine::apply`] runs the steps (remotes, project, networks, volumes, profiles,
//!   images, instances, wiring, health), each idempotent; conflicts abort before any write.
//! - [`destroy`] removes what atlas owns, in reverse order.

pub mod adopt;
pub mod alerts;
pub mod backup;
pub mod certs;
pub mod cluster;
pub mod converge;
pub mod desired;
pub mod destroy;
pub mod error;
pub mod fetch;
pub mod health;
pub mod install;
pub mod instances;
pub mod lock;
pub mod netfile;
pub mod outputs;
pub mod plan;
pub mod preflight;
pub mod redact;
pub mod remotes;
pub mod resource;
pub mod rotate;
pub mod saved;
pub mod secrets;
pub mod state;
pub mod step_ca;
pub mod upgrade;
pub mod wiring;

pub use error::EngineError;
pub use install::{ApplyReport, Engine, Options, PlanReport, STEPS, SecretSource, StoredSecrets};

use crate::config::Config;
use crate::incus::Client;

/// Step 3 on its own: the Atlas project, created or brought to its desired body. Image
/// import uses it so that images can land in the project before the first install.
pub async fn ensure_project(client: &Client, config: &Config) -> Result<(), EngineError> {
    let root = client.in_project("default");
    let version = crate::VERSION;
    let want = desired::project_resource(config, version);
    let obs = state::observe_project(&root, config).await?;
    let p = plan::diff(std::slice::from_ref(&want), &obs, &[]);
    match p.actions.first().map(|a| &a.change) {
        Some(plan::Change::Create) => converge::create(&root, &root, &want).await,
        Some(plan::Change::Update) => converge::update(&root, &root, &want).await,
        Some(plan::Change::Conflict) => Err(EngineError::Conflicts(p.conflict_details())),
        _ => Ok(()),
    }
}
