//! Step 8: one instance at a time. Created stopped with a `pending` hash, files pushed
//! (parents made), started, and only then stamped with its content hash: the hash is the
//! commit marker, so a run killed anywhere before it leaves an instance the next run sees as
//! changed and finishes. An image change rebuilds the root filesystem in place (data lives
//! in separate custom volumes, which stay; so do the instance's snapshots).

use crate::incus::{
    Client, FileMeta, IncusError, Instance, InstanceCreate, InstanceSource, InstanceStatus,
    OptionalExt, StateAction,
};

use super::converge::merged;
use super::error::EngineError;
use super::resource::{Body, Resource};
use super::state::InstancePayload;
use crate::state::keys;

/// Hash value of an instance whose files or config are not all in place yet.
pub const PENDING: &str = "pending";

/// Hooks between the sub-steps, for failure injection in tests.
pub type Checkpoint<'a> = &'a (dyn Fn(&str) -> Result<(), EngineError> + Sync);

/// The creation body of an instance resource.
fn body(r: &Resource) -> Result<&InstanceCreate, EngineError> {
    match &r.body {
        Body::Instance(b) => Ok(b),
        _ => Err(EngineError::object(
            r.address(),
            "internal error: not an instance",
        )),
    }
}

/// Creates or brings an owned instance to `r`. `existing` comes from the plan's observation.
pub async fn converge(
    project: &Client,
    r: &Resource,
    payload: &InstancePayload,
    existing: Option<&Instance>,
    checkpoint: Checkpoint<'_>,
) -> Result<(), EngineError> {
    let want = body(r)?;
    let name = &want.name;
    let err = |e: IncusError| EngineError::object(format!("instance {name}"), e);
    let fp = &payload.image.fingerprint;
    let mut fresh = false;
    match existing {
        Some(i) if i.config.get("volatile.base_image").is_some_and(|b| b != fp) => {
            // A new image: the root filesystem is rebuilt from it. The instance itself stays,
            // with its addresses, devices and snapshots (an upgrade's way back).
            rebuild(project, name, fp).await.map_err(err)?;
        }
        Some(_) => {}
        None => {
            fresh = create(project, want, fp).await?;
        }
    }
    checkpoint("instance-created")?;
    for f in &payload.files {
        push(project, name, f).await?;
    }
    checkpoint("files-pushed")?;
    let mut want_config = want.config.clone();
    want_config.insert(keys::HASH.to_string(), PENDING.to_string());
    // A fresh instance was made stopped with its config; an existing one gets the config and
    // is restarted if it ran (the status as `edit` read it).
    let running = !fresh
        && edit(project, name, |cur| {
            let config = merged(&cur.config, &want_config);
            let same = cur.config == config
                && cur.devices == want.devices
                && cur.profiles == want.profiles;
            (!same).then(|| Instance {
                config,
                devices: want.devices.clone(),
                profiles: want.profiles.clone(),
                description: want.description.clone(),
                ..cur.clone()
            })
        })
        .await?
        .is_running();
    let action = if running {
        StateAction::Restart
    } else {
        StateAction::Start
    };
    super::converge::change_state(project, name, action, false)
        .await
        .map_err(|e| not_started(name, e))?;
    checkpoint("instance-started")?;
    stamp(project, name, &r.hash).await
}

/// Starts an unchanged instance that is not running (stopped by hand, or a crash between
/// start and stamp of an earlier run cannot cause this: the stamp comes last).
pub async fn ensure_running(project: &Client, i: &Instance) -> Result<bool, EngineError> {
    if i.is_running() {
        return Ok(false);
    }
    super::converge::change_state(project, &i.name, StateAction::Start, false)
        .await
        .map_err(|e| not_started(&i.name, e))?;
    Ok(true)
}

/// A failed start, its log tail still to be read ([`explained`]).
fn not_started(name: &str, e: IncusError) -> EngineError {
    EngineError::NotStarted {
        instance: name.to_string(),
        source: Box::new(e),
        log_tail: String::new(),
    }
}

/// `result`, with a failed start given the instance's last console lines, cut of the
/// stored secrets.
pub(crate) async fn explained<T>(
    project: &Client,
    config: &crate::config::Config,
    result: Result<T, EngineError>,
) -> Result<T, EngineError> {
    let Err(EngineError::NotStarted {
        instance, source, ..
    }) = result
    else {
        return result;
    };
    let tail = super::health::log_tail(project, &instance, super::health::LOG_LINES).await;
    Err(EngineError::NotStarted {
        log_tail: super::redact::excerpt(project, config, &tail).await,
        instance,
        source,
    })
}

