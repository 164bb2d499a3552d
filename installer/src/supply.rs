//! Where an install's Atlas images come from: built from the embedded recipes on top of the
//! upstream images (pulled from their registries or a mirror, by locked or pinned digest), or
//! taken ready-made from an OCI image layout such as a bundle's. Either way the image lands in
//! the Incus project under its alias; an alias that already points at the same Atlas image
//! (same manifest digest) is left alone without streaming anything.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use atlas_image::build::{self, AtlasImage, AtlasSpec, BuildError, IndexingObserver};
use atlas_image::cache::{BlobCache, CacheError};
use atlas_image::layer::LayerIndex;
use atlas_image::lock::{ImagesLock, LockError};
use atlas_image::progress::Progress;
use atlas_image::recipe::{PluginSource, Recipe, RecipeError};
use atlas_image::reference::ImageRef;
use atlas_image::registry::map_to_mirror;
use atlas_image::source::{PullError, PullOptions, PulledImage, Source, pull};

use crate::config::ImagesConfig;
use crate::imageops::{self, ImageOpsError, Pins};
use crate::incus::{Client, IncusError, OptionalExt};

/// The image property that names the Atlas manifest digest (set by every import).
const DIGEST_PROPERTY: &str = "atlas.image.digest";

#[derive(Debug, thiserror::Error)]
pub enum SupplyError {
    #[error("no image recipe for service {service}: this binary embeds recipes for {known}")]
    NoRecipe { service: String, known: String },
    #[error("image recipe {service}: {source}")]
    Recipe {
        service: String,
        #[source]
        source: RecipeError,
    },
    #[error(
        "image cache {path}: {source}; pass --cache-dir DIR (or ATLAS_CACHE_DIR) with a writable directory"
    )]
    Cache {
        path: PathBuf,
        #[source]
        source: CacheError,
    },
    #[error("pulling {reference} for {service}: {source}")]
    Pull {
        service: String,
        reference: String,
        #[source]
        source: Box<PullError>,
    },
    #[error("building the Atlas image of {service}: {source}")]
    Build {
        service: String,
        #[source]
        source: Box<BuildError>,
    },
    #[error(transparent)]
    Import(#[from] ImageOpsError),
    #[error("recipe {service}: download[{index}]: {source}")]
    Download {
        service: String,
        index: usize,
        #[source]
        source: Box<atlas_image::download::FetchError>,
    },
    #[error("plugin for {service}: {source}")]
    Plugin {
        service: String,
        #[source]
        source: Box<atlas_image::plugin::PluginError>,
    },
    #[error(
        "[grafana] plugins chooses {missing}, which recipe {service} does not pin (it pins: {pinned}); add a [[plugin]] entry with id, url and sha256 (of the real archive: sha256sum FILE) to a copy of images/{service}.toml and build with --recipe FILE, or remove the choice"
    )]
    UnpinnedPlugins {
        service: String,
        missing: String,
        pinned: String,
    },
    #[error("images lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: LockError,
    },
    #[error(transparent)]
    EmbeddedLock(LockError),
    #[error("image alias {alias}: {source}")]
    Incus {
        alias: String,
        #[source]
        source: Box<IncusError>,
    },
}

/// Where images come from, and how registries are reached.
#[derive(Debug, Clone)]
pub struct ImageSupply {
    /// docker.io, ghcr.io and quay.io references go to this registry instead.
    pub registry_mirror: Option<String>,
    /// Recipe downloads come from here instead (`atlas_image::download::mirror_url`).
    pub download_mirror: Option<String>,
    pub insecure_registries: Vec<String>,
    pub cache_dir: PathBuf,
    /// Upstream digests; a reference missing here is pinned on first pull.
    pub lock: ImagesLock,
    /// Ready Atlas images in an OCI layout (tagged with the service name): no registry at all.
    pub layout: Option<PathBuf>,
}

