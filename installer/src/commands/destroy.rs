//! `atlas-install destroy [--delete-volumes]`: removes what atlas owns, in reverse order.

use std::process::ExitCode;

use anyhow::Result;
use atlas_install::engine::destroy;

use crate::cli::{DestroyArgs, GlobalArgs};

pub fn run(global: &GlobalArgs, args: &DestroyArgs) -> Result<ExitCode> {
    let ctx = super::install::Ctx::new(global)?;
    let _lock = ctx.lock(global, "destroy")?;
    let plan =
        ctx.runtime
            .block_on(destroy::plan(&ctx.client, &ctx.config, args.delete_volumes))?;
    let shown = plan.to_string();
    if global.json {
        eprint!("{shown}");
    } else {
        super::plan::print(&shown);
    }
    if plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let what = if args.delete_volumes {
        "destroy these objects, data volumes included"
    } else {
        "destroy these objects"
    };
    if !super::install::confirm(global, what)? {
        eprintln!("Cancelled. Nothing was changed.");
        return Ok(ExitCode::FAILURE);
    }
    let writes = ctx.runtime.block_on(destroy::apply(
        &ctx.client,
        &ctx.config,
        &plan,
        ctx.progress.as_ref(),
    ))?;
    if global.json {
        super::plan::print(&format!(
            "{}\n",
            serde_json::json!({"destroyed": plan.delete, "kept": plan.keep, "wiring": plan.wiring, "writes": writes})
        ));
    } else {
        eprintln!(
            "Destroyed {} objects ({writes} writing API calls); kept {}.",
            plan.delete.len(),
            plan.keep.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
