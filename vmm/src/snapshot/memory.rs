//! Guest RAM in a snapshot: written sparse, mapped back privately.
//!
//! The memory file holds the guest's regions one after another. Pages that
//! are all zeros are never written, so they stay holes (a freshly booted
//! 256 MiB guest has most of its RAM untouched). A restored VM maps each
//! region of the file `MAP_PRIVATE`: every VM restored from the snapshot
//! reads the same page-cache pages, and a page is copied only when that VM
//! writes it. Holes read as zeros.
//!
//! The checksum covers the pages with data, each with its page number, so
//! checking it needs only those pages and a hole cannot hide a change.
//!
//! Writing asks `/proc/self/pagemap` first where each page is. A page of
//! anonymous RAM the VM never touched is not mapped: it is skipped as zeros
//! instead of being faulted in to be read. In a restored VM (RAM mapped
//! privately from its snapshot's file), every page the guest never wrote
//! is still the file's page: it is read from the file, holes are skipped
//! (`SEEK_DATA`), and only the pages the guest wrote are read through the
//! mapping. A snapshot of a fork of a 512 MiB guest went from reading all
//! 512 MiB to reading the data its snapshot had and what the fork wrote.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress,
};

use super::Error;
use crate::memory::GuestMemory;

/// The page size the file is cut into.
pub const PAGE: usize = 4096;
/// How much guest RAM is copied out per step.
const CHUNK: usize = 1 << 20;

/// Where guest RAM sits in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    /// Each region's guest-physical start and length, in file order.
    pub regions: Vec<(u64, u64)>,
    /// The file's length (the regions' total).
    pub file_len: u64,
    /// Pages written (not holes).
    pub data_pages: u64,
    /// CRC-32 over each written page's number (u64, little endian) and bytes.
    pub crc32: u32,
}

fn is_zero(page: &[u8]) -> bool {
    // Compared as words: the compiler vectorizes this.
    page.chunks_exact(8)
        .all(|w| u64::from_ne_bytes(w.try_into().unwrap()) == 0)
}

/// Where the bytes of one guest page are read from when writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The page is mapped (or swapped out): read through the mapping.
    Mapped,
    /// Never touched in a region mapped from a file: the file's page.
    File,
    /// Never touched anonymous memory: zeros, not read.
    Zero,
}

/// Pages of each [`Source`] a write read, for the log and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageSources {
    /// Read through the mapping.
    pub mapped: u64,
    /// Read from the file the region is mapped from.
    pub file: u64,
    /// Skipped as zeros without being read.
    pub untouched: u64,
}

/// This process's page map (`/proc/self/pagemap`): one 64-bit entry per
/// virtual page.
struct PageMap(File);

const PAGE_MAP_PATH: &str = "/proc/self/pagemap";
static KEPT_PAGE_MAP: std::sync::OnceLock<Option<File>> = std::sync::OnceLock::new();

/// Opens this process's page map now and keeps it for its snapshots. A process that later
/// changes its user or becomes non-dumpable (a confined runtime) can no longer open its own
/// `/proc/self/pagemap` (the kernel then gives it to root); the descriptor opened before
/// stays readable.
pub fn keep_page_map() {
    KEPT_PAGE_MAP.get_or_init(|| File::open(PAGE_MAP_PATH).ok());
}

impl PageMap {
    /// Entry bit: the page is mapped.
    const PRESENT: u64 = 1 << 63;
    /// Entry bit: the page is in swap.
    const SWAPPED: u64 = 1 << 62;
    /// Entry bit: a page of a file (or shared memory): in a private mapping of a file, a
    /// page that was never written (a written one became anonymous).
    const FILE_PAGE: u64 = 1 << 61;

