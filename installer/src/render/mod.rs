//! Every service configuration file, rendered from the config with the templates embedded
//! from `assets/`, and the Incus profiles from `profiles/`.
//!
//! [`render`] is pure: the same [`Deployment`] and [`Credentials`] give byte-identical output (no
//! clock, no randomness, no I/O), so the installer can hash it to decide whether anything changed.
//! Generated secrets come in through [`Credentials`]; the installer creates and stores them.

use std::collections::{BTreeMap, BTreeSet};

use atlas_image::init::{ServiceSpec, SpecError};

use crate::config::{Config, Instance, ServiceKind};
use crate::deployment::Deployment;

mod alertmanager;
mod caddy;
mod check;
mod cloudflared;
pub mod dashboards;
mod grafana;
mod hosts;
mod loki;
pub mod mosquitto;
pub mod node_exporter;
mod passwd;
pub mod paths;
mod profiles;
mod prometheus;
mod step_ca;
pub(crate) mod templates;

pub use hosts::{HostEntry, hosts_for};
pub use passwd::{MOSQUITTO_PBKDF2_ITERATIONS, mosquitto_password_line, pbkdf2_hmac_sha512};
pub use paths::*;
pub use profiles::{ProfileSpec, instance_devices, profiles};
pub use step_ca::{STEP_CA_METRICS_PORT, STEPPATH};

/// Secrets the installer generated for this deployment. Never printed (`Debug` redacts them).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Initial password of Grafana's admin user (applies when the admin is first created).
    pub grafana_admin_password: String,
    /// Password of the step-ca keys, given to step-ca's first-start initialisation.
    pub step_ca_password: String,
    /// One entry per `mosquitto.users` name.
    pub mosquitto: BTreeMap<String, MqttCredential>,
}

/// A Mosquitto user's password and the salt of its PBKDF2 hash (fixed, so output is stable).
#[derive(Clone, PartialEq, Eq)]
pub struct MqttCredential {
    pub password: String,
    pub salt: [u8; 12],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("grafana_admin_password", &"<redacted>")
            .field("step_ca_password", &"<redacted>")
            .field(
                "mosquitto_users",
                &self.mosquitto.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Everything rendered, by instance name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenderedSet {
    pub instances: BTreeMap<String, RenderedInstance>,
}

/// What one container gets: files pushed before first start, its environment and, where the
/// image's default command does not fit, the full command line.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RenderedInstance {
    pub service: Option<ServiceKind>,
    pub files: Vec<RenderedFile>,
    /// Environment variables for the service (`environment.*` keys of the instance).
    pub environment: BTreeMap<String, String>,
    /// Names in `environment` whose values are secrets (never print them).
    pub secret_env: BTreeSet<String>,
    /// The command line the service runs, replacing the image's: it reaches the container
    /// as `/etc/atlas/service.json` (the image's own spec with this command), which our PID 1
    /// starts. `None` keeps the image's (only for images that carry no spec of their own).
    pub command: Option<ServiceCommand>,
    /// Files the configuration refers to that the installer pushes later (certificates, keys).
    pub expected_files: Vec<ExpectedFile>,
}

impl std::fmt::Debug for RenderedInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: BTreeMap<&str, &str> = self
            .environment
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if self.secret_env.contains(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("RenderedInstance")
            .field("service", &self.service)
            .field("files", &self.files)
            .field("environment", &env)
            .field("command", &self.command)
            .field("expected_files", &self.expected_files)
            .finish()
    }
}

