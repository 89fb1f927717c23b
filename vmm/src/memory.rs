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
