//! The fixed sequence: preflight, client remotes, project (+ state bucket), networks,
//! volumes (before the profiles that mount them), profiles, images, instances (each TLS
//! service with its certificate from step-ca before it starts), certificates (step-ca's
//! settings; renewals), server wiring, health gates. [`Engine::plan`] reads only;
//! [`Engine::apply`] writes what the plan says, step by step, each step idempotent, so a run
//! killed anywhere converges when run again.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::deployment::Deployment;
use crate::incus::{Client, IncusError, OptionalExt, Server, StorageBucket};
use crate::progress::{Progress, ProgressTask};
use crate::render::{Credentials, MqttCredential};
use crate::state::{BucketSupport, InstallRecord, ServiceRecord, keys};

use super::certs::{self, CertChange, Issuer};
use super::converge;
use super::error::EngineError;
use super::instances;
use super::plan::{Change, Plan, diff};
use super::preflight::{self, PreflightReport};
use super::remotes::{self, RemotesOutcome};
use super::resource::{Body, ResourceAddress, ResourceKind};
use super::secrets::{Secrets, SecretsError};
use super::state::{self, DesiredState, Facts, Observation};
use super::wiring::{self, WiringChange};

/// Name of the state bucket, where the server can serve local buckets.
pub const STATE_BUCKET: &str = "atlas-state";

/// Boxed future of [`SecretSource::load_or_generate`].
pub type SecretsFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Secrets, SecretsError>> + Send + 'a>>;

/// Where the deployment's secrets come from: the store in Incus ([`StoredSecrets`]) in the
/// product; tests may bring their own.
pub trait SecretSource: Send + Sync {
    /// Called once the project exists (the store lives there).
    fn load_or_generate<'a>(&'a self, client: &'a Client, config: &'a Config) -> SecretsFuture<'a>;
}

/// The secret store in the Atlas project ([`super::secrets::load_or_generate`]).
pub struct StoredSecrets;

impl SecretSource for StoredSecrets {
    fn load_or_generate<'a>(&'a self, client: &'a Client, config: &'a Config) -> SecretsFuture<'a> {
        Box::pin(super::secrets::load_or_generate(client, config))
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Below-minimum host size is a warning instead of an error.
    pub ignore_preflight: bool,
    /// Test-only failure point (`after-<step>`, `instance-created`, `files-pushed`, ...).
    pub fail_at: Option<String>,
    /// Test-only: at this checkpoint, say so and wait forever (a test then kills -9).
    pub pause_at: Option<String>,
    /// Upgrade an installed stack: replace changed services one at a time in dependency
    /// order, each snapshotted before and health-gated after, rolled back on failure.
    pub upgrade: bool,
    /// With `upgrade`: new generated secrets first, each applied the service's way.
    pub rotate_secrets: bool,
    pub health_timeout: Duration,
    /// Builds or takes every enabled service's image and points its alias at it. Without
    /// one, the aliases must already exist in the project (images imported beforehand).
    pub supply: Option<crate::supply::ImageSupply>,
    /// Ask the supply's registries (manifests only) how large the images are, so preflight
    /// can check the pool has room for them. `install` does; `plan` reads Incus only.
    pub image_room: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ignore_preflight: false,
            fail_at: None,
            pause_at: None,
            upgrade: false,
            rotate_secrets: false,
            health_timeout: Duration::from_secs(300),
            supply: None,
            image_room: false,
        }
    }
}

/// The steps, in order, as shown in progress. Volumes come before profiles: a profile that
/// gains a volume mounts it at once in the running instances that use it.
pub const STEPS: [&str; 11] = [
    "preflight",
    "remotes",
    "project",
    "networks",
    "volumes",
    "profiles",
    "images",
    "instances",
    "certificates",
    "wiring",
    "health",
];

/// What `plan` found and would do. Serializes without secrets.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub project: String,
    pub preflight: PreflightReport,
    pub plan: Plan,
    /// Instances that exist unchanged but are not running: `install` starts them.
    pub to_start: Vec<String>,
    pub wiring: Vec<WiringChange>,
    /// step-ca's settings, certificates to issue or renew, roots to push (see `certs`).
    pub certificates: Vec<CertChange>,
    /// Lines about skipped or deferred parts (remotes, state bucket).
    pub notes: Vec<String>,
    /// Image alias and fingerprint per instance.
    pub images: BTreeMap<String, String>,
    /// `(instance, where)` on a cluster (a member, or a cluster group); empty otherwise.
    pub placement: Vec<(String, String)>,
    /// The install record will be written: what the plan installs is not what the project
    /// records (an earlier run stopped before recording it, e.g. killed during its health
    /// checks). One write, which plan counts like any other.
    pub record_pending: bool,
    /// sha256 over what Incus held when the plan was made and everything it decided (see
    /// `fingerprint`): a saved plan applies only while this is still what a plan finds.
    pub fingerprint: String,
    #[serde(skip)]
    inner: Option<Box<Inner>>,
}

#[derive(Debug, Clone)]
struct Inner {
    server: Server,
    observation: Observation,
    secrets: Option<Secrets>,
}

impl PlanReport {
    /// Whether `install` would write anything.
    pub fn has_changes(&self) -> bool {
        self.plan.has_changes()
            || !self.to_start.is_empty()
            || !self.wiring.is_empty()
            || self.record_pending
            || !self.certificates.is_empty()
    }

    /// The addresses of the objects in the way (`network mgmt`).
    pub fn conflicts(&self) -> Vec<String> {
        self.plan
            .conflicts()
            .map(|a| a.address.to_string())
            .collect()
    }

    /// The same, each with whose it is and what to do: for [`EngineError::Conflicts`].
    pub fn conflict_details(&self) -> Vec<String> {
        self.plan.conflict_details()
    }
}

impl std::fmt::Display for PlanReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        for w in &self.preflight.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        for i in &self.to_start {
            writeln!(f, "  > instance {i} (stopped: will be started)")?;
        }
        for w in &self.wiring {
            writeln!(f, "  ~ server {}: {}", w.what, w.detail)?;
        }
        for c in &self.certificates {
            writeln!(f, "  {c}")?;
        }
        for (instance, place) in &self.placement {
            writeln!(f, "  @ {instance} on {place}")?;
        }
        if self.record_pending {
            writeln!(
                f,
                "  ~ install record (the last run stopped before recording what it installed: written now)"
            )?;
        }
        if self.has_changes() && !self.plan.has_changes() && self.plan.conflicts().next().is_none()
        {
            return writeln!(
                f,
                "Resources unchanged; install would make the changes above."
            );
        }
        write!(f, "{}", self.plan)
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// Writing API calls made (non-GET requests), from the client's counter.
    pub writes: u64,
    pub changed: bool,
}

