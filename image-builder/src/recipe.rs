//! Image recipes, `images/<service>.toml`: what an Atlas image is built from. A recipe names
//! its upstream base by tag (the digest comes from `images.lock`, or is written inline as
//! `tag@sha256:…`), files copied out of other images (a multi-stage `COPY --from`, e.g. the
//! Caddy binary with plugins), files from `assets/`, and the runtime config our PID 1 reads.
//!
//! ```toml
//! name = "prometheus"
//! [base]
//! image = "docker.io/prom/prometheus:v3.5.0"
//! [config]
//! entrypoint = ["/bin/prometheus"]
//! cmd = ["--config.file=/etc/prometheus/prometheus.yml"]
//! user = "65534:65534"
//! ports = ["9090/tcp"]
//! [health]
//! http = { port = 9090, path = "/-/ready" }
//! ```

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::reference::ImageRef;

/// The recipes shipped in the binary: `(service, TOML)`.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "alertmanager",
        include_str!("../../images/alertmanager.toml"),
    ),
    ("caddy", include_str!("../../images/caddy.toml")),
    ("cloudflared", include_str!("../../images/cloudflared.toml")),
    ("grafana", include_str!("../../images/grafana.toml")),
    ("loki", include_str!("../../images/loki.toml")),
    ("mosquitto", include_str!("../../images/mosquitto.toml")),
    (
        "node-exporter",
        include_str!("../../images/node-exporter.toml"),
    ),
    ("prometheus", include_str!("../../images/prometheus.toml")),
    ("step-ca", include_str!("../../images/step-ca.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read recipe {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("recipe {path} is not valid: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("recipe {path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The service, equal to the file name (`images/<name>.toml`).
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub base: Base,
    /// Files taken from other images, in order, over the base.
    #[serde(default, rename = "copy")]
    pub copies: Vec<CopyFrom>,
    /// Single files downloaded over HTTPS (a release binary), over the base and copies.
    #[serde(default, rename = "download")]
    pub downloads: Vec<Download>,
    /// Files from the repository's `assets/`, over the base and copies.
    #[serde(default, rename = "file")]
    pub files: Vec<AssetFile>,
    #[serde(default)]
    pub config: RuntimeSpec,
    pub health: Health,
    /// Plugins chosen in atlas.toml and baked in at build time (Grafana).
    #[serde(default)]
    pub plugins: Option<Plugins>,
    /// The plugins that can be chosen, each pinned by the sha256 of its archive.
    #[serde(default, rename = "plugin")]
    pub plugin_sources: Vec<PluginSource>,
}

/// A plugin archive (zip, tar or tar.gz) unpacked into `<plugins.dir>/<id>`; a single
/// top-level directory in the archive is dropped (Grafana's zips have one).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSource {
    /// Directory name under `plugins.dir` and the name atlas.toml selects it by.
    pub id: String,
    /// `https://…` (plain `http://` only for loopback hosts), `file:///abs/path`, or a path
    /// relative to the repository root.
    pub url: String,
    /// `sha256:<hex>` of the archive bytes, computed from the real download.
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// `registry/repo:tag` (digest from images.lock) or `registry/repo:tag@sha256:…`.
    pub image: String,
}

/// A multi-stage `COPY --from`: `from` (a file, directory or link, symlinks on the way
/// followed inside `image`) is laid at `to` in the Atlas layer with its mode, owner and
/// extended attributes; `to` ending in `/` names the directory it goes into. `image` is
/// pinned by images.lock like the base.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyFrom {
    pub image: String,
    /// Absolute path inside `image`.
    pub from: String,
    /// Absolute path in the Atlas image.
    pub to: String,
}

/// A file fetched from `url` and laid at `to` (owner root, `mode`), e.g. a binary from a
/// project's own release or build service. Its sha256 comes from `sha256` here, else from the
/// `[files]` of images.lock (written by `image lock`), else it is pinned on first download
/// and recorded next to the image pins; a later download with other bytes is refused.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Download {
    /// `https://…`; `{arch}` is replaced by the Go name of the build architecture (`amd64`,
    /// `arm64`), which is what release servers use.
    pub url: String,
    /// Absolute path in the Atlas image.
    pub to: String,
    /// Octal, e.g. "0755".
    #[serde(default = "default_exec_mode")]
    pub mode: String,
    /// `sha256:<hex>` of the downloaded bytes, when known for every architecture's URL;
    /// normally absent (the lock holds one digest per expanded URL).
    #[serde(default)]
    pub sha256: Option<String>,
}

fn default_exec_mode() -> String {
    "0755".into()
}

