//! Snapshots taken of this runtime's sandbox, and this sandbox started as a fork of one.
//!
//! Taking one ([`SnapshotJob`]): the VM thread pauses the guest, writes the VM's state and
//! memory into `snapshot.pending/vm`, and, still paused, the image root's writable layer is
//! copied into `snapshot.pending/layer` as a read-only layer (the copy matches the saved
//! memory: the guest's page cache and the layer agree). The source goes on with its own
//! writable layer, which holds everything the frozen copy does. The client moves the
//! directory to `$MSBVM_HOME/snapshots` ([`msbvm_sdk::snapshots`]).
//!
//! Forking: the devices are built as the source's were, with the frozen layer between the
//! image and a fresh writable layer, the VM is restored instead of booted, and when the agent
//! reconnects (the vsock device reset its connections) it is given the fork's identity
//! ([`give_identity`]) before the fork is reported ready.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msbvm_protocol::boot::BootConfig;
use msbvm_protocol::{ForkIdentity, GuestMessage, HostMessage};
use msbvm_vmm::snapshot::Snapshot;
use msbvm_vmm::{BootSource, VmConfig, VmControl};

use msbvm_fs::LayeredFs;
use msbvm_sdk::control::ControlResponse;
use msbvm_sdk::exec::describe;
use msbvm_sdk::framing::write_blocking;
use msbvm_sdk::paths::SandboxDir;
use msbvm_sdk::snapshots::{SnapshotInfo, LAYER_DIR, PENDING_DIR, VM_DIR};
use msbvm_sdk::spec::{RootSpec, VolumeSource};
use msbvm_sdk::{Error, Result, RuntimeArgs};

/// How long the agent of a fork may take for each step of taking its identity (connecting,
/// the hello, each round trip): a hundred forks restored at once in a one-CPU emulated
/// machine took over 10 s.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Rounds are repeated for a better clock only while all of them took less than this: a
/// guest that slow gains nothing from more, and its readiness would wait.
const CLOCK_BUDGET: Duration = Duration::from_secs(3);
/// Bytes of host randomness each fork's kernel gets.
const FORK_ENTROPY: usize = 64;
/// Identity round trips tried to get the fork's clock within [`CLOCK_TOLERANCE`].
const IDENTITY_ROUNDS: usize = 5;
/// The longest identity round trip accepted: the most the fork's clock may be behind.
const CLOCK_TOLERANCE: Duration = Duration::from_millis(200);

/// A snapshot about to be taken, with everything it needs from the supervisor.
pub struct SnapshotJob {
    control: VmControl,
    pending: PathBuf,
    layered: Option<Arc<LayeredFs>>,
    info: SnapshotInfo,
}

impl SnapshotJob {
    /// The snapshot's name.
    pub fn name(&self) -> String {
        self.info.name.clone()
    }

    /// Checks that the sandbox can be snapshotted (a fork of it must not share anything
    /// writable with it) and clears the pending directory. The error is for the client.
    pub fn new(
        args: &RuntimeArgs,
        dir: &SandboxDir,
        control: &VmControl,
        devices: Option<&crate::devices::Devices>,
        name: String,
    ) -> std::result::Result<Self, String> {
        msbvm_sdk::paths::validate_name(&name).map_err(|e| e.to_string())?;
        let spec = &args.spec;
        if let RootSpec::HostDir {
            path,
            read_only: false,
        } = &spec.root
        {
            return Err(format!(
                "the sandbox's root is the host directory {}, writable: its forks would all \
                 change it; snapshot a sandbox with an image root or a read-only one",
                path.display()
            ));
        }
        for volume in &spec.volumes {
            match &volume.source {
                VolumeSource::Named(name) => {
                    return Err(format!(
                        "volume {name} at {} is a named volume, which one sandbox holds at a \
                         time: its forks could not mount it",
                        volume.guest_path
                    ))
                }
                VolumeSource::Host(path) if !volume.read_only => {
                    return Err(format!(
                        "the host directory {} is mounted writable at {}: the forks would all \
                         change it; mount it read-only to snapshot the sandbox",
                        path.display(),
                        volume.guest_path
                    ))
                }
                VolumeSource::Host(_) => {}
            }
        }
        let devices = devices.ok_or("the sandbox is not running yet")?;
        let pending = dir.path().join(PENDING_DIR);
        let _ = std::fs::remove_dir_all(&pending);
        std::fs::create_dir_all(pending.join(VM_DIR))
            .map_err(|e| format!("creating {}: {e}", pending.display()))?;
        let mut spec = spec.clone();
        spec.fork_of = None;
        Ok(SnapshotJob {
            control: control.clone(),
            pending,
            layered: devices.root_layered.clone(),
            info: SnapshotInfo {
                name,
                source: args.name.clone(),
                created: msbvm_sdk::state::unix_now(),
                msbvm_version: env!("CARGO_PKG_VERSION").into(),
                cpus: args.cpus,
                memory_mib: args.memory_mib,
                env: args.env.clone(),
                spec,
                lower_dirs: devices.lower_dirs.clone(),
                image_config: devices.image_config.clone(),
                paused_ms: 0.0,
            },
        })
    }

