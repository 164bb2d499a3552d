use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

use super::Context;
use crate::cli::Cli;

pub fn run(ctx: &Context, shell: clap_complete::Shell) -> Result<ExitCode> {
    // Generated into memory first: clap_complete panics on a closed pipe (`| head`).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "atlas-install", &mut buf);
    // A reader that stops early (`| head`) got what it wanted.
    match ctx.printer.bytes(&buf) {
        Err(e) if broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        other => other.map(|()| ExitCode::SUCCESS),
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}
