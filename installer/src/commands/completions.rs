use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::Cli;

pub fn run(shell: clap_complete::Shell) -> Result<ExitCode> {
    // Generated into memory first: clap_complete panics on a closed pipe (`| head`).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "atlas-install", &mut buf);
    match std::io::stdout().lock().write_all(&buf) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => other
            .context("writing completions to stdout")
            .map(|_| ExitCode::SUCCESS),
    }
}
