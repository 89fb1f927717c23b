//! The arm64 guest architecture: the address map, the Linux `Image` boot
//! protocol, the flattened device tree and the register values a vCPU enters
//! the kernel with.
//!
//! Everything here is plain data and logic, so it compiles (and its unit tests
//! run) on every host; the KVM calls that need aarch64-only kvm-bindings items
//! live in `kvm::aarch64`. On an aarch64 host the core uses this module
//! through the names `arch` re-exports.

pub mod boot;
// Puts the core's console and platform device on its bus, which is Linux's.
#[cfg(target_os = "linux")]
pub mod devices;
pub mod fdt;
pub mod image;
pub mod layout;
pub mod regs;

/// The default kernel command line for arm64 guests. `earlycon` points at the
/// console UART so boot messages appear before the 8250 driver probes. arm64
/// reboots and powers off through PSCI, which KVM turns into system events;
/// `reboot=panic_w` makes the restart after a panic a warm one, which Linux
/// asks for with PSCI SYSTEM_RESET2 instead of SYSTEM_RESET, so the VMM can
/// tell a panic from a reboot.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 earlycon=uart,mmio,0x9000000 reboot=panic_w panic=-1 quiet";

#[cfg(test)]
mod tests {
    #[test]
    fn earlycon_names_the_console_uart() {
        let addr = format!("earlycon=uart,mmio,{:#x}", super::layout::SERIAL_MMIO_START);
        assert!(super::DEFAULT_CMDLINE.contains(&addr));
    }
}
