//! The sandbox runtime: the process that owns one sandbox's VM (`msbvm __runtime ...`,
//! started by the SDK; see [`main`]).
//!
//! Its life:
//! 1. claim the name (the state directory and its lock; stale state of a dead runtime is
//!    cleared), move stderr to `runtime.log`;
//! 2. build the guest's initramfs, get the kernel (building it if needed);
//! 3. listen for the agent (`vsock.sock_1025`) and for control requests (`control.sock`), then
//!    run the VM on its own thread;
//! 4. report ready (or the failure, with the console's last lines) on the readiness pipe;
//! 5. supervise: control requests, signals, the creator's death, the VM's end;
//! 6. clean up: sockets and initramfs always; an attached sandbox's whole directory, or a
//!    detached one's final record.
//!
//! Stops are graceful first (the agent's `Shutdown`), forced (the VM's [`StopHandle`]) after
//! a timeout. All threads report to one supervisor loop through one channel of events.
//!
//! The `msbvm` binary links this crate and runs [`main`] for `msbvm __runtime`. A program
//! that adds Rust-side behaviour to its sandboxes (filesystem hooks: [`devices::Extensions`])
//! links it too and calls [`run_if_runtime`] first thing in `main`; programs that only drive
//! sandboxes need just the client, `msbvm_sdk`, which starts `msbvm` (see its crate docs).

mod agent_link;
pub mod confine;
mod control_server;
pub mod devices;
pub mod event_hub;
mod exec_gateway;
mod fork;
pub mod image;
mod log_writer;
pub mod plugins;
mod resolver_files;
mod root_file;
mod signals;
pub mod spawner;
pub mod tls_setup;
mod users;
mod vm;

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use msbvm_protocol::{BootTimes, HOST_EVENTS_PORT};
use msbvm_vmm::{StopHandle, VmOutcome};

pub use msbvm_sdk::RuntimeArgs;

use msbvm_sdk::control::{ControlRequest, ControlResponse, RuntimeStatus, CONTROL_VERSION};
use msbvm_sdk::paths::SandboxDir;
use msbvm_sdk::report::{Failure, ReadyInfo, Report};
use msbvm_sdk::state::{self, StateRecord, Status};
use msbvm_sdk::vsock::SocketPath;
use msbvm_sdk::{Error, Result};

/// Grace period of the stops the runtime starts itself (signal, creator gone).
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
pub use msbvm_sdk::state::CONSOLE_TAIL_LINES;

/// What the supervisor loop hears about.
#[derive(Debug)]
pub(crate) enum Event {
    /// The VM thread ended (or the VM never started).
    VmEnded(Result<VmOutcome>),
    /// The agent said hello and ready.
    AgentReady(BootTimes),
    /// The agent cannot be used (protocol mismatch).
    AgentFailed(Error),
    /// A control request and where to answer it.
    Control(ControlRequest, Sender<ControlResponse>),
    /// A handled signal arrived.
    Signal(i32),
    /// The creator is gone (lifeline end-of-file).
    LifelineClosed,
    /// Asking the agent to shut down failed.
    ShutdownFailed(Error),
}

/// Runs a sandbox as described by `args` (the arguments after `__runtime`) until it stops.
/// Exit status: 0 when the sandbox ran and stopped, 1 when it failed, 2 for bad arguments.
pub fn main(args: Vec<OsString>) -> ExitCode {
    main_with(args, devices::Extensions::default())
}

/// If this process was started as a sandbox runtime (`PROGRAM __runtime ...`), runs it with
/// `extensions` and returns its exit status; otherwise `None`.
///
/// This is how a program adds its own filesystem hooks (or other Rust-side behaviour) to
/// its sandboxes: call this first thing in `main`, and point the SDK at the program with
/// `MSBVM_BIN` so it starts the program itself as each sandbox's runtime.
pub fn run_if_runtime(extensions: devices::Extensions) -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    match args.next()?.to_str()? {
        "__runtime" => Some(main_with(args.collect(), extensions)),
        "__spawner" => Some(spawner::main(args.collect())),
        "__plugins" => Some(plugins::host_main(args.collect())),
        _ => None,
    }
}

/// [`main`] with extensions (see [`run_if_runtime`]).
pub fn main_with(args: Vec<OsString>, extensions: devices::Extensions) -> ExitCode {
    let started = Instant::now();
    // While this process may still open its own page map (see the function).
    msbvm_vmm::snapshot::keep_page_map();
    let mut args = match RuntimeArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("msbvm runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let mut reporter = Reporter::new(args.ready_fd);
    // Read once, first: the descriptor is closed before anything else starts.
    let result = match args.secrets_fd.take() {
        Some(fd) => msbvm_sdk::secrets::read_from_fd(fd).map(|s| args.secrets = s),
        None => Ok(()),
    };
    let result = result.and_then(|()| run(&args, &mut reporter, started, extensions));
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    // What the runtime logged is in the file before it exits (the SDK reads its tail).
    log_writer::flush(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if reporter.pipe.is_none() {
                // Nobody to tell through the pipe (after ready, or none given): say it on
                // stderr, which is the runtime log once that is set up.
                eprintln!("msbvm runtime: {e}");
            }
            reporter.send(&Report::Failed(Failure::from(&e)));
            ExitCode::from(1)
        }
    }
}

