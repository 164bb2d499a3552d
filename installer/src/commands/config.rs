//! `atlas-install config init|show|validate`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use atlas_install::config::{self, ConfigError};

use crate::cli::{ConfigCommand, GlobalArgs};

pub fn run(cmd: ConfigCommand, global: &GlobalArgs) -> Result<ExitCode> {
    match cmd {
        ConfigCommand::Init { out, force } => init(&out, force),
        ConfigCommand::Show => show(global),
        ConfigCommand::Validate => validate(global),
    }
}

/// Writes the commented defaults. Refuses to replace a file unless told to: it may hold the
/// operator's only copy of their settings.
fn init(out: &Path, force: bool) -> Result<ExitCode> {
    if out.exists() && !force {
        bail!(
            "{} already exists; nothing was written (use --force to overwrite it)",
            out.display()
        );
    }
    write_file(out, config::DEFAULT_FILE.as_bytes())
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote {} (every setting at its default; edit it, then run `atlas-install config validate`)",
        out.display()
    );
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

fn show(global: &GlobalArgs) -> Result<ExitCode> {
    let cfg = super::load_config(global)?;
    let mut stdout = std::io::stdout().lock();
    if global.json {
        serde_json::to_writer_pretty(&mut stdout, &config::to_json(&cfg))?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", config::to_toml(&cfg))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn validate(global: &GlobalArgs) -> Result<ExitCode> {
    let loaded = config::load(&super::load_options(global)?);
    match loaded {
        Ok(l) => {
            super::print_warnings(&l.warnings);
            let mut stdout = std::io::stdout().lock();
            if global.json {
                writeln!(
                    stdout,
                    "{}",
                    serde_json::json!({ "ok": true, "file": l.source_name, "warnings": l.warnings })
                )?;
            } else {
                writeln!(stdout, "ok: {}", l.source_name)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ConfigError::Invalid {
            origin,
            diagnostics,
        }) => {
            if global.json {
                let v = serde_json::json!({ "ok": false, "file": origin, "problems": diagnostics });
                writeln!(std::io::stdout().lock(), "{v}")?;
            }
            let n = diagnostics.len();
            let mut stderr = std::io::stderr().lock();
            for d in &diagnostics {
                writeln!(stderr, "error: {d}")?;
            }
            writeln!(
                stderr,
                "{origin}: {n} problem{} found; nothing was changed",
                if n == 1 { "" } else { "s" }
            )?;
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
