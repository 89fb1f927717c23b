//! The real connection handler over Unix socket pairs, with real processes.
//!
//! The test process makes itself a child subreaper, so orphans of the
//! commands run here are re-parented to it and the agent's reaper is
//! exercised as it is in the guest (where it runs as PID 1). What only PID 1
//! can do (mounts, hostname, powering off) is not run here.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use msbvm_protocol::{
    encode, ExecRequest, ExitStatus, GuestMessage, HostMessage, TtySize, MAX_CHUNK_LEN,
    MAX_FRAME_LEN, PROTOCOL_VERSION,
};

use super::reaper::Reaper;
use super::server::Server;
use msbvm_protocol::framing::FrameReader;

/// Shutdown codes the test server was asked for.
fn shutdowns() -> &'static Mutex<Vec<u32>> {
    static CODES: OnceLock<Mutex<Vec<u32>>> = OnceLock::new();
    CODES.get_or_init(Default::default)
}

fn server() -> &'static Arc<Server> {
    static SERVER: OnceLock<Arc<Server>> = OnceLock::new();
    SERVER.get_or_init(|| {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
        Arc::new(Server::new(
            Reaper::global(),
            Arc::new(|code| shutdowns().lock().unwrap().push(code)),
        ))
    })
}

struct Client {
    stream: UnixStream,
    input: FrameReader<UnixStream>,
}

#[derive(Debug, Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<ExitStatus>,
    errors: Vec<String>,
}

impl Output {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Asserts that less than `limit` passed since `start`.
fn assert_took_less_than(start: Instant, limit: Duration) {
    let took = start.elapsed();
    assert!(took < limit, "took {took:?}, limit {limit:?}");
}

fn req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sh(script: &str) -> ExecRequest {
    req(&["sh", "-c", script])
}

impl Client {
    /// A fresh connection served on its own thread, before Hello.
    fn raw() -> Client {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = Arc::clone(server());
        std::thread::spawn(move || {
            let _ = server.serve(theirs);
        });
        ours.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Client {
            input: FrameReader::new(ours.try_clone().unwrap()),
            stream: ours,
        }
    }

    /// A fresh connection after a successful Hello.
    fn new() -> Client {
        let mut c = Client::raw();
        c.send(&HostMessage::Hello {
            version: PROTOCOL_VERSION,
        });
        match c.recv() {
            GuestMessage::Hello { version, .. } => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("expected Hello, got {other:?}"),
        }
        c
    }

    fn send(&mut self, m: &HostMessage) {
        self.stream.write_all(&encode(m).unwrap()).unwrap();
    }

    fn try_recv(&mut self) -> Option<GuestMessage> {
        self.input
            .read_message::<GuestMessage>()
            .unwrap_or_else(|e| panic!("agent sent a malformed frame: {e}"))
    }

    fn recv(&mut self) -> GuestMessage {
        self.try_recv().expect("connection closed")
    }

    /// An `Error`, after which the agent closes the connection.
    fn expect_final_error(&mut self) -> String {
        let e = self.expect_error();
        assert_eq!(
            self.try_recv(),
            None,
            "the connection stayed open after: {e}"
        );
        e
    }

    fn expect_error(&mut self) -> String {
        match self.recv() {
            GuestMessage::Error { message } => message,
            other => panic!("expected Error, got {other:?}"),
        }
    }

    fn ping(&mut self) {
        self.send(&HostMessage::Ping);
        assert_eq!(self.recv(), GuestMessage::Pong);
    }

    /// Sends Exec and expects Started.
    fn exec(&mut self, r: ExecRequest) -> u32 {
        self.send(&HostMessage::Exec(r));
        match self.recv() {
            GuestMessage::Started { pid } => pid,
            other => panic!("expected Started, got {other:?}"),
        }
    }

