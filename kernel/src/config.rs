//! The guest kernel configuration: the embedded fragments, their parser, and the check that
//! every requested option survived `make olddefconfig`.
//!
//! Kconfig silently drops an option whose dependencies are not met, so a fragment that asks
//! for `CONFIG_VIRTIO_FS=y` without `CONFIG_FUSE_FS=y` would quietly give a kernel without
//! virtio-fs. The build therefore compares the expanded `.config` with the fragments and fails
//! on any difference.

use std::collections::BTreeMap;

pub use crate::options::{Mismatch, OptionValue};

use crate::arch::Arch;
use crate::error::Error;

/// `kernel/config/base.config`: the x86_64 machine (CPU, timers, console, no
/// PCI/ACPI/modules).
pub const BASE_CONFIG: &str = include_str!("../config/base.config");

/// `kernel/config/base-arm64.config`: the arm64 machine (GICv3, architected timer, PSCI,
/// 16550 and PL011 consoles from the device tree, no PCI/ACPI/modules).
pub const BASE_ARM64_CONFIG: &str = include_str!("../config/base-arm64.config");

/// `kernel/config/msbvm.config`: what sandboxes need (virtio devices, network, filesystems,
/// isolation), the same on every architecture. Applied after the machine fragment.
pub const MSBVM_CONFIG: &str = include_str!("../config/msbvm.config");

/// One named config fragment, merged in order on top of `make tinyconfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFragment {
    /// File name the fragment is written under in the source tree (e.g. "base.config").
    pub name: String,
    /// The fragment's text, in Kconfig `.config` syntax.
    pub text: String,
}

impl ConfigFragment {
    /// A fragment with the given file name and text.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        ConfigFragment {
            name: name.into(),
            text: text.into(),
        }
    }

    /// The fragments embedded in this crate for [`Arch::default`] (the host's), in merge
    /// order.
    pub fn embedded() -> Vec<ConfigFragment> {
        Self::embedded_for(Arch::default())
    }

    /// The fragments embedded in this crate for `arch`, in merge order: the machine, then
    /// what sandboxes need.
    pub fn embedded_for(arch: Arch) -> Vec<ConfigFragment> {
        // The names are part of the cache key (and the x86_64 ones must stay as they are).
        let machine = match arch {
            Arch::X86_64 => ConfigFragment::new("base.config", BASE_CONFIG),
            Arch::Aarch64 => ConfigFragment::new("base-arm64.config", BASE_ARM64_CONFIG),
        };
        vec![machine, ConfigFragment::new("msbvm.config", MSBVM_CONFIG)]
    }

    /// The options this fragment sets, in file order.
    pub fn options(&self) -> Result<Vec<(String, OptionValue)>, Error> {
        let mut options = Vec::new();
        for (index, line) in self.text.lines().enumerate() {
            match parse_line(line) {
                Line::Option(name, value) => options.push((name, value)),
                Line::Other => {}
                Line::Malformed => {
                    return Err(Error::BadFragmentLine {
                        fragment: self.name.clone(),
                        line: index + 1,
                        text: line.to_string(),
                    })
                }
            }
        }
        Ok(options)
    }
}

/// The options requested by `fragments`, merged in order: a later fragment overrides an
/// earlier one, as `merge_config.sh` does.
pub fn requested_options(
    fragments: &[ConfigFragment],
) -> Result<BTreeMap<String, OptionValue>, Error> {
    let mut merged = BTreeMap::new();
    for fragment in fragments {
        merged.extend(fragment.options()?);
    }
    Ok(merged)
}

/// Parses an expanded `.config`. Unlike fragments, unknown lines are ignored: the file is
/// written by Kconfig, and this crate only needs the options in it.
pub fn parse_dotconfig(text: &str) -> BTreeMap<String, OptionValue> {
    text.lines()
        .filter_map(|line| match parse_line(line) {
            Line::Option(name, value) => Some((name, value)),
            _ => None,
        })
        .collect()
}

/// Compares the requested options with an expanded `.config`, returning every difference
/// (sorted by option name). An option requested as `n` and absent from `.config` is fine.
pub fn verify(requested: &BTreeMap<String, OptionValue>, dotconfig: &str) -> Vec<Mismatch> {
    let actual = parse_dotconfig(dotconfig);
    requested
        .iter()
        .filter_map(|(name, wanted)| {
            let got = actual.get(name);
            let ok = match got {
                Some(got) => got == wanted,
                None => *wanted == OptionValue::No,
            };
            (!ok).then(|| Mismatch {
                name: name.clone(),
                wanted: wanted.clone(),
                got: got.cloned(),
            })
        })
        .collect()
}

enum Line {
    Option(String, OptionValue),
    Other,
    Malformed,
}

fn parse_line(line: &str) -> Line {
    let line = line.trim();
    if line.is_empty() {
        return Line::Other;
    }
    if let Some(comment) = line.strip_prefix('#') {
        // "# CONFIG_X is not set" is Kconfig's spelling of `n`; every other comment is prose.
        return match comment
            .trim()
            .strip_suffix(" is not set")
            .filter(|name| is_option_name(name))
        {
            Some(name) => Line::Option(name.to_string(), OptionValue::No),
            None => Line::Other,
        };
    }
    match line.split_once('=') {
        Some((name, value)) if is_option_name(name) => {
            Line::Option(name.to_string(), OptionValue::parse(value.trim()))
        }
        _ => Line::Malformed,
    }
}

