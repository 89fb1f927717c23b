//! What the end-to-end tests put into L1: static `msbvm` and `msbvm-init`, the guest kernel,
//! and the guest's (L2) initramfs.
//!
//! L1 has no libc of its own, so every program brought in must be statically linked; the
//! workspace builds them with `-C target-feature=+crt-static` for the explicit host target, into
//! a separate target directory so the flag neither reaches build scripts and proc macros nor
//! invalidates the ordinary debug build.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use msbvm_kernel::initramfs::Initramfs;
pub use msbvm_kernel::Progress;

use crate::error::{Error, Result};
use crate::l1_arch::L1Arch;
use crate::nested::NestedVmBuilder;

/// The target triple the static binaries are built for (for an x86_64 L1; see
/// [`L1Arch::target_triple`]).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Environment variable naming the cargo that cross-builds for aarch64 (default
/// [`CROSS_CARGO`]).
pub const CROSS_CARGO_ENV: &str = "MSBVM_CROSS_CARGO";
/// The distribution's cargo (`cargo-web`), whose `rustc-web` has the arm64 standard library
/// from multiarch (`libstd-rust-web-dev:arm64`): rustup cannot download targets here
/// (PLATFORM.md). `scripts/setup-arm64` installs it.
pub const CROSS_CARGO: &str = "/usr/bin/cargo";
/// The linker for aarch64 (package `gcc-aarch64-linux-gnu`).
pub const CROSS_LINKER: &str = "aarch64-linux-gnu-gcc";
/// RUSTFLAGS of every static build (here, `scripts/setup`, `scripts/setup-arm64`; the three
/// must agree, or each rebuilds what the other built). On x86_64 the binaries are static PIE,
/// so they relocate themselves at start. Packed relative relocations (`DT_RELR`, glibc 2.36 and
/// binutils 2.38 or later) turn `msbvm`'s 888 KiB table of `R_X86_64_RELATIVE` entries, which
/// every VMM process read whole as it started (and kept resident), into a bitmap of 11 KiB; the
/// binary stays position-independent (ASLR kept). The distribution's aarch64 toolchain links
/// static executables that are not position-independent, with no such table: there the flag
/// changes nothing.
pub const STATIC_RUSTFLAGS: &str =
    "-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs";
/// Environment variable naming a directory that already holds static `msbvm` and `msbvm-init`
/// (for x86_64; see [`static_dir_env`]).
pub const STATIC_DIR_ENV: &str = "MSBVM_STATIC_DIR";

/// The variable naming a directory of ready static binaries for `arch`: [`STATIC_DIR_ENV`]
/// for x86_64, `MSBVM_STATIC_DIR_AARCH64` for aarch64.
pub fn static_dir_env(arch: L1Arch) -> &'static str {
    match arch {
        L1Arch::X86_64 => STATIC_DIR_ENV,
        L1Arch::Aarch64 => "MSBVM_STATIC_DIR_AARCH64",
    }
}
/// Where `msbvm` is put in L1.
pub const L1_MSBVM: &str = "/bin/msbvm";
/// Where the guest kernel is put in L1.
pub const L1_KERNEL: &str = "/msbvm/vmlinux";
/// Where the L2 initramfs is put in L1.
pub const L1_INITRD: &str = "/msbvm/initrd.cpio";

/// The root of the Cargo workspace (this crate's parent directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The workspace's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Static binaries for L1.
#[derive(Debug, Clone)]
pub struct StaticBinaries {
    /// The `msbvm` command.
    pub msbvm: PathBuf,
    /// The guest's PID 1.
    pub msbvm_init: PathBuf,
    /// Further binaries asked for with [`StaticBuild::bin`], by binary name.
    pub extra: BTreeMap<String, PathBuf>,
}

/// Builds static binaries with `cargo build --release --target x86_64-unknown-linux-gnu` (or,
/// for an aarch64 L1, cross-built for `aarch64-unknown-linux-gnu`).
#[derive(Debug, Clone, Default)]
pub struct StaticBuild {
    /// Extra (package, binary) pairs.
    extra: Vec<(String, String)>,
    /// The architecture they run on.
    arch: L1Arch,
}

impl StaticBuild {
    /// A build of `msbvm` (package msbvm-cli) and `msbvm-init` (package msbvm-guest-agent).
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds for an L1 of architecture `arch` (x86_64 by default).
    pub fn arch(mut self, arch: L1Arch) -> Self {
        self.arch = arch;
        self
    }

    /// Also builds binary `bin` of `package`, in the same cargo invocation.
    pub fn bin(mut self, package: &str, bin: &str) -> Self {
        self.extra.push((package.to_string(), bin.to_string()));
        self
    }

