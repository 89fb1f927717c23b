//! `msbvm snapshot create|ls|rm|inspect` and `msbvm fork`: snapshots of running sandboxes
//! (kept under `$MSBVM_HOME/snapshots/`) and new sandboxes started from them.

use clap::{Args, Subcommand};
use msbvm_sdk::secrets::Secret;
use msbvm_sdk::{snapshots, Error, Sandbox};

use crate::run::parse_env;

/// The `snapshot` subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum SnapshotCommand {
    /// Snapshot a running sandbox: memory, vCPUs, devices, its writable layer and running
    /// processes. The sandbox is paused while it is written, then goes on.
    Create {
        /// The sandbox.
        sandbox: String,
        /// The snapshot's name (default: the sandbox's name and the time).
        #[arg(long, short = 't')]
        tag: Option<String>,
    },
    /// List snapshots.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots (forks running from one keep running).
    Rm {
        /// The snapshots.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print what a snapshot is, as JSON.
    Inspect {
        /// The snapshot.
        name: String,
    },
}

/// Arguments of `msbvm fork`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct ForkArgs {
    /// The snapshot.
    pub snapshot: String,
    /// How many forks to start at once.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub count: u32,
    /// The fork's name, or with --count above 1 the prefix of NAME-1 ... NAME-N
    /// (default: the snapshot's name and `-fork`).
    #[arg(long)]
    pub name: Option<String>,
    /// Environment for the forks' execs, over the snapshot's; repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Network rules for the forks, instead of the snapshot's (the default for unmatched
    /// traffic too, when given).
    #[command(flatten)]
    pub net_rules: crate::net_rule_opts::NetRuleArgs,
    /// A secret, NAME@HOST[,HOST...], valued from this environment's NAME; repeatable.
    #[arg(long = "secret", value_name = "NAME@HOST")]
    pub secrets: Vec<String>,
    /// vCPUs online in the forks: 1 to the snapshot's (the machine keeps the snapshot's
    /// vCPUs; the guest takes the others offline).
    #[arg(long)]
    pub cpus: Option<u8>,
    /// Memory in MiB (only the snapshot's size is possible).
    #[arg(long = "memory", value_name = "MIB")]
    pub memory_mib: Option<u64>,
    /// The forks' plugins (NAME_OR_PATH[:CONFIG], as for `run`), instead of the snapshot
    /// source's, which forks run by default; repeatable.
    #[arg(long = "plugin", value_name = "NAME_OR_PATH[:CONFIG]")]
    pub plugins: Vec<String>,
    /// Run no plugins in the forks.
    #[arg(long = "no-plugins", conflicts_with = "plugins")]
    pub no_plugins: bool,
}

/// Runs a `snapshot` subcommand; returns the exit status.
pub async fn run(command: SnapshotCommand) -> Result<u8, Error> {
    let home = msbvm_sdk::msbvm_home()?;
    match command {
        SnapshotCommand::Create { sandbox, tag } => {
            let name = tag.unwrap_or_else(|| default_name(&sandbox));
            let sb = Sandbox::get(&sandbox).await?;
            let info = sb.snapshot(&name).await?;
            eprintln!(
                "snapshot {} of {} taken (guest paused {:.0} ms)",
                info.name, info.source, info.paused_ms
            );
            println!("{}", info.name);
            Ok(0)
        }
        SnapshotCommand::Ls { json } => {
            let list = snapshots::list(&home)?;
            if json {
                let json = serde_json::to_string_pretty(&list)
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                println!("{json}");
                return Ok(0);
            }
            println!(
                "{:<24} {:<20} {:>5} {:>8} {:>10} CREATED",
                "NAME", "SOURCE", "CPUS", "MEMORY", "DISK"
            );
            let now = msbvm_sdk::state::unix_now();
            for s in list {
                let dir = snapshots::snapshot_dir(&home, &s.name)?;
                println!(
                    "{:<24} {:<20} {:>5} {:>6}Mi {:>8}Mi {}",
                    s.name,
                    s.source,
                    s.cpus,
                    s.memory_mib,
                    snapshots::disk_usage(&dir) >> 20,
                    crate::manage::age(now.saturating_sub(s.created))
                );
            }
            Ok(0)
        }
        SnapshotCommand::Rm { names } => {
            let mut status = 0;
            for name in names {
                match snapshots::remove(&home, &name) {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("msbvm: error: {e}");
                        status = 1;
                    }
                }
            }
            Ok(status)
        }
        SnapshotCommand::Inspect { name } => {
            let (dir, info) = snapshots::open(&home, &name)?;
            let mut json =
                serde_json::to_value(&info).map_err(|e| Error::InvalidConfig(e.to_string()))?;
            json["path"] = dir.display().to_string().into();
            json["disk_bytes"] = snapshots::disk_usage(&dir).into();
            let text = serde_json::to_string_pretty(&json)
                .map_err(|e| Error::InvalidConfig(e.to_string()))?;
            println!("{text}");
            Ok(0)
        }
    }
}

/// `msbvm fork`: starts the forks (detached: they outlive this command) and prints their
/// names once every one is ready.
pub async fn fork(args: ForkArgs) -> Result<u8, Error> {
    let raw: Vec<String> = std::env::args().collect();
    let mut builder = Sandbox::fork(&args.snapshot)
        .count(args.count)
        .detached(true);
    if let Some(name) = &args.name {
        builder = builder.name(name.clone());
    }
    for (k, v) in &args.env {
        builder = builder.env(k.clone(), v.clone());
    }
    let rules = args.net_rules.rules(&raw);
    if !rules.is_empty() {
        builder = builder.net_rules(rules);
    }
    if let Some(allow) = args.net_rules.default_allow() {
        builder = builder.net_default_allow(allow);
    }
    for text in &args.secrets {
        builder = builder.secret(crate::secret_opts::parse_secret(text, Secret::from_env)?);
    }
    if let Some(cpus) = args.cpus {
        builder = builder.cpus(cpus);
    }
    if let Some(mib) = args.memory_mib {
        builder = builder.memory_mib(mib);
    }
    if args.no_plugins || !args.plugins.is_empty() {
        builder = builder.plugins(crate::sandbox_opts::parse_plugins(&args.plugins)?);
    }
    let started = std::time::Instant::now();
    let forks = builder.create().await?;
    eprintln!(
        "{} fork(s) of {} ready in {:.0} ms",
        forks.len(),
        args.snapshot,
        started.elapsed().as_secs_f64() * 1e3
    );
    for fork in forks {
        println!("{}", fork.name());
    }
    Ok(0)
}

/// `SANDBOX-<seconds since the epoch>`, the name of a snapshot given none.
fn default_name(sandbox: &str) -> String {
    let stamp = format!("-{}", msbvm_sdk::state::unix_now());
    let mut name = sandbox.to_string();
    name.truncate(msbvm_sdk::paths::MAX_NAME_LEN - stamp.len());
    name + &stamp
}
