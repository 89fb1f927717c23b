//! Virtio devices on the MMIO bus.
//!
//! Each device sits behind a virtio-mmio transport (from `msbvm-virtio`) in
//! its own page of the device hole, with its own interrupt line. Where it was
//! put ([`VirtioPlacement`]) goes to the architecture's boot code, which tells
//! the guest: a `virtio_mmio.device=` command-line entry on x86, a device-tree
//! node on arm64.
//! Queue notifications do not stop at the VMM: each queue's notify register
//! is an ioeventfd, so the kernel wakes the device's thread directly, and the
//! device raises its interrupt through an irqfd.

use std::sync::{Arc, Mutex};

use msbvm_virtio::{MmioTransport, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{Bus, BusDevice, BusEvent};
use super::Error;
use crate::hypervisor::{IoEventAddress, Vm};
use crate::memory::GuestMemory;

/// Size of each device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;

/// A transport as a bus device.
pub struct VirtioMmio(pub MmioTransport);

impl BusDevice for VirtioMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
        self.0.write(offset, data);
        None
    }

    fn pause(&mut self) -> Result<(), String> {
        self.0.pause()
    }

    fn resume(&mut self) {
        self.0.resume();
    }

    fn reraise_interrupt(&mut self) {
        self.0.interrupt().reraise();
    }

    fn recover_lost_interrupt(&mut self) -> Option<u64> {
        self.0.interrupt().recover_lost()
    }

    fn save_state(&mut self) -> Result<Option<Vec<u8>>, String> {
        self.0.save_state().map(Some)
    }

    fn describe(&self) -> Option<String> {
        Some(self.0.describe())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.0.restore_state(state)
    }
}

pub use crate::arch::VirtioPlacement;

/// Hands out MMIO windows and interrupt lines to devices in order.
pub struct VirtioSlots {
    base: u64,
    lines: std::ops::Range<u32>,
}

impl VirtioSlots {
    /// Windows from `base` up, one page each, with the interrupt lines `lines`
    /// (where the architecture places them: `arch::layout`).
    pub fn new(base: u64, lines: std::ops::Range<u32>) -> Self {
        VirtioSlots { base, lines }
    }

    /// The next (MMIO base, interrupt line), or `None` when interrupt lines ran out.
    pub fn take(&mut self) -> Option<(u64, u32)> {
        let gsi = self.lines.next()?;
        let base = self.base;
        self.base += MMIO_WINDOW;
        Some((base, gsi))
    }
}

/// Puts `device` on `mmio` at the next slot, wires its notifications and
/// interrupt through the hypervisor, and returns where it went.
pub fn attach(
    vm: &impl Vm,
    mem: &GuestMemory,
    mmio: &mut Bus,
    slots: &mut VirtioSlots,
    device: Box<dyn VirtioDevice>,
) -> Result<VirtioPlacement, Error> {
    let (base, gsi) = slots.take().ok_or(Error::NoSlot)?;
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Host {
        what: "virtio interrupt eventfd",
        source,
    })?;
    vm.register_irqfd(&irq, gsi)?;
    let transport = MmioTransport::new(mem.clone(), device, irq).map_err(|source| Error::Host {
        what: "virtio-mmio transport",
        source,
    })?;
    for (index, event) in transport.queue_events().iter().enumerate() {
        let notify = base + msbvm_virtio::QUEUE_NOTIFY_OFFSET;
        vm.register_ioevent(event, IoEventAddress::Mmio(notify), index as u32)?;
    }
    mmio.insert(
        Arc::new(Mutex::new(VirtioMmio(transport))),
        base,
        MMIO_WINDOW,
    )?;
    Ok(VirtioPlacement { base, line: gsi })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_pages_with_their_own_lines() {
        let mut s = VirtioSlots::new(0xd000_1000, 5..24);
        assert_eq!(s.take(), Some((0xd000_1000, 5)));
        assert_eq!(s.take(), Some((0xd000_1000 + 0x1000, 6)));
        let mut n = 2;
        while s.take().is_some() {
            n += 1;
        }
        assert_eq!(n, 24 - 5);
    }
}
