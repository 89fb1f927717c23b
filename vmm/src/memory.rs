//! Guest RAM: anonymous host memory mapped into the guest-physical space.
//!
//! Where the RAM goes is the architecture's choice (`arch::layout::ram_ranges`).
//!
//! Huge pages: KVM maps guest memory with 2 MiB pages only where the host backs it with
//! transparent huge pages *and* the host address and the guest-physical address are equally
//! placed within 2 MiB. With 4 KiB mappings every page the guest first touches is one more
//! nested page fault, an exit, which under nested virtualization measured about 5,000 extra
//! exits on the way to the init marker (see the boot benchmark's KVM counters). So each RAM
//! region is placed at a host address congruent to its guest address modulo 2 MiB and
//! advised `MADV_HUGEPAGE` (as QEMU does; Firecracker aligns the same way).

use vm_memory::mmap::FromRangesError;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

/// The guest's RAM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// The transparent huge page size the placement aims for.
const HUGE_PAGE: usize = 2 << 20;

/// Maps guest RAM over `ranges` (guest-physical start, size), each region placed for huge
/// pages where the host allows (see the module docs).
pub fn create(ranges: &[(GuestAddress, usize)]) -> Result<GuestMemory, FromRangesError> {
    let regions = ranges
        .iter()
        .map(|&(start, size)| {
            let region = {
                let _hole = PlacementHole::new(size, start.0 as usize % HUGE_PAGE);
                GuestRegionMmap::from_range(start, size, None)?
            };
            advise_huge_pages(&region);
            Ok(region)
        })
        .collect::<Result<Vec<_>, FromRangesError>>()?;
    Ok(GuestMemoryMmap::from_regions(regions)?)
}

/// Asks the host for transparent huge pages behind `region` (a no-op where they are off).
fn advise_huge_pages(region: &GuestRegionMmap<()>) {
    let (addr, len) = (region.as_ptr(), region.len() as usize);
    // Transparent huge pages are Linux's; macOS backs anonymous memory its own way.
    #[cfg(target_os = "linux")]
    {
        // SAFETY: madvise only changes how the kernel backs this mapping, which we own; it
        // never changes its contents.
        let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            tracing::debug!(
                "guest memory: MADV_HUGEPAGE: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    tracing::debug!(
        "guest memory: {len} bytes at {addr:p} ({} within 2 MiB)",
        addr as usize % HUGE_PAGE
    );
}

/// A reserved stretch of address space with a hole of `size` bytes plus 2 MiB, whose last
/// `size` bytes start `offset` past a 2 MiB boundary. vm-memory maps anonymous regions with
/// `mmap(NULL, ...)`; Linux gives such a mapping the highest free gap that fits, at the gap's
/// top (so: the hole's last `size` bytes), or, on kernels that align large anonymous
/// mappings to 2 MiB themselves (6.7 and later), the highest aligned place in it, which the
/// extra 2 MiB leaves room for. A larger free gap higher up, or another thread mapping first,
/// would win: the placement is best effort, never needed for correctness. Dropping it
/// releases what is left of the reservation.
struct PlacementHole {
    pieces: [(usize, usize); 2],
}

impl PlacementHole {
    fn new(size: usize, offset: usize) -> Option<Self> {
        let len = size.checked_add(HUGE_PAGE)?;
        let total = len.checked_add(2 * HUGE_PAGE)?;
        // SAFETY: a fresh PROT_NONE anonymous mapping at an address of the kernel's choice
        // touches nothing else.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let (base, end) = (base as usize, base as usize + total);
        // The highest hole start at or below end - len that is `offset` past a 2 MiB boundary
        // (so is its last `size` bytes' start, `len - size` being 2 MiB).
        let latest = end - len;
        let mut hole = latest - latest % HUGE_PAGE + offset;
        if hole > latest {
            hole -= HUGE_PAGE;
        }
        // SAFETY: [hole, hole + len) lies inside the reservation made above.
        unsafe { libc::munmap(hole as *mut libc::c_void, len) };
        Some(Self {
            pieces: [(base, hole - base), (hole + len, end - hole - len)],
        })
    }
}

impl Drop for PlacementHole {
    fn drop(&mut self) {
        for (addr, len) in self.pieces {
            if len > 0 {
                // SAFETY: what is left of this reservation's own mapping.
                unsafe { libc::munmap(addr as *mut libc::c_void, len) };
            }
        }
    }
}

/// Lets another thread read a running VM's guest RAM: a debugging aid (`msbvm debug
/// dump-memory`), e.g. to check that something never reached the guest. Empty before the
/// VM's memory exists and after it ends.
#[derive(Clone, Default)]
pub struct MemoryHandle(std::sync::Arc<std::sync::Mutex<Option<GuestMemory>>>);

impl std::fmt::Debug for MemoryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryHandle")
    }
}

