//! Moving data between a vCPU register and an emulated MMIO access.
//!
//! A trapped load or store names a register and a width; the device sees
//! bytes. These pure functions do the conversion the way the CPU would have:
//! little-endian bytes, a load into a W register zero-extends to 64 bits, a
//! sign-extending load (LDRSB/LDRSH/LDRSW) fills the upper bits of the X (or
//! W) register with the sign.

use crate::esr::DataAbort;

/// The register value after a load of `data` (the device's bytes, `access.size`
/// of them; extra bytes are ignored, missing ones read as zero).
pub fn load_value(access: &DataAbort, data: &[u8]) -> u64 {
    let size = usize::from(access.size).min(8);
    let mut bytes = [0u8; 8];
    let n = size.min(data.len());
    bytes[..n].copy_from_slice(&data[..n]);
    let mut value = u64::from_le_bytes(bytes);
    if access.sign_extend && (1..8).contains(&size) {
        let shift = 64 - 8 * size as u32;
        value = (((value << shift) as i64) >> shift) as u64;
    }
    if !access.sixty_four {
        value &= 0xffff_ffff;
    }
    value
}

/// The bytes a store of register value `value` writes (`access.size` of them).
pub fn store_bytes(access: &DataAbort, value: u64) -> ([u8; 8], usize) {
    (value.to_le_bytes(), usize::from(access.size).min(8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn access(size: u8, sign_extend: bool, sixty_four: bool) -> DataAbort {
        DataAbort {
            size,
            write: false,
            reg: 0,
            sign_extend,
            sixty_four,
        }
    }

    #[test]
    fn plain_loads_zero_extend() {
        assert_eq!(load_value(&access(1, false, false), &[0x80]), 0x80);
        assert_eq!(load_value(&access(2, false, false), &[0x34, 0x92]), 0x9234);
        assert_eq!(
            load_value(&access(4, false, false), &[0x78, 0x56, 0x34, 0xf2]),
            0xf234_5678
        );
        assert_eq!(
            load_value(
                &access(8, false, true),
                &0x8000_0000_0000_0001u64.to_le_bytes()
            ),
            0x8000_0000_0000_0001
        );
    }

    #[test]
    fn sign_extending_loads_into_x_registers_fill_64_bits() {
        // LDRSB x, LDRSH x, LDRSW x.
        assert_eq!(
            load_value(&access(1, true, true), &[0x80]),
            0xffff_ffff_ffff_ff80
        );
        assert_eq!(
            load_value(&access(2, true, true), &[0x00, 0x80]),
            0xffff_ffff_ffff_8000
        );
        assert_eq!(
            load_value(&access(4, true, true), &[0, 0, 0, 0x80]),
            0xffff_ffff_8000_0000
        );
        assert_eq!(load_value(&access(1, true, true), &[0x7f]), 0x7f);
    }

    #[test]
    fn sign_extending_loads_into_w_registers_stop_at_32_bits() {
        // LDRSB w, LDRSH w: the upper half of the X register is zero.
        assert_eq!(load_value(&access(1, true, false), &[0xff]), 0xffff_ffff);
        assert_eq!(
            load_value(&access(2, true, false), &[0x00, 0x80]),
            0xffff_8000
        );
    }

    #[test]
    fn stores_take_the_low_bytes_little_endian() {
        let (bytes, n) = store_bytes(&access(2, false, false), 0x1122_3344_5566_7788);
        assert_eq!(&bytes[..n], &[0x88, 0x77]);
        let (bytes, n) = store_bytes(&access(8, false, true), 0x1122_3344_5566_7788);
        assert_eq!(&bytes[..n], &0x1122_3344_5566_7788u64.to_le_bytes());
    }

    proptest! {
        #[test]
        fn a_stored_value_loads_back_unchanged(value in any::<u64>(), sas in 0..4u8) {
            let size = 1u8 << sas;
            let a = access(size, false, true);
            let (bytes, n) = store_bytes(&a, value);
            let mask = if size == 8 { u64::MAX } else { (1u64 << (8 * u32::from(size))) - 1 };
            prop_assert_eq!(load_value(&a, &bytes[..n]), value & mask);
        }

        #[test]
        fn short_device_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..12),
                                          size in any::<u8>(), se in any::<bool>(), sf in any::<bool>()) {
            let _ = load_value(&access(size, se, sf), &data);
            let _ = store_bytes(&access(size, se, sf), 0);
        }
    }
}
