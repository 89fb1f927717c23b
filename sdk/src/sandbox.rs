//! [`Sandbox`]: create, find, list, run processes in, stop and remove sandboxes.
//!
//! A sandbox is created by [`SandboxBuilder::create`], which starts its runtime process and
//! returns once the guest agent is ready. Any process can reach a running sandbox by name
//! ([`Sandbox::get`]) through its state directory.
//!
//! Lifetime: an *attached* sandbox (the default) stops when its creator exits or drops the
//! last clone of the handle `create` returned, and leaves nothing behind. A *detached* one
//! ([`SandboxBuilder::detached`]) runs until stopped and keeps its record and logs until
//! removed.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use msbvm_protocol::BootTimes;
use serde::Serialize;

use crate::control::ControlClient;
use crate::error::{Error, Result};
use crate::exec::{ExecOptions, ExecOutput, ExecStream};
use crate::launch::{launch, runtime_binary};
use crate::limits::AgentLimits;
use crate::paths::{msbvm_home, sandboxes_dir, validate_name, SandboxDir};
use crate::report::ReadyInfo;
use crate::runtime_args::RuntimeArgs;
use crate::secrets::Secret;
use crate::spec::{CaScope, NetRule, PortSpec, RootSpec, SandboxSpec, TmpfsSpec, VolumeSpec};
use crate::state::{self, StateRecord, Status};

/// Default vCPU count.
pub const DEFAULT_CPUS: u8 = 1;
/// Default guest memory in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// The most vCPUs a sandbox can have (the VMM's limit; the runtime's tests check they agree).
pub const MAX_CPUS: u8 = 254;
/// The least guest memory a sandbox can have, in MiB (the VMM's limit).
pub const MIN_MEMORY_MIB: u64 = 16;
/// The most guest memory a sandbox can have, in MiB (the VMM's limit).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// `n` as a vCPU count, checked against `1..=MAX_CPUS` (for bindings whose numbers are wider
/// than `u8`: a value out of range is an [`Error::InvalidConfig`] that says the range).
pub fn checked_cpus(n: i64) -> Result<u8> {
    u8::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_CPUS).contains(n))
        .ok_or_else(|| {
            Error::InvalidConfig(format!("cpus must be between 1 and {MAX_CPUS}, not {n}"))
        })
}

