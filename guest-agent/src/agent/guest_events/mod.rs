//! The guest events socket: guest programs talk to the host in JSON lines.
//!
//! The [`Hub`] listens on [`GUEST_SOCKET`] (mode 0666, so any user's
//! programs can use it). Each connection gets a number, the peer's pid
//! (`SO_PEERCRED`) and the exec it descends from ([`execs`]), and two
//! threads:
//! - a reader that takes one JSON object per line ([`line`]): events are
//!   stamped and forwarded to the host over the [`HostLink`] with a blocking
//!   write, in order; a slow host therefore stops the reader, and the
//!   guest's socket buffer then stops the writing program (back-pressure,
//!   never unbounded buffering). Good events get no answer, so bursts stay
//!   cheap; subscriptions get `{"subscribed": [...]}`; anything wrong gets
//!   one `{"error": "..."}` line and the connection goes on;
//! - a writer that drains the connection's bounded [`queue`].
//!
//! Host events ([`Hub::dispatch`], fed by the events connection's reader)
//! are offered to the queues of the connections they target and never wait
//! for a guest program: a full queue drops and counts.
//!
//! [`GUEST_SOCKET`]: msbvm_protocol::events::GUEST_SOCKET

pub mod execs;
pub mod line;
pub mod queue;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use msbvm_protocol::events::{pattern_matches, GuestEvent, HostEvent, Target, MAX_EVENT_LEN};

use self::execs::ExecRegistry;
use self::line::{Incoming, Line};
use self::queue::OutQueue;

/// Guest connections open at once; more are refused with an error line.
pub const MAX_CONNECTIONS: usize = 128;

/// The error a guest gets while no host takes events.
pub const NO_HOST: &str = "no host is listening for events";

/// Where guest events go: the agent's events connection to the host.
pub trait HostLink: Send + Sync + 'static {
    /// Sends one event, blocking while the host does not take it; false if
    /// there is no host connection (or it broke).
    fn send_event(&self, event: GuestEvent) -> bool;
}

/// Limits of a hub (the defaults in the agent; smaller ones in tests).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Lines waiting per connection.
    pub queue_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            queue_len: queue::QUEUE_LEN,
        }
    }
}

/// One guest connection as the hub knows it.
struct Conn {
    id: u64,
    pid: u32,
    exec: Option<u32>,
    patterns: Mutex<Vec<String>>,
    out: OutQueue,
}

impl Conn {
    fn patterns(&self) -> MutexGuard<'_, Vec<String>> {
        self.patterns.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wants(&self, event: &HostEvent) -> bool {
        match event.target {
            Target::Subscribers => self
                .patterns()
                .iter()
                .any(|p| pattern_matches(p, &event.kind)),
            Target::Connection(id) => id == self.id,
            Target::Exec(pid) => self.exec == Some(pid),
        }
    }
}

/// The guest side of events: guest connections and the host link.
pub struct Hub {
    link: Arc<dyn HostLink>,
    execs: &'static ExecRegistry,
    limits: Limits,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Connections whose reader is still running (the cap counts these).
    live: AtomicUsize,
    next_id: AtomicU64,
}

/// Reader threads parse JSON of bounded depth; writers only copy lines.
const READER_STACK: usize = 256 * 1024;
const WRITER_STACK: usize = 64 * 1024;
/// How long a refused connection's error line may take to go out.
const REFUSAL_TIMEOUT: Duration = Duration::from_millis(200);

impl Hub {
    /// A hub forwarding to `link`, finding execs in `execs`.
    pub fn new(link: Arc<dyn HostLink>, execs: &'static ExecRegistry, limits: Limits) -> Arc<Hub> {
        Arc::new(Hub {
            link,
            execs,
            limits,
            conns: Mutex::default(),
            live: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
        })
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `path` (replacing a stale socket), opens it to every user and
    /// serves it on a background thread.
    pub fn listen(self: &Arc<Self>, path: &Path) -> io::Result<()> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        let hub = Arc::clone(self);
        std::thread::Builder::new()
            .name("events-accept".into())
            .spawn(move || hub.serve(&listener))?;
        Ok(())
    }

    /// Accepts connections until the listener fails for good.
    pub fn serve(self: &Arc<Self>, listener: &UnixListener) {
        loop {
            match listener.accept() {
                Ok((stream, _)) => self.accept(stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if super::vsock::is_transient_accept_error(&e) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    agent_log!("events socket: accept failed: {e}; no more guest events");
                    return;
                }
            }
        }
    }

