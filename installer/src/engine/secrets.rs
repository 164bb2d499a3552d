//! Generated secrets of a deployment: made once, stored in Incus (the Atlas project's
//! `user.atlas.secret.*` config keys), reused on every re-run and upgrade, never printed.
//!
//! CONTRACT (the install sequence relies on it):
//! - `load_or_generate(client, config)` returns the stored [`Secrets`] and generates and
//!   stores what is missing (a new Mosquitto user, a first install). It is the only writer.
//!   Must be called after the project exists. Zero writes when everything is stored.
//! - `Secrets::credentials()` gives what `render::render` needs.
//! - The metrics client certificate (ECDSA P-384, rcgen, 10 years) and its key live here too.
//!
//! Layout in the project config (values are never logged; errors name keys, never values):
//! - `user.atlas.secret.grafana-admin-password`, `user.atlas.secret.step-ca-password`
//! - `user.atlas.secret.mosquitto.<user>.password` and `.salt` (base64 of 12 bytes)
//! - `user.atlas.secret.metrics-certificate` and `.metrics-key` (PEM)
//!
//! Anyone who can read the project can read these; that is anyone with Incus admin rights,
//! who could read them from inside the containers anyway.
//!
//! Secrets of Mosquitto users that left the config stay stored: re-adding the user gives the
//! same password back, and nothing outside atlas reads them.

// Our errors carry `IncusError` (large, owned by the client module) by value so callers can
// match on it; boxing it would change the contract the install sequence is written against.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::incus::{Client, IncusError, OptionalExt as _};
use crate::render::{Credentials, MqttCredential};

/// Prefix of every stored secret in the project config.
pub const SECRET_PREFIX: &str = "user.atlas.secret.";
pub const KEY_GRAFANA_ADMIN: &str = "user.atlas.secret.grafana-admin-password";
pub const KEY_STEP_CA: &str = "user.atlas.secret.step-ca-password";
pub const KEY_METRICS_CERT: &str = "user.atlas.secret.metrics-certificate";
pub const KEY_METRICS_KEY: &str = "user.atlas.secret.metrics-key";
/// Common name of the client certificate Prometheus presents to Incus' `/1.0/metrics`.
pub const METRICS_CERT_CN: &str = "atlas-prometheus-metrics";
/// Length of generated passwords: 43 alphanumeric characters carry over 256 bits, and
/// contain nothing any config format, command line or URL needs to quote.
const PASSWORD_LEN: usize = 43;
const METRICS_CERT_YEARS: i32 = 10;
/// Attempts at storing new secrets when someone else changes the project in between.
const STORE_ATTEMPTS: usize = 3;

pub fn mosquitto_password_key(user: &str) -> String {
    format!("{SECRET_PREFIX}mosquitto.{user}.password")
}

pub fn mosquitto_salt_key(user: &str) -> String {
    format!("{SECRET_PREFIX}mosquitto.{user}.salt")
}

#[derive(Clone)]
pub struct Secrets {
    pub credentials: Credentials,
    /// PEM of the metrics client certificate Incus trusts as type `metrics`.
    pub metrics_cert_pem: String,
    /// PEM of its private key (pushed 0600 into the Prometheus container).
    pub metrics_key_pem: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("credentials", &self.credentials)
            .field("metrics_certificate", &self.metrics_fingerprint().ok())
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// What `render::render` needs.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// DER of the metrics client certificate (what Incus is given, base64-encoded).
    pub fn metrics_cert_der(&self) -> Result<Vec<u8>, SecretsError> {
        cert_der(&self.metrics_cert_pem, KEY_METRICS_CERT)
    }

    /// Incus' fingerprint of the metrics certificate (SHA-256 of the DER, hex).
    pub fn metrics_fingerprint(&self) -> Result<String, SecretsError> {
        Ok(crate::incus::cert_fingerprint(&self.metrics_cert_der()?))
    }

