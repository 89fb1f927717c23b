//! Identity-mapping page tables for the 64-bit entry, and a guest page walker
//! used to read the code at a failing vCPU's RIP.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::arch::layout::{PDE_START, PDPTE_START, PML4_START};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Gibibytes covered by the identity map: all of the 32-bit space, so that the
/// device hole (MMIO) is reachable as well as low RAM.
pub const IDENTITY_MAPPED_GIB: u64 = 4;

/// Writes page tables that identity-map the first 4 GiB with 2 MiB pages (one
/// page directory per GiB, from [`PDE_START`]) and returns the value for CR3.
pub fn write_identity_tables<M: GuestMemoryBackend>(
    mem: &M,
) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPTE_START | PRESENT | WRITABLE, GuestAddress(PML4_START))?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | PRESENT | WRITABLE, GuestAddress(PDPTE_START + gib * 8))?;
        for i in 0..512u64 {
            mem.write_obj(
                (gib << 30) | (i << 21) | PRESENT | WRITABLE | HUGE,
                GuestAddress(pd + i * 8),
            )?;
        }
    }
    Ok(PML4_START)
}

/// The paging state needed to translate a guest-virtual address.
#[derive(Clone, Copy, Debug)]
pub struct PagingMode {
    /// CR0.PG: paging enabled.
    pub paging: bool,
    /// EFER.LMA: 4-level long-mode paging (otherwise 32-bit paging, PAE or not).
    pub long_mode: bool,
    /// CR4.PAE.
    pub pae: bool,
    /// CR3.
    pub cr3: u64,
}

/// Translates guest-virtual `addr` to guest-physical, or `None` if it is not
/// mapped or the walk leaves guest memory. Every table read is bounds-checked
/// by guest memory, so a hostile page table cannot make this fail worse.
pub fn translate<M: GuestMemoryBackend>(mem: &M, mode: PagingMode, addr: u64) -> Option<u64> {
    if !mode.paging {
        return Some(addr);
    }
    let read = |a: u64| -> Option<u64> { mem.read_obj::<u64>(GuestAddress(a)).ok() };
    if mode.long_mode {
        let mut table = mode.cr3 & ADDR_MASK;
        for level in (0..4).rev() {
            let shift = 12 + 9 * level;
            let index = (addr >> shift) & 0x1ff;
            let entry = read(table + index * 8)?;
            if entry & PRESENT == 0 {
                return None;
            }
            if level > 0 && level < 3 && entry & HUGE != 0 {
                let page_mask = (1u64 << shift) - 1;
                return Some((entry & ADDR_MASK & !page_mask) | (addr & page_mask));
            }
            table = entry & ADDR_MASK;
        }
        Some(table | (addr & 0xfff))
    } else if mode.pae {
        let pdpte = read((mode.cr3 & 0xffff_ffe0) + ((addr >> 30) & 3) * 8)?;
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = read((pdpte & ADDR_MASK) + ((addr >> 21) & 0x1ff) * 8)?;
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & HUGE != 0 {
            return Some((pde & ADDR_MASK & !0x1f_ffff) | (addr & 0x1f_ffff));
        }
        let pte = read((pde & ADDR_MASK) + ((addr >> 12) & 0x1ff) * 8)?;
        (pte & PRESENT != 0).then_some((pte & ADDR_MASK) | (addr & 0xfff))
    } else {
        let read32 =
            |a: u64| -> Option<u64> { mem.read_obj::<u32>(GuestAddress(a)).ok().map(u64::from) };
        let pde = read32((mode.cr3 & 0xffff_f000) + ((addr >> 22) & 0x3ff) * 4)?;
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & HUGE != 0 {
            return Some((pde & 0xffc0_0000) | (addr & 0x3f_ffff));
        }
        let pte = read32((pde & 0xffff_f000) + ((addr >> 12) & 0x3ff) * 4)?;
        (pte & PRESENT != 0).then_some((pte & 0xffff_f000) | (addr & 0xfff))
    }
}

/// Reads up to `len` bytes of guest code at virtual `addr`, stopping at the
/// first unmapped byte.
pub fn read_code<M: GuestMemoryBackend>(
    mem: &M,
    mode: PagingMode,
    addr: u64,
    len: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let Some(phys) = addr.checked_add(i).and_then(|a| translate(mem, mode, a)) else {
            break;
        };
        match mem.read_obj::<u8>(GuestAddress(phys)) {
            Ok(b) => out.push(b),
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout;

    /// 4-level paging with its tables at `cr3`.
    fn long_mode(cr3: u64) -> PagingMode {
        PagingMode {
            paging: true,
            long_mode: true,
            pae: true,
            cr3,
        }
    }

    #[test]
    fn identity_tables_translate_to_themselves() {
        let mem = layout::create_memory(64 << 20).unwrap();
        let cr3 = write_identity_tables(&mem).unwrap();
        let mode = long_mode(cr3);
        for addr in [
            0u64,
            0x1234,
            0x20_0000 + 17,
            0x3fff_ffff,
            0xd000_0004,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, mode, addr), Some(addr));
        }
        assert_eq!(translate(&mem, mode, 0x1_0000_0000), None);
    }

    #[test]
    fn hostile_cr3_outside_memory_gives_none() {
        let mem = layout::create_memory(16 << 20).unwrap();
        let mode = long_mode(0xffff_ffff_f000);
        assert_eq!(translate(&mem, mode, 0x1000), None);
        assert!(read_code(&mem, mode, 0x1000, 15).is_empty());
    }

    #[test]
    fn read_code_stops_at_end_of_memory() {
        let mem = layout::create_memory(16 << 20).unwrap();
        let mode = PagingMode {
            paging: false,
            long_mode: false,
            pae: false,
            cr3: 0,
        };
        mem.write_slice(&[0x90, 0xf4], GuestAddress((16 << 20) - 2))
            .unwrap();
        assert_eq!(read_code(&mem, mode, (16 << 20) - 2, 15), vec![0x90, 0xf4]);
    }
}