    /// Takes one guest connection: registers it and starts its threads.
    pub fn accept(self: &Arc<Self>, stream: UnixStream) {
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            self.live.fetch_sub(1, Ordering::AcqRel);
            refuse(
                stream,
                &format!(
                    "too many connections to the events socket (at most {}); try again later",
                    self.limits.max_connections
                ),
            );
            return;
        }
        let pid = peer_pid(&stream).unwrap_or(0);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            pid,
            exec: if pid == 0 {
                None
            } else {
                self.execs.exec_of(pid)
            },
            patterns: Mutex::default(),
            out: OutQueue::new(self.limits.queue_len),
        });
        let started = stream.try_clone().and_then(|writer| {
            let c = Arc::clone(&conn);
            std::thread::Builder::new()
                .name("events-out".into())
                .stack_size(WRITER_STACK)
                .spawn(move || write_out(&c, writer))
        });
        if let Err(e) = started {
            self.live.fetch_sub(1, Ordering::AcqRel);
            refuse(
                stream,
                &format!("the agent cannot serve this connection: {e}"),
            );
            return;
        }
        self.conns().insert(conn.id, Arc::clone(&conn));
        let hub = Arc::clone(self);
        let c = Arc::clone(&conn);
        let spawned = std::thread::Builder::new()
            .name("events-in".into())
            .stack_size(READER_STACK)
            .spawn(move || hub.read_in(&c, stream));
        if spawned.is_err() {
            // The stream went down with the closure: the writer ends too.
            self.conns().remove(&conn.id);
            self.live.fetch_sub(1, Ordering::AcqRel);
            conn.out.kill();
        }
    }

    /// The reader of one connection, until it ends.
    fn read_in(&self, conn: &Conn, stream: UnixStream) {
        let mut input = BufReader::with_capacity(16 * 1024, stream);
        let mut buf = Vec::new();
        loop {
            match line::read_line(&mut input, &mut buf, MAX_EVENT_LEN) {
                Ok(Line::Text(text)) => self.handle(conn, &text),
                Ok(Line::TooLong) => conn.out.push(line::error_line(&format!(
                    "the line is longer than {MAX_EVENT_LEN} bytes; it was discarded"
                ))),
                Ok(Line::Eof) | Err(_) => break,
            }
        }
        self.conns().remove(&conn.id);
        self.live.fetch_sub(1, Ordering::AcqRel);
        conn.out.finish();
    }

    fn handle(&self, conn: &Conn, text: &[u8]) {
        if text.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match line::parse(text) {
            Err(why) => conn.out.push(line::error_line(&why)),
            Ok(Incoming::Subscribe(patterns)) => {
                let reply = line::subscribed_line(&patterns);
                *conn.patterns() = patterns;
                conn.out.push(reply);
            }
            Ok(Incoming::Event {
                kind,
                data,
                id,
                reply_to,
            }) => {
                let event = GuestEvent {
                    kind,
                    data,
                    id,
                    reply_to,
                    pid: conn.pid,
                    exec: conn.exec,
                    connection: conn.id,
                    time_ms: unix_ms(),
                };
                if !self.link.send_event(event) {
                    conn.out.push(line::error_line(NO_HOST));
                }
            }
        }
    }

    /// Hands a host event to the connections it targets; never blocks on
    /// them (a full connection drops it and counts).
    pub fn dispatch(&self, event: &HostEvent) {
        let targets: Vec<Arc<Conn>> = self
            .conns()
            .values()
            .filter(|c| c.wants(event))
            .cloned()
            .collect();
        if targets.is_empty() {
            return;
        }
        let text = line::host_event_line(event);
        for conn in targets {
            conn.out.offer(text.clone());
        }
    }

    /// Host events dropped so far on connection `id` (`None` once it is gone).
    pub fn dropped(&self, id: u64) -> Option<u64> {
        self.conns().get(&id).map(|c| c.out.dropped())
    }

    /// Open guest connections.
    pub fn connections(&self) -> usize {
        self.conns().len()
    }
}

/// The writer of one connection: queued lines out, then a half-close.
fn write_out(conn: &Conn, mut stream: UnixStream) {
    while let Some(line) = conn.out.next() {
        if stream.write_all(line.as_bytes()).is_err() {
            // The program stopped reading for good (closed its end).
            conn.out.kill();
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Tells a connection it cannot be served and closes it.
fn refuse(mut stream: UnixStream, why: &str) {
    let _ = stream.set_write_timeout(Some(REFUSAL_TIMEOUT));
    let _ = stream.write_all(line::error_line(why).as_bytes());
}

/// The connecting process's pid.
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
