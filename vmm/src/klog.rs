//! The guest kernel's log buffer, read from guest memory after a failure.
//!
//! A guest that dies early with `quiet` on its command line leaves nothing on
//! the console, but its kernel wrote every message into `__log_buf`, a static
//! array in the kernel image. When the kernel is an ELF `vmlinux` with symbols
//! (what msbvm builds and boots), the array's guest-physical address follows
//! from the symbol table and the load segments, so the VMM can read it back.
//!
//! Linux's ring buffer keeps the texts in one data ring, each preceded by an
//! 8-byte record id, and the record lengths in a separate descriptor ring.
//! Rather than decode the descriptors, the texts are recovered as the runs of
//! printable bytes in data-ring order, which before the ring wraps (the case
//! for a guest that dies during boot) is the order they were written. The
//! result is a diagnostic, approximate at record edges.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

const SHT_SYMTAB: u32 = 2;
const PT_LOAD: u32 = 1;
/// The symbol of the kernel's static log buffer.
const LOG_BUF_SYMBOL: &str = "__log_buf";
/// The most bytes read from guest memory (the default buffer is 128 KiB to 1 MiB).
const MAX_BUFFER: u64 = 4 << 20;
/// Runs of printable bytes shorter than this are record ids or padding, not text.
const MIN_RUN: usize = 4;

/// `N` bytes at `base + off` of `b`, if they are inside it.
fn bytes_at<const N: usize>(b: &[u8], base: usize, off: usize) -> Option<[u8; N]> {
    let start = base.checked_add(off)?;
    b.get(start..start.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], base: usize, off: usize) -> Option<u16> {
    bytes_at(b, base, off).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], base: usize, off: usize) -> Option<u32> {
    bytes_at(b, base, off).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], base: usize, off: usize) -> Option<u64> {
    bytes_at(b, base, off).map(u64::from_le_bytes)
}

/// The value and size of symbol `name` in the ELF64 image `elf`.
pub fn find_symbol(elf: &[u8], name: &str) -> Option<(u64, u64)> {
    if elf.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let shoff = usize::try_from(u64_at(elf, 0, 0x28)?).ok()?;
    let shentsize = usize::from(u16_at(elf, 0, 0x3a)?);
    let shnum = usize::from(u16_at(elf, 0, 0x3c)?);
    let section = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    for i in 0..shnum {
        let sh = section(i)?;
        if u32_at(elf, sh, 4)? != SHT_SYMTAB {
            continue;
        }
        let (off, size) = (u64_at(elf, sh, 24)? as usize, u64_at(elf, sh, 32)? as usize);
        let strtab = section(u32_at(elf, sh, 40)? as usize)?;
        let str_off = u64_at(elf, strtab, 24)? as usize;
        let symbols = elf.get(off..off.checked_add(size)?)?;
        for sym in symbols.chunks_exact(24) {
            let name_at = str_off.checked_add(u32_at(sym, 0, 0)? as usize)?;
            let rest = elf.get(name_at..)?;
            let end = rest.iter().position(|b| *b == 0)?;
            if &rest[..end] == name.as_bytes() {
                return Some((u64_at(sym, 0, 8)?, u64_at(sym, 0, 16)?));
            }
        }
    }
    None
}

/// The physical address the loadable segments of `elf` put virtual `vaddr` at.
pub fn virt_to_phys(elf: &[u8], vaddr: u64) -> Option<u64> {
    let phoff = usize::try_from(u64_at(elf, 0, 0x20)?).ok()?;
    let phentsize = usize::from(u16_at(elf, 0, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0, 0x38)?);
    (0..phnum).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let (vstart, pstart, memsz) = (
            u64_at(elf, ph, 16)?,
            u64_at(elf, ph, 24)?,
            u64_at(elf, ph, 40)?,
        );
        let inside = u32_at(elf, ph, 0)? == PT_LOAD && vaddr >= vstart && vaddr - vstart < memsz;
        inside.then(|| pstart.wrapping_add(vaddr - vstart))
    })
}

