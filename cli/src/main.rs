//! `msbvm`: disposable Linux microVM sandboxes from the command line.
//!
//! Sandboxes: `run`, `exec`, `ls`, `stop`, `rm`, `logs`, `cp` (on top of `msbvm-sdk`). Low level:
//! `boot` boots a kernel with the console on stdout, `kernel` manages the shared guest kernel.
//! The hidden `__runtime` subcommand is the per-sandbox runtime process the SDK starts.
//!
//! Exit status of the sandbox commands: the guest command's own (`run`, `exec`); 128 + N for
//! a signal N; 124 for a timeout; 125 when msbvm itself failed, with the message on stderr.

mod boot;
mod cp;
mod debug;
mod events;
mod images;
mod kernel;
mod manage;
mod net;
mod net_rule_opts;
mod run;
mod sandbox_opts;
mod secret_opts;
mod session;
mod snapshot;
mod tty;
mod volume;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Instant;

use clap::{CommandFactory, Parser, Subcommand};

/// Exit status when msbvm itself fails (as `docker run` does).
const MSBVM_ERROR: u8 = 125;

/// The subcommands whose errors exit with [`MSBVM_ERROR`].
const SANDBOX_COMMANDS: [&str; 18] = [
    "run", "exec", "ls", "stop", "rm", "logs", "cp", "pull", "images", "rmi", "volume", "import",
    "net", "events", "emit", "request", "snapshot", "fork",
];

