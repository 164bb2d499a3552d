//! Server-level wiring (step 9): Incus logging to Loki with the key scheme the server
//! supports, the metrics client certificate trusted as type `metrics`, and
//! `core.https_address` on the management gateway when unset.
//!
//! CONTRACT: `apply(client, config, secrets, progress)` is idempotent (zero writes when
//! converged), changes only keys atlas owns or that are unset, and reports a key set to
//! something else by the operator as an error saying what to do. `plan(...)` returns what
//! `apply` would change without writing. `remove(...)` undoes what atlas set (for destroy).

use crate::config::Config;
use crate::incus::{Client, IncusError};
use crate::progress::Progress;

use super::secrets::Secrets;

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Incus(#[from] IncusError),
    #[error("{0}")]
    Refused(String),
}

/// One server-level change, for plans (never holds secret values).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WiringChange {
    pub what: String,
    pub detail: String,
}

/// Placeholder until server wiring lands.
pub async fn plan(_client: &Client, _config: &Config, _secrets: &Secrets) -> Result<Vec<WiringChange>, WiringError> {
    Ok(Vec::new())
}

/// Placeholder until server wiring lands: does nothing and says so.
pub async fn apply(_client: &Client, _config: &Config, _secrets: &Secrets, progress: &dyn Progress) -> Result<(), WiringError> {
    progress.info("server wiring (Loki logging, metrics certificate): not in this build yet");
    Ok(())
}

/// Placeholder until server wiring lands.
pub async fn remove(_client: &Client, _config: &Config) -> Result<(), WiringError> {
    Ok(())
}
