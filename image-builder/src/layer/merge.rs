//! The merge: replays every layer's index, bottom to top, on an in-memory tree of paths and
//! decides which member wins each path. Only headers are involved; the result is a [`Plan`]
//! that the emitter follows while streaming the layers once more.
//!
//! Semantics follow the OCI image spec's "applying changesets" plus what extraction does:
//! - a layer's whiteouts and opaque markers apply to the lower layers only, so they are
//!   applied before the layer's own members, whatever their order in the stream;
//! - a member replaces whatever was at its path; a non-directory replacing a directory removes
//!   the directory's subtree; a directory over a directory only updates its metadata;
//! - a hard link shares the inode of its target at the time it is read, so later replacing or
//!   deleting the target path does not change the link's content;
//! - missing parents are created as 0755 root-owned directories; a parent that is a symlink or
//!   a file is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::error::{LayerError, show};
use super::index::{EntryKind, EntryRef, LayerIndex};
use super::path::{ancestors, normalize};
use super::tar_read::Kind;

/// A member: (layer position, member ordinal in that layer).
pub(crate) type Ref = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    kind: NodeKind,
    /// The member that owns this path's metadata (`None`: a synthesized parent directory).
    entry: Option<Ref>,
    /// For non-directories, the member that owns the content (differs from `entry` for hard links).
    inode: Ref,
}

/// What the merged image looks like and which member supplies each output entry. Paths are
/// borrowed from the indexes' arenas, so the plan costs little beyond them.
#[derive(Debug)]
pub struct Plan<'a> {
    pub(crate) indexes: &'a [LayerIndex],
    /// The topmost explicit root directory member, if any layer had one.
    pub(crate) root: Option<Ref>,
    /// Directories, symlinks, devices and fifos in path order (parents before children).
    /// `None` marks a synthesized directory.
    pub(crate) nodes: Vec<(&'a [u8], Option<Ref>)>,
    /// Per layer: (member ordinal, output path) of regular files to copy, in stream order.
    pub(crate) files: Vec<Vec<(u32, &'a [u8])>>,
    /// Hard links (path, target path) in path order; every target is emitted before them.
    pub(crate) links: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Plan<'a> {
    /// Number of entries the flattened stream will hold (root included).
    pub fn entry_count(&self) -> usize {
        1 + self.nodes.len() + self.files.iter().map(Vec::len).sum::<usize>() + self.links.len()
    }

    /// Merges layer indexes, given bottom to top.
    pub fn merge(indexes: &'a [LayerIndex]) -> Result<Plan<'a>, LayerError> {
        Ok(Tree::merged(indexes)?.into_plan(indexes))
    }

    /// The plan of one path of the merged image and everything under it, as `COPY --from`
    /// sees it: symlinks met on the way (the last component's too) are followed inside the
    /// image. Returns the plan and the resolved path (normalized, `usr/bin/caddy`).
    pub fn merge_subtree(
        indexes: &'a [LayerIndex],
        path: &[u8],
    ) -> Result<(Plan<'a>, Vec<u8>), LayerError> {
        let mut tree = Tree::merged(indexes)?;
        let resolved = tree.resolve(indexes, path)?;
        if !resolved.is_empty() {
            let mut inside = resolved.clone();
            inside.push(b'/');
            tree.paths
                .retain(|p, _| *p == &resolved[..] || p.starts_with(&inside));
            tree.root = None;
        }
        Ok((tree.into_plan(indexes), resolved))
    }

    /// The member a reference points at (the plan only holds references it validated).
    pub(crate) fn member(&self, (layer, ord): Ref) -> EntryRef<'a> {
        self.indexes[layer as usize]
            .get(ord as usize)
            .expect("plan references are in range")
    }
}

/// Where the members of a new layer land on top of a merged stack, as an extraction that
/// follows the image's symlinks puts them. On a usr-merged base (`sbin -> usr/sbin`) the file
/// `/sbin/init` is `usr/sbin/init`: a layer that wrote `sbin/` as a directory would replace
/// the symlink (a directory over a non-directory replaces it) and hide all of /usr/sbin.
pub struct Placer<'a> {
    tree: Tree<'a>,
    indexes: &'a [LayerIndex],
}

