//! The PVH boot ABI: `hvm_start_info`, its module list (the initrd) and memory map.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::{write_err, Error, E820_RAM};
use crate::arch::layout::{PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START};
use crate::memory::GuestMemory;

/// Magic value identifying `hvm_start_info` ("xEn3" with the top bit flipped).
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Writes `hvm_start_info` at [`PVH_INFO_START`] describing `ram`, the optional
/// initrd (address, size) and the command line at `cmdline_addr`.
pub fn write_start_info(
    mem: &GuestMemory,
    ram: &[(u64, u64)],
    initrd: Option<(u64, u64)>,
    cmdline_addr: u64,
) -> Result<(), Error> {
    let memmap: Vec<hvm_memmap_table_entry> = ram
        .iter()
        .map(|&(addr, size)| hvm_memmap_table_entry {
            addr,
            size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|&(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules: modules.len() as u32,
        modlist_paddr: PVH_MODLIST_START,
        cmdline_paddr: cmdline_addr,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(write_err("PVH start info"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn start_info_describes_memory_and_initrd() {
        let (mem, ram) = super::super::fixtures::memory_64m();
        write_start_info(&mem, &ram, Some((0x300_0000, 1234)), 0x20000).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.memmap_entries, 2);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300_0000, 1234));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!((e.addr, e.type_), (0x10_0000, E820_RAM));
    }
}
