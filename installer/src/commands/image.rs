//! `atlas-install image build|convert|import|lock`: the image pipeline on the command line.
//! Results go to stdout (`--json` for machines), progress and notes to stderr.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use atlas_image::build::{self, AtlasImage, AtlasSpec, IndexingObserver, PreparedUnified};
use atlas_image::cache::BlobCache;
use atlas_image::layer::LayerIndex;
use atlas_image::lock::{ImagesLock, lock_references};
use atlas_image::progress::Progress;
use atlas_image::recipe::{PluginSource, Recipe};
use atlas_image::reference::ImageRef;
use atlas_image::registry::{PushOptions, map_to_mirror};
use atlas_image::source::{PullOptions, PulledImage, Source, pull};
use atlas_install::imageops;
use atlas_install::supply::{ImageSupply, RecipeBuild, chosen_plugins};
use serde_json::json;
use sha2::Digest as _;

use super::Context;
use crate::cli::{ImageBuildArgs, ImageCommand, RegistryArgs};
use crate::printer::Printer;

pub fn run(ctx: &Context, cmd: ImageCommand) -> Result<ExitCode> {
    ctx.block_on(async {
        match cmd {
            ImageCommand::Convert {
                source,
                out,
                registry,
            } => convert(ctx, &source, &out, &registry).await,
            ImageCommand::Import {
                source,
                alias,
                registry,
            } => import(ctx, &source, &alias, &registry).await,
            ImageCommand::Build(args) => build_cmd(ctx, &args).await,
            ImageCommand::Lock { out, registry } => lock(ctx.printer, &out, &registry).await,
            ImageCommand::Inspect { image, sbom } => inspect(ctx, &image, sbom).await,
        }
    })?
}

pub(super) fn cache(reg: &RegistryArgs) -> Result<BlobCache> {
    let dir = reg.cache_dir.clone().unwrap_or_else(BlobCache::default_dir);
    BlobCache::open(&dir).with_context(|| {
        format!(
            "cannot use the image cache {}; pass --cache-dir DIR (or ATLAS_CACHE_DIR) with a writable directory",
            dir.display()
        )
    })
}

pub(super) fn pull_options(reg: &RegistryArgs) -> PullOptions {
    PullOptions {
        insecure_registries: reg.insecure_registry.clone(),
        ..PullOptions::default()
    }
}

fn parse_source(source: &str, reg: &RegistryArgs) -> Result<Source> {
    let parsed = Source::parse(source)?;
    Ok(match (parsed, &reg.registry_mirror) {
        (Source::Registry(r), Some(m)) => Source::Registry(map_to_mirror(&r, m)),
        (s, _) => s,
    })
}

/// A short name for a converted image: the repository's last part or the layout's directory.
fn source_name(source: &Source) -> String {
    let raw = match source {
        Source::Registry(r) => r
            .repository
            .rsplit('/')
            .next()
            .unwrap_or("image")
            .to_owned(),
        Source::OciLayout { path, tag } | Source::OciArchive { path, tag } => tag
            .clone()
            .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "image".to_owned()),
    };
    raw.replace(['/', ':'], "-")
}

/// Base layer indexes taken while pulling (empty when not asked for).
type Indexes = Vec<Option<LayerIndex>>;

/// Pulls `source`; with `index`, every layer is also indexed as the pull reads it, so the
/// flattener does not read it again for that.
async fn pull_source(
    source: &Source,
    cache: &BlobCache,
    reg: &RegistryArgs,
    index: bool,
    progress: &dyn Progress,
) -> Result<(PulledImage, Indexes)> {
    let mut opts = pull_options(reg);
    let observer = index.then(IndexingObserver::new);
    if let Some(o) = &observer {
        opts.observer = Some(o.clone());
    }
    let image = pull(source, cache, &opts, progress)
        .await
        .with_context(|| format!("pulling {source}"))?;
    Ok((image, observer.map(|o| o.take()).unwrap_or_default()))
}

async fn converted(
    source: &str,
    reg: &RegistryArgs,
    progress: &dyn Progress,
) -> Result<(AtlasImage, Indexes)> {
    let src = parse_source(source, reg)?;
    let cache = cache(reg)?;
    let (base, indexes) = pull_source(&src, &cache, reg, true, progress).await?;
    let image = build::build_indexed(&base, &AtlasSpec::convert(&source_name(&src)), &indexes)
        .with_context(|| format!("converting {src}"))?;
    Ok((image, indexes))
}

