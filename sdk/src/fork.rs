//! Forks: new sandboxes started from a snapshot ([`crate::snapshots`]) instead of booted.
//!
//! Each fork maps the snapshot's memory privately (pages shared with every other fork until
//! written), stacks a writable layer of its own on the snapshot's frozen layer, gets its own
//! network stack and policy, and takes its own identity before it is reported ready: its
//! name as hostname, a kernel RNG reseeded from host randomness and the host's wall clock.
//!
//! A fork has the snapshot's machine: its vCPUs and memory are part of the saved state. It
//! may run on fewer vCPUs (the others are taken offline in the guest before it is ready);
//! more vCPUs, or other memory, is an error. Secrets are not in snapshots: each fork gets
//! the ones its creator gives it.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::paths::msbvm_home;
use crate::sandbox::Sandbox;
use crate::secrets::Secret;
use crate::snapshots;
use crate::spec::NetRule;

/// Most forks one call starts.
pub const MAX_FORKS: u32 = 1000;

/// How to fork a snapshot; see [`Sandbox::fork`].
#[derive(Debug)]
#[must_use = "a fork builder does nothing until `create` is called"]
pub struct ForkBuilder {
    snapshot: String,
    count: u32,
    name: Option<String>,
    env: Vec<(String, String)>,
    cpus: Option<u8>,
    memory_mib: Option<u64>,
    detached: bool,
    ready_timeout: Option<Duration>,
    secrets: Vec<Secret>,
    net_rules: Vec<NetRule>,
    net_default_allow: Option<bool>,
    plugins: Option<Vec<msbvm_plugins::PluginSpec>>,
}

impl ForkBuilder {
    pub(crate) fn new(snapshot: &str) -> Self {
        ForkBuilder {
            snapshot: snapshot.into(),
            count: 1,
            name: None,
            env: Vec::new(),
            cpus: None,
            memory_mib: None,
            detached: false,
            ready_timeout: None,
            secrets: Vec::new(),
            net_rules: Vec::new(),
            net_default_allow: None,
            plugins: None,
        }
    }

    /// The forks' plugins, instead of the snapshot source's (which forks run by default);
    /// an empty list runs none.
    pub fn plugins(mut self, plugins: Vec<msbvm_plugins::PluginSpec>) -> Self {
        self.plugins = Some(plugins);
        self
    }

    /// How many forks to start, at once (default 1, at most [`MAX_FORKS`]).
    pub fn count(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    /// The fork's name (one fork), or the prefix of the forks' names `PREFIX-1`...
    /// `PREFIX-N` (several); default: the snapshot's name plus `-fork`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets an environment variable for the forks' later execs (over the snapshot's).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// vCPUs online in the forks: 1 to the snapshot's count (checked by
    /// [`ForkBuilder::create`]); the machine keeps the snapshot's vCPUs and the guest takes
    /// the others offline.
    pub fn cpus(mut self, cpus: u8) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// Memory in MiB; only the snapshot's size is possible.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    /// Keep the forks running after this process exits.
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    /// How long to wait for each fork to be ready.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = Some(timeout);
        self
    }

