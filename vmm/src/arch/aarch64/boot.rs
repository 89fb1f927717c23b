//! Loading an arm64 guest: the `Image` at the start of RAM, the initramfs
//! and the device tree above it, and the registers the boot vCPU enters with
//! (Documentation/arch/arm64/booting.rst).
//!
//! Devices are announced in the device tree rather than on the command line:
//! a `virtio_mmio.device=` entry names a Linux interrupt number, which on arm64
//! is not the GIC's, so only the tree can say which SPI a device raises.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::fdt::{self, FdtConfig};
use super::image::{self, ImageError, ImageHeader, IMAGE_HEADER_SIZE};
use super::layout::{CMDLINE_MAX_SIZE, FDT_MAX_SIZE, RAM_START};
pub use super::regs::EntryMode;
use super::regs::EntryRegisters;
use crate::arch::VirtioPlacement;
use crate::boot_source::BootSource;
use crate::memory::GuestMemory;

/// The error a boot step failed with (vm-memory's, the FDT writer's, ...).
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel file could not be opened or read.
    #[error("cannot read kernel image {path}: {source}")]
    OpenKernel {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel is not an arm64 `Image`.
    #[error(
        "{path} is not a kernel msbvm can boot on arm64 (an uncompressed arm64 Image): {source}"
    )]
    Image {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        source: ImageError,
    },
    /// The initrd could not be read.
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The command line is too long for the boot protocol.
    #[error("the kernel command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The device tree could not be built or is too large.
    #[error("cannot build the device tree: {0}")]
    Fdt(String),
    /// Writing into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Write {
        /// Which part.
        what: &'static str,
        /// The error.
        source: Source,
    },
    /// The boot source exists only on another architecture.
    #[error("{0} guests can only boot on x86_64")]
    Unsupported(&'static str),
}

fn write_err<E: Into<Source>>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Write {
        what,
        source: e.into(),
    }
}

