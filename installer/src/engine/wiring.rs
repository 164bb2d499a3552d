//! Server-level wiring (step 9): Incus logging to Loki with the key scheme the server
//! supports, the metrics client certificate trusted as type `metrics`, and
//! `core.https_address` on the management gateway when unset.
//!
//! CONTRACT: `apply(client, config, secrets, progress)` is idempotent (zero writes when
//! converged), changes only keys atlas owns or that are unset, and reports a key set to
//! something else by the operator as an error saying what to do. `plan(...)` returns what
//! `apply` would change without writing. `remove(...)` undoes what atlas set (for destroy).
//!
//! Ownership: server config keys and trusted certificates carry no marker of their own, so
//! atlas records what it set in the Atlas project's state before setting it
//! ([`WiringRecords`]: key -> value atlas wrote, fingerprints of certificates atlas trusted). A key whose current value is not the recorded
//! one belongs to the operator and is never changed or reset. `remove` must therefore run
//! before the project is deleted (destroy runs it first of all).
//!
//! Other Atlas projects on the same server keep records of their own: a key or a certificate
//! one of them recorded is that install's, and messages say so. A certificate named
//! [`METRICS_CERT_NAME`] that no project records was most likely left by an earlier version's
//! destroy (which deleted the project before undoing the wiring): it is named with the command
//! that removes it, never removed silently (an operator may have added it by hand).
//!
//! Conflicts are found before anything is written: a refused apply changes nothing.
//! Cluster members each have their own `core.https_address`; this module sets the one of the
//! member the client talks to.

// Our errors carry `IncusError` (large, owned by the client module) by value so callers can
// match on it; boxing it would change the contract the install sequence is written against.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::config::{Config, NetworkRole, ServiceKind};
use crate::deployment::Deployment;
use crate::incus::{Certificate, Client, IncusError, OptionalExt as _, Project, Server};
use crate::progress::Progress;

use super::secrets::{METRICS_CERT_CN, Secrets, SecretsError};
use crate::state::{StateError, WiringRecords};

/// Name of the trusted metrics certificate.
pub const METRICS_CERT_NAME: &str = METRICS_CERT_CN;
/// `logging.<name>.*` target name on servers with `server_logging`.
pub const LOGGING_TARGET: &str = "atlas";
/// What Incus ships to Loki.
pub const LOGGING_TYPES: &str = "lifecycle,logging";
pub const HTTPS_ADDRESS: &str = "core.https_address";
pub const METRICS_ADDRESS: &str = "core.metrics_address";
/// Incus' port when an address has none.
const INCUS_DEFAULT_PORT: u16 = 8443;

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Incus(#[from] IncusError),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("server wiring: {0}")]
    Config(String),
}

/// One server-level change, for plans (never holds secret values).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WiringChange {
    pub what: String,
    pub detail: String,
    /// What kind of change; `Conflict` means apply refuses until the operator acts.
    pub action: WiringAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WiringAction {
    /// An unset server key gets a value.
    Set,
    /// A key atlas set earlier gets a new value.
    Update,
    /// A key atlas set and no longer wants is reset.
    Unset,
    /// A certificate gets trusted.
    Trust,
    /// A certificate atlas trusted earlier (an older metrics certificate) is removed.
    Untrust,
    /// Something the operator set stands in the way: apply refuses, `detail` says what to do.
    Conflict,
}

impl WiringChange {
    fn new(
        action: WiringAction,
        what: impl Into<String>,
        detail: impl Into<String>,
    ) -> WiringChange {
        WiringChange {
            what: what.into(),
            detail: detail.into(),
            action,
        }
    }

    pub fn is_conflict(&self) -> bool {
        self.action == WiringAction::Conflict
    }
}

impl fmt::Display for WiringChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.action {
            WiringAction::Set | WiringAction::Trust => "+",
            WiringAction::Update => "~",
            WiringAction::Unset | WiringAction::Untrust => "-",
            WiringAction::Conflict => "!",
        };
        write!(f, "{sign} {}: {}", self.what, self.detail)
    }
}

/// What the wiring aims at. [`WiringOptions::of`] derives it from the deployment; tests
/// (and a later `--incus-https-address`) can point it elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiringOptions {
    /// Where Prometheus reaches Incus' `/1.0/metrics` (`<management gateway>:<port>`); `None`
    /// when the metrics integration is off, or on a cluster.
    pub metrics_endpoint: Option<(IpAddr, u16)>,
    /// On a cluster with the metrics integration on: every member already serves metrics on
    /// its cluster address, so only the metrics certificate is trusted (cluster-wide).
    pub cluster_metrics: bool,
    /// Loki base URL (`http://<loki IPv4>:3100`; Incus adds the push path); `None` when the
    /// logging integration is off.
    pub loki_url: Option<String>,
    /// The Atlas instance serving `loki_url`: its readiness is probed inside it, through
    /// Incus (see `health`). `None` (a Loki elsewhere): probed from here over the network.
    pub loki_instance: Option<String>,
    /// PEM of the CA that signed Loki's certificate, when Loki serves TLS.
    pub loki_ca_pem: Option<String>,
    /// How long apply waits for Loki's `/ready` before pointing Incus at it.
    pub loki_ready_timeout: std::time::Duration,
}

