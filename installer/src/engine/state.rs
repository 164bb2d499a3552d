//! Desired state with everything the engine pushes (rendered files, network files,
//! certificates) and the actual state read from Incus with GETs only.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::config::{Config, NetworkRole};
use crate::deployment::Deployment;
use crate::incus::{Client, Instance, OptionalExt};
use crate::render::{Credentials, ExpectedFile, FileSource};

use super::desired::{DesiredInputs, ImageChoice, desired};
use super::error::EngineError;
use super::netfile::{ExternalNet, network_spec};
use super::resource::{Observed, Resource, ResourceAddress, ResourceKind};
use super::secrets::Secrets;
use crate::state::keys;

/// Where the network file for atlas-init goes in every container.
pub const NETWORK_FILE: &str = "/etc/atlas/network.json";
/// The service spec atlas-init starts: the image's own, with the rendered command line.
pub const SERVICE_FILE: &str = "/etc/atlas/service.json";

/// Fingerprint shown for an image that cannot be looked up yet (the project does not exist).
pub const UNRESOLVED: &str = "unresolved";

/// A file pushed into a container before it starts.
#[derive(Clone)]
pub struct PushFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl std::fmt::Debug for PushFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PushFile({}, {} bytes, {:o})",
            self.path,
            self.contents.len(),
            self.mode
        )
    }
}

fn hash_file(key: &str, f: &PushFile) -> String {
    super::desired::file_digest(key, &f.contents, f.mode, f.uid, f.gid)
}

/// What an instance gets besides its Incus body.
#[derive(Debug, Clone)]
pub struct InstancePayload {
    pub image: ImageChoice,
    /// Rendered files, the network file and the certificates that exist, in push order.
    pub files: Vec<PushFile>,
    /// Files the config refers to that nobody can provide yet.
    pub pending: Vec<String>,
    /// Files that come from step-ca (its root; the service's certificate and key): pushed by
    /// [`super::certs`] when missing or due, never part of the instance's hash.
    pub from_step_ca: Vec<ExpectedFile>,
    /// The rendered command line cannot be applied: the image carries no service spec to
    /// derive one from, so the instance runs the image's own command (plan says so).
    pub own_command: bool,
}

#[derive(Debug, Clone)]
pub struct DesiredState {
    pub resources: Vec<Resource>,
    pub payloads: BTreeMap<String, InstancePayload>,
}

/// Inputs for [`build`] that come from Incus.
pub struct Facts<'a> {
    pub images: &'a BTreeMap<String, ImageChoice>,
    pub external: Option<Ipv4Net>,
    pub external_addresses: &'a BTreeMap<String, Ipv4Addr>,
    /// PEM of the Incus server certificate (Prometheus pins it).
    pub server_cert_pem: &'a str,
    /// The project's hash key (see `desired::file_digest`).
    pub hash_key: &'a str,
}

/// Renders everything and builds the desired resources and payloads.
pub fn build(
    d: &Deployment,
    creds: &Credentials,
    secrets: Option<&Secrets>,
    facts: &Facts<'_>,
) -> Result<DesiredState, EngineError> {
    let rendered = crate::render::render(d, creds)?;
    let profiles = crate::render::profiles(d)?;
    let mut payloads = BTreeMap::new();
    let mut extra_files: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (name, inst) in d.enabled_instances() {
        let r = rendered.instances.get(name);
        let p = payload(d, name, inst, r, secrets, facts)?;
        // Files render does not show (network file, spec, certificates) go into the hash.
        let extra = p
            .files
            .iter()
            .filter(|f| {
                f.path == NETWORK_FILE
                    || !r.is_some_and(|r| r.files.iter().any(|x| x.path == f.path))
            })
            .map(|f| (f.path.clone(), hash_file(facts.hash_key, f)))
            .collect();
        extra_files.insert(name.to_string(), extra);
        payloads.insert(name.to_string(), p);
    }
    let inputs = DesiredInputs {
        deployment: d,
        hash_key: facts.hash_key,
        rendered: &rendered,
        profiles: &profiles,
        images: facts.images,
        extra_files: &extra_files,
        external_addresses: facts.external_addresses,
        version: crate::VERSION,
    };
    Ok(DesiredState {
        resources: desired(&inputs)?,
        payloads,
    })
}

