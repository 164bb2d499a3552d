//! The secrets (the two tokens, and each alert receiver's): taken from the environment or
//! from a file the config names, never from the config itself. A token file others can read is worth a warning, not a refusal (the
//! operator may share the host on purpose).

use std::path::{Path, PathBuf};

use super::error::Diagnostic;
use super::model::Secrets;
use super::raw::RawConfig;

pub const CLOUDFLARE_API_TOKEN_ENV: &str = "ATLAS_CLOUDFLARE_API_TOKEN";
pub const CLOUDFLARED_TOKEN_ENV: &str = "ATLAS_CLOUDFLARED_TOKEN";

/// `base` is the directory relative token paths are read from (the config file's).
pub(crate) fn resolve(
    env: &[(String, String)],
    raw: &RawConfig,
    base: &Path,
    diags: &mut Vec<Diagnostic>,
    warnings: &mut Vec<String>,
) -> Secrets {
    let from_env = |name: &str| {
        env.iter()
            .find(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
    };
    let api_file = raw
        .caddy
        .as_ref()
        .and_then(|c| c.cloudflare_api_token_file.clone());
    let tunnel_file = raw.cloudflared.as_ref().and_then(|c| c.token_file.clone());
    let receivers =
        super::alerting::resolve_secrets(env, raw.alertmanager.as_ref(), base, diags, warnings);
    Secrets {
        cloudflare_api_token: from_env(CLOUDFLARE_API_TOKEN_ENV).or_else(|| {
            api_file.and_then(|f| {
                read_token("caddy.cloudflare_api_token_file", &f, base, diags, warnings)
            })
        }),
        cloudflared_token: from_env(CLOUDFLARED_TOKEN_ENV).or_else(|| {
            tunnel_file
                .and_then(|f| read_token("cloudflared.token_file", &f, base, diags, warnings))
        }),
        receivers,
    }
}

pub(super) fn read_token(
    key: &str,
    file: &str,
    base: &Path,
    diags: &mut Vec<Diagnostic>,
    warnings: &mut Vec<String>,
) -> Option<String> {
    let path: PathBuf = if Path::new(file).is_absolute() {
        PathBuf::from(file)
    } else {
        base.join(file)
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            diags.push(
                Diagnostic::new(
                    key,
                    format!("cannot read token file {}: {e}", path.display()),
                )
                .help("create it with the token as its only content (mode 0600), or unset the key"),
            );
            return None;
        }
    };
    warn_if_readable(key, &path, warnings);
    let token = text.trim();
    if token.is_empty() {
        diags.push(
            Diagnostic::new(key, format!("token file {} is empty", path.display()))
                .help("write the token into it"),
        );
        return None;
    }
    Some(token.to_string())
}

#[cfg(unix)]
fn warn_if_readable(key: &str, path: &Path, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            warnings.push(format!(
                "{key}: {} can be read by other users (mode {mode:04o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable(_: &str, _: &Path, _: &mut Vec<String>) {}
