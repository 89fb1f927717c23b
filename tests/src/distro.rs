//! The distribution kernel that runs the L1 machine, and its kvm modules.
//!
//! An x86_64 L1 needs a kernel with `kvm-amd` as a module; the distribution's stock kernel
//! (`linux-image-amd64` -> `linux-image-<version>-amd64`) has it and is a download away, so we
//! fetch it with `apt-get download` once, unpack it with `dpkg -x` into the user's cache and
//! reuse it. An aarch64 L1 runs the arm64 build (`linux-image-arm64`, KVM built in), fetched the
//! same way once the host knows the arm64 architecture (`dpkg --add-architecture arm64`).
//! Module dependencies come from `modules.dep`; the package ships without one (it is
//! made by `depmod` at install time), so we run `depmod -b` on the unpacked tree once.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::l1_arch::L1Arch;

/// The meta-package whose dependency names the current kernel package for `arch`.
fn meta_package(arch: L1Arch) -> String {
    format!("linux-image-{}", arch.debian_arch())
}

/// The package name apt needs: foreign architectures are named with their suffix.
fn apt_name(package: &str, arch: L1Arch) -> String {
    if arch == L1Arch::host() {
        package.to_string()
    } else {
        format!("{package}:{}", arch.debian_arch())
    }
}

/// Where the hint says to add the arm64 architecture to apt.
const FOREIGN_ARCH_HINT: &str =
    "dpkg --add-architecture arm64 && apt-get update (scripts/setup-arm64 does it)";

/// The cache directory of the nested harness: `$XDG_CACHE_HOME/msbvm/nested`, or
/// `~/.cache/msbvm/nested`.
pub fn cache_dir() -> PathBuf {
    // Empty or relative XDG_CACHE_HOME counts as unset, as the XDG base directory spec asks.
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("msbvm-cache"));
    base.join("msbvm").join("nested")
}

