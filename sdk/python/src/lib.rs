//! `msbvm._native`: the Python package's native module, a thin layer over the Rust SDK
//! (`msbvm-sdk`).
//!
//! Every operation that waits (on the runtime, the guest agent or the guest) is an asyncio
//! awaitable backed by a future on a tokio runtime (`pyo3-async-runtimes`), so nothing here
//! blocks the caller's event loop or holds the GIL while it waits. The Python-facing API
//! (`msbvm.Sandbox`, its synchronous twin, the exception classes) is written in Python on top
//! of this module (`python/msbvm/`); this module keeps to conversions and argument checks.
//!
//! What comes back from the guest is bounded by the Rust SDK (`AgentLimits`) before it gets
//! here; this layer adds no buffering of its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use msbvm_sdk as sdk;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3_async_runtimes::tokio::future_into_py;

mod errors;

use errors::{config_error, to_py};

/// A duration given in seconds from Python, checked (a negative, NaN or huge value is a
/// configuration error, not a panic).
fn seconds(what: &str, secs: Option<f64>) -> PyResult<Option<Duration>> {
    secs.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| config_error(format!("{what} must be a number of seconds >= 0, not {s}")))
    })
    .transpose()
}

/// An integer argument: a TypeError for a non-integer, a configuration error for one too
/// large for any setting (rather than Python's OverflowError from the conversion).
fn int_arg(what: &str, value: Option<Bound<'_, PyAny>>) -> PyResult<Option<i64>> {
    let Some(value) = value else {
        return Ok(None);
    };
    match value.extract::<i64>() {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(value.py()) => {
            Err(config_error(format!("{what} is out of range: {value}")))
        }
        Err(e) => Err(e),
    }
}

/// Starts a sandbox; see `msbvm.Sandbox.create` for the arguments.
#[pyfunction]
#[pyo3(signature = (
    name, *, image=None, cpus=None, memory=None, env=None, volumes=None, network=true,
    net_allow=None, net_deny=None, net_default_allow=None, workdir=None, user=None,
    ready_timeout=None, detached=false
))]
#[allow(clippy::too_many_arguments)]
fn create<'py>(
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
) -> PyResult<Bound<'py, PyAny>> {
    sdk::validate_name(&name).map_err(to_py)?;
    let mut b = sdk::Sandbox::builder(name)
        .network(network)
        .detached(detached);
    if let Some(cpus) = int_arg("cpus", cpus)? {
        let n = u8::try_from(cpus)
            .ok()
            .filter(|n| (1..=sdk::MAX_CPUS).contains(n))
            .ok_or_else(|| {
                config_error(format!(
                    "cpus must be between 1 and {}, not {cpus}",
                    sdk::MAX_CPUS
                ))
            })?;
        b = b.cpus(n);
    }
    if let Some(memory) = int_arg("memory", memory)? {
        let mib = u64::try_from(memory)
            .ok()
            .filter(|m| (sdk::MIN_MEMORY_MIB..=sdk::MAX_MEMORY_MIB).contains(m))
            .ok_or_else(|| {
                config_error(format!(
                    "memory must be between {} and {} MiB, not {memory}",
                    sdk::MIN_MEMORY_MIB,
                    sdk::MAX_MEMORY_MIB
                ))
            })?;
        b = b.memory_mib(mib);
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
    future_into_py(py, async move {
        let inner = b.create().await.map_err(to_py)?;
        Ok(Sandbox { inner })
    })
}

