//! `msbvm net`: the network of a running sandbox — replace its policy, publish a port,
//! show its decisions (events) and counters.

use std::time::Duration;

use clap::{Args, Subcommand};
use msbvm_sdk::spec::PortSpec;
use msbvm_sdk::{Error, Sandbox};

use crate::net_rule_opts::NetRuleArgs;

/// The `net` subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum NetCommand {
    /// Replace the network policy of a running sandbox (rules in command-line order).
    ///
    /// The new policy applies at once: new connections, DNS queries and HTTP requests follow
    /// it, and open TCP connections and UDP flows that it denies are ended (the guest gets a
    /// TCP reset, the host socket is closed, and `msbvm net events` shows a `flow_denied` event
    /// "ended by a policy change"). An open connection on a port that new HTTP rules cover is
    /// ended as well, so that the guest's next connection is inspected.
    Policy(PolicyArgs),
    /// Publish a guest TCP port on the host: [ADDR:]HOST_PORT:GUEST_PORT.
    Publish {
        /// The sandbox.
        name: String,
        /// What to publish.
        port: String,
    },
    /// Print the sandbox's network decisions (flows, DNS queries, HTTP requests) as JSON lines.
    Events {
        /// The sandbox.
        name: String,
        /// Keep printing new events until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print the network stack's counters as JSON.
    Stats {
        /// The sandbox.
        name: String,
    },
}

/// Arguments of `msbvm net policy`.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct PolicyArgs {
    /// The sandbox.
    pub name: String,
    /// The new rules (replacing all of the sandbox's) and default.
    #[command(flatten)]
    pub net_rules: NetRuleArgs,
}

/// Runs a `net` subcommand.
pub async fn run(command: NetCommand) -> Result<u8, Error> {
    match command {
        NetCommand::Policy(args) => {
            let sandbox = Sandbox::get(&args.name).await?;
            let raw: Vec<String> = std::env::args().collect();
            let rules = args.net_rules.rules(&raw);
            let default_allow = args.net_rules.default_allow().unwrap_or(true);
            sandbox.set_network_policy(default_allow, rules).await?;
            Ok(0)
        }
        NetCommand::Publish { name, port } => {
            let sandbox = Sandbox::get(&name).await?;
            let spec = PortSpec::parse(&port)?;
            let bound = sandbox.publish(spec).await?;
            println!("{bound}");
            Ok(0)
        }
        NetCommand::Events { name, follow } => {
            let sandbox = Sandbox::get(&name).await?;
            // A stream: each event is read and printed once, in bounded memory.
            let mut events = sandbox.network_event_stream();
            loop {
                events.poll(&mut |e| println!("{e}"))?;
                if !follow {
                    return Ok(0);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                if Sandbox::get(&name).await.is_err() {
                    return Ok(0);
                }
            }
        }
        NetCommand::Stats { name } => {
            let sandbox = Sandbox::get(&name).await?;
            println!("{}", sandbox.network_stats().await?);
            Ok(0)
        }
    }
}
