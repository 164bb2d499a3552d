//! The declarative configuration (`atlas.toml`): model, embedded defaults, loading with
//! precedence (flags > `ATLAS_*` env > file > defaults) and validation.
//!
//! Environment mapping: `ATLAS_` + the key path joined with `__`, e.g.
//! `ATLAS_INCUS__PROJECT=x`, `ATLAS_INSTANCES__GRAFANA01__MEMORY=2GB`. Values are read as TOML
//! when they are TOML (numbers, booleans, arrays), else as text. Variables that are not keys
//! are listed in [`RESERVED_ENV`]; any other `ATLAS_*` variable that names no key is an error.

mod alerting;
mod defaults;
mod error;
mod formats;
mod model;
mod raw;
mod resolve;
mod secrets;
mod source;
mod validate;

use std::path::{Path, PathBuf};

pub use alerting::{
    DEFAULT_RECEIVER, LEGACY_WEBHOOK_RECEIVER, RECEIVER_SECRET_ENV_PREFIX, secret_env_name,
};
pub use defaults::{DEFAULT_GRAFANA_DOMAIN, KindDefaults, SNAPSHOT_PATTERN, default_instance};
pub use error::{ConfigError, Diagnostic, Location};
pub use formats::prometheus_duration;
pub use model::*;
pub use secrets::{CLOUDFLARE_API_TOKEN_ENV, CLOUDFLARED_TOKEN_ENV};
pub use source::RESERVED_ENV;
pub use validate::validate;

/// The commented default file `config init` writes; it loads to exactly [`Config::builtin`].
pub const DEFAULT_FILE: &str = include_str!("../../../assets/atlas.toml");

/// The file looked for in the working directory when no `--config` is given.
pub const DEFAULT_FILE_NAME: &str = "atlas.toml";

/// Everything above the embedded defaults.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config FILE` / `ATLAS_CONFIG`; when unset, `atlas.toml` in `cwd` if present.
    pub file: Option<PathBuf>,
    /// Directory searched for `atlas.toml`.
    pub cwd: PathBuf,
    /// The process environment (only `ATLAS_*` entries are read).
    pub env: Vec<(String, String)>,
    /// `--project`
    pub project: Option<String>,
    /// `--incus-socket`
    pub incus_socket: Option<String>,
}

/// A loaded, valid configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read; `None` when only defaults (and env/flags) apply.
    pub file: Option<PathBuf>,
    /// The file as the operator named it (`atlas.toml`), or `embedded defaults`.
    pub source_name: String,
    /// Not errors, but worth telling the operator (e.g. a token file others can read).
    pub warnings: Vec<String>,
}

/// Loads, layers, resolves and validates. Every problem is returned at once.
pub fn load(opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    let file = match &opts.file {
        Some(f) => Some(f.clone()),
        None => Some(opts.cwd.join(DEFAULT_FILE_NAME)).filter(|p| p.is_file()),
    };
    let text = match &file {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let display = file.as_ref().map(|p| display_name(p, &opts.cwd));
    let base = file
        .as_ref()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| opts.cwd.clone());
    let (config, warnings) = from_layers(display.as_deref(), text.as_deref(), &base, opts)?;
    let source_name = display.unwrap_or_else(|| "embedded defaults".to_string());
    Ok(Loaded {
        config,
        file,
        source_name,
        warnings,
    })
}

/// The file name as the operator would recognise it in `FILE:LINE:COL`.
fn display_name(path: &Path, cwd: &Path) -> String {
    path.strip_prefix(cwd).unwrap_or(path).display().to_string()
}

