//! msbvm's guest side: the pieces PID 1 needs inside a sandbox VM.
//!
//! Two binaries are built from this crate:
//! - `msbvm-init` (`src/main.rs`): a tiny probe init for boot tests and
//!   benchmarks; it reports what the guest sees and powers off.
//! - `msbvm-agent` (`src/bin/msbvm-agent.rs`): the real agent, which sets the
//!   guest up and serves the host's requests over vsock ([`agent`]); run as
//!   `msbvm` it is the in-guest command instead ([`guest_cli`]).
//!
//! Both use [`platform`], the guest side of msbvm's platform device.

pub mod agent;
pub mod guest_cli;
pub mod platform;