/// Whether `program` can be found in `PATH` (or is an existing path).
pub fn have_program(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Runs a command and returns its stdout, or an error with its stderr.
fn output(cmd: &mut Command, what: &str) -> std::result::Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One kernel module file and the modules it needs.
#[derive(Debug, Clone)]
struct ModuleEntry {
    /// The `.ko`, `.ko.xz` or `.ko.zst` file.
    path: PathBuf,
    /// Names of the modules it depends on.
    deps: Vec<String>,
}

/// A module to load in L1, decompressed.
#[derive(Debug, Clone)]
pub struct Module {
    /// Its name with `-` spelled `_`, as the kernel names it.
    pub name: String,
    /// The uncompressed `.ko` (busybox `insmod` cannot read compressed modules).
    pub path: PathBuf,
}

/// An unpacked distribution kernel in the cache.
#[derive(Debug, Clone)]
pub struct DistroKernel {
    /// Kernel release, e.g. `6.1.0-57-amd64`.
    pub release: String,
    /// The bootable image (`boot/vmlinuz-<release>`).
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` in the unpacked package.
    pub modules_dir: PathBuf,
    /// Where decompressed modules are kept.
    decompressed: PathBuf,
}

/// Module name as the kernel spells it (`kvm-amd` and `kvm_amd` are the same module).
fn module_name(s: &str) -> String {
    s.replace('-', "_")
}

/// Module name of a path in modules.dep (`kernel/arch/x86/kvm/kvm-amd.ko.xz` -> `kvm_amd`).
fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    module_name(file.split(".ko").next().unwrap_or(file))
}

/// Parses `modules.dep` (`path: dep-path dep-path ...` per line).
fn parse_modules_dep(text: &str) -> BTreeMap<String, ModuleEntry> {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let entry = ModuleEntry {
                path: PathBuf::from(path.trim()),
                deps: deps.split_whitespace().map(name_of).collect(),
            };
            Some((name_of(path.trim()), entry))
        })
        .collect()
}

/// Appends `name` and its dependencies to `order`, dependencies first.
fn resolve(
    db: &BTreeMap<String, ModuleEntry>,
    name: &str,
    order: &mut Vec<String>,
) -> std::result::Result<(), String> {
    if order.iter().any(|n| n == name) {
        return Ok(());
    }
    let entry = db
        .get(name)
        .ok_or_else(|| format!("module {name} is not in modules.dep"))?;
    for dep in &entry.deps {
        resolve(db, dep, order)?;
    }
    order.push(name.to_string());
    Ok(())
}

impl DistroKernel {
    /// Finds the distribution kernel in the cache, downloading and unpacking it on first use.
    ///
    /// The package name comes from `apt-cache depends linux-image-amd64`; when that fails
    /// (no package lists, offline) the newest kernel already in the cache is used.
    pub fn locate_or_fetch() -> Result<Self> {
        Self::locate_or_fetch_for(L1Arch::X86_64)
    }

    /// [`DistroKernel::locate_or_fetch`] for an L1 of architecture `arch`.
    pub fn locate_or_fetch_for(arch: L1Arch) -> Result<Self> {
        // Tests of one process run on several threads and share the process id the download
        // directories are named by: one thread fetches, the others wait and use its copy.
        static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = FETCH.lock().unwrap_or_else(|e| e.into_inner());
        let cache = cache_dir();
        fs::create_dir_all(&cache)
            .map_err(Error::io(format!("cannot create {}", cache.display())))?;
        let package = match resolve_package(arch) {
            Ok(p) => p,
            Err(why) => match newest_cached(&cache, arch) {
                Some(p) => p,
                None => return Err(Error::DistroKernel(why)),
            },
        };
        let root = cache.join(&package);
        if !root.join("boot").is_dir() {
            download(&apt_name(&package, arch), "the L1 kernel", &cache, &root)?;
        }
        Self::open(&root, &package)
    }

    /// Opens an unpacked kernel package at `root`, making its modules.dep if needed.
    fn open(root: &Path, package: &str) -> Result<Self> {
        let release = package
            .strip_prefix("linux-image-")
            .unwrap_or(package)
            .to_string();
        let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
        let modules_dir = root.join("lib/modules").join(&release);
        if !vmlinuz.is_file() || !modules_dir.is_dir() {
            return Err(Error::DistroKernel(format!(
                "{} does not hold boot/vmlinuz-{release} and lib/modules/{release}; delete it to fetch it again",
                root.display()
            )));
        }
        if !modules_dir.join("modules.dep").is_file() {
            if !have_program("depmod") {
                return Err(Error::missing("depmod", "apt-get install kmod"));
            }
            output(
                Command::new("depmod").arg("-b").arg(root).arg(&release),
                "depmod",
            )
            .map_err(Error::DistroKernel)?;
        }
        Ok(Self {
            release,
            vmlinuz,
            decompressed: root.join("decompressed"),
            modules_dir,
        })
    }

    /// The named modules and everything they depend on, dependencies first, decompressed.
    pub fn modules(&self, names: &[&str]) -> Result<Vec<Module>> {
        let dep_file = self.modules_dir.join("modules.dep");
        let text = fs::read_to_string(&dep_file)
            .map_err(Error::io(format!("cannot read {}", dep_file.display())))?;
        let db = parse_modules_dep(&text);
        let mut order = Vec::new();
        for name in names {
            resolve(&db, &module_name(name), &mut order).map_err(Error::DistroKernel)?;
        }
        order
            .iter()
            .map(|name| {
                let path = self.decompress(name, &self.modules_dir.join(&db[name].path))?;
                Ok(Module {
                    name: name.clone(),
                    path,
                })
            })
            .collect()
    }

    /// Returns an uncompressed copy of a module file, made once and kept in the cache.
    fn decompress(&self, name: &str, src: &Path) -> Result<PathBuf> {
        let src_name = src.to_string_lossy();
        let tool = if src_name.ends_with(".xz") {
            Some(("xz", "apt-get install xz-utils"))
        } else if src_name.ends_with(".zst") {
            Some(("zstd", "apt-get install zstd"))
        } else {
            None
        };
        let Some((tool, install)) = tool else {
            return Ok(src.to_path_buf());
        };
        let dst = self.decompressed.join(format!("{name}.ko"));
        if dst.is_file() {
            return Ok(dst);
        }
        if !have_program(tool) {
            return Err(Error::missing(tool, install));
        }
        fs::create_dir_all(&self.decompressed).map_err(Error::io(format!(
            "cannot create {}",
            self.decompressed.display()
        )))?;
        let out = Command::new(tool)
            .args(["-dc", "-q"])
            .arg(src)
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io(format!("cannot run {tool}")))?;
        if !out.status.success() {
            return Err(Error::DistroKernel(format!(
                "{tool} -dc {} failed: {}",
                src.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // Write then rename, so that an interrupted run never leaves a truncated module behind;
        // named by process and thread, as tests on two threads may decompress it at once.
        let thread = format!("{:?}", std::thread::current().id());
        let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
        let part = dst.with_extension(format!("ko.part-{}-{thread}", std::process::id()));
        fs::write(&part, &out.stdout)
            .and_then(|()| fs::rename(&part, &dst))
            .map_err(Error::io(format!("cannot write {}", dst.display())))?;
        Ok(dst)
    }
}

/// The current kernel package name, from the meta-package's dependency.
fn resolve_package(arch: L1Arch) -> std::result::Result<String, String> {
    if !have_program("apt-cache") {
        return Err("apt-cache is not available (this harness needs a Debian-based host)".into());
    }
    let meta = meta_package(arch);
    let text = output(
        Command::new("apt-cache").args(["depends", &apt_name(&meta, arch)]),
        &format!("apt-cache depends {meta}"),
    )
    .map_err(|e| {
        if arch == L1Arch::host() {
            e
        } else {
            format!("{e}; for an {arch} L1 run {FOREIGN_ARCH_HINT}")
        }
    })?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| {
            p.strip_prefix("linux-image-")
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
        // apt-cache names a foreign package with its architecture: `linux-image-...:arm64`.
        .map(|p| p.split(':').next().unwrap_or(p).to_string())
        .ok_or_else(|| {
            format!(
                "apt-cache names no linux-image-<version> package for {meta}; run `apt-get update`"
            )
        })
}

/// The newest fully unpacked kernel package in the cache.
fn newest_cached(cache: &Path, arch: L1Arch) -> Option<String> {
    let suffix = format!("-{}", arch.debian_arch());
    let mut names: Vec<String> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("linux-image-") && n.ends_with(&suffix))
        .filter(|n| cache.join(n).join("boot").is_dir())
        .collect();
    names.sort();
    names.pop()
}

/// A file (`path`, relative to the package's root) of the distribution package `package` built
/// for `arch`, downloaded and unpacked into the cache on first use (never installed: a foreign
/// `busybox-static` would replace the host's own).
pub fn foreign_file(package: &str, arch: L1Arch, path: &str) -> Result<PathBuf> {
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache_dir();
    fs::create_dir_all(&cache).map_err(Error::io(format!("cannot create {}", cache.display())))?;
    let root = cache.join(format!("{package}-{}", arch.debian_arch()));
    let file = root.join(path);
    if !file.is_file() {
        let _ = fs::remove_dir_all(&root);
        download(&apt_name(package, arch), "for L1", &cache, &root).map_err(|e| match e {
            Error::DistroKernel(why) if arch != L1Arch::host() => {
                Error::DistroKernel(format!("{why}; for an {arch} L1 run {FOREIGN_ARCH_HINT}"))
            }
            e => e,
        })?;
    }
    if !file.is_file() {
        return Err(Error::DistroKernel(format!(
            "{} has no {path}; delete it to fetch it again",
            root.display()
        )));
    }
    Ok(file)
}

/// Downloads `package` with apt-get and unpacks it into `root`.
fn download(package: &str, what: &str, cache: &Path, root: &Path) -> Result<()> {
    for (tool, install) in [("apt-get", "apt"), ("dpkg", "dpkg")] {
        if !have_program(tool) {
            return Err(Error::missing(tool, format!("apt-get install {install}")));
        }
    }
    eprintln!(
        "msbvm-nested: downloading {package} ({what}) into {}",
        cache.display()
    );
    // Per-process names, so that two test processes fetching at once do not collide.
    let pid = std::process::id();
    let work = cache.join(format!("{package}.download-{pid}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(Error::io(format!("cannot create {}", work.display())))?;
    let result = (|| {
        output(
            Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(&work),
            &format!("apt-get download {package}"),
        )?;
        let deb = fs::read_dir(&work)
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
        // Unpack next to the final place and rename, so a half-unpacked tree is never used.
        let part = cache.join(format!("{package}.part-{pid}"));
        let _ = fs::remove_dir_all(&part);
        output(
            Command::new("dpkg").arg("-x").arg(&deb).arg(&part),
            "dpkg -x",
        )?;
        match fs::rename(&part, root) {
            Ok(()) => Ok(()),
            // Another process finished first: use its copy.
            Err(_) if root.is_dir() => {
                let _ = fs::remove_dir_all(&part);
                Ok(())
            }
            Err(e) => Err(format!("cannot rename {}: {e}", part.display())),
        }
    })();
    let _ = fs::remove_dir_all(&work);
    result.map_err(Error::DistroKernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm.ko.xz: kernel/virt/lib/irqbypass.ko.xz
kernel/arch/x86/kvm/kvm-amd.ko.xz: kernel/arch/x86/kvm/kvm.ko.xz kernel/drivers/crypto/ccp/ccp.ko.xz kernel/virt/lib/irqbypass.ko.xz
kernel/virt/lib/irqbypass.ko.xz:
kernel/drivers/crypto/ccp/ccp.ko.xz:
";

    #[test]
    fn resolves_dependencies_first() {
        let db = parse_modules_dep(DEP);
        let mut order = Vec::new();
        resolve(&db, &module_name("kvm-amd"), &mut order).unwrap();
        assert_eq!(order, ["irqbypass", "kvm", "ccp", "kvm_amd"]);
        resolve(&db, "kvm", &mut order).unwrap();
        assert_eq!(order.len(), 4);
        assert!(resolve(&db, "nope", &mut order).is_err());
    }

    #[test]
    fn cache_dir_honours_xdg() {
        // Only checks the shape: the environment of the test process is not ours to change.
        assert!(cache_dir().ends_with("msbvm/nested"));
    }
}