    /// Takes the snapshot; the answer for the client. Nothing is left behind on failure.
    pub fn run(mut self) -> ControlResponse {
        let started = Instant::now();
        let layer = self.pending.join(LAYER_DIR);
        let result = match self.layered.take() {
            Some(fs) => self.control.snapshot_with(
                &self.pending.join(VM_DIR),
                Box::new(move || {
                    fs.freeze_upper(&layer)
                        .map_err(|e| format!("freezing the writable layer: {e}"))
                }),
            ),
            None => self.control.snapshot(&self.pending.join(VM_DIR)),
        };
        let answer = result.map_err(|e| e.to_string()).and_then(|header| {
            // The pause ended when `snapshot` returned; the header knows the memory.
            self.info.paused_ms = started.elapsed().as_secs_f64() * 1e3;
            tracing::info!(
                name = self.info.name,
                ms = self.info.paused_ms,
                memory_mib = header.memory_mib,
                "snapshot taken"
            );
            self.info.write(&self.pending).map_err(|e| e.to_string())
        });
        match answer {
            Ok(()) => ControlResponse::Snapshotted {
                paused_us: (self.info.paused_ms * 1e3) as u64,
            },
            Err(message) => {
                tracing::warn!("snapshot {}: {message}", self.info.name);
                let _ = std::fs::remove_dir_all(&self.pending);
                ControlResponse::Error {
                    message: format!("taking snapshot {}: {message}", self.info.name),
                }
            }
        }
    }
}

/// Reads and checks the VM snapshot of snapshot directory `dir`.
pub fn open_vm_snapshot(dir: &Path) -> Result<Arc<Snapshot>> {
    Snapshot::open(&dir.join(VM_DIR))
        .map(Arc::new)
        .map_err(|e| Error::InvalidConfig(format!("snapshot {}: {e}", dir.display())))
}

/// Makes `config` restore `snapshot` instead of booting.
pub fn restore_config(config: &mut VmConfig, snapshot: Arc<Snapshot>) {
    if let BootSource::Linux { initrd, .. } = &mut config.boot {
        // The guest unpacked its initramfs long ago; it is in the snapshot's memory.
        *initrd = None;
    }
    config.restore = Some(snapshot);
}

/// Gives the agent of this fork (reached through the vsock device's socket `uds`) its
/// identity: `name` as hostname, fresh randomness for its kernel, the host's wall clock,
/// and `online_cpus` (when it runs on fewer vCPUs than its snapshot's).
///
/// The clock is read just before the message goes, and the guest sets it some time
/// within the round trip that follows: that round trip bounds the guest clock's error.
/// Twenty forks restored at once in a one-CPU emulated machine took seconds per round trip
/// (their clocks were seconds behind), so a slow round is repeated, up to
/// [`IDENTITY_ROUNDS`] times and while all rounds took less than [`CLOCK_BUDGET`], until
/// one takes at most [`CLOCK_TOLERANCE`]; taking the identity again only adds entropy and
/// sets the same names.
///
/// The identity also carries the fork's own secret placeholders and interception CA from
/// `boot` (the fork's devices' boot configuration): the guest's were the snapshot's.
pub fn give_identity(
    uds: &Path,
    name: &str,
    online_cpus: Option<u8>,
    boot: &BootConfig,
) -> Result<()> {
    let (mut reader, mut writer) = crate::agent_link::connect_greeted(uds, IDENTITY_TIMEOUT)?;
    let mut round_trip = Duration::ZERO;
    let rounds_start = Instant::now();
    let mac = match boot.network {
        Some(_) => Some(fork_mac()?),
        None => None,
    };
    for _ in 0..IDENTITY_ROUNDS {
        let mut entropy = vec![0u8; FORK_ENTROPY];
        getrandom::fill(&mut entropy)
            .map_err(|e| Error::io("reading host randomness")(std::io::Error::other(e)))?;
        let sent = std::time::Instant::now();
        let identity = ForkIdentity {
            hostname: name.into(),
            entropy,
            unix_time_ns: unix_now_ns(),
            online_cpus: online_cpus.unwrap_or(0),
            tls: boot.tls.clone(),
            secret_env: boot.secret_env.clone(),
            mac,
        };
        let frame_err = crate::agent_link::frame_error;
        write_blocking(&mut writer, &HostMessage::Identity(identity)).map_err(frame_err)?;
        match reader.read_message::<GuestMessage>().map_err(frame_err)? {
            Some(GuestMessage::IdentityTaken) => {}
            Some(GuestMessage::Error { message }) => {
                return Err(Error::Protocol {
                    peer: "the guest agent",
                    detail: message,
                })
            }
            Some(other) => {
                return Err(Error::Protocol {
                    peer: "the guest agent",
                    detail: format!("expected IdentityTaken, got {}", describe(&other)),
                })
            }
            None => return Err(Error::ConnectionLost),
        }
        round_trip = sent.elapsed();
        if round_trip <= CLOCK_TOLERANCE || rounds_start.elapsed() >= CLOCK_BUDGET {
            break;
        }
    }
    if round_trip <= CLOCK_TOLERANCE {
        return Ok(());
    }
    tracing::warn!(
        "the fork's wall clock may be up to {} ms behind: the agent took that long to set it",
        round_trip.as_millis()
    );
    Ok(())
}

