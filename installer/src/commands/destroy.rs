//! `atlas-install destroy [--delete-volumes]`: removes what atlas owns, in reverse order.

use std::process::ExitCode;

use anyhow::Result;
use atlas_install::engine::destroy;

use super::Context;
use crate::cli::DestroyArgs;

pub fn run(ctx: &Context, args: &DestroyArgs) -> Result<ExitCode> {
    let printer = ctx.printer;
    ctx.deployment()?;
    let (config, client) = (ctx.config()?, ctx.client()?);
    let _lock = ctx.lock("destroy")?;
    let plan = ctx.block_on(destroy::plan(client, config, args.delete_volumes))??;
    let shown = plan.to_string();
    if printer.json_mode() {
        printer.note_text(&shown);
    } else {
        printer.text(&shown)?;
    }
    if plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let what = if args.delete_volumes {
        "destroy these objects, data volumes included"
    } else {
        "destroy these objects"
    };
    if !printer.confirm(what)? {
        printer.note("Cancelled. Nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let writes = ctx.block_on(destroy::apply(client, config, &plan, ctx.progress()))??;
    if printer.json_mode() {
        printer.line(
            serde_json::json!({"destroyed": plan.delete, "kept": plan.keep, "wiring": plan.wiring, "writes": writes}),
        )?;
    } else {
        printer.note(format_args!(
            "Destroyed {} objects ({writes} writing API calls); kept {}.",
            plan.delete.len(),
            plan.keep.len()
        ));
    }
    Ok(ExitCode::SUCCESS)
}
