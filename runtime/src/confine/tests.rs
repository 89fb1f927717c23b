//! The confinement as the runtime applies it, each case in a child process of this test
//! binary (filters, Landlock domains and credentials cannot be undone, and SIGSYS ends the
//! whole process): the child runs `child` with a role, the parent checks what it printed and
//! how it ended.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::{agent_link, control_server, signals, Event};
use msbvm_sdk::control::{ControlRequest, ControlResponse};
use msbvm_sdk::framing::{write_blocking, FrameReader};
use msbvm_sdk::spec::{RootSpec, SandboxSpec, VolumeSource, VolumeSpec};

const ROLE_ENV: &str = "MSBVM_CONFINE_TEST_ROLE";
const DIR_ENV: &str = "MSBVM_CONFINE_TEST_DIR";

/// Runs `role` in a child; returns its output.
fn in_child(role: &str) -> (Output, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["confine::tests::child", "--exact", "--nocapture"])
        .args(["--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir.path())
        .env_remove(CONFINE_ENV)
        .output()
        .unwrap();
    (out, dir)
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The child's side: enables confinement the way the runtime does (a sandbox with a host
/// volume), then plays `role`.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return; // Not a child: nothing to do.
    };
    let base = PathBuf::from(std::env::var(DIR_ENV).unwrap());
    let volume = base.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    let home = base.join("home");
    let dir = SandboxDir::in_home(&home, "box").unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    let spec = SandboxSpec {
        root: RootSpec::Initramfs,
        volumes: vec![
            VolumeSpec {
                source: VolumeSource::Host(volume.clone()),
                guest_path: "/data".into(),
                read_only: false,
            },
            // Not created yet: planning makes it, so that it is in the ruleset.
            VolumeSpec {
                source: VolumeSource::Named("named".into()),
                guest_path: "/named".into(),
                read_only: false,
            },
        ],
        ..SandboxSpec::default()
    };
    let plan = plan(&spec, &dir, &home)
        .unwrap()
        .expect("confinement is on");
    // As in the runtime, the log writer starts before confinement and confines itself later.
    let writer = (role == "log").then(|| {
        let log = msbvm_sdk::logfile::CappedLog::open(&dir.path().join("runtime.log"), 4096);
        super::super::log_writer::start(log.unwrap()).unwrap()
    });
    enable(plan).unwrap();
    hand_over_state().unwrap();
    let named = home.join("volumes/named/data");
    match role.as_str() {
        "files" => files(dir.path(), &volume, &named),
        "sigsys" => sigsys(),
        "threads" => runtime_threads(dir.path()),
        "log" => log_thread(dir.path(), writer.expect("started for this role")),
        "bind" => bind_ports(&spec, &dir),
        other => panic!("unknown role {other}"),
    }
}

/// Prints `CHECK name value` for the parent.
fn check(name: &str, value: impl std::fmt::Display) {
    println!("CHECK {name} {value}");
}

fn files(state: &Path, volume: &Path, named: &Path) {
    let state = state.to_path_buf();
    let volume = volume.to_path_buf();
    let named = named.to_path_buf();
    std::thread::spawn(move || {
        thread_started("supervisor");
        let outside = std::fs::File::open("/etc/passwd").map_err(|e| e.raw_os_error());
        check("outside", format!("{outside:?}"));
        check("state", std::fs::write(state.join("x"), b"x").is_ok());
        // SAFETY: getuid cannot fail.
        check("uid", unsafe { libc::getuid() });
        check("caps", identity::effective_capabilities());
    })
    .join()
    .unwrap();
    // As in a sandbox: a vCPU thread starts the virtio-fs worker, which confines itself
    // under the vCPU thread's confinement.
    std::thread::spawn(move || {
        thread_started("vcpu");
        check("vcpu-caps", identity::effective_capabilities());
        std::thread::spawn(move || {
            thread_started("virtio-fs");
            check("fs-volume", std::fs::write(volume.join("y"), b"y").is_ok());
            check("fs-named", std::fs::write(named.join("z"), b"z").is_ok());
            check("fs-caps", identity::effective_capabilities());
            let outside = std::fs::read_dir("/home")
                .map(|_| ())
                .map_err(|e| e.raw_os_error());
            check("fs-outside", format!("{outside:?}"));
        })
        .join()
        .unwrap();
    })
    .join()
    .unwrap();
}

