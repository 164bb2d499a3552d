//! Atlas images: a pulled base image plus one deterministic Atlas layer holding our PID 1,
//! the service description it reads and a default network file, and the image config
//! rewritten to start `/sbin/init`.
//!
//! ```text
//! base layers (unchanged, by digest) + Atlas layer:
//!   sbin/init                  atlas-init (static)
//!   etc/atlas/service.json     recipe entrypoint/cmd/user/workdir/env over the base config
//!   etc/atlas/network.json     NetworkSpec::default(): only `lo`, so the image boots alone
//!   <recipe files>             [[file]] from assets/
//!   <copied trees>             [[copy]] out of other images (see `copy`)
//!   <plugins>                  [[plugin]] archives chosen in atlas.toml (see `crate::plugin`)
//! ```
//!
//! [`build`] makes the [`AtlasImage`] (layer, config and manifest bytes, all in memory: they
//! are small). Sinks: [`write_unified`] streams an Incus unified tarball (`metadata.yaml` +
//! `rootfs/`) into any `Write` in one pass over the blobs (no rootfs on disk, no temporary
//! tarball); [`write_oci_layout`] writes an OCI image layout; [`push`] sends it to a
//! registry, base blobs mounted or skipped when already there.
//!
//! Reproducible: the same base (by digest) and the same [`AtlasSpec`] give the same layer,
//! config and manifest bytes, hence the same digests, on any machine and from any cache. No
//! clock is read: times come from the base config (`created`) or are 0.
//!
//! Converting a plain OCI image ([`AtlasSpec::convert`]) is a build without a recipe: the
//! service runs the image's own entrypoint and cmd. An image that already is an Atlas image
//! ([`is_atlas_image`]) is passed through without a second layer.

mod config;
mod copy;
mod publish;
mod unified;

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::init::{NetworkSpec, ServiceSpec, SpecError};
use crate::layer::deterministic::{BuiltLayer, EntrySpec, Item, LayerBuilder};
use crate::layer::{LayerError, LayerIndex, Placer};
use crate::manifest::{Descriptor, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};
use crate::recipe::{Recipe, RuntimeSpec};
use crate::source::PulledImage;

pub use config::{merge_env, service_spec};
pub use copy::copied_entries;
pub use publish::{push, write_oci_layout};
pub use unified::{
    IncusMetadata, IndexingObserver, NO_CREATION_DATE, PreparedUnified, SBOM_MEMBER,
    flatten_inputs, incus_architecture, parse_rfc3339, write_unified,
};

