//! Create, update and delete of what atlas owns, through one trait, `IncusObject`: each
//! kind says where it lives and how it is read and written; the rule that atlas never writes
//! what it does not own (no `user.atlas.managed` key) is stated once, in `look`. Updates are
//! read-modify-write with the ETag, and keep the keys Incus or other parts of atlas own on the
//! object (`volatile.*`, `image.*`, the project state's `user.atlas.*` keys on the project).

use std::collections::BTreeMap;

use crate::incus::{
    Client, Etagged, IncusError, Instance, InstanceCreate, InstanceStatus, Network, OptionalExt,
    Profile, Project, StorageVolume,
};

use super::error::EngineError;
use super::resource::{Body, Resource, ResourceAddress, ResourceKind};
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

/// Where the objects of one install live: the server's `default` project (projects,
/// networks), the Atlas project (profiles, volumes, instances; targeted at a cluster member
/// when the caller says so), and the storage pool of its volumes.
#[derive(Clone, Copy)]
pub(crate) struct Place<'a> {
    root: &'a Client,
    project: &'a Client,
    pool: &'a str,
}

impl Place<'_> {
    fn networks(&self) -> Client {
        self.root.in_project("default")
    }
}

/// One kind of Incus object atlas owns, in the API's own type (what a GET gives and a PUT
/// takes). `Create` is the body that creates one.
pub(crate) trait IncusObject: Clone + Sized {
    type Create;

