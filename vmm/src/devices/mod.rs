//! Devices on the port-I/O and MMIO buses, and the buses themselves.
//!
//! The interrupt controllers and the PIT live in the hypervisor (created
//! through [`crate::hypervisor::Vm::create_irqchip`]); what is here is what the
//! VMM itself must answer: the console UART, msbvm's platform device, plus the
//! attachment of virtio-mmio devices ([`virtio`]). Where the legacy devices
//! sit, and the x86-only i8042, is the architecture's business
//! (`arch::attach_legacy_devices`).

pub mod bus;
pub mod console;
pub mod platform;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, BusEvent, Buses, DeviceFailure};

/// Errors while creating devices and placing them on the buses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A device could not be placed on a bus.
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    /// The hypervisor refused to wire a device's interrupt or notifications.
    #[error(transparent)]
    Hypervisor(#[from] crate::hypervisor::Error),
    /// A host resource (eventfd) could not be created.
    #[error("cannot create {what}: {source}")]
    Host {
        /// What.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Every interrupt line for virtio devices is taken.
    #[error("invalid VM configuration: too many virtio devices for the interrupt lines")]
    NoSlot,
    /// A device factory failed.
    #[error("cannot create the virtio device: {name}: {source}")]
    Create {
        /// Which device (its [`crate::DeviceSpec`] name).
        name: String,
        /// Why.
        source: std::io::Error,
    },
}
