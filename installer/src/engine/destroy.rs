//! `destroy`: what atlas owns, in reverse step order. Data volumes (and the project holding
//! them) stay unless asked; foreign objects are never touched.
//!
//! 1. Server wiring first: the keys and certificates atlas set for this project are undone
//!    while the project still holds the records of them (and before Loki goes, so Incus
//!    stops shipping events to it).
//! 2. Instances, profiles, volumes, networks, then the project (with its images and state
//!    bucket), each retried while Incus reports a transient bridge error.

use serde::Serialize;

use crate::config::Config;
use crate::incus::{Client, OptionalExt};
use crate::progress::Progress;

use super::converge;
use super::error::EngineError;
use super::install::STATE_BUCKET;
use super::resource::{Observed, ResourceAddress, ResourceKind};
use super::state;

#[derive(Debug, Clone, Serialize)]
pub struct DestroyPlan {
    /// Server wiring undone first (keys reset, certificates untrusted), with notes about what
    /// looks like ours but is left alone.
    pub wiring: super::wiring::Removal,
    /// Owned objects to delete, in deletion order.
    pub delete: Vec<ResourceAddress>,
    /// Owned objects kept (data volumes without --delete-volumes, and their project).
    pub keep: Vec<ResourceAddress>,
}

impl DestroyPlan {
    /// Whether applying it would change nothing.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.wiring.changes.is_empty()
    }
}

impl std::fmt::Display for DestroyPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for n in &self.wiring.notes {
            writeln!(f, "  note: {n}")?;
        }
        for w in &self.wiring.changes {
            writeln!(f, "  - {}: {}", w.what, w.detail)?;
        }
        for a in &self.delete {
            writeln!(f, "  - {a}")?;
        }
        for a in &self.keep {
            writeln!(
                f,
                "  = {a} (kept; --delete-volumes removes data volumes and their snapshots)"
            )?;
        }
        if self.is_empty() {
            return writeln!(f, "Nothing to destroy.");
        }
        writeln!(
            f,
            "Plan: {} to destroy, {} server setting(s) to undo, {} kept.",
            self.delete.len(),
            self.wiring.changes.len(),
            self.keep.len()
        )
    }
}

/// What destroy would remove, from GETs only.
pub async fn plan(
    client: &Client,
    config: &Config,
    delete_volumes: bool,
) -> Result<DestroyPlan, EngineError> {
    let obs = state::observe(&client.in_project("default"), config).await?;
    let mut owned: Vec<ResourceAddress> = obs
        .observed
        .iter()
        .filter(|(_, o)| matches!(o, Observed::Owned { .. }))
        .map(|(a, _)| a.clone())
        .collect();
    // Profiles reference volumes and networks, so they go before both.
    owned.sort_by_key(|a| match a.kind {
        ResourceKind::Instance => 0,
        ResourceKind::Profile => 1,
        ResourceKind::Volume => 2,
        ResourceKind::Network => 3,
        ResourceKind::Project => 4,
    });
    let (mut delete, mut keep) = (Vec::new(), Vec::new());
    let volumes_kept = !delete_volumes && owned.iter().any(|a| a.kind == ResourceKind::Volume);
    for a in owned {
        let keep_it = match a.kind {
            ResourceKind::Volume => !delete_volumes,
            // The volumes live in the project: it can only go with them.
            ResourceKind::Project => volumes_kept,
            _ => false,
        };
        if keep_it {
            keep.push(a)
        } else {
            delete.push(a)
        }
    }
    let wiring = super::wiring::removal(client, config).await?;
    Ok(DestroyPlan {
        wiring,
        delete,
        keep,
    })
}

/// Deletes what `plan` lists. The project goes last, with the images in it and the state
/// bucket, and only when nothing foreign is left in it.
pub async fn apply(
    client: &Client,
    config: &Config,
    plan: &DestroyPlan,
    progress: &dyn Progress,
) -> Result<u64, EngineError> {
    let w0 = client.writes();
    let root = client.in_project("default");
    let project = client.in_project(&config.incus.project);
    let task = progress.task("destroy", Some(plan.delete.len() as u64));
    // First: what atlas set on the server is recorded in the project, which the loop below
    // may delete (undone after it, the server kept core.https_address, the logging keys and
    // the trusted metrics certificate).
    if let Err(e) = super::wiring::remove(client, config).await {
        task.fail(&e.to_string());
        return Err(e.into());
    }
    let with_snapshots = true;
    task.set_message("server wiring");
    if let Err(e) = super::wiring::remove(client, config).await {
        task.fail(&e.to_string());
        return Err(e.into());
    }
    for a in &plan.delete {
        task.set_message(&a.to_string());
        if a.kind == ResourceKind::Project {
            clear_project(&project, config).await?;
        }
        if let Err(e) = converge::delete(&root, &project, a, with_snapshots).await {
            task.fail(&e.to_string());
            return Err(e);
        }
        task.advance(1);
    }
    task.finish(&format!(
        "{} removed, {} kept",
        plan.delete.len(),
        plan.keep.len()
    ));
    Ok(client.writes() - w0)
}

/// Empties the project of what only atlas put there (images, the state bucket); a foreign
/// instance, profile or volume left in it makes the project deletion fail with its name.
async fn clear_project(project: &Client, config: &Config) -> Result<(), EngineError> {
    let pool = &config.incus.storage_pool;
    if project
        .get_bucket(pool, STATE_BUCKET)
        .await
        .optional()?
        .is_some()
    {
        project.delete_bucket(pool, STATE_BUCKET).await?;
    }
    for img in project.images().await? {
        project
            .delete_image(&img.fingerprint)
            .await
            .map_err(|e| EngineError::incus_at(format!("image {}", img.fingerprint), e))?;
    }
    let leftovers: Vec<String> = project
        .instances()
        .await?
        .into_iter()
        .map(|i| format!("instance {}", i.name))
        .chain(
            project
                .profiles()
                .await?
                .into_iter()
                .filter(|p| p.name != "default")
                .map(|p| format!("profile {}", p.name)),
        )
        .chain(
            project
                .volumes(pool)
                .await?
                .into_iter()
                .map(|v| format!("volume {pool}/{}", v.name)),
        )
        .collect();
    if !leftovers.is_empty() {
        return Err(EngineError::object(
            format!("project {}", config.incus.project),
            format!(
                "still holds objects atlas-install does not own ({}); remove or move them, then run destroy again",
                leftovers.join(", ")
            ),
        ));
    }
    Ok(())
}
