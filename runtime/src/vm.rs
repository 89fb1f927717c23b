//! The VM on its own thread: configuration from the sandbox request, the blocking
//! `msbvm_vmm::run` call, and its result turned into an [`Event::VmEnded`].

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Instant;

use msbvm_vmm::kvm::{probe_host, HostKvm};
use msbvm_vmm::{BootSource, ConsoleOutput, StopHandle, VmConfig, VmEvent, VsockConfig};

use msbvm_sdk::paths::SandboxDir;
use msbvm_sdk::Error;

use super::Event;

/// Longest vsock socket path handed to the device as is: it appends `_<port>` (up to 11
/// bytes) and a Unix socket address holds 107.
const MAX_UDS_PATH: usize = 107 - 11;

/// What the sandbox asked for.
pub struct VmRequest<'a> {
    /// State directory.
    pub dir: &'a SandboxDir,
    /// Guest kernel image.
    pub kernel: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// When the runtime started (boot timings are relative to it).
    pub started: Instant,
    /// Where the vsock device listens for host clients when something else (the exec
    /// gateway) takes its usual socket.
    pub vsock_listen: Option<PathBuf>,
}

/// The order of the free blocks the guest reports to the balloon: 2 MiB, a host huge page
/// (the guest's default is its pageblock order, 4 MiB with our kernel, which leaves more of
/// a fragmented guest's free memory unreported).
pub const PAGE_REPORTING_ORDER: u32 = 9;

/// The kernel command line of sandbox `name`.
pub fn cmdline(name: &str) -> String {
    format!(
        "{} page_reporting.page_reporting_order={PAGE_REPORTING_ORDER} msbvm.hostname={name}",
        msbvm_vmm::DEFAULT_CMDLINE
    )
}

/// The virtio-balloon device, through which the guest reports its free memory and the host
/// drops it (see `msbvm_virtio::balloon`). Every sandbox has one: without it a guest keeps
/// every page it ever touched resident on the host.
pub fn balloon_spec() -> msbvm_vmm::DeviceSpec {
    msbvm_vmm::DeviceSpec::new("virtio-balloon", || {
        Ok(Box::new(msbvm_virtio::balloon::Balloon::new()) as Box<dyn msbvm_virtio::VirtioDevice>)
    })
}

/// The vsock device's socket path: absolute when it fits a socket address, else relative to
/// the state directory, which is the runtime's working directory.
pub fn device_socket_path(dir: &SandboxDir) -> PathBuf {
    let absolute = dir.vsock_socket();
    if absolute.as_os_str().len() <= MAX_UDS_PATH {
        absolute
    } else {
        PathBuf::from(msbvm_sdk::paths::VSOCK_SOCKET)
    }
}

/// The guest console: a capped, rotated log ([`msbvm_sdk::logfile`]), since the guest decides
/// how much it prints; an uncapped file only if that cannot be opened.
fn console_output(dir: &SandboxDir) -> ConsoleOutput {
    let path = dir.console_log();
    match msbvm_sdk::logfile::CappedLog::open(&path, msbvm_sdk::logfile::max_bytes_from_env()) {
        Ok(log) => ConsoleOutput::Writer(std::sync::Arc::new(std::sync::Mutex::new(log))),
        Err(e) => {
            tracing::warn!("cannot open {} as a capped log: {e}", path.display());
            ConsoleOutput::File(path)
        }
    }
}

/// The VM configuration for `request`.
pub fn config(request: &VmRequest<'_>) -> VmConfig {
    VmConfig {
        boot: BootSource::Linux {
            kernel: request.kernel.clone(),
            initrd: Some(request.dir.initrd()),
            cmdline: cmdline(request.dir.name()),
        },
        vcpus: request.cpus,
        memory_mib: request.memory_mib,
        console: console_output(request.dir),
        start_time: request.started,
        devices: vec![VsockConfig {
            guest_cid: msbvm_protocol::GUEST_CID,
            uds_path: device_socket_path(request.dir),
            listen_path: request.vsock_listen.clone(),
        }
        .device_spec()],
        stop: StopHandle::new(),
        memory: msbvm_vmm::memory::MemoryHandle::new(),
        control: msbvm_vmm::VmControl::new(),
        restore: None,
        restore_memory: Default::default(),
    }
}

/// Runs `config` on a new thread; its end arrives as [`Event::VmEnded`].
pub fn spawn(config: VmConfig, events: Sender<Event>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("msbvm-vm".into())
        .spawn(move || {
            let result = msbvm_vmm::run(&config, |event| match event {
                VmEvent::BootComplete(d) => {
                    tracing::info!(ms = d.as_secs_f64() * 1e3, "guest boot complete")
                }
                VmEvent::Restored(d) => {
                    tracing::info!(ms = d.as_secs_f64() * 1e3, "guest restored")
                }
            });
            let _ = events.send(Event::VmEnded(result.map_err(|e| vm_error(&e))));
        })
}

/// The SDK error for a VM that could not start.
pub fn vm_error(e: &msbvm_vmm::Error) -> Error {
    match e {
        msbvm_vmm::Error::Hypervisor(h) if h.is_unavailable() => Error::NoKvm(e.to_string()),
        other => Error::Vm(other.to_string()),
    }
}

/// A hint to add when the guest died on a host known not to run stock guests.
pub fn host_hint(kernel: &Path) -> Option<String> {
    match probe_host() {
        HostKvm::Pvm => Some(format!(
            "this host's /dev/kvm is PVM, which runs only PVM-enabled guest kernels, so {} \
             cannot boot here; run sandboxes under nested virtualization instead",
            kernel.display()
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_names_the_host() {
        let c = cmdline("box-1");
        assert!(c.starts_with(msbvm_vmm::DEFAULT_CMDLINE));
        assert!(c.ends_with(" msbvm.hostname=box-1"));
    }

    #[test]
    fn config_carries_the_request() {
        let dir = SandboxDir::in_home(Path::new("/h"), "b").unwrap();
        let c = config(&VmRequest {
            vsock_listen: None,
            dir: &dir,
            kernel: "/k".into(),
            cpus: 2,
            memory_mib: 300,
            started: Instant::now(),
        });
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 300);
        let names: Vec<_> = c.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["virtio-vsock (guest CID 3, /h/sandboxes/b/vsock.sock)"]
        );
        assert!(c.validate().is_ok());
        let long = SandboxDir::in_home(&Path::new("/").join("h".repeat(80)), "b").unwrap();
        assert_eq!(device_socket_path(&long), Path::new("vsock.sock"));
    }

    #[test]
    fn kvm_errors_become_no_kvm() {
        let e = vm_error(&msbvm_vmm::Error::Hypervisor(
            msbvm_vmm::kvm::Error::KvmPermission.into(),
        ));
        assert!(
            matches!(e, Error::NoKvm(ref m) if m.contains("usermod")),
            "{e}"
        );
        let e = vm_error(&msbvm_vmm::Error::Config(
            msbvm_vmm::ConfigError::CmdlineNul,
        ));
        assert!(matches!(e, Error::Vm(_)), "{e}");
    }
}