pub struct Engine<'a> {
    /// Scoped to the Atlas project (`Client::from_config` gives that).
    pub client: Client,
    /// The config and how it lands on this server or cluster.
    pub deployment: Deployment,
    pub secrets: &'a dyn SecretSource,
    pub progress: &'a dyn Progress,
    pub options: Options,
}

/// Ends a step's progress task as failed with the error's first line.
fn done<T>(task: &dyn ProgressTask, out: Result<T, EngineError>) -> Result<T, EngineError> {
    if let Err(e) = &out {
        task.fail(e.to_string().lines().next().unwrap_or_default());
    }
    out
}

/// Credentials to render with before the secret store exists: only for the plan of a
/// first install, where every instance is created anyway. Never sent to Incus.
fn placeholder_credentials(config: &Config) -> Credentials {
    Credentials {
        grafana_admin_password: "planned".into(),
        step_ca_password: "planned".into(),
        mosquitto: config
            .mosquitto
            .users
            .iter()
            .map(|u| {
                (
                    u.clone(),
                    MqttCredential {
                        password: "planned".into(),
                        salt: [0; 12],
                    },
                )
            })
            .collect(),
    }
}

impl Engine<'_> {
    /// The config as the user wrote it.
    fn cfg(&self) -> &Config {
        &self.deployment.config
    }

    fn root(&self) -> Client {
        self.client.in_project("default")
    }

    fn project(&self) -> Client {
        self.client.in_project(&self.cfg().incus.project)
    }

    fn checkpoint(&self, name: &str) -> Result<(), EngineError> {
        if self.options.pause_at.as_deref() == Some(name) {
            self.progress
                .info(&format!("paused at {name} (ATLAS_TEST_PAUSE_AT)"));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        match &self.options.fail_at {
            Some(f) if f == name => Err(EngineError::FailPoint(name.to_string())),
            _ => Ok(()),
        }
    }

    /// Preflight and the plan, from GETs only (the secret store is read when the project
    /// exists; it writes only what is missing, e.g. a new Mosquitto user).
    pub async fn plan(&self) -> Result<PlanReport, EngineError> {
        let (server, pre) = {
            let task = self.progress.task("preflight", None);
            let t = task.as_ref();
            done(
                t,
                async {
                    let r = preflight::run(
                        &self.client,
                        &self.deployment,
                        self.options.ignore_preflight,
                    )
                    .await?;
                    t.finish(&format!(
                        "Incus {}, {} cores, {:.1}GB memory",
                        r.1.server_version,
                        r.1.cpu_cores,
                        r.1.memory_bytes as f64 / 1e9
                    ));
                    Ok(r)
                }
                .await,
            )
        }?;
        for w in &pre.warnings {
            self.progress.warn(w);
        }
        let task = self.progress.task("plan", None);
        let out = self.compute(server, pre).await;
        match &out {
            Ok(r) => task.finish(r.to_string().lines().last().unwrap_or_default()),
            Err(e) => task.fail(e.to_string().lines().next().unwrap_or_default()),
        }
        let mut report = out?;
        self.check_room(&mut report).await?;
        Ok(report)
    }

    /// The pool's room for what the plan creates (see [`preflight::capacity`]): too little
    /// for the images is refused here, before the first write, whatever the host size.
    async fn check_room(&self, report: &mut PlanReport) -> Result<(), EngineError> {
        let pre = &report.preflight;
        if pre.pool_driver.is_empty() {
            return Ok(());
        }
        let task = self.progress.task("pool room", None);
        let need = self.pool_need(report).await;
        let (problems, warnings) = preflight::capacity(
            &need,
            &self.cfg().incus.storage_pool,
            pre.pool_free_bytes,
            pre.pool_thick,
        );
        if !problems.is_empty() {
            task.fail("not enough");
            return Err(EngineError::Preflight(problems));
        }
        let images: u64 = need.images.iter().map(|(_, b)| b).sum();
        task.finish(&format!(
            "{} image(s), at least {:.2}GB, of {:.2}GB free",
            need.images.len(),
            images as f64 / 1e9,
            report.preflight.pool_free_bytes as f64 / 1e9
        ));
        for w in warnings {
            self.progress.warn(&w);
            report.preflight.warnings.push(w);
        }
        Ok(())
    }

    /// What the plan puts into the pool: an unpacked image per instance created (per image
    /// on a copy-on-write pool), and the volumes created.
    async fn pool_need(&self, report: &PlanReport) -> preflight::PoolNeed {
        let per_image = report.preflight.pool_driver != "dir";
        let mut need = preflight::PoolNeed::default();
        let mut sizes: BTreeMap<String, Option<Result<u64, String>>> = BTreeMap::new();
        for a in report
            .plan
            .actions
            .iter()
            .filter(|a| a.change == Change::Create)
        {
            match a.address.kind {
                ResourceKind::Instance => {
                    let Some(inst) = self.cfg().instances.get(&a.address.name) else {
                        continue;
                    };
                    let service = inst.service.as_str().to_string();
                    if per_image && sizes.contains_key(&service) {
                        continue;
                    }
                    if !sizes.contains_key(&service) {
                        let got = self.image_bytes(&service).await;
                        sizes.insert(service.clone(), got);
                    }
                    match &sizes[&service] {
                        Some(Ok(b)) => need
                            .images
                            .push((format!("the image of {}", a.address.name), *b)),
                        Some(Err(why)) if !need.unknown.iter().any(|u| u.contains(&service)) => {
                            need.unknown.push(format!("the image of {service} ({why})"))
                        }
                        _ => {}
                    }
                }
                ResourceKind::Volume => {
                    let size = a
                        .resource
                        .as_ref()
                        .and_then(|r| r.body.config().get("size"))
                        .and_then(|s| crate::config::Size::parse(s).ok());
                    if let Some(s) = size {
                        need.volumes.push((a.address.name.clone(), s.bytes));
                    }
                }
                _ => {}
            }
        }
        need
    }

    /// A lower bound of the bytes `service`'s image takes in the pool: from the supply
    /// (registry or layout manifests), or the image already under its alias. `None`: not
    /// asked (a plan does not ask registries).
    async fn image_bytes(&self, service: &str) -> Option<Result<u64, String>> {
        match &self.options.supply {
            Some(supply) if self.options.image_room => {
                Some(supply.image_bytes(service).await.map_err(|e| e.to_string()))
            }
            Some(_) => None,
            None => {
                let project = self.project();
                let alias = state::image_alias(self.cfg(), service);
                let got = async {
                    let a = project.get_image_alias(&alias).await.optional()?;
                    match a {
                        Some(a) => Ok(Some(project.get_image(&a.value.target).await?.value.size)),
                        None => Ok(None),
                    }
                }
                .await;
                match got {
                    Ok(Some(b)) => Some(Ok(b)),
                    // A missing alias is reported by the plan itself.
                    Ok(None) => None,
                    Err(e) => Some(Err(IncusError::to_string(&e))),
                }
            }
        }
    }

    async fn compute(
        &self,
        server: Server,
        pre: PreflightReport,
    ) -> Result<PlanReport, EngineError> {
        let cfg = self.cfg();
        let observation = state::observe(&self.root(), cfg).await?;
        let secrets = if observation.project_exists {
            Some(self.secrets.load_or_generate(&self.project(), cfg).await?)
        } else {
            None
        };
        let (desired, notes) = self
            .desired(&server, &pre, &observation, secrets.as_ref())
            .await?;
        let plan = diff(
            &desired.resources,
            &observation.observed,
            &observation.owned_elsewhere,
        );
        let to_start = to_start(&plan, &observation);
        let wiring = self.wiring_plan(&observation, secrets.as_ref()).await?;
        let certificates = certs::plan(
            &self.client,
            &self.deployment,
            &desired.payloads,
            &observation.instances,
            crate::clock::now_secs(),
        )
        .await?;
        let mut notes = notes;
        notes.extend(self.plan_notes(&server, &pre, &observation, &plan)?);
        let images = desired
            .payloads
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    format!("{} ({})", p.image.alias, p.image.fingerprint),
                )
            })
            .collect();
        let record_pending = record_pending(cfg, &observation, &desired);
        let d = &self.deployment;
        let mut report = PlanReport {
            project: cfg.incus.project.clone(),
            preflight: pre,
            plan,
            to_start,
            wiring,
            certificates,
            notes,
            images,
            placement: d
                .placement
                .describe(d.enabled_instances().into_iter().map(|(n, _)| n)),
            record_pending,
            fingerprint: String::new(),
            inner: None,
        };
        report.fingerprint = fingerprint(&observation, &report);
        report.inner = Some(Box::new(Inner {
            server,
            observation,
            secrets,
        }));
        Ok(report)
    }

    /// The server-level changes install would make (none before the secrets exist).
    async fn wiring_plan(
        &self,
        observation: &Observation,
        secrets: Option<&Secrets>,
    ) -> Result<Vec<WiringChange>, EngineError> {
        let Some(s) = secrets else {
            return Ok(Vec::new());
        };
        let cfg = self.cfg();
        let root = match certs::step_ca_name(cfg) {
            Some(ca) if observation.instances.contains_key(ca) => {
                super::step_ca::root_pem(&self.project(), ca).await?
            }
            _ => None,
        };
        let opts = wiring_options(&self.deployment, root)?;
        Ok(wiring::plan_with(&self.client, cfg, s, &opts).await?)
    }

    /// Lines about what the plan skips, defers or moves (remotes, Loki on a cluster group,
    /// the state bucket, node-exporter's host mounts, data moving onto new volumes).
    fn plan_notes(
        &self,
        server: &Server,
        pre: &PreflightReport,
        observation: &Observation,
        plan: &Plan,
    ) -> Result<Vec<String>, EngineError> {
        let (d, cfg) = (&self.deployment, self.cfg());
        let mut notes: Vec<String> = self.remotes_note(server)?.into_iter().collect();
        if pre.cluster.clustered
            && !d.incus_loki()
            && d.instances_of(crate::config::ServiceKind::Loki)
                .iter()
                .any(|(n, _)| d.published_on(n).is_none())
        {
            notes.push(crate::deployment::LOKI_ON_A_GROUP.to_string());
        }
        notes.extend(bucket_note(pre, observation));
        for (name, _) in cfg.instances_of(crate::config::ServiceKind::NodeExporter) {
            notes.extend(super::outputs::follow_host_mounts_note(cfg, name));
        }
        for a in plan
            .actions
            .iter()
            .filter(|a| a.address.kind == ResourceKind::Volume && a.change == Change::Create)
        {
            if let Some((instance, path)) = adoption(cfg, observation, &a.address.name) {
                notes.push(format!(
                    "{instance}: {path} moves onto the new volume {}, which starts with a copy of what {instance} holds there now",
                    a.address.name
                ));
            }
        }
        Ok(notes)
    }

    /// Builds (or takes) the image of every enabled service, one after another, and points
    /// the service's alias at it. Nothing happens without a supply.
    async fn supply_images(
        &self,
        project: &Client,
        task: &dyn ProgressTask,
    ) -> Result<(), EngineError> {
        let Some(supply) = &self.options.supply else {
            return Ok(());
        };
        let mut services: Vec<&str> = self
            .deployment
            .enabled_instances()
            .into_iter()
            .map(|(_, i)| i.service.as_str())
            .collect();
        services.sort_unstable();
        services.dedup();
        let mut imported = 0;
        for service in services {
            task.set_message(&format!("{service}: pulling and building"));
            let alias = state::image_alias(self.cfg(), service);
            let got = supply
                .ensure(
                    project,
                    service,
                    &alias,
                    &self.cfg().grafana.plugins,
                    self.progress,
                )
                .await
                .map_err(|e| EngineError::object(format!("image of {service}"), e))?;
            for note in &got.pinned {
                self.progress.warn(note);
            }
            imported += usize::from(got.imported);
        }
        task.set_message(&format!("{imported} imported"));
        Ok(())
    }

    fn remotes_note(&self, server: &Server) -> Result<Option<String>, EngineError> {
        let r = remotes::ensure(server, true)
            .map_err(|e| EngineError::object("incus client config", e))?;
        Ok(match r {
            RemotesOutcome::Skipped(m) => Some(m),
            RemotesOutcome::Present => None,
            RemotesOutcome::Added(names) => {
                Some(format!("client remotes to add: {}", names.join(", ")))
            }
        })
    }

    /// Desired state for the current facts. Images resolve only once the project exists.
    async fn desired(
        &self,
        server: &Server,
        pre: &PreflightReport,
        obs: &Observation,
        secrets: Option<&Secrets>,
    ) -> Result<(DesiredState, Vec<String>), EngineError> {
        let cfg = self.cfg();
        let images = state::resolve_images(
            &self.project(),
            &self.deployment,
            obs.project_exists,
            self.options.supply.is_some(),
        )
        .await?;
        let external =
            state::external_addresses(&self.root(), cfg, pre.external, &obs.instances).await?;
        let creds = match secrets {
            Some(s) => s.credentials.clone(),
            None => placeholder_credentials(cfg),
        };
        let facts = Facts {
            images: &images,
            external: pre.external,
            external_addresses: &external,
            server_cert_pem: &server.environment.certificate,
            hash_key: secrets.map_or("planned", |s| s.hash_key.as_str()),
        };
        let desired = state::build(&self.deployment, &creds, secrets, &facts)?;
        let mut notes = Vec::new();
        if !obs.project_exists {
            notes.push(format!("project {} does not exist yet: image aliases and secrets are resolved when it is created", cfg.incus.project));
        }
        for (name, p) in &desired.payloads {
            if p.own_command {
                notes.push(format!(
                    "{name}: image {} ({}) carries no service spec (it was not built by this atlas-install), so it runs its own command line, not the one `render` shows; rebuild it with `atlas-install image build --import` (or install without --existing-images)",
                    p.image.alias, p.image.fingerprint
                ));
            }
            if !p.pending.is_empty() {
                notes.push(format!(
                    "{name}: {} come from step-ca later, not pushed now",
                    p.pending.join(", ")
                ));
            }
        }
        Ok((desired, notes))
    }

    /// Applies a plan from [`Engine::plan`], as it is: the steps of the module docs, in
    /// order, each under its own progress task. Conflicts abort before any write.
    pub async fn apply(&self, report: &PlanReport) -> Result<ApplyReport, EngineError> {
        let w0 = self.client.writes();
        let run = self.checks(report).await?;
        let from = match self.options.upgrade {
            true => Some(self.installed().await?),
            false => None,
        };
        // After the checks, before anything else: the steps below render with the new ones.
        let rotated = from.is_some() && self.options.rotate_secrets;
        if rotated {
            self.rotate_secrets().await?;
        }
        self.remotes(&run).await?;
        self.checkpoint("after-remotes")?;
        self.project_step(&run).await?;
        self.checkpoint("after-project")?;
        for (label, kind) in [
            ("networks", ResourceKind::Network),
            ("volumes", ResourceKind::Volume),
            ("profiles", ResourceKind::Profile),
        ] {
            self.objects(&run, label, kind).await?;
            self.checkpoint(&format!("after-{label}"))?;
        }
        let (desired, secrets) = self.images(&run, rotated).await?;
        self.checkpoint("after-images")?;
        let record = install_record(&desired);
        let upgrade = from.map(|from| self.upgrade_from(from, &record));
        let issuer = Issuer::new(
            &self.client,
            &self.deployment,
            &secrets.credentials.step_ca_password,
            self.options.health_timeout,
            self.progress,
        );
        let converged = self
            .instances(&run, &desired, &issuer, upgrade.as_ref())
            .await?;
        self.checkpoint("after-instances")?;
        self.removals(&run).await?;
        self.certificates(&issuer, &desired, &converged).await?;
        self.checkpoint("after-certificates")?;
        self.wiring(&issuer, &secrets).await?;
        self.checkpoint("after-wiring")?;
        self.health().await?;
        // What is installed now, for upgrade and rollback; unchanged installs write nothing.
        crate::state::record::write(&self.client, &self.cfg().incus.project, &record)
            .await
            .map_err(|e| EngineError::object("install record", e))?;
        let writes = self.client.writes() - w0;
        Ok(ApplyReport {
            writes,
            changed: writes > 0,
        })
    }

    /// Runs one step under a progress task of its own: `body` finishes it, an error fails
    /// it with its first line.
    async fn step<T>(
        &self,
        name: &str,
        body: impl AsyncFnOnce(&dyn ProgressTask) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let task = self.progress.task(name, None);
        let out = body(task.as_ref()).await;
        done(task.as_ref(), out)
    }

    /// Step 1: conflicts refuse before the first write; operations an interrupted run left
    /// running are waited for.
    async fn checks<'r>(&self, report: &'r PlanReport) -> Result<Run<'r>, EngineError> {
        let conflicts = report.conflict_details();
        if !conflicts.is_empty() {
            return Err(EngineError::Conflicts(conflicts));
        }
        let inner = report.inner.as_deref().ok_or_else(|| {
            EngineError::object(
                "plan",
                "internal error: the plan was not computed by this engine",
            )
        })?;
        if inner.observation.project_exists {
            self.settle().await?;
        }
        Ok(Run {
            report,
            inner,
            root: self.root(),
            project: self.project(),
        })
    }

    /// With `upgrade --rotate-secrets`: new secrets, before anything renders with them.
    async fn rotate_secrets(&self) -> Result<(), EngineError> {
        self.step("secrets", async |t| {
            let r = super::rotate::rotate(&self.client, self.cfg(), self.progress).await?;
            t.finish(&format!("{} rotated", r.rotated.len()));
            Ok(())
        })
        .await
    }

    /// Step 2: the Incus client's remotes for the user.
    async fn remotes(&self, run: &Run<'_>) -> Result<(), EngineError> {
        self.step("remotes", async |t| {
            let r = remotes::ensure(&run.inner.server, false)
                .map_err(|e| EngineError::object("incus client config", e))?;
            t.finish(match &r {
                RemotesOutcome::Skipped(m) => m.as_str(),
                RemotesOutcome::Present => "present",
                RemotesOutcome::Added(_) => "added",
            });
            Ok(())
        })
        .await
    }

    /// Step 3: the project, the state bucket, and the member chosen for the stack (so later
    /// runs keep it there).
    async fn project_step(&self, run: &Run<'_>) -> Result<(), EngineError> {
        self.step("project", async |t| {
            let n = self
                .converge_kind(&run.root, &run.project, run.of_kind(ResourceKind::Project))
                .await?;
            let bucket = self.ensure_bucket(&run.inner.server).await?;
            super::cluster::record(&self.client, self.cfg(), &self.deployment.placement).await?;
            t.finish(&format!("{}; {bucket}", outcome(n)));
            Ok(())
        })
        .await
    }

    /// Steps 4 to 6: networks, volumes, profiles.
    async fn objects(
        &self,
        run: &Run<'_>,
        label: &str,
        kind: ResourceKind,
    ) -> Result<(), EngineError> {
        self.step(label, async |t| {
            let n = match kind {
                ResourceKind::Volume => self.converge_volumes(run).await?,
                _ => {
                    self.converge_kind(&run.root, &run.project, run.of_kind(kind))
                        .await?
                }
            };
            t.finish(&outcome(n));
            Ok(())
        })
        .await
    }

    /// Step 7: the images built or taken, then the instance bodies resolved with the images
    /// and secrets now known.
    async fn images(
        &self,
        run: &Run<'_>,
        rotated: bool,
    ) -> Result<(DesiredState, Secrets), EngineError> {
        self.step("images", async |t| {
            let secrets = match &run.inner.secrets {
                Some(s) if !rotated => s.clone(),
                _ => {
                    self.secrets
                        .load_or_generate(&run.project, self.cfg())
                        .await?
                }
            };
            self.supply_images(&run.project, t).await?;
            let obs = Observation {
                project_exists: true,
                ..run.inner.observation.clone()
            };
            let (desired, _) = self
                .desired(
                    &run.inner.server,
                    &run.report.preflight,
                    &obs,
                    Some(&secrets),
                )
                .await?;
            t.finish(&format!("{} resolved", desired.payloads.len()));
            Ok((desired, secrets))
        })
        .await
    }

    /// What an upgrade from `from` to `record` keeps its snapshots as; said once.
    fn upgrade_from(&self, from: InstallRecord, record: &InstallRecord) -> Upgrade {
        let u = Upgrade {
            snap: super::upgrade::snapshot_name(&from, record),
            set: super::backup::VolumeSet::from_config(self.cfg()),
            from,
        };
        let changing = u.from.changed_services(record);
        self.progress.info(&format!(
            "upgrade {} -> {}: {}",
            super::upgrade::release_tag(&u.from),
            super::upgrade::release_tag(record),
            match changing.is_empty() {
                true => "no service changes".to_string(),
                false => format!("{} change (snapshots {})", changing.join(", "), u.snap),
            }
        ));
        u
    }

    /// Step 8: the plan's instance actions, with the bodies resolved in step 7; an upgrade
    /// replaces them one at a time in dependency order. Returns the instances converged.
    async fn instances(
        &self,
        run: &Run<'_>,
        desired: &DesiredState,
        issuer: &Issuer<'_>,
        upgrade: Option<&Upgrade>,
    ) -> Result<BTreeSet<String>, EngineError> {
        let mut actions = planned_instances(&run.report.plan, desired)?;
        if upgrade.is_some() {
            let order = super::upgrade::order(&self.deployment);
            actions.sort_by_key(|a| {
                order
                    .iter()
                    .position(|n| *n == a.address.name)
                    .unwrap_or(usize::MAX)
            });
        }
        self.step("instances", async |t| {
            let (mut n, mut converged) = (0, BTreeSet::new());
            for a in &actions {
                if self.instance(run, a, desired, issuer, upgrade, t).await? {
                    if a.writes() {
                        converged.insert(a.address.name.clone());
                    }
                    n += 1;
                }
            }
            t.finish(&outcome(n));
            Ok(converged)
        })
        .await
    }

    /// One instance action of step 8. Returns whether anything was written.
    async fn instance(
        &self,
        run: &Run<'_>,
        a: &InstanceAction,
        desired: &DesiredState,
        issuer: &Issuer<'_>,
        upgrade: Option<&Upgrade>,
        t: &dyn ProgressTask,
    ) -> Result<bool, EngineError> {
        let name = &a.address.name;
        let existing = run.inner.observation.instances.get(name);
        let Some(r) = a.resource.as_ref().filter(|_| a.writes()) else {
            return match (&a.change, existing) {
                (Change::Conflict, _) => {
                    Err(EngineError::Conflicts(run.report.plan.conflict_details()))
                }
                (Change::Unchanged, Some(i)) => {
                    let started = instances::ensure_running(&run.project, i).await;
                    instances::explained(&run.project, self.cfg(), started).await
                }
                _ => Ok(false),
            };
        };
        t.set_message(name);
        if a.inputs_moved {
            self.progress.info(&format!(
                "instance {name}: its image or secrets changed earlier in this run: updated"
            ));
        }
        let payload = &self
            .with_step_ca_files(issuer, name, &desired.payloads[name], existing)
            .await?;
        // On a cluster, created where the placement says.
        let target = self.deployment.placement.target_for(name);
        let project = run.project.on_target(target.map(|t| t.query()).as_deref());
        match upgrade {
            Some(u) => {
                self.replace_guarded(&project, r, payload, existing, u)
                    .await?
            }
            None => {
                let checkpoint = |name: &str| self.checkpoint(name);
                let done = instances::converge(&project, r, payload, existing, &checkpoint).await;
                instances::explained(&project, self.cfg(), done).await?
            }
        }
        Ok(true)
    }

    /// Step 9: what the config no longer names, in the plan's order (instances before the
    /// profiles and networks they use); data volumes are kept and said so.
    async fn removals(&self, run: &Run<'_>) -> Result<(), EngineError> {
        let plan = &run.report.plan;
        for a in plan.actions.iter().filter(|a| a.change == Change::KeepData) {
            self.progress.info(&format!(
                "{} is no longer configured: kept (delete it by hand if unwanted)",
                a.address
            ));
        }
        let removals: Vec<&ResourceAddress> = plan
            .actions
            .iter()
            .filter(|a| a.change == Change::Delete)
            .map(|a| &a.address)
            .collect();
        if removals.is_empty() {
            return Ok(());
        }
        self.step("removals", async |t| {
            for a in &removals {
                converge::delete(&run.root, &run.project, a, false).await?;
            }
            t.finish(&format!("{} removed", removals.len()));
            Ok(())
        })
        .await
    }

    /// Step 10: step-ca's settings; certificates renewed where the instance step did not
    /// already push new ones.
    async fn certificates(
        &self,
        issuer: &Issuer<'_>,
        desired: &DesiredState,
        converged: &BTreeSet<String>,
    ) -> Result<(), EngineError> {
        self.step("certificates", async |t| {
            issuer.ensure_ca().await?;
            let mut refreshed = Vec::new();
            for (name, payload) in &desired.payloads {
                if !converged.contains(name) && issuer.refresh(name, payload).await? {
                    refreshed.push(name.as_str());
                }
            }
            t.finish(&match refreshed.is_empty() {
                true => "unchanged".to_string(),
                false => format!("{} renewed and restarted", refreshed.join(", ")),
            });
            Ok(())
        })
        .await
    }

    /// Step 11: the server's logging to Loki and its metrics certificate.
    async fn wiring(&self, issuer: &Issuer<'_>, secrets: &Secrets) -> Result<(), EngineError> {
        self.step("wiring", async |t| {
            let root = match certs::step_ca_name(self.cfg()) {
                Some(_) => Some(issuer.root_pem().await?),
                None => None,
            };
            let opts = wiring_options(&self.deployment, root)?;
            wiring::apply_with(&self.client, self.cfg(), secrets, &opts, self.progress).await?;
            t.finish("done");
            Ok(())
        })
        .await
    }

    /// Step 12: every service's health gate.
    async fn health(&self) -> Result<(), EngineError> {
        self.step("health", async |t| {
            super::health::gate(
                &self.client,
                &self.deployment,
                self.options.health_timeout,
                self.progress,
            )
            .await?;
            t.finish("done");
            Ok(())
        })
        .await
    }

    /// `payload` with the files step-ca provides added (see `certs`): all of them when the
    /// instance is created or rebuilt from another image (its root filesystem is new), what
    /// is missing or due otherwise.
    async fn with_step_ca_files(
        &self,
        issuer: &Issuer<'_>,
        name: &str,
        payload: &super::state::InstancePayload,
        existing: Option<&crate::incus::Instance>,
    ) -> Result<super::state::InstancePayload, EngineError> {
        let fresh = existing.is_none_or(|i| {
            i.config.get("volatile.base_image") != Some(&payload.image.fingerprint)
        });
        let mut out = payload.clone();
        out.files
            .extend(issuer.files_for(name, payload, fresh).await?);
        Ok(out)
    }

    /// The install record an upgrade starts from; none means there is nothing to upgrade.
    async fn installed(&self) -> Result<InstallRecord, EngineError> {
        let project = &self.cfg().incus.project;
        crate::state::record::read(&self.client, project)
            .await
            .map_err(|e| EngineError::object("install record", e))?
            .current
            .ok_or_else(|| {
                EngineError::object(
                    "upgrade",
                    format!("project {project} records no install to upgrade from: run `atlas-install install` first. Nothing was changed."),
                )
            })
    }

    /// One service of an upgrade: snapshot, replace, health-gate; back to the snapshot on
    /// failure. A new service (nothing to keep) is created and gated.
    async fn replace_guarded(
        &self,
        project: &Client,
        r: &super::resource::Resource,
        payload: &super::state::InstancePayload,
        existing: Option<&crate::incus::Instance>,
        u: &Upgrade,
    ) -> Result<(), EngineError> {
        let name = r.name();
        let checkpoint = |name: &str| self.checkpoint(name);
        if let Some(i) = existing {
            let also: Vec<String> = payload
                .from_step_ca
                .iter()
                .map(|e| e.path.clone())
                .collect();
            super::upgrade::guard(
                &self.client,
                &u.set,
                i,
                &u.from,
                &also,
                &u.snap,
                self.progress,
            )
            .await?;
            self.checkpoint("upgrade-guarded")?;
        }
        let replaced = async {
            let done = instances::converge(project, r, payload, existing, &checkpoint).await;
            instances::explained(project, self.cfg(), done).await?;
            super::upgrade::gate_one(
                &self.client,
                &self.deployment,
                name,
                self.options.health_timeout,
                self.progress,
            )
            .await
        }
        .await;
        match replaced {
            Ok(()) => Ok(()),
            // A simulated crash leaves things as a killed process would.
            Err(e @ EngineError::FailPoint(_)) => Err(e),
            Err(e) if existing.is_some() => {
                self.progress.warn(&format!(
                    "{name} failed, returning it to snapshot {}",
                    u.snap
                ));
                let back = super::upgrade::restore(&self.client, &u.set, name, &u.snap).await;
                Err(super::upgrade::failed(name, &e, back, &u.snap))
            }
            Err(e) => Err(e),
        }
    }

    /// Volumes, each created on the member of the instance that mounts it: a local pool's
    /// volume exists on one member only, and the instance must be there too. A new volume
    /// of an instance that exists already starts with what the instance holds at its mount
    /// path ([`super::adopt`]).
    async fn converge_volumes(&self, run: &Run<'_>) -> Result<usize, EngineError> {
        let (root, project, report, inner) = (&run.root, &run.project, run.report, run.inner);
        let plan = &report.plan;
        let owners = volume_owners(plan);
        let mut n = 0;
        for a in plan
            .actions
            .iter()
            .filter(|a| a.address.kind == ResourceKind::Volume)
        {
            // A group is for instances; a volume needs a member, which only the
            // instance's creation picks. Such volumes are made untargeted.
            let target = owners
                .get(&a.address.name)
                .and_then(|i| self.deployment.placement.member_for(i));
            let project = project.on_target(target.as_deref());
            match (
                &a.change,
                &a.resource,
                adoption(self.cfg(), &inner.observation, &a.address.name),
            ) {
                (Change::Create, Some(r), Some((instance, path))) => {
                    let got = super::adopt::create_with_contents(
                        &project,
                        r,
                        instance,
                        path,
                        &report.preflight.pool_driver,
                    )
                    .await?;
                    self.progress.info(&format!(
                        "{instance}: {path} ({} files, {} bytes) copied onto its new volume {}; the old copy stays hidden under the volume in {instance}'s root filesystem until its next image change",
                        got.files, got.bytes, r.name()
                    ));
                    n += 1;
                }
                _ => {
                    n += self
                        .converge_kind(root, &project, std::iter::once(a))
                        .await?;
                }
            }
        }
        Ok(n)
    }

    async fn converge_kind<'p>(
        &self,
        root: &Client,
        project: &Client,
        actions: impl Iterator<Item = &'p super::plan::Action>,
    ) -> Result<usize, EngineError> {
        let mut n = 0;
        for a in actions {
            let Some(r) = &a.resource else { continue };
            match a.change {
                Change::Create => converge::create(root, project, r).await?,
                Change::Update => converge::update(root, project, r).await?,
                Change::Conflict => {
                    return Err(EngineError::Conflicts(vec![a.conflict_detail()]));
                }
                _ => continue,
            }
            n += 1;
        }
        Ok(n)
    }

    /// Waits (up to two minutes) for operations still running in the project: Incus goes on
    /// with a request whose client was killed, and an earlier, interrupted run may have left
    /// an instance being created or started. Reads only.
    async fn settle(&self) -> Result<(), EngineError> {
        let project = self.project();
        let ops: serde_json::Value = project.get_path("/1.0/operations", true).await?.value;
        let running: Vec<String> = ops["running"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| {
                u.as_str()?
                    .split('?')
                    .next()?
                    .rsplit('/')
                    .next()
                    .map(str::to_string)
            })
            .collect();
        for id in running {
            // The operation's own outcome does not matter here, only that it is over.
            let _ = tokio::time::timeout(Duration::from_secs(120), project.wait(&id)).await;
        }
        Ok(())
    }

    /// The state bucket where the server can serve it. A server that cannot is recorded on
    /// the project, so later runs neither try nor write again.
    async fn ensure_bucket(&self, server: &Server) -> Result<String, EngineError> {
        let (root, project, cfg) = (self.root(), self.project(), self.cfg());
        let pool = &cfg.incus.storage_pool;
        let skipped = "state bucket skipped: needs MinIO on the host or Incus 7.0+; state is kept as project user.atlas.* keys".to_string();
        if !server.supports_local_buckets() {
            return Ok(skipped);
        }
        let recorded = crate::state::read(&root, &cfg.incus.project)
            .await?
            .map(|s| s.bucket)
            .unwrap_or_default();
        if recorded.skipped() {
            return Ok(skipped);
        }
        if project
            .get_bucket(pool, STATE_BUCKET)
            .await
            .optional()?
            .is_some()
        {
            return Ok("state bucket present".into());
        }
        let bucket = StorageBucket {
            name: STATE_BUCKET.into(),
            description: "Atlas state (managed by atlas-install)".into(),
            config: BTreeMap::from([(keys::MANAGED.to_string(), "true".to_string())]),
            ..StorageBucket::default()
        };
        match project.create_bucket(pool, &bucket).await {
            Ok(_key) => Ok("state bucket created".into()),
            Err(IncusError::Unsupported { reason, .. }) => {
                self.progress.info(&format!(
                    "{skipped} ({})",
                    reason.lines().next().unwrap_or_default()
                ));
                self.record_bucket_state(BucketSupport::Unsupported).await?;
                Ok(skipped)
            }
            // Not listed, yet "already exists": on 6.0 a creation that failed for want of
            // MinIO leaves the bucket's directory behind, and every later creation trips on it.
            // Recorded, so that re-runs neither try nor write again.
            Err(e) if e.is_already_exists() => {
                self.progress.warn(&format!(
                    "{skipped}; Incus refuses to create it: {} (a leftover of an earlier failed attempt: remove that directory on the host, then `incus project unset {} {}`, to let a later run create the bucket)",
                    e.to_string().lines().next().unwrap_or_default(),
                    cfg.incus.project,
                    keys::STATE_BUCKET
                ));
                self.record_bucket_state(BucketSupport::Blocked).await?;
                Ok(skipped)
            }
            Err(e) => Err(EngineError::object(
                format!("storage bucket {pool}/{STATE_BUCKET}"),
                e,
            )),
        }
    }
}