#[derive(Parser)]
#[command(name = "msbvm", version, about = "Disposable Linux microVM sandboxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a sandbox and run a command in it (removed afterwards unless -d).
    Run(Box<run::RunArgs>),
    /// Run a command in a running sandbox.
    Exec(run::ExecArgs),
    /// List sandboxes.
    Ls(manage::LsArgs),
    /// Stop sandboxes (the guest shuts down; forced off after a timeout).
    Stop(manage::StopArgs),
    /// Remove sandboxes, stopping them first.
    Rm(manage::RmArgs),
    /// Make a sandbox that another sandbox spawned the host's own (it no longer stops with
    /// its parent, and the parent can no longer reach it).
    Detach(manage::DetachArgs),
    /// Show a sandbox's guest console and runtime log.
    Logs(manage::LogsArgs),
    /// Copy files or directories between the host and a sandbox (SANDBOX:PATH).
    Cp(cp::CpArgs),
    /// Print the events a running sandbox's programs send (`-f` to follow).
    Events(events::EventsArgs),
    /// Send an event to a running sandbox's programs.
    Emit(events::EmitArgs),
    /// Send an event and print the guest's reply.
    Request(events::RequestArgs),
    /// Pull an image from an OCI or Docker registry into the local store.
    Pull(images::PullArgs),
    /// Import an OCI image layout directory or a `docker save` tarball.
    Import(images::ImportArgs),
    /// List the images in the local store.
    Images(images::ImagesArgs),
    /// Remove images (their layers go once no other image or sandbox uses them).
    Rmi(images::RmiArgs),
    /// The network of a running sandbox: policy, published ports, events, counters.
    #[command(subcommand)]
    Net(net::NetCommand),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Snapshot running sandboxes; list, inspect and remove snapshots.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Start sandboxes from a snapshot (running at once, with their own identity).
    Fork(snapshot::ForkArgs),
    /// Boot a kernel in a microVM with the console on stdout.
    Boot(boot::BootArgs),
    /// Manage the shared guest kernel.
    #[command(subcommand)]
    Kernel(kernel::KernelCommand),
    /// Debugging aids (`msbvm debug dump-memory NAME FILE`).
    #[command(subcommand, hide = true)]
    Debug(debug::DebugCommand),
    /// A sandbox's spawn service (started by its runtime, not by people).
    #[command(name = "__spawner", hide = true, disable_help_flag = true)]
    Spawner {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// A sandbox's plugin host (started by its runtime, not by people).
    #[command(name = "__plugins", hide = true, disable_help_flag = true)]
    Plugins {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The per-sandbox runtime process (started by the SDK, not by people).
    #[command(name = "__runtime", hide = true, disable_help_flag = true)]
    Runtime {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// Checks clap cannot express: a mistyped option before the command would otherwise be taken
/// as the command itself (the command may begin without `--`).
fn check(cli: Cli) -> Result<Cli, clap::Error> {
    let command = match &cli.command {
        Command::Run(r) => &r.process.command,
        Command::Exec(e) => &e.process.command,
        _ => return Ok(cli),
    };
    match command.first() {
        Some(first) if first.starts_with('-') => Err(Cli::command().error(
            clap::error::ErrorKind::UnknownArgument,
            format!("unknown option '{first}'; put the command after `--`"),
        )),
        _ => Ok(cli),
    }
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MSBVM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    // Boot times are measured from here, the earliest point the VMM controls.
    let start = Instant::now();
    let cli = match Cli::try_parse().and_then(check) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let sandbox_command = std::env::args()
                .nth(1)
                .is_some_and(|a| SANDBOX_COMMANDS.contains(&a.as_str()));
            return ExitCode::from(match (e.use_stderr(), sandbox_command) {
                (false, _) => 0,
                (true, true) => MSBVM_ERROR,
                (true, false) => e.exit_code().clamp(0, 255) as u8,
            });
        }
    };
    if let Command::Spawner { args } = cli.command {
        return msbvm_runtime::spawner::main(args);
    }
    if let Command::Plugins { args } = cli.command {
        return msbvm_runtime::plugins::host_main(args);
    }
    if let Command::Runtime { args } = cli.command {
        // The runtime sets up its own logging, into the sandbox's runtime.log.
        return msbvm_runtime::main(args);
    }
    init_tracing();
    match cli.command {
        Command::Boot(args) => boot::run(args, start),
        Command::Kernel(cmd) => kernel::run(cmd),
        Command::Runtime { .. } | Command::Spawner { .. } | Command::Plugins { .. } => {
            unreachable!("handled above")
        }
        sandbox_command => ExitCode::from(run_sandbox_command(sandbox_command)),
    }
}

/// Runs a sandbox command on a tokio runtime; errors print and become [`MSBVM_ERROR`].
fn run_sandbox_command(command: Command) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("msbvm: error: cannot start the async runtime: {e}");
            return MSBVM_ERROR;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Run(args) => run::run(*args).await,
            Command::Exec(args) => run::exec(args).await,
            Command::Ls(args) => manage::ls(args),
            Command::Stop(args) => manage::stop(args).await,
            Command::Rm(args) => manage::rm(args).await,
            Command::Detach(args) => manage::detach(args).await,
            Command::Logs(args) => manage::logs(args),
            Command::Cp(args) => cp::cp(args).await,
            Command::Volume(cmd) => volume::run(cmd),
            Command::Snapshot(cmd) => snapshot::run(cmd).await,
            Command::Fork(args) => snapshot::fork(args).await,
            Command::Net(cmd) => net::run(cmd).await,
            Command::Debug(cmd) => debug::run(cmd).await,
            Command::Events(args) => events::events(args).await,
            Command::Emit(args) => events::emit(args).await,
            Command::Request(args) => events::request(args).await,
            Command::Pull(args) => images::pull(args).await,
            Command::Import(args) => images::import(args),
            Command::Images(args) => images::list(args),
            Command::Rmi(args) => images::remove(args),
            Command::Boot(_)
            | Command::Kernel(_)
            | Command::Runtime { .. }
            | Command::Spawner { .. }
            | Command::Plugins { .. } => Ok(0),
        }
    });
    // Do not wait for tasks still blocked on I/O (stdin forwarding) at exit.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("msbvm: error: {e}");
            MSBVM_ERROR
        }
    }
}

#[cfg(test)]
mod tests;
