//! The exec gateway: when plugins hook commands, host clients reach the guest agent through
//! the runtime, which asks the plugins about each command before it starts and tells them its
//! output and its end.
//!
//! Clients connect to the sandbox's vsock socket as always (`vsock.sock`, `CONNECT <port>`);
//! with the gateway the vsock device listens at [`DIRECT_SOCKET`] instead and the gateway sits
//! at `vsock.sock`. A connection to the agent's port is relayed frame by frame: an
//! [`HostMessage::Exec`] goes through [`Chain::before_exec`] (a denial is answered with the
//! agent's own error message, and the command never reaches the guest; a rewrite is what the
//! guest gets), and the guest's output and exit status go to the plugins that asked. Every
//! other frame, and connections to other ports, pass through unchanged. Frames from the guest
//! are bounded by [`MAX_FRAME_LEN`] as everywhere else; the gateway holds at most
//! [`MAX_CONNECTIONS`] connections.
//!
//! Without plugins on exec hooks there is no gateway, and no extra hop.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use msbvm_plugins::data::{Exec, ExecEnded, ExecOutput, OutputStream};
use msbvm_plugins::{Chain, Decision, Hook};
use msbvm_protocol::{ExitStatus, GuestMessage, HostMessage, AGENT_PORT, MAX_FRAME_LEN};

/// Where the vsock device's host listener goes when the gateway takes `vsock.sock` (it starts
/// with `vsock.sock`, so the runtime's clean-up removes it with the others).
pub const DIRECT_SOCKET: &str = "vsock.sock.direct";
/// Connections relayed at once; more are closed.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send its `CONNECT` line.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `chain` needs the gateway.
pub fn wanted(chain: &Chain) -> bool {
    chain.wants(Hook::ExecBefore) || chain.wants(Hook::ExecOutput) || chain.wants(Hook::ExecAfter)
}

/// Serves `listener` (bound at `vsock.sock`) on a thread of its own, relaying to the device
/// at `direct`.
pub fn spawn(listener: UnixListener, direct: PathBuf, chain: Arc<Chain>) -> io::Result<()> {
    let gateway = Arc::new(Gateway {
        direct,
        chain,
        active: AtomicUsize::new(0),
        next_exec: AtomicU64::new(1),
    });
    std::thread::Builder::new()
        .name("msbvm-exec-gateway".into())
        .spawn(move || {
            crate::confine::thread_started("exec-gateway");
            for client in listener.incoming() {
                match client {
                    Ok(client) => gateway.clone().accept(client),
                    Err(e) => tracing::warn!("exec gateway: accepting: {e}"),
                }
            }
        })
        .map(|_| ())
}

struct Gateway {
    direct: PathBuf,
    chain: Arc<Chain>,
    active: AtomicUsize,
    next_exec: AtomicU64,
}

