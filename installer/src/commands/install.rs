//! `atlas-install install`: preflight, plan, confirm, apply the fixed sequence. A converged
//! host gets zero writing API calls, and says so. With `--plan FILE`, the plan `plan --out`
//! saved is applied as it is, without asking, and refused (nothing written) when the config
//! or Incus changed since.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use atlas_image::cache::BlobCache;
use atlas_image::lock::ImagesLock;
use atlas_install::bundle::{self, Expect, OpenedBundle};
use atlas_install::config::Config;
use atlas_install::deployment::Deployment;
use atlas_install::engine::saved::SavedPlan;
use atlas_install::engine::{Engine, Options, SecretSource, StoredSecrets, lock};
use atlas_install::incus::Client;
use atlas_install::progress::Progress;
use atlas_install::signing::Trust;
use atlas_install::supply::ImageSupply;

use crate::cli::{GlobalArgs, InstallArgs};

/// Everything a command needs to drive the engine.
pub(super) struct Ctx {
    pub config: Config,
    /// The config on this server or cluster (read once).
    pub deployment: Deployment,
    pub client: Client,
    pub progress: Arc<dyn Progress>,
    pub secrets: Box<dyn SecretSource>,
    pub runtime: tokio::runtime::Runtime,
}

impl Ctx {
    pub fn new(global: &GlobalArgs) -> Result<Ctx> {
        let config = super::load_config(global)?;
        let client = Client::from_config(&config.incus).context("connecting to Incus")?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        // On a cluster the stack has per-member parts (see `deployment`). A daemon that
        // cannot be asked gives a standalone deployment: preflight then says what is wrong.
        // One that takes the request and never answers is said now: asking again would only
        // wait as long once more.
        let deployment = match runtime.block_on(Deployment::read(&client, &config)) {
            Ok(d) => d,
            Err(e) if e.is_no_answer() => {
                return Err(anyhow::Error::from(e).context("asking Incus whether it is a cluster"));
            }
            Err(_) => Deployment::standalone(&config),
        };
        Ok(Ctx {
            config,
            deployment,
            client,
            progress: crate::ui::progress(global.progress),
            secrets: test_hooks::secrets()?,
            runtime,
        })
    }

    /// Takes the project's lock for `command` (see `engine::lock`), through a client of its
    /// own so its writes are not counted as the run's. Held until the guard drops. With
    /// `--json`, a refusal also prints the holder on stdout.
    pub fn lock(&self, global: &GlobalArgs, command: &str) -> Result<Locked> {
        let client = Client::from_config(&self.config.incus).context("connecting to Incus")?;
        let wait = std::time::Duration::from_secs(global.lock_timeout);
        let taken = self.runtime.block_on(lock::acquire(
            &client,
            &self.config.incus.project,
            command,
            wait,
            self.progress.as_ref(),
        ));
        match taken {
            Ok(l) => Ok(Locked {
                lock: Some(l),
                runtime: self.runtime.handle().clone(),
            }),
            Err(e) => {
                if let (true, lock::LockError::Held { project, holder }) = (global.json, &e) {
                    let out = serde_json::json!({"error": "locked", "project": project, "holder": holder});
                    super::plan::print(&format!("{}\n", serde_json::to_string_pretty(&out)?));
                }
                Err(e.into())
            }
        }
    }

    pub fn engine(&self, options: Options) -> Engine<'_> {
        Engine {
            client: self.client.clone(),
            deployment: self.deployment.clone(),
            secrets: self.secrets.as_ref(),
            progress: self.progress.as_ref(),
            options,
        }
    }
}

/// The project's lock while a command runs: released when dropped (an error or panic
/// included); a killed process leaves a record the stale-lock rule frees.
pub(super) struct Locked {
    lock: Option<lock::ProjectLock>,
    runtime: tokio::runtime::Handle,
}

