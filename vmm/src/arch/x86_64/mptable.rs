//! The Intel MultiProcessor Specification 1.4 table.
//!
//! Without ACPI this is how Linux learns how many CPUs there are, where the
//! IO-APIC is and how the legacy ISA interrupts are wired to it. The table is
//! built as bytes here (one floating pointer, one configuration table) and
//! copied into guest memory by the caller.

use crate::arch::layout::{APIC_ADDR, IOAPIC_ADDR, IOAPIC_PINS};

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_ENTRY_LEN: usize = 20;
const SMALL_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const IOAPIC_ENABLED: u8 = 1;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Local APIC version reported for every CPU (an integrated APIC).
const APIC_VERSION: u8 = 0x14;
/// IO-APIC version of KVM's in-kernel IO-APIC.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature: family 6; the kernel reads the real one from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX bits the kernel checks in MP entries: FPU and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Errors building the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The IO-APIC takes the APIC ID after the last CPU, so at most 254 CPUs fit.
    #[error("{0} vCPUs do not fit in an MP table (at most 254)")]
    TooManyCpus(u16),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the MP table for `cpus` CPUs, to be placed at guest-physical `base`.
///
/// CPU *n* gets APIC ID *n*; the IO-APIC gets ID `cpus`. ISA IRQ *i* is wired
/// to IO-APIC pin *i* (KVM's default GSI routing), LINT0 to ExtINT and LINT1
/// to NMI, as on a PC.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, Error> {
    if cpus == 0 || cpus > 254 {
        return Err(Error::TooManyCpus(cpus as u16));
    }
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;

    for id in 0..cpus {
        let mut e = [0u8; PROCESSOR_ENTRY_LEN];
        e[0] = ENTRY_PROCESSOR;
        e[1] = id;
        e[2] = APIC_VERSION;
        e[3] = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }

    let mut bus = [0u8; SMALL_ENTRY_LEN];
    bus[0] = ENTRY_BUS;
    bus[1] = 0; // bus id
    bus[2..8].copy_from_slice(b"ISA   ");
    entries.extend_from_slice(&bus);
    count += 1;

    let mut ioapic = [0u8; SMALL_ENTRY_LEN];
    ioapic[0] = ENTRY_IOAPIC;
    ioapic[1] = ioapic_id;
    ioapic[2] = IOAPIC_VERSION;
    ioapic[3] = IOAPIC_ENABLED;
    ioapic[4..8].copy_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    entries.extend_from_slice(&ioapic);
    count += 1;

    for pin in 0..IOAPIC_PINS {
        let mut e = [0u8; SMALL_ENTRY_LEN];
        e[0] = ENTRY_IO_INTERRUPT;
        e[1] = INT_TYPE_INT;
        // Flags 0: polarity and trigger "conforming to the bus" (ISA: edge, high).
        e[4] = 0; // source bus
        e[5] = pin; // source IRQ
        e[6] = ioapic_id;
        e[7] = pin;
        entries.extend_from_slice(&e);
        count += 1;
    }

    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        let mut e = [0u8; SMALL_ENTRY_LEN];
        e[0] = ENTRY_LOCAL_INTERRUPT;
        e[1] = kind;
        e[4] = 0; // source bus
        e[5] = 0; // source IRQ
        e[6] = 0xff; // every local APIC
        e[7] = lint;
        entries.extend_from_slice(&e);
        count += 1;
    }

    let table_len = HEADER_LEN + entries.len();
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&(table_len as u16).to_le_bytes());
    header[6] = 4; // spec revision 1.4
    header[8..16].copy_from_slice(b"MSBVM   ");
    header[16..28].copy_from_slice(b"MICROVM     ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(&header);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = [0u8; FLOATING_POINTER_LEN];
    fp[0..4].copy_from_slice(b"_MP_");
    let table_addr = base + FLOATING_POINTER_LEN as u64;
    fp[4..8].copy_from_slice(&(table_addr as u32).to_le_bytes());
    fp[8] = 1; // length in 16-byte units
    fp[9] = 4; // spec revision 1.4
    fp[10] = checksum(&fp);

    let mut out = Vec::with_capacity(FLOATING_POINTER_LEN + table.len());
    out.extend_from_slice(&fp);
    out.extend_from_slice(&table);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_are_valid_and_pointer_finds_table() {
        for cpus in [1u8, 2, 64, 254] {
            let t = build(cpus, 0x9fc00).unwrap();
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize - 0x9fc00;
            let len = u16::from_le_bytes(t[ptr + 4..ptr + 6].try_into().unwrap()) as usize;
            assert_eq!(&t[ptr..ptr + 4], b"PCMP");
            assert_eq!(ptr + len, t.len());
            assert_eq!(sum(&t[ptr..]), 0, "table checksum");
        }
    }

    #[test]
    fn one_processor_entry_per_cpu_with_one_bootstrap() {
        let t = build(3, 0x9fc00).unwrap();
        let procs: Vec<&[u8]> = t[16 + HEADER_LEN..]
            .chunks(PROCESSOR_ENTRY_LEN)
            .take(3)
            .collect();
        assert!(procs.iter().all(|e| e[0] == ENTRY_PROCESSOR));
        assert_eq!(
            procs.iter().filter(|e| e[3] & CPU_BOOTSTRAP != 0).count(),
            1
        );
        assert_eq!(procs[2][1], 2);
        let count = u16::from_le_bytes(t[16 + 34..16 + 36].try_into().unwrap());
        assert_eq!(count as usize, 3 + 2 + IOAPIC_PINS as usize + 2);
    }

    #[test]
    fn rejects_impossible_cpu_counts() {
        assert_eq!(build(0, 0), Err(Error::TooManyCpus(0)));
        assert_eq!(build(255, 0), Err(Error::TooManyCpus(255)));
    }

    #[test]
    fn fits_below_the_bios_area() {
        let t = build(254, 0x9fc00).unwrap();
        assert!(0x9fc00 + t.len() as u64 <= 0x10_0000);
    }
}
