//! Peer sandboxes from inside a sandbox: the SDK's side of the host's spawn service
//! ([`crate::spawn`]), for Rust programs running in a guest.
//!
//! [`Peers::connect`] finds out whether this program runs in an msbvm sandbox (the guest's
//! events socket is there) and opens a vsock connection to the host's spawn service, which
//! answers only if the sandbox's creator granted spawning. Children are named by their short
//! names; the host enforces the grant, so a refusal arrives as [`Error::Spawn`] with the host's
//! reason. Outside a sandbox every call fails at once with [`Error::NotInSandbox`].
//!
//! ```no_run
//! # async fn f() -> msbvm_sdk::Result<()> {
//! use msbvm_sdk::peer::{ChildSpec, Peers};
//! let peers = Peers::connect().await?;
//! peers.create(ChildSpec { name: "w1".into(), memory_mib: Some(256), ..Default::default() }).await?;
//! let out = peers.exec("w1", &["uname", "-r"], b"").await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! peers.remove("w1").await?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use msbvm_protocol::events::GUEST_SOCKET;
use msbvm_protocol::framing::{write_blocking, FrameReader};
use msbvm_protocol::spawn::{SpawnRequest, SpawnResponse, SPAWN_PORT};
use msbvm_protocol::{HOST_CID, PROTOCOL_VERSION};

pub use msbvm_protocol::spawn::{ChildInfo, ChildSpec, MAX_FILE_LEN};

use crate::error::{Error, Result};

/// What a command run in a child left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerOutput {
    /// Its exit code (128 + N for a signal N, 124 for a timeout).
    pub code: i32,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// Output past the service's limit was cut.
    pub truncated: bool,
}

/// A connection to the host's spawn service. Cheap to clone; calls are served one at a time.
#[derive(Clone)]
pub struct Peers {
    conn: Arc<Mutex<Conn>>,
}

struct Conn {
    reader: FrameReader<File>,
    writer: File,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

/// Whether this program runs inside an msbvm sandbox.
pub fn in_sandbox() -> bool {
    Path::new(GUEST_SOCKET).exists()
}

/// A blocking vsock connection to the host's `port`.
fn vsock_connect(port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; zero is valid for every field.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = HOST_CID;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    loop {
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
        let rc = unsafe {
            libc::connect(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&addr as *const libc::sockaddr_vm).cast(),
                len,
            )
        };
        if rc == 0 {
            return Ok(fd);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Peers {
    /// Connects to the host's spawn service.
    pub async fn connect() -> Result<Peers> {
        if !in_sandbox() {
            return Err(Error::NotInSandbox(format!(
                "no events socket at {GUEST_SOCKET}"
            )));
        }
        let fd = tokio::task::spawn_blocking(|| vsock_connect(SPAWN_PORT))
            .await
            .map_err(|e| Error::Spawn(e.to_string()))?
            .map_err(|e| {
                Error::Spawn(format!(
                    "this sandbox may not create sandboxes ({e}): its creator did not allow it \
                     (msbvm run --allow-spawn N, SDK .allow_spawn(..))"
                ))
            })?;
        Peers::over(fd).await
    }

    /// Speaks the protocol over `fd` (a connected stream socket); hello first.
    pub async fn over(fd: OwnedFd) -> Result<Peers> {
        let writer = File::from(fd);
        let reader = writer
            .try_clone()
            .map_err(Error::io("cloning the spawn service connection"))?;
        let peers = Peers {
            conn: Arc::new(Mutex::new(Conn {
                reader: FrameReader::new(reader),
                writer,
            })),
        };
        match peers
            .call(SpawnRequest::Hello {
                version: PROTOCOL_VERSION,
            })
            .await?
        {
            SpawnResponse::Hello { .. } => Ok(peers),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&self, request: SpawnRequest) -> Result<SpawnResponse> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|e| e.into_inner());
            let failed = |e: msbvm_protocol::framing::FrameError| {
                Error::Spawn(format!("the host's spawn service failed: {e}"))
            };
            write_blocking(&mut conn.writer, &request).map_err(failed)?;
            match conn
                .reader
                .read_message::<SpawnResponse>()
                .map_err(failed)?
            {
                Some(SpawnResponse::Error(message)) => Err(Error::Spawn(message)),
                Some(answer) => Ok(answer),
                None => Err(Error::Spawn(
                    "the host's spawn service closed the connection".into(),
                )),
            }
        })
        .await
        .map_err(|e| Error::Spawn(e.to_string()))?
    }

