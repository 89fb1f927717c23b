//! Checks, before a build starts, that everything the kernel build needs is installed.
//!
//! A kernel build that stops after minutes because `bc` is missing is a poor experience, so all
//! pieces are checked up front and reported together in one error with the command that
//! installs them. Building for another architecture than the host's (arm64 on an x86_64 host)
//! adds the distribution's cross compiler to the list.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use crate::packages::INSTALL_COMMAND;

use crate::arch::Arch;
use crate::error::Error;
use crate::packages::SOURCE_TARBALL;

/// Programs the build runs (`xz` because `tar` decompresses the source through it; `perl`
/// for kbuild's scripts).
pub const REQUIRED_PROGRAMS: &[&str] = &["make", "gcc", "flex", "bison", "bc", "tar", "xz", "perl"];

/// Headers the kernel's host tools include, relative to the include directory, with the
/// package that provides each.
pub const REQUIRED_HEADERS: &[(&str, &str)] = &[
    ("gelf.h", "libelf-dev"),
    ("openssl/opensslv.h", "libssl-dev"),
];

/// Tools of a cross toolchain the build runs (kbuild calls them `$(CROSS_COMPILE)gcc` and
/// `$(CROSS_COMPILE)ld`; the rest of binutils comes in the same package as `ld`).
pub const CROSS_PROGRAMS: &[&str] = &["gcc", "ld"];

/// Where to look for the build's prerequisites. [`ToolchainProbe::system`] describes this
/// host; tests point the fields at temporary directories.
#[derive(Debug, Clone)]
pub struct ToolchainProbe {
    /// Directories searched for programs, in order (normally `$PATH`).
    pub path_dirs: Vec<PathBuf>,
    /// The C include directory (normally `/usr/include`).
    pub include_dir: PathBuf,
    /// The kernel source tarball.
    pub tarball: PathBuf,
    /// The architecture to cross-compile for, when it is not the host's: its
    /// `<prefix>gcc` and `<prefix>ld` are needed too.
    pub cross_target: Option<Arch>,
}

impl ToolchainProbe {
    /// The real host building for its own architecture: `$PATH`, `/usr/include` and the
    /// Debian source tarball.
    pub fn system() -> Self {
        ToolchainProbe {
            path_dirs: path_dirs(env::var_os("PATH")),
            include_dir: PathBuf::from("/usr/include"),
            tarball: PathBuf::from(SOURCE_TARBALL),
            cross_target: None,
        }
    }

    /// The real host building for `arch`: [`Self::system`] plus the cross compiler when
    /// `arch` is not the host's. Fails with [`Error::UnsupportedArch`] on a host that is
    /// neither x86_64 nor aarch64.
    pub fn system_for(arch: Arch) -> Result<Self, Error> {
        let host = Arch::host().ok_or(Error::UnsupportedArch {
            arch: env::consts::ARCH,
        })?;
        Ok(ToolchainProbe {
            cross_target: (arch != host).then_some(arch),
            ..Self::system()
        })
    }

    /// The command that installs everything this probe looks for.
    pub fn install_command(&self) -> String {
        match self.cross_target {
            Some(arch) => format!("{INSTALL_COMMAND} {}", arch.cross_compiler_package()),
            None => INSTALL_COMMAND.to_string(),
        }
    }

    /// Every missing piece, one human-readable item each; empty when all is there.
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for program in REQUIRED_PROGRAMS {
            if self.find_program(program).is_none() {
                missing.push(format!("program `{program}`"));
            }
        }
        for (header, package) in REQUIRED_HEADERS {
            let path = self.include_dir.join(header);
            if !path.is_file() {
                missing.push(format!("header {} ({package})", path.display()));
            }
        }
        if let Some(arch) = self.cross_target {
            for tool in CROSS_PROGRAMS {
                let program = format!("{}{tool}", arch.cross_compile_prefix());
                if self.find_program(&program).is_none() {
                    missing.push(format!(
                        "program `{program}` ({})",
                        arch.cross_compiler_package()
                    ));
                }
            }
        }
        if !self.tarball.is_file() {
            missing.push(format!(
                "kernel source {} (linux-source-6.12)",
                self.tarball.display()
            ));
        }
        missing
    }

    /// `Ok` when everything is installed, otherwise one [`Error::ToolchainMissing`] listing
    /// all missing pieces.
    pub fn check(&self) -> Result<(), Error> {
        let missing = self.missing();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Error::ToolchainMissing {
                missing,
                install: self.install_command(),
            })
        }
    }

    /// The first executable file called `name` in [`Self::path_dirs`].
    pub fn find_program(&self, name: &str) -> Option<PathBuf> {
        self.path_dirs
            .iter()
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
    }
}