impl<'a> Placer<'a> {
    /// Merges `indexes` (bottom to top) as [`Plan::merge`] does.
    pub fn new(indexes: &'a [LayerIndex]) -> Result<Placer<'a>, LayerError> {
        Ok(Placer {
            tree: Tree::merged(indexes)?,
            indexes,
        })
    }

    /// `path` (from the image root, leading `/` optional) with its directories resolved: each
    /// component that is a symlink in the image is followed (absolute targets from the image
    /// root, `..` stops at the root, at most 40 links), each that does not exist is kept as
    /// written (the new layer creates it). With `follow_last` the last component is resolved
    /// too (a directory the layer creates or updates); without, it is kept (a file, link or
    /// symlink replaces whatever is there). Returns the normalized path, `usr/sbin/init`.
    pub fn place(&self, path: &str, follow_last: bool) -> Result<String, LayerError> {
        let fail = |detail: String| LayerError::Select {
            path: path.trim_start_matches('/').to_owned(),
            detail,
        };
        let walk = Walk::Placing { follow_last };
        let cur = self
            .tree
            .walk(self.indexes, path.as_bytes(), walk)
            .map_err(fail)?;
        String::from_utf8(cur).map_err(|_| fail("a symlink on the way is not UTF-8".to_owned()))
    }
}

/// How [`Tree::walk`] treats the components of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// A path read from the image (`COPY --from`): every component must exist, and every
    /// symlink is followed, the last component's too.
    Existing,
    /// A path a new layer writes: a component that does not exist is kept as written (the
    /// layer creates it); the last one is followed only with `follow_last`.
    Placing { follow_last: bool },
}

#[derive(Default)]
struct Tree<'a> {
    root: Option<Ref>,
    paths: BTreeMap<&'a [u8], Node>,
}

