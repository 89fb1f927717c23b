//! The x86_64 guest-physical address map msbvm builds.
//!
//! Low memory holds the boot structures the VMM writes (GDT, page tables, boot
//! information, command line, MP table); the kernel loads at its own physical
//! address above 1 MiB; RAM beyond 3 GiB is moved above the 32-bit device hole
//! where the IO-APIC, local APIC and virtio-mmio devices live.

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
/// Largest command line accepted (the kernel's own COMMAND_LINE_SIZE on x86).
pub const CMDLINE_MAX_SIZE: usize = 2048;
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
/// Where virtio-mmio devices will be placed, one page each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_1000;
/// Number of IO-APIC pins (GSIs) the in-kernel irqchip provides.
pub const IOAPIC_PINS: u8 = 24;
/// Legacy IRQ of the COM1 serial port.
pub const SERIAL_IRQ: u32 = 4;
