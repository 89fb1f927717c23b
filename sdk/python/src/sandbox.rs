//! Creating, finding and driving sandboxes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use msbvm_sdk as sdk;
use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::future_into_py;

use crate::args::{
    exec_options, int_arg, json_arg, mtu_arg, plugin_specs, seconds, Bytes, GrantArg, SecretArg,
};
use crate::errors::to_py;
use crate::events::{EventStream, NetEventStream};
use crate::exec::{ExecResult, ExecStream};
use crate::files::DirEntry;
use crate::snapshots::SnapshotInfo;

/// Starts a sandbox; see `msbvm.Sandbox.create` for the arguments.
#[pyfunction]
#[pyo3(signature = (
    name, *, image=None, cpus=None, memory=None, env=None, volumes=None, network=true,
    net_allow=None, net_deny=None, net_default_allow=None, workdir=None, user=None,
    ready_timeout=None, detached=false, secrets=None, allow_spawn=None, publish=None,
    tmpfs=None, plugins=None, tls_intercept=None, tls_bypass=None, tls_upstream_ca=None,
    tls_ca=None, mtu=None, dns_servers=None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn create<'py>(
    py: Python<'py>,
    name: String,
    image: Option<String>,
    cpus: Option<Bound<'py, PyAny>>,
    memory: Option<Bound<'py, PyAny>>,
    env: Option<BTreeMap<String, String>>,
    volumes: Option<Vec<String>>,
    network: bool,
    net_allow: Option<Vec<String>>,
    net_deny: Option<Vec<String>>,
    net_default_allow: Option<bool>,
    workdir: Option<String>,
    user: Option<String>,
    ready_timeout: Option<f64>,
    detached: bool,
    secrets: Option<Vec<SecretArg>>,
    allow_spawn: Option<GrantArg>,
    publish: Option<Vec<String>>,
    tmpfs: Option<Vec<String>>,
    plugins: Option<Vec<String>>,
    tls_intercept: Option<Vec<String>>,
    tls_bypass: Option<Vec<String>>,
    tls_upstream_ca: Option<Vec<PathBuf>>,
    tls_ca: Option<String>,
    mtu: Option<Bound<'py, PyAny>>,
    dns_servers: Option<Vec<String>>,
) -> PyResult<Bound<'py, PyAny>> {
    sdk::validate_name(&name).map_err(to_py)?;
    let mut b = sdk::Sandbox::builder(name)
        .network(network)
        .detached(detached);
    if let Some(cpus) = int_arg("cpus", cpus)? {
        b = b.cpus(sdk::checked_cpus(cpus).map_err(to_py)?);
    }
    if let Some(memory) = int_arg("memory", memory)? {
        b = b.memory_mib(sdk::checked_memory_mib(memory).map_err(to_py)?);
    }
    if let Some(image) = image {
        b = b.image(image);
    }
    for (k, v) in env.unwrap_or_default() {
        b = b.env(k, v);
    }
    for v in volumes.unwrap_or_default() {
        b = b.volume(sdk::spec::VolumeSpec::parse(&v).map_err(to_py)?);
    }
    for rule in net_allow.unwrap_or_default() {
        b = b.net_allow(rule);
    }
    for rule in net_deny.unwrap_or_default() {
        b = b.net_deny(rule);
    }
    if let Some(allow) = net_default_allow {
        b = b.net_default_allow(allow);
    }
    if let Some(dir) = workdir {
        b = b.workdir(dir);
    }
    if let Some(user) = user {
        b = b.user(user);
    }
    if let Some(t) = seconds("ready_timeout", ready_timeout)? {
        b = b.ready_timeout(t);
    }
    for secret in secrets.unwrap_or_default() {
        b = b.secret(secret.into_secret()?);
    }
    if let Some(grant) = allow_spawn {
        b = b.allow_spawn(grant.into_grant());
    }
    for port in publish.unwrap_or_default() {
        b = b.publish(sdk::spec::PortSpec::parse(&port).map_err(to_py)?);
    }
    for t in tmpfs.unwrap_or_default() {
        b = b.tmpfs(sdk::spec::TmpfsSpec::parse(&t).map_err(to_py)?);
    }
    for plugin in plugin_specs(plugins.unwrap_or_default())? {
        b = b.plugin(plugin);
    }
    // Patterns and CA files are checked by the SDK before anything starts.
    for pattern in tls_intercept.unwrap_or_default() {
        b = b.tls_intercept(pattern);
    }
    for host in tls_bypass.unwrap_or_default() {
        b = b.tls_bypass(host);
    }
    for path in tls_upstream_ca.unwrap_or_default() {
        b = b.tls_upstream_ca(path);
    }
    if let Some(scope) = tls_ca {
        b = b.tls_ca(sdk::spec::CaScope::parse(&scope).map_err(to_py)?);
    }
    if let Some(mtu) = mtu_arg(mtu)? {
        b = b.mtu(mtu);
    }
    if let Some(servers) = dns_servers {
        let servers = servers
            .iter()
            .map(|s| sdk::spec::parse_dns_server(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(to_py)?;
        b = b.dns_servers(servers);
    }
    future_into_py(py, async move {
        let inner = b.create().await.map_err(to_py)?;
        Ok(Sandbox { inner })
    })
}

/// Attaches to the running sandbox `name` (started by this or another process).
#[pyfunction]
pub(crate) fn get(py: Python<'_>, name: String) -> PyResult<Bound<'_, PyAny>> {
    sdk::validate_name(&name).map_err(to_py)?;
    future_into_py(py, async move {
        let inner = sdk::Sandbox::get(&name).await.map_err(to_py)?;
        Ok(Sandbox { inner })
    })
}

/// Stops (if running) and removes the sandbox `name` with its record and logs.
#[pyfunction]
pub(crate) fn remove(py: Python<'_>, name: String) -> PyResult<Bound<'_, PyAny>> {
    sdk::validate_name(&name).map_err(to_py)?;
    future_into_py(py, async move {
        sdk::Sandbox::remove_named(&name).await.map_err(to_py)
    })
}

/// The sandboxes of this user (`$MSBVM_HOME`), as `SandboxInfo`s.
#[pyfunction]
pub(crate) fn list() -> PyResult<Vec<SandboxInfo>> {
    let all = sdk::Sandbox::list().map_err(to_py)?;
    Ok(all
        .into_iter()
        .map(|i| SandboxInfo {
            name: i.name,
            status: i.status.as_str(),
            pid: i.pid,
            cpus: i.cpus,
            memory_mib: i.memory_mib,
            detached: i.detached,
        })
        .collect())
}

/// A sandbox as `list()` reports it.
#[pyclass(frozen, get_all, module = "msbvm._native")]
pub(crate) struct SandboxInfo {
    pub(crate) name: String,
    pub(crate) status: &'static str,
    pub(crate) pid: u32,
    pub(crate) cpus: u8,
    pub(crate) memory_mib: u64,
    pub(crate) detached: bool,
}

#[pymethods]
impl SandboxInfo {
    fn __repr__(&self) -> String {
        format!(
            "SandboxInfo(name={:?}, status={:?}, pid={}, cpus={}, memory_mib={}, detached={})",
            self.name,
            self.status,
            self.pid,
            self.cpus,
            self.memory_mib,
            if self.detached { "True" } else { "False" }
        )
    }
}

/// A running sandbox (the native half of `msbvm.Sandbox`).
#[pyclass(frozen, module = "msbvm._native")]
pub(crate) struct Sandbox {
    pub(crate) inner: sdk::Sandbox,
}

#[pymethods]
impl Sandbox {
    /// The sandbox's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The runtime's pid on the host.
    #[getter]
    fn pid(&self) -> u32 {
        self.inner.pid()
    }

    /// Runs `argv` to its end; an `ExecResult`.
    #[pyo3(signature = (argv, *, env=None, cwd=None, uid=None, gid=None, tty=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn exec<'py>(
        &self,
        py: Python<'py>,
        argv: Vec<String>,
        env: Option<BTreeMap<String, String>>,
        cwd: Option<String>,
        uid: Option<u32>,
        gid: Option<u32>,
        tty: Option<(u16, u16)>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = exec_options(argv, env, cwd, uid, gid, tty, timeout)?;
        let sb = self.inner.clone();
        future_into_py(py, async move {
            let out = sb.exec_with(opts).await.map_err(to_py)?;
            Ok(ExecResult::from(out))
        })
    }

    /// Starts `argv` and returns an `ExecStream` of its events.
    #[pyo3(signature = (argv, *, env=None, cwd=None, uid=None, gid=None, tty=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn exec_stream<'py>(
        &self,
        py: Python<'py>,
        argv: Vec<String>,
        env: Option<BTreeMap<String, String>>,
        cwd: Option<String>,
        uid: Option<u32>,
        gid: Option<u32>,
        tty: Option<(u16, u16)>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = exec_options(argv, env, cwd, uid, gid, tty, timeout)?;
        let sb = self.inner.clone();
        future_into_py(py, async move {
            let stream = sb.exec_stream(opts).await.map_err(to_py)?;
            Ok(ExecStream::new(stream))
        })
    }

    /// The whole file at `path` in the guest, as bytes.
    fn read_file<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move {
            let data = sb.read_file(&path).await.map_err(to_py)?;
            Ok(Bytes(data))
        })
    }

    /// Writes `data` to `path` in the guest (created or replaced).
    fn write_file<'py>(
        &self,
        py: Python<'py>,
        path: String,
        data: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move {
            sb.write_file(&path, data).await.map_err(to_py)
        })
    }

    /// The entries of the guest directory `path`, as `DirEntry`s.
    fn list_dir<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move {
            let entries = sb.list_dir(&path).await.map_err(to_py)?;
            Ok(entries
                .into_iter()
                .map(|e| DirEntry::new(e.name, &e.stat))
                .collect::<Vec<_>>())
        })
    }

    /// What `path` in the guest is (symlinks followed), as a `DirEntry` named by the path.
    fn stat<'py>(&self, py: Python<'py>, path: String) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move {
            let stat = sb.stat(&path).await.map_err(to_py)?;
            Ok(DirEntry::new(path, &stat))
        })
    }

    /// Makes the guest directory `path` (and its parents when `parents`).
    #[pyo3(signature = (path, parents=false))]
    fn mkdir<'py>(
        &self,
        py: Python<'py>,
        path: String,
        parents: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(
            py,
            async move { sb.mkdir(&path, parents).await.map_err(to_py) },
        )
    }

    /// Removes `path` in the guest (a directory's contents too when `recursive`).
    #[pyo3(signature = (path, recursive=false))]
    fn remove_path<'py>(
        &self,
        py: Python<'py>,
        path: String,
        recursive: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move {
            sb.remove_path(&path, recursive).await.map_err(to_py)
        })
    }

    /// Copies the host file or directory `host_path` to `guest_path`.
    fn copy_in<'py>(
        &self,
        py: Python<'py>,
        host_path: PathBuf,
        guest_path: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move {
            sb.copy_in(&host_path, &guest_path).await.map_err(to_py)
        })
    }

    /// Copies the guest file or directory `guest_path` to `host_path`.
    fn copy_out<'py>(
        &self,
        py: Python<'py>,
        guest_path: String,
        host_path: PathBuf,
    ) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move {
            sb.copy_out(&guest_path, &host_path).await.map_err(to_py)
        })
    }

    /// Replaces the network policy: the default, then rules in order (first match wins).
    fn set_network_policy<'py>(
        &self,
        py: Python<'py>,
        default_allow: bool,
        rules: Vec<(bool, String)>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let rules = rules
            .into_iter()
            .map(|(allow, rule)| sdk::spec::NetRule { allow, rule })
            .collect();
        let sb = self.inner.clone();
        future_into_py(py, async move {
            sb.set_network_policy(default_allow, rules)
                .await
                .map_err(to_py)
        })
    }

    /// Sends the event `kind` with the JSON text `data` to the guest's subscribers.
    fn emit<'py>(
        &self,
        py: Python<'py>,
        kind: String,
        data: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = json_arg("event data", &data)?;
        let sb = self.inner.clone();
        future_into_py(py, async move { sb.emit(&kind, data).await.map_err(to_py) })
    }

    /// Sends the event `kind` with the JSON text `data` (and a fresh id) to the guest's
    /// subscribers and waits up to `timeout` seconds for the guest event answering it; that
    /// event as JSON text (the form `EventStream.next` gives).
    #[pyo3(signature = (kind, data, timeout=10.0))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        kind: String,
        data: String,
        timeout: f64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = json_arg("event data", &data)?;
        let timeout = seconds("timeout", Some(timeout))?.unwrap_or_default();
        let sb = self.inner.clone();
        future_into_py(py, async move {
            let event = sb.request(&kind, data, timeout).await.map_err(to_py)?;
            Ok(event.to_json().to_string())
        })
    }

    /// Answers the guest event `event` (JSON text, as `EventStream.next` gave it) with the
    /// event `kind` carrying the JSON text `data`, sent to the connection it came on.
    fn reply<'py>(
        &self,
        py: Python<'py>,
        event: String,
        kind: String,
        data: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let to = sdk::Event::from_json(&json_arg("the event answered", &event)?).map_err(to_py)?;
        let data = json_arg("event data", &data)?;
        let sb = self.inner.clone();
        future_into_py(py, async move {
            sb.reply(&to, &kind, data).await.map_err(to_py)
        })
    }

    /// The network stack's counters (bytes, packets, flows, drops) as JSON text.
    fn network_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move { sb.network_stats().await.map_err(to_py) })
    }

    /// The network decisions still on record, oldest first, as the JSON text of a list.
    fn network_events(&self, py: Python<'_>) -> PyResult<String> {
        let sb = &self.inner;
        let events = py.detach(|| sb.network_events()).map_err(to_py)?;
        Ok(serde_json::Value::Array(events).to_string())
    }

    /// A reader of the network decisions: each `poll` gives those recorded since the last.
    fn network_event_stream(&self) -> NetEventStream {
        NetEventStream::new(self.inner.network_event_stream())
    }

    /// Writes the running guest's RAM to the new host file `path`; the number of bytes.
    fn dump_memory<'py>(&self, py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(
            py,
            async move { sb.dump_memory(&path).await.map_err(to_py) },
        )
    }

    /// Subscribes to the guest's events of `types` (all when empty): an `EventStream`.
    fn events<'py>(&self, py: Python<'py>, types: Vec<String>) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move {
            let types: Vec<&str> = types.iter().map(String::as_str).collect();
            let stream = sb.events(&types).await.map_err(to_py)?;
            Ok(EventStream {
                stream: Arc::new(tokio::sync::Mutex::new(stream)),
            })
        })
    }

    /// Takes a snapshot named `name` (the guest pauses while it is written); a `SnapshotInfo`.
    fn snapshot<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move {
            let info = sb.snapshot(&name).await.map_err(to_py)?;
            Ok(SnapshotInfo {
                name: info.name,
                source: info.source,
                created: info.created,
                cpus: info.cpus,
                memory_mib: info.memory_mib,
            })
        })
    }

    /// Publishes a guest TCP port while the sandbox runs (`[ADDR:]HOST_PORT:GUEST_PORT`,
    /// host port 0 for any); returns where the host listens, as "ADDR:PORT".
    fn publish<'py>(&self, py: Python<'py>, port: String) -> PyResult<Bound<'py, PyAny>> {
        let spec = sdk::spec::PortSpec::parse(&port).map_err(to_py)?;
        let sb = self.inner.clone();
        future_into_py(py, async move {
            Ok(sb.publish(spec).await.map_err(to_py)?.to_string())
        })
    }

    /// Stops the sandbox: the guest shuts down, or is forced off after `timeout` seconds.
    #[pyo3(signature = (timeout=None))]
    fn stop<'py>(&self, py: Python<'py>, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let timeout = seconds("timeout", timeout)?.unwrap_or(sdk::DEFAULT_STOP_TIMEOUT);
        let sb = self.inner.clone();
        future_into_py(py, async move {
            sb.stop_with_timeout(timeout).await.map_err(to_py)
        })
    }

    /// Forces the VM off now.
    fn kill<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move { sb.kill().await.map_err(to_py) })
    }

    /// Stops the sandbox if running and removes everything it left.
    fn remove<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let sb = self.inner.clone();
        future_into_py(py, async move { sb.remove().await.map_err(to_py) })
    }

    fn __repr__(&self) -> String {
        format!(
            "Sandbox(name={:?}, pid={})",
            self.inner.name(),
            self.inner.pid()
        )
    }
}
