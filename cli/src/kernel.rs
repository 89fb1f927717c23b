//! `msbvm kernel`: build the shared guest kernel and say where it is.

use std::process::ExitCode;

use clap::Subcommand;

/// Kernel subcommands.
#[derive(Subcommand)]
pub enum KernelCommand {
    /// Build the guest kernel from the distribution's kernel source (cached; a no-op when built).
    Build {
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print the path of the built guest kernel image (fails if it is not built).
    Path,
}

/// Runs a kernel subcommand.
pub fn run(cmd: KernelCommand) -> ExitCode {
    match cmd {
        KernelCommand::Build { quiet } => {
            let progress = if quiet {
                msbvm_kernel::Progress::Quiet
            } else {
                msbvm_kernel::Progress::auto()
            };
            match msbvm_kernel::build(progress) {
                Ok(path) => {
                    println!("{}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("msbvm: kernel build failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        KernelCommand::Path => match msbvm_kernel::find_built() {
            Ok(Some(path)) => {
                println!("{}", path.display());
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!("msbvm: the guest kernel is not built yet; run `msbvm kernel build`");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("msbvm: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
