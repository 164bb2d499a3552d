//! `atlas-bundle.json`: what the bundle claims to hold, and its checksum line.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{BundleError, MANIFEST};

/// Format tag; a reader refuses any other, so a future layout cannot be misread.
pub const FORMAT: &str = "atlas-bundle/1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: String,
    /// atlas-install version of the binary inside (and of the one that made the bundle).
    pub version: String,
    pub git_commit: String,
    /// `x86_64` / `aarch64`, as in the release asset names.
    pub arch: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// Every member after the manifest and its checksum, in file order.
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub name: String,
    pub size: u64,
    /// Lowercase hex, without `sha256:` (the way sha256sum prints it).
    pub sha256: String,
}

impl BundleManifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        out.push(b'\n');
        out
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Bytes of the OCI layout members: what unpacking the images needs on disk.
    pub fn layout_bytes(&self) -> u64 {
        self.members
            .iter()
            .filter(|m| super::verify::is_layout_member(&m.name))
            .map(|m| m.size)
            .sum()
    }

    /// Parses and checks the manifest against its checksum line.
    pub fn parse(path: &Path, bytes: &[u8], sum_line: &[u8]) -> Result<Self, BundleError> {
        let actual = hex::encode(Sha256::digest(bytes));
        let expected = parse_sum_line(sum_line).ok_or_else(|| BundleError::ManifestInvalid {
            path: path.to_owned(),
            reason: format!(
                "its checksum member is not a `<sha256>  {MANIFEST}` line: {:?}",
                String::from_utf8_lossy(&sum_line[..sum_line.len().min(120)])
            ),
        })?;
        if actual != expected {
            return Err(BundleError::ManifestTampered {
                path: path.to_owned(),
                expected,
                actual,
            });
        }
        let invalid = |reason: String| BundleError::ManifestInvalid {
            path: path.to_owned(),
            reason,
        };
        let m: BundleManifest =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if m.format != FORMAT {
            return Err(invalid(format!(
                "format {:?} is not {FORMAT:?}; this atlas-install cannot read it (use the bundle's own binary)",
                m.format
            )));
        }
        for member in &m.members {
            if member.sha256.len() != 64 || !member.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "member {:?} has sha256 {:?}, not 64 hex characters",
                    member.name, member.sha256
                )));
            }
        }
        Ok(m)
    }
}

/// The checksum member: `sha256sum` format, so `sha256sum -c` can check an extracted manifest.
pub fn sum_line(manifest: &[u8]) -> Vec<u8> {
    format!("{}  {MANIFEST}\n", hex::encode(Sha256::digest(manifest))).into_bytes()
}

fn parse_sum_line(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let (hex, name) = text.trim_end_matches('\n').split_once("  ")?;
    let ok = name == MANIFEST
        && hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| hex.to_owned())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (UTC).
pub fn format_rfc3339(secs: u64) -> String {
    crate::clock::rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        // The image builder's parser reads back what we write.
        let s = format_rfc3339(1_764_165_600);
        assert_eq!(atlas_image::build::parse_rfc3339(&s), Some(1_764_165_600));
    }

    fn sample() -> BundleManifest {
        BundleManifest {
            format: FORMAT.to_owned(),
            version: "1.2.3".to_owned(),
            git_commit: "abc".to_owned(),
            arch: "x86_64".to_owned(),
            created: format_rfc3339(0),
            members: vec![Member {
                name: "images.lock".to_owned(),
                size: 3,
                sha256: "a".repeat(64),
            }],
        }
    }

    #[test]
    fn manifest_round_trips_and_detects_any_changed_byte() {
        let m = sample();
        let bytes = m.to_bytes();
        let sum = sum_line(&bytes);
        assert_eq!(
            BundleManifest::parse(Path::new("b"), &bytes, &sum).unwrap(),
            m
        );
        // A changed creation time is not otherwise checkable: the checksum catches it.
        let mut changed = bytes.clone();
        let at = changed.windows(4).position(|w| w == b"1970").unwrap();
        changed[at + 3] = b'1';
        let e = BundleManifest::parse(Path::new("b"), &changed, &sum).unwrap_err();
        assert!(
            e.to_string().contains("atlas-bundle.json was altered"),
            "{e}"
        );
    }

    #[test]
    fn manifest_rejects_other_formats_and_bad_sums() {
        let mut m = sample();
        m.format = "atlas-bundle/9".to_owned();
        let bytes = m.to_bytes();
        let e = BundleManifest::parse(Path::new("b"), &bytes, &sum_line(&bytes)).unwrap_err();
        assert!(e.to_string().contains("atlas-bundle/9"), "{e}");
        let e = BundleManifest::parse(Path::new("b"), &bytes, b"nonsense\n").unwrap_err();
        assert!(e.to_string().contains("checksum member"), "{e}");
    }
}
