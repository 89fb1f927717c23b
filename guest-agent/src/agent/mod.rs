//! The guest agent: PID 1 of a sandbox VM.
//!
//! Start-up ([`run`]): when it really is PID 1 it mounts the kernel
//! filesystems ([`mounts`]), sets the hostname from the kernel command line
//! ([`cmdline`]) and brings up `lo` ([`system`]). It then listens on vsock
//! port [`msbvm_protocol::AGENT_PORT`] ([`vsock`]), marks boot completion on
//! the platform boot timer, announces itself on the host's events port
//! ([`events`]) and serves every connection on its own thread ([`server`],
//! over the [`connection`] types; frames are read and written with
//! [`msbvm_protocol::framing`]).
//!
//! Guest programs reach the host through the events socket in `/run/msbvm`
//! ([`run_dir`], [`guest_events`]), directly or with the in-guest `msbvm`
//! command (the agent's own binary, [`crate::guest_cli`]).
//!
//! Processes: [`exec`] forks and execs requested programs (pipes or a PTY from
//! [`pty`]), [`session`] streams their I/O, and [`reaper`] is the only place
//! that waits for children, so exit statuses reach their sessions and orphans
//! re-parented to PID 1 are reaped silently.
//!
//! PID 1 must never exit (the kernel would panic): a fatal failure syncs and
//! powers the VM off with [`FATAL_EXIT_CODE`] through [`shutdown`].

use std::io::Write;
use std::sync::Arc;

use msbvm_protocol::{BootTimes, AGENT_PORT};

/// Writes one diagnostic line to the console (stderr), ignoring failures:
/// PID 1 must not die because the console went away.
macro_rules! agent_log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "msbvm-agent: {}", format_args!($($arg)*));
    }};
}

pub mod boot_files;
pub mod cmdline;
pub mod connection;
pub mod events;
pub mod exec;
pub mod files;
pub mod fork;
pub mod guest_events;
pub mod mounts;
pub mod net;
pub mod pty;
pub mod reaper;
pub mod rootfs;
pub mod run_dir;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod system;
pub mod trust;
pub mod users;
pub mod vsock;

#[cfg(test)]
mod tests;

/// The VM exit code when the agent itself fails (EX_SOFTWARE).
pub const FATAL_EXIT_CODE: u32 = 70;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The vsock listener could not be set up.
    #[error("cannot listen on vsock port {port}: {source}")]
    Listen {
        /// The port.
        port: u32,
        /// Why.
        source: std::io::Error,
    },
    /// Accepting connections failed for good.
    #[error("accepting vsock connections failed: {0}")]
    Accept(std::io::Error),
}

/// Runs the agent; never returns.
pub fn run() -> ! {
    let mut times = BootTimes {
        agent_start_ns: system::boottime_ns(),
        ..BootTimes::default()
    };
    let pid1 = std::process::id() == 1;
    if pid1 {
        init_system(&mut times);
    }
    let on_msbvm = crate::platform::detect();
    // A panic on the main thread must not end PID 1: catch it and power off.
    let result = std::panic::catch_unwind(|| serve(times, on_msbvm));
    match result {
        Ok(Err(e)) => agent_log!("fatal: {e}"),
        Err(_) => agent_log!("fatal: the main loop panicked"),
    }
    let _ = std::io::stderr().flush();
    shutdown::power_off(FATAL_EXIT_CODE)
}