impl Download {
    /// The URL for a build on `arch` (Rust's name: `x86_64`, `aarch64`).
    pub fn url_for(&self, arch: &str) -> String {
        let go = match arch {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        self.url.replace("{arch}", go)
    }

    /// The mode as a number (validated when the recipe is parsed).
    pub fn mode_bits(&self) -> u32 {
        u32::from_str_radix(&self.mode, 8).unwrap_or(0o755)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetFile {
    /// Relative to the repository root, under `assets/`.
    pub src: String,
    pub dest: String,
    /// Octal, e.g. "0644".
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Numeric `uid:gid`.
    #[serde(default = "default_owner")]
    pub owner: String,
}

fn default_mode() -> String {
    "0644".to_owned()
}

fn default_owner() -> String {
    "0:0".to_owned()
}

/// Overrides of the base image's config; what is not given is inherited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Merged over the base image's Env (same key: the recipe wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// `port/proto`, e.g. "9090/tcp".
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub http: Option<HttpCheck>,
    pub https: Option<HttpCheck>,
    pub tcp: Option<TcpCheck>,
    #[serde(default = "default_interval")]
    pub interval: String,
    #[serde(default = "default_timeout")]
    pub timeout: String,
    #[serde(default = "default_retries")]
    pub retries: u32,
}

fn default_interval() -> String {
    "10s".to_owned()
}
fn default_timeout() -> String {
    "3s".to_owned()
}
fn default_retries() -> u32 {
    3
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub port: u16,
    pub path: String,
    /// Expected status (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// A substring the body must contain.
    pub body_contains: Option<String>,
}

fn default_status() -> u16 {
    200
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugins {
    /// Where plugin directories go in the image.
    pub dir: String,
    /// Owner of the plugin files, numeric `uid:gid`.
    pub owner: String,
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; `path` names the file in errors and gives the expected name.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RecipeError> {
        let recipe: Recipe = toml::from_str(text).map_err(|e| RecipeError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        recipe.validate(path)?;
        Ok(recipe)
    }

    /// The embedded recipes, sorted by name.
    pub fn embedded() -> Result<Vec<Self>, RecipeError> {
        EMBEDDED
            .iter()
            .map(|(name, text)| {
                Self::parse(text, &Path::new("images").join(format!("{name}.toml")))
            })
            .collect()
    }

    /// The embedded recipe for `service`.
    pub fn embedded_for(service: &str) -> Option<Result<Self, RecipeError>> {
        EMBEDDED
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(name, text)| {
                Self::parse(text, &Path::new("images").join(format!("{name}.toml")))
            })
    }

    /// Every recipe in `dir` (`*.toml`), sorted by name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Self>, RecipeError> {
        let read_err = |source| RecipeError::Read {
            path: dir.to_owned(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Self::load(p)).collect()
    }

    /// The base reference, parsed (always succeeds for a recipe from [`Recipe::parse`]).
    pub fn base_ref(&self) -> Result<ImageRef, crate::reference::ReferenceError> {
        ImageRef::parse(&self.base.image)
    }

    /// Every upstream image this recipe needs: the base, then each copy source.
    pub fn upstream_refs(&self) -> Vec<ImageRef> {
        let mut out: Vec<ImageRef> = self.base_ref().into_iter().collect();
        for c in &self.copies {
            if let Ok(r) = ImageRef::parse(&c.image) {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        out
    }

    fn validate(&self, path: &Path) -> Result<(), RecipeError> {
        let bad = |field: &str, reason: String| RecipeError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            reason,
        };
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            if stem != self.name {
                return Err(bad(
                    "name",
                    format!("{:?} differs from the file name {stem:?}", self.name),
                ));
            }
        }
        check_image(&self.base.image).map_err(|r| bad("base.image", r))?;
        for (i, c) in self.copies.iter().enumerate() {
            let f = |s: &str| format!("copy[{i}].{s}");
            check_image(&c.image).map_err(|r| bad(&f("image"), r))?;
            check_abs(&c.from).map_err(|r| bad(&f("from"), r))?;
            check_abs(&c.to).map_err(|r| bad(&f("to"), r))?;
        }
        for (i, d) in self.downloads.iter().enumerate() {
            let f = |s: &str| format!("download[{i}].{s}");
            let url = d.url_for("x86_64");
            let parsed =
                reqwest::Url::parse(&url).map_err(|e| bad(&f("url"), format!("{url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
                return Err(bad(
                    &f("url"),
                    format!(
                        "{url:?} must be an https:// URL (http:// only for loopback or insecure hosts)"
                    ),
                ));
            }
            check_abs(&d.to).map_err(|r| bad(&f("to"), r))?;
            u32::from_str_radix(&d.mode, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    bad(
                        &f("mode"),
                        format!("{:?} is not an octal mode like \"0755\"", d.mode),
                    )
                })?;
            if let Some(sha) = &d.sha256 {
                crate::digest::Digest::parse(sha).map_err(|e| bad(&f("sha256"), e.to_string()))?;
            }
        }
        for (i, file) in self.files.iter().enumerate() {
            let f = |s: &str| format!("file[{i}].{s}");
            let src = Path::new(&file.src);
            if !src.starts_with("assets")
                || src.components().any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(bad(
                    &f("src"),
                    format!(
                        "{:?} must be a relative path under assets/ without '..'",
                        file.src
                    ),
                ));
            }
            check_abs(&file.dest).map_err(|r| bad(&f("dest"), r))?;
            u32::from_str_radix(&file.mode, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    bad(
                        &f("mode"),
                        format!("{:?} is not an octal mode like \"0644\"", file.mode),
                    )
                })?;
            check_owner(&file.owner).map_err(|r| bad(&f("owner"), r))?;
        }
        for (i, p) in self.config.ports.iter().enumerate() {
            check_port(p).map_err(|r| bad(&format!("config.ports[{i}]"), r))?;
        }
        if let Some(w) = &self.config.workdir {
            check_abs(w).map_err(|r| bad("config.workdir", r))?;
        }
        if let Some(u) = &self.config.user {
            if u.is_empty() || u.contains(char::is_whitespace) {
                return Err(bad(
                    "config.user",
                    "write uid[:gid] or a user name of the image".to_owned(),
                ));
            }
        }
        for k in self.config.env.keys() {
            if k.is_empty() || k.contains('=') {
                return Err(bad("config.env", format!("{k:?} is not a variable name")));
            }
        }
        let checks = [
            self.health.http.is_some(),
            self.health.https.is_some(),
            self.health.tcp.is_some(),
        ];
        if checks.iter().filter(|c| **c).count() != 1 {
            return Err(bad(
                "health",
                "give exactly one of http, https or tcp".to_owned(),
            ));
        }
        for (field, v) in [
            ("health.interval", &self.health.interval),
            ("health.timeout", &self.health.timeout),
        ] {
            parse_duration(v).ok_or_else(|| {
                bad(
                    field,
                    format!("{v:?} is not a duration like \"10s\", \"500ms\" or \"1m\""),
                )
            })?;
        }
        for h in [&self.health.http, &self.health.https]
            .into_iter()
            .flatten()
        {
            if !h.path.starts_with('/') {
                return Err(bad(
                    "health",
                    format!("path {:?} must start with '/'", h.path),
                ));
            }
        }
        if let Some(p) = &self.plugins {
            check_abs(&p.dir).map_err(|r| bad("plugins.dir", r))?;
            check_owner(&p.owner).map_err(|r| bad("plugins.owner", r))?;
        }
        if !self.plugin_sources.is_empty() && self.plugins.is_none() {
            return Err(bad(
                "plugin",
                "[[plugin]] entries need a [plugins] section with dir and owner".to_owned(),
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        for (i, p) in self.plugin_sources.iter().enumerate() {
            let f = |s: &str| format!("plugin[{i}].{s}");
            let id_ok = !p.id.is_empty()
                && !p.id.starts_with('.')
                && p.id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !id_ok {
                return Err(bad(
                    &f("id"),
                    format!("{:?} must be letters, digits, '-', '_' or '.'", p.id),
                ));
            }
            if !ids.insert(p.id.as_str()) {
                return Err(bad(&f("id"), format!("{:?} is listed twice", p.id)));
            }
            if p.url.is_empty()
                || (p.url.contains("://")
                    && !["https://", "http://", "file://"]
                        .iter()
                        .any(|s| p.url.starts_with(s)))
            {
                return Err(bad(
                    &f("url"),
                    format!("{:?}: write https://…, file:///path or a path", p.url),
                ));
            }
            crate::digest::Digest::parse(&p.sha256).map_err(|e| {
                bad(
                    &f("sha256"),
                    format!("{e}; write \"sha256:<hex>\" of the archive (sha256sum FILE)"),
                )
            })?;
        }
        Ok(())
    }
}

fn check_image(s: &str) -> Result<(), String> {
    let r = ImageRef::parse(s).map_err(|e| e.to_string())?;
    let tag_written = s
        .split('@')
        .next()
        .is_some_and(|n| n.rsplit('/').next().is_some_and(|last| last.contains(':')));
    if !tag_written || r.tag.is_none() {
        return Err(format!(
            "{s:?} needs an explicit tag (the lock pins its digest)"
        ));
    }
    Ok(())
}

fn check_abs(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{p:?} must be an absolute path without '..'"));
    }
    Ok(())
}

fn check_owner(o: &str) -> Result<(), String> {
    match o.split_once(':') {
        Some((u, g)) if u.parse::<u32>().is_ok() && g.parse::<u32>().is_ok() => Ok(()),
        _ => Err(format!("{o:?} is not a numeric uid:gid")),
    }
}

fn check_port(p: &str) -> Result<(), String> {
    let ok = match p.split_once('/') {
        Some((n, proto)) => {
            n.parse::<u16>().is_ok_and(|n| n > 0) && (proto == "tcp" || proto == "udp")
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{p:?} is not port/proto like \"9090/tcp\""))
    }
}

/// `500ms`, `10s`, `1m`, `1h` → milliseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|ms| *ms > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
name = "svc"
[base]
image = "docker.io/prom/prometheus:v3.5.0"
[config]
ports = ["9090/tcp"]
[health]
http = { port = 9090, path = "/-/ready" }
"#;

    fn parse(text: &str) -> Result<Recipe, RecipeError> {
        Recipe::parse(text, Path::new("images/svc.toml"))
    }

    #[test]
    fn minimal_recipe() {
        let r = parse(OK).unwrap();
        assert_eq!(
            r.base_ref().unwrap().to_string(),
            "docker.io/prom/prometheus:v3.5.0"
        );
        assert_eq!(r.health.interval, "10s");
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("10"), None);
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = parse(&OK.replace("v3.5.0\"", "\"").replace(":\"", "\"")).unwrap_err();
        assert!(
            e.to_string().contains("images/svc.toml: base.image")
                && e.to_string().contains("explicit tag"),
            "{e}"
        );
        let e = parse(&OK.replace("9090/tcp", "9090")).unwrap_err();
        assert!(e.to_string().contains("config.ports[0]"), "{e}");
        let e = parse(&OK.replace("name = \"svc\"", "name = \"other\"")).unwrap_err();
        assert!(e.to_string().contains("differs from the file name"), "{e}");
        let e = parse(&format!("{OK}tcp = {{ port = 1 }}\n")).unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = parse(&OK.replace("[config]", "[config]\nentrypoitn = []")).unwrap_err();
        assert!(e.to_string().contains("entrypoitn"), "{e}");
        let e = parse(&format!(
            "{OK}\n[[file]]\nsrc = \"assets/../etc/shadow\"\ndest = \"/x\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("file[0].src"), "{e}");
    }

    #[test]
    fn plugin_entries_are_checked() {
        let sha = format!("sha256:{}", "a".repeat(64));
        let plugin = |id: &str, url: &str, sha: &str| {
            format!("{OK}\n[[plugin]]\nid = \"{id}\"\nurl = \"{url}\"\nsha256 = \"{sha}\"\n")
        };
        let section = "[plugins]\ndir = \"/opt/p\"\nowner = \"472:0\"\n";
        let e = parse(&plugin("clock", "https://x/c.zip", &sha)).unwrap_err();
        assert!(e.to_string().contains("need a [plugins] section"), "{e}");
        let ok =
            |id: &str, url: &str, sha: &str| parse(&format!("{}\n{section}", plugin(id, url, sha)));
        let r = ok("grafana-clock-panel", "plugins/c.zip", &sha).unwrap();
        assert_eq!(r.plugin_sources[0].id, "grafana-clock-panel");
        let e = ok("../x", "https://x/c.zip", &sha).unwrap_err();
        assert!(e.to_string().contains("plugin[0].id"), "{e}");
        let e = ok("c", "ftp://x/c.zip", &sha).unwrap_err();
        assert!(e.to_string().contains("plugin[0].url"), "{e}");
        let e = ok("c", "https://x/c.zip", &"a".repeat(64)).unwrap_err();
        assert!(
            e.to_string().contains("plugin[0].sha256") && e.to_string().contains("sha256sum"),
            "{e}"
        );
    }

    #[test]
    fn download_entries_are_checked() {
        let dl = |url: &str, to: &str, extra: &str| {
            parse(&format!(
                "{OK}\n[[download]]\nurl = \"{url}\"\nto = \"{to}\"\n{extra}"
            ))
        };
        let r = dl("https://example.org/get?arch={arch}", "/usr/bin/x", "").unwrap();
        let d = &r.downloads[0];
        assert_eq!(d.url_for("x86_64"), "https://example.org/get?arch=amd64");
        assert_eq!(d.url_for("aarch64"), "https://example.org/get?arch=arm64");
        assert_eq!(d.mode_bits(), 0o755);
        for (url, to, extra, field) in [
            ("ftp://example.org/x", "/usr/bin/x", "", "download[0].url"),
            ("not a url", "/usr/bin/x", "", "download[0].url"),
            ("https://example.org/x", "usr/bin/x", "", "download[0].to"),
            (
                "https://example.org/x",
                "/usr/bin/x",
                "mode = \"rwx\"\n",
                "download[0].mode",
            ),
            (
                "https://example.org/x",
                "/usr/bin/x",
                "sha256 = \"abc\"\n",
                "download[0].sha256",
            ),
        ] {
            let e = dl(url, to, extra).unwrap_err();
            assert!(
                e.to_string().contains(&format!("images/svc.toml: {field}")),
                "{url} {to} {extra}: {e}"
            );
        }
    }
}
