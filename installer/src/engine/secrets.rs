//! Generated secrets of a deployment: made once, stored in Incus (the Atlas project's state,
//! [`crate::state::SecretStore`]), reused on every re-run and upgrade, never printed.
//!
//! CONTRACT (the install sequence relies on it):
//! - `load_or_generate(client, config)` returns the stored [`Secrets`] and generates and
//!   stores what is missing (a new Mosquitto user, a first install). It is the only writer.
//!   Must be called after the project exists. Zero writes when everything is stored.
//! - `Secrets::credentials()` gives what `render::render` needs.
//! - The metrics client certificate (ECDSA P-384, rcgen, 10 years) and its key live here too,
//!   and the key of the HMACs that stand for pushed files in hashes, records and saved plans.
//!
//! Names in the store (values are never logged; errors name keys, never values): see
//! [`crate::state::keys::secrets`]: `grafana-admin-password`, `step-ca-password`,
//! `mosquitto.<user>.password` and `.salt` (base64 of 12 bytes), `metrics-certificate` and
//! `metrics-key` (PEM), `hash-key`.
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
use crate::incus::{Client, IncusError};
use crate::render::{Credentials, MqttCredential};
use crate::state::keys::{self, secrets as name};
use crate::state::{SecretStore, StateError};

/// Common name of the client certificate Prometheus presents to Incus' `/1.0/metrics`.
pub const METRICS_CERT_CN: &str = "atlas-prometheus-metrics";
/// Length of generated passwords: 43 alphanumeric characters carry over 256 bits, and
/// contain nothing any config format, command line or URL needs to quote.
const PASSWORD_LEN: usize = 43;
const METRICS_CERT_YEARS: i32 = 10;

