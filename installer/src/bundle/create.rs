//! Writing a bundle: images gathered into a staging OCI layout (blobs deduplicated by
//! digest), then every member streamed into `OUT.partial` behind the manifest, renamed to
//! `OUT` only when complete.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use atlas_image::build::{
    self, AtlasSpec, BASE_NAME_LABEL, ExtraFile, IndexingObserver, is_atlas_image,
};
use atlas_image::cache::BlobCache;
use atlas_image::digest::{Digest, VerifyingReader};
use atlas_image::layer::LayerIndex;
use atlas_image::lock::ImagesLock;
use atlas_image::manifest::OCI_LAYER_GZIP;
use atlas_image::manifest::{Descriptor, ImageIndex, REF_NAME_ANNOTATION};
use atlas_image::oci_layout::{OciLayout, OciLayoutWriter};
use atlas_image::progress::{Progress, ProgressTask};
use atlas_image::recipe::Recipe;
use atlas_image::reference::ImageRef;
use atlas_image::registry::map_to_mirror;
use atlas_image::source::{PullOptions, PulledImage, Source, pull};

use super::manifest::{BundleManifest, FORMAT, Member, format_rfc3339, sum_line};
use super::verify::copy_hashing;
use super::{
    BINARY, BundleError, CONFIG, LOCK, MANIFEST, MANIFEST_SIG, MANIFEST_SUM, OCI_INDEX, OCI_LAYOUT,
    ROLE_ANNOTATION, VERSION_ANNOTATION,
};

/// Where recipe bases are pulled from.
pub struct RegistrySource {
    pub cache: BlobCache,
    /// `host[:port]` that docker.io/ghcr.io/quay.io references are mapped onto.
    pub mirror: Option<String>,
    /// Where the recipes' `[[download]]` files come from instead of their URLs.
    pub download_mirror: Option<String>,
    pub pull: PullOptions,
}

/// A recipe with its `[[file]]` contents already read (the library does not know where
/// `assets/` is).
pub struct RecipeBuild {
    pub recipe: Recipe,
    pub files: Vec<ExtraFile>,
}

/// Everything a bundle is made of.
pub struct CreateSpec {
    /// The binary to ship: the running one (`std::env::current_exe()`).
    pub binary: PathBuf,
    pub version: String,
    pub git_commit: String,
    pub arch: String,
    /// The commented default config.
    pub config: String,
    /// Digests the recipes' bases are pulled by; bases it lacks are pinned to what was pulled
    /// and added to the bundle's copy.
    pub lock: ImagesLock,
    /// OCI layout directories whose every (tagged) image is copied in.
    pub layouts: Vec<PathBuf>,
    /// Recipes built into Atlas images; their bases go in too.
    pub recipes: Vec<RecipeBuild>,
    pub registry: Option<RegistrySource>,
    /// Seconds since the epoch, written as the creation time.
    pub created: u64,
    /// Signs the manifest (`atlas-bundle.json.minisig`); `None` makes an unsigned bundle.
    pub sign: Option<crate::signing::SecretKey>,
}

impl CreateSpec {
    /// A spec for the running binary (version, commit, arch, default config, now).
    pub fn for_this_binary(binary: PathBuf, lock: ImagesLock) -> Self {
        Self {
            binary,
            version: crate::VERSION.to_owned(),
            git_commit: crate::GIT_COMMIT.to_owned(),
            arch: super::host_arch().to_owned(),
            config: crate::config::DEFAULT_FILE.to_owned(),
            lock,
            layouts: Vec::new(),
            recipes: Vec::new(),
            registry: None,
            created: crate::clock::now_secs(),
            sign: None,
        }
    }
}

/// What [`create`] made.
#[derive(Clone, Debug)]
pub struct Created {
    pub manifest: BundleManifest,
    /// Bases the given lock did not pin, with the digest pulled (now in the bundle's lock).
    pub pinned: Vec<(String, Digest)>,
}