impl<'a> Tree<'a> {
    /// Every layer applied, bottom to top.
    fn merged(indexes: &'a [LayerIndex]) -> Result<Tree<'a>, LayerError> {
        let mut tree = Tree::default();
        for (pos, index) in indexes.iter().enumerate() {
            validate(index)?;
            tree.apply(pos as u32, index)?;
        }
        Ok(tree)
    }

    fn apply(&mut self, pos: u32, index: &'a LayerIndex) -> Result<(), LayerError> {
        let err = Errs {
            digest: &index.digest,
        };
        for e in index.iter() {
            match e.kind {
                EntryKind::Whiteout if self.deletable_parent(&e, &err)? => self.remove(e.path),
                EntryKind::Opaque => {
                    if e.path.is_empty() {
                        self.paths.clear();
                    } else if self.deletable_parent(&e, &err)?
                        && self.paths.get(e.path).map(|n| n.kind) == Some(NodeKind::Dir)
                    {
                        self.remove_children(e.path);
                    }
                }
                _ => {}
            }
        }
        for (ord, e) in index.iter().enumerate() {
            let here = (pos, ord as u32);
            let EntryKind::Node(kind) = e.kind else {
                continue;
            };
            if e.path.is_empty() {
                self.root = Some(here);
                continue;
            }
            self.make_parents(&e, &err)?;
            match kind {
                Kind::Dir => match self.paths.get_mut(e.path) {
                    Some(n) if n.kind == NodeKind::Dir => n.entry = Some(here),
                    _ => self.put(e.path, NodeKind::Dir, here, here),
                },
                Kind::Hardlink => {
                    let target = match self.paths.get(e.link) {
                        None => {
                            return Err(
                                err.link(&e, "the target does not exist in this or a lower layer")
                            );
                        }
                        Some(t) if t.kind == NodeKind::Dir => {
                            return Err(err.link(&e, "the target is a directory"));
                        }
                        Some(t) => *t,
                    };
                    if e.link != e.path {
                        self.put(e.path, target.kind, here, target.inode);
                    }
                }
                Kind::Symlink => self.put(e.path, NodeKind::Symlink, here, here),
                _ => self.put(e.path, NodeKind::Other, here, here),
            }
        }
        Ok(())
    }

    /// Follows symlinks in `path` (at most 40, like the kernel) to the path it names.
    fn resolve(&self, indexes: &[LayerIndex], path: &[u8]) -> Result<Vec<u8>, LayerError> {
        self.walk(indexes, path, Walk::Existing)
            .map_err(|detail| LayerError::Select {
                path: show(path),
                detail,
            })
    }

    /// `path` (from the image root) with the symlinks met on the way followed as `walk` says:
    /// absolute targets from the image root, `..` stopping at the root, at most 40 links like
    /// the kernel. Returns the normalized path, or why there is none (the detail of a
    /// [`LayerError::Select`]).
    fn walk(&self, indexes: &[LayerIndex], path: &[u8], walk: Walk) -> Result<Vec<u8>, String> {
        let mut todo = components(path);
        todo.reverse();
        let mut cur: Vec<u8> = Vec::new();
        let mut hops = 0;
        while let Some(part) = todo.pop() {
            match &part[..] {
                b"" | b"." => continue,
                b".." => {
                    cur.truncate(super::path::parent(&cur).len());
                    continue;
                }
                _ => {}
            }
            let next = super::path::join(&cur, &part);
            let last = todo.iter().all(|p| p.is_empty() || p == b".");
            let follow = match walk {
                Walk::Existing => true,
                Walk::Placing { follow_last } => follow_last || !last,
            };
            match (self.paths.get(&next[..]), walk) {
                (Some(node), _) if node.kind == NodeKind::Symlink && follow => {
                    hops += 1;
                    if hops > 40 {
                        return Err("too many levels of symbolic links".to_owned());
                    }
                    let target = link_target(indexes, node);
                    if target.starts_with(b"/") {
                        cur.clear();
                    }
                    todo.extend(components(&target).into_iter().rev());
                }
                (None, Walk::Existing) => {
                    return Err(format!("{} does not exist", show_abs(&next)));
                }
                (Some(node), Walk::Existing) if node.kind != NodeKind::Dir && !todo.is_empty() => {
                    return Err(format!("{} is not a directory", show_abs(&next)));
                }
                (Some(node), Walk::Placing { .. }) if node.kind == NodeKind::Other && !last => {
                    return Err(format!(
                        "{} is a file in the image, not a directory",
                        show_abs(&next)
                    ));
                }
                _ => cur = next,
            }
        }
        Ok(cur)
    }

    fn put(&mut self, path: &'a [u8], kind: NodeKind, entry: Ref, inode: Ref) {
        if self.paths.get(path).map(|n| n.kind) == Some(NodeKind::Dir) {
            self.remove_children(path);
        }
        self.paths.insert(
            path,
            Node {
                kind,
                entry: Some(entry),
                inode,
            },
        );
    }

    fn remove(&mut self, path: &[u8]) {
        if self.paths.remove(path).is_some() {
            self.remove_children(path);
        }
    }

    fn remove_children(&mut self, dir: &[u8]) {
        let mut lo = dir.to_vec();
        lo.push(b'/');
        let mut hi = dir.to_vec();
        hi.push(b'/' + 1);
        let range = (Bound::Included(&lo[..]), Bound::Excluded(&hi[..]));
        let doomed: Vec<&'a [u8]> = self
            .paths
            .range::<[u8], _>(range)
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            self.paths.remove(k);
        }
    }

    /// Creates missing parent directories; refuses a parent that is a symlink or a file.
    fn make_parents(&mut self, e: &EntryRef<'a>, err: &Errs) -> Result<(), LayerError> {
        for dir in ancestors(e.path) {
            match self.paths.get(dir) {
                None => {
                    self.paths.insert(
                        dir,
                        Node {
                            kind: NodeKind::Dir,
                            entry: None,
                            inode: (u32::MAX, 0),
                        },
                    );
                }
                Some(n) => err.parent_ok(e, dir, n.kind)?,
            }
        }
        Ok(())
    }

    /// Whether a whiteout's parents are all directories (missing ones make it a no-op).
    fn deletable_parent(&self, e: &EntryRef, err: &Errs) -> Result<bool, LayerError> {
        for dir in ancestors(e.path) {
            match self.paths.get(dir) {
                None => return Ok(false),
                Some(n) => err.parent_ok(e, dir, n.kind)?,
            }
        }
        Ok(true)
    }