/// Attaches to the running sandbox `name` (started by this or another process).
#[pyfunction]
fn get(py: Python<'_>, name: String) -> PyResult<Bound<'_, PyAny>> {
    sdk::validate_name(&name).map_err(to_py)?;
    future_into_py(py, async move {
        let inner = sdk::Sandbox::get(&name).await.map_err(to_py)?;
        Ok(Sandbox { inner })
    })
}

/// Stops (if running) and removes the sandbox `name` with its record and logs.
#[pyfunction]
fn remove(py: Python<'_>, name: String) -> PyResult<Bound<'_, PyAny>> {
    sdk::validate_name(&name).map_err(to_py)?;
    future_into_py(py, async move {
        sdk::Sandbox::remove_named(&name).await.map_err(to_py)
    })
}

/// The sandboxes of this user (`$MSBVM_HOME`), as `SandboxInfo`s.
#[pyfunction]
fn list() -> PyResult<Vec<SandboxInfo>> {
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
struct SandboxInfo {
    name: String,
    status: &'static str,
    pid: u32,
    cpus: u8,
    memory_mib: u64,
    detached: bool,
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
struct Sandbox {
    inner: sdk::Sandbox,
}

/// How to run a process, from Python's keyword arguments.
fn exec_options(
    argv: Vec<String>,
    env: Option<BTreeMap<String, String>>,
    cwd: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    tty: Option<(u16, u16)>,
    timeout: Option<f64>,
) -> PyResult<sdk::ExecOptions> {
    if argv.is_empty() {
        return Err(config_error("the command is empty".into()));
    }
    let mut opts = sdk::ExecOptions::new(argv);
    for (k, v) in env.unwrap_or_default() {
        opts = opts.env(k, v);
    }
    if let Some(cwd) = cwd {
        opts = opts.cwd(cwd);
    }
    if let Some(uid) = uid {
        opts = opts.uid(uid);
    }
    if let Some(gid) = gid {
        opts = opts.gid(gid);
    }
    if let Some((rows, cols)) = tty {
        opts = opts.tty(rows, cols);
    }
    if let Some(t) = seconds("timeout", timeout)? {
        opts = opts.timeout(t);
    }
    Ok(opts)
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
            Ok(ExecStream {
                pid: stream.pid(),
                control: stream.control(),
                stream: Arc::new(tokio::sync::Mutex::new(stream)),
            })
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
        let data: serde_json::Value = serde_json::from_str(&data)
            .map_err(|e| config_error(format!("event data is not JSON: {e}")))?;
        let sb = self.inner.clone();
        future_into_py(py, async move { sb.emit(&kind, data).await.map_err(to_py) })
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

/// Bytes handed to Python as `bytes` (a `Vec<u8>` would become a list of ints).
struct Bytes(Vec<u8>);

impl<'py> IntoPyObject<'py> for Bytes {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(PyBytes::new(py, &self.0))
    }
}

/// What a finished process left behind.
#[pyclass(frozen, module = "msbvm._native")]
struct ExecResult {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: sdk::ExitStatus,
}

impl From<sdk::ExecOutput> for ExecResult {
    fn from(out: sdk::ExecOutput) -> Self {
        ExecResult {
            stdout: out.stdout,
            stderr: out.stderr,
            status: out.status,
        }
    }
}

#[pymethods]
impl ExecResult {
    /// Everything it wrote to stdout (and stderr, on a terminal).
    #[getter]
    fn stdout<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.stdout)
    }
    /// Everything it wrote to stderr.
    #[getter]
    fn stderr<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.stderr)
    }
    /// The status as a shell reports it: the code, 128 + a signal, 124 for a timeout.
    #[getter]
    fn exit_code(&self) -> i32 {
        sdk::shell_exit_code(self.status)
    }
    /// The signal that killed it, if one did.
    #[getter]
    fn signal(&self) -> Option<i32> {
        match self.status {
            sdk::ExitStatus::Signal(s) => Some(s),
            _ => None,
        }
    }
    /// Whether its timeout expired and the agent killed it.
    #[getter]
    fn timed_out(&self) -> bool {
        self.status == sdk::ExitStatus::TimedOut
    }
    fn __repr__(&self) -> String {
        format!(
            "ExecResult(exit_code={}, stdout={} bytes, stderr={} bytes)",
            self.exit_code(),
            self.stdout.len(),
            self.stderr.len()
        )
    }
}

/// A running process's events, one `next_event()` at a time.
#[pyclass(frozen, module = "msbvm._native")]
struct ExecStream {
    pid: u32,
    control: sdk::ExecControl,
    stream: Arc<tokio::sync::Mutex<sdk::ExecStream>>,
}

/// One thing that happened to a process.
#[pyclass(frozen, get_all, module = "msbvm._native")]
struct ExecEvent {
    /// "started", "stdout", "stderr" or "exited".
    kind: &'static str,
    /// The pid ("started").
    pid: Option<u32>,
    /// The exit code as a shell reports it ("exited").
    exit_code: Option<i32>,
    /// The output ("stdout", "stderr"); empty otherwise.
    data: Py<PyBytes>,
}

#[pymethods]
impl ExecEvent {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "ExecEvent(kind={:?}, pid={:?}, exit_code={:?}, data={} bytes)",
            self.kind,
            self.pid,
            self.exit_code,
            self.data.bind(py).as_bytes().len()
        )
    }
}