fn is_option_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(text: &str) -> Vec<(String, OptionValue)> {
        ConfigFragment::new("t.config", text).options().unwrap()
    }

    #[test]
    fn parses_yes_no_module_and_values() {
        let got = opts(
            "# comment\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\nCONFIG_D=64\n\
             CONFIG_E=\"a b\"\nCONFIG_F=0x10\nCONFIG_G=n\n",
        );
        assert_eq!(
            got,
            vec![
                ("CONFIG_A".into(), OptionValue::Yes),
                ("CONFIG_B".into(), OptionValue::No),
                ("CONFIG_C".into(), OptionValue::Module),
                ("CONFIG_D".into(), OptionValue::Value("64".into())),
                ("CONFIG_E".into(), OptionValue::Value("\"a b\"".into())),
                ("CONFIG_F".into(), OptionValue::Value("0x10".into())),
                ("CONFIG_G".into(), OptionValue::No),
            ]
        );
    }

    #[test]
    fn prose_comments_are_not_options() {
        assert!(opts("# CONFIG_X is great\n# this is not set\n# CONFIG_ is not set\n").is_empty());
    }

    #[test]
    fn malformed_line_is_reported_with_its_position() {
        let err = ConfigFragment::new("x.config", "CONFIG_A=y\nVIRTIO=y\n")
            .options()
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.config:2"), "{msg}");
        assert!(msg.contains("VIRTIO=y"), "{msg}");
    }

    #[test]
    fn embedded_fragments_parse_and_contain_key_options() {
        let all = requested_options(&ConfigFragment::embedded_for(Arch::X86_64)).unwrap();
        assert_eq!(all["CONFIG_PVH"], OptionValue::Yes);
        assert_eq!(all["CONFIG_VIRTIO_MMIO"], OptionValue::Yes);
        assert_eq!(all["CONFIG_MODULES"], OptionValue::No);
        assert_eq!(all["CONFIG_PCI"], OptionValue::No);
        assert_eq!(all["CONFIG_NR_CPUS"], OptionValue::Value("64".into()));
    }

    #[test]
    fn arm64_fragments_ask_for_what_the_vmm_relies_on() {
        let all = requested_options(&ConfigFragment::embedded_for(Arch::Aarch64)).unwrap();
        for option in [
            "CONFIG_OF",
            "CONFIG_ARM_GIC_V3",
            "CONFIG_ARM_ARCH_TIMER",
            "CONFIG_ARM_PSCI_FW",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_SERIAL_OF_PLATFORM",
            "CONFIG_SERIAL_EARLYCON",
            "CONFIG_SERIAL_AMBA_PL011_CONSOLE",
            "CONFIG_DEVMEM",
            "CONFIG_ARM64_4K_PAGES",
            "CONFIG_PARAVIRT",
            // From msbvm.config, shared with x86_64.
            "CONFIG_VIRTIO_MMIO",
            "CONFIG_VIRTIO_VSOCKETS",
            "CONFIG_VIRTIO_FS",
            "CONFIG_VIRTIO_BALLOON",
        ] {
            assert_eq!(all[option], OptionValue::Yes, "{option}");
        }
        for option in [
            "CONFIG_MODULES",
            "CONFIG_PCI",
            "CONFIG_ACPI",
            "CONFIG_IO_STRICT_DEVMEM",
        ] {
            assert_eq!(all[option], OptionValue::No, "{option}");
        }
        assert!(
            !all.keys()
                .any(|name| name.contains("X86") || name == "CONFIG_PVH"),
            "an x86 option in the arm64 fragments"
        );
    }

    #[test]
    fn later_fragment_overrides_earlier() {
        let merged = requested_options(&[
            ConfigFragment::new("a", "CONFIG_A=y\nCONFIG_B=y\n"),
            ConfigFragment::new("b", "# CONFIG_A is not set\n"),
        ])
        .unwrap();
        assert_eq!(merged["CONFIG_A"], OptionValue::No);
        assert_eq!(merged["CONFIG_B"], OptionValue::Yes);
    }

    #[test]
    fn verify_accepts_matching_config() {
        let requested = requested_options(&[ConfigFragment::new(
            "f",
            "CONFIG_A=y\n# CONFIG_B is not set\n# CONFIG_C is not set\nCONFIG_N=8\n",
        )])
        .unwrap();
        // B is explicitly off, C is absent (unmet deps): both satisfy a request for `n`.
        let dotconfig = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=8\nCONFIG_OTHER=y\n";
        assert!(verify(&requested, dotconfig).is_empty());
    }

    #[test]
    fn verify_reports_every_mismatch() {
        let requested = requested_options(&[ConfigFragment::new(
            "f",
            "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=8\nCONFIG_OK=y\n",
        )])
        .unwrap();
        let dotconfig = "# CONFIG_A is not set\nCONFIG_C=y\nCONFIG_N=4\nCONFIG_OK=y\n";
        let mismatches = verify(&requested, dotconfig);
        assert_eq!(
            mismatches,
            vec![
                Mismatch {
                    name: "CONFIG_A".into(),
                    wanted: OptionValue::Yes,
                    got: Some(OptionValue::No)
                },
                Mismatch {
                    name: "CONFIG_B".into(),
                    wanted: OptionValue::Yes,
                    got: None
                },
                Mismatch {
                    name: "CONFIG_C".into(),
                    wanted: OptionValue::No,
                    got: Some(OptionValue::Yes)
                },
                Mismatch {
                    name: "CONFIG_N".into(),
                    wanted: OptionValue::Value("8".into()),
                    got: Some(OptionValue::Value("4".into()))
                },
            ]
        );
        let msg = Error::ConfigMismatch { mismatches }.to_string();
        assert!(msg.contains("CONFIG_A: wanted y, got n"), "{msg}");
        assert!(
            msg.contains("CONFIG_B: wanted y, but it is absent"),
            "{msg}"
        );
        assert!(msg.contains("CONFIG_N: wanted 8, got 4"), "{msg}");
        assert!(!msg.contains("CONFIG_OK"), "{msg}");
    }
}
