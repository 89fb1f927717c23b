//! Snapshots and forks.

use std::collections::BTreeMap;

use msbvm_sdk as sdk;
use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::future_into_py;

use crate::args::{int_arg, seconds, SecretArg};
use crate::errors::to_py;
use crate::sandbox::Sandbox;

/// A snapshot, as `Sandbox.snapshot` reports it.
#[pyclass(frozen, get_all, module = "msbvm._native")]
pub(crate) struct SnapshotInfo {
    /// Its name.
    pub(crate) name: String,
    /// The sandbox it was taken of.
    pub(crate) source: String,
    /// When, in seconds since the Unix epoch.
    pub(crate) created: u64,
    /// The source's vCPUs.
    pub(crate) cpus: u8,
    /// The source's memory in MiB.
    pub(crate) memory_mib: u64,
}

#[pymethods]
impl SnapshotInfo {
    fn __repr__(&self) -> String {
        format!(
            "SnapshotInfo(name={:?}, source={:?}, cpus={}, memory_mib={})",
            self.name, self.source, self.cpus, self.memory_mib
        )
    }
}

/// Starts `count` sandboxes from the snapshot `snapshot`; see `msbvm.Sandbox.fork`.
#[pyfunction]
#[pyo3(signature = (
    snapshot, *, count=1, name=None, env=None, cpus=None, memory=None, detached=false,
    ready_timeout=None, net_rules=None, net_default_allow=None, secrets=None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn fork<'py>(
    py: Python<'py>,
    snapshot: String,
    count: u32,
    name: Option<String>,
    env: Option<BTreeMap<String, String>>,
    cpus: Option<Bound<'py, PyAny>>,
    memory: Option<Bound<'py, PyAny>>,
    detached: bool,
    ready_timeout: Option<f64>,
    net_rules: Option<Vec<(bool, String)>>,
    net_default_allow: Option<bool>,
    secrets: Option<Vec<SecretArg>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut f = sdk::Sandbox::fork(&snapshot)
        .count(count)
        .detached(detached);
    if let Some(name) = name {
        f = f.name(name);
    }
    for (k, v) in env.unwrap_or_default() {
        f = f.env(k, v);
    }
    if let Some(cpus) = int_arg("cpus", cpus)? {
        f = f.cpus(sdk::checked_cpus(cpus).map_err(to_py)?);
    }
    if let Some(memory) = int_arg("memory", memory)? {
        f = f.memory_mib(sdk::checked_memory_mib(memory).map_err(to_py)?);
    }
    if let Some(t) = seconds("ready_timeout", ready_timeout)? {
        f = f.ready_timeout(t);
    }
    if let Some(rules) = net_rules {
        f = f.net_rules(
            rules
                .into_iter()
                .map(|(allow, rule)| sdk::spec::NetRule { allow, rule })
                .collect(),
        );
    }
    if let Some(allow) = net_default_allow {
        f = f.net_default_allow(allow);
    }
    for secret in secrets.unwrap_or_default() {
        f = f.secret(secret.into_secret()?);
    }
    future_into_py(py, async move {
        let forks = f.create().await.map_err(to_py)?;
        Ok(forks
            .into_iter()
            .map(|inner| Sandbox { inner })
            .collect::<Vec<_>>())
    })
}