impl Gateway {
    fn accept(self: Arc<Self>, client: UnixStream) {
        if self.active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            self.active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("exec gateway: {MAX_CONNECTIONS} connections already; closing one");
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("msbvm-exec-gateway-conn".into())
            .spawn(move || {
                crate::confine::thread_started("exec-gateway");
                if let Err(e) = me.relay(client) {
                    tracing::debug!("exec gateway connection: {e}");
                }
                me.active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            self.active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("exec gateway: cannot start a thread: {e}");
        }
    }

    /// Relays one client connection until either side closes.
    fn relay(&self, client: UnixStream) -> io::Result<()> {
        client.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let mut client_in = BufReader::new(client.try_clone()?);
        let connect = read_line(&mut client_in, 32)?;
        let port: u32 = connect
            .strip_prefix("CONNECT ")
            .and_then(|p| p.trim_end().parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a CONNECT line"))?;
        let device = UnixStream::connect(&self.direct)?;
        (&device).write_all(format!("CONNECT {port}\n").as_bytes())?;
        let mut device_in = BufReader::new(device.try_clone()?);
        // The device answers `OK <port>` or closes; the guest decides how long that takes, so
        // the client's own timeouts bound it.
        let answer = read_line(&mut device_in, 32)?;
        (&client).write_all(answer.as_bytes())?;
        client.set_read_timeout(None)?;
        if !answer.starts_with("OK ") {
            return Ok(());
        }
        let exec = Arc::new(std::sync::Mutex::new(None::<Started>));
        let up = {
            let (mut from, mut to) = (client_in, device.try_clone()?);
            let (chain, exec, client) = (self.chain.clone(), exec.clone(), client.try_clone()?);
            let id = self.next_exec.fetch_add(1, Ordering::Relaxed);
            let agent = port == AGENT_PORT;
            std::thread::Builder::new()
                .name("msbvm-exec-gateway-up".into())
                .spawn(move || {
                    crate::confine::thread_started("exec-gateway");
                    let result = if agent {
                        host_to_guest(&mut from, &mut to, &client, &chain, id, &exec)
                    } else {
                        io::copy(&mut from, &mut to).map(|_| ())
                    };
                    let _ = to.shutdown(std::net::Shutdown::Write);
                    result
                })?
        };
        let mut to_client = client.try_clone()?;
        let down = if port == AGENT_PORT {
            guest_to_host(&mut device_in, &mut to_client, &self.chain, &exec)
        } else {
            io::copy(&mut device_in, &mut to_client).map(|_| ())
        };
        let _ = client.shutdown(std::net::Shutdown::Both);
        let _ = device.shutdown(std::net::Shutdown::Both);
        let _ = up.join();
        down
    }
}

/// What the gateway knows of the command a connection started.
struct Started {
    id: u64,
    argv: Vec<String>,
    at: Instant,
}

/// Client to guest: frames pass unchanged, except a command, which the plugins see first.
fn host_to_guest(
    from: &mut impl Read,
    to: &mut impl Write,
    client: &UnixStream,
    chain: &Chain,
    id: u64,
    exec: &std::sync::Mutex<Option<Started>>,
) -> io::Result<()> {
    while let Some(frame) = read_frame(from)? {
        let Ok(HostMessage::Exec(mut request)) = postcard::from_bytes::<HostMessage>(&frame[4..])
        else {
            to.write_all(&frame)?;
            continue;
        };
        let mut hooked = Exec {
            argv: request.argv.clone(),
            env: request.env.clone(),
            cwd: request.cwd.clone(),
            uid: request.uid,
            gid: request.gid,
        };
        if chain.wants(Hook::ExecBefore) {
            if let Decision::Deny { reason } = chain.before_exec(&mut hooked) {
                tracing::info!(argv = ?request.argv, reason, "a plugin denied a command");
                let refusal = GuestMessage::Denied { reason };
                let frame = msbvm_protocol::encode(&refusal)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                (&*client).write_all(&frame)?;
                let _ = client.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
        }
        request.argv = hooked.argv;
        request.env = hooked.env;
        request.cwd = hooked.cwd;
        request.uid = hooked.uid;
        request.gid = hooked.gid;
        *exec.lock().unwrap_or_else(|p| p.into_inner()) = Some(Started {
            id,
            argv: request.argv.clone(),
            at: Instant::now(),
        });
        let frame = msbvm_protocol::encode(&HostMessage::Exec(request))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        to.write_all(&frame)?;
    }
    Ok(())
}

/// Guest to client: frames pass unchanged; the plugins that asked see output and the end.
fn guest_to_host(
    from: &mut impl Read,
    to: &mut impl Write,
    chain: &Chain,
    exec: &std::sync::Mutex<Option<Started>>,
) -> io::Result<()> {
    let (output, after) = (chain.wants(Hook::ExecOutput), chain.wants(Hook::ExecAfter));
    while let Some(frame) = read_frame(from)? {
        to.write_all(&frame)?;
        if !output && !after {
            continue;
        }
        let message = match postcard::from_bytes::<GuestMessage>(&frame[4..]) {
            Ok(m) => m,
            Err(_) => continue,
        };
        let started = exec.lock().unwrap_or_else(|p| p.into_inner());
        let Some(started) = started.as_ref() else {
            continue;
        };
        let told = |stream, bytes: &[u8]| {
            chain.exec_output(&ExecOutput {
                exec_id: started.id,
                stream,
                text: String::from_utf8_lossy(bytes).into_owned(),
            })
        };
        match message {
            GuestMessage::Stdout(bytes) if output => told(OutputStream::Stdout, &bytes),
            GuestMessage::Stderr(bytes) if output => told(OutputStream::Stderr, &bytes),
            GuestMessage::Exited(status) if after => {
                let (code, signal, timed_out) = match status {
                    ExitStatus::Code(c) => (Some(c), None, false),
                    ExitStatus::Signal(s) => (None, Some(s), false),
                    ExitStatus::TimedOut => (None, None, true),
                };
                chain.exec_ended(&ExecEnded {
                    exec_id: started.id,
                    argv: started.argv.clone(),
                    code,
                    signal,
                    timed_out,
                    duration_ms: started.at.elapsed().as_millis() as u64,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// One frame, length prefix included; `None` at a clean end between frames.
fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut len[1..])?;
    let body = u32::from_le_bytes(len) as usize;
    if body > MAX_FRAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {body} bytes is over the limit"),
        ));
    }
    let mut frame = vec![0u8; 4 + body];
    frame[..4].copy_from_slice(&len);
    r.read_exact(&mut frame[4..])?;
    Ok(Some(frame))
}

/// A line of at most `max` bytes, newline included.
fn read_line(r: &mut impl BufRead, max: u64) -> io::Result<String> {
    let mut line = String::new();
    r.take(max).read_line(&mut line)?;
    if !line.ends_with('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no complete line",
        ));
    }
    Ok(line)
}
