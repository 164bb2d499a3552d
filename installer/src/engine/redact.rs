//! Secret values cut out of every excerpt the installer shows: console-log lines of a service
//! that failed its health gate (the upstream step-ca entrypoint prints its password there on
//! first start), and the output of commands run inside a container. One place, [`excerpt`],
//! for every such text; the values come from where they are kept, read when needed (an
//! excerpt is only built when something failed), so a secret generated or rotated in another
//! run is covered too.
//!
//! What counts: every secret stored in the Atlas project's state (those being rotated to,
//! `.next`, included), the tokens from the configuration (Cloudflare API,
//! tunnel) and the Alertmanager webhook URL. Multi-line values (private keys) are also cut
//! line by line. Values shorter than [`MIN_LEN`] are not searched for: they would mask
//! ordinary words, and nothing generated is that short.

use crate::config::Config;
use crate::incus::Client;

/// What a secret is replaced with.
pub const MASK: &str = "<redacted>";
/// Shorter values are not searched for (generated ones are 43 characters).
pub const MIN_LEN: usize = 8;

/// The secret values to cut out of text. `Debug` shows how many, never which.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value containing another is cut whole.
    values: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

impl Redactor {
    pub fn new<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> Redactor {
        let mut out: Vec<String> = Vec::new();
        for v in values {
            let v = v.as_ref();
            let lines = v.lines().map(str::trim).filter(|l| *l != v.trim());
            for candidate in std::iter::once(v.trim()).chain(lines) {
                if candidate.len() >= MIN_LEN && !out.iter().any(|o| o == candidate) {
                    out.push(candidate.to_string());
                }
            }
        }
        out.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Redactor { values: out }
    }

    /// The stored secrets of `config`'s project and the secrets of the configuration.
    pub async fn load(
        client: &Client,
        config: &Config,
    ) -> Result<Redactor, crate::incus::IncusError> {
        let state = crate::state::read(client, &config.incus.project).await?;
        let stored: Vec<String> = state
            .iter()
            .flat_map(|s| s.secrets.values().map(str::to_string))
            .collect();
        Ok(Redactor::new(stored.into_iter().chain(of_config(config))))
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MASK);
            }
        }
        out
    }
}

/// Secrets that come from the configuration (never stored in Incus).
fn of_config(config: &Config) -> Vec<String> {
    [
        config.secrets.cloudflare_api_token.clone(),
        config.secrets.cloudflared_token.clone(),
        config.alertmanager.webhook_url.clone(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `text` without any secret value, for showing. When the stored secrets cannot be read,
/// the text is withheld rather than shown unchecked.
pub async fn excerpt(client: &Client, config: &Config, text: &str) -> String {
    match Redactor::load(client, config).await {
        Ok(r) => r.redact(text),
        Err(e) => format!(
            "  (not shown: the stored secrets it must be checked against could not be read: {})",
            e.to_string().lines().next().unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_cut_wherever_it_appears() {
        let pw = "Zq3xV9kLmN2pR7sT4uW8yB1cD5eF6gH0jK2mN4pQ7rS";
        let key = "-----BEGIN PRIVATE KEY-----\nMIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBx\nQ2ZmYWtlLWtleS1ib2R5LWxpbmUtdHdv\n-----END PRIVATE KEY-----\n";
        let r = Redactor::new([pw, key, "short"]);
        let log = format!(
            "step-ca: Your CA administrative password is: {pw}\nkey line MIG2AgEAMBAGByqGSM49AgEGBSuBBAAiBIGeMIGbAgEBBDBx leaked\nshort stays"
        );
        let out = r.redact(&log);
        assert!(!out.contains(pw), "{out}");
        assert!(
            !out.contains("MIG2AgEAMBAGByqGSM49"),
            "a key's lines are cut one by one: {out}"
        );
        assert_eq!(out.matches(MASK).count(), 2, "{out}");
        assert!(
            out.ends_with("short stays"),
            "values under {MIN_LEN} characters are left: {out}"
        );
        assert_eq!(format!("{r:?}"), "Redactor(6 values)");
    }

    #[test]
    fn configuration_secrets_count_too() {
        let mut c = Config::builtin();
        c.secrets.cloudflared_token = Some("eyJhIjoiY2xvdWRmbGFyZWQtdG9rZW4ifQ".into());
        c.alertmanager.webhook_url = Some("https://hooks.example.internal/T000/B000/XXXX".into());
        let r = Redactor::new(of_config(&c));
        let out = r.redact("token eyJhIjoiY2xvdWRmbGFyZWQtdG9rZW4ifQ to https://hooks.example.internal/T000/B000/XXXX");
        assert_eq!(out, format!("token {MASK} to {MASK}"));
    }
}
