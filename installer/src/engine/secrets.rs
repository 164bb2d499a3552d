//! Generated secrets of a deployment: made once, stored in Incus (the Atlas project's
//! `user.atlas.secret.*` config keys), reused on every re-run and upgrade, never printed.
//!
//! CONTRACT (the install sequence relies on it):
//! - `load_or_generate(client, config)` returns the stored [`Secrets`] and generates and
//!   stores what is missing (a new Mosquitto user, a first install). It is the only writer.
//!   Must be called after the project exists. Zero writes when everything is stored.
//! - `Secrets::credentials()` gives what `render::render` needs.
//! - The metrics client certificate (ECDSA P-384, rcgen, 10 years) and its key live here too.

use crate::incus::{Client, IncusError};
use crate::render::Credentials;

#[derive(Clone)]
pub struct Secrets {
    pub credentials: Credentials,
    /// PEM of the metrics client certificate Incus trusts as type `metrics`.
    pub metrics_cert_pem: String,
    /// PEM of its private key (pushed 0600 into the Prometheus container).
    pub metrics_key_pem: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").field("credentials", &self.credentials).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Incus(#[from] IncusError),
    #[error("secret store: {0}")]
    Invalid(String),
}

/// Placeholder until the secret store lands: refuses rather than inventing secrets that would
/// not survive a re-run.
pub async fn load_or_generate(_client: &Client, _config: &crate::config::Config) -> Result<Secrets, SecretsError> {
    Err(SecretsError::Invalid("the secret store is not implemented in this build".into()))
}
