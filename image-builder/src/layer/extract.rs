//! One path of a merged image and everything under it, as members ready for a new layer: what
//! a recipe's `[[copy]]` (a multi-stage `COPY --from`) takes out of another image.
//!
//! The subtree goes through the same merge and emitter as a full flatten, so it obeys the
//! same rules (whiteouts applied, no absolute or `..` paths, links checked); hard-link groups
//! are regrouped inside the subtree, so a link never points outside what is copied. Symlinks
//! inside the subtree are kept exactly as stored; symlinks on the way to the path are
//! followed inside the image.

use std::io::Cursor;

use super::deterministic::{EntrySpec, Item};
use super::error::{LayerError, show};
use super::merge::Plan;
use super::path::normalize;
use super::tar_read::{TarFault, TarReader};
use super::{FlattenOptions, Layer, index_layers};

/// A member of an extracted subtree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// Relative to the subtree's root: empty for the root itself, `lib/x.so` below it.
    pub path: Vec<u8>,
    /// Hard-link targets are relative to the subtree's root too.
    pub spec: EntrySpec,
}

/// The members at `path` (absolute or relative, inside the image) of the image made of
/// `layers` (bottom to top), the root of the subtree first. Also returns the resolved path.
/// File contents are held in memory: meant for binaries and plugin trees, not whole images.
pub fn extract_subtree(
    layers: &[Layer],
    path: &str,
) -> Result<(String, Vec<Extracted>), LayerError> {
    let indexes = index_layers(layers, 0)?;
    let (plan, resolved) = Plan::merge_subtree(&indexes, path.as_bytes())?;
    let mut tar = Vec::new();
    plan.write(layers, &mut tar, &FlattenOptions::default())?;
    let entries = read_members(&tar, &resolved)?;
    Ok((String::from_utf8_lossy(&resolved).into_owned(), entries))
}

fn read_members(tar: &[u8], root: &[u8]) -> Result<Vec<Extracted>, LayerError> {
    let fault = |f: TarFault| LayerError::Select {
        path: show(root),
        detail: format!("reading the extracted members failed: {f:?}"),
    };
    let relative = |raw: &[u8]| -> Option<Vec<u8>> {
        let n = normalize(raw).ok()?;
        if root.is_empty() {
            return Some(n);
        }
        if n == root {
            return Some(Vec::new());
        }
        n.strip_prefix(root)?.strip_prefix(b"/").map(<[u8]>::to_vec)
    };
    let mut r = TarReader::new(Cursor::new(tar));
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().map_err(fault)? {
        // The emitter writes the image root (`./`) first: outside a subtree below the root,
        // and nothing to copy when the subtree is the whole image.
        let Some(rel) = relative(&e.path).filter(|r| !r.is_empty() || !root.is_empty()) else {
            continue;
        };
        let item = match e.typeflag {
            b'0' | 0 => {
                let mut data = Vec::with_capacity(usize::try_from(e.size).unwrap_or(0));
                r.copy_data(&mut data)
                    .map_err(fault)?
                    .map_err(LayerError::Output)?;
                Item::File(data)
            }
            b'5' => Item::Dir,
            b'2' => Item::Symlink(e.link.clone()),
            b'1' => {
                let target = relative(&e.link).ok_or_else(|| LayerError::Select {
                    path: show(&e.path),
                    detail: "hard link outside the copied tree".to_owned(),
                })?;
                Item::Hardlink(String::from_utf8_lossy(&target).into_owned())
            }
            _ => {
                return Err(LayerError::Select {
                    path: show(&e.path),
                    detail:
                        "is a device node or fifo; only files, directories and links can be copied"
                            .to_owned(),
                });
            }
        };
        out.push(Extracted {
            path: rel,
            spec: EntrySpec {
                item,
                mode: e.mode & 0o7777,
                uid: e.uid,
                gid: e.gid,
                xattrs: e.xattrs,
            },
        });
    }
    Ok(out)
}
