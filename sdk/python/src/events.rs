//! The guest's events, and the network stack's record of its decisions.

use std::sync::{Arc, Mutex};

use msbvm_sdk as sdk;
use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::future_into_py;

use crate::errors::to_py;

/// The guest's events, one `next()` at a time, each as JSON text.
#[pyclass(frozen, module = "msbvm._native")]
pub(crate) struct EventStream {
    pub(crate) stream: Arc<tokio::sync::Mutex<sdk::EventStream>>,
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

/// A sandbox's network decisions, read as they are recorded (`Sandbox.network_event_stream`).
#[pyclass(frozen, module = "msbvm._native")]
pub(crate) struct NetEventStream {
    stream: Mutex<sdk::NetEventStream>,
}

impl NetEventStream {
    pub(crate) fn new(stream: sdk::NetEventStream) -> Self {
        NetEventStream {
            stream: Mutex::new(stream),
        }
    }
}

#[pymethods]
impl NetEventStream {
    /// The events recorded since the last poll, oldest first, as the JSON text of a list.
    fn poll(&self, py: Python<'_>) -> PyResult<String> {
        let mut events = Vec::new();
        py.detach(|| {
            // A panic cannot leave the reader half-updated in a way that matters: at worst
            // a line is read again or skipped, so a poisoned lock is taken as it is.
            let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
            stream.poll(&mut |e| events.push(e))
        })
        .map_err(to_py)?;
        Ok(serde_json::Value::Array(events).to_string())
    }
}