/// What goes into instance `name` besides its body: the rendered files, its network file,
/// its service spec, the certificates that exist; what step-ca provides later is listed.
fn payload(
    d: &Deployment,
    name: &str,
    inst: &crate::config::Instance,
    r: Option<&crate::render::RenderedInstance>,
    secrets: Option<&Secrets>,
    facts: &Facts<'_>,
) -> Result<InstancePayload, EngineError> {
    let mut files: Vec<PushFile> = r
        .map(|r| r.files.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|f| PushFile {
            path: f.path.clone(),
            contents: f.contents.clone(),
            uid: f.uid,
            gid: f.gid,
            mode: f.mode,
        })
        .collect();
    files.push(network_file(d, name, inst, facts)?);
    let image = facts
        .images
        .get(name)
        .cloned()
        .unwrap_or_else(|| ImageChoice::unresolved(String::new()));
    let own_command = match (r, &image.service) {
        (Some(r), Some(of_image)) if super::desired::pushes_spec(r, &image) => {
            files.push(service_file(name, r, of_image)?);
            false
        }
        (Some(r), _) => r.command.is_some() && image.fingerprint != UNRESOLVED,
        (None, _) => false,
    };
    let (mut pending, mut from_step_ca) = (Vec::new(), Vec::new());
    for e in r.map(|r| r.expected_files.as_slice()).unwrap_or_default() {
        if e.source.is_step_ca() {
            from_step_ca.push(e.clone());
            continue;
        }
        match expected_contents(e, secrets, facts) {
            Some(c) => files.push(PushFile {
                path: e.path.clone(),
                contents: c.into_bytes(),
                uid: e.uid,
                gid: e.gid,
                mode: e.mode,
            }),
            None => pending.push(e.path.clone()),
        }
    }
    Ok(InstancePayload {
        image,
        files,
        pending,
        from_step_ca,
        own_command,
    })
}

/// The network file atlas-init applies: fixed addresses on every NIC.
fn network_file(
    d: &Deployment,
    name: &str,
    inst: &crate::config::Instance,
    facts: &Facts<'_>,
) -> Result<PushFile, EngineError> {
    let external = match (
        inst.nics.iter().any(|n| n.network == NetworkRole::External),
        facts.external,
        facts.external_addresses.get(name),
    ) {
        (true, Some(net), Some(addr)) => Some(ExternalNet {
            gateway: net.addr(),
            prefix: net.prefix_len(),
            address: *addr,
        }),
        _ => None,
    };
    let json = network_spec(d, name, external)?
        .to_json()
        .map_err(|e| EngineError::object(format!("instance {name}"), e))?;
    Ok(PushFile {
        path: NETWORK_FILE.to_string(),
        contents: json.into_bytes(),
        uid: 0,
        gid: 0,
        mode: 0o644,
    })
}

/// The contents of an expected file that exist now (none yet: it is pending).
fn expected_contents(
    e: &ExpectedFile,
    secrets: Option<&Secrets>,
    facts: &Facts<'_>,
) -> Option<String> {
    match (&e.source, secrets) {
        (FileSource::IncusMetricsCertificate, Some(s)) => Some(s.metrics_cert_pem.clone()),
        (FileSource::IncusMetricsKey, Some(s)) => Some(s.metrics_key_pem.clone()),
        (FileSource::IncusServerCertificate, _) if !facts.server_cert_pem.is_empty() => {
            Some(facts.server_cert_pem.to_string())
        }
        _ => None,
    }
}

