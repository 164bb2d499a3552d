//! Go build information (what `go version -m` prints), read from an ELF executable as it
//! streams by: the program headers come first in the file, so the writable data segments are
//! known before they arrive, and the `\xff Go buildinf:` header is searched for there at
//! 16-byte aligned offsets (where the linker puts `.go.buildinfo`, first in the data), as Go's
//! own `debug/buildinfo` does when it has no section table. Only the Go 1.18+ layout (strings
//! inline after the header) is read; older binaries are named Go binaries without modules.

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
/// Bytes kept from the start of the file to read the ELF and program headers.
const HEAD_MAX: usize = 64 * 1024;
/// Most bytes read after the header for the version and module strings.
const INFO_MAX: usize = 4 << 20;

/// One module line of the build info (`mod`, `dep`), with its `=>` replacement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoModule {
    pub path: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sum: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<Box<GoModule>>,
}

/// What a Go executable says about how it was built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoBuildInfo {
    /// `go1.19.8`.
    pub toolchain: String,
    /// The main package's import path (`path` line); empty for pre-1.18 binaries.
    pub path: String,
    pub main: Option<GoModule>,
    pub deps: Vec<GoModule>,
    /// `build` lines, in order.
    pub settings: Vec<(String, String)>,
    /// True when the binary has build info in the pre-Go-1.18 layout, which is not read.
    pub legacy: bool,
}

/// Parses the module info text (`path`, `mod`, `dep`, `=>`, `build` lines), as
/// `debug/buildinfo.ParseBuildInfo` does.
pub fn parse_modinfo(toolchain: &str, text: &str) -> GoBuildInfo {
    let mut info = GoBuildInfo {
        toolchain: toolchain.to_owned(),
        ..GoBuildInfo::default()
    };
    let module = |rest: &str| {
        let mut f = rest.split('\t');
        GoModule {
            path: f.next().unwrap_or("").to_owned(),
            version: f.next().unwrap_or("").to_owned(),
            sum: f.next().unwrap_or("").to_owned(),
            replace: None,
        }
    };
    let mut last_dep = false;
    for line in text.lines() {
        let Some((kind, rest)) = line.split_once('\t') else {
            continue;
        };
        match kind {
            "path" => info.path = rest.to_owned(),
            "mod" => {
                info.main = Some(module(rest));
                last_dep = false;
            }
            "dep" => {
                info.deps.push(module(rest));
                last_dep = true;
            }
            "=>" => {
                let target = if last_dep {
                    info.deps.last_mut()
                } else {
                    info.main.as_mut()
                };
                if let Some(m) = target {
                    m.replace = Some(Box::new(module(rest)));
                }
            }
            "build" => {
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                info.settings.push((k.to_owned(), unquote(v)));
            }
            _ => {}
        }
    }
    info
}

/// `build` values with spaces or quotes are written with Go's strconv.Quote.
fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => {
            serde_json::from_str(&format!("\"{inner}\"")).unwrap_or_else(|_| v.to_owned())
        }
        None => v.to_owned(),
    }
}

/// Scans one file's bytes as they stream by; [`ElfScan::finish`] says what it found.
#[derive(Debug, Default)]
pub struct ElfScan {
    head: Vec<u8>,
    /// File ranges of the writable, non-executable loadable segments, once known.
    ranges: Option<Vec<(u64, u64)>>,
    /// Bytes of the current, incomplete 16-byte block (at `pos - carry.len()`).
    carry: Vec<u8>,
    /// Offset in the file of the next byte fed.
    pos: u64,
    /// Bytes from a found header on, until the strings are complete.
    capture: Option<Vec<u8>>,
    found: Option<GoBuildInfo>,
    stop: bool,
}

