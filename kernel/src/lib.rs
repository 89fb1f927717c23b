//! The msbvm guest kernel and initramfs images.
//!
//! All sandboxes share one guest kernel per architecture, built on first use from the
//! distribution's kernel source (`linux-source-6.12`, never downloaded) with the project's
//! minimal configuration (`kernel/config/*.config`, embedded in this crate), and cached by a
//! hash of architecture, configuration, source version and build recipe. [`find_built`]
//! locates the host architecture's image, [`build`] builds it when missing; `MSBVM_KERNEL`
//! overrides both with a given image. [`find_built_for`] and [`build_for`] do the same for a
//! chosen [`Arch`]: an x86_64 `vmlinux`, or an arm64 `Image` (cross-compiled with
//! `gcc-aarch64-linux-gnu` on an x86_64 host).
//!
//! [`Initramfs`] writes the uncompressed cpio archives the VMM hands to that kernel.

mod arch;
mod builder;
mod cache;
pub mod config;
mod error;
pub mod initramfs;
mod options;
mod packages;
mod progress;
pub mod source;
mod spec;
pub mod toolchain;

#[cfg(test)]
mod test_support;

use std::path::PathBuf;

pub use arch::{Arch, ParseArchError};
pub use cache::cache_dir;
pub use config::{ConfigFragment, Mismatch, OptionValue};
pub use error::Error;
pub use initramfs::Initramfs;
pub use progress::{Progress, LINE_INTERVAL};
pub use spec::{KernelSpec, BUILD_RECIPE_VERSION};
pub use toolchain::{ToolchainProbe, INSTALL_COMMAND};

use cache::KernelCache;

/// Environment variable naming a kernel image to use instead of the cached build (for the
/// host's architecture; it is never taken for the other one).
pub const KERNEL_OVERRIDE_ENV: &str = "MSBVM_KERNEL";

/// The cached image for the host's architecture ([`Arch::default`]), if it has been built;
/// the `MSBVM_KERNEL` image if that is set. See [`find_built_for`].
pub fn find_built() -> Result<Option<PathBuf>, Error> {
    find_built_for(Arch::default())
}

