//! Step 2: the `ghcr` and `docker` OCI remotes in the invoking user's Incus client config
//! (`$INCUS_CONF/config.yml`, else `~/.config/incus/config.yml`), so the operator can
//! `incus launch docker:...` with the same registries atlas pulls from. Only when the server
//! runs OCI containers (`instance_oci`, Incus 6.3+); otherwise skipped with the reason.

use std::path::PathBuf;

use crate::incus::Server;

/// The remotes we add: name and address.
pub const REMOTES: [(&str, &str); 2] =
    [("docker", "https://docker.io"), ("ghcr", "https://ghcr.io")];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemotesOutcome {
    Skipped(String),
    Present,
    Added(Vec<String>),
}

pub fn config_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dir) = env("INCUS_CONF").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.yml"));
    }
    env("HOME").map(|h| PathBuf::from(h).join(".config/incus/config.yml"))
}

/// Adds missing remotes to the YAML text of a client config (block style, as the incus
/// client writes it). Returns the new text and the names added; `None` when nothing is missing.
pub fn with_remotes(text: &str) -> Option<(String, Vec<String>)> {
    let has = |name: &str| text.lines().any(|l| l.trim_end() == format!("  {name}:"));
    let missing: Vec<(&str, &str)> = REMOTES.iter().copied().filter(|(n, _)| !has(n)).collect();
    if missing.is_empty() {
        return None;
    }
    let block: String = missing
        .iter()
        .map(|(n, a)| format!("  {n}:\n    addr: {a}\n    protocol: oci\n    public: true\n"))
        .collect();
    let out = match text.lines().position(|l| l.trim_end() == "remotes:") {
        Some(i) => {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            lines.insert(i + 1, block.trim_end().to_string());
            lines.join("\n") + "\n"
        }
        None if text.trim().is_empty() => format!("remotes:\n{block}"),
        None => format!("{}\nremotes:\n{block}", text.trim_end()),
    };
    Some((out, missing.iter().map(|(n, _)| n.to_string()).collect()))
}

/// Ensures the remotes exist. Writes only the operator's own client config file.
pub fn ensure(server: &Server, dry_run: bool) -> Result<RemotesOutcome, std::io::Error> {
    if !server.supports_oci() {
        return Ok(RemotesOutcome::Skipped(format!(
            "client remotes ghcr/docker skipped: Incus {} cannot run OCI containers (needs API extension instance_oci, Incus 6.3+)",
            server.environment.server_version
        )));
    }
    let Some(path) = config_path(|k| std::env::var(k).ok()) else {
        return Ok(RemotesOutcome::Skipped(
            "client remotes skipped: neither INCUS_CONF nor HOME is set".into(),
        ));
    };
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let Some((new, added)) = with_remotes(&text) else {
        return Ok(RemotesOutcome::Present);
    };
    if !dry_run {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, new)?;
    }
    Ok(RemotesOutcome::Added(added))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_are_added_once() {
        let (t, added) = with_remotes("").unwrap();
        assert_eq!(added, ["docker", "ghcr"]);
        assert!(with_remotes(&t).is_none(), "{t}");
        let existing =
            "default-remote: local\nremotes:\n  local:\n    addr: unix://\n    public: false\n";
        let (t, _) = with_remotes(existing).unwrap();
        assert!(
            t.contains("  ghcr:\n    addr: https://ghcr.io\n    protocol: oci")
                && t.contains("  local:\n"),
            "{t}"
        );
        assert!(with_remotes(&t).is_none());
        let (t, _) = with_remotes("default-remote: local\n").unwrap();
        assert!(
            t.starts_with("default-remote: local\nremotes:\n  docker:"),
            "{t}"
        );
    }

    #[test]
    fn skipped_without_oci() {
        let s = Server::default();
        assert!(
            matches!(ensure(&s, true).unwrap(), RemotesOutcome::Skipped(m) if m.contains("instance_oci"))
        );
    }
}
