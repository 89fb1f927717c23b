//! QEMU for an arm64 L1: the distribution's `qemu-system-arm` (arm64 build) with only the
//! shared libraries its binary needs, unpacked into a small sysroot in the cache.
//!
//! The arm64 L1 has a static busybox and nothing else, and the host's own QEMU is an x86 program,
//! so the x86 boot bench's way (the host's QEMU plus what `ldd` names) does not apply. Instead
//! [`QemuSysroot::prepare`] downloads the arm64 packages with `apt-get download` (never
//! installing them: they would replace the host's), follows the binary's `DT_NEEDED` entries
//! library by library, and finds each library in a package the needing package depends on
//! (Debian packages declare a dependency for every library they link). The libraries go where
//! the arm64 loader looks by default (`/lib/aarch64-linux-gnu`), the loader where the binary's
//! `PT_INTERP` says, so QEMU runs in L1 as a plain `/usr/bin/qemu-system-aarch64`.
//!
//! The result is kept in `~/.cache/msbvm/bench/qemu-arm64/sysroot` (under `$XDG_CACHE_HOME`
//! when set); delete that directory to fetch it again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use msbvm_tests::artifacts::elf_interpreter;
use msbvm_tests::{distro, Error, NestedVmBuilder};

/// The Debian package that holds `qemu-system-aarch64`.
pub const PACKAGE: &str = "qemu-system-arm";
/// The binary, relative to the package's root.
const BINARY: &str = "usr/bin/qemu-system-aarch64";
/// Where QEMU lives in L1.
pub const L1_QEMU: &str = "/usr/bin/qemu-system-aarch64";
/// The directory the arm64 loader searches without an ld.so.cache (Debian's multiarch path).
const LIB_DIR: &str = "lib/aarch64-linux-gnu";
/// The Debian architecture of everything in the sysroot.
const DEBIAN_ARCH: &str = "arm64";
/// ELF `e_machine` of AArch64.
const EM_AARCH64: u16 = 183;
/// The directories of an unpacked package that the loader would search, where libraries are
/// looked for.
const LIB_SEARCH: [&str; 4] = [
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib",
    "usr/lib",
];
/// How to make apt know arm64 packages.
const FOREIGN_ARCH_HINT: &str =
    "dpkg --add-architecture arm64 && apt-get update (scripts/setup-arm64 does it)";

/// QEMU's arm64 binary, loader and libraries, ready to add to an arm64 L1.
#[derive(Debug, Clone)]
pub struct QemuSysroot {
    /// The sysroot's directory on the host (`usr/bin/...`, `lib/...`).
    pub root: PathBuf,
    /// Every file in it, relative to `root` (the same path in L1), with its size in bytes.
    pub files: Vec<(String, u64)>,
    /// The Debian packages the files came from.
    pub packages: Vec<String>,
}

impl QemuSysroot {
    /// The sysroot from the cache, made on first use (downloads a few dozen packages, about
    /// 15 MB, once).
    pub fn prepare() -> Result<Self, Error> {
        let dir = cache_dir();
        let root = dir.join("sysroot");
        if !root.join(MANIFEST).is_file() {
            build(&dir, &root)?;
        }
        Self::open(&root)
    }

    /// Opens a finished sysroot through its manifest.
    fn open(root: &Path) -> Result<Self, Error> {
        let manifest = fs::read_to_string(root.join(MANIFEST)).map_err(|e| {
            harness(format!(
                "cannot read {}: {e}; delete {} to make it again",
                root.join(MANIFEST).display(),
                root.display()
            ))
        })?;
        let mut files = Vec::new();
        let mut packages = Vec::new();
        for line in manifest.lines() {
            if let Some(p) = line.strip_prefix("package ") {
                packages.push(p.to_string());
            } else if let Some(f) = line.strip_prefix("file ") {
                let size = fs::metadata(root.join(f)).map(|m| m.len()).map_err(|e| {
                    harness(format!(
                        "{} lists {f}, which is unreadable ({e}); delete {} to make it again",
                        MANIFEST,
                        root.display()
                    ))
                })?;
                files.push((f.to_string(), size));
            }
        }
        Ok(Self {
            root: root.to_path_buf(),
            files,
            packages,
        })
    }

