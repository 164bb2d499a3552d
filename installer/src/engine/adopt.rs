//! A data volume that an existing instance gains (Caddy's `/data` in installs from before it
//! had one): the volume is created holding what the instance has at the mount path, so
//! nothing it kept there (Caddy's internal CA, ACME account and certificates) is lost when
//! the volume is mounted over it.
//!
//! 1. the path is read through the files API (a stopped instance shows its root filesystem,
//!    a running one the same: nothing is mounted there yet), capped at [`MAX_BYTES`];
//! 2. it becomes a custom-volume backup tarball (`backup/index.yaml` with the volume's full
//!    desired config, ownership keys included, and `backup/volume/...` with numeric owners
//!    as the container sees them; Incus shifts them on first attach), imported as the
//!    volume in one operation: the volume exists with its data, or not at all;
//! 3. the profile step then mounts it. The old copy stays in the root filesystem, hidden
//!    under the mount, until the next image change rebuilds the root filesystem.
//!
//! An interrupted run finds the volume (imported and owned) or not (nothing happened yet).

use crate::incus::{Client, FileEntry, FileMeta, IncusError};

use super::error::EngineError;
use super::resource::Resource;

/// The most that is moved through the API (in memory); more is refused before any change.
pub const MAX_BYTES: u64 = 256 * 1024 * 1024;
const MAX_ENTRIES: usize = 200_000;

/// What was carried over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adopted {
    pub files: usize,
    pub bytes: u64,
}

/// One entry under the adopted path, relative to it (`""` is the path itself).
struct Item {
    rel: String,
    entry: FileEntry,
}

/// Whether `instance` (as observed) has no disk device at `path`: the volume would be
/// mounted over what its root filesystem holds there.
pub fn needs_adoption(instance: &crate::incus::Instance, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    !instance.expanded_devices.values().any(|d| {
        d.get("type").map(String::as_str) == Some("disk")
            && d.get("path").map(|p| p.trim_end_matches('/')) == Some(path)
    })
}

/// Creates volume `r` (on `project`, already targeted at the instance's member) holding what
/// `instance` has at `path`. Nothing at `path`: the volume is created empty.
pub async fn create_with_contents(
    project: &Client,
    r: &Resource,
    instance: &str,
    path: &str,
    pool_driver: &str,
) -> Result<Adopted, EngineError> {
    let err = |e: IncusError| EngineError::object(format!("instance {instance}: {path}"), e);
    let items = match walk(project, instance, path).await {
        Ok(items) => items,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(err(e)),
    };
    let adopted = Adopted {
        files: items
            .iter()
            .filter(|i| matches!(i.entry, FileEntry::File { .. }))
            .count(),
        bytes: items.iter().map(|i| size(&i.entry)).sum(),
    };
    if adopted.bytes > MAX_BYTES || items.len() > MAX_ENTRIES {
        return Err(EngineError::object(
            format!("instance {instance}"),
            format!(
                "{path} holds {} files ({} bytes), more than atlas-install moves onto volume {} through the API ({MAX_BYTES} bytes, {MAX_ENTRIES} entries). Nothing was changed. Create the volume yourself with a copy of {path} (incus storage volume create, then copy the files in), then run install again",
                adopted.files,
                adopted.bytes,
                r.name()
            ),
        ));
    }
    let tarball = backup_tarball(r, pool_driver, &items).map_err(|e| {
        EngineError::object(
            format!("volume {}", r.name()),
            format!("building its contents: {e}"),
        )
    })?;
    let pool = r.pool.as_deref().unwrap_or_default();
    project
        .import_volume_backup(pool, r.name(), reqwest::Body::from(tarball))
        .await
        .map_err(|e| EngineError::incus_at(format!("volume {}", r.name()), e))?;
    Ok(adopted)
}

fn size(e: &FileEntry) -> u64 {
    match e {
        FileEntry::File { contents, .. } => contents.len() as u64,
        _ => 0,
    }
}

/// Every entry under `root`, parents before children.
async fn walk(project: &Client, instance: &str, root: &str) -> Result<Vec<Item>, IncusError> {
    let mut out = Vec::new();
    let mut todo = vec![String::new()];
    let mut bytes = 0u64;
    while let Some(rel) = todo.pop() {
        let path = format!("{}/{rel}", root.trim_end_matches('/'));
        let entry = project
            .read_entry(instance, path.trim_end_matches('/'))
            .await?;
        if let FileEntry::Dir { names, .. } = &entry {
            for n in names.iter().rev() {
                todo.push(if rel.is_empty() {
                    n.clone()
                } else {
                    format!("{rel}/{n}")
                });
            }
        }
        bytes += size(&entry);
        out.push(Item { rel, entry });
        // Stop reading early: the caller refuses anything past the caps.
        if bytes > MAX_BYTES || out.len() > MAX_ENTRIES {
            break;
        }
    }
    Ok(out)
}

/// A tar header with numeric owner and mode (as the container sees them).
fn header(kind: tar::EntryType, meta: FileMeta, size: usize, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_uid(meta.uid.into());
    h.set_gid(meta.gid.into());
    h.set_mode(meta.mode & 0o7777);
    h.set_size(size as u64);
    h.set_mtime(mtime);
    h
}