/// `/etc/atlas/service.json`: the image's spec with the rendered command line and the
/// rendered environment laid over the image's. Validated by the code atlas-init reads it
/// with, so a file it would refuse is never pushed; readable by root alone (atlas-init reads
/// it before dropping privileges) when the environment holds a secret.
fn service_file(
    name: &str,
    r: &crate::render::RenderedInstance,
    of_image: &atlas_image::init::ServiceSpec,
) -> Result<PushFile, EngineError> {
    let bad = |e: atlas_image::init::SpecError| {
        EngineError::object(
            format!("instance {name}"),
            format!(
                "its service spec (the image's with the rendered command and environment) is invalid: {e}"
            ),
        )
    };
    let command = r.command.as_ref().ok_or_else(|| {
        EngineError::object(
            format!("instance {name}"),
            "internal error: no rendered command",
        )
    })?;
    let mut spec = command.apply_to(of_image).map_err(bad)?;
    for (k, v) in &r.environment {
        spec.set_env(k, v);
    }
    let json = spec.to_json().map_err(bad)?;
    Ok(PushFile {
        path: SERVICE_FILE.to_string(),
        contents: json.into_bytes(),
        uid: 0,
        gid: 0,
        mode: if r.secret_env.is_empty() {
            0o644
        } else {
            0o600
        },
    })
}

/// The alias each enabled instance runs: `images.aliases.<service>` or `atlas/<service>`.
pub fn image_alias(config: &Config, service: &str) -> String {
    config
        .images
        .aliases
        .get(service)
        .cloned()
        .unwrap_or_else(|| format!("atlas/{service}"))
}

/// Resolves every enabled instance's alias to a fingerprint in the Atlas project. Before the
/// project exists nothing can be resolved: the plan then shows the alias unresolved.
pub async fn resolve_images(
    project: &Client,
    d: &Deployment,
    project_exists: bool,
    supplied: bool,
) -> Result<BTreeMap<String, ImageChoice>, EngineError> {
    let config = &d.config;
    let mut out = BTreeMap::new();
    let mut specs: BTreeMap<String, Option<atlas_image::init::ServiceSpec>> = BTreeMap::new();
    for (name, inst) in d.enabled_instances() {
        let service = inst.service.as_str();
        let alias = image_alias(config, service);
        let fingerprint = if project_exists {
            match project.get_image_alias(&alias).await.optional()? {
                Some(a) => a.value.target,
                // The images step builds it before anything uses it.
                None if supplied => UNRESOLVED.to_string(),
                None => {
                    return Err(EngineError::MissingImage {
                        instance: name.to_string(),
                        service: service.to_string(),
                        alias,
                        project: config.incus.project.clone(),
                    });
                }
            }
        } else {
            UNRESOLVED.to_string()
        };
        if fingerprint == UNRESOLVED {
            out.insert(name.to_string(), ImageChoice::unresolved(alias));
            continue;
        }
        if !specs.contains_key(&fingerprint) {
            let spec = image_service_spec(project, &alias, &fingerprint).await?;
            specs.insert(fingerprint.clone(), spec);
        }
        let service = specs[&fingerprint].clone();
        out.insert(
            name.to_string(),
            ImageChoice {
                alias,
                fingerprint,
                service,
            },
        );
    }
    Ok(out)
}

/// The image's own service spec, from its `atlas.service.spec` property (`None` when it has
/// none: not built by atlas-install, or by one from before the property).
async fn image_service_spec(
    project: &Client,
    alias: &str,
    fingerprint: &str,
) -> Result<Option<atlas_image::init::ServiceSpec>, EngineError> {
    let image = project.get_image(fingerprint).await?.value;
    let Some(text) = image
        .properties
        .get(atlas_image::build::SERVICE_SPEC_PROPERTY)
    else {
        return Ok(None);
    };
    atlas_image::init::ServiceSpec::from_json(text)
        .map(Some)
        .map_err(|e| {
            EngineError::object(
                format!("image {alias} ({fingerprint})"),
                format!(
                    "its property {} is not a service spec atlas-init would run ({e}); rebuild the image with atlas-install",
                    atlas_image::build::SERVICE_SPEC_PROPERTY
                ),
            )
        })
}

