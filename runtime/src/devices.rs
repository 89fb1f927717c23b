//! Turns a [`SandboxSpec`] into the VM's virtio devices (virtio-fs shares,
//! virtio-net), the host-side servers behind them (FUSE backends, the
//! netstack) and the guest's [`BootConfig`].
//!
//! Everything that must live as long as the sandbox (volume locks, the
//! image's layer lease, the netstack) is kept in [`Devices`]; dropping it
//! releases them.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use msbvm_fs::hooks::{Hook, Hooked};
use msbvm_fs::{FileSystem, LayeredConfig, LayeredFs, PassthroughConfig, PassthroughFs};
use msbvm_fs::{IdMap, Server, ServerOptions};
use msbvm_image::{ImageConfig, ImageStore, LayerLease};
use msbvm_netstack::dns::Upstream;
use msbvm_netstack::policy::{Action, Policy, Rule};
use msbvm_netstack::{
    frame_socketpair, EventSink, NetConfig, NetEvent, NetStack, NetStackHandle, PublishedPort,
};
use msbvm_protocol::boot::{BootConfig, GuestMount, MountSource, NetworkSetup};
use msbvm_virtio::event_loop::{HostedWorker, WorkerHost};
use msbvm_virtio::fs::{Fs, FsServer};
use msbvm_virtio::net::{Net, NetDeviceConfig};
use msbvm_vmm::DeviceSpec;

use msbvm_sdk::logfile::{max_bytes_from_env, CappedLog};
use msbvm_sdk::paths::SandboxDir;
pub use msbvm_sdk::paths::NET_EVENTS_FILE;
use msbvm_sdk::secrets::Secret;
use msbvm_sdk::spec::{NetworkSpec, RootSpec, SandboxSpec, VolumeSource, DEFAULT_IMAGE};
use msbvm_sdk::{Error, Result};

/// virtiofs tag of the root filesystem.
pub const ROOT_TAG: &str = "root";
/// MAC address of the guest's interface (locally administered).
pub const GUEST_MAC: [u8; 6] = [0x02, 0x6d, 0x73, 0x62, 0x00, 0x0f];
/// Name of the copy-on-write directory of an image root, in the state directory.
pub const UPPER_DIR: &str = "upper";

/// The image's defaults for execs, resolved by the runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecDefaults {
    /// Environment from the image (`KEY`, `VALUE`).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User, as the image or the user wrote it.
    pub user: Option<String>,
    /// Entrypoint followed by command.
    pub command: Vec<String>,
}

/// The devices and what keeps their host side alive.
pub struct Devices {
    /// Devices for the VMM, in attach order.
    pub specs: Vec<DeviceSpec>,
    /// The guest's boot configuration.
    pub boot: BootConfig,
    /// The root stays in the initramfs, which then needs a userland.
    pub initramfs_root: bool,
    /// Defaults from the image.
    pub exec: ExecDefaults,
    /// The image reference, when the root is an image.
    pub image: Option<String>,
    /// The running network stack.
    pub net: Option<NetStackHandle>,
    /// The root backend (for reading the image's `/etc/passwd`).
    pub root_fs: Option<Arc<dyn FileSystem>>,
    /// An image root's backend, whose writable layer a snapshot freezes.
    pub root_layered: Option<Arc<LayeredFs>>,
    /// The layers under an image root's writable layer, lowest first: the image's, then for
    /// a fork the frozen layer of its snapshot (a snapshot of this sandbox lies on them all).
    pub lower_dirs: Vec<PathBuf>,
    /// How an image root's image runs (recorded in a snapshot of this sandbox).
    pub image_config: Option<ImageConfig>,
    _leases: Vec<Box<dyn std::any::Any + Send>>,
}

impl Drop for Devices {
    fn drop(&mut self) {
        if let Some(net) = self.net.take() {
            net.shutdown();
        }
    }
}

/// What a program embedding the runtime adds to every sandbox it runs (see
/// [`crate::main_with`]): filesystem hooks are Rust objects, so they live in the
/// runtime process, not in the SDK user's.
#[derive(Clone, Default)]
pub struct Extensions {
    /// Hooks on every virtio-fs share (root and volumes), outermost first; the plugins'
    /// file hooks (`fs`, `fs.change`) come after them.
    pub fs_hooks: Vec<Arc<dyn Hook>>,
    /// In-process plugins ([`msbvm_plugins::Plugin`]), in order; they run before the
    /// plugins the sandbox's spec configures.
    pub plugins: Vec<Arc<dyn msbvm_plugins::Plugin>>,
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Extensions {{ fs_hooks: {}, plugins: {} }}",
            self.fs_hooks.len(),
            self.plugins.len()
        )
    }
}