    /// What goes into L1, in bytes.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|(_, s)| s).sum()
    }

    /// One line for the benchmark's output: files, size, packages.
    pub fn describe(&self) -> String {
        format!(
            "qemu arm64 sysroot: {} files, {:.1} MiB brought into L1 (binary, loader, {} libraries from {} packages), {}",
            self.files.len(),
            self.size() as f64 / (1024.0 * 1024.0),
            self.files.len().saturating_sub(2),
            self.packages.len(),
            self.root.display()
        )
    }

    /// Adds every file of the sysroot to `vm` at its own path.
    pub fn add_to(&self, mut vm: NestedVmBuilder) -> NestedVmBuilder {
        for (path, _) in &self.files {
            vm = vm.add_file(self.root.join(path), &format!("/{path}"));
        }
        vm
    }
}

/// The file in a finished sysroot that lists its files and packages; written last, so a
/// sysroot without it is incomplete.
const MANIFEST: &str = "MANIFEST";

/// `$XDG_CACHE_HOME/msbvm/bench/qemu-arm64` (or under `~/.cache`): beside the nested harness's
/// own cache, so both follow the same rules.
pub fn cache_dir() -> PathBuf {
    let nested = distro::cache_dir();
    nested
        .parent()
        .unwrap_or(&nested)
        .join("bench")
        .join("qemu-arm64")
}

/// A harness error with `msg`.
fn harness(msg: String) -> Error {
    Error::Harness(msg)
}

/// Downloads, resolves and writes the sysroot at `root` (through a temporary directory).
fn build(dir: &Path, root: &Path) -> Result<(), Error> {
    for (tool, install) in [("apt-get", "apt"), ("apt-cache", "apt"), ("dpkg", "dpkg")] {
        if !distro::have_program(tool) {
            return Err(Error::MissingTool {
                tool: tool.into(),
                install: format!("apt-get install {install}"),
            });
        }
    }
    eprintln!(
        "boot_arm64 bench: fetching {PACKAGE}:{DEBIAN_ARCH} and the libraries it needs into {}",
        dir.display()
    );
    let mut packages = Packages::new(dir.join("packages"));
    let qemu_root = packages.unpack(PACKAGE)?;
    let binary = qemu_root.join(BINARY);
    let elf = read_elf(&binary)?;
    let interp = elf_interpreter(&elf)
        .map_err(|e| harness(format!("{}: {e}", binary.display())))?
        .ok_or_else(|| harness(format!("{} has no program interpreter", binary.display())))?;
    let libs = resolve_libraries(&mut packages, &binary)?;

    // Built beside the final place and renamed, so a half-written sysroot is never used.
    let part = dir.join(format!("sysroot.part-{}", std::process::id()));
    let _ = fs::remove_dir_all(&part);
    let mut manifest = String::new();
    let mut used = BTreeSet::from([PACKAGE.to_string()]);
    let mut put = |from: &Path, to: &str| -> Result<(), Error> {
        let dest = part.join(to);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| harness(format!("cannot create {}: {e}", parent.display())))?;
        }
        // A copy of what the link points to: L1 gets plain files under the names looked up.
        fs::copy(from, &dest).map_err(|e| {
            harness(format!(
                "cannot copy {} to {}: {e}",
                from.display(),
                dest.display()
            ))
        })?;
        manifest.push_str(&format!("file {to}\n"));
        Ok(())
    };
    put(&binary, BINARY)?;
    let interp_rel = interp.trim_start_matches('/').to_string();
    let interp_name = Path::new(&interp)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (soname, (path, package)) in &libs {
        used.insert(package.clone());
        // The loader is already in the process when DT_NEEDED names it: one copy, at PT_INTERP.
        if *soname == interp_name {
            put(path, &interp_rel)?;
        } else {
            put(path, &format!("{LIB_DIR}/{soname}"))?;
        }
    }
    if !libs.contains_key(&interp_name) {
        let (path, package) = packages.find_anywhere(&interp_name).ok_or_else(|| {
            harness(format!(
                "the loader {interp} is in none of the unpacked packages"
            ))
        })?;
        used.insert(package);
        put(&path, &interp_rel)?;
    }
    for p in &used {
        manifest.push_str(&format!("package {p}\n"));
    }
    fs::write(part.join(MANIFEST), manifest)
        .map_err(|e| harness(format!("cannot write the manifest: {e}")))?;
    let _ = fs::remove_dir_all(root);
    fs::rename(&part, root).map_err(|e| {
        harness(format!(
            "cannot rename {} to {}: {e}",
            part.display(),
            root.display()
        ))
    })
}

