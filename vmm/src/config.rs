//! What a VM is asked to boot, and with which resources.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Kernel command line used when the caller gives none.
///
/// - `console=ttyS0`: the 16550 at COM1 is the console.
/// - `reboot=k,panic_w`: restarts go through the i8042 reset line (which the VMM
///   traps); a restart after a panic is flagged "warm", which the kernel records
///   at guest-physical 0x472 before pulling the line, so the VMM can tell a panic
///   from an ordinary reboot.
/// - `panic=-1`: restart at once on panic instead of hanging.
/// - `quiet`: only warnings and worse on the console. Every console byte is a
///   trapped port write, so the full boot log (about 12 KiB) is the largest
///   single cost of a boot under nested virtualization; append `loglevel=7` to
///   see it.
#[cfg(target_arch = "x86_64")]
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k,panic_w panic=-1 quiet";
/// The default kernel command line on arm64 (see `arch::aarch64::DEFAULT_CMDLINE`).
#[cfg(target_arch = "aarch64")]
pub const DEFAULT_CMDLINE: &str = crate::arch::aarch64::DEFAULT_CMDLINE;
pub use crate::boot_source::{BootSource, CMDLINE_MAX_SIZE};
/// Where the guest's serial console goes.
#[derive(Clone)]
pub enum ConsoleOutput {
    /// The VMM's standard output.
    Stdout,
    /// Appended to a file (created if missing).
    File(PathBuf),
    /// Any writer shared with the caller (tests capture the console this way).
    Writer(Arc<std::sync::Mutex<dyn Write + Send>>),
    /// Discarded.
    Sink,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConsoleOutput::Stdout => write!(f, "Stdout"),
            ConsoleOutput::File(p) => write!(f, "File({})", p.display()),
            ConsoleOutput::Writer(_) => write!(f, "Writer"),
            ConsoleOutput::Sink => write!(f, "Sink"),
        }
    }
}

/// A virtio-vsock device whose host side is a Unix socket (see
/// `msbvm_virtio::vsock`): host processes connect to `uds_path` and write
/// `CONNECT <port>\n`; guest connections to host port P reach a listener at
/// `<uds_path>_<P>`. It is attached like any other device, through
/// [`VsockConfig::device_spec`]; the guest CID is checked where the device is
/// created (`msbvm_virtio::vsock::Vsock::new`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// The Unix socket host processes connect to.
    pub uds_path: PathBuf,
    /// Bind the host listener here instead of at `uds_path` (which stays the prefix of
    /// guest-to-host sockets): the host puts a proxy of its own at `uds_path`.
    pub listen_path: Option<PathBuf>,
}

impl VsockConfig {
    /// The device spec that creates this vsock device.
    pub fn device_spec(&self) -> DeviceSpec {
        let VsockConfig {
            guest_cid,
            uds_path,
            listen_path,
        } = self.clone();
        DeviceSpec::new(
            format!(
                "virtio-vsock (guest CID {guest_cid}, {})",
                uds_path.display()
            ),
            move || {
                let listen = listen_path.clone().unwrap_or_else(|| uds_path.clone());
                let device = msbvm_virtio::vsock::Vsock::with_listen_path(
                    guest_cid.into(),
                    uds_path.clone(),
                    listen,
                )
                .map_err(std::io::Error::other)?;
                Ok(Box::new(device) as Box<dyn msbvm_virtio::VirtioDevice>)
            },
        )
    }
}

/// Builds a virtio device when the VM starts (filesystem shares, network).
///
/// The VMM stays ignorant of what each device serves: the caller (the sandbox
/// runtime) decides, and the VMM only places the device on the MMIO bus, wires
/// its notifications and interrupt and announces it on the command line. A
/// factory rather than a device because [`VmConfig`] is `Clone` and `run`
/// borrows it.
#[derive(Clone)]
pub struct DeviceSpec {
    /// What the device is, for error messages ("virtio-fs root").
    pub name: String,
    /// Creates the device; called once per `run`.
    pub make: Arc<DeviceFactory>,
}

/// The function behind a [`DeviceSpec`].
pub type DeviceFactory =
    dyn Fn() -> std::io::Result<Box<dyn msbvm_virtio::VirtioDevice>> + Send + Sync;

impl DeviceSpec {
    /// A device named `name` built by `make`.
    pub fn new(
        name: impl Into<String>,
        make: impl Fn() -> std::io::Result<Box<dyn msbvm_virtio::VirtioDevice>> + Send + Sync + 'static,
    ) -> Self {
        DeviceSpec {
            name: name.into(),
            make: Arc::new(make),
        }
    }
}

impl std::fmt::Debug for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceSpec({})", self.name)
    }
}

/// Lets another thread ask a running VM to stop; the VM then ends with
/// [`crate::VmExit::Stopped`] within about 100 ms.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<std::sync::atomic::AtomicU8>);

/// [`StopHandle`]'s states, in the order they can only rise through.
const RUNNING: u8 = 0;
const STOP: u8 = 1;
const STOP_AND_DESCRIBE: u8 = 2;

impl StopHandle {
    /// A handle nobody has triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the VM to stop (idempotent).
    pub fn stop(&self) {
        self.0.fetch_max(STOP, std::sync::atomic::Ordering::AcqRel);
    }

    /// Asks the VM to stop and to describe where its guest was: each vCPU's
    /// registers and the end of the guest kernel's log land in the outcome
    /// ([`crate::VmOutcome::state_at_stop`], [`crate::VmOutcome::kernel_log`]).
    /// For a guest stopped because it looks stuck, e.g. never became ready.
    pub fn stop_and_describe(&self) {
        self.0
            .fetch_max(STOP_AND_DESCRIBE, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) != RUNNING
    }