impl Devices {
    /// Writes `/etc/resolv.conf` and `/etc/hosts` into an image root before the guest boots
    /// (see [`crate::resolver_files`]) and tells the agent, through the boot configuration, to
    /// leave them; the guest's hostname is the one sandbox `name` gets. Does nothing without
    /// an image root or a network. A failure is logged and the agent writes them at boot.
    pub fn write_resolver_files(&mut self, name: &str) {
        let (Some(fs), Some(setup)) = (&self.root_layered, &self.boot.network) else {
            return;
        };
        let hostname = msbvm_protocol::boot::guest_hostname(name);
        match crate::resolver_files::write(fs.as_ref(), setup, hostname) {
            Ok(()) => self.boot.resolver_files_written = true,
            Err(e) => tracing::warn!(
                "cannot write the resolver files into the image root ({e}); the agent writes \
                 them at boot"
            ),
        }
    }
}

/// Builds everything `spec` asks for, with `secrets` in the network stack. `home` is the
/// msbvm data directory.
pub fn build(
    spec: &SandboxSpec,
    secrets: &[Secret],
    dir: &SandboxDir,
    home: &Path,
    extensions: &Extensions,
    plugins: &Arc<msbvm_plugins::Chain>,
) -> Result<Devices> {
    let mut devices = Devices {
        specs: Vec::new(),
        boot: BootConfig::default(),
        initramfs_root: false,
        exec: ExecDefaults::default(),
        image: None,
        net: None,
        root_fs: None,
        root_layered: None,
        lower_dirs: Vec::new(),
        image_config: None,
        _leases: Vec::new(),
    };
    // Each share's hooks: the embedder's, then the plugins' (with the share's guest paths).
    let hooks_at = |mount: &str| -> Vec<Arc<dyn Hook>> {
        let mut hooks = extensions.fs_hooks.clone();
        hooks.extend(crate::plugins::FsPlugins::wanted(plugins, mount));
        hooks
    };
    let hooks = hooks_at("/");
    match &spec.root {
        RootSpec::Initramfs => devices.initramfs_root = true,
        RootSpec::Image { reference } => {
            let disk = spec
                .disk_size_bytes
                .unwrap_or(msbvm_sdk::spec::DEFAULT_DISK_SIZE);
            let root = image_root(home, reference, dir, disk, spec.fork_of.as_deref())?;
            devices.exec = root.defaults;
            devices.image = Some(reference.clone());
            devices._leases.push(Box::new(root.lease));
            devices.lower_dirs = root.lower_dirs;
            devices.image_config = Some(root.config);
            let fs = Arc::new(root.fs);
            devices.root_layered = Some(fs.clone());
            let fs: Arc<dyn FileSystem> = fs;
            devices.root_fs = Some(fs.clone());
            devices.specs.push(fs_device(ROOT_TAG, fs, false, &hooks)?);
            devices.boot.root_tag = Some(ROOT_TAG.into());
        }
        RootSpec::HostDir { path, read_only } => {
            let fs: Arc<dyn FileSystem> = Arc::new(passthrough(path, *read_only)?);
            devices.root_fs = Some(fs.clone());
            devices
                .specs
                .push(fs_device(ROOT_TAG, fs, *read_only, &hooks)?);
            devices.boot.root_tag = Some(ROOT_TAG.into());
            devices.boot.root_read_only = *read_only;
            devices.boot.root_shared = true;
        }
    }
    for (i, volume) in spec.volumes.iter().enumerate() {
        let tag = format!("vol{i}");
        let path = match &volume.source {
            VolumeSource::Host(p) => {
                if !p.is_dir() {
                    return Err(Error::InvalidConfig(format!(
                        "volume source {} is not a directory",
                        p.display()
                    )));
                }
                p.clone()
            }
            VolumeSource::Named(name) => {
                let (data, lock) = msbvm_sdk::volumes::acquire(home, name)?;
                devices._leases.push(Box::new(lock));
                data
            }
        };
        let fs: Arc<dyn FileSystem> = Arc::new(passthrough(&path, volume.read_only)?);
        let hooks = hooks_at(&volume.guest_path);
        devices
            .specs
            .push(fs_device(&tag, fs, volume.read_only, &hooks)?);
        devices.boot.mounts.push(GuestMount {
            source: MountSource::Virtiofs { tag },
            target: volume.guest_path.clone(),
            read_only: volume.read_only,
        });
    }
    for tmpfs in &spec.tmpfs {
        devices.boot.mounts.push(GuestMount {
            source: MountSource::Tmpfs {
                size_bytes: tmpfs.size_bytes,
            },
            target: tmpfs.guest_path.clone(),
            read_only: false,
        });
    }
    if spec.network.enabled {
        let policy = policy(&spec.network, !secrets.is_empty())?;
        // An `https://` rule can only be enforced inside intercepted TLS.
        let interception =
            crate::tls_setup::prepare(&spec.network.tls, secrets, policy.has_https_rules(), home)?;
        if let Some(i) = &interception {
            devices.boot.tls = Some(i.guest.clone());
            devices.boot.secret_env = i.secret_env.clone();
        }
        let (handle, device, setup) = network(&spec.network, policy, interception, dir, plugins)?;
        devices.net = Some(handle);
        devices.specs.push(device);
        devices.boot.network = Some(setup);
    } else if !secrets.is_empty() {
        return Err(Error::InvalidConfig(
            "secrets need the network (they are substituted by the network stack)".into(),
        ));
    }
    Ok(devices)
}

