//! Reading a service's HTTP API from inside the stack: `atlas-init fetch URL` run in a
//! container through the Incus exec API, as the health probes are (see `health`). The
//! installer needs no route to the containers, so this works against a remote server, on
//! cluster members and from a host with no network at all.

use crate::incus::Client;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("running atlas-init fetch in {instance}: {message}")]
    Exec { instance: String, message: String },
    /// The service answered, but not with 2xx, or not at all.
    #[error("{0}")]
    Answer(String),
    #[error(
        "the /sbin/init of {0}'s image predates `atlas-init fetch`; run `atlas-install upgrade` to rebuild it"
    )]
    OldInit(String),
}

/// The body of `GET url` (http://, an address the container can reach), fetched in `instance`.
pub async fn get(client: &Client, instance: &str, url: &str) -> Result<Vec<u8>, FetchError> {
    let init = format!("/{}", atlas_image::init::INIT_PATH);
    let out = client
        .probe_exec(instance, &[&init, "fetch", url])
        .await
        .map_err(|e| FetchError::Exec {
            instance: instance.to_string(),
            message: e.to_string(),
        })?;
    let stderr = out.stderr_str();
    verdict(instance, out.exit_code, out.stdout, &stderr)
}

fn verdict(
    instance: &str,
    code: i64,
    stdout: Vec<u8>,
    stderr: &str,
) -> Result<Vec<u8>, FetchError> {
    let said = || String::from_utf8_lossy(&stdout).trim().to_string();
    match code {
        0 => Ok(stdout),
        1 if stdout.is_empty() && stderr.contains("unknown argument") => {
            Err(FetchError::OldInit(instance.to_string()))
        }
        1 => Err(FetchError::Answer(said())),
        _ => Err(FetchError::Exec {
            instance: instance.to_string(),
            message: format!(
                "exit status {code}: {}",
                if stdout.is_empty() {
                    stderr.trim().to_string()
                } else {
                    said()
                }
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_with_their_cause() {
        assert_eq!(verdict("a", 0, b"[]".to_vec(), "").unwrap(), b"[]");
        let e = verdict("a", 1, b"GET http://x:1/: HTTP/1.1 503\n".to_vec(), "").unwrap_err();
        assert_eq!(e.to_string(), "GET http://x:1/: HTTP/1.1 503");
        let old = verdict("a", 1, Vec::new(), "atlas-init: unknown argument \"fetch\"");
        assert!(matches!(old, Err(FetchError::OldInit(_))));
        assert!(
            old.unwrap_err()
                .to_string()
                .contains("atlas-install upgrade")
        );
        let e = verdict("a", 127, Vec::new(), "not found").unwrap_err();
        assert!(e.to_string().contains("exit status 127: not found"), "{e}");
    }
}
