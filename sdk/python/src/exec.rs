//! Processes: their results and event streams.

use std::sync::Arc;

use msbvm_sdk as sdk;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3_async_runtimes::tokio::future_into_py;

use crate::errors::to_py;

/// What a finished process left behind.
#[pyclass(frozen, module = "msbvm._native")]
pub(crate) struct ExecResult {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) status: sdk::ExitStatus,
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
        self.status.signal()
    }
    /// Whether its timeout expired and the agent killed it.
    #[getter]
    fn timed_out(&self) -> bool {
        self.status.timed_out()
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
pub(crate) struct ExecStream {
    pid: u32,
    /// `None` once closed: it holds the connection's write half, whose end tells the guest
    /// agent the host went away (it then kills the process group).
    control: std::sync::Mutex<Option<sdk::ExecControl>>,
    /// `None` once closed (and not being read).
    stream: Arc<tokio::sync::Mutex<Option<sdk::ExecStream>>>,
}

impl ExecStream {
    pub(crate) fn new(stream: sdk::ExecStream) -> Self {
        ExecStream {
            pid: stream.pid(),
            control: std::sync::Mutex::new(Some(stream.control())),
            stream: Arc::new(tokio::sync::Mutex::new(Some(stream))),
        }
    }

    /// The process's control, unless the stream was closed.
    fn control(&self) -> PyResult<sdk::ExecControl> {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| to_py(sdk::Error::ConnectionLost))
    }
}

/// One thing that happened to a process.
#[pyclass(frozen, get_all, module = "msbvm._native")]
pub(crate) struct ExecEvent {
    /// "started", "stdout", "stderr" or "exited".
    pub(crate) kind: &'static str,
    /// The pid ("started").
    pub(crate) pid: Option<u32>,
    /// The exit code as a shell reports it ("exited").
    pub(crate) exit_code: Option<i32>,
    /// The output ("stdout", "stderr"); empty otherwise.
    pub(crate) data: Py<PyBytes>,
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
            let mut guard = stream.lock().await;
            let Some(stream) = guard.as_mut() else {
                return Ok(None);
            };
            let event = stream.next_event().await.map_err(to_py)?;
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
        let control = self.control()?;
        future_into_py(py, async move { control.write(&data).await.map_err(to_py) })
    }

    /// Closes the process's stdin (it reads end of file).
    fn close_stdin<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let control = self.control()?;
        future_into_py(
            py,
            async move { control.close_stdin().await.map_err(to_py) },
        )
    }

    /// Sends signal number `signal` to the process.
    fn signal<'py>(&self, py: Python<'py>, signal: i32) -> PyResult<Bound<'py, PyAny>> {
        let control = self.control()?;
        future_into_py(
            py,
            async move { control.signal(signal).await.map_err(to_py) },
        )
    }

    /// Resizes the process's terminal.
    fn resize<'py>(&self, py: Python<'py>, rows: u16, cols: u16) -> PyResult<Bound<'py, PyAny>> {
        let control = self.control()?;
        future_into_py(py, async move {
            control.resize(rows, cols).await.map_err(to_py)
        })
    }

    /// Stops the process: the connection's write half closes, so the guest agent kills the
    /// process group (a pending `next_event` then sees it end); the stream is dropped once
    /// nothing reads it.
    fn close(&self) {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Ok(mut stream) = self.stream.try_lock() {
            stream.take();
        }
    }
}