/// Every library `binary` needs, directly or through other libraries: soname to (the file
/// in an unpacked package, that package).
fn resolve_libraries(
    packages: &mut Packages,
    binary: &Path,
) -> Result<BTreeMap<String, (PathBuf, String)>, Error> {
    let mut found: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
    let mut todo = vec![(binary.to_path_buf(), PACKAGE.to_string())];
    while let Some((elf_path, owner)) = todo.pop() {
        let elf = read_elf(&elf_path)?;
        let needed =
            elf_needed(&elf).map_err(|e| harness(format!("{}: {e}", elf_path.display())))?;
        for soname in needed {
            if found.contains_key(&soname) {
                continue;
            }
            let (path, package) = packages.locate(&soname, &owner)?;
            let lib = read_elf(&path)?;
            if elf_machine(&lib) != Some(EM_AARCH64) {
                return Err(harness(format!(
                    "{} (for {soname}) is not an AArch64 ELF file",
                    path.display()
                )));
            }
            todo.push((path.clone(), package.clone()));
            found.insert(soname, (path, package));
        }
    }
    Ok(found)
}

/// Reads an ELF file, or says which one could not be read.
fn read_elf(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| harness(format!("cannot read {}: {e}", path.display())))
}

/// The arm64 packages downloaded and unpacked so far, each under `dir/<name>`.
struct Packages {
    dir: PathBuf,
    unpacked: BTreeMap<String, PathBuf>,
    depends: BTreeMap<String, Vec<String>>,
}

impl Packages {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            unpacked: BTreeMap::new(),
            depends: BTreeMap::new(),
        }
    }

    /// The unpacked tree of `package` (arm64), downloaded on first use and kept.
    fn unpack(&mut self, package: &str) -> Result<PathBuf, Error> {
        if let Some(root) = self.unpacked.get(package) {
            return Ok(root.clone());
        }
        let root = self.dir.join(package);
        if !root.join(".unpacked").is_file() {
            let work = self
                .dir
                .join(format!("{package}.download-{}", std::process::id()));
            let _ = fs::remove_dir_all(&work);
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&work)
                .map_err(|e| harness(format!("cannot create {}: {e}", work.display())))?;
            let name = format!("{package}:{DEBIAN_ARCH}");
            let result = run(Command::new("apt-get")
                .args(["download", "-q", &name])
                .current_dir(&work))
            .map_err(|e| {
                format!("apt-get download {name}: {e}; for arm64 packages run {FOREIGN_ARCH_HINT}")
            })
            .and_then(|_| {
                let deb = fs::read_dir(&work)
                    .map_err(|e| e.to_string())?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "deb"))
                    .ok_or_else(|| format!("apt-get download {name} left no .deb"))?;
                run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))
                    .map_err(|e| format!("dpkg -x {}: {e}", deb.display()))?;
                fs::write(root.join(".unpacked"), "").map_err(|e| e.to_string())
            });
            let _ = fs::remove_dir_all(&work);
            result.map_err(harness)?;
        }
        self.unpacked.insert(package.to_string(), root.clone());
        Ok(root)
    }

    /// The packages `package` depends on (pre-depends included), as apt names them for arm64.
    fn depends_of(&mut self, package: &str) -> Result<Vec<String>, Error> {
        if let Some(d) = self.depends.get(package) {
            return Ok(d.clone());
        }
        let name = format!("{package}:{DEBIAN_ARCH}");
        let text = run(Command::new("apt-cache").args([
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            &name,
        ]))
        .map_err(|e| harness(format!("apt-cache depends {name}: {e}")))?;
        let deps = parse_depends(&text);
        self.depends.insert(package.to_string(), deps.clone());
        Ok(deps)
    }

    /// `soname` in a package unpacked so far.
    fn find_anywhere(&self, soname: &str) -> Option<(PathBuf, String)> {
        self.unpacked
            .iter()
            .find_map(|(p, root)| Some((find_library(root, soname)?, p.clone())))
    }

    /// The file and package of `soname`, needed by a file of package `owner`: in a package
    /// unpacked already, or else in one of `owner`'s dependencies, the likeliest first.
    fn locate(&mut self, soname: &str, owner: &str) -> Result<(PathBuf, String), Error> {
        if let Some(found) = self.find_anywhere(soname) {
            return Ok(found);
        }
        let mut candidates = self.depends_of(owner)?;
        candidates.retain(|c| !self.unpacked.contains_key(c));
        let hint = host_package_of(soname);
        candidates.sort_by_key(|c| {
            (
                Some(c) != hint.as_ref(),
                std::cmp::Reverse(name_affinity(soname, c)),
            )
        });
        for c in &candidates {
            let root = self.unpack(c)?;
            if let Some(path) = find_library(&root, soname) {
                return Ok((path, c.clone()));
            }
        }
        Err(harness(format!(
            "{soname} (needed by {owner}) is in none of its dependencies: {}",
            candidates.join(", ")
        )))
    }
}