impl ElfScan {
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.stop {
            return;
        }
        if self.ranges.is_none() {
            let want = HEAD_MAX.saturating_sub(self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..want]);
            match program_ranges(&self.head) {
                Layout::NotElf => {
                    self.stop = true;
                    return;
                }
                Layout::NeedMore if self.head.len() < HEAD_MAX && want == chunk.len() => {
                    self.pos += chunk.len() as u64;
                    return;
                }
                Layout::NeedMore => {
                    self.stop = true;
                    return;
                }
                Layout::Ranges(r) => {
                    self.ranges = Some(r);
                    // Scan what was held back, then the rest of this chunk.
                    let head = std::mem::take(&mut self.head);
                    self.pos = 0;
                    self.scan(&head);
                    self.scan(&chunk[want..]);
                    return;
                }
            }
        }
        self.scan(chunk);
    }

    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.stop {
            if let Some(cap) = &mut self.capture {
                let n = data.len().min(INFO_MAX - cap.len());
                cap.extend_from_slice(&data[..n]);
                self.pos += n as u64;
                data = &data[n..];
                self.try_parse();
                continue;
            }
            let need = 16 - self.carry.len();
            let n = need.min(data.len());
            self.carry.extend_from_slice(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
            if self.carry.len() < 16 {
                return;
            }
            let start = self.pos - 16;
            let block = std::mem::take(&mut self.carry);
            if block.starts_with(MAGIC) && self.in_data(start) {
                self.capture = Some(block);
                self.try_parse();
            }
        }
    }

    fn in_data(&self, at: u64) -> bool {
        self.ranges
            .as_ref()
            .is_some_and(|r| r.iter().any(|(s, e)| (*s..*e).contains(&at)))
    }

    /// Parses the captured header; a false match (not followed by valid strings) resumes
    /// the search after it.
    fn try_parse(&mut self) {
        let Some(cap) = &self.capture else { return };
        match parse_header(cap) {
            Parse::Incomplete if cap.len() < INFO_MAX => {}
            Parse::Found(info) => {
                self.found = Some(info);
                self.stop = true;
            }
            Parse::Incomplete | Parse::Invalid => {
                let cap = self.capture.take().unwrap_or_default();
                // The search continues at the next block after the false header.
                let rest = cap[16..].to_vec();
                self.pos -= rest.len() as u64;
                self.scan(&rest);
            }
        }
    }

    pub fn finish(mut self) -> Option<GoBuildInfo> {
        if self.found.is_none() {
            if let Some(cap) = self.capture.take() {
                if let Parse::Found(info) = parse_header(&cap) {
                    return Some(info);
                }
            }
        }
        self.found
    }
}

enum Layout {
    NotElf,
    NeedMore,
    Ranges(Vec<(u64, u64)>),
}

/// The writable, non-executable PT_LOAD file ranges of an ELF file from its first bytes.
fn program_ranges(h: &[u8]) -> Layout {
    if h.len() < 6 {
        return if b"\x7fELF".starts_with(&h[..h.len().min(4)]) {
            Layout::NeedMore
        } else {
            Layout::NotElf
        };
    }
    if &h[..4] != b"\x7fELF" {
        return Layout::NotElf;
    }
    let is64 = h[4] == 2;
    let le = h[5] == 1;
    let u16_at = |o: usize| {
        h.get(o..o + 2).map(|b| {
            if le {
                u16::from_le_bytes([b[0], b[1]])
            } else {
                u16::from_be_bytes([b[0], b[1]])
            }
        })
    };
    let u32_at = |o: usize| {
        h.get(o..o + 4).map(|b| {
            let a = [b[0], b[1], b[2], b[3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        })
    };
    let u64_at = |o: usize| {
        h.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            if le {
                u64::from_le_bytes(a)
            } else {
                u64::from_be_bytes(a)
            }
        })
    };
    let (phoff, phentsize, phnum) = if is64 {
        match (u64_at(32), u16_at(54), u16_at(56)) {
            (Some(a), Some(b), Some(c)) => (a, b as u64, c as u64),
            _ => return Layout::NeedMore,
        }
    } else {
        match (u32_at(28), u16_at(42), u16_at(44)) {
            (Some(a), Some(b), Some(c)) => (a as u64, b as u64, c as u64),
            _ => return Layout::NeedMore,
        }
    };
    let end = phoff.saturating_add(phentsize.saturating_mul(phnum));
    if end > HEAD_MAX as u64 {
        return Layout::NotElf;
    }
    if end > h.len() as u64 {
        return Layout::NeedMore;
    }
    const PT_LOAD: u32 = 1;
    const PF_X: u32 = 1;
    const PF_W: u32 = 2;
    let mut out = Vec::new();
    for i in 0..phnum {
        let p = (phoff + i * phentsize) as usize;
        let fields = if is64 {
            (u32_at(p), u32_at(p + 4), u64_at(p + 8), u64_at(p + 32))
        } else {
            (
                u32_at(p),
                u32_at(p + 24),
                u32_at(p + 4).map(u64::from),
                u32_at(p + 16).map(u64::from),
            )
        };
        let (Some(kind), Some(flags), Some(off), Some(filesz)) = fields else {
            return Layout::NotElf;
        };
        if kind == PT_LOAD && flags & PF_W != 0 && flags & PF_X == 0 {
            out.push((off, off.saturating_add(filesz)));
        }
    }
    Layout::Ranges(out)
}