/// PID 1 duties before serving: standard fds, filesystems, hostname, `lo`; `times` gets
/// when each step ended (the host reports them as the start-up's breakdown).
fn init_system(times: &mut BootTimes) {
    system::ensure_std_fds();
    let boot = rootfs::read_boot_config();
    if let Some(tag) = &boot.root_tag {
        // Serving from the initramfs instead of the sandbox's image would
        // run the user's commands in the wrong filesystem: stop instead, and
        // the host reports this line with the console's tail.
        if let Err(e) = rootfs::switch_to_virtiofs(tag, boot.root_read_only) {
            agent_log!("fatal: cannot switch to the root filesystem: {e}");
            shutdown::power_off(FATAL_EXIT_CODE);
        }
    }
    times.root_ns = system::boottime_ns();
    for e in mounts::mount_all() {
        agent_log!("{e}");
    }
    mounts::link_dev_nodes();
    for e in rootfs::mount_requested(&boot.mounts) {
        agent_log!("{e}");
    }
    times.mounts_ns = system::boottime_ns();
    let cmdline = cmdline::read();
    let hostname = cmdline::hostname(&cmdline);
    if let Err(e) = system::set_hostname(&hostname) {
        agent_log!("cannot set hostname {hostname:?}: {e}");
    }
    if let Err(e) = system::bring_up_loopback() {
        agent_log!("cannot bring up lo: {e}");
    }
    if let Some(setup) = &boot.network {
        // A sandbox without its network is still useful; say why and go on.
        if let Err(e) = net::configure(setup) {
            agent_log!("cannot configure the network: {e}");
        }
        // On an image root the host has written them before the boot.
        if !boot.resolver_files_written {
            let placement = boot_files::Placement::for_root(boot.root_shared);
            if let Err(e) =
                net::write_resolver_files(std::path::Path::new("/"), setup, &hostname, placement)
            {
                agent_log!("cannot write /etc/resolv.conf and /etc/hosts: {e}");
            }
        }
    }
    times.network_ns = system::boottime_ns();
    set_up_interception(&boot);
    for p in run_dir::set_up() {
        agent_log!("/run/msbvm: {p}");
    }
}

/// Trusts the host's interception CA and records the environment every exec gets (the CA
/// bundle variables, the secrets' placeholders). Problems are logged: the sandbox boots.
fn set_up_interception(boot: &msbvm_protocol::boot::BootConfig) {
    let placement = boot_files::Placement::for_root(boot.root_shared);
    let problems = trust::take_interception(
        std::path::Path::new("/"),
        boot.tls.as_ref().map(|tls| tls.ca_cert_pem.as_str()),
        &boot.secret_env,
        Some(placement),
    );
    for p in problems {
        agent_log!("TLS interception CA: {p}");
    }
}

/// Listens and serves connections; returns only on a fatal error.
fn serve(mut times: BootTimes, on_msbvm: bool) -> Result<std::convert::Infallible, AgentError> {
    let reaper = reaper::Reaper::global();
    let listener = vsock::VsockListener::bind(AGENT_PORT).map_err(|source| AgentError::Listen {
        port: AGENT_PORT,
        source,
    })?;
    if on_msbvm {
        crate::platform::signal_boot_complete();
    }
    times.ready_ns = system::boottime_ns();
    start_events(times);

    let server = Arc::new(
        server::Server::new(reaper, Arc::new(power_off_handler)).on_identity(Arc::new(fork::take)),
    );
    loop {
        match listener.accept() {
            Ok(stream) => {
                let server = Arc::clone(&server);
                let spawned =
                    std::thread::Builder::new()
                        .name("connection".into())
                        .spawn(move || {
                            if let Err(e) = server.serve(stream) {
                                agent_log!("connection: {e}");
                            }
                        });
                if let Err(e) = spawned {
                    // Out of threads: the stream is dropped (closed) and the
                    // host sees the refusal; the agent carries on.
                    agent_log!("cannot start a connection thread: {e}");
                }
            }
            Err(e) if vsock::is_transient_accept_error(&e) => {
                // EMFILE and friends pass when connections end: back off
                // instead of spinning, and keep serving.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(AgentError::Accept(e)),
        }
    }
}

/// The events connection to the host and the guest socket feeding it. A
/// guest without them still runs commands: failures are logged.
fn start_events(times: BootTimes) {
    let link = events::Events::default();
    let hub = guest_events::Hub::new(
        std::sync::Arc::new(link.clone()),
        guest_events::execs::ExecRegistry::global(),
        guest_events::Limits::default(),
    );
    let socket = std::path::Path::new(msbvm_protocol::events::GUEST_SOCKET);
    if let Err(e) = hub.listen(socket) {
        agent_log!(
            "cannot listen on {}: {e}; guest programs cannot send events",
            socket.display()
        );
    }
    link.start(times, move |e| hub.dispatch(e));
}

/// What a host's `Shutdown{code}` does in the real agent.
fn power_off_handler(code: u32) {
    shutdown::power_off(code)
}