    /// A rustls client configuration presenting the metrics certificate, for a scraper on the
    /// host: the server is accepted only by the SHA-256 fingerprint `server_fingerprint`.
    pub fn metrics_tls_config(
        &self,
        server_fingerprint: &str,
    ) -> Result<rustls::ClientConfig, SecretsError> {
        let spec = crate::incus::RemoteSpec {
            url: String::new(),
            client_cert_pem: self.metrics_cert_pem.clone(),
            client_key_pem: self.metrics_key_pem.clone(),
            server_fingerprint: server_fingerprint.to_string(),
        };
        crate::incus::tls_config(&spec)
            .map_err(|e| SecretsError::Invalid(format!("metrics certificate: {e}")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(transparent)]
    Incus(#[from] IncusError),
    #[error("secret store: {0}")]
    Invalid(String),
    #[error(
        "the Incus project `{project}` does not exist, and the generated secrets are stored in its \
         config; create the project first (install step 3), or check `incus.project` in atlas.toml"
    )]
    MissingProject { project: String },
    #[error(
        "stored secret {key} in project `{project}` is unusable ({why}); it was not changed. \
         If it was edited by hand, restore it; or unset it (`incus project unset {project} {key}`) \
         to have a new one generated, which rotates it"
    )]
    Corrupt {
        project: String,
        key: String,
        why: String,
    },
}

