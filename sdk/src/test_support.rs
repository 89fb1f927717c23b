//! Helpers shared by this crate's unit tests and the runtime crate's (feature
//! `test-support`; not a stable API).

use std::path::Path;
use std::sync::Mutex;

/// Serialises tests that change process-wide environment variables.
pub static ENV_LOCK: Mutex<()> = Mutex::new(());

/// A stand-in for the guest agent behind the vsock device: a Unix listener at the device
/// socket path that answers the `CONNECT` handshake and then runs a script per connection,
/// speaking `msbvm_protocol` with blocking I/O.
pub struct FakeAgent {
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One connection of a [`FakeAgent`].
pub struct Session {
    reader: crate::framing::FrameReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
}

impl Session {
    /// The next host message (`None` when the host closed the connection).
    pub fn recv(&mut self) -> Option<msbvm_protocol::HostMessage> {
        self.reader.read_message().expect("host sent a bad frame")
    }

    /// Sends a message to the host.
    pub fn send(&mut self, m: &msbvm_protocol::GuestMessage) {
        crate::framing::write_blocking(&mut self.writer, m).expect("writing to the host");
    }

    /// Sends a message; `Err` once the host has gone (for hostile scripts that stream until
    /// the SDK gives up).
    pub fn try_send(&mut self, m: &msbvm_protocol::GuestMessage) -> std::io::Result<()> {
        crate::framing::write_blocking(&mut self.writer, m).map_err(std::io::Error::other)
    }

    /// Sends raw bytes; `Err` once the host has gone.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.writer.write_all(bytes)
    }

    /// Sends raw bytes to the host.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.writer.write_all(bytes).expect("writing to the host");
    }

    /// Expects the host's hello and answers with version `version`.
    pub fn hello_with(&mut self, version: u32) {
        assert_eq!(
            self.recv(),
            Some(msbvm_protocol::HostMessage::Hello {
                version: msbvm_protocol::PROTOCOL_VERSION
            })
        );
        self.send(&msbvm_protocol::GuestMessage::Hello {
            version,
            agent_version: "fake".into(),
        });
    }

    /// Expects the host's hello and answers it.
    pub fn hello(&mut self) {
        self.hello_with(msbvm_protocol::PROTOCOL_VERSION);
    }

    /// Expects an exec request and returns it.
    pub fn expect_exec(&mut self) -> msbvm_protocol::ExecRequest {
        match self.recv() {
            Some(msbvm_protocol::HostMessage::Exec(r)) => r,
            other => panic!("expected Exec, got {other:?}"),
        }
    }
}

impl FakeAgent {
    /// Listens at `socket` and serves `connections` connections with `script`, each on its
    /// own thread.
    pub fn spawn(
        socket: &Path,
        connections: usize,
        script: impl Fn(&mut Session) + Send + Sync + 'static,
    ) -> FakeAgent {
        use std::io::{Read, Write};
        let listener = std::os::unix::net::UnixListener::bind(socket).expect("binding the fake");
        let script = std::sync::Arc::new(script);
        let thread = std::thread::spawn(move || {
            let mut sessions = Vec::new();
            for _ in 0..connections {
                let (mut stream, _) = listener.accept().expect("accepting");
                let script = script.clone();
                sessions.push(std::thread::spawn(move || {
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while stream.read(&mut b).expect("reading CONNECT") == 1 && b[0] != b'\n' {
                        line.push(b[0]);
                    }
                    assert_eq!(line, b"CONNECT 1024");
                    stream.write_all(b"OK 1073741824\n").expect("writing OK");
                    let mut session = Session {
                        reader: crate::framing::FrameReader::new(
                            stream.try_clone().expect("cloning"),
                        ),
                        writer: stream,
                    };
                    script(&mut session);
                }));
            }
            for s in sessions {
                if let Err(panic) = s.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        FakeAgent {
            thread: Some(thread),
        }
    }

    /// Waits for every session to end, re-raising a failed assertion of the script.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// Sets environment variables for one test and restores them afterwards, holding
/// [`ENV_LOCK`] meanwhile.
pub struct EnvGuard {
    saved: Vec<(&'static str, Option<std::ffi::OsString>)>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl EnvGuard {
    pub fn set<P: AsRef<std::ffi::OsStr>>(vars: &[(&'static str, Option<P>)]) -> Self {
        let lock = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let saved = vars
            .iter()
            .map(|(k, _)| (*k, std::env::var_os(k)))
            .collect();
        for (k, v) in vars {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
        EnvGuard { saved, _lock: lock }
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (k, v) in &self.saved {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
}

/// A control-server handler ([`crate::control::server`]) that hands each request and a
/// channel for its answer to `supervisor`, as the runtime's supervisor loop gets them.
pub fn forward_to(
    supervisor: std::sync::mpsc::Sender<(
        crate::control::ControlRequest,
        std::sync::mpsc::Sender<crate::control::ControlResponse>,
    )>,
) -> impl FnMut(crate::control::ControlRequest) -> Option<crate::control::server::Answer>
       + Clone
       + Send
       + 'static {
    move |request| {
        let (tx, rx) = std::sync::mpsc::channel();
        supervisor.send((request, tx)).ok()?;
        rx.recv().ok().map(crate::control::server::Answer::One)
    }
}

/// The state record of a live-looking sandbox `name` whose runtime is this process.
pub fn state_record(
    name: &str,
    status: crate::state::Status,
    detached: bool,
) -> crate::state::StateRecord {
    crate::state::StateRecord {
        name: name.into(),
        pid: std::process::id(),
        created: 100,
        cpus: 2,
        memory_mib: 256,
        env: vec![("FROM_SANDBOX".into(), "yes".into())],
        status,
        detached,
        exit: None,
        boot: Some(msbvm_protocol::BootTimes {
            agent_start_ns: 1,
            ready_ns: 2,
            ..Default::default()
        }),
        workdir: None,
        uid: None,
        gid: None,
        image: None,
        command: Vec::new(),
        parent: None,
    }
}
