//! The arm64 guest-physical address map msbvm builds.
//!
//! All devices sit below RAM in the first 2 GiB, which keeps every MMIO window
//! reachable with 32-bit addresses and leaves RAM one contiguous block, so the
//! kernel, initramfs and device tree never straddle a hole:
//!
//! | Start         | Size              | What                                   |
//! |---------------|-------------------|----------------------------------------|
//! | `0x0800_0000` | 64 KiB            | GICv3 distributor                      |
//! | `0x080a_0000` | 128 KiB per vCPU  | GICv3 redistributors (up to 0x0900_0000)|
//! | `0x0900_0000` | 4 KiB             | 16550 console UART (1-byte registers)  |
//! | `0x0901_0000` | 4 KiB             | msbvm platform device (boot timer, power) |
//! | `0x0a00_0000` | 4 KiB per device  | virtio-mmio slots                      |
//! | `0x8000_0000` | guest RAM         | RAM (kernel at the start, 2 MiB aligned) |
//!
//! The interrupt numbers are SPI numbers (INTID = 32 + n); with KVM's
//! in-kernel GIC an irqfd GSI n raises SPI n, so the same numbers go into the
//! device tree and into the irqfd registrations.

use vm_memory::GuestAddress;

use crate::memory::{self, GuestMemory};

/// GICv3 distributor.
pub const GIC_DIST_START: u64 = 0x0800_0000;
/// Size of the distributor window.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// First GICv3 redistributor; one frame pair per vCPU follows.
pub const GIC_REDIST_START: u64 = 0x080a_0000;
/// Size of one vCPU's redistributor (RD_base and SGI_base frames).
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// Where the redistributor region must end (the console follows).
pub const GIC_REDIST_END: u64 = 0x0900_0000;
/// How many vCPUs the redistributor region has room for.
pub const MAX_VCPUS: u64 = (GIC_REDIST_END - GIC_REDIST_START) / GIC_REDIST_SIZE_PER_CPU;
/// The 16550 console UART on the MMIO bus.
pub const SERIAL_MMIO_START: u64 = 0x0900_0000;
/// Size of the console's window.
pub const SERIAL_MMIO_SIZE: u64 = 0x1000;
/// msbvm's platform device (boot timer and power control); the guest agent
/// writes its registers here through `/dev/mem`.
pub const PLATFORM_MMIO_START: u64 = 0x0901_0000;
/// Size of the platform device's window.
pub const PLATFORM_MMIO_SIZE: u64 = 0x1000;
/// Where virtio-mmio devices are placed, one page each.
pub const VIRTIO_MMIO_START: u64 = 0x0a00_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Start of guest RAM.
pub const RAM_START: u64 = 0x8000_0000;
/// SPI of the console UART.
pub const SERIAL_IRQ: u32 = 1;
/// Number of SPIs the vGIC is created with (`KVM_DEV_ARM_VGIC_GRP_NR_IRQS`
/// takes the total including the 32 private interrupts).
pub const NR_SPIS: u32 = 64;
/// The SPIs given to virtio devices, one each: those above the console's.
pub const VIRTIO_IRQS: std::ops::Range<u32> = 2..NR_SPIS;
/// Alignment the arm64 boot protocol wants the kernel's base at.
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// Largest device tree the boot protocol allows.
pub const FDT_MAX_SIZE: u64 = 2 << 20;
pub use crate::boot_source::CMDLINE_MAX_SIZE;

/// The redistributor region for `vcpus` vCPUs: `(start, size)`.
pub fn gic_redist_region(vcpus: u64) -> (u64, u64) {
    (GIC_REDIST_START, vcpus * GIC_REDIST_SIZE_PER_CPU)
}

/// The guest-physical RAM ranges for `size` bytes: one block at [`RAM_START`].
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    vec![(GuestAddress(RAM_START), size as usize)]
}

/// Maps `size` bytes of guest RAM at [`ram_ranges`].
pub fn create_memory(size: u64) -> Result<GuestMemory, vm_memory::mmap::FromRangesError> {
    memory::create(&ram_ranges(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_do_not_overlap_and_sit_below_ram() {
        let windows = [
            (GIC_DIST_START, GIC_DIST_SIZE),
            (GIC_REDIST_START, GIC_REDIST_END - GIC_REDIST_START),
            (SERIAL_MMIO_START, SERIAL_MMIO_SIZE),
            (PLATFORM_MMIO_START, PLATFORM_MMIO_SIZE),
            (
                VIRTIO_MMIO_START,
                VIRTIO_IRQS.len() as u64 * VIRTIO_MMIO_SIZE,
            ),
        ];
        for (i, &(a, alen)) in windows.iter().enumerate() {
            assert!(a + alen <= RAM_START);
            for &(b, blen) in &windows[i + 1..] {
                assert!(a + alen <= b || b + blen <= a, "{a:#x} overlaps {b:#x}");
            }
        }
    }

    #[test]
    fn redistributors_fit_the_vcpu_limit() {
        let (start, size) = gic_redist_region(MAX_VCPUS);
        assert!(start + size <= GIC_REDIST_END);
        const { assert!(MAX_VCPUS >= 64) };
    }

    #[test]
    fn ram_is_one_block_at_2_gib() {
        assert_eq!(
            ram_ranges(256 << 20),
            vec![(GuestAddress(RAM_START), 256 << 20)]
        );
    }
}
