//! `atlas-install backup snapshot|list|export|restore`: the seed's BACKUP.md operations on
//! the Atlas data volumes. `--json` puts each result on stdout.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use atlas_install::engine::backup::{self, VolumeListing, VolumeSet};

use super::Context;
use crate::cli::BackupCommand;

pub fn run(ctx: &Context, cmd: BackupCommand) -> Result<ExitCode> {
    match cmd {
        BackupCommand::Snapshot { name } => snapshot(ctx, name.as_deref()),
        BackupCommand::List => list(ctx),
        BackupCommand::Export { out } => export(ctx, &out),
        BackupCommand::Restore { dir } => restore(ctx, &dir),
    }
}

fn snapshot(ctx: &Context, name: Option<&str>) -> Result<ExitCode> {
    if let Some(n) = name {
        // Before connecting: a bad name is the operator's to fix, whatever Incus holds.
        backup::check_snapshot_name(n)?;
    }
    ctx.deployment()?;
    let _lock = ctx.lock("backup snapshot")?;
    let set = VolumeSet::from_config(ctx.config()?);
    let taken = ctx.block_on(backup::snapshot(ctx.client()?, &set, name, ctx.progress()))??;
    if ctx.printer.json_mode() {
        ctx.printer
            .json(&serde_json::json!({ "snapshots": taken }))?;
    } else {
        for t in &taken {
            ctx.printer
                .note(format_args!("Snapshot {}/{}", t.volume, t.snapshot));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(ctx: &Context) -> Result<ExitCode> {
    ctx.deployment()?;
    let set = VolumeSet::from_config(ctx.config()?);
    let listing = ctx.block_on(backup::list(ctx.client()?, &set))??;
    if ctx.printer.json_mode() {
        ctx.printer.json(
            &serde_json::json!({ "project": set.project, "pool": set.pool, "volumes": listing }),
        )?;
    } else {
        ctx.printer.text(&table(&listing))?;
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

fn export(ctx: &Context, out: &Path) -> Result<ExitCode> {
    let printer = ctx.printer;
    ctx.deployment()?;
    let _lock = ctx.lock("backup export")?;
    let set = VolumeSet::from_config(ctx.config()?);
    let manifest = ctx.block_on(backup::export(ctx.client()?, &set, out, ctx.progress()))??;
    if printer.json_mode() {
        printer.json(&manifest)?;
        return Ok(ExitCode::SUCCESS);
    }
    for e in &manifest.volumes {
        printer.note(format_args!(
            "{}: {} ({}, sha256 {})",
            e.volume,
            out.join(&e.file).display(),
            human_bytes(e.size),
            e.sha256
        ));
    }
    printer.note(format_args!(
        "Exported {} volumes; manifest: {}",
        manifest.volumes.len(),
        out.join(backup::MANIFEST).display()
    ));
    Ok(ExitCode::SUCCESS)
}

fn restore(ctx: &Context, dir: &Path) -> Result<ExitCode> {
    let printer = ctx.printer;
    // Checked before anything is asked, connected to or touched.
    let manifest = backup::verify(dir, ctx.progress())?;
    ctx.deployment()?;
    let _lock = ctx.lock("backup restore")?;
    let set = VolumeSet::from_config(ctx.config()?);
    printer.note(format_args!(
        "Backup of project {} taken {} by atlas-install {}:",
        manifest.project, manifest.created_at, manifest.atlas_version
    ));
    for e in &manifest.volumes {
        printer.note(format_args!(
            "  {} (instance {}) from {}",
            e.volume, e.instance, e.file
        ));
    }
    printer.note(format_args!(
        "Into project {} (pool {}): running instances using these volumes are stopped and \
         started again; the data each volume holds now is kept as snapshot pre-restore-<time>.",
        set.project, set.pool
    ));
    if !printer.confirm("restore these volumes")? {
        printer.note("Cancelled. Nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let report = ctx.block_on(backup::restore_verified(
        ctx.client()?,
        &set,
        dir,
        manifest,
        ctx.progress(),
    ))??;
    if printer.json_mode() {
        printer.json(&report.volumes)?;
        return Ok(ExitCode::SUCCESS);
    }
    for v in &report.volumes {
        match &v.safety_snapshot {
            Some(s) => printer.note(format_args!(
                "Restored {}; its former data is in snapshot {}/{s}",
                v.volume, v.volume
            )),
            None => printer.note(format_args!(
                "Restored {} (created from the backup)",
                v.volume
            )),
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
