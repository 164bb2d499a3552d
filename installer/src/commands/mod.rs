//! One module per command; each takes the [`Context`] and its parsed arguments and returns
//! an exit code.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::printer::Printer;

mod backup;
mod bundle;
mod completions;
mod config;
mod context;
mod destroy;
mod image;
mod install;
mod plan;
mod render;
mod sbom;
mod secret;
mod signature;
mod status;
mod test_hooks;
mod upgrade;

pub use context::Context;

pub fn run(cli: Cli, printer: &Printer) -> Result<ExitCode> {
    let global = cli.global;
    let ctx = Context::new(&global, printer);
    match cli.command {
        Command::Completions { shell } => completions::run(&ctx, shell),
        Command::Install(args) => install::run(&ctx, &args),
        Command::Plan(args) => plan::run(&ctx, &args),
        Command::Status => status::run(&ctx),
        Command::Destroy(args) => destroy::run(&ctx, &args),
        Command::Upgrade(args) => upgrade::run(&ctx, &args),
        Command::Rollback(args) => upgrade::rollback(&ctx, &args),
        Command::Render(args) => render::run(&ctx, &args),
        Command::Config(cmd) => config::run(&ctx, cmd),
        Command::Image(cmd) => image::run(&ctx, cmd),
        Command::Bundle(cmd) => bundle::run(&ctx, cmd),
        Command::Backup(cmd) => backup::run(&ctx, cmd),
        Command::Signature(cmd) => signature::run(&ctx, cmd),
        Command::Secret(cmd) => secret::run(&ctx, cmd),
    }
}