/// `n` as guest memory in MiB, checked against `MIN_MEMORY_MIB..=MAX_MEMORY_MIB` (see
/// [`checked_cpus`]).
pub fn checked_memory_mib(n: i64) -> Result<u64> {
    u64::try_from(n)
        .ok()
        .filter(|m| (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(m))
        .ok_or_else(|| {
            Error::InvalidConfig(format!(
                "memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, not {n}"
            ))
        })
}
/// Default boot timeout (from VM start to the agent's ready message); generous, because
/// under nested emulation a boot takes seconds.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default grace period of [`Sandbox::stop`] before the VM is forced off.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stop and kill wait for the runtime process to end.
const EXIT_WAIT: Duration = Duration::from_secs(15);

/// Configures a new sandbox; see [`Sandbox::builder`].
#[derive(Clone, Debug)]
pub struct SandboxBuilder {
    name: String,
    cpus: u8,
    memory_mib: u64,
    env: Vec<(String, String)>,
    detached: bool,
    ready_timeout: Duration,
    spec: SandboxSpec,
    limits: AgentLimits,
    /// Handed to the runtime through an inherited memory file, never in the spec.
    secrets: Vec<Secret>,
}

impl SandboxBuilder {
    /// Number of vCPUs (default 1).
    pub fn cpus(mut self, cpus: u8) -> Self {
        self.cpus = cpus;
        self
    }
    /// Bounds on what the handle `create` returns accepts from the guest agent (default
    /// [`AgentLimits::default`]).
    pub fn agent_limits(mut self, limits: AgentLimits) -> Self {
        self.limits = limits;
        self
    }
    /// Guest memory in MiB (default 512).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }
    /// An environment variable every process in the sandbox gets.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    /// Whether the sandbox outlives its creator (default false).
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }
    /// How long the boot may take once the VM starts (default 60 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
    /// The OCI image the root filesystem comes from (default
    /// [`crate::spec::DEFAULT_IMAGE`]); it must be in the local store
    /// (pulled when missing; see [`crate::images`]).
    pub fn image(mut self, reference: impl Into<String>) -> Self {
        self.spec.root = RootSpec::Image {
            reference: reference.into(),
        };
        self
    }
    /// Serves a host directory as the root filesystem instead of an image.
    pub fn root_dir(mut self, path: impl Into<PathBuf>, read_only: bool) -> Self {
        self.spec.root = RootSpec::HostDir {
            path: path.into(),
            read_only,
        };
        self
    }
    /// Sets where the root filesystem comes from.
    pub fn root(mut self, root: RootSpec) -> Self {
        self.spec.root = root;
        self
    }
    /// Mounts a host directory or a named volume.
    pub fn volume(mut self, volume: VolumeSpec) -> Self {
        self.spec.volumes.push(volume);
        self
    }
    /// Mounts a tmpfs.
    pub fn tmpfs(mut self, tmpfs: TmpfsSpec) -> Self {
        self.spec.tmpfs.push(tmpfs);
        self
    }
    /// Adds a plugin ([`msbvm_plugins`]); plugins run in the order added. Parse one from the
    /// CLI's form with [`msbvm_plugins::PluginSpec::parse`]. The sandbox fails to start if a
    /// plugin cannot start.
    pub fn plugin(mut self, plugin: msbvm_plugins::PluginSpec) -> Self {
        self.spec.plugins.push(plugin);
        self
    }
    /// Lets programs inside create peer sandboxes within `grant` ([`crate::spawn`]).
    pub fn allow_spawn(mut self, grant: crate::spawn::SpawnGrant) -> Self {
        self.spec.spawn = Some(grant);
        self
    }

    /// Limits the writable layer of an image root to `bytes` (default
    /// [`crate::spec::DEFAULT_DISK_SIZE`]); the guest gets `ENOSPC` past it.
    pub fn disk_size(mut self, bytes: u64) -> Self {
        self.spec.disk_size_bytes = Some(bytes);
        self
    }
    /// Gives the guest a network interface (default true).
    pub fn network(mut self, enabled: bool) -> Self {
        self.spec.network.enabled = enabled;
        self
    }
    /// Allows what `rule` matches (rules are checked in the order added; first match wins).
    pub fn net_allow(mut self, rule: impl Into<String>) -> Self {
        self.spec.network.rules.push(NetRule {
            allow: true,
            rule: rule.into(),
        });
        self
    }
    /// Denies what `rule` matches.
    pub fn net_deny(mut self, rule: impl Into<String>) -> Self {
        self.spec.network.rules.push(NetRule {
            allow: false,
            rule: rule.into(),
        });
        self
    }
    /// What happens to traffic no rule matches (default: allowed, after the built-in
    /// denials of private, loopback, link-local and metadata addresses and the host).
    pub fn net_default_allow(mut self, allow: bool) -> Self {
        self.spec.network.default_allow = allow;
        self
    }
    /// Publishes a guest TCP port on the host.
    pub fn publish(mut self, port: PortSpec) -> Self {
        self.spec.network.ports.push(port);
        self
    }
    /// Sets the guest interface's MTU (default 1500, at most 65520).
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.spec.network.mtu = mtu;
        self
    }
    /// Forwards the guest's allowed DNS queries to these servers instead of the host's.
    pub fn dns_servers(mut self, servers: Vec<std::net::SocketAddr>) -> Self {
        self.spec.network.dns_servers = servers;
        self
    }
    /// Caps the guest's open TCP connections (and, separately, UDP flows); default 256.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.spec.network.max_connections = Some(n);
        self
    }
    /// Default working directory of every exec.
    pub fn workdir(mut self, dir: impl Into<String>) -> Self {
        self.spec.workdir = Some(dir.into());
        self
    }
    /// Default user of every exec: `UID[:GID]` or a user name of the image.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.spec.user = Some(user.into());
        self
    }
    /// Adds a secret: the guest sees `NAME=<placeholder>` in every exec's environment and the
    /// network stack puts the value in place of the placeholder only in intercepted requests
    /// to the secret's hosts (see [`Secret`]). Turns on TLS interception for those hosts.
    pub fn secret(mut self, secret: Secret) -> Self {
        self.secrets.push(secret);
        self
    }
    /// Intercepts TLS connections to `pattern` (`HOST`, `*.SUFFIX` or `all`), so that HTTP
    /// rules apply inside them; the guest trusts the sandbox's CA.
    pub fn tls_intercept(mut self, pattern: impl Into<String>) -> Self {
        let pattern = pattern.into().to_ascii_lowercase();
        self.spec.network.tls.intercept.push(pattern);
        self
    }
    /// Never intercepts `host` (`HOST` or `*.SUFFIX`), for certificate-pinning clients.
    pub fn tls_bypass(mut self, host: impl Into<String>) -> Self {
        let host = host.into().to_ascii_lowercase();
        self.spec.network.tls.bypass.push(host);
        self
    }
    /// Trusts the CA certificates in the PEM file `path` for upstream servers, on top of
    /// the host's roots (private CAs).
    pub fn tls_upstream_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.spec.network.tls.upstream_cas.push(path.into());
        self
    }
    /// Which CA the guest trusts: the user's (default, made once under the data directory)
    /// or one made for this sandbox alone.
    pub fn tls_ca(mut self, scope: CaScope) -> Self {
        self.spec.network.tls.ca = scope;
        self
    }
    /// The whole filesystem and network description at once.
    pub fn spec(mut self, spec: SandboxSpec) -> Self {
        self.spec = spec;
        self
    }

    fn check(&mut self) -> Result<()> {
        validate_name(&self.name)?;
        crate::secrets::check_all(&self.secrets)?;
        if !self.secrets.is_empty() && !self.spec.network.enabled {
            return Err(Error::InvalidConfig(
                "secrets need the network (they are substituted by the network stack)".into(),
            ));
        }
        if self.spec.network.tls.is_requested() && !self.spec.network.enabled {
            return Err(Error::InvalidConfig(
                "TLS interception needs the network".into(),
            ));
        }
        self.spec.network.tls.check()?;
        checked_cpus(i64::from(self.cpus))?;
        checked_memory_mib(i64::try_from(self.memory_mib).unwrap_or(i64::MAX))?;
        crate::spec::checked_mtu(self.spec.network.mtu)?;
        if let Some((k, _)) = self
            .env
            .iter()
            .find(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(Error::InvalidConfig(format!(
                "environment variable name {k:?} is invalid"
            )));
        }
        Ok(())
    }

    /// Starts the sandbox and waits until its guest agent is ready.
    pub async fn create(mut self) -> Result<Sandbox> {
        let began = std::time::Instant::now();
        self.check()?;
        let home = msbvm_home()?;
        let dir = SandboxDir::in_home(&home, &self.name)?;
        if state::is_live(&dir) {
            return Err(Error::NameInUse { name: self.name });
        }
        let bin = runtime_binary()?;
        tracing::debug!(ms = began.elapsed().as_secs_f64() * 1e3, "create: checked");
        // A fork runs on its snapshot's layers (pinned in the store), not on what the
        // reference names now: nothing to pull.
        let fork = self.spec.fork_of.is_some();
        if let (RootSpec::Image { reference }, false) = (&self.spec.root, fork) {
            crate::images::ensure(
                reference,
                &crate::images::options_from_env(),
                &crate::images::NoProgress,
            )
            .await?;
        }
        let args = RuntimeArgs {
            name: self.name.clone(),
            home,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            env: self.env.clone(),
            detached: self.detached,
            ready_fd: None,
            lifeline_fd: None,
            parent_pid: None,
            spec: self.spec.clone(),
            secrets: std::mem::take(&mut self.secrets),
            secrets_fd: None,
        };
        tracing::debug!(
            ms = began.elapsed().as_secs_f64() * 1e3,
            "create: image ensured"
        );
        let launched = launch(&bin, args, &dir, self.ready_timeout).await?;
        tracing::debug!(ms = began.elapsed().as_secs_f64() * 1e3, "create: launched");
        // The runtime resolved the image's defaults (environment, working
        // directory, user) into the record before it reported ready.
        let record = StateRecord::read(&dir).ok().flatten();
        let (env, workdir, uid, gid, command) = match record {
            Some(r) => (r.env, r.workdir, r.uid, r.gid, r.command),
            None => (self.env, self.spec.workdir.clone(), None, None, Vec::new()),
        };
        Ok(Sandbox {
            limits: self.limits,
            inner: Arc::new(Inner {
                dir,
                env,
                workdir,
                uid,
                gid,
                command,
                detached: self.detached,
                pid: launched.ready.pid,
                boot: Some(launched.ready.boot),
                ready: Some(launched.ready),
                create_duration: Some(began.elapsed()),
                _lifeline: launched.lifeline,
            }),
        })
    }
}

