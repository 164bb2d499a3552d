//! One sequential pass over a bundle: every member's name, type, size and sha256 against the
//! manifest, then the OCI layout's references. Optionally writes the layout members to a
//! directory in the same pass (the install path), so the bytes checked are the bytes used.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use atlas_image::digest::{Digest, Hasher};
use atlas_image::lock::ImagesLock;
use atlas_image::manifest::{ImageIndex, MAX_DOCUMENT_SIZE, Manifest};
use atlas_image::progress::{Progress, ProgressTask};

use super::inspect::{BundleImage, images_of};
use super::manifest::BundleManifest;
use super::{BINARY, BundleError, CONFIG, LOCK, MANIFEST, MANIFEST_SUM, OCI_INDEX, OCI_LAYOUT};
use crate::signing::{Signer, Trust};

/// What a successful pass proved and read.
#[derive(Clone, Debug)]
pub struct Verified {
    /// Who signed the manifest (checked first).
    pub signer: Signer,
    pub manifest: BundleManifest,
    pub index: ImageIndex,
    pub lock: ImagesLock,
    pub images: Vec<BundleImage>,
    /// The commented default config carried by the bundle.
    pub config: String,
}

/// Checks the bundle at `path` offline: its signature against `trust` first, then every
/// member. The error names the member at fault.
pub fn verify(
    path: &Path,
    trust: &Trust,
    progress: &dyn Progress,
) -> Result<Verified, BundleError> {
    let (_, signer) = super::signed::check_signature(path, trust)?;
    scan(path, None, signer, progress)
}

pub(crate) fn is_layout_member(name: &str) -> bool {
    name == OCI_LAYOUT || name == OCI_INDEX || blob_hex(name).is_some()
}

/// `<hex>` of a `blobs/sha256/<hex>` member name.
fn blob_hex(name: &str) -> Option<&str> {
    let hex = name.strip_prefix("blobs/sha256/")?;
    let ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some(hex)
}

/// Refuses names that could escape an extraction directory or alias another member.
fn check_name(path: &Path, raw: &[u8]) -> Result<String, BundleError> {
    let unsafe_name = |reason| BundleError::UnsafeName {
        path: path.to_owned(),
        name: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    let name = std::str::from_utf8(raw).map_err(|_| unsafe_name("not UTF-8"))?;
    if name.is_empty() {
        return Err(unsafe_name("empty"));
    }
    if name.starts_with('/') {
        return Err(unsafe_name("absolute path"));
    }
    if name.split('/').any(|c| c == "..") {
        return Err(unsafe_name("contains a `..` component"));
    }
    // Split by hand: Path::components would quietly drop `.` and empty parts, and two
    // spellings of one name could then pass as different members.
    if name.split('/').any(|c| c.is_empty() || c == ".") {
        return Err(unsafe_name("not a plain relative path"));
    }
    Ok(name.to_owned())
}

fn check_type(path: &Path, name: &str, header: &tar::Header) -> Result<(), BundleError> {
    let t = header.entry_type();
    if t.is_file() {
        return Ok(());
    }
    let kind = match t {
        tar::EntryType::Symlink => "symbolic link".to_owned(),
        tar::EntryType::Link => "hard link".to_owned(),
        tar::EntryType::Directory => "directory".to_owned(),
        other => format!("{other:?} entry"),
    };
    Err(BundleError::NotRegular {
        path: path.to_owned(),
        name: name.to_owned(),
        kind,
    })
}

/// The next member of the tar with a safe name and regular type, or `None` at the end.
pub(crate) fn next_member<'a, R: Read>(
    path: &Path,
    entries: &mut tar::Entries<'a, R>,
) -> Result<Option<(String, tar::Entry<'a, R>)>, BundleError> {
    let not_tar = |e: io::Error| BundleError::NotABundle {
        path: path.to_owned(),
        reason: format!("its tar structure is damaged ({e})"),
    };
    let Some(entry) = entries.next() else {
        return Ok(None);
    };
    let entry = entry.map_err(not_tar)?;
    let name = check_name(path, &entry.path_bytes())?;
    check_type(path, &name, entry.header())?;
    Ok(Some((name, entry)))
}

