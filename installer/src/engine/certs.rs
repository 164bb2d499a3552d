//! The services' own TLS (`tls = true`, and `[mosquitto] tls`): a key and a certificate from
//! step-ca for each, and the Atlas root for every service that trusts it (`render` lists these
//! files as coming from step-ca; see `FileSource::is_step_ca`).
//!
//! 1. step-ca01 is made ready for it first (`step_ca::ensure_config`: metrics on, service
//!    certificates of up to [`CERT_LIFETIME`]).
//! 2. A certificate is (re-)issued when the instance has none, or its key is missing or does
//!    not match it, or it does not verify against the current root for every name the service
//!    is reached by, or less than a third of its lifetime is left ([`assess`]). The key is
//!    generated here (ECDSA P-256) and goes only to the service's own instance (0600, the
//!    service user's); step-ca01 sees its certificate request alone (`step_ca::sign`).
//! 3. An instance being created or rebuilt gets these files before its first start (the
//!    instances step asks [`Issuer::files_for`]); one that stays gets them in the certificates
//!    step and is restarted, since services read certificates at start ([`Issuer::refresh`]).
//!
//! Certificates and keys are never part of an instance's hash: a renewal restarts the service
//! and changes nothing else. A converged run reads (GETs) and writes nothing; `plan` says
//! what would be issued, and why ([`plan`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{Config, ServiceKind};
use crate::deployment::Deployment;
use crate::incus::{Client, Instance, OptionalExt as _, StateAction};
use crate::progress::Progress;
use crate::render::{ExpectedFile, FileSource, hostname};

use super::error::EngineError;
use super::state::{InstancePayload, PushFile};
use super::step_ca::{self, CERT_LIFETIME, ConfigState};
use rcgen::PublicKeyData as _;

/// What a certificate found in an instance is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertState {
    /// Good for now: verifies for every name, more than a third of its lifetime left.
    Fresh { not_after: u64 },
    /// Must be (re-)issued, and why.
    Issue(Reason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Missing,
    /// Not a certificate chain we can read, or a key that is missing or not its key.
    Unusable(String),
    /// Does not chain to the current root (the CA was re-created), or is otherwise refused.
    Untrusted(String),
    /// Lacks names the service is reached by (an address changed).
    Names(Vec<String>),
    /// Less than a third of its lifetime left, or expired.
    Due {
        not_after: u64,
        left: u64,
        lifetime: u64,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Missing => write!(f, "none yet"),
            Reason::Unusable(why) => write!(f, "unusable ({why})"),
            Reason::Untrusted(why) => write!(f, "not trusted through the current root ({why})"),
            Reason::Names(n) => write!(f, "not valid for {}", n.join(", ")),
            Reason::Due {
                left: 0, not_after, ..
            } => {
                write!(f, "expired {}", crate::clock::rfc3339(*not_after))
            }
            Reason::Due {
                not_after,
                left,
                lifetime,
            } => {
                // Whole days for certificates of days, hours for shorter ones.
                let (unit, div) = match *lifetime >= 2 * 86_400 {
                    true => ("days", 86_400),
                    false => ("hours", 3_600),
                };
                write!(
                    f,
                    "{} of its {} {unit} left, less than a third (expires {})",
                    left / div,
                    lifetime / div,
                    crate::clock::rfc3339(*not_after)
                )
            }
        }
    }
}

fn days(secs: u64) -> u64 {
    secs / 86_400
}

/// One thing `install` would do for TLS (plans, never secret values).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertChange {
    /// `certificate <instance>`, `root <instance>`, `step-ca <instance>`.
    pub what: String,
    pub detail: String,
}

impl std::fmt::Display for CertChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "~ {}: {}", self.what, self.detail)
    }
}