/// The texts in a log buffer's bytes, one per line, in buffer order.
pub fn texts(buffer: &[u8]) -> String {
    let mut out = String::new();
    for run in buffer.split(|b| !(b.is_ascii_graphic() || *b == b' ' || *b == b'\n' || *b == b'\t'))
    {
        if run.len() < MIN_RUN {
            continue;
        }
        for line in String::from_utf8_lossy(run).lines() {
            if !line.trim().is_empty() {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Why the kernel log could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel image could not be read.
    #[error("cannot read {path}: {source}", path = .path.display())]
    ReadKernel {
        /// The image.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The image has no log buffer symbol.
    #[error("the kernel image has no {LOG_BUF_SYMBOL} symbol (not an ELF vmlinux with symbols)")]
    NoSymbol,
    /// The symbol's address is not in a loaded segment.
    #[error("{LOG_BUF_SYMBOL} lies outside the kernel's loaded segments")]
    OutsideSegments,
    /// Guest memory does not hold the buffer.
    #[error("cannot read the log buffer at {phys:#x}: {source}")]
    ReadBuffer {
        /// Its guest-physical address.
        phys: u64,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
}

/// The last `max_lines` lines of the kernel log of the guest booted from
/// `kernel`, read from `mem`, or why it cannot be had.
pub fn read(mem: &GuestMemory, kernel: &Path, max_lines: usize) -> Result<String, Error> {
    let file = std::fs::File::open(kernel).map_err(|source| Error::ReadKernel {
        path: kernel.to_path_buf(),
        source,
    })?;
    read_open(mem, &file, kernel, max_lines)
}

/// [`read`] with the kernel image already open as `file` (named `path` in
/// errors): a confined VM thread may no longer open it by name. Positioned
/// reads only, so the file's offset is left alone.
pub fn read_open(
    mem: &GuestMemory,
    file: &std::fs::File,
    path: &Path,
    max_lines: usize,
) -> Result<String, Error> {
    let elf = read_whole(file).map_err(|source| Error::ReadKernel {
        path: path.to_path_buf(),
        source,
    })?;
    let (vaddr, size) = find_symbol(&elf, LOG_BUF_SYMBOL).ok_or(Error::NoSymbol)?;
    let phys = virt_to_phys(&elf, vaddr).ok_or(Error::OutsideSegments)?;
    let mut buffer = vec![0u8; size.min(MAX_BUFFER) as usize];
    mem.read_slice(&mut buffer, GuestAddress(phys))
        .map_err(|source| Error::ReadBuffer { phys, source })?;
    Ok(tail(&texts(&buffer), max_lines))
}

/// The most bytes kept of one log line: a kernel message is well under it, and
/// a guest that writes long lines cannot make a report of a few lines large.
pub const MAX_LINE: usize = 240;

/// The last `max_lines` lines of `text`, each cut to [`MAX_LINE`] bytes (with
/// "…" marking a cut), so at most `max_lines * (MAX_LINE + 4)` bytes.
pub fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let kept = &lines[lines.len().saturating_sub(max_lines)..];
    let cut: Vec<String> = kept
        .iter()
        .map(|line| {
            if line.len() <= MAX_LINE {
                return (*line).to_string();
            }
            let mut end = MAX_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &line[..end])
        })
        .collect();
    cut.join("\n")
}

/// The most bytes of a kernel image read (a vmlinux with symbols is tens of MiB).
const MAX_IMAGE: u64 = 512 << 20;

/// All of `file` (up to [`MAX_IMAGE`]) through positioned reads.
fn read_whole(file: &std::fs::File) -> std::io::Result<Vec<u8>> {
    let too_big =
        || std::io::Error::other(format!("more than the {MAX_IMAGE} bytes read for a log"));
    if file.metadata()?.len() > MAX_IMAGE {
        return Err(too_big());
    }
    let mut elf = Vec::new();
    crate::read_at::each_chunk(file, |chunk| {
        // The file may grow after the check above.
        if (elf.len() + chunk.len()) as u64 > MAX_IMAGE {
            return Err(too_big());
        }
        elf.extend_from_slice(chunk);
        Ok(())
    })?;
    Ok(elf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_texts_come_out_in_order_without_ids() {
        let mut ring = Vec::new();
        for (id, text) in [
            (0x100u64, "Linux version 6.12"),
            (0x101, "x86/fpu: xstate ok"),
        ] {
            ring.extend_from_slice(&id.to_le_bytes());
            ring.extend_from_slice(text.as_bytes());
            while ring.len() % 8 != 0 {
                ring.push(0);
            }
        }
        ring.extend_from_slice(&[0; 64]);
        assert_eq!(texts(&ring), "Linux version 6.12\nx86/fpu: xstate ok\n");
    }

    /// A minimal ELF64 image: one PT_LOAD segment and a symbol table with one symbol.
    fn tiny_elf() -> Vec<u8> {
        let mut elf = vec![0u8; 0x200];
        elf[..5].copy_from_slice(b"\x7fELF\x02");
        // Program header at 0x40: PT_LOAD, vaddr 0xffffffff81000000 -> paddr 0x1000000, 16 MiB.
        elf[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[0x40..0x44].copy_from_slice(&PT_LOAD.to_le_bytes());
        elf[0x50..0x58].copy_from_slice(&0xffff_ffff_8100_0000u64.to_le_bytes());
        elf[0x58..0x60].copy_from_slice(&0x100_0000u64.to_le_bytes());
        elf[0x68..0x70].copy_from_slice(&(16u64 << 20).to_le_bytes());
        // Section headers at 0x100: [0] symtab (link 1), [1] strtab.
        elf[0x28..0x30].copy_from_slice(&0x100u64.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        elf[0x104..0x108].copy_from_slice(&SHT_SYMTAB.to_le_bytes());
        elf[0x118..0x120].copy_from_slice(&0x180u64.to_le_bytes());
        elf[0x120..0x128].copy_from_slice(&48u64.to_le_bytes());
        elf[0x128..0x12c].copy_from_slice(&1u32.to_le_bytes());
        elf[0x158..0x160].copy_from_slice(&0x1c0u64.to_le_bytes());
        // Symbols at 0x180: a null one, then __log_buf at 0xffffffff81234000, 4096 bytes.
        elf[0x198..0x19c].copy_from_slice(&1u32.to_le_bytes());
        elf[0x1a0..0x1a8].copy_from_slice(&0xffff_ffff_8123_4000u64.to_le_bytes());
        elf[0x1a8..0x1b0].copy_from_slice(&4096u64.to_le_bytes());
        elf[0x1c1..0x1cb].copy_from_slice(b"__log_buf\0");
        elf
    }

    #[test]
    fn log_buffer_symbol_and_physical_address_are_found() {
        let elf = tiny_elf();
        assert_eq!(
            find_symbol(&elf, LOG_BUF_SYMBOL),
            Some((0xffff_ffff_8123_4000, 4096))
        );
        assert_eq!(find_symbol(&elf, "missing"), None);
        assert_eq!(virt_to_phys(&elf, 0xffff_ffff_8123_4000), Some(0x123_4000));
        assert_eq!(virt_to_phys(&elf, 0xffff_ffff_9000_0000), None);
    }

    #[test]
    fn the_tail_is_bounded_in_lines_and_bytes() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text, 3);
        assert_eq!(t, "line 97\nline 98\nline 99");
        // A hostile kernel's long lines are cut; the bound holds whatever the input.
        let long = format!("{}\n", "x".repeat(1 << 20)).repeat(50);
        let t = tail(&long, 40);
        assert_eq!(t.lines().count(), 40);
        assert!(t.len() <= 40 * (MAX_LINE + 4), "{} bytes", t.len());
        assert!(t.lines().all(|l| l.ends_with('…')));
        // Cuts land on character boundaries.
        let wide = "é".repeat(MAX_LINE);
        assert!(tail(&wide, 1).starts_with('é'));
    }

    #[test]
    fn garbage_images_give_none_without_panicking() {
        assert_eq!(find_symbol(b"not an elf", LOG_BUF_SYMBOL), None);
        let mut elf = tiny_elf();
        elf[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(find_symbol(&elf, LOG_BUF_SYMBOL), None);
        elf.truncate(0x150);
        assert_eq!(virt_to_phys(&elf[..0x30], 0), None);
    }
}