/// How images are reached, as the operator set it in one place (the command line, or the
/// config's `[images]`): everything optional, so two places can be layered.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    pub registry_mirror: Option<String>,
    pub download_mirror: Option<String>,
    pub insecure_registries: Vec<String>,
    pub cache_dir: Option<PathBuf>,
    /// Replaces the embedded images.lock.
    pub lock_file: Option<PathBuf>,
}

impl From<&ImagesConfig> for ImageSettings {
    fn from(c: &ImagesConfig) -> ImageSettings {
        ImageSettings {
            registry_mirror: c.registry_mirror.clone(),
            download_mirror: c.download_mirror.clone(),
            insecure_registries: c.insecure_registries.clone(),
            cache_dir: None,
            lock_file: c.lock_file.clone().map(Into::into),
        }
    }
}

impl ImageSettings {
    /// These settings where set, `under`'s elsewhere; insecure registries are both lists
    /// (these first).
    pub fn over(self, under: ImageSettings) -> ImageSettings {
        let mut insecure_registries = self.insecure_registries;
        insecure_registries.extend(under.insecure_registries);
        ImageSettings {
            registry_mirror: self.registry_mirror.or(under.registry_mirror),
            download_mirror: self.download_mirror.or(under.download_mirror),
            insecure_registries,
            cache_dir: self.cache_dir.or(under.cache_dir),
            lock_file: self.lock_file.or(under.lock_file),
        }
    }
}

/// What [`ImageSupply::ensure`] did for one service.
#[derive(Debug, Clone)]
pub struct Supplied {
    pub service: String,
    pub alias: String,
    pub fingerprint: String,
    /// The Atlas image's manifest digest.
    pub digest: String,
    /// Streamed into Incus now (false: the alias already had this image).
    pub imported: bool,
    /// Said for each upstream digest pinned on first pull rather than taken from the lock.
    pub pinned: Vec<String>,
}

/// One recipe to build, and where its inputs come from.
pub struct RecipeBuild<'a> {
    pub recipe: &'a Recipe,
    /// Reads the recipe's `[[file]]` sources.
    pub read_asset: &'a dyn Fn(&str) -> Result<Vec<u8>, String>,
    /// The recipe's plugin archives to bake in (see [`chosen_plugins`]).
    pub plugins: Vec<PluginSource>,
    /// Local plugin archive paths are relative to this directory.
    pub plugin_dir: PathBuf,
    /// Index the base layers while pulling, for an import right after.
    pub index: bool,
}

/// A built Atlas image.
pub struct Built {
    pub image: AtlasImage,
    pub indexes: Indexes,
    /// One note per upstream digest pinned on first pull.
    pub pinned: Vec<String>,
}

pub type Indexes = Vec<Option<LayerIndex>>;

impl ImageSupply {
    /// Images built from the recipes over upstream images reached as `settings` say: the
    /// lock file it names (else the embedded one), the default cache unless it names one.
    pub fn from_settings(settings: ImageSettings) -> Result<ImageSupply, SupplyError> {
        let lock = match &settings.lock_file {
            Some(p) => ImagesLock::load(p).map_err(|source| SupplyError::Lock {
                path: p.clone(),
                source,
            })?,
            None => ImagesLock::embedded().map_err(SupplyError::EmbeddedLock)?,
        };
        Ok(ImageSupply {
            registry_mirror: settings.registry_mirror,
            download_mirror: settings.download_mirror,
            insecure_registries: settings.insecure_registries,
            cache_dir: settings.cache_dir.unwrap_or_else(BlobCache::default_dir),
            lock,
            layout: None,
        })
    }

    /// The ready Atlas images of an OCI layout (an unpacked bundle's): no registry at all.
    pub fn from_layout(layout: &Path, lock: ImagesLock) -> ImageSupply {
        ImageSupply {
            registry_mirror: None,
            download_mirror: None,
            insecure_registries: Vec::new(),
            cache_dir: layout.join(".cache"),
            lock,
            layout: Some(layout.to_path_buf()),
        }
    }