impl RenderedInstance {
    /// SHA-256 (hex) over everything the instance gets: files with their owner and mode, the
    /// environment and the command. Equal digests mean nothing to push or restart.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // Every field is length-prefixed, so no two different sets can hash alike by
        // shifting bytes between neighbouring fields.
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        for f in &self.files {
            field(f.path.as_bytes());
            field(
                &[
                    f.mode.to_le_bytes(),
                    f.uid.to_le_bytes(),
                    f.gid.to_le_bytes(),
                ]
                .concat(),
            );
            field(&f.contents);
        }
        field(b"env");
        for (k, v) in &self.environment {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        field(b"command");
        if let Some(c) = &self.command {
            for a in &c.wrapper {
                field(a.as_bytes());
            }
            field(b"argv");
            for a in &c.argv {
                field(a.as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// What a container runs: `argv`, started through `wrapper` when the image's own entrypoint
/// script must run first (Mosquitto's chown of its data, step-ca's first-start initialisation:
/// scripts that end in `exec "$@"`, so the process that runs is `argv` itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceCommand {
    /// The image's entrypoint script and its arguments; empty for none.
    pub wrapper: Vec<String>,
    /// The service's command line, as the running process shows it in `/proc/PID/cmdline`.
    pub argv: Vec<String>,
}

impl ServiceCommand {
    /// `argv`, run directly.
    pub fn plain<S: AsRef<str>>(argv: &[S]) -> ServiceCommand {
        ServiceCommand {
            wrapper: Vec::new(),
            argv: argv.iter().map(|a| a.as_ref().to_string()).collect(),
        }
    }

    /// `argv`, exec'd by the image's entrypoint script `wrapper`.
    pub fn wrapped<S: AsRef<str>, T: AsRef<str>>(wrapper: &[S], argv: &[T]) -> ServiceCommand {
        ServiceCommand {
            wrapper: wrapper.iter().map(|a| a.as_ref().to_string()).collect(),
            argv: argv.iter().map(|a| a.as_ref().to_string()).collect(),
        }
    }

    /// The image's service spec running this command instead of its own (the environment,
    /// user, working directory and grace period stay the image's). Fails on a command that
    /// atlas-init would refuse.
    pub fn apply_to(&self, image: &ServiceSpec) -> Result<ServiceSpec, SpecError> {
        image.with_command(&self.wrapper, &self.argv)
    }

    /// The checks atlas-init makes on a command line (not empty, no NUL byte), before any
    /// image is known.
    fn check(&self) -> Result<(), SpecError> {
        let bare = ServiceSpec {
            entrypoint: Vec::new(),
            cmd: vec!["/".into()],
            env: Vec::new(),
            working_dir: None,
            user: None,
            stop_grace_period: atlas_image::init::DEFAULT_STOP_GRACE_PERIOD,
        };
        self.apply_to(&bare).map(|_| ())
    }
}

/// One file inside a container.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Absolute path inside the container.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Holds a secret: written 0600 by its owner and never printed.
    pub secret: bool,
}

impl std::fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderedFile")
            .field("path", &self.path)
            .field("bytes", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .field("owner", &format_args!("{}:{}", self.uid, self.gid))
            .field("secret", &self.secret)
            .finish()
    }
}

impl RenderedFile {
    /// A configuration file without secrets, owned by root and readable by the service user.
    pub(crate) fn config(path: &str, contents: impl Into<Vec<u8>>) -> RenderedFile {
        RenderedFile {
            path: path.to_string(),
            contents: contents.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            secret: false,
        }
    }

    /// A file holding a secret: readable only by the service's own user.
    pub(crate) fn secret(
        path: &str,
        contents: impl Into<Vec<u8>>,
        uid: u32,
        gid: u32,
    ) -> RenderedFile {
        RenderedFile {
            path: path.to_string(),
            contents: contents.into(),
            mode: 0o600,
            uid,
            gid,
            secret: true,
        }
    }
}

/// A file the rendered configuration points at but that `render` cannot produce (it comes from
/// step-ca or Incus at install time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedFile {
    pub path: String,
    pub source: FileSource,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// step-ca's root certificate (`/home/step/certs/root_ca.crt` in step-ca).
    StepCaRoot,
    /// Certificate (chain) step-ca issues for the service's own `<instance>.incus` name.
    ServiceCertificate,
    ServiceKey,
    /// Client certificate registered with Incus as type `metrics`, and its key.
    IncusMetricsCertificate,
    IncusMetricsKey,
    /// The Incus server certificate (`/var/lib/incus/server.crt`) that Prometheus pins.
    IncusServerCertificate,
}

impl FileSource {
    /// Whether the file comes from step-ca (its root, or a certificate it issues).
    pub fn is_step_ca(&self) -> bool {
        matches!(
            self,
            FileSource::StepCaRoot | FileSource::ServiceCertificate | FileSource::ServiceKey
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("internal error in embedded template `{name}`: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("{instance} needs {what}: {fix}")]
    MissingSecret {
        instance: String,
        what: String,
        fix: String,
    },
    #[error(
        "{instance} needs a fixed IPv4 address on its {network} network ({why}); set instances.{instance}.nics[{index}].ipv4 in atlas.toml"
    )]
    MissingAddress {
        instance: String,
        network: String,
        index: usize,
        why: String,
    },
    #[error("{field} = \"{value}\" cannot be used: {why}")]
    UnsafeValue {
        field: String,
        value: String,
        why: String,
    },
    #[error("{instance} needs an enabled {service} instance ({why}); {fix}")]
    MissingService {
        instance: String,
        service: String,
        why: String,
        fix: String,
    },
    #[error(
        "profile `{profile}` is shared by {first} and {second}, which differ in {field}; give one of them its own `profile` name in atlas.toml"
    )]
    ProfileConflict {
        profile: String,
        first: String,
        second: String,
        field: String,
    },
    #[error("{instance}: the rendered command line cannot run: {source}")]
    Command {
        instance: String,
        #[source]
        source: SpecError,
    },
    #[error("internal error: profile template for {kind} produced invalid TOML: {source}")]
    ProfileToml {
        kind: String,
        #[source]
        source: toml::de::Error,
    },
}

