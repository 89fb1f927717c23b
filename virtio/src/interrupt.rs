//! The interrupt line from a device to the guest.
//!
//! virtio-mmio has one interrupt per device and an InterruptStatus register
//! that tells the driver why it fired (used buffers and/or a config change).
//! [`Interrupt`] keeps that status and raises the line by writing the eventfd
//! the VMM registered as an irqfd; the driver clears bits through
//! InterruptACK, which the transport forwards to [`Interrupt::ack`].

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::EventFd;

/// A device's interrupt: status bits plus the irqfd that raises the line.
///
/// Shared (`Arc`) between the transport, which reads and acknowledges the
/// status, and the device thread, which signals.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    /// Wraps `irq`, the eventfd the VMM registered as this device's irqfd.
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// Tells the driver that the device put buffers in a used ring.
    pub fn signal_used_queue(&self) {
        self.signal(VIRTIO_MMIO_INT_VRING);
    }

    /// Tells the driver that the config space (or the device status, e.g.
    /// DEVICE_NEEDS_RESET) changed.
    pub fn signal_config_change(&self) {
        self.signal(VIRTIO_MMIO_INT_CONFIG);
    }

    /// The InterruptStatus register: `VIRTIO_MMIO_INT_VRING` (1) and/or
    /// `VIRTIO_MMIO_INT_CONFIG` (2).
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears `bits` from the status (the driver's InterruptACK write).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the status a snapshot saved and, if any bit is set, raises the
    /// line again (an interrupt pending when the snapshot was taken).
    pub fn restore(&self, status: u32) {
        let status = status & (VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        self.status.store(status, Ordering::SeqCst);
        if status != 0 {
            let _ = self.irq.write(1);
        }
    }

    /// Raises the line again if any status bit is set (the guest's handler
    /// reads the status, so a repeat is harmless; a lost one hangs a queue).
    pub fn reraise(&self) {
        if self.status() != 0 {
            let _ = self.irq.write(1);
        }
    }

    fn signal(&self, bit: u32) {
        // The status bit must be visible before the guest takes the
        // interrupt and reads InterruptStatus.
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            // Only fails if the counter would overflow, i.e. the VMM stopped
            // consuming it; the status bit still records the event.
            tracing::warn!("cannot raise virtio interrupt: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn signal_sets_status_and_raises_line_ack_clears() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let intr = Interrupt::new(irq.try_clone().unwrap());
        assert_eq!(intr.status(), 0);
        intr.signal_used_queue();
        intr.signal_config_change();
        assert_eq!(intr.status(), 3);
        assert_eq!(irq.read().unwrap(), 2);
        intr.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(intr.status(), VIRTIO_MMIO_INT_CONFIG);
        intr.ack(0xffff_ffff);
        assert_eq!(intr.status(), 0);
    }
}
