//! The Rust SDK users embed to create and drive sandboxes.
//!
//! It will start one runtime child process per sandbox (no daemon) and talk to
//! the guest agent through it. Nothing is implemented yet; today the `msbvm`
//! command line drives `msbvm-vmm` directly.
