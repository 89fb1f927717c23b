//! The legacy PC devices the VMM itself answers, at their PC places: the
//! console UART at COM1 on IRQ 4, the i8042 reset line, and msbvm's platform
//! device at its port (and its MMIO twin).

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::i8042::{self, I8042};
use super::layout::{COM1_BASE, PLATFORM_MMIO_START, PLATFORM_PORT_BASE, SERIAL_IRQ};
use crate::devices::console::SharedConsole;
use crate::devices::platform::{self, Platform};
use crate::devices::serial::{self, SerialDevice};
use crate::devices::{Buses, Error};
use crate::memory::GuestMemory;

/// Puts the console UART, the i8042 and the platform device on `buses`, with
/// the UART's interrupt wired by `register_irq` (the hypervisor's irqfd).
pub fn attach_legacy_devices(
    register_irq: impl FnOnce(&EventFd, u32) -> Result<(), Error>,
    mem: &GuestMemory,
    console: SharedConsole,
    buses: &mut Buses,
) -> Result<(), Error> {
    let serial = SerialDevice::wired(register_irq, SERIAL_IRQ, console)?;
    let serial = Arc::new(Mutex::new(serial));
    let i8042 = Arc::new(Mutex::new(I8042::new(mem.clone())));
    let platform = Arc::new(Mutex::new(Platform::default()));

    buses.pio.insert(serial, COM1_BASE, serial::LEN)?;
    buses.pio.insert(
        i8042,
        i8042::DATA_PORT,
        i8042::COMMAND_PORT - i8042::DATA_PORT + 1,
    )?;
    buses
        .pio
        .insert(platform.clone(), PLATFORM_PORT_BASE, platform::LEN)?;
    buses
        .mmio
        .insert(platform, PLATFORM_MMIO_START, platform::LEN)?;
    Ok(())
}