    async fn done(&self, request: SpawnRequest) -> Result<()> {
        match self.call(request).await? {
            SpawnResponse::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a child and waits until it is ready.
    pub async fn create(&self, spec: ChildSpec) -> Result<()> {
        self.done(SpawnRequest::Create(spec)).await
    }

    /// Runs a command in child `name` to its end with `stdin` as its input.
    pub async fn exec(&self, name: &str, argv: &[&str], stdin: &[u8]) -> Result<PeerOutput> {
        let request = SpawnRequest::Exec {
            name: name.into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            stdin: stdin.to_vec(),
            timeout_secs: None,
        };
        match self.call(request).await? {
            SpawnResponse::Exited {
                code,
                stdout,
                stderr,
                truncated,
            } => Ok(PeerOutput {
                code,
                stdout,
                stderr,
                truncated,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads a file of child `name` (at most [`MAX_FILE_LEN`] bytes).
    pub async fn read_file(&self, name: &str, path: &str) -> Result<Vec<u8>> {
        let request = SpawnRequest::ReadFile {
            name: name.into(),
            path: path.into(),
        };
        match self.call(request).await? {
            SpawnResponse::File(data) => Ok(data),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes a file in child `name` (at most [`MAX_FILE_LEN`] bytes), mode 0644.
    pub async fn write_file(&self, name: &str, path: &str, data: &[u8]) -> Result<()> {
        self.done(SpawnRequest::WriteFile {
            name: name.into(),
            path: path.into(),
            data: data.to_vec(),
            mode: 0o644,
        })
        .await
    }

    /// This sandbox's children.
    pub async fn list(&self) -> Result<Vec<ChildInfo>> {
        match self.call(SpawnRequest::List).await? {
            SpawnResponse::Children(list) => Ok(list),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends an event to child `name`'s subscribed programs.
    pub async fn emit(&self, name: &str, kind: &str, data: &serde_json::Value) -> Result<()> {
        self.done(SpawnRequest::Emit {
            name: name.into(),
            kind: kind.into(),
            data: data.to_string(),
        })
        .await
    }

    /// Stops child `name`.
    pub async fn stop(&self, name: &str) -> Result<()> {
        self.done(SpawnRequest::Stop { name: name.into() }).await
    }

    /// Stops and removes child `name`.
    pub async fn remove(&self, name: &str) -> Result<()> {
        self.done(SpawnRequest::Remove { name: name.into() }).await
    }
}

fn unexpected(answer: &SpawnResponse) -> Error {
    Error::Spawn(format!(
        "the host's spawn service answered unexpectedly: {}",
        answer.kind()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_go_to_the_service_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let host = std::thread::spawn(move || {
            let mut r = FrameReader::new(b.try_clone().unwrap());
            let mut w = b;
            let mut seen = Vec::new();
            while let Ok(Some(req)) = r.read_message::<SpawnRequest>() {
                let answer = match &req {
                    SpawnRequest::Hello { .. } => SpawnResponse::Hello {
                        version: PROTOCOL_VERSION,
                    },
                    SpawnRequest::Exec { .. } => SpawnResponse::Exited {
                        code: 0,
                        stdout: b"hi\n".to_vec(),
                        stderr: Vec::new(),
                        truncated: false,
                    },
                    SpawnRequest::Create(_) => SpawnResponse::Error(
                        "spawn quota exceeded: p may have 1 live children and has 1".into(),
                    ),
                    _ => SpawnResponse::Done,
                };
                seen.push(req);
                write_blocking(&mut w, &answer).unwrap();
            }
            seen
        });
        let peers = Peers::over(OwnedFd::from(a)).await.unwrap();
        let out = peers.exec("w1", &["echo", "hi"], b"").await.unwrap();
        assert_eq!(out.stdout, b"hi\n");
        let e = peers
            .create(ChildSpec {
                name: "w2".into(),
                ..ChildSpec::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Spawn(m) if m.contains("quota exceeded")),
            "{e}"
        );
        peers.remove("w1").await.unwrap();
        drop(peers);
        let seen = host.join().unwrap();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[3], SpawnRequest::Remove { name: "w1".into() });
    }

    #[tokio::test]
    async fn outside_a_sandbox_it_fails_at_once() {
        if in_sandbox() {
            println!("skipped: this test runs inside an msbvm sandbox");
            return;
        }
        let e = Peers::connect().await.unwrap_err();
        assert!(matches!(e, Error::NotInSandbox(_)), "{e}");
        assert!(e
            .to_string()
            .starts_with("not running inside an msbvm sandbox"));
    }
}