/// Reads the stored secrets, generates and stores what is missing, and returns them all.
/// Zero writes when everything is stored.
pub async fn load_or_generate(client: &Client, config: &Config) -> Result<Secrets, SecretsError> {
    let project = &config.incus.project;
    let mut fresh: BTreeMap<String, String> = BTreeMap::new();
    for _ in 0..STORE_ATTEMPTS {
        let got = the_project(client, project).await?;
        let stored = &got.value.config;
        let missing = missing_keys(config, stored)?;
        // Values generated in an earlier attempt are reused: a retry must not hand out a
        // different password than the one a concurrent writer may already have seen.
        for key in &missing {
            if !fresh.contains_key(key) {
                fresh.extend(generate_for(key)?);
            }
        }
        if missing.is_empty() {
            return assemble(project, config, stored);
        }
        let mut next = got.value.clone();
        for key in &missing {
            if let Some(v) = fresh.get(key) {
                next.config.insert(key.clone(), v.clone());
            }
        }
        match client.update_project(&next, got.etag.as_deref()).await {
            Ok(()) => return assemble(project, config, &next.config),
            Err(IncusError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(SecretsError::Invalid(format!(
        "project `{project}` kept changing while new secrets were stored ({STORE_ATTEMPTS} attempts); run again"
    )))
}

/// Read-only, for plans: the stored secrets when every one the config needs is there; `None`
/// when the project does not exist or something would still be generated.
pub async fn load(client: &Client, config: &Config) -> Result<Option<Secrets>, SecretsError> {
    let project = &config.incus.project;
    let Some(got) = client.get_project(project).await.optional()? else {
        return Ok(None);
    };
    if !missing_keys(config, &got.value.config)?.is_empty() {
        return Ok(None);
    }
    assemble(project, config, &got.value.config).map(Some)
}

/// The names of the stored secrets (`user.atlas.secret.<name>`), sorted: what
/// `atlas-install secret list` shows. Names only, never values.
pub async fn stored_names(client: &Client, config: &Config) -> Result<Vec<String>, SecretsError> {
    Ok(stored(client, config)
        .await?
        .into_keys()
        .filter_map(|k| k.strip_prefix(SECRET_PREFIX).map(str::to_string))
        .collect())
}

/// One stored secret by name: `atlas-install secret get NAME`, the one command that exists
/// to show a secret. An unknown name is refused with the names there are.
pub async fn stored_value(
    client: &Client,
    config: &Config,
    name: &str,
) -> Result<String, SecretsError> {
    let all = stored(client, config).await?;
    let key = format!("{SECRET_PREFIX}{name}");
    all.get(&key).cloned().ok_or_else(|| {
        let names: Vec<&str> = all
            .keys()
            .filter_map(|k| k.strip_prefix(SECRET_PREFIX))
            .collect();
        SecretsError::Invalid(format!(
            "project `{}` stores no secret named `{name}`; stored: {}",
            config.incus.project,
            if names.is_empty() {
                "none (install first)".to_string()
            } else {
                names.join(", ")
            }
        ))
    })
}

async fn stored(
    client: &Client,
    config: &Config,
) -> Result<BTreeMap<String, String>, SecretsError> {
    let got = the_project(client, &config.incus.project).await?;
    Ok(got
        .value
        .config
        .into_iter()
        .filter(|(k, v)| k.starts_with(SECRET_PREFIX) && !v.is_empty())
        .collect())
}

/// The Atlas project, where the secrets live; its absence says what to do.
async fn the_project(
    client: &Client,
    project: &str,
) -> Result<crate::incus::Etagged<crate::incus::Project>, SecretsError> {
    client
        .get_project(project)
        .await
        .optional()?
        .ok_or_else(|| SecretsError::MissingProject {
            project: project.to_string(),
        })
}

/// Read-only, for plans: the stored secrets completed with freshly generated values (not
/// stored) for what is missing, and the names of those that would be generated.
pub async fn preview(
    client: &Client,
    config: &Config,
) -> Result<(Secrets, Vec<String>), SecretsError> {
    let project = &config.incus.project;
    let mut stored = match client.get_project(project).await.optional()? {
        Some(got) => got.value.config,
        None => BTreeMap::new(),
    };
    let missing = missing_keys(config, &stored)?;
    let mut generated = BTreeMap::new();
    for key in &missing {
        if !generated.contains_key(key) {
            generated.extend(generate_for(key)?);
        }
    }
    stored.extend(generated);
    let names = missing
        .iter()
        .map(|k| k.trim_start_matches(SECRET_PREFIX).to_string())
        .collect();
    Ok((assemble(project, config, &stored)?, names))
}

/// Every key the config needs, in a fixed order.
fn wanted_keys(config: &Config) -> Result<Vec<String>, SecretsError> {
    let mut keys = vec![KEY_GRAFANA_ADMIN.to_string(), KEY_STEP_CA.to_string()];
    for user in &config.mosquitto.users {
        check_user(user)?;
        keys.push(mosquitto_password_key(user));
        keys.push(mosquitto_salt_key(user));
    }
    keys.push(KEY_METRICS_CERT.to_string());
    keys.push(KEY_METRICS_KEY.to_string());
    Ok(keys)
}

fn missing_keys(
    config: &Config,
    stored: &BTreeMap<String, String>,
) -> Result<Vec<String>, SecretsError> {
    let mut missing: Vec<String> = wanted_keys(config)?
        .into_iter()
        .filter(|k| stored.get(k).is_none_or(|v| v.is_empty()))
        .collect();
    // The certificate and its key only make sense together: one without the other gets a new pair.
    let has = |k: &str| stored.get(k).is_some_and(|v| !v.is_empty());
    let half = has(KEY_METRICS_CERT) != has(KEY_METRICS_KEY);
    if half {
        for k in [KEY_METRICS_CERT, KEY_METRICS_KEY] {
            if !missing.iter().any(|m| m == k) {
                missing.push(k.to_string());
            }
        }
    }
    // Same for a Mosquitto user's salt and password.
    for user in &config.mosquitto.users {
        let (p, s) = (mosquitto_password_key(user), mosquitto_salt_key(user));
        if has(&p) != has(&s) {
            for k in [p, s] {
                if !missing.contains(&k) {
                    missing.push(k);
                }
            }
        }
    }
    Ok(missing)
}

/// Mosquitto user names become part of config keys; render refuses the rest of what
/// Mosquitto cannot take.
fn check_user(user: &str) -> Result<(), SecretsError> {
    if user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SecretsError::Invalid(format!(
            "mosquitto.users has {:?}: user names must be non-empty words without spaces",
            user.escape_debug().to_string()
        )));
    }
    Ok(())
}

/// New values for `key` and, for halves of a pair, for its partner.
pub(crate) fn generate_for(key: &str) -> Result<BTreeMap<String, String>, SecretsError> {
    let mut out = BTreeMap::new();
    if key == KEY_METRICS_CERT || key == KEY_METRICS_KEY {
        let (cert, pk) = generate_metrics_certificate()?;
        out.insert(KEY_METRICS_CERT.to_string(), cert);
        out.insert(KEY_METRICS_KEY.to_string(), pk);
    } else if let Some(user) = key
        .strip_prefix(SECRET_PREFIX)
        .and_then(|k| k.strip_prefix("mosquitto."))
        .and_then(|k| {
            k.strip_suffix(".password")
                .or_else(|| k.strip_suffix(".salt"))
        })
    {
        out.insert(mosquitto_password_key(user), password());
        out.insert(mosquitto_salt_key(user), STANDARD.encode(salt()));
    } else {
        out.insert(key.to_string(), password());
    }
    Ok(out)
}

/// A password from the thread-local CSPRNG (ChaCha seeded by the OS).
pub fn password() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect()
}

