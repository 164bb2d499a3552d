//! Registry credentials from Docker's config format (`auths.<host>.auth` = base64
//! `user:password`), read from `$REGISTRY_AUTH_FILE` or `~/.docker/config.json`.
//! Credentials never appear in errors or Debug output.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read registry auth file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "registry auth file {path} is not valid JSON ({source}); expected {{\"auths\": {{\"host\": {{\"auth\": \"base64(user:password)\"}}}}}}"
    )]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "registry auth file {path}: the entry for {host} has an \"auth\" value that is not base64 of user:password; re-create it with `skopeo login` or `docker login`"
    )]
    BadEntry { path: PathBuf, host: String },
}

/// Where credentials come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AuthSource {
    /// `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    #[default]
    Environment,
    /// One specific file in Docker's format.
    File(PathBuf),
    /// Anonymous only (bearer tokens the registry hands out without credentials).
    Anonymous,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ username: {:?}, password: <redacted> }}",
            self.username
        )
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

impl AuthSource {
    /// The auth file this source reads, if any.
    pub fn path(&self) -> Option<PathBuf> {
        self.path_with(|k| std::env::var_os(k))
    }

    fn path_with(&self, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        match self {
            AuthSource::File(p) => Some(p.clone()),
            AuthSource::Anonymous => None,
            AuthSource::Environment => var("REGISTRY_AUTH_FILE")
                .map(PathBuf::from)
                .or_else(|| var("DOCKER_CONFIG").map(|d| PathBuf::from(d).join("config.json")))
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))),
        }
    }

    /// Credentials for `registry` (`host[:port]`), or None for anonymous access. A missing
    /// file means anonymous; a malformed one is an error (silently pulling anonymously
    /// would hide the operator's mistake behind a 401).
    pub fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, AuthError> {
        let Some(path) = self.path() else {
            return Ok(None);
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && *self == AuthSource::Environment =>
            {
                return Ok(None);
            }
            Err(source) => return Err(AuthError::Read { path, source }),
        };
        lookup(&text, &path, registry)
    }
}

fn lookup(text: &str, path: &Path, registry: &str) -> Result<Option<Credentials>, AuthError> {
    let file: ConfigFile = serde_json::from_str(text).map_err(|source| AuthError::Json {
        path: path.to_owned(),
        source,
    })?;
    let Some((key, entry)) = file.auths.iter().find(|(k, _)| key_matches(k, registry)) else {
        return Ok(None);
    };
    let Some(encoded) = entry.auth.as_deref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let bad = || AuthError::BadEntry {
        path: path.to_owned(),
        host: key.clone(),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    }))
}

/// Docker writes keys as bare hosts or as URLs (`https://index.docker.io/v1/`).
fn key_matches(key: &str, registry: &str) -> bool {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    if host == registry {
        return true;
    }
    let hub = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    hub.contains(&registry) && hub.contains(&host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_entries_by_host_and_url() {
        let b = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        let text = format!(
            r#"{{"auths":{{"127.0.0.1:5001":{{"auth":"{b}"}},"https://index.docker.io/v1/":{{"auth":"{b}"}}}}}}"#
        );
        let c = lookup(&text, Path::new("f"), "127.0.0.1:5001")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cr:et")
        );
        assert!(!format!("{c:?}").contains("s3cr"));
        assert!(
            lookup(&text, Path::new("f"), "docker.io")
                .unwrap()
                .is_some()
        );
        assert!(lookup(&text, Path::new("f"), "quay.io").unwrap().is_none());
    }

    fn env<'a>(
        pairs: &'a [(&'a str, &'a str)],
    ) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| std::ffi::OsString::from(v))
        }
    }

    #[test]
    fn environment_precedence() {
        let src = AuthSource::Environment;
        let all = [
            ("REGISTRY_AUTH_FILE", "/run/auth.json"),
            ("DOCKER_CONFIG", "/d"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            src.path_with(env(&all)),
            Some(PathBuf::from("/run/auth.json"))
        );
        let no_raf = [
            ("REGISTRY_AUTH_FILE", ""),
            ("DOCKER_CONFIG", "/d"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            src.path_with(env(&no_raf)),
            Some(PathBuf::from("/d/config.json"))
        );
        let home = [("HOME", "/home/u")];
        assert_eq!(
            src.path_with(env(&home)),
            Some(PathBuf::from("/home/u/.docker/config.json"))
        );
        assert_eq!(AuthSource::Anonymous.path_with(env(&all)), None);
        // A missing default file is anonymous access, a missing named file an error.
        let err = AuthSource::File("/nonexistent/auth.json".into())
            .credentials_for("h")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read registry auth file /nonexistent/auth.json"),
            "{err}"
        );
    }

    #[test]
    fn malformed_entries_are_errors() {
        let e = lookup(
            r#"{"auths":{"h":{"auth":"!!"}}}"#,
            Path::new("/x/auth.json"),
            "h",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("/x/auth.json") && e.to_string().contains("skopeo login"),
            "{e}"
        );
        let e = lookup("{", Path::new("/x/auth.json"), "h").unwrap_err();
        assert!(matches!(e, AuthError::Json { .. }));
    }
}
