//! `atlas-install bundle create|verify|inspect`. Results on stdout (`--json` for machines),
//! progress and notes on stderr.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use atlas_image::build;
use atlas_image::lock::ImagesLock;
use atlas_image::recipe::Recipe;
use atlas_install::bundle::{self, CreateSpec, Inspection, RecipeBuild, RegistrySource};
use atlas_install::signing::Trust;
use serde_json::json;

use super::Context;
use crate::cli::{BundleCommand, BundleCreateArgs};
use crate::printer::Printer;

pub fn run(ctx: &Context, cmd: BundleCommand) -> Result<ExitCode> {
    match cmd {
        BundleCommand::Create(args) => create(ctx, &args),
        BundleCommand::Verify { file, trust } => {
            let trust = super::signature::trust(&trust)?;
            verify(ctx, &file, &trust)
        }
        BundleCommand::Inspect {
            file,
            sbom: Some(name),
        } => {
            let bytes = bundle::sbom(&file, &name)
                .with_context(|| format!("{}: the bill of materials of {name}", file.display()))?;
            super::sbom::print(ctx.printer, &bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Inspect { file, sbom: None } => inspect(ctx.printer, &file),
    }
}

fn create(ctx: &Context, args: &BundleCreateArgs) -> Result<ExitCode> {
    let printer = ctx.printer;
    // The key first: a wrong password fails now, not after the images were built.
    let mut spec = create_spec(args)?;
    if let Some(key) = &args.sign {
        spec.sign = Some(super::signature::load_key(key, &args.password)?);
    }
    let created = ctx
        .block_on(bundle::create(&spec, &args.out, ctx.progress()))?
        .with_context(|| format!("creating bundle {}", args.out.display()))?;
    // Always said, whatever --progress: these digests were not chosen, only observed.
    for (base, digest) in &created.pinned {
        printer.warn(format_args!(
            "{base} is not in the images lock: pinned to {digest} as pulled, in the bundle's images.lock"
        ));
    }
    let manifest = created.manifest;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    if printer.json_mode() {
        printer.line(json!({"out": args.out, "bytes": size, "manifest": manifest}))?;
    } else {
        let signed = match &spec.sign {
            Some(k) => format!("signed by key ID {}", k.id),
            None => "NOT signed".to_owned(),
        };
        printer.note(format_args!(
            "Wrote {} ({size} bytes, {} members, {signed}): atlas-install {} for {}",
            args.out.display(),
            manifest.members.len() + 2 + usize::from(spec.sign.is_some()),
            manifest.version,
            manifest.arch
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn create_spec(args: &BundleCreateArgs) -> Result<CreateSpec> {
    let binary =
        std::env::current_exe().context("cannot find this binary to put it in the bundle")?;
    let lock = match &args.images_lock {
        Some(p) => ImagesLock::load(p)?,
        None => ImagesLock::embedded()?,
    };
    let mut spec = CreateSpec::for_this_binary(binary, lock);
    spec.layouts = args.oci.clone();
    if !args.no_build {
        spec.recipes = recipes(&args.service)?;
        spec.registry = Some(RegistrySource {
            cache: super::image::cache(&args.registry)?,
            mirror: args.registry.registry_mirror.clone(),
            download_mirror: args.registry.download_mirror.clone(),
            pull: super::image::pull_options(&args.registry),
        });
    }
    Ok(spec)
}

/// The embedded recipes to build (all, or those named), `[[file]]`s read from the working
/// directory as `image build` does.
fn recipes(services: &[String]) -> Result<Vec<RecipeBuild>> {
    let all = Recipe::embedded()?;
    for s in services {
        if !all.iter().any(|r| &r.name == s) {
            let known: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
            bail!("no recipe for service {s:?}; known: {}", known.join(", "));
        }
    }
    let read = super::image::read_asset(None);
    all.into_iter()
        .filter(|r| services.is_empty() || services.contains(&r.name))
        .map(|recipe| {
            let files = build::recipe_files(&recipe, &read)?;
            Ok(RecipeBuild { recipe, files })
        })
        .collect()
}

fn verify(ctx: &Context, file: &Path, trust: &Trust) -> Result<ExitCode> {
    let printer = ctx.printer;
    let v = bundle::verify(file, trust, ctx.progress())
        .with_context(|| format!("bundle {} failed verification", file.display()))?;
    let m = &v.manifest;
    if printer.json_mode() {
        printer.line(
            json!({"file": file, "ok": true, "signer": v.signer, "version": m.version,
                   "arch": m.arch, "created": m.created, "members": m.members.len() + 2,
                   "images": v.images}),
        )?;
    } else {
        printer.line(format_args!(
            "OK {}: {}; atlas-install {} ({}) for {}, created {}; {} members and {} images checked",
            file.display(),
            v.signer,
            m.version,
            m.git_commit,
            m.arch,
            m.created,
            m.members.len() + 2,
            v.images.len()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(printer: &Printer, file: &Path) -> Result<ExitCode> {
    let i = bundle::inspect(file).with_context(|| format!("inspecting {}", file.display()))?;
    if printer.json_mode() {
        printer.json_line(&i)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_inspection(printer, &i)?;
    Ok(ExitCode::SUCCESS)
}

fn print_inspection(printer: &Printer, i: &Inspection) -> Result<()> {
    let m = &i.manifest;
    printer.line(format_args!("bundle   {} ({} bytes)", i.file, i.file_size))?;
    printer.line(format_args!(
        "version  {} (commit {})",
        m.version, m.git_commit
    ))?;
    printer.line(format_args!("arch     {}", m.arch))?;
    printer.line(format_args!("created  {}", m.created))?;
    printer.line("")?;
    printer.line(format_args!(
        "{:<40} {:<6} {:<20} {:>12}  DIGEST",
        "IMAGE", "ROLE", "VERSION", "BYTES"
    ))?;
    for img in &i.images {
        printer.line(format_args!(
            "{:<40} {:<6} {:<20} {:>12}  {}",
            img.name,
            img.role,
            img.version.as_deref().unwrap_or("-"),
            img.size,
            img.digest
        ))?;
    }
    printer.line("")?;
    printer.line(format_args!(
        "(a listing, not a check: run `atlas-install bundle verify {}`)",
        i.file
    ))?;
    Ok(())
}
