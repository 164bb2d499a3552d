//! `oci-archive:` files: a tar of an OCI layout, read in place. The tar is scanned once for
//! the offset and size of every regular file; blobs are then read straight out of the
//! archive with a seek, so nothing is extracted to disk.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read OCI archive {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "OCI archive {path} is {kind}-compressed; oci-archive: expects a plain tar (what skopeo writes): \
         decompress it first"
    )]
    Compressed { path: PathBuf, kind: &'static str },
    #[error("OCI archive {path} is not a tar file: {source}")]
    NotTar { path: PathBuf, source: io::Error },
    #[error("OCI archive {path} has no {member}: it is not an OCI image layout archive")]
    Missing { path: PathBuf, member: String },
}

/// Where one member's bytes are inside the archive file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl BlobLocation {
    /// Opens the member as a reader limited to its bytes.
    pub fn open(&self) -> io::Result<io::Take<File>> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(f.take(self.len))
    }
}

#[derive(Debug)]
pub struct ArchiveIndex {
    path: PathBuf,
    members: HashMap<String, (u64, u64)>,
}

impl ArchiveIndex {
    pub fn scan(path: &Path) -> Result<Self, ArchiveError> {
        let io_err = |source| ArchiveError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io_err)?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).map_err(io_err)?;
        let kind = match &magic[..n] {
            [0x1f, 0x8b, ..] => Some("gzip"),
            [0x28, 0xb5, 0x2f, 0xfd] => Some("zstd"),
            [b'B', b'Z', b'h', ..] => Some("bzip2"),
            [0xfd, b'7', b'z', b'X'] => Some("xz"),
            _ => None,
        };
        if let Some(kind) = kind {
            return Err(ArchiveError::Compressed {
                path: path.to_owned(),
                kind,
            });
        }
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let not_tar = |source| ArchiveError::NotTar {
            path: path.to_owned(),
            source,
        };
        let mut archive = tar::Archive::new(file);
        let mut members = HashMap::new();
        // Seeking past member data keeps opening a multi-GB archive cheap.
        for entry in archive.entries_with_seek().map_err(not_tar)? {
            let entry = entry.map_err(not_tar)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .map_err(not_tar)?
                .to_string_lossy()
                .into_owned();
            let name = normalise(&name);
            members.insert(name, (entry.raw_file_position(), entry.size()));
        }
        Ok(Self {
            path: path.to_owned(),
            members,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn locate(&self, member: &str) -> Option<BlobLocation> {
        let (offset, len) = *self.members.get(member)?;
        Some(BlobLocation {
            path: self.path.clone(),
            offset,
            len,
        })
    }

    /// Reads a small member (oci-layout, index.json) into memory.
    pub fn read_member(&self, member: &str) -> Result<Vec<u8>, ArchiveError> {
        let loc = self.locate(member).ok_or_else(|| ArchiveError::Missing {
            path: self.path.clone(),
            member: member.to_owned(),
        })?;
        let mut out = Vec::with_capacity(loc.len as usize);
        loc.open()
            .and_then(|mut r| r.read_to_end(&mut out))
            .map_err(|source| ArchiveError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(out)
    }
}

fn normalise(name: &str) -> String {
    let mut s = name;
    loop {
        if let Some(rest) = s.strip_prefix("./") {
            s = rest;
        } else if let Some(rest) = s.strip_prefix('/') {
            s = rest;
        } else {
            return s.to_owned();
        }
    }
}
