//! `msbvm.node`: the npm package's native addon, a thin layer over the Rust SDK (`msbvm-sdk`)
//! built with napi-rs.
//!
//! Every call that waits returns a Promise backed by a future on napi's tokio runtime, so
//! nothing blocks Node's event loop. The JavaScript API (`Sandbox`, async iterators,
//! `AbortSignal`, the error classes) is written in JavaScript over this addon (`index.js`,
//! typed by `index.d.ts`); this addon keeps to conversions and argument checks.
//!
//! Errors cross as a JavaScript `Error` whose message is a JSON object (`kind`, `message`,
//! `details`) that `index.js` turns into the class of that kind (`NotFoundError`, ...), the
//! same kinds as the Rust SDK's (`msbvm_sdk::Error::kind`) and the Python package's classes.
//!
//! Modules: `sandbox` (create, attach, the `Sandbox` class, snapshots, forks, pulls),
//! `process` (exec results, the process and event streams), `options` (the option objects
//! and their checks), `peer` (spawning from inside a sandbox).

// napi-derive leaves its export registration out of test builds, so under `cargo clippy
// --all-targets` (which checks this library with cfg(test)) everything only JavaScript calls
// looks unused.
#![cfg_attr(test, allow(dead_code))]

mod options;
mod peer;
mod process;
mod sandbox;

use msbvm_sdk as sdk;
use napi_derive::napi;

/// `e` as the addon's error: a JSON message `index.js` maps to an error class.
pub(crate) fn to_js(e: sdk::Error) -> napi::Error {
    error_of(e.kind(), &e.to_string(), e.details())
}

/// An `InvalidConfig` error with `message` (a bad argument caught before the SDK saw it).
pub(crate) fn config_error(message: String) -> napi::Error {
    to_js(sdk::Error::InvalidConfig(message))
}

fn error_of(kind: &str, message: &str, details: Vec<(&'static str, String)>) -> napi::Error {
    let details: serde_json::Map<String, serde_json::Value> = details
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
        .collect();
    let body = serde_json::json!({ "kind": kind, "message": message, "details": details });
    napi::Error::new(napi::Status::GenericFailure, body.to_string())
}

/// JSON text from JavaScript (what `index.js` made with `JSON.stringify`), parsed.
pub(crate) fn json_arg(what: &str, text: &str) -> napi::Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| config_error(format!("{what} is not JSON: {e}")))
}

/// Every error kind the addon reports (`NotFound`, ...); `index.js` has a class for each.
#[napi]
pub fn error_kinds() -> Vec<String> {
    sdk::ERROR_KINDS.iter().map(|k| k.to_string()).collect()
}

/// The version of msbvm this addon was built from.
#[napi]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
