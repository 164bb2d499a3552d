//! OS package databases: dpkg's `status` (and distroless' `status.d/<package>` files, one
//! stanza each), apk's `installed`, and `os-release` for the distribution's name.

use serde::{Deserialize, Serialize};

/// One installed OS package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsPackage {
    /// `deb` or `apk`.
    pub kind: String,
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Source package (dpkg `Source`, apk origin), when it differs from the name.
    pub source: Option<String>,
    pub license: Option<String>,
    /// The database file it was read from (`/var/lib/dpkg/status`).
    pub database: String,
}

/// Stanzas of a deb822 file: fields by name (continuation lines joined).
fn stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = cur.last_mut() {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The packages of a dpkg status file whose files are on disk: every state but
/// `not-installed` and `config-files` (a `status.d` stanza has no Status: it is installed).
pub fn dpkg(text: &str, database: &str) -> Vec<OsPackage> {
    stanzas(text)
        .into_iter()
        .filter_map(|s| {
            let get = |k: &str| s.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            if let Some(status) = get("Status") {
                let state = status.split_whitespace().nth(2).unwrap_or("");
                if matches!(state, "not-installed" | "config-files") {
                    return None;
                }
            }
            let name = get("Package")?;
            let source = get("Source")
                .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
                .filter(|s| !s.is_empty() && *s != name);
            Some(OsPackage {
                kind: "deb".to_owned(),
                version: get("Version")?,
                arch: get("Architecture").unwrap_or_default(),
                source,
                license: None,
                database: database.to_owned(),
                name,
            })
        })
        .collect()
}

/// The packages of apk's `lib/apk/db/installed` (`P:`, `V:`, `A:`, `L:`, `o:` lines).
pub fn apk(text: &str, database: &str) -> Vec<OsPackage> {
    let mut out = Vec::new();
    for record in text.split("\n\n") {
        let get = |k: char| {
            record
                .lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':')))
                .map(str::to_owned)
        };
        let (Some(name), Some(version)) = (get('P'), get('V')) else {
            continue;
        };
        out.push(OsPackage {
            kind: "apk".to_owned(),
            arch: get('A').unwrap_or_default(),
            source: get('o').filter(|o| *o != name),
            license: get('L'),
            database: database.to_owned(),
            name,
            version,
        });
    }
    out
}

/// `ID` and `VERSION_ID` of an os-release file.
pub fn os_release(text: &str) -> (Option<String>, Option<String>) {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_owned())
            .filter(|v| !v.is_empty())
    };
    (get("ID"), get("VERSION_ID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_states_and_fields() {
        let text = "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u14\nDescription: x\n continued\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: busybox-static\nStatus: install ok installed\nVersion: 1:1.35.0-4\nArchitecture: amd64\n";
        let p = dpkg(text, "/var/lib/dpkg/status");
        let names: Vec<_> = p
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("libc6", "2.36-9+deb12u14"),
                ("busybox-static", "1:1.35.0-4")
            ]
        );
        assert_eq!(p[0].source.as_deref(), Some("glibc"));
    }

    #[test]
    fn apk_records() {
        let text = "C:Q1x\nP:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\no:musl\n\nP:busybox\nV:1.36.1-r5\nA:x86_64\nL:GPL-2.0-only\n";
        let p = apk(text, "/lib/apk/db/installed");
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[1].name.as_str(), p[1].version.as_str()),
            ("busybox", "1.36.1-r5")
        );
        assert_eq!(p[0].source, None);
    }

    #[test]
    fn os_release_fields() {
        assert_eq!(
            os_release(
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n"
            ),
            (Some("debian".to_owned()), Some("12".to_owned()))
        );
    }
}
