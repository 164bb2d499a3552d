//! `atlas-install backup snapshot|list|export|restore`: the seed's BACKUP.md operations on
//! the Atlas data volumes. `--json` puts each result on stdout.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use atlas_install::engine::backup::{self, VolumeListing, VolumeSet};

use crate::cli::{BackupCommand, GlobalArgs};

pub fn run(cmd: BackupCommand, global: &GlobalArgs) -> Result<ExitCode> {
    match cmd {
        BackupCommand::Snapshot { name } => snapshot(global, name.as_deref()),
        BackupCommand::List => list(global),
        BackupCommand::Export { out } => export(global, &out),
        BackupCommand::Restore { dir } => restore(global, &dir),
    }
}

fn json_out(value: &impl serde::Serialize) -> Result<()> {
    super::plan::print(&format!("{}\n", serde_json::to_string_pretty(value)?));
    Ok(())
}

fn snapshot(global: &GlobalArgs, name: Option<&str>) -> Result<ExitCode> {
    if let Some(n) = name {
        // Before connecting: a bad name is the operator's to fix, whatever Incus holds.
        backup::check_snapshot_name(n)?;
    }
    let ctx = super::install::Ctx::new(global)?;
    let _lock = ctx.lock(global, "backup snapshot")?;
    let set = VolumeSet::from_config(&ctx.config);
    let taken = ctx.runtime.block_on(backup::snapshot(
        &ctx.client,
        &set,
        name,
        ctx.progress.as_ref(),
    ))?;
    if global.json {
        json_out(&serde_json::json!({ "snapshots": taken }))?;
    } else {
        for t in &taken {
            eprintln!("Snapshot {}/{}", t.volume, t.snapshot);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(global: &GlobalArgs) -> Result<ExitCode> {
    let ctx = super::install::Ctx::new(global)?;
    let set = VolumeSet::from_config(&ctx.config);
    let listing = ctx.runtime.block_on(backup::list(&ctx.client, &set))?;
    if global.json {
        json_out(
            &serde_json::json!({ "project": set.project, "pool": set.pool, "volumes": listing }),
        )?;
    } else {
        super::plan::print(&table(&listing));
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per snapshot: volume, instance, snapshot, created, expires.
fn table(listing: &[VolumeListing]) -> String {
    let mut rows = vec![[
        "VOLUME".to_string(),
        "INSTANCE".to_string(),
        "SNAPSHOT".to_string(),
        "CREATED".to_string(),
        "EXPIRES".to_string(),
    ]];
    for v in listing {
        let volume = match v.used_bytes {
            Some(b) => format!("{} ({})", v.volume, human_bytes(b)),
            None => v.volume.clone(),
        };
        if !v.exists || v.snapshots.is_empty() {
            let note = if v.exists { "(none)" } else { "(no volume)" };
            rows.push([
                volume,
                v.instance.clone(),
                note.into(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        for s in &v.snapshots {
            rows.push([
                volume.clone(),
                v.instance.clone(),
                s.name.clone(),
                s.created_at.clone().unwrap_or_default(),
                s.expires_at.clone().unwrap_or_else(|| "never".into()),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", line.join("  ").trim_end())
        })
        .collect()
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn export(global: &GlobalArgs, out: &Path) -> Result<ExitCode> {
    let ctx = super::install::Ctx::new(global)?;
    let _lock = ctx.lock(global, "backup export")?;
    let set = VolumeSet::from_config(&ctx.config);
    let manifest = ctx.runtime.block_on(backup::export(
        &ctx.client,
        &set,
        out,
        ctx.progress.as_ref(),
    ))?;
    if global.json {
        json_out(&manifest)?;
    } else {
        for e in &manifest.volumes {
            eprintln!(
                "{}: {} ({}, sha256 {})",
                e.volume,
                out.join(&e.file).display(),
                human_bytes(e.size),
                e.sha256
            );
        }
        eprintln!(
            "Exported {} volumes; manifest: {}",
            manifest.volumes.len(),
            out.join(backup::MANIFEST).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn restore(global: &GlobalArgs, dir: &Path) -> Result<ExitCode> {
    // Checked before anything is asked, connected to or touched.
    let manifest = backup::verify(dir, crate::ui::progress(global.progress).as_ref())?;
    let ctx = super::install::Ctx::new(global)?;
    let _lock = ctx.lock(global, "backup restore")?;
    let set = VolumeSet::from_config(&ctx.config);
    eprintln!(
        "Backup of project {} taken {} by atlas-install {}:",
        manifest.project, manifest.created_at, manifest.atlas_version
    );
    for e in &manifest.volumes {
        eprintln!("  {} (instance {}) from {}", e.volume, e.instance, e.file);
    }
    eprintln!(
        "Into project {} (pool {}): running instances using these volumes are stopped and \
         started again; the data each volume holds now is kept as snapshot pre-restore-<time>.",
        set.project, set.pool
    );
    if !super::install::confirm(global, "restore these volumes")? {
        eprintln!("Cancelled. Nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let report = ctx.runtime.block_on(backup::restore_verified(
        &ctx.client,
        &set,
        dir,
        manifest,
        ctx.progress.as_ref(),
    ))?;
    if global.json {
        json_out(&report.volumes)?;
    } else {
        for v in &report.volumes {
            match &v.safety_snapshot {
                Some(s) => eprintln!(
                    "Restored {}; its former data is in snapshot {}/{s}",
                    v.volume, v.volume
                ),
                None => eprintln!("Restored {} (created from the backup)", v.volume),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use atlas_install::engine::backup::SnapshotInfo;

    #[test]
    fn table_lists_each_snapshot_and_marks_missing_volumes() {
        let listing = vec![
            VolumeListing {
                volume: "grafana01-data".into(),
                instance: "grafana01".into(),
                exists: true,
                used_bytes: Some(3 * 1024 * 1024),
                snapshots: vec![SnapshotInfo {
                    name: "backup-1".into(),
                    created_at: Some("2026-11-26T14:00:00Z".into()),
                    expires_at: None,
                }],
            },
            VolumeListing {
                volume: "loki01-data".into(),
                instance: "loki01".into(),
                exists: false,
                used_bytes: None,
                snapshots: vec![],
            },
        ];
        let t = table(&listing);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].contains("grafana01-data (3.0 MiB)") && lines[1].contains("backup-1"));
        assert!(lines[1].ends_with("never"), "{t}");
        assert!(lines[2].contains("loki01-data") && lines[2].contains("(no volume)"));
    }
}