    fn into_plan(self, indexes: &'a [LayerIndex]) -> Plan<'a> {
        let mut plan = Plan {
            indexes,
            root: self.root,
            nodes: Vec::new(),
            files: vec![Vec::new(); indexes.len()],
            links: Vec::new(),
        };
        // Group surviving paths by inode; the first path in sorted order carries the content
        // and the others become hard links to it, which keeps the output deterministic.
        let linked: BTreeSet<Ref> = self
            .paths
            .values()
            .filter(|n| n.kind != NodeKind::Dir && n.entry != Some(n.inode))
            .map(|n| n.inode)
            .collect();
        let mut primary: BTreeMap<Ref, &'a [u8]> = BTreeMap::new();
        for (path, node) in self.paths {
            let shared = linked.contains(&node.inode);
            match node.kind {
                NodeKind::Dir => plan.nodes.push((path, node.entry)),
                _ => match primary.get(&node.inode).filter(|_| shared) {
                    Some(first) => plan.links.push((path, first)),
                    None => {
                        let (layer, ord) = node.inode;
                        let kind = indexes[layer as usize].entries[ord as usize].kind;
                        if kind == EntryKind::Node(Kind::File) {
                            plan.files[layer as usize].push((ord, path));
                        } else {
                            plan.nodes.push((path, Some(node.inode)));
                        }
                        if shared {
                            primary.insert(node.inode, path);
                        }
                    }
                },
            }
        }
        for files in &mut plan.files {
            files.sort_unstable_by_key(|(ord, _)| *ord);
        }
        plan
    }
}

/// The target a symlink node was written with.
fn link_target(indexes: &[LayerIndex], node: &Node) -> Vec<u8> {
    let (layer, ord) = node.entry.unwrap_or(node.inode);
    indexes[layer as usize]
        .get(ord as usize)
        .map(|e| e.link.to_vec())
        .unwrap_or_default()
}

fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/').map(<[u8]>::to_vec).collect()
}

fn show_abs(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

/// An index may come from a cache: check it obeys the rules `classify` enforces, because the
/// emitter writes directory, symlink and node headers from the index alone.
fn validate(index: &LayerIndex) -> Result<(), LayerError> {
    for (i, raw) in index.entries.iter().enumerate() {
        let bad = |entry: String, detail: &str| LayerError::IndexMismatch {
            digest: index.digest.clone(),
            entry,
            detail: format!("cached index entry is invalid: {detail}"),
        };
        if !index.span_ok(raw.path) || !index.span_ok(raw.link) {
            return Err(bad(format!("#{i}"), "string outside the name arena"));
        }
        if raw.xattrs != u32::MAX && raw.xattrs as usize >= index.xattrs.len() {
            return Err(bad(format!("#{i}"), "xattr set out of range"));
        }
        let e = index.get(i).expect("in range");
        let bad = |detail: &str| bad(show(e.path), detail);
        if normalize(e.path).as_deref() != Ok(e.path) {
            return Err(bad("path is not normalized"));
        }
        match e.kind {
            EntryKind::Node(Kind::Hardlink)
                if e.link.is_empty() || normalize(e.link).as_deref() != Ok(e.link) =>
            {
                return Err(bad("hard-link target is not normalized"));
            }
            EntryKind::Node(Kind::Symlink) if e.link.is_empty() || e.link.contains(&0) => {
                return Err(bad("symlink target is empty or has NUL"));
            }
            EntryKind::Node(k) if e.path.is_empty() && k != Kind::Dir => {
                return Err(bad("the root is not a directory"));
            }
            _ => {}
        }
        if e.size > super::tar_read::MAX_ENTRY_SIZE || e.mode > 0o7777 {
            return Err(bad("size or mode out of range"));
        }
    }
    Ok(())
}

struct Errs<'a> {
    digest: &'a str,
}

