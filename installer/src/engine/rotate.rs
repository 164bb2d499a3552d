//! `upgrade --rotate-secrets`: new generated secrets, each taking effect through the
//! service's own mechanism. Mosquitto's passwords and the metrics certificate are simply
//! replaced in the store: the upgrade that follows renders and pushes Mosquitto's password
//! file and Prometheus' certificate, restarts both, trusts the new certificate in Incus and
//! drops the old one. Grafana reads its admin password from the environment on its very first
//! start only, so its password is changed through Grafana's HTTP API with the current one,
//! and stored only once Grafana accepts the new one. step-ca's password encrypts the CA's
//! keys and its JWK provisioner's key (one password, as the upstream initialisation sets
//! them): each is re-encrypted inside the running step-ca with `step crypto change-pass`,
//! then `$STEPPATH/secrets/password` (what step-ca reads at start) is replaced; the upgrade
//! that follows restarts step-ca on it. Keys and
//! password file live on step-ca's volume together, so a volume snapshot or restore always
//! holds a matching pair. The stored copy only seeds a first initialisation.
//!
//! A run killed midway is safe to repeat: each password being rotated to is stored first under
//! its own `.next` key, and a repeat checks which of the two the service accepts (for step-ca:
//! a key already re-encrypted opens with the new password and is left as it is).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Config, ServiceKind};
use crate::incus::{Client, OptionalExt as _};
use crate::progress::Progress;

use crate::state::keys::{self, secrets as name};
use crate::state::{SecretStore, StateError};

use super::error::EngineError;
use super::secrets;
use super::step_ca::reencrypt_provisioner;

#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    pub rotated: Vec<String>,
    /// Secret and why it was kept.
    pub kept: Vec<(String, String)>,
}

fn err(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::object(format!("rotating {what}"), e)
}

/// Rotates the stored secrets of `config`'s project (see the module docs).
pub async fn rotate(
    client: &Client,
    config: &Config,
    progress: &dyn Progress,
) -> Result<Rotation, EngineError> {
    let project = &config.incus.project;
    let stored = crate::state::read(client, project)
        .await?
        .map(|s| s.secrets)
        .unwrap_or_default();
    if !stored.has(name::GRAFANA_ADMIN) {
        return Err(err(
            "secrets",
            format!("project {project} stores no secrets yet: install first. Nothing was changed."),
        ));
    }
    let mut rotation = Rotation {
        rotated: Vec::new(),
        kept: Vec::new(),
    };
    // One CA per project: the first step-ca holds the keys.
    if let Some((name, _)) = config.instances_of(ServiceKind::StepCa).into_iter().next() {
        step_ca(client, config, name, &stored, progress).await?;
        rotation.rotated.push(format!(
            "{} (CA and provisioner keys re-encrypted in {name})",
            keys::secret(name::STEP_CA)
        ));
    }
    for (name, _) in config.instances_of(ServiceKind::Grafana) {
        grafana(client, config, name, &stored, progress).await?;
        rotation.rotated.push(format!(
            "{} (through {name}'s API)",
            keys::secret(name::GRAFANA_ADMIN)
        ));
    }
    let mut fresh = BTreeMap::new();
    let mut names = vec![name::METRICS_CERT.to_string()];
    names.extend(
        config
            .mosquitto
            .users
            .iter()
            .map(|u| name::mosquitto_password(u)),
    );
    for n in &names {
        fresh.extend(secrets::generate_for(n).map_err(|e| err(n, e))?);
    }
    store(client, project, |s| {
        for (n, v) in &fresh {
            s.set(n, v.clone());
        }
    })
    .await?;
    rotation
        .rotated
        .extend(names.iter().map(|n| keys::secret(n)));
    let kept = if rotation.kept.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = rotation
            .kept
            .iter()
            .map(|(k, why)| format!("{k} ({why})"))
            .collect();
        format!("; kept: {}", list.join(", "))
    };
    progress.info(&format!("rotated: {}{kept}", rotation.rotated.join(", ")));
    Ok(rotation)
}

async fn grafana(
    client: &Client,
    config: &Config,
    name: &str,
    stored: &SecretStore,
    progress: &dyn Progress,
) -> Result<(), EngineError> {
    let what = format!("the Grafana admin password of {name}");
    let Some(inst) = config.instances.get(name) else {
        return Ok(());
    };
    let why = "Grafana takes a new admin password only through its API";
    require_running(&client.in_project(&config.incus.project), name, &what, why).await?;
    let base = match super::health::probe_for(config, name, inst).map(|p| p.check) {
        Some(super::health::Check::Http { url }) => url.trim_end_matches("/api/health").to_string(),
        _ => return Err(err(&what, "no HTTP address")),
    };
    let old = stored
        .get(name::GRAFANA_ADMIN)
        .unwrap_or_default()
        .to_string();
    let new = pending_password(client, config, stored, name::GRAFANA_NEXT).await?;
    let api = GrafanaAdmin {
        http: super::health::probe_client()?,
        base,
        user: config.grafana.admin_user.clone(),
    };
    if !api.accepts(&new).await {
        api.change(name, &old, &new)
            .await
            .map_err(|why| err(&what, why))?;
    }
    progress.info(&format!("{name}: admin password changed through its API"));
    store(client, &config.incus.project, |s| {
        s.set(name::GRAFANA_ADMIN, new.clone());
        s.remove(name::GRAFANA_NEXT);
    })
    .await
}