/// The custom-volume backup Incus imports: `backup/index.yaml`, then the tree under
/// `backup/volume/`. Strings in the YAML are JSON-quoted (valid YAML, any content).
fn backup_tarball(r: &Resource, pool_driver: &str, items: &[Item]) -> std::io::Result<Vec<u8>> {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let config = r.body.config();
    let mut index = format!(
        "name: {name}\nbackend: {backend}\npool: {pool}\noptimized: false\noptimized_header: false\ntype: \"custom\"\nconfig:\n  volume:\n    name: {name}\n    description: {description}\n    type: \"custom\"\n    content_type: \"filesystem\"\n    config:\n",
        name = q(r.name()),
        backend = q(pool_driver),
        pool = q(r.pool.as_deref().unwrap_or_default()),
        description = q(r.body.description()),
    );
    for (k, v) in config {
        index.push_str(&format!("      {}: {}\n", q(k), q(v)));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(
        tar::EntryType::Regular,
        FileMeta::new(0, 0, 0o644),
        index.len(),
        now,
    );
    b.append_data(&mut h, "backup/index.yaml", index.as_bytes())?;
    for item in items {
        let path = match item.rel.as_str() {
            "" => "backup/volume".to_string(),
            rel => format!("backup/volume/{rel}"),
        };
        match &item.entry {
            FileEntry::Dir { meta, .. } => {
                let mut h = header(tar::EntryType::Directory, *meta, 0, now);
                b.append_data(&mut h, &path, std::io::empty())?;
            }
            FileEntry::File { contents, meta } => {
                let mut h = header(tar::EntryType::Regular, *meta, contents.len(), now);
                b.append_data(&mut h, &path, contents.as_slice())?;
            }
            FileEntry::Symlink { target, meta } => {
                let mut h = header(tar::EntryType::Symlink, *meta, 0, now);
                b.append_link(&mut h, &path, target)?;
            }
        }
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::engine::resource::Body;

    fn volume() -> Resource {
        let mut v = crate::incus::StorageVolume::filesystem(
            "caddy01-data",
            BTreeMap::from([
                ("size".to_string(), "1GB".to_string()),
                (
                    "snapshots.pattern".to_string(),
                    "auto-{{creation_date}}".to_string(),
                ),
            ]),
        );
        v.description = "Data of caddy01 (managed by atlas-install)".into();
        Resource::new(Body::Volume(v), Some("local"), "0.1.0")
    }

    #[test]
    fn the_tarball_is_an_incus_custom_volume_backup() {
        let items = vec![
            Item {
                rel: String::new(),
                entry: FileEntry::Dir {
                    names: vec!["caddy".into()],
                    meta: FileMeta::new(0, 0, 0o1777),
                },
            },
            Item {
                rel: "caddy".into(),
                entry: FileEntry::Dir {
                    names: vec!["root.key".into(), "link".into()],
                    meta: FileMeta::new(0, 0, 0o700),
                },
            },
            Item {
                rel: "caddy/root.key".into(),
                entry: FileEntry::File {
                    contents: b"KEY".to_vec(),
                    meta: FileMeta::new(0, 0, 0o600),
                },
            },
            Item {
                rel: "caddy/link".into(),
                entry: FileEntry::Symlink {
                    target: "root.key".into(),
                    meta: FileMeta::new(0, 0, 0o777),
                },
            },
        ];
        let bytes = backup_tarball(&volume(), "dir", &items).unwrap();
        let mut a = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            let mut body = String::new();
            std::io::Read::read_to_string(&mut e, &mut body).unwrap();
            seen.push((path, mode, body));
        }
        let paths: Vec<&str> = seen.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "backup/index.yaml",
                "backup/volume",
                "backup/volume/caddy",
                "backup/volume/caddy/root.key",
                "backup/volume/caddy/link"
            ]
        );
        assert_eq!(seen[3].1, 0o600);
        assert_eq!(seen[3].2, "KEY");
        let index = &seen[0].2;
        assert!(
            index.contains("name: \"caddy01-data\"\nbackend: \"dir\"\npool: \"local\""),
            "{index}"
        );
        assert!(
            index.contains("      \"snapshots.pattern\": \"auto-{{creation_date}}\"\n"),
            "{index}"
        );
        assert!(
            index.contains("      \"user.atlas.managed\": \"true\"\n"),
            "owned from the start: {index}"
        );
    }

    #[test]
    fn only_a_path_without_a_disk_device_is_adopted() {
        let inst: crate::incus::Instance = serde_json::from_value(serde_json::json!({
            "name": "caddy01",
            "expanded_devices": {
                "root": {"type": "disk", "path": "/", "pool": "local"},
                "data": {"type": "disk", "path": "/data/", "pool": "local", "source": "caddy01-data"}
            }
        }))
        .unwrap();
        assert!(!needs_adoption(&inst, "/data"));
        assert!(needs_adoption(&inst, "/config"));
    }
}
