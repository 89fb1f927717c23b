//! The Linux x86 64-bit boot protocol: the zero page (`boot_params`) with its
//! E820 map, for bzImages and ELF kernels without a PVH note.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::GuestAddress;

use super::{write_err, Error, E820_RAM};
use crate::arch::layout::ZERO_PAGE_START;
use crate::memory::GuestMemory;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader type.
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;

/// Writes `boot_params` at [`ZERO_PAGE_START`], starting from the image's own
/// setup header when it has one (bzImage).
pub fn write_zero_page(
    mem: &GuestMemory,
    header: Option<setup_header>,
    ram: &[(u64, u64)],
    initrd: Option<(u64, u64)>,
    cmdline_addr: u64,
    cmdline_size: u32,
) -> Result<(), Error> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = cmdline_addr as u32;
    params.hdr.cmdline_size = cmdline_size;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if ram.len() > params.e820_table.len() {
        let why = format!("{} entries do not fit", ram.len());
        return Err(write_err("E820 map")(why));
    }
    for (slot, &(addr, size)) in params.e820_table.iter_mut().zip(ram) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = ram.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(write_err("zero page"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn zero_page_carries_cmdline_initrd_and_e820() {
        let (mem, ram) = super::super::fixtures::memory_64m();
        write_zero_page(&mem, None, &ram, Some((0x200_0000, 99)), 0x20000, 10).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.ramdisk_image }, 0x200_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 99);
        assert_eq!(p.e820_entries, 2);
        assert_eq!({ p.e820_table[1].addr }, 0x10_0000);
    }
}
