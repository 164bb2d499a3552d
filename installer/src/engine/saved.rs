//! A plan saved by `plan --out FILE` and applied by `install --plan FILE`, as Terraform's
//! saved plans are: the file names the config and the state of Incus the plan was made
//! from, and `install --plan` applies it only while both are still what it finds. Anything
//! else is refused before the first write, with what moved and how to go on.
//!
//! The file holds no secret: the plan as `plan --json` shows it, and sha256 fingerprints.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;

use super::install::PlanReport;

/// Version of the file's layout.
const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format: u32,
    /// The atlas-install that made the plan: another one renders and hashes differently.
    pub atlas_version: String,
    /// sha256 of the config as loaded (file, environment and flags), see [`config_fingerprint`].
    pub config: String,
    /// [`PlanReport::fingerprint`]: what Incus held and what the plan decides.
    pub fingerprint: String,
    /// How the plan was made (`install --plan` must be run the same way).
    pub existing_images: bool,
    pub ignore_preflight: bool,
    /// The plan itself, for the reader (`plan --json` shows the same).
    pub plan: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("saved plan {path}: cannot read it: {reason}")]
    Read { path: String, reason: String },
    #[error("saved plan {path}: not a plan saved by `atlas-install plan --out` ({reason})")]
    Invalid { path: String, reason: String },
    #[error(
        "saved plan {path} was made by atlas-install {made_by} (format {format}), this is \
         {this}: make the plan again with this binary (`atlas-install plan --out {path}`). \
         Nothing was changed"
    )]
    Version {
        path: String,
        made_by: String,
        format: u32,
        this: String,
    },
    #[error(
        "saved plan {path} was made {made}, but install now runs {now}: run install with the \
         same flags as the plan, or make the plan again. Nothing was changed"
    )]
    Flags {
        path: String,
        made: String,
        now: String,
    },
    #[error(
        "the config changed since plan {path} was saved (atlas.toml, ATLAS_* variables or \
         flags): review the change with `atlas-install plan --out {path}`, then install that \
         plan. Nothing was changed"
    )]
    ConfigChanged { path: String },
    #[error(
        "Incus changed since plan {path} was saved (an object atlas-install manages, an image \
         alias, or the server's state is no longer as planned): review what install would do \
         now with `atlas-install plan --out {path}`, then install that plan. Nothing was \
         changed"
    )]
    IncusChanged { path: String },
}

/// sha256 of the config as loaded, in its canonical JSON form.
pub fn config_fingerprint(config: &Config) -> String {
    let bytes = serde_json::to_vec(config).expect("the config always serializes");
    hex::encode(Sha256::digest(bytes))
}

fn flags(existing_images: bool, ignore_preflight: bool) -> String {
    let mut f: Vec<&str> = Vec::new();
    if existing_images {
        f.push("--existing-images");
    }
    if ignore_preflight {
        f.push("--ignore-preflight");
    }
    match f.is_empty() {
        true => "without --existing-images or --ignore-preflight".to_string(),
        false => format!("with {}", f.join(" ")),
    }
}

impl SavedPlan {
    pub fn new(
        config: &Config,
        report: &PlanReport,
        existing_images: bool,
        ignore_preflight: bool,
    ) -> SavedPlan {
        SavedPlan {
            format: FORMAT,
            atlas_version: crate::VERSION.to_string(),
            config: config_fingerprint(config),
            fingerprint: report.fingerprint.clone(),
            existing_images,
            ignore_preflight,
            plan: serde_json::to_value(report).unwrap_or_default(),
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    /// Reads `path` and checks it was made by this binary, run the same way.
    pub fn read(
        path: &Path,
        existing_images: bool,
        ignore_preflight: bool,
    ) -> Result<SavedPlan, SavedPlanError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SavedPlanError::Read {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let saved: SavedPlan =
            serde_json::from_str(&text).map_err(|e| SavedPlanError::Invalid {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if saved.format != FORMAT || saved.atlas_version != crate::VERSION {
            return Err(SavedPlanError::Version {
                path: shown,
                made_by: saved.atlas_version,
                format: saved.format,
                this: crate::VERSION.to_string(),
            });
        }
        if (saved.existing_images, saved.ignore_preflight) != (existing_images, ignore_preflight) {
            return Err(SavedPlanError::Flags {
                path: shown,
                made: flags(saved.existing_images, saved.ignore_preflight),
                now: flags(existing_images, ignore_preflight),
            });
        }
        Ok(saved)
    }

    /// Refuses when `config` is not the one the plan was made from.
    pub fn check_config(&self, path: &Path, config: &Config) -> Result<(), SavedPlanError> {
        match config_fingerprint(config) == self.config {
            true => Ok(()),
            false => Err(SavedPlanError::ConfigChanged {
                path: path.display().to_string(),
            }),
        }
    }

    /// Refuses when a plan made now (`report`) finds Incus other than the saved plan did,
    /// or decides otherwise: then the saved plan is not what would be applied.
    pub fn check_current(&self, path: &Path, report: &PlanReport) -> Result<(), SavedPlanError> {
        match report.fingerprint == self.fingerprint {
            true => Ok(()),
            false => Err(SavedPlanError::IncusChanged {
                path: path.display().to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fingerprint_follows_every_value() {
        let a = Config::builtin();
        let mut b = Config::builtin();
        assert_eq!(config_fingerprint(&a), config_fingerprint(&b));
        b.incus.project = "other".into();
        assert_ne!(config_fingerprint(&a), config_fingerprint(&b));
    }

    fn saved(dir: &Path) -> std::path::PathBuf {
        let s = SavedPlan {
            format: FORMAT,
            atlas_version: crate::VERSION.into(),
            config: config_fingerprint(&Config::builtin()),
            fingerprint: "f".into(),
            existing_images: true,
            ignore_preflight: false,
            plan: serde_json::json!({}),
        };
        let path = dir.join("plan.json");
        s.write(&path).unwrap();
        path
    }

    #[test]
    fn a_plan_is_read_back_only_by_this_binary_run_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = saved(dir.path());
        let s = SavedPlan::read(&path, true, false).expect("read back");
        s.check_config(&path, &Config::builtin())
            .expect("same config");
        let mut other = Config::builtin();
        other.caddy.http_port += 1;
        let e = s.check_config(&path, &other).unwrap_err();
        assert!(e.to_string().contains("the config changed"), "{e}");
        let e = SavedPlan::read(&path, false, false).unwrap_err();
        assert!(e.to_string().contains("with --existing-images"), "{e}");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text = text.replace(crate::VERSION, "0.0.0-other");
        std::fs::write(&path, text).unwrap();
        let e = SavedPlan::read(&path, true, false).unwrap_err();
        assert!(
            e.to_string().contains("made by atlas-install 0.0.0-other"),
            "{e}"
        );
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            SavedPlan::read(&path, true, false),
            Err(SavedPlanError::Invalid { .. })
        ));
    }
}
