//! The virtio-rng queue's [`EventHandler`]: fills every device-writable
//! buffer of each chain with random bytes.
//!
//! A chain gets at most [`MAX_CHAIN_BYTES`] (Linux asks for far less), so
//! one request cannot keep the thread busy; device-readable descriptors and
//! buffers outside guest memory end the chain where they stand, and the
//! used length says how much was filled.

use std::sync::Arc;

use tracing::debug;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes};

use crate::base::signal_used;
use crate::event_loop::EventHandler;
use crate::{GuestMemoryMmap, Interrupt};

/// Most bytes put in one chain.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;

/// Everything the device thread owns.
pub struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue: Queue,
    scratch: Vec<u8>,
}

impl Worker {
    /// The worker for the request queue.
    pub fn new(mem: GuestMemoryMmap, interrupt: Arc<Interrupt>, queue: Queue) -> Self {
        Self {
            mem,
            interrupt,
            queue,
            scratch: vec![0; 4096],
        }
    }
}

impl EventHandler for Worker {
    fn queue_notified(&mut self, _index: usize) {
        let mut used = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let len = fill(&self.mem, &mut self.scratch, chain);
            if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                debug!("virtio-rng: cannot return chain {head}: {e}");
            }
            used = true;
        }
        if used {
            signal_used(&mut self.queue, &self.mem, &self.interrupt);
        }
    }
}

/// Fills the chain's writable buffers, through `scratch`; returns the bytes
/// written.
fn fill(
    mem: &GuestMemoryMmap,
    scratch: &mut [u8],
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> u32 {
    let mut written = 0usize;
    for desc in chain {
        if !desc.is_write_only() {
            debug!("virtio-rng: device-readable descriptor in a request");
            break;
        }
        let mut at = desc.addr();
        let mut left = (desc.len() as usize).min(MAX_CHAIN_BYTES - written);
        while left > 0 {
            let n = left.min(scratch.len());
            let chunk = &mut scratch[..n];
            if let Err(e) = getrandom(chunk) {
                debug!("virtio-rng: getrandom failed: {e}");
                return written as u32;
            }
            if mem.write_slice(chunk, at).is_err() {
                debug!("virtio-rng: buffer outside guest memory");
                return written as u32;
            }
            // Cannot overflow: the write just above fitted in memory.
            at = at.unchecked_add(n as u64);
            left -= n;
            written += n;
        }
    }
    written as u32
}

/// Fills `buf` from the kernel's CSPRNG.
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes.
        let rc = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += rc as usize;
    }
    Ok(())
}