impl MemoryHandle {
    /// A handle to no memory yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Points the handle at `mem` (`None`: the VM ended).
    pub fn set(&self, mem: Option<GuestMemory>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = mem;
    }

    /// Writes all guest RAM, region after region in guest-physical order, to `out`; returns
    /// the bytes written. `NotFound` when no VM runs. The guest keeps running meanwhile, so
    /// the copy is not one instant's.
    pub fn dump(&self, out: &mut impl std::io::Write) -> std::io::Result<u64> {
        use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};
        // A clone keeps the mapping alive without holding the lock through the copy.
        let mem = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no VM is running"))?;
        const CHUNK: u64 = 1 << 20;
        let mut buf = vec![0u8; CHUNK as usize];
        let mut written = 0u64;
        for region in mem.iter() {
            let (start, len) = (region.start_addr(), region.len());
            let mut offset = 0;
            while offset < len {
                let n = CHUNK.min(len - offset) as usize;
                mem.read_slice(&mut buf[..n], start.unchecked_add(offset))
                    .map_err(std::io::Error::other)?;
                out.write_all(&buf[..n])?;
                offset += n as u64;
                written += n as u64;
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn dump_writes_every_region_in_order() {
        let handle = MemoryHandle::new();
        assert!(handle.dump(&mut Vec::new()).is_err());
        let mem = create(&[(GuestAddress(0), 4096), (GuestAddress(1 << 20), 8192)]).unwrap();
        mem.write_slice(b"first", GuestAddress(0)).unwrap();
        mem.write_slice(b"second", GuestAddress((1 << 20) + 4096))
            .unwrap();
        handle.set(Some(mem));
        let mut out = Vec::new();
        assert_eq!(handle.dump(&mut out).unwrap(), 12288);
        assert_eq!(&out[..5], b"first");
        assert_eq!(&out[4096 + 4096..4096 + 4096 + 6], b"second");
        handle.set(None);
        assert!(handle.dump(&mut Vec::new()).is_err());
    }

    #[test]
    fn regions_sit_where_huge_pages_can_back_them() {
        // Best effort by design (another test thread may map into the hole first), so a few
        // tries. (Kernels from 6.7 align large anonymous mappings themselves, so there this
        // checks only that the hole does not get in their way; the boot benchmark's KVM
        // counters in L1, a 6.1 kernel, show the placement itself: `pages_2m`.)
        let lined_up = (0..5).any(|_| {
            let mem = create(&[
                (GuestAddress(0), 64 << 20),
                (GuestAddress(4 << 30), 8 << 20),
            ])
            .unwrap();
            let lined_up = mem.iter().all(|r| {
                (r.as_ptr() as usize - r.start_addr().0 as usize).is_multiple_of(HUGE_PAGE)
            });
            lined_up
        });
        assert!(lined_up);
        // Memory still works as memory, the placement reservation is gone.
        let mem = create(&[(GuestAddress(0), 4 << 20)]).unwrap();
        mem.write_slice(b"x", GuestAddress((4 << 20) - 1)).unwrap();
    }
}