/// How long apply waits for Loki's `/ready` before pointing Incus at it.
pub const LOKI_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl WiringOptions {
    /// The wiring `d` asks for (its config's integrations, on its server or cluster).
    pub fn of(d: &Deployment) -> Result<WiringOptions, WiringError> {
        let config = &d.config;
        let integ = &config.integrations;
        let clustered = !d.members.is_empty();
        let metrics_endpoint = (integ.incus_metrics && !clustered).then(|| {
            let gw = config.networks.management.gateway();
            (IpAddr::V4(gw), integ.incus_https_port)
        });
        let (loki_url, loki_instance) = if d.incus_loki() {
            let (name, url) = loki_url(d)?;
            (Some(url), Some(name))
        } else {
            (None, None)
        };
        Ok(WiringOptions {
            metrics_endpoint,
            cluster_metrics: integ.incus_metrics && clustered,
            loki_url,
            loki_instance,
            loki_ca_pem: None,
            loki_ready_timeout: LOKI_READY_TIMEOUT,
        })
    }
}

/// `http://<IPv4 of the first enabled Loki on the management network>:3100`. By address: the
/// host has no resolver for `.incus` names.
fn loki_url(d: &Deployment) -> Result<(String, String), WiringError> {
    let Some((name, inst)) = d.instances_of(ServiceKind::Loki).into_iter().next() else {
        return Err(WiringError::Config(
            "integrations.incus_loki is on but no Loki instance is enabled: enable loki01 or set \
             integrations.incus_loki = false"
                .into(),
        ));
    };
    let ip = inst
        .nics
        .iter()
        .find(|n| n.network == NetworkRole::Management)
        .or_else(|| inst.nics.iter().find(|n| n.network != NetworkRole::External))
        .and_then(|n| n.ipv4)
        .ok_or_else(|| {
            WiringError::Config(format!(
                "{name} has no fixed IPv4 address for Incus to ship logs to; set one in instances.{name}.nics"
            ))
        })?;
    let scheme = if inst.tls { "https" } else { "http" };
    // On a cluster every member ships logs, over the published address of Loki's member.
    let url = match d.published_on(name) {
        Some(m) => format!("{scheme}://{}", m.at(crate::deployment::ports::LOKI_PORT)),
        None => format!("{scheme}://{ip}:{}", ServiceKind::Loki.defaults().port),
    };
    Ok((name.to_string(), url))
}

/// The logging keys for `url`: `logging.<name>.*` with `server_logging`, else the older
/// `loki.*` scheme (Incus appends `/loki/api/v1/push` to `loki.api.url` itself).
pub fn logging_keys(
    server_logging: bool,
    url: &str,
    ca_pem: Option<&str>,
    instance: &str,
) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    if server_logging {
        let p = format!("logging.{LOGGING_TARGET}");
        keys.insert(format!("{p}.target.type"), "loki".to_string());
        keys.insert(format!("{p}.target.address"), url.to_string());
        keys.insert(format!("{p}.types"), LOGGING_TYPES.to_string());
        if let Some(ca) = ca_pem {
            keys.insert(format!("{p}.target.ca_cert"), ca.to_string());
        }
    } else {
        keys.insert("loki.api.url".to_string(), url.to_string());
        keys.insert("loki.types".to_string(), LOGGING_TYPES.to_string());
        if !instance.is_empty() {
            keys.insert("loki.instance".to_string(), instance.to_string());
        }
        if let Some(ca) = ca_pem {
            keys.insert("loki.api.ca_cert".to_string(), ca.to_string());
        }
    }
    keys
}

/// Whether an Incus listen address (`[::]:8443`, `:8443`, `0.0.0.0`, `10.0.0.1:9443`, ...)
/// accepts connections to `ip:port`. Host names are never taken to cover anything.
pub fn address_covers(listen: &str, ip: IpAddr, port: u16) -> bool {
    let Some((host, p)) = split_listen(listen) else {
        return false;
    };
    if p != port {
        return false;
    }
    match host {
        None => true,
        Some(h) if h.is_unspecified() => match (h, ip) {
            // 0.0.0.0 takes IPv4 only; `::` takes both (Go listens dual-stack).
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
            _ => true,
        },
        Some(h) => h == ip || canonical_v4(h) == canonical_v4(ip),
    }
}

fn canonical_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// (host, port) of a listen address; host `None` = every address. `None` when unparsable
/// (a host name, garbage).
fn split_listen(listen: &str) -> Option<(Option<IpAddr>, u16)> {
    let s = listen.trim();
    if s.is_empty() {
        return None;
    }
    let port_of = |p: &str| {
        if p.is_empty() {
            Some(INCUS_DEFAULT_PORT)
        } else {
            p.parse().ok()
        }
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => port_of(p)?,
            None if after.is_empty() => INCUS_DEFAULT_PORT,
            None => return None,
        };
        return Some((Some(host.parse().ok()?), port));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some((Some(ip), INCUS_DEFAULT_PORT));
    }
    let (host, port) = s.rsplit_once(':')?;
    let port = port_of(port)?;
    if host.is_empty() {
        return Some((None, port));
    }
    Some((Some(host.parse().ok()?), port))
}

/// What atlas recorded in the project about its own wiring (the project state's).
type Records = WiringRecords;

/// Everything apply needs, computed from GETs only.
struct Computed {
    changes: Vec<WiringChange>,
    /// Server keys to PATCH (empty value = unset).
    patch: BTreeMap<String, String>,
    /// Records before the server is touched: what atlas is about to own, added.
    records_before: Records,
    /// Records once everything is done.
    records_after: Records,
    trust: Option<(String, Vec<u8>)>,
    untrust: Vec<String>,
    /// Same-named certificates atlas did not add, for a note.
    foreign_named: Vec<String>,
    /// Notes for the operator that need no change (an address that already covers).
    notes: Vec<String>,
}

