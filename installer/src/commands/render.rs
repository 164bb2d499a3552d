//! `atlas-install render --out DIR`: every file that goes into a container, written as
//! `DIR/<instance>/<path in container>`, for review. Secrets land in 0600 files and are never
//! printed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use atlas_install::render::{Credentials, MqttCredential, RenderedSet};
use rand::Rng as _;
use rand::distr::Alphanumeric;

use super::Context;
use crate::cli::RenderArgs;

pub fn run(ctx: &Context, args: &RenderArgs) -> Result<ExitCode> {
    let config = ctx.config()?;
    // The installer keeps the generated secrets in Incus; until there is an installed stack
    // to read them from, `render` shows the files with freshly generated ones.
    let creds = fresh_credentials(&config.mosquitto.users);
    // Offline: the config as it lands on a single server.
    let deployment = atlas_install::deployment::Deployment::standalone(config);
    let set = atlas_install::render::render(&deployment, &creds)
        .context("rendering the service configuration")?;
    write_set(&set, &args.out)?;
    let files: usize = set.instances.values().map(|i| i.files.len()).sum();
    ctx.printer.note(format_args!(
        "Wrote {files} files for {} instances under {} (secrets are freshly generated and stored 0600; an install generates its own).",
        set.instances.len(),
        args.out.display()
    ));
    Ok(ExitCode::SUCCESS)
}

fn fresh_credentials(users: &[String]) -> Credentials {
    let mut rng = rand::rng();
    let mut password = || {
        (&mut rng)
            .sample_iter(Alphanumeric)
            .take(32)
            .map(char::from)
            .collect::<String>()
    };
    let grafana_admin_password = password();
    let step_ca_password = password();
    let mut mosquitto = BTreeMap::new();
    for u in users {
        let pw = password();
        mosquitto.insert(
            u.clone(),
            MqttCredential {
                password: pw,
                salt: rand::rng().random(),
            },
        );
    }
    Credentials {
        grafana_admin_password,
        step_ca_password,
        mosquitto,
    }
}

/// Marks a directory as `render` output; it lists what the previous run wrote.
const MARKER: &str = ".atlas-render";

/// Writes every file under `out/<instance>/`, plus `out/<instance>.service.toml` with the
/// environment (secret values left out) and the command line. A directory from an earlier
/// run is replaced, so instances that are gone leave nothing stale behind; any other non-empty
/// directory is refused untouched.
fn write_set(set: &RenderedSet, out: &Path) -> Result<()> {
    clear_previous(out)?;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let names: Vec<&str> = set.instances.keys().map(String::as_str).collect();
    write_file(
        &out.join(MARKER),
        format!("{}\n", names.join("\n")).as_bytes(),
        0o644,
    )?;
    for (name, inst) in &set.instances {
        let root = out.join(name);
        for f in &inst.files {
            let target = inside(&root, &f.path)?;
            let dir = target.parent().unwrap_or(&root);
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let mode = if f.secret { 0o600 } else { f.mode & 0o777 };
            write_file(&target, &f.contents, mode)?;
        }
        let mut toml = String::from(
            "# Service settings for this instance (not a file in the container).\n# Secret values are not written here.\n",
        );
        if let Some(cmd) = &inst.command {
            // What /proc/PID/cmdline of the service shows; the installer runs it through the
            // image's /etc/atlas/service.json (its environment, user and working directory).
            toml.push_str(&format!(
                "command = {}\n",
                serde_json::to_string(&cmd.argv)?
            ));
            if !cmd.wrapper.is_empty() {
                toml.push_str(&format!(
                    "# Started through the image's entrypoint script, which then execs the command.\nwrapper = {}\n",
                    serde_json::to_string(&cmd.wrapper)?
                ));
            }
        }
        toml.push_str("\n[environment]\n");
        for (k, v) in &inst.environment {
            let v = if inst.secret_env.contains(k) {
                "<secret, not written>"
            } else {
                v.as_str()
            };
            toml.push_str(&format!(
                "{} = {}\n",
                serde_json::to_string(k)?,
                serde_json::to_string(v)?
            ));
        }
        write_file(
            &out.join(format!("{name}.service.toml")),
            toml.as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

fn clear_previous(out: &Path) -> Result<()> {
    let Ok(mut entries) = fs::read_dir(out) else {
        return Ok(());
    };
    let marker = out.join(MARKER);
    if !marker.is_file() {
        if entries.next().is_some() {
            bail!(
                "{} is not empty and was not written by `atlas-install render`; choose an empty or new directory (nothing was changed)",
                out.display()
            );
        }
        return Ok(());
    }
    let previous =
        fs::read_to_string(&marker).with_context(|| format!("reading {}", marker.display()))?;
    for name in previous.lines().filter(|l| !l.is_empty()) {
        // Only plain instance names: a tampered marker must not point outside the directory.
        if name.contains('/') || name.starts_with('.') {
            bail!(
                "{} lists `{name}`, which is not an instance name; remove the directory yourself",
                marker.display()
            );
        }
        let dir = out.join(name);
        if dir.is_dir() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let service = out.join(format!("{name}.service.toml"));
        if service.is_file() {
            fs::remove_file(&service).with_context(|| format!("removing {}", service.display()))?;
        }
    }
    Ok(())
}

/// The container path under the instance's directory; refuses anything that would escape it.
fn inside(root: &Path, container_path: &str) -> Result<PathBuf> {
    let rel = Path::new(container_path);
    if !rel.is_absolute() || rel.components().any(|c| matches!(c, Component::ParentDir)) {
        bail!("refusing to write {container_path}: container paths must be absolute, without `..`");
    }
    Ok(root.join(rel.strip_prefix("/").unwrap_or(rel)))
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    // Create with the final mode, so a secret is never readable by others, even briefly.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its old mode on open: set it explicitly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