/// The snapshots of the upgrade in progress.
struct Upgrade {
    from: InstallRecord,
    snap: String,
    set: super::backup::VolumeSet,
}

impl Engine<'_> {
    /// Records in the project's state why the state bucket is not there.
    async fn record_bucket_state(&self, state: BucketSupport) -> Result<(), EngineError> {
        crate::state::update(&self.root(), &self.cfg().incus.project, |s| {
            s.bucket = state;
            Ok::<(), crate::state::StateError>(())
        })
        .await?;
        Ok(())
    }
}

/// `(instance, mount path)` when `volume` is the configured data volume of an instance that
/// exists without anything mounted at that path: its contents there move onto the volume.
fn adoption<'c>(config: &'c Config, obs: &Observation, volume: &str) -> Option<(&'c str, &'c str)> {
    config
        .enabled_instances()
        .into_iter()
        .filter_map(|(name, i)| Some((name, i.volume.as_ref()?)))
        .find(|(_, v)| v.name == volume)
        .filter(|(name, v)| {
            obs.instances
                .get(*name)
                .is_some_and(|i| super::adopt::needs_adoption(i, &v.path))
        })
        .map(|(name, v)| (name, v.path.as_str()))
}

/// What the apply steps share: the plan, what it was computed from, and the clients.
struct Run<'r> {
    report: &'r PlanReport,
    inner: &'r Inner,
    root: Client,
    project: Client,
}

