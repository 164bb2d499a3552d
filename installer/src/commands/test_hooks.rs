//! Hooks for the integration tests, compiled into debug builds only: a release binary has
//! neither a failure point nor a way around the secret store.

#[cfg(debug_assertions)]
use anyhow::Context as _;
use anyhow::Result;
use atlas_install::engine::{SecretSource, StoredSecrets};
#[cfg(debug_assertions)]
use atlas_install::{config::Config, incus::Client};

#[cfg(debug_assertions)]
pub fn fail_at() -> Option<String> {
    std::env::var("ATLAS_TEST_FAIL_AT")
        .ok()
        .filter(|v| !v.is_empty())
}

#[cfg(not(debug_assertions))]
pub fn fail_at() -> Option<String> {
    None
}

#[cfg(debug_assertions)]
pub fn pause_at() -> Option<String> {
    std::env::var("ATLAS_TEST_PAUSE_AT")
        .ok()
        .filter(|v| !v.is_empty())
}

#[cfg(not(debug_assertions))]
pub fn pause_at() -> Option<String> {
    None
}

/// `ATLAS_TEST_SECRETS_FILE`: JSON with the secrets a test generated (debug builds).
#[cfg(debug_assertions)]
pub fn secrets() -> Result<Box<dyn SecretSource>> {
    let Some(path) = std::env::var_os("ATLAS_TEST_SECRETS_FILE") else {
        return Ok(Box::new(StoredSecrets));
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading ATLAS_TEST_SECRETS_FILE {}", path.to_string_lossy()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).context("ATLAS_TEST_SECRETS_FILE is not JSON")?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let mosquitto = v["mosquitto"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(user, pw)| {
            let salt: [u8; 12] =
                std::array::from_fn(|i| user.as_bytes().get(i).copied().unwrap_or(0));
            (
                user.clone(),
                atlas_install::render::MqttCredential {
                    password: pw.as_str().unwrap_or_default().to_string(),
                    salt,
                },
            )
        })
        .collect();
    let secrets = atlas_install::engine::secrets::Secrets {
        credentials: atlas_install::render::Credentials {
            grafana_admin_password: s("grafana_admin_password"),
            step_ca_password: s("step_ca_password"),
            mosquitto,
        },
        metrics_cert_pem: s("metrics_cert_pem"),
        metrics_key_pem: s("metrics_key_pem"),
        hash_key: s("hash_key"),
    };
    Ok(Box::new(Fixed(secrets)))
}

#[cfg(not(debug_assertions))]
pub fn secrets() -> Result<Box<dyn SecretSource>> {
    Ok(Box::new(StoredSecrets))
}

#[cfg(debug_assertions)]
struct Fixed(atlas_install::engine::secrets::Secrets);

#[cfg(debug_assertions)]
impl SecretSource for Fixed {
    fn load_or_generate<'a>(
        &'a self,
        _client: &'a Client,
        _config: &'a Config,
    ) -> atlas_install::engine::install::SecretsFuture<'a> {
        let s = self.0.clone();
        Box::pin(async move { Ok(s) })
    }
}
