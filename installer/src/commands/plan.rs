//! `atlas-install plan`: preflight, then what `install` would change, from reads only.
//! `--detailed-exitcode` exits 0 without changes, 2 with changes, 3 when preflight finds
//! problems (install would refuse), 1 on any other error; `--json` prints the plan (or the
//! preflight problems) as JSON; `--out FILE` saves it for `install --plan FILE`.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use atlas_install::engine::saved::SavedPlan;
use atlas_install::engine::{EngineError, Options};

use crate::cli::{GlobalArgs, PlanArgs};

/// `--detailed-exitcode`: preflight found problems, so `install` would refuse.
const EXIT_PREFLIGHT: u8 = 3;

/// Preflight problems, as the plan's output: what `install` would refuse on, and how to fix it.
fn print_problems(json: bool, problems: &[String]) -> Result<()> {
    if json {
        let out = serde_json::json!({"preflight_problems": problems, "has_changes": null});
        print(&format!("{}\n", serde_json::to_string_pretty(&out)?));
        return Ok(());
    }
    let mut text = String::from(
        "Preflight found problems: `install` would refuse, and nothing was planned. Fix them, or pass --ignore-preflight where the problem is the host's size:\n",
    );
    for p in problems {
        text.push_str(&format!("  problem: {p}\n"));
    }
    print(&text);
    Ok(())
}

/// Writes to stdout (the plan is the command's output).
pub(super) fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

pub fn run(global: &GlobalArgs, args: &PlanArgs) -> Result<ExitCode> {
    let ctx = super::install::Ctx::new(global)?;
    // Plan reads only: the supply just tells the engine that missing images get built.
    let supply = match args.existing_images {
        true => None,
        false => Some(atlas_install::supply::ImageSupply {
            registry_mirror: None,
            download_mirror: None,
            insecure_registries: Vec::new(),
            cache_dir: atlas_image::cache::BlobCache::default_dir(),
            lock: atlas_image::lock::ImagesLock::embedded()?,
            layout: None,
        }),
    };
    let engine = ctx.engine(Options {
        ignore_preflight: args.ignore_preflight,
        supply,
        ..Options::default()
    });
    let w0 = ctx.client.writes();
    let report = match ctx.runtime.block_on(engine.plan()) {
        Err(EngineError::Preflight(problems)) => {
            print_problems(global.json, &problems)?;
            return Ok(ExitCode::from(match args.detailed_exitcode {
                true => EXIT_PREFLIGHT,
                false => 1,
            }));
        }
        other => other?,
    };
    let writes = ctx.client.writes() - w0;
    if global.json {
        let out = serde_json::json!({"report": report, "has_changes": report.has_changes(), "writes": writes});
        print(&format!("{}\n", serde_json::to_string_pretty(&out)?));
    } else {
        print(&report.to_string());
    }
    let conflicts = report.conflict_details();
    if !conflicts.is_empty() {
        return Err(atlas_install::engine::EngineError::Conflicts(conflicts).into());
    }
    if let Some(path) = &args.out {
        SavedPlan::new(
            &ctx.config,
            &report,
            args.existing_images,
            args.ignore_preflight,
        )
        .write(path)
        .with_context(|| format!("saving the plan to {}", path.display()))?;
        eprintln!(
            "Plan saved to {}: `atlas-install install --plan {}` applies exactly it.",
            path.display(),
            path.display()
        );
    }
    Ok(match (args.detailed_exitcode, report.has_changes()) {
        (true, true) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}
