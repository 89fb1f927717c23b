//! The guest's events.

use std::sync::Arc;

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
