//! msbvm plugins: users extend a sandbox without forking msbvm.
//!
//! A plugin hooks points of a sandbox's life ([`Hook`]): its lifecycle, each command (before it
//! starts, its output, its end), filesystem operations, network flows, DNS, HTTP requests on
//! inspected connections, bytes per flow, and events. Two kinds, one model:
//!
//! - **In-process:** a type implementing [`Plugin`] (every hook a method with a no-op default),
//!   registered by programs that embed the runtime.
//! - **Out-of-process:** any executable speaking the JSON-lines protocol of `PROTOCOL.md` on
//!   its stdin and stdout ([`external::External`]); `python/msbvm_plugin.py` is the reference
//!   client.
//!
//! A sandbox's plugins form a [`Chain`], in the order given: the first denial wins, changes
//! apply in order and each plugin sees the result of the ones before it, and a hook reaches
//! only the plugins that asked for it. A plugin that fails (panics, crashes, hangs) never takes
//! the sandbox with it: decisions follow its [`FailurePolicy`] and a [`Notice`] says what
//! happened.

#![forbid(unsafe_code)]

pub mod builtin;
mod chain;
pub mod data;
pub mod external;
mod hook;
pub mod offload;
mod plugin;
pub mod serve;
pub mod spec;

pub use chain::Chain;
pub use hook::{Hook, Interests};
pub use offload::Offload;
pub use plugin::{Decision, FailurePolicy, Limits, Notice, NoticeSink, Plugin};
pub use spec::{PluginSpec, Source};

/// The thread kind this crate's threads announce to [`set_thread_hook`]'s hook.
pub const THREAD_KIND: &str = "plugins";

static THREAD_HOOK: std::sync::OnceLock<fn(&'static str)> = std::sync::OnceLock::new();

/// Registers `hook`, which every thread this crate starts calls first with [`THREAD_KIND`]
/// (a confined runtime gives its threads their system-call filter there). Returns false if
/// one was registered already (the first stays).
pub fn set_thread_hook(hook: fn(&'static str)) -> bool {
    THREAD_HOOK.set(hook).is_ok()
}

/// Called first on every thread this crate starts.
pub(crate) fn thread_started() {
    if let Some(hook) = THREAD_HOOK.get() {
        hook(THREAD_KIND);
    }
}
