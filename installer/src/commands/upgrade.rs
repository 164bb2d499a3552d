//! `atlas-install upgrade` and `rollback`: the install sequence with guarded, ordered
//! replacement of the services that change, and the way back to the previous install.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use atlas_install::engine::Options;

use super::install::{Ctx, confirm};
use crate::cli::{GlobalArgs, RollbackArgs, UpgradeArgs};

pub fn run(global: &GlobalArgs, args: &UpgradeArgs) -> Result<ExitCode> {
    let options = Options {
        upgrade: true,
        rotate_secrets: args.rotate_secrets,
        ..Options::default()
    };
    super::install::apply(global, &args.source, options)
}

pub fn rollback(global: &GlobalArgs, args: &RollbackArgs) -> Result<ExitCode> {
    let ctx = Ctx::new(global)?;
    let _lock = ctx.lock(global, "rollback")?;
    if !confirm(
        global,
        "return every service changed by the last upgrade to its previous image, files and data",
    )? {
        eprintln!("Cancelled. Nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let report = ctx
        .runtime
        .block_on(atlas_install::engine::upgrade::rollback(
            &ctx.client,
            &ctx.deployment,
            Duration::from_secs(args.health_timeout),
            ctx.progress.as_ref(),
        ))?;
    if global.json {
        super::plan::print(&format!("{}\n", serde_json::to_string_pretty(&report)?));
    } else {
        eprintln!(
            "Rolled back from {} to {}: {}. The data from before the rollback is kept in {}.",
            report.from,
            report.to,
            report.instances.join(", "),
            report
                .safety_snapshots
                .iter()
                .map(|(v, s)| format!("{v}/{s}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