    /// Makes `alias` in `client`'s project point at the current Atlas image of `service`.
    pub async fn ensure(
        &self,
        client: &Client,
        service: &str,
        alias: &str,
        plugins: &[String],
        progress: &dyn Progress,
    ) -> Result<Supplied, SupplyError> {
        let Built {
            image,
            indexes,
            pinned,
        } = self.atlas_image(service, plugins, progress).await?;
        let digest = image.manifest_digest.to_string();
        let mut supplied = Supplied {
            service: service.to_string(),
            alias: alias.to_string(),
            fingerprint: String::new(),
            digest: digest.clone(),
            imported: false,
            pinned,
        };
        if let Some(fp) = current_with_digest(client, alias, &digest).await? {
            supplied.fingerprint = fp;
            return Ok(supplied);
        }
        let aliases = [alias.to_string()];
        let out = imageops::import(client, &image, indexes, &aliases, progress).await?;
        supplied.fingerprint = out.fingerprint;
        supplied.imported = out.created;
        Ok(supplied)
    }

    /// A lower bound of the bytes the Atlas image of `service` takes once unpacked into a
    /// storage pool: the (compressed) size of its layers, read from the layout's manifest, or
    /// from the registries' manifests of its base and `[[copy]]` images (their layers make up
    /// all of it but the small Atlas layer). Reads manifests only, pulls nothing.
    pub async fn image_bytes(&self, service: &str) -> Result<u64, SupplyError> {
        let recipe = recipe_for(service)?;
        let layers = |m: &atlas_image::manifest::ImageManifest| -> u64 {
            m.layers.iter().map(|l| l.size).sum()
        };
        if let Some(dir) = &self.layout {
            let bad = |e: atlas_image::oci_layout::LayoutError| SupplyError::Pull {
                service: service.to_string(),
                reference: format!("oci:{}:{service}", dir.display()),
                source: Box::new(e.into()),
            };
            let layout = atlas_image::oci_layout::OciLayout::open_dir(dir).map_err(bad)?;
            let d = layout.resolve(Some(service)).map_err(bad)?;
            let bytes = layout
                .store()
                .read_verified(&d.digest, d.size, "manifest")
                .map_err(bad)?;
            let m: atlas_image::manifest::ImageManifest =
                serde_json::from_slice(&bytes).map_err(|e| SupplyError::Pull {
                    service: service.to_string(),
                    reference: format!("oci:{}:{service}", dir.display()),
                    source: Box::new(
                        atlas_image::manifest::ManifestError::Json {
                            what: format!("manifest of {service}"),
                            source: e,
                        }
                        .into(),
                    ),
                })?;
            return Ok(layers(&m));
        }
        let cache = self.cache()?;
        let pins = Pins::load(&Pins::file_in(cache.root()))?;
        let mut refs = vec![
            recipe
                .base_ref()
                .map_err(|e| bad_ref(service, "base.image", &e))?,
        ];
        for (i, c) in recipe.copies.iter().enumerate() {
            refs.push(
                ImageRef::parse(&c.image)
                    .map_err(|e| bad_ref(service, &format!("copy[{i}].image"), &e))?,
            );
        }
        let opts = PullOptions {
            insecure_registries: self.insecure_registries.clone(),
            ..PullOptions::default()
        };
        let mut total = 0;
        for upstream in refs {
            let known = upstream
                .digest
                .clone()
                .or_else(|| self.lock.digest_for(&upstream).cloned())
                .or_else(|| pins.get(&upstream).cloned());
            let wanted = match known {
                Some(d) => upstream.with_digest(d),
                None => upstream.clone(),
            };
            let wanted = self.mirrored(&wanted);
            let m = atlas_image::registry::image_manifest(&wanted, &opts)
                .await
                .map_err(|source| SupplyError::Pull {
                    service: service.to_string(),
                    reference: format!("docker://{wanted}"),
                    source: Box::new(source),
                })?;
            total += layers(&m);
        }
        Ok(total)
    }

