//! The part of the i8042 keyboard controller a guest uses to reset the machine.
//!
//! Linux (booted with `reboot=k`) restarts by writing 0xFE to port 0x64. Before
//! that it stores 0x1234 at guest-physical 0x472 for a "warm" restart and 0 for
//! a cold one; msbvm's default command line asks for warm restarts only after a
//! panic, so the flag tells a panic from an ordinary reboot.

use vm_memory::{Bytes, GuestAddress};

use crate::devices::{BusDevice, BusEvent};
use crate::exit::VmExit;
use crate::memory::GuestMemory;

/// I/O port of the data register.
pub const DATA_PORT: u64 = 0x60;
/// I/O port of the command/status register.
pub const COMMAND_PORT: u64 = 0x64;
/// Command: pulse the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;
/// BIOS data area word holding the reset mode.
const RESET_MODE_ADDR: u64 = 0x472;
/// Reset-mode value meaning "warm" (used by msbvm for panics).
const RESET_MODE_WARM: u16 = 0x1234;

/// The controller; one instance is mapped at both of its ports.
pub struct I8042 {
    mem: GuestMemory,
}

impl I8042 {
    /// A controller that reads the reset flag from `mem`.
    pub fn new(mem: GuestMemory) -> Self {
        I8042 { mem }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so the guest's
        // "wait until the controller is ready" loops end at once.
        data.fill(0);
    }

    /// `offset` is relative to [`DATA_PORT`]; the command port is offset 4.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
        if offset == COMMAND_PORT - DATA_PORT && data.first() == Some(&CMD_RESET_CPU) {
            let mode: u16 = self
                .mem
                .read_obj(GuestAddress(RESET_MODE_ADDR))
                .unwrap_or(0);
            let exit = if mode == RESET_MODE_WARM {
                VmExit::Panic
            } else {
                VmExit::Reboot
            };
            return Some(BusEvent::Stop(exit));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layout;

    #[test]
    fn reset_command_stops_as_reboot_or_panic() {
        let mem = layout::create_memory(16 << 20).unwrap();
        let mut dev = I8042::new(mem.clone());
        assert_eq!(dev.write(4, &[0xfe]), Some(BusEvent::Stop(VmExit::Reboot)));
        mem.write_obj(RESET_MODE_WARM, GuestAddress(RESET_MODE_ADDR))
            .unwrap();
        assert_eq!(dev.write(4, &[0xfe]), Some(BusEvent::Stop(VmExit::Panic)));
    }

    #[test]
    fn other_writes_do_nothing_and_status_is_ready() {
        let mut dev = I8042::new(layout::create_memory(16 << 20).unwrap());
        assert_eq!(dev.write(0, &[0xfe]), None);
        assert_eq!(dev.write(4, &[0xd1]), None);
        let mut s = [0xffu8];
        dev.read(4, &mut s);
        assert_eq!(s, [0]);
    }
}
