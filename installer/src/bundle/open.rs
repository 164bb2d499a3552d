//! The install side: refuse a bundle that is not for this binary, check space, then verify
//! and unpack its OCI layout in one pass. Nothing touches Incus here: the caller imports the
//! images from the unpacked layout (`oci:DIR:NAME`) only after this returned Ok.

use std::fs;
use std::path::{Path, PathBuf};

use atlas_image::lock::ImagesLock;
use atlas_image::progress::Progress;
use atlas_image::source::Source;

use super::inspect::BundleImage;
use super::manifest::BundleManifest;
use super::verify::{copy_hashing, next_member, open_tar, read_head, scan};
use super::{BINARY, BundleError};
use crate::signing::{Signer, Trust};

/// Room left on top of the layout's bytes: file system overhead, and not filling the disk.
const SPACE_MARGIN: u64 = 64 << 20;

/// What the installing binary requires of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub version: String,
    pub arch: String,
    /// Whose signatures are accepted (and whether none is).
    pub trust: Trust,
}

impl Expect {
    /// This binary's version and architecture, signed by a release key embedded in it.
    pub fn this_binary() -> Self {
        Self {
            version: crate::VERSION.to_owned(),
            arch: super::host_arch().to_owned(),
            trust: Trust::embedded(),
        }
    }
}

/// A verified bundle whose images are unpacked; the directory goes away when this is dropped.
#[derive(Debug)]
pub struct OpenedBundle {
    /// Who signed the bundle (checked before anything else).
    pub signer: Signer,
    pub manifest: BundleManifest,
    /// The lock the bundle's images were built with.
    pub lock: ImagesLock,
    pub images: Vec<BundleImage>,
    /// The bundle's commented default config.
    pub config: String,
    pub layout: UnpackedLayout,
}

impl OpenedBundle {
    /// The image source of the image named `name` (a service, or an upstream reference).
    pub fn source(&self, name: &str) -> Option<Source> {
        self.images
            .iter()
            .any(|i| i.name == name)
            .then(|| self.layout.source(name))
    }
}

/// An OCI layout directory removed (with everything in it) on drop.
#[derive(Debug)]
pub struct UnpackedLayout {
    dir: PathBuf,
}

impl UnpackedLayout {
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `oci:DIR:NAME`.
    pub fn source(&self, name: &str) -> Source {
        Source::OciLayout {
            path: self.dir.clone(),
            tag: Some(name.to_owned()),
        }
    }

    fn create(parent: &Path) -> Result<Self, BundleError> {
        let dir = parent.join(format!(
            "atlas-bundle-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let werr = |source| BundleError::Write {
            path: dir.clone(),
            error: source,
        };
        fs::create_dir_all(parent).map_err(werr)?;
        // create_dir (not _all): a leftover of the same name is an error, never reused.
        fs::create_dir(&dir).map_err(werr)?;
        Ok(Self { dir })
    }
}

impl Drop for UnpackedLayout {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Checks `bundle`'s signature and identity against `expect`, then free space in
/// `temp_parent`, then verifies every member while unpacking the OCI layout into a fresh
/// directory under `temp_parent`. Any failure leaves nothing behind and names the member (or
/// the signature) at fault.
pub fn open_for_install(
    bundle: &Path,
    expect: &Expect,
    temp_parent: &Path,
    progress: &dyn Progress,
) -> Result<OpenedBundle, BundleError> {
    let (manifest, signer) = super::signed::check_signature(bundle, &expect.trust)?;
    check_identity(bundle, &manifest, expect)?;
    check_space(temp_parent, manifest.layout_bytes() + SPACE_MARGIN)?;
    let layout = UnpackedLayout::create(temp_parent)?;
    let v = scan(bundle, Some(layout.path()), signer, progress)?;
    Ok(OpenedBundle {
        signer: v.signer,
        manifest: v.manifest,
        lock: v.lock,
        images: v.images,
        config: v.config,
        layout,
    })
}

fn check_identity(
    bundle: &Path,
    manifest: &BundleManifest,
    expect: &Expect,
) -> Result<(), BundleError> {
    if manifest.arch != expect.arch {
        return Err(BundleError::ArchMismatch {
            path: bundle.to_owned(),
            bundle: manifest.arch.clone(),
            binary: expect.arch.clone(),
        });
    }
    if manifest.version != expect.version {
        return Err(BundleError::VersionMismatch {
            path: bundle.to_owned(),
            bundle: manifest.version.clone(),
            binary: expect.version.clone(),
        });
    }
    Ok(())
}

/// Bytes an unprivileged process may still write under `dir` (its nearest existing ancestor).
pub fn free_space(dir: &Path) -> Result<u64, BundleError> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(existing).map_err(|e| BundleError::Io {
        path: existing.to_owned(),
        error: e.into(),
    })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn check_space(dir: &Path, needed: u64) -> Result<(), BundleError> {
    let available = free_space(dir)?;
    if available < needed {
        return Err(BundleError::NoSpace {
            dir: dir.to_owned(),
            needed,
            available,
        });
    }
    Ok(())
}

/// Writes the bundle's own binary to `dest` (mode 0755), checked against the manifest: for
/// handing an install over to the binary of another version. Only this member is read; run
/// the result's `bundle verify` (or `install --bundle`, which verifies) before trusting the rest.
pub fn extract_binary(bundle: &Path, dest: &Path) -> Result<BundleManifest, BundleError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut tar = open_tar(bundle)?;
    let mut entries = tar.entries().map_err(|source| BundleError::Io {
        path: bundle.to_owned(),
        error: source,
    })?;
    let manifest = read_head(bundle, &mut entries)?;
    let want = manifest
        .member(BINARY)
        .cloned()
        .ok_or_else(|| BundleError::Missing {
            path: bundle.to_owned(),
            name: BINARY.to_owned(),
            hint: "",
        })?;
    let werr = |source| BundleError::Write {
        path: dest.to_owned(),
        error: source,
    };
    while let Some((name, mut entry)) = next_member(bundle, &mut entries)? {
        if name != BINARY {
            continue;
        }
        let partial = dest.with_extension("partial");
        let mut f = fs::File::create(&partial).map_err(werr)?;
        let copied = copy_hashing(&mut entry, &mut f, None, &atlas_image::progress::NoProgress);
        let (digest, size) = copied.map_err(werr)?;
        if digest.hex() != want.sha256 || size != want.size {
            let _ = fs::remove_file(&partial);
            return Err(BundleError::Corrupt {
                path: bundle.to_owned(),
                name,
                expected: want.sha256,
                expected_size: want.size,
                actual: digest.hex().to_owned(),
                actual_size: size,
            });
        }
        f.set_permissions(fs::Permissions::from_mode(0o755))
            .map_err(werr)?;
        fs::rename(&partial, dest).map_err(werr)?;
        return Ok(manifest);
    }
    Err(BundleError::Missing {
        path: bundle.to_owned(),
        name: BINARY.to_owned(),
        hint: "",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_check_uses_the_nearest_existing_directory() {
        let here = std::env::temp_dir();
        let free = free_space(&here).unwrap();
        assert!(free > 0);
        // A directory not created yet is measured on its parent's file system.
        assert!(free_space(&here.join("not/yet/made")).unwrap() > 0);
        let e = check_space(&here, u64::MAX).unwrap_err();
        assert!(matches!(e, BundleError::NoSpace { .. }), "{e}");
        assert!(e.to_string().contains("not enough free space"), "{e}");
        check_space(&here, 1).unwrap();
    }
}