/// The FUSE server of one share: `fs` behind `hooks` (if any).
fn fs_server(
    fs: Arc<dyn FileSystem>,
    read_only: bool,
    hooks: &[Arc<dyn Hook>],
) -> Arc<Server<Box<dyn FileSystem>>> {
    let backend: Box<dyn FileSystem> = if hooks.is_empty() {
        Box::new(fs)
    } else {
        Box::new(Hooked::new(fs, hooks.to_vec()))
    };
    Arc::new(Server::new(
        backend,
        ServerOptions {
            read_only,
            ..ServerOptions::default()
        },
    ))
}

fn fs_device(
    tag: &str,
    fs: Arc<dyn FileSystem>,
    read_only: bool,
    hooks: &[Arc<dyn Hook>],
) -> Result<DeviceSpec> {
    let server: Arc<dyn FsServer> = fs_server(fs, read_only, hooks);
    let owned_tag = tag.to_string();
    // Validate the tag now so a bad one is a configuration error, not a boot failure.
    Fs::new(tag, 1, server.clone())
        .map_err(|e| Error::InvalidConfig(format!("virtio-fs {tag}: {e}")))?;
    Ok(DeviceSpec::new(format!("virtio-fs {tag}"), move || {
        let device = Fs::new(&owned_tag, 1, server.clone()).map_err(std::io::Error::other)?;
        Ok(Box::new(device) as Box<dyn msbvm_virtio::VirtioDevice>)
    }))
}

/// Raises this process's soft open-file limit to its hard limit and returns it. Every
/// virtio-fs share keeps file descriptors for the guest's open files and a cache of looked-up
/// inodes; the usual soft limit of 1024 would run out long before the kernel's real limit
/// (what Go and systemd services do as well).
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// The descriptor budgets of one passthrough share, from the process's open-file limit:
/// a quarter for open guest files, an eighth for the inode cache, never above the
/// backend's defaults.
fn fd_budgets(fd_limit: u64) -> (usize, usize) {
    let defaults = PassthroughConfig::default();
    let share = |divisor: u64, default: usize| {
        usize::try_from(fd_limit / divisor)
            .unwrap_or(usize::MAX)
            .clamp(16, default)
    };
    (
        share(8, defaults.max_open_fds),
        share(4, defaults.max_open_handles),
    )
}

/// A passthrough share; an unprivileged host user's files appear as root's.
fn passthrough(path: &Path, read_only: bool) -> Result<PassthroughFs> {
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let id_map = if uid == 0 {
        IdMap::identity()
    } else {
        IdMap::host_user_as_root(uid, gid)
    };
    let (max_open_fds, max_open_handles) = fd_budgets(raise_fd_limit());
    PassthroughFs::new(
        path,
        PassthroughConfig {
            read_only,
            id_map,
            max_open_fds,
            max_open_handles,
            ..PassthroughConfig::default()
        },
    )
    .map_err(Error::io(format!("sharing {}", path.display())))
}

