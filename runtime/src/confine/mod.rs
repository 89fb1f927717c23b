//! Confining the runtime process once its devices are open (what Firecracker's jailer does
//! for Firecracker), so that a bug in a device or in the netstack is not a host compromise.
//!
//! Every thread of a runtime confines itself when it starts (filters, Landlock domains and
//! credentials are per thread at the system-call level, and threads inherit them): the
//! runtime's own threads call [`thread_started`] directly; the VMM, device and netstack
//! threads call it through the hooks of `msbvm_virtio::confine` and
//! `msbvm_netstack::seccomp`. For each thread, in order:
//! 1. when the runtime runs as root: switch to the runtime user ([`identity`]), keeping only
//!    the capabilities the thread's work needs;
//! 2. Landlock: only the sandbox's state directory, its image layers (read-only), its
//!    volumes and `--rootfs` directory, `/dev/kvm` and a few system files ([`landlock`]);
//! 3. `PR_SET_NO_NEW_PRIVS` and the thread kind's seccomp allowlist ([`seccomp`]); a call
//!    outside it is reported on the runtime log and ends the runtime with SIGSYS.
//!
//! The main thread confines itself (as `supervisor`) after set-up; the VM thread (as `vm`)
//! after it created the vCPUs. A kernel without seccomp or Landlock gives one warning line;
//! `MSBVM_CONFINE=0` turns all of it off (for debugging).

pub mod identity;
pub mod landlock;
pub mod seccomp;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use msbvm_sdk::paths::SandboxDir;
use msbvm_sdk::spec::{RootSpec, SandboxSpec, VolumeSource};
use msbvm_sdk::{Error, Result};

pub use identity::Identity;

/// Set to `0` to run the runtime unconfined.
pub const CONFINE_ENV: &str = "MSBVM_CONFINE";

/// Whether this runtime will switch to another user (it runs as root, confinement is on and
/// [`identity::UID_ENV`] is not `0`).
pub fn switches_user() -> bool {
    std::env::var(CONFINE_ENV).as_deref() != Ok("0") && matches!(identity::target(), Ok(Some(_)))
}

/// Where hosts keep their TLS trust roots (read-only to a runtime with a network; the ones
/// that do not exist are left out).
pub const TRUST_ROOT_DIRS: &[&str] = &[
    "/etc/ssl",
    "/etc/pki",
    "/etc/ca-certificates",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
    "/usr/lib/ssl",
];

/// What a runtime will confine itself to, decided before any thread starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The filesystem left after set-up.
    pub paths: landlock::Paths,
    /// The user to become (a root runtime only).
    pub identity: Option<Identity>,
    /// Capabilities the virtio-fs threads keep (bit set; see [`identity`]).
    pub fs_capabilities: u64,
    /// Capabilities the supervisor keeps (bit set): `CAP_NET_BIND_SERVICE` for a root
    /// runtime's sandbox with a network, whose ports published while it runs (bound on the
    /// supervisor) may be privileged.
    pub supervisor_capabilities: u64,
    /// The sandbox's state directory (handed to [`Plan::identity`]).
    pub state_dir: PathBuf,
}