/// Runs a command and returns its stdout, or its stderr as the error.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package names on `Depends:`/`PreDepends:` lines of `apt-cache depends` output, without
/// the architecture suffix; virtual packages (`<name>`) are left out, their providers being
/// listed on the lines below them, which are not dependency lines.
fn parse_depends(text: &str) -> Vec<String> {
    let mut deps: Vec<String> = text
        .lines()
        .map(|l| l.trim().trim_start_matches('|'))
        .filter_map(|l| {
            l.strip_prefix("Depends:")
                .or_else(|| l.strip_prefix("PreDepends:"))
        })
        .map(str::trim)
        .filter(|p| !p.starts_with('<'))
        .map(|p| p.split(':').next().unwrap_or(p).to_string())
        .collect();
    deps.dedup();
    deps
}

/// The host package that holds a library of that name (`dpkg -S`), e.g. `libfdt1` for
/// `libfdt.so.1`: the host runs its own QEMU, so most of the same libraries are installed
/// for amd64, and the arm64 package has the same name.
fn host_package_of(soname: &str) -> Option<String> {
    let out = run(Command::new("dpkg").args(["-S", &format!("*/{soname}")])).ok()?;
    out.lines()
        .next()?
        .split(':')
        .next()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty() && !p.contains(','))
}

/// How much of a package's name matches the library's (`libfdt.so.1` and `libfdt1`: 3), to try
/// the likely packages first when nothing better is known.
fn name_affinity(soname: &str, package: &str) -> usize {
    let stem = soname.split(".so").next().unwrap_or(soname);
    let stem = stem.strip_prefix("lib").unwrap_or(stem);
    let package = package.strip_prefix("lib").unwrap_or(package);
    stem.chars()
        .zip(package.chars())
        .take_while(|(a, b)| a.eq_ignore_ascii_case(b))
        .count()
}

/// `soname` in the library directories of an unpacked package, links followed inside it.
fn find_library(root: &Path, soname: &str) -> Option<PathBuf> {
    LIB_SEARCH
        .iter()
        .map(|d| root.join(d).join(soname))
        .find_map(|p| resolve_in(root, &p))
}

/// `path` with symbolic links followed, absolute targets taken inside `root`; `None` when it
/// does not end at a regular file.
fn resolve_in(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..16 {
        let meta = fs::symlink_metadata(&path).ok()?;
        if meta.is_file() {
            return Some(path);
        }
        if !meta.file_type().is_symlink() {
            return None;
        }
        let target = fs::read_link(&path).ok()?;
        path = match target.strip_prefix("/") {
            Ok(rel) => root.join(rel),
            Err(_) => path.parent()?.join(target),
        };
    }
    None
}

/// `e_machine` of an ELF file.
fn elf_machine(elf: &[u8]) -> Option<u16> {
    (elf.get(..4)? == b"\x7fELF").then_some(())?;
    Some(u16::from_le_bytes(elf.get(0x12..0x14)?.try_into().ok()?))
}