/// The image store under `home`.
pub fn image_store(home: &Path) -> Result<ImageStore> {
    msbvm_sdk::images::store_in(home)
}

/// An image root, ready to serve.
struct ImageRoot {
    fs: LayeredFs,
    defaults: ExecDefaults,
    config: ImageConfig,
    lease: LayerLease,
    lower_dirs: Vec<PathBuf>,
}

/// The root of image `reference` with the sandbox's writable layer; for a fork of the
/// snapshot in `fork_of`, the snapshot's layers and image configuration instead, with its
/// frozen layer on top of them.
fn image_root(
    home: &Path,
    reference: &str,
    dir: &SandboxDir,
    disk_bytes: u64,
    fork_of: Option<&Path>,
) -> Result<ImageRoot> {
    let store = image_store(home)?;
    let (mut layers, config, lease) = match fork_of {
        Some(snapshot) => snapshot_layers(&store, home, reference, snapshot)?,
        None => {
            if reference == DEFAULT_IMAGE {
                msbvm_image::ensure_default_image(&store).map_err(Error::Image)?;
            }
            let resolved = store.resolve(reference).map_err(Error::Image)?;
            let lease = store.lease(&resolved).map_err(Error::Image)?;
            (resolved.lower_dirs, resolved.config, lease)
        }
    };
    if let Some(snapshot) = fork_of {
        layers.push(snapshot.join(msbvm_sdk::snapshots::LAYER_DIR));
    }
    let upper = dir.path().join(UPPER_DIR);
    let (_, max_open_handles) = fd_budgets(raise_fd_limit());
    let layered = LayeredConfig {
        max_open_handles,
        max_upper_bytes: disk_bytes,
        ..LayeredConfig::default()
    };
    let fs = LayeredFs::new(layers.clone(), &upper, layered)
        .map_err(Error::io(format!("opening the layers of {reference}")))?;
    Ok(ImageRoot {
        fs,
        defaults: exec_defaults(&config),
        config,
        lease,
        lower_dirs: layers,
    })
}

/// The layers a fork of `snapshot` (of an image root) lies on below the snapshot's own, the
/// image configuration, and a lease on the image store's layers among them. They are the
/// snapshot's (pinned in the store), not what `reference` names now: the image may have
/// been pulled again or removed since.
fn snapshot_layers(
    store: &msbvm_image::ImageStore,
    home: &Path,
    reference: &str,
    snapshot: &Path,
) -> Result<(Vec<PathBuf>, ImageConfig, LayerLease)> {
    let info = msbvm_sdk::snapshots::SnapshotInfo::read(snapshot)?;
    let Some(config) = info.image_config.clone() else {
        return Err(Error::InvalidConfig(format!(
            "snapshot {} does not record its image's configuration (image {reference}); take \
             it again",
            info.name
        )));
    };
    if let Some(gone) = info.lower_dirs.iter().find(|d| !d.is_dir()) {
        return Err(Error::InvalidConfig(format!(
            "snapshot {} lies on {}, which is gone; take the snapshot again",
            info.name,
            gone.display()
        )));
    }
    let snapshots = msbvm_sdk::snapshots::snapshots_dir(home);
    let in_store: Vec<PathBuf> = info
        .lower_dirs
        .iter()
        .filter(|d| !d.starts_with(&snapshots))
        .cloned()
        .collect();
    let lease = store.lease_layers(&in_store).map_err(Error::Image)?;
    Ok((info.lower_dirs, config, lease))
}

fn exec_defaults(config: &ImageConfig) -> ExecDefaults {
    ExecDefaults {
        env: config
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        workdir: config.working_dir.clone().filter(|w| !w.is_empty()),
        user: config.user.clone().filter(|u| !u.is_empty()),
        command: config
            .entrypoint
            .iter()
            .chain(config.cmd.iter())
            .cloned()
            .collect(),
    }
}

/// Rules put before the user's when the sandbox has secrets: whatever the user's policy
/// opens, the cloud metadata service (whose credentials would be a way around the secrets'
/// host binding) stays closed, to connections and in DNS answers.
pub const SECRET_HARDENING_RULES: &[&str] = &["metadata"];

