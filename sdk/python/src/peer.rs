//! Peer sandboxes from inside a sandbox (the spawn service).

use std::collections::BTreeMap;

use msbvm_sdk as sdk;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3_async_runtimes::tokio::future_into_py;

use crate::args::Bytes;
use crate::errors::to_py;

/// Whether this program runs inside an msbvm sandbox.
#[pyfunction]
pub(crate) fn in_sandbox() -> bool {
    sdk::peer::in_sandbox()
}

/// Connects to the host's spawn service from inside a sandbox: a `Peers`.
#[pyfunction]
pub(crate) fn connect_peers(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    future_into_py(py, async move {
        let inner = sdk::peer::Peers::connect().await.map_err(to_py)?;
        Ok(Peers { inner })
    })
}

/// The native half of `msbvm.peer.Peers`: sandboxes this sandbox may create (its grant).
#[pyclass(frozen, module = "msbvm._native")]
pub(crate) struct Peers {
    pub(crate) inner: sdk::peer::Peers,
}

/// What a peer's process left behind.
#[pyclass(frozen, module = "msbvm._native")]
pub(crate) struct PeerOutput {
    pub(crate) code: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) truncated: bool,
}

#[pymethods]
impl PeerOutput {
    /// The exit code as a shell reports it.
    #[getter]
    fn exit_code(&self) -> i32 {
        self.code
    }
    /// Its stdout.
    #[getter]
    fn stdout<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.stdout)
    }
    /// Its stderr.
    #[getter]
    fn stderr<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.stderr)
    }
    /// Whether the host cut the output at its limit.
    #[getter]
    fn truncated(&self) -> bool {
        self.truncated
    }
}

/// A peer as `Peers.list` reports it.
#[pyclass(frozen, get_all, module = "msbvm._native")]
pub(crate) struct PeerInfo {
    pub(crate) name: String,
    pub(crate) status: String,
    pub(crate) cpus: u8,
    pub(crate) memory_mib: u64,
    pub(crate) image: String,
}

#[pymethods]
impl Peers {
    /// Creates the child sandbox described by the keyword arguments of `msbvm.peer.Peers.create`.
    #[pyo3(signature = (
        name, *, image=None, cpus=None, memory=None, env=None, net_allow=None, net_deny=None,
        network=true, allow_spawn=None, secrets=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn create<'py>(
        &self,
        py: Python<'py>,
        name: String,
        image: Option<String>,
        cpus: Option<i64>,
        memory: Option<i64>,
        env: Option<BTreeMap<String, String>>,
        net_allow: Option<Vec<String>>,
        net_deny: Option<Vec<String>>,
        network: bool,
        allow_spawn: Option<String>,
        secrets: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        // Checked here as `create` and `fork` check theirs, so a bad number is a ValueError
        // naming the range, not an OverflowError or the host's refusal.
        let cpus = cpus.map(sdk::checked_cpus).transpose().map_err(to_py)?;
        let memory_mib = memory
            .map(sdk::checked_memory_mib)
            .transpose()
            .map_err(to_py)?;
        let spec = sdk::peer::ChildSpec {
            name,
            image,
            cpus,
            memory_mib,
            env: env.unwrap_or_default().into_iter().collect(),
            net_allow: net_allow.unwrap_or_default(),
            net_deny: net_deny.unwrap_or_default(),
            no_network: !network,
            allow_spawn,
            secrets: secrets.unwrap_or_default(),
        };
        let peers = self.inner.clone();
        future_into_py(py, async move { peers.create(spec).await.map_err(to_py) })
    }

    /// Runs `argv` in the child `name` with `stdin`; a `PeerOutput`.
    #[pyo3(signature = (name, argv, stdin=Vec::new()))]
    fn exec<'py>(
        &self,
        py: Python<'py>,
        name: String,
        argv: Vec<String>,
        stdin: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let peers = self.inner.clone();
        future_into_py(py, async move {
            let args: Vec<&str> = argv.iter().map(String::as_str).collect();
            let out = peers.exec(&name, &args, &stdin).await.map_err(to_py)?;
            Ok(PeerOutput {
                code: out.code,
                stdout: out.stdout,
                stderr: out.stderr,
                truncated: out.truncated,
            })
        })
    }

    /// The child's file `path`, as bytes.
    fn read_file<'py>(
        &self,
        py: Python<'py>,
        name: String,
        path: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let peers = self.inner.clone();
        future_into_py(py, async move {
            Ok(Bytes(peers.read_file(&name, &path).await.map_err(to_py)?))
        })
    }

    /// Writes `data` to the child's file `path`.
    fn write_file<'py>(
        &self,
        py: Python<'py>,
        name: String,
        path: String,
        data: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let peers = self.inner.clone();
        future_into_py(py, async move {
            peers.write_file(&name, &path, &data).await.map_err(to_py)
        })
    }

    /// This sandbox's children, as `PeerInfo`s.
    fn list<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let peers = self.inner.clone();
        future_into_py(py, async move {
            let all = peers.list().await.map_err(to_py)?;
            Ok(all
                .into_iter()
                .map(|c| PeerInfo {
                    name: c.name,
                    status: c.status,
                    cpus: c.cpus,
                    memory_mib: c.memory_mib,
                    image: c.image,
                })
                .collect::<Vec<_>>())
        })
    }

    /// Sends the event `kind` with the JSON text `data` to the child `name`.
    fn emit<'py>(
        &self,
        py: Python<'py>,
        name: String,
        kind: String,
        data: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = crate::args::json_arg("event data", &data)?;
        let peers = self.inner.clone();
        future_into_py(py, async move {
            peers.emit(&name, &kind, &data).await.map_err(to_py)
        })
    }

    /// Stops the child `name`.
    fn stop<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let peers = self.inner.clone();
        future_into_py(py, async move { peers.stop(&name).await.map_err(to_py) })
    }

    /// Stops and removes the child `name`.
    fn remove<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        let peers = self.inner.clone();
        future_into_py(py, async move { peers.remove(&name).await.map_err(to_py) })
    }
}