#[derive(Clone)]
pub struct Secrets {
    pub credentials: Credentials,
    /// PEM of the metrics client certificate Incus trusts as type `metrics`.
    pub metrics_cert_pem: String,
    /// PEM of its private key (pushed 0600 into the Prometheus container).
    pub metrics_key_pem: String,
    /// Key of the HMACs standing for pushed files (see [`Secrets::file_digest`]).
    pub hash_key: String,
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
        cert_der(&self.metrics_cert_pem, &keys::secret(name::METRICS_CERT))
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

impl From<StateError> for SecretsError {
    fn from(e: StateError) -> SecretsError {
        match e {
            StateError::Incus(e) => SecretsError::Incus(*e),
            StateError::MissingProject { project } => SecretsError::MissingProject { project },
            other => SecretsError::Invalid(other.to_string()),
        }
    }
}

/// Reads the stored secrets, generates and stores what is missing, and returns them all.
/// Zero writes when everything is stored.
pub async fn load_or_generate(client: &Client, config: &Config) -> Result<Secrets, SecretsError> {
    let project = &config.incus.project;
    // Values generated in an earlier attempt are reused: a retry must not hand out a
    // different password than the one a concurrent writer may already have seen.
    let mut fresh: BTreeMap<String, String> = BTreeMap::new();
    crate::state::update(client, project, |s| {
        let missing = missing_names(config, &s.secrets)?;
        for n in &missing {
            if !fresh.contains_key(n) {
                fresh.extend(generate_for(n)?);
            }
        }
        for n in &missing {
            if let Some(v) = fresh.get(n) {
                s.secrets.set(n, v.clone());
            }
        }
        assemble(project, config, &s.secrets)
    })
    .await
}

/// Read-only, for plans: the stored secrets when every one the config needs is there; `None`
/// when the project does not exist or something would still be generated.
pub async fn load(client: &Client, config: &Config) -> Result<Option<Secrets>, SecretsError> {
    let project = &config.incus.project;
    let Some(s) = crate::state::read(client, project).await? else {
        return Ok(None);
    };
    if !missing_names(config, &s.secrets)?.is_empty() {
        return Ok(None);
    }
    assemble(project, config, &s.secrets).map(Some)
}

/// The names of the stored secrets (`user.atlas.secret.<name>`), sorted: what
/// `atlas-install secret list` shows. Names only, never values.
pub async fn stored_names(client: &Client, config: &Config) -> Result<Vec<String>, SecretsError> {
    Ok(stored(client, config).await?.names())
}

/// One stored secret by name: `atlas-install secret get NAME`, the one command that exists
/// to show a secret. An unknown name is refused with the names there are.
pub async fn stored_value(
    client: &Client,
    config: &Config,
    secret: &str,
) -> Result<String, SecretsError> {
    let all = stored(client, config).await?;
    all.get(secret).map(str::to_string).ok_or_else(|| {
        let names = all.names();
        SecretsError::Invalid(format!(
            "project `{}` stores no secret named `{secret}`; stored: {}",
            config.incus.project,
            if names.is_empty() {
                "none (install first)".to_string()
            } else {
                names.join(", ")
            }
        ))
    })
}

/// The store of the Atlas project, whose absence says what to do.
async fn stored(client: &Client, config: &Config) -> Result<SecretStore, SecretsError> {
    let project = &config.incus.project;
    Ok(crate::state::read(client, project)
        .await?
        .ok_or_else(|| SecretsError::MissingProject {
            project: project.to_string(),
        })?
        .secrets)
}

/// Read-only, for plans: the stored secrets completed with freshly generated values (not
/// stored) for what is missing, and the names of those that would be generated.
pub async fn preview(
    client: &Client,
    config: &Config,
) -> Result<(Secrets, Vec<String>), SecretsError> {
    let project = &config.incus.project;
    let mut stored = crate::state::read(client, project)
        .await?
        .map(|s| s.secrets)
        .unwrap_or_default();
    let missing = missing_names(config, &stored)?;
    let mut generated = BTreeMap::new();
    for n in &missing {
        if !generated.contains_key(n) {
            generated.extend(generate_for(n)?);
        }
    }
    for (n, v) in generated {
        stored.set(&n, v);
    }
    Ok((assemble(project, config, &stored)?, missing))
}

/// Every secret the config needs, in a fixed order.
fn wanted_names(config: &Config) -> Result<Vec<String>, SecretsError> {
    let mut names = vec![name::GRAFANA_ADMIN.to_string(), name::STEP_CA.to_string()];
    for user in &config.mosquitto.users {
        check_user(user)?;
        names.push(name::mosquitto_password(user));
        names.push(name::mosquitto_salt(user));
    }
    names.push(name::METRICS_CERT.to_string());
    names.push(name::METRICS_KEY.to_string());
    names.push(name::HASH_KEY.to_string());
    Ok(names)
}

fn missing_names(config: &Config, stored: &SecretStore) -> Result<Vec<String>, SecretsError> {
    let mut missing: Vec<String> = wanted_names(config)?
        .into_iter()
        .filter(|n| !stored.has(n))
        .collect();
    // The certificate and its key only make sense together: one without the other gets a new pair.
    let mut pairs = vec![(
        name::METRICS_CERT.to_string(),
        name::METRICS_KEY.to_string(),
    )];
    // Same for a Mosquitto user's salt and password.
    for user in &config.mosquitto.users {
        pairs.push((name::mosquitto_password(user), name::mosquitto_salt(user)));
    }
    for (a, b) in pairs {
        if stored.has(&a) != stored.has(&b) {
            for n in [a, b] {
                if !missing.contains(&n) {
                    missing.push(n);
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

/// New values for secret `secret` and, for halves of a pair, for its partner.
pub(crate) fn generate_for(secret: &str) -> Result<BTreeMap<String, String>, SecretsError> {
    let mut out = BTreeMap::new();
    if secret == name::METRICS_CERT || secret == name::METRICS_KEY {
        let (cert, pk) = generate_metrics_certificate()?;
        out.insert(name::METRICS_CERT.to_string(), cert);
        out.insert(name::METRICS_KEY.to_string(), pk);
    } else if let Some(user) = name::mosquitto_user(secret) {
        out.insert(name::mosquitto_password(user), password());
        out.insert(name::mosquitto_salt(user), STANDARD.encode(salt()));
    } else {
        out.insert(secret.to_string(), password());
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

/// UTC calendar date `days` days before now, from the system clock.
fn civil_date_days_ago(days: u64) -> (i32, u8, u8) {
    let (y, m, d) = crate::clock::date(crate::clock::now_secs().saturating_sub(days * 86_400));
    (y as i32, m as u8, d as u8)
}

/// Builds [`Secrets`] from a complete store, checking every value (never echoing it).
fn assemble(project: &str, config: &Config, stored: &SecretStore) -> Result<Secrets, SecretsError> {
    let corrupt = |secret: &str, why: &str| SecretsError::Corrupt {
        project: project.to_string(),
        key: keys::secret(secret),
        why: why.to_string(),
    };
    let get = |secret: &str| -> Result<String, SecretsError> {
        stored
            .get(secret)
            .map(str::to_string)
            .ok_or_else(|| corrupt(secret, "it is missing"))
    };
    let mut mosquitto = BTreeMap::new();
    for user in &config.mosquitto.users {
        let salt_name = name::mosquitto_salt(user);
        let salt: [u8; 12] = STANDARD
            .decode(get(&salt_name)?.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt(&salt_name, "not the base64 of 12 bytes"))?;
        mosquitto.insert(
            user.clone(),
            MqttCredential {
                password: get(&name::mosquitto_password(user))?,
                salt,
            },
        );
    }
    let secrets = Secrets {
        credentials: Credentials {
            grafana_admin_password: get(name::GRAFANA_ADMIN)?,
            step_ca_password: get(name::STEP_CA)?,
            mosquitto,
        },
        metrics_cert_pem: get(name::METRICS_CERT)?,
        metrics_key_pem: get(name::METRICS_KEY)?,
        hash_key: get(name::HASH_KEY)?,
    };
    check_pair(&secrets.metrics_cert_pem, &secrets.metrics_key_pem)
        .map_err(|why| corrupt(name::METRICS_CERT, &why))?;
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
    let key_name = keys::secret(name::METRICS_KEY);
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| format!("{key_name} holds no PEM private key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|_| format!("{key_name} is not a usable private key"))?;
    rustls::sign::CertifiedKey::new(vec![cert], signing)
        .keys_match()
        .map_err(|_| format!("the certificate does not belong to the key in {key_name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_users(users: &[&str]) -> Config {
        let mut c = Config::builtin();
        c.mosquitto.users = users.iter().map(|u| u.to_string()).collect();
        c
    }

    fn complete_store(config: &Config) -> SecretStore {
        let mut s = SecretStore::default();
        for n in wanted_names(config).unwrap() {
            for (k, v) in generate_for(&n).unwrap() {
                s.set(&k, v);
            }
        }
        s
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
        assert!(missing_names(&cfg, &store).unwrap().is_empty());
        let more = config_with_users(&["atlas", "sensor", "new"]);
        assert_eq!(
            missing_names(&more, &store).unwrap(),
            vec![name::mosquitto_password("new"), name::mosquitto_salt("new")]
        );
        store.remove(name::METRICS_KEY);
        let m = missing_names(&cfg, &store).unwrap();
        assert!(
            m.contains(&name::METRICS_CERT.to_string())
                && m.contains(&name::METRICS_KEY.to_string()),
            "{m:?}"
        );
        store.set(&name::mosquitto_salt("atlas"), String::new());
        assert!(
            missing_names(&cfg, &store)
                .unwrap()
                .contains(&name::mosquitto_password("atlas"))
        );
        // The hash key is one of them too.
        store.remove(name::HASH_KEY);
        assert!(
            missing_names(&cfg, &store)
                .unwrap()
                .contains(&name::HASH_KEY.to_string())
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

        store.set(&name::mosquitto_salt("atlas"), "c2hvcnQ=".into());
        let e = assemble("atlas", &cfg, &store).unwrap_err().to_string();
        assert!(
            e.contains(&keys::secret(&name::mosquitto_salt("atlas")))
                && e.contains("12 bytes")
                && !e.contains("c2hvcnQ"),
            "{e}"
        );
        let mut store = complete_store(&cfg);
        let (_, other_key) = generate_metrics_certificate().unwrap();
        store.set(name::METRICS_KEY, other_key.clone());
        let e = assemble("atlas", &cfg, &store).unwrap_err().to_string();
        assert!(
            e.contains("does not belong") && !e.contains("PRIVATE"),
            "{e}"
        );
    }
}
