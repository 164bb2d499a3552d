//! One module per command; each takes its parsed arguments and returns an exit code.

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command, GlobalArgs};

mod backup;
mod bundle;
mod completions;
mod config;
mod destroy;
mod image;
mod install;
mod plan;
mod render;
mod sbom;
mod secret;
mod signature;
mod status;
mod upgrade;

pub fn run(cli: Cli) -> Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Completions { shell } => completions::run(shell),
        Command::Install(args) => install::run(&global, &args),
        Command::Plan(args) => plan::run(&global, &args),
        Command::Status => status::run(&global),
        Command::Destroy(args) => destroy::run(&global, &args),
        Command::Upgrade(args) => upgrade::run(&global, &args),
        Command::Rollback(args) => upgrade::rollback(&global, &args),
        Command::Render(args) => render::run(&global, &args),
        Command::Config(cmd) => config::run(cmd, &global),
        Command::Image(cmd) => image::run(cmd, &global),
        Command::Bundle(cmd) => bundle::run(cmd, &global),
        Command::Backup(cmd) => backup::run(cmd, &global),
        Command::Signature(cmd) => signature::run(cmd, &global),
        Command::Secret(cmd) => secret::run(cmd, &global),
    }
    .inspect(|_| drop(global))
}

/// The effective config for a command: defaults < file < ATLAS_* env < flags. Every problem
/// is reported at once; warnings (e.g. a token file others can read) go to stderr.
pub fn load_config(global: &GlobalArgs) -> Result<atlas_install::config::Config> {
    let loaded = atlas_install::config::load(&load_options(global)?)?;
    print_warnings(&loaded.warnings);
    Ok(loaded.config)
}

pub fn load_options(global: &GlobalArgs) -> Result<atlas_install::config::LoadOptions> {
    let mut env = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str().filter(|k| k.starts_with("ATLAS_")) else {
            continue;
        };
        let Some(v) = v.to_str() else {
            anyhow::bail!("environment variable {k} is not valid UTF-8");
        };
        env.push((k.to_string(), v.to_string()));
    }
    Ok(atlas_install::config::LoadOptions {
        file: global.config.clone(),
        cwd: std::env::current_dir().context("cannot determine the working directory")?,
        env,
        project: global.project.clone(),
        incus_socket: global
            .incus_socket
            .as_ref()
            .map(|p| p.display().to_string()),
    })
}

pub fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}