/// Moves `from` to `to` (a new file, mode 0600): a rename on the same filesystem, else a
/// copy and a removal.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let result = std::fs::hard_link(from, to).or_else(|e| {
        if e.raw_os_error() != Some(libc::EXDEV) && e.raw_os_error() != Some(libc::EPERM) {
            return Err(e);
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)?;
        std::io::copy(&mut std::fs::File::open(from)?, &mut out).map(drop)
    });
    // The state directory keeps no copy, whatever happened.
    let _ = std::fs::remove_file(from);
    result.map_err(Error::io(format!(
        "moving the memory dump to {}",
        to.display()
    )))
}

/// A running sandbox. Cheap to clone; see the module docs for its lifetime.
#[derive(Clone, Debug)]
pub struct Sandbox {
    inner: Arc<Inner>,
    limits: AgentLimits,
}

#[derive(Debug)]
struct Inner {
    dir: SandboxDir,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    command: Vec<String>,
    detached: bool,
    pid: u32,
    boot: Option<BootTimes>,
    ready: Option<ReadyInfo>,
    create_duration: Option<Duration>,
    /// Held, never used: closing it tells an attached sandbox's runtime to stop.
    _lifeline: Option<OwnedFd>,
}

/// A sandbox as listed by [`Sandbox::list`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SandboxInfo {
    /// Name.
    pub name: String,
    /// Current state (`crashed` when the record says active but the runtime is gone).
    pub status: Status,
    /// The runtime's pid.
    pub pid: u32,
    /// Creation time, seconds since the Unix epoch.
    pub created: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Whether it outlives its creator.
    pub detached: bool,
    /// How the VM ended, if it has.
    pub exit: Option<String>,
    /// The state directory.
    pub dir: PathBuf,
    /// The sandbox that created this one from inside it ([`crate::spawn`]), if one did.
    pub parent: Option<String>,
}

