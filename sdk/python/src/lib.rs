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
//!
//! Modules: `sandbox` (create, attach, the `Sandbox` class), `exec` and `events` (processes,
//! event streams and the network event log), `files`, `snapshots` (snapshot and fork),
//! `images` (pulls with a progress callback), `peer` (spawning from inside a sandbox), `args`
//! (converting and checking Python arguments) and `errors` (one Python exception class per SDK
//! error kind).

use pyo3::prelude::*;

mod args;
mod errors;
mod events;
mod exec;
mod files;
mod images;
mod peer;
mod sandbox;
mod snapshots;

use events::{EventStream, NetEventStream};
use exec::{ExecEvent, ExecResult, ExecStream};
use files::DirEntry;
use images::{pull, ImageInfo};
use peer::{connect_peers, in_sandbox, PeerInfo, PeerOutput, Peers};
use sandbox::{create, get, list, remove, Sandbox, SandboxInfo};
use snapshots::{fork, SnapshotInfo};

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
    m.add_function(wrap_pyfunction!(pull, m)?)?;
    m.add_function(wrap_pyfunction!(fork, m)?)?;
    m.add_function(wrap_pyfunction!(in_sandbox, m)?)?;
    m.add_function(wrap_pyfunction!(connect_peers, m)?)?;
    m.add_function(wrap_pyfunction!(errors::error_classes, m)?)?;
    m.add_class::<Sandbox>()?;
    m.add_class::<SandboxInfo>()?;
    m.add_class::<ExecResult>()?;
    m.add_class::<ExecStream>()?;
    m.add_class::<ExecEvent>()?;
    m.add_class::<EventStream>()?;
    m.add_class::<NetEventStream>()?;
    m.add_class::<DirEntry>()?;
    m.add_class::<ImageInfo>()?;
    m.add_class::<SnapshotInfo>()?;
    m.add_class::<Peers>()?;
    m.add_class::<PeerOutput>()?;
    m.add_class::<PeerInfo>()?;
    Ok(())
}