impl<'r> Run<'r> {
    /// The plan's actions on objects of `kind` that have a body.
    fn of_kind(&self, kind: ResourceKind) -> impl Iterator<Item = &'r super::plan::Action> {
        self.report
            .plan
            .actions
            .iter()
            .filter(move |a| a.address.kind == kind && a.resource.is_some())
    }
}

impl InstanceAction {
    /// Whether the instance is created or brought to its body.
    fn writes(&self) -> bool {
        self.inputs_moved || matches!(self.change, Change::Create | Change::Update)
    }
}

/// Instances that exist unchanged but are not running: install starts them.
fn to_start(plan: &Plan, observation: &Observation) -> Vec<String> {
    plan.actions
        .iter()
        .filter(|a| a.address.kind == ResourceKind::Instance && a.change == Change::Unchanged)
        .filter(|a| {
            observation
                .instances
                .get(&a.address.name)
                .is_some_and(|i| !i.is_running())
        })
        .map(|a| a.address.name.clone())
        .collect()
}

/// Whether the project records another install than `desired` (an earlier run stopped
/// before recording it): then install writes the record.
fn record_pending(cfg: &Config, observation: &Observation, desired: &DesiredState) -> bool {
    observation.project_exists && {
        let want = install_record(desired);
        crate::state::ProjectState::from_config(&observation.project_config)
            .records(&cfg.incus.project)
            .ok()
            .and_then(|r| r.current)
            .is_none_or(|have| !have.same_install(&want))
    }
}

