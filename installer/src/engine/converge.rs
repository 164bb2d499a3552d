//! Create, update and delete of the simple kinds (project, networks, profiles, volumes), each
//! with GET, compare, write: updates are read-modify-write with the ETag, and keep the keys
//! Incus or other parts of atlas own on the object (`volatile.*`, `image.*`, the secret
//! store's `user.atlas.*` keys on the project).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::incus::{
    Client, IncusError, InstanceStatus, Network, OptionalExt, Profile, Project, StorageVolume,
};

use super::error::EngineError;
use super::resource::{Resource, ResourceAddress, ResourceKind};
use crate::state::keys;

/// Whether a key on an existing object survives our update although we do not set it.
pub(crate) fn kept_key(key: &str) -> bool {
    key.starts_with("volatile.")
        || key.starts_with("image.")
        || (key.starts_with(keys::PREFIX) && !keys::STAMP.contains(&key))
}

/// The desired config laid over the kept keys of the current one.
pub(crate) fn merged(
    current: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = current
        .iter()
        .filter(|(k, _)| kept_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(desired.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

fn typed<T: DeserializeOwned>(r: &Resource) -> Result<T, EngineError> {
    serde_json::from_value(r.body.clone()).map_err(|e| {
        EngineError::object(
            r.address(),
            format!("internal error: desired body does not fit the API type: {e}"),
        )
    })
}

/// Reading `what` into a human error naming the object.
fn named(addr: &ResourceAddress) -> impl Fn(IncusError) -> EngineError + '_ {
    move |e| EngineError::object(addr, e)
}

/// Creates the object; when it appeared since the plan (a concurrent or interrupted run),
/// updates it instead, unless it is not ours.
pub async fn create(root: &Client, project: &Client, r: &Resource) -> Result<(), EngineError> {
    let addr = r.address();
    let res = match r.kind {
        ResourceKind::Project => root.create_project(&typed::<Project>(r)?).await,
        ResourceKind::Network => create_network(root, &typed::<Network>(r)?).await,
        ResourceKind::Profile => project.create_profile(&typed::<Profile>(r)?).await,
        ResourceKind::Volume => {
            project
                .create_volume(
                    r.pool.as_deref().unwrap_or_default(),
                    &typed::<StorageVolume>(r)?,
                )
                .await
        }
        ResourceKind::Instance => {
            return Err(EngineError::object(
                &addr,
                "internal error: instances are created by the instance step",
            ));
        }
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.is_already_exists() => update(root, project, r).await,
        Err(e) => Err(named(&addr)(e)),
    }
}

/// Incus 6.0 scans every bridge's interfaces while creating or deleting one; a veth or bridge
/// that vanishes meanwhile (another instance or network going away) fails the call with
/// "Failed to delete bridge children interfaces", having changed nothing: try again.
async fn bridge_race_retried<F, Fut>(mut call: F) -> Result<(), IncusError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), IncusError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Err(IncusError::Api { ref message, .. })
                if attempt < BRIDGE_RACE_ATTEMPTS && message.contains("bridge children") =>
            {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            other => return other,
        }
    }
}

/// Tries of a network create or delete that meets the bridge race.
pub const BRIDGE_RACE_ATTEMPTS: u32 = 3;

async fn create_network(root: &Client, n: &Network) -> Result<(), IncusError> {
    let net = root.in_project("default");
    bridge_race_retried(|| super::cluster::create_network(&net, n)).await
}

/// Brings an owned object to the desired body (read-modify-write with the ETag).
pub async fn update(root: &Client, project: &Client, r: &Resource) -> Result<(), EngineError> {
    let addr = r.address();
    let err = named(&addr);
    let foreign = || {
        EngineError::object(
            &addr,
            "exists but is not managed by atlas-install; nothing was changed",
        )
    };
    match r.kind {
        ResourceKind::Project => {
            let want: Project = typed(r)?;
            let have = root.get_project(&r.name).await.map_err(&err)?;
            if !crate::state::keys::is_owned(&have.value.config) {
                return Err(foreign());
            }
            let mut next = have.value.clone();
            next.config = merged(&have.value.config, &want.config);
            next.description = want.description;
            root.update_project(&next, have.etag.as_deref())
                .await
                .map_err(&err)
        }
        ResourceKind::Network => {
            let net = root.in_project("default");
            let want: Network = typed(r)?;
            let have = net.get_network(&r.name).await.map_err(&err)?;
            if !crate::state::keys::is_owned(&have.value.config) {
                return Err(foreign());
            }
            let mut next = have.value.clone();
            next.config = merged(&have.value.config, &want.config);
            next.description = want.description;
            net.update_network(&next, have.etag.as_deref())
                .await
                .map_err(&err)
        }
        ResourceKind::Profile => {
            let want: Profile = typed(r)?;
            let have = project.get_profile(&r.name).await.map_err(&err)?;
            if !crate::state::keys::is_owned(&have.value.config) {
                return Err(foreign());
            }
            let mut next = have.value.clone();
            next.config = merged(&have.value.config, &want.config);
            next.devices = want.devices;
            next.description = want.description;
            project
                .update_profile(&next, have.etag.as_deref())
                .await
                .map_err(&err)
        }
        ResourceKind::Volume => {
            let pool = r.pool.as_deref().unwrap_or_default();
            let want: StorageVolume = typed(r)?;
            let have = project.get_volume(pool, &r.name).await.map_err(&err)?;
            if !crate::state::keys::is_owned(&have.value.config) {
                return Err(foreign());
            }
            let mut next = have.value.clone();
            next.config = merged(&have.value.config, &want.config);
            next.description = want.description;
            project
                .update_volume(pool, &next, have.etag.as_deref())
                .await
                .map_err(&err)
        }
        ResourceKind::Instance => Err(EngineError::object(
            &addr,
            "internal error: instances are updated by the instance step",
        )),
    }
}

