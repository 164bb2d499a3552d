//! Plugin archives baked into an image (Grafana's plugins): fetched once from the recipe's
//! pinned `[[plugin]]` source into the cache (`<cache>/archives/sha256/<hex>`, kept only when
//! its sha256 is the pinned one), then unpacked into `<plugins.dir>/<id>` of the Atlas layer.
//!
//! Unpacking follows the flattener's rules: no absolute or `..` paths, symlinks kept exactly
//! as stored, hard links only to files of the same archive, no devices; owners are the
//! recipe's `plugins.owner`; modes come from the archive. Formats are told by their magic
//! bytes: zip (stored or deflated; Grafana's format), tar, tar.gz.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::build::LayerEntry;
use crate::digest::Digest;
use crate::layer::deterministic::{EntrySpec, Item};
use crate::recipe::{PluginSource, Plugins};

/// Most bytes one plugin may unpack to; its files are held in memory while the layer builds.
pub const MAX_UNPACKED: u64 = 1 << 30;
/// Most members one plugin archive may have.
pub const MAX_MEMBERS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {id}: cannot fetch {url}: {detail}")]
    Fetch {
        id: String,
        url: String,
        detail: String,
    },
    #[error(
        "plugin {id}: {url} has {actual}, but the recipe pins {expected}: the archive changed \
         or was tampered with; nothing was kept (check the source, then update the pin)"
    )]
    Mismatch {
        id: String,
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("plugin {id}: archive {path}: {detail}")]
    Archive {
        id: String,
        path: PathBuf,
        detail: String,
    },
    #[error("plugin {id}: archive {path}: entry {entry}: {detail}")]
    Entry {
        id: String,
        path: PathBuf,
        entry: String,
        detail: String,
    },
    #[error("plugin cache {path}: {source}")]
    Cache { path: PathBuf, source: io::Error },
}

/// Where fetched archives are kept, by digest.
pub fn archive_path(cache_root: &Path, digest: &Digest) -> PathBuf {
    crate::download::cached_path(cache_root, digest)
}

/// Fetches `source` into the cache unless it is already there, verifying its sha256. Local
/// paths are relative to `base_dir` (the repository root of the recipe); plain HTTP is only
/// spoken to loopback hosts and `insecure_hosts`.
pub async fn fetch(
    source: &PluginSource,
    cache_root: &Path,
    base_dir: &Path,
    insecure_hosts: &[String],
) -> Result<PathBuf, PluginError> {
    use crate::download::FetchError;
    let id = source.id.clone();
    let expected = Digest::parse(&source.sha256).map_err(|e| PluginError::Fetch {
        id: id.clone(),
        url: source.url.clone(),
        detail: e.to_string(),
    })?;
    crate::download::fetch(
        &source.url,
        Some(&expected),
        cache_root,
        base_dir,
        insecure_hosts,
    )
    .await
    .map(|(path, _)| path)
    .map_err(|e| match e {
        FetchError::Fetch { url, detail } => PluginError::Fetch { id, url, detail },
        FetchError::Mismatch {
            url,
            expected,
            actual,
        } => PluginError::Mismatch {
            id,
            url,
            expected,
            actual,
        },
        FetchError::Cache { path, source } => PluginError::Cache { path, source },
    })
}

/// One member read from an archive, before placement.
struct Member {
    path: String,
    item: Item,
    mode: u32,
}

/// The Atlas-layer entries of plugin `id` unpacked from `archive` into `<plugins.dir>/<id>`.
pub fn plugin_entries(
    plugins: &Plugins,
    id: &str,
    archive: &Path,
) -> Result<Vec<LayerEntry>, PluginError> {
    let members = read_archive(id, archive)?;
    let (uid, gid) = plugins
        .owner
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
        .unwrap_or((0, 0));
    let strip = single_top_dir(&members);
    let root = format!("{}/{id}", plugins.dir.trim_end_matches('/'));
    let place = |p: &str| -> Option<String> {
        let rel = match &strip {
            Some(top) => p.strip_prefix(top.as_str())?.trim_start_matches('/'),
            None => p,
        };
        Some(if rel.is_empty() {
            root.clone()
        } else {
            format!("{root}/{rel}")
        })
    };
    let mut out = vec![LayerEntry {
        path: root.clone(),
        spec: EntrySpec {
            item: Item::Dir,
            mode: 0o755,
            uid,
            gid,
            xattrs: Vec::new(),
        },
    }];
    for m in members {
        let Some(path) = place(&m.path) else { continue };
        if path == root {
            continue;
        }
        let item = match m.item {
            Item::Hardlink(t) => match place(&t) {
                Some(t) => Item::Hardlink(t),
                None => continue,
            },
            other => other,
        };
        out.push(LayerEntry {
            path,
            spec: EntrySpec {
                item,
                mode: m.mode,
                uid,
                gid,
                xattrs: Vec::new(),
            },
        });
    }
    Ok(out)
}

