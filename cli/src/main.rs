//! `msbvm`: run Linux microVMs from the command line.
//!
//! Today it boots a kernel (`msbvm boot`) and manages the shared guest kernel
//! (`msbvm kernel build|path`); sandboxes, exec and images build on this.

mod boot;
mod kernel;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "msbvm", version, about = "Disposable Linux microVM sandboxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel in a microVM with the console on stdout.
    Boot(boot::BootArgs),
    /// Manage the shared guest kernel.
    #[command(subcommand)]
    Kernel(kernel::KernelCommand),
}

fn main() -> ExitCode {
    // Boot times are measured from here, the earliest point the VMM controls.
    let start = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MSBVM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Boot(args) => boot::run(args, start),
        Command::Kernel(cmd) => kernel::run(cmd),
    }
}