    /// The Atlas image of `service`: from the layout when there is one, else built from the
    /// embedded recipe. The plugins are those of `[grafana] plugins` the recipe pins.
    async fn atlas_image(
        &self,
        service: &str,
        plugins: &[String],
        progress: &dyn Progress,
    ) -> Result<Built, SupplyError> {
        let recipe = recipe_for(service)?;
        if let Some(dir) = &self.layout {
            let cache = self.cache()?;
            let src = Source::OciLayout {
                path: dir.clone(),
                tag: Some(service.to_string()),
            };
            let (base, indexes) = self.pull(&src, service, &cache, true, progress).await?;
            // A bundle holds finished Atlas images: building over one passes it through (its
            // `[[copy]]` files and plugins are in it already).
            let spec = AtlasSpec::convert(service);
            let image = build::build_indexed(&base, &spec, &indexes).map_err(build_err(service))?;
            return Ok(Built {
                image,
                indexes,
                pinned: Vec::new(),
            });
        }
        let job = RecipeBuild {
            plugins: chosen_plugins(&recipe, plugins)?,
            recipe: &recipe,
            // Embedded recipes carry no files of their own (configs are pushed at deploy
            // time): a file source is an error, not a read of the working directory.
            read_asset: &|src: &str| {
                Err(format!(
                    "{src}: recipe files are not embedded in this binary"
                ))
            },
            plugin_dir: PathBuf::from("/nonexistent"),
            index: true,
        };
        self.build_recipe(&job, progress).await
    }

    /// Builds a recipe's Atlas image: base and `[[copy]]` sources pulled by locked or pinned
    /// digest (else by tag, then pinned), plugin archives fetched and verified, the Atlas
    /// layer built over the base.
    pub async fn build_recipe(
        &self,
        job: &RecipeBuild<'_>,
        progress: &dyn Progress,
    ) -> Result<Built, SupplyError> {
        let recipe = job.recipe;
        let service = recipe.name.as_str();
        let cache = self.cache()?;
        let mut pinned = Vec::new();
        let base = recipe
            .base_ref()
            .map_err(|e| bad_ref(service, "base.image", &e))?;
        let (base, indexes, note) = self
            .pull_upstream(&base, service, &cache, job.index, progress)
            .await?;
        pinned.extend(note);
        let mut sources = Vec::new();
        for (i, c) in recipe.copies.iter().enumerate() {
            let r = ImageRef::parse(&c.image)
                .map_err(|e| bad_ref(service, &format!("copy[{i}].image"), &e))?;
            let (img, _, note) = self
                .pull_upstream(&r, service, &cache, false, progress)
                .await?;
            pinned.extend(note);
            sources.push(img);
        }
        let mut fetched = Vec::new();
        for (i, d) in recipe.downloads.iter().enumerate() {
            let (file, note) = self.download(service, i, d, &cache, progress).await?;
            pinned.extend(note);
            fetched.push(file);
        }
        let files = build::recipe_files(recipe, job.read_asset).map_err(build_err(service))?;
        let mut spec = tokio::task::block_in_place(|| {
            let mut spec =
                AtlasSpec::from_recipe_with(recipe, files, &sources).map_err(build_err(service))?;
            spec.add_downloads(recipe, &fetched)
                .map_err(build_err(service))?;
            Ok::<_, SupplyError>(spec)
        })?;
        if let Some(p) = &recipe.plugins {
            let mut fetched = Vec::new();
            for source in &job.plugins {
                let archive = atlas_image::plugin::fetch(
                    source,
                    cache.root(),
                    &job.plugin_dir,
                    &self.insecure_registries,
                )
                .await
                .map_err(|e| SupplyError::Plugin {
                    service: service.to_string(),
                    source: Box::new(e),
                })?;
                fetched.push((source.clone(), archive));
            }
            tokio::task::block_in_place(|| {
                spec.add_plugins(p, &fetched).map_err(build_err(service))
            })?;
        }
        let image = build::build_indexed(&base, &spec, &indexes).map_err(build_err(service))?;
        Ok(Built {
            image,
            indexes,
            pinned,
        })
    }

    fn cache(&self) -> Result<BlobCache, SupplyError> {
        BlobCache::open(&self.cache_dir).map_err(|source| SupplyError::Cache {
            path: self.cache_dir.clone(),
            source,
        })
    }

