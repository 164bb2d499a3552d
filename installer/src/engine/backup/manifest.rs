//! `manifest.json` of an export: which file holds which volume, with the size and SHA-256
//! computed from the bytes written. [`verify`] checks a whole export without Incus.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BackupError;
use crate::progress::Progress;

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: u32 = 1;
/// A manifest is a few hundred bytes per volume; anything far larger is not ours.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// atlas-install version that exported.
    pub atlas_version: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// Where the volumes came from (a restore goes to the config's project and pool).
    pub project: String,
    pub pool: String,
    pub volumes: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub volume: String,
    pub instance: String,
    /// File name inside the export directory.
    pub file: String,
    /// Hex SHA-256 of the file.
    pub sha256: String,
    pub size: u64,
    /// The snapshot the tarball was taken from (deleted after the export).
    pub snapshot: String,
}

impl Manifest {
    /// Reads and checks the manifest of `dir` (shape only; files are checked by [`verify`]).
    pub fn read(dir: &Path) -> Result<Manifest, BackupError> {
        let path = dir.join(MANIFEST);
        let bad = |why: String| BackupError::Manifest {
            path: path.clone(),
            why,
        };
        let meta = std::fs::metadata(&path).map_err(|e| {
            bad(format!(
                "cannot read it ({e}); is {} an atlas-install export directory?",
                dir.display()
            ))
        })?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!("{} bytes is too large", meta.len())));
        }
        let text = std::fs::read(&path).map_err(|e| bad(format!("cannot read it ({e})")))?;
        let m: Manifest =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        m.check().map_err(bad)?;
        Ok(m)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!(
                "format {} is not the one this atlas-install reads ({FORMAT})",
                self.format
            ));
        }
        if self.volumes.is_empty() {
            return Err("it lists no volume".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.volumes {
            if !seen.insert(&e.volume) {
                return Err(format!("volume {} is listed twice", e.volume));
            }
            if !plain_file_name(&e.file) {
                return Err(format!(
                    "file {:?} of volume {} is not a plain file name in the export directory",
                    e.file, e.volume
                ));
            }
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("sha256 of {} is not 64 hex digits", e.file));
            }
        }
        Ok(())
    }

    /// Writes the manifest atomically (temporary file, then rename).
    pub fn write(&self, dir: &Path) -> Result<(), BackupError> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!("{MANIFEST}.partial"));
        let text = serde_json::to_vec_pretty(self).map_err(|e| BackupError::Manifest {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, &text)?;
                f.sync_all()
            })
            .map_err(BackupError::io("writing", &tmp))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(BackupError::io("writing", &path)));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// No directories, no `..`: a manifest cannot point a restore at files elsewhere.
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

/// SHA-256 (hex) and size of a file, streamed.
pub fn hash_file(
    path: &Path,
    progress: &dyn crate::progress::ProgressTask,
) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        progress.advance(n as u64);
    }
    Ok((hex::encode(h.finalize()), total))
}

/// Reads the manifest of `dir` and checks every file's size and SHA-256 against it. Nothing
/// here talks to Incus: a damaged export is refused before anything is touched.
pub fn verify(dir: &Path, progress: &dyn Progress) -> Result<Manifest, BackupError> {
    let manifest = Manifest::read(dir)?;
    for e in &manifest.volumes {
        let path = dir.join(&e.file);
        verify_entry(&path, e, progress)?;
    }
    Ok(manifest)
}

fn verify_entry(
    path: &Path,
    e: &ManifestEntry,
    progress: &dyn Progress,
) -> Result<(), BackupError> {
    let corrupt = |why: String| BackupError::Corrupt {
        path: PathBuf::from(path),
        why,
    };
    let task = progress.task(&format!("verify {}", e.file), Some(e.size));
    let (sha, size) = hash_file(path, task.as_ref()).map_err(|err| {
        task.fail(&err.to_string());
        corrupt(format!("cannot read it ({err})"))
    })?;
    if size != e.size {
        task.fail("size differs");
        return Err(corrupt(format!(
            "it has {size} bytes, the manifest says {}",
            e.size
        )));
    }
    if !sha.eq_ignore_ascii_case(&e.sha256) {
        task.fail("sha256 differs");
        return Err(corrupt(format!(
            "its sha256 is {sha}, the manifest says {}",
            e.sha256
        )));
    }
    task.finish("sha256 ok");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn export_dir(content: &[u8]) -> (tempfile::TempDir, Manifest) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("v-data.tar.gz"), content).unwrap();
        let m = Manifest {
            format: FORMAT,
            atlas_version: "0.1.0".into(),
            created_at: "2026-11-26T14:06:07Z".into(),
            project: "atlas".into(),
            pool: "default".into(),
            volumes: vec![ManifestEntry {
                volume: "v-data".into(),
                instance: "v".into(),
                file: "v-data.tar.gz".into(),
                sha256: hex::encode(Sha256::digest(content)),
                size: content.len() as u64,
                snapshot: "s".into(),
            }],
        };
        m.write(dir.path()).unwrap();
        (dir, m)
    }

    #[test]
    fn intact_export_verifies_and_round_trips() {
        let (dir, m) = export_dir(b"some tarball bytes");
        assert_eq!(verify(dir.path(), &NoProgress).unwrap(), m);
        assert!(!dir.path().join("manifest.json.partial").exists());
    }

    #[test]
    fn a_flipped_byte_is_refused_naming_the_file() {
        let (dir, _) = export_dir(b"some tarball bytes");
        let f = dir.path().join("v-data.tar.gz");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[3] ^= 0x01;
        std::fs::write(&f, bytes).unwrap();
        let e = verify(dir.path(), &NoProgress).unwrap_err().to_string();
        assert!(
            e.contains("v-data.tar.gz")
                && e.contains("sha256")
                && e.contains("Nothing was restored"),
            "{e}"
        );
    }

    #[test]
    fn truncated_and_missing_files_are_refused() {
        let (dir, _) = export_dir(b"some tarball bytes");
        let f = dir.path().join("v-data.tar.gz");
        std::fs::write(&f, b"some").unwrap();
        let e = verify(dir.path(), &NoProgress).unwrap_err().to_string();
        assert!(e.contains("4 bytes"), "{e}");
        std::fs::remove_file(&f).unwrap();
        let e = verify(dir.path(), &NoProgress).unwrap_err().to_string();
        assert!(
            e.contains("v-data.tar.gz") && e.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn manifest_shape_errors_name_the_problem() {
        let (dir, mut m) = export_dir(b"x");
        m.volumes[0].file = "../etc/passwd".into();
        m.write(dir.path()).unwrap();
        let e = verify(dir.path(), &NoProgress).unwrap_err().to_string();
        assert!(e.contains("not a plain file name"), "{e}");
        std::fs::write(dir.path().join(MANIFEST), "{").unwrap();
        let e = verify(dir.path(), &NoProgress).unwrap_err().to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = verify(empty.path(), &NoProgress).unwrap_err().to_string();
        assert!(e.contains("export directory"), "{e}");
    }
}
