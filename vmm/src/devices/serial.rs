//! The 16550 UART (vm-superio), wired to the console and to an interrupt line
//! (on x86 COM1 and IRQ 4: see `arch::x86_64::legacy`).

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{BusDevice, BusEvent};
use super::console::SharedConsole;

/// Number of UART registers.
pub const LEN: u64 = 8;

/// Raises the UART's interrupt by signalling an eventfd the hypervisor turns
/// into the IRQ (irqfd).
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// The console UART as a bus device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, SharedConsole>,
}

impl SerialDevice {
    /// A UART that writes to `console` and signals `irq`.
    pub fn new(irq: EventFd, console: SharedConsole) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), console),
        }
    }

    /// Queues bytes for the guest to read (console input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> bool {
        self.uart.enqueue_raw_bytes(bytes).is_ok()
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are one byte wide; wider accesses read the first register
        // and all ones beyond it.
        data.fill(0xff);
        if let (Some(first), Ok(reg)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
        if let (Some(&value), Ok(reg)) = (data.first(), u8::try_from(offset)) {
            // An unwritable console drops bytes; it never stops the guest.
            let _ = self.uart.write(reg, value);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConsoleOutput;
    use crate::devices::console::Console;
    use std::sync::{Arc, Mutex};

    #[test]
    fn bytes_written_to_thr_reach_the_console() {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::new()));
        let console = SharedConsole(Arc::new(Mutex::new(
            Console::open(&ConsoleOutput::Writer(buf.clone())).unwrap(),
        )));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), console);
        for b in b"ok\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*buf.lock().unwrap(), b"ok\n");
        // Line status register: transmitter empty.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    #[test]
    fn input_raises_the_interrupt_when_enabled() {
        let console = SharedConsole(Arc::new(Mutex::new(
            Console::open(&ConsoleOutput::Sink).unwrap(),
        )));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), console);
        dev.write(1, &[0x01]); // IER: received data available
        assert!(dev.enqueue_input(b"x"));
        assert_eq!(irq.read().unwrap(), 1);
        let mut rbr = [0u8];
        dev.read(0, &mut rbr);
        assert_eq!(rbr[0], b'x');
    }
}
