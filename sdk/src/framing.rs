//! `msbvm_protocol` frames over byte streams: the protocol crate's readers and writers
//! ([`msbvm_protocol::framing`]), async (tokio) for the SDK and blocking for the runtime.
//! The runtime-control protocol reuses the same framing.

pub use msbvm_protocol::framing::*;
