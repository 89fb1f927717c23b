//! [`KernelSpec`]: what is built (config fragments + kernel source + build recipe) and the
//! cache key that names the result.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::cache::{cache_dir, KernelCache};
use crate::config::ConfigFragment;
use crate::error::Error;
use crate::source::{source_version, SOURCE_TARBALL};

/// Version of the build recipe (the steps in `builder.rs`: make targets, environment, what is
/// kept). Bump it whenever the recipe changes so that cached images built by the old recipe
/// are not reused.
pub const BUILD_RECIPE_VERSION: u32 = 2;

/// Number of hex digits of the SHA-256 used in the cache key: short enough for readable
/// paths, long enough (64 bits) that two configurations never collide in practice.
const KEY_HEX_LEN: usize = 16;

/// A guest kernel to build: an architecture, config fragments applied to `make tinyconfig`,
/// and the source.
///
/// [`KernelSpec::default`] is the project's kernel for the host's architecture;
/// [`KernelSpec::for_arch`] the one for a given architecture: the fragments embedded from
/// `kernel/config/` and the distribution's `linux-source-6.12`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    arch: Arch,
    fragments: Vec<ConfigFragment>,
    source_tarball: PathBuf,
}

impl Default for KernelSpec {
    fn default() -> Self {
        KernelSpec::for_arch(Arch::default())
    }
}

impl KernelSpec {
    /// The project's kernel for `arch`: its embedded fragments and the distribution source
    /// tarball.
    pub fn for_arch(arch: Arch) -> Self {
        KernelSpec::new(ConfigFragment::embedded_for(arch)).with_arch(arch)
    }

    /// A spec for the host's architecture with the given fragments (merged in order) and the
    /// distribution source tarball.
    pub fn new(fragments: Vec<ConfigFragment>) -> Self {
        KernelSpec {
            arch: Arch::default(),
            fragments,
            source_tarball: PathBuf::from(SOURCE_TARBALL),
        }
    }

    /// The same spec, built for another architecture (the fragments stay as they are).
    pub fn with_arch(mut self, arch: Arch) -> Self {
        self.arch = arch;
        self
    }

    /// The same spec, built from another source tarball.
    pub fn with_source_tarball(mut self, tarball: impl Into<PathBuf>) -> Self {
        self.source_tarball = tarball.into();
        self
    }

    /// The architecture the kernel is built for.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The config fragments, in merge order.
    pub fn fragments(&self) -> &[ConfigFragment] {
        &self.fragments
    }

    /// The kernel source tarball.
    pub fn source_tarball(&self) -> &Path {
        &self.source_tarball
    }

    /// The cache key: the first 16 hex digits of a SHA-256 over the architecture, the
    /// fragments, the installed source version and [`BUILD_RECIPE_VERSION`].
    ///
    /// Fails with [`Error::SourceMissing`] when the kernel source is not installed.
    pub fn cache_key(&self) -> Result<String, Error> {
        let version = source_version(&self.source_tarball)?;
        Ok(compute_key(
            self.arch,
            &self.fragments,
            &version,
            BUILD_RECIPE_VERSION,
        ))
    }

    /// Where the image for this spec is, or will be once built, in the cache of
    /// [`cache_dir`]. The file may not exist.
    pub fn image_path(&self) -> Result<PathBuf, Error> {
        Ok(KernelCache::new(&cache_dir(), self.arch).image_path(&self.cache_key()?))
    }
}

