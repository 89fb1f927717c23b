//! `net-monitor`: connections and bytes per host. The guest's DNS answers name the addresses
//! it then connects to; a flow to an address no answer named counts under the address.
//!
//! The table is written as JSON to a file (default `net-monitor.json` in the sandbox's state
//! directory; `path=FILE`) at most once a second while flows close and once when the sandbox
//! stops, when it is also printed to the sandbox's log. That file is how to query it while the
//! sandbox runs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::Context;
use crate::data::{DnsAnswer, FlowBytes, Lifecycle, SandboxInfo};
use crate::hook::{Hook, Interests};
use crate::plugin::Plugin;

/// Addresses remembered from DNS answers, at most (the guest decides how many it asks for).
const MAX_NAMES: usize = 4096;
/// Hosts in the table, at most; the rest count under `"(other)"`.
const MAX_HOSTS: usize = 4096;
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// `net-monitor`'s settings: `path=FILE`.
pub type Config = super::OutputPath;

/// One host's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostStats {
    /// Flows that closed.
    pub connections: u64,
    /// Bytes from the guest.
    pub bytes_up: u64,
    /// Bytes to the guest.
    pub bytes_down: u64,
}

#[derive(Default)]
struct Table {
    names: HashMap<IpAddr, String>,
    hosts: BTreeMap<String, HostStats>,
    written: Option<Instant>,
}

/// The `net-monitor` plugin.
pub struct NetMonitor {
    path: PathBuf,
    table: Mutex<Table>,
}

impl NetMonitor {
    /// An empty table.
    pub fn new(config: Config, cx: &Context) -> Self {
        NetMonitor {
            path: config
                .path
                .unwrap_or_else(|| cx.dir.join("net-monitor.json")),
            table: Mutex::new(Table::default()),
        }
    }

    /// The counts so far, per host.
    pub fn snapshot(&self) -> BTreeMap<String, HostStats> {
        self.table().hosts.clone()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, table: &mut Table) {
        table.written = Some(Instant::now());
        let text = serde_json::to_string_pretty(&table.hosts).unwrap_or_default();
        let tmp = self.path.with_extension("json.tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.path))
        {
            tracing::warn!("net-monitor: cannot write {}: {e}", self.path.display());
        }
    }
}

impl Plugin for NetMonitor {
    fn name(&self) -> &str {
        "net-monitor"
    }

    fn interests(&self) -> Interests {
        [Hook::Lifecycle, Hook::DnsAnswer, Hook::Bytes]
            .into_iter()
            .collect()
    }

    fn dns_answer(&self, answer: &DnsAnswer) {
        let mut table = self.table();
        for ip in &answer.answers {
            if table.names.len() < MAX_NAMES || table.names.contains_key(ip) {
                table.names.insert(*ip, answer.name.clone());
            }
        }
    }

    fn flow_bytes(&self, bytes: &FlowBytes) {
        let mut table = self.table();
        let mut host = table
            .names
            .get(&bytes.dst.ip())
            .cloned()
            .unwrap_or_else(|| bytes.dst.ip().to_string());
        if table.hosts.len() >= MAX_HOSTS && !table.hosts.contains_key(&host) {
            host = "(other)".into();
        }
        let stats = table.hosts.entry(host).or_default();
        stats.connections += 1;
        stats.bytes_up += bytes.bytes_up;
        stats.bytes_down += bytes.bytes_down;
        if table.written.is_none_or(|t| t.elapsed() >= WRITE_EVERY) {
            self.write(&mut table);
        }
    }

    fn lifecycle(&self, sandbox: &SandboxInfo, step: &Lifecycle) {
        if let Lifecycle::Stopped { .. } = step {
            let mut table = self.table();
            self.write(&mut table);
            tracing::info!(sandbox = %sandbox.name, hosts = table.hosts.len(), "net-monitor: per-host traffic");
            for (host, s) in &table.hosts {
                tracing::info!(
                    "net-monitor: {host}: {} connections, {} bytes up, {} bytes down",
                    s.connections,
                    s.bytes_up,
                    s.bytes_down
                );
            }
        }
    }

    fn shutdown(&self) {
        let mut table = self.table();
        self.write(&mut table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Transport;

    #[test]
    fn flows_count_under_the_names_dns_gave_them() {
        let dir = tempfile::tempdir().unwrap();
        let cx = Context {
            sandbox: "sb".into(),
            dir: dir.path().into(),
        };
        let m = NetMonitor::new(Config::parse_for("net-monitor", None).unwrap(), &cx);
        m.dns_answer(&DnsAnswer {
            name: "example.com".into(),
            qtype: "A".into(),
            allowed: true,
            answers: vec!["93.184.216.34".parse().unwrap()],
        });
        for (ip, up) in [("93.184.216.34", 10), ("93.184.216.34", 5), ("1.1.1.1", 7)] {
            m.flow_bytes(&FlowBytes {
                transport: Transport::Tcp,
                dst: format!("{ip}:443").parse().unwrap(),
                bytes_up: up,
                bytes_down: 100,
            });
        }
        let t = m.snapshot();
        assert_eq!(
            t["example.com"],
            HostStats {
                connections: 2,
                bytes_up: 15,
                bytes_down: 200
            }
        );
        assert_eq!(t["1.1.1.1"].connections, 1);
        m.lifecycle(
            &SandboxInfo::default(),
            &Lifecycle::Stopped { exit_code: None },
        );
        let file: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("net-monitor.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(file["example.com"]["bytes_up"], 15);
        assert_eq!(file["1.1.1.1"]["bytes_down"], 100);
    }
}
