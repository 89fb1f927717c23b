//! msbvm's platform device: the boot timer and the power-off register.
//!
//! Linux on x86 without ACPI has no way to power the machine off: `poweroff`
//! ends in a halt. msbvm's guest init instead writes its exit code here, which
//! ends the VM at once with that code. The boot timer is the same idea as
//! Firecracker's: the guest writes a marker when it considers itself booted and
//! the VMM records the time since its own start.
//!
//! Layout (MMIO at `layout::PLATFORM_MMIO_START`, and on x86 also port I/O at
//! `layout::PLATFORM_PORT_BASE`):
//!
//! | offset | width | access | meaning |
//! |---|---|---|---|
//! | 0 | 1 | write [`BOOT_COMPLETE`] | boot timer |
//! | 4 | 1, 2 or 4 | write code | power off with this exit code |
//!
//! Reads return the magic "MSBV" at offset 0 so a guest can detect msbvm.

use super::bus::{BusDevice, BusEvent};
use crate::exit::VmExit;

/// Size of the register block.
pub const LEN: u64 = 8;
/// Offset of the boot-timer register.
pub const BOOT_TIMER_OFFSET: u64 = 0;
/// Offset of the power-off register.
pub const POWER_OFFSET: u64 = 4;
/// Value the guest writes to the boot timer.
pub const BOOT_COMPLETE: u8 = 0x4d;
/// What reads of the first four bytes return.
pub const MAGIC: [u8; 4] = *b"MSBV";

/// The platform device.
#[derive(Default)]
pub struct Platform {
    boot_signalled: bool,
}

impl BusDevice for Platform {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| MAGIC.get(o as usize).copied())
                .unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
        match offset {
            BOOT_TIMER_OFFSET if data.first() == Some(&BOOT_COMPLETE) => {
                // Only the first marker counts: later ones would move the
                // measured boot time.
                if self.boot_signalled {
                    return None;
                }
                self.boot_signalled = true;
                Some(BusEvent::BootComplete)
            }
            POWER_OFFSET if !data.is_empty() && data.len() <= 4 => {
                let mut code = [0u8; 4];
                code[..data.len()].copy_from_slice(data);
                Some(BusEvent::Stop(VmExit::PowerOff {
                    code: u32::from_le_bytes(code),
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_timer_fires_once() {
        let mut p = Platform::default();
        assert_eq!(p.write(0, &[BOOT_COMPLETE]), Some(BusEvent::BootComplete));
        assert_eq!(p.write(0, &[BOOT_COMPLETE]), None);
        assert_eq!(Platform::default().write(0, &[1]), None);
    }

    #[test]
    fn power_register_carries_the_code() {
        let mut p = Platform::default();
        assert_eq!(
            p.write(4, &[3]),
            Some(BusEvent::Stop(VmExit::PowerOff { code: 3 }))
        );
        assert_eq!(
            p.write(4, &0x1234u32.to_le_bytes()),
            Some(BusEvent::Stop(VmExit::PowerOff { code: 0x1234 }))
        );
        assert_eq!(p.write(4, &[0; 8]), None);
    }

    #[test]
    fn reads_return_the_magic() {
        let mut p = Platform::default();
        let mut b = [0u8; 6];
        p.read(0, &mut b);
        assert_eq!(&b, b"MSBV\0\0");
        p.read(u64::MAX, &mut b[..2]);
    }
}
