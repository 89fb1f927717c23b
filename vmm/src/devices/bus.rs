//! An address space (port I/O or MMIO) of non-overlapping device ranges.
//!
//! A vCPU exit names an address; the bus finds the device whose range holds it
//! and hands the device the offset into its range. Accesses nobody claims read
//! as all ones and are otherwise ignored, as on a PC.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::exit::VmExit;
use crate::hypervisor::DeviceAccess;

/// What a device access asks the VMM to do beyond answering it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// Stop the VM with this exit.
    Stop(VmExit),
    /// The guest wrote the boot-complete marker to the boot timer.
    BootComplete,
}

/// A device on a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`; may ask the VMM for something.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent>;

    /// For a snapshot: stops the device's own threads from touching guest
    /// memory or raising interrupts until [`BusDevice::resume`]. The vCPUs
    /// are paused already. A device without threads has nothing to do.
    fn pause(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Lets a paused device go on.
    fn resume(&mut self) {}

    /// The device's state for a snapshot, taken while it is paused (`None`:
    /// nothing worth keeping). An error means the device cannot be saved.
    fn save_state(&mut self) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }

    /// Loads what [`BusDevice::save_state`] saved, before the guest runs.
    /// The bytes come from a snapshot file: a bad one is an error, never a panic.
    fn restore_state(&mut self, _state: &[u8]) -> Result<(), String> {
        Ok(())
    }

    /// Every vCPU of a restored VM has its state: raise again any interrupt
    /// that is pending. One raised during the restore reached a local APIC
    /// whose saved state was loaded after it, which erased it.
    fn reraise_interrupt(&mut self) {}

    /// Raises the device's interrupt again if one looks lost (pending and unacknowledged for
    /// a whole check period); returns how many times that happened so far, if it did now.
    /// Called by the VMM about once a second.
    fn recover_lost_interrupt(&mut self) -> Option<u64> {
        None
    }

    /// One line on the device's state for a guest that looks stuck, if it
    /// has something worth saying (see [`crate::StopHandle::stop_and_describe`]).
    fn describe(&self) -> Option<String> {
        None
    }
}

/// Errors while populating a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already inserted.
    #[error("device range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
    },
    /// Zero-length or wrapping range.
    #[error("invalid device range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Base of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
    },
}

/// Shared handle to a device; one device may sit on several buses.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of devices keyed by base address.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let before = self.ranges.range(..end).next_back();
        if let Some((&b, &(l, _))) = before {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, dev)) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset.checked_add(size as u64)? <= *len).then_some((offset, dev))
    }

    /// Reads at `addr`; returns false (and fills `data` with 0xff) if no device
    /// claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes at `addr`; unclaimed writes are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<BusEvent> {
        let (offset, dev) = self.find(addr, data.len())?;
        lock(dev).write(offset, data)
    }
}

/// A device that could not be paused, saved or restored, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFailure {
    /// The device's name ("mmio@0xd0000000").
    pub device: String,
    /// Why.
    pub why: String,
}

impl From<DeviceFailure> for crate::snapshot::Error {
    fn from(f: DeviceFailure) -> Self {
        crate::snapshot::Error::Device {
            name: f.device,
            why: f.why,
        }
    }
}

impl Bus {
    fn devices(&self) -> impl Iterator<Item = (u64, &SharedDevice)> {
        self.ranges.iter().map(|(base, (_, dev))| (*base, dev))
    }
}

/// The VM's two address spaces: what a vCPU's device exits are answered from.
#[derive(Clone, Default)]
pub struct Buses {
    /// Port I/O (x86 only; empty elsewhere).
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

impl Buses {
    /// Every device once (one may sit on both buses), named by where it
    /// first sits ("pio@0x3f8", "mmio@0xd0000000"), in address order.
    pub fn named_devices(&self) -> Vec<(String, SharedDevice)> {
        let mut out: Vec<(String, SharedDevice)> = Vec::new();
        let all = self
            .pio
            .devices()
            .map(|(b, d)| (format!("pio@{b:#x}"), d))
            .chain(
                self.mmio
                    .devices()
                    .map(|(b, d)| (format!("mmio@{b:#x}"), d)),
            );
        for (name, dev) in all {
            if !out.iter().any(|(_, seen)| Arc::ptr_eq(seen, dev)) {
                out.push((name, dev.clone()));
            }
        }
        out
    }