/// Label (and config marker) set on every Atlas image; [`is_atlas_image`] looks for it.
pub const ATLAS_LABEL: &str = "io.atlas.image";
/// Label naming the service of an Atlas image.
pub const SERVICE_LABEL: &str = "io.atlas.service";
/// Label holding the image's [`ServiceSpec`] (the same document as its
/// `/etc/atlas/service.json`, on one line): what the installer derives each instance's service
/// spec from, so that the command line it renders replaces the image's and nothing else.
pub const SERVICE_SPEC_LABEL: &str = "io.atlas.service.spec";
/// The Incus image property carrying [`SERVICE_SPEC_LABEL`]'s value (`image.atlas.service.spec`
/// on instances).
pub const SERVICE_SPEC_PROPERTY: &str = "atlas.service.spec";
/// Label holding the recipe hash of an Atlas image built from a recipe.
pub const RECIPE_HASH_LABEL: &str = "io.atlas.recipe.hash";
/// Label listing the plugins baked into an image: `id=sha256:…,…`.
pub const PLUGINS_LABEL: &str = "io.atlas.plugins";
/// Label listing the downloaded files of an image: `path=sha256:…,…`.
pub const DOWNLOADS_LABEL: &str = "io.atlas.downloads";
/// Label naming the base image's manifest digest (OCI annotation key).
pub const BASE_DIGEST_LABEL: &str = "org.opencontainers.image.base.digest";
/// Label naming the base image (OCI annotation key).
pub const BASE_NAME_LABEL: &str = "org.opencontainers.image.base.name";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    // The inner errors are part of the message (not `source`), so a printed chain does not
    // repeat them.
    #[error("{what}: {error}")]
    Spec { what: String, error: SpecError },
    #[error("building the Atlas layer of {what}: {error}")]
    Layer { what: String, error: LayerError },
    #[error("{what}: the base image config is not a JSON object: {detail}")]
    BaseConfig { what: String, detail: String },
    #[error(
        "recipe {recipe}: copy[{index}] needs its source image {image}, which was not given \
         (pull it and build with AtlasSpec::from_recipe_with)"
    )]
    CopySourceMissing {
        recipe: String,
        index: usize,
        image: String,
    },
    /// `what`: "recipe caddy: copy[0] of /usr/bin/caddy from docker://…".
    #[error("{what}: {error}")]
    Copy {
        what: String,
        error: Box<LayerError>,
    },
    #[error("recipe {recipe}: file[{index}] {src}: {detail}")]
    Asset {
        recipe: String,
        index: usize,
        src: String,
        detail: String,
    },
    #[error("{what}: {error}")]
    Flatten { what: String, error: LayerError },
    #[error("recipe {recipe}: download[{index}] {path}: {detail}")]
    Download {
        recipe: String,
        index: usize,
        path: String,
        detail: String,
    },
    #[error(transparent)]
    Plugin(Box<crate::plugin::PluginError>),
    #[error(transparent)]
    Pull(#[from] crate::source::PullError),
    #[error(transparent)]
    Layout(#[from] crate::oci_layout::LayoutError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

/// A file added to the Atlas layer (from the recipe's `[[file]]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraFile {
    /// Absolute path in the image.
    pub dest: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub contents: Vec<u8>,
}

impl From<crate::plugin::PluginError> for BuildError {
    fn from(e: crate::plugin::PluginError) -> Self {
        BuildError::Plugin(Box::new(e))
    }
}

/// A member of the Atlas layer with full metadata: what a recipe's `[[copy]]` took from
/// another image, or an unpacked plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// Absolute path in the image.
    pub path: String,
    pub spec: EntrySpec,
}

/// What to lay over the base image: a recipe, or nothing (a plain conversion).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AtlasSpec {
    /// Service name (`prometheus`), or the image's name for a conversion.
    pub name: String,
    pub description: String,
    pub runtime: RuntimeSpec,
    pub files: Vec<ExtraFile>,
    /// Copied trees and plugins, in recipe order.
    pub entries: Vec<LayerEntry>,
    /// Hash of the recipe (`sha256:...`); `None` for a plain conversion.
    pub recipe_hash: Option<String>,
    /// Seconds from SIGTERM to SIGKILL for the service.
    pub stop_grace_period: u32,
}

impl AtlasSpec {
    /// From a recipe. `files` are the recipe's `[[file]]` contents, read by the caller
    /// (the library does not know where `assets/` lives); see [`recipe_files`].
    pub fn from_recipe(recipe: &Recipe, files: Vec<ExtraFile>) -> Result<AtlasSpec, BuildError> {
        Self::from_recipe_with(recipe, files, &[])
    }

    /// From a recipe with `[[copy]]` entries: `copies[i]` is the pulled source image of
    /// `recipe.copies[i]` (pinned by the caller, like the base).
    pub fn from_recipe_with(
        recipe: &Recipe,
        files: Vec<ExtraFile>,
        copies: &[PulledImage],
    ) -> Result<AtlasSpec, BuildError> {
        if let Some((index, c)) = recipe.copies.iter().enumerate().nth(copies.len()) {
            return Err(BuildError::CopySourceMissing {
                recipe: recipe.name.clone(),
                index,
                image: c.image.clone(),
            });
        }
        let mut entries = Vec::new();
        for (index, source) in copies.iter().enumerate().take(recipe.copies.len()) {
            entries.extend(copied_entries(recipe, index, source)?);
        }
        Ok(AtlasSpec {
            name: recipe.name.clone(),
            description: recipe.description.clone(),
            runtime: recipe.config.clone(),
            files,
            entries,
            recipe_hash: Some(recipe_hash(recipe)),
            stop_grace_period: crate::init::DEFAULT_STOP_GRACE_PERIOD,
        })
    }

