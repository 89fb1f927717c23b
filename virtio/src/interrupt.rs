//! The interrupt line from a device to the guest.
//!
//! virtio-mmio has one interrupt per device and an InterruptStatus register
//! that tells the driver why it fired (used buffers and/or a config change).
//! [`Interrupt`] keeps that status and raises the line by writing the eventfd
//! the VMM registered as an irqfd; the driver clears bits through
//! InterruptACK, which the transport forwards to [`Interrupt::ack`].

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

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
    /// InterruptACK writes so far (see [`Interrupt::recover_lost`]).
    acks: AtomicU64,
    /// What the last [`Interrupt::recover_lost`] saw: the acks, and whether a bit was set.
    checked_acks: AtomicU64,
    checked_pending: AtomicBool,
    /// Interrupts raised again by [`Interrupt::recover_lost`].
    recovered: AtomicU64,
}

impl Interrupt {
    /// Wraps `irq`, the eventfd the VMM registered as this device's irqfd.
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
            acks: AtomicU64::new(0),
            checked_acks: AtomicU64::new(0),
            checked_pending: AtomicBool::new(false),
            recovered: AtomicU64::new(0),
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
        self.acks.fetch_add(1, Ordering::SeqCst);
    }

    /// Raises the line again when an interrupt looks lost, and returns how many times that
    /// happened so far (this one included); `None` when nothing looked lost.
    ///
    /// Lost means: a status bit was set at the previous call and is still set now, and the
    /// driver acknowledged nothing in between. Linux's handler acknowledges on every
    /// interrupt it takes, so the guest has not taken one since. A driver waiting for the
    /// completion behind it (a FUSE request, a balloon page report) would wait until the
    /// next interrupt of the device, which may never come: under nested virtualization an
    /// interrupt to the guest can go missing. The VMM calls this at a period far above the
    /// guest's interrupt latency (every second); an extra interrupt is harmless (the handler
    /// reads the status and finds the used buffers or nothing).
    pub fn recover_lost(&self) -> Option<u64> {
        let status = self.status();
        let acks = self.acks.load(Ordering::SeqCst);
        let acks_before = self.checked_acks.swap(acks, Ordering::SeqCst);
        let pending_before = self.checked_pending.swap(status != 0, Ordering::SeqCst);
        if status == 0 || !pending_before || acks != acks_before {
            return None;
        }
        self.reraise();
        Some(self.recovered.fetch_add(1, Ordering::SeqCst) + 1)
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

    #[test]
    fn an_interrupt_left_unacknowledged_between_two_checks_is_raised_again() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let intr = Interrupt::new(irq.try_clone().unwrap());
        // Nothing pending: nothing to recover, however often it is checked.
        assert_eq!(intr.recover_lost(), None);
        assert_eq!(intr.recover_lost(), None);
        intr.signal_used_queue();
        assert_eq!(irq.read().unwrap(), 1);
        // First seen pending: it may simply not have been taken yet.
        assert_eq!(intr.recover_lost(), None);
        assert!(irq.read().is_err(), "no extra interrupt yet");
        // Still pending, no acknowledgement since: raised again, and again a period later.
        assert_eq!(intr.recover_lost(), Some(1));
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(intr.recover_lost(), Some(2));
        assert_eq!(irq.read().unwrap(), 1);
        // Taken at last: acknowledged, nothing pending.
        intr.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(intr.recover_lost(), None);
    }

    #[test]
    fn an_acknowledgement_between_checks_means_the_guest_takes_its_interrupts() {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let intr = Interrupt::new(irq.try_clone().unwrap());
        intr.signal_used_queue();
        assert_eq!(intr.recover_lost(), None);
        // The guest takes it and a new completion is signalled right after: pending at both
        // checks, but acknowledged in between, so the new one is only a period old.
        intr.ack(VIRTIO_MMIO_INT_VRING);
        intr.signal_used_queue();
        assert_eq!(intr.recover_lost(), None);
        let _ = irq.read();
        // A whole period without an acknowledgement: now it counts as lost.
        assert_eq!(intr.recover_lost(), Some(1));
    }
}
