//! `atlas-install plan`: preflight, then what `install` would change, from reads only.
//! `--detailed-exitcode` exits 0 without changes, 2 with changes, 3 when preflight finds
//! problems (install would refuse), 1 on any other error; `--json` prints the plan (or the
//! preflight problems) as JSON; `--out FILE` saves it for `install --plan FILE`.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use atlas_install::engine::saved::SavedPlan;
use atlas_install::engine::{EngineError, Options};
use atlas_install::supply::{ImageSettings, ImageSupply};

use super::Context;
use crate::cli::PlanArgs;
use crate::printer::Printer;

/// `--detailed-exitcode`: preflight found problems, so `install` would refuse.
const EXIT_PREFLIGHT: u8 = 3;

/// Preflight problems, as the plan's output: what `install` would refuse on, and how to fix it.
fn print_problems(printer: &Printer, problems: &[String]) -> Result<()> {
    if printer.json_mode() {
        let out = serde_json::json!({"preflight_problems": problems, "has_changes": null});
        return printer.json(&out);
    }
    let mut text = String::from(
        "Preflight found problems: `install` would refuse, and nothing was planned. Fix them, or pass --ignore-preflight where the problem is the host's size:\n",
    );
    for p in problems {
        text.push_str(&format!("  problem: {p}\n"));
    }
    printer.text(&text)
}

pub fn run(ctx: &Context, args: &PlanArgs) -> Result<ExitCode> {
    let printer = ctx.printer;
    ctx.deployment()?;
    // Plan reads only: the supply just tells the engine that missing images get built.
    let supply = match args.existing_images {
        true => None,
        false => Some(ImageSupply::from_settings(ImageSettings::default())?),
    };
    let engine = ctx.engine(Options {
        ignore_preflight: args.ignore_preflight,
        supply,
        ..Options::default()
    })?;
    let w0 = ctx.client()?.writes();
    let report = match ctx.block_on(engine.plan())? {
        Err(EngineError::Preflight(problems)) => {
            print_problems(printer, &problems)?;
            return Ok(ExitCode::from(match args.detailed_exitcode {
                true => EXIT_PREFLIGHT,
                false => 1,
            }));
        }
        other => other?,
    };
    let writes = ctx.client()?.writes() - w0;
    if printer.json_mode() {
        let out = serde_json::json!({"report": report, "has_changes": report.has_changes(), "writes": writes});
        printer.json(&out)?;
    } else {
        printer.text(&report.to_string())?;
    }
    let conflicts = report.conflict_details();
    if !conflicts.is_empty() {
        return Err(EngineError::Conflicts(conflicts).into());
    }
    if let Some(path) = &args.out {
        SavedPlan::new(
            ctx.config()?,
            &report,
            args.existing_images,
            args.ignore_preflight,
        )
        .write(path)
        .with_context(|| format!("saving the plan to {}", path.display()))?;
        printer.note(format_args!(
            "Plan saved to {}: `atlas-install install --plan {}` applies exactly it.",
            path.display(),
            path.display()
        ));
    }
    Ok(match (args.detailed_exitcode, report.has_changes()) {
        (true, true) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}