    fn config(&self) -> &BTreeMap<String, String>;
    async fn get(at: &Place<'_>, name: &str) -> Result<Etagged<Self>, IncusError>;
    async fn create(at: &Place<'_>, body: &Self::Create) -> Result<(), IncusError>;
    async fn put(&self, at: &Place<'_>, etag: Option<&str>) -> Result<(), IncusError>;
    /// Deletes `have` (an instance is stopped first, a volume loses its snapshots first
    /// when `with_snapshots`).
    async fn delete(
        at: &Place<'_>,
        have: &Self,
        name: &str,
        with_snapshots: bool,
    ) -> Result<(), IncusError>;
}

/// A kind whose desired body is its API type: `laid_over` brings what Incus holds to it.
pub(crate) trait Desired: IncusObject<Create = Self> {
    /// `have` with what atlas sets taken from `self`, the rest (and the kept config keys)
    /// left as Incus has them.
    fn laid_over(&self, have: &Self) -> Self;
}

impl IncusObject for Project {
    type Create = Project;
    fn config(&self) -> &BTreeMap<String, String> {
        &self.config
    }
    async fn get(at: &Place<'_>, name: &str) -> Result<Etagged<Self>, IncusError> {
        at.root.get_project(name).await
    }
    async fn create(at: &Place<'_>, body: &Self) -> Result<(), IncusError> {
        at.root.create_project(body).await
    }
    async fn put(&self, at: &Place<'_>, etag: Option<&str>) -> Result<(), IncusError> {
        at.root.update_project(self, etag).await
    }
    async fn delete(at: &Place<'_>, _: &Self, name: &str, _: bool) -> Result<(), IncusError> {
        at.root.delete_project(name).await
    }
}

impl Desired for Project {
    fn laid_over(&self, have: &Self) -> Self {
        Project {
            config: merged(&have.config, &self.config),
            description: self.description.clone(),
            ..have.clone()
        }
    }
}

impl IncusObject for Network {
    type Create = Network;
    fn config(&self) -> &BTreeMap<String, String> {
        &self.config
    }
    async fn get(at: &Place<'_>, name: &str) -> Result<Etagged<Self>, IncusError> {
        at.networks().get_network(name).await
    }
    async fn create(at: &Place<'_>, body: &Self) -> Result<(), IncusError> {
        let net = at.networks();
        bridge_race_retried(|| super::cluster::create_network(&net, body)).await
    }
    async fn put(&self, at: &Place<'_>, etag: Option<&str>) -> Result<(), IncusError> {
        at.networks().update_network(self, etag).await
    }
    async fn delete(at: &Place<'_>, _: &Self, name: &str, _: bool) -> Result<(), IncusError> {
        let net = at.networks();
        bridge_race_retried(|| net.delete_network(name)).await
    }
}

impl Desired for Network {
    fn laid_over(&self, have: &Self) -> Self {
        Network {
            config: merged(&have.config, &self.config),
            description: self.description.clone(),
            ..have.clone()
        }
    }
}

impl IncusObject for Profile {
    type Create = Profile;
    fn config(&self) -> &BTreeMap<String, String> {
        &self.config
    }
    async fn get(at: &Place<'_>, name: &str) -> Result<Etagged<Self>, IncusError> {
        at.project.get_profile(name).await
    }
    async fn create(at: &Place<'_>, body: &Self) -> Result<(), IncusError> {
        at.project.create_profile(body).await
    }
    async fn put(&self, at: &Place<'_>, etag: Option<&str>) -> Result<(), IncusError> {
        at.project.update_profile(self, etag).await
    }
    async fn delete(at: &Place<'_>, _: &Self, name: &str, _: bool) -> Result<(), IncusError> {
        at.project.delete_profile(name).await
    }
}

impl Desired for Profile {
    fn laid_over(&self, have: &Self) -> Self {
        Profile {
            config: merged(&have.config, &self.config),
            devices: self.devices.clone(),
            description: self.description.clone(),
            ..have.clone()
        }
    }
}

impl IncusObject for StorageVolume {
    type Create = StorageVolume;
    fn config(&self) -> &BTreeMap<String, String> {
        &self.config
    }
    async fn get(at: &Place<'_>, name: &str) -> Result<Etagged<Self>, IncusError> {
        at.project.get_volume(at.pool, name).await
    }
    async fn create(at: &Place<'_>, body: &Self) -> Result<(), IncusError> {
        at.project.create_volume(at.pool, body).await
    }
    async fn put(&self, at: &Place<'_>, etag: Option<&str>) -> Result<(), IncusError> {
        at.project.update_volume(at.pool, self, etag).await
    }
    async fn delete(
        at: &Place<'_>,
        _: &Self,
        name: &str,
        with_snapshots: bool,
    ) -> Result<(), IncusError> {
        if with_snapshots {
            for s in at.project.volume_snapshots(at.pool, name).await? {
                at.project
                    .delete_volume_snapshot(at.pool, name, &s.name)
                    .await?;
            }
        }
        at.project.delete_volume(at.pool, name).await
    }
}

impl Desired for StorageVolume {
    fn laid_over(&self, have: &Self) -> Self {
        StorageVolume {
            config: merged(&have.config, &self.config),
            description: self.description.clone(),
            ..have.clone()
        }
    }
}

impl IncusObject for Instance {
    type Create = InstanceCreate;
    fn config(&self) -> &BTreeMap<String, String> {
        &self.config
    }
    async fn get(at: &Place<'_>, name: &str) -> Result<Etagged<Self>, IncusError> {
        at.project.get_instance(name).await
    }
    async fn create(at: &Place<'_>, body: &InstanceCreate) -> Result<(), IncusError> {
        at.project.create_instance(body).await
    }
    async fn put(&self, at: &Place<'_>, etag: Option<&str>) -> Result<(), IncusError> {
        at.project.update_instance(self, etag).await
    }
    async fn delete(at: &Place<'_>, _: &Self, name: &str, _: bool) -> Result<(), IncusError> {
        // Stopped whatever status was read: a failing service may be between two restarts.
        stop(at.project, name).await?;
        at.project.delete_instance(name).await
    }
}

/// What is at an address, as far as writing it goes.
pub(crate) enum Found<T> {
    Absent,
    Ours(Etagged<T>),
    /// There, without our ownership key: never written.
    Foreign,
}

/// Reads the object at `addr` and whether atlas owns it: the one place the ownership rule is
/// applied before a write.
pub(crate) async fn look<T: IncusObject>(
    at: &Place<'_>,
    addr: &ResourceAddress,
) -> Result<Found<T>, EngineError> {
    let have = T::get(at, &addr.name)
        .await
        .optional()
        .map_err(|e| EngineError::incus_at(addr, e))?;
    Ok(match have {
        None => Found::Absent,
        Some(h) if keys::is_owned(h.value.config()) => Found::Ours(h),
        Some(_) => Found::Foreign,
    })
}

/// Creates `want`; when it appeared since the plan (a concurrent or interrupted run), brings
/// it to `want` instead, unless it is not ours.
async fn create_as<T: Desired>(
    at: &Place<'_>,
    addr: &ResourceAddress,
    want: &T,
) -> Result<(), EngineError> {
    match T::create(at, want).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_already_exists() => update_as(at, addr, want).await,
        Err(e) => Err(EngineError::object(addr, e)),
    }
}

/// Brings the owned object at `addr` to `want` (read-modify-write with the ETag).
async fn update_as<T: Desired>(
    at: &Place<'_>,
    addr: &ResourceAddress,
    want: &T,
) -> Result<(), EngineError> {
    let have = match look::<T>(at, addr).await? {
        Found::Ours(have) => have,
        Found::Foreign => {
            return Err(EngineError::object(
                addr,
                "exists but is not managed by atlas-install; nothing was changed",
            ));
        }
        Found::Absent => {
            return Err(EngineError::object(
                addr,
                "vanished while being converged; run install again",
            ));
        }
    };
    want.laid_over(&have.value)
        .put(at, have.etag.as_deref())
        .await
        .map_err(|e| EngineError::incus_at(addr, e))
}

/// Deletes the object at `addr` when atlas owns it. Already gone is fine.
async fn delete_as<T: IncusObject>(
    at: &Place<'_>,
    addr: &ResourceAddress,
    with_snapshots: bool,
) -> Result<(), EngineError> {
    let have = match look::<T>(at, addr).await? {
        Found::Ours(have) => have,
        Found::Absent => return Ok(()),
        Found::Foreign => {
            return Err(EngineError::object(
                addr,
                "is not managed by atlas-install; left untouched",
            ));
        }
    };
    match T::delete(at, &have.value, &addr.name, with_snapshots).await {
        Err(e) if !e.is_not_found() => Err(EngineError::object(addr, e)),
        _ => Ok(()),
    }
}

fn place<'a>(root: &'a Client, project: &'a Client, pool: Option<&'a str>) -> Place<'a> {
    Place {
        root,
        project,
        pool: pool.unwrap_or_default(),
    }
}

