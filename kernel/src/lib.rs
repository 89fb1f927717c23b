//! The msbvm guest kernel and initramfs images.
//!
//! All sandboxes share one guest kernel, built on first use from the distribution's kernel
//! source (`linux-source-6.12`, never downloaded) with the project's minimal configuration
//! (`kernel/config/*.config`, embedded in this crate), and cached by a hash of configuration,
//! source version and build recipe. [`find_built`] locates it, [`build`] builds it when
//! missing; `MSBVM_KERNEL` overrides both with a given image.
//!
//! [`Initramfs`] writes the uncompressed cpio archives the VMM hands to that kernel.

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

pub use cache::cache_dir;
pub use config::{ConfigFragment, Mismatch, OptionValue};
pub use error::Error;
pub use initramfs::Initramfs;
pub use progress::{Progress, LINE_INTERVAL};
pub use spec::{KernelSpec, BUILD_RECIPE_VERSION};
pub use toolchain::{ToolchainProbe, INSTALL_COMMAND};

use cache::KernelCache;

/// Environment variable naming a kernel image to use instead of the cached build.
pub const KERNEL_OVERRIDE_ENV: &str = "MSBVM_KERNEL";

/// The cached image of the default [`KernelSpec`], if it has been built; the `MSBVM_KERNEL`
/// image if that is set.
///
/// Returns `Ok(None)` when the kernel source is not installed either (nothing can have been
/// built for a source version that cannot be determined); [`build`] then explains what to
/// install.
pub fn find_built() -> Result<Option<PathBuf>, Error> {
    if let Some(image) = kernel_override()? {
        return Ok(Some(image));
    }
    match KernelSpec::default().cache_key() {
        Ok(key) => Ok(KernelCache::new(&cache_dir()).find(&key)),
        Err(Error::SourceMissing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The image of the default [`KernelSpec`], built first if it is not cached (minutes), or the
/// `MSBVM_KERNEL` image if that is set. Returns at once when the image exists.
///
/// Concurrent callers (threads or processes) build only once: the others wait for the first.
pub fn build(progress: Progress) -> Result<PathBuf, Error> {
    if let Some(image) = kernel_override()? {
        return Ok(image);
    }
    let spec = KernelSpec::default();
    let key = match spec.cache_key() {
        Ok(key) => key,
        Err(e @ Error::SourceMissing { .. }) => {
            // The toolchain error lists the source together with anything else missing.
            check_toolchain()?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let cache = KernelCache::new(&cache_dir());
    if let Some(image) = cache.find(&key) {
        return Ok(image);
    }
    check_toolchain()?;
    builder::build_cached(&spec, &cache, &key, progress)
}

/// The compressed `bzImage` of the cached build (the same kernel as [`find_built`]'s `vmlinux`,
/// for the Linux 64-bit boot protocol), if built. Not available through `MSBVM_KERNEL`.
pub fn find_built_bzimage() -> Result<Option<PathBuf>, Error> {
    if kernel_override()?.is_some() {
        return Ok(None);
    }
    Ok(find_built()?
        .map(|vmlinux| vmlinux.with_file_name("bzImage"))
        .filter(|p| p.is_file()))
}

/// Checks that this host can build the kernel: an x86_64 host with the programs, headers and
/// kernel source the build needs. One error lists everything missing and the install command.
pub fn check_toolchain() -> Result<(), Error> {
    if !cfg!(target_arch = "x86_64") {
        return Err(Error::UnsupportedArch {
            arch: std::env::consts::ARCH,
        });
    }
    ToolchainProbe::system().check()
}

/// The `MSBVM_KERNEL` image, if the variable is set (an empty value counts as unset).
fn kernel_override() -> Result<Option<PathBuf>, Error> {
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
}
