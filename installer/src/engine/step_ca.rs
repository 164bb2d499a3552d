//! What the installer does inside step-ca01 after its first start (the upstream entrypoint
//! initialises the CA; see `render::step_ca`):
//!
//! 1. Two settings of `ca.json` that the initialisation has no variable for: `metricsAddress`
//!    (step-ca 0.25.3 and later serve Prometheus metrics only when ca.json asks; Prometheus'
//!    `step-ca` job scrapes it) and the JWK provisioner's `claims.maxTLSCertDuration`
//!    ([`MAX_CERT_DURATION`]: the default maximum of 24 hours would make every service
//!    certificate lapse a day after each install, while they are renewed on `install` runs).
//!    Written read-modify-write through the Incus file API, owner and mode kept; step-ca reads
//!    ca.json at start, so it is restarted, only when the file changed.
//! 2. Signing a service's certificate request: `step ca sign` inside step-ca01 as the step
//!    user, with a one-time token of the JWK provisioner. The request and the provisioner
//!    password travel in a directory of their own under `/tmp` (0700, the password file
//!    0600), removed afterwards whatever happened; the password is never in argv, the
//!    environment or any output. The service's key never enters step-ca01.
//! 3. Re-encrypting the provisioner's key (`encryptedKey` in ca.json) for a password rotation,
//!    with `step crypto change-pass` on a copy of it, so that keys and provisioner keep one
//!    password as the upstream initialisation made them.
//!
//! CONTRACT: [`ensure_config`] writes nothing when ca.json already has both settings;
//! [`sign`] leaves nothing behind in step-ca01.

use std::time::Duration;

use serde_json::Value;

use crate::config::Config;
use crate::deployment::Deployment;
use crate::incus::{Client, ExecOutput, FileMeta, IncusError, OptionalExt as _};
use crate::progress::Progress;
use crate::render::STEP_CA_METRICS_PORT;

use super::error::EngineError;

/// step-ca's configuration, on its volume.
pub const CA_JSON: &str = "/home/step/config/ca.json";
/// The Atlas root certificate (`step ca init` writes it there).
pub const ROOT_CERT: &str = "/home/step/certs/root_ca.crt";
/// The JWK provisioner the upstream entrypoint creates (`DOCKER_STEPCA_INIT_PROVISIONER_NAME`
/// unset: its default).
pub const PROVISIONER: &str = "admin";
/// How `step` inside step-ca01 reaches the CA. `localhost` must be one of
/// `step_ca.dns_names` (config validation says so when TLS is on): step-ca accepts tokens only
/// for its own names, and verifies the connection against them.
pub const CA_URL: &str = "https://localhost:9000";
/// Lifetime of the services' certificates, and the provisioner's maximum: 90 days, as public
/// CAs issue. `install` re-issues a certificate with less than a third of it left, so a stack
/// installed at least monthly never sees one expire.
pub const MAX_CERT_DURATION: &str = "2160h";
pub const CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// The step user of the upstream image, who owns everything under `$STEPPATH`.
pub const STEP_USER: (u32, u32) = (1000, 1000);

fn err(name: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::object(format!("step-ca {name}"), e)
}

/// `ca.json` with `metricsAddress` and the provisioner's maximum certificate duration, or
/// `None` when it already has both. Everything else is left as it is.
pub fn desired_ca_json(current: &Value) -> Result<Option<Value>, String> {
    let mut next = current.clone();
    let obj = next.as_object_mut().ok_or("ca.json is not a JSON object")?;
    obj.insert(
        "metricsAddress".into(),
        Value::String(format!(":{STEP_CA_METRICS_PORT}")),
    );
    let provisioners = obj
        .get_mut("authority")
        .and_then(|a| a.get_mut("provisioners"))
        .and_then(Value::as_array_mut)
        .ok_or("ca.json has no authority.provisioners")?;
    let jwk = provisioners
        .iter_mut()
        .find(|p| p["type"] == "JWK" && p["name"] == PROVISIONER)
        .ok_or_else(|| format!("ca.json has no JWK provisioner named {PROVISIONER}"))?;
    let claims = jwk
        .as_object_mut()
        .ok_or("a provisioner in ca.json is not an object")?
        .entry("claims")
        .or_insert_with(|| Value::Object(Default::default()));
    claims
        .as_object_mut()
        .ok_or("a provisioner's claims in ca.json are not an object")?
        .insert(
            "maxTLSCertDuration".into(),
            Value::String(MAX_CERT_DURATION.into()),
        );
    Ok((next != *current).then_some(next))
}