/// The layering itself, on text already read (tests call it directly).
fn from_layers(
    file: Option<&str>,
    text: Option<&str>,
    base: &Path,
    opts: &LoadOptions,
) -> Result<(Config, Vec<String>), ConfigError> {
    let origin = file.unwrap_or("embedded defaults").to_string();
    let invalid = |diagnostics| ConfigError::Invalid {
        origin: origin.clone(),
        diagnostics,
    };
    let mut diags = Vec::new();
    let mut src = match (file, text) {
        (Some(f), Some(t)) => source::Source::parse(f, t).map_err(|d| invalid(vec![d]))?,
        _ => source::Source::empty(),
    };
    src.apply_env(&opts.env, &mut diags);
    if let Some(p) = &opts.project {
        src.apply_flag(&["incus", "project"], p.clone(), "--project", &mut diags);
    }
    if let Some(s) = &opts.incus_socket {
        src.apply_flag(
            &["incus", "socket"],
            s.clone(),
            "--incus-socket",
            &mut diags,
        );
    }
    src.take_inline_secrets(&mut diags);
    let raw = src.deserialize(&mut diags);
    let mut warnings = Vec::new();
    let secrets = secrets::resolve(&opts.env, &raw, base, &mut diags, &mut warnings);
    let config = resolve::resolve(raw, secrets, &mut diags);
    diags.extend(validate::validate_with(&config, &|p| src.is_set(p)));
    if diags.is_empty() {
        return Ok((config, warnings));
    }
    for d in &mut diags {
        if d.location.is_none() && !d.path.is_empty() {
            d.location = src.locate(&d.path, false);
        }
    }
    // In file order, so the operator can work down the file; env and flags after.
    diags.sort_by_key(|d| match &d.location {
        Some(Location::File { line, column, .. }) => (0, *line, *column),
        Some(Location::Env { .. }) => (1, 0, 0),
        Some(Location::Flag { .. }) => (2, 0, 0),
        None => (3, 0, 0),
    });
    diags.dedup_by(|a, b| a.path == b.path && a.message == b.message);
    Err(invalid(diags))
}

/// The configuration in file form (loadable again), secrets shown only as present or not.
pub fn to_toml(c: &Config) -> String {
    let body = {
        let mut file = raw::RawConfig::from_model(c);
        // Written out, `enabled` would pin cloudflared on or off; left out, the token decides,
        // which is what produced this value in the first place.
        let token = c.secrets.cloudflared_token.is_some();
        for inst in file.instances.iter_mut().flat_map(|m| m.values_mut()) {
            if inst.service == Some(ServiceKind::Cloudflared) && inst.enabled == Some(token) {
                inst.enabled = None;
            }
        }
        toml::to_string_pretty(&file).expect("the file schema serializes")
    };
    let s = redacted(&c.secrets);
    let receivers = match c.secrets.receivers.is_empty() {
        true => String::new(),
        false => format!(
            ", receiver secrets of {} = \"<redacted>\"",
            c.secrets
                .receivers
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "# Effective configuration (defaults < file < ATLAS_* environment < flags).\n\
         # secrets: cloudflare_api_token = {}, cloudflared_token = {}{receivers}\n\n{body}",
        s["cloudflare_api_token"], s["cloudflared_token"]
    )
}

/// The same as JSON, with a `secrets` object of `<redacted>` / `<unset>` markers.
pub fn to_json(c: &Config) -> serde_json::Value {
    let mut v =
        serde_json::to_value(raw::RawConfig::from_model(c)).expect("the file schema serializes");
    v["secrets"] = redacted(&c.secrets);
    v
}

fn redacted(s: &Secrets) -> serde_json::Value {
    let mark = |v: &Option<String>| if v.is_some() { "<redacted>" } else { "<unset>" };
    let receivers: serde_json::Map<String, serde_json::Value> = s
        .receivers
        .keys()
        .map(|k| (k.clone(), "<redacted>".into()))
        .collect();
    serde_json::json!({
        "cloudflare_api_token": mark(&s.cloudflare_api_token),
        "cloudflared_token": mark(&s.cloudflared_token),
        "receivers": receivers,
    })
}

#[cfg(test)]
mod tests;
