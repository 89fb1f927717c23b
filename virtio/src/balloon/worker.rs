//! The virtio-balloon queues' [`EventHandler`]: drops the host's copy of the pages the guest
//! reports free (reporting queue) or gives up (inflate queue), and hands deflate buffers back.
//!
//! Everything the guest sends is checked before a page is dropped: only whole host pages that
//! lie entirely inside one region of guest RAM are discarded, a range that reaches outside is
//! refused (counted, logged at debug level) and the chain is returned all the same, so a
//! confused or hostile driver can only give up its own memory. An inflate buffer is read up
//! to [`MAX_PFNS_PER_CHAIN`] page numbers; a chain is at most a queue's size of descriptors
//! (the queue stops longer ones), so one request is a bounded amount of work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::debug;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use super::defs::{BALLOON_PAGE, DEFLATE_QUEUE, INFLATE_QUEUE, PFN_SHIFT, REPORTING_QUEUE};
use crate::base::signal_used;
use crate::event_loop::EventHandler;
use crate::{GuestMemoryMmap, Interrupt};

/// Most page numbers read from one inflate chain (Linux sends at most 256).
pub const MAX_PFNS_PER_CHAIN: usize = 4096;

/// What the guest has given back, for logs, benchmarks and tests.
#[derive(Debug, Default)]
pub struct BalloonStats {
    reported: AtomicU64,
    inflated: AtomicU64,
    refused: AtomicU64,
}

impl BalloonStats {
    /// Bytes of guest RAM dropped because the guest reported them free (counted again each
    /// time a block is reported).
    pub fn reported_bytes(&self) -> u64 {
        self.reported.load(Ordering::Relaxed)
    }

    /// Bytes of guest RAM dropped because the guest put them in the balloon.
    pub fn inflated_bytes(&self) -> u64 {
        self.inflated.load(Ordering::Relaxed)
    }

    /// Ranges refused: not inside guest RAM.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Everything the device thread owns.
pub struct Worker {
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    stats: Arc<BalloonStats>,
    host_page: u64,
}

impl Worker {
    /// The worker for `queues` (inflate, deflate and, when negotiated, reporting).
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        queues: Vec<Queue>,
        stats: Arc<BalloonStats>,
    ) -> Self {
        // SAFETY: sysconf only reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Self {
            mem,
            interrupt,
            queues,
            stats,
            host_page: u64::try_from(page).unwrap_or(4096).max(4096),
        }
    }
}

/// What serving a chain needs besides its queue.
struct Dropper<'a> {
    mem: &'a GuestMemoryMmap,
    stats: &'a BalloonStats,
    host_page: u64,
}

impl Dropper<'_> {
    /// Serves one chain of queue `index`.
    fn serve(&self, index: usize, chain: DescriptorChain<&GuestMemoryMmap>) {
        match index {
            INFLATE_QUEUE => {
                let pfns = read_pfns(self.mem, chain);
                for (pfn, pages) in runs(&pfns) {
                    // Page numbers are 32 bits: neither product can overflow.
                    let (addr, len) = (pfn << PFN_SHIFT, pages * BALLOON_PAGE);
                    self.drop_range(addr, len, &self.stats.inflated);
                }
            }
            // The guest takes pages back: nothing to do, they refault on first use.
            DEFLATE_QUEUE => {}
            REPORTING_QUEUE => {
                for desc in chain {
                    let (addr, len) = (desc.addr().raw_value(), u64::from(desc.len()));
                    self.drop_range(addr, len, &self.stats.reported);
                }
            }
            _ => {}
        }
    }

    /// Drops the host pages of guest range [`addr`, `addr + len`), adding what was dropped to
    /// `counter`.
    fn drop_range(&self, addr: u64, len: u64, counter: &AtomicU64) {
        match discard(self.mem, addr, len, self.host_page) {
            Ok(n) => {
                counter.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                debug!("virtio-balloon: not dropping {len:#x} bytes at {addr:#x}: {e}");
            }
        }
    }
}

impl EventHandler for Worker {
    fn queue_notified(&mut self, index: usize) {
        let dropper = Dropper {
            mem: &self.mem,
            stats: &self.stats,
            host_page: self.host_page,
        };
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            dropper.serve(index, chain);
            if let Err(e) = queue.add_used(&self.mem, head, 0) {
                debug!("virtio-balloon: cannot return chain {head}: {e}");
            }
            used = true;
        }
        if used {
            signal_used(queue, &self.mem, &self.interrupt);
        }
    }
}