/// The plan for a sandbox: `None` when [`CONFINE_ENV`] turns confinement off.
pub fn plan(spec: &SandboxSpec, dir: &SandboxDir, home: &Path) -> Result<Option<Plan>> {
    if std::env::var(CONFINE_ENV).as_deref() == Ok("0") {
        return Ok(None);
    }
    let mut paths = landlock::Paths {
        read_write: vec![dir.path().to_path_buf()],
        read_only: vec![home.join("images")],
    };
    let (mut writable_share, mut readable_share) = (false, false);
    let mut writable_paths = Vec::new();
    let mut share = |path: PathBuf, read_only: bool| {
        if read_only {
            readable_share = true;
            paths.read_only.push(path);
        } else {
            writable_share = true;
            writable_paths.push(path.clone());
            paths.read_write.push(path);
        }
    };
    // Landlock rules name existing directories: the image store and named volumes are made
    // now (set-up would make them a moment later), or they would stay out of reach.
    match &spec.root {
        RootSpec::HostDir { path, read_only } => share(path.clone(), *read_only),
        RootSpec::Image { .. } => drop(super::devices::image_store(home)?),
        RootSpec::Initramfs => {}
    }
    if let Some(snapshot) = &spec.fork_of {
        // A fork reads its snapshot's frozen layer (the virtio-fs threads) and nothing
        // else of it once running (the VM thread maps the memory before it confines); a
        // snapshot of a fork lies on the frozen layer of that fork's snapshot too.
        share(snapshot.clone(), true);
        let info = msbvm_sdk::snapshots::SnapshotInfo::read(snapshot)?;
        let snapshots = msbvm_sdk::snapshots::snapshots_dir(home);
        // One that is gone is reported by the set-up, with the snapshot's name.
        let layers = info.lower_dirs.iter();
        for layer in layers.filter(|d| d.starts_with(&snapshots) && d.is_dir()) {
            share(layer.clone(), true);
        }
    }
    for volume in &spec.volumes {
        let path = match &volume.source {
            VolumeSource::Host(p) => p.clone(),
            VolumeSource::Named(name) => msbvm_sdk::volumes::create(home, name)?.data,
        };
        share(path, volume.read_only);
    }
    if spec.network.enabled {
        // The network stack reads the host's trust roots to verify intercepted upstreams.
        paths
            .read_only
            .extend(TRUST_ROOT_DIRS.iter().map(PathBuf::from));
    }
    let identity = identity::target().map_err(Error::InvalidConfig)?;
    // The layered upper (in the state directory) and a read-write passthrough share both
    // keep what the guest asked for (owners, set-id bits, device types) in xattrs: on a
    // filesystem without user xattrs those are `trusted.*`, which need CAP_SYS_ADMIN.
    let trusted = identity.is_some()
        && ((matches!(spec.root, RootSpec::Image { .. })
            && identity::needs_trusted_xattrs(dir.path()))
            || writable_paths
                .iter()
                .any(|p| identity::needs_trusted_xattrs(p)));
    let mut fs_capabilities = identity::fs_capabilities(writable_share, trusted);
    // Read-only shares, and an image's layers (unpacked by the store as its own user, with
    // the image's modes), are read whatever their host modes say.
    if (readable_share && !writable_share) || matches!(spec.root, RootSpec::Image { .. }) {
        fs_capabilities |= 1 << identity::CAP_DAC_READ_SEARCH;
    }
    let supervisor_capabilities = if identity.is_some() && spec.network.enabled {
        1 << identity::CAP_NET_BIND_SERVICE
    } else {
        0
    };
    Ok(Some(Plan {
        paths: paths.with_system_paths(),
        identity,
        fs_capabilities,
        supervisor_capabilities,
        state_dir: dir.path().to_path_buf(),
    }))
}

/// The confinement every thread applies to itself.
struct Jail {
    ruleset: Option<::landlock::RulesetCreated>,
    identity: Option<Identity>,
    fs_capabilities: u64,
    supervisor_capabilities: u64,
    seccomp: bool,
    state_dir: PathBuf,
}

static JAIL: OnceLock<Jail> = OnceLock::new();

impl Jail {
    /// The capabilities a thread of kind `kind` keeps after the user switch (bit set).
    fn capabilities(&self, kind: &str) -> u64 {
        match kind {
            "virtio-fs" | "vcpu" => self.fs_capabilities,
            "supervisor" => self.supervisor_capabilities,
            _ => 0,
        }
    }
}

/// Makes every thread that starts from now on (and the ones that call [`thread_started`]
/// later) confine itself by `plan`. Call once, before the runtime starts its threads.
pub fn enable(plan: Plan) -> Result<()> {
    let seccomp = msbvm_virtio::confine::seccomp_available();
    if !seccomp {
        tracing::warn!(
            "this kernel has no seccomp filters: the runtime runs without system-call allowlists"
        );
    }
    let abi = landlock::supported();
    let ruleset = if abi > 0 {
        Some(landlock::ruleset(&plan.paths).map_err(|e| Error::Runtime {
            message: format!("creating the Landlock ruleset: {e}"),
            log_tail: String::new(),
        })?)
    } else {
        tracing::warn!("this kernel has no Landlock (or it is off): the runtime's filesystem access is not restricted");
        None
    };
    seccomp::install_reporter().map_err(Error::io("installing the SIGSYS reporter"))?;
    fix_malloc_arenas();
    warm_up_random();
    if plan.identity.is_some() && plan.fs_capabilities & 1 << identity::CAP_SYS_ADMIN != 0 {
        tracing::info!(
            "the virtio-fs threads keep CAP_SYS_ADMIN: the state directory's or a read-write \
             share's filesystem has no user xattrs, so the guest's metadata goes to trusted.* \
             xattrs"
        );
    }
    tracing::info!(
        seccomp,
        landlock_abi = abi,
        user = ?plan.identity,
        fs_capabilities = format!("{:#x}", plan.fs_capabilities),
        supervisor_capabilities = format!("{:#x}", plan.supervisor_capabilities),
        read_write = ?plan.paths.read_write,
        read_only = ?plan.paths.read_only,
        "confinement planned"
    );
    let jail = Jail {
        ruleset,
        identity: plan.identity,
        fs_capabilities: plan.fs_capabilities,
        supervisor_capabilities: plan.supervisor_capabilities,
        seccomp,
        state_dir: plan.state_dir,
    };
    if JAIL.set(jail).is_err() {
        return Err(Error::Runtime {
            message: "the runtime's confinement was enabled twice".into(),
            log_tail: String::new(),
        });
    }
    msbvm_virtio::confine::set_thread_hook(thread_started);
    msbvm_netstack::seccomp::set_thread_hook(thread_started);
    msbvm_plugins::set_thread_hook(thread_started);
    Ok(())
}

