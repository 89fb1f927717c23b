//! What a virtio-balloon worker may call (beyond `confine::BASE` and `confine::EVENT_LOOP`):
//! nothing. Dropping guest pages is `madvise`, which every thread may call (it is in
//! `confine::BASE`).

use crate::allowlist::Syscall;

/// The virtio-balloon worker's allowlist.
pub const SYSCALLS: &[Syscall] = &[];
