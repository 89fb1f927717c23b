//! Processes and event streams: what `exec` returns, a running process's events with its
//! stdin, signals and terminal, and the guest's events.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use msbvm_sdk as sdk;
use napi::bindgen_prelude::Buffer;
use napi_derive::napi;

use crate::to_js;

/// Lets `close` end a wait that holds the stream: a pending `next` returns null at once.
#[derive(Default)]
struct Closer {
    closed: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Closer {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// `fut`'s output, or `None` if the stream is or becomes closed first.
    async fn unless_closed<T>(&self, fut: impl Future<Output = T>) -> Option<T> {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a close in between still wakes it.
        notified.as_mut().enable();
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        tokio::select! {
            v = fut => Some(v),
            _ = notified => None,
        }
    }
}

/// What a finished process left behind.
#[napi(object)]
pub struct ExecResult {
    /// Everything it wrote to stdout (and stderr, on a terminal).
    pub stdout: Buffer,
    /// Everything it wrote to stderr.
    pub stderr: Buffer,
    /// The status as a shell reports it: the code, 128 + a signal, 124 for a timeout.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether its timeout expired and the agent killed it.
    pub timed_out: bool,
}

impl From<sdk::ExecOutput> for ExecResult {
    fn from(out: sdk::ExecOutput) -> Self {
        ExecResult {
            exit_code: out.exit_code(),
            signal: out.status.signal(),
            timed_out: out.status.timed_out(),
            stdout: out.stdout.into(),
            stderr: out.stderr.into(),
        }
    }
}

/// One thing that happened to a process.
#[napi(object)]
pub struct ExecEvent {
    /// "started", "stdout", "stderr" or "exited".
    pub kind: String,
    /// The pid ("started").
    pub pid: Option<u32>,
    /// The exit code as a shell reports it ("exited").
    pub exit_code: Option<i32>,
    /// The signal that killed it ("exited", when one did).
    pub signal: Option<i32>,
    /// Whether its timeout killed it ("exited").
    pub timed_out: Option<bool>,
    /// The output ("stdout", "stderr").
    pub data: Option<Buffer>,
}

impl ExecEvent {
    fn of(kind: &str) -> Self {
        ExecEvent {
            kind: kind.into(),
            pid: None,
            exit_code: None,
            signal: None,
            timed_out: None,
            data: None,
        }
    }
}

/// A running process (the native half of the package's `ExecStream`).
#[napi]
pub struct ExecStream {
    pid: u32,
    /// `None` once closed: the control holds the connection's write half, so it must go too
    /// for the connection to close.
    control: std::sync::Mutex<Option<sdk::ExecControl>>,
    /// `None` once closed: dropping the SDK's stream closes its connection, and the guest
    /// agent then kills the process group.
    stream: Arc<tokio::sync::Mutex<Option<sdk::ExecStream>>>,
    closer: Arc<Closer>,
}

impl ExecStream {
    pub(crate) fn new(stream: sdk::ExecStream) -> Self {
        ExecStream {
            pid: stream.pid(),
            control: std::sync::Mutex::new(Some(stream.control())),
            stream: Arc::new(tokio::sync::Mutex::new(Some(stream))),
            closer: Arc::default(),
        }
    }

    /// The process's control, unless the stream was closed.
    fn control(&self) -> napi::Result<sdk::ExecControl> {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| to_js(sdk::Error::ConnectionLost))
    }
}

#[napi]
impl ExecStream {
    /// The process's pid in the guest.
    #[napi(getter)]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next event, or null after "exited" (or once closed).
    #[napi]
    pub async fn next_event(&self) -> napi::Result<Option<ExecEvent>> {
        let mut guard = self.stream.lock().await;
        let Some(stream) = guard.as_mut() else {
            return Ok(None);
        };
        let Some(next) = self.closer.unless_closed(stream.next_event()).await else {
            guard.take();
            return Ok(None);
        };
        let Some(event) = next.map_err(to_js)? else {
            return Ok(None);
        };
        Ok(Some(match event {
            sdk::ExecEvent::Started { pid } => ExecEvent {
                pid: Some(pid),
                ..ExecEvent::of("started")
            },
            sdk::ExecEvent::Stdout(d) => ExecEvent {
                data: Some(d.into()),
                ..ExecEvent::of("stdout")
            },
            sdk::ExecEvent::Stderr(d) => ExecEvent {
                data: Some(d.into()),
                ..ExecEvent::of("stderr")
            },
            sdk::ExecEvent::Exited(s) => ExecEvent {
                exit_code: Some(sdk::shell_exit_code(s)),
                signal: s.signal(),
                timed_out: Some(s.timed_out()),
                ..ExecEvent::of("exited")
            },
        }))
    }

    /// Writes `data` to the process's stdin.
    #[napi]
    pub async fn write_stdin(&self, data: Buffer) -> napi::Result<()> {
        let bytes = data.to_vec();
        self.control()?.write(&bytes).await.map_err(to_js)
    }

    /// Closes the process's stdin.
    #[napi]
    pub async fn close_stdin(&self) -> napi::Result<()> {
        self.control()?.close_stdin().await.map_err(to_js)
    }

    /// Sends signal number `signal` to the process.
    #[napi]
    pub async fn signal(&self, signal: i32) -> napi::Result<()> {
        self.control()?.signal(signal).await.map_err(to_js)
    }

    /// Resizes the process's terminal.
    #[napi]
    pub async fn resize(&self, rows: u32, cols: u32) -> napi::Result<()> {
        let size = |n: u32| {
            u16::try_from(n).map_err(|_| crate::config_error(format!("size {n} is too large")))
        };
        self.control()?
            .resize(size(rows)?, size(cols)?)
            .await
            .map_err(to_js)
    }

    /// Stops reading the process: its connection closes and the guest agent kills its
    /// process group (what an aborted call does). A pending `nextEvent` returns null.
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        self.closer.close();
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        self.stream.lock().await.take();
        Ok(())
    }
}

/// The guest's events (the native half of the package's `EventStream`).
#[napi]
pub struct EventStream {
    stream: Arc<tokio::sync::Mutex<Option<sdk::EventStream>>>,
    closer: Arc<Closer>,
}

impl EventStream {
    pub(crate) fn new(stream: sdk::EventStream) -> Self {
        EventStream {
            stream: Arc::new(tokio::sync::Mutex::new(Some(stream))),
            closer: Arc::default(),
        }
    }
}

#[napi]
impl EventStream {
    /// The next event as JSON text, or null when the stream ended (or was closed).
    #[napi]
    pub async fn next(&self) -> napi::Result<Option<String>> {
        let mut guard = self.stream.lock().await;
        let Some(stream) = guard.as_mut() else {
            return Ok(None);
        };
        let Some(next) = self.closer.unless_closed(stream.next()).await else {
            guard.take();
            return Ok(None);
        };
        match next {
            None => Ok(None),
            Some(Err(e)) => Err(to_js(e)),
            Some(Ok(event)) => Ok(Some(event.to_json().to_string())),
        }
    }

    /// Ends the subscription; a pending `next` returns null.
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        self.closer.close();
        self.stream.lock().await.take();
        Ok(())
    }
}