fn salt() -> [u8; 12] {
    rand::rng().random()
}

/// A self-signed ECDSA P-384 client certificate for Incus' `/1.0/metrics`, valid 10 years
/// from yesterday (a little slack for clocks that lag). Returns (certificate PEM, key PEM).
pub fn generate_metrics_certificate() -> Result<(String, String), SecretsError> {
    let fail =
        |e: rcgen::Error| SecretsError::Invalid(format!("generating the metrics certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, METRICS_CERT_CN);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "atlas-install");
    let (y, m, d) = civil_date_days_ago(1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    // Day 28 at most: the same date ten years on always exists.
    params.not_after = rcgen::date_time_ymd(y + METRICS_CERT_YEARS, m, d.min(28));
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// UTC calendar date `days` days before now, from the system clock (no date library).
fn civil_date_days_ago(days: u64) -> (i32, u8, u8) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    civil_from_days((secs / 86_400).saturating_sub(days) as i64)
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

/// Builds [`Secrets`] from a complete store, checking every value (never echoing it).
fn assemble(
    project: &str,
    config: &Config,
    stored: &BTreeMap<String, String>,
) -> Result<Secrets, SecretsError> {
    let corrupt = |key: &str, why: &str| SecretsError::Corrupt {
        project: project.to_string(),
        key: key.to_string(),
        why: why.to_string(),
    };
    let get = |key: &str| -> Result<String, SecretsError> {
        stored
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| corrupt(key, "it is missing"))
    };
    let mut mosquitto = BTreeMap::new();
    for user in &config.mosquitto.users {
        let salt_key = mosquitto_salt_key(user);
        let salt: [u8; 12] = STANDARD
            .decode(get(&salt_key)?.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt(&salt_key, "not the base64 of 12 bytes"))?;
        mosquitto.insert(
            user.clone(),
            MqttCredential {
                password: get(&mosquitto_password_key(user))?,
                salt,
            },
        );
    }
    let secrets = Secrets {
        credentials: Credentials {
            grafana_admin_password: get(KEY_GRAFANA_ADMIN)?,
            step_ca_password: get(KEY_STEP_CA)?,
            mosquitto,
        },
        metrics_cert_pem: get(KEY_METRICS_CERT)?,
        metrics_key_pem: get(KEY_METRICS_KEY)?,
    };
    check_pair(&secrets.metrics_cert_pem, &secrets.metrics_key_pem)
        .map_err(|why| corrupt(KEY_METRICS_CERT, &why))?;
    Ok(secrets)
}

fn cert_der(pem: &str, key: &str) -> Result<Vec<u8>, SecretsError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|_| SecretsError::Invalid(format!("{key} holds no PEM certificate")))
}

/// The certificate parses and the key is the one it was made for. Messages name the problem,
/// never the material.
fn check_pair(cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|_| "no PEM certificate".to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| format!("{KEY_METRICS_KEY} holds no PEM private key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| format!("{KEY_METRICS_KEY} is not a usable private key"))?;
    rustls::sign::CertifiedKey::new(vec![cert], signing)
        .keys_match()
        .map_err(|_| format!("the certificate does not belong to the key in {KEY_METRICS_KEY}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_users(users: &[&str]) -> Config {
        let mut c = Config::builtin();
        c.mosquitto.users = users.iter().map(|u| u.to_string()).collect();
        c
    }

    fn complete_store(config: &Config) -> BTreeMap<String, String> {
        let mut s = BTreeMap::new();
        for k in wanted_keys(config).unwrap() {
            s.extend(generate_for(&k).unwrap());
        }
        s
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_453), (2025, 12, 31));
    }

    #[test]
    fn passwords_are_long_alphanumeric_and_differ() {
        let (a, b) = (password(), password());
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn metrics_certificate_is_p384_client_cert_with_the_cn() {
        let (cert, key) = generate_metrics_certificate().unwrap();
        assert!(
            cert.starts_with("-----BEGIN CERTIFICATE-----"),
            "PEM certificate"
        );
        assert!(key.contains("PRIVATE KEY"));
        check_pair(&cert, &key).unwrap();
        let der = cert_der(&cert, "x").unwrap();
        // The CN and the P-384 curve OID (1.3.132.0.34) are in the DER.
        assert!(
            der.windows(METRICS_CERT_CN.len())
                .any(|w| w == METRICS_CERT_CN.as_bytes())
        );
        assert!(
            der.windows(7)
                .any(|w| w == [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22])
        );
        let (other, other_key) = generate_metrics_certificate().unwrap();
        assert_ne!(cert, other);
        assert!(
            check_pair(&cert, &other_key)
                .unwrap_err()
                .contains("does not belong")
        );
    }

    #[test]
    fn missing_keys_cover_users_and_pairs() {
        let cfg = config_with_users(&["atlas", "sensor"]);
        let mut store = complete_store(&cfg);
        assert!(missing_keys(&cfg, &store).unwrap().is_empty());
        let more = config_with_users(&["atlas", "sensor", "new"]);
        assert_eq!(
            missing_keys(&more, &store).unwrap(),
            vec![mosquitto_password_key("new"), mosquitto_salt_key("new")]
        );
        store.remove(KEY_METRICS_KEY);
        let m = missing_keys(&cfg, &store).unwrap();
        assert!(
            m.contains(&KEY_METRICS_CERT.to_string()) && m.contains(&KEY_METRICS_KEY.to_string()),
            "{m:?}"
        );
        store.insert(mosquitto_salt_key("atlas"), String::new());
        assert!(
            missing_keys(&cfg, &store)
                .unwrap()
                .contains(&mosquitto_password_key("atlas"))
        );
        assert!(check_user("a b").is_err() && check_user("").is_err());
    }

    #[test]
    fn assemble_checks_values_without_echoing_them() {
        let cfg = config_with_users(&["atlas"]);
        let mut store = complete_store(&cfg);
        let s = assemble("atlas", &cfg, &store).unwrap();
        let shown = format!("{s:?}");
        for v in [
            &s.credentials.grafana_admin_password,
            &s.credentials.mosquitto["atlas"].password,
        ] {
            assert!(!shown.contains(v.as_str()), "{shown}");
        }
        assert!(!shown.contains("PRIVATE KEY"));
        assert_eq!(s.metrics_fingerprint().unwrap().len(), 64);

        store.insert(mosquitto_salt_key("atlas"), "c2hvcnQ=".into());
        let e = assemble("atlas", &cfg, &store).unwrap_err().to_string();
        assert!(
            e.contains(&mosquitto_salt_key("atlas"))
                && e.contains("12 bytes")
                && !e.contains("c2hvcnQ"),
            "{e}"
        );
        let mut store = complete_store(&cfg);
        let (_, other_key) = generate_metrics_certificate().unwrap();
        store.insert(KEY_METRICS_KEY.into(), other_key.clone());
        let e = assemble("atlas", &cfg, &store).unwrap_err().to_string();
        assert!(
            e.contains("does not belong") && !e.contains("PRIVATE"),
            "{e}"
        );
    }
}