/// The cached image of [`KernelSpec::for_arch`]`(arch)` (`vmlinux` for x86_64, `Image` for
/// aarch64), if it has been built; for the host's architecture, the `MSBVM_KERNEL` image if
/// that is set.
///
/// Returns `Ok(None)` when the kernel source is not installed either (nothing can have been
/// built for a source version that cannot be determined); [`build_for`] then explains what to
/// install.
pub fn find_built_for(arch: Arch) -> Result<Option<PathBuf>, Error> {
    if let Some(image) = kernel_override(arch)? {
        return Ok(Some(image));
    }
    match KernelSpec::for_arch(arch).cache_key() {
        Ok(key) => Ok(KernelCache::new(&cache_dir(), arch).find(&key)),
        Err(Error::SourceMissing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The image for the host's architecture ([`Arch::default`]), built first if it is not
/// cached. See [`build_for`].
pub fn build(progress: Progress) -> Result<PathBuf, Error> {
    build_for(Arch::default(), progress)
}

/// The image of [`KernelSpec::for_arch`]`(arch)`, built first if it is not cached (minutes),
/// or, for the host's architecture, the `MSBVM_KERNEL` image if that is set. Returns at once
/// when the image exists.
///
/// Concurrent callers (threads or processes) build only once: the others wait for the first.
pub fn build_for(arch: Arch, progress: Progress) -> Result<PathBuf, Error> {
    if let Some(image) = kernel_override(arch)? {
        return Ok(image);
    }
    let spec = KernelSpec::for_arch(arch);
    let key = match spec.cache_key() {
        Ok(key) => key,
        Err(e @ Error::SourceMissing { .. }) => {
            // The toolchain error lists the source together with anything else missing.
            check_toolchain_for(arch)?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let cache = KernelCache::new(&cache_dir(), arch);
    if let Some(image) = cache.find(&key) {
        return Ok(image);
    }
    check_toolchain_for(arch)?;
    builder::build_cached(&spec, &cache, &key, progress)
}

/// The compressed `bzImage` of the cached x86_64 build (the same kernel as the x86_64
/// `vmlinux`, for the Linux 64-bit boot protocol), if built. Not available through
/// `MSBVM_KERNEL`.
pub fn find_built_bzimage() -> Result<Option<PathBuf>, Error> {
    if kernel_override(Arch::X86_64)?.is_some() {
        return Ok(None);
    }
    Ok(find_built_for(Arch::X86_64)?
        .map(|vmlinux| vmlinux.with_file_name("bzImage"))
        .filter(|p| p.is_file()))
}

/// Checks that this host can build the kernel for its own architecture. See
/// [`check_toolchain_for`].
pub fn check_toolchain() -> Result<(), Error> {
    check_toolchain_for(Arch::default())
}

/// Checks that this host can build the kernel for `arch`: an x86_64 or aarch64 host with the
/// programs, headers and kernel source the build needs, and the cross compiler when `arch` is
/// not the host's. One error lists everything missing and the install command.
pub fn check_toolchain_for(arch: Arch) -> Result<(), Error> {
    ToolchainProbe::system_for(arch)?.check()
}

/// The `MSBVM_KERNEL` image, if the variable is set (an empty value counts as unset) and
/// `arch` is the host's: the variable names one image, which is for the machine that runs it.
fn kernel_override(arch: Arch) -> Result<Option<PathBuf>, Error> {
    if arch != Arch::default() {
        return Ok(None);
    }
    let Some(path) = std::env::var_os(KERNEL_OVERRIDE_ENV).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    if path.is_file() {
        Ok(Some(path))
    } else {
        Err(Error::KernelOverrideMissing { path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::ENV_LOCK;
    use std::env;
    use tempfile::TempDir;

    /// Sets the environment for one test and restores it afterwards.
    struct EnvGuard {
        saved: Vec<(&'static str, Option<std::ffi::OsString>)>,
        _lock: std::sync::MutexGuard<'static, ()>,
    }

    impl EnvGuard {
        fn set(vars: &[(&'static str, Option<&std::path::Path>)]) -> Self {
            let lock = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let saved = vars.iter().map(|(k, _)| (*k, env::var_os(k))).collect();
            for (k, v) in vars {
                match v {
                    Some(v) => env::set_var(k, v),
                    None => env::remove_var(k),
                }
            }
            EnvGuard { saved, _lock: lock }
        }
    }

    impl Drop for EnvGuard {
        fn drop(&mut self) {
            for (k, v) in &self.saved {
                match v {
                    Some(v) => env::set_var(k, v),
                    None => env::remove_var(k),
                }
            }
        }
    }

    #[test]
    fn find_built_and_build_use_the_cache() {
        let tmp = TempDir::new().unwrap();
        let _env = EnvGuard::set(&[
            ("MSBVM_CACHE_DIR", Some(tmp.path())),
            (KERNEL_OVERRIDE_ENV, None),
        ]);
        assert_eq!(cache_dir(), tmp.path());
        let image = match KernelSpec::default().image_path() {
            Ok(image) => image,
            Err(Error::SourceMissing { .. }) => {
                eprintln!("skipped: linux-source-6.12 is not installed, so there is no cache key");
                assert_eq!(find_built().unwrap(), None);
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert!(image.starts_with(tmp.path().join("kernel")));
        assert_eq!(find_built().unwrap(), None);
        std::fs::create_dir_all(image.parent().unwrap()).unwrap();
        std::fs::write(&image, b"\x7fELF fake").unwrap();
        assert_eq!(find_built().unwrap(), Some(image.clone()));
        // Cached: returns at once, without looking at the toolchain or building.
        assert_eq!(build(Progress::Quiet).unwrap(), image);
    }

    #[test]
    fn kernel_override_wins_and_must_exist() {
        let tmp = TempDir::new().unwrap();
        let image = tmp.path().join("my-vmlinux");
        std::fs::write(&image, b"x").unwrap();
        {
            let _env = EnvGuard::set(&[
                ("MSBVM_CACHE_DIR", Some(tmp.path())),
                (KERNEL_OVERRIDE_ENV, Some(&image)),
            ]);
            assert_eq!(find_built().unwrap(), Some(image.clone()));
            assert_eq!(build(Progress::Quiet).unwrap(), image);
        }
        let missing = tmp.path().join("nope");
        let _env = EnvGuard::set(&[(KERNEL_OVERRIDE_ENV, Some(&missing))]);
        let err = find_built().unwrap_err();
        assert!(matches!(err, Error::KernelOverrideMissing { .. }));
        assert!(err.to_string().contains("MSBVM_KERNEL"), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(build(Progress::Quiet).is_err());
    }

    #[test]
    fn each_arch_finds_only_its_own_image() {
        let tmp = TempDir::new().unwrap();
        let _env = EnvGuard::set(&[
            ("MSBVM_CACHE_DIR", Some(tmp.path())),
            (KERNEL_OVERRIDE_ENV, None),
        ]);
        let (x86, arm) = match (
            KernelSpec::for_arch(Arch::X86_64).image_path(),
            KernelSpec::for_arch(Arch::Aarch64).image_path(),
        ) {
            (Ok(x86), Ok(arm)) => (x86, arm),
            (Err(Error::SourceMissing { .. }), _) | (_, Err(Error::SourceMissing { .. })) => {
                eprintln!("skipped: linux-source-6.12 is not installed, so there is no cache key");
                return;
            }
            (Err(e), _) | (_, Err(e)) => panic!("{e}"),
        };
        assert_ne!(x86.parent(), arm.parent());
        assert_eq!(x86.file_name().unwrap(), "vmlinux");
        assert_eq!(arm.file_name().unwrap(), "Image");
        std::fs::create_dir_all(x86.parent().unwrap()).unwrap();
        std::fs::write(&x86, b"\x7fELF fake").unwrap();
        assert_eq!(find_built_for(Arch::X86_64).unwrap(), Some(x86.clone()));
        assert_eq!(find_built_for(Arch::Aarch64).unwrap(), None);
        std::fs::create_dir_all(arm.parent().unwrap()).unwrap();
        std::fs::write(&arm, b"arm64 fake").unwrap();
        assert_eq!(find_built_for(Arch::Aarch64).unwrap(), Some(arm.clone()));
        // Cached: returns at once, without looking for a cross compiler or building.
        assert_eq!(build_for(Arch::Aarch64, Progress::Quiet).unwrap(), arm);
        assert_eq!(find_built_for(Arch::X86_64).unwrap(), Some(x86));
    }

    #[test]
    fn kernel_override_is_only_for_the_host_arch() {
        let tmp = TempDir::new().unwrap();
        let image = tmp.path().join("my-kernel");
        std::fs::write(&image, b"x").unwrap();
        let _env = EnvGuard::set(&[
            ("MSBVM_CACHE_DIR", Some(tmp.path())),
            (KERNEL_OVERRIDE_ENV, Some(&image)),
        ]);
        let host = Arch::default();
        let other = Arch::ALL.into_iter().find(|a| *a != host).unwrap();
        assert_eq!(find_built_for(host).unwrap(), Some(image.clone()));
        assert_ne!(find_built_for(other).unwrap(), Some(image));
    }
}