/// One instance action of the plan, with the body this run resolved for it.
struct InstanceAction {
    address: ResourceAddress,
    change: Change,
    resource: Option<super::resource::Resource>,
    /// Planned unchanged, but what it is built from moved in this run's own earlier steps:
    /// the images step pointed its alias at another image, or its secrets were rotated.
    inputs_moved: bool,
}

/// The plan's instance actions, in its order, with their bodies from `desired`: the plan
/// decided what happens to each (nothing is compared with Incus again); `desired` only
/// fills in what could not be known while planning (secrets and images before the project
/// existed, an image the images step built).
fn planned_instances(
    plan: &Plan,
    desired: &DesiredState,
) -> Result<Vec<InstanceAction>, EngineError> {
    plan.actions
        .iter()
        .filter(|a| a.address.kind == ResourceKind::Instance)
        .map(|a| {
            let resource = match &a.resource {
                None => None,
                Some(planned) => {
                    let r = desired.resources.iter().find(|r| r.address() == a.address);
                    let r = r.ok_or_else(|| {
                        EngineError::object(
                            &a.address,
                            "internal error: planned, but not in the desired state",
                        )
                    })?;
                    Some((planned.hash != r.hash, r.clone()))
                }
            };
            Ok(InstanceAction {
                address: a.address.clone(),
                change: a.change.clone(),
                inputs_moved: a.change == Change::Unchanged
                    && resource.as_ref().is_some_and(|(moved, _)| *moved),
                resource: resource.map(|(_, r)| r),
            })
        })
        .collect()
}