#[pymethods]
impl ExecStream {
    /// The process's pid in the guest.
    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }

    /// The next event, or None after "exited".
    fn next_event<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stream = self.stream.clone();
        future_into_py(py, async move {
            let event = stream.lock().await.next_event().await.map_err(to_py)?;
            Ok(event.map(|e| {
                let (kind, pid, exit_code, data) = match e {
                    sdk::ExecEvent::Started { pid } => ("started", Some(pid), None, Vec::new()),
                    sdk::ExecEvent::Stdout(d) => ("stdout", None, None, d),
                    sdk::ExecEvent::Stderr(d) => ("stderr", None, None, d),
                    sdk::ExecEvent::Exited(s) => {
                        ("exited", None, Some(sdk::shell_exit_code(s)), Vec::new())
                    }
                };
                Python::attach(|py| ExecEvent {
                    kind,
                    pid,
                    exit_code,
                    data: PyBytes::new(py, &data).unbind(),
                })
            }))
        })
    }

    /// Writes `data` to the process's stdin.
    fn write_stdin<'py>(&self, py: Python<'py>, data: Vec<u8>) -> PyResult<Bound<'py, PyAny>> {
        let control = self.control.clone();
        future_into_py(py, async move { control.write(&data).await.map_err(to_py) })
    }

    /// Closes the process's stdin (it reads end of file).
    fn close_stdin<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let control = self.control.clone();
        future_into_py(
            py,
            async move { control.close_stdin().await.map_err(to_py) },
        )
    }

    /// Sends signal number `signal` to the process.
    fn signal<'py>(&self, py: Python<'py>, signal: i32) -> PyResult<Bound<'py, PyAny>> {
        let control = self.control.clone();
        future_into_py(
            py,
            async move { control.signal(signal).await.map_err(to_py) },
        )
    }

    /// Resizes the process's terminal.
    fn resize<'py>(&self, py: Python<'py>, rows: u16, cols: u16) -> PyResult<Bound<'py, PyAny>> {
        let control = self.control.clone();
        future_into_py(py, async move {
            control.resize(rows, cols).await.map_err(to_py)
        })
    }
}

/// The guest's events, one `next()` at a time, each as JSON text.
#[pyclass(frozen, module = "msbvm._native")]
struct EventStream {
    stream: Arc<tokio::sync::Mutex<sdk::EventStream>>,
}

#[pymethods]
impl EventStream {
    /// The next event as JSON text, or None when the stream ended.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stream = self.stream.clone();
        future_into_py(py, async move {
            match stream.lock().await.next().await {
                None => Ok(None),
                Some(Err(e)) => Err(to_py(e)),
                Some(Ok(event)) => Ok(Some(event.to_json().to_string())),
            }
        })
    }
}

/// An entry of a guest directory, or what a guest path is.
#[pyclass(frozen, get_all, module = "msbvm._native")]
struct DirEntry {
    /// The name in its directory (or the path asked about).
    name: String,
    /// "file", "dir", "symlink" or "other".
    kind: &'static str,
    /// Size in bytes.
    size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    mode: u32,
    /// Owner.
    uid: u32,
    /// Group.
    gid: u32,
    /// Last modification, seconds since the Unix epoch.
    mtime: i64,
}

impl DirEntry {
    fn new(name: String, stat: &sdk::FileStat) -> Self {
        DirEntry {
            name,
            kind: match stat.kind {
                sdk::FileKind::File => "file",
                sdk::FileKind::Dir => "dir",
                sdk::FileKind::Symlink => "symlink",
                sdk::FileKind::Other => "other",
            },
            size: stat.size,
            mode: stat.mode,
            uid: stat.uid,
            gid: stat.gid,
            mtime: stat.mtime,
        }
    }
}

#[pymethods]
impl DirEntry {
    fn __repr__(&self) -> String {
        format!(
            "DirEntry(name={:?}, kind={:?}, size={}, mode={:#o})",
            self.name, self.kind, self.size, self.mode
        )
    }
}

/// The version of msbvm this module was built from.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The module: its functions and classes (the exception classes live in `msbvm.errors`).
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(create, m)?)?;
    m.add_function(wrap_pyfunction!(get, m)?)?;
    m.add_function(wrap_pyfunction!(remove, m)?)?;
    m.add_function(wrap_pyfunction!(list, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(errors::error_classes, m)?)?;
    m.add_class::<Sandbox>()?;
    m.add_class::<SandboxInfo>()?;
    m.add_class::<ExecResult>()?;
    m.add_class::<ExecStream>()?;
    m.add_class::<ExecEvent>()?;
    m.add_class::<EventStream>()?;
    m.add_class::<DirEntry>()?;
    Ok(())
}
