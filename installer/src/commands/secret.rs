//! `atlas-install secret list|get NAME`: the generated secrets, named, and one printed on
//! request. The only command that prints a secret; everything else redacts them.

use std::process::ExitCode;

use anyhow::Result;
use atlas_install::engine::secrets;

use super::Context;
use crate::cli::SecretCommand;

pub fn run(ctx: &Context, cmd: SecretCommand) -> Result<ExitCode> {
    let (config, client) = (ctx.config()?, ctx.client()?);
    let printer = ctx.printer;
    match cmd {
        SecretCommand::List => {
            let names = ctx.block_on(secrets::stored_names(client, config))??;
            if printer.json_mode() {
                printer.json(&names)?;
            } else {
                for n in names {
                    printer.line(n)?;
                }
            }
        }
        SecretCommand::Get { name } => {
            let value = ctx.block_on(secrets::stored_value(client, config, &name))??;
            if printer.json_mode() {
                printer.json(&serde_json::json!({"name": name, "value": value}))?;
            } else {
                printer.line(value)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
