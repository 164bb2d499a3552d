//! Errors of the Incus client. Each says which request failed and, where we know it, how to fix it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IncusError {
    /// No daemon answered on the socket (or the remote URL).
    #[error("cannot reach the Incus daemon at {endpoint}: {reason}\n{hint}")]
    Unreachable {
        endpoint: String,
        reason: String,
        /// What to check: the paths tried, whether incusd runs, permissions.
        hint: String,
    },

    /// None of the socket candidates exists.
    #[error(
        "no Incus socket found; tried {}.\nIs incusd running (`incus admin waitready`)? \
         Set `incus.socket` in atlas.toml or INCUS_SOCKET to the daemon's unix.socket.",
        display_paths(tried)
    )]
    NoSocket { tried: Vec<PathBuf> },

    /// The object does not exist (HTTP 404).
    #[error("{method} {path}: not found: {message}")]
    NotFound {
        method: String,
        path: String,
        message: String,
    },

    /// Creating something that already exists. Incus answers this in several shapes
    /// (409, 500 "already exists", 500 UNIQUE constraint, a failed operation); all land here.
    #[error("{method} {path}: already exists: {message}")]
    AlreadyExists {
        method: String,
        path: String,
        message: String,
    },

    /// `If-Match` did not match (HTTP 412): someone changed the object since we read it.
    #[error(
        "{method} {path}: the object changed since it was read (ETag mismatch, HTTP 412); \
         read it again and retry"
    )]
    PreconditionFailed {
        method: String,
        path: String,
        message: String,
    },

    /// Any other error answer of the API.
    #[error("{method} {path}: Incus answered HTTP {status}: {message}")]
    Api {
        status: u16,
        /// `error_code` of the body (usually equal to the HTTP status).
        code: u16,
        message: String,
        method: String,
        path: String,
    },

    /// A background operation ended in failure or was cancelled.
    #[error(
        "{method} {path}: operation {id} ({description}) {}: {message}",
        if *cancelled { "was cancelled" } else { "failed" }
    )]
    Operation {
        id: String,
        description: String,
        message: String,
        method: String,
        path: String,
        cancelled: bool,
    },

    /// An operation did not finish in time.
    #[error("{method} {path}: operation {id} still running after {seconds}s")]
    Timeout {
        id: String,
        seconds: u64,
        method: String,
        path: String,
    },

    /// The server cannot do this (missing extension, missing host tool, pool driver).
    #[error("{what} is not supported by this Incus server: {reason}")]
    Unsupported { what: String, reason: String },

    /// TLS setup for a remote: certificate/key files, fingerprint format.
    #[error("TLS setup for the remote Incus: {0}")]
    Tls(String),

    /// The answer was not what the API documents.
    #[error("{method} {path}: cannot decode the answer: {message}")]
    Decode {
        method: String,
        path: String,
        message: String,
    },

    /// Transport failure other than "nobody listens" (connection reset, body stream error).
    #[error("{method} {path}: request to {endpoint} failed: {message}")]
    Transport {
        endpoint: String,
        method: String,
        path: String,
        message: String,
    },

    /// The daemon took the request and gave no answer in time (stuck, or overloaded).
    #[error(
        "Incus at {endpoint} did not answer {method} {path} within {seconds} s: the daemon accepted the request but is stuck or overloaded. Check it (`incus info`, its log), then run again; incus.request_timeout in atlas.toml raises the limit"
    )]
    NoAnswer {
        endpoint: String,
        method: String,
        path: String,
        seconds: u64,
    },

    /// A value we were asked to send cannot be expressed (e.g. a bad header value).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl IncusError {
    /// HTTP status of an API answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            IncusError::NotFound { .. } => Some(404),
            IncusError::PreconditionFailed { .. } => Some(412),
            IncusError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, IncusError::NotFound { .. })
    }

    pub fn is_already_exists(&self) -> bool {
        matches!(self, IncusError::AlreadyExists { .. })
    }

    /// The daemon took a request and did not answer in time.
    pub fn is_no_answer(&self) -> bool {
        matches!(self, IncusError::NoAnswer { .. })
    }

    /// Incus refused to start an operation on an instance because another one (a stop, a
    /// restart by autorestart, a start) still runs on it: "Instance is busy running a "stop"
    /// operation". Nothing was changed; the same request succeeds once that one is done.
    pub fn is_instance_busy(&self) -> bool {
        let message = match self {
            IncusError::Api { message, .. } | IncusError::Operation { message, .. } => message,
            _ => return false,
        };
        message.contains("Instance is busy running a")
    }

    /// Incus serves an instance's files through a file server of its own (`forkfile`). One
    /// that broke under a request (a client that vanished mid-transfer, the instance starting
    /// or stopping under it, as `boot.autorestart` does to a service that exits) fails it
    /// with a 500; nothing was written, and the same request succeeds when sent again.
    pub fn is_file_server_hiccup(&self) -> bool {
        let IncusError::Api {
            status: 500,
            message,
            path,
            ..
        } = self
        else {
            return false;
        };
        message.contains("forkfile")
            || (path.contains("/files")
                && (message.contains("connection reset") || message.contains("EOF")))
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Turns "not found" into `None`, so that the engine can write `client.profile(n).await.optional()?`.
pub trait OptionalExt<T> {
    fn optional(self) -> Result<Option<T>, IncusError>;
}

impl<T> OptionalExt<T> for Result<T, IncusError> {
    fn optional(self) -> Result<Option<T>, IncusError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Maps an error answer to the typed error. `message` is Incus' `error` text.
pub(crate) fn classify(
    status: u16,
    code: u16,
    message: String,
    method: &str,
    path: &str,
) -> IncusError {
    let (method, path) = (method.to_string(), path.to_string());
    let effective = if code != 0 { code } else { status };
    if effective == 404 && !is_scope_missing(&message) {
        return IncusError::NotFound {
            method,
            path,
            message,
        };
    }
    if effective == 412 {
        return IncusError::PreconditionFailed {
            method,
            path,
            message,
        };
    }
    if effective == 409 || (method == "POST" && looks_like_duplicate(&message)) {
        return IncusError::AlreadyExists {
            method,
            path,
            message,
        };
    }
    IncusError::Api {
        status,
        code,
        message,
        method,
        path,
    }
}

/// A 404 about the project or the `?target=` member, not about the object: "not found" there
/// must not read as "absent, create it".
fn is_scope_missing(message: &str) -> bool {
    message.contains("Failed loading project") || message.contains("Cluster member not found")
}

/// Profiles answer a duplicate with 500 "already exists", projects with a database UNIQUE
/// constraint, instances with a failed operation "... already exists".
pub(crate) fn looks_like_duplicate(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("already exists") || m.contains("unique constraint failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_maps_the_duplicate_shapes() {
        let profile = classify(
            500,
            500,
            "Error inserting \"x\" into database: The profile already exists".into(),
            "POST",
            "/1.0/profiles",
        );
        assert!(profile.is_already_exists(), "{profile}");
        let project = classify(
            500,
            500,
            "Failed creating project: UNIQUE constraint failed: projects.name".into(),
            "POST",
            "/1.0/projects",
        );
        assert!(project.is_already_exists(), "{project}");
        let volume = classify(
            409,
            409,
            "Volume by that name already exists".into(),
            "POST",
            "/1.0/storage-pools/p/volumes/custom",
        );
        assert!(volume.is_already_exists());
        // A 500 mentioning "already exists" on an update is not a duplicate create.
        let put = classify(500, 500, "already exists".into(), "PUT", "/1.0/profiles/x");
        assert!(matches!(put, IncusError::Api { status: 500, .. }));
    }

    #[test]
    fn classify_maps_404_and_412() {
        assert!(classify(404, 404, "Not Found".into(), "GET", "/1.0/x").is_not_found());
        let e = classify(
            412,
            412,
            "ETag doesn't match".into(),
            "PUT",
            "/1.0/networks/x",
        );
        assert!(matches!(e, IncusError::PreconditionFailed { .. }));
        assert!(e.to_string().contains("read it again"), "{e}");
        assert_eq!(e.status(), Some(412));
    }

    #[test]
    fn missing_project_or_member_is_not_an_absent_object() {
        let msg = "Failed loading project \"t-x\": Project not found";
        let e = classify(404, 404, msg.into(), "GET", "/1.0/profiles/p?project=t-x");
        assert!(!e.is_not_found() && e.status() == Some(404), "{e}");
        let e = classify(
            404,
            404,
            "Cluster member not found".into(),
            "GET",
            "/1.0?target=m9",
        );
        assert!(!e.is_not_found(), "{e}");
        let e = classify(
            404,
            404,
            "Project not found".into(),
            "GET",
            "/1.0/projects/t-x",
        );
        assert!(e.is_not_found(), "the project itself can be absent");
    }

    #[test]
    fn api_error_names_the_request() {
        let e = classify(
            400,
            400,
            "Invalid config".into(),
            "PUT",
            "/1.0/profiles/p?project=a",
        );
        let s = e.to_string();
        assert!(
            s.contains("PUT /1.0/profiles/p?project=a")
                && s.contains("HTTP 400")
                && s.contains("Invalid config"),
            "{s}"
        );
    }

    #[test]
    fn optional_turns_not_found_into_none() {
        let r: Result<u8, IncusError> = Err(classify(404, 404, "nope".into(), "GET", "/"));
        assert!(r.optional().unwrap().is_none());
        let r: Result<u8, IncusError> = Err(classify(500, 500, "boom".into(), "GET", "/"));
        assert!(r.optional().is_err());
    }
}