/// Creates the bundle `out` (replaced atomically if it exists).
pub async fn create(
    spec: &CreateSpec,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Created, BundleError> {
    if spec.layouts.is_empty() && spec.recipes.is_empty() {
        return Err(BundleError::NoImages);
    }
    let staging = Scratch::new(out, "staging");
    let mut images = Images::new(staging.path())?;
    for dir in &spec.layouts {
        images.add_layout(dir, progress).await?;
    }
    let mut lock = spec.lock.clone();
    for r in &spec.recipes {
        images.add_recipe(r, spec, &mut lock, progress).await?;
    }
    let (layout, sboms) = images.finish()?;
    let members = staged_members(spec, &lock, &layout, sboms)?;
    let manifest = tokio::task::block_in_place(|| write_bundle(spec, &members, out, progress))?;
    let pinned = lock
        .iter()
        .filter(|(k, _)| !spec.lock.iter().any(|(old, _)| old == *k))
        .map(|(k, d)| (k.to_owned(), d.clone()))
        .collect();
    Ok(Created { manifest, pinned })
}

/// A path next to `out` removed when dropped, so a failed run leaves nothing behind.
struct Scratch(PathBuf);

impl Scratch {
    fn new(out: &Path, what: &str) -> Self {
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned());
        let path = out.with_file_name(format!(
            ".{}.{what}-{}",
            name.unwrap_or_else(|| "bundle".to_owned()),
            std::process::id()
        ));
        // A leftover of a killed run with our pid: ours to replace.
        let _ = fs::remove_dir_all(&path);
        Scratch(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        let _ = fs::remove_file(&self.0);
    }
}

/// The staging layout and the index entries we write ourselves (with our annotations).
struct Images {
    root: PathBuf,
    writer: OciLayoutWriter,
    entries: Vec<Descriptor>,
    origins: BTreeMap<String, String>,
    /// Bills of materials of the Atlas images, by image name.
    sboms: BTreeMap<String, Vec<u8>>,
    /// Needed by `pull` for its signature only: layouts are read in place.
    local_cache: BlobCache,
}

impl Images {
    fn new(root: &Path) -> Result<Self, BundleError> {
        let layout = root.join("layout");
        let writer = OciLayoutWriter::create(&layout)?;
        let local_cache = BlobCache::open(root.join("unused-cache"))
            .map_err(|e| BundleError::Layout(atlas_image::oci_layout::LayoutError::Cache(e)))?;
        Ok(Self {
            root: layout,
            writer,
            entries: Vec::new(),
            origins: BTreeMap::new(),
            sboms: BTreeMap::new(),
            local_cache,
        })
    }

    /// Lists `desc` in the index under `name`, refusing a name already taken by other bytes.
    fn push(
        &mut self,
        mut desc: Descriptor,
        name: &str,
        origin: &str,
        notes: BTreeMap<String, String>,
    ) -> Result<(), BundleError> {
        if let Some(prev) = self.entries.iter().find(|d| d.ref_name() == Some(name)) {
            if prev.digest == desc.digest {
                return Ok(()); // the same base under two recipes
            }
            return Err(BundleError::DuplicateImage {
                name: name.to_owned(),
                first: self.origins[name].clone(),
                second: origin.to_owned(),
            });
        }
        let mut a = desc.annotations.take().unwrap_or_default();
        a.extend(notes);
        a.insert(REF_NAME_ANNOTATION.to_owned(), name.to_owned());
        desc.annotations = Some(a);
        self.entries.push(desc);
        self.origins.insert(name.to_owned(), origin.to_owned());
        Ok(())
    }

    async fn add_layout(&mut self, dir: &Path, progress: &dyn Progress) -> Result<(), BundleError> {
        let layout = OciLayout::open_dir(dir)?;
        for (i, d) in layout.index().manifests.iter().enumerate() {
            let name = d.ref_name().ok_or_else(|| BundleError::Untagged {
                location: dir.display().to_string(),
                index: i,
            })?;
            let source = Source::OciLayout {
                path: dir.to_owned(),
                tag: Some(name.to_owned()),
            };
            // Indexed while the pull checks the blobs: the bill of materials needs no extra read.
            let observer = IndexingObserver::new();
            let opts = PullOptions {
                observer: Some(observer.clone()),
                ..PullOptions::default()
            };
            let image = pull(&source, &self.local_cache, &opts, progress).await?;
            if is_atlas_image(&image) {
                let atlas = build::build(&image, &AtlasSpec::convert(name))?;
                self.add_sbom(name, &atlas, observer.take())?;
            }
            let mut notes = role_notes(&image);
            if let Some(v) = d
                .annotations
                .as_ref()
                .and_then(|a| a.get(VERSION_ANNOTATION))
            {
                notes.insert(VERSION_ANNOTATION.to_owned(), v.clone());
            }
            let desc = self.copy_image(&image)?;
            self.push(desc, name, &source.to_string(), notes)?;
        }
        Ok(())
    }

    fn copy_image(&mut self, image: &PulledImage) -> Result<Descriptor, BundleError> {
        let mut desc = tokio::task::block_in_place(|| self.writer.add_image(image, None))?;
        desc.platform = Some(image.platform.clone()).filter(|p| !p.os.is_empty());
        Ok(desc)
    }

    async fn add_recipe(
        &mut self,
        r: &RecipeBuild,
        spec: &CreateSpec,
        lock: &mut ImagesLock,
        progress: &dyn Progress,
    ) -> Result<(), BundleError> {
        let recipe_err = |e: Box<dyn std::error::Error + Send + Sync>| BundleError::Recipe {
            recipe: r.recipe.name.clone(),
            error: e,
        };
        let reg = spec.registry.as_ref().ok_or_else(|| {
            recipe_err("building from recipes needs a registry (or --registry-mirror) to pull its base from".into())
        })?;
        let base_ref = r.recipe.base_ref().map_err(|e| recipe_err(e.into()))?;
        let observer = IndexingObserver::new();
        let base = pull_base(&base_ref, reg, lock, Some(observer.clone()), progress).await?;
        let base_name = without_digest(&base_ref);
        let desc = self.copy_image(&base)?;
        self.push(desc, &base_name, &base.source, base_notes(&base_ref))?;
        // `[[copy]]` sources give files to the Atlas layer; they are not bundled themselves.
        let mut sources = Vec::new();
        for c in &r.recipe.copies {
            let cref = ImageRef::parse(&c.image).map_err(|e| recipe_err(e.into()))?;
            sources.push(pull_base(&cref, reg, lock, None, progress).await?);
        }
        // `[[download]]` files go into the Atlas layer, pinned in the bundle's lock.
        let mut fetched = Vec::new();
        for d in &r.recipe.downloads {
            let arch = std::env::consts::ARCH;
            let known = lock.file_digest(&d.url_for(arch)).cloned();
            let (path, digest, url) = atlas_image::download::fetch_recipe_download(
                d,
                arch,
                known.as_ref(),
                reg.download_mirror.as_deref(),
                reg.cache.root(),
                &reg.pull.insecure_registries,
            )
            .await
            .map_err(|e| recipe_err(e.into()))?;
            if known.is_none() {
                lock.insert_file(&url, digest.clone());
            }
            fetched.push((path, digest));
        }
        let mut atlas = AtlasSpec::from_recipe_with(&r.recipe, r.files.clone(), &sources)?;
        atlas.add_downloads(&r.recipe, &fetched)?;
        if let Some(p) = &r.recipe.plugins {
            // The plugin directory the service is pointed at must exist (Grafana's run.sh
            // creates only its last component); a bundle carries no plugin choices.
            atlas.add_plugins(p, &[])?;
        }
        // The base's indexes from the pull serve both the layout (placing our layer through
        // the base's symlinks) and the bill of materials: no extra read.
        let mut indexes = observer.take();
        let image = build::build_indexed(&base, &atlas, &indexes)?;
        if let Some(l) = &image.layer {
            // Our own layer, from memory.
            let blob = &l.gzip[..];
            indexes.resize(base.layers.len(), None);
            indexes.push(Some(
                LayerIndex::from_blob(&l.digest, Some(OCI_LAYER_GZIP), blob).map_err(|error| {
                    build::BuildError::Flatten {
                        what: format!("indexing the Atlas layer of {}", r.recipe.name),
                        error,
                    }
                })?,
            ));
        }
        self.add_sbom(&r.recipe.name, &image, indexes)?;
        let desc = tokio::task::block_in_place(|| self.write_atlas(&image))?;
        let mut notes = base_notes(&base_ref);
        notes.insert(ROLE_ANNOTATION.to_owned(), "atlas".to_owned());
        notes.insert(BASE_NAME_LABEL.to_owned(), base_name);
        self.push(
            desc,
            &r.recipe.name,
            &format!("recipe {}", r.recipe.name),
            notes,
        )
    }

    /// The bill of materials of `image` from its layers' indexes (a layer the pull could not
    /// index is indexed here; the flattener would read it for the same reason).
    fn add_sbom(
        &mut self,
        name: &str,
        image: &build::AtlasImage,
        mut indexes: Vec<Option<LayerIndex>>,
    ) -> Result<(), BundleError> {
        let layers = build::flatten_inputs(image);
        indexes.resize(layers.len(), None);
        let mut full = Vec::with_capacity(layers.len());
        for (slot, layer) in indexes.into_iter().zip(&layers) {
            let index = match slot.filter(|i| i.digest == layer.digest) {
                Some(i) => i,
                None => layer.index().map_err(|error| build::BuildError::Flatten {
                    what: format!("indexing a layer of {name}"),
                    error,
                })?,
            };
            full.push(index);
        }
        let sbom = build::sbom(image, &full, name)?;
        self.sboms.insert(name.to_owned(), sbom);
        Ok(())
    }

    /// The Atlas image's own blobs; its base's are in already.
    fn write_atlas(&mut self, image: &build::AtlasImage) -> Result<Descriptor, BundleError> {
        if let Some(l) = &image.layer {
            self.writer.add_bytes(&l.gzip)?;
        }
        self.writer.add_bytes(&image.config_bytes)?;
        let mut desc = self.writer.add_manifest(
            &image.manifest_bytes,
            build::MANIFEST_MEDIA_TYPE,
            None,
            None,
        )?;
        desc.platform = Some(image.base.platform.clone()).filter(|p| !p.os.is_empty());
        Ok(desc)
    }

    /// Writes our index.json over the writer's; returns the layout directory and the bills
    /// of materials.
    fn finish(self) -> Result<(PathBuf, BTreeMap<String, Vec<u8>>), BundleError> {
        let Images {
            root,
            writer,
            entries,
            sboms,
            ..
        } = self;
        writer.finish()?;
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(atlas_image::manifest::OCI_INDEX.to_owned()),
            manifests: entries,
            annotations: None,
            extra: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec(&index).expect("an index always serialises");
        let path = root.join(OCI_INDEX);
        fs::write(&path, bytes).map_err(|source| BundleError::Write {
            path,
            error: source,
        })?;
        Ok((root, sboms))
    }
}

/// Pulls a recipe's base by its locked digest when the lock has it, else by tag, adding the
/// digest that was served to `lock` (the bundle's lock then pins it).
async fn pull_base(
    base: &ImageRef,
    reg: &RegistrySource,
    lock: &mut ImagesLock,
    observer: Option<Arc<IndexingObserver>>,
    progress: &dyn Progress,
) -> Result<PulledImage, BundleError> {
    let known = base.digest.is_some() || lock.digest_for(base).is_some();
    let wanted = if known { lock.pin(base)? } else { base.clone() };
    let target = match &reg.mirror {
        Some(m) => map_to_mirror(&wanted, m),
        None => wanted,
    };
    let mut opts = reg.pull.clone();
    if let Some(o) = observer {
        opts.observer = Some(o);
    }
    let image = pull(&Source::Registry(target), &reg.cache, &opts, progress).await?;
    if !known {
        let digest = image
            .index_digest
            .clone()
            .unwrap_or_else(|| image.manifest_digest.clone());
        // Reported by `create` in `Created::pinned`, for the caller to say whatever the
        // progress mode.
        lock.insert(base, digest);
    }
    Ok(image)
}

fn without_digest(r: &ImageRef) -> String {
    ImageRef {
        digest: None,
        ..r.clone()
    }
    .to_string()
}

fn base_notes(base: &ImageRef) -> BTreeMap<String, String> {
    let mut notes = BTreeMap::from([(ROLE_ANNOTATION.to_owned(), "base".to_owned())]);
    if let Some(tag) = &base.tag {
        notes.insert(VERSION_ANNOTATION.to_owned(), tag.clone());
    }
    notes
}

/// Role and base of an image copied from a layout, from its own config labels.
fn role_notes(image: &PulledImage) -> BTreeMap<String, String> {
    let role = if is_atlas_image(image) {
        "atlas"
    } else {
        "base"
    };
    let mut notes = BTreeMap::from([(ROLE_ANNOTATION.to_owned(), role.to_owned())]);
    if let Some(b) = image.config.config.labels.get(BASE_NAME_LABEL) {
        notes.insert(BASE_NAME_LABEL.to_owned(), b.clone());
    }
    notes
}

/// Where a member's bytes come from.
enum Content {
    Bytes(Vec<u8>),
    File(PathBuf),
}

struct Staged {
    member: Member,
    mode: u32,
    content: Content,
}

fn staged_bytes(name: &str, bytes: Vec<u8>) -> Staged {
    let (digest, size) = hash_bytes(&bytes);
    Staged {
        member: Member {
            name: name.to_owned(),
            size,
            sha256: digest.hex().to_owned(),
        },
        mode: 0o644,
        content: Content::Bytes(bytes),
    }
}

fn hash_bytes(bytes: &[u8]) -> (Digest, u64) {
    (Digest::of_bytes(bytes), bytes.len() as u64)
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        error: source,
    }
}

