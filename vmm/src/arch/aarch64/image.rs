//! The arm64 Linux `Image` header (Documentation/arch/arm64/booting.rst) and
//! where the kernel, initramfs and device tree go in RAM.

use super::layout::{FDT_MAX_SIZE, KERNEL_ALIGN, RAM_START};

/// `"ARM\x64"` read little-endian, at offset 0x38 of the header.
pub const IMAGE_MAGIC: u32 = 0x644d_5241;
/// Size of the header the boot protocol defines.
pub const IMAGE_HEADER_SIZE: usize = 64;
/// The text offset kernels before 3.17 imply by a zero `image_size`.
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;

/// Why an `Image` cannot be booted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// Shorter than the 64-byte header.
    #[error("arm64 Image is {0} bytes, shorter than its 64-byte header")]
    TooShort(usize),
    /// Not an arm64 `Image` (a compressed `vmlinuz` or an ELF, for example).
    #[error("not an arm64 Image: magic {0:#010x} at 0x38")]
    BadMagic(u32),
    /// Flag bit 0 says big-endian; KVM guests here are little-endian.
    #[error("arm64 Image is big-endian")]
    BigEndian,
    /// The kernel, initramfs and device tree do not fit in RAM.
    #[error("kernel ({kernel} bytes), initramfs ({initrd} bytes) and device tree do not fit in {ram} bytes of RAM")]
    TooLarge {
        /// Bytes the kernel occupies from its base (`text_offset + image_size`).
        kernel: u64,
        /// Initramfs size.
        initrd: u64,
        /// RAM size.
        ram: u64,
    },
}

/// The fields of the header the loader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset from the 2 MiB-aligned base at which the image must be loaded.
    pub text_offset: u64,
    /// Bytes the kernel occupies once running, including its BSS; never less
    /// than the file.
    pub image_size: u64,
    /// The header's flags (bit 3: may be placed anywhere in RAM).
    pub flags: u64,
}

impl ImageHeader {
    /// Reads and checks the header at the start of `image`.
    pub fn parse(image: &[u8]) -> Result<Self, ImageError> {
        if image.len() < IMAGE_HEADER_SIZE {
            return Err(ImageError::TooShort(image.len()));
        }
        let u64_at = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
        let magic = u32::from_le_bytes(image[0x38..0x3c].try_into().unwrap());
        if magic != IMAGE_MAGIC {
            return Err(ImageError::BadMagic(magic));
        }
        let (mut text_offset, mut image_size, flags) = (u64_at(8), u64_at(16), u64_at(24));
        if image_size == 0 {
            // Pre-3.17 kernels: the header fields are not filled in and the
            // protocol says to assume 0x80000 and use the file's size.
            text_offset = LEGACY_TEXT_OFFSET;
            image_size = image.len() as u64;
        }
        if flags & 1 != 0 {
            return Err(ImageError::BigEndian);
        }
        Ok(Self {
            text_offset,
            image_size: image_size.max(image.len() as u64),
            flags,
        })
    }
}

/// Where everything goes in RAM for one boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPlacement {
    /// Where the image is copied and where the vCPU starts (PC).
    pub kernel_load: u64,
    /// The initramfs, if any: `(start, size)`.
    pub initrd: Option<(u64, u64)>,
    /// The device tree (x0 at entry), 8-byte aligned, at most 2 MiB.
    pub fdt: u64,
}

/// Places the kernel at the start of RAM (base 2 MiB aligned, plus
/// `text_offset`), the device tree in the 2 MiB block after the kernel's
/// `image_size`, and the initramfs after that on a page boundary. Putting
/// everything right above the kernel keeps it inside the first 1 GiB that
/// early kernel code maps, whatever the RAM size.
pub fn place(
    header: &ImageHeader,
    initrd_size: Option<u64>,
    ram_size: u64,
) -> Result<BootPlacement, ImageError> {
    let base = RAM_START; // already KERNEL_ALIGN-aligned
    debug_assert_eq!(base % KERNEL_ALIGN, 0);
    let kernel_load = base + header.text_offset;
    let kernel_end = kernel_load + header.image_size;
    let fdt = kernel_end.next_multiple_of(KERNEL_ALIGN);
    let initrd_start = fdt + FDT_MAX_SIZE;
    let end = initrd_start + initrd_size.unwrap_or(0);
    if end > RAM_START + ram_size {
        return Err(ImageError::TooLarge {
            kernel: header.text_offset + header.image_size,
            initrd: initrd_size.unwrap_or(0),
            ram: ram_size,
        });
    }
    Ok(BootPlacement {
        kernel_load,
        initrd: initrd_size.map(|s| (initrd_start, s)),
        fdt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[24..32].copy_from_slice(&flags.to_le_bytes());
        h[0x38..0x3c].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn parses_a_modern_header() {
        let h = ImageHeader::parse(&header(0, 0x200_0000, 0b1010)).unwrap();
        assert_eq!(h.text_offset, 0);
        assert_eq!(h.image_size, 0x200_0000);
        assert_eq!(h.flags, 0b1010);
    }

    #[test]
    fn zero_image_size_means_a_legacy_kernel() {
        let h = ImageHeader::parse(&header(0, 0, 0)).unwrap();
        assert_eq!(h.text_offset, 0x8_0000);
        assert_eq!(h.image_size, 4096);
    }

    #[test]
    fn rejects_bad_images() {
        assert_eq!(ImageHeader::parse(&[0; 10]), Err(ImageError::TooShort(10)));
        let mut elf = header(0, 1 << 20, 0);
        elf[0x38] = 0x7f;
        assert!(matches!(
            ImageHeader::parse(&elf),
            Err(ImageError::BadMagic(_))
        ));
        assert_eq!(
            ImageHeader::parse(&header(0, 1 << 20, 1)),
            Err(ImageError::BigEndian)
        );
    }

    #[test]
    fn places_fdt_and_initrd_above_the_kernel() {
        let h = ImageHeader::parse(&header(0, 0x1_2345, 0)).unwrap();
        let p = place(&h, Some(0x1000), 64 << 20).unwrap();
        assert_eq!(p.kernel_load, RAM_START);
        assert_eq!(p.fdt, RAM_START + (2 << 20));
        assert_eq!(p.fdt % 8, 0);
        assert_eq!(p.initrd, Some((RAM_START + (4 << 20), 0x1000)));
        assert!(matches!(
            place(&h, Some(64 << 20), 64 << 20),
            Err(ImageError::TooLarge { .. })
        ));
    }
}