/// What [`ensure_config`] would change, from a GET: `None` when step-ca01 has no ca.json yet
/// (not initialised, or not running: its volume is mounted only then).
pub async fn config_change(
    project: &Client,
    name: &str,
) -> Result<Option<ConfigState>, EngineError> {
    let Some((bytes, _)) = project
        .pull_file_with_meta(name, CA_JSON)
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let current: Value = serde_json::from_slice(&bytes)
        .map_err(|e| err(name, format!("{CA_JSON} is not valid JSON: {e}")))?;
    Ok(Some(
        match desired_ca_json(&current).map_err(|e| err(name, e))? {
            None => ConfigState::Current,
            Some(_) => ConfigState::Changes,
        },
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigState {
    Current,
    Changes,
}

/// Waits until step-ca01 is healthy (initialised and serving), then brings ca.json to
/// [`desired_ca_json`], restarting step-ca and waiting again when it changed. Returns whether
/// it changed.
pub async fn ensure_config(
    client: &Client,
    d: &Deployment,
    name: &str,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<bool, EngineError> {
    let project = client.in_project(d.project());
    let pulled = match project
        .pull_file_with_meta(name, CA_JSON)
        .await
        .optional()?
    {
        Some(p) => p,
        None => {
            // First start: the entrypoint initialises the CA before step-ca serves.
            super::upgrade::gate_one(client, d, name, timeout, progress).await?;
            project
                .pull_file_with_meta(name, CA_JSON)
                .await
                .optional()?
                .ok_or_else(|| {
                    err(
                        name,
                        format!("serves but has no {CA_JSON}: was it initialised elsewhere? Check `incus console --show-log {name}`"),
                    )
                })?
        }
    };
    let (bytes, meta) = pulled;
    let current: Value = serde_json::from_slice(&bytes)
        .map_err(|e| err(name, format!("{CA_JSON} is not valid JSON: {e}")))?;
    let Some(next) = desired_ca_json(&current).map_err(|e| err(name, e))? else {
        return Ok(false);
    };
    let mut text = serde_json::to_vec_pretty(&next).map_err(|e| err(name, e))?;
    text.push(b'\n');
    project.push_file(name, CA_JSON, text, meta).await?;
    progress.info(&format!(
        "{name}: ca.json gets metricsAddress :{STEP_CA_METRICS_PORT} and certificates of up to {MAX_CERT_DURATION}; restarting step-ca"
    ));
    super::converge::change_state(&project, name, crate::incus::StateAction::Restart, false)
        .await
        .map_err(|e| err(name, e))?;
    super::upgrade::gate_one(client, d, name, timeout, progress).await?;
    Ok(true)
}

/// The root certificate (PEM) of step-ca01, `None` before its initialisation.
pub async fn root_pem(project: &Client, name: &str) -> Result<Option<String>, EngineError> {
    Ok(project
        .pull_file(name, ROOT_CERT)
        .await
        .optional()?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// A directory of its own under `/tmp` in step-ca01 (0700, the step user's) for one exchange;
/// every path ends in [`Scratch::remove`].
struct Scratch<'a> {
    project: &'a Client,
    name: &'a str,
    dir: String,
    files: Vec<String>,
}

impl<'a> Scratch<'a> {
    async fn new(project: &'a Client, name: &'a str) -> Result<Scratch<'a>, IncusError> {
        let dir = format!("/tmp/atlas-{}", hex::encode(rand::random::<[u8; 8]>()));
        let (uid, gid) = STEP_USER;
        project
            .mkdir(name, &dir, FileMeta::new(uid, gid, 0o700))
            .await?;
        Ok(Scratch {
            project,
            name,
            dir,
            files: Vec::new(),
        })
    }

    fn path(&self, file: &str) -> String {
        format!("{}/{file}", self.dir)
    }

    async fn put(
        &mut self,
        file: &str,
        contents: Vec<u8>,
        mode: u32,
    ) -> Result<String, IncusError> {
        let path = self.path(file);
        let (uid, gid) = STEP_USER;
        self.files.push(path.clone());
        self.project
            .push_file(self.name, &path, contents, FileMeta::new(uid, gid, mode))
            .await?;
        Ok(path)
    }

    /// Removes every file it made, the ones the command wrote, and the directory.
    async fn remove(self, also: &[&str]) {
        let written = also.iter().map(|f| self.path(f));
        for f in self.files.iter().cloned().chain(written) {
            let _ = self.project.delete_file(self.name, &f).await;
        }
        let _ = self.project.delete_file(self.name, &self.dir).await;
    }
}

/// Has step-ca01 sign `csr_pem` for [`CERT_LIFETIME`] through the JWK provisioner, which
/// `password` opens; returns the certificate chain (leaf, then intermediate) in PEM.
pub async fn sign(
    client: &Client,
    config: &Config,
    name: &str,
    csr_pem: &str,
    password: &str,
) -> Result<String, EngineError> {
    let project = &client.in_project(&config.incus.project);
    let mut scratch = Scratch::new(project, name).await?;
    let out = async {
        let csr = scratch
            .put("request.csr", csr_pem.as_bytes().to_vec(), 0o644)
            .await?;
        // No trailing newline: step reads the whole file as the password.
        let pw = scratch
            .put("provisioner-password", password.as_bytes().to_vec(), 0o600)
            .await?;
        let crt = scratch.path("certificate.crt");
        let lifetime = MAX_CERT_DURATION;
        let argv = [
            "step",
            "ca",
            "sign",
            csr.as_str(),
            crt.as_str(),
            "--provisioner",
            PROVISIONER,
            "--provisioner-password-file",
            pw.as_str(),
            "--ca-url",
            CA_URL,
            "--root",
            ROOT_CERT,
            "--not-after",
            lifetime,
            "--force",
        ];
        let o = step(project, name, &argv).await?;
        if o.exit_code != 0 {
            return Ok(Err(format!(
                "`step ca sign` failed (exit {}): {}",
                o.exit_code,
                o.stderr_str().trim()
            )));
        }
        project
            .pull_file(name, &crt)
            .await
            .map(|b| Ok(String::from_utf8_lossy(&b).into_owned()))
    }
    .await;
    scratch.remove(&["certificate.crt"]).await;
    match out {
        Ok(Ok(chain)) => Ok(chain),
        Ok(Err(why)) => Err(err(
            name,
            super::redact::excerpt(client, config, &why).await,
        )),
        Err(e) => Err(EngineError::from(e)),
    }
}

/// `step ...` in step-ca01 as the step user.
async fn step(project: &Client, name: &str, argv: &[&str]) -> Result<ExecOutput, IncusError> {
    project
        .exec_as(name, argv, &Default::default(), Some(STEP_USER))
        .await
}

/// Re-encrypts the JWK provisioner's key in ca.json from the password in file `from` to the
/// one in file `to` (both inside step-ca01), with `step crypto change-pass` on a copy of
/// `encryptedKey`. `Ok(false)` when `from` does not open it (the caller decides whether `to`
/// already does); step-ca reads the new key when it next starts.
pub async fn reencrypt_provisioner(
    project: &Client,
    name: &str,
    from: &str,
    to: &str,
) -> Result<Result<(), String>, EngineError> {
    let (bytes, meta) = project.pull_file_with_meta(name, CA_JSON).await?;
    let mut ca: Value = serde_json::from_slice(&bytes)
        .map_err(|e| err(name, format!("{CA_JSON} is not valid JSON: {e}")))?;
    let key = provisioner_mut(&mut ca)
        .and_then(|p| p["encryptedKey"].as_str().map(str::to_string))
        .ok_or_else(|| {
            err(
                name,
                format!("{CA_JSON} has no encryptedKey for {PROVISIONER}"),
            )
        })?;
    let mut scratch = Scratch::new(project, name).await?;
    let out = async {
        let file = scratch
            .put("provisioner.jwe", key.into_bytes(), 0o600)
            .await?;
        let argv = [
            "step",
            "crypto",
            "change-pass",
            file.as_str(),
            "--password-file",
            from,
            "--new-password-file",
            to,
            "--force",
        ];
        let o = step(project, name, &argv).await?;
        if o.exit_code != 0 {
            return Ok(Err(o.stderr_str().trim().to_string()));
        }
        project.pull_file(name, &file).await.map(Ok)
    }
    .await;
    scratch.remove(&[]).await;
    let full = match out.map_err(EngineError::from)? {
        Ok(full) => full,
        Err(why) => return Ok(Err(why)),
    };
    let compact = jwe_compact(&full).map_err(|e| err(name, e))?;
    if let Some(p) = provisioner_mut(&mut ca) {
        p["encryptedKey"] = Value::String(compact);
    }
    let mut text = serde_json::to_vec_pretty(&ca).map_err(|e| err(name, e))?;
    text.push(b'\n');
    project.push_file(name, CA_JSON, text, meta).await?;
    Ok(Ok(()))
}

fn provisioner_mut(ca: &mut Value) -> Option<&mut Value> {
    ca.get_mut("authority")?
        .get_mut("provisioners")?
        .as_array_mut()?
        .iter_mut()
        .find(|p| p["type"] == "JWK" && p["name"] == PROVISIONER)
}

/// The compact form (`protected.encrypted_key.iv.ciphertext.tag`, what ca.json holds) of a
/// JWE in the JSON serialization `step crypto change-pass` writes. Refuses what has no
/// compact form (several recipients, unprotected headers).
pub fn jwe_compact(json: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| format!("the re-encrypted key is not JSON: {e}"))?;
    if v.get("recipients").is_some() || v.get("unprotected").is_some() || v.get("header").is_some()
    {
        return Err(
            "the re-encrypted key has no compact form (recipients or unprotected headers)".into(),
        );
    }
    let part = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("the re-encrypted key has no `{k}`"))
    };
    Ok([
        part("protected")?,
        part("encrypted_key")?,
        part("iv")?,
        part("ciphertext")?,
        part("tag")?,
    ]
    .join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ca_json() -> Value {
        json!({
            "root": "/home/step/certs/root_ca.crt",
            "address": ":9000",
            "authority": {"provisioners": [
                {"type": "JWK", "name": "admin", "key": {"kid": "k"}, "encryptedKey": "a.b.c.d.e"},
                {"type": "ACME", "name": "acme"}
            ]}
        })
    }

    #[test]
    fn ca_json_gets_both_settings_once() {
        let next = desired_ca_json(&ca_json()).unwrap().expect("a change");
        assert_eq!(next["metricsAddress"], ":9290");
        assert_eq!(
            next["authority"]["provisioners"][0]["claims"]["maxTLSCertDuration"],
            "2160h"
        );
        // Everything else as it was.
        assert_eq!(
            next["authority"]["provisioners"][1],
            json!({"type": "ACME", "name": "acme"})
        );
        assert_eq!(
            next["authority"]["provisioners"][0]["encryptedKey"],
            "a.b.c.d.e"
        );
        assert_eq!(next["address"], ":9000");
        assert_eq!(desired_ca_json(&next).unwrap(), None, "idempotent");
    }

    #[test]
    fn ca_json_keeps_other_claims_and_fixes_changed_values() {
        let mut ca = ca_json();
        ca["metricsAddress"] = json!("127.0.0.1:9999");
        ca["authority"]["provisioners"][0]["claims"] =
            json!({"maxTLSCertDuration": "24h", "defaultTLSCertDuration": "12h"});
        let next = desired_ca_json(&ca).unwrap().expect("a change");
        assert_eq!(next["metricsAddress"], ":9290");
        let claims = &next["authority"]["provisioners"][0]["claims"];
        assert_eq!(claims["maxTLSCertDuration"], "2160h");
        assert_eq!(claims["defaultTLSCertDuration"], "12h");
    }

    #[test]
    fn ca_json_without_the_provisioner_is_refused() {
        let mut ca = ca_json();
        ca["authority"]["provisioners"][0]["name"] = json!("other");
        let e = desired_ca_json(&ca).unwrap_err();
        assert!(e.contains("no JWK provisioner named admin"), "{e}");
        assert!(desired_ca_json(&json!([])).is_err());
    }

    #[test]
    fn jwe_json_to_compact() {
        let full = br#"{"protected":"P","encrypted_key":"K","iv":"I","ciphertext":"C","tag":"T"}"#;
        assert_eq!(jwe_compact(full).unwrap(), "P.K.I.C.T");
        let multi = br#"{"protected":"P","recipients":[],"iv":"I","ciphertext":"C","tag":"T"}"#;
        assert!(jwe_compact(multi).is_err());
        assert!(
            jwe_compact(br#"{"protected":"P"}"#)
                .unwrap_err()
                .contains("encrypted_key")
        );
    }
}