/// The names a service's certificate carries: `<instance>.incus`, `<instance>` and every fixed
/// address (the host reaches services by address, Incus ships logs to Loki by address), plus
/// the member address it is published on in a cluster.
pub fn names_for(d: &Deployment, name: &str) -> Vec<String> {
    let mut out = vec![hostname(name), name.to_string()];
    if let Some(inst) = d.instance(name) {
        for n in &inst.nics {
            out.extend(n.ipv4.map(|a| a.to_string()));
            out.extend(n.ipv6.map(|a| a.to_string()));
        }
        if let Some(m) = d.published_on(name) {
            out.push(m.host.trim_matches(['[', ']']).to_string());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|n| seen.insert(n.clone()));
    out
}

/// Judges a certificate chain (PEM: leaf, then intermediates) and its key against the root
/// (DER), the names the service must be valid for, at `now` (seconds since the epoch).
pub fn assess(
    chain_pem: &[u8],
    key_pem: Option<&[u8]>,
    root_der: &[u8],
    names: &[String],
    now: u64,
) -> CertState {
    let chain: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_slice_iter(chain_pem).collect::<Result<_, _>>() {
            Ok(c) => c,
            Err(e) => return CertState::Issue(Reason::Unusable(format!("not PEM: {e}"))),
        };
    let Some((leaf, intermediates)) = chain.split_first() else {
        return CertState::Issue(Reason::Unusable("no certificate in the file".into()));
    };
    let (not_before, not_after, spki) = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, c)) => (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
            c.public_key().raw.to_vec(),
        ),
        Err(e) => return CertState::Issue(Reason::Unusable(format!("not X.509: {e}"))),
    };
    match key_pem.map(|k| {
        std::str::from_utf8(k)
            .ok()
            .and_then(|k| rcgen::KeyPair::from_pem(k).ok())
    }) {
        None => return CertState::Issue(Reason::Unusable("its key is missing".into())),
        Some(None) => return CertState::Issue(Reason::Unusable("its key is unreadable".into())),
        Some(Some(k)) if k.subject_public_key_info() != spki => {
            return CertState::Issue(Reason::Unusable("the key is not the certificate's".into()));
        }
        Some(Some(_)) => {}
    }
    let verifier = match verifier(root_der) {
        Ok(v) => v,
        Err(e) => return CertState::Issue(Reason::Untrusted(e)),
    };
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now));
    let not_after = u64::try_from(not_after).unwrap_or(0);
    let lifetime = not_after.saturating_sub(u64::try_from(not_before).unwrap_or(0));
    let left = not_after.saturating_sub(now);
    let mut missing = Vec::new();
    for n in names {
        let Ok(server) = ServerName::try_from(n.as_str()) else {
            missing.push(n.clone());
            continue;
        };
        match verifier.verify_server_cert(leaf, intermediates, &server, &[], at) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => missing.push(n.clone()),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. },
            )) => {
                return CertState::Issue(Reason::Due {
                    not_after,
                    left: 0,
                    lifetime,
                });
            }
            Err(e) => return CertState::Issue(Reason::Untrusted(e.to_string())),
        }
    }
    if !missing.is_empty() {
        return CertState::Issue(Reason::Names(missing));
    }
    if left.saturating_mul(3) < lifetime {
        return CertState::Issue(Reason::Due {
            not_after,
            left,
            lifetime,
        });
    }
    CertState::Fresh { not_after }
}

fn verifier(root_der: &[u8]) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root_der.to_vec()))
        .map_err(|e| format!("the root does not parse: {e}"))?;
    WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())
}

/// DER of the first certificate in `pem`.
fn first_der(pem: &[u8]) -> Option<Vec<u8>> {
    CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

/// A new P-256 key and a certificate request for `names` (the first is the common name), in
/// PEM: (key, request).
fn key_and_request(names: &[String]) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating a key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| format!("certificate names {names:?}: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].as_str());
    let csr = params
        .serialize_request(&key)
        .and_then(|r| r.pem())
        .map_err(|e| format!("making the certificate request: {e}"))?;
    Ok((key.serialize_pem(), csr))
}

/// The step-ca files one instance gets, from `render`'s list.
struct Wanted<'p> {
    root: Option<&'p ExpectedFile>,
    cert: Option<(&'p ExpectedFile, &'p ExpectedFile)>,
}

