//! The Rust SDK's errors as Python exceptions.
//!
//! The exception classes are defined in Python (`msbvm/errors.py`), where they can also derive
//! from the built-in class a Python user catches (`LookupError`, `TimeoutError`, ...); this
//! module picks the class for each `msbvm_sdk::Error` variant, one class per variant, and sets
//! the variant's fields as attributes.

use msbvm_sdk::{Error, FileErrorKind};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// The Python module holding the exception classes.
const ERRORS_MODULE: &str = "msbvm.errors";

/// The `msbvm.errors` class for each error kind. The match is exhaustive, so a new variant in
/// the Rust SDK does not build until it has a class here (and in errors.py, which the unit
/// tests check against [`CLASSES`]).
fn class_of(e: &Error) -> &'static str {
    match e {
        Error::Image(_) => "ImageError",
        Error::InvalidName { .. } => "InvalidNameError",
        Error::NameInUse { .. } => "NameInUseError",
        Error::NotFound { .. } => "NotFoundError",
        Error::SnapshotNotFound { .. } => "SnapshotNotFoundError",
        Error::NotRunning { .. } => "NotRunningError",
        Error::InvalidConfig(_) => "InvalidConfigError",
        Error::NoKvm(_) => "NoKvmError",
        Error::Kernel(_) => "KernelError",
        Error::AgentMissing(_) => "AgentMissingError",
        Error::BusyboxMissing(_) => "BusyboxMissingError",
        Error::RuntimeMissing(_) => "RuntimeMissingError",
        Error::GuestDied { .. } => "GuestDiedError",
        Error::Vm(_) => "VmError",
        Error::ProtocolMismatch { .. } => "ProtocolMismatchError",
        Error::Protocol { .. } => "ProtocolError",
        Error::Agent(_) => "AgentError",
        Error::Denied(_) => "DeniedError",
        Error::GuestFile(_) => "GuestFileError",
        Error::AgentTimeout { .. } => "AgentTimeoutError",
        Error::LimitExceeded { .. } => "LimitExceededError",
        Error::ConnectionLost => "ConnectionLostError",
        Error::ReadyTimeout { .. } => "ReadyTimeoutError",
        Error::Runtime { .. } => "RuntimeFailedError",
        Error::Io { .. } => "HostIoError",
        Error::CorruptState { .. } => "CorruptStateError",
        Error::NotInSandbox(_) => "NotInSandboxError",
        Error::Spawn(_) => "SpawnError",
    }
}

/// Every class [`class_of`] names.
pub const CLASSES: &[&str] = &[
    "ImageError",
    "InvalidNameError",
    "NameInUseError",
    "NotFoundError",
    "SnapshotNotFoundError",
    "NotRunningError",
    "InvalidConfigError",
    "NoKvmError",
    "KernelError",
    "AgentMissingError",
    "BusyboxMissingError",
    "RuntimeMissingError",
    "GuestDiedError",
    "VmError",
    "ProtocolMismatchError",
    "ProtocolError",
    "AgentError",
    "DeniedError",
    "GuestFileError",
    "AgentTimeoutError",
    "LimitExceededError",
    "ConnectionLostError",
    "ReadyTimeoutError",
    "RuntimeFailedError",
    "HostIoError",
    "CorruptStateError",
    "NotInSandboxError",
    "SpawnError",
];

/// A guest file error's kind as Python sees it (`e.kind == "not_found"`).
fn file_kind(kind: FileErrorKind) -> &'static str {
    match kind {
        FileErrorKind::NotFound => "not_found",
        FileErrorKind::PermissionDenied => "permission_denied",
        FileErrorKind::AlreadyExists => "already_exists",
        FileErrorKind::NotADirectory => "not_a_directory",
        FileErrorKind::IsADirectory => "is_a_directory",
        FileErrorKind::DirectoryNotEmpty => "directory_not_empty",
        FileErrorKind::InvalidInput => "invalid_input",
        FileErrorKind::Other => "other",
        FileErrorKind::LimitExceeded => "limit_exceeded",
    }
}

/// The fields of `e` a caller may act on, as attribute name and value.
fn attributes(e: &Error) -> Vec<(&'static str, String)> {
    match e {
        Error::InvalidName { name, .. }
        | Error::NameInUse { name }
        | Error::NotFound { name }
        | Error::SnapshotNotFound { name } => vec![("name", name.clone())],
        Error::NotRunning { name, status } => {
            vec![("name", name.clone()), ("status", status.clone())]
        }
        Error::GuestDied { console_tail, .. } => vec![("console_tail", console_tail.clone())],
        Error::ReadyTimeout {
            console_tail,
            where_it_was,
            ..
        } => vec![
            ("console_tail", console_tail.clone()),
            ("where_it_was", where_it_was.clone()),
        ],
        Error::GuestFile(f) => vec![("kind", file_kind(f.kind).to_string())],
        Error::Runtime { log_tail, .. } => vec![("log_tail", log_tail.clone())],
        _ => Vec::new(),
    }
}

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

/// `e` as the Python exception of its kind.
pub fn to_py(e: Error) -> PyErr {
    instantiate(class_of(&e), e.to_string(), attributes(&e))
}

/// An `InvalidConfigError` with `message` (a bad argument caught before the SDK saw it).
pub fn config_error(message: String) -> PyErr {
    to_py(Error::InvalidConfig(message))
}

/// The exception class names the module raises (for the package's own tests).
#[pyfunction]
pub fn error_classes() -> Vec<&'static str> {
    CLASSES.to_vec()
}