struct Observed {
    server: crate::incus::Etagged<Server>,
    project: Option<crate::incus::Etagged<Project>>,
    certs: Vec<Certificate>,
    /// What every other project on the server recorded (other Atlas installs).
    others: Vec<(String, Records)>,
}

async fn observe(client: &Client, config: &Config) -> Result<Observed, WiringError> {
    let server = client.server().await?;
    let project = client.get_project(&config.incus.project).await.optional()?;
    let certs = client.certificates().await?;
    let others = client
        .projects()
        .await?
        .into_iter()
        .filter(|p| p.name != config.incus.project)
        .map(|p| (p.name.clone(), Records::from_config(&p.config)))
        .filter(|(_, r)| *r != Records::default())
        .collect();
    Ok(Observed {
        server,
        project,
        certs,
        others,
    })
}

impl Observed {
    /// This project's records.
    fn records(&self) -> Records {
        self.project
            .as_ref()
            .map(|p| Records::from_config(&p.value.config))
            .unwrap_or_default()
    }

    /// The other Atlas project that recorded setting `key` to `value`, if any.
    fn key_owner(&self, key: &str, value: &str) -> Option<&str> {
        self.others
            .iter()
            .find(|(_, r)| r.keys.get(key).map(String::as_str) == Some(value))
            .map(|(p, _)| p.as_str())
    }

    /// The other Atlas project that recorded trusting certificate `fp`, if any.
    fn cert_owner(&self, fp: &str) -> Option<&str> {
        self.others
            .iter()
            .find(|(_, r)| r.certs.contains(fp))
            .map(|(p, _)| p.as_str())
    }

    /// Who set `key` to `value`, for a conflict message.
    fn setter(&self, key: &str, value: &str) -> String {
        match self.key_owner(key, value) {
            Some(p) => format!(
                "set by the Atlas install of project {p}, which uses it; that install keeps it until it is destroyed"
            ),
            None => format!(
                "not set by atlas-install for any project on this server; if an earlier atlas-install destroy left it behind (before this version destroy did not undo it), unset it: `incus config unset {key}`"
            ),
        }
    }

    /// What a certificate with our name that our project did not record is, and what to do.
    fn foreign_cert_note(&self, fp: &str) -> String {
        match self.cert_owner(fp) {
            Some(p) => format!(
                "certificate {METRICS_CERT_NAME} ({}) belongs to the Atlas install of project {p}: left as it is",
                short_fp(fp)
            ),
            None => format!(
                "certificate {METRICS_CERT_NAME} ({}) is trusted but no Atlas project on this server records adding it: most likely an earlier atlas-install destroy left it behind (before this version destroy did not remove it). atlas-install leaves it; if no Prometheus of yours uses it, remove it: `incus config trust remove {fp}`",
                short_fp(fp)
            ),
        }
    }
}

fn compute(
    obs: &Observed,
    secrets: &Secrets,
    opts: &WiringOptions,
) -> Result<Computed, WiringError> {
    let records = obs.records();
    let mut c = Computed {
        changes: Vec::new(),
        patch: BTreeMap::new(),
        records_before: records.clone(),
        records_after: records.clone(),
        trust: None,
        untrust: Vec::new(),
        foreign_named: Vec::new(),
        notes: Vec::new(),
    };
    let mut desired = logging_wanted(&obs.server.value, opts);
    logging(&mut c, obs, &desired, &records);
    metrics(&mut c, obs, secrets, opts, &records, &mut desired)?;
    unwanted(&mut c, obs, &desired, &records);
    Ok(c)
}

/// The server's value of `key` ("" when unset).
fn server_value(obs: &Observed, key: &str) -> String {
    obs.server
        .value
        .config
        .get(key)
        .cloned()
        .unwrap_or_default()
}

