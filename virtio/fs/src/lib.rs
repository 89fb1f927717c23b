//! msbvm's in-process FUSE server.
//!
//! The guest kernel's virtiofs driver sends FUSE requests over a virtqueue;
//! [`server`] decodes them (bounds-checked: the bytes come from the guest),
//! calls a [`FileSystem`] backend and encodes the reply. Backends:
//! a confined passthrough of a host directory, OCI image layers under a
//! copy-on-write upper directory, and an in-memory tree. [`hooks`] wrap any
//! backend to observe, deny, rewrite or answer operations.
//! [`saved_state`] is what a backend keeps across a VM snapshot, so a fresh
//! backend in the restored VM answers for the ids the guest still holds.
//!
//! Unsafe code lives in two places only: `host_util` (every host syscall the
//! backends make) and the [`abi`] request structs' `ByteValued` impls.

#![deny(unsafe_code)]

pub mod abi;
mod backend_common;
pub mod filesystem;
mod handle_table;
pub mod hooks;
#[allow(unsafe_code)]
mod host_util;
pub use msbvm_layer_meta as layer_meta;
pub mod layered;
pub mod memory;
pub mod passthrough;
mod path_table;
pub mod saved_state;
pub mod server;
#[cfg(test)]
mod test_util;

pub use filesystem::{
    Attr, Context, DirEntry, Entry, FileSystem, Handle, Inode, OpenReply, SetAttr, StatFs, TimeSet,
    ROOT_INODE,
};
pub use layered::{LayeredConfig, LayeredFs};
pub use memory::MemoryFs;
pub use passthrough::{IdMap, IdRange, PassthroughConfig, PassthroughFs};
pub use saved_state::FsState;
pub use server::{Server, ServerOptions};