/// Creates the instance stopped, from the image `fingerprint` (the one its hash names, not
/// whatever its alias points at by now). Returns false when it appeared since the plan
/// (then it is handled as an existing one, which is fine only when it is ours).
async fn create(
    project: &Client,
    want: &InstanceCreate,
    fingerprint: &str,
) -> Result<bool, EngineError> {
    let name = &want.name;
    let mut create = InstanceCreate {
        source: InstanceSource::fingerprint(fingerprint),
        start: false,
        ..want.clone()
    };
    create
        .config
        .insert(keys::HASH.to_string(), PENDING.to_string());
    match project.create_instance(&create).await {
        Ok(()) => Ok(true),
        Err(e) if e.is_already_exists() => {
            let i = project
                .get_instance(name)
                .await
                .map_err(|e| EngineError::incus_at(format!("instance {name}"), e))?;
            if !keys::is_owned(&i.value.config) {
                return Err(EngineError::object(
                    format!("instance {name}"),
                    "exists but is not managed by atlas-install; nothing was changed",
                ));
            }
            Ok(false)
        }
        Err(e) => Err(EngineError::object(format!("instance {name}"), e)),
    }
}

/// Pushes one file; a missing parent directory is made (root, 0755) and the push retried.
pub(crate) async fn push(
    project: &Client,
    instance: &str,
    f: &super::state::PushFile,
) -> Result<(), EngineError> {
    let err =
        |e: IncusError| EngineError::object(format!("instance {instance}: file {}", f.path), e);
    let meta = FileMeta::new(f.uid, f.gid, f.mode);
    // A broken file server is sent again by the client (`is_file_server_hiccup`).
    match project
        .push_file(instance, &f.path, f.contents.clone(), meta)
        .await
    {
        Err(e) if e.is_not_found() => {
            mkdir_parents(project, instance, &f.path)
                .await
                .map_err(err)?;
            project
                .push_file(instance, &f.path, f.contents.clone(), meta)
                .await
        }
        other => other,
    }
    .map_err(err)
}

async fn mkdir_parents(project: &Client, instance: &str, path: &str) -> Result<(), IncusError> {
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut dir = String::new();
    for part in &parts[..parts.len().saturating_sub(1)] {
        dir.push('/');
        dir.push_str(part);
        match project
            .mkdir(instance, &dir, FileMeta::new(0, 0, 0o755))
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_already_exists() || e.to_string().contains("exists") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the final content hash: the instance is complete.
async fn stamp(project: &Client, name: &str, hash: &str) -> Result<(), EngineError> {
    edit(project, name, |cur| {
        let mut next = cur.clone();
        next.config.insert(keys::HASH.to_string(), hash.to_string());
        Some(next)
    })
    .await
    .map(|_| ())
}

/// How often an instance is read and written again when Incus changed it in between.
pub(crate) const WRITE_ATTEMPTS: usize = 5;

/// Reads the instance, lets `change` say what it should be (`None`: nothing to write) and
/// writes that with the ETag read. Incus changes an instance on its own (`volatile.*` after
/// each start and stop, and again each time `boot.autorestart` restarts a service that
/// exits), so a write refused for a stale ETag reads again and changes the fresh copy: a
/// service that fails at start is then reported by the health gate, naming it, not as an
/// ETag conflict here. What someone else changed is kept, since `change` starts from it.
/// Gives the instance as last read, before the write (its status, for the caller).
pub(crate) async fn edit(
    project: &Client,
    name: &str,
    change: impl Fn(&Instance) -> Option<Instance>,
) -> Result<Instance, EngineError> {
    let err = |e: IncusError| EngineError::incus_at(format!("instance {name}"), e);
    let mut attempt = 1;
    loop {
        let Some(cur) = project.get_instance(name).await.optional().map_err(err)? else {
            return Err(EngineError::object(
                format!("instance {name}"),
                "vanished while being changed",
            ));
        };
        let Some(next) = change(&cur.value) else {
            return Ok(cur.value);
        };
        match project.update_instance(&next, cur.etag.as_deref()).await {
            Err(IncusError::PreconditionFailed { .. }) if attempt < WRITE_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => return other.map(|()| cur.value).map_err(err),
        }
    }
}

/// How often a stop and rebuild is tried while the instance keeps being restarted.
const REBUILD_ATTEMPTS: usize = 3;

/// Stops the instance and rebuilds its root filesystem from `fingerprint`. The stop is
/// asked for whatever status an earlier read gave: a service that exits at once is Stopped
/// one moment and restarted by `boot.autorestart` the next, and Incus rebuilds only a
/// stopped instance. Stopping a stopped instance is no error ([`super::converge::stop`]).
pub(crate) async fn rebuild(
    project: &Client,
    name: &str,
    fingerprint: &str,
) -> Result<(), IncusError> {
    let mut attempt = 1;
    loop {
        super::converge::stop(project, name).await?;
        match project.rebuild_instance(name, fingerprint).await {
            Err(e) if attempt < REBUILD_ATTEMPTS => {
                let status = project.get_instance(name).await?.value.status;
                if status == InstanceStatus::Stopped {
                    return Err(e);
                }
                attempt += 1;
            }
            other => return other,
        }
    }
}