/// The cache key of `fragments` built for `arch` from source `source_version` by recipe
/// `recipe`.
pub(crate) fn compute_key(
    arch: Arch,
    fragments: &[ConfigFragment],
    source_version: &str,
    recipe: u32,
) -> String {
    let mut hash = Sha256::new();
    // Every field is length-prefixed so that moving text from one field to the next (or
    // renaming a fragment) cannot give the same byte stream.
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b"msbvm-kernel");
    // x86_64 keys were computed without an architecture field before arm64 existed; hashing
    // one for x86_64 now would orphan every cached x86_64 kernel (minutes to rebuild).
    if arch != Arch::X86_64 {
        field(b"arch");
        field(arch.name().as_bytes());
    }
    field(&recipe.to_le_bytes());
    field(source_version.as_bytes());
    for fragment in fragments {
        field(fragment.name.as_bytes());
        field(fragment.text.as_bytes());
    }
    let digest = hash.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..KEY_HEX_LEN].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frags(base: &str, extra: &str) -> Vec<ConfigFragment> {
        vec![
            ConfigFragment::new("base.config", base),
            ConfigFragment::new("msbvm.config", extra),
        ]
    }

    #[test]
    fn key_is_16_hex_digits_and_stable() {
        let a = compute_key(
            Arch::X86_64,
            &frags("CONFIG_A=y\n", "CONFIG_B=y\n"),
            "deb:1",
            1,
        );
        let b = compute_key(
            Arch::X86_64,
            &frags("CONFIG_A=y\n", "CONFIG_B=y\n"),
            "deb:1",
            1,
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn key_changes_with_each_input() {
        let base = compute_key(
            Arch::X86_64,
            &frags("CONFIG_A=y\n", "CONFIG_B=y\n"),
            "deb:1",
            1,
        );
        let variants = [
            compute_key(
                Arch::X86_64,
                &frags("CONFIG_A=n\n", "CONFIG_B=y\n"),
                "deb:1",
                1,
            ),
            compute_key(
                Arch::X86_64,
                &frags("CONFIG_A=y\n", "CONFIG_B=n\n"),
                "deb:1",
                1,
            ),
            compute_key(
                Arch::X86_64,
                &frags("CONFIG_A=y\n", "CONFIG_B=y\n"),
                "deb:2",
                1,
            ),
            compute_key(
                Arch::X86_64,
                &frags("CONFIG_A=y\n", "CONFIG_B=y\n"),
                "deb:1",
                2,
            ),
            // Same bytes overall, split differently between the fragments.
            compute_key(
                Arch::X86_64,
                &frags("CONFIG_A=y\nCONFIG_B=y\n", ""),
                "deb:1",
                1,
            ),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(&base, v, "variant {i} has the same key");
        }
    }

    #[test]
    fn x86_64_key_is_what_it_was_before_arm64() {
        // Computed by the key function before architectures existed: an x86_64 key must not
        // change, or every cached x86_64 kernel is rebuilt.
        let key = compute_key(
            Arch::X86_64,
            &frags("CONFIG_A=y\n", "CONFIG_B=y\n"),
            "deb:1",
            1,
        );
        assert_eq!(key, "01fb7fbc3699d12d");
    }

    #[test]
    fn arch_is_part_of_the_key() {
        let fragments = frags("CONFIG_A=y\n", "CONFIG_B=y\n");
        assert_ne!(
            compute_key(Arch::X86_64, &fragments, "deb:1", 1),
            compute_key(Arch::Aarch64, &fragments, "deb:1", 1)
        );
    }

    #[test]
    fn default_spec_uses_embedded_fragments() {
        let spec = KernelSpec::default();
        assert_eq!(spec.arch(), Arch::default());
        assert_eq!(spec.fragments(), ConfigFragment::embedded().as_slice());
        assert_eq!(spec.source_tarball(), Path::new(SOURCE_TARBALL));
    }

    #[test]
    fn arm64_spec_has_its_own_fragments_key_and_image() {
        let tmp = tempfile::TempDir::new().unwrap();
        let tarball = tmp.path().join("linux.tar.xz");
        std::fs::write(&tarball, b"x").unwrap();
        let x86 = KernelSpec::for_arch(Arch::X86_64).with_source_tarball(&tarball);
        let arm = KernelSpec::for_arch(Arch::Aarch64).with_source_tarball(&tarball);
        assert_eq!(arm.arch(), Arch::Aarch64);
        assert_eq!(arm.fragments()[0].name, "base-arm64.config");
        assert_eq!(x86.fragments()[0].name, "base.config");
        assert_ne!(x86.cache_key().unwrap(), arm.cache_key().unwrap());
        assert!(arm.image_path().unwrap().ends_with("Image"));
        assert!(x86.image_path().unwrap().ends_with("vmlinux"));
    }

    #[test]
    fn key_with_fallback_version_uses_tarball() {
        let tmp = tempfile::TempDir::new().unwrap();
        let tarball = tmp.path().join("linux.tar.xz");
        let spec = KernelSpec::default().with_source_tarball(&tarball);
        assert!(matches!(spec.cache_key(), Err(Error::SourceMissing { .. })));
        std::fs::write(&tarball, b"x").unwrap();
        let first = spec.cache_key().unwrap();
        std::fs::write(&tarball, b"xy").unwrap();
        assert_ne!(
            spec.cache_key().unwrap(),
            first,
            "a changed source must change the key"
        );
    }
}