    /// Builds (cargo skips what is up to date) and returns the binaries, each checked to be
    /// static. With `MSBVM_STATIC_DIR` set, `msbvm` and `msbvm-init` (and any extra binary found
    /// there) are taken from that directory instead.
    pub fn build(&self) -> Result<StaticBinaries> {
        let given = std::env::var_os(static_dir_env(self.arch))
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let out_dir = static_out_dir(self.arch);
        let mut todo: Vec<(&str, &str)> = Vec::new();
        if given.is_none() {
            todo.push(("msbvm-cli", "msbvm"));
            todo.push(("msbvm-guest-agent", "msbvm-init"));
        }
        let mut found = BTreeMap::new();
        for (package, bin) in &self.extra {
            match given.as_deref().map(|d| d.join(bin)) {
                Some(path) if path.is_file() => {
                    found.insert(bin.clone(), path);
                }
                _ => todo.push((package, bin)),
            }
        }
        if !todo.is_empty() {
            cargo_build_static(&todo, self.arch)?;
            for (_, bin) in &todo {
                found.insert(bin.to_string(), out_dir.join(bin));
            }
        }
        let dir = given.as_deref().unwrap_or(&out_dir);
        let msbvm = found.remove("msbvm").unwrap_or_else(|| dir.join("msbvm"));
        let msbvm_init = found
            .remove("msbvm-init")
            .unwrap_or_else(|| dir.join("msbvm-init"));
        for path in [&msbvm, &msbvm_init].into_iter().chain(found.values()) {
            check_static(path)?;
        }
        Ok(StaticBinaries {
            msbvm,
            msbvm_init,
            extra: found,
        })
    }
}

/// Builds only the given (package, binary) pairs statically, in their own cargo invocation so
/// that their dependencies' features do not change (and so rebuild) `msbvm`'s; returns each
/// binary's path by name, checked to be static.
pub fn build_static_bins(todo: &[(&str, &str)]) -> Result<BTreeMap<String, PathBuf>> {
    build_static_bins_for(todo, L1Arch::X86_64)
}

/// [`build_static_bins`] for an L1 of architecture `arch`.
pub fn build_static_bins_for(
    todo: &[(&str, &str)],
    arch: L1Arch,
) -> Result<BTreeMap<String, PathBuf>> {
    cargo_build_static(todo, arch)?;
    let out_dir = static_out_dir(arch);
    let mut built = BTreeMap::new();
    for (_, bin) in todo {
        let path = out_dir.join(bin);
        check_static(&path)?;
        built.insert(bin.to_string(), path);
    }
    Ok(built)
}

/// Where the static release binaries for `arch` land.
pub fn static_out_dir(arch: L1Arch) -> PathBuf {
    target_dir()
        .join("static")
        .join(arch.target_triple())
        .join("release")
}

/// Runs one static cargo build of the given (package, binary) pairs for `arch`.
fn cargo_build_static(todo: &[(&str, &str)], arch: L1Arch) -> Result<()> {
    let cross = arch != L1Arch::host();
    let cargo = if cross {
        std::env::var_os(CROSS_CARGO_ENV)
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| CROSS_CARGO.into())
    } else {
        std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
    };
    if cross && !crate::distro::have_program(&cargo.to_string_lossy()) {
        return Err(Error::missing(
            format!(
                "{} (a cargo with the {arch} standard library)",
                cargo.to_string_lossy()
            ),
            "scripts/setup-arm64",
        ));
    }
    let root = workspace_root();
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--release",
            "--target",
            arch.target_triple(),
            "--target-dir",
        ])
        .arg(target_dir().join("static"));
    if cross {
        // The distribution's cargo must use the distribution's rustc (rustup's proxies,
        // first in PATH, have no arm64 standard library), and link with the cross gcc.
        cmd.env("RUSTC", "/usr/bin/rustc")
            .env("RUSTDOC", "/usr/bin/rustdoc")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env(
                format!(
                    "CARGO_TARGET_{}_LINKER",
                    arch.target_triple().to_uppercase().replace('-', "_")
                ),
                CROSS_LINKER,
            )
            // The default image embedded in msbvm carries the target's busybox.
            .env(
                "MSBVM_DEFAULT_IMAGE_BUSYBOX",
                crate::distro::foreign_file("busybox-static", arch, "bin/busybox")?,
            );
    }
    let mut packages: Vec<&str> = todo.iter().map(|(p, _)| *p).collect();
    packages.sort_unstable();
    packages.dedup();
    for p in packages {
        cmd.args(["-p", p]);
    }
    let bins: Vec<&str> = todo.iter().map(|(_, b)| *b).collect();
    for b in &bins {
        cmd.args(["--bin", b]);
    }
    // Only the crates for the explicit --target get RUSTFLAGS; host build scripts stay dynamic.
    cmd.env("RUSTFLAGS", STATIC_RUSTFLAGS);
    let shown = format!("{cmd:?}");
    eprintln!("msbvm-tests: building static binaries: {}", bins.join(", "));
    let status = cmd.status().map_err(Error::io(format!(
        "cannot run {}",
        Path::new(&cargo).display()
    )))?;
    if !status.success() {
        return Err(Error::Build {
            command: shown,
            status: status.to_string(),
        });
    }
    Ok(())
}