/// Creates the object of `r` (not an instance: the instance step creates those).
pub async fn create(root: &Client, project: &Client, r: &Resource) -> Result<(), EngineError> {
    let (at, addr) = (place(root, project, r.pool.as_deref()), r.address());
    match &r.body {
        Body::Project(b) => create_as(&at, &addr, b).await,
        Body::Network(b) => create_as(&at, &addr, b).await,
        Body::Profile(b) => create_as(&at, &addr, b).await,
        Body::Volume(b) => create_as(&at, &addr, b).await,
        Body::Instance(_) => Err(EngineError::object(
            &addr,
            "internal error: instances are created by the instance step",
        )),
    }
}

/// Brings the owned object of `r` to its body (not an instance: see [`create`]).
pub async fn update(root: &Client, project: &Client, r: &Resource) -> Result<(), EngineError> {
    let (at, addr) = (place(root, project, r.pool.as_deref()), r.address());
    match &r.body {
        Body::Project(b) => update_as(&at, &addr, b).await,
        Body::Network(b) => update_as(&at, &addr, b).await,
        Body::Profile(b) => update_as(&at, &addr, b).await,
        Body::Volume(b) => update_as(&at, &addr, b).await,
        Body::Instance(_) => Err(EngineError::object(
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
    let at = place(root, project, addr.pool.as_deref());
    match addr.kind {
        ResourceKind::Instance => delete_as::<Instance>(&at, addr, with_snapshots).await,
        ResourceKind::Profile => delete_as::<Profile>(&at, addr, with_snapshots).await,
        ResourceKind::Volume => delete_as::<StorageVolume>(&at, addr, with_snapshots).await,
        ResourceKind::Network => delete_as::<Network>(&at, addr, with_snapshots).await,
        ResourceKind::Project => delete_as::<Project>(&at, addr, with_snapshots).await,
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