impl Drop for Locked {
    fn drop(&mut self) {
        if let Some(l) = self.lock.take() {
            let project = l.project().to_string();
            if let Err(e) = self.runtime.block_on(l.release()) {
                eprintln!(
                    "warning: could not release the lock of project {project} ({e}); the next run takes it over once this process is gone"
                );
            }
        }
    }
}

/// Asks on the terminal; refuses when stdin is not one and `--yes` was not given.
pub(super) fn confirm(global: &GlobalArgs, question: &str) -> Result<bool> {
    if global.yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "stdin is not a terminal, so nobody can confirm: pass --yes to {question} without asking. Nothing was changed."
        );
    }
    eprint!("Do you want to {question}? Only 'yes' is accepted: ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(answer.trim() == "yes")
}

/// The images of an install: from a verified bundle (kept unpacked while `Supply` lives),
/// from registries, or the aliases already in Incus (`images: None`).
pub(super) struct Supply {
    pub images: Option<ImageSupply>,
    /// Holds the unpacked bundle layout for as long as the install reads it; dropping it
    /// removes the directory. Never read: it is here for its lifetime.
    #[allow(dead_code)]
    pub bundle: Option<OpenedBundle>,
}

/// Opens and verifies `path` completely before anything touches Incus: an unsigned or
/// untrusted, corrupt, foreign or wrong-version bundle is refused here.
fn open_bundle(path: &Path, trust: Trust, progress: &dyn Progress) -> Result<OpenedBundle> {
    let temp = std::env::temp_dir();
    let expect = Expect {
        trust,
        ..Expect::this_binary()
    };
    bundle::open_for_install(path, &expect, &temp, progress).with_context(|| {
        format!(
            "bundle {}: refused before touching Incus. Nothing was changed",
            path.display()
        )
    })
}

/// Where the install takes its images from: a bundle, the recipes over pulled upstream
/// images, or the aliases already in the project with `--existing-images`. Flags win over
/// the config's `[images]` settings.
pub(super) fn image_supply(
    args: &InstallArgs,
    config: &Config,
    progress: &dyn Progress,
) -> Result<Supply> {
    if args.existing_images {
        return Ok(Supply {
            images: None,
            bundle: None,
        });
    }
    if let Some(path) = &args.bundle {
        let opened = open_bundle(path, super::signature::trust(&args.trust)?, progress)?;
        let images = ImageSupply {
            registry_mirror: None,
            download_mirror: None,
            insecure_registries: Vec::new(),
            cache_dir: opened.layout.path().join(".cache"),
            lock: opened.lock.clone(),
            layout: Some(opened.layout.path().to_path_buf()),
        };
        return Ok(Supply {
            images: Some(images),
            bundle: Some(opened),
        });
    }
    let lock_file = args
        .images_lock
        .clone()
        .or_else(|| config.images.lock_file.clone().map(Into::into));
    let lock = match &lock_file {
        Some(p) => ImagesLock::load(p).with_context(|| format!("images lock {}", p.display()))?,
        None => ImagesLock::embedded()?,
    };
    let mut insecure = args.registry.insecure_registry.clone();
    insecure.extend(config.images.insecure_registries.iter().cloned());
    let images = Some(ImageSupply {
        registry_mirror: args
            .registry
            .registry_mirror
            .clone()
            .or_else(|| config.images.registry_mirror.clone()),
        download_mirror: args
            .registry
            .download_mirror
            .clone()
            .or_else(|| config.images.download_mirror.clone()),
        insecure_registries: insecure,
        cache_dir: args
            .registry
            .cache_dir
            .clone()
            .unwrap_or_else(BlobCache::default_dir),
        lock,
        layout: None,
    });
    Ok(Supply {
        images,
        bundle: None,
    })
}

pub fn run(global: &GlobalArgs, args: &InstallArgs) -> Result<ExitCode> {
    apply(global, args, Options::default())
}

