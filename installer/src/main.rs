//! The `atlas-install` binary: a thin edge over the library. Parses the command line,
//! installs the process-wide TLS provider, draws progress, and turns errors into messages
//! and exit codes.

mod cli;
mod commands;
mod printer;
mod ui;

use std::process::ExitCode;

use clap::Parser;

fn version_string() -> &'static str {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("ATLAS_GIT_COMMIT"),
        ")"
    )
}

fn main() -> ExitCode {
    // One TLS stack and one crypto provider for the whole process (reqwest, oci-client, Incus).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = cli::Cli::parse();
    let printer = printer::Printer::new(&cli.global);
    match commands::run(cli, &printer) {
        Ok(code) => code,
        Err(err) => {
            printer.error(&err);
            ExitCode::FAILURE
        }
    }
}
