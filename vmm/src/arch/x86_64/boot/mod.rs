//! Loading what the guest boots, and the boot-protocol structures that tell the
//! kernel about the machine.
//!
//! A Linux image is tried as an ELF `vmlinux` first: with a PVH note it is
//! entered through the PVH ABI in 32-bit protected mode ([`pvh`]); without one,
//! at its ELF entry in 64-bit mode with a zero page. Otherwise it is read as a
//! `bzImage` and entered through the 64-bit boot protocol ([`linux64`]).
//! Hand-made guests are copied in raw and entered in long mode.

pub mod linux64;
pub mod pvh;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

pub use super::regs::EntryMode;
use crate::arch::layout::*;
use crate::arch::x86_64::{gdt, mptable, paging};
use crate::config::BootSource;
use crate::devices::virtio::VirtioPlacement;
use crate::memory::GuestMemory;

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel file could not be opened.
    #[error("cannot open kernel image {path}: {source}")]
    OpenKernel {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel is neither a loadable ELF nor a bzImage.
    #[error("{path} is not a kernel msbvm can boot (neither an x86_64 ELF vmlinux nor a bzImage): as ELF: {elf}; as bzImage: {bzimage}")]
    UnknownKernelFormat {
        /// The path given.
        path: PathBuf,
        /// The ELF loader's complaint.
        elf: loader::Error,
        /// The bzImage loader's complaint.
        bzimage: loader::Error,
    },
    /// The initrd could not be read.
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The initrd does not fit in low guest memory above the kernel.
    #[error("the initrd ({size} bytes) does not fit in guest memory above the kernel; give the VM more memory")]
    InitrdTooLarge {
        /// Its size.
        size: u64,
    },
    /// The command line is invalid.
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[source] Source),
    /// Raw code does not fit where it was asked to go.
    #[error("raw guest code of {len} bytes does not fit at {addr:#x}")]
    RawCodeOutOfMemory {
        /// Requested load address.
        addr: u64,
        /// Code length.
        len: usize,
    },
    /// Writing a boot structure failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// The error.
        source: Source,
    },
    /// The MP table could not be built.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
}

/// The error a boot step failed with (the loader's, vm-memory's, ...).
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// Wraps a failure to write `what` into guest memory.
pub(crate) fn write_err<E: Into<Source>>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Write {
        what,
        source: e.into(),
    }
}

fn cmdline_err<E: Into<Source>>(e: E) -> Error {
    Error::Cmdline(e.into())
}

/// The RAM map of the guest, as (start, size) pairs in ascending order.
pub fn ram_map(mem: &GuestMemory) -> Vec<(u64, u64)> {
    let end = mem.last_addr().raw_value() + 1;
    let mut map = vec![(0, EBDA_START)];
    let low_end = end.min(MMIO_GAP_START);
    map.push((HIMEM_START, low_end - HIMEM_START));
    if end > MMIO_GAP_END {
        map.push((MMIO_GAP_END, end - MMIO_GAP_END));
    }
    map
}

/// The kernel command-line entry announcing a virtio-mmio device.
pub fn cmdline_entry(device: &VirtioPlacement) -> String {
    format!("virtio_mmio.device=4K@{:#x}:{}", device.base, device.line)
}

/// `cmdline` with an entry for each of `virtio` appended.
pub fn with_devices_announced(cmdline: &str, virtio: &[VirtioPlacement]) -> String {
    let mut line = cmdline.to_string();
    for device in virtio {
        line.push(' ');
        line.push_str(&cmdline_entry(device));
    }
    line
}