/// A fork's MAC address: random, locally administered, unicast. Every sandbox booted from
/// scratch has [`crate::devices::GUEST_MAC`]; each fork is told one of its own.
fn fork_mac() -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    getrandom::fill(&mut mac)
        .map_err(|e| Error::io("reading host randomness")(std::io::Error::other(e)))?;
    mac[0] = (mac[0] & !1) | 2;
    Ok(mac)
}

/// The host's wall clock, in nanoseconds since the Unix epoch.
fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_sdk::spec::{SandboxSpec, VolumeSpec};
    use std::ffi::OsString;

    /// The identity a fake agent received, after answering `Hello`.
    fn identity_of(m: Option<HostMessage>) -> ForkIdentity {
        match m {
            Some(HostMessage::Identity(identity)) => identity,
            other => panic!("expected an identity, got {other:?}"),
        }
    }

    #[test]
    fn fork_macs_are_local_unicast_and_their_own() {
        let (a, b) = (fork_mac().unwrap(), fork_mac().unwrap());
        for mac in [a, b] {
            assert_eq!(mac[0] & 3, 2, "{mac:02x?}");
            assert_ne!(mac, crate::devices::GUEST_MAC);
        }
        assert_ne!(a, b);
    }

    #[test]
    fn a_slow_identity_round_trip_is_repeated_with_a_fresh_clock() {
        let tmp = tempfile::TempDir::new().unwrap();
        let uds = tmp.path().join("vsock.sock");
        let fake = msbvm_sdk::test_support::FakeAgent::spawn(&uds, 1, |s| {
            s.hello();
            let first = identity_of(s.recv());
            assert_eq!((first.hostname.as_str(), first.online_cpus), ("f-1", 2));
            assert_eq!(first.secret_env, [("K".to_string(), "ph".to_string())]);
            // A fork without a network keeps the snapshot's MAC (it has none to change).
            assert_eq!(first.mac, None);
            // A guest too busy to answer in time: the host asks again.
            std::thread::sleep(CLOCK_TOLERANCE * 2);
            s.send(&GuestMessage::IdentityTaken);
            let second = identity_of(s.recv());
            assert!(second.unix_time_ns >= first.unix_time_ns + 2 * 200_000_000);
            assert_ne!(second.entropy, first.entropy);
            s.send(&GuestMessage::IdentityTaken);
        });
        let boot = BootConfig {
            secret_env: vec![("K".into(), "ph".into())],
            ..BootConfig::default()
        };
        give_identity(&uds, "f-1", Some(2), &boot).unwrap();
        fake.join();
    }

    #[test]
    fn an_agent_that_refuses_the_identity_fails_the_fork() {
        let tmp = tempfile::TempDir::new().unwrap();
        let uds = tmp.path().join("vsock.sock");
        let fake = msbvm_sdk::test_support::FakeAgent::spawn(&uds, 1, |s| {
            s.hello();
            identity_of(s.recv());
            s.send(&GuestMessage::Error {
                message: "no".into(),
            });
        });
        let e = give_identity(&uds, "f-1", None, &BootConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no"), "{e}");
        fake.join();
    }

    /// What `SnapshotJob::new` answers for a sandbox of `spec` that is not running.
    fn answer(spec: SandboxSpec) -> String {
        let argv = ["--name", "src", "--home", "/h"];
        let mut args = RuntimeArgs::parse(argv.into_iter().map(OsString::from)).unwrap();
        args.spec = spec;
        let dir = SandboxDir::in_home(Path::new("/h"), "src").unwrap();
        match SnapshotJob::new(&args, &dir, &VmControl::new(), None, "snap".into()) {
            Ok(_) => "accepted".into(),
            Err(e) => e,
        }
    }

    fn volume(source: VolumeSource, read_only: bool) -> VolumeSpec {
        VolumeSpec {
            source,
            guest_path: "/data".into(),
            read_only,
        }
    }

    #[test]
    fn sandboxes_whose_forks_would_share_a_writable_directory_are_refused() {
        let writable_root = SandboxSpec {
            root: RootSpec::HostDir {
                path: "/srv/root".into(),
                read_only: false,
            },
            ..SandboxSpec::default()
        };
        assert!(answer(writable_root).contains("host directory /srv/root, writable"));
        let rw_volume = SandboxSpec {
            volumes: vec![volume(VolumeSource::Host("/srv/d".into()), false)],
            ..SandboxSpec::default()
        };
        assert!(answer(rw_volume).contains("mount it read-only"));
        let named = SandboxSpec {
            volumes: vec![volume(VolumeSource::Named("cache".into()), true)],
            ..SandboxSpec::default()
        };
        assert!(answer(named).contains("named volume"));
        // What forks may share passes these checks (and then needs a running sandbox).
        let fine = SandboxSpec {
            volumes: vec![volume(VolumeSource::Host("/srv/d".into()), true)],
            ..SandboxSpec::default()
        };
        assert!(answer(fine).contains("not running yet"));
    }
}