/// The one directory every member is under, if there is one.
fn single_top_dir(members: &[Member]) -> Option<String> {
    let tops: BTreeSet<&str> = members
        .iter()
        .map(|m| m.path.split('/').next().unwrap_or(""))
        .collect();
    let top = match tops.into_iter().collect::<Vec<_>>()[..] {
        [one] => one.to_owned(),
        _ => return None,
    };
    let only_dir = members.iter().all(|m| m.path != top || m.item == Item::Dir);
    let has_children = members.iter().any(|m| m.path.len() > top.len());
    (only_dir && has_children).then_some(top)
}

fn read_archive(id: &str, archive: &Path) -> Result<Vec<Member>, PluginError> {
    let err = |detail: String| PluginError::Archive {
        id: id.to_owned(),
        path: archive.to_owned(),
        detail,
    };
    let mut f = File::open(archive).map_err(|e| err(e.to_string()))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| err(e.to_string()))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| err(e.to_string()))?;
    let members = match &magic[..n] {
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => zip::read(id, archive, f)?,
        [0x1f, 0x8b, ..] => read_tar(id, archive, flate2::read::GzDecoder::new(f))?,
        _ => read_tar(id, archive, f)?,
    };
    check_members(id, archive, &members)?;
    Ok(members)
}

/// Normalizes an archive path: `./a//b/` -> `a/b`; refuses absolute paths and `..`.
fn clean(raw: &str) -> Result<String, String> {
    if raw.starts_with('/') {
        return Err("absolute path".to_owned());
    }
    let mut parts = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => return Err("`..` component".to_owned()),
            p if p.contains('\0') => return Err("NUL in the path".to_owned()),
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn read_tar(id: &str, archive: &Path, r: impl Read) -> Result<Vec<Member>, PluginError> {
    let err = |detail: String| PluginError::Archive {
        id: id.to_owned(),
        path: archive.to_owned(),
        detail,
    };
    let entry_err = |entry: &str, detail: String| PluginError::Entry {
        id: id.to_owned(),
        path: archive.to_owned(),
        entry: entry.to_owned(),
        detail,
    };
    let mut a = tar::Archive::new(r);
    let mut out = Vec::new();
    let mut total = 0u64;
    for e in a.entries().map_err(|e| err(e.to_string()))? {
        let mut e = e.map_err(|e| err(e.to_string()))?;
        let raw = String::from_utf8(e.path_bytes().into_owned())
            .map_err(|_| err("a member name is not UTF-8".to_owned()))?;
        let path = clean(&raw).map_err(|d| entry_err(&raw, d))?;
        if path.is_empty() {
            continue;
        }
        let h = e.header().clone();
        let mode = h.mode().map_err(|e| entry_err(&raw, e.to_string()))? & 0o7777;
        let link = || -> Result<String, PluginError> {
            let l = e_link(&h).ok_or_else(|| entry_err(&raw, "link without target".into()))?;
            Ok(l)
        };
        let item = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                total += h.size().unwrap_or(0);
                if total > MAX_UNPACKED {
                    return Err(err(format!("unpacks to more than {MAX_UNPACKED} bytes")));
                }
                let mut data = Vec::new();
                e.read_to_end(&mut data)
                    .map_err(|e| entry_err(&raw, e.to_string()))?;
                Item::File(data)
            }
            tar::EntryType::Directory => Item::Dir,
            tar::EntryType::Symlink => Item::Symlink(link()?.into_bytes()),
            tar::EntryType::Link => {
                Item::Hardlink(clean(&link()?).map_err(|d| entry_err(&raw, d))?)
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
            other => {
                return Err(entry_err(
                    &raw,
                    format!("{other:?} members are not allowed in a plugin"),
                ));
            }
        };
        out.push(Member { path, item, mode });
        if out.len() > MAX_MEMBERS {
            return Err(err(format!("more than {MAX_MEMBERS} members")));
        }
    }
    Ok(out)
}