/// The write end of the readiness pipe; closed after the final report.
struct Reporter {
    pipe: Option<File>,
}

impl Reporter {
    fn new(fd: Option<RawFd>) -> Self {
        // SAFETY: F_GETFD only inspects the descriptor; it tells whether it is open.
        let pipe = fd.filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0);
        Reporter {
            // SAFETY: the creator handed this descriptor to us alone; nothing else owns it.
            pipe: pipe.map(|fd| unsafe { File::from_raw_fd(fd) }),
        }
    }

    fn send(&mut self, report: &Report) {
        if let Some(pipe) = &mut self.pipe {
            if let Err(e) = pipe.write_all(report.to_line().as_bytes()) {
                // The creator stopped listening; it will notice the sandbox otherwise.
                tracing::debug!("readiness pipe: {e}");
                self.pipe = None;
            }
        }
        if matches!(report, Report::Ready(_) | Report::Failed(_)) {
            self.pipe = None;
        }
    }
}

fn run(
    args: &RuntimeArgs,
    reporter: &mut Reporter,
    started: Instant,
    extensions: devices::Extensions,
) -> Result<()> {
    prepare_process(args)?;
    let dir = SandboxDir::in_home(&args.home, &args.name)?;
    // A runtime that leaves root cannot remove its state directory from root's
    // `sandboxes/` at the end: a process that stays root does (forked before any thread).
    let mut reaper = if !args.detached && confine::switches_user() {
        let reaper = confine::identity::Reaper::spawn(dir.path());
        Some(reaper.map_err(Error::io("starting the reaper"))?)
    } else {
        None
    };
    let _claim = state::claim(&dir)?;
    let dir = enter(args, dir, reaper.is_some())?;
    let record = initial_record(args);
    record.write(&dir)?;

    let (tx, rx) = mpsc::channel();
    let mut sup = Supervisor::new(args, &dir, record, started, tx, extensions);
    let result = sup.start(reporter).and_then(|vm| {
        confine::thread_started("supervisor");
        let ended = sup.supervise(&rx, reporter);
        let _ = vm.join();
        ended
    });
    let failure = match result {
        Ok(outcome) => {
            let exit = outcome.exit.to_string();
            tracing::info!(exit, "the VM ended");
            if let msbvm_vmm::VmExit::PowerOff { code } = outcome.exit {
                sup.exit_code = i32::try_from(code).ok();
            }
            sup.record.exit = Some(exit);
            sup.boot_failure(&outcome)
        }
        Err(e) => {
            sup.record.exit = Some(e.to_string());
            Some(e)
        }
    };
    sup.clean_up(failure.is_none());
    if let Some(reaper) = reaper.as_mut() {
        reaper.remove_on_exit();
    }
    match failure {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Where a guest stopped before it was ready had got to (each vCPU's state and the end of its
/// kernel log, when the VM described them), one [`STOPPED_BEFORE_READY`] line each; empty
/// when the VM said nothing.
///
/// [`STOPPED_BEFORE_READY`]: msbvm_sdk::report::STOPPED_BEFORE_READY
fn where_it_was(outcome: &VmOutcome) -> String {
    use msbvm_sdk::report::STOPPED_BEFORE_READY;
    let mut lines: Vec<String> = outcome
        .state_at_stop
        .iter()
        .map(|line| format!("{STOPPED_BEFORE_READY}: {line}"))
        .collect();
    if let Some(log) = &outcome.kernel_log {
        lines.push(format!(
            "{STOPPED_BEFORE_READY}; guest kernel log (read from guest memory):\n{log}"
        ));
    }
    lines.join("\n")
}

/// Signals and inherited descriptors set up, and the creator still there (attached).
fn prepare_process(args: &RuntimeArgs) -> Result<()> {
    signals::block().map_err(Error::io("blocking signals"))?;
    for fd in [args.ready_fd, args.lifeline_fd].into_iter().flatten() {
        signals::set_cloexec(fd).map_err(Error::io("preparing inherited descriptors"))?;
    }
    if !args.detached {
        if let Some(parent) = args.parent_pid {
            let alive = signals::watch_parent(parent).map_err(Error::io("watching the creator"))?;
            if !alive {
                return Err(Error::Runtime {
                    message: "the creating process exited before the sandbox started".into(),
                    log_tail: String::new(),
                });
            }
        }
    }
    Ok(())
}

/// Logs to the state directory `dir` (claimed) and makes it the working directory; returns
/// it as the runtime reaches it from now on.
fn enter(args: &RuntimeArgs, dir: SandboxDir, reaped: bool) -> Result<SandboxDir> {
    redirect_logs(&dir);
    tracing::info!(
        name = args.name,
        detached = args.detached,
        "runtime starting"
    );
    // Relative socket paths (used when absolute ones are too long) resolve from here.
    std::env::set_current_dir(dir.path())
        .map_err(Error::io(format!("entering {}", dir.path().display())))?;
    // A runtime that leaves root may not traverse root's data directory (0700) any more:
    // it reaches its files through its working directory.
    Ok(if reaped || (args.detached && confine::switches_user()) {
        dir.reached_through(".".into())
    } else {
        dir
    })
}

/// The state record of a sandbox that is starting.
fn initial_record(args: &RuntimeArgs) -> StateRecord {
    StateRecord {
        name: args.name.clone(),
        pid: std::process::id(),
        created: state::unix_now(),
        cpus: args.spec.online_cpus.unwrap_or(args.cpus),
        memory_mib: args.memory_mib,
        env: args.env.clone(),
        status: Status::Starting,
        detached: args.detached,
        exit: None,
        boot: None,
        workdir: args.spec.workdir.clone(),
        uid: None,
        gid: None,
        image: None,
        command: Vec::new(),
        parent: args.spec.parent.clone(),
    }
}

/// Sends stderr (panics, kernel-build lines) and tracing to `runtime.log`, a capped log
/// ([`msbvm_sdk::logfile`]) that only the log writer thread touches ([`log_writer`]): tracing
/// hands it lines, and stderr is pointed at each new file after a rotation.
fn redirect_logs(dir: &SandboxDir) {
    let max = msbvm_sdk::logfile::max_bytes_from_env();
    let log = match msbvm_sdk::logfile::CappedLog::open(&dir.runtime_log(), max) {
        Ok(log) => {
            // SAFETY: dup2 onto stderr; `log`'s file stays valid for the call.
            unsafe { libc::dup2(log.file().as_raw_fd(), libc::STDERR_FILENO) };
            log_writer::start(log)
                .map_err(|e| eprintln!("msbvm runtime: cannot start the log writer: {e}"))
                .ok()
        }
        Err(e) => {
            eprintln!("msbvm runtime: cannot open the runtime log: {e}");
            None
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MSBVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match log {
        Some(log) => builder.with_writer(move || log.clone()).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}

struct Supervisor<'a> {
    args: &'a RuntimeArgs,
    dir: &'a SandboxDir,
    record: StateRecord,
    started: Instant,
    events: Sender<Event>,
    stop: StopHandle,
    ready: bool,
    stopping: bool,
    /// The host detached this sandbox from the sandbox that spawned it: its creator (that
    /// sandbox's spawn service) ending no longer stops it.
    detached: bool,
    /// When a graceful stop turns into a forced one.
    force_at: Option<Instant>,
    /// Control clients waiting for the VM's end.
    waiters: Vec<Sender<ControlResponse>>,
    /// The guest kernel, once known.
    kernel: Option<std::path::PathBuf>,
    /// When the VM thread was started, relative to `started`.
    vm_start: Duration,
    /// The virtio devices' host side (FUSE backends, netstack, volume locks).
    devices: Option<devices::Devices>,
    /// What the embedding program adds.
    extensions: devices::Extensions,
    /// The VM's RAM while it runs (for `DumpMemory`).
    memory: msbvm_vmm::memory::MemoryHandle,
    /// Snapshots of the running VM.
    control: msbvm_vmm::VmControl,
    /// The sandbox's plugins ([`plugins`]).
    plugins: std::sync::Arc<msbvm_plugins::Chain>,
    /// The guest's power-off code, once it powered off.
    exit_code: Option<i32>,
}

impl<'a> Supervisor<'a> {
    fn new(
        args: &'a RuntimeArgs,
        dir: &'a SandboxDir,
        record: StateRecord,
        started: Instant,
        events: Sender<Event>,
        extensions: devices::Extensions,
    ) -> Self {
        Supervisor {
            args,
            dir,
            record,
            started,
            events,
            stop: StopHandle::new(),
            ready: false,
            stopping: false,
            detached: false,
            force_at: None,
            waiters: Vec::new(),
            kernel: None,
            vm_start: Duration::ZERO,
            devices: None,
            extensions,
            memory: msbvm_vmm::memory::MemoryHandle::new(),
            control: msbvm_vmm::VmControl::new(),
            plugins: std::sync::Arc::new(msbvm_plugins::Chain::empty()),
            exit_code: None,
        }
    }

    /// Everything up to the VM running: image, kernel, listeners, the VM thread.
    fn start(&mut self, reporter: &mut Reporter) -> Result<std::thread::JoinHandle<()>> {
        // Before the confinement: the service is a program of its own.
        spawner::launch(self.args, self.dir)?;
        let plugin_host = plugins::launch(self.args, self.dir)?;
        self.mark("spawn service launched");
        let agent = image::find_agent()?;
        // A fork's guest already booted: its initramfs is in the snapshot's memory. The
        // cache of the part every sandbox shares is out of reach once confined.
        let shared_initramfs = match self.args.spec.fork_of {
            Some(_) => None,
            None => {
                let busybox = match self.args.spec.root {
                    msbvm_sdk::spec::RootSpec::Initramfs => Some(image::find_busybox()?),
                    _ => None,
                };
                let cache = self.args.home.join("cache").join("initramfs");
                Some(image::SharedArchive::open(
                    &cache,
                    &agent,
                    busybox.as_deref(),
                )?)
            }
        };
        self.mark("initramfs cache opened");
        if let Some(plan) = confine::plan(&self.args.spec, self.dir, &self.args.home)? {
            confine::enable(plan)?;
            log_writer::confine();
        }
        self.mark("confined");
        signals::spawn_waiter(self.events.clone()).map_err(Error::io("starting a thread"))?;
        if let Some(fd) = self.args.lifeline_fd {
            signals::spawn_lifeline_watch(fd, self.events.clone())
                .map_err(Error::io("starting a thread"))?;
        }
        let hub = std::sync::Arc::new(event_hub::EventHub::default());
        self.plugins = plugins::attach(plugin_host, self.args, &self.extensions.plugins, &hub)?;
        plugins::lifecycle(
            &self.plugins,
            &self.args.name,
            match &self.args.spec.fork_of {
                Some(snapshot) => msbvm_plugins::data::Lifecycle::Forked {
                    snapshot: snapshot
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                },
                None => msbvm_plugins::data::Lifecycle::Created,
            },
        );
        let mut devices = devices::build(
            &self.args.spec,
            &self.args.secrets,
            self.dir,
            &self.args.home,
            &self.extensions,
            &self.plugins,
        )?;
        self.mark("devices built");
        // A fork's guest has its files already (in the snapshot's layer).
        if self.args.spec.fork_of.is_none() {
            devices.write_resolver_files(&self.args.name);
        }
        let restore = match (&self.args.spec.fork_of, &shared_initramfs) {
            (Some(snapshot), _) => Some(fork::open_vm_snapshot(snapshot)?),
            (None, Some(shared)) => {
                let own = image::build_own(&self.args.name, &devices.boot, devices.initramfs_root)?;
                shared.write_initrd(&self.dir.initrd(), &own)?;
                None
            }
            (None, None) => None,
        };
        self.mark("guest prepared");
        self.apply_exec_defaults(&devices)?;
        let kernel = get_kernel(reporter)?;
        self.kernel = Some(kernel.clone());

        let events_listener = bind(&self.dir.vsock_port_socket(HOST_EVENTS_PORT))?;
        let control_listener = bind(&self.dir.control_socket())?;
        agent_link::spawn_events_listener(events_listener, self.events.clone(), hub.clone())
            .map_err(Error::io("starting a thread"))?;
        control_server::spawn(control_listener, self.events.clone(), hub)
            .map_err(Error::io("starting a thread"))?;

        // Plugins on commands see them through the exec gateway, which takes the vsock
        // socket clients connect to; the device listens beside it.
        let gateway = exec_gateway::wanted(&self.plugins);
        let config = vm::config(&vm::VmRequest {
            dir: self.dir,
            kernel,
            cpus: self.args.cpus,
            memory_mib: self.args.memory_mib,
            started: self.started,
            vsock_listen: gateway.then(|| exec_gateway::DIRECT_SOCKET.into()),
        });
        if gateway {
            let listener = bind(&vm::device_socket_path(self.dir))?;
            exec_gateway::spawn(
                listener,
                exec_gateway::DIRECT_SOCKET.into(),
                self.plugins.clone(),
            )
            .map_err(Error::io("starting the exec gateway"))?;
        }
        let mut config = config;
        config.devices.extend(devices.specs.iter().cloned());
        // Last, so the other devices keep their places (and snapshots of older sandboxes
        // their layout up to it).
        config.devices.push(vm::balloon_spec());
        if let Some(snapshot) = restore {
            fork::restore_config(&mut config, snapshot);
        }
        self.control = config.control.clone();
        self.devices = Some(devices);
        self.stop = config.stop.clone();
        self.memory = config.memory.clone();
        reporter.send(&Report::Booting);
        self.vm_start = self.started.elapsed();
        tracing::info!(ms = self.vm_start.as_secs_f64() * 1e3, "starting the VM");
        confine::hand_over_state()?;
        vm::spawn(config, self.events.clone()).map_err(Error::io("starting the VM thread"))
    }

    /// Logs (at debug level) how long the runtime took to reach `step`: where a start
    /// spends its time before the VM runs.
    fn mark(&self, step: &str) {
        tracing::debug!(ms = self.started.elapsed().as_secs_f64() * 1e3, "{step}");
    }

    /// Records the image's exec defaults (environment under the user's, working directory,
    /// user) so every client of this sandbox applies them.
    fn apply_exec_defaults(&mut self, devices: &devices::Devices) -> Result<()> {
        let mut env = devices.exec.env.clone();
        msbvm_sdk::exec::merge_env(&mut env, &self.args.env);
        self.record.env = env;
        self.record.image = devices.image.clone();
        self.record.command = devices.exec.command.clone();
        self.record.workdir = self
            .args
            .spec
            .workdir
            .clone()
            .or_else(|| devices.exec.workdir.clone());
        let user = self
            .args
            .spec
            .user
            .clone()
            .or_else(|| devices.exec.user.clone());
        if let Some(user) = user {
            let (uid, gid) = users::resolve(&user, devices.root_fs.as_deref())?;
            self.record.uid = Some(uid);
            self.record.gid = gid;
        }
        self.record.write(self.dir)
    }

    /// The loop: handles events until the VM ends.
    fn supervise(&mut self, rx: &Receiver<Event>, reporter: &mut Reporter) -> Result<VmOutcome> {
        loop {
            let wait = self.force_at.map_or(Duration::from_secs(3600), |t| {
                t.saturating_duration_since(Instant::now())
            });
            let event = match rx.recv_timeout(wait) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => {
                    if self.force_at.is_some() {
                        tracing::warn!("the guest did not stop in time; forcing the VM off");
                        self.force();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Unreachable while `self.events` lives; stop rather than spin.
                    self.force();
                    return Err(Error::Runtime {
                        message: "the supervisor lost its event channel".into(),
                        log_tail: String::new(),
                    });
                }
            };
            match event {
                Event::VmEnded(result) => return result,
                Event::AgentReady(boot) => self.on_ready(boot, reporter),
                Event::AgentFailed(e) => {
                    tracing::error!("{e}");
                    if !self.ready {
                        self.force();
                        return self.wait_vm_end(rx).and(Err(e));
                    }
                }
                Event::Control(request, reply) => self.on_control(request, reply),
                Event::Signal(s) if s == signals::PARENT_DEATH_SIGNAL => {
                    if self.detached {
                        tracing::info!("the creator died; detached, so carrying on");
                    } else if self
                        .args
                        .parent_pid
                        .is_some_and(|p| !signals::parent_alive(p))
                    {
                        tracing::info!("the creator died; stopping");
                        self.begin_stop(DEFAULT_STOP_TIMEOUT);
                    }
                }
                Event::Signal(s) => {
                    tracing::info!(signal = s, "signal received; stopping");
                    self.begin_stop(DEFAULT_STOP_TIMEOUT);
                }
                Event::LifelineClosed if self.detached => {
                    tracing::info!("the creator is gone; detached, so carrying on");
                }
                Event::LifelineClosed => {
                    tracing::info!("the creator is gone; stopping");
                    self.begin_stop(DEFAULT_STOP_TIMEOUT);
                }
                Event::ShutdownFailed(e) => {
                    tracing::warn!("graceful shutdown failed ({e}); forcing the VM off");
                    self.force();
                }
            }
        }
    }

    /// Drains events until the VM thread reports its end (after a forced stop).
    fn wait_vm_end(&mut self, rx: &Receiver<Event>) -> Result<VmOutcome> {
        loop {
            match rx.recv() {
                Ok(Event::VmEnded(result)) => return result,
                Ok(Event::Control(request, reply)) => self.on_control(request, reply),
                Ok(_) => {}
                Err(_) => {
                    return Err(Error::Runtime {
                        message: "the VM thread vanished".into(),
                        log_tail: String::new(),
                    })
                }
            }
        }
    }

    fn on_ready(&mut self, boot: BootTimes, reporter: &mut Reporter) {
        if self.ready {
            return; // An agent reconnecting; nothing new.
        }
        if self.args.spec.fork_of.is_some() {
            // The agent of a restored guest: it becomes this sandbox before anything runs.
            let uds = vm::device_socket_path(self.dir);
            let online = self.args.spec.online_cpus;
            let boot = self
                .devices
                .as_ref()
                .map(|d| d.boot.clone())
                .unwrap_or_default();
            if let Err(e) = fork::give_identity(&uds, &self.args.name, online, &boot) {
                tracing::error!("the fork could not take its identity: {e}");
                reporter.send(&Report::Failed(Failure::from(&e)));
                self.force();
                return;
            }
        }
        self.ready = true;
        let ready_after = self.started.elapsed();
        tracing::info!(
            ms = ready_after.as_secs_f64() * 1e3,
            agent_start_ns = boot.agent_start_ns,
            root_ns = boot.root_ns,
            mounts_ns = boot.mounts_ns,
            network_ns = boot.network_ns,
            ready_ns = boot.ready_ns,
            "the agent is ready"
        );
        self.record.boot = Some(boot);
        if !self.stopping {
            self.set_status(Status::Running);
        }
        plugins::lifecycle(
            &self.plugins,
            &self.args.name,
            msbvm_plugins::data::Lifecycle::Started,
        );
        reporter.send(&Report::Ready(ReadyInfo {
            pid: std::process::id(),
            boot,
            ready_after_ms: ready_after.as_secs_f64() * 1e3,
            vm_start_ms: self.vm_start.as_secs_f64() * 1e3,
        }));
    }

    fn on_control(&mut self, request: ControlRequest, reply: Sender<ControlResponse>) {
        match request {
            ControlRequest::Events { .. }
            | ControlRequest::Emit(_)
            | ControlRequest::Request { .. } => {
                // The control server serves these itself (they wait on the guest).
                let _ = reply.send(ControlResponse::Error {
                    message: "event requests are served by the control connection".into(),
                });
            }
            ControlRequest::Hello { .. } => {
                let _ = reply.send(ControlResponse::Hello {
                    version: CONTROL_VERSION,
                });
            }
            ControlRequest::Status => {
                let _ = reply.send(ControlResponse::Status(RuntimeStatus {
                    status: self.record.status,
                    pid: std::process::id(),
                    uptime_ms: u64::try_from(self.started.elapsed().as_millis())
                        .unwrap_or(u64::MAX),
                }));
            }
            ControlRequest::Stop { timeout_ms } => {
                tracing::info!(timeout_ms, "stop requested");
                self.waiters.push(reply);
                self.begin_stop(Duration::from_millis(timeout_ms));
            }
            ControlRequest::Kill => {
                tracing::info!("kill requested");
                self.waiters.push(reply);
                self.force();
            }
            ControlRequest::SetNetPolicy {
                default_allow,
                rules,
            } => {
                let has_secrets = !self.args.secrets.is_empty();
                let answer = self.with_net(|net| {
                    let spec = msbvm_sdk::spec::NetworkSpec {
                        default_allow,
                        rules,
                        ..msbvm_sdk::spec::NetworkSpec::default()
                    };
                    let policy = devices::policy(&spec, has_secrets).map_err(|e| e.to_string())?;
                    tracing::info!(?policy, "network policy replaced");
                    net.set_policy(policy);
                    Ok(ControlResponse::Done)
                });
                let _ = reply.send(answer);
            }
            ControlRequest::Publish(port) => {
                let answer = self.with_net(|net| {
                    net.publish(devices::published(port.host, port.guest_port))
                        .map(|host| ControlResponse::Published { host })
                        .map_err(|e| format!("cannot publish {}: {e}", port.host))
                });
                let _ = reply.send(answer);
            }
            ControlRequest::DumpMemory => self.dump_memory(reply),
            ControlRequest::Snapshot { name } => self.snapshot(name, reply),
            ControlRequest::Detach => {
                let answer = match self.record.parent.take() {
                    Some(parent) => {
                        tracing::info!(%parent, "detached from the sandbox that spawned it");
                        // Like `run -d`: the record outlives the runtime's creator.
                        self.record.detached = true;
                        match self.record.write(self.dir) {
                            Ok(()) => {
                                self.detached = true;
                                ControlResponse::Done
                            }
                            Err(e) => {
                                // Not on record, so the parent would still remove it.
                                self.record.parent = Some(parent);
                                self.record.detached = false;
                                ControlResponse::Error {
                                    message: format!("recording the detach: {e}"),
                                }
                            }
                        }
                    }
                    None => ControlResponse::Error {
                        message: format!(
                            "{} was not spawned by another sandbox; there is nothing to detach",
                            self.args.name
                        ),
                    },
                };
                let _ = reply.send(answer);
            }
            ControlRequest::NetStats => {
                let answer = self.with_net(|net| {
                    serde_json::to_string(&net.stats())
                        .map(|json| ControlResponse::NetStats { json })
                        .map_err(|e| e.to_string())
                });
                let _ = reply.send(answer);
            }
        }
    }

    /// Writes guest RAM to [`msbvm_sdk::paths::MEMORY_DUMP_FILE`] on a thread of its own (a
    /// dump takes seconds; the loop keeps serving), then answers.
    fn dump_memory(&self, reply: Sender<ControlResponse>) {
        let path = self.dir.path().join(msbvm_sdk::paths::MEMORY_DUMP_FILE);
        let memory = self.memory.clone();
        let spawned = std::thread::Builder::new()
            .name("msbvm-dump".into())
            .spawn(move || {
                let answer = match write_dump(&memory, &path) {
                    Ok(bytes) => {
                        tracing::info!(bytes, "guest memory dumped (debug request)");
                        ControlResponse::MemoryDumped { bytes }
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        ControlResponse::Error {
                            message: format!("dumping guest memory: {e}"),
                        }
                    }
                };
                let _ = reply.send(answer);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the dump thread: {e}");
        }
    }

    /// Takes snapshot `name` into [`msbvm_sdk::snapshots::PENDING_DIR`] on a thread of its
    /// own (the VM thread pauses the guest; the loop keeps serving), then answers.
    fn snapshot(&self, name: String, reply: Sender<ControlResponse>) {
        let job = match fork::SnapshotJob::new(
            self.args,
            self.dir,
            &self.control,
            self.devices.as_ref(),
            name,
        ) {
            Ok(job) => job,
            Err(message) => {
                let _ = reply.send(ControlResponse::Error { message });
                return;
            }
        };
        let (chain, sandbox, snapshot) = (self.plugins.clone(), self.args.name.clone(), job.name());
        let spawned = std::thread::Builder::new()
            .name("msbvm-snapshot".into())
            .spawn(move || {
                let answer = job.run();
                if matches!(answer, ControlResponse::Snapshotted { .. }) {
                    plugins::lifecycle(
                        &chain,
                        &sandbox,
                        msbvm_plugins::data::Lifecycle::Snapshotted { snapshot },
                    );
                }
                let _ = reply.send(answer);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the snapshot thread: {e}");
        }
    }

    /// Runs `f` on the network stack, or answers that the sandbox has none.
    fn with_net(
        &self,
        f: impl FnOnce(&msbvm_netstack::NetStackHandle) -> std::result::Result<ControlResponse, String>,
    ) -> ControlResponse {
        match self.devices.as_ref().and_then(|d| d.net.as_ref()) {
            Some(net) => f(net).unwrap_or_else(|message| ControlResponse::Error { message }),
            None => ControlResponse::Error {
                message: "the sandbox has no network".into(),
            },
        }
    }

    fn set_status(&mut self, status: Status) {
        self.record.status = status;
        if let Err(e) = self.record.write(self.dir) {
            tracing::warn!("{e}");
        }
    }

    /// Asks the agent to shut the guest down; the VM is forced off after `timeout`.
    fn begin_stop(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.force_at = Some(self.force_at.map_or(deadline, |t| t.min(deadline)));
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.set_status(Status::Stopping);
        if !self.ready {
            // No agent to ask yet; and a guest that was not ready may be
            // stuck, so the VM says where it was (logged with the outcome).
            self.stop.stop_and_describe();
            self.force();
            return;
        }
        let uds = self.dir.vsock_socket();
        let events = self.events.clone();
        let io_timeout = timeout.clamp(Duration::from_millis(100), Duration::from_secs(5));
        let spawned = std::thread::Builder::new()
            .name("msbvm-shutdown".into())
            .spawn(move || {
                confine::drop_capabilities();
                if let Err(e) = agent_link::request_shutdown(&uds, 0, io_timeout) {
                    let _ = events.send(Event::ShutdownFailed(e));
                }
            });
        if spawned.is_err() {
            self.force();
        }
    }

    /// Stops the VM now.
    fn force(&mut self) {
        self.stop.stop();
        self.force_at = None;
        if !self.stopping {
            self.stopping = true;
            self.set_status(Status::Stopping);
        }
    }

    /// The error for a VM that ended before its agent was ready (`None` if it was ready).
    fn boot_failure(&self, outcome: &VmOutcome) -> Option<Error> {
        if self.ready {
            return None;
        }
        if self.stopping {
            let mut message = "the sandbox was stopped before it became ready".to_string();
            let where_it_was = where_it_was(outcome);
            if !where_it_was.is_empty() {
                tracing::warn!("{where_it_was}");
                message = format!("{message}\n{where_it_was}");
            }
            return Some(Error::Runtime {
                message,
                log_tail: String::new(),
            });
        }
        let mut reason = outcome.exit.to_string();
        if let Some(log) = &outcome.kernel_log {
            reason = format!("{reason}\nguest kernel log (read from guest memory):\n{log}");
        }
        if let Some(hint) = self.kernel.as_deref().and_then(vm::host_hint) {
            reason = format!("{reason}; {hint}");
        }
        Some(Error::GuestDied {
            reason,
            console_tail: state::tail_lines(&self.dir.console_log(), CONSOLE_TAIL_LINES),
        })
    }

    /// Removes what the VM needed and leaves the record (detached) or nothing (attached);
    /// then answers the clients waiting for the stop.
    fn clean_up(&mut self, ran: bool) {
        plugins::lifecycle(
            &self.plugins,
            &self.args.name,
            msbvm_plugins::data::Lifecycle::Stopped {
                exit_code: self.exit_code,
            },
        );
        if !self.args.detached {
            plugins::lifecycle(
                &self.plugins,
                &self.args.name,
                msbvm_plugins::data::Lifecycle::Removed,
            );
        }
        self.plugins.shutdown();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(msbvm_sdk::paths::VSOCK_SOCKET)
                    || name == msbvm_sdk::paths::CONTROL_SOCKET
                    || name == "initrd.cpio"
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        if self.args.detached {
            self.record.status = if ran { Status::Stopped } else { Status::Failed };
            if let Err(e) = self.record.write(self.dir) {
                tracing::warn!("{e}");
            }
        } else if let Err(e) = std::fs::remove_dir_all(self.dir.path()) {
            tracing::warn!("removing {}: {e}", self.dir.path().display());
        }
        let exit = self.record.exit.clone().unwrap_or_default();
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(ControlResponse::Stopped { exit: exit.clone() });
        }
    }
}

/// Writes `memory` to `path`, a new file of mode 0600 (a leftover one is replaced).
fn write_dump(
    memory: &msbvm_vmm::memory::MemoryHandle,
    path: &std::path::Path,
) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let bytes = memory.dump(&mut out)?;
    out.flush()?;
    Ok(bytes)
}

/// Binds a Unix listener, replacing a leftover socket file.
pub(crate) fn bind(path: &std::path::Path) -> Result<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let addr = SocketPath::new(path).map_err(Error::io(format!("binding {}", path.display())))?;
    std::os::unix::net::UnixListener::bind(addr.path())
        .map_err(Error::io(format!("binding {}", path.display())))
}

/// The guest kernel, built first (reported as such) when it is not cached.
fn get_kernel(reporter: &mut Reporter) -> Result<std::path::PathBuf> {
    let kernel_error = |e: msbvm_kernel::Error| Error::Kernel(e.to_string());
    if let Some(kernel) = msbvm_kernel::find_built().map_err(kernel_error)? {
        return Ok(kernel);
    }
    reporter.send(&Report::BuildingKernel);
    tracing::info!("building the guest kernel (first use)");
    msbvm_kernel::build(msbvm_kernel::Progress::Lines).map_err(kernel_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the runtime writes to disk (the state record, the guest's boot configuration in
    /// the initramfs) and its command line never carry a secret's value.
    #[test]
    fn nothing_persisted_carries_a_secret_value() {
        const VALUE: &str = "sk-live-PERSIST-CHECK-0d41";
        let tmp = tempfile::TempDir::new().unwrap();
        let mut args = RuntimeArgs::parse(
            ["--name", "box", "--home", "/h", "--env", "A=b"].map(OsString::from),
        )
        .unwrap();
        args.secrets = vec![msbvm_sdk::Secret::new("API_KEY", VALUE).allow_host("api.example.com")];
        args.spec.network.tls.ca = msbvm_sdk::spec::CaScope::Sandbox;
        let record = serde_json::to_string(&initial_record(&args)).unwrap();
        assert!(!record.contains(VALUE), "{record}");
        let argv = format!("{:?} {args:?}", args.to_args());
        assert!(!argv.contains(VALUE), "{argv}");
        let i = tls_setup::prepare(&args.spec.network.tls, &args.secrets, false, tmp.path())
            .unwrap()
            .unwrap();
        let boot = msbvm_protocol::boot::BootConfig {
            tls: Some(i.guest.clone()),
            secret_env: i.secret_env.clone(),
            ..Default::default()
        };
        let bytes = postcard::to_stdvec(&boot).unwrap();
        let as_text = String::from_utf8_lossy(&bytes);
        assert!(!as_text.contains(VALUE));
        assert!(as_text.contains(&i.secrets[0].placeholder));
        let shown = format!("{:?} {:?}", i.tls, i.secrets);
        assert!(
            !shown.contains(VALUE) && !shown.contains("PRIVATE KEY"),
            "{shown}"
        );
    }

    /// The SDK checks requests against its copies of the VMM's and the filesystem's limits
    /// (so that it need not link them); they must agree.
    #[test]
    fn the_sdk_limits_are_the_vmms() {
        assert_eq!(msbvm_sdk::MAX_CPUS, msbvm_vmm::VmConfig::MAX_VCPUS);
        assert_eq!(
            msbvm_sdk::MIN_MEMORY_MIB,
            msbvm_vmm::VmConfig::MIN_MEMORY_MIB
        );
        assert_eq!(
            msbvm_sdk::MAX_MEMORY_MIB,
            msbvm_vmm::VmConfig::MAX_MEMORY_MIB
        );
        assert_eq!(
            msbvm_sdk::spec::DEFAULT_DISK_SIZE,
            msbvm_fs::layered::DEFAULT_MAX_UPPER_BYTES
        );
    }
}