/// Every member after the manifest, in file order, with size and sha256.
fn staged_members(
    spec: &CreateSpec,
    lock: &ImagesLock,
    layout: &Path,
    sboms: BTreeMap<String, Vec<u8>>,
) -> Result<Vec<Staged>, BundleError> {
    let mut f = File::open(&spec.binary).map_err(io_err(&spec.binary))?;
    let (digest, size) = copy_hashing(
        &mut f,
        &mut io::sink(),
        None,
        &atlas_image::progress::NoProgress,
    )
    .map_err(io_err(&spec.binary))?;
    let mut out = vec![
        Staged {
            member: Member {
                name: BINARY.to_owned(),
                size,
                sha256: digest.hex().to_owned(),
            },
            mode: 0o755,
            content: Content::File(spec.binary.clone()),
        },
        staged_bytes(LOCK, lock.to_toml().into_bytes()),
        staged_bytes(CONFIG, spec.config.clone().into_bytes()),
    ];
    for (name, bytes) in sboms {
        out.push(staged_bytes(&super::sbom_member(&name), bytes));
    }
    for name in [OCI_LAYOUT, OCI_INDEX] {
        let p = layout.join(name);
        out.push(staged_bytes(name, fs::read(&p).map_err(io_err(&p))?));
    }
    out.extend(staged_blobs(layout)?);
    Ok(out)
}

