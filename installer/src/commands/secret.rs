//! `atlas-install secret list|get NAME`: the generated secrets, named, and one printed on
//! request. The only command that prints a secret; everything else redacts them.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use atlas_install::engine::secrets;
use atlas_install::incus::Client;

use crate::cli::{GlobalArgs, SecretCommand};

pub fn run(cmd: SecretCommand, global: &GlobalArgs) -> Result<ExitCode> {
    let config = super::load_config(global)?;
    let client = Client::from_config(&config.incus).context("connecting to Incus")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut out = std::io::stdout().lock();
    match cmd {
        SecretCommand::List => {
            let names = rt.block_on(secrets::stored_names(&client, &config))?;
            if global.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&names)?)?;
            } else {
                for n in names {
                    writeln!(out, "{n}")?;
                }
            }
        }
        SecretCommand::Get { name } => {
            let value = rt.block_on(secrets::stored_value(&client, &config, &name))?;
            if global.json {
                let v = serde_json::json!({"name": name, "value": value});
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(out, "{value}")?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
