//! `msbvm debug`: debugging aids, hidden from the main help.

use std::path::PathBuf;

use clap::Subcommand;
use msbvm_sdk::{Error, Sandbox};

/// The `debug` subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum DebugCommand {
    /// Write all of a running sandbox's guest RAM to FILE (a new file, mode 0600).
    ///
    /// A debugging aid, e.g. to check that a secret's value never reached the guest
    /// (`grep -c VALUE FILE` should print 0, while the placeholder appears). The file holds
    /// everything the guest had in memory: treat it like the guest's data. The guest keeps
    /// running while it is copied.
    DumpMemory {
        /// The sandbox.
        name: String,
        /// Where to write the dump (must not exist).
        file: PathBuf,
    },
}

/// Runs a `debug` subcommand.
pub async fn run(cmd: DebugCommand) -> Result<u8, Error> {
    match cmd {
        DebugCommand::DumpMemory { name, file } => {
            let sandbox = Sandbox::get(&name).await?;
            let bytes = sandbox.dump_memory(&file).await?;
            eprintln!(
                "msbvm: wrote {bytes} bytes of guest memory to {}",
                file.display()
            );
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: DebugCommand,
    }

    #[test]
    fn dump_memory_parses() {
        let cli = Cli::try_parse_from(["debug", "dump-memory", "box", "/tmp/mem.bin"]).unwrap();
        assert_eq!(
            cli.cmd,
            DebugCommand::DumpMemory {
                name: "box".into(),
                file: "/tmp/mem.bin".into()
            }
        );
        assert!(Cli::try_parse_from(["debug", "dump-memory", "box"]).is_err());
    }
}
