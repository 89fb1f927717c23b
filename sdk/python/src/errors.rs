//! The Rust SDK's errors as Python exceptions.
//!
//! The exception classes are defined in Python (`msbvm/errors.py`), where they can also derive
//! from the built-in class a Python user catches (`LookupError`, `TimeoutError`, ...); this
//! module picks the class for each `msbvm_sdk::Error` by its kind (`Error::kind`, one per
//! variant: `NotFound` is `NotFoundError`) and sets its details (`Error::details`) as
//! attributes.

use msbvm_sdk::{Error, ERROR_KINDS};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// The Python module holding the exception classes.
const ERRORS_MODULE: &str = "msbvm.errors";

/// `class_name(message)` from `msbvm.errors` with `attrs` set, or a RuntimeError saying why
/// that class could not be had.
fn instantiate(class_name: &str, message: String, attrs: Vec<(&'static str, String)>) -> PyErr {
    Python::attach(|py| {
        let made = (|| -> PyResult<PyErr> {
            let class = py.import(ERRORS_MODULE)?.getattr(class_name)?;
            let value = class.call1((message.clone(),))?;
            for (k, v) in attrs {
                value.setattr(k, v)?;
            }
            Ok(PyErr::from_value(value))
        })();
        made.unwrap_or_else(|why| {
            PyRuntimeError::new_err(format!(
                "{message} (and {ERRORS_MODULE}.{class_name} is unavailable: {why})"
            ))
        })
    })
}

/// `e` as the Python exception of its kind (`msbvm.errors.<kind>Error`).
pub fn to_py(e: Error) -> PyErr {
    instantiate(&format!("{}Error", e.kind()), e.to_string(), e.details())
}

/// An `InvalidConfigError` with `message` (a bad argument caught before the SDK saw it).
pub fn config_error(message: String) -> PyErr {
    to_py(Error::InvalidConfig(message))
}

/// The exception class names the module raises (for the package's own tests).
#[pyfunction]
pub fn error_classes() -> Vec<String> {
    ERROR_KINDS.iter().map(|k| format!("{k}Error")).collect()
}