/// Addresses on the external bridge: the one recorded on an existing instance, else the
/// highest free address of the bridge's range (deterministic, away from DHCP's low end).
pub async fn external_addresses(
    root: &Client,
    config: &Config,
    external: Option<Ipv4Net>,
    existing: &BTreeMap<String, Instance>,
) -> Result<BTreeMap<String, Ipv4Addr>, EngineError> {
    let mut out = BTreeMap::new();
    let Some(net) = external else { return Ok(out) };
    let wanting: Vec<&str> = config
        .enabled_instances()
        .into_iter()
        .filter(|(_, i)| i.nics.iter().any(|n| n.network == NetworkRole::External))
        .map(|(n, _)| n)
        .collect();
    let mut fresh = Vec::new();
    for name in wanting {
        match existing
            .get(name)
            .and_then(|i| i.config.get(keys::EXTERNAL_ADDRESS))
            .and_then(|a| a.parse().ok())
        {
            Some(a) => {
                out.insert(name.to_string(), a);
            }
            None => fresh.push(name),
        }
    }
    if fresh.is_empty() {
        return Ok(out);
    }
    let path = format!("/1.0/networks/{}/leases", config.incus.external_network);
    let leases: Vec<Value> = root
        .get_path::<Option<Vec<Value>>>(&path, false)
        .await?
        .value
        .unwrap_or_default();
    let mut used: Vec<Ipv4Addr> = leases
        .iter()
        .filter_map(|l| l["address"].as_str()?.parse().ok())
        .collect();
    used.extend(out.values().copied());
    used.push(net.addr());
    let mut candidates = net.hosts().rev();
    for name in fresh {
        let pick = candidates
            .by_ref()
            .find(|a| !used.contains(a))
            .ok_or_else(|| {
                EngineError::object(
                    format!("network {}", config.incus.external_network),
                    "has no free IPv4 address left for Caddy's outside NIC",
                )
            })?;
        used.push(pick);
        out.insert(name.to_string(), pick);
    }
    Ok(out)
}

/// What Incus holds, read with GETs only.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub project_exists: bool,
    pub observed: BTreeMap<ResourceAddress, Observed>,
    /// Owned objects the config no longer names.
    pub owned_elsewhere: Vec<ResourceAddress>,
    pub instances: BTreeMap<String, Instance>,
    /// Project config (state keys such as the bucket outcome).
    pub project_config: BTreeMap<String, String>,
    /// Everything read about each object above (its whole body, an instance's status), by
    /// address: what a saved plan's fingerprint is taken of (see [`Observation::fingerprint`]).
    pub seen: BTreeMap<String, serde_json::Value>,
}

impl Observation {
    /// sha256 over what was read: equal for two observations when Incus held the same
    /// objects, in the same state, both times.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let bytes = serde_json::to_vec(&self.seen).expect("JSON values always serialize");
        hex::encode(Sha256::digest(bytes))
    }

    fn saw(&mut self, a: &ResourceAddress, body: &impl serde::Serialize) {
        let v = serde_json::to_value(body).unwrap_or_default();
        self.seen.insert(a.to_string(), v);
    }
}

fn classify(config: &BTreeMap<String, String>, etag: Option<String>) -> Observed {
    Observed::from_config(config, etag)
}

/// The project alone (for [`super::ensure_project`]).
pub async fn observe_project(
    root: &Client,
    config: &Config,
) -> Result<BTreeMap<ResourceAddress, Observed>, EngineError> {
    let pname = &config.incus.project;
    let a = ResourceAddress {
        kind: ResourceKind::Project,
        name: pname.clone(),
        pool: None,
    };
    let o = match root.get_project(pname).await.optional()? {
        None => Observed::Absent,
        Some(p) => classify(&p.value.config, p.etag),
    };
    Ok(BTreeMap::from([(a, o)]))
}