/// The logging keys that send the server's events to Loki, when that integration is on.
fn logging_wanted(server: &Server, opts: &WiringOptions) -> BTreeMap<String, String> {
    let Some(url) = &opts.loki_url else {
        return BTreeMap::new();
    };
    let instance = Some(server.environment.server_name.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("incus");
    // `loki.instance` is cluster-wide: one member's name would label every member's
    // logs. Left unset on a cluster (each event carries its `location`).
    let instance = if server.is_clustered() { "" } else { instance };
    logging_keys(
        server.supports_server_logging(),
        url,
        opts.loki_ca_pem.as_deref(),
        instance,
    )
}

/// Each wanted logging key: set, updated when atlas set it, a conflict when someone else did.
fn logging(
    c: &mut Computed,
    obs: &Observed,
    desired: &BTreeMap<String, String>,
    records: &Records,
) {
    for (key, want) in desired {
        let have = server_value(obs, key);
        let ours = records.keys.get(key) == Some(&have);
        if &have == want || (have.is_empty() && records.defaulted(key, want)) {
            continue;
        }
        let action = if have.is_empty() {
            WiringAction::Set
        } else if ours {
            WiringAction::Update
        } else {
            c.changes.push(WiringChange::new(
                WiringAction::Conflict,
                format!("server config {key}"),
                format!(
                    "{} ({})",
                    logging_conflict(key, &have, want),
                    obs.setter(key, &have)
                ),
            ));
            continue;
        };
        c.changes.push(WiringChange::new(
            action,
            format!("server config {key}"),
            shown(key, want),
        ));
        c.patch.insert(key.clone(), want.clone());
        c.records_before.keys.insert(key.clone(), want.clone());
        c.records_after.keys.insert(key.clone(), want.clone());
    }
}

/// The metrics endpoint (core.https_address) and the metrics certificate, or, with the
/// integration off, the certificates atlas trusted taken away.
fn metrics(
    c: &mut Computed,
    obs: &Observed,
    secrets: &Secrets,
    opts: &WiringOptions,
    records: &Records,
    desired: &mut BTreeMap<String, String>,
) -> Result<(), WiringError> {
    if let Some((ip, port)) = opts.metrics_endpoint {
        let have = server_value(obs, HTTPS_ADDRESS);
        let metrics_addr = server_value(obs, METRICS_ADDRESS);
        https_address(c, &have, &metrics_addr, records, ip, port);
        if let Some(x) = c
            .changes
            .iter_mut()
            .find(|x| x.is_conflict() && x.what == format!("server config {HTTPS_ADDRESS}"))
        {
            x.detail = format!("{} ({})", x.detail, obs.setter(HTTPS_ADDRESS, &have));
        }
        desired.insert(
            HTTPS_ADDRESS.to_string(),
            c.records_after
                .keys
                .get(HTTPS_ADDRESS)
                .cloned()
                .unwrap_or_default(),
        );
        return metrics_certificate(c, obs, secrets, records);
    }
    if opts.cluster_metrics {
        return metrics_certificate(c, obs, secrets, records);
    }
    // Integration off: certificates atlas trusted go.
    for fp in &records.certs {
        if obs.certs.iter().any(|x| &x.fingerprint == fp) {
            c.untrust.push(fp.clone());
            c.changes.push(WiringChange::new(
                WiringAction::Untrust,
                format!("certificate {METRICS_CERT_NAME}"),
                short_fp(fp),
            ));
        }
    }
    c.records_after.certs.clear();
    Ok(())
}

/// Keys atlas set earlier that are no longer wanted: reset when still atlas' value.
fn unwanted(
    c: &mut Computed,
    obs: &Observed,
    desired: &BTreeMap<String, String>,
    records: &Records,
) {
    for (key, val) in &records.keys {
        if desired.contains_key(key) {
            continue;
        }
        if &server_value(obs, key) == val {
            c.changes.push(WiringChange::new(
                WiringAction::Unset,
                format!("server config {key}"),
                "set by atlas-install, no longer wanted",
            ));
            c.patch.insert(key.clone(), String::new());
        }
        c.records_after.keys.remove(key);
        c.records_after.defaults.remove(key);
    }
}

fn https_address(
    c: &mut Computed,
    have: &str,
    metrics_addr: &str,
    records: &Records,
    ip: IpAddr,
    port: u16,
) {
    let want = match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    let ours =
        !have.is_empty() && records.keys.get(HTTPS_ADDRESS).map(String::as_str) == Some(have);
    if ours && have == want {
        return;
    }
    if ours || (have.is_empty() && !address_covers(metrics_addr, ip, port)) {
        let action = if ours {
            WiringAction::Update
        } else {
            WiringAction::Set
        };
        c.changes.push(WiringChange::new(
            action,
            format!("server config {HTTPS_ADDRESS}"),
            format!("{want} (Prometheus scrapes /1.0/metrics there)"),
        ));
        c.patch.insert(HTTPS_ADDRESS.to_string(), want.clone());
        c.records_before
            .keys
            .insert(HTTPS_ADDRESS.to_string(), want.clone());
        c.records_after.keys.insert(HTTPS_ADDRESS.to_string(), want);
        return;
    }
    if address_covers(metrics_addr, ip, port) {
        c.notes.push(format!("{METRICS_ADDRESS} is {metrics_addr}, which already serves /1.0/metrics on {want}: nothing to do"));
        return;
    }
    if address_covers(have, ip, port) {
        c.notes.push(format!(
            "{HTTPS_ADDRESS} is {have}, which already covers {want}: nothing to do"
        ));
        return;
    }
    c.changes.push(WiringChange::new(
        WiringAction::Conflict,
        format!("server config {HTTPS_ADDRESS}"),
        https_conflict(have, &want, port),
    ));
}

fn https_conflict(have: &str, want: &str, port: u16) -> String {
    let mut fix = match split_listen(have) {
        Some((host, p)) if p != port && host.is_none_or(|h| h.is_unspecified()) => format!(
            "set `integrations.incus_https_port = {p}` in atlas.toml (Incus already listens on every address at port {p}), or "
        ),
        _ => String::new(),
    };
    fix.push_str(&format!(
        "make Incus listen there: `incus config set {HTTPS_ADDRESS} {want}` (or `[::]:{port}` for every address), or give \
         metrics a listener of their own: `incus config set {METRICS_ADDRESS} {want}`"
    ));
    format!(
        "{HTTPS_ADDRESS} is {have} (not set by atlas-install), so Prometheus cannot scrape Incus at {want}; atlas-install \
         does not change it. To fix: {fix}; or turn integrations.incus_metrics off. Then run install again"
    )
}

fn logging_conflict(key: &str, have: &str, want: &str) -> String {
    format!(
        "{key} is {:?} (not set by atlas-install); atlas-install would set {:?} and does not overwrite it. To ship Incus \
         events to the Atlas Loki, unset it (`incus config unset {key}`) and run install again; to keep yours, set \
         integrations.incus_loki = false",
        shown(key, have),
        shown(key, want)
    )
}

/// Certificates (a CA for Loki) are long: plans show their size, not their text.
fn shown(key: &str, value: &str) -> String {
    if key.ends_with("ca_cert") {
        format!("<PEM, {} bytes>", value.len())
    } else {
        value.to_string()
    }
}

fn short_fp(fp: &str) -> String {
    format!("fingerprint {}", &fp[..fp.len().min(16)])
}

fn metrics_certificate(
    c: &mut Computed,
    obs: &Observed,
    secrets: &Secrets,
    records: &Records,
) -> Result<(), WiringError> {
    let der = secrets.metrics_cert_der()?;
    let want_fp = crate::incus::cert_fingerprint(&der);
    if !obs.certs.iter().any(|x| x.fingerprint == want_fp) {
        c.changes.push(WiringChange::new(
            WiringAction::Trust,
            format!("certificate {METRICS_CERT_NAME}"),
            format!("type metrics, {}", short_fp(&want_fp)),
        ));
        c.trust = Some((want_fp.clone(), der));
        c.records_before.certs.insert(want_fp.clone());
    }
    for x in &obs.certs {
        if x.fingerprint == want_fp {
            continue;
        }
        if records.certs.contains(&x.fingerprint) {
            c.untrust.push(x.fingerprint.clone());
            c.changes.push(WiringChange::new(
                WiringAction::Untrust,
                format!("certificate {}", x.name),
                format!(
                    "older metrics certificate atlas-install trusted, {}",
                    short_fp(&x.fingerprint)
                ),
            ));
        } else if x.name == METRICS_CERT_NAME {
            c.foreign_named.push(x.fingerprint.clone());
        }
    }
    c.records_after.certs = BTreeSet::from([want_fp]);
    Ok(())
}

/// What [`apply`] would change, without writing. Conflicts are listed as changes with
/// [`WiringAction::Conflict`].
pub async fn plan(
    client: &Client,
    d: &Deployment,
    secrets: &Secrets,
) -> Result<Vec<WiringChange>, WiringError> {
    plan_with(client, &d.config, secrets, &WiringOptions::of(d)?).await
}

pub async fn plan_with(
    client: &Client,
    config: &Config,
    secrets: &Secrets,
    opts: &WiringOptions,
) -> Result<Vec<WiringChange>, WiringError> {
    let obs = observe(client, config).await?;
    Ok(compute(&obs, secrets, opts)?.changes)
}

/// Converges the server wiring. Refuses (changing nothing) when the operator's own settings
/// stand in the way, saying what to do.
pub async fn apply(
    client: &Client,
    d: &Deployment,
    secrets: &Secrets,
    progress: &dyn Progress,
) -> Result<(), WiringError> {
    apply_with(client, &d.config, secrets, &WiringOptions::of(d)?, progress)
        .await
        .map(|_| ())
}

/// [`apply`] with explicit targets; returns the changes made.
pub async fn apply_with(
    client: &Client,
    config: &Config,
    secrets: &Secrets,
    opts: &WiringOptions,
    progress: &dyn Progress,
) -> Result<Vec<WiringChange>, WiringError> {
    let task = progress.task(
        "server wiring (Loki logging, metrics certificate, HTTPS address)",
        None,
    );
    let result = apply_inner(client, config, secrets, opts, progress).await;
    match &result {
        Ok(ch) if ch.is_empty() => task.finish("unchanged"),
        Ok(ch) => task.finish(&format!("{} change(s)", ch.len())),
        Err(e) => task.fail(&e.to_string()),
    }
    result
}

async fn apply_inner(
    client: &Client,
    config: &Config,
    secrets: &Secrets,
    opts: &WiringOptions,
    progress: &dyn Progress,
) -> Result<Vec<WiringChange>, WiringError> {
    let obs = observe(client, config).await?;
    let mut c = compute(&obs, secrets, opts)?;
    refuse_conflicts(&c)?;
    if let Some(url) = opts
        .loki_url
        .as_deref()
        .filter(|u| c.patch.values().any(|v| v == *u))
    {
        let inside = opts
            .loki_instance
            .as_deref()
            .map(|name| (client.in_project(&config.incus.project), name));
        wait_for_loki(url, inside, opts.loki_ready_timeout, progress).await?;
    }
    for note in &c.notes {
        progress.info(note);
    }
    for fp in &c.foreign_named {
        progress.info(&obs.foreign_cert_note(fp));
    }
    if c.changes.is_empty()
        && c.records_after == c.records_before
        && records_on_disk_match(&obs, &c.records_after)
    {
        return Ok(Vec::new());
    }
    if obs.project.is_none() {
        return Err(WiringError::Config(format!(
            "the Incus project `{}` does not exist; server wiring records what it sets there, so create it first",
            config.incus.project
        )));
    }
    // Record first: a crash after the server write still leaves atlas knowing what it owns.
    if !records_on_disk_match(&obs, &c.records_before) {
        write_records(client, config, &c.records_before).await?;
    }
    write_server(client, &obs, &mut c).await?;
    if c.records_after != c.records_before {
        write_records(client, config, &c.records_after).await?;
    }
    Ok(c.changes)
}

/// Conflicts (keys someone else set) refuse the whole wiring before any write.
fn refuse_conflicts(c: &Computed) -> Result<(), WiringError> {
    let conflicts: Vec<String> = c
        .changes
        .iter()
        .filter(|x| x.is_conflict())
        .map(|x| format!("- {}", x.detail))
        .collect();
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(WiringError::Refused(format!(
        "server wiring refused, nothing was changed:\n{}",
        conflicts.join("\n")
    )))
}

/// The server keys patched (learning which values the server keeps only as its default:
/// it drops them), the metrics certificate trusted, the ones no longer wanted untrusted.
async fn write_server(
    client: &Client,
    obs: &Observed,
    c: &mut Computed,
) -> Result<(), WiringError> {
    if !c.patch.is_empty() {
        client
            .patch_server_config(&c.patch, obs.server.etag.as_deref())
            .await?;
        let now = client.server().await?.value;
        for (key, val) in &c.patch {
            let stored = now.config.get(key).is_some_and(|v| !v.is_empty());
            if !val.is_empty() && !stored {
                c.records_after.defaults.insert(key.clone());
            } else {
                c.records_after.defaults.remove(key);
            }
        }
    }
    if let Some((_, der)) = &c.trust {
        client
            .add_certificate(METRICS_CERT_NAME, "metrics", der)
            .await?;
    }
    for fp in &c.untrust {
        client.delete_certificate(fp).await.optional()?;
    }
    Ok(())
}

/// Incus 6.0 hands every event to its Loki sender over an unbuffered channel and retries a
/// failed push with a backoff of up to minutes: pointed at a Loki that does not answer, every
/// API call that emits an event blocks meanwhile ([seen] a server PATCH took almost five
/// minutes). So Incus is only pointed at a Loki that answers `/ready`.
async fn wait_for_loki(
    url: &str,
    inside: Option<(Client, &str)>,
    timeout: std::time::Duration,
    progress: &dyn Progress,
) -> Result<(), WiringError> {
    use super::health::{Check, probe_client, probe_once};
    let check = Check::Http {
        url: format!("{}/ready", url.trim_end_matches('/')),
    };
    let http = probe_client().map_err(|e| WiringError::Config(e.to_string()))?;
    let once = || async {
        match &inside {
            Some((client, name)) => probe_once(client, name, &check).await,
            None => match http.get(check.url()).send().await {
                Ok(r) if r.status().is_success() => Ok(String::new()),
                Ok(r) => Err(format!("{check}: HTTP {}", r.status())),
                Err(e) => Err(format!("{check}: {e}")),
            },
        }
    };
    let start = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(250);
    loop {
        match once().await {
            Ok(_) => return Ok(()),
            Err(reason) if start.elapsed() >= timeout => {
                return Err(WiringError::Refused(format!(
                    "Loki at {url} is not ready ({reason}), so Incus logging was not pointed at it: Incus 6.0 blocks                      its API while it cannot deliver events. Nothing was changed on the server. Check the Loki                      instance (`atlas-install status`), then run install again"
                )));
            }
            Err(reason) => progress.info(&format!(
                "waiting for Loki before wiring Incus logging to it: {reason}"
            )),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(4));
    }
}

fn records_on_disk_match(obs: &Observed, want: &Records) -> bool {
    obs.records() == *want
}

/// Stores `records` as this project's wiring records (nothing sent when they are already).
async fn write_records(
    client: &Client,
    config: &Config,
    records: &Records,
) -> Result<(), WiringError> {
    crate::state::update(client, &config.incus.project, |s| {
        s.wiring = records.clone();
        Ok::<(), StateError>(())
    })
    .await
    .map_err(|e| match e {
        StateError::Incus(e) => WiringError::Incus(*e),
        other => WiringError::Config(other.to_string()),
    })
}

/// What [`remove`] would undo, and what it leaves that looks like ours (for destroy's plan).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removal {
    /// Keys reset and certificates removed, in that order.
    pub changes: Vec<WiringChange>,
    /// Certificates with our name this project did not record: said, left alone.
    pub notes: Vec<String>,
}

