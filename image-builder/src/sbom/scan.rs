//! What a layer holds that the bill of materials reads, collected while the layer is indexed
//! (the same decompressed pass, see `layer::index`): package databases and os-release whole
//! (small text files), and the Go build info of every executable, streamed.

use serde::{Deserialize, Serialize};

use super::gobuild::{ElfScan, GoBuildInfo};

/// Text files larger than this are not package databases we read.
const MAX_TEXT: u64 = 64 << 20;
/// Executables smaller than this cannot be Go programs (the runtime alone is larger).
const MIN_GO: u64 = 512 * 1024;

/// A file of the layer the bill of materials uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Found {
    DpkgStatus(Vec<u8>),
    /// One file of distroless' `var/lib/dpkg/status.d/`.
    DpkgStatusD(Vec<u8>),
    ApkInstalled(Vec<u8>),
    OsRelease(Vec<u8>),
    Go(GoBuildInfo),
}

/// Per layer: (member ordinal, what it holds), in stream order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerContents {
    pub found: Vec<(u32, Found)>,
}

enum Reading {
    Text(fn(Vec<u8>) -> Found, Vec<u8>),
    Elf(Box<ElfScan>),
}

/// Fed by the indexer: asked about each regular file, then given the data of those it wants.
#[derive(Default)]
pub struct Scanner {
    contents: LayerContents,
    current: Option<(u32, Reading)>,
}

impl Scanner {
    /// Whether the data of member `ordinal` (normalized `path`, no leading `/`) is wanted.
    pub fn wants(&mut self, ordinal: u32, path: &[u8], mode: u32, size: u64) -> bool {
        let text: Option<fn(Vec<u8>) -> Found> = match path {
            b"var/lib/dpkg/status" => Some(Found::DpkgStatus),
            b"lib/apk/db/installed" => Some(Found::ApkInstalled),
            b"etc/os-release" | b"usr/lib/os-release" => Some(Found::OsRelease),
            p if p.starts_with(b"var/lib/dpkg/status.d/") && !p.ends_with(b".md5sums") => {
                Some(Found::DpkgStatusD)
            }
            _ => None,
        };
        self.current = match text {
            Some(f) if size <= MAX_TEXT => Some((ordinal, Reading::Text(f, Vec::new()))),
            Some(_) => None,
            None if mode & 0o111 != 0 && size >= MIN_GO => {
                Some((ordinal, Reading::Elf(Box::default())))
            }
            None => None,
        };
        self.current.is_some()
    }

    pub fn data(&mut self, chunk: &[u8]) {
        match &mut self.current {
            Some((_, Reading::Text(_, buf))) => buf.extend_from_slice(chunk),
            Some((_, Reading::Elf(scan))) => scan.feed(chunk),
            None => {}
        }
    }

    /// The wanted member's data is complete.
    pub fn end(&mut self) {
        let found = match self.current.take() {
            Some((ord, Reading::Text(f, buf))) => Some((ord, f(buf))),
            Some((ord, Reading::Elf(scan))) => scan.finish().map(|i| (ord, Found::Go(i))),
            None => None,
        };
        self.contents.found.extend(found);
    }

    pub fn finish(self) -> LayerContents {
        self.contents
    }
}