/// The bridges: owned by this project, by another Atlas project, or foreign (only those the
/// config names). Bridges of nobody that the config does not name are not recorded.
async fn observe_networks(
    root: &Client,
    config: &Config,
    obs: &mut Observation,
) -> Result<(), EngineError> {
    let pname = &config.incus.project;
    for n in root.in_project("default").networks().await? {
        let a = ResourceAddress {
            kind: ResourceKind::Network,
            name: n.name.clone(),
            pool: None,
        };
        let named = config.networks.iter().any(|(_, w)| w.name == n.name);
        if !n.managed {
            if named {
                obs.saw(&a, &n);
                obs.observed.insert(a, Observed::Foreign);
            }
            continue;
        }
        let o = match n.config.get(keys::NETWORK_PROJECT) {
            Some(p) if p == pname => classify(&n.config, None),
            Some(p) if matches!(classify(&n.config, None), Observed::Owned { .. }) => {
                Observed::OtherProject { project: p.clone() }
            }
            _ => Observed::Foreign,
        };
        if matches!(o, Observed::Owned { .. }) {
            obs.owned_elsewhere.push(a.clone());
        }
        // Bridges of other installs or of nobody, not named here, do not make a plan stale.
        if named || matches!(o, Observed::Owned { .. }) {
            obs.saw(&a, &n);
        }
        obs.observed.insert(a, o);
    }
    Ok(())
}

