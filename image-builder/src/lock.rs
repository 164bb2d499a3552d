//! `images.lock`: the digest of every upstream image the recipes build on, keyed by the
//! normalised reference with its tag. The lock is what makes a build reproducible and an
//! offline install verifiable: a tag is only ever pulled as `tag@digest`.
//!
//! ```toml
//! version = 1
//! [images]
//! "docker.io/prom/prometheus:v3.5.0" = "sha256:…"
//! ```
//!
//! Digests get into the lock only from [`lock_references`], which computes them from the
//! manifest bytes a registry served (the index digest for multi-platform images).
//!
//! Files the recipes download (`[[download]]`) are pinned the same way, by the sha256 of the
//! bytes served at each expanded URL, in a `[files]` table:
//!
//! ```toml
//! [files]
//! "https://example.org/download?arch=amd64" = "sha256:…"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::digest::Digest;
use crate::reference::ImageRef;
use crate::registry::map_to_mirror;
use crate::source::{PullError, PullOptions};

/// The lock shipped in the binary.
pub const EMBEDDED: &str = include_str!("../../images/images.lock");

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read images lock {origin}: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    #[error("images lock {origin} is not valid: {message}")]
    Syntax { origin: String, message: String },
    #[error("images lock {origin} has version {version}; this atlas-install reads version 1")]
    Version { origin: String, version: u32 },
    #[error("images lock {origin}: key {key:?} is not an image reference with a tag ({reason})")]
    Key {
        origin: String,
        key: String,
        reason: String,
    },
    #[error("images lock {origin}: {key:?} and another key name the same image {normalised}")]
    Duplicate {
        origin: String,
        key: String,
        normalised: String,
    },
    #[error("images lock {origin}: the digest of {key:?} is invalid: {reason}")]
    Digest {
        origin: String,
        key: String,
        reason: String,
    },
    #[error(
        "{reference} is not pinned in images lock {origin}: run `atlas-install image lock` \
         (against the registries or your mirror) or pass --images-lock FILE"
    )]
    Missing { reference: String, origin: String },
    #[error(
        "{reference} pins {given}, but images lock {origin} says {locked}: update the lock \
         (`atlas-install image lock`) or the reference"
    )]
    Conflict {
        reference: String,
        given: Digest,
        locked: Digest,
        origin: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockFile {
    version: u32,
    #[serde(default)]
    images: BTreeMap<String, String>,
    #[serde(default)]
    files: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImagesLock {
    origin: String,
    entries: BTreeMap<String, Digest>,
    files: BTreeMap<String, Digest>,
}

impl ImagesLock {
    pub fn embedded() -> Result<Self, LockError> {
        Self::parse(EMBEDDED, "(embedded)")
    }

    pub fn load(path: &Path) -> Result<Self, LockError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Read {
            origin: origin.clone(),
            source,
        })?;
        Self::parse(&text, &origin)
    }

    pub fn new(origin: &str) -> Self {
        Self {
            origin: origin.to_owned(),
            entries: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, LockError> {
        let file: LockFile = toml::from_str(text).map_err(|e| LockError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        if file.version != 1 {
            return Err(LockError::Version {
                origin: origin.to_owned(),
                version: file.version,
            });
        }
        let mut lock = Self::new(origin);
        for (url, digest) in file.files {
            let d = Digest::parse(&digest).map_err(|e| LockError::Digest {
                origin: origin.to_owned(),
                key: url.clone(),
                reason: e.to_string(),
            })?;
            lock.files.insert(url, d);
        }
        for (key, digest) in file.images {
            let key_err = |reason: String| LockError::Key {
                origin: origin.to_owned(),
                key: key.clone(),
                reason,
            };
            let r = ImageRef::parse(&key).map_err(|e| key_err(e.to_string()))?;
            if r.digest.is_some() || !key.contains(':') || r.tag.is_none() {
                return Err(key_err(
                    "write the tag, the digest goes on the right-hand side".to_owned(),
                ));
            }
            let d = Digest::parse(&digest).map_err(|e| LockError::Digest {
                origin: origin.to_owned(),
                key: key.clone(),
                reason: e.to_string(),
            })?;
            let normalised = r.to_string();
            if lock.entries.insert(normalised.clone(), d).is_some() {
                return Err(LockError::Duplicate {
                    origin: origin.to_owned(),
                    key,
                    normalised,
                });
            }
        }
        Ok(lock)
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Digest)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn key(reference: &ImageRef) -> String {
        ImageRef {
            digest: None,
            ..reference.clone()
        }
        .to_string()
    }

    pub fn digest_for(&self, reference: &ImageRef) -> Option<&Digest> {
        self.entries.get(&Self::key(reference))
    }

    /// The reference with the locked digest attached. A reference that already pins a
    /// digest must agree with the lock when the lock knows the image.
    pub fn pin(&self, reference: &ImageRef) -> Result<ImageRef, LockError> {
        match (&reference.digest, self.digest_for(reference)) {
            (Some(given), Some(locked)) if given != locked => Err(LockError::Conflict {
                reference: reference.to_string(),
                given: given.clone(),
                locked: locked.clone(),
                origin: self.origin.clone(),
            }),
            (Some(_), _) => Ok(reference.clone()),
            (None, Some(locked)) => Ok(reference.with_digest(locked.clone())),
            (None, None) => Err(LockError::Missing {
                reference: reference.to_string(),
                origin: self.origin.clone(),
            }),
        }
    }

    pub fn insert(&mut self, reference: &ImageRef, digest: Digest) {
        self.entries.insert(Self::key(reference), digest);
    }

    /// The pinned sha256 of a downloaded file, by its expanded URL.
    pub fn file_digest(&self, url: &str) -> Option<&Digest> {
        self.files.get(url)
    }

    pub fn insert_file(&mut self, url: &str, digest: Digest) {
        self.files.insert(url.to_owned(), digest);
    }

    pub fn files(&self) -> impl Iterator<Item = (&str, &Digest)> {
        self.files.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The file form, sorted, so the same content always gives the same bytes.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# Upstream image digests for the recipes in images/, written by `atlas-install image lock`\n\
             # from the manifest bytes each registry served. Edit only through that command.\n\
             version = 1\n\n[images]\n",
        );
        for (k, d) in &self.entries {
            out.push_str(&format!("\"{k}\" = \"{d}\"\n"));
        }
        if !self.files.is_empty() {
            out.push_str("\n[files]\n");
            for (url, d) in &self.files {
                out.push_str(&format!("{} = \"{d}\"\n", toml_key(url)));
            }
        }
        out
    }
}

/// A URL as a TOML key: a basic string with `"` and `\\` escaped (URLs hold no controls).
fn toml_key(url: &str) -> String {
    format!("\"{}\"", url.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Resolves each reference's tag to the digest of the manifest (or index) its registry
/// serves, through `mirror` when given (keys stay the upstream references).
pub async fn lock_references(
    references: &[ImageRef],
    mirror: Option<&str>,
    opts: &PullOptions,
) -> Result<ImagesLock, PullError> {
    let mut lock = ImagesLock::new("(resolved)");
    for r in references {
        let target = match mirror {
            Some(m) => map_to_mirror(r, m),
            None => r.clone(),
        };
        let digest = crate::registry::resolve_digest(&target, opts).await?;
        lock.insert(r, digest);
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn embedded_lock_parses() {
        ImagesLock::embedded().unwrap();
    }

    #[test]
    fn downloads_round_trip_in_their_own_table() {
        let url = "https://caddyserver.com/api/download?os=linux&arch=amd64&p=a%2Fb";
        let mut lock = ImagesLock::new("t");
        lock.insert_file(url, Digest::parse(D).unwrap());
        let text = lock.to_toml();
        assert!(text.contains("[files]"), "{text}");
        let again = ImagesLock::parse(&text, "t").unwrap();
        assert_eq!(
            again.file_digest(url).map(ToString::to_string),
            Some(D.to_owned())
        );
        assert!(again.is_empty(), "no image entries");
        let bad = format!("version = 1\n[files]\n\"{url}\" = \"sha256:xyz\"\n");
        let e = ImagesLock::parse(&bad, "t").unwrap_err();
        assert!(e.to_string().contains(url), "{e}");
    }

    #[test]
    fn round_trip_and_pin() {
        let text = format!("version = 1\n[images]\n\"prom/prometheus:v3\" = \"{D}\"\n");
        let lock = ImagesLock::parse(&text, "t").unwrap();
        let r = ImageRef::parse("docker.io/prom/prometheus:v3").unwrap();
        assert_eq!(
            lock.pin(&r).unwrap().to_string(),
            format!("docker.io/prom/prometheus:v3@{D}")
        );
        let again = ImagesLock::parse(&lock.to_toml(), "t").unwrap();
        assert_eq!(again.entries, lock.entries);
        let missing = lock
            .pin(&ImageRef::parse("grafana/grafana:11").unwrap())
            .unwrap_err();
        assert!(
            missing.to_string().contains("atlas-install image lock"),
            "{missing}"
        );
        let other =
            ImageRef::parse(&format!("prom/prometheus:v3@sha256:{}", "1".repeat(64))).unwrap();
        assert!(matches!(lock.pin(&other), Err(LockError::Conflict { .. })));
    }

    #[test]
    fn precise_errors() {
        let e = ImagesLock::parse("version = 2\n", "f").unwrap_err();
        assert!(matches!(e, LockError::Version { version: 2, .. }));
        let e = ImagesLock::parse(
            &format!("version = 1\n[images]\n\"alpine\" = \"{D}\"\n"),
            "f",
        )
        .unwrap_err();
        assert!(e.to_string().contains("write the tag"), "{e}");
        let e = ImagesLock::parse("version = 1\n[images]\n\"alpine:3\" = \"md5:x\"\n", "f")
            .unwrap_err();
        assert!(matches!(e, LockError::Digest { .. }), "{e}");
        let text = format!(
            "version = 1\n[images]\n\"alpine:3\" = \"{D}\"\n\"docker.io/library/alpine:3\" = \"{D}\"\n"
        );
        assert!(matches!(
            ImagesLock::parse(&text, "f"),
            Err(LockError::Duplicate { .. })
        ));
        let e = ImagesLock::parse("version = 1\nimagez = 3\n", "f").unwrap_err();
        assert!(e.to_string().contains("imagez"), "{e}");
    }
}