impl SandboxInfo {
    fn new(dir: &SandboxDir, record: StateRecord, live: bool) -> Self {
        let status = match (live, record.status) {
            (true, s) => s,
            (false, s) if s.is_active() => Status::Crashed,
            (false, s) => s,
        };
        SandboxInfo {
            parent: record.parent.clone(),
            name: record.name,
            status,
            pid: record.pid,
            created: record.created,
            cpus: record.cpus,
            memory_mib: record.memory_mib,
            detached: record.detached,
            exit: record.exit,
            dir: dir.path().to_path_buf(),
        }
    }
}

impl Sandbox {
    /// Starts configuring a sandbox named `name` (`[a-z0-9][a-z0-9_.-]{0,62}`).
    pub fn builder(name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder {
            name: name.into(),
            cpus: DEFAULT_CPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            env: Vec::new(),
            detached: false,
            spec: SandboxSpec::default(),
            limits: AgentLimits::default(),
            secrets: Vec::new(),
            ready_timeout: std::env::var("MSBVM_READY_TIMEOUT_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(DEFAULT_READY_TIMEOUT, Duration::from_secs),
        }
    }

    /// Starts configuring forks of snapshot `snapshot` ([`crate::fork`]):
    /// `Sandbox::fork("base").count(10).create().await?`.
    pub fn fork(snapshot: &str) -> crate::fork::ForkBuilder {
        crate::fork::ForkBuilder::new(snapshot)
    }

    /// Reaches the running sandbox `name`, created by any process.
    pub async fn get(name: &str) -> Result<Sandbox> {
        Self::get_in(&msbvm_home()?, name)
    }

    fn get_in(home: &Path, name: &str) -> Result<Sandbox> {
        let dir = SandboxDir::in_home(home, name)?;
        let live = state::is_live(&dir);
        let record = StateRecord::read(&dir)?;
        let Some(record) = record else {
            return if live {
                Err(Error::NotRunning {
                    name: name.into(),
                    status: Status::Starting.to_string(),
                })
            } else {
                Err(Error::NotFound { name: name.into() })
            };
        };
        let info = SandboxInfo::new(&dir, record.clone(), live);
        if info.status != Status::Running {
            return Err(Error::NotRunning {
                name: name.into(),
                status: info.status.to_string(),
            });
        }
        Ok(Sandbox {
            limits: AgentLimits::default(),
            inner: Arc::new(Inner {
                dir,
                env: record.env,
                workdir: record.workdir,
                uid: record.uid,
                gid: record.gid,
                command: record.command,
                detached: record.detached,
                pid: record.pid,
                boot: record.boot,
                ready: None,
                create_duration: None,
                _lifeline: None,
            }),
        })
    }

    /// Every sandbox with a record, by name. Records of attached sandboxes whose runtime died
    /// without cleaning up are removed on the way.
    pub fn list() -> Result<Vec<SandboxInfo>> {
        Self::list_in(&msbvm_home()?)
    }

    fn list_in(home: &Path) -> Result<Vec<SandboxInfo>> {
        let root = sandboxes_dir(home);
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", root.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Ok(dir) = SandboxDir::in_home(home, &name) else {
                continue;
            };
            let live = state::is_live(&dir);
            let record = match StateRecord::read(&dir) {
                Ok(Some(r)) => r,
                // No record yet (being created) or an unreadable one: nothing to show.
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("{e}");
                    continue;
                }
            };
            if !live && !record.detached {
                // An attached sandbox never outlives its runtime: this is debris.
                let _ = state::remove_if_dead(&dir);
                continue;
            }
            out.push(SandboxInfo::new(&dir, record, live));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Stops the sandbox `name` if its runtime is alive (booting or running), with `timeout`
    /// before the VM is forced off. A sandbox that is already stopped is fine.
    pub async fn stop_named(name: &str, timeout: Duration) -> Result<()> {
        let dir = SandboxDir::for_name(name)?;
        if !dir.path().exists() {
            return Err(Error::NotFound { name: name.into() });
        }
        let pid = StateRecord::read(&dir).ok().flatten().map(|r| r.pid);
        stop_dir(&dir, pid, timeout).await
    }

