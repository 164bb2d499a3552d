//! `atlas-install config init|show|validate`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use atlas_install::config::{self, ConfigError};

use super::Context;
use crate::cli::ConfigCommand;
use crate::printer::Printer;

pub fn run(ctx: &Context, cmd: ConfigCommand) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::Init { out, force } => init(ctx.printer, &out, force),
        ConfigCommand::Show => show(ctx),
        ConfigCommand::Validate => validate(ctx),
    }
}

/// Writes the commented defaults. Refuses to replace a file unless told to: it may hold the
/// operator's only copy of their settings.
fn init(printer: &Printer, out: &Path, force: bool) -> Result<ExitCode> {
    if out.exists() && !force {
        bail!(
            "{} already exists; nothing was written (use --force to overwrite it)",
            out.display()
        );
    }
    write_file(out, config::DEFAULT_FILE.as_bytes())
        .with_context(|| format!("cannot write {}", out.display()))?;
    printer.note(format_args!(
        "wrote {} (every setting at its default; edit it, then run `atlas-install config validate`)",
        out.display()
    ));
    Ok(ExitCode::SUCCESS)
}

/// Written beside the target and renamed over it, so a failed write never leaves half a file.
fn write_file(out: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode; the file holds no secrets, so 0644 it is.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn show(ctx: &Context) -> Result<ExitCode> {
    let cfg = ctx.config()?;
    if ctx.printer.json_mode() {
        ctx.printer.json(&config::to_json(cfg))?;
    } else {
        ctx.printer.text(&config::to_toml(cfg))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(ctx: &Context) -> Result<ExitCode> {
    let printer = ctx.printer;
    let loaded = config::load(&ctx.load_options()?);
    match loaded {
        Ok(l) => {
            ctx.print_warnings(&l.warnings);
            if printer.json_mode() {
                printer.line(
                    serde_json::json!({ "ok": true, "file": l.source_name, "warnings": l.warnings }),
                )?;
            } else {
                printer.line(format_args!("ok: {}", l.source_name))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ConfigError::Invalid {
            origin,
            diagnostics,
        }) => {
            if printer.json_mode() {
                printer.line(
                    serde_json::json!({ "ok": false, "file": origin, "problems": diagnostics }),
                )?;
            }
            let n = diagnostics.len();
            for d in &diagnostics {
                printer.note(format_args!("error: {d}"));
            }
            printer.note(format_args!(
                "{origin}: {n} problem{} found; nothing was changed",
                if n == 1 { "" } else { "s" }
            ));
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