/// Draws random bytes once before any thread is confined: a static build's OS random source
/// opens `/dev/random` and `/dev/urandom` on first use and keeps the descriptor, so no
/// confined thread (some may not open files) has to open them later.
fn warm_up_random() {
    if let Err(e) = getrandom::fill(&mut [0u8; 16]) {
        tracing::warn!("the OS random source failed before confinement: {e}");
    }
}

/// Fixes glibc's limit of malloc arenas now: otherwise the first thread that needs a ninth
/// arena reads `/sys/devices/system/cpu/online` to compute it, and a confined thread may not
/// open files.
fn fix_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cpus * 8).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tunable of the allocator.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// Gives the state directory (recursively) to the runtime user, so that the confined
/// threads can still write it; a no-op without a user switch. The main thread calls it
/// before the VM starts.
pub fn hand_over_state() -> Result<()> {
    match JAIL.get() {
        Some(Jail {
            identity: Some(id),
            state_dir,
            ..
        }) => identity::hand_over(state_dir, *id, true)
            .map_err(Error::io(format!("handing {} over", state_dir.display()))),
        _ => Ok(()),
    }
}

/// Confines the calling thread as a thread of kind `kind` (see [`seccomp::KINDS`]); a no-op
/// unless [`enable`] ran. A failure ends the runtime: it never runs half-confined.
pub fn thread_started(kind: &'static str) {
    let Some(jail) = JAIL.get() else { return };
    if let Err(e) = confine(jail, kind) {
        tracing::error!("cannot confine the runtime's {kind} thread: {e}; stopping");
        eprintln!("msbvm runtime: cannot confine the {kind} thread: {e}");
        // SAFETY: ending the process at once is the safe outcome here.
        unsafe { libc::_exit(125) };
    }
}

/// Drops every capability of the calling thread, a thread the confined supervisor started
/// (it shares the supervisor's filter and Landlock domain, not its capabilities); a no-op
/// without a user switch. A failure ends the runtime, as in [`thread_started`].
pub fn drop_capabilities() {
    let Some(Jail {
        identity: Some(_), ..
    }) = JAIL.get()
    else {
        return;
    };
    if let Err(e) = identity::set_capabilities(0) {
        tracing::error!("cannot drop a thread's capabilities: {e}; stopping");
        eprintln!("msbvm runtime: cannot drop a thread's capabilities: {e}");
        // SAFETY: ending the process at once is the safe outcome here.
        unsafe { libc::_exit(125) };
    }
}

fn confine(jail: &Jail, kind: &'static str) -> std::result::Result<(), String> {
    let ruleset = match &jail.ruleset {
        Some(r) => Some(
            r.try_clone()
                .map_err(|e| format!("Landlock ruleset: {e}"))?,
        ),
        None => None,
    };
    if let Some(id) = jail.identity {
        if kind == "vm" {
            // The VM thread bound the vsock socket and opened the console log as root.
            identity::hand_over(&jail.state_dir, id, false)
                .map_err(|e| format!("handing over {}: {e}", jail.state_dir.display()))?;
        }
        identity::switch_thread(id, jail.capabilities(kind))
            .map_err(|e| format!("switching to {id:?}: {e}"))?;
    }
    if let Some(ruleset) = ruleset {
        ruleset
            .restrict_self()
            .map_err(|e| format!("Landlock: {e}"))?;
    }
    if jail.seccomp {
        match seccomp::program(kind) {
            Some(program) => {
                let program = program.map_err(|e| format!("seccomp filter: {e}"))?;
                msbvm_virtio::confine::install(&program).map_err(|e| format!("seccomp: {e}"))?;
            }
            None => tracing::warn!("no seccomp filter for thread kind {kind}"),
        }
    }
    tracing::debug!(kind, "thread confined");
    Ok(())
}