    /// Pulls an upstream image by locked or pinned digest, else by tag, pinning what the
    /// registry served (the returned note says so).
    async fn pull_upstream(
        &self,
        upstream: &ImageRef,
        service: &str,
        cache: &BlobCache,
        index: bool,
        progress: &dyn Progress,
    ) -> Result<(PulledImage, Indexes, Option<String>), SupplyError> {
        let mut pins = Pins::load(&Pins::file_in(cache.root()))?;
        let known = upstream
            .digest
            .clone()
            .or_else(|| self.lock.digest_for(upstream).cloned())
            .or_else(|| pins.get(upstream).cloned());
        let wanted = match &known {
            Some(d) => upstream.with_digest(d.clone()),
            None => upstream.clone(),
        };
        let src = Source::Registry(self.mirrored(&wanted));
        let (image, indexes) = self.pull(&src, service, cache, index, progress).await?;
        let mut note = None;
        if known.is_none() {
            let digest = image
                .index_digest
                .clone()
                .unwrap_or_else(|| image.manifest_digest.clone());
            pins.record(upstream, digest.clone())?;
            note = Some(format!(
                "not in images.lock: pinned {upstream} to {digest} on first pull (recorded in {}; later builds use this digest)",
                pins.path().display()
            ));
        }
        Ok((image, indexes, note))
    }

    /// A recipe's `[[download]]`: by the recipe's sha256, else the lock's, else the one pinned
    /// on an earlier download; the first download of an unpinned URL pins what arrived (the
    /// returned note says so). The download mirror only changes where the bytes come from.
    async fn download(
        &self,
        service: &str,
        index: usize,
        d: &atlas_image::recipe::Download,
        cache: &BlobCache,
        progress: &dyn Progress,
    ) -> Result<((PathBuf, atlas_image::digest::Digest), Option<String>), SupplyError> {
        let arch = std::env::consts::ARCH;
        let url = d.url_for(arch);
        let mut pins = Pins::load(&Pins::file_in(cache.root()))?;
        let known = self
            .lock
            .file_digest(&url)
            .or_else(|| pins.get_file(&url))
            .cloned();
        let task = progress.task(&format!("download {url}"), None);
        let got = atlas_image::download::fetch_recipe_download(
            d,
            arch,
            known.as_ref(),
            self.download_mirror.as_deref(),
            cache.root(),
            &self.insecure_registries,
        )
        .await;
        let (path, digest, _) = match got {
            Ok(v) => v,
            Err(e) => {
                task.fail(&e.to_string());
                return Err(SupplyError::Download {
                    service: service.to_string(),
                    index,
                    source: Box::new(e),
                });
            }
        };
        task.finish(&digest.to_string());
        let mut note = None;
        if known.is_none() && d.sha256.is_none() {
            pins.record_file(&url, digest.clone())?;
            note = Some(format!(
                "not in images.lock: pinned {url} to {digest} on first download (recorded in {}; later builds use this digest)",
                pins.path().display()
            ));
        }
        Ok(((path, digest), note))
    }

    fn mirrored(&self, r: &ImageRef) -> ImageRef {
        match &self.registry_mirror {
            Some(m) => map_to_mirror(r, m),
            None => r.clone(),
        }
    }

    async fn pull(
        &self,
        src: &Source,
        service: &str,
        cache: &BlobCache,
        index: bool,
        progress: &dyn Progress,
    ) -> Result<(PulledImage, Indexes), SupplyError> {
        let observer = IndexingObserver::new();
        let opts = PullOptions {
            insecure_registries: self.insecure_registries.clone(),
            observer: index
                .then(|| observer.clone() as Arc<dyn atlas_image::source::LayerObserver>),
            ..PullOptions::default()
        };
        let image =
            pull(src, cache, &opts, progress)
                .await
                .map_err(|source| SupplyError::Pull {
                    service: service.to_string(),
                    reference: src.to_string(),
                    source: Box::new(source),
                })?;
        Ok((image, if index { observer.take() } else { Vec::new() }))
    }
}