/// Reads a small member whole (the manifest, its checksum and signature).
pub(crate) fn read_small<R: Read>(
    path: &Path,
    name: &str,
    entry: &mut tar::Entry<'_, R>,
) -> Result<Vec<u8>, BundleError> {
    let size = entry.header().size().unwrap_or(u64::MAX);
    if size > MAX_DOCUMENT_SIZE {
        return Err(BundleError::BadMember {
            path: path.to_owned(),
            name: name.to_owned(),
            reason: format!("{size} bytes is too large for this member"),
        });
    }
    let mut out = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut out)
        .map_err(|source| BundleError::Io {
            path: path.to_owned(),
            error: source,
        })?;
    if (out.len() as u64) < size {
        return Err(BundleError::Truncated {
            path: path.to_owned(),
            name: name.to_owned(),
            got: out.len() as u64,
            size,
        });
    }
    Ok(out)
}

/// Reads the manifest (first member) and its checksum (second), checked against each other.
pub(crate) fn read_head<'a, R: Read>(
    path: &Path,
    entries: &mut tar::Entries<'a, R>,
) -> Result<BundleManifest, BundleError> {
    read_head_bytes(path, entries).map(|(m, _)| m)
}

/// [`read_head`], with the manifest's bytes as stored (what its signature signs).
pub(crate) fn read_head_bytes<'a, R: Read>(
    path: &Path,
    entries: &mut tar::Entries<'a, R>,
) -> Result<(BundleManifest, Vec<u8>), BundleError> {
    let mut take = |want: &str| -> Result<Vec<u8>, BundleError> {
        match next_member(path, entries)? {
            Some((name, mut e)) if name == want => read_small(path, &name, &mut e),
            Some((name, _)) => Err(BundleError::NotABundle {
                path: path.to_owned(),
                reason: format!("member {want} must come first, found {name:?}"),
            }),
            None => Err(BundleError::NotABundle {
                path: path.to_owned(),
                reason: format!("it has no {want} member (empty or not a tar file)"),
            }),
        }
    };
    let manifest = take(MANIFEST)?;
    let sum = take(MANIFEST_SUM)?;
    let m = BundleManifest::parse(path, &manifest, &sum)?;
    // A name listed twice would pass the in-order check twice and then collide on disk.
    let mut seen = BTreeSet::new();
    if let Some(twice) = m.members.iter().find(|x| !seen.insert(x.name.as_str())) {
        return Err(BundleError::Duplicate {
            path: path.to_owned(),
            name: twice.name.clone(),
        });
    }
    for required in [BINARY, LOCK, CONFIG, OCI_LAYOUT, OCI_INDEX] {
        if m.member(required).is_none() {
            return Err(BundleError::ManifestInvalid {
                path: path.to_owned(),
                reason: format!("it lists no {required} member"),
            });
        }
    }
    Ok((m, manifest))
}

/// Opens `path` as a tar archive (buffered: the pass is sequential).
pub(crate) fn open_tar(path: &Path) -> Result<tar::Archive<BufReader<File>>, BundleError> {
    let ioerr = |error| BundleError::Io {
        path: path.to_owned(),
        error,
    };
    let mut f = File::open(path).map_err(ioerr)?;
    let mut head = Vec::with_capacity(512);
    (&mut f).take(512).read_to_end(&mut head).map_err(ioerr)?;
    if let Some(reason) = not_a_tar(&head) {
        return Err(BundleError::NotABundle {
            path: path.to_owned(),
            reason,
        });
    }
    f.seek(SeekFrom::Start(0)).map_err(ioerr)?;
    Ok(tar::Archive::new(BufReader::with_capacity(1 << 20, f)))
}

