//! `msbvm volume create|ls|rm`: named volumes (directories msbvm manages under
//! `$MSBVM_HOME/volumes/`), mounted with `msbvm run -v NAME:/path`.

use clap::{Args, Subcommand};
use msbvm_sdk::{volumes, Error};

/// The `volume` subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum VolumeCommand {
    /// Create a named volume (no error if it exists).
    Create {
        /// The volume's name.
        name: String,
    },
    /// List named volumes.
    Ls(VolumeLsArgs),
    /// Remove named volumes and their data (refused while a sandbox uses one).
    Rm {
        /// The volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Arguments of `msbvm volume ls`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct VolumeLsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs a `volume` subcommand; returns the exit status.
pub fn run(command: VolumeCommand) -> Result<u8, Error> {
    let home = msbvm_sdk::msbvm_home()?;
    match command {
        VolumeCommand::Create { name } => {
            let v = volumes::create(&home, &name)?;
            println!("{}", v.name);
            Ok(0)
        }
        VolumeCommand::Ls(args) => {
            let list = volumes::list(&home)?;
            if args.json {
                let json = serde_json::to_string_pretty(&list)
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                println!("{json}");
            } else {
                println!("{:<24} {:<7} PATH", "NAME", "IN USE");
                for v in list {
                    let used = if v.in_use { "yes" } else { "no" };
                    println!("{:<24} {:<7} {}", v.name, used, v.data.display());
                }
            }
            Ok(0)
        }
        VolumeCommand::Rm { names } => {
            let mut status = 0;
            for name in names {
                match volumes::remove(&home, &name) {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("msbvm: error: {e}");
                        status = 1;
                    }
                }
            }
            Ok(status)
        }
    }
}