/// The netstack's policy for `net`; `has_secrets` puts [`SECRET_HARDENING_RULES`] first.
pub fn policy(net: &NetworkSpec, has_secrets: bool) -> Result<Policy> {
    let default = if net.default_allow {
        Action::Allow
    } else {
        Action::Deny
    };
    let mut policy = Policy::new(default);
    if has_secrets {
        for rule in SECRET_HARDENING_RULES {
            let parsed = Rule::parse(rule)
                .map_err(|e| Error::InvalidConfig(format!("built-in rule {rule:?}: {e}")))?;
            policy.push(Action::Deny, parsed);
        }
    }
    for rule in &net.rules {
        let parsed = Rule::parse(&rule.rule)
            .map_err(|e| Error::InvalidConfig(format!("network rule {:?}: {e}", rule.rule)))?;
        let action = if rule.allow {
            Action::Allow
        } else {
            Action::Deny
        };
        policy.push(action, parsed);
    }
    Ok(policy)
}

pub(crate) fn network(
    net: &NetworkSpec,
    policy: Policy,
    interception: Option<crate::tls_setup::Interception>,
    dir: &SandboxDir,
    plugins: &Arc<msbvm_plugins::Chain>,
) -> Result<(NetStackHandle, DeviceSpec, NetworkSetup)> {
    let (tls, secrets) = match interception {
        Some(i) => (Some(i.tls), i.secrets),
        None => (None, Vec::new()),
    };
    let defaults = NetConfig::default();
    let cap = |default: usize| net.max_connections.map_or(default, |n| n as usize);
    let config = NetConfig {
        mtu: usize::from(net.mtu),
        max_tcp_flows: cap(defaults.max_tcp_flows),
        max_udp_flows: cap(defaults.max_udp_flows),
        checksum_offload: true,
        segment_offload: true,
        published_ports: net
            .ports
            .iter()
            .map(|p| published(p.host, p.guest_port))
            .collect(),
        dns_upstream: if net.dns_servers.is_empty() {
            Upstream::System
        } else {
            Upstream::Servers(net.dns_servers.clone())
        },
        tls,
        secrets,
        bytes_per_sec: plugins.limits().net_bytes_per_sec,
        ..NetConfig::default()
    };
    let setup = NetworkSetup {
        address: config.guest_ip.octets(),
        prefix_len: config.prefix_len,
        gateway: config.gateway_ip.octets(),
        dns: vec![config.gateway_ip.octets()],
        mtu: net.mtu,
        hosts: vec![(
            config.host_alias_ip.octets(),
            msbvm_netstack::policy::HOST_ALIAS_NAME.to_string(),
        )],
    };
    let (device_fd, stack_fd) =
        frame_socketpair().map_err(Error::io("creating the network socket pair"))?;
    let events = event_sink(dir)?;
    let handle = NetStack::start_with_plugins(config, stack_fd, policy, events, plugins.clone())
        .map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
            ) {
                Error::InvalidConfig(format!("cannot publish a port: {e}"))
            } else {
                Error::io("starting the network stack")(e)
            }
        })?;
    let mtu = net.mtu;
    let device_fd = Arc::new(device_fd);
    // The device's worker runs on the stack's thread: see `WorkerHost`.
    let stack_thread = handle.device_host();
    let worker_host =
        WorkerHost::new(move |worker| stack_thread.host(Box::new(StackHosted(worker))));
    let spec = DeviceSpec::new("virtio-net", move || {
        let backend = device_fd.try_clone()?;
        let device = Net::new(NetDeviceConfig {
            mac: GUEST_MAC,
            mtu,
            backend,
            checksum_offload: true,
            // The netstack runs with checksum offload: it never verifies them.
            backend_ignores_checksums: true,
            guest_tso: true,
            host_tso: true,
            host: Some(worker_host.clone()),
        })?;
        Ok(Box::new(device) as Box<dyn msbvm_virtio::VirtioDevice>)
    });
    Ok((handle, spec, setup))
}

/// The virtio-net worker as a device the netstack runs on its thread.
struct StackHosted(HostedWorker);

impl msbvm_netstack::HostedDevice for StackHosted {
    fn ready_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.ready_fd()
    }

    fn run(&mut self) -> bool {
        self.0.run()
    }
}

