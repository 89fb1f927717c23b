//! Image pulls with a Python progress callback.

use msbvm_sdk as sdk;
use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::future_into_py;

use crate::errors::to_py;

/// Calls a Python progress callback as `callback(kind, id, done, total)` for each pull step
/// (see `msbvm_sdk::images::PullStep`); an exception it raises is reported as unraisable
/// (printed) and does not stop the pull.
fn py_progress(
    callback: Option<Py<PyAny>>,
) -> sdk::images::ProgressFn<impl Fn(sdk::images::PullStep<'_>) + Send + Sync> {
    sdk::images::ProgressFn(move |step: sdk::images::PullStep<'_>| {
        if let Some(callback) = &callback {
            Python::attach(|py| {
                let args = (step.kind, step.id, step.done, step.total);
                if let Err(e) = callback.call1(py, args) {
                    e.write_unraisable(py, Some(callback.bind(py)));
                }
            });
        }
    })
}

/// Pulls `reference` into the image store (the embedded default image is imported instead);
/// `progress` is called as it goes. Returns an `ImageInfo`.
#[pyfunction]
#[pyo3(signature = (reference, *, progress=None, plain_http=None))]
pub(crate) fn pull(
    py: Python<'_>,
    reference: String,
    progress: Option<Py<PyAny>>,
    plain_http: Option<Vec<String>>,
) -> PyResult<Bound<'_, PyAny>> {
    let mut options = sdk::images::options_from_env();
    options
        .insecure_plain_http_registries
        .extend(plain_http.unwrap_or_default());
    let progress = py_progress(progress);
    future_into_py(py, async move {
        let info = sdk::images::pull(&reference, &options, &progress)
            .await
            .map_err(to_py)?;
        Ok(ImageInfo {
            reference: info.reference,
            digest: info.manifest_digest,
            size: info.size,
            layers: info.layers.len(),
        })
    })
}

/// An image in the store, as `pull` reports it.
#[pyclass(frozen, get_all, module = "msbvm._native")]
pub(crate) struct ImageInfo {
    /// The reference it was pulled by.
    pub(crate) reference: String,
    /// Its manifest digest.
    pub(crate) digest: String,
    /// Its layers' compressed size in bytes.
    pub(crate) size: u64,
    /// How many layers it has.
    pub(crate) layers: usize,
}

#[pymethods]
impl ImageInfo {
    fn __repr__(&self) -> String {
        format!(
            "ImageInfo(reference={:?}, digest={:?}, size={}, layers={})",
            self.reference, self.digest, self.size, self.layers
        )
    }
}