    /// Stops (if running) and removes the sandbox `name` with its record and logs.
    pub async fn remove_named(name: &str) -> Result<()> {
        Self::remove_in(&msbvm_home()?, name).await
    }

    async fn remove_in(home: &Path, name: &str) -> Result<()> {
        let dir = SandboxDir::in_home(home, name)?;
        if !dir.path().exists() {
            return Err(Error::NotFound { name: name.into() });
        }
        if state::is_live(&dir) {
            let pid = StateRecord::read(&dir).ok().flatten().map(|r| r.pid);
            stop_dir(&dir, pid, DEFAULT_STOP_TIMEOUT).await?;
        }
        if state::remove_if_dead(&dir)? {
            Ok(())
        } else {
            Err(Error::Runtime {
                message: format!("sandbox {name:?} is still running after a stop"),
                log_tail: String::new(),
            })
        }
    }

    /// The sandbox's name.
    pub fn name(&self) -> &str {
        self.inner.dir.name()
    }
    /// The state directory (logs: `console.log`, `runtime.log`).
    pub fn dir(&self) -> &SandboxDir {
        &self.inner.dir
    }
    /// The runtime's pid.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }
    /// Whether it outlives its creator.
    pub fn is_detached(&self) -> bool {
        self.inner.detached
    }
    /// The guest agent's boot timestamps.
    pub fn boot_times(&self) -> Option<BootTimes> {
        self.inner.boot
    }
    /// The runtime's readiness report (only on the handle `create` returned).
    pub fn ready_info(&self) -> Option<&ReadyInfo> {
        self.inner.ready.as_ref()
    }
    /// Wall-clock time `create` took (only on the handle `create` returned).
    pub fn create_duration(&self) -> Option<Duration> {
        self.inner.create_duration
    }
    /// The image's default command (entrypoint and command); empty when it has none.
    pub fn default_command(&self) -> &[String] {
        &self.inner.command
    }

    /// The bounds this handle puts on what it accepts from the guest agent.
    pub fn agent_limits(&self) -> &AgentLimits {
        &self.limits
    }

    /// This handle with other bounds on what it accepts from the guest agent (other clones
    /// keep theirs).
    pub fn with_agent_limits(mut self, limits: AgentLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The environment every exec starts with.
    pub fn env(&self) -> &[(String, String)] {
        &self.inner.env
    }

    /// Runs `cmd` with `args` to completion (stdin closed) and returns its output.
    pub async fn exec<I, S>(&self, cmd: &str, args: I) -> Result<ExecOutput>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv = std::iter::once(cmd.to_string()).chain(args.into_iter().map(Into::into));
        self.exec_with(ExecOptions::new(argv)).await
    }

