//! Desired state: every Incus object the config asks for, as [`Resource`]s with the exact
//! bodies atlas would create them with. Pure: no Incus, no clock, no randomness.

use std::collections::BTreeMap;

use atlas_image::init::ServiceSpec;

use crate::config::Config;
use crate::deployment::Deployment;
use crate::render::{ProfileSpec, RenderedSet};

use super::resource::{Body, Resource};
use crate::incus::{InstanceCreate, InstanceSource, Network, Profile, Project, StorageVolume};
use crate::state::keys;

/// Inputs beyond the config: what render produced and which image each instance runs.
pub struct DesiredInputs<'a> {
    pub deployment: &'a Deployment,
    pub rendered: &'a RenderedSet,
    pub profiles: &'a [ProfileSpec],
    /// Image alias (in the Atlas project) per instance name.
    pub images: &'a BTreeMap<String, ImageChoice>,
    /// Extra files per instance the engine pushes besides rendered ones (network file for
    /// our PID 1, certificates), as (path, sha256 hex of contents).
    pub extra_files: &'a BTreeMap<String, Vec<(String, String)>>,
    /// Key of the HMACs that stand for the files in the hash ([`file_digest`]).
    pub hash_key: &'a str,
    /// Address chosen per instance on the external bridge (Caddy's outside NIC); recorded on
    /// the instance as `user.atlas.external-address` so re-runs keep it.
    pub external_addresses: &'a BTreeMap<String, std::net::Ipv4Addr>,
    pub version: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageChoice {
    pub alias: String,
    /// Fingerprint the alias points to; part of the instance's hash so a new image replaces it.
    pub fingerprint: String,
    /// The image's own service spec (its `atlas.service.spec` property): what the instance's
    /// spec is derived from. `None` for an image not resolved yet, or one built without it.
    pub service: Option<ServiceSpec>,
}