impl Errs<'_> {
    fn link(&self, e: &EntryRef, detail: &str) -> LayerError {
        LayerError::BadHardlink {
            digest: self.digest.to_string(),
            entry: show(e.path),
            target: String::from_utf8_lossy(e.link).into_owned(),
            detail: detail.to_string(),
        }
    }

    fn parent_ok(&self, e: &EntryRef, dir: &[u8], kind: NodeKind) -> Result<(), LayerError> {
        let parent = String::from_utf8_lossy(dir).into_owned();
        let entry = show(e.path);
        let digest = self.digest.to_string();
        match kind {
            NodeKind::Dir => Ok(()),
            NodeKind::Symlink => Err(LayerError::ThroughSymlink {
                digest,
                entry,
                parent,
            }),
            NodeKind::Other => Err(LayerError::ParentNotDir {
                digest,
                entry,
                parent,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Layer, index_layers};

    /// One layer: a usr-merged base (`sbin -> usr/sbin`, `lib -> /usr/lib`, `up -> ../../usr`)
    /// with the file `usr/sbin/init`, the file `etc/hostname`, and the loop `a -> b -> a`.
    fn usr_merged() -> Vec<LayerIndex> {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, link: Option<&str>| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(if kind == tar::EntryType::Regular {
                0o644
            } else {
                0o755
            });
            h.set_size(0);
            h.set_mtime(0);
            if let Some(l) = link {
                h.set_link_name(l).expect("link name");
            }
            b.append_data(&mut h, path, &[][..]).expect("append");
        };
        add("usr/sbin", tar::EntryType::Directory, None);
        add("usr/lib", tar::EntryType::Directory, None);
        add("usr/sbin/init", tar::EntryType::Regular, None);
        add("etc/hostname", tar::EntryType::Regular, None);
        for (path, target) in [
            ("sbin", "usr/sbin"),
            ("lib", "/usr/lib"),
            ("up", "../../usr"),
            ("a", "b"),
            ("b", "a"),
        ] {
            add(path, tar::EntryType::Symlink, Some(target));
        }
        let blob = b.into_inner().expect("tar");
        let digest = format!("sha256:{:064x}", 1);
        index_layers(&[Layer::from_bytes(digest, None, blob)], 1).expect("index")
    }

    fn walk(indexes: &[LayerIndex], path: &str, walk: Walk) -> Result<String, String> {
        let tree = Tree::merged(indexes).expect("merge");
        let got = tree.walk(indexes, path.as_bytes(), walk)?;
        Ok(String::from_utf8(got).expect("utf-8"))
    }

    const EXISTING: Walk = Walk::Existing;
    const FILE: Walk = Walk::Placing { follow_last: false };
    const DIR: Walk = Walk::Placing { follow_last: true };

    #[test]
    fn both_walks_follow_symlinks_on_the_way() {
        let idx = usr_merged();
        for w in [EXISTING, FILE, DIR] {
            assert_eq!(walk(&idx, "/sbin/init", w).as_deref(), Ok("usr/sbin/init"));
            assert_eq!(
                walk(&idx, "up/sbin/./init", w).as_deref(),
                Ok("usr/sbin/init")
            );
        }
        assert_eq!(walk(&idx, "lib/x/../", DIR).as_deref(), Ok("usr/lib"));
    }

    #[test]
    fn the_last_symlink_is_followed_unless_a_file_replaces_it() {
        let idx = usr_merged();
        assert_eq!(walk(&idx, "sbin", EXISTING).as_deref(), Ok("usr/sbin"));
        assert_eq!(walk(&idx, "sbin", DIR).as_deref(), Ok("usr/sbin"));
        assert_eq!(walk(&idx, "sbin", FILE).as_deref(), Ok("sbin"));
        assert_eq!(walk(&idx, "sbin/", FILE).as_deref(), Ok("sbin"));
    }

    #[test]
    fn missing_components_exist_only_for_a_new_layer() {
        let idx = usr_merged();
        assert_eq!(
            walk(&idx, "sbin/new/tool", FILE).as_deref(),
            Ok("usr/sbin/new/tool")
        );
        assert_eq!(
            walk(&idx, "sbin/new/tool", EXISTING),
            Err("/usr/sbin/new does not exist".to_owned())
        );
    }

    #[test]
    fn a_file_is_not_a_directory_in_either_walk() {
        let idx = usr_merged();
        assert_eq!(
            walk(&idx, "etc/hostname/x", EXISTING),
            Err("/etc/hostname is not a directory".to_owned())
        );
        assert_eq!(
            walk(&idx, "etc/hostname/x", FILE),
            Err("/etc/hostname is a file in the image, not a directory".to_owned())
        );
        assert_eq!(
            walk(&idx, "etc/hostname", FILE).as_deref(),
            Ok("etc/hostname")
        );
    }

    #[test]
    fn a_symlink_loop_ends_after_forty_links() {
        let idx = usr_merged();
        for w in [EXISTING, FILE, DIR] {
            let e = walk(&idx, "a/x", w).unwrap_err();
            assert_eq!(e, "too many levels of symbolic links");
        }
    }
}
