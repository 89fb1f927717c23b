//! The x86_64 guest-physical address map msbvm builds.
//!
//! Low memory holds the boot structures the VMM writes (GDT, page tables, boot
//! information, command line, MP table); the kernel loads at its own physical
//! address above 1 MiB; RAM beyond 3 GiB is moved above the 32-bit device hole
//! where the IO-APIC, local APIC and virtio-mmio devices live.

use vm_memory::GuestAddress;

use crate::memory::{self, GuestMemory};

/// Start of the GDT used for both boot protocols.
pub const BOOT_GDT_START: u64 = 0x500;
/// Start of the (empty) IDT loaded at entry.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` ("zero page") for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity-mapping page tables for the long-mode entry (PML4, PDPT, PDs).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directories (2 MiB pages), one 4 KiB page per GiB mapped: 0xb000..0xf000.
pub const PDE_START: u64 = 0xb000;
/// Stack top for hand-made test guests.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub use crate::config::CMDLINE_MAX_SIZE;
/// End of the low RAM block; the last KiB below 640 KiB is where the kernel
/// looks for the MP floating pointer when there is no ACPI.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table (floating pointer followed by the configuration table).
pub const MPTABLE_START: u64 = EBDA_START;
/// Where RAM resumes above the legacy hole.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit device hole.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit device hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// KVM's three-page TSS area for real-mode emulation, inside the hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// The IO-APIC's MMIO window.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APIC's MMIO window.
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// msbvm's platform device on the MMIO bus (boot timer and power control),
/// for guests and architectures without port I/O.
pub const PLATFORM_MMIO_START: u64 = 0xd000_0000;
/// msbvm's platform device in port-I/O space (its MMIO twin is
/// [`PLATFORM_MMIO_START`]); the guest agent has the same number.
pub const PLATFORM_PORT_BASE: u64 = 0x0440;
/// I/O port base of COM1, the console UART.
pub const COM1_BASE: u64 = 0x3f8;
/// Where virtio-mmio devices will be placed, one page each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_1000;
/// Number of IO-APIC pins (GSIs) the in-kernel irqchip provides.
pub const IOAPIC_PINS: u8 = 24;
/// Legacy IRQ of the COM1 serial port.
pub const SERIAL_IRQ: u32 = 4;
/// The interrupt lines given to virtio devices, one each: those above COM1's
/// up to the last IO-APIC pin.
pub const VIRTIO_IRQS: std::ops::Range<u32> = 5..IOAPIC_PINS as u32;

/// The guest-physical RAM ranges for `size` bytes: one range below the 32-bit
/// device hole and, for more than 3 GiB, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

/// Maps `size` bytes of guest RAM at [`ram_ranges`].
pub fn create_memory(size: u64) -> Result<GuestMemory, vm_memory::mmap::FromRangesError> {
    memory::create(&ram_ranges(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_device_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), 3 << 30));
        assert_eq!(r[1], (GuestAddress(4 << 30), 1 << 30));
    }
}