    /// Lays the recipe's plugin directory (always, so the service finds it even when empty)
    /// and each chosen plugin, unpacked from its fetched archive, into the Atlas layer; the
    /// label `io.atlas.plugins` lists them with their archive digests.
    pub fn add_plugins(
        &mut self,
        plugins: &crate::recipe::Plugins,
        chosen: &[(crate::recipe::PluginSource, std::path::PathBuf)],
    ) -> Result<(), BuildError> {
        let (uid, gid) = plugins
            .owner
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .unwrap_or((0, 0));
        self.entries.push(LayerEntry {
            path: plugins.dir.clone(),
            spec: EntrySpec {
                item: crate::layer::deterministic::Item::Dir,
                mode: 0o755,
                uid,
                gid,
                xattrs: Vec::new(),
            },
        });
        let mut listed = Vec::new();
        for (source, archive) in chosen {
            self.entries
                .extend(crate::plugin::plugin_entries(plugins, &source.id, archive)?);
            listed.push(format!("{}={}", source.id, source.sha256));
        }
        if !listed.is_empty() {
            self.runtime
                .labels
                .insert(PLUGINS_LABEL.to_owned(), listed.join(","));
        }
        Ok(())
    }

    /// Lays each `[[download]]` file, fetched by the caller into `fetched[i]` (its cache path
    /// and verified digest), at its `to` (owner root); the label `io.atlas.downloads` lists
    /// them with their digests.
    pub fn add_downloads(
        &mut self,
        recipe: &Recipe,
        fetched: &[(std::path::PathBuf, crate::digest::Digest)],
    ) -> Result<(), BuildError> {
        let mut listed = Vec::new();
        for (index, (d, (path, digest))) in recipe.downloads.iter().zip(fetched).enumerate() {
            let bytes = std::fs::read(path).map_err(|e| BuildError::Download {
                recipe: recipe.name.clone(),
                index,
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
            self.entries.push(LayerEntry {
                path: d.to.clone(),
                spec: EntrySpec {
                    item: crate::layer::deterministic::Item::File(bytes),
                    mode: d.mode_bits(),
                    uid: 0,
                    gid: 0,
                    xattrs: Vec::new(),
                },
            });
            listed.push(format!("{}={digest}", d.to));
        }
        if !listed.is_empty() {
            self.runtime
                .labels
                .insert(DOWNLOADS_LABEL.to_owned(), listed.join(","));
        }
        Ok(())
    }

    /// A copy without `entries`, whose bytes are not cloned.
    pub fn without_entries(&self) -> AtlasSpec {
        AtlasSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            runtime: self.runtime.clone(),
            files: self.files.clone(),
            entries: Vec::new(),
            recipe_hash: self.recipe_hash.clone(),
            stop_grace_period: self.stop_grace_period,
        }
    }

    /// A plain conversion: the image's own config, nothing added but init and its files.
    pub fn convert(name: &str) -> AtlasSpec {
        AtlasSpec {
            name: name.to_owned(),
            stop_grace_period: crate::init::DEFAULT_STOP_GRACE_PERIOD,
            ..AtlasSpec::default()
        }
    }
}

/// Reads a recipe's `[[file]]` entries through `read` (given the `src`, e.g.
/// `assets/x/y.conf`), with their modes and owners parsed.
pub fn recipe_files(
    recipe: &Recipe,
    read: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Vec<ExtraFile>, BuildError> {
    let mut out = Vec::new();
    for (index, f) in recipe.files.iter().enumerate() {
        let bad = |detail: String| BuildError::Asset {
            recipe: recipe.name.clone(),
            index,
            src: f.src.clone(),
            detail,
        };
        let mode = u32::from_str_radix(&f.mode, 8).map_err(|e| bad(e.to_string()))?;
        let (uid, gid) = f
            .owner
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
            .ok_or_else(|| bad(format!("owner {:?} is not uid:gid", f.owner)))?;
        out.push(ExtraFile {
            dest: f.dest.clone(),
            mode,
            uid,
            gid,
            contents: read(&f.src).map_err(bad)?,
        });
    }
    Ok(out)
}

/// `sha256:` of the parsed recipe (its canonical debug form): what `atlas.recipe.hash` says.
pub fn recipe_hash(recipe: &Recipe) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(format!("{recipe:?}").as_bytes()))
    )
}