/// The layout's blobs, sorted by digest. Their names are their digests (the layout writer
/// verified each on the way in); the bytes are hashed again while written to the bundle.
fn staged_blobs(layout: &Path) -> Result<Vec<Staged>, BundleError> {
    let dir = layout.join("blobs/sha256");
    let mut out = Vec::new();
    for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let e = e.map_err(io_err(&dir))?;
        let hex = e.file_name().to_string_lossy().into_owned();
        if Digest::parse(&format!("sha256:{hex}")).is_err() {
            continue; // the writer's partial/lock files
        }
        let size = e.metadata().map_err(io_err(&e.path()))?.len();
        out.push(Staged {
            member: Member {
                name: format!("blobs/sha256/{hex}"),
                size,
                sha256: hex,
            },
            mode: 0o644,
            content: Content::File(e.path()),
        });
    }
    out.sort_by(|a, b| a.member.name.cmp(&b.member.name));
    Ok(out)
}

fn write_bundle(
    spec: &CreateSpec,
    members: &[Staged],
    out: &Path,
    progress: &dyn Progress,
) -> Result<BundleManifest, BundleError> {
    let manifest = BundleManifest {
        format: FORMAT.to_owned(),
        version: spec.version.clone(),
        git_commit: spec.git_commit.clone(),
        arch: spec.arch.clone(),
        created: format_rfc3339(spec.created),
        members: members.iter().map(|s| s.member.clone()).collect(),
    };
    let bytes = manifest.to_bytes();
    let mut head = vec![
        staged_bytes(MANIFEST, bytes.clone()),
        staged_bytes(MANIFEST_SUM, sum_line(&bytes)),
    ];
    if let Some(key) = &spec.sign {
        let sig = super::signed::sign_manifest(key, &manifest, &bytes)?;
        head.push(staged_bytes(MANIFEST_SIG, sig));
    }
    let total: u64 = members.iter().map(|m| m.member.size).sum();
    let task = progress.task(&format!("write {}", out.display()), Some(total));
    let partial = Scratch::new(out, "partial");
    let all = head.iter().chain(members);
    let result = write_tar(partial.path(), all, spec.created, task.as_ref()).and_then(|()| {
        fs::rename(partial.path(), out).map_err(|source| BundleError::Write {
            path: out.to_owned(),
            error: source,
        })
    });
    match result {
        Ok(()) => task.finish(&format!("{} members", members.len() + head.len())),
        Err(ref e) => task.fail(&e.to_string()),
    }
    result.map(|()| manifest)
}