/// Why the first block is not a POSIX tar header, in words an operator can act on.
fn not_a_tar(head: &[u8]) -> Option<String> {
    let compressed = match head {
        [0x1f, 0x8b, ..] => Some("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
        [0xfd, b'7', b'z', b'X', ..] => Some("xz"),
        _ => None,
    };
    if let Some(kind) = compressed {
        return Some(format!(
            "it is {kind}-compressed; a bundle is a plain tar: decompress it first"
        ));
    }
    let ustar = head.len() == 512 && &head[257..262] == b"ustar";
    (!ustar).then(|| "it is not a tar archive (no ustar header at the start)".to_owned())
}

/// Reads just the manifest: cheap, for refusing a wrong version before the long pass.
pub fn read_manifest(path: &Path) -> Result<BundleManifest, BundleError> {
    let mut tar = open_tar(path)?;
    let mut entries = tar.entries().map_err(|e| BundleError::NotABundle {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    read_head(path, &mut entries)
}

pub(crate) fn scan(
    path: &Path,
    extract_to: Option<&Path>,
    signer: Signer,
    progress: &dyn Progress,
) -> Result<Verified, BundleError> {
    let total = fs::metadata(path).map(|m| m.len()).ok();
    let task = progress.task(&format!("verify {}", path.display()), total);
    let result = scan_inner(path, extract_to, signer, task.as_ref());
    match &result {
        Ok(v) => task.finish(&format!(
            "{} members, {} images",
            v.manifest.members.len(),
            v.images.len()
        )),
        Err(_) => task.fail("refused"),
    }
    result
}

fn scan_inner(
    path: &Path,
    extract_to: Option<&Path>,
    signer: Signer,
    task: &dyn ProgressTask,
) -> Result<Verified, BundleError> {
    let mut tar = open_tar(path)?;
    let mut entries = tar.entries().map_err(|e| BundleError::NotABundle {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let manifest = read_head(path, &mut entries)?;
    let mut pass = Pass::new(path, &manifest, extract_to);
    let mut first = true;
    while let Some((name, entry)) = next_member(path, &mut entries)? {
        // The signature (checked by `check_signature` before this pass) is not a manifest member.
        if std::mem::take(&mut first) && name == super::MANIFEST_SIG {
            continue;
        }
        pass.member(&name, entry, task)?;
    }
    pass.finish(manifest.clone(), signer)
}

/// State of one pass over the members after the manifest.
struct Pass<'m> {
    path: PathBuf,
    /// Members still expected, in file order.
    expected: Vec<&'m super::Member>,
    next: usize,
    extract_to: Option<PathBuf>,
    /// Small members kept for the reference check (index.json, lock, config, manifests).
    kept: BTreeMap<String, Vec<u8>>,
    /// Blob members and their sizes, for the reference check.
    blobs: BTreeMap<String, u64>,
}

impl<'m> Pass<'m> {
    fn new(path: &Path, manifest: &'m BundleManifest, extract_to: Option<&Path>) -> Self {
        Self {
            path: path.to_owned(),
            expected: manifest.members.iter().collect(),
            next: 0,
            extract_to: extract_to.map(Path::to_path_buf),
            kept: BTreeMap::new(),
            blobs: BTreeMap::new(),
        }
    }

    /// The manifest entry for `name`, which must be the next one in file order.
    fn expect(&mut self, name: &str) -> Result<&'m super::Member, BundleError> {
        let path = self.path.clone();
        if let Some(m) = self.expected.get(self.next).filter(|m| m.name == name) {
            self.next += 1;
            return Ok(m);
        }
        if self.expected[..self.next].iter().any(|m| m.name == name) {
            return Err(BundleError::Duplicate {
                path,
                name: name.to_owned(),
            });
        }
        match self.expected.get(self.next) {
            // Listed later: everything between was left out of the file.
            Some(missing) if self.expected[self.next..].iter().any(|m| m.name == name) => {
                Err(BundleError::Missing {
                    path,
                    name: missing.name.clone(),
                    hint: "",
                })
            }
            _ => Err(BundleError::Unexpected {
                path,
                name: name.to_owned(),
            }),
        }
    }

    fn member<R: Read>(
        &mut self,
        name: &str,
        mut entry: tar::Entry<'_, R>,
        task: &dyn ProgressTask,
    ) -> Result<(), BundleError> {
        let want = self.expect(name)?;
        let header_size = entry.header().size().unwrap_or(0);
        let keep = self.should_keep(name, header_size);
        let mut sink = self.sink(name)?;
        let mut kept = Vec::new();
        let (digest, size) = copy_hashing(&mut entry, &mut sink, keep.then_some(&mut kept), task)
            .map_err(|source| BundleError::Io {
            path: self.path.clone(),
            error: source,
        })?;
        if size < header_size {
            return Err(BundleError::Truncated {
                path: self.path.clone(),
                name: name.to_owned(),
                got: size,
                size: header_size,
            });
        }
        self.check_content(name, want, &digest, size)?;
        sink.flush().map_err(|source| BundleError::Write {
            path: self.path.clone(),
            error: source,
        })?;
        if blob_hex(name).is_some() {
            self.blobs.insert(name.to_owned(), size);
        }
        if keep {
            self.kept.insert(name.to_owned(), kept);
        }
        Ok(())
    }

    /// Small documents are kept for the reference check; the size bound is the tar header's,
    /// so a lying header cannot make us hold a large member in memory.
    fn should_keep(&self, name: &str, size: u64) -> bool {
        size <= MAX_DOCUMENT_SIZE
            && match blob_hex(name) {
                // A manifest of an image the index lists (index.json comes before the blobs).
                Some(hex) => self.index_lists(hex),
                None => name != BINARY,
            }
    }

    fn index_lists(&self, hex: &str) -> bool {
        let Some(bytes) = self.kept.get(OCI_INDEX) else {
            return false;
        };
        serde_json::from_slice::<ImageIndex>(bytes)
            .map(|i| i.manifests.iter().any(|d| d.digest.hex() == hex))
            .unwrap_or(false)
    }

    /// Where the member's bytes go: a file in the extraction directory, or nowhere.
    fn sink(&self, name: &str) -> Result<Box<dyn Write>, BundleError> {
        let Some(dir) = self.extract_to.as_ref().filter(|_| is_layout_member(name)) else {
            return Ok(Box::new(io::sink()));
        };
        let dest = dir.join(name);
        let werr = |source| BundleError::Write {
            path: dest.clone(),
            error: source,
        };
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(werr)?;
        }
        // create_new: the directory is fresh, so an existing file means a duplicate name.
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(&dest)
            .map_err(werr)?;
        Ok(Box::new(io::BufWriter::with_capacity(1 << 20, f)))
    }

    fn check_content(
        &self,
        name: &str,
        want: &super::Member,
        digest: &Digest,
        size: u64,
    ) -> Result<(), BundleError> {
        if digest.hex() == want.sha256 && size == want.size {
            return Ok(());
        }
        let path = self.path.clone();
        match blob_hex(name) {
            // The content is what its name promises: the manifest entry is what changed.
            Some(hex) if digest.hex() == hex => Err(BundleError::ManifestLies {
                path,
                name: name.to_owned(),
                recorded: want.sha256.clone(),
            }),
            _ => Err(BundleError::Corrupt {
                path,
                name: name.to_owned(),
                expected: want.sha256.clone(),
                expected_size: want.size,
                actual: digest.hex().to_owned(),
                actual_size: size,
            }),
        }
    }

    fn finish(self, manifest: BundleManifest, signer: Signer) -> Result<Verified, BundleError> {
        if let Some(missing) = self.expected.get(self.next) {
            return Err(BundleError::Missing {
                path: self.path.clone(),
                name: missing.name.clone(),
                hint: " (the file ends early: it is truncated)",
            });
        }
        let index = self.index()?;
        check_references(&self.path, &index, &self.kept, &self.blobs)?;
        let lock_text = self.text(LOCK)?;
        let lock = ImagesLock::parse(&lock_text, &format!("{}:{LOCK}", self.path.display()))?;
        let images = images_of(&self.path, &index, |hex| {
            self.kept.get(&format!("blobs/sha256/{hex}")).cloned()
        })?;
        Ok(Verified {
            signer,
            config: self.text(CONFIG)?,
            manifest,
            index,
            lock,
            images,
        })
    }

    fn text(&self, name: &str) -> Result<String, BundleError> {
        let bytes = self.kept.get(name).cloned().unwrap_or_default();
        String::from_utf8(bytes).map_err(|_| BundleError::BadMember {
            path: self.path.clone(),
            name: name.to_owned(),
            reason: "not UTF-8 text".to_owned(),
        })
    }

    fn index(&self) -> Result<ImageIndex, BundleError> {
        let bytes = self
            .kept
            .get(OCI_INDEX)
            .map(Vec::as_slice)
            .unwrap_or_default();
        serde_json::from_slice(bytes).map_err(|e| BundleError::BadMember {
            path: self.path.clone(),
            name: OCI_INDEX.to_owned(),
            reason: format!("not an OCI image index: {e}"),
        })
    }
}

/// Every image's manifest, config and layers are present with the size their descriptor
/// states, and every blob is used by one.
fn check_references(
    path: &Path,
    index: &ImageIndex,
    kept: &BTreeMap<String, Vec<u8>>,
    blobs: &BTreeMap<String, u64>,
) -> Result<(), BundleError> {
    let mut used = BTreeSet::new();
    for d in &index.manifests {
        let by = format!("index.json ({})", d.ref_name().unwrap_or("untagged image"));
        let name = need_blob(path, blobs, d, &by)?;
        used.insert(name.clone());
        let bytes = kept.get(&name).map(Vec::as_slice).unwrap_or_default();
        let what = format!("image manifest {name}");
        let bad = |reason: String| BundleError::BadMember {
            path: path.to_owned(),
            name: name.clone(),
            reason,
        };
        let m =
            match Manifest::parse(bytes, Some(&d.media_type), &what)
                .map_err(|e| bad(e.to_string()))?
            {
                Manifest::Image(m) => m,
                Manifest::Index(_) => return Err(bad(
                    "an image index inside the bundle's index; bundles hold single-platform images"
                        .to_owned(),
                )),
            };
        let by = format!("the image {}", d.ref_name().unwrap_or(&name));
        for blob in std::iter::once(&m.config).chain(&m.layers) {
            used.insert(need_blob(path, blobs, blob, &by)?);
        }
    }
    match blobs.keys().find(|b| !used.contains(*b)) {
        Some(name) => Err(BundleError::Unreferenced {
            path: path.to_owned(),
            name: name.clone(),
        }),
        None => Ok(()),
    }
}

/// The member `d` points at, which must hold exactly the bytes `d` says: a descriptor with
/// another size (even with its digest right) makes every reader of the image fail later.
fn need_blob(
    path: &Path,
    blobs: &BTreeMap<String, u64>,
    d: &atlas_image::manifest::Descriptor,
    by: &str,
) -> Result<String, BundleError> {
    let name = format!("blobs/sha256/{}", d.digest.hex());
    match blobs.get(&name) {
        Some(&size) if size == d.size => Ok(name),
        Some(&size) => Err(BundleError::BadMember {
            path: path.to_owned(),
            name,
            reason: format!(
                "{by} describes it as {} bytes, but it holds {size}: the image's descriptor is wrong, fetch or build the bundle again",
                d.size
            ),
        }),
        None => Err(BundleError::MissingBlob {
            path: path.to_owned(),
            digest: d.digest.clone(),
            by: by.to_owned(),
        }),
    }
}

/// Copies `r` into `w` (and `keep`), hashing; returns the digest and byte count.
pub(crate) fn copy_hashing(
    r: &mut dyn Read,
    w: &mut dyn Write,
    mut keep: Option<&mut Vec<u8>>,
    task: &dyn ProgressTask,
) -> io::Result<(Digest, u64)> {
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        if let Some(k) = keep.as_deref_mut() {
            k.extend_from_slice(&buf[..n]);
        }
        task.advance(n as u64);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_are_refused() {
        let p = Path::new("b");
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "./x",
            "a//b",
            "a/",
            "",
            "a/./b",
        ] {
            let e = check_name(p, bad.as_bytes()).unwrap_err();
            assert!(matches!(e, BundleError::UnsafeName { .. }), "{bad}: {e}");
        }
        for good in ["atlas-install", "blobs/sha256/ab", "index.json"] {
            assert_eq!(check_name(p, good.as_bytes()).unwrap(), good);
        }
    }

    #[test]
    fn non_tar_files_are_named_for_what_they_are() {
        assert!(
            not_a_tar(&[0x1f, 0x8b, 8, 0])
                .unwrap()
                .contains("gzip-compressed")
        );
        assert!(
            not_a_tar(b"root:x:0:0")
                .unwrap()
                .contains("not a tar archive")
        );
        let mut h = tar::Header::new_ustar();
        h.set_path("atlas-bundle.json").unwrap();
        assert_eq!(not_a_tar(h.as_bytes()), None);
    }

    #[test]
    fn layout_members() {
        let hex = "a".repeat(64);
        assert!(is_layout_member(&format!("blobs/sha256/{hex}")));
        assert!(is_layout_member("index.json"));
        assert!(!is_layout_member("blobs/sha256/abc"));
        assert!(!is_layout_member("atlas-install"));
    }
}