/// A built Atlas image: the base's blobs plus the Atlas layer, config and manifest.
#[derive(Clone, Debug)]
pub struct AtlasImage {
    pub base: PulledImage,
    /// The spec it was built from, without `entries` (copied trees and plugins can be tens
    /// of megabytes; their bytes live in `layer`).
    pub spec: AtlasSpec,
    /// `None` when the base already is an Atlas image (passed through).
    pub layer: Option<BuiltLayer>,
    pub service: Option<ServiceSpec>,
    pub config_bytes: Vec<u8>,
    pub config_digest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: Digest,
    pub layers: Vec<Descriptor>,
    /// The Atlas layer's files with their sha256, for the bill of materials; `None` when the
    /// base already is an Atlas image (passed through: built elsewhere).
    pub own_files: Option<Vec<crate::sbom::OwnFile>>,
}

impl AtlasImage {
    pub fn config_descriptor(&self) -> Descriptor {
        Descriptor::new(
            OCI_CONFIG,
            self.config_digest.clone(),
            self.config_bytes.len() as u64,
        )
    }

    /// Config first, then every layer (base ones, then the Atlas one).
    pub fn blobs(&self) -> Vec<Descriptor> {
        let mut out = vec![self.config_descriptor()];
        out.extend(self.layers.iter().cloned());
        out
    }

    /// The properties Incus gets (`image.<key>` on instances). Never `type` (it means OCI).
    pub fn incus_properties(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        let description = if self.spec.description.is_empty() {
            format!("Atlas image of {}", self.base.source)
        } else {
            self.spec.description.clone()
        };
        p.insert("description".to_owned(), description);
        let release = self
            .base
            .reference
            .as_ref()
            .and_then(|r| r.tag.clone())
            .unwrap_or_else(|| self.base.manifest_digest.hex()[..12].to_owned());
        p.insert("release".to_owned(), release);
        // A passed-through Atlas image names its own base and recipe in its labels.
        let labels = &self.base.config.config.labels;
        let passed = self.layer.is_none();
        let service = labels
            .get(SERVICE_LABEL)
            .filter(|_| passed)
            .unwrap_or(&self.spec.name);
        p.insert("os".to_owned(), service.clone());
        p.insert("atlas.service".to_owned(), service.clone());
        let base_digest = labels
            .get(BASE_DIGEST_LABEL)
            .filter(|_| passed)
            .cloned()
            .unwrap_or_else(|| self.base.manifest_digest.to_string());
        p.insert("atlas.base.digest".to_owned(), base_digest);
        if let Some(h) = labels.get(RECIPE_HASH_LABEL).filter(|_| passed) {
            p.insert("atlas.recipe.hash".to_owned(), h.clone());
        }
        p.insert(
            "atlas.image.digest".to_owned(),
            self.manifest_digest.to_string(),
        );
        if let Some(h) = &self.spec.recipe_hash {
            p.insert("atlas.recipe.hash".to_owned(), h.clone());
        }
        if let Some(line) = self.service.as_ref().and_then(|s| s.to_json_compact().ok()) {
            p.insert(SERVICE_SPEC_PROPERTY.to_owned(), line);
        }
        p
    }
}