fn wanted(payload: &InstancePayload) -> Wanted<'_> {
    let find = |s: FileSource| payload.from_step_ca.iter().find(|e| e.source == s);
    Wanted {
        root: find(FileSource::StepCaRoot),
        cert: find(FileSource::ServiceCertificate).zip(find(FileSource::ServiceKey)),
    }
}

fn push_file(e: &ExpectedFile, contents: impl Into<Vec<u8>>) -> PushFile {
    PushFile {
        path: e.path.clone(),
        contents: contents.into(),
        uid: e.uid,
        gid: e.gid,
        mode: e.mode,
    }
}

/// The step-ca instance (Atlas has one).
pub fn step_ca_name(config: &Config) -> Option<&str> {
    config
        .instances_of(ServiceKind::StepCa)
        .first()
        .map(|(n, _)| *n)
}

/// What [`Issuer`] would do, from GETs only: `instances` are the ones that exist.
pub async fn plan(
    client: &Client,
    d: &Deployment,
    payloads: &BTreeMap<String, InstancePayload>,
    instances: &BTreeMap<String, Instance>,
    now: u64,
) -> Result<Vec<CertChange>, EngineError> {
    let config = &d.config;
    let Some(ca_name) = step_ca_name(config) else {
        return Ok(Vec::new());
    };
    let project = client.in_project(&config.incus.project);
    let state = match instances.contains_key(ca_name) {
        true => step_ca::config_change(&project, ca_name).await?,
        false => None,
    };
    let mut out: Vec<CertChange> = ca_change(ca_name, state).into_iter().collect();
    let root = match state {
        Some(_) => step_ca::root_pem(&project, ca_name).await?,
        None => None,
    };
    for (name, payload) in payloads {
        let w = wanted(payload);
        match (&root, instances.contains_key(name)) {
            (Some(root), true) => {
                let held = Held {
                    project: &project,
                    name,
                    root,
                };
                out.extend(held.changes(d, ca_name, &w, now).await?);
            }
            // No CA answering yet, or no instance: its certificate comes before it starts.
            _ if w.cert.is_some() => out.push(CertChange {
                what: format!("certificate {name}"),
                detail: format!(
                    "issued by {ca_name} ({} days) before {name} starts",
                    days(CERT_LIFETIME.as_secs())
                ),
            }),
            _ => {}
        }
    }
    Ok(out)
}

/// What step-ca's own config gets, from its [`ConfigState`] (`None`: not started yet).
fn ca_change(ca_name: &str, state: Option<ConfigState>) -> Option<CertChange> {
    let detail = match state {
        Some(ConfigState::Current) => return None,
        Some(ConfigState::Changes) => format!(
            "ca.json gets metricsAddress :{} and service certificates of up to {} (step-ca restarts)",
            crate::render::STEP_CA_METRICS_PORT,
            step_ca::MAX_CERT_DURATION
        ),
        None => "ca.json gets metricsAddress and the service certificates' lifetime after its first start".into(),
    };
    Some(CertChange {
        what: format!("step-ca {ca_name}"),
        detail,
    })
}

/// An existing instance, seen while step-ca answers with its `root` (PEM).
struct Held<'a> {
    project: &'a Client,
    name: &'a str,
    root: &'a str,
}

impl Held<'_> {
    /// The root and certificate changes the instance needs, from what it holds now.
    async fn changes(
        &self,
        d: &Deployment,
        ca_name: &str,
        w: &Wanted<'_>,
        now: u64,
    ) -> Result<Vec<CertChange>, EngineError> {
        let (project, name, root) = (self.project, self.name, self.root);
        let mut out = Vec::new();
        if let Some(e) = w.root
            && project
                .pull_file(name, &e.path)
                .await
                .optional()?
                .as_deref()
                != Some(root.as_bytes())
        {
            out.push(CertChange {
                what: format!("root {name}"),
                detail: format!("{} gets the Atlas root of {ca_name}", e.path),
            });
        }
        if let Some((cert, key)) = w.cert
            && let CertState::Issue(why) =
                current_state(project, name, cert, key, root, &names_for(d, name), now).await?
        {
            out.push(CertChange {
                what: format!("certificate {name}"),
                detail: format!(
                    "re-issued by {ca_name} ({} days; {name} restarts): {why}",
                    days(CERT_LIFETIME.as_secs())
                ),
            });
        }
        Ok(out)
    }
}