/// Loads the guest described by `source` into `mem` and writes every structure
/// the entry needs (GDT, page tables, MP table, boot information); a Linux
/// guest learns about the virtio devices at `virtio` from its command line.
pub fn load(
    mem: &GuestMemory,
    source: &BootSource,
    vcpus: u8,
    virtio: &[VirtioPlacement],
) -> Result<EntryMode, Error> {
    write_common(mem, vcpus)?;
    match source {
        BootSource::RawLongMode { code, load_addr } => {
            let end = load_addr.checked_add(code.len() as u64);
            if end.is_none() || !mem.check_range(GuestAddress(*load_addr), code.len()) {
                return Err(Error::RawCodeOutOfMemory {
                    addr: *load_addr,
                    len: code.len(),
                });
            }
            mem.write_slice(code, GuestAddress(*load_addr))
                .map_err(write_err("raw guest code"))?;
            Ok(EntryMode::RawLongMode { entry: *load_addr })
        }
        BootSource::Linux {
            kernel,
            initrd,
            cmdline,
        } => load_linux(
            mem,
            kernel,
            initrd.as_deref(),
            &with_devices_announced(cmdline, virtio),
        ),
    }
}

/// GDT, IDT, identity page tables and MP table: shared by every entry mode.
fn write_common(mem: &GuestMemory, vcpus: u8) -> Result<(), Error> {
    for (i, entry) in gdt::TABLE.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))
            .map_err(write_err("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(write_err("IDT"))?;
    paging::write_identity_tables(mem).map_err(write_err("page tables"))?;
    let table = mptable::build(vcpus, MPTABLE_START)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(write_err("MP table"))?;
    Ok(())
}

fn load_linux(
    mem: &GuestMemory,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<EntryMode, Error> {
    let open = || {
        File::open(kernel).map_err(|source| Error::OpenKernel {
            path: kernel.to_path_buf(),
            source,
        })
    };
    let himem = Some(GuestAddress(HIMEM_START));
    let (result, is_elf) = match Elf::load(mem, None, &mut open()?, himem) {
        Ok(r) => (r, true),
        Err(elf) => match BzImage::load(mem, None, &mut open()?, himem) {
            Ok(r) => (r, false),
            Err(bzimage) => {
                return Err(Error::UnknownKernelFormat {
                    path: kernel.to_path_buf(),
                    elf,
                    bzimage,
                })
            }
        },
    };

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(cmdline_err)?;
    cl.insert_str(cmdline).map_err(cmdline_err)?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(cmdline_err)?;
    let cmdline_size = cmdline.len() as u32 + 1;

    let kernel_end = result.kernel_load.raw_value() + result.kernel_end;
    let initrd = match initrd {
        Some(path) => Some(load_initrd(mem, path, kernel_end)?),
        None => None,
    };
    let ram = ram_map(mem);

    if is_elf {
        if let PvhBootCapability::PvhEntryPresent(entry) = result.pvh_boot_cap {
            pvh::write_start_info(mem, &ram, initrd, CMDLINE_START)?;
            return Ok(EntryMode::Pvh {
                entry: entry.raw_value(),
                start_info: PVH_INFO_START,
            });
        }
        linux64::write_zero_page(mem, None, &ram, initrd, CMDLINE_START, cmdline_size)?;
        return Ok(EntryMode::Linux64 {
            entry: result.kernel_load.raw_value(),
            zero_page: ZERO_PAGE_START,
        });
    }
    linux64::write_zero_page(
        mem,
        result.setup_header,
        &ram,
        initrd,
        CMDLINE_START,
        cmdline_size,
    )?;
    Ok(EntryMode::Linux64 {
        // The 64-bit entry of a bzImage is 0x200 past its protected-mode code.
        entry: result.kernel_load.raw_value() + 0x200,
        zero_page: ZERO_PAGE_START,
    })
}

/// Places the initrd page-aligned at the top of low RAM (below the device hole),
/// above the kernel. Returns (address, size).
fn load_initrd(mem: &GuestMemory, path: &Path, kernel_end: u64) -> Result<(u64, u64), Error> {
    let data = std::fs::read(path).map_err(|source| Error::ReadInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = data.len() as u64;
    let low_end = (mem.last_addr().raw_value() + 1).min(MMIO_GAP_START);
    let addr = low_end
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(HIMEM_START))
        .ok_or(Error::InitrdTooLarge { size })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(write_err("initrd"))?;
    Ok((addr, size))
}

/// Test fixtures shared by the boot-protocol modules' tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::arch::layout;
    use crate::memory::GuestMemory;

    /// 64 MiB of guest memory and its RAM map (low RAM, then from 1 MiB up).
    pub fn memory_64m() -> (GuestMemory, [(u64, u64); 2]) {
        let mem = layout::create_memory(64 << 20).unwrap();
        (mem, [(0, 0x9fc00), (0x10_0000, (64 << 20) - 0x10_0000)])
    }

    /// A Linux boot source for `kernel`.
    pub fn linux(kernel: impl Into<std::path::PathBuf>, cmdline: &str) -> crate::BootSource {
        crate::BootSource::Linux {
            kernel: kernel.into(),
            initrd: None,
            cmdline: cmdline.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::linux;
    use super::*;
    use crate::arch::layout;

    /// A fresh directory for test `tag` holding file `name` with `bytes`.
    fn temp_file(tag: &str, name: &str, bytes: &[u8]) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("msbvm-{tag}-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn ram_map_leaves_the_legacy_hole_out() {
        let mem = layout::create_memory(256 << 20).unwrap();
        assert_eq!(
            ram_map(&mem),
            vec![(0, EBDA_START), (HIMEM_START, (256 << 20) - HIMEM_START)]
        );
    }

    #[test]
    fn raw_code_is_copied_and_bounds_checked() {
        let mem = layout::create_memory(16 << 20).unwrap();
        let src = BootSource::RawLongMode {
            code: vec![0xf4],
            load_addr: 0x10_0000,
        };
        assert_eq!(
            load(&mem, &src, 1, &[]).unwrap(),
            EntryMode::RawLongMode { entry: 0x10_0000 }
        );
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000)).unwrap(), 0xf4);
        let bad = BootSource::RawLongMode {
            code: vec![0; 16],
            load_addr: (16 << 20) - 8,
        };
        assert!(matches!(
            load(&mem, &bad, 1, &[]),
            Err(Error::RawCodeOutOfMemory { .. })
        ));
        let wrap = BootSource::RawLongMode {
            code: vec![0; 16],
            load_addr: u64::MAX - 4,
        };
        assert!(load(&mem, &wrap, 1, &[]).is_err());
    }

    #[test]
    fn garbage_kernel_is_a_clear_error() {
        let (dir, path) = temp_file("boot", "not-a-kernel", &[0x42; 8192]);
        let mem = layout::create_memory(64 << 20).unwrap();
        let src = linux(&path, "console=ttyS0");
        let err = load(&mem, &src, 1, &[]).unwrap_err().to_string();
        assert!(err.contains("not a kernel msbvm can boot"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let mem = layout::create_memory(64 << 20).unwrap();
        let src = linux("/nonexistent/vmlinux", "");
        let err = load(&mem, &src, 1, &[]).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory() {
        let (dir, path) = temp_file("initrd", "initrd", &[7; 10_000]);
        let mem = layout::create_memory(64 << 20).unwrap();
        let (addr, size) = load_initrd(&mem, &path, 0x200_0000).unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 64 << 20);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 9_999)).unwrap(), 7);
        assert!(matches!(
            load_initrd(&mem, &path, 64 << 20),
            Err(Error::InitrdTooLarge { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn devices_are_announced_on_the_command_line() {
        let virtio = [
            VirtioPlacement {
                base: 0xd000_1000,
                line: 5,
            },
            VirtioPlacement {
                base: 0xd000_2000,
                line: 6,
            },
        ];
        assert_eq!(
            with_devices_announced("quiet", &virtio),
            "quiet virtio_mmio.device=4K@0xd0001000:5 virtio_mmio.device=4K@0xd0002000:6"
        );
        assert_eq!(with_devices_announced("quiet", &[]), "quiet");
    }
}
