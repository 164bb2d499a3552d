//! `upgrade --rotate-secrets`: new generated secrets, each taking effect through the
//! service's own mechanism. Mosquitto's passwords and the metrics certificate are simply
//! replaced in the store: the upgrade that follows renders and pushes Mosquitto's password
//! file and Prometheus' certificate, restarts both, trusts the new certificate in Incus and
//! drops the old one. Grafana reads its admin password from the environment on its very first
//! start only, so its password is changed through Grafana's HTTP API with the current one,
//! and stored only once Grafana accepts the new one. The step-ca password is kept: it
//! encrypts the CA's keys, and changing it means re-encrypting them inside step-ca01.
//!
//! A run killed midway is safe to repeat: the Grafana password being rotated to is stored
//! first under its own key, and a repeat checks which of the two Grafana accepts.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Config, ServiceKind};
use crate::incus::{Client, OptionalExt as _};
use crate::progress::Progress;

use super::error::EngineError;
use super::secrets::{self, KEY_GRAFANA_ADMIN, KEY_METRICS_CERT, KEY_STEP_CA};

/// Where the Grafana password being rotated to waits until Grafana has it.
pub const KEY_GRAFANA_NEXT: &str = "user.atlas.secret.grafana-admin-password.next";

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
    let stored = client.get_project(project).await?.value.config;
    if !stored.contains_key(KEY_GRAFANA_ADMIN) {
        return Err(err(
            "secrets",
            format!("project {project} stores no secrets yet: install first. Nothing was changed."),
        ));
    }
    let mut rotation = Rotation {
        rotated: Vec::new(),
        kept: vec![(
            KEY_STEP_CA.to_string(),
            "it encrypts step-ca's keys; changing it means `step crypto change-pass` on each key inside step-ca01".to_string(),
        )],
    };
    for (name, _) in config.instances_of(ServiceKind::Grafana) {
        grafana(client, config, name, &stored, progress).await?;
        rotation
            .rotated
            .push(format!("{KEY_GRAFANA_ADMIN} (through {name}'s API)"));
    }
    let mut fresh = BTreeMap::new();
    let mut keys = vec![KEY_METRICS_CERT.to_string()];
    keys.extend(
        config
            .mosquitto
            .users
            .iter()
            .map(|u| secrets::mosquitto_password_key(u)),
    );
    for key in &keys {
        fresh.extend(secrets::generate_for(key).map_err(|e| err(key, e))?);
    }
    client.set_project_keys(project, &fresh, &[]).await?;
    rotation.rotated.extend(keys);
    progress.info(&format!(
        "rotated: {}; kept: {}",
        rotation.rotated.join(", "),
        rotation
            .kept
            .iter()
            .map(|(k, why)| format!("{k} ({why})"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(rotation)
}

async fn grafana(
    client: &Client,
    config: &Config,
    name: &str,
    stored: &BTreeMap<String, String>,
    progress: &dyn Progress,
) -> Result<(), EngineError> {
    let what = format!("the Grafana admin password of {name}");
    let project = client.in_project(&config.incus.project);
    let Some(inst) = config.instances.get(name) else {
        return Ok(());
    };
    let running = project
        .get_instance(name)
        .await
        .optional()?
        .is_some_and(|i| i.value.is_running());
    let probe = super::health::probe_for(config, name, inst);
    let base = match (&probe, running) {
        (Some(p), true) => match &p.check {
            super::health::Check::Http { url, .. } => {
                url.trim_end_matches("/api/health").to_string()
            }
            _ => return Err(err(&what, "no HTTP address")),
        },
        _ => {
            return Err(err(
                &what,
                format!(
                    "{name} must be running (Grafana takes a new admin password only through its API). Nothing was changed."
                ),
            ));
        }
    };
    let old = stored.get(KEY_GRAFANA_ADMIN).cloned().unwrap_or_default();
    let new = match stored.get(KEY_GRAFANA_NEXT) {
        Some(n) => n.clone(),
        None => {
            let n = secrets::password();
            client
                .set_project_keys(
                    &config.incus.project,
                    &BTreeMap::from([(KEY_GRAFANA_NEXT.to_string(), n.clone())]),
                    &[],
                )
                .await?;
            n
        }
    };
    let http = super::health::probe_client()?;
    let user = &config.grafana.admin_user;
    // The HTTP status of `GET /api/user` as the admin with `pw` (0: no answer).
    let status = |pw: String| {
        let (http, url, user) = (http.clone(), format!("{base}/api/user"), user.clone());
        async move {
            http.get(url)
                .basic_auth(user, Some(pw))
                .send()
                .await
                .map_or(0, |r| r.status().as_u16())
        }
    };
    let ok = |code: u16| (200..300).contains(&code);
    if !ok(status(new.clone()).await) {
        match status(old.clone()).await {
            code if ok(code) => {}
            401 | 403 => {
                return Err(err(
                    &what,
                    format!(
                        "{name} accepts neither the stored admin password nor the one being rotated to; reset it inside the container (`grafana cli admin reset-admin-password`), store it as {KEY_GRAFANA_ADMIN} and run again"
                    ),
                ));
            }
            other => {
                return Err(err(
                    &what,
                    format!(
                        "{name} does not answer Grafana's API as expected (GET {base}/api/user: HTTP {other}); nothing was rotated"
                    ),
                ));
            }
        }
        let r = http
            .put(format!("{base}/api/admin/users/1/password"))
            .basic_auth(user, Some(&old))
            .json(&serde_json::json!({ "password": new }))
            .send()
            .await
            .map_err(|e| err(&what, e))?;
        if !r.status().is_success() || !ok(status(new.clone()).await) {
            return Err(err(
                &what,
                format!(
                    "{name} refused the new password (HTTP {}); the stored one still works",
                    r.status()
                ),
            ));
        }
    }
    progress.info(&format!("{name}: admin password changed through its API"));
    client
        .set_project_keys(
            &config.incus.project,
            &BTreeMap::from([(KEY_GRAFANA_ADMIN.to_string(), new)]),
            &[KEY_GRAFANA_NEXT],
        )
        .await?;
    Ok(())
}