/// [`assess`] of what `name` holds now.
async fn current_state(
    project: &Client,
    name: &str,
    cert: &ExpectedFile,
    key: &ExpectedFile,
    root_pem: &str,
    names: &[String],
    now: u64,
) -> Result<CertState, EngineError> {
    let Some(chain) = project.pull_file(name, &cert.path).await.optional()? else {
        return Ok(CertState::Issue(Reason::Missing));
    };
    let key = project.pull_file(name, &key.path).await.optional()?;
    let Some(root) = first_der(root_pem.as_bytes()) else {
        return Ok(CertState::Issue(Reason::Untrusted(
            "step-ca's root certificate does not parse".into(),
        )));
    };
    Ok(assess(&chain, key.as_deref(), &root, names, now))
}

/// A TLS service's certificate as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertStatus {
    pub instance: String,
    /// `fresh`, or `due` / `missing` when the next `install` issues one.
    pub state: String,
    /// RFC 3339, when one was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub detail: String,
}

/// The certificate of every TLS service, judged as `install` will judge it (GETs only).
pub async fn status(client: &Client, d: &Deployment) -> Result<Vec<CertStatus>, EngineError> {
    let config = &d.config;
    let Some(ca_name) = step_ca_name(config) else {
        return Ok(Vec::new());
    };
    let project = client.in_project(&config.incus.project);
    let root = step_ca::root_pem(&project, ca_name).await.ok().flatten();
    let mut out = Vec::new();
    for (name, inst) in config.enabled_instances() {
        let tls = inst.tls || (inst.service == ServiceKind::Mosquitto && config.mosquitto.tls);
        if !tls {
            continue;
        }
        let (cert, key) = crate::render::paths::service_cert(inst.service);
        let chain = project.pull_file(name, &cert).await.optional()?;
        let key = project.pull_file(name, &key).await.optional()?;
        let state = match (&chain, &root) {
            (None, _) => CertState::Issue(Reason::Missing),
            (Some(_), None) => {
                out.push(CertStatus {
                    instance: name.to_string(),
                    state: "unknown".into(),
                    expires: None,
                    detail: format!("{ca_name} has no root to check it against (not running?)"),
                });
                continue;
            }
            (Some(c), Some(r)) => match first_der(r.as_bytes()) {
                Some(r) => assess(
                    c,
                    key.as_deref(),
                    &r,
                    &names_for(d, name),
                    crate::clock::now_secs(),
                ),
                None => CertState::Issue(Reason::Untrusted("the root does not parse".into())),
            },
        };
        out.push(match state {
            CertState::Fresh { not_after } => {
                let lifetime = CERT_LIFETIME.as_secs();
                CertStatus {
                    instance: name.to_string(),
                    state: "fresh".into(),
                    expires: Some(crate::clock::rfc3339(not_after)),
                    detail: format!(
                        "`install` re-issues it from {} (a third of its lifetime left)",
                        crate::clock::rfc3339(not_after.saturating_sub(lifetime / 3))
                    ),
                }
            }
            CertState::Issue(why) => CertStatus {
                instance: name.to_string(),
                state: match why {
                    Reason::Missing => "missing",
                    _ => "due",
                }
                .into(),
                expires: match why {
                    Reason::Due { not_after, .. } => Some(crate::clock::rfc3339(not_after)),
                    _ => None,
                },
                detail: format!("the next `install` issues a new one: {why}"),
            },
        });
    }
    Ok(out)
}

