//! Image pulls with a Python progress callback.

use msbvm_sdk as sdk;
use pyo3::prelude::*;
use pyo3_async_runtimes::tokio::future_into_py;

use crate::errors::to_py;

/// Calls a Python progress callback as `callback(kind, id, done, total)`; an exception it
/// raises is reported as unraisable (printed) and does not stop the pull.
pub(crate) struct PyProgress(Option<Py<PyAny>>);

impl PyProgress {
    fn report(&self, kind: &str, id: &str, done: u64, total: u64) {
        if let Some(callback) = &self.0 {
            Python::attach(|py| {
                if let Err(e) = callback.call1(py, (kind, id, done, total)) {
                    e.write_unraisable(py, Some(callback.bind(py)));
                }
            });
        }
    }
}

impl sdk::images::PullProgress for PyProgress {
    fn download_started(&self, digest: &str, total: u64, resumed_from: u64) {
        self.report("download_started", digest, resumed_from, total);
    }
    fn download_progress(&self, digest: &str, done: u64) {
        self.report("download_progress", digest, done, 0);
    }
    fn download_finished(&self, digest: &str, cached: bool) {
        self.report("download_finished", digest, u64::from(cached), 0);
    }
    fn unpack_started(&self, diff_id: &str) {
        self.report("unpack_started", diff_id, 0, 0);
    }
    fn unpack_finished(&self, diff_id: &str, cached: bool) {
        self.report("unpack_finished", diff_id, u64::from(cached), 0);
    }
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
    let progress = PyProgress(progress);
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