    /// A secret for every fork (snapshots hold none).
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secrets.push(secret);
        self
    }

    /// Replaces the snapshot's network rules with these (in order) for the forks.
    pub fn net_rules(mut self, rules: Vec<NetRule>) -> Self {
        self.net_rules = rules;
        self
    }

    /// Whether what no rule matches is allowed in the forks.
    pub fn net_default_allow(mut self, allow: bool) -> Self {
        self.net_default_allow = Some(allow);
        self
    }

    /// The forks' names.
    fn names(&self) -> Result<Vec<String>> {
        if self.count == 0 || self.count > MAX_FORKS {
            return Err(Error::InvalidConfig(format!(
                "{} forks: use 1 to {MAX_FORKS}",
                self.count
            )));
        }
        let base = self
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-fork", self.snapshot));
        let names: Vec<String> = if self.count == 1 && self.name.is_some() {
            vec![base]
        } else {
            (1..=self.count).map(|i| format!("{base}-{i}")).collect()
        };
        for name in &names {
            crate::paths::validate_name(name)?;
        }
        Ok(names)
    }

    /// Starts the forks, all at once, and returns them once every one is ready. If any
    /// fails, the ones that started are removed and the first error is returned.
    pub async fn create(self) -> Result<Vec<Sandbox>> {
        let names = self.names()?;
        let home = msbvm_home()?;
        let (dir, info) = snapshots::open(&home, &self.snapshot)?;
        if info.msbvm_version != env!("CARGO_PKG_VERSION") {
            return Err(Error::InvalidConfig(format!(
                "snapshot {} was taken by msbvm {}; this is msbvm {}, which restores only its own snapshots",
                self.snapshot,
                info.msbvm_version,
                env!("CARGO_PKG_VERSION")
            )));
        }
        if let Some(asked) = self.memory_mib.filter(|a| *a != info.memory_mib) {
            return Err(Error::InvalidConfig(format!(
                "snapshot {} has {} MiB of memory and a fork has what its snapshot has; {asked} \
                 cannot be given",
                self.snapshot, info.memory_mib
            )));
        }
        let online_cpus = online_cpus(&self.snapshot, self.cpus, info.cpus)?;
        let mut spec = info.spec.clone();
        spec.fork_of = Some(dir);
        if let Some(plugins) = &self.plugins {
            spec.plugins = plugins.clone();
        }
        spec.online_cpus = online_cpus;
        spec.parent = None;
        if !self.net_rules.is_empty() {
            spec.network.rules = self.net_rules.clone();
        }
        if let Some(allow) = self.net_default_allow {
            spec.network.default_allow = allow;
        }
        let mut env = info.env.clone();
        crate::exec::merge_env(&mut env, &self.env);
        let mut starts = Vec::new();
        for name in &names {
            let mut builder = Sandbox::builder(name.clone())
                .spec(spec.clone())
                .cpus(info.cpus)
                .memory_mib(info.memory_mib)
                .detached(self.detached);
            for (k, v) in &env {
                builder = builder.env(k.clone(), v.clone());
            }
            for secret in &self.secrets {
                builder = builder.secret(secret.clone());
            }
            if let Some(t) = self.ready_timeout {
                builder = builder.ready_timeout(t);
            }
            starts.push(builder.create());
        }
        // Concurrently on this task: each start mostly waits for its runtime.
        let results = futures_util::future::join_all(starts).await;
        let mut forks = Vec::new();
        let mut failure = None;
        for (name, result) in names.iter().zip(results) {
            match result {
                Ok(sandbox) => forks.push(sandbox),
                Err(e) => {
                    // The record of a failed fork goes below; what its runtime logged is
                    // kept here.
                    let log = crate::paths::SandboxDir::in_home(&home, name)
                        .map(|d| crate::state::tail_lines(&d.runtime_log(), 12))
                        .unwrap_or_default();
                    tracing::warn!("fork {name} of snapshot {}: {e}\n{log}", self.snapshot);
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            // Every fork goes, the ready ones and the records of the failed ones.
            drop(forks);
            for name in &names {
                let _ = Sandbox::remove_named(name).await;
            }
            return Err(e);
        }
        Ok(forks)
    }
}

/// The vCPUs a fork of `snapshot` (whose machine has `has`) keeps online when `asked` for:
/// `None` for all of them; fewer than `has` and at least one, or an error.
fn online_cpus(snapshot: &str, asked: Option<u8>, has: u8) -> Result<Option<u8>> {
    match asked {
        None => Ok(None),
        Some(n) if n == has => Ok(None),
        Some(n) if (1..has).contains(&n) => Ok(Some(n)),
        Some(n) => Err(Error::InvalidConfig(format!(
            "snapshot {snapshot} has {has} vCPUs: a fork runs on 1 to {has} of them (the others \
             are taken offline), not on {n}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_run_on_their_snapshots_vcpus_or_fewer() {
        assert_eq!(online_cpus("s", None, 4).unwrap(), None);
        assert_eq!(online_cpus("s", Some(4), 4).unwrap(), None);
        assert_eq!(online_cpus("s", Some(1), 4).unwrap(), Some(1));
        assert_eq!(online_cpus("s", Some(3), 4).unwrap(), Some(3));
        for bad in [0, 5] {
            let e = online_cpus("s", Some(bad), 4).unwrap_err().to_string();
            assert!(e.contains("runs on 1 to 4"), "{e}");
        }
    }

    #[test]
    fn names_follow_count_and_prefix() {
        let names = |b: ForkBuilder| b.names().map_err(|e| e.to_string());
        assert_eq!(names(ForkBuilder::new("s")).unwrap(), vec!["s-fork-1"]);
        assert_eq!(
            names(ForkBuilder::new("s").name("web")).unwrap(),
            vec!["web"]
        );
        assert_eq!(
            names(ForkBuilder::new("s").name("w").count(3)).unwrap(),
            vec!["w-1", "w-2", "w-3"]
        );
        assert!(names(ForkBuilder::new("s").count(0)).is_err());
        assert!(names(ForkBuilder::new("s").count(MAX_FORKS + 1)).is_err());
        assert!(names(ForkBuilder::new("s").name("Bad Name")).is_err());
    }
}