fn write_tar<'a>(
    path: &Path,
    members: impl Iterator<Item = &'a Staged>,
    mtime: u64,
    task: &dyn ProgressTask,
) -> Result<(), BundleError> {
    let werr = |source| BundleError::Write {
        path: path.to_owned(),
        error: source,
    };
    let f = File::create(path).map_err(werr)?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
    for s in members {
        let mut h = tar::Header::new_ustar();
        h.set_path(&s.member.name).map_err(werr)?;
        h.set_size(s.member.size);
        h.set_mode(s.mode);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let reader = open_checked(s)?;
        let mut counted = Counted {
            inner: reader,
            task,
        };
        tar.append(&h, &mut counted).map_err(werr)?;
    }
    let w = tar.into_inner().map_err(werr)?;
    let f = w.into_inner().map_err(|e| werr(e.into_error()))?;
    f.sync_all().map_err(werr)
}

/// The member's bytes, failing the read if they no longer hash to what the manifest says
/// (a binary replaced while the bundle was written, a damaged staging blob).
fn open_checked(s: &Staged) -> Result<Box<dyn Read + '_>, BundleError> {
    let reader: Box<dyn Read> = match &s.content {
        Content::Bytes(b) => Box::new(&b[..]),
        Content::File(p) => Box::new(File::open(p).map_err(io_err(p))?),
    };
    let digest = Digest::parse(&format!("sha256:{}", s.member.sha256))
        .expect("staged digests are computed here");
    Ok(Box::new(VerifyingReader::new(
        reader,
        digest,
        s.member.size,
        format!("bundle member {}", s.member.name),
    )))
}

/// Advances the write task as bytes go into the tar.
struct Counted<'a, R> {
    inner: R,
    task: &'a dyn ProgressTask,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.task.advance(n as u64);
        Ok(n)
    }
}