fn build_err(service: &str) -> impl Fn(BuildError) -> SupplyError + '_ {
    move |source| SupplyError::Build {
        service: service.to_string(),
        source: Box::new(source),
    }
}

fn bad_ref(service: &str, field: &str, e: &dyn std::fmt::Display) -> SupplyError {
    SupplyError::Recipe {
        service: service.to_string(),
        source: RecipeError::Invalid {
            path: format!("images/{service}.toml").into(),
            field: field.to_string(),
            reason: e.to_string(),
        },
    }
}

/// The plugins `[grafana] plugins` chooses among those `recipe` pins (none for a recipe
/// without plugins). A choice the recipe does not pin fails before any pull.
pub fn chosen_plugins(
    recipe: &Recipe,
    chosen: &[String],
) -> Result<Vec<PluginSource>, SupplyError> {
    if recipe.plugins.is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for id in chosen {
        match recipe.plugin_sources.iter().find(|p| p.id == *id) {
            Some(p) => out.push(p.clone()),
            None => missing.push(format!("{id:?}")),
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    let pinned: Vec<&str> = recipe
        .plugin_sources
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    Err(SupplyError::UnpinnedPlugins {
        service: recipe.name.clone(),
        missing: missing.join(", "),
        pinned: if pinned.is_empty() {
            "none".into()
        } else {
            pinned.join(", ")
        },
    })
}

fn recipe_for(service: &str) -> Result<Recipe, SupplyError> {
    match Recipe::embedded_for(service) {
        Some(r) => r.map_err(|source| SupplyError::Recipe {
            service: service.to_string(),
            source,
        }),
        None => Err(SupplyError::NoRecipe {
            service: service.to_string(),
            known: atlas_image::recipe::EMBEDDED
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The fingerprint `alias` points at when that image is the Atlas image `digest`.
async fn current_with_digest(
    client: &Client,
    alias: &str,
    digest: &str,
) -> Result<Option<String>, SupplyError> {
    let err = |source| SupplyError::Incus {
        alias: alias.to_string(),
        source: Box::new(source),
    };
    let Some(a) = client
        .get_image_alias(alias)
        .await
        .optional()
        .map_err(err)?
    else {
        return Ok(None);
    };
    let image = client
        .get_image(&a.value.target)
        .await
        .optional()
        .map_err(err)?;
    Ok(image
        .filter(|i| i.value.properties.get(DIGEST_PROPERTY).map(String::as_str) == Some(digest))
        .map(|i| i.value.fingerprint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_config_and_insecure_registries_add_up() {
        let flags = ImageSettings {
            registry_mirror: Some("mirror.flag:5000".into()),
            insecure_registries: vec!["flag.example".into()],
            cache_dir: Some("/flag/cache".into()),
            ..ImageSettings::default()
        };
        let config = ImagesConfig {
            registry_mirror: Some("mirror.config".into()),
            download_mirror: Some("file:///config".into()),
            insecure_registries: vec!["config.example".into()],
            lock_file: Some("/config/images.lock".into()),
            aliases: Default::default(),
        };
        let s = flags.over((&config).into());
        assert_eq!(s.registry_mirror.as_deref(), Some("mirror.flag:5000"));
        assert_eq!(s.download_mirror.as_deref(), Some("file:///config"));
        assert_eq!(s.insecure_registries, ["flag.example", "config.example"]);
        assert_eq!(s.cache_dir.as_deref(), Some(Path::new("/flag/cache")));
        assert_eq!(
            s.lock_file.as_deref(),
            Some(Path::new("/config/images.lock"))
        );
    }

    #[test]
    fn no_settings_mean_the_embedded_lock_and_the_default_cache() {
        let s = ImageSupply::from_settings(ImageSettings::default()).unwrap();
        assert_eq!(s.cache_dir, BlobCache::default_dir());
        assert!(s.registry_mirror.is_none() && s.layout.is_none());
        let e = ImageSupply::from_settings(ImageSettings {
            lock_file: Some("/nonexistent/images.lock".into()),
            ..ImageSettings::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "images lock /nonexistent/images.lock");
    }
}
