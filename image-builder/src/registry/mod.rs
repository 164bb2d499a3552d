//! Registry access through oci-client: client construction (HTTP only for loopback and
//! explicitly insecure registries), credentials, error translation, mirror mapping.

mod pull;
mod push;

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use crate::auth::{AuthError, AuthSource};
use crate::cache::CacheError;
use crate::digest::Digest;
use crate::oci_layout::LayoutError;
use crate::reference::{ImageRef, is_loopback_host};

pub(crate) use pull::pull;
pub use pull::{image_manifest, resolve_digest};
pub use push::{PushOptions, push_image, push_manifest_and_blobs};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "registry {registry} answered 404 for manifest {name}: no such image or tag; check the name (skopeo inspect docker://{registry}/{name})"
    )]
    ManifestNotFound { registry: String, name: String },
    #[error(
        "registry {registry} answered 404 for blob {digest} of {repository}: the registry lost a blob its manifest references; re-push the image"
    )]
    BlobNotFound {
        registry: String,
        repository: String,
        digest: Digest,
    },
    #[error("registry {registry} refused {operation} of {repository} ({status}): {hint}")]
    Unauthorized {
        registry: String,
        repository: String,
        operation: &'static str,
        status: String,
        hint: &'static str,
    },
    #[error("cannot reach registry {registry} over {scheme} ({what}): {detail}{hint}")]
    Connect {
        registry: String,
        scheme: &'static str,
        what: String,
        detail: String,
        hint: &'static str,
    },
    #[error(
        "registry {registry} did not answer ({what}) within {seconds} s: it accepted the connection but sent nothing; check the registry (or the mirror in front of it) and run again"
    )]
    NoAnswer {
        registry: String,
        what: String,
        seconds: u64,
    },
    #[error("registry {registry} failed {what}: {detail}")]
    Protocol {
        registry: String,
        what: String,
        detail: String,
    },
    #[error(
        "{reference}: the registry served a manifest with digest {actual}, but {expected} was pinned; refusing it (the tag or registry content changed, or a mirror serves something else)"
    )]
    PinnedDigest {
        reference: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("cannot build an HTTP client for registry {registry}: {detail}")]
    Client { registry: String, detail: String },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{what}: cannot read {path}: {source}")]
    Io {
        what: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Plain HTTP is allowed for loopback registries and the ones the operator listed.
pub fn plain_http_allowed(registry: &str, insecure_registries: &[String]) -> bool {
    is_loopback_host(registry) || insecure_registries.iter().any(|r| r == registry)
}

/// A client for one registry, with the credentials that apply to it.
pub(crate) struct Session {
    pub client: oci_client::Client,
    pub auth: RegistryAuth,
    pub has_credentials: bool,
    pub registry: String,
    pub scheme: &'static str,
    /// How long a read may wait for the registry (the answer's head, then each chunk).
    pub read_timeout: Duration,
}

/// Default of [`crate::source::PullOptions::read_timeout`]: a registry that sends nothing for
/// this long counts as not answering. Resets with every chunk, so big layers are fine.
pub const READ_TIMEOUT: Duration = Duration::from_secs(120);

impl Session {
    pub fn new(
        reference: &ImageRef,
        insecure: &[String],
        auth: &AuthSource,
        read_timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let registry = reference.registry.clone();
        let plain = plain_http_allowed(&registry, insecure);
        let resolved = reference.to_oci().resolve_registry().to_owned();
        let config = ClientConfig {
            protocol: if plain {
                ClientProtocol::HttpsExcept(vec![resolved])
            } else {
                ClientProtocol::Https
            },
            // We choose the platform ourselves (variant aware) from the raw index.
            platform_resolver: None,
            // Monolithic PUT streams a blob from its file with a known Content-Length.
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(read_timeout),
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| RegistryError::Client {
            registry: registry.clone(),
            detail: e.to_string(),
        })?;
        let creds = auth.credentials_for(&registry)?;
        let has_credentials = creds.is_some();
        let auth = match creds {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        Ok(Self {
            client,
            auth,
            has_credentials,
            registry,
            scheme: if plain { "http" } else { "https" },
            read_timeout,
        })
    }

    /// Translates an oci-client error into one that says what failed, where, and what to do.
    pub fn error(
        &self,
        e: OciDistributionError,
        repository: &str,
        what: Target<'_>,
        operation: &'static str,
    ) -> RegistryError {
        let registry = self.registry.clone();
        let repository = repository.to_owned();
        let unauthorized = |status: &str| RegistryError::Unauthorized {
            registry: registry.clone(),
            repository: repository.clone(),
            operation,
            status: status.to_owned(),
            hint: if self.has_credentials {
                "the credentials from the auth file were rejected; log in again (skopeo login) or check the account's access"
            } else {
                "no credentials for this registry were found; log in with `skopeo login` (writes $REGISTRY_AUTH_FILE) or add auths.<host>.auth to ~/.docker/config.json"
            },
        };
        let not_found = || match &what {
            Target::Manifest(r) => RegistryError::ManifestNotFound {
                registry: registry.clone(),
                name: (*r).to_owned(),
            },
            Target::Blob(d) => RegistryError::BlobNotFound {
                registry: registry.clone(),
                repository: repository.clone(),
                digest: (*d).clone(),
            },
        };
        let what_s = what.to_string();
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => unauthorized("401"),
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    not_found()
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    unauthorized("denied")
                } else {
                    RegistryError::Protocol {
                        registry,
                        what: what_s,
                        detail: envelope.to_string(),
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, .. } => not_found(),
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => unauthorized("401/403"),
            OciDistributionError::ServerError { code, message, .. } => RegistryError::Protocol {
                registry,
                what: what_s,
                detail: format!("HTTP {code}: {}", message.trim()),
            },
            // Connected and asked, nothing came back: not a connection problem.
            OciDistributionError::RequestError(err) if err.is_timeout() && !err.is_connect() => {
                RegistryError::NoAnswer {
                    registry,
                    what: what_s,
                    seconds: self.read_timeout.as_secs(),
                }
            }
            OciDistributionError::RequestError(err) if err.is_connect() || err.is_timeout() => {
                RegistryError::Connect {
                    registry,
                    scheme: self.scheme,
                    what: what_s,
                    detail: error_chain(&err),
                    hint: if self.scheme == "https" {
                        "; if this registry only speaks plain HTTP, list it as an insecure registry"
                    } else {
                        "; is the registry running?"
                    },
                }
            }
            other => RegistryError::Protocol {
                registry,
                what: what_s,
                detail: error_chain(&other),
            },
        }
    }
}

/// What a request was about, for error messages.
pub(crate) enum Target<'a> {
    Manifest(&'a str),
    Blob(&'a Digest),
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Manifest(r) => write!(f, "manifest {r}"),
            Target::Blob(d) => write!(f, "blob {d}"),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Upstream registries a mirror stands in for.
pub const MIRRORED_REGISTRIES: &[&str] = &["docker.io", "ghcr.io", "quay.io"];

/// Maps an upstream reference onto a registry mirror `host[:port]`, the way pull-through
/// mirrors (and `skopeo sync` into a flat registry) lay repositories out: the upstream
/// registry host is dropped and the repository path kept:
///
/// - `docker.io/library/alpine:3.20` → `MIRROR/library/alpine:3.20`
/// - `docker.io/grafana/grafana:11`  → `MIRROR/grafana/grafana:11`
/// - `ghcr.io/owner/x@sha256:…`      → `MIRROR/owner/x@sha256:…`
/// - `quay.io/prometheus/prometheus` → `MIRROR/prometheus/prometheus`
///
/// Tags and digests are kept, so a pinned digest is still what gets verified: a mirror can
/// serve an image only if it is byte-identical. References on other registries are returned
/// unchanged. The three upstreams share one namespace on the mirror; images whose paths
/// collide across upstreams (same `owner/name` on two of them) cannot both be mirrored.
pub fn map_to_mirror(reference: &ImageRef, mirror: &str) -> ImageRef {
    if MIRRORED_REGISTRIES.contains(&reference.registry.as_str()) {
        ImageRef {
            registry: mirror.to_owned(),
            ..reference.clone()
        }
    } else {
        reference.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_mapping_keeps_path_and_digest() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let m =
            |s: &str| map_to_mirror(&ImageRef::parse(s).unwrap(), "mirror.corp:5000").to_string();
        assert_eq!(m("alpine:3.20"), "mirror.corp:5000/library/alpine:3.20");
        assert_eq!(
            m(&format!("ghcr.io/o/x@{d}")),
            format!("mirror.corp:5000/o/x@{d}")
        );
        assert_eq!(
            m("quay.io/prometheus/prometheus:v2"),
            "mirror.corp:5000/prometheus/prometheus:v2"
        );
        assert_eq!(m("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000/a/b:1");
    }

    #[test]
    fn sessions_use_https_except_for_loopback_and_listed() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let scheme = |r: &str, insecure: &[String]| {
            let r = ImageRef::parse(r).unwrap();
            Session::new(&r, insecure, &AuthSource::Anonymous, READ_TIMEOUT)
                .unwrap()
                .scheme
        };
        assert_eq!(scheme("127.0.0.1:5000/a:1", &[]), "http");
        assert_eq!(scheme("localhost:5000/a:1", &[]), "http");
        assert_eq!(scheme("alpine:3", &[]), "https");
        assert_eq!(scheme("registry.corp:5000/a:1", &[]), "https");
        assert_eq!(
            scheme("registry.corp:5000/a:1", &["registry.corp:5000".to_owned()]),
            "http"
        );
    }

    #[test]
    fn plain_http_only_for_loopback_and_listed() {
        assert!(plain_http_allowed("127.0.0.1:5000", &[]));
        assert!(plain_http_allowed("127.3.4.5", &[]));
        assert!(plain_http_allowed("localhost:5000", &[]));
        assert!(plain_http_allowed("[::1]:5000", &[]));
        assert!(!plain_http_allowed("10.0.0.1:5000", &[]));
        assert!(plain_http_allowed(
            "10.0.0.1:5000",
            &["10.0.0.1:5000".to_owned()]
        ));
        assert!(!plain_http_allowed("docker.io", &["quay.io".to_owned()]));
    }
}