    /// Everything up to Exited; checks the connection closes after it.
    fn collect(&mut self) -> Output {
        let mut out = Output::default();
        loop {
            match self.recv() {
                GuestMessage::Stdout(d) => out.stdout.extend(d),
                GuestMessage::Stderr(d) => out.stderr.extend(d),
                GuestMessage::Error { message } => out.errors.push(message),
                GuestMessage::Pong => {}
                GuestMessage::Exited(s) => {
                    out.status = Some(s);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(self.try_recv(), None, "Exited must be the last message");
        out
    }

    fn run(r: ExecRequest) -> Output {
        let mut c = Client::new();
        c.exec(r);
        // A quick process may be gone, and the agent's end closed, before this arrives (the
        // SDK ignores this failure the same way); `collect` still sees everything.
        let _ = c
            .stream
            .write_all(&encode(&HostMessage::CloseStdin).unwrap());
        c.collect()
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True while `pid` exists (a zombie counts: it is not reaped yet).
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn echo() {
    let out = Client::run(req(&["echo", "hello", "world"]));
    assert_eq!(out.stdout(), "hello world\n");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

#[test]
fn exit_code() {
    assert_eq!(Client::run(sh("exit 3")).status, Some(ExitStatus::Code(3)));
}

#[test]
fn stderr_is_separate_from_stdout() {
    let out = Client::run(sh("echo out; echo err >&2; echo out2"));
    assert_eq!(out.stdout(), "out\nout2\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

#[test]
fn stdin_round_trip_of_one_mib_through_cat() {
    let data: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut c = Client::new();
    c.exec(req(&["cat"]));
    // Write from another thread while this one reads, as a host does.
    let mut w = c.stream.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in sent.chunks(MAX_CHUNK_LEN) {
            w.write_all(&encode(&HostMessage::Stdin(chunk.to_vec())).unwrap())
                .unwrap();
        }
        w.write_all(&encode(&HostMessage::CloseStdin).unwrap())
            .unwrap();
    });
    let out = c.collect();
    writer.join().unwrap();
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdin came back altered");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

#[test]
fn ten_mib_of_output_arrives_intact() {
    let mut c = Client::new();
    c.exec(sh("yes 0123456789abcdef | head -c 10485760"));
    let mut out = Vec::new();
    let mut chunks = 0;
    let status = loop {
        match c.recv() {
            GuestMessage::Stdout(d) => {
                assert!(d.len() <= MAX_CHUNK_LEN);
                chunks += 1;
                out.extend(d);
            }
            GuestMessage::Exited(s) => break s,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out.len(), 10 << 20);
    assert!(
        out.chunks(17)
            .all(|l| l == &b"0123456789abcdef\n"[..l.len()]),
        "output corrupted"
    );
    assert!(chunks >= 160, "{chunks} chunks");
}

#[test]
fn twenty_concurrent_execs() {
    let threads: Vec<_> = (0..24)
        .map(|i| {
            std::thread::spawn(move || {
                let out = Client::run(req(&[
                    "sh",
                    "-c",
                    "echo start $0; sleep 0.3; echo end $0; exit $(($0 % 7))",
                    &i.to_string(),
                ]));
                assert_eq!(out.stdout(), format!("start {i}\nend {i}\n"));
                assert_eq!(out.status, Some(ExitStatus::Code(i % 7)));
            })
        })
        .collect();
    let start = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    // Concurrent, not one after the other (24 x 0.3 s).
    assert_took_less_than(start, Duration::from_secs(10));
}

#[test]
fn timeout_kills_the_process() {
    let start = Instant::now();
    let out = Client::run(ExecRequest {
        timeout_ms: Some(200),
        ..req(&["sleep", "100"])
    });
    assert_eq!(out.status, Some(ExitStatus::TimedOut));
    assert_took_less_than(start, Duration::from_secs(5));
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let start = Instant::now();
    let mut c = Client::new();
    c.exec(ExecRequest {
        timeout_ms: Some(300),
        ..sh("sleep 100 & echo $!; wait")
    });
    let out = c.collect();
    assert_eq!(out.status, Some(ExitStatus::TimedOut));
    let bg: u32 = out.stdout().trim().parse().unwrap();
    wait_until(
        "the background sleep is gone",
        Duration::from_secs(5),
        || !exists(bg),
    );
    assert_took_less_than(start, Duration::from_secs(6));
}

#[test]
fn signal_ends_a_sleep() {
    let mut c = Client::new();
    c.exec(req(&["sleep", "100"]));
    c.send(&HostMessage::Signal(15));
    assert_eq!(c.collect().status, Some(ExitStatus::Signal(15)));
}

#[test]
fn signal_reaches_the_process_tree() {
    let start = Instant::now();
    let mut c = Client::new();
    c.exec(sh("sleep 100 & sleep 100"));
    c.send(&HostMessage::Signal(15));
    let out = c.collect();
    assert_eq!(out.status, Some(ExitStatus::Signal(15)));
    assert_took_less_than(start, Duration::from_secs(3));
}

#[test]
fn invalid_signal_is_an_error_and_the_session_goes_on() {
    let mut c = Client::new();
    c.exec(req(&["cat"]));
    c.send(&HostMessage::Signal(0));
    assert!(c.expect_error().contains("signal"));
    c.send(&HostMessage::Resize(TtySize { rows: 1, cols: 1 }));
    assert!(c.expect_error().contains("terminal"));
    c.ping();
    c.send(&HostMessage::Stdin(b"still here".to_vec()));
    c.send(&HostMessage::CloseStdin);
    let out = c.collect();
    assert_eq!(out.stdout(), "still here");
}

#[test]
fn pty_session_reports_its_tty_and_resizes() {
    let mut c = Client::new();
    c.exec(ExecRequest {
        tty: Some(TtySize { rows: 24, cols: 80 }),
        ..sh("tty; stty size; read x; stty size; echo TERM=$TERM")
    });
    // Wait for the first size before resizing.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("24 80") {
        match c.recv() {
            GuestMessage::Stdout(d) => seen.extend(d),
            GuestMessage::Stderr(_) => panic!("a pty session has no separate stderr"),
            other => panic!("unexpected {other:?}"),
        }
    }
    c.send(&HostMessage::Resize(TtySize {
        rows: 50,
        cols: 120,
    }));
    c.send(&HostMessage::Stdin(b"\n".to_vec()));
    let out = c.collect();
    seen.extend(&out.stdout);
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("50 120"), "{text:?}");
    assert!(text.contains("TERM=xterm"), "{text:?}");
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

#[test]
fn pty_close_stdin_is_end_of_file() {
    let mut c = Client::new();
    c.exec(ExecRequest {
        tty: Some(TtySize { rows: 24, cols: 80 }),
        ..req(&["cat"])
    });
    c.send(&HostMessage::Stdin(b"line\n".to_vec()));
    c.send(&HostMessage::CloseStdin);
    let out = c.collect();
    assert!(out.stdout().contains("line"), "{:?}", out.stdout());
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
}

#[test]
fn nonexistent_program_is_an_error_naming_it() {
    let mut c = Client::new();
    c.send(&HostMessage::Exec(req(&["no-such-program-msbvm"])));
    let e = c.expect_error();
    assert!(e.contains("no-such-program-msbvm"), "{e}");
    assert!(e.contains("No such file or directory"), "{e}");
    // The connection is still usable, for a ping and for another exec.
    c.ping();
    c.send(&HostMessage::Exec(req(&["/nonexistent/msbvm-prog"])));
    let e = c.expect_error();
    assert!(e.contains("/nonexistent/msbvm-prog"), "{e}");
    c.exec(req(&["true"]));
    assert_eq!(c.collect().status, Some(ExitStatus::Code(0)));
}

#[test]
fn bad_cwd_is_an_error_naming_it() {
    let mut c = Client::new();
    c.send(&HostMessage::Exec(ExecRequest {
        cwd: Some("/nonexistent-msbvm-dir".into()),
        ..req(&["true"])
    }));
    let e = c.expect_error();
    assert!(e.contains("/nonexistent-msbvm-dir"), "{e}");
}

#[test]
fn env_cwd_and_user() {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let out = Client::run(ExecRequest {
        env: vec![("FOO".into(), "bar baz".into())],
        cwd: Some("/tmp".into()),
        uid: Some(uid),
        gid: Some(gid),
        ..sh("echo \"$FOO|$(pwd)|$(id -u)|$(id -g)|${HOME-unset}\"")
    });
    assert_eq!(out.stdout(), format!("bar baz|/tmp|{uid}|{gid}|unset\n"));
    // The empty environment gets the default PATH (with the in-guest
    // command's directory), HOME and the events socket.
    let out = Client::run(req(&["env"]));
    let env = out.stdout();
    assert!(
        env.contains(&format!(
            "PATH={}:{}\n",
            super::exec::DEFAULT_PATH,
            msbvm_protocol::events::GUEST_BIN_DIR
        )),
        "{env}"
    );
    assert!(
        env.contains("MSBVM_EVENTS_SOCKET=/run/msbvm/events.sock\n"),
        "{env}"
    );
    assert!(env.contains("HOME="), "{env}");
    assert!(!env.contains("TERM="), "{env}");
}

#[test]
fn exited_comes_soon_even_if_a_background_process_keeps_stdout() {
    let start = Instant::now();
    let mut c = Client::new();
    c.exec(sh("sleep 3 & echo $!"));
    let out = c.collect();
    assert_eq!(out.status, Some(ExitStatus::Code(0)));
    assert_took_less_than(start, Duration::from_millis(2500));
    // The orphan is re-parented to us (subreaper, as to PID 1 in the guest)
    // and the reaper collects it when it ends.
    let orphan: u32 = out.stdout().trim().parse().unwrap();
    wait_until("the orphan is reaped", Duration::from_secs(10), || {
        !exists(orphan)
    });
}

#[test]
fn host_disconnect_kills_the_process_group() {
    let mut c = Client::new();
    c.exec(sh("sleep 100 & echo $!; wait"));
    let bg: u32 = match c.recv() {
        GuestMessage::Stdout(d) => String::from_utf8_lossy(&d).trim().parse().unwrap(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(exists(bg));
    drop(c);
    wait_until(
        "the process group is killed and reaped",
        Duration::from_secs(5),
        || !exists(bg),
    );
}

#[test]
fn malformed_frame_is_an_error_and_the_connection_goes_on() {
    let mut c = Client::new();
    c.stream.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).unwrap();
    assert!(c.expect_error().contains("decode"));
    c.ping();
    // Messages out of place are errors too.
    c.send(&HostMessage::Stdin(b"x".to_vec()));
    assert!(c.expect_error().contains("no process"));
    c.send(&HostMessage::Hello {
        version: PROTOCOL_VERSION,
    });
    c.expect_error();
    c.ping();
}

#[test]
fn oversized_frame_is_an_error_and_closes_the_connection() {
    let mut c = Client::new();
    c.stream
        .write_all(&(MAX_FRAME_LEN as u32 + 1).to_le_bytes())
        .unwrap();
    assert!(c.expect_final_error().contains("exceeds"));
}

#[test]
fn version_mismatch_is_an_error_naming_both_versions() {
    let mut c = Client::raw();
    c.send(&HostMessage::Hello { version: 999 });
    let e = c.expect_final_error();
    assert!(
        e.contains("999") && e.contains(&PROTOCOL_VERSION.to_string()),
        "{e}"
    );
}

#[test]
fn first_message_must_be_hello() {
    let mut c = Client::raw();
    c.send(&HostMessage::Ping);
    assert!(c.expect_final_error().contains("Hello"));
}

#[test]
fn shutdown_goes_to_the_handler() {
    let mut c = Client::new();
    c.send(&HostMessage::Shutdown { code: 42 });
    c.ping();
    assert!(shutdowns().lock().unwrap().contains(&42));
}

#[test]
fn second_exec_on_a_connection_is_refused() {
    let mut c = Client::new();
    c.exec(req(&["cat"]));
    c.send(&HostMessage::Exec(req(&["true"])));
    assert!(c.expect_error().contains("already running"));
    c.send(&HostMessage::CloseStdin);
    assert_eq!(c.collect().status, Some(ExitStatus::Code(0)));
}

/// Serves one connection on which the host sends Hello and then `tail`
/// before closing its side; returns how serving ended.
fn serve_hello_then(tail: &[u8]) -> Result<(), super::connection::ConnectionError> {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let serving = std::thread::spawn(move || server().serve(theirs));
    let hello = HostMessage::Hello {
        version: PROTOCOL_VERSION,
    };
    ours.write_all(&encode(&hello).unwrap()).unwrap();
    ours.write_all(tail).unwrap();
    ours.shutdown(std::net::Shutdown::Write).unwrap();
    serving.join().unwrap()
}

#[test]
fn a_clean_close_between_frames_ends_the_connection_quietly() {
    serve_hello_then(&encode(&HostMessage::Ping).unwrap()).unwrap();
}

#[test]
fn a_connection_cut_mid_frame_ends_with_a_truncation_error() {
    let frame = encode(&HostMessage::Stdin(vec![1; 8])).unwrap();
    let result = serve_hello_then(&frame[..frame.len() - 2]);
    assert!(
        matches!(
            result,
            Err(super::connection::ConnectionError::Frame(
                msbvm_protocol::framing::FrameError::Truncated { .. }
            ))
        ),
        "{result:?}"
    );
}