/// Deletes an owned object (instances: stopped first). Already gone is fine; a foreign one
/// is never touched.
pub async fn delete(
    root: &Client,
    project: &Client,
    addr: &ResourceAddress,
    with_snapshots: bool,
) -> Result<(), EngineError> {
    let err = named(addr);
    let owned = |c: &BTreeMap<String, String>| crate::state::keys::is_owned(c);
    let refuse = || EngineError::object(addr, "is not managed by atlas-install; left untouched");
    let res = match addr.kind {
        ResourceKind::Instance => {
            let Some(i) = project
                .get_instance(&addr.name)
                .await
                .optional()
                .map_err(&err)?
            else {
                return Ok(());
            };
            if !owned(&i.value.config) {
                return Err(refuse());
            }
            if i.value.status != InstanceStatus::Stopped {
                stop(project, &addr.name).await.map_err(&err)?;
            }
            project.delete_instance(&addr.name).await
        }
        ResourceKind::Profile => {
            let Some(p) = project
                .get_profile(&addr.name)
                .await
                .optional()
                .map_err(&err)?
            else {
                return Ok(());
            };
            if !owned(&p.value.config) {
                return Err(refuse());
            }
            project.delete_profile(&addr.name).await
        }
        ResourceKind::Volume => {
            let pool = addr.pool.as_deref().unwrap_or_default();
            let Some(v) = project
                .get_volume(pool, &addr.name)
                .await
                .optional()
                .map_err(&err)?
            else {
                return Ok(());
            };
            if !owned(&v.value.config) {
                return Err(refuse());
            }
            if with_snapshots {
                for s in project
                    .volume_snapshots(pool, &addr.name)
                    .await
                    .map_err(&err)?
                {
                    project
                        .delete_volume_snapshot(pool, &addr.name, &s.name)
                        .await
                        .map_err(&err)?;
                }
            }
            project.delete_volume(pool, &addr.name).await
        }
        ResourceKind::Network => {
            let net = root.in_project("default");
            let Some(n) = net.get_network(&addr.name).await.optional().map_err(&err)? else {
                return Ok(());
            };
            if !owned(&n.value.config) {
                return Err(refuse());
            }
            bridge_race_retried(|| net.delete_network(&addr.name)).await
        }
        ResourceKind::Project => {
            let Some(p) = root
                .get_project(&addr.name)
                .await
                .optional()
                .map_err(&err)?
            else {
                return Ok(());
            };
            if !owned(&p.value.config) {
                return Err(refuse());
            }
            root.delete_project(&addr.name).await
        }
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// Stops an instance, forced.
pub(crate) async fn stop(project: &Client, name: &str) -> Result<(), IncusError> {
    change_state(project, name, crate::incus::StateAction::Stop, true).await
}

/// Start, stop or restart, judged by the state reached. A state change can fail although a
/// later try works: a service slow to stop, or, on Incus 6.0.4, a hook that could not reach
/// the daemon within its 30 s (any client holding an idle, silent connection on the unix
/// socket stalls the daemon's accept loop; ours never does, others may). So after an error
/// the state is polled for a while, then the change is tried again, three times in all.
pub(crate) async fn change_state(
    project: &Client,
    name: &str,
    action: crate::incus::StateAction,
    force: bool,
) -> Result<(), IncusError> {
    let want = if action == crate::incus::StateAction::Stop {
        InstanceStatus::Stopped
    } else {
        InstanceStatus::Running
    };
    let first = match project.set_instance_state(name, action, 30, force).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    for _ in 0..2 {
        for _ in 0..15 {
            if project.get_instance(name).await?.value.status == want {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        if project
            .set_instance_state(name, action, 30, force)
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    match project.get_instance(name).await?.value.status == want {
        true => Ok(()),
        false => Err(first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_keep_incus_and_secret_store_keys_and_drop_stale_ones() {
        let current = BTreeMap::from([
            ("volatile.eth0.hwaddr".to_string(), "00:16".to_string()),
            ("user.atlas.secret.grafana".to_string(), "s".to_string()),
            ("user.atlas.hash".to_string(), "old".to_string()),
            ("environment.OLD".to_string(), "x".to_string()),
        ]);
        let desired = BTreeMap::from([
            ("user.atlas.hash".to_string(), "new".to_string()),
            ("limits.cpu".to_string(), "2".to_string()),
        ]);
        let m = merged(&current, &desired);
        assert_eq!(m["user.atlas.hash"], "new");
        assert!(
            m.contains_key("volatile.eth0.hwaddr") && m.contains_key("user.atlas.secret.grafana")
        );
        assert!(
            !m.contains_key("environment.OLD"),
            "keys we no longer set go away"
        );
    }
}