impl Removal {
    fn compute(obs: &Observed) -> (Removal, BTreeMap<String, String>, Vec<String>) {
        let records = obs.records();
        let server = &obs.server.value.config;
        let reset: BTreeMap<String, String> = records
            .keys
            .iter()
            .filter(|(k, v)| server.get(*k) == Some(*v))
            .map(|(k, _)| (k.clone(), String::new()))
            .collect();
        let untrust: Vec<String> = records
            .certs
            .iter()
            .filter(|fp| obs.certs.iter().any(|c| &c.fingerprint == *fp))
            .cloned()
            .collect();
        let mut out = Removal::default();
        for k in reset.keys() {
            out.changes.push(WiringChange::new(
                WiringAction::Unset,
                format!("server config {k}"),
                "set by atlas-install for this project",
            ));
        }
        for fp in &untrust {
            out.changes.push(WiringChange::new(
                WiringAction::Untrust,
                format!("certificate {METRICS_CERT_NAME}"),
                format!(
                    "trusted by atlas-install for this project, {}",
                    short_fp(fp)
                ),
            ));
        }
        out.notes = obs
            .certs
            .iter()
            .filter(|c| c.name == METRICS_CERT_NAME && !records.certs.contains(&c.fingerprint))
            .map(|c| obs.foreign_cert_note(&c.fingerprint))
            .collect();
        (out, reset, untrust)
    }
}