/// Loads the guest described by `source` into `mem`, with a device tree that
/// lists `vcpus` vCPUs and the virtio devices at `virtio`; returns the boot
/// vCPU's entry registers.
pub fn load(
    mem: &GuestMemory,
    source: &BootSource,
    vcpus: u8,
    virtio: &[VirtioPlacement],
) -> Result<EntryMode, Error> {
    let BootSource::Linux {
        kernel,
        initrd,
        cmdline,
    } = source
    else {
        return Err(Error::Unsupported("hand-made long-mode"));
    };
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let ram_size = mem.last_addr().0 + 1 - RAM_START;
    let open_err = |source| Error::OpenKernel {
        path: kernel.clone(),
        source,
    };
    let mut kernel_file = File::open(kernel).map_err(open_err)?;
    let kernel_len = kernel_file.metadata().map_err(open_err)?.len();
    let mut head = [0u8; IMAGE_HEADER_SIZE];
    let got = read_up_to(&mut kernel_file, &mut head).map_err(open_err)?;
    let header = ImageHeader::parse(&head[..got]).map_err(|source| Error::Image {
        path: kernel.clone(),
        source,
    })?;
    // The header's image_size covers the BSS; the file is what gets copied.
    let header = ImageHeader {
        image_size: header.image_size.max(kernel_len),
        ..header
    };
    let initrd_file = match initrd {
        Some(path) => {
            let err = |source| Error::ReadInitrd {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(err)?;
            let len = file.metadata().map_err(err)?.len();
            Some((path, file, len))
        }
        None => None,
    };
    let placement =
        image::place(&header, initrd_file.as_ref().map(|i| i.2), ram_size).map_err(|source| {
            Error::Image {
                path: kernel.clone(),
                source,
            }
        })?;

    mem.write_slice(&head[..got], GuestAddress(placement.kernel_load))
        .map_err(write_err("the kernel"))?;
    mem.read_exact_volatile_from(
        GuestAddress(placement.kernel_load + got as u64),
        &mut kernel_file,
        (kernel_len - got as u64) as usize,
    )
    .map_err(write_err("the kernel"))?;
    if let (Some((path, mut file, len)), Some((start, _))) = (initrd_file, placement.initrd) {
        mem.read_exact_volatile_from(GuestAddress(start), &mut file, len as usize)
            .map_err(|e| Error::ReadInitrd {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
    }

    let blob = device_tree(cmdline, vcpus, ram_size, placement.initrd, virtio)?;
    mem.write_slice(&blob, GuestAddress(placement.fdt))
        .map_err(write_err("the device tree"))?;
    Ok(EntryRegisters::linux(placement.kernel_load, placement.fdt))
}

/// The device tree for this boot, checked against the protocol's size limit.
pub fn device_tree(
    cmdline: &str,
    vcpus: u8,
    ram_size: u64,
    initrd: Option<(u64, u64)>,
    virtio: &[VirtioPlacement],
) -> Result<Vec<u8>, Error> {
    let blob = fdt::create_fdt(&FdtConfig {
        vcpus: u32::from(vcpus),
        ram_size,
        cmdline,
        initrd,
        virtio,
    })
    .map_err(|e| Error::Fdt(e.to_string()))?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(Error::Fdt(format!(
            "{} bytes, more than the {FDT_MAX_SIZE} the boot protocol allows",
            blob.len()
        )));
    }
    Ok(blob)
}

/// Reads until `buf` is full or the file ends; returns how much was read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::layout;
    use super::*;

    fn fake_image(dir: &Path, image_size: u64, len: usize) -> PathBuf {
        let mut h = vec![0u8; len];
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[0x38..0x3c].copy_from_slice(b"ARM\x64");
        h[len - 1] = 0xaa;
        let path = dir.join("Image");
        std::fs::write(&path, &h).unwrap();
        path
    }

    #[test]
    fn loads_kernel_initrd_and_tree_and_enters_at_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_image(dir.path(), 0x1_0000, 0x8000);
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, [7u8; 100]).unwrap();
        let mem = layout::create_memory(64 << 20).unwrap();
        let entry = load(
            &mem,
            &BootSource::Linux {
                kernel,
                initrd: Some(initrd),
                cmdline: "console=ttyS0".into(),
            },
            2,
            &[VirtioPlacement {
                base: layout::VIRTIO_MMIO_START,
                line: 2,
            }],
        )
        .unwrap();
        assert_eq!(entry.pc, RAM_START);
        assert_eq!(entry.x0, RAM_START + (2 << 20));
        let last: u8 = mem.read_obj(GuestAddress(RAM_START + 0x7fff)).unwrap();
        assert_eq!(last, 0xaa);
        let magic: u32 = mem.read_obj(GuestAddress(entry.x0)).unwrap();
        assert_eq!(u32::from_be(magic), 0xd00d_feed);
        let first: u8 = mem.read_obj(GuestAddress(RAM_START + (4 << 20))).unwrap();
        assert_eq!(first, 7);
    }

    #[test]
    fn rejects_what_is_not_an_arm64_image() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, b"\x7fELF not an Image").unwrap();
        let mem = layout::create_memory(16 << 20).unwrap();
        let boot = |kernel: &Path| BootSource::Linux {
            kernel: kernel.to_path_buf(),
            initrd: None,
            cmdline: String::new(),
        };
        let e = load(&mem, &boot(&kernel), 1, &[]).unwrap_err();
        assert!(matches!(e, Error::Image { .. }), "{e}");
        let e = load(&mem, &boot(Path::new("/nonexistent")), 1, &[]).unwrap_err();
        assert!(matches!(e, Error::OpenKernel { .. }), "{e}");
        let raw = BootSource::RawLongMode {
            code: vec![0xf4],
            load_addr: 0x1000,
        };
        assert!(matches!(
            load(&mem, &raw, 1, &[]),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn a_kernel_too_large_for_ram_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = fake_image(dir.path(), 32 << 20, 0x1000);
        let mem = layout::create_memory(16 << 20).unwrap();
        let boot = BootSource::Linux {
            kernel,
            initrd: None,
            cmdline: String::new(),
        };
        let e = load(&mem, &boot, 1, &[]).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }
}
