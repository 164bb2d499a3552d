//! Errors of the install sequence. Each names the object or the check that failed and says
//! how to fix it; none carries a secret value.

use crate::incus::IncusError;

use super::desired::DesiredError;
use super::health::HealthError;
use super::netfile::NetfileError;
use super::secrets::SecretsError;
use super::wiring::WiringError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Incus(Box<IncusError>),
    /// A host or server check failed; nothing was changed.
    #[error("preflight failed, nothing was changed:\n{}", .0.join("\n"))]
    Preflight(Vec<String>),
    /// Objects with our names that this install does not own (each line says whose, and what
    /// to do); nothing was changed.
    #[error(
        "these objects exist but are not this install's, nothing was changed:\n{}",
        .0.iter().map(|s| format!("  {s}")).collect::<Vec<_>>().join("\n")
    )]
    Conflicts(Vec<String>),
    #[error(
        "instance {instance} (service {service}) needs image alias `{alias}` in Incus project {project}, which does not exist; import the image under that alias (atlas-install image import ... --alias {alias}) or map the service to another alias with images.aliases.{service} in atlas.toml"
    )]
    MissingImage {
        instance: String,
        service: String,
        alias: String,
        project: String,
    },
    #[error("{0}")]
    Render(Box<crate::render::RenderError>),
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error(transparent)]
    Netfile(#[from] NetfileError),
    #[error("secrets: {0}")]
    Secrets(Box<SecretsError>),
    #[error("server wiring: {0}")]
    Wiring(Box<WiringError>),
    #[error(transparent)]
    State(Box<crate::state::StateError>),
    #[error(transparent)]
    Health(Box<HealthError>),
    /// A step could not converge an object; says which.
    #[error("{object}: {message}")]
    Object { object: String, message: String },
    /// Incus refused or failed a call on an object; the client's error stays typed (a
    /// stale ETag is [`IncusError::PreconditionFailed`], a vanished object `NotFound`).
    #[error("{object}: {source}")]
    IncusAt {
        object: String,
        source: Box<IncusError>,
    },
    /// An instance did not start. Incus' words ("starting proxy device") seldom say that the
    /// service exited at once, so its last console lines (cut of secrets) come with them.
    #[error("instance {instance} did not start: {source}\nlast log lines:\n{log_tail}")]
    NotStarted {
        instance: String,
        source: Box<IncusError>,
        log_tail: String,
    },
    /// An upgrade stopped at a service that failed; says what became of that service.
    #[error(
        "upgrade stopped at {instance}: {cause}\n{state}\nServices replaced before it keep the new version, the others the old one; the install record still names the old install. Fix the cause and run `atlas-install upgrade` again: it goes on from here."
    )]
    Upgrade {
        instance: String,
        cause: String,
        state: String,
    },
    /// Test-only failure point (debug builds, ATLAS_TEST_FAIL_AT).
    #[error("stopped at failure point `{0}` (ATLAS_TEST_FAIL_AT)")]
    FailPoint(String),
}

impl EngineError {
    pub(crate) fn object(
        object: impl std::fmt::Display,
        message: impl std::fmt::Display,
    ) -> EngineError {
        EngineError::Object {
            object: object.to_string(),
            message: message.to_string(),
        }
    }
}

impl EngineError {
    /// Incus' error `source` on `object`, kept typed.
    pub(crate) fn incus_at(object: impl std::fmt::Display, source: IncusError) -> EngineError {
        EngineError::IncusAt {
            object: object.to_string(),
            source: Box::new(source),
        }
    }
}

/// The errors of the layers below are large; boxed, an `EngineError` stays small to return.
macro_rules! boxed_from {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for EngineError {
            fn from(e: $t) -> Self {
                EngineError::$v(Box::new(e))
            }
        })*
    };
}

boxed_from!(
    IncusError => Incus,
    crate::render::RenderError => Render,
    SecretsError => Secrets,
    WiringError => Wiring,
    HealthError => Health,
    crate::state::StateError => State,
);