/// The `DT_NEEDED` entries of a 64-bit little-endian ELF file, in order: found through the
/// program headers, as the loader finds them (the dynamic segment, its string table's address
/// mapped to a file offset by the load segment that holds it), so section headers are not
/// needed.
pub fn elf_needed(elf: &[u8]) -> Result<Vec<String>, &'static str> {
    const PT_LOAD: u32 = 1;
    const PT_DYNAMIC: u32 = 2;
    const DT_NULL: u64 = 0;
    const DT_NEEDED: u64 = 1;
    const DT_STRTAB: u64 = 5;
    let truncated = "truncated ELF file";
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(truncated)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or(truncated)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or(truncated)
    };
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not a 64-bit little-endian ELF file");
    }
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    // (vaddr, offset, filesz) of each load segment; (offset, size) of the dynamic segment.
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let (offset, vaddr, filesz) = (u64_at(ph + 8)?, u64_at(ph + 16)?, u64_at(ph + 32)?);
        match u32_at(ph)? {
            PT_LOAD => loads.push((vaddr, offset, filesz)),
            PT_DYNAMIC => dynamic = Some((offset as usize, filesz as usize)),
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(Vec::new());
    };
    let mut needed = Vec::new();
    let mut strtab = None;
    for entry in (dyn_off..dyn_off + dyn_size).step_by(16) {
        let (tag, val) = (u64_at(entry)?, u64_at(entry + 8)?);
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            _ => {}
        }
    }
    if needed.is_empty() {
        return Ok(Vec::new());
    }
    let strtab = strtab.ok_or("DT_NEEDED without DT_STRTAB")?;
    let strtab = loads
        .iter()
        .find(|(vaddr, _, size)| (*vaddr..vaddr + size).contains(&strtab))
        .map(|(vaddr, offset, _)| (strtab - vaddr + offset) as usize)
        .ok_or("DT_STRTAB outside every load segment")?;
    needed
        .into_iter()
        .map(|name| {
            let start = strtab + name as usize;
            let bytes = elf.get(start..).ok_or(truncated)?;
            let end = bytes
                .iter()
                .position(|b| *b == 0)
                .ok_or("unterminated string")?;
            Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 file: one load segment mapping the whole file at 0x400000, a dynamic
    /// segment with two DT_NEEDED entries and its string table.
    fn tiny_elf() -> Vec<u8> {
        let mut e = vec![0u8; 0x200];
        e[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        e[0x12..0x14].copy_from_slice(&EM_AARCH64.to_le_bytes());
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        e[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        let ph = |e: &mut Vec<u8>, at: usize, kind: u32, off: u64, vaddr: u64, size: u64| {
            e[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            e[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            e[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
            e[at + 32..at + 40].copy_from_slice(&size.to_le_bytes());
        };
        ph(&mut e, 0x40, 1, 0, 0x400000, 0x200);
        ph(&mut e, 0x78, 2, 0x100, 0x400100, 0x40);
        let dynamic: [(u64, u64); 4] = [(1, 1), (5, 0x400180), (1, 11), (0, 0)];
        for (i, (tag, val)) in dynamic.iter().enumerate() {
            let at = 0x100 + i * 16;
            e[at..at + 8].copy_from_slice(&tag.to_le_bytes());
            e[at + 8..at + 16].copy_from_slice(&val.to_le_bytes());
        }
        let strings = b"\0libz.so.1\0libc.so.6\0";
        e[0x180..0x180 + strings.len()].copy_from_slice(strings);
        e
    }

    #[test]
    fn needed_libraries_come_from_the_dynamic_segment() {
        let e = tiny_elf();
        assert_eq!(elf_needed(&e).unwrap(), ["libz.so.1", "libc.so.6"]);
        assert_eq!(elf_machine(&e), Some(EM_AARCH64));
        assert!(elf_needed(&e[..0x120]).is_err());
        assert!(elf_needed(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn needed_libraries_of_this_test_binary() {
        // This binary is the host's, dynamic unless built static: either way parseable.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let needed = elf_needed(&me).unwrap();
        assert_eq!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            elf_interpreter(&me).unwrap().is_some(),
            "{needed:?}"
        );
    }

    #[test]
    fn depends_lines_give_real_packages_only() {
        let text = "qemu-system-arm:arm64\n  Depends: libaio1:arm64\n  PreDepends: libc6:arm64\n \
                    |Depends: libfoo1:arm64\n  Depends: <qemu-system-data:arm64>\n    qemu-system-data\n";
        assert_eq!(parse_depends(text), ["libaio1", "libc6", "libfoo1"]);
    }

    #[test]
    fn likely_packages_first() {
        assert!(
            name_affinity("libfdt.so.1", "libfdt1") > name_affinity("libfdt.so.1", "libfuse3-3")
        );
        assert_eq!(name_affinity("libz.so.1", "libfdt1"), 0);
    }

    #[test]
    fn links_are_followed_inside_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("lib/aarch64-linux-gnu")).unwrap();
        fs::write(root.join("lib/aarch64-linux-gnu/libz.so.1.2.13"), b"x").unwrap();
        std::os::unix::fs::symlink(
            "libz.so.1.2.13",
            root.join("lib/aarch64-linux-gnu/libz.so.1"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/lib/aarch64-linux-gnu/libz.so.1",
            root.join("lib/ld-test.so.1"),
        )
        .unwrap();
        assert_eq!(
            find_library(root, "libz.so.1"),
            Some(root.join("lib/aarch64-linux-gnu/libz.so.1.2.13"))
        );
        assert_eq!(
            find_library(root, "ld-test.so.1"),
            Some(root.join("lib/aarch64-linux-gnu/libz.so.1.2.13"))
        );
        assert_eq!(find_library(root, "libnone.so.1"), None);
    }
}