/// The netstack's view of a published port.
pub(crate) fn published(host: SocketAddr, guest_port: u16) -> PublishedPort {
    let mut port = PublishedPort::tcp(host.port(), guest_port);
    port.host_addr = host;
    port
}

/// Network events go to the runtime log (the netstack logs them), as
/// JSON lines to [`NET_EVENTS_FILE`] (capped and rotated,
/// [`msbvm_sdk::logfile`]), which the SDK tails. (The stack itself tells the plugins.)
fn event_sink(dir: &SandboxDir) -> Result<EventSink> {
    let path: PathBuf = dir.path().join(NET_EVENTS_FILE);
    let file = CappedLog::open(&path, max_bytes_from_env())
        .map_err(Error::io(format!("opening {}", path.display())))?;
    let file = Mutex::new(file);
    Ok(Arc::new(move |event: NetEvent| {
        if let Ok(mut line) = serde_json::to_vec(&event) {
            line.push(b'\n');
            if let Ok(mut f) = file.lock() {
                // One write per line, so a reader never sees half an event.
                let _ = f.write_all(&line);
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_fs::abi::{self, opcode, request};
    use msbvm_fs::hooks::DenyPaths;
    use msbvm_fs::{MemoryFs, ROOT_INODE};

    fn errno_of(server: &Server<Box<dyn FileSystem>>, op: u32, unique: u64, args: &[u8]) -> i32 {
        let mut reply = Vec::new();
        server
            .handle(&request(op, unique, ROOT_INODE, args), &mut reply)
            .unwrap();
        let header = abi::OutHeader::parse(&reply).expect("a reply header");
        -header.error
    }

    #[test]
    fn secrets_keep_the_metadata_service_closed() {
        use msbvm_netstack::policy::{FlowInfo, Protocol};
        let net = NetworkSpec {
            rules: vec![msbvm_sdk::spec::NetRule {
                allow: true,
                rule: "metadata".into(),
            }],
            ..NetworkSpec::default()
        };
        let flow = FlowInfo {
            protocol: Protocol::Tcp,
            dst: "169.254.169.254:80".parse().unwrap(),
            to_host_alias: false,
        };
        let names = || vec!["metadata.example".to_string()];
        // The user opened it; with a secret it is closed again, to flows and DNS answers.
        let open = policy(&net, false).unwrap();
        assert!(open.check_flow_named(&flow, names).is_allowed());
        let hardened = policy(&net, true).unwrap();
        assert!(!hardened.check_flow_named(&flow, names).is_allowed());
        assert!(!hardened.allows_dns_answer("x.example", flow.dst.ip()));
        let public = FlowInfo {
            dst: "93.184.216.34:443".parse().unwrap(),
            ..flow
        };
        assert!(hardened.check_flow_named(&public, names).is_allowed());
    }

    #[test]
    fn fd_budgets_stay_under_the_limit() {
        let (cache, handles) = fd_budgets(1024);
        assert!(cache + handles <= 1024 / 2, "{cache} + {handles}");
        let (cache, handles) = fd_budgets(1 << 20);
        let defaults = PassthroughConfig::default();
        assert_eq!(
            (cache, handles),
            (defaults.max_open_fds, defaults.max_open_handles)
        );
        assert!(raise_fd_limit() >= 1024);
    }

    #[test]
    fn extension_hooks_see_guest_requests() {
        let fs = MemoryFs::new();
        fs.add_file("secret", b"s", 0o644).unwrap();
        fs.add_file("public", b"p", 0o644).unwrap();
        let hooks: Vec<Arc<dyn Hook>> = vec![Arc::new(DenyPaths::new(["/secret"]))];
        let server = fs_server(Arc::new(fs), false, &hooks);
        let mut init = Vec::new();
        for word in [7u32, 41, 128 << 10, 0] {
            init.extend_from_slice(&word.to_le_bytes());
        }
        init.extend_from_slice(&[0; 48]);
        assert_eq!(errno_of(&server, opcode::INIT, 1, &init), 0);
        assert_eq!(errno_of(&server, opcode::LOOKUP, 2, b"public\0"), 0);
        assert_eq!(
            errno_of(&server, opcode::LOOKUP, 3, b"secret\0"),
            libc::EACCES
        );
    }
}