    /// Whether the stop asked for a description of the guest.
    pub fn wants_description(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) == STOP_AND_DESCRIBE
    }
}

/// Everything needed to boot one VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// What to boot.
    pub boot: BootSource,
    /// Number of vCPUs (1..=[`VmConfig::MAX_VCPUS`]).
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Serial console destination.
    pub console: ConsoleOutput,
    /// The instant the VMM's work started (its process start, as near as the
    /// caller can tell); boot-timer readings are relative to it.
    pub start_time: Instant,
    /// The virtio devices (vsock, filesystems, network), attached in this order.
    pub devices: Vec<DeviceSpec>,
    /// Stops the VM from another thread.
    pub stop: StopHandle,
    /// Reads the VM's RAM from another thread while it runs (debugging).
    pub memory: crate::memory::MemoryHandle,
    /// Asks the running VM for snapshots from another thread.
    pub control: crate::vm::VmControl,
    /// Restore this snapshot instead of booting `boot` (whose kernel, for a
    /// Linux guest, must be the one the snapshot was taken with). `vcpus`
    /// and `memory_mib` must be the snapshot's.
    pub restore: Option<Arc<crate::snapshot::Snapshot>>,
    /// How a restored VM gets its memory from the snapshot.
    pub restore_memory: crate::snapshot::RestoreMemory,
}

impl VmConfig {
    /// Largest vCPU count accepted (bounded by the MP table's 8-bit APIC IDs,
    /// one of which the IO-APIC takes).
    pub const MAX_VCPUS: u8 = 254;
    /// Smallest guest memory accepted, in MiB.
    pub const MIN_MEMORY_MIB: u64 = 16;
    /// Largest guest memory accepted, in MiB (1 TiB).
    pub const MAX_MEMORY_MIB: u64 = 1 << 20;

    /// A configuration with one vCPU, 256 MiB and the console on stdout.
    pub fn new(boot: BootSource) -> Self {
        VmConfig {
            boot,
            vcpus: 1,
            memory_mib: 256,
            console: ConsoleOutput::Stdout,
            start_time: Instant::now(),
            devices: Vec::new(),
            stop: StopHandle::new(),
            memory: crate::memory::MemoryHandle::new(),
            control: crate::vm::VmControl::new(),
            restore: None,
            restore_memory: crate::snapshot::RestoreMemory::Shared,
        }
    }

    /// Checks the numbers a user can get wrong, with a message naming the limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > Self::MAX_VCPUS {
            return Err(ConfigError::Vcpus {
                count: self.vcpus,
                max: Self::MAX_VCPUS,
            });
        }
        if self.memory_mib < Self::MIN_MEMORY_MIB || self.memory_mib > Self::MAX_MEMORY_MIB {
            return Err(ConfigError::Memory {
                mib: self.memory_mib,
                min: Self::MIN_MEMORY_MIB,
                max: Self::MAX_MEMORY_MIB,
            });
        }
        if let BootSource::Linux { cmdline, .. } = &self.boot {
            if cmdline.len() >= CMDLINE_MAX_SIZE {
                return Err(ConfigError::CmdlineTooLong {
                    len: cmdline.len(),
                    limit: CMDLINE_MAX_SIZE - 1,
                });
            }
            if cmdline.bytes().any(|b| b == 0) {
                return Err(ConfigError::CmdlineNul);
            }
        }
        Ok(())
    }
}

/// What is wrong with a [`VmConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Too few or too many vCPUs.
    #[error("vCPU count {count} is out of range: use 1 to {max}")]
    Vcpus {
        /// The count asked for.
        count: u8,
        /// The largest accepted.
        max: u8,
    },
    /// Too little or too much memory.
    #[error("memory size {mib} MiB is out of range: use {min} to {max} MiB")]
    Memory {
        /// The size asked for.
        mib: u64,
        /// The smallest accepted.
        min: u64,
        /// The largest accepted.
        max: u64,
    },
    /// The kernel command line does not fit.
    #[error("kernel command line is {len} bytes; the limit is {limit}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The longest accepted.
        limit: usize,
    },
    /// The kernel command line has a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux() -> VmConfig {
        VmConfig::new(BootSource::Linux {
            kernel: "/k".into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.into(),
        })
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(linux().validate(), Ok(()));
    }

    #[test]
    fn rejects_zero_vcpus_and_tiny_memory() {
        let mut c = linux();
        c.vcpus = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("vCPU count 0"));
        let mut c = linux();
        c.memory_mib = 1;
        assert!(c.validate().unwrap_err().to_string().contains("1 MiB"));
    }

    #[test]
    fn rejects_overlong_cmdline() {
        let mut c = linux();
        c.boot = BootSource::Linux {
            kernel: "/k".into(),
            initrd: None,
            cmdline: "x".repeat(5000),
        };
        assert!(c.validate().unwrap_err().to_string().contains("5000 bytes"));
    }

    #[test]
    fn vsock_is_a_device_whose_cid_the_device_checks() {
        let spec = VsockConfig {
            guest_cid: 2,
            uds_path: "/nonexistent/v.sock".into(),
            listen_path: None,
        }
        .device_spec();
        assert_eq!(spec.name, "virtio-vsock (guest CID 2, /nonexistent/v.sock)");
        let err = (spec.make)().err().expect("CID 2 is the host's");
        assert!(err.to_string().contains("guest CID 2 is reserved"), "{err}");
    }
}
