//! Devices on the port-I/O and MMIO buses, and the buses themselves.
//!
//! The interrupt controllers and the PIT live in the hypervisor (KVM's
//! in-kernel irqchip); what is here is what the VMM itself must answer:
//! the console UART, the i8042 reset line and msbvm's platform device, plus
//! the attachment of virtio-mmio devices ([`virtio`]).

pub mod bus;
pub mod console;
pub mod i8042;
pub mod platform;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, BusEvent};
