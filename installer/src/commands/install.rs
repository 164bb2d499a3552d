//! `atlas-install install`: preflight, plan, confirm, apply the fixed sequence. A converged
//! host gets zero writing API calls, and says so. With `--plan FILE`, the plan `plan --out`
//! saved is applied as it is, without asking, and refused (nothing written) when the config
//! or Incus changed since.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use atlas_install::bundle::{self, Expect, OpenedBundle};
use atlas_install::config::Config;
use atlas_install::engine::install::{ApplyReport, PlanReport};
use atlas_install::engine::saved::SavedPlan;
use atlas_install::engine::{EngineError, Options};
use atlas_install::progress::Progress;
use atlas_install::signing::Trust;
use atlas_install::supply::{ImageSettings, ImageSupply};

use super::Context;
use super::test_hooks;
use crate::cli::{InstallArgs, RegistryArgs};

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
    bundle::open_for_install(path, &expect, &temp, progress).with_context(|| refused(path))
}

fn refused(bundle: &Path) -> String {
    format!(
        "bundle {}: refused before touching Incus. Nothing was changed",
        bundle.display()
    )
}

/// The image flags as settings (they win over the config's `[images]`).
pub(super) fn settings(registry: &RegistryArgs, lock_file: Option<&Path>) -> ImageSettings {
    ImageSettings {
        registry_mirror: registry.registry_mirror.clone(),
        download_mirror: registry.download_mirror.clone(),
        insecure_registries: registry.insecure_registry.clone(),
        cache_dir: registry.cache_dir.clone(),
        lock_file: lock_file.map(Path::to_path_buf),
    }
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
        let images = ImageSupply::from_layout(opened.layout.path(), opened.lock.clone());
        return Ok(Supply {
            images: Some(images),
            bundle: Some(opened),
        });
    }
    let flags = settings(&args.registry, args.images_lock.as_deref());
    let images = ImageSupply::from_settings(flags.over((&config.images).into()))?;
    Ok(Supply {
        images: Some(images),
        bundle: None,
    })
}

pub fn run(ctx: &Context, args: &InstallArgs) -> Result<ExitCode> {
    apply(ctx, args, Options::default())
}

/// Plan, confirm and apply with the images `args` name; `base` says how (install or upgrade).
pub(super) fn apply(ctx: &Context, args: &InstallArgs, base: Options) -> Result<ExitCode> {
    let printer = ctx.printer;
    // A bundle's signature first, before the config or Incus is even read.
    if let Some(path) = &args.bundle {
        let trust = super::signature::trust(&args.trust)?;
        let (_, signer) = bundle::check_signature(path, &trust).with_context(|| refused(path))?;
        printer.note(format_args!("bundle {}: {signer}", path.display()));
    }
    // The config, Incus and the deployment are read before anything else is looked at.
    ctx.deployment()?;
    let saved = match &args.plan {
        Some(path) => Some(saved_plan(path, args, &base, ctx.config()?)?),
        None => None,
    };
    let supply = image_supply(args, ctx.config()?, ctx.progress())?;
    let upgrade = base.upgrade;
    let _lock = ctx.lock(if upgrade { "upgrade" } else { "install" })?;
    let engine = ctx.engine(Options {
        ignore_preflight: args.ignore_preflight,
        health_timeout: std::time::Duration::from_secs(args.health_timeout),
        fail_at: test_hooks::fail_at(),
        pause_at: test_hooks::pause_at(),
        supply: supply.images.clone(),
        image_room: true,
        ..base
    })?;
    let w0 = ctx.client()?.writes();
    let report = ctx.block_on(engine.plan())??;
    show_plan(ctx, &report)?;
    if let (Some(path), Some(saved)) = (&args.plan, &saved) {
        saved.check_current(path, &report)?;
        printer.note(format_args!("Applying the saved plan {}.", path.display()));
    }
    let rotates = engine.options.upgrade && engine.options.rotate_secrets;
    if rotates {
        printer.note(
            "  ~ secrets: new Grafana admin password, step-ca key password, Mosquitto passwords and metrics certificate",
        );
    }
    // A saved plan was confirmed when it was saved and reviewed.
    if saved.is_none()
        && (report.has_changes() || rotates)
        && !printer.confirm("apply these changes")?
    {
        printer.note("Cancelled. Nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let applied = ctx.block_on(engine.apply(&report))??;
    let writes = ctx.client()?.writes() - w0;
    say_applied(ctx, &report, &applied, writes, upgrade)?;
    Ok(ExitCode::SUCCESS)
}

/// The plan: the command's output, or a note beside `--json`'s result. Refuses conflicts.
fn show_plan(ctx: &Context, report: &PlanReport) -> Result<()> {
    let shown = report.to_string();
    if ctx.printer.json_mode() {
        ctx.printer.note_text(&shown);
    } else {
        ctx.printer.text(&shown)?;
    }
    let conflicts = report.conflict_details();
    if !conflicts.is_empty() {
        return Err(EngineError::Conflicts(conflicts).into());
    }
    Ok(())
}

/// What the apply did: the JSON result, or one line for the operator.
fn say_applied(
    ctx: &Context,
    report: &PlanReport,
    applied: &ApplyReport,
    writes: u64,
    upgrade: bool,
) -> Result<()> {
    let printer = ctx.printer;
    if printer.json_mode() {
        let out = serde_json::json!({"report": report, "applied": applied, "writes": writes, "changed": writes > 0});
        printer.json(&out)?;
    } else if writes == 0 {
        printer
            .note("No changes. The installation matches the configuration (0 writing API calls).");
    } else if upgrade {
        printer.note(format_args!(
            "Upgraded: {writes} writing API calls. `atlas-install rollback` returns to the previous install."
        ));
    } else {
        printer.note(format_args!("Installed: {writes} writing API calls."));
    }
    Ok(())
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