/// sha256 over what Incus held (every object the plan read, the images the aliases named)
/// and what the plan decides (each action, the instances to start, the server wiring, the
/// certificates, the record). Preflight's measurements (free memory, disk) are left out:
/// they move on their own.
fn fingerprint(obs: &Observation, r: &PlanReport) -> String {
    use sha2::{Digest, Sha256};
    let decided = serde_json::json!({
        "incus": obs.fingerprint(),
        "plan": r.plan,
        "hashes": r.plan.actions.iter().map(|a| a.resource.as_ref().map(|r| &r.hash)).collect::<Vec<_>>(),
        "to_start": r.to_start,
        "wiring": r.wiring,
        "certificates": r.certificates,
        "images": r.images,
        "placement": r.placement,
        "record_pending": r.record_pending,
    });
    hex::encode(Sha256::digest(decided.to_string()))
}

/// Custom volume name -> the instance that mounts it, through its own disk devices or those
/// of its profiles (a service's data volume usually sits in the service's profile).
fn volume_owners(plan: &super::plan::Plan) -> BTreeMap<String, String> {
    let volumes_of = |body: &Body| -> Vec<String> {
        body.devices()
            .into_iter()
            .flat_map(|devices| devices.values())
            .filter(|d| d.get("type").is_some_and(|t| t == "disk") && d.contains_key("pool"))
            .filter_map(|d| d.get("source").cloned())
            .collect()
    };
    let resources = || {
        plan.actions
            .iter()
            .filter_map(|a| Some((a, a.resource.as_ref()?)))
    };
    let by_profile: BTreeMap<&str, Vec<String>> = resources()
        .filter(|(a, _)| a.address.kind == ResourceKind::Profile)
        .map(|(a, r)| (a.address.name.as_str(), volumes_of(&r.body)))
        .collect();
    let mut owners = BTreeMap::new();
    for (a, r) in resources().filter(|(a, _)| a.address.kind == ResourceKind::Instance) {
        let mut mounted = volumes_of(&r.body);
        if let Body::Instance(i) = &r.body {
            for p in &i.profiles {
                if let Some(v) = by_profile.get(p.as_str()) {
                    mounted.extend(v.iter().cloned());
                }
            }
        }
        for v in mounted {
            owners.insert(v, a.address.name.clone());
        }
    }
    owners
}