/// Issues certificates during an apply (see the module docs). Created once per apply; the CA
/// is made ready on first need.
pub struct Issuer<'a> {
    client: &'a Client,
    d: &'a Deployment,
    config: &'a Config,
    /// Opens the JWK provisioner's key: the step-ca password (one password for keys and
    /// provisioner, as the upstream initialisation makes it; rotated together).
    password: String,
    timeout: Duration,
    progress: &'a dyn Progress,
    ca: tokio::sync::OnceCell<Ca>,
}

struct Ca {
    name: String,
    root_pem: String,
    root_der: Vec<u8>,
}

impl<'a> Issuer<'a> {
    pub fn new(
        client: &'a Client,
        d: &'a Deployment,
        password: &str,
        timeout: Duration,
        progress: &'a dyn Progress,
    ) -> Issuer<'a> {
        Issuer {
            client,
            d,
            config: &d.config,
            password: password.to_string(),
            timeout,
            progress,
            ca: tokio::sync::OnceCell::new(),
        }
    }

    fn project(&self) -> Client {
        self.client.in_project(&self.config.incus.project)
    }

    /// step-ca ready (healthy, ca.json as [`step_ca::ensure_config`] wants it) and its root.
    async fn ca(&self) -> Result<&Ca, EngineError> {
        self.ca
            .get_or_try_init(|| async {
                let name = step_ca_name(self.config).ok_or_else(|| {
                    EngineError::object(
                        "certificates",
                        "TLS certificates come from step-ca, which is not enabled",
                    )
                })?;
                step_ca::ensure_config(self.client, self.d, name, self.timeout, self.progress)
                    .await?;
                let root_pem =
                    step_ca::root_pem(&self.project(), name)
                        .await?
                        .ok_or_else(|| {
                            EngineError::object(
                                format!("step-ca {name}"),
                                format!("has no {} although it serves", step_ca::ROOT_CERT),
                            )
                        })?;
                let root_der = first_der(root_pem.as_bytes()).ok_or_else(|| {
                    EngineError::object(
                        format!("step-ca {name}"),
                        format!("{} is not a PEM certificate", step_ca::ROOT_CERT),
                    )
                })?;
                Ok(Ca {
                    name: name.to_string(),
                    root_pem,
                    root_der,
                })
            })
            .await
    }

    /// Makes step-ca ready even when no service asks for a certificate (its metrics).
    pub async fn ensure_ca(&self) -> Result<(), EngineError> {
        if step_ca_name(self.config).is_some() {
            self.ca().await?;
        }
        Ok(())
    }

    /// The step-ca files `name` must get now. `fresh`: the instance is being created or
    /// rebuilt, so it holds none yet.
    pub async fn files_for(
        &self,
        name: &str,
        payload: &InstancePayload,
        fresh: bool,
    ) -> Result<Vec<PushFile>, EngineError> {
        let w = wanted(payload);
        if w.root.is_none() && w.cert.is_none() {
            return Ok(Vec::new());
        }
        let ca = self.ca().await?;
        let project = self.project();
        let mut out = Vec::new();
        if let Some(e) = w.root {
            let have = match fresh {
                true => None,
                false => project.pull_file(name, &e.path).await.optional()?,
            };
            if have.as_deref() != Some(ca.root_pem.as_bytes()) {
                out.push(push_file(e, ca.root_pem.clone()));
            }
        }
        if let Some((cert, key)) = w.cert {
            let names = names_for(self.d, name);
            let state = match fresh {
                true => CertState::Issue(Reason::Missing),
                false => {
                    let chain = project.pull_file(name, &cert.path).await.optional()?;
                    let key = project.pull_file(name, &key.path).await.optional()?;
                    match chain {
                        None => CertState::Issue(Reason::Missing),
                        Some(c) => assess(
                            &c,
                            key.as_deref(),
                            &ca.root_der,
                            &names,
                            crate::clock::now_secs(),
                        ),
                    }
                }
            };
            if let CertState::Issue(why) = state {
                let (key_pem, chain) = self.issue(ca, name, &names).await?;
                self.progress.info(&format!(
                    "{name}: certificate issued by {} for {} ({} days): {why}",
                    ca.name,
                    names.join(", "),
                    days(CERT_LIFETIME.as_secs())
                ));
                out.push(push_file(cert, chain));
                out.push(push_file(key, key_pem));
            }
        }
        Ok(out)
    }

    /// A new key (kept here) and its certificate chain from step-ca: (key PEM, chain PEM).
    async fn issue(
        &self,
        ca: &Ca,
        name: &str,
        names: &[String],
    ) -> Result<(String, String), EngineError> {
        let (key, csr) = key_and_request(names)
            .map_err(|e| EngineError::object(format!("certificate of {name}"), e))?;
        let chain = step_ca::sign(self.client, self.config, &ca.name, &csr, &self.password).await?;
        // What step-ca returned must be what the service will be judged by.
        match assess(
            chain.as_bytes(),
            Some(key.as_bytes()),
            &ca.root_der,
            names,
            crate::clock::now_secs(),
        ) {
            CertState::Fresh { .. } => Ok((key, chain)),
            CertState::Issue(why) => Err(EngineError::object(
                format!("certificate of {name}"),
                format!("{} signed a certificate that does not do: {why}", ca.name),
            )),
        }
    }

    /// For an instance this run did not (re)create: pushes what [`Issuer::files_for`] says and
    /// restarts it when running (services read certificates at start). Whether it did.
    pub async fn refresh(
        &self,
        name: &str,
        payload: &InstancePayload,
    ) -> Result<bool, EngineError> {
        let files = self.files_for(name, payload, false).await?;
        if files.is_empty() {
            return Ok(false);
        }
        let project = self.project();
        for f in &files {
            super::instances::push(&project, name, f).await?;
        }
        if project.instance_is_running(name).await? {
            super::converge::change_state(&project, name, StateAction::Restart, false)
                .await
                .map_err(|e| EngineError::incus_at(format!("instance {name}"), e))?;
        }
        Ok(true)
    }

    /// The Atlas root (PEM), once step-ca is ready.
    pub async fn root_pem(&self) -> Result<String, EngineError> {
        Ok(self.ca().await?.root_pem.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root, an intermediate and a leaf for `names`, valid `from..until` (seconds).
    struct Pki {
        root_der: Vec<u8>,
        chain_pem: String,
        key_pem: String,
    }

    /// Validity from `from` to `until`, seconds after the epoch.
    fn valid(p: &mut rcgen::CertificateParams, from: u64, until: u64) {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        p.not_before = epoch + Duration::from_secs(from);
        p.not_after = epoch + Duration::from_secs(until);
    }

    /// A CA's parameters, key and certificate, signed by `issuer` or by itself.
    fn ca(
        cn: &str,
        issuer: Option<&rcgen::Issuer<'_, &rcgen::KeyPair>>,
    ) -> (rcgen::CertificateParams, rcgen::KeyPair, rcgen::Certificate) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        valid(&mut p, 0, 4_000_000_000);
        let cert = match issuer {
            None => p.self_signed(&key).unwrap(),
            Some(i) => p.signed_by(&key, i).unwrap(),
        };
        (p, key, cert)
    }

    fn pki(names: &[&str], from: u64, until: u64) -> Pki {
        let (root_p, root_key, root) = ca("Test Root CA", None);
        let root_issuer = rcgen::Issuer::from_params(&root_p, &root_key);
        let (int_p, int_key, int) = ca("Test Intermediate CA", Some(&root_issuer));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        valid(&mut p, from, until);
        let leaf = p
            .signed_by(&key, &rcgen::Issuer::from_params(&int_p, &int_key))
            .unwrap();
        Pki {
            root_der: root.der().to_vec(),
            chain_pem: format!("{}{}", leaf.pem(), int.pem()),
            key_pem: key.serialize_pem(),
        }
    }

    const DAY: u64 = 86_400;
    const T0: u64 = 1_800_000_000;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fresh_until_a_third_of_the_lifetime_is_left() {
        let p = pki(&["loki01.incus", "loki01", "10.0.0.5"], T0, T0 + 90 * DAY);
        let want = names(&["loki01.incus", "loki01", "10.0.0.5"]);
        let at = |t| {
            assess(
                p.chain_pem.as_bytes(),
                Some(p.key_pem.as_bytes()),
                &p.root_der,
                &want,
                t,
            )
        };
        assert_eq!(
            at(T0 + DAY),
            CertState::Fresh {
                not_after: T0 + 90 * DAY
            }
        );
        assert_eq!(
            at(T0 + 59 * DAY),
            CertState::Fresh {
                not_after: T0 + 90 * DAY
            }
        );
        match at(T0 + 61 * DAY) {
            CertState::Issue(r @ Reason::Due { left, lifetime, .. }) => {
                assert_eq!((left, lifetime), (29 * DAY, 90 * DAY));
                assert!(r.to_string().starts_with("29 of its 90 days left"), "{r}");
            }
            other => panic!("{other:?}"),
        }
        match at(T0 + 91 * DAY) {
            CertState::Issue(r @ Reason::Due { left: 0, .. }) => {
                assert!(r.to_string().starts_with("expired"), "{r}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_key_and_root_are_checked() {
        let p = pki(&["loki01.incus", "loki01"], T0, T0 + 90 * DAY);
        let now = T0 + DAY;
        let key = Some(p.key_pem.as_bytes());
        assert_eq!(
            assess(
                p.chain_pem.as_bytes(),
                key,
                &p.root_der,
                &names(&["loki01.incus", "10.0.0.5"]),
                now
            ),
            CertState::Issue(Reason::Names(names(&["10.0.0.5"])))
        );
        let other = pki(&["loki01.incus"], T0, T0 + 90 * DAY);
        assert!(matches!(
            assess(
                p.chain_pem.as_bytes(),
                key,
                &other.root_der,
                &names(&["loki01.incus"]),
                now
            ),
            CertState::Issue(Reason::Untrusted(_))
        ));
        assert!(matches!(
            assess(p.chain_pem.as_bytes(), Some(other.key_pem.as_bytes()), &p.root_der, &names(&["loki01.incus"]), now),
            CertState::Issue(Reason::Unusable(w)) if w.contains("not the certificate's")
        ));
        assert!(matches!(
            assess(p.chain_pem.as_bytes(), None, &p.root_der, &names(&["loki01.incus"]), now),
            CertState::Issue(Reason::Unusable(w)) if w.contains("missing")
        ));
        assert!(matches!(
            assess(b"garbage", key, &p.root_der, &names(&["loki01.incus"]), now),
            CertState::Issue(Reason::Unusable(_))
        ));
        // The leaf alone (no intermediate): the chain does not reach the root.
        let leaf_only = p
            .chain_pem
            .split_inclusive("-----END CERTIFICATE-----\n")
            .next()
            .unwrap();
        assert!(matches!(
            assess(
                leaf_only.as_bytes(),
                key,
                &p.root_der,
                &names(&["loki01.incus"]),
                now
            ),
            CertState::Issue(Reason::Untrusted(_))
        ));
    }

    #[test]
    fn requests_carry_every_name() {
        let (key, csr) =
            key_and_request(&names(&["grafana01.incus", "grafana01", "10.0.0.7"])).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
        let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap();
        use x509_parser::prelude::FromDer as _;
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let cn = req
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .unwrap();
        assert_eq!(cn.as_str().unwrap(), "grafana01.incus");
        let sans: Vec<String> = req
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => Some(s),
                _ => None,
            })
            .flat_map(|s| s.general_names.iter().map(|g| g.to_string()))
            .collect();
        assert_eq!(
            sans,
            [
                "DNSName(grafana01.incus)",
                "DNSName(grafana01)",
                "IPAddress(0a:00:00:07)"
            ]
        );
    }
}