    /// Pauses every device (see [`BusDevice::pause`]); on a failure the ones
    /// already paused are resumed and the error names the device.
    pub fn pause_all(&self) -> Result<(), DeviceFailure> {
        let devices = self.named_devices();
        for (i, (name, dev)) in devices.iter().enumerate() {
            if let Err(why) = lock(dev).pause() {
                for (_, dev) in &devices[..i] {
                    lock(dev).resume();
                }
                return Err(DeviceFailure {
                    device: name.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// Resumes every device.
    pub fn resume_all(&self) {
        for (_, dev) in self.named_devices() {
            lock(&dev).resume();
        }
    }

    /// [`BusDevice::reraise_interrupt`] on every device.
    pub fn reraise_interrupts(&self) {
        for (_, dev) in self.named_devices() {
            lock(&dev).reraise_interrupt();
        }
    }

    /// [`BusDevice::recover_lost_interrupt`] on every device; logs each recovery with the
    /// device's state (a warning the first time and at every power of two, so a device
    /// whose driver went away does not flood the log).
    pub fn recover_lost_interrupts(&self) {
        for (name, dev) in self.named_devices() {
            let mut dev = lock(&dev);
            let Some(count) = dev.recover_lost_interrupt() else {
                continue;
            };
            let state = dev.describe().unwrap_or_default();
            if count.is_power_of_two() {
                tracing::warn!(
                    "{name}: an interrupt looked lost (pending and unacknowledged for a second), \
                     raised again ({count} so far): {state}"
                );
            } else {
                tracing::debug!("{name}: interrupt raised again ({count} so far): {state}");
            }
        }
    }

    /// [`BusDevice::describe`] of every device that says something, after its name.
    pub fn describe_all(&self) -> Vec<String> {
        self.named_devices()
            .into_iter()
            .filter_map(|(name, dev)| lock(&dev).describe().map(|d| format!("{name} {d}")))
            .collect()
    }

    /// Every device's state that is worth keeping, by name; or the first
    /// device that cannot be saved, with why.
    pub fn save_all(&self) -> Result<Vec<(String, Vec<u8>)>, DeviceFailure> {
        let mut out = Vec::new();
        for (name, dev) in self.named_devices() {
            match lock(&dev).save_state() {
                Ok(Some(state)) => out.push((name, state)),
                Ok(None) => {}
                Err(why) => return Err(DeviceFailure { device: name, why }),
            }
        }
        Ok(out)
    }

    /// Loads saved states into the devices of the same names; a state for a
    /// device that is not there is an error.
    pub fn restore_all<'a>(
        &self,
        states: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), DeviceFailure> {
        let devices = self.named_devices();
        for (name, state) in states {
            let Some((_, dev)) = devices.iter().find(|(n, _)| n == name) else {
                return Err(DeviceFailure {
                    device: name.into(),
                    why: "no such device in this VM".into(),
                });
            };
            lock(dev)
                .restore_state(state)
                .map_err(|why| DeviceFailure {
                    device: name.to_string(),
                    why,
                })?;
        }
        Ok(())
    }
}

impl DeviceAccess for Buses {
    type Event = BusEvent;

    fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        self.pio.read(port.into(), data);
    }

    fn pio_write(&mut self, port: u16, data: &[u8]) -> Option<BusEvent> {
        self.pio.write(port.into(), data)
    }

    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data);
    }

    fn mmio_write(&mut self, addr: u64, data: &[u8]) -> Option<BusEvent> {
        self.mmio.write(addr, data)
    }
}

/// Locks a device even if a previous holder panicked: a device's state is
/// plain data, and one broken access must not wedge every vCPU.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<BusEvent> {
            self.0.push((offset, data.to_vec()));
            None
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let a = Arc::new(Mutex::new(Recorder(vec![])));
        let mut bus = Bus::new();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        bus.write(0x3ff, &[9]);
        assert_eq!(a.lock().unwrap().0, vec![(7, vec![9])]);
    }

    #[test]
    fn unclaimed_reads_are_all_ones() {
        let bus = Bus::new();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x80, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert_eq!(bus.write(0x80, &[1]), None);
    }

    #[test]
    fn access_straddling_the_end_is_unclaimed() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder(vec![]))), 0x10, 4)
            .unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x12, &mut b));
        assert!(!bus.read(u64::MAX, &mut b));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        let d = || -> SharedDevice { Arc::new(Mutex::new(Recorder(vec![]))) };
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(d(), 0x10f, 1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(d(), 0xf8, 9),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(d(), 0x110, 1).unwrap();
        bus.insert(d(), 0xf0, 0x10).unwrap();
        assert!(matches!(
            bus.insert(d(), 0, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
    }
}