/// Plan, confirm and apply with the images `args` name; `base` says how (install or upgrade).
pub(super) fn apply(global: &GlobalArgs, args: &InstallArgs, base: Options) -> Result<ExitCode> {
    // A bundle's signature first, before the config or Incus is even read.
    if let Some(path) = &args.bundle {
        let trust = super::signature::trust(&args.trust)?;
        let (_, signer) = bundle::check_signature(path, &trust).with_context(|| {
            format!(
                "bundle {}: refused before touching Incus. Nothing was changed",
                path.display()
            )
        })?;
        eprintln!("bundle {}: {signer}", path.display());
    }
    let ctx = Ctx::new(global)?;
    let saved = match &args.plan {
        Some(path) => Some(saved_plan(path, args, &base, &ctx.config)?),
        None => None,
    };
    let supply = image_supply(args, &ctx.config, ctx.progress.as_ref())?;
    let upgrade = base.upgrade;
    let _lock = ctx.lock(global, if upgrade { "upgrade" } else { "install" })?;
    let options = Options {
        ignore_preflight: args.ignore_preflight,
        health_timeout: std::time::Duration::from_secs(args.health_timeout),
        fail_at: test_hooks::fail_at(),
        pause_at: test_hooks::pause_at(),
        supply: supply.images.clone(),
        image_room: true,
        ..base
    };
    let engine = ctx.engine(options);
    let w0 = ctx.client.writes();
    let report = ctx.runtime.block_on(engine.plan())?;
    let shown = report.to_string();
    if global.json {
        eprint!("{shown}");
    } else {
        super::plan::print(&shown);
    }
    let conflicts = report.conflict_details();
    if !conflicts.is_empty() {
        return Err(atlas_install::engine::EngineError::Conflicts(conflicts).into());
    }
    if let (Some(path), Some(saved)) = (&args.plan, &saved) {
        saved.check_current(path, &report)?;
        eprintln!("Applying the saved plan {}.", path.display());
    }
    if base_rotates(&engine.options) {
        eprintln!(
            "  ~ secrets: new Grafana admin password, step-ca key password, Mosquitto passwords and metrics certificate"
        );
    }
    // A saved plan was confirmed when it was saved and reviewed.
    if saved.is_none()
        && (report.has_changes() || base_rotates(&engine.options))
        && !confirm(global, "apply these changes")?
    {
        eprintln!("Cancelled. Nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let applied = ctx.runtime.block_on(engine.apply(&report))?;
    let writes = ctx.client.writes() - w0;
    if global.json {
        let out = serde_json::json!({"report": report, "applied": applied, "writes": writes, "changed": writes > 0});
        super::plan::print(&format!("{}\n", serde_json::to_string_pretty(&out)?));
    } else if writes == 0 {
        eprintln!("No changes. The installation matches the configuration (0 writing API calls).");
    } else if upgrade {
        eprintln!(
            "Upgraded: {writes} writing API calls. `atlas-install rollback` returns to the previous install."
        );
    } else {
        eprintln!("Installed: {writes} writing API calls.");
    }
    Ok(ExitCode::SUCCESS)
}

/// The saved plan at `path`, checked against how install runs and the config it loaded, before
/// anything touches Incus.
fn saved_plan(
    path: &Path,
    args: &InstallArgs,
    base: &Options,
    config: &Config,
) -> Result<SavedPlan> {
    if base.upgrade {
        bail!(
            "upgrade does not take a saved plan (it snapshots and replaces services one at a time); run `atlas-install upgrade` without --plan. Nothing was changed."
        );
    }
    let saved = SavedPlan::read(path, args.existing_images, args.ignore_preflight)?;
    saved.check_config(path, config)?;
    Ok(saved)
}

fn base_rotates(options: &Options) -> bool {
    options.upgrade && options.rotate_secrets
}

/// Hooks for the integration tests, compiled into debug builds only: a release binary has
/// neither a failure point nor a way around the secret store.
mod test_hooks {
    use super::*;

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
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("reading ATLAS_TEST_SECRETS_FILE {}", path.to_string_lossy())
        })?;
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
}
