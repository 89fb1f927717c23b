//! One queue's thread: pops descriptor chains, hands each request to the
//! server and writes the reply back.
//!
//! A chain is checked before anything is read: device-readable descriptors
//! must all come before device-writable ones, the readable part must not
//! exceed [`MAX_REQUEST_BYTES`], and every buffer must lie in guest memory.
//! A chain that fails is answered with an EIO reply when its request header
//! and a 16-byte writable part are usable, otherwise returned with length 0;
//! either way the guest gets its buffers back and a debug line is logged.

use std::sync::Arc;

use msbvm_fs::abi;
use thiserror::Error;
use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::defs::MAX_REQUEST_BYTES;
use super::server::FsServer;
use crate::base::signal_used;
use crate::event_loop::EventHandler;
use crate::{GuestMemoryMmap, Interrupt};

/// Everything one queue's thread owns.
pub struct Worker {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<Interrupt>,
    pub queue: Queue,
    pub server: Arc<dyn FsServer>,
    /// Queue index, for logs.
    pub index: usize,
}

/// Why a chain could not be served as a request.
#[derive(Debug, Error)]
enum ChainError {
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("request of {0} bytes exceeds the {MAX_REQUEST_BYTES}-byte limit")]
    TooBig(usize),
    #[error("descriptor points outside guest memory")]
    BadAddress,
}

impl EventHandler for Worker {
    fn queue_notified(&mut self, _index: usize) {
        self.process();
    }
}

impl Worker {
    fn process(&mut self) {
        let mut used = false;
        let mut reply = Vec::new();
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let mut readable = Vec::new();
            let mut writable = Vec::new();
            let mut order_ok = true;
            for d in chain {
                if d.is_write_only() {
                    writable.push((d.addr(), d.len()));
                } else {
                    order_ok &= writable.is_empty();
                    readable.push((d.addr(), d.len()));
                }
            }
            let len = self.serve(&readable, &writable, order_ok, &mut reply);
            if let Err(e) = self.queue.add_used(&self.mem, head, len) {
                debug!(
                    "virtio-fs: queue {}: cannot return chain {head}: {e}",
                    self.index
                );
            }
            used = true;
        }
        if used {
            signal_used(&mut self.queue, &self.mem, &self.interrupt);
        }
    }

    /// Serves one chain; returns the bytes written into its writable part.
    fn serve(
        &self,
        readable: &[(GuestAddress, u32)],
        writable: &[(GuestAddress, u32)],
        order_ok: bool,
        reply: &mut Vec<u8>,
    ) -> u32 {
        let capacity: u64 = writable.iter().map(|(_, l)| u64::from(*l)).sum();
        let request = match self.gather(readable, order_ok) {
            Ok(r) => r,
            Err(e) => {
                debug!("virtio-fs: queue {}: bad chain: {e}", self.index);
                // Answer if we can name the request.
                let Some(unique) = self.peek_unique(readable) else {
                    return 0;
                };
                reply.clear();
                reply.extend_from_slice(&abi::error_reply(unique, libc::EIO));
                return self.scatter(writable, reply, capacity);
            }
        };
        if let Err(e) = self.server.handle(&request, reply) {
            debug!("virtio-fs: queue {}: {e}", self.index);
            return 0;
        }
        if reply.is_empty() {
            return 0;
        }
        if reply.len() as u64 > capacity {
            // FUSE has no partial replies: the guest gave us less room than
            // the reply it asked for needs.
            let unique = abi::OutHeader::parse(reply).map_or(0, |h| h.unique);
            debug!(
                "virtio-fs: queue {}: reply of {} bytes does not fit {capacity}",
                self.index,
                reply.len()
            );
            reply.clear();
            reply.extend_from_slice(&abi::error_reply(unique, libc::EIO));
        }
        self.scatter(writable, reply, capacity)
    }

    fn gather(
        &self,
        readable: &[(GuestAddress, u32)],
        order_ok: bool,
    ) -> Result<Vec<u8>, ChainError> {
        if !order_ok {
            return Err(ChainError::ReadableAfterWritable);
        }
        let total: usize = readable.iter().map(|(_, l)| *l as usize).sum();
        if total > MAX_REQUEST_BYTES {
            return Err(ChainError::TooBig(total));
        }
        let mut buf = vec![0u8; total];
        let mut at = 0;
        for (addr, len) in readable {
            let len = *len as usize;
            self.mem
                .read_slice(&mut buf[at..at + len], *addr)
                .map_err(|_| ChainError::BadAddress)?;
            at += len;
        }
        Ok(buf)
    }

    /// The request's `unique`, if the first 16 readable bytes are in memory.
    fn peek_unique(&self, readable: &[(GuestAddress, u32)]) -> Option<u64> {
        let mut head = [0u8; 16];
        let mut at = 0;
        for (addr, len) in readable {
            let n = (*len as usize).min(16 - at);
            self.mem.read_slice(&mut head[at..at + n], *addr).ok()?;
            at += n;
            if at == 16 {
                return Some(u64::from_le_bytes(head[8..16].try_into().ok()?));
            }
        }
        None
    }

    /// Writes `data` across the writable buffers; returns the bytes written
    /// (0 if it does not fit or a buffer lies outside guest memory).
    fn scatter(&self, writable: &[(GuestAddress, u32)], data: &[u8], capacity: u64) -> u32 {
        if data.len() as u64 > capacity {
            debug!(
                "virtio-fs: queue {}: no room for a {}-byte reply",
                self.index,
                data.len()
            );
            return 0;
        }
        let mut at = 0;
        for (addr, len) in writable {
            if at == data.len() {
                break;
            }
            let n = (*len as usize).min(data.len() - at);
            if self.mem.write_slice(&data[at..at + n], *addr).is_err() {
                debug!(
                    "virtio-fs: queue {}: reply buffer outside guest memory",
                    self.index
                );
                return 0;
            }
            at += n;
        }
        at as u32
    }
}