/// What an install of `desired` records (for upgrade and rollback): per instance, the image
/// and file digests its hash was computed from.
fn install_record(desired: &DesiredState) -> InstallRecord {
    let services = desired
        .resources
        .iter()
        .filter(|r| r.kind() == ResourceKind::Instance)
        .map(|r| {
            let choice = desired.payloads.get(r.name()).map(|p| &p.image);
            let files = r
                .extra_hashes
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("file:")?.to_string(), v.clone())))
                .collect();
            let fingerprint = r
                .extra_hashes
                .get("image")
                .cloned()
                .or_else(|| choice.map(|c| c.fingerprint.clone()))
                .unwrap_or_default();
            let service = ServiceRecord {
                image_fingerprint: fingerprint,
                image: choice.map(|c| c.alias.clone()).unwrap_or_default(),
                files,
            };
            (r.name().to_string(), service)
        })
        .collect();
    InstallRecord::new(crate::VERSION, services)
}

/// The wiring's targets; Incus trusts the Atlas root (`root`) for a Loki that serves TLS.
fn wiring_options(
    d: &Deployment,
    root: Option<String>,
) -> Result<wiring::WiringOptions, EngineError> {
    let config = &d.config;
    let mut opts = wiring::WiringOptions::of(d)?;
    let loki_tls = opts
        .loki_instance
        .as_ref()
        .and_then(|n| config.instances.get(n))
        .is_some_and(|i| i.tls);
    if loki_tls {
        opts.loki_ca_pem = root;
    }
    Ok(opts)
}

fn outcome(n: usize) -> String {
    if n == 0 {
        "unchanged".into()
    } else {
        format!("{n} changed")
    }
}

fn bucket_note(pre: &PreflightReport, obs: &Observation) -> Option<String> {
    if !pre.local_buckets
        || crate::state::ProjectState::from_config(&obs.project_config)
            .bucket
            .skipped()
    {
        return Some("state bucket skipped: needs MinIO on the host or Incus 7.0+; state is kept as project user.atlas.* keys".into());
    }
    None
}
