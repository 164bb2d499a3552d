//! Repository tasks, bootc-style: `cargo xtask <task>` (alias in .cargo/config.toml).
//!
//! - `fixtures`: build the fixture "upstream" images and push them to a local registry
//!   (tests/fixtures/build-images.sh is the entry point CI and the README use).

mod fixtures;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "atlas-install repository tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the fixture images and push them (tests/fixtures/README.md).
    Fixtures(fixtures::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let result = match cli.task {
        Task::Fixtures(args) => fixtures::run(args, &repo_root),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cargo xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}