    /// The map [`keep_page_map`] opened, or a new one. `None` when it cannot be
    /// read: every page is then read through the mapping, as it always can be.
    fn open() -> Option<PageMap> {
        let kept = KEPT_PAGE_MAP
            .get()
            .and_then(|f| f.as_ref()?.try_clone().ok());
        match kept.map_or_else(|| File::open(PAGE_MAP_PATH), Ok) {
            Ok(f) => Some(PageMap(f)),
            Err(e) => {
                tracing::debug!("no page map ({e}): every page is read");
                None
            }
        }
    }

    /// The source of each of the `pages` pages from host address `addr`,
    /// into `out`; `file_backed` for a region mapped from a file.
    fn sources(
        &self,
        addr: usize,
        pages: usize,
        file_backed: bool,
        out: &mut Vec<Source>,
    ) -> std::io::Result<()> {
        let mut raw = vec![0u8; pages * 8];
        self.0.read_exact_at(&mut raw, (addr / PAGE) as u64 * 8)?;
        out.clear();
        out.extend(raw.chunks_exact(8).map(|e| {
            let entry = u64::from_ne_bytes(e.try_into().expect("8 bytes"));
            let unwritten_file_page = entry & Self::SWAPPED == 0
                && (entry & Self::PRESENT == 0 || entry & Self::FILE_PAGE != 0);
            if file_backed && unwritten_file_page {
                // The same bytes as the file's page, which may be a hole.
                Source::File
            } else if entry & (Self::PRESENT | Self::SWAPPED) != 0 {
                Source::Mapped
            } else {
                Source::Zero
            }
        }));
        Ok(())
    }
}

/// Marks as [`Source::Zero`] the [`Source::File`] pages of a chunk (read from `file` at
/// `offset`) that lie wholly in holes of the file, found with `SEEK_DATA`/`SEEK_HOLE`: a
/// restored VM's untouched pages are mostly the holes of its snapshot, and reading them
/// would only produce zeros. Without hole support every page stays as it was.
fn holes_to_zero(file: &File, offset: u64, sources: &mut [Source]) {
    use std::os::fd::AsRawFd;
    let seek = |from: u64, whence: i32| -> Option<u64> {
        let from = libc::off_t::try_from(from).ok()?;
        // SAFETY: lseek on a descriptor `file` owns; the result is checked.
        let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
        u64::try_from(at).ok()
    };
    let end = offset + (sources.len() * PAGE) as u64;
    let mut pos = offset;
    while pos < end {
        // No data after `pos` (ENXIO) makes the rest a hole; another error, nothing known.
        let data = match seek(pos, libc::SEEK_DATA) {
            Some(d) => d.min(end),
            None if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => end,
            None => return,
        };
        let first = ((pos - offset) as usize).div_ceil(PAGE);
        let last = (data - offset) as usize / PAGE;
        for source in sources.iter_mut().take(last).skip(first) {
            if *source == Source::File {
                *source = Source::Zero;
            }
        }
        if data >= end {
            return;
        }
        pos = match seek(data, libc::SEEK_HOLE) {
            Some(h) if h > data => h,
            _ => return,
        };
    }
}

/// Writes every region of `mem` to a new file at `path` (which must not
/// exist), skipping zero pages.
pub fn write(mem: &GuestMemory, path: &Path) -> Result<MemoryLayout, Error> {
    let (layout, sources) = write_counted(mem, path)?;
    tracing::debug!(
        mapped = sources.mapped,
        from_file = sources.file,
        untouched = sources.untouched,
        data_pages = layout.data_pages,
        "snapshot memory written"
    );
    Ok(layout)
}