/// Grafana's HTTP API as its admin user.
struct GrafanaAdmin {
    http: reqwest::Client,
    /// `http://<address>:<port>`, without a trailing `/`.
    base: String,
    user: String,
}

impl GrafanaAdmin {
    /// The HTTP status of `GET /api/user` as the admin with `pw` (0: no answer).
    async fn status(&self, pw: &str) -> u16 {
        self.http
            .get(format!("{}/api/user", self.base))
            .basic_auth(&self.user, Some(pw))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    async fn accepts(&self, pw: &str) -> bool {
        (200..300).contains(&self.status(pw).await)
    }

    /// Changes the admin password of instance `name` from `old` to `new`, once Grafana has
    /// shown it accepts `old`; the error says, in words, why not and what to do.
    async fn change(&self, name: &str, old: &str, new: &str) -> Result<(), String> {
        let base = &self.base;
        match self.status(old).await {
            code if (200..300).contains(&code) => {}
            401 | 403 => {
                return Err(format!(
                    "{name} accepts neither the stored admin password nor the one being rotated to; reset it inside the container (`grafana cli admin reset-admin-password`), store it as {} and run again",
                    keys::secret(name::GRAFANA_ADMIN)
                ));
            }
            other => {
                return Err(format!(
                    "{name} does not answer Grafana's API as expected (GET {base}/api/user: HTTP {other}); nothing was rotated"
                ));
            }
        }
        let r = self
            .http
            .put(format!("{base}/api/admin/users/1/password"))
            .basic_auth(&self.user, Some(old))
            .json(&serde_json::json!({ "password": new }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() || !self.accepts(new).await {
            return Err(format!(
                "{name} refused the new password (HTTP {}); the stored one still works",
                r.status()
            ));
        }
        Ok(())
    }
}

/// Refuses, changing nothing, when `name` is not running in `project` (a client in the
/// deployment's project): `why` says why it must be.
async fn require_running(
    project: &Client,
    name: &str,
    what: &str,
    why: &str,
) -> Result<(), EngineError> {
    if project.instance_is_running(name).await? {
        return Ok(());
    }
    Err(err(
        what,
        format!("{name} must be running ({why}). Nothing was changed."),
    ))
}

/// A password stored under `next` (from an interrupted run), or a new one stored there first.
async fn pending_password(
    client: &Client,
    config: &Config,
    stored: &SecretStore,
    next: &str,
) -> Result<String, EngineError> {
    if let Some(n) = stored.get(next) {
        return Ok(n.to_string());
    }
    let n = secrets::password();
    store(client, &config.incus.project, |s| s.set(next, n.clone())).await?;
    Ok(n)
}

/// Changes the stored secrets of `project` with `change`.
async fn store(
    client: &Client,
    project: &str,
    change: impl Fn(&mut SecretStore),
) -> Result<(), EngineError> {
    crate::state::update(client, project, |s| {
        change(&mut s.secrets);
        Ok::<(), StateError>(())
    })
    .await
    .map_err(EngineError::from)
}

/// Re-encrypts step-ca's keys with a new password inside the running instance, then
/// replaces the password file step-ca starts with (see the module docs).
async fn step_ca(
    client: &Client,
    config: &Config,
    name: &str,
    stored: &SecretStore,
    progress: &dyn Progress,
) -> Result<(), EngineError> {
    use crate::incus::FileMeta;
    use crate::render::STEPPATH;
    let what = format!("the step-ca key password of {name}");
    let project = client.in_project(&config.incus.project);
    let why = "its keys are re-encrypted inside it";
    require_running(&project, name, &what, why).await?;
    let current = format!("{STEPPATH}/secrets/password");
    let staged = format!("{STEPPATH}/secrets/password.atlas-next");
    let (_, meta) = project
        .pull_file_with_meta(name, &current)
        .await
        .optional()?
        .ok_or_else(|| {
            err(
                &what,
                format!(
                    "{name} has no {current}: step-ca is not initialised yet. Nothing was changed."
                ),
            )
        })?;
    let owner = (meta.uid, meta.gid);
    let new = pending_password(client, config, stored, name::STEP_CA_NEXT).await?;
    // The staged and the final password file alike: the key owner's, 0600.
    let secret = FileMeta::new(owner.0, owner.1, 0o600);
    project
        .push_file(name, &staged, new.clone().into_bytes(), secret)
        .await?;
    let rekey = Rekey {
        client,
        config,
        project: project.clone(),
        name,
        current: &current,
        staged: &staged,
        owner,
        what: &what,
    };
    let changed = rekey.keys().await?;
    if changed == 0 {
        let _ = project.delete_file(name, &staged).await;
        return Err(err(
            &what,
            format!(
                "{name} has no key under {STEPPATH}/secrets to re-encrypt. Nothing was changed."
            ),
        ));
    }
    // The JWK provisioner's key (in ca.json) has the same password: the installer signs the
    // services' certificates with it.
    rekey.provisioner().await?;
    rekey.move_into_place().await?;
    store(client, &config.incus.project, |s| {
        s.set(name::STEP_CA, new.clone());
        s.remove(name::STEP_CA_NEXT);
    })
    .await?;
    progress.info(&format!(
        "{name}: {changed} key(s) re-encrypted with `step crypto change-pass`"
    ));
    Ok(())
}

/// Moving step-ca `name` from the password in file `current` to the one staged beside it.
struct Rekey<'a> {
    client: &'a Client,
    config: &'a Config,
    project: Client,
    name: &'a str,
    current: &'a str,
    staged: &'a str,
    /// Owner of the keys and the password files.
    owner: (u32, u32),
    /// What is rotated, for errors.
    what: &'a str,
}

impl Rekey<'_> {
    /// Re-encrypts step-ca's CA keys from the current password to the staged one (or finds
    /// them already re-encrypted by an interrupted run). Returns how many keys there were.
    async fn keys(&self) -> Result<usize, EngineError> {
        use crate::render::STEPPATH;
        let (project, name, what) = (&self.project, self.name, self.what);
        let (current, staged, owner) = (self.current, self.staged, self.owner);
        let mut changed = 0;
        for key in ["root_ca_key", "intermediate_ca_key"] {
            let path = format!("{STEPPATH}/secrets/{key}");
            if project.pull_file(name, &path).await.optional()?.is_none() {
                continue;
            }
            let first = change_pass(project, name, &path, current, staged, owner).await?;
            if first.exit_code != 0 {
                // Already re-encrypted by an interrupted run: the new password opens it.
                let again = change_pass(project, name, &path, staged, staged, owner).await?;
                if again.exit_code != 0 {
                    let _ = project.delete_file(name, staged).await;
                    let said = format!(
                        "with the current password ({}) and with the one being rotated to ({})",
                        first.stderr_str().trim(),
                        again.stderr_str().trim()
                    );
                    let said = super::redact::excerpt(self.client, self.config, &said).await;
                    return Err(err(
                        what,
                        format!(
                            "`step crypto change-pass {path}` failed {said}. The key was left as it was; check {current} against the key, then run again"
                        ),
                    ));
                }
            }
            changed += 1;
        }
        Ok(changed)
    }

    /// Re-encrypts the JWK provisioner's key in ca.json (or finds it done by an interrupted run).
    async fn provisioner(&self) -> Result<(), EngineError> {
        let (project, name, what) = (&self.project, self.name, self.what);
        let (current, staged) = (self.current, self.staged);
        let Err(first) = reencrypt_provisioner(project, name, current, staged).await? else {
            return Ok(());
        };
        // Already re-encrypted by an interrupted run: the new password opens it.
        let Err(again) = reencrypt_provisioner(project, name, staged, staged).await? else {
            return Ok(());
        };
        let _ = project.delete_file(name, staged).await;
        let said = format!(
            "neither the current password ({first}) nor the one being rotated to ({again})"
        );
        let said = super::redact::excerpt(self.client, self.config, &said).await;
        Err(err(
            what,
            format!(
                "the provisioner key in {} opens with {said}; the CA keys already have the new one. Re-encrypt it with `step crypto change-pass` by hand, then run again",
                super::step_ca::CA_JSON
            ),
        ))
    }

    /// The staged file (new, so made 0600) replaces the one step-ca starts with in one rename:
    /// overwriting it through Incus would keep its mode (0644, as the upstream entrypoint
    /// leaves it) and could leave half a file.
    async fn move_into_place(&self) -> Result<(), EngineError> {
        let (project, name, what) = (&self.project, self.name, self.what);
        let (current, staged, owner) = (self.current, self.staged, self.owner);
        let mv = project
            .exec_as(
                name,
                &["mv", "-f", staged, current],
                &Default::default(),
                Some(owner),
            )
            .await?;
        if mv.exit_code == 0 {
            return Ok(());
        }
        let said = super::redact::excerpt(self.client, self.config, mv.stderr_str().trim()).await;
        Err(err(
            what,
            format!(
                "moving the new password file into place (`mv {staged} {current}`) failed: {said}. The keys already have the new password, which stays stored as {}: run again",
                keys::secret(name::STEP_CA_NEXT)
            ),
        ))
    }
}

/// `step crypto change-pass KEY` inside `name`, as the key's owner, from the password in
/// file `from` to the one in file `to`.
async fn change_pass(
    project: &Client,
    name: &str,
    key: &str,
    from: &str,
    to: &str,
    owner: (u32, u32),
) -> Result<crate::incus::ExecOutput, crate::incus::IncusError> {
    let argv = [
        "step",
        "crypto",
        "change-pass",
        key,
        "--password-file",
        from,
        "--new-password-file",
        to,
        "-f",
    ];
    project
        .exec_as(name, &argv, &Default::default(), Some(owner))
        .await
}