/// The page numbers of an inflate chain's device-readable buffers (little-endian `u32`s), at
/// most [`MAX_PFNS_PER_CHAIN`]; a buffer outside guest memory ends the list.
fn read_pfns(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Vec<u64> {
    let mut pfns = Vec::new();
    for desc in chain {
        if desc.is_write_only() {
            debug!("virtio-balloon: device-writable descriptor in an inflate request");
            break;
        }
        let count = (desc.len() / 4) as usize;
        for i in 0..count.min(MAX_PFNS_PER_CHAIN - pfns.len()) {
            let Some(at) = desc.addr().checked_add(4 * i as u64) else {
                return pfns;
            };
            match mem.read_obj::<u32>(at) {
                Ok(pfn) => pfns.push(u64::from(u32::from_le(pfn))),
                Err(_) => {
                    debug!("virtio-balloon: inflate buffer outside guest memory");
                    return pfns;
                }
            }
        }
        if pfns.len() == MAX_PFNS_PER_CHAIN {
            break;
        }
    }
    pfns
}

/// Consecutive page numbers of `pfns` as (first, count) runs, in order.
fn runs(pfns: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &pfn in pfns {
        match out.last_mut() {
            Some((first, count)) if first.checked_add(*count) == Some(pfn) => *count += 1,
            _ => out.push((pfn, 1)),
        }
    }
    out
}

/// Drops the host's copy of the whole host pages inside guest range [`addr`, `addr + len`)
/// (`host_page`-sized, a power of two); returns the bytes dropped. Partial pages at either
/// end are kept (they may hold data the guest did not give up). Refused unless the range lies
/// in one region of guest RAM.
pub(crate) fn discard(
    mem: &GuestMemoryMmap,
    addr: u64,
    len: u64,
    host_page: u64,
) -> Result<u64, &'static str> {
    let end = addr.checked_add(len).ok_or("the range wraps around")?;
    let region = mem
        .find_region(GuestAddress(addr))
        .ok_or("outside guest memory")?;
    let region_start = region.start_addr().raw_value();
    // The region's end is start + len, which fits: vm-memory checks regions when made.
    if end > region_start + region.len() {
        return Err("past the end of a guest memory region");
    }
    let first = addr.next_multiple_of(host_page);
    let last = end - end % host_page;
    if last <= first {
        return Ok(0);
    }
    let host = region
        .get_host_address(MemoryRegionAddress(first - region_start))
        .map_err(|_| "no host mapping")?;
    let bytes = last - first;
    // SAFETY: [host, host + bytes) is inside this region's mapping (checked above), which is
    // guest RAM: only guest code and the device workers use it, through accessors that read
    // zeroes (or the snapshot's page) after this. Dropping pages never unmaps them.
    let rc = unsafe { libc::madvise(host.cast(), bytes as usize, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err("madvise refused the range");
    }
    Ok(bytes)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn runs_join_consecutive_pages_only() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(
            runs(&[5, 6, 7, 9, 3, 4, u64::MAX]),
            vec![(5, 3), (9, 1), (3, 2), (u64::MAX, 1)]
        );
    }

    #[test]
    fn discard_keeps_partial_pages_and_refuses_what_is_not_ram() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(4 << 20), 1 << 20),
        ])
        .unwrap();
        mem.write_slice(&[7u8; 3 * 4096], GuestAddress(4096))
            .unwrap();
        // Only the whole page in the middle goes.
        assert_eq!(discard(&mem, 4096 + 1, 3 * 4096 - 2, 4096), Ok(4096));
        let mut page = [0u8; 4096];
        mem.read_slice(&mut page, GuestAddress(2 * 4096)).unwrap();
        assert_eq!(page, [0u8; 4096]);
        mem.read_slice(&mut page, GuestAddress(4096)).unwrap();
        assert_eq!(page, [7u8; 4096]);
        mem.read_slice(&mut page, GuestAddress(3 * 4096)).unwrap();
        assert_eq!(page, [7u8; 4096]);
        // Less than a page: nothing.
        assert_eq!(discard(&mem, 4096, 100, 4096), Ok(0));
        // Outside RAM, across the gap, past the end, wrapping.
        assert!(discard(&mem, 2 << 20, 4096, 4096).is_err());
        assert!(discard(&mem, (1 << 20) - 4096, 8192, 4096).is_err());
        assert!(discard(&mem, (5 << 20) - 4096, 8192, 4096).is_err());
        assert!(discard(&mem, u64::MAX - 10, 100, 4096).is_err());
    }
}
