//! The guest side of msbvm's platform device (see `msbvm_vmm::devices::platform`): a register
//! block whose first four bytes read "MSBV", with the boot timer at offset 0 and the power-off
//! register at offset 4.
//!
//! On x86_64 the agent reaches it through I/O ports. On aarch64 there are no ports: the VMM
//! places the block in MMIO and describes it in the device tree (a node compatible with
//! `msbvm,platform`), and the agent maps that page of `/dev/mem`.

/// Offset of the boot-timer register.
const BOOT_TIMER: u16 = 0;
/// Offset of the power-off register.
const POWER: u16 = 4;
/// What the boot timer expects.
const BOOT_COMPLETE: u8 = 0x4d;
/// What the first four bytes read on msbvm.
const MAGIC: [u8; 4] = *b"MSBV";

#[cfg(target_arch = "x86_64")]
mod access {
    //! Port I/O.

    /// I/O port base of the device (kept in step with the VMM's
    /// `arch::x86_64::layout::PLATFORM_PORT_BASE`).
    const PORT_BASE: u16 = 0x0440;

    /// Asks for the device's ports; false if they cannot be had.
    pub fn open() -> bool {
        // SAFETY: ioperm only changes this process's I/O permission bitmap.
        unsafe { libc::ioperm(PORT_BASE as libc::c_ulong, 8, 1) == 0 }
    }

    pub fn read32(offset: u16) -> u32 {
        let value: u32;
        // SAFETY: the port range was granted by ioperm; an in from an unclaimed port just
        // returns all ones.
        unsafe {
            std::arch::asm!("in eax, dx", in("dx") PORT_BASE + offset, out("eax") value,
                options(nomem, nostack))
        };
        value
    }

    pub fn write8(offset: u16, value: u8) {
        // SAFETY: as for `read32`.
        unsafe {
            std::arch::asm!("out dx, al", in("dx") PORT_BASE + offset, in("al") value,
                options(nomem, nostack))
        };
    }

    pub fn write32(offset: u16, value: u32) {
        // SAFETY: as for `read32`.
        unsafe {
            std::arch::asm!("out dx, eax", in("dx") PORT_BASE + offset, in("eax") value,
                options(nomem, nostack))
        };
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod access {
    //! MMIO through `/dev/mem`, at the address the device tree gives.

    use std::sync::OnceLock;

    /// Where the device's page is mapped in this process (0: not found).
    static MAPPED: OnceLock<usize> = OnceLock::new();

    /// Maps the device's page; false if the device tree names none or it cannot be mapped.
    pub fn open() -> bool {
        *MAPPED.get_or_init(|| super::dt::platform_address().and_then(map).unwrap_or(0)) != 0
    }

    fn map(phys: u64) -> Option<usize> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let page = 4096u64;
        // O_SYNC makes the kernel map /dev/mem uncached, as device memory must be.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_SYNC)
            .open("/dev/mem")
            .ok()?;
        // SAFETY: a new shared mapping of one page of /dev/mem; nothing else is mapped at the
        // address the kernel picks. The mapping outlives `file` (mmap keeps its own reference).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                (phys & !(page - 1)) as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        Some(base as usize + (phys & (page - 1)) as usize)
    }

    fn at(offset: u16) -> usize {
        MAPPED.get().copied().unwrap_or(0) + offset as usize
    }

    pub fn read32(offset: u16) -> u32 {
        // SAFETY: only called after `open` mapped the device's page; the offsets are inside
        // its 8-byte register block, and offset 0 is 4-byte aligned in a page-aligned mapping.
        unsafe { std::ptr::read_volatile(at(offset) as *const u32) }
    }

    pub fn write8(offset: u16, value: u8) {
        // SAFETY: as for `read32`.
        unsafe { std::ptr::write_volatile(at(offset) as *mut u8, value) }
    }

    pub fn write32(offset: u16, value: u32) {
        // SAFETY: as for `read32`; offset 4 is 4-byte aligned in a page-aligned mapping.
        unsafe { std::ptr::write_volatile(at(offset) as *mut u32, value) }
    }
}

/// Finding the device in the flattened device tree the kernel exposes under /sys.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
mod dt {
    use std::path::Path;

    /// The kernel's view of the device tree.
    const ROOT: &str = "/sys/firmware/devicetree/base";
    /// The `compatible` string of msbvm's platform node.
    pub const COMPATIBLE: &[u8] = b"msbvm,platform";

    /// The guest-physical address of the platform device, from the first node directly under
    /// the root whose `compatible` is [`COMPATIBLE`].
    pub fn platform_address() -> Option<u64> {
        find(Path::new(ROOT))
    }

    pub fn find(root: &Path) -> Option<u64> {
        for entry in std::fs::read_dir(root).ok()?.flatten() {
            let node = entry.path();
            let Ok(compatible) = std::fs::read(node.join("compatible")) else {
                continue;
            };
            if compatible.split(|b| *b == 0).any(|c| c == COMPATIBLE) {
                return std::fs::read(node.join("reg"))
                    .ok()
                    .and_then(|r| address(&r));
            }
        }
        None
    }

    /// The address of a `reg` property with two address cells (the root's, as msbvm's tree
    /// declares), big-endian.
    pub fn address(reg: &[u8]) -> Option<u64> {
        let cells: [u8; 8] = reg.get(..8)?.try_into().ok()?;
        Some(u64::from_be_bytes(cells))
    }
}

/// True if the platform device is there and answers with its magic.
pub fn detect() -> bool {
    // One 4-byte read, not four 1-byte ones: each is a VM exit, which costs milliseconds
    // under nested virtualization.
    access::open() && access::read32(0) == u32::from_le_bytes(MAGIC)
}

/// Records boot completion in the VMM's boot timer. Only after [`detect`] returned true.
pub fn signal_boot_complete() {
    access::write8(BOOT_TIMER, BOOT_COMPLETE);
}

/// Ends the VM with `code`. Only after [`detect`] returned true.
pub fn power_off(code: u32) {
    access::write32(POWER, code);
}

#[cfg(test)]
mod tests {
    use super::dt;

    #[test]
    fn reads_the_address_of_the_platform_node() {
        let root = tempfile::tempdir().unwrap();
        let other = root.path().join("uart@9000000");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("compatible"), b"ns16550a\0").unwrap();
        std::fs::write(other.join("reg"), [0u8; 16]).unwrap();
        let node = root.path().join("platform@a000000");
        std::fs::create_dir(&node).unwrap();
        std::fs::write(node.join("compatible"), b"msbvm,platform\0").unwrap();
        let reg = [0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0];
        std::fs::write(node.join("reg"), reg).unwrap();
        assert_eq!(dt::find(root.path()), Some(0x0a00_0000));
    }

    #[test]
    fn no_node_or_short_reg_is_none() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(dt::find(root.path()), None);
        assert_eq!(dt::address(&[0, 1, 2]), None);
        assert_eq!(dt::find(std::path::Path::new("/nonexistent")), None);
    }
}
