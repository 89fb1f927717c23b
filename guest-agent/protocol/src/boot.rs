//! The guest's boot configuration, decided by the host.
//!
//! The runtime writes a [`BootConfig`] (postcard) to [`BOOT_CONFIG_PATH`] in
//! the initramfs it builds for each sandbox; the agent reads it before
//! anything else. A file rather than kernel command-line words because it
//! carries lists (mounts, DNS servers, host names) and must not be limited
//! by the command line's length.

use serde::{Deserialize, Serialize};

/// The guest's hostname when the host names none, or one [`is_valid_hostname`] refuses.
pub const DEFAULT_HOSTNAME: &str = "msbvm";

/// RFC 1123 letters, digits, hyphens and dots, at most 64 bytes (the
/// kernel's limit), not starting or ending with a hyphen or dot.
pub fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

/// The hostname a guest asked to be `name` ends up with: `name` if valid, else
/// [`DEFAULT_HOSTNAME`] (what the agent does with `msbvm.hostname=`).
pub fn guest_hostname(name: &str) -> &str {
    if is_valid_hostname(name) {
        name
    } else {
        DEFAULT_HOSTNAME
    }
}

/// Where the agent finds its boot configuration in the initramfs.
pub const BOOT_CONFIG_PATH: &str = "/msbvm/boot.bin";

/// Everything the agent sets up before serving.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    /// virtiofs tag of the root filesystem; the agent mounts it, mounts
    /// `/proc`, `/sys`, `/dev` and the [`BootConfig::mounts`] under it and
    /// makes it `/`. `None` keeps the initramfs as root.
    pub root_tag: Option<String>,
    /// Mount the root read-only.
    pub root_read_only: bool,
    /// The root is a host directory (`--rootfs`): the agent changes none of its files, and
    /// shadows those it sets up at boot (`/etc/resolv.conf`, `/etc/hosts`, CA bundles) with
    /// bind mounts from `/run` instead.
    pub root_shared: bool,
    /// Extra mounts, in order (parents before children).
    pub mounts: Vec<GuestMount>,
    /// The network interface's set-up; `None` when the sandbox has no network.
    pub network: Option<NetworkSetup>,
    /// TLS interception: the CA the guest must trust. `None` when nothing is intercepted.
    pub tls: Option<GuestTls>,
    /// `(NAME, placeholder)` of every secret: each exec's environment gets `NAME=placeholder`.
    /// Placeholders are random and worthless outside the sandbox; the values stay on the host.
    pub secret_env: Vec<(String, String)>,
    /// The host has already written `/etc/resolv.conf` and `/etc/hosts` into the root (an
    /// image's writable layer, before the boot, with [`crate::resolver`]'s content): the
    /// agent leaves them, which spares the boot the round trips of writing them over virtio-fs.
    pub resolver_files_written: bool,
}

/// What the guest needs for the host's TLS interception.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestTls {
    /// PEM of the certificate authority that signs the intercepted connections' certificates;
    /// the agent installs it in the guest's trust stores.
    pub ca_cert_pem: String,
}

/// A filesystem to mount in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMount {
    /// What to mount.
    pub source: MountSource,
    /// Absolute path in the guest (created if missing).
    pub target: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// The kinds of guest mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    /// A virtiofs share with this tag (a volume).
    Virtiofs {
        /// The device's tag.
        tag: String,
    },
    /// A tmpfs, limited to this many bytes (`None`: the kernel's default, half of RAM).
    Tmpfs {
        /// Size limit in bytes.
        size_bytes: Option<u64>,
    },
}

/// Static IPv4 set-up of the guest's one network interface (`eth0`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSetup {
    /// The guest's address.
    pub address: [u8; 4],
    /// Prefix length of the guest's subnet.
    pub prefix_len: u8,
    /// Default gateway (the host-side netstack).
    pub gateway: [u8; 4],
    /// DNS servers for `/etc/resolv.conf`.
    pub dns: Vec<[u8; 4]>,
    /// Interface MTU.
    pub mtu: u16,
    /// Extra `/etc/hosts` lines: (address, names).
    pub hosts: Vec<([u8; 4], String)>,
}

#[cfg(any(test, feature = "test-support"))]
impl NetworkSetup {
    /// The set-up tests on both sides share: the netstack's usual addresses, two DNS servers,
    /// a lowered MTU and a hosts entry whose names need cleaning (`bad#name` dropped, the
    /// newline and double space collapsed).
    pub fn example() -> Self {
        NetworkSetup {
            address: [10, 0, 2, 15],
            prefix_len: 24,
            gateway: [10, 0, 2, 2],
            dns: vec![[10, 0, 2, 3], [1, 1, 1, 1]],
            mtu: 1400,
            hosts: vec![
                ([10, 0, 2, 2], "host.msbvm.internal gateway".into()),
                ([10, 0, 2, 9], "bad#name\nx  good-name".into()),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_config_round_trips() {
        let config = BootConfig {
            root_tag: Some("root".into()),
            root_read_only: false,
            root_shared: true,
            mounts: vec![GuestMount {
                source: MountSource::Tmpfs {
                    size_bytes: Some(1 << 20),
                },
                target: "/scratch".into(),
                read_only: false,
            }],
            network: Some(NetworkSetup {
                address: [10, 0, 2, 15],
                prefix_len: 24,
                gateway: [10, 0, 2, 2],
                dns: vec![[10, 0, 2, 2]],
                mtu: 1500,
                hosts: vec![([10, 0, 2, 254], "host.msbvm.internal".into())],
            }),
            tls: Some(GuestTls {
                ca_cert_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            }),
            secret_env: vec![("API_KEY".into(), "msbvm_placeholder_00".into())],
            resolver_files_written: true,
        };
        let bytes = postcard::to_stdvec(&config).unwrap();
        assert_eq!(postcard::from_bytes::<BootConfig>(&bytes).unwrap(), config);
    }

    #[test]
    fn hostnames_the_guest_keeps() {
        assert_eq!(guest_hostname("box-1.example"), "box-1.example");
        for bad in ["", "-a", "a.", "under_score", "sp ace", &"x".repeat(65)] {
            assert_eq!(guest_hostname(bad), DEFAULT_HOSTNAME, "{bad:?}");
        }
    }
}