/// [`write`], also saying where the pages were read from.
fn write_counted(mem: &GuestMemory, path: &Path) -> Result<(MemoryLayout, PageSources), Error> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Error::io("cannot create", path))?;
    let mut layout = MemoryLayout {
        regions: Vec::new(),
        file_len: 0,
        data_pages: 0,
        crc32: 0,
    };
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let pagemap = PageMap::open();
    let mut counts = PageSources::default();
    let mut sources = Vec::with_capacity(CHUNK / PAGE);
    for region in mem.iter() {
        let (start, len) = (region.start_addr(), region.len());
        layout.regions.push((start.raw_value(), len));
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| Error::Io {
                what: "cannot find the mapping of guest memory for",
                path: path.to_path_buf(),
                source: std::io::Error::other(e),
            })? as usize;
        let backing = region.file_offset();
        let mut done = 0u64;
        while done < len {
            let n = (CHUNK as u64).min(len - done) as usize;
            let pages = n.div_ceil(PAGE);
            let mapped = pagemap.as_ref().is_some_and(|pm| {
                pm.sources(host + done as usize, pages, backing.is_some(), &mut sources)
                    .map_err(|e| tracing::debug!("reading the page map: {e}"))
                    .is_ok()
            });
            if !mapped {
                sources.clear();
                sources.resize(pages, Source::Mapped);
            }
            if let Some(fo) = backing {
                holes_to_zero(fo.file(), fo.start() + done, &mut sources);
            }
            // Runs of pages with one source are read in one call each.
            let mut first = 0;
            while first < pages {
                let kind = sources[first];
                let end = sources[first..]
                    .iter()
                    .position(|&k| k != kind)
                    .map_or(pages, |i| first + i);
                let bytes = &mut buf[first * PAGE..(end * PAGE).min(n)];
                let offset = done + (first * PAGE) as u64;
                let run = (end - first) as u64;
                match (kind, backing) {
                    (Source::Mapped, _) | (Source::File, None) => {
                        counts.mapped += run;
                        mem.read_slice(bytes, start.unchecked_add(offset))
                            .map_err(|e| Error::Io {
                                what: "cannot read guest memory for",
                                path: path.to_path_buf(),
                                source: std::io::Error::other(e),
                            })?;
                    }
                    (Source::File, Some(fo)) => {
                        counts.file += run;
                        fo.file()
                            .read_exact_at(bytes, fo.start() + offset)
                            .map_err(Error::io("cannot read the memory file behind", path))?;
                    }
                    (Source::Zero, _) => {
                        counts.untouched += run;
                        bytes.fill(0);
                    }
                }
                first = end;
            }
            let base = layout.file_len + done;
            // Runs of non-zero pages go out in one write each.
            let mut run: Option<usize> = None;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if sources[i] == Source::Zero || is_zero(page) {
                    if let Some(from) = run.take() {
                        write_at(
                            &file,
                            &buf[from * PAGE..i * PAGE],
                            base + (from * PAGE) as u64,
                            path,
                        )?;
                    }
                    continue;
                }
                crc.update(&((base / PAGE as u64) + i as u64).to_le_bytes());
                crc.update(page);
                layout.data_pages += 1;
                run.get_or_insert(i);
            }
            if let Some(from) = run {
                write_at(
                    &file,
                    &buf[from * PAGE..n],
                    base + (from * PAGE) as u64,
                    path,
                )?;
            }
            done += n as u64;
        }
        layout.file_len += len;
    }
    file.set_len(layout.file_len)
        .map_err(Error::io("cannot size", path))?;
    layout.crc32 = crc.finalize();
    Ok((layout, counts))
}

fn write_at(file: &File, bytes: &[u8], offset: u64, path: &Path) -> Result<(), Error> {
    file.write_all_at(bytes, offset)
        .map_err(Error::io("cannot write", path))
}

/// Checks that the memory file at `path` has the length `layout` records.
pub fn check_length(path: &Path, layout: &MemoryLayout) -> Result<(), Error> {
    let len = std::fs::metadata(path)
        .map_err(Error::io("cannot read", path))?
        .len();
    let regions: u64 = layout.regions.iter().map(|r| r.1).sum();
    if len != layout.file_len || regions != layout.file_len {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            why: format!(
                "the memory file is {len} bytes; the snapshot records {} in regions of {regions}",
                layout.file_len
            ),
        });
    }
    Ok(())
}