/// Splits a `PATH`-style value into directories; an unset `PATH` gets the usual default so
/// that a stripped environment (cron, some CI runners) still finds `/usr/bin/make`.
fn path_dirs(path: Option<OsString>) -> Vec<PathBuf> {
    let path = path.unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use tempfile::TempDir;

    fn fake_host(
        programs: &[&str],
        headers: &[&str],
        with_tarball: bool,
    ) -> (TempDir, ToolchainProbe) {
        let tmp = TempDir::new().unwrap();
        let bin = tmp.path().join("bin");
        let include = tmp.path().join("include");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(include.join("openssl")).unwrap();
        for program in programs {
            let path = bin.join(program);
            fs::write(&path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for header in headers {
            fs::write(include.join(header), "").unwrap();
        }
        let tarball = tmp.path().join("linux-source-6.12.tar.xz");
        if with_tarball {
            fs::write(&tarball, "").unwrap();
        }
        let probe = ToolchainProbe {
            path_dirs: vec![tmp.path().join("nowhere"), bin],
            include_dir: include,
            tarball,
            cross_target: None,
        };
        (tmp, probe)
    }

    #[test]
    fn complete_host_passes() {
        let headers: Vec<&str> = REQUIRED_HEADERS.iter().map(|(h, _)| *h).collect();
        let (_tmp, probe) = fake_host(REQUIRED_PROGRAMS, &headers, true);
        assert_eq!(probe.missing(), Vec::<String>::new());
        probe.check().unwrap();
    }

    #[test]
    fn error_lists_every_missing_item_and_the_install_command() {
        let (_tmp, probe) = fake_host(&["make", "gcc", "tar", "xz", "perl"], &["gelf.h"], false);
        let err = probe.check().unwrap_err();
        let msg = err.to_string();
        for item in [
            "`flex`",
            "`bison`",
            "`bc`",
            "opensslv.h (libssl-dev)",
            "linux-source-6.12.tar.xz",
        ] {
            assert!(msg.contains(item), "{item} not in: {msg}");
        }
        for present in ["`make`", "`gcc`", "gelf.h"] {
            assert!(!msg.contains(present), "{present} reported missing: {msg}");
        }
        assert!(msg.contains(INSTALL_COMMAND), "{msg}");
        match err {
            Error::ToolchainMissing { missing, .. } => assert_eq!(missing.len(), 5),
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn cross_build_needs_the_cross_compiler_and_names_its_package() {
        let headers: Vec<&str> = REQUIRED_HEADERS.iter().map(|(h, _)| *h).collect();
        let (tmp, mut probe) = fake_host(REQUIRED_PROGRAMS, &headers, true);
        probe.cross_target = Some(Arch::Aarch64);
        let err = probe.check().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("`aarch64-linux-gnu-gcc` (gcc-aarch64-linux-gnu)"),
            "{msg}"
        );
        assert!(msg.contains("`aarch64-linux-gnu-ld`"), "{msg}");
        assert!(
            msg.contains(&format!("{INSTALL_COMMAND} gcc-aarch64-linux-gnu")),
            "{msg}"
        );
        for tool in CROSS_PROGRAMS {
            let path = tmp
                .path()
                .join("bin")
                .join(format!("aarch64-linux-gnu-{tool}"));
            fs::write(&path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        probe.check().unwrap();
    }

    #[test]
    fn native_build_needs_no_cross_compiler() {
        let host = Arch::host().expect("tests run on x86_64 or aarch64");
        assert_eq!(ToolchainProbe::system_for(host).unwrap().cross_target, None);
        let other = Arch::ALL.into_iter().find(|a| *a != host).unwrap();
        let probe = ToolchainProbe::system_for(other).unwrap();
        assert_eq!(probe.cross_target, Some(other));
        assert_eq!(ToolchainProbe::system().install_command(), INSTALL_COMMAND);
    }

    #[test]
    fn non_executable_file_is_not_a_program() {
        let (tmp, probe) = fake_host(&[], &[], true);
        let path = tmp.path().join("bin/make");
        fs::write(&path, "").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(probe.find_program("make"), None);
    }

    #[test]
    fn unset_path_falls_back_to_standard_dirs() {
        assert!(path_dirs(None).contains(&PathBuf::from("/usr/bin")));
        assert_eq!(
            path_dirs(Some("/a::/b".into())),
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }
}
