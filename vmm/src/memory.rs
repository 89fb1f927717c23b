//! Guest RAM: anonymous host memory mapped into the guest-physical space.
//!
//! Where the RAM goes is the architecture's choice (`arch::layout::ram_ranges`).

use vm_memory::{GuestAddress, GuestMemoryMmap};

/// The guest's RAM.
pub type GuestMemory = GuestMemoryMmap<()>;

/// Maps guest RAM over `ranges` (guest-physical start, size).
pub fn create(
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemory, vm_memory::mmap::FromRangesError> {
    GuestMemoryMmap::from_ranges(ranges)
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
    use vm_memory::Bytes;

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
}