fn e_link(h: &tar::Header) -> Option<String> {
    h.link_name_bytes()
        .and_then(|b| String::from_utf8(b.into_owned()).ok())
        .filter(|s| !s.is_empty())
}

/// Each path once; hard links to files of the archive; no member under a file or symlink.
fn check_members(id: &str, archive: &Path, members: &[Member]) -> Result<(), PluginError> {
    let entry_err = |entry: &str, detail: &str| PluginError::Entry {
        id: id.to_owned(),
        path: archive.to_owned(),
        entry: entry.to_owned(),
        detail: detail.to_owned(),
    };
    let mut kinds: std::collections::BTreeMap<&str, &Item> = Default::default();
    for m in members {
        for (i, _) in m.path.match_indices('/') {
            if let Some(parent) = kinds.get(&m.path[..i]) {
                if **parent != Item::Dir {
                    return Err(entry_err(&m.path, "its parent is not a directory"));
                }
            }
        }
        if let Item::Hardlink(t) = &m.item {
            if !matches!(kinds.get(t.as_str()), Some(Item::File(_))) {
                return Err(entry_err(
                    &m.path,
                    "hard link to something that is not an earlier file of the archive",
                ));
            }
        }
        if kinds.insert(&m.path, &m.item).is_some() {
            return Err(entry_err(&m.path, "appears twice"));
        }
    }
    Ok(())
}

/// Just enough zip for plugin archives: the central directory, stored and deflated members,
/// CRC and sizes checked, unix modes and symlinks from the external attributes. No zip64, no
/// encryption.
mod zip {
    use super::*;