/// Renders every enabled instance's files, environment and command.
pub fn render(d: &Deployment, creds: &Credentials) -> Result<RenderedSet, RenderError> {
    let env = templates::environment();
    let mut set = RenderedSet::default();
    for (name, inst) in d.enabled_instances() {
        check::instance_name(name)?;
        let ctx = Ctx {
            d,
            config: &d.config,
            creds,
            env: &env,
            name,
            inst,
        };
        let mut out = match inst.service {
            ServiceKind::Caddy => caddy::render(&ctx)?,
            ServiceKind::Grafana => grafana::render(&ctx)?,
            ServiceKind::Prometheus => prometheus::render(&ctx)?,
            ServiceKind::Loki => loki::render(&ctx)?,
            ServiceKind::Alertmanager => alertmanager::render(&ctx)?,
            ServiceKind::StepCa => step_ca::render(&ctx)?,
            ServiceKind::NodeExporter => node_exporter::render(&ctx)?,
            ServiceKind::Mosquitto => mosquitto::render(&ctx)?,
            ServiceKind::Cloudflared => cloudflared::render(&ctx)?,
        };
        out.service = Some(inst.service);
        if let Some(c) = &out.command {
            c.check().map_err(|source| RenderError::Command {
                instance: name.to_string(),
                source,
            })?;
        }
        // The operator's own environment for the instance wins over ours.
        for (k, v) in &inst.environment {
            out.environment.insert(k.clone(), v.clone());
        }
        out.files.sort_by(|a, b| a.path.cmp(&b.path));
        set.instances.insert(name.to_string(), out);
    }
    Ok(set)
}

/// What each service renderer gets.
pub(crate) struct Ctx<'a> {
    /// The deployment: its instances are the ones rendered and referred to.
    pub d: &'a Deployment,
    /// The config's settings (`d.config`).
    pub config: &'a Config,
    pub creds: &'a Credentials,
    pub env: &'a minijinja::Environment<'static>,
    pub name: &'a str,
    pub inst: &'a Instance,
}

impl Ctx<'_> {
    pub fn template(&self, template: &str, ctx: serde_json::Value) -> Result<String, RenderError> {
        templates::render(self.env, template, ctx)
    }
}

/// Where Grafana's datasources are provisioned from.
pub fn grafana_datasources_path() -> &'static str {
    grafana::DATASOURCES
}

/// The uid of the Grafana datasource of a Prometheus or Loki instance; dashboards refer to it.
pub fn datasource_uid(instance: &str) -> String {
    format!("atlas-{instance}")
}

/// The name every Atlas instance has in every other instance's /etc/hosts.
pub fn hostname(instance: &str) -> String {
    format!("{instance}.incus")
}

/// `<instance>.incus:<port>` of every enabled instance of a kind.
pub(crate) fn targets(d: &Deployment, kind: ServiceKind, port: u16) -> Vec<String> {
    d.instances_of(kind)
        .into_iter()
        .map(|(n, _)| format!("{}:{port}", hostname(n)))
        .collect()
}

#[cfg(test)]
mod tests;