/// What [`remove`] would do, from GETs only.
pub async fn removal(client: &Client, config: &Config) -> Result<Removal, WiringError> {
    let obs = observe(client, config).await?;
    Ok(Removal::compute(&obs).0)
}

/// Undoes what atlas set: server keys still holding the value atlas wrote are reset, the
/// certificates atlas trusted are removed, and the records go. Run before deleting the project
/// (the records live there); destroy runs it before anything else, so Incus stops shipping
/// events to the Loki that is about to go.
pub async fn remove(client: &Client, config: &Config) -> Result<(), WiringError> {
    let obs = observe(client, config).await?;
    let Some(project) = &obs.project else {
        return Ok(());
    };
    if Records::from_config(&project.value.config) == Records::default() {
        return Ok(());
    }
    let (_, reset, untrust) = Removal::compute(&obs);
    if !reset.is_empty() {
        client
            .patch_server_config(&reset, obs.server.etag.as_deref())
            .await?;
    }
    for fp in &untrust {
        client.delete_certificate(fp).await.optional()?;
    }
    write_records(client, config, &Records::default()).await
}

/// PEM of the Incus server certificate, which Prometheus pins (`INCUS_SERVER_CERT`).
pub async fn server_certificate(client: &Client) -> Result<String, WiringError> {
    let s = client.server().await?;
    let pem = s.value.environment.certificate;
    if pem.trim().is_empty() {
        return Err(WiringError::Config(
            "the Incus server did not show its certificate (GET /1.0 environment.certificate)"
                .into(),
        ));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn logging_keys_for_both_schemes() {
        let new = logging_keys(true, "http://10.50.0.13:3100", None, "host1");
        assert_eq!(
            new,
            BTreeMap::from([
                ("logging.atlas.target.type".to_string(), "loki".to_string()),
                (
                    "logging.atlas.target.address".to_string(),
                    "http://10.50.0.13:3100".to_string()
                ),
                (
                    "logging.atlas.types".to_string(),
                    "lifecycle,logging".to_string()
                ),
            ])
        );
        let old = logging_keys(false, "http://10.50.0.13:3100", Some("PEM"), "host1");
        assert_eq!(old["loki.api.url"], "http://10.50.0.13:3100");
        assert_eq!(old["loki.types"], "lifecycle,logging");
        assert_eq!(old["loki.instance"], "host1");
        assert_eq!(old["loki.api.ca_cert"], "PEM");
        assert!(!old.keys().any(|k| k.starts_with("logging.")));
    }

    #[test]
    fn options_from_the_builtin_config() {
        let mut cfg = Config::builtin();
        cfg.integrations.incus_loki = true;
        cfg.integrations.incus_metrics = true;
        let of = |cfg: &Config| WiringOptions::of(&Deployment::standalone(cfg));
        let o = of(&cfg).unwrap();
        assert_eq!(o.loki_url.as_deref(), Some("http://10.50.0.13:3100"));
        assert_eq!(
            o.metrics_endpoint,
            Some((v4("10.50.0.1"), cfg.integrations.incus_https_port))
        );
        cfg.integrations.incus_metrics = false;
        cfg.instances.get_mut("loki01").unwrap().enabled = false;
        let e = of(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("integrations.incus_loki") && e.contains("loki01"),
            "{e}"
        );
        cfg.integrations.incus_loki = false;
        assert_eq!(
            of(&cfg).unwrap(),
            WiringOptions {
                metrics_endpoint: None,
                cluster_metrics: false,
                loki_url: None,
                loki_instance: None,
                loki_ca_pem: None,
                loki_ready_timeout: LOKI_READY_TIMEOUT
            }
        );
    }

    #[test]
    fn listen_addresses_that_cover_the_gateway() {
        let gw = v4("10.50.0.1");
        for yes in [
            "[::]:8443",
            ":8443",
            "0.0.0.0:8443",
            "10.50.0.1:8443",
            "10.50.0.1",
            "[::]",
            "::",
            "[::ffff:10.50.0.1]:8443",
        ] {
            assert!(address_covers(yes, gw, 8443), "{yes}");
        }
        for no in [
            "",
            "127.0.0.1:8443",
            "[::]:9443",
            "10.50.0.2:8443",
            "host.example:8443",
            "0.0.0.0:x",
            "[::1]:8443",
        ] {
            assert!(!address_covers(no, gw, 8443), "{no}");
        }
        assert!(!address_covers("0.0.0.0:8443", v4("fd00::1"), 8443));
    }

    #[test]
    fn https_conflict_says_what_to_do() {
        let m = https_conflict("127.0.0.1:8443", "10.50.0.1:8443", 8443);
        assert!(
            m.contains("core.https_address is 127.0.0.1:8443")
                && m.contains("incus config set core.https_address 10.50.0.1:8443"),
            "{m}"
        );
        assert!(
            m.contains("core.metrics_address") && !m.contains("incus_https_port ="),
            "{m}"
        );
        let m = https_conflict("[::]:9443", "10.50.0.1:8443", 8443);
        assert!(m.contains("integrations.incus_https_port = 9443"), "{m}");
    }

    fn observed(
        config: BTreeMap<String, String>,
        records: Records,
        certs: Vec<Certificate>,
        server_logging: bool,
    ) -> Observed {
        let mut server = Server {
            config,
            ..Server::default()
        };
        if server_logging {
            server.api_extensions.push("server_logging".into());
        }
        server.environment.server_name = "host1".into();
        let mut project = Project::new("atlas");
        records.write_into(&mut project.config);
        Observed {
            server: crate::incus::Etagged {
                value: server,
                etag: None,
            },
            project: Some(crate::incus::Etagged {
                value: project,
                etag: None,
            }),
            certs,
            others: Vec::new(),
        }
    }

    fn test_secrets() -> Secrets {
        let (cert, key) = super::super::secrets::generate_metrics_certificate().unwrap();
        Secrets {
            credentials: crate::render::Credentials {
                grafana_admin_password: "x".into(),
                step_ca_password: "y".into(),
                mosquitto: BTreeMap::new(),
            },
            metrics_cert_pem: cert,
            metrics_key_pem: key,
            hash_key: "k".into(),
        }
    }

    fn opts() -> WiringOptions {
        WiringOptions {
            metrics_endpoint: Some((v4("10.50.0.1"), 8443)),
            cluster_metrics: false,
            loki_url: Some("http://10.50.0.13:3100".into()),
            loki_instance: None,
            loki_ca_pem: None,
            loki_ready_timeout: LOKI_READY_TIMEOUT,
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fresh_server_gets_everything_and_records_it() {
        let s = test_secrets();
        let c = compute(
            &observed(BTreeMap::new(), Records::default(), vec![], true),
            &s,
            &opts(),
        )
        .unwrap();
        let actions: Vec<(WiringAction, &str)> = c
            .changes
            .iter()
            .map(|x| (x.action, x.what.as_str()))
            .collect();
        assert!(
            actions.contains(&(
                WiringAction::Set,
                "server config logging.atlas.target.address"
            )),
            "{actions:?}"
        );
        assert!(
            actions.contains(&(WiringAction::Set, "server config core.https_address")),
            "{actions:?}"
        );
        assert!(
            actions.contains(&(WiringAction::Trust, "certificate atlas-prometheus-metrics")),
            "{actions:?}"
        );
        assert_eq!(c.patch["core.https_address"], "10.50.0.1:8443");
        assert_eq!(c.records_before.keys, c.patch);
        assert!(
            c.records_before
                .certs
                .contains(&s.metrics_fingerprint().unwrap())
        );
    }

    #[test]
    fn converged_and_operator_values() {
        let s = test_secrets();
        let fp = s.metrics_fingerprint().unwrap();
        let trusted = vec![Certificate {
            name: METRICS_CERT_NAME.into(),
            kind: "metrics".into(),
            fingerprint: fp.clone(),
            ..Certificate::default()
        }];
        let mut keys = logging_keys(false, "http://10.50.0.13:3100", None, "host1");
        keys.insert(HTTPS_ADDRESS.into(), "10.50.0.1:8443".into());
        let records = Records {
            keys: keys.clone(),
            certs: BTreeSet::from([fp.clone()]),
            ..Records::default()
        };
        let c = compute(
            &observed(keys.clone(), records.clone(), trusted.clone(), false),
            &s,
            &opts(),
        )
        .unwrap();
        assert!(c.changes.is_empty(), "{:?}", c.changes);
        assert_eq!(c.records_after, records);

        // The operator's own address that covers the gateway: a note, no change, not recorded.
        let mut server = keys.clone();
        server.insert(HTTPS_ADDRESS.into(), "[::]:8443".into());
        let mut rec = records.clone();
        rec.keys.remove(HTTPS_ADDRESS);
        let c = compute(
            &observed(server.clone(), rec.clone(), trusted.clone(), false),
            &s,
            &opts(),
        )
        .unwrap();
        assert!(
            c.changes.is_empty() && c.notes[0].contains("already covers"),
            "{:?} {:?}",
            c.changes,
            c.notes
        );

        // An address elsewhere, and a foreign Loki URL: conflicts, nothing patched.
        server.insert(HTTPS_ADDRESS.into(), "127.0.0.1:8443".into());
        server.insert("loki.api.url".into(), "http://other:3100".into());
        rec.keys.remove("loki.api.url");
        let c = compute(&observed(server, rec, trusted, false), &s, &opts()).unwrap();
        let conflicts: Vec<&str> = c
            .changes
            .iter()
            .filter(|x| x.is_conflict())
            .map(|x| x.what.as_str())
            .collect();
        assert_eq!(
            conflicts,
            vec![
                "server config loki.api.url",
                "server config core.https_address"
            ]
        );
        assert!(!c.patch.contains_key("loki.api.url") && !c.patch.contains_key(HTTPS_ADDRESS));

        // A metrics_address that covers needs no https address.
        let c = compute(
            &observed(
                map(&[(METRICS_ADDRESS, ":8443")]),
                Records::default(),
                vec![],
                false,
            ),
            &s,
            &opts(),
        )
        .unwrap();
        assert!(
            !c.patch.contains_key(HTTPS_ADDRESS) && c.notes[0].contains(METRICS_ADDRESS),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn changed_config_updates_owned_keys_and_rotated_certs_go() {
        let s = test_secrets();
        let old = test_secrets().metrics_fingerprint().unwrap();
        let foreign = "f".repeat(64);
        let certs = vec![
            Certificate {
                name: METRICS_CERT_NAME.into(),
                kind: "metrics".into(),
                fingerprint: old.clone(),
                ..Certificate::default()
            },
            Certificate {
                name: METRICS_CERT_NAME.into(),
                kind: "metrics".into(),
                fingerprint: foreign.clone(),
                ..Certificate::default()
            },
        ];
        let server = map(&[
            ("loki.api.url", "http://10.50.0.99:3100"),
            ("loki.types", "lifecycle,logging"),
        ]);
        let records = Records {
            keys: server.clone(),
            certs: BTreeSet::from([old.clone()]),
            ..Records::default()
        };
        let mut o = opts();
        o.metrics_endpoint = None;
        o.loki_url = None;
        let c = compute(
            &observed(server.clone(), records.clone(), certs.clone(), false),
            &s,
            &o,
        )
        .unwrap();
        assert_eq!(
            c.patch,
            map(&[("loki.api.url", ""), ("loki.types", "")]),
            "integration off: owned keys reset"
        );
        assert_eq!(c.untrust, vec![old.clone()]);
        assert_eq!(c.records_after, Records::default());

        let c = compute(&observed(server, records, certs, false), &s, &opts()).unwrap();
        assert_eq!(c.patch["loki.api.url"], "http://10.50.0.13:3100");
        assert!(
            c.changes
                .iter()
                .any(|x| x.action == WiringAction::Update && x.what.ends_with("loki.api.url"))
        );
        assert_eq!(
            c.untrust,
            vec![old],
            "the older certificate atlas trusted goes, the foreign one stays"
        );
        assert_eq!(c.foreign_named, vec![foreign]);
        assert_eq!(
            c.records_after.certs,
            BTreeSet::from([s.metrics_fingerprint().unwrap()])
        );
    }
}
