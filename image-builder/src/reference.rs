//! Image references in Docker's syntax (`[host[:port]/]path[:tag][@sha256:...]`), normalised
//! the way `docker pull` and skopeo normalise them: Docker Hub short names get `docker.io` and,
//! for single-component names, `library/`; a reference without tag or digest means `:latest`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("image reference is empty: write e.g. docker.io/library/alpine:3.20")]
    Empty,
    #[error("image reference {input:?} has an invalid digest: {source}")]
    Digest { input: String, source: DigestError },
    #[error(
        "image reference {input:?}: repository path {path:?} is invalid: {reason} \
         (components are lowercase letters and digits, separated by '.', '_', '__' or '-', joined by '/')"
    )]
    Repository {
        input: String,
        path: String,
        reason: &'static str,
    },
    #[error(
        "image reference {input:?}: tag {tag:?} is invalid: tags are 1-128 characters of \
         letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    Tag { input: String, tag: String },
    #[error("image reference {input:?}: registry host {host:?} is invalid: {reason}")]
    Host {
        input: String,
        host: String,
        reason: &'static str,
    },
}

/// A fully qualified image reference. `tag` and `digest` may both be present
/// (`alpine:3.20@sha256:...`): the digest is what is pulled and verified, the tag is kept
/// for display and for naming the image in layouts.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((n, d)) => {
                let d = Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    input: input.to_owned(),
                    source,
                })?;
                (n, Some(d))
            }
            None => (input, None),
        };
        // The tag separator is the last ':' after the last '/', so that a registry port
        // ("host:5000/x") is not mistaken for a tag.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        let (registry, path) = split_registry(name);
        validate_host(input, registry)?;
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DOCKER_HUB
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        validate_repository(input, &repository)?;
        if let Some(t) = tag {
            validate_tag(input, t)?;
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same image pinned to `digest` (tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The tag if any, else the digest: what a registry's manifest endpoint is asked for.
    pub fn tag_or_digest(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// `repository:tag`, or `repository@digest` when a digest is pinned: what the registry
    /// is asked for, as shown in messages.
    pub fn requested(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{}@{d}", self.repository),
            (None, Some(t)) => format!("{}:{t}", self.repository),
            (None, None) => format!("{}:latest", self.repository),
        }
    }

    /// The reference oci-client understands. When a digest is pinned it is the only thing
    /// sent, so the registry cannot substitute another manifest for the tag.
    pub fn to_oci(&self) -> oci_client::Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            (None, t) => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".to_owned()),
            ),
        }
    }

    /// True when the registry is on this machine (127.0.0.0/8, ::1, localhost): the only
    /// registries, besides those the operator names as insecure, spoken to over plain HTTP.
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `host[:port]` without the port, brackets of IPv6 literals removed.
pub fn host_without_port(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

pub fn is_loopback_host(registry: &str) -> bool {
    let host = host_without_port(registry);
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Docker's rule: the first component is a registry host when it contains '.' or ':' or is
/// "localhost", and there is more than one component.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.starts_with('[') =>
        {
            (first, rest)
        }
        _ => (DOCKER_HUB, name),
    }
}

fn validate_host(input: &str, host: &str) -> Result<(), ReferenceError> {
    let err = |reason| ReferenceError::Host {
        input: input.to_owned(),
        host: host.to_owned(),
        reason,
    };
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or_else(|| err("unclosed '[' in IPv6 address"))?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(err("not a valid IPv6 address"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match host.split_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(name) = name {
        if name.is_empty() {
            return Err(err("empty host name"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(err("host names are letters, digits, '.' and '-'"));
        }
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(err("the port is not a number between 1 and 65535"));
        }
    }
    Ok(())
}

fn validate_repository(input: &str, path: &str) -> Result<(), ReferenceError> {
    let err = |reason| ReferenceError::Repository {
        input: input.to_owned(),
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(err("it is empty"));
    }
    if path.len() > 255 {
        return Err(err("it is longer than 255 characters"));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(err("it has an empty component ('//' or a trailing '/')"));
        }
        let bytes = component.as_bytes();
        let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !bytes
            .iter()
            .all(|&b| is_alnum(b) || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(err(
                "it contains uppercase letters or characters other than a-z 0-9 . _ -",
            ));
        }
        if !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
            return Err(err(
                "a component starts or ends with something other than a lowercase letter or digit",
            ));
        }
        if component.contains("..")
            || component.contains("___")
            || component.contains("._")
            || component.contains("_.")
        {
            return Err(err(
                "a component has a run of separators other than '__' or dashes",
            ));
        }
    }
    Ok(())
}

fn validate_tag(input: &str, tag: &str) -> Result<(), ReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Tag {
            input: input.to_owned(),
            tag: tag.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalises_docker_hub_short_names() {
        let r = ImageRef::parse("alpine").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        let r = ImageRef::parse("grafana/grafana:11.1.0").unwrap();
        assert_eq!(r.to_string(), "docker.io/grafana/grafana:11.1.0");
        let r = ImageRef::parse("index.docker.io/library/alpine:3.20").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:3.20");
    }

    #[test]
    fn keeps_registry_port_and_digest() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/x/y@{D}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "x/y");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().unwrap().to_string(), D);
        assert!(r.is_loopback_registry());
        let r = ImageRef::parse(&format!("ghcr.io/o/x:1.2@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert_eq!(r.to_string(), format!("ghcr.io/o/x:1.2@{D}"));
        let r = ImageRef::parse("localhost/x").unwrap();
        assert_eq!(r.registry, "localhost");
        let r = ImageRef::parse("[::1]:5000/x:t").unwrap();
        assert_eq!(r.registry, "[::1]:5000");
        assert!(r.is_loopback_registry());
        assert!(
            !ImageRef::parse("quay.io/a/b")
                .unwrap()
                .is_loopback_registry()
        );
    }

    #[test]
    fn precise_errors() {
        assert_eq!(ImageRef::parse(""), Err(ReferenceError::Empty));
        let e = ImageRef::parse("Alpine").unwrap_err();
        assert!(e.to_string().contains("uppercase"), "{e}");
        let e = ImageRef::parse("alpine:-x").unwrap_err();
        assert!(matches!(e, ReferenceError::Tag { .. }), "{e}");
        let e = ImageRef::parse("alpine@sha256:abc").unwrap_err();
        assert!(matches!(e, ReferenceError::Digest { .. }), "{e}");
        let e = ImageRef::parse("host:99999/x").unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        let e = ImageRef::parse("a//b").unwrap_err();
        assert!(e.to_string().contains("empty component"), "{e}");
    }
}