/// Reads the project, its owned networks, profiles, volumes and instances.
pub async fn observe(root: &Client, config: &Config) -> Result<Observation, EngineError> {
    let pname = &config.incus.project;
    let project = root.in_project(pname);
    let pool = &config.incus.storage_pool;
    let mut obs = Observation::default();
    let addr = |kind, name: &str, pool: Option<&str>| ResourceAddress {
        kind,
        name: name.to_string(),
        pool: pool.map(str::to_string),
    };

    match root.get_project(pname).await.optional()? {
        None => {
            obs.observed
                .insert(addr(ResourceKind::Project, pname, None), Observed::Absent);
        }
        Some(p) => {
            obs.project_exists = true;
            obs.project_config = p.value.config.clone();
            let a = addr(ResourceKind::Project, pname, None);
            obs.saw(&a, &p.value);
            obs.observed.insert(a, classify(&p.value.config, p.etag));
        }
    }
    observe_networks(root, config, &mut obs).await?;
    if !obs.project_exists {
        return Ok(obs);
    }
    for p in project.profiles().await? {
        let a = addr(ResourceKind::Profile, &p.name, None);
        let o = classify(&p.config, None);
        if matches!(o, Observed::Owned { .. }) {
            obs.owned_elsewhere.push(a.clone());
        }
        obs.saw(&a, &p);
        obs.observed.insert(a, o);
    }
    if root.get_storage_pool(pool).await.optional()?.is_some() {
        for v in project.volumes(pool).await? {
            if v.kind != "custom" && !v.kind.is_empty() {
                continue;
            }
            let a = addr(ResourceKind::Volume, &v.name, Some(pool));
            let o = classify(&v.config, None);
            if matches!(o, Observed::Owned { .. }) {
                obs.owned_elsewhere.push(a.clone());
            }
            obs.saw(&a, &v);
            obs.observed.insert(a, o);
        }
    }
    for i in project.instances().await? {
        let a = addr(ResourceKind::Instance, &i.name, None);
        let o = classify(&i.config, None);
        if matches!(o, Observed::Owned { .. }) {
            obs.owned_elsewhere.push(a.clone());
        }
        obs.saw(&a, &(&i, &i.status));
        obs.observed.insert(a, o);
        obs.instances.insert(i.name.clone(), i);
    }
    Ok(obs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_default_to_atlas_service() {
        let mut cfg = Config::builtin();
        assert_eq!(image_alias(&cfg, "caddy"), "atlas/caddy");
        cfg.images
            .aliases
            .insert("caddy".into(), "mine/caddy".into());
        assert_eq!(image_alias(&cfg, "caddy"), "mine/caddy");
    }

    #[test]
    fn payload_has_network_file_and_the_certificates_that_exist() {
        let cfg = Config::builtin();
        let creds = placeholder();
        let secrets = Secrets {
            credentials: creds.clone(),
            metrics_cert_pem: "CERT".into(),
            metrics_key_pem: "KEY".into(),
            hash_key: "k".into(),
        };
        let images: BTreeMap<String, ImageChoice> = cfg
            .enabled_instances()
            .into_iter()
            .map(|(n, _)| {
                (
                    n.to_string(),
                    ImageChoice {
                        alias: "a".into(),
                        fingerprint: "f".into(),
                        service: None,
                    },
                )
            })
            .collect();
        let ext: BTreeMap<String, Ipv4Addr> =
            BTreeMap::from([("caddy01".to_string(), Ipv4Addr::new(10, 199, 0, 254))]);
        let facts = Facts {
            images: &images,
            external: Some("10.199.0.1/24".parse().unwrap()),
            external_addresses: &ext,
            server_cert_pem: "SERVER",
            hash_key: "k",
        };
        let d = build(
            &Deployment::standalone(&cfg),
            &creds,
            Some(&secrets),
            &facts,
        )
        .unwrap();
        let prom = &d.payloads["prometheus01"];
        let paths: Vec<&str> = prom.files.iter().map(|f| f.path.as_str()).collect();
        assert!(paths.contains(&NETWORK_FILE), "{paths:?}");
        let key = prom
            .files
            .iter()
            .find(|f| f.contents == b"KEY")
            .expect("metrics key pushed");
        assert_eq!(key.mode & 0o077, 0, "the key is private");
        let caddy = d.resources.iter().find(|r| r.name() == "caddy01").unwrap();
        assert_eq!(caddy.body.config()[keys::EXTERNAL_ADDRESS], "10.199.0.254");
        assert_eq!(
            caddy.body.devices().unwrap()["eth2"]["ipv4.address"],
            "10.199.0.254"
        );
        let net = String::from_utf8(
            d.payloads["caddy01"]
                .files
                .iter()
                .find(|f| f.path == NETWORK_FILE)
                .unwrap()
                .contents
                .clone(),
        )
        .unwrap();
        assert!(net.contains("10.199.0.254/24"), "{net}");
        // A new metrics key changes Prometheus only.
        let other = Secrets {
            metrics_key_pem: "KEY2".into(),
            ..secrets
        };
        let d2 = build(&Deployment::standalone(&cfg), &creds, Some(&other), &facts).unwrap();
        assert_eq!(changed(&d, &d2), ["prometheus01"]);
    }

    #[test]
    fn pushed_files_stand_in_hashes_as_keyed_digests_only() {
        use sha2::Digest as _;
        let cfg = Config::builtin();
        let d = Deployment::standalone(&cfg);
        let images: BTreeMap<String, ImageChoice> = cfg
            .enabled_instances()
            .into_iter()
            .map(|(n, _)| (n.to_string(), ImageChoice::unresolved("a".into())))
            .collect();
        let ext = BTreeMap::from([("caddy01".to_string(), Ipv4Addr::new(10, 199, 0, 254))]);
        let with_key = |hash_key| {
            build(
                &d,
                &placeholder(),
                None,
                &Facts {
                    images: &images,
                    external: Some("10.199.0.1/24".parse().unwrap()),
                    external_addresses: &ext,
                    server_cert_pem: "",
                    hash_key,
                },
            )
            .unwrap()
        };
        let (a, b) = (with_key("key-one"), with_key("key-two"));
        let grafana = |x: &DesiredState| {
            x.resources
                .iter()
                .find(|r| r.name() == "grafana01")
                .unwrap()
                .clone()
        };
        let (ga, gb) = (grafana(&a), grafana(&b));
        assert_ne!(ga.hash, gb.hash, "the key is part of every file's digest");
        // No stored digest is the plain SHA-256 of what the file holds (here Grafana's admin
        // password, in its environment file or spec): nothing to test guesses against.
        let rendered =
            crate::render::render(&d, &placeholder()).unwrap().instances["grafana01"].clone();
        for f in &rendered.files {
            let mut h = sha2::Sha256::new();
            h.update(&f.contents);
            h.update(format!("\0{:o}:{}:{}", f.mode, f.uid, f.gid));
            let plain = hex::encode(h.finalize());
            assert!(!ga.extra_hashes.values().any(|v| *v == plain), "{}", f.path);
            assert_eq!(
                ga.extra_hashes[&format!("file:{}", f.path)],
                super::super::desired::file_digest("key-one", &f.contents, f.mode, f.uid, f.gid)
            );
        }
    }

    /// Instances whose hash differs between two desired states.
    fn changed<'a>(a: &'a DesiredState, b: &DesiredState) -> Vec<&'a str> {
        a.resources
            .iter()
            .zip(&b.resources)
            .filter(|(x, y)| x.hash != y.hash)
            .map(|(x, _)| x.name())
            .collect()
    }

    fn image_spec(entrypoint: &[&str], cmd: &[&str]) -> atlas_image::init::ServiceSpec {
        atlas_image::init::ServiceSpec {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into(), "FROM_IMAGE=1".into()],
            working_dir: Some("/prometheus".into()),
            user: Some("65534:65534".into()),
            stop_grace_period: 10,
        }
    }

    fn build_with(cfg: &Config, spec: Option<atlas_image::init::ServiceSpec>) -> DesiredState {
        let creds = placeholder();
        let images: BTreeMap<String, ImageChoice> = cfg
            .enabled_instances()
            .into_iter()
            .map(|(n, _)| {
                let choice = ImageChoice {
                    alias: "a".into(),
                    fingerprint: "f".into(),
                    service: spec.clone(),
                };
                (n.to_string(), choice)
            })
            .collect();
        let ext = BTreeMap::from([("caddy01".to_string(), Ipv4Addr::new(10, 199, 0, 254))]);
        let facts = Facts {
            images: &images,
            external: Some("10.199.0.1/24".parse().unwrap()),
            external_addresses: &ext,
            server_cert_pem: "",
            hash_key: "k",
        };
        build(&Deployment::standalone(cfg), &creds, None, &facts).unwrap()
    }

    fn pushed_spec(d: &DesiredState, name: &str) -> Option<atlas_image::init::ServiceSpec> {
        let f = d.payloads[name]
            .files
            .iter()
            .find(|f| f.path == SERVICE_FILE)?;
        Some(
            atlas_image::init::ServiceSpec::from_json(std::str::from_utf8(&f.contents).unwrap())
                .unwrap(),
        )
    }

    #[test]
    fn the_rendered_command_is_pushed_as_the_images_spec_with_that_command() {
        let cfg = Config::builtin();
        let of_image = image_spec(&["/bin/prometheus"], &["--storage.tsdb.retention.time=15d"]);
        let d = build_with(&cfg, Some(of_image.clone()));
        let rendered =
            crate::render::render(&Deployment::standalone(&cfg), &placeholder()).unwrap();
        for (name, r) in &rendered.instances {
            let c = r
                .command
                .as_ref()
                .expect("every service renders its command");
            let spec = pushed_spec(&d, name).expect("service.json pushed");
            assert_eq!(
                (spec.entrypoint.clone(), spec.cmd.clone()),
                (c.wrapper.clone(), c.argv.clone()),
                "{name}"
            );
            // User and working directory stay the image's; the rendered environment is laid
            // over the image's, in the file and not in the instance's config.
            assert_eq!(
                (spec.user.clone(), spec.working_dir.clone()),
                (of_image.user.clone(), of_image.working_dir.clone())
            );
            let mut env = of_image.clone();
            for (k, v) in &r.environment {
                env.set_env(k, v);
            }
            assert_eq!(spec.env, env.env, "{name}");
            let body = &d.resources.iter().find(|x| x.name() == name).unwrap().body;
            assert!(
                !body.config().keys().any(|k| k.starts_with("environment.")),
                "{name}: {body:?}"
            );
            let file = d.payloads[name]
                .files
                .iter()
                .find(|f| f.path == SERVICE_FILE)
                .unwrap();
            let secret = !r.secret_env.is_empty();
            assert_eq!(file.mode, if secret { 0o600 } else { 0o644 }, "{name}");
            assert!(!d.payloads[name].own_command);
        }
        let grafana = pushed_spec(&d, "grafana01").unwrap();
        assert_eq!(grafana.env_var("GF_SECURITY_ADMIN_PASSWORD"), Some("pw"));
        // A new retention: Prometheus' spec (and hash) changes, and Grafana's Services
        // dashboard, which draws the retention line; nothing else.
        let mut cfg2 = cfg.clone();
        cfg2.prometheus.retention_time = "9d".into();
        let d2 = build_with(&cfg2, Some(of_image.clone()));
        assert!(
            pushed_spec(&d2, "prometheus01")
                .unwrap()
                .cmd
                .contains(&"--storage.tsdb.retention.time=9d".to_string())
        );
        assert_eq!(changed(&d, &d2), ["prometheus01", "grafana01"]);
        // A new image with another environment changes the spec too (no stale copy).
        let mut newer = of_image.clone();
        newer.env.push("NEW=1".into());
        let d3 = build_with(&cfg, Some(newer));
        assert!(
            pushed_spec(&d3, "prometheus01")
                .unwrap()
                .env
                .contains(&"NEW=1".to_string())
        );
    }

    #[test]
    fn an_image_without_a_spec_keeps_its_command_and_says_so() {
        let cfg = Config::builtin();
        let d = build_with(&cfg, None);
        assert!(pushed_spec(&d, "prometheus01").is_none());
        assert!(d.payloads["prometheus01"].own_command);
        // Its environment then goes where the image's own command finds it.
        let grafana = d
            .resources
            .iter()
            .find(|x| x.name() == "grafana01")
            .unwrap();
        assert!(
            grafana
                .body
                .config()
                .contains_key("environment.GF_SECURITY_ADMIN_USER")
        );
        // Not resolved yet (first plan): nothing to say, the instance is created anyway.
        let ext = BTreeMap::from([("caddy01".to_string(), Ipv4Addr::new(10, 199, 0, 254))]);
        let unresolved: BTreeMap<String, ImageChoice> = cfg
            .enabled_instances()
            .into_iter()
            .map(|(n, _)| (n.to_string(), ImageChoice::unresolved("a".into())))
            .collect();
        let d = build(
            &Deployment::standalone(&cfg),
            &placeholder(),
            None,
            &Facts {
                images: &unresolved,
                external: Some("10.199.0.1/24".parse().unwrap()),
                external_addresses: &ext,
                server_cert_pem: "",
                hash_key: "k",
            },
        )
        .unwrap();
        assert!(!d.payloads["prometheus01"].own_command);
    }

    fn placeholder() -> Credentials {
        Credentials {
            grafana_admin_password: "pw".into(),
            step_ca_password: "s".into(),
            mosquitto: BTreeMap::from([(
                "atlas".to_string(),
                crate::render::MqttCredential {
                    password: "m".into(),
                    salt: [1; 12],
                },
            )]),
        }
    }
}
