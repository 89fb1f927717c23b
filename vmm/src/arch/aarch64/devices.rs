//! The devices the VMM itself answers on arm64, all on the MMIO bus: the
//! console UART (a 16550 with byte-wide registers, which Linux's `of_serial`
//! driver binds from the device tree) and msbvm's platform device.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::layout::{PLATFORM_MMIO_START, SERIAL_IRQ, SERIAL_MMIO_START};
use crate::devices::console::SharedConsole;
use crate::devices::platform::{self, Platform};
use crate::devices::serial::{self, SerialDevice};
use crate::devices::{Buses, Error};
use crate::memory::GuestMemory;

/// Puts the console UART and the platform device on `buses`, with the UART's
/// interrupt wired by `register_irq` (the hypervisor's irqfd, an SPI).
pub fn attach_legacy_devices(
    register_irq: impl FnOnce(&EventFd, u32) -> Result<(), Error>,
    _mem: &GuestMemory,
    console: SharedConsole,
    buses: &mut Buses,
) -> Result<(), Error> {
    let serial = SerialDevice::wired(register_irq, SERIAL_IRQ, console)?;
    let serial = Arc::new(Mutex::new(serial));
    buses.mmio.insert(serial, SERIAL_MMIO_START, serial::LEN)?;
    buses.mmio.insert(
        Arc::new(Mutex::new(Platform::default())),
        PLATFORM_MMIO_START,
        platform::LEN,
    )?;
    Ok(())
}