    /// Runs a process described by `opts` to completion (stdin closed).
    pub async fn exec_with(&self, opts: ExecOptions) -> Result<ExecOutput> {
        let stream = self.exec_stream(opts).await?;
        // A quick process may be gone, and the agent's end closed, before this arrives; a
        // real failure of the connection shows in `collect`.
        let _ = stream.close_stdin().await;
        stream.collect().await
    }

    /// Starts a process and returns its event stream, with stdin, signals and resizing.
    pub async fn exec_stream(&self, opts: ExecOptions) -> Result<ExecStream> {
        let mut opts = opts;
        if opts.cwd.is_none() {
            opts.cwd = self.inner.workdir.clone();
        }
        if opts.uid.is_none() {
            opts.uid = self.inner.uid;
            if opts.gid.is_none() {
                opts.gid = self.inner.gid;
            }
        }
        let request = opts.to_request(&self.inner.env)?;
        ExecStream::start(&self.inner.dir.vsock_socket(), request, &self.limits).await
    }

    /// Replaces the network policy of the running sandbox (rules in order, first match
    /// wins; see [`SandboxBuilder::net_allow`]). New connections, DNS queries and HTTP
    /// requests follow it at once, and open TCP connections and UDP flows that it denies are
    /// ended: the guest gets a TCP reset, the host socket is closed, and a `FlowDenied` network
    /// event says "ended by a policy change". An open connection on a port that new HTTP rules
    /// cover is ended too, so the guest's next connection is inspected.
    pub async fn set_network_policy(
        &self,
        default_allow: bool,
        rules: Vec<crate::spec::NetRule>,
    ) -> Result<()> {
        let mut client = ControlClient::connect(&self.inner.dir.control_socket()).await?;
        client.set_net_policy(default_allow, rules).await
    }

    /// Publishes a guest TCP port on the host while the sandbox runs; returns where the
    /// host listens (useful with port 0).
    pub async fn publish(&self, port: PortSpec) -> Result<std::net::SocketAddr> {
        let mut client = ControlClient::connect(&self.inner.dir.control_socket()).await?;
        client.publish(port).await
    }

    /// Takes a snapshot of the running sandbox, named `name`, into `$MSBVM_HOME/snapshots`
    /// ([`crate::snapshots`]): the guest is paused while its state, memory and writable
    /// layer are written, then goes on. Forks start from it ([`Sandbox::fork`]).
    pub async fn snapshot(&self, name: &str) -> Result<crate::snapshots::SnapshotInfo> {
        let home = msbvm_home()?;
        let dest = crate::snapshots::snapshot_dir(&home, name)?;
        if dest.exists() {
            return Err(Error::InvalidConfig(format!(
                "a snapshot named {name} exists; remove it or choose another name"
            )));
        }
        let mut client = ControlClient::connect(&self.inner.dir.control_socket()).await?;
        client.snapshot(name).await?;
        let pending = self.inner.dir.path().join(crate::snapshots::PENDING_DIR);
        let dir = crate::snapshots::commit(&pending, &home, name)?;
        crate::snapshots::SnapshotInfo::read(&dir)
    }

    /// Debugging aid: writes all of the running guest's RAM to `dest` (a new file, mode
    /// 0600; an existing one is an error) and returns its size. The guest keeps running, so
    /// the copy is not one instant's. Meant for checks like "this value never reached the
    /// guest"; the file holds everything the guest had in memory.
    pub async fn dump_memory(&self, dest: &Path) -> Result<u64> {
        if dest.exists() {
            return Err(Error::InvalidConfig(format!(
                "{} exists; give a new file",
                dest.display()
            )));
        }
        let mut client = ControlClient::connect(&self.inner.dir.control_socket()).await?;
        let bytes = client.dump_memory().await?;
        let dumped = self.inner.dir.path().join(crate::paths::MEMORY_DUMP_FILE);
        move_file(&dumped, dest)?;
        Ok(bytes)
    }

    /// A live stream of the guest's events whose type matches one of `types` (`"t"`,
    /// `"prefix.*"`; all events when empty). It first yields the events kept while nobody
    /// listened (after an `msbvm.dropped` event if some were lost), then each new one until
    /// the sandbox stops. While it is attached, reading slowly slows the guest's writers.
    pub async fn events(&self, types: &[&str]) -> Result<crate::events::EventStream> {
        let types = types.iter().map(|t| t.to_string()).collect();
        crate::events::EventStream::open(&self.inner.dir.control_socket(), types, true).await
    }