async fn convert(
    ctx: &Context<'_>,
    source: &str,
    out: &Path,
    reg: &RegistryArgs,
) -> Result<ExitCode> {
    let (printer, progress) = (ctx.printer, ctx.progress());
    let (image, indexes) = converted(source, reg, progress).await?;
    let to_stdout = out == Path::new("-");
    let task = progress.task(&format!("write {}", out.display()), None);
    let stats = tokio::task::block_in_place(|| -> Result<_> {
        // Every layer is checked before the output is opened: bad input leaves no file.
        let prepared = PreparedUnified::with_indexes(&image, indexes, 0)?;
        if to_stdout {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, printer.stream());
            let stats = prepared.write(&mut w)?;
            w.flush().context("writing to stdout")?;
            return Ok(stats);
        }
        write_file_atomically(out, |f| Ok(prepared.write(f)?))
    })?;
    task.finish(&format!("{} bytes", stats.tar_bytes));
    let summary = json!({
        "source": image.base.source,
        "out": out,
        "bytes": stats.tar_bytes,
        "entries": stats.entries,
        "image_digest": image.manifest_digest.to_string(),
        "base_digest": image.base.manifest_digest.to_string(),
    });
    if printer.json_mode() && !to_stdout {
        printer.line(summary)?;
    } else {
        printer.note(format_args!(
            "Wrote {} ({} bytes, {} entries): Incus unified tarball of {}",
            out.display(),
            stats.tar_bytes,
            stats.entries,
            image.base.source
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `out` through `OUT.partial`, renamed on success and removed on failure, so a
/// failed conversion leaves nothing that looks like a result.
fn write_file_atomically<T>(
    out: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<fs::File>) -> Result<T>,
) -> Result<T> {
    // A device or pipe (/dev/null, a FIFO) is written in place: it cannot be renamed onto.
    if fs::metadata(out).is_ok_and(|m| !m.is_file()) {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(out)
            .with_context(|| format!("cannot open {}", out.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let v = write(&mut w)?;
        w.flush()
            .with_context(|| format!("writing {}", out.display()))?;
        return Ok(v);
    }
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let f = fs::File::create(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    let result = write(&mut w).and_then(|v| {
        w.flush()
            .with_context(|| format!("writing {}", partial.display()))?;
        Ok(v)
    });
    match result {
        Ok(v) => {
            fs::rename(&partial, out).with_context(|| {
                format!("cannot rename {} to {}", partial.display(), out.display())
            })?;
            Ok(v)
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// The Incus client of the config, checked to answer and to have the project.
async fn connect(ctx: &Context<'_>) -> Result<atlas_install::incus::Client> {
    let config = ctx.config()?;
    let client = atlas_install::incus::Client::from_config(&config.incus)?;
    client.server().await.context("connecting to Incus")?;
    let project = client.project().to_owned();
    client
        .get_project(&project)
        .await
        .with_context(|| {
            format!("Incus project {project:?}: create it (`incus project create {project}`) or pass --project NAME")
        })?;
    Ok(client)
}

/// `image inspect NAME [--sbom]`: the image's properties, or its recorded bill of materials
/// (the unified tarball's `sbom.cdx.json`, checked against the sha256 the property records).
async fn inspect(ctx: &Context<'_>, name: &str, sbom: bool) -> Result<ExitCode> {
    let printer = ctx.printer;
    let client = connect(ctx).await?;
    let fingerprint = match client.get_image_alias(name).await {
        Ok(a) => a.value.target,
        Err(e) if e.is_not_found() => name.to_owned(),
        Err(e) => return Err(e).with_context(|| format!("image alias {name}")),
    };
    let image = client
        .get_image(&fingerprint)
        .await
        .with_context(|| format!("no image {name} (alias or fingerprint) in the project"))?
        .value;
    if !sbom {
        if printer.json_mode() {
            printer.json_line(&image)?;
        } else {
            printer.line(format_args!(
                "image        {} ({})",
                name, image.fingerprint
            ))?;
            for (k, v) in &image.properties {
                printer.line(format_args!("{k:<28} {v}"))?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let recorded = image.properties.get(imageops::SBOM_PROPERTY).with_context(|| {
        format!("image {name} has no bill of materials (imported before atlas-install recorded one, or not by atlas-install): import it again")
    })?;
    let (member, sum) = recorded.split_once(" sha256:").with_context(|| {
        format!(
            "image {name}: property {} is {recorded:?}",
            imageops::SBOM_PROPERTY
        )
    })?;
    let bytes = client
        .image_leading_file(&image.fingerprint, member)
        .await?
        .with_context(|| format!("image {name}: its tarball has no {member}"))?;
    let actual = hex::encode(sha2::Sha256::digest(&bytes));
    if actual != sum {
        bail!(
            "image {name}: {member} has sha256 {actual}, but the image records {sum}: it does not belong to this image"
        );
    }
    super::sbom::print(printer, &bytes)?;
    Ok(ExitCode::SUCCESS)
}

async fn import_built(
    client: &atlas_install::incus::Client,
    image: &AtlasImage,
    indexes: Indexes,
    aliases: &[String],
    printer: &Printer,
    json: bool,
) -> Result<imageops::ImportOutcome> {
    let progress = printer.progress();
    let outcome = imageops::import(client, image, indexes, aliases, progress).await?;
    let fp = &outcome.fingerprint;
    if json {
        let aliases: Vec<_> = outcome
            .aliases
            .iter()
            .map(|(a, c)| json!({"name": a, "change": c.as_str()}))
            .collect();
        printer.line(json!({
                "fingerprint": fp,
                "created": outcome.created,
                "project": client.project(),
                "bytes": outcome.tar_bytes,
                "aliases": aliases,
                "image_digest": image.manifest_digest.to_string(),
                "properties": imageops::properties_json(&image.incus_properties()),
        }))?;
    } else {
        printer.line(fp)?;
        let what = if outcome.created {
            format!(
                "imported into project {} ({} bytes streamed)",
                client.project(),
                outcome.tar_bytes
            )
        } else {
            format!("already in project {}; reused", client.project())
        };
        printer.note(format_args!("Image {fp} {what}"));
        for (a, c) in &outcome.aliases {
            printer.note(format_args!("Alias {a}: {}", c.as_str()));
        }
    }
    Ok(outcome)
}

async fn import(
    ctx: &Context<'_>,
    source: &str,
    aliases: &[String],
    reg: &RegistryArgs,
) -> Result<ExitCode> {
    let printer = ctx.printer;
    // Reach Incus first: a wrong socket or project should fail before a long pull.
    let client = connect(ctx).await?;
    let (image, indexes) = converted(source, reg, ctx.progress()).await?;
    let json = printer.json_mode();
    import_built(&client, &image, indexes, aliases, printer, json).await?;
    Ok(ExitCode::SUCCESS)
}

/// The recipes to build: one file, the services named, or every service enabled in the
/// config (`config` is only read then).
fn recipes(
    args: &ImageBuildArgs,
    config: &dyn Fn() -> Result<atlas_install::config::Config>,
) -> Result<Vec<(Recipe, Option<PathBuf>)>> {
    if let Some(path) = &args.recipe {
        let r = Recipe::load(path)?;
        let root = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent()?.parent().map(Path::to_path_buf));
        return Ok(vec![(r, root)]);
    }
    let names: Vec<String> = if args.services.is_empty() {
        let config = config().context(
            "reading the config to find the enabled services (or name the services to build)",
        )?;
        let mut v: Vec<String> = Vec::new();
        for (_, i) in config.enabled_instances() {
            let name = i.service.as_str().to_owned();
            if !v.contains(&name) {
                v.push(name);
            }
        }
        v
    } else {
        let mut v: Vec<String> = Vec::new();
        for s in &args.services {
            if !v.contains(s) {
                v.push(s.clone());
            }
        }
        v
    };
    let known: Vec<&str> = atlas_image::recipe::EMBEDDED
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !known.contains(n))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "no recipe for {}; known services: {} (or pass --recipe FILE)",
            unknown
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            known.join(", ")
        );
    }
    names
        .iter()
        .filter_map(|n| Recipe::embedded_for(n))
        .map(|r| Ok((r?, None)))
        .collect()
}

pub(super) fn read_asset(root: Option<&Path>) -> impl Fn(&str) -> Result<Vec<u8>, String> + '_ {
    move |src: &str| {
        let base = match root {
            Some(r) => r.to_path_buf(),
            None => std::env::current_dir().map_err(|e| e.to_string())?,
        };
        let path = base.join(src);
        fs::read(&path).map_err(|e| {
            format!(
                "cannot read {}: {e} (run from the repository root or pass --recipe FILE)",
                path.display()
            )
        })
    }
}

/// Where `--push` sends a recipe's image: PREFIX/<service>:<base tag>, or the reference as
/// given when it has a tag (or digest) and only one image is built.
fn push_target(push: &str, recipe: &Recipe, several: bool) -> Result<ImageRef> {
    let other_transport = ["oci:", "oci-archive:", "dir:", "docker-archive:"]
        .iter()
        .any(|t| push.starts_with(t));
    let raw = match push.split_once("://") {
        Some(("docker", rest)) => rest,
        _ if other_transport => bail!(
            "--push {push}: only docker:// destinations can be pushed to (for an OCI layout directory use --oci-layout DIR)"
        ),
        Some(_) => bail!(
            "--push {push}: only docker:// destinations can be pushed to (for an OCI layout directory use --oci-layout DIR)"
        ),
        None => push,
    };
    let raw = raw.trim_end_matches('/');
    let last = raw.rsplit('/').next().unwrap_or(raw);
    let names_one = raw.contains('/') && (last.contains(':') || last.contains('@'));
    if names_one {
        if several {
            bail!(
                "--push {push} names one image, but several services are built: give a prefix (docker://HOST[:PORT]/PATH) under which each goes as <service>:<tag>"
            );
        }
        return ImageRef::parse(raw)
            .with_context(|| format!("--push {push}: not an image reference"));
    }
    let tag = recipe
        .base_ref()
        .ok()
        .and_then(|r| r.tag)
        .unwrap_or_else(|| "latest".to_owned());
    let full = format!("{raw}/{}:{tag}", recipe.name);
    ImageRef::parse(&full).with_context(|| {
        format!("--push {push}: {full} is not an image reference (write docker://HOST[:PORT]/PATH)")
    })
}

async fn build_cmd(ctx: &Context<'_>, args: &ImageBuildArgs) -> Result<ExitCode> {
    let printer = ctx.printer;
    let reg = &args.registry;
    let cache = cache(reg)?;
    let lock = match &args.images_lock {
        Some(p) => ImagesLock::load(p)?,
        None => ImagesLock::embedded()?,
    };
    let supply = ImageSupply {
        registry_mirror: reg.registry_mirror.clone(),
        download_mirror: reg.download_mirror.clone(),
        insecure_registries: reg.insecure_registry.clone(),
        cache_dir: cache.root().to_path_buf(),
        lock,
        layout: None,
    };
    // The config is read at most once, and only when needed (which services, which plugins).
    let config = || -> Result<atlas_install::config::Config> { Ok(ctx.config()?.clone()) };
    let list = recipes(args, &config)?;
    let several = list.len() > 1;
    let plugins: Vec<Vec<PluginSource>> = list
        .iter()
        .map(|(r, _)| -> Result<Vec<PluginSource>> {
            if r.plugins.is_none() {
                return Ok(Vec::new());
            }
            let config = config()
                .with_context(|| format!("reading the config for the plugins of {}", r.name))?;
            Ok(chosen_plugins(r, &config.grafana.plugins)?)
        })
        .collect::<Result<_>>()?;
    // Every destination is checked before the first pull.
    let dests: Vec<Option<ImageRef>> = list
        .iter()
        .map(|(r, _)| {
            args.push
                .as_deref()
                .map(|p| push_target(p, r, several))
                .transpose()
        })
        .collect::<Result<_>>()?;
    let mut results = Vec::new();
    let client = match args.import {
        true => Some(connect(ctx).await?),
        false => None,
    };
    let mut failed = Vec::new();
    for (((recipe, root), dest), plugins) in list.iter().zip(&dests).zip(&plugins) {
        let step = BuildStep {
            args,
            supply: &supply,
            cache: &cache,
            client: client.as_ref(),
            printer,
        };
        let target = Target {
            root: root.as_deref(),
            dest: dest.as_ref(),
            plugins,
        };
        match step.run(recipe, &target).await {
            Ok(entry) => results.push(entry),
            // With several services, one failure does not stop the others.
            Err(e) if several => {
                printer.note(format_args!("error: {}: {e:#}", recipe.name));
                failed.push(recipe.name.clone());
            }
            Err(e) => return Err(e),
        }
    }
    if printer.json_mode() {
        printer.line(json!({ "images": results, "failed": failed }))?;
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} images failed to build: {} (see the errors above)",
            failed.len(),
            list.len(),
            failed.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where one recipe's build comes from and goes to.
struct Target<'a> {
    /// Repository root of a `--recipe` file (assets and local plugin archives).
    root: Option<&'a Path>,
    dest: Option<&'a ImageRef>,
    /// The recipe's plugins chosen in the config.
    plugins: &'a [PluginSource],
}

/// Everything one recipe's build needs besides the recipe.
struct BuildStep<'a> {
    args: &'a ImageBuildArgs,
    supply: &'a ImageSupply,
    cache: &'a BlobCache,
    client: Option<&'a atlas_install::incus::Client>,
    printer: &'a Printer,
}

impl BuildStep<'_> {
    async fn run(&self, recipe: &Recipe, target: &Target<'_>) -> Result<serde_json::Value> {
        let (root, dest) = (target.root, target.dest);
        let (args, reg, printer) = (self.args, &self.args.registry, self.printer);
        let progress = printer.progress();
        let plugin_dir = match root {
            Some(r) => r.to_path_buf(),
            None => std::env::current_dir().context("cannot determine the working directory")?,
        };
        let read = read_asset(root);
        let job = RecipeBuild {
            recipe,
            read_asset: &read,
            plugins: target.plugins.to_vec(),
            plugin_dir,
            index: self.client.is_some(),
        };
        let built = self.supply.build_recipe(&job, progress).await?;
        for note in &built.pinned {
            printer.warn(note);
        }
        let (image, indexes) = (built.image, built.indexes);
        let mut entry = json!({
            "service": recipe.name,
            "digest": image.manifest_digest.to_string(),
            "base": image.base.reference.as_ref().map(ToString::to_string),
            "base_digest": image.base.manifest_digest.to_string(),
        });
        if recipe.plugins.is_some() {
            let ids: Vec<&str> = target.plugins.iter().map(|p| p.id.as_str()).collect();
            entry["plugins"] = json!(ids);
        }
        if let Some(dir) = &args.oci_layout {
            tokio::task::block_in_place(|| {
                build::write_oci_layout(&image, dir, Some(&recipe.name))
                    .map_err(anyhow::Error::from)
            })
            .with_context(|| format!("writing {} into {}", recipe.name, dir.display()))?;
            entry["oci"] = json!(format!("{}:{}", dir.display(), recipe.name));
        }
        if let Some(dest) = dest {
            let opts = PushOptions {
                insecure_registries: reg.insecure_registry.clone(),
                ..PushOptions::default()
            };
            let d = build::push(&image, self.cache, dest, &opts, progress)
                .await
                .with_context(|| format!("pushing {} to {dest}", recipe.name))?;
            entry["pushed"] = json!(format!("{dest}@{d}"));
        }
        if let Some(client) = self.client {
            let alias = format!("atlas/{}", recipe.name);
            // With --json off, so the nested import does not print its own JSON.
            let out = import_built(
                client,
                &image,
                indexes,
                std::slice::from_ref(&alias),
                printer,
                false,
            )
            .await?;
            entry["fingerprint"] = json!(out.fingerprint);
        }
        if !printer.json_mode() {
            printer.line(format_args!("{} {}", recipe.name, image.manifest_digest))?;
        }
        Ok(entry)
    }
}

async fn lock(printer: &Printer, out: &Path, reg: &RegistryArgs) -> Result<ExitCode> {
    let mut refs: Vec<ImageRef> = Vec::new();
    let mut downloads = Vec::new();
    for r in Recipe::embedded()? {
        for u in r.upstream_refs() {
            if !refs.contains(&u) {
                refs.push(u);
            }
        }
        downloads.extend(r.downloads.iter().cloned());
    }
    let mut lock = lock_references(&refs, reg.registry_mirror.as_deref(), &pull_options(reg))
        .await
        .with_context(|| match &reg.registry_mirror {
            Some(m) => format!("resolving the recipes' upstream tags through the mirror {m}"),
            None => "resolving the recipes' upstream tags at their registries (offline? pass --registry-mirror HOST)".to_owned(),
        })?;
    // Downloads: the sha256 of what each URL serves, for every architecture we build for.
    let cache = cache(reg)?;
    for d in &downloads {
        for arch in ["x86_64", "aarch64"] {
            let url = d.url_for(arch);
            if lock.file_digest(&url).is_some() {
                continue;
            }
            let (_, digest, _) = atlas_image::download::fetch_recipe_download(
                d,
                arch,
                None,
                reg.download_mirror.as_deref(),
                cache.root(),
                &reg.insecure_registry,
            )
            .await
            .with_context(|| format!("hashing the download {url}"))?;
            lock.insert_file(&url, digest);
        }
    }
    write_file_atomically(out, |f| {
        f.write_all(lock.to_toml().as_bytes())?;
        Ok(())
    })?;
    if printer.json_mode() {
        let images: serde_json::Map<_, _> = lock
            .iter()
            .map(|(k, d)| (k.to_owned(), json!(d.to_string())))
            .collect();
        let files: serde_json::Map<_, _> = lock
            .files()
            .map(|(k, d)| (k.to_owned(), json!(d.to_string())))
            .collect();
        printer.line(json!({ "out": out, "images": images, "files": files }))?;
    } else {
        printer.note(format_args!(
            "Wrote {} with {} images and {} downloads",
            out.display(),
            lock.len(),
            lock.files().count()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn build_args(argv: &[&str]) -> ImageBuildArgs {
        let cli =
            crate::cli::Cli::try_parse_from(["atlas-install", "image", "build"].iter().chain(argv))
                .unwrap();
        match cli.command {
            crate::cli::Command::Image(ImageCommand::Build(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn names(args: &ImageBuildArgs) -> Vec<String> {
        let config = || Ok(atlas_install::config::Config::builtin());
        recipes(args, &config)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r.name)
            .collect()
    }

    #[test]
    fn no_service_means_every_enabled_one() {
        let mut config = atlas_install::config::Config::builtin();
        let enabled: Vec<&str> = config
            .enabled_instances()
            .iter()
            .map(|(_, i)| i.service.as_str())
            .collect();
        let got = names(&build_args(&[]));
        assert_eq!(got, enabled);
        assert!(
            !got.contains(&"cloudflared".to_owned()),
            "disabled by default"
        );
        for i in config.instances.values_mut() {
            i.enabled = i.service.as_str() == "loki";
        }
        let only_loki = || Ok(config.clone());
        let got: Vec<String> = recipes(&build_args(&[]), &only_loki)
            .unwrap()
            .into_iter()
            .map(|(r, _)| r.name)
            .collect();
        assert_eq!(got, ["loki"]);
        assert_eq!(
            names(&build_args(&["caddy", "loki", "caddy"])),
            ["caddy", "loki"]
        );
    }

    #[test]
    fn oci_is_an_alias_of_oci_layout() {
        let a = build_args(&["--oci", "/x"]);
        assert_eq!(a.oci_layout.as_deref(), Some(Path::new("/x")));
        let a = build_args(&["--oci-layout", "/y", "caddy"]);
        assert_eq!(a.oci_layout.as_deref(), Some(Path::new("/y")));
    }

    #[test]
    fn push_targets() {
        let caddy = Recipe::embedded_for("caddy").unwrap().unwrap();
        // The pushed image keeps the tag of the upstream release the recipe pins.
        let tag = caddy.base_ref().unwrap().tag.unwrap();
        let t = |p: &str, several: bool| push_target(p, &caddy, several).map(|r| r.to_string());
        assert_eq!(
            t("docker://127.0.0.1:5000/atlas", true).unwrap(),
            format!("127.0.0.1:5000/atlas/caddy:{tag}")
        );
        assert_eq!(
            t("docker://127.0.0.1:5000/atlas/", false).unwrap(),
            format!("127.0.0.1:5000/atlas/caddy:{tag}")
        );
        assert_eq!(
            t("docker://127.0.0.1:5000", false).unwrap(),
            format!("127.0.0.1:5000/caddy:{tag}")
        );
        assert_eq!(
            t("docker://reg.example:5000/x/web:v1", false).unwrap(),
            "reg.example:5000/x/web:v1"
        );
        let e = t("docker://reg.example/x/web:v1", true).unwrap_err();
        assert!(e.to_string().contains("names one image"), "{e}");
        let e = t("oci:/tmp/out", false).unwrap_err();
        assert!(e.to_string().contains("--oci-layout DIR"), "{e}");
    }
}