    const EOCD: u32 = 0x0605_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    const LOCAL: u32 = 0x0403_4b50;

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_le_bytes([b[i], b[i + 1]])
    }
    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    pub(super) fn read(id: &str, archive: &Path, mut f: File) -> Result<Vec<Member>, PluginError> {
        let err = |detail: String| PluginError::Archive {
            id: id.to_owned(),
            path: archive.to_owned(),
            detail,
        };
        let io = |e: io::Error| err(format!("reading: {e}"));
        let len = f.seek(SeekFrom::End(0)).map_err(io)?;
        // The end record is in the last 22 bytes plus a comment of at most 64 KiB.
        let tail_len = len.min(22 + 65_535);
        f.seek(SeekFrom::Start(len - tail_len)).map_err(io)?;
        let mut tail = vec![0u8; tail_len as usize];
        f.read_exact(&mut tail).map_err(io)?;
        let at = (0..tail.len().saturating_sub(21))
            .rev()
            .find(|&i| u32_at(&tail, i) == EOCD)
            .ok_or_else(|| err("not a zip file: no end of central directory".to_owned()))?;
        let count = u16_at(&tail, at + 10) as usize;
        let cd_size = u32_at(&tail, at + 12) as u64;
        let cd_offset = u32_at(&tail, at + 16) as u64;
        if count == 0xffff || cd_offset == 0xffff_ffff {
            return Err(err("zip64 archives are not supported".to_owned()));
        }
        if cd_offset + cd_size > len || count > MAX_MEMBERS {
            return Err(err("the central directory is out of bounds".to_owned()));
        }
        f.seek(SeekFrom::Start(cd_offset)).map_err(io)?;
        let mut cd = vec![0u8; cd_size as usize];
        f.read_exact(&mut cd).map_err(io)?;
        let mut out = Vec::with_capacity(count);
        let mut pos = 0usize;
        let mut total = 0u64;
        for _ in 0..count {
            if pos + 46 > cd.len() || u32_at(&cd, pos) != CENTRAL {
                return Err(err("a central directory record is malformed".to_owned()));
            }
            let made_by_unix = cd[pos + 5] == 3;
            let flags = u16_at(&cd, pos + 8);
            let method = u16_at(&cd, pos + 10);
            let crc = u32_at(&cd, pos + 16);
            let csize = u32_at(&cd, pos + 20) as u64;
            let usize_ = u32_at(&cd, pos + 24) as u64;
            let name_len = u16_at(&cd, pos + 28) as usize;
            let extra_len = u16_at(&cd, pos + 30) as usize;
            let comment_len = u16_at(&cd, pos + 32) as usize;
            let ext_attr = u32_at(&cd, pos + 38);
            let local = u32_at(&cd, pos + 42) as u64;
            let name_end = pos + 46 + name_len;
            if name_end > cd.len() {
                return Err(err("a central directory record is malformed".to_owned()));
            }
            let raw = String::from_utf8(cd[pos + 46..name_end].to_vec())
                .map_err(|_| err("a member name is not UTF-8".to_owned()))?;
            pos = name_end + extra_len + comment_len;
            let entry_err = |detail: String| PluginError::Entry {
                id: id.to_owned(),
                path: archive.to_owned(),
                entry: raw.clone(),
                detail,
            };
            if flags & 1 != 0 {
                return Err(entry_err("encrypted members are not supported".to_owned()));
            }
            let path = clean(&raw).map_err(entry_err)?;
            let unix_mode = if made_by_unix { ext_attr >> 16 } else { 0 };
            let file_type = unix_mode & 0o170000;
            let is_dir = raw.ends_with('/') || file_type == 0o040000;
            let mode = match unix_mode & 0o7777 {
                0 if is_dir => 0o755,
                0 => 0o644,
                m => m,
            };
            if is_dir {
                if !path.is_empty() {
                    out.push(Member {
                        path,
                        item: Item::Dir,
                        mode,
                    });
                }
                continue;
            }
            if file_type != 0 && file_type != 0o100000 && file_type != 0o120000 {
                return Err(entry_err(format!(
                    "file type {file_type:o} is not allowed in a plugin"
                )));
            }
            total += usize_;
            if total > MAX_UNPACKED {
                return Err(err(format!("unpacks to more than {MAX_UNPACKED} bytes")));
            }
            let data =
                member_data(&mut f, local, len, method, csize, usize_, crc).map_err(entry_err)?;
            let item = if file_type == 0o120000 {
                if data.is_empty() || data.contains(&0) {
                    return Err(entry_err("symlink with an empty target".to_owned()));
                }
                Item::Symlink(data)
            } else {
                Item::File(data)
            };
            out.push(Member { path, item, mode });
        }
        Ok(out)
    }

    fn member_data(
        f: &mut File,
        local: u64,
        len: u64,
        method: u16,
        csize: u64,
        usize_: u64,
        crc: u32,
    ) -> Result<Vec<u8>, String> {
        let io = |e: io::Error| format!("reading: {e}");
        f.seek(SeekFrom::Start(local)).map_err(io)?;
        let mut h = [0u8; 30];
        f.read_exact(&mut h).map_err(io)?;
        if u32_at(&h, 0) != LOCAL {
            return Err("the local header is missing".to_owned());
        }
        let start = local + 30 + u16_at(&h, 26) as u64 + u16_at(&h, 28) as u64;
        if start + csize > len {
            return Err("the data runs past the end of the archive".to_owned());
        }
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let raw = Read::take(&mut *f, csize);
        let mut data = Vec::new();
        match method {
            0 => Read::take(raw, usize_ + 1).read_to_end(&mut data),
            8 => Read::take(flate2::read::DeflateDecoder::new(raw), usize_ + 1)
                .read_to_end(&mut data),
            m => {
                return Err(format!(
                    "compression method {m} is not supported (stored or deflate only)"
                ));
            }
        }
        .map_err(|e| format!("decompressing: {e}"))?;
        if data.len() as u64 != usize_ {
            return Err(format!(
                "{} bytes unpacked, the directory says {usize_}",
                data.len()
            ));
        }
        let mut c = flate2::Crc::new();
        c.update(&data);
        if c.sum() != crc {
            return Err("CRC mismatch: the archive is corrupt".to_owned());
        }
        Ok(data)
    }
}