/// The bill of materials of `image` (CycloneDX JSON) from the indexes of all its layers,
/// bottom to top (the base's, then the Atlas layer's), named `name`.
pub fn sbom(image: &AtlasImage, indexes: &[LayerIndex], name: &str) -> Result<Vec<u8>, BuildError> {
    let inventory =
        crate::sbom::Inventory::of_layers(indexes).map_err(|error| BuildError::Flatten {
            what: format!("the bill of materials of {name}"),
            error,
        })?;
    let base = &image.base;
    let labels = &base.config.config.labels;
    let subject = crate::sbom::Subject {
        name: name.to_owned(),
        version: base.reference.as_ref().and_then(|r| r.tag.clone()),
        digest: image.manifest_digest.to_string(),
        base: match &image.own_files {
            Some(_) => Some((base.source.clone(), base.manifest_digest.to_string())),
            None => labels.get(BASE_NAME_LABEL).map(|n| {
                (
                    n.clone(),
                    labels.get(BASE_DIGEST_LABEL).cloned().unwrap_or_default(),
                )
            }),
        },
    };
    let own = match &image.own_files {
        Some(files) => crate::sbom::Own::Files(files),
        None if is_atlas_image(base) => crate::sbom::Own::PassedThrough,
        None => crate::sbom::Own::None,
    };
    Ok(crate::sbom::cyclonedx(&subject, &inventory, own))
}

/// Whether `image` already carries atlas-init (built by us): its config says so.
pub fn is_atlas_image(image: &PulledImage) -> bool {
    image.config.config.labels.contains_key(ATLAS_LABEL)
        && image.config.config.entrypoint == ["/sbin/init"]
}

/// Builds the Atlas image of `spec` over `base`, reading the base layers once to learn its
/// layout (see [`build_indexed`]). Reads no clock.
pub fn build(base: &PulledImage, spec: &AtlasSpec) -> Result<AtlasImage, BuildError> {
    build_indexed(base, spec, &[])
}