/// Ports published while the sandbox runs, below 1024: the supervisor binds them (through
/// the sandbox's real netstack); a thread it starts later and a thread of another kind cannot.
fn bind_ports(spec: &SandboxSpec, dir: &SandboxDir) {
    use std::net::{SocketAddr, TcpListener};
    // Started after `enable`, as in the runtime: its thread confines itself as `netstack`.
    let (net, _, _) = crate::devices::network(
        &spec.network,
        crate::devices::policy(&spec.network, false).unwrap(),
        None,
        dir,
        &std::sync::Arc::new(msbvm_plugins::Chain::empty()),
    )
    .unwrap();
    // Still root and unconfined here: find privileged ports nothing else listens on.
    let mut free = (900..1000).filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok());
    let mut next = || free.next().expect("a free port below 1000");
    let (supervisor_port, other_port, netstack_port) = (next(), next(), next());
    let low = |port: u16| crate::devices::published(SocketAddr::from(([127, 0, 0, 1], port)), 80);
    let refused = |port: u16| {
        let bound = TcpListener::bind(("127.0.0.1", port));
        format!("{:?}", bound.map(|_| ()).map_err(|e| e.raw_os_error()))
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            thread_started("supervisor");
            check("supervisor-caps", identity::effective_capabilities());
            let published = net.publish(low(supervisor_port));
            let port = published.map(|a| a.port()).map_err(|e| e.to_string());
            check(
                "supervisor-publish",
                format!("{:?}", port.map(|p| p == supervisor_port)),
            );
            // As the supervisor's shutdown thread does.
            std::thread::spawn(move || {
                drop_capabilities();
                check("started-caps", identity::effective_capabilities());
                check("started-bind", refused(other_port));
            })
            .join()
            .unwrap();
        });
        s.spawn(|| {
            thread_started("netstack");
            check("netstack-caps", identity::effective_capabilities());
            match net.publish(low(netstack_port)) {
                Ok(a) => check("netstack-publish", format!("bound {a}")),
                Err(e) => check("netstack-publish", e),
            }
        });
    });
    std::io::stdout().flush().unwrap();
}

/// The log writer, confined, rotates `runtime.log` while another confined thread logs.
fn log_thread(state: &Path, writer: super::super::log_writer::LogSender) {
    use super::super::log_writer;
    log_writer::confine();
    std::thread::spawn(move || {
        thread_started("virtio-net");
        let mut writer = writer;
        for i in 0..200 {
            let line = format!("{i:04} {}\n", "x".repeat(90));
            writer.write_all(line.as_bytes()).unwrap();
        }
    })
    .join()
    .unwrap();
    log_writer::flush(Duration::from_secs(10));
    let live = std::fs::metadata(state.join("runtime.log")).map_or(0, |m| m.len());
    let rotated = std::fs::read_to_string(state.join("runtime.log.1")).unwrap_or_default();
    check(
        "log-rotated",
        live > 0 && live <= 4096 && !rotated.is_empty(),
    );
    std::io::stdout().flush().unwrap();
}