enum Parse {
    Incomplete,
    Invalid,
    Found(GoBuildInfo),
}

/// The 32-byte header (magic, pointer size, flags) and, in the inline layout, two
/// varint-prefixed strings: the Go version and the module info between 16-byte sentinels.
fn parse_header(b: &[u8]) -> Parse {
    if b.len() < 32 {
        return Parse::Incomplete;
    }
    let ptr_size = b[14];
    let flags = b[15];
    if ptr_size != 4 && ptr_size != 8 {
        return Parse::Invalid;
    }
    if flags & 2 == 0 {
        return Parse::Found(GoBuildInfo {
            legacy: true,
            ..GoBuildInfo::default()
        });
    }
    let mut at = 32;
    let mut strings = Vec::new();
    for _ in 0..2 {
        let Some((len, n)) = uvarint(&b[at..]) else {
            return if b.len() - at < 10 {
                Parse::Incomplete
            } else {
                Parse::Invalid
            };
        };
        at += n;
        let Some(end) = at.checked_add(len as usize).filter(|e| *e <= INFO_MAX) else {
            return Parse::Invalid;
        };
        if end > b.len() {
            return Parse::Incomplete;
        }
        strings.push(&b[at..end]);
        at = end;
    }
    let (Ok(version), modinfo) = (std::str::from_utf8(strings[0]), strings[1]) else {
        return Parse::Invalid;
    };
    if !version.starts_with("go") && !version.starts_with("devel") {
        return Parse::Invalid;
    }
    let modinfo = if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        &[][..]
    };
    Parse::Found(parse_modinfo(version, &String::from_utf8_lossy(modinfo)))
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut x = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        x |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((x, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_lines_and_replacements() {
        let text = "path\texample.com/cmd/x\nmod\texample.com\t(devel)\t\ndep\tgolang.org/x/sys\tv0.1.0\th1:abc=\n=>\t../sys\t(devel)\t\nbuild\t-ldflags=\"-s -w\"\nbuild\tCGO_ENABLED=0\n";
        let i = parse_modinfo("go1.22.1", text);
        assert_eq!(i.path, "example.com/cmd/x");
        assert_eq!(i.main.as_ref().unwrap().version, "(devel)");
        assert_eq!(i.deps.len(), 1);
        assert_eq!(i.deps[0].sum, "h1:abc=");
        assert_eq!(i.deps[0].replace.as_ref().unwrap().path, "../sys");
        assert_eq!(i.settings[0], ("-ldflags".to_owned(), "-s -w".to_owned()));
    }

    #[test]
    fn not_elf_and_fed_byte_by_byte() {
        let mut s = ElfScan::default();
        s.feed(b"#!/bin/sh\necho hi\n");
        assert!(s.finish().is_none());
        // Go's own binaries are the oracle in tests/sbom (go version -m); here, any chunking
        // gives the same answer.
        let Ok(bytes) = std::fs::read("/usr/bin/prometheus") else {
            return;
        };
        let whole = {
            let mut s = ElfScan::default();
            s.feed(&bytes);
            s.finish()
        };
        assert!(
            whole
                .as_ref()
                .is_some_and(|i| i.toolchain.starts_with("go"))
        );
        for chunk in [4093usize, 65_537] {
            let mut s = ElfScan::default();
            for c in bytes.chunks(chunk) {
                s.feed(c);
            }
            assert_eq!(s.finish(), whole, "chunk {chunk}");
        }
    }
}
