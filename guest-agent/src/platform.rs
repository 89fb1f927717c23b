//! The guest side of msbvm's platform device (see `msbvm_vmm::devices::platform`):
//! an I/O port block whose first four bytes read "MSBV".

/// I/O port base of the device (kept in step with the VMM's `arch::x86_64::layout::PLATFORM_PORT_BASE`).
const PORT_BASE: u16 = 0x0440;
const BOOT_TIMER: u16 = PORT_BASE;
const POWER: u16 = PORT_BASE + 4;
const BOOT_COMPLETE: u8 = 0x4d;
const MAGIC: [u8; 4] = *b"MSBV";

#[cfg(target_arch = "x86_64")]
fn ioperm() -> bool {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    unsafe { libc::ioperm(PORT_BASE as libc::c_ulong, 8, 1) == 0 }
}

#[cfg(target_arch = "x86_64")]
fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the port range was granted by ioperm; an in from an unclaimed
    // port just returns all ones.
    unsafe {
        std::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack))
    };
    value
}

#[cfg(target_arch = "x86_64")]
fn outb(port: u16, value: u8) {
    // SAFETY: as for `inb`.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack))
    };
}

#[cfg(target_arch = "x86_64")]
fn outl(port: u16, value: u32) {
    // SAFETY: as for `inb`.
    unsafe {
        std::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack))
    };
}

/// True if the platform device answers with its magic.
#[cfg(target_arch = "x86_64")]
pub fn detect() -> bool {
    ioperm() && (0..4).all(|i| inb(PORT_BASE + i) == MAGIC[i as usize])
}

/// Records boot completion in the VMM's boot timer.
#[cfg(target_arch = "x86_64")]
pub fn signal_boot_complete() {
    outb(BOOT_TIMER, BOOT_COMPLETE);
}

/// Ends the VM with `code`.
#[cfg(target_arch = "x86_64")]
pub fn power_off(code: u32) {
    outl(POWER, code);
}

/// True if the platform device answers with its magic (never, off x86_64).
#[cfg(not(target_arch = "x86_64"))]
pub fn detect() -> bool {
    false
}
/// Records boot completion (nothing to do off x86_64).
#[cfg(not(target_arch = "x86_64"))]
pub fn signal_boot_complete() {}
/// Ends the VM with `code` (nothing to do off x86_64).
#[cfg(not(target_arch = "x86_64"))]
pub fn power_off(_code: u32) {}