/// Reads the whole memory file and checks its checksum.
pub fn verify(path: &Path, layout: &MemoryLayout) -> Result<(), Error> {
    check_length(path, layout)?;
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let mut crc = crc32fast::Hasher::new();
    let mut pages = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < layout.file_len {
        let n = (CHUNK as u64).min(layout.file_len - offset) as usize;
        file.read_exact_at(&mut buf[..n], offset)
            .map_err(Error::io("cannot read", path))?;
        for (i, page) in buf[..n].chunks(PAGE).enumerate() {
            if !is_zero(page) {
                crc.update(&((offset / PAGE as u64) + i as u64).to_le_bytes());
                crc.update(page);
                pages += 1;
            }
        }
        offset += n as u64;
    }
    let actual = crc.finalize();
    if actual != layout.crc32 || pages != layout.data_pages {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            why: format!(
                "guest memory checksum {actual:#010x} over {pages} pages does not match the recorded {:#010x} over {}",
                layout.crc32, layout.data_pages
            ),
        });
    }
    Ok(())
}

/// How a restored VM gets its RAM from the memory file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestoreMemory {
    /// Mapped privately: VMs restored from one snapshot share its pages
    /// through the page cache until they write them; restoring touches
    /// nothing. Pages are 4 KiB (a file mapping gets no transparent huge
    /// pages), which costs guests that touch much memory TLB misses.
    #[default]
    Shared,
    /// Read into anonymous memory of the VM's own: nothing is shared, the
    /// restore reads every page with data, and the guest then runs on memory
    /// that can use transparent huge pages.
    Copy,
}

impl std::str::FromStr for RestoreMemory {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(RestoreMemory::Shared),
            "copy" => Ok(RestoreMemory::Copy),
            other => Err(format!(
                "unknown restore memory mode {other:?}: use shared or copy"
            )),
        }
    }
}

/// Guest RAM for a VM restored from the memory file at `path`.
pub fn load(path: &Path, layout: &MemoryLayout, mode: RestoreMemory) -> Result<GuestMemory, Error> {
    match mode {
        RestoreMemory::Shared => map_private(path, layout),
        RestoreMemory::Copy => copy(path, layout),
    }
}

