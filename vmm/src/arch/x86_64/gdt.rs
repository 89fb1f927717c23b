//! The boot GDT: flat segments for the PVH (32-bit protected mode) and the
//! 64-bit entry points, and their decoded form for loading into a vCPU.

/// Selector of the 64-bit code segment.
pub const CODE64_SELECTOR: u16 = 0x08;
/// Selector of the 32-bit code segment (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment.
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the task-state segment (required to be valid on VM entry).
pub const TSS_SELECTOR: u16 = 0x20;

/// One descriptor in decoded form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Selector that names it.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by the granularity bit).
    pub limit: u32,
    /// Access byte type field (low 4 bits).
    pub type_: u8,
    /// Present.
    pub present: bool,
    /// Privilege level.
    pub dpl: u8,
    /// Code/data (1) or system (0) descriptor.
    pub s: bool,
    /// Default operand size 32-bit.
    pub db: bool,
    /// 64-bit code.
    pub l: bool,
    /// Granularity 4 KiB.
    pub g: bool,
}

/// Encodes a descriptor from its flag word (access byte in bits 0..8, the
/// G/DB/L/AVL nibble in bits 12..16), base and limit.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Decodes descriptor `raw` as selector `selector`.
pub fn decode(raw: u64, selector: u16) -> Segment {
    let base = ((raw >> 16) & 0x00ff_ffff) | ((raw >> 32) & 0xff00_0000);
    let limit_raw = ((raw & 0xffff) | ((raw >> 32) & 0x000f_0000)) as u32;
    let g = (raw >> 55) & 1 == 1;
    let limit = if g {
        (limit_raw << 12) | 0xfff
    } else {
        limit_raw
    };
    Segment {
        selector,
        base,
        limit,
        type_: ((raw >> 40) & 0xf) as u8,
        s: (raw >> 44) & 1 == 1,
        dpl: ((raw >> 45) & 3) as u8,
        present: (raw >> 47) & 1 == 1,
        l: (raw >> 53) & 1 == 1,
        db: (raw >> 54) & 1 == 1,
        g,
    }
}

/// The boot GDT, indexed by selector / 8.
pub const TABLE: [u64; 5] = [
    0,                         // null
    entry(0xa09b, 0, 0xfffff), // 64-bit code: L, present, exec/read, accessed
    entry(0xc09b, 0, 0xfffff), // 32-bit code: G, DB, present, exec/read, accessed
    entry(0xc093, 0, 0xfffff), // data: G, DB, present, read/write, accessed
    entry(0x808b, 0, 0xfffff), // busy 64-bit TSS
];

/// The decoded segment for `selector` in [`TABLE`].
pub fn segment(selector: u16) -> Segment {
    decode(TABLE[(selector >> 3) as usize], selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_descriptors() {
        // Values every x86 boot loader uses for flat 4 GiB segments.
        assert_eq!(entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn decode_inverts_encode() {
        let s = decode(entry(0xc093, 0x1234_5678, 0xabcde), DATA_SELECTOR);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcd_efff);
        assert!(s.g && s.db && !s.l && s.present && s.s);
        assert_eq!(s.type_, 3);
        let code = segment(CODE64_SELECTOR);
        assert!(code.l && !code.db);
    }
}
