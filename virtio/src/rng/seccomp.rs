//! What a virtio-rng worker may call (beyond `confine::BASE` and `confine::EVENT_LOOP`):
//! nothing. It fills guest buffers from `getrandom`, which every thread may call (it is in
//! `confine::BASE`).

use crate::allowlist::Syscall;

/// The virtio-rng worker's allowlist.
pub const SYSCALLS: &[Syscall] = &[];