/// Reads the memory file's data extents (found with `SEEK_DATA`/`SEEK_HOLE`,
/// so holes cost nothing) into fresh anonymous guest RAM.
pub fn copy(path: &Path, layout: &MemoryLayout) -> Result<GuestMemory, Error> {
    use std::os::fd::AsRawFd;
    check_length(path, layout)?;
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let ranges: Vec<(GuestAddress, usize)> = layout
        .regions
        .iter()
        .map(|&(start, len)| Ok((GuestAddress(start), usize::try_from(len).map_err(|_| ())?)))
        .collect::<Result<_, ()>>()
        .map_err(|_| Error::Corrupt {
            path: path.to_path_buf(),
            why: "a region does not fit this host's address space".into(),
        })?;
    let mem = crate::memory::create(&ranges).map_err(|e| Error::Io {
        what: "cannot allocate guest memory for",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let seek = |offset: u64, whence: i32| -> Option<u64> {
        // SAFETY: lseek on an open descriptor has no memory effects.
        let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
        (at >= 0).then_some(at as u64)
    };
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < layout.file_len {
        // ENXIO (no data past `offset`) ends the walk.
        let Some(data) = seek(offset, libc::SEEK_DATA) else {
            break;
        };
        let end = seek(data, libc::SEEK_HOLE)
            .unwrap_or(layout.file_len)
            .min(layout.file_len);
        let mut at = data;
        while at < end {
            let n = (CHUNK as u64).min(end - at) as usize;
            file.read_exact_at(&mut buf[..n], at)
                .map_err(Error::io("cannot read", path))?;
            write_guest(&mem, layout, at, &buf[..n]).map_err(|why| Error::Corrupt {
                path: path.to_path_buf(),
                why,
            })?;
            at += n as u64;
        }
        offset = end.max(data + 1);
    }
    Ok(mem)
}

/// Writes `bytes` found at `offset` of the memory file into the guest RAM
/// of the regions they belong to.
fn write_guest(
    mem: &GuestMemory,
    layout: &MemoryLayout,
    mut offset: u64,
    mut bytes: &[u8],
) -> Result<(), String> {
    let mut region_start = 0u64;
    for &(gpa, len) in &layout.regions {
        while !bytes.is_empty() && offset >= region_start && offset < region_start + len {
            let n = ((region_start + len - offset) as usize).min(bytes.len());
            mem.write_slice(&bytes[..n], GuestAddress(gpa + (offset - region_start)))
                .map_err(|e| format!("cannot copy into guest memory: {e}"))?;
            bytes = &bytes[n..];
            offset += n as u64;
        }
        region_start += len;
    }
    if bytes.is_empty() {
        Ok(())
    } else {
        Err(format!("data at offset {offset} lies outside every region"))
    }
}

/// Maps the memory file at `path` as guest RAM, privately (copy on write).
pub fn map_private(path: &Path, layout: &MemoryLayout) -> Result<GuestMemory, Error> {
    check_length(path, layout)?;
    let file = File::open(path).map_err(Error::io("cannot open", path))?;
    let file = std::sync::Arc::new(file);
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for &(start, len) in &layout.regions {
        let mapping_error = |e: &dyn std::fmt::Display| Error::Io {
            what: "cannot map",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        };
        let size = usize::try_from(len).map_err(|e| mapping_error(&e))?;
        let region = MmapRegionBuilder::<()>::new(size)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| mapping_error(&e))?;
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| mapping_error(&"the region overflows the address space"))?;
        regions.push(region);
        offset += len;
    }
    GuestMemory::from_regions(regions).map_err(|e| Error::Io {
        what: "cannot lay out guest memory from",
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("msbvm-snapmem-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn guest() -> GuestMemory {
        let mem = crate::memory::create(&[
            (GuestAddress(0), 64 * PAGE),
            (GuestAddress(1 << 32), 32 * PAGE),
        ])
        .unwrap();
        mem.write_slice(b"first page", GuestAddress(0)).unwrap();
        mem.write_slice(b"middle", GuestAddress(10 * PAGE as u64 + 7))
            .unwrap();
        mem.write_slice(b"high", GuestAddress((1 << 32) + 31 * PAGE as u64))
            .unwrap();
        mem
    }

    #[test]
    fn writes_sparse_and_maps_back_privately() {
        use std::os::unix::fs::MetadataExt;
        let d = dir("roundtrip");
        let path = d.join("memory");
        let mem = guest();
        let layout = write(&mem, &path).unwrap();
        assert_eq!(layout.regions, vec![(0, 64 * 4096), (1 << 32, 32 * 4096)]);
        assert_eq!(layout.file_len, 96 * 4096);
        assert_eq!(layout.data_pages, 3);
        // Only the three written pages take space.
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 <= 8 * 4096);
        verify(&path, &layout).unwrap();

        let a = map_private(&path, &layout).unwrap();
        let b = map_private(&path, &layout).unwrap();
        let mut buf = [0u8; 6];
        a.read_slice(&mut buf, GuestAddress(10 * 4096 + 7)).unwrap();
        assert_eq!(&buf, b"middle");
        a.read_slice(&mut buf[..4], GuestAddress((1 << 32) + 31 * 4096))
            .unwrap();
        assert_eq!(&buf[..4], b"high");
        // A write in one copy is seen by neither the other nor the file.
        a.write_slice(b"CHANGED", GuestAddress(5)).unwrap();
        let mut other = [0u8; 7];
        b.read_slice(&mut other, GuestAddress(5)).unwrap();
        assert_eq!(&other, b" page\0\0");
        verify(&path, &layout).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Every byte of `mem`'s two regions.
    fn contents(mem: &GuestMemory) -> Vec<u8> {
        let mut all = Vec::new();
        for (gpa, len) in [(0u64, 64 * PAGE), (1 << 32, 32 * PAGE)] {
            let mut bytes = vec![0u8; len];
            mem.read_slice(&mut bytes, GuestAddress(gpa)).unwrap();
            all.extend(bytes);
        }
        all
    }

    /// Untouched RAM is skipped unread; a restored VM's untouched pages come from its file,
    /// the pages it wrote from its memory; the bytes are the same either way.
    #[test]
    fn untouched_pages_are_not_read_through_the_mapping() {
        let d = dir("untouched");
        let mem = guest();
        let (layout, got) = write_counted(&mem, &d.join("first")).unwrap();
        if got.untouched == 0 {
            eprintln!("skipped: /proc/self/pagemap cannot be read here");
            return;
        }
        // Three written pages; nothing else was ever touched.
        assert_eq!(got.mapped + got.file, 3, "{got:?}");
        assert_eq!(got.untouched, 93);
        // A restored VM that changed one page (and read another) is written as the same bytes.
        let restored = map_private(&d.join("first"), &layout).unwrap();
        restored
            .write_slice(b"fork", GuestAddress(40 * PAGE as u64))
            .unwrap();
        let mut peek = [0u8; 5];
        restored.read_slice(&mut peek, GuestAddress(0)).unwrap();
        let (second, got) = write_counted(&restored, &d.join("second")).unwrap();
        // Only the written page is read through the mapping (the read one, and the pages
        // the kernel mapped around it, are still the file's); of the others, only those
        // with data in the file are read (the file has 3), the holes are skipped.
        assert_eq!(got.mapped, 1, "{got:?}");
        if got.untouched == 0 {
            eprintln!("this filesystem reports no holes (SEEK_DATA): every page was read");
        } else {
            assert!(got.file <= 3, "{got:?}");
        }
        assert_eq!(got.mapped + got.file + got.untouched, 96);
        assert_eq!(second.data_pages, 4);
        verify(&d.join("second"), &second).unwrap();
        let back = map_private(&d.join("second"), &second).unwrap();
        assert!(contents(&back) == contents(&restored));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_copy_holds_the_same_bytes_and_is_its_own() {
        let d = dir("copy");
        let path = d.join("memory");
        let mem = guest();
        let layout = write(&mem, &path).unwrap();
        let copied = load(&path, &layout, RestoreMemory::Copy).unwrap();
        let shared = load(&path, &layout, RestoreMemory::Shared).unwrap();
        for (gpa, len) in [(0u64, 64 * PAGE), (1 << 32, 32 * PAGE)] {
            let mut a = vec![0u8; len];
            let mut b = vec![0u8; len];
            copied.read_slice(&mut a, GuestAddress(gpa)).unwrap();
            shared.read_slice(&mut b, GuestAddress(gpa)).unwrap();
            let mut c = vec![0u8; len];
            mem.read_slice(&mut c, GuestAddress(gpa)).unwrap();
            assert!(a == c && b == c, "region at {gpa:#x} differs");
        }
        assert_eq!("copy".parse(), Ok(RestoreMemory::Copy));
        assert!("lazy".parse::<RestoreMemory>().is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damage_and_truncation_are_caught() {
        let d = dir("damage");
        let path = d.join("memory");
        let layout = write(&guest(), &path).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", 10 * 4096 + 8).unwrap();
        let err = verify(&path, &layout).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        // Data written into a hole changes the page count and the checksum too.
        file.write_all_at(&[0u8; 4096], 10 * 4096).unwrap();
        file.write_all_at(b"y", 20 * 4096).unwrap();
        assert!(verify(&path, &layout).is_err());
        file.set_len(4096).unwrap();
        let err = map_private(&path, &layout).unwrap_err().to_string();
        assert!(err.contains("memory file is 4096 bytes"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_existing_file_is_never_overwritten() {
        let d = dir("exists");
        let path = d.join("memory");
        std::fs::write(&path, b"keep").unwrap();
        assert!(write(&guest(), &path).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
