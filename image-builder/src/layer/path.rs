//! Entry path normalization.
//!
//! Decision (documented in the module docs): leading `/`, `./` and empty or `.` components are
//! dropped, because real layer producers emit `./usr/bin` and some emit `/usr/bin`, and both mean
//! the same path inside the image. A `..` component is refused outright rather than clamped:
//! no legitimate layer needs it, and clamping would silently change what a hostile layer names.

/// Longest path we accept (Linux PATH_MAX); longer ones cannot be extracted anyway.
pub const MAX_PATH: usize = 4096;

/// Normalizes a tar entry path or hard-link target into `a/b/c` form (empty means the root).
pub(crate) fn normalize(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.contains(&0) {
        return Err("contains a NUL byte".into());
    }
    if raw.len() > MAX_PATH {
        return Err(format!("longer than {MAX_PATH} bytes"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err("contains a `..` component".into()),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    Ok(out)
}

/// The parent of a normalized path (`a/b` -> `a`, `a` -> root).
pub(crate) fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[..i],
        None => b"",
    }
}

/// Last component of a normalized path.
pub(crate) fn base(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Every proper ancestor of a normalized path, outermost first (root excluded).
pub(crate) fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(move |(i, _)| &path[..i])
}

/// Joins a parent and a child name.
pub(crate) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parent.len() + 1 + name.len());
    out.extend_from_slice(parent);
    if !parent.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_dot_and_absolute_forms() {
        assert_eq!(normalize(b"./usr/bin/").unwrap(), b"usr/bin");
        assert_eq!(normalize(b"/etc//passwd").unwrap(), b"etc/passwd");
        assert_eq!(normalize(b"./").unwrap(), b"");
        assert_eq!(normalize(b"a/./b").unwrap(), b"a/b");
    }

    #[test]
    fn refuses_dotdot_and_nul() {
        assert!(normalize(b"../etc/passwd").unwrap_err().contains(".."));
        assert!(normalize(b"a/../../b").is_err());
        assert!(normalize(b"a\0b").is_err());
        assert!(normalize(&vec![b'a'; MAX_PATH + 1]).is_err());
    }

    #[test]
    fn ancestors_parent_base() {
        let a: Vec<&[u8]> = ancestors(b"a/b/c").collect();
        assert_eq!(a, vec![&b"a"[..], &b"a/b"[..]]);
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
        assert_eq!(base(b"a/b/c"), b"c");
        assert_eq!(join(b"", b"x"), b"x");
        assert_eq!(join(b"a", b"x"), b"a/x");
    }
}