fn sigsys() {
    std::thread::Builder::new()
        .name("probe".into())
        .spawn(|| {
            thread_started("virtio-net");
            let mut buf = [0u8; 64];
            // SAFETY: getcwd into a local buffer; the virtio-net filter forbids it.
            unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
            check("survived", true);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn files_outside_the_sandbox_are_refused_and_root_is_left() {
    let (out, _dir) = in_child("files");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    if landlock::supported() > 0 {
        assert!(all.contains("CHECK outside Err(Some(13))"), "{all}"); // EACCES
        assert!(all.contains("CHECK fs-outside Err(Some(13))"), "{all}");
    } else {
        println!("Landlock checks skipped: this kernel has no Landlock");
    }
    assert!(all.contains("CHECK state true"), "{all}");
    assert!(all.contains("CHECK fs-volume true"), "{all}");
    assert!(all.contains("CHECK fs-named true"), "{all}");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        assert!(all.contains("CHECK uid 65534"), "{all}");
        // The supervisor keeps only what a live `msbvm net publish` of a low port needs.
        let bind = 1u64 << identity::CAP_NET_BIND_SERVICE;
        assert!(all.contains(&format!("CHECK caps {bind}\n")), "{all}");
        let fs = identity::fs_capabilities(true, false);
        assert!(all.contains(&format!("CHECK fs-caps {fs}\n")), "{all}");
        assert!(all.contains(&format!("CHECK vcpu-caps {fs}\n")), "{all}");
    } else {
        println!("user switch checks skipped: the tests do not run as root");
    }
}

#[test]
fn a_forbidden_system_call_is_reported_and_ends_the_runtime_with_sigsys() {
    let (out, _dir) = in_child("sigsys");
    let all = text(&out);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{all}");
    assert!(!all.contains("CHECK survived"), "{all}");
    let report = format!(
        "msbvm runtime: seccomp: thread probe made the forbidden system call {}",
        libc::SYS_getcwd
    );
    assert!(all.contains(&report), "{all}");
}

/// The real work of the runtime's own thread kinds under their filters: signals, the
/// lifeline, a control client's status request, the agent's hello and ready, and the
/// supervisor writing a record, asking a (fake) agent to shut down and cleaning up.
fn runtime_threads(state: &Path) {
    use msbvm_protocol::{BootTimes, GuestMessage, HostMessage, PROTOCOL_VERSION};
    signals::block().unwrap();
    let (tx, rx) = mpsc::channel();
    signals::spawn_waiter(tx.clone()).unwrap();
    let (lifeline_read, lifeline_write) = UnixStream::pair().unwrap();
    use std::os::fd::IntoRawFd;
    signals::spawn_lifeline_watch(lifeline_read.into_raw_fd(), tx.clone()).unwrap();
    let control = state.join("control.sock");
    let hub = std::sync::Arc::new(crate::event_hub::EventHub::default());
    control_server::spawn(
        UnixListener::bind(&control).unwrap(),
        tx.clone(),
        hub.clone(),
    )
    .unwrap();
    let events = state.join("vsock.sock_1025");
    agent_link::spawn_events_listener(UnixListener::bind(&events).unwrap(), tx.clone(), hub)
        .unwrap();
    let uds = state.join("vsock.sock");
    let fake = msbvm_sdk::test_support::FakeAgent::spawn(&uds, 1, |s| {
        s.hello();
        assert_eq!(s.recv(), Some(HostMessage::Shutdown { code: 0 }));
    });
    hand_over_state().unwrap(); // The sockets bound since.
    let client = std::thread::spawn(move || {
        let mut c = UnixStream::connect(&control).unwrap();
        let mut r = FrameReader::new(c.try_clone().unwrap());
        write_blocking(&mut c, &ControlRequest::Hello { version: 1 }).unwrap();
        r.read_message::<ControlResponse>().unwrap();
        write_blocking(&mut c, &ControlRequest::Status).unwrap();
        let status = r.read_message::<ControlResponse>().unwrap();
        check(
            "control-status",
            matches!(status, Some(ControlResponse::Status(_))),
        );
        let mut a = UnixStream::connect(&events).unwrap();
        let hello = GuestMessage::Hello {
            version: PROTOCOL_VERSION,
            agent_version: "test".into(),
        };
        write_blocking(&mut a, &hello).unwrap();
        let boot = BootTimes {
            agent_start_ns: 1,
            ready_ns: 2,
            ..Default::default()
        };
        write_blocking(&mut a, &GuestMessage::Ready(boot)).unwrap();
        guest_events_under_the_filters(&control, a);
        std::thread::sleep(Duration::from_millis(200));
        // The test harness's own threads do not block SIGHUP (the runtime blocks it before
        // its first thread), so send it to the signal thread itself.
        let tid = signal_thread_id();
        // SAFETY: tgkill of a thread of this process that waits for SIGHUP in sigwait.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGHUP) };
        drop(lifeline_write);
        std::thread::sleep(Duration::from_millis(500));
    });
    thread_started("supervisor");
    supervise_for_test(&rx, state);
    client.join().unwrap();
    fake.join();
}

/// Guest events through the confined threads: an event the agent forwards reaches a control
/// client's stream (an idle follower polls its client), and a host event reaches the agent.
fn guest_events_under_the_filters(control: &Path, agent: UnixStream) {
    use msbvm_protocol::events::{GuestEvent, HostEvent, Target};
    use msbvm_protocol::{GuestMessage, HostMessage};
    let connect = || {
        let mut c = UnixStream::connect(control).unwrap();
        let r = FrameReader::new(c.try_clone().unwrap());
        write_blocking(&mut c, &ControlRequest::Hello { version: 1 }).unwrap();
        let mut r = r;
        r.read_message::<ControlResponse>().unwrap();
        (c, r)
    };
    let (mut follower, mut follower_r) = connect();
    let request = ControlRequest::Events {
        types: vec!["job.*".into()],
        follow: true,
    };
    write_blocking(&mut follower, &request).unwrap();
    std::thread::sleep(Duration::from_millis(700)); // One idle check of the client.
    let mut a = agent.try_clone().unwrap();
    let event = GuestEvent {
        kind: "job.done".into(),
        data: "{}".into(),
        id: None,
        reply_to: None,
        pid: 5,
        exec: None,
        connection: 1,
        time_ms: 1,
    };
    write_blocking(&mut a, &GuestMessage::Event(event.clone())).unwrap();
    let got = follower_r.read_message::<ControlResponse>().unwrap();
    check("events-stream", got == Some(ControlResponse::Event(event)));
    drop((follower, follower_r));
    let (mut c, mut r) = connect();
    let host = HostEvent {
        kind: "go".into(),
        data: "1".into(),
        id: None,
        reply_to: None,
        target: Target::Subscribers,
    };
    write_blocking(&mut c, &ControlRequest::Emit(host.clone())).unwrap();
    let done = r.read_message::<ControlResponse>().unwrap();
    let mut from_host = FrameReader::new(agent);
    let mut emitted = false;
    for _ in 0..2 {
        // The runtime's hello comes first.
        if from_host.read_message::<HostMessage>().unwrap()
            == Some(HostMessage::Event(host.clone()))
        {
            emitted = true;
            break;
        }
    }
    check(
        "events-emit",
        done == Some(ControlResponse::Done) && emitted,
    );
}

/// The thread id of the runtime's signal thread (`msbvm-signals`).
fn signal_thread_id() -> libc::pid_t {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "msbvm-signals")
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
        .expect("the signal thread runs")
}

/// The supervisor's part of [`runtime_threads`], on the confined main thread.
fn supervise_for_test(rx: &mpsc::Receiver<Event>, state: &Path) {
    let (mut signal, mut lifeline, mut ready) = (false, false, false);
    while !(signal && lifeline && ready) {
        match rx.recv_timeout(Duration::from_secs(10)).expect("an event") {
            Event::Control(ControlRequest::Status, reply) => {
                let status = msbvm_sdk::control::RuntimeStatus {
                    status: msbvm_sdk::state::Status::Running,
                    pid: std::process::id(),
                    uptime_ms: 1,
                };
                reply.send(ControlResponse::Status(status)).unwrap();
            }
            Event::Signal(s) => signal = s == libc::SIGHUP,
            Event::LifelineClosed => lifeline = true,
            Event::AgentReady(_) => ready = true,
            other => panic!("unexpected event {other:?}"),
        }
    }
    check("events", true);
    let record = state.join("record.tmp");
    std::fs::write(&record, b"{}").unwrap();
    std::fs::rename(&record, state.join("record.json")).unwrap();
    std::fs::create_dir_all(state.join("sub/dir")).unwrap();
    std::fs::remove_dir_all(state.join("sub")).unwrap();
    check("records", true);
    // `msbvm debug dump-memory`: a thread the supervisor starts writes guest RAM.
    let memory = msbvm_vmm::memory::MemoryHandle::new();
    memory.set(Some(msbvm_vmm::layout::create_memory(2 << 20).unwrap()));
    let dump = state.join(msbvm_sdk::paths::MEMORY_DUMP_FILE);
    let written = std::thread::spawn(move || crate::write_dump(&memory, &dump).ok())
        .join()
        .unwrap();
    check("dump", written == Some(2 << 20));
    // What publishing a port on a running sandbox does on this thread.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    check("publish", listener.local_addr().is_ok());
    let shutdown =
        agent_link::request_shutdown(&state.join("vsock.sock"), 0, Duration::from_secs(5));
    check("shutdown", format!("{shutdown:?}"));
    std::io::stdout().flush().unwrap();
}

#[test]
fn runtime_threads_do_their_work_under_their_filters() {
    let (out, _dir) = in_child("threads");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for line in [
        "CHECK control-status true",
        "CHECK events true",
        "CHECK events-stream true",
        "CHECK events-emit true",
        "CHECK records true",
        "CHECK dump true",
        "CHECK publish true",
        "CHECK shutdown Ok(())",
    ] {
        assert!(all.contains(line), "{line}\n{all}");
    }
}

/// Which thread kinds keep `CAP_NET_BIND_SERVICE`, as a sandbox's plan decides.
#[test]
fn only_the_supervisor_of_a_root_runtime_with_a_network_keeps_cap_net_bind_service() {
    let base = tempfile::TempDir::new().unwrap();
    let home = base.path().join("home");
    let dir = SandboxDir::in_home(&home, "box").unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    let mut spec = SandboxSpec {
        root: RootSpec::Initramfs,
        ..SandboxSpec::default()
    };
    let bind = 1u64 << identity::CAP_NET_BIND_SERVICE;
    let planned = plan(&spec, &dir, &home)
        .unwrap()
        .expect("confinement is on");
    let switches = planned.identity.is_some();
    let jail = Jail {
        ruleset: None,
        identity: planned.identity,
        fs_capabilities: planned.fs_capabilities,
        supervisor_capabilities: planned.supervisor_capabilities,
        seccomp: false,
        state_dir: planned.state_dir,
    };
    for kind in seccomp::KINDS {
        let keeps = jail.capabilities(kind) & bind != 0;
        assert_eq!(keeps, switches && *kind == "supervisor", "{kind}");
    }
    assert_eq!(jail.capabilities("supervisor") & !bind, 0);
    spec.network.enabled = false;
    let planned = plan(&spec, &dir, &home)
        .unwrap()
        .expect("confinement is on");
    assert_eq!(planned.supervisor_capabilities, 0);
}

#[test]
fn only_the_supervisor_binds_privileged_ports() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: only_the_supervisor_binds_privileged_ports: needs root");
        return;
    }
    let (out, _dir) = in_child("bind");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let bind = 1u64 << identity::CAP_NET_BIND_SERVICE;
    for line in [
        format!("CHECK supervisor-caps {bind}\n"),
        "CHECK supervisor-publish Ok(true)\n".into(),
        "CHECK started-caps 0\n".into(),
        "CHECK netstack-caps 0\n".into(),
    ] {
        assert!(all.contains(&line), "{line}\n{all}");
    }
    let unprivileged = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(1024);
    if unprivileged > 900 {
        assert!(all.contains("CHECK started-bind Err(Some(13))"), "{all}"); // EACCES
        assert!(
            all.contains("CHECK netstack-publish binding 127.0.0.1:")
                && all.contains("needs CAP_NET_BIND_SERVICE or root"),
            "{all}"
        );
    } else {
        println!("refusal checks skipped: this host lets anyone bind ports from {unprivileged}");
    }
}

/// `runtime.log` is rotated by its writer thread under the thread's own filter while a
/// device worker logs (a worker may not rename or open files itself).
#[test]
fn the_log_writer_rotates_runtime_log_under_its_filter() {
    let (out, _dir) = in_child("log");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("CHECK log-rotated true"), "{all}");
}
