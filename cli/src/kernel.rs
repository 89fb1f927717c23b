//! `msbvm kernel`: build the shared guest kernel and say where it is.
//!
//! Both subcommands default to the host's architecture, the only one a sandbox here can run;
//! `--arch` prepares or finds the other one (an arm64 `Image` cross-built on an x86_64 host).

use std::process::ExitCode;

use clap::Subcommand;
use msbvm_kernel::Arch;

/// Kernel subcommands.
#[derive(Subcommand)]
pub enum KernelCommand {
    /// Build the guest kernel from the distribution's kernel source (cached; a no-op when built).
    Build {
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
        /// Architecture to build for: x86_64 (amd64) or arm64 (aarch64); default: this host's.
        #[arg(long, value_name = "ARCH")]
        arch: Option<Arch>,
    },
    /// Print the path of the built guest kernel image (fails if it is not built).
    Path {
        /// Architecture of the image: x86_64 (amd64) or arm64 (aarch64); default: this host's.
        #[arg(long, value_name = "ARCH")]
        arch: Option<Arch>,
    },
}

/// Runs a kernel subcommand.
pub fn run(cmd: KernelCommand) -> ExitCode {
    match cmd {
        KernelCommand::Build { quiet, arch } => {
            let progress = if quiet {
                msbvm_kernel::Progress::Quiet
            } else {
                msbvm_kernel::Progress::auto()
            };
            match msbvm_kernel::build_for(arch.unwrap_or_default(), progress) {
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
        KernelCommand::Path { arch } => {
            match msbvm_kernel::find_built_for(arch.unwrap_or_default()) {
                Ok(Some(path)) => {
                    println!("{}", path.display());
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    // Repeat the user's --arch so the suggested command builds the same image.
                    let build = match arch {
                        Some(arch) => format!("msbvm kernel build --arch {arch}"),
                        None => "msbvm kernel build".to_string(),
                    };
                    eprintln!("msbvm: the guest kernel is not built yet; run `{build}`");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("msbvm: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