    /// The events kept while no stream was attached (matching `types`, all when empty),
    /// taken out of the runtime's ring; the stream ends after the last one.
    pub async fn pending_events(&self, types: &[&str]) -> Result<crate::events::EventStream> {
        let types = types.iter().map(|t| t.to_string()).collect();
        crate::events::EventStream::open(&self.inner.dir.control_socket(), types, false).await
    }

    /// Sends an event to every guest program subscribed to `kind`.
    pub async fn emit(&self, kind: &str, data: serde_json::Value) -> Result<()> {
        self.emit_to(crate::events::EventTarget::Subscribers, kind, data)
            .await
    }

    /// Sends an event to `target` (one guest connection, one exec's processes, or the
    /// subscribers).
    pub async fn emit_to(
        &self,
        target: crate::events::EventTarget,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<()> {
        self.emit_event(target, kind, data, None).await
    }

    /// [`Sandbox::emit_to`] with a `reply_to` (the id of the guest event it answers; see
    /// also [`Sandbox::reply`]).
    pub async fn emit_event(
        &self,
        target: crate::events::EventTarget,
        kind: &str,
        data: serde_json::Value,
        reply_to: Option<String>,
    ) -> Result<()> {
        let event = crate::events::host_event(kind, &data, None, reply_to, target)?;
        let mut client = ControlClient::connect(&self.inner.dir.control_socket()).await?;
        client.emit(event).await
    }

    /// Answers a guest event that carries an `id`: `kind`/`data` go to the connection it
    /// came on, with `reply_to` set to its id.
    pub async fn reply(
        &self,
        to: &crate::events::Event,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<()> {
        let (Some(id), Some(connection)) = (&to.id, to.connection) else {
            return Err(Error::InvalidConfig(format!(
                "the {:?} event has no id (or came from the runtime); nothing can answer it",
                to.kind
            )));
        };
        let target = crate::events::EventTarget::Connection(connection);
        let event = crate::events::host_event(kind, &data, None, Some(id.clone()), target)?;
        let mut client = ControlClient::connect(&self.inner.dir.control_socket()).await?;
        client.emit(event).await
    }

    /// Sends an event with a fresh `id` to the guest's subscribers and waits up to `timeout`
    /// for the guest event whose `reply_to` names it.
    pub async fn request(
        &self,
        kind: &str,
        data: serde_json::Value,
        timeout: Duration,
    ) -> Result<crate::events::Event> {
        let id = crate::events::fresh_id()?;
        let target = crate::events::EventTarget::Subscribers;
        let event = crate::events::host_event(kind, &data, Some(id), None, target)?;
        let mut client = ControlClient::connect(&self.inner.dir.control_socket()).await?;
        let reply = client.request(event, timeout).await?;
        Ok(crate::events::Event::from_wire(reply))
    }

    /// Makes a sandbox that another sandbox spawned ([`crate::spawn`]) the host's own: it
    /// no longer stops with its parent, and the parent can no longer see or control it.
    /// Fails for a sandbox that has no parent.
    pub async fn detach(&self) -> Result<()> {
        let mut client = ControlClient::connect(&self.inner.dir.control_socket()).await?;
        client.detach().await
    }

    /// The network stack's counters (bytes, packets, flows, drops) as JSON.
    pub async fn network_stats(&self) -> Result<String> {
        let mut client = ControlClient::connect(&self.inner.dir.control_socket()).await?;
        client.net_stats().await
    }

    /// The network decisions still on record (flows allowed and denied, DNS queries, HTTP
    /// requests), oldest first, as the runtime recorded them; call again to poll for more.
    /// The record is capped ([`crate::logfile`]: the oldest events go first), so this is
    /// bounded; [`Sandbox::network_event_stream`] reads it incrementally.
    pub fn network_events(&self) -> Result<Vec<serde_json::Value>> {
        let mut events = Vec::new();
        self.network_event_stream().poll(&mut |e| events.push(e))?;
        Ok(events)
    }

    /// A reader of the network decisions: each [`NetEventStream::poll`] passes on the
    /// events recorded since the last one, in bounded memory.
    pub fn network_event_stream(&self) -> NetEventStream {
        let path = self.inner.dir.path().join(crate::paths::NET_EVENTS_FILE);
        NetEventStream {
            tail: crate::logfile::LogTail::open(&path),
            partial: Vec::new(),
            path,
        }
    }

    /// Stops the sandbox: the guest shuts down, or is forced off after 5 s.
    pub async fn stop(&self) -> Result<()> {
        self.stop_with_timeout(DEFAULT_STOP_TIMEOUT).await
    }

    /// Stops the sandbox with `timeout` before the VM is forced off.
    pub async fn stop_with_timeout(&self, timeout: Duration) -> Result<()> {
        stop_dir(&self.inner.dir, Some(self.inner.pid), timeout).await
    }

    /// Forces the VM off now.
    pub async fn kill(&self) -> Result<()> {
        kill_dir(&self.inner.dir, Some(self.inner.pid)).await
    }

    /// Stops the sandbox if running and removes everything it left.
    pub async fn remove(self) -> Result<()> {
        let home = self
            .inner
            .dir
            .path()
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf);
        let Some(home) = home else {
            return Ok(());
        };
        match Self::remove_in(&home, self.name()).await {
            Err(Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    }
}

/// Longest network event line read; longer ones (none the runtime writes) are skipped.
const MAX_EVENT_LINE: usize = 64 * 1024;

/// Reads a sandbox's network events as they are recorded; see
/// [`Sandbox::network_event_stream`].
#[derive(Debug)]
pub struct NetEventStream {
    tail: crate::logfile::LogTail,
    partial: Vec<u8>,
    path: PathBuf,
}

impl NetEventStream {
    /// Passes each event recorded since the last call to `out`, oldest first.
    pub fn poll(&mut self, out: &mut dyn FnMut(serde_json::Value)) -> Result<()> {
        self.tail
            .read_lines(&mut self.partial, MAX_EVENT_LINE, &mut |line| {
                if let Ok(event) = serde_json::from_slice(line) {
                    out(event);
                }
            })
            .map_err(Error::io(format!("reading {}", self.path.display())))
    }
}

/// Graceful stop through the control socket; a kill if the runtime cannot be reached.
async fn stop_dir(dir: &SandboxDir, pid: Option<u32>, timeout: Duration) -> Result<()> {
    if !state::is_live(dir) {
        return Ok(());
    }
    let asked = async {
        let mut client = ControlClient::connect(&dir.control_socket()).await?;
        client.stop(timeout).await
    };
    match asked.await {
        Ok(exit) => tracing::info!(name = dir.name(), exit, "sandbox stopped"),
        // The runtime may exit as soon as the VM is down, before its control
        // thread has written the answer: a closed connection followed by the
        // runtime's end is a successful stop.
        Err(e) => {
            if wait_dead(dir).await.is_ok() {
                tracing::info!(name = dir.name(), "sandbox stopped ({e})");
                return Ok(());
            }
            tracing::warn!("graceful stop of {} failed: {e}; killing it", dir.name());
            return kill_dir(dir, pid).await;
        }
    }
    wait_dead(dir).await
}

/// Kill through the control socket, else SIGKILL to the runtime.
async fn kill_dir(dir: &SandboxDir, pid: Option<u32>) -> Result<()> {
    if !state::is_live(dir) {
        return Ok(());
    }
    let asked = async {
        let mut client = ControlClient::connect(&dir.control_socket()).await?;
        client.kill().await
    };
    if let Err(e) = asked.await {
        tracing::warn!(
            "cannot ask {}'s runtime to kill it ({e}); killing the runtime",
            dir.name()
        );
        let Some(pid) = pid else {
            return Err(e);
        };
        // The runtime holds the lock, so this pid is still that runtime.
        // SAFETY: kill(2) with integer arguments.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        wait_dead(dir).await?;
        mark_killed(dir);
        return Ok(());
    }
    wait_dead(dir).await
}

/// After SIGKILL nobody cleaned up: drop an attached sandbox's debris, mark a detached one.
fn mark_killed(dir: &SandboxDir) {
    match StateRecord::read(dir) {
        Ok(Some(mut record)) if record.detached => {
            record.status = Status::Stopped;
            record.exit = Some("the runtime was killed".into());
            let _ = record.write(dir);
        }
        _ => {
            let _ = state::remove_if_dead(dir);
        }
    }
}

/// Waits for the runtime to release the sandbox (exit).
async fn wait_dead(dir: &SandboxDir) -> Result<()> {
    let deadline = tokio::time::Instant::now() + EXIT_WAIT;
    while state::is_live(dir) {
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Runtime {
                message: format!(
                    "the runtime of {:?} did not exit within {}s",
                    dir.name(),
                    EXIT_WAIT.as_secs()
                ),
                log_tail: state::tail_lines(&dir.runtime_log(), 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
