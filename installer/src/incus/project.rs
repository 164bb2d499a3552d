//! Projects (`/1.0/projects`). Server-wide: never take `?project=`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, Etagged, Scope, nullable};
use super::error::IncusError;
use super::resource::Collection;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub description: String,
    #[serde(default, deserialize_with = "nullable")]
    pub config: BTreeMap<String, String>,
    #[serde(default, skip_serializing, deserialize_with = "nullable")]
    pub used_by: Vec<String>,
    /// Fields this client does not know, kept so an update sends them back unchanged.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl Project {
    pub fn new(name: &str) -> Project {
        Project {
            name: name.to_string(),
            ..Project::default()
        }
    }
}

const PROJECTS: Collection = Collection::new("/1.0/projects", Scope::Global, &[]);

impl Client {
    pub async fn projects(&self) -> Result<Vec<Project>, IncusError> {
        PROJECTS.list(self).await
    }

    pub async fn get_project(&self, name: &str) -> Result<Etagged<Project>, IncusError> {
        PROJECTS.get(self, name).await
    }

    /// A duplicate answers [`IncusError::AlreadyExists`].
    pub async fn create_project(&self, project: &Project) -> Result<(), IncusError> {
        PROJECTS.create(self, project).await.map(|_| ())
    }

    pub async fn update_project(
        &self,
        project: &Project,
        etag: Option<&str>,
    ) -> Result<(), IncusError> {
        PROJECTS.update(self, &project.name, project, etag).await
    }

    /// Sets `set` and removes `unset` among the project's config keys, leaving the others,
    /// under the ETag just read (a concurrent change answers
    /// [`IncusError::PreconditionFailed`]).
    pub async fn set_project_keys(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        unset: &[&str],
    ) -> Result<(), IncusError> {
        let got = self.get_project(name).await?;
        let mut next = got.value;
        next.config.extend(set.clone());
        for k in unset {
            next.config.remove(*k);
        }
        self.update_project(&next, got.etag.as_deref()).await
    }

    pub async fn delete_project(&self, name: &str) -> Result<(), IncusError> {
        PROJECTS.delete(self, name).await
    }
}
