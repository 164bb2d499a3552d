//! `atlas-install upgrade` and `rollback`: the install sequence with guarded, ordered
//! replacement of the services that change, and the way back to the previous install.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use atlas_install::engine::Options;

use super::Context;
use crate::cli::{RollbackArgs, UpgradeArgs};

pub fn run(ctx: &Context, args: &UpgradeArgs) -> Result<ExitCode> {
    let options = Options {
        upgrade: true,
        rotate_secrets: args.rotate_secrets,
        ..Options::default()
    };
    super::install::apply(ctx, &args.source, options)
}

pub fn rollback(ctx: &Context, args: &RollbackArgs) -> Result<ExitCode> {
    let printer = ctx.printer;
    let deployment = ctx.deployment()?;
    let _lock = ctx.lock("rollback")?;
    if !printer.confirm(
        "return every service changed by the last upgrade to its previous image, files and data",
    )? {
        printer.note("Cancelled. Nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let report = ctx.block_on(atlas_install::engine::upgrade::rollback(
        ctx.client()?,
        deployment,
        Duration::from_secs(args.health_timeout),
        ctx.progress(),
    ))??;
    if printer.json_mode() {
        printer.json(&report)?;
    } else {
        printer.note(format_args!(
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
        ));
    }
    Ok(ExitCode::SUCCESS)
}