/// Fails unless `path` is a statically linked ELF executable (no program interpreter).
pub fn check_static(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::BadArtifact {
        path: path.to_path_buf(),
        reason: format!("cannot read it ({e}); build it or fix {STATIC_DIR_ENV}"),
    })?;
    match elf_interpreter(&bytes) {
        Err(why) => Err(Error::BadArtifact {
            path: path.to_path_buf(),
            reason: why.to_string(),
        }),
        Ok(Some(interp)) => Err(Error::BadArtifact {
            path: path.to_path_buf(),
            reason: format!(
                "dynamically linked (interpreter {interp}); build it with RUSTFLAGS=\"-C target-feature=+crt-static\" and an explicit --target"
            ),
        }),
        Ok(None) => Ok(()),
    }
}

/// The PT_INTERP of a 64-bit little-endian ELF file, `None` for a static executable.
pub fn elf_interpreter(elf: &[u8]) -> std::result::Result<Option<String>, &'static str> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not a 64-bit little-endian ELF file");
    }
    let truncated = "truncated ELF file";
    let phoff = u64_at(0x20).ok_or(truncated)? as usize;
    let phentsize = u16_at(0x36).ok_or(truncated)? as usize;
    let phnum = u16_at(0x38).ok_or(truncated)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or(truncated)? == PT_INTERP {
            let off = u64_at(ph + 8).ok_or(truncated)? as usize;
            let size = u64_at(ph + 32).ok_or(truncated)? as usize;
            let raw = elf.get(off..off + size).ok_or(truncated)?;
            let s = String::from_utf8_lossy(raw);
            return Ok(Some(s.trim_end_matches('\0').to_string()));
        }
    }
    Ok(None)
}

/// The guest kernel image, built (about 5 minutes, once, cached) if needed.
pub fn guest_kernel(progress: Progress) -> Result<PathBuf> {
    guest_kernel_for(L1Arch::X86_64, progress)
}

/// The guest kernel image for `arch` (cross-built for a foreign one), built if needed.
pub fn guest_kernel_for(arch: L1Arch, progress: Progress) -> Result<PathBuf> {
    let arch = match arch {
        L1Arch::X86_64 => msbvm_kernel::Arch::X86_64,
        L1Arch::Aarch64 => msbvm_kernel::Arch::Aarch64,
    };
    msbvm_kernel::build_for(arch, progress).map_err(|e| Error::GuestKernel(e.to_string()))
}

/// The L2 initramfs of contract 4: `/init` = `msbvm-init` and the directories it mounts on.
/// With `init` = `None` there is no `/init`, so the guest kernel panics when it looks for one.
pub fn l2_initramfs(init: Option<&Path>) -> Result<Vec<u8>> {
    let mut cpio = Initramfs::new();
    for d in ["/proc", "/sys", "/dev", "/tmp", "/run"] {
        cpio.dir(d, 0o755);
    }
    if let Some(init) = init {
        let data =
            std::fs::read(init).map_err(Error::io(format!("cannot read {}", init.display())))?;
        cpio.file("/init", 0o755, data);
    }
    Ok(cpio.to_bytes())
}

/// Everything needed to boot the project's guest in L1.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    /// The static binaries.
    pub binaries: StaticBinaries,
    /// The guest kernel image on the host.
    pub kernel: PathBuf,
    /// The L2 initramfs (contract 4).
    pub initrd: Vec<u8>,
}

impl GuestArtifacts {
    /// Builds the static binaries (with `build`'s extras), the guest kernel and the initramfs.
    pub fn prepare(build: &StaticBuild, progress: Progress) -> Result<Self> {
        let binaries = build.build()?;
        let kernel = guest_kernel_for(build.arch, progress)?;
        let initrd = l2_initramfs(Some(&binaries.msbvm_init))?;
        Ok(Self {
            binaries,
            kernel,
            initrd,
        })
    }

    /// Adds `msbvm` at [`L1_MSBVM`], the kernel at [`L1_KERNEL`] and the initramfs at
    /// [`L1_INITRD`] to an L1 machine.
    pub fn add_to(&self, vm: NestedVmBuilder) -> NestedVmBuilder {
        vm.add_file(&self.binaries.msbvm, L1_MSBVM)
            .add_file(&self.kernel, L1_KERNEL)
            .add_bytes(L1_INITRD, self.initrd.clone(), 0o644)
    }

    /// The argument vector of `msbvm boot` on the L1 paths, followed by `extra`.
    pub fn boot_argv<S: AsRef<str>>(&self, extra: &[S]) -> Vec<String> {
        let mut argv: Vec<String> = [
            L1_MSBVM, "boot", "--kernel", L1_KERNEL, "--initrd", L1_INITRD,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(extra.iter().map(|s| s.as_ref().to_string()));
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_elf_interpreter() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let interp = elf_interpreter(&me).unwrap();
        assert_eq!(interp.is_none(), cfg!(target_feature = "crt-static"));
        assert!(elf_interpreter(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("tests").is_dir());
    }
}