/// Like [`build`], with base layer indexes taken while pulling ([`IndexingObserver`]); layers
/// without one are indexed here. The Atlas layer is placed through the base's symlinks
/// ([`Placer`]): on a usr-merged base, atlas-init goes to `usr/sbin/init` and `/sbin` stays
/// the symlink it was.
pub fn build_indexed(
    base: &PulledImage,
    spec: &AtlasSpec,
    known: &[Option<LayerIndex>],
) -> Result<AtlasImage, BuildError> {
    let what = format!("{} (from {})", spec.name, base.source);
    if is_atlas_image(base) {
        // Built by us before: its service is in its label (images built before the label
        // existed have none, and are installed with their own command line).
        let service = base
            .config
            .config
            .labels
            .get(SERVICE_SPEC_LABEL)
            .and_then(|s| ServiceSpec::from_json(s).ok());
        return Ok(AtlasImage {
            base: base.clone(),
            spec: spec.without_entries(),
            layer: None,
            service,
            config_bytes: base.config_bytes.clone(),
            config_digest: base.config_descriptor.digest.clone(),
            manifest_bytes: base.manifest_bytes.clone(),
            manifest_digest: base.manifest_digest.clone(),
            layers: base.manifest.layers.clone(),
            own_files: None,
        });
    }
    let service = service_spec(&base.config.config, spec).map_err(|error| BuildError::Spec {
        what: match &spec.recipe_hash {
            Some(_) => format!("the service of recipe {what}"),
            None => format!(
                "{what} cannot run as a service (its config is used as is; to give it a command, \
                 write a recipe with config.entrypoint/cmd and run `image build --recipe`)"
            ),
        },
        error,
    })?;
    let layers = unified::base_layers(&std::sync::Arc::new(base.clone()));
    let flatten_err = |error| BuildError::Flatten {
        what: what.clone(),
        error,
    };
    let indexes = unified::complete_indexes(&layers, known.to_vec(), 0).map_err(flatten_err)?;
    let placer = Placer::new(&indexes).map_err(flatten_err)?;
    let (layer, own_files) = atlas_layer(&service, spec, &placer, &what)?;
    let config_bytes =
        config::image_config(base, spec, &service, &layer.diff_id).map_err(|detail| {
            BuildError::BaseConfig {
                what: what.clone(),
                detail,
            }
        })?;
    let config_digest = Digest::of_bytes(&config_bytes);
    let mut layers: Vec<Descriptor> = base
        .manifest
        .layers
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d.media_type = config::oci_layer_type(&d.media_type);
            d
        })
        .collect();
    let layer_digest = Digest::parse(&layer.digest).map_err(|e| BuildError::BaseConfig {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    layers.push(Descriptor::new(
        OCI_LAYER_GZIP,
        layer_digest,
        layer.gzip.len() as u64,
    ));
    let config_descriptor =
        Descriptor::new(OCI_CONFIG, config_digest.clone(), config_bytes.len() as u64);
    let manifest_bytes = config::manifest(&config_descriptor, &layers, base);
    Ok(AtlasImage {
        base: base.clone(),
        spec: spec.without_entries(),
        layer: Some(layer),
        service: Some(service),
        config_bytes,
        config_digest,
        manifest_digest: Digest::of_bytes(&manifest_bytes),
        manifest_bytes,
        layers,
        own_files: Some(own_files),
    })
}

/// The Atlas layer: init, service.json, the default network.json, the recipe's files, then
/// what it copied from other images and its plugins, each at the path `placer` resolves
/// through the base's symlinks (missing parents become 0755 root-owned directories); with
/// its files' sha256 at those paths (for the bill of materials, hashed here where their bytes
/// are in memory anyway).
pub fn atlas_layer(
    service: &ServiceSpec,
    spec: &AtlasSpec,
    placer: &Placer,
    what: &str,
) -> Result<(BuiltLayer, Vec<crate::sbom::OwnFile>), BuildError> {
    let layer_err = |error| BuildError::Layer {
        what: what.to_owned(),
        error,
    };
    let at = |path: &str, dir: bool| placer.place(path, dir).map_err(layer_err);
    let init_files =
        crate::init::rootfs_files(service, Some(&NetworkSpec::default())).map_err(|error| {
            BuildError::Spec {
                what: what.to_owned(),
                error,
            }
        })?;
    let mut b = LayerBuilder::new();
    let mut own = Vec::new();
    for f in init_files {
        let origin = if f.path == crate::init::INIT_PATH {
            "atlas-init"
        } else {
            "rendered"
        };
        let path = at(f.path, false)?;
        own.push(own_file(&path, &f.contents, origin));
        b.file(&path, f.mode, f.contents.into_owned())
            .map_err(layer_err)?;
    }
    for f in &spec.files {
        let path = at(&f.dest, false)?;
        own.push(own_file(&path, &f.contents, "recipe file"));
        b.file_owned(&path, f.mode, f.uid, f.gid, f.contents.clone())
            .map_err(layer_err)?;
    }
    for e in &spec.entries {
        let mut entry = e.spec.clone();
        if let Item::Hardlink(target) = &entry.item {
            entry.item = Item::Hardlink(at(target, false)?);
        }
        let dir = entry.item == Item::Dir;
        let path = at(&e.path, dir)?;
        if let Item::File(bytes) = &entry.item {
            own.push(own_file(&path, bytes, "recipe content"));
        }
        b.entry(&path, entry).map_err(layer_err)?;
    }
    own.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((b.build().map_err(layer_err)?, own))
}

fn own_file(path: &str, bytes: &[u8], origin: &'static str) -> crate::sbom::OwnFile {
    crate::sbom::OwnFile {
        path: format!("/{}", path.trim_start_matches('/')),
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
        origin,
    }
}

/// The Atlas layer as a flattener input.
pub(crate) fn layer_input(layer: &BuiltLayer) -> crate::layer::Layer {
    crate::layer::Layer::from_bytes(
        layer.digest.clone(),
        Some(OCI_LAYER_GZIP.to_owned()),
        layer.gzip.clone(),
    )
}

/// The media type of a manifest this module writes.
pub const MANIFEST_MEDIA_TYPE: &str = OCI_MANIFEST;