impl ImageChoice {
    /// An image that is not known yet (the project or the alias does not exist yet).
    pub fn unresolved(alias: String) -> ImageChoice {
        ImageChoice {
            alias,
            fingerprint: super::state::UNRESOLVED.to_string(),
            service: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error(
        "no image is known for instance {0}: build or import its image first (atlas-install image build)"
    )]
    MissingImage(String),
}

/// Everything that should exist, in step order.
pub fn desired(inputs: &DesiredInputs<'_>) -> Result<Vec<Resource>, DesiredError> {
    let d = inputs.deployment;
    let v = inputs.version;
    let mut out = vec![project(&d.config, v)];
    out.extend(networks(&d.config, v));
    out.extend(inputs.profiles.iter().map(|p| profile(p, v)));
    out.extend(volumes(d, v));
    for (name, _) in d.enabled_instances() {
        out.push(instance(inputs, name)?);
    }
    Ok(out)
}

/// The Atlas project as atlas creates it.
pub fn project_resource(cfg: &Config, v: &str) -> Resource {
    project(cfg, v)
}

fn strings<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn project(cfg: &Config, v: &str) -> Resource {
    let mut p = Project::new(&cfg.incus.project);
    p.description = "Atlas observability stack (managed by atlas-install)".into();
    p.config = strings([
        ("features.images", "true".into()),
        ("features.profiles", "true".into()),
        ("features.storage.volumes", "true".into()),
        ("features.storage.buckets", "true".into()),
        ("features.networks", "false".into()),
    ]);
    Resource::new(Body::Project(p), None, v)
}

fn networks(cfg: &Config, v: &str) -> Vec<Resource> {
    cfg.networks
        .iter()
        .map(|(role, n)| {
            let mut config = strings([
                ("ipv4.address", n.ipv4.to_string()),
                ("ipv4.nat", n.ipv4_nat.to_string()),
                (
                    "ipv6.address",
                    n.ipv6.map_or_else(|| "none".to_string(), |a| a.to_string()),
                ),
                ("ipv6.nat", (n.ipv6.is_some() && n.ipv6_nat).to_string()),
                // dnsmasq answers `<instance>.incus` names on every Atlas bridge.
                ("dns.domain", "incus".into()),
                (keys::NETWORK_PROJECT, cfg.incus.project.clone()),
            ]);
            if n.ipv6.is_some() {
                // Incus refuses a NIC's static `ipv6.address` unless the bridge hands out
                // stateful DHCPv6 addresses.
                config.insert("ipv6.dhcp.stateful".into(), "true".into());
            }
            let mut net = Network::bridge(&n.name, config);
            net.description = format!("Atlas {} network (managed by atlas-install)", role.as_str());
            Resource::new(Body::Network(net), None, v)
        })
        .collect()
}

fn profile(p: &ProfileSpec, v: &str) -> Resource {
    let mut body = Profile::new(&p.name);
    body.description = p.description.clone();
    body.config = p.config.clone();
    body.devices = p.devices.clone();
    Resource::new(Body::Profile(body), None, v)
}

fn volumes(d: &Deployment, v: &str) -> Vec<Resource> {
    let pool = d.config.incus.storage_pool.as_str();
    d.enabled_instances()
        .into_iter()
        .filter_map(|(name, inst)| inst.volume.as_ref().map(|vol| (name, inst, vol)))
        .map(|(name, inst, vol)| {
            // A fresh volume belongs to root; services that drop privileges (Prometheus as
            // nobody, step-ca as step, ...) could not write their data directory. Incus
            // applies these on creation only, so existing data keeps its owners.
            let (uid, gid) = crate::render::paths::service_user(inst.service);
            let mut config = strings([
                ("size", vol.size.text.clone()),
                ("initial.uid", uid.to_string()),
                ("initial.gid", gid.to_string()),
                ("initial.mode", "0750".into()),
            ]);
            if vol.snapshots.enabled {
                config.extend(strings([
                    ("snapshots.schedule", vol.snapshots.schedule.clone()),
                    ("snapshots.expiry", vol.snapshots.expiry.clone()),
                    ("snapshots.pattern", vol.snapshots.pattern.clone()),
                ]));
            }
            let mut body = StorageVolume::filesystem(&vol.name, config);
            body.description = format!("Data of {name} (managed by atlas-install)");
            Resource::new(Body::Volume(body), Some(pool), v)
        })
        .collect()
}

fn instance(inputs: &DesiredInputs<'_>, name: &str) -> Result<Resource, DesiredError> {
    let d = inputs.deployment;
    let cfg = &d.config;
    let inst = d
        .instance(name)
        .ok_or_else(|| DesiredError::MissingImage(name.to_string()))?;
    let image = inputs
        .images
        .get(name)
        .ok_or_else(|| DesiredError::MissingImage(name.to_string()))?;
    let rendered = inputs.rendered.instances.get(name);
    let mut config = BTreeMap::new();
    let mut secret_keys = Vec::new();
    // With a service spec pushed, the environment travels in it (out of `incus config
    // show`); otherwise the image's own command gets it as `environment.*`.
    if let Some(r) = rendered.filter(|r| !pushes_spec(r, image)) {
        for (k, val) in &r.environment {
            let key = format!("environment.{k}");
            if r.secret_env.contains(k) {
                secret_keys.push(key.clone());
            }
            config.insert(key, val.clone());
        }
    }
    let mut devices = crate::render::instance_devices(d, name);
    if let Some(addr) = inputs.external_addresses.get(name) {
        config.insert(keys::EXTERNAL_ADDRESS.to_string(), addr.to_string());
        // A reservation on the bridge, so no other NIC gets the address Caddy uses.
        for (i, nic) in inst.nics.iter().enumerate() {
            if nic.network == crate::config::NetworkRole::External {
                let dev = format!("eth{i}");
                devices.insert(
                    dev.clone(),
                    strings([
                        ("type", "nic".into()),
                        ("name", dev),
                        ("network", cfg.incus.external_network.clone()),
                        ("ipv4.address", addr.to_string()),
                    ]),
                );
            }
        }
    }
    let mut body = InstanceCreate::container(name, InstanceSource::alias(&image.alias));
    body.description = format!("Atlas {} (managed by atlas-install)", inst.service.as_str());
    body.profiles = vec!["default".to_string(), inst.profile.clone()];
    body.config = config;
    body.devices = devices;
    // Files and the image are not part of the body, but a change to either must reach the
    // container: they go into its hash. The command line travels as a file (the service
    // spec, among the extra files), so it is hashed exactly as it is pushed.
    let mut extra = BTreeMap::new();
    extra.insert("image".to_string(), image.fingerprint.clone());
    if let Some(r) = rendered {
        for f in &r.files {
            extra.insert(
                format!("file:{}", f.path),
                file_digest(inputs.hash_key, &f.contents, f.mode, f.uid, f.gid),
            );
        }
    }
    for (path, hash) in inputs.extra_files.get(name).into_iter().flatten() {
        extra.insert(format!("file:{path}"), hash.clone());
    }
    Ok(Resource::new(Body::Instance(body), None, inputs.version)
        .with_extra(extra)
        .with_secret_keys(secret_keys))
}

/// Whether the instance gets `/etc/atlas/service.json` of its own: a rendered command, and an
/// image that carries the spec to derive it from.
pub fn pushes_spec(r: &crate::render::RenderedInstance, image: &ImageChoice) -> bool {
    r.command.is_some() && image.service.is_some()
}

/// What stands for a pushed file in hashes and install records: an HMAC of its contents,
/// mode and owner under the project's hash key (a secret), so that no stored hash can be
/// used to guess what a file holds (a weak password in it, say).
pub fn file_digest(key: &str, contents: &[u8], mode: u32, uid: u32, gid: u32) -> String {
    crate::hmac::sha256_hex(
        key.as_bytes(),
        &[contents, format!("\0{mode:o}:{uid}:{gid}").as_bytes()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::resource::ResourceKind;
    use crate::render::{Credentials, MqttCredential};

    fn creds(pw: &str) -> Credentials {
        Credentials {
            grafana_admin_password: pw.into(),
            step_ca_password: "s".into(),
            mosquitto: BTreeMap::from([(
                "atlas".to_string(),
                MqttCredential {
                    password: "m".into(),
                    salt: [1; 12],
                },
            )]),
        }
    }

    fn build(cfg: &Config, creds: &Credentials, fp: &str) -> Vec<Resource> {
        let d = Deployment::standalone(cfg);
        let rendered = crate::render::render(&d, creds).unwrap();
        let profiles = crate::render::profiles(&d).unwrap();
        let images = cfg
            .enabled_instances()
            .into_iter()
            .map(|(n, i)| {
                (
                    n.to_string(),
                    ImageChoice {
                        alias: format!("atlas/{}", i.service.as_str()),
                        fingerprint: fp.into(),
                        service: None,
                    },
                )
            })
            .collect();
        let inputs = DesiredInputs {
            deployment: &d,
            hash_key: "k",
            rendered: &rendered,
            profiles: &profiles,
            images: &images,
            extra_files: &BTreeMap::new(),
            external_addresses: &BTreeMap::new(),
            version: "0.1.0",
        };
        desired(&inputs).unwrap()
    }

    #[test]
    fn builtin_config_gives_the_seed_objects_in_step_order() {
        let cfg = Config::builtin();
        let all = build(&cfg, &creds("pw"), "f1");
        let count = |k| all.iter().filter(|r| r.kind() == k).count();
        assert_eq!(count(ResourceKind::Project), 1);
        assert_eq!(count(ResourceKind::Network), 5);
        assert_eq!(
            count(ResourceKind::Volume),
            7,
            "six data volumes in the seed, and Caddy's /data"
        );
        assert_eq!(
            count(ResourceKind::Instance),
            8,
            "cloudflared is off without a token"
        );
        let kinds: Vec<_> = all.iter().map(|r| r.kind()).collect();
        let mut sorted = kinds.clone();
        sorted.sort();
        assert_eq!(kinds, sorted, "resources come in step order");
    }

    #[test]
    fn inputs_that_matter_change_only_the_affected_instance() {
        let cfg = Config::builtin();
        let a = build(&cfg, &creds("pw"), "f1");
        let b = build(&cfg, &creds("other"), "f1");
        let c = build(&cfg, &creds("pw"), "f2");
        let changed = |x: &[Resource], y: &[Resource]| -> Vec<String> {
            x.iter()
                .zip(y)
                .filter(|(p, q)| p.hash != q.hash)
                .map(|(p, _)| p.name().to_string())
                .collect()
        };
        assert_eq!(
            changed(&a, &b),
            vec!["grafana01".to_string()],
            "a new admin password touches Grafana only"
        );
        assert_eq!(
            changed(&a, &c).len(),
            8,
            "a new image fingerprint touches every instance"
        );
        assert!(
            changed(&a, &build(&cfg, &creds("pw"), "f1")).is_empty(),
            "same inputs, same hashes"
        );
    }

    #[test]
    fn secret_environment_is_marked_and_redacted() {
        let cfg = Config::builtin();
        let all = build(&cfg, &creds("hunter2-secret"), "f1");
        let grafana = all.iter().find(|r| r.name() == "grafana01").unwrap();
        assert!(
            grafana
                .secret_keys
                .iter()
                .any(|k| k.starts_with("environment."))
        );
        let shown = format!("{:?}", grafana.redacted_config());
        assert!(!shown.contains("hunter2-secret"), "{shown}");
    }
}
