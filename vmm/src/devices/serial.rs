//! The 16550 UART (vm-superio), wired to the console and to an interrupt line
//! (on x86 COM1 and IRQ 4, on arm64 an MMIO window and an SPI: see the
//! architecture's `attach_legacy_devices`).

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{BusDevice, BusEvent};
use super::console::SharedConsole;
use super::Error;

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

/// The UART's registers and receive FIFO, as a snapshot keeps them.
#[derive(Serialize, Deserialize)]
struct SavedUart {
    registers: [u8; 9],
    in_buffer: Vec<u8>,
}

impl SerialDevice {
    /// A UART that writes to `console` and signals `irq`.
    pub fn new(irq: EventFd, console: SharedConsole) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), console),
        }
    }

    /// A UART that writes to `console`, with its interrupt on line `line`
    /// through `register_irq` (the hypervisor's irqfd).
    pub fn wired(
        register_irq: impl FnOnce(&EventFd, u32) -> Result<(), Error>,
        line: u32,
        console: SharedConsole,
    ) -> Result<Self, Error> {
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Host {
            what: "serial interrupt eventfd",
            source,
        })?;
        register_irq(&irq, line)?;
        Ok(Self::new(irq, console))
    }

    fn saved(&self) -> SavedUart {
        let s = self.uart.state();
        SavedUart {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    fn load(&mut self, saved: SavedUart) -> Result<(), String> {
        let r = saved.registers;
        let state = SerialState {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: saved.in_buffer,
        };
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| format!("cannot clone the UART's interrupt eventfd: {e}"))?;
        let console = self.uart.writer().clone();
        self.uart = Serial::from_state(
            &state,
            IrqTrigger(irq),
            vm_superio::serial::NoEvents,
            console,
        )
        .map_err(|e| format!("the saved UART state is invalid: {e:?}"))?;
        Ok(())
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

    fn save_state(&mut self) -> Result<Option<Vec<u8>>, String> {
        postcard::to_allocvec(&self.saved())
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: SavedUart = postcard::from_bytes(state)
            .map_err(|e| format!("the saved UART state does not decode: {e}"))?;
        self.load(saved)
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
    fn state_survives_a_save_and_restore() {
        let console = SharedConsole(Arc::new(Mutex::new(
            Console::open(&ConsoleOutput::Sink).unwrap(),
        )));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), console.clone());
        dev.write(3, &[0x03]); // LCR: 8 bits
        dev.write(1, &[0x01]); // IER: received data available
        dev.write(7, &[0x5a]); // scratch
        assert!(dev.enqueue_input(b"q"));
        let saved = dev.save_state().unwrap().unwrap();

        let irq2 = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut fresh = SerialDevice::new(irq2.try_clone().unwrap(), console);
        fresh.restore_state(&saved).unwrap();
        let mut b = [0u8];
        fresh.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
        fresh.read(3, &mut b);
        assert_eq!(b[0], 0x03);
        // The pending input is still there, and its interrupt was raised again.
        assert_eq!(irq2.read().unwrap(), 1);
        fresh.read(0, &mut b);
        assert_eq!(b[0], b'q');
        assert!(fresh.restore_state(&[0xff, 0xff]).is_err());
        assert!(fresh
            .restore_state(
                &postcard::to_allocvec(&SavedUart {
                    registers: [0; 9],
                    in_buffer: vec![0; 1 << 16],
                })
                .unwrap()
            )
            .is_err());
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
