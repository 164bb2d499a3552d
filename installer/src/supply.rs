//! Where an install's Atlas images come from: built from the embedded recipes on top of the
//! upstream images (pulled from their registries or a mirror, by locked or pinned digest), or
//! taken ready-made from an OCI image layout such as a bundle's. Either way the image lands in
//! the Incus project under its alias; an alias that already points at the same Atlas image
//! (same manifest digest) is left alone without streaming anything.

use std::path::PathBuf;

use atlas_image::build::{self, AtlasImage, AtlasSpec, BuildError, IndexingObserver};
use atlas_image::cache::{BlobCache, CacheError};
use atlas_image::layer::LayerIndex;
use atlas_image::lock::ImagesLock;
use atlas_image::progress::Progress;
use atlas_image::recipe::{Recipe, RecipeError};
use atlas_image::reference::ImageRef;
use atlas_image::registry::map_to_mirror;
use atlas_image::source::{PullError, PullOptions, PulledImage, Source, pull};

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
    pub insecure_registries: Vec<String>,
    pub cache_dir: PathBuf,
    /// Upstream digests; a reference missing here is pinned on first pull.
    pub lock: ImagesLock,
    /// Ready Atlas images in an OCI layout (tagged with the service name): no registry at all.
    pub layout: Option<PathBuf>,
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
    /// Said when an upstream digest was pinned on first pull rather than taken from the lock.
    pub pinned: Option<String>,
}

type Indexes = Vec<Option<LayerIndex>>;

impl ImageSupply {
    /// Makes `alias` in `client`'s project point at the current Atlas image of `service`.
    pub async fn ensure(
        &self,
        client: &Client,
        service: &str,
        alias: &str,
        progress: &dyn Progress,
    ) -> Result<Supplied, SupplyError> {
        let (image, indexes, pinned) = self.atlas_image(service, progress).await?;
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

    /// The Atlas image of `service`: from the layout when there is one, else built from the
    /// recipe over its pulled base. Base layers are indexed while they are read, so a later
    /// import does not read them again.
    async fn atlas_image(
        &self,
        service: &str,
        progress: &dyn Progress,
    ) -> Result<(AtlasImage, Indexes, Option<String>), SupplyError> {
        let cache = BlobCache::open(&self.cache_dir).map_err(|source| SupplyError::Cache {
            path: self.cache_dir.clone(),
            source,
        })?;
        let recipe = recipe_for(service)?;
        let (base, indexes, pinned) = match &self.layout {
            Some(dir) => {
                let src = Source::OciLayout {
                    path: dir.clone(),
                    tag: Some(service.to_string()),
                };
                let (img, idx) = self.pull(&src, service, &cache, progress).await?;
                (img, idx, None)
            }
            None => self.pull_base(&recipe, &cache, progress).await?,
        };
        let build_err = |source| SupplyError::Build {
            service: service.to_string(),
            source: Box::new(source),
        };
        // Recipes carry no files of their own (configs are pushed at deploy time), so a
        // file source is an error rather than a read of whatever the working directory has.
        let files = build::recipe_files(&recipe, &|src: &str| {
            Err(format!(
                "{src}: recipe files are not embedded in this binary"
            ))
        })
        .map_err(build_err)?;
        let spec = AtlasSpec::from_recipe(&recipe, files).map_err(build_err)?;
        let image = build::build(&base, &spec).map_err(build_err)?;
        Ok((image, indexes, pinned))
    }

    /// Pulls the recipe's base by locked or pinned digest, else by tag, pinning what the
    /// registry served (the returned note says so).
    async fn pull_base(
        &self,
        recipe: &Recipe,
        cache: &BlobCache,
        progress: &dyn Progress,
    ) -> Result<(PulledImage, Indexes, Option<String>), SupplyError> {
        let service = recipe.name.as_str();
        let base = recipe.base_ref().map_err(|e| SupplyError::Recipe {
            service: service.to_string(),
            source: RecipeError::Invalid {
                path: format!("images/{service}.toml").into(),
                field: "base.image".into(),
                reason: e.to_string(),
            },
        })?;
        let mut pins = Pins::load(&Pins::file_in(cache.root()))?;
        let known = base
            .digest
            .clone()
            .or_else(|| self.lock.digest_for(&base).cloned())
            .or_else(|| pins.get(&base).cloned());
        let wanted = match &known {
            Some(d) => base.with_digest(d.clone()),
            None => base.clone(),
        };
        let src = Source::Registry(self.mirrored(&wanted));
        let (image, indexes) = self.pull(&src, service, cache, progress).await?;
        let mut note = None;
        if known.is_none() {
            let digest = image
                .index_digest
                .clone()
                .unwrap_or_else(|| image.manifest_digest.clone());
            pins.record(&base, digest.clone())?;
            note = Some(format!(
                "{base} is not in images.lock: pinned to {digest} on first pull (recorded in {}; later installs use this digest)",
                pins.path().display()
            ));
        }
        Ok((image, indexes, note))
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
        progress: &dyn Progress,
    ) -> Result<(PulledImage, Indexes), SupplyError> {
        let observer = IndexingObserver::new();
        let opts = PullOptions {
            insecure_registries: self.insecure_registries.clone(),
            observer: Some(observer.clone()),
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
        Ok((image, observer.take()))
    }
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
