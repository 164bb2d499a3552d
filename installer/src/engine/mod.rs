//! The install engine: desired state from the config, a plan against what Incus holds, and
//! the fixed, idempotent sequence that applies it. Data flows one way:
//! `config → deployment → render → plan → apply → Incus`.
//!
//! # The install flow
//!
//! `atlas-install install` (and `plan`, which stops after step 7):
//!
//! 1. **Config.** `config::load` reads atlas.toml, `ATLAS_*` variables and flags; the
//!    [`crate::config::Config`] stays exactly what the user wrote.
//! 2. **Deployment.** [`crate::deployment::Deployment`] adds what Incus says (cluster
//!    members, addresses, placement), read once.
//! 3. **Preflight** ([`preflight`]): server version, host size, storage pool, ports, images
//!    room. A problem stops here, before any write.
//! 4. **Observe** ([`state::observe`]): the project, its networks, profiles, volumes and
//!    instances, with GETs only.
//! 5. **Secrets** ([`secrets`]): read from the project's state once it exists (only missing
//!    ones are generated).
//! 6. **Desired state** ([`desired`], [`state::build`]): render with the secrets, resolve
//!    each service's image alias, build one typed [`resource::Resource`] per object with
//!    its content hash.
//! 7. **Plan** ([`plan::diff`], [`install::Engine::plan`]): per object create, update,
//!    unchanged, delete, keep or conflict; plus instances to start, server wiring,
//!    certificates and the install record; its [`install::PlanReport::fingerprint`]. `plan
//!    --out` saves it ([`saved`]).
//! 8. **Confirm**, or with `install --plan FILE` check that config and Incus are still what
//!    the saved plan was made from (refused, nothing written, otherwise).
//!
//! [`install::Engine::apply`] then carries out that plan as it is (nothing is compared
//! with Incus again), one named step after another, each idempotent, so a run killed
//! anywhere converges when run again:
//!
//! 1. **checks**: conflicts refuse before the first write; operations an interrupted run
//!    left running are waited for; an upgrade reads the installed record and rotates
//!    secrets when asked.
//! 2. **remotes**: the Incus client's remotes for the user.
//! 3. **project**: the Atlas project, the state bucket, the placement member.
//! 4. **networks**: the five bridges.
//! 5. **volumes**: data volumes, before the profiles that mount them (data an instance
//!    already holds at the mount path is moved onto a new volume, [`adopt`]).
//! 6. **profiles**: one per service.
//! 7. **images**: each service's image built or taken and its alias pointed at it; the
//!    instance bodies are resolved with the images and secrets now known.
//! 8. **instances**: each planned instance created stopped, its files pushed, started
//!    ([`instances`]); an upgrade replaces them one at a time, guarded ([`upgrade`]).
//! 9. **removals**: what the config no longer names, instances first; data volumes kept.
//! 10. **certificates**: step-ca's settings, renewals ([`certs`]).
//! 11. **wiring**: the server's logging to Loki and metrics certificate ([`wiring`]).
//! 12. **health**: every service's health gate ([`health`]).
//! 13. **record**: the install record, for upgrade and rollback.
//!
//! [`destroy`] removes what atlas owns, in reverse order.

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

#[cfg(test)]
mod tests;
