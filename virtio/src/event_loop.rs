//! The device worker thread every device runs on: one epoll loop over a stop
//! eventfd, the device's queue eventfds and whatever host descriptors the
//! device adds, with the device's [`EventHandler`] plugged in.
//!
//! The loop owns what every device used to repeat: registering the stop and
//! queue eventfds, draining a queue eventfd before the handler sees the
//! kick, retrying an interrupted `epoll_wait`, and ending the thread on stop.
//! A device only says what to do for a kicked queue, a ready host descriptor
//! (registered under its own tokens, below [`DEVICE_TOKEN_LIMIT`]) and,
//! optionally, once per wake-up and before each wait.
//!
//! A worker can also run on a thread that already waits on other things: a
//! [`WorkerHost`] takes it as a [`HostedWorker`] (an epoll set that is readable
//! while it has work, and a nonblocking [`HostedWorker::run`]). The network
//! stack hosts the virtio-net worker this way, so frames between the guest and
//! the stack cross no thread boundary.
//!
//! Syscalls: `epoll_create1` and the registrations happen on the caller's
//! thread ([`EventLoop::new`], [`WorkerThread::spawn`]); the worker itself
//! only waits (`epoll_wait`/`epoll_pwait`), reads eventfds and calls
//! `epoll_ctl` for the descriptors its handler manages, all of which
//! `confine::EVENT_LOOP` allows.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Tokens at or above this value belong to the loop (stop and queue
/// eventfds); a handler registers its own descriptors below it.
pub const DEVICE_TOKEN_LIMIT: u64 = u64::MAX - 4096;

const STOP_TOKEN: u64 = u64::MAX;
/// The pause request's token: the lowest of the loop's (queue tokens count
/// down from just below [`STOP_TOKEN`] and never reach it).
const PAUSE_TOKEN: u64 = DEVICE_TOKEN_LIMIT;

/// The token of queue `index`'s eventfd.
fn queue_token(index: usize) -> u64 {
    STOP_TOKEN - 1 - index as u64
}

/// Most events taken from one `epoll_wait`.
const MAX_EVENTS: usize = 64;

/// What a device does on its worker thread; the loop calls it and nothing
/// else touches it, so it needs no locking.
pub trait EventHandler: Send + 'static {
    /// Runs once on the worker thread before the first wait: kicks from
    /// before the thread started are in the eventfd counters, but buffers
    /// may already be queued without one. By default every queue counts as
    /// kicked, last first, so that the queues the driver fills (TX) are
    /// drained before those the device fills (RX), which then have the
    /// answers to carry.
    fn started(&mut self, queues: usize) {
        for index in (0..queues).rev() {
            self.queue_notified(index);
        }
    }

    /// The driver kicked queue `index` (its eventfd is already drained).
    fn queue_notified(&mut self, index: usize);

    /// A descriptor the handler registered under `token` is ready.
    fn fd_ready(&mut self, token: u64, events: EventSet) {
        let _ = (token, events);
    }

    /// Runs after each batch of events, e.g. to expire deadlines.
    fn after_events(&mut self) {}

    /// How long to wait for the next event, in milliseconds (-1: forever).
    fn timeout_ms(&self) -> i32 {
        -1
    }
}

/// An epoll set, shared between the loop (which waits on it) and the
/// handler (which adds and changes its own descriptors in it).
#[derive(Debug, Clone)]
pub struct EventLoop {
    epoll: Arc<Epoll>,
}

impl EventLoop {
    /// A loop over a new, empty epoll set.
    pub fn new() -> io::Result<Self> {
        Ok(Self::with_epoll(Arc::new(Epoll::new()?)))
    }

    /// A loop over an existing epoll set that already holds some of the
    /// handler's descriptors.
    pub fn with_epoll(epoll: Arc<Epoll>) -> Self {
        Self { epoll }
    }

    /// The epoll set, for the handler to register its own descriptors.
    pub fn epoll(&self) -> &Arc<Epoll> {
        &self.epoll
    }

    fn add(&self, fd: &impl AsRawFd, token: u64) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        )
    }

    /// Waits and dispatches until `stop` fires or epoll itself fails; parks
    /// between events while `gate` asks it to.
    fn run(
        self,
        name: &str,
        queue_events: &[EventFd],
        gate: &PauseGate,
        handler: &mut impl EventHandler,
    ) {
        let mut events = [EpollEvent::default(); MAX_EVENTS];
        handler.started(queue_events.len());
        loop {
            let n = match self.epoll.wait(handler.timeout_ms(), &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("{name}: epoll_wait failed, device stops: {e}");
                    return;
                }
            };
            if dispatch(&events[..n], queue_events, gate, handler) == Next::Stop {
                return;
            }
        }
    }
}

/// Whether the loop goes on after a batch of events.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Stop,
}

/// Hands one batch of events to `handler`: a stop ends the loop, a pause request parks it
/// here, a queue kick is drained and reported.
fn dispatch(
    events: &[EpollEvent],
    queue_events: &[EventFd],
    gate: &PauseGate,
    handler: &mut impl EventHandler,
) -> Next {
    for ev in events {
        let token = ev.data();
        if token == STOP_TOKEN {
            return Next::Stop;
        }
        if token == PAUSE_TOKEN {
            let _ = gate.request.read();
            gate.park();
            continue;
        }
        if token >= DEVICE_TOKEN_LIMIT {
            let index = (STOP_TOKEN - 1 - token) as usize;
            if let Some(evt) = queue_events.get(index) {
                // Nonblocking; the counter only batches kicks.
                let _ = evt.read();
                handler.queue_notified(index);
            }
            continue;
        }
        handler.fd_ready(token, ev.event_set());
    }
    handler.after_events();
    Next::Continue
}

/// Where a device's worker runs instead of a thread of its own: a thread that already waits
/// on other things. It must run the worker ([`HostedWorker::run`]) whenever
/// [`HostedWorker::ready_fd`] is readable, and drop it once `run` returns false.
#[derive(Clone)]
pub struct WorkerHost(Arc<dyn Fn(HostedWorker) -> io::Result<()> + Send + Sync>);

impl WorkerHost {
    /// A host that hands each worker to `take` (which passes it to the hosting thread).
    pub fn new(take: impl Fn(HostedWorker) -> io::Result<()> + Send + Sync + 'static) -> Self {
        WorkerHost(Arc::new(take))
    }
}

impl std::fmt::Debug for WorkerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerHost")
    }
}

/// A device worker that runs on a [`WorkerHost`]'s thread: the loop of a worker thread, one
/// nonblocking turn at a time.
pub struct HostedWorker(Box<dyn HostedLoop>);

impl HostedWorker {
    /// The worker's epoll set: readable while it has work (or a stop or pause request).
    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        self.0.ready_fd()
    }

    /// Handles what is ready without waiting; false once the worker was stopped (or its
    /// epoll set failed), when the host drops it. A pause request parks the calling thread
    /// here until the device resumes, as it parks a worker thread.
    pub fn run(&mut self) -> bool {
        self.0.run()
    }
}

impl std::fmt::Debug for HostedWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostedWorker")
    }
}

/// [`HostedWorker`]'s loop, whatever its handler.
trait HostedLoop: Send {
    fn ready_fd(&self) -> BorrowedFd<'_>;
    fn run(&mut self) -> bool;
}

/// The loop state a worker thread keeps on its stack, kept here between turns.
struct Hosted<H: EventHandler> {
    name: String,
    event_loop: EventLoop,
    queue_events: Vec<EventFd>,
    gate: Arc<PauseGate>,
    handler: H,
    started: bool,
    /// Set when this is dropped: the host let go of the worker.
    ended: Arc<Ended>,
}

impl<H: EventHandler> HostedLoop for Hosted<H> {
    fn ready_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the epoll set lives as long as `self.event_loop`, which the borrow ties
        // the returned descriptor to.
        unsafe { BorrowedFd::borrow_raw(self.event_loop.epoll.as_raw_fd()) }
    }

    fn run(&mut self) -> bool {
        if !std::mem::replace(&mut self.started, true) {
            self.handler.started(self.queue_events.len());
        }
        let mut events = [EpollEvent::default(); MAX_EVENTS];
        loop {
            let n = match self.event_loop.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    error!("{}: epoll_wait failed, device stops: {e}", self.name);
                    return false;
                }
            };
            if n == 0 {
                return true;
            }
            let next = dispatch(
                &events[..n],
                &self.queue_events,
                &self.gate,
                &mut self.handler,
            );
            if next == Next::Stop {
                return false;
            }
            if n < MAX_EVENTS {
                return true;
            }
        }
    }
}

impl<H: EventHandler> Drop for Hosted<H> {
    fn drop(&mut self) {
        self.ended.set();
    }
}

/// Whether a hosted worker is gone, and a way to wait for it.
#[derive(Debug, Default)]
struct Ended {
    done: Mutex<bool>,
    changed: Condvar,
}

impl Ended {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.done.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self) {
        *self.lock() = true;
        self.changed.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.lock()
    }

    /// Waits up to `timeout` for [`set`](Self::set); true if it was.
    fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut done = self.lock();
        while !*done {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            done = self
                .changed
                .wait_timeout(done, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// How long stopping waits for a host to drop its worker.
const HOSTED_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a worker is asked to park between events (for a snapshot) and let go.
#[derive(Debug)]
struct PauseGate {
    /// Written to wake the loop for a pause request.
    request: EventFd,
    /// (pause requested, worker parked)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl PauseGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// On the worker: says it is parked and waits while a pause is asked for.
    fn park(&self) {
        let mut state = self.lock();
        if !state.0 {
            return;
        }
        state.1 = true;
        self.changed.notify_all();
        while state.0 {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.1 = false;
    }
}

/// A running device worker (on a thread of its own or a [`WorkerHost`]'s) and how to stop
/// it.
#[derive(Debug)]
pub struct WorkerThread {
    name: String,
    stop: EventFd,
    gate: Arc<PauseGate>,
    runner: Runner,
}

/// Where a worker runs.
#[derive(Debug)]
enum Runner {
    Thread(JoinHandle<()>),
    Hosted(Arc<Ended>),
}

impl Runner {
    fn is_finished(&self) -> bool {
        match self {
            Runner::Thread(thread) => thread.is_finished(),
            Runner::Hosted(ended) => ended.is_set(),
        }
    }
}

impl WorkerThread {
    /// Registers `queue_events` (queue index = position) and a new stop
    /// eventfd in `event_loop`, then runs `handler` on a thread called
    /// `name` that confines itself as `confine_as` (see
    /// [`crate::confine::thread_started`]).
    pub fn spawn(
        name: String,
        confine_as: &'static str,
        event_loop: EventLoop,
        queue_events: Vec<EventFd>,
        mut handler: impl EventHandler,
    ) -> io::Result<Self> {
        let (stop, gate) = Self::register(&event_loop, &queue_events)?;
        let log_name = name.clone();
        let worker_gate = gate.clone();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                crate::confine::thread_started(confine_as);
                event_loop.run(&log_name, &queue_events, &worker_gate, &mut handler);
            })?;
        Ok(Self {
            name,
            stop,
            gate,
            runner: Runner::Thread(thread),
        })
    }

    /// Like [`spawn`](Self::spawn), but the worker runs on `host`'s thread (under that
    /// thread's confinement) instead of one of its own.
    pub fn host(
        name: String,
        host: &WorkerHost,
        event_loop: EventLoop,
        queue_events: Vec<EventFd>,
        handler: impl EventHandler,
    ) -> io::Result<Self> {
        let (stop, gate) = Self::register(&event_loop, &queue_events)?;
        let ended = Arc::new(Ended::default());
        let hosted = Hosted {
            name: name.clone(),
            event_loop,
            queue_events,
            gate: gate.clone(),
            handler,
            started: false,
            ended: ended.clone(),
        };
        (host.0)(HostedWorker(Box::new(hosted)))?;
        Ok(Self {
            name,
            stop,
            gate,
            runner: Runner::Hosted(ended),
        })
    }

    /// Registers a new stop eventfd, a pause gate and `queue_events` in `event_loop`.
    fn register(
        event_loop: &EventLoop,
        queue_events: &[EventFd],
    ) -> io::Result<(EventFd, Arc<PauseGate>)> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        event_loop.add(&stop, STOP_TOKEN)?;
        let gate = Arc::new(PauseGate {
            request: EventFd::new(EFD_NONBLOCK)?,
            state: Mutex::new((false, false)),
            changed: Condvar::new(),
        });
        event_loop.add(&gate.request, PAUSE_TOKEN)?;
        for (index, evt) in queue_events.iter().enumerate() {
            event_loop.add(evt, queue_token(index))?;
        }
        Ok((stop, gate))
    }

    /// Asks every worker to park between events and waits until all have,
    /// for at most `timeout`: then none touches guest memory or raises an
    /// interrupt until [`WorkerThread::resume_all`]. On a timeout (a handler
    /// busy for that long) the workers are let go again and the error names
    /// the late one.
    pub fn pause_all(workers: &[WorkerThread], timeout: Duration) -> Result<(), String> {
        for w in workers {
            w.gate.lock().0 = true;
            w.gate
                .request
                .write(1)
                .map_err(|e| format!("{}: cannot ask the worker to pause: {e}", w.name))?;
        }
        let deadline = Instant::now() + timeout;
        for w in workers {
            let mut state = w.gate.lock();
            while !state.1 {
                if w.runner.is_finished() {
                    drop(state);
                    Self::resume_all(workers);
                    return Err(format!("{}: the worker has ended", w.name));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    drop(state);
                    Self::resume_all(workers);
                    return Err(format!(
                        "{}: the worker did not pause within {timeout:?}",
                        w.name
                    ));
                }
                state = w
                    .gate
                    .changed
                    .wait_timeout(state, left.min(Duration::from_millis(50)))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        Ok(())
    }

    /// Lets paused workers go on.
    pub fn resume_all(workers: &[WorkerThread]) {
        for w in workers {
            w.gate.lock().0 = false;
            w.gate.changed.notify_all();
        }
    }

    /// Stops every worker and waits for them: all are told first, so they
    /// wind down together.
    pub fn stop_all(workers: Vec<WorkerThread>) {
        // A parked worker would never see the stop.
        Self::resume_all(&workers);
        for w in &workers {
            if let Err(e) = w.stop.write(1) {
                error!("{}: cannot signal worker to stop: {e}", w.name);
            }
        }
        for w in workers {
            match w.runner {
                Runner::Thread(thread) => {
                    if thread.join().is_err() {
                        error!("{}: worker thread panicked", w.name);
                    }
                }
                Runner::Hosted(ended) => {
                    if !ended.wait(HOSTED_STOP_TIMEOUT) {
                        error!(
                            "{}: the hosting thread did not let go of the worker within {HOSTED_STOP_TIMEOUT:?}",
                            w.name
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Sender};
    use std::time::Duration;

    use super::*;

    /// Reports what the loop hands it; `mine` is its own descriptor.
    struct Probe(Sender<String>, EventFd);

    impl EventHandler for Probe {
        fn started(&mut self, queues: usize) {
            self.0.send(format!("started {queues}")).unwrap();
        }

        fn queue_notified(&mut self, index: usize) {
            self.0.send(format!("queue {index}")).unwrap();
        }

        fn fd_ready(&mut self, token: u64, _events: EventSet) {
            self.1.read().unwrap();
            self.0.send(format!("fd {token}")).unwrap();
        }
    }

    #[test]
    fn the_loop_dispatches_kicks_and_descriptors_and_stops() {
        let (tx, rx) = channel();
        let event_loop = EventLoop::new().unwrap();
        let mine = EventFd::new(EFD_NONBLOCK).unwrap();
        event_loop.add(&mine, 7).unwrap();
        let queues = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let events = queues.iter().map(|q| q.try_clone().unwrap()).collect();
        let probe = Probe(tx, mine.try_clone().unwrap());
        let worker =
            WorkerThread::spawn("probe".into(), "probe", event_loop, events, probe).unwrap();
        let next = || rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(next(), "started 2");
        queues[1].write(1).unwrap();
        assert_eq!(next(), "queue 1");
        // The loop drained the kick: no second report for it.
        mine.write(1).unwrap();
        assert_eq!(next(), "fd 7");
        WorkerThread::stop_all(vec![worker]);
        assert!(rx.recv().is_err(), "the handler is gone once stopped");
    }

    #[test]
    fn a_paused_worker_handles_nothing_until_resumed() {
        let (tx, rx) = channel();
        let queue = EventFd::new(EFD_NONBLOCK).unwrap();
        let probe = Probe(tx, EventFd::new(EFD_NONBLOCK).unwrap());
        let worker = WorkerThread::spawn(
            "probe".into(),
            "probe",
            EventLoop::new().unwrap(),
            vec![queue.try_clone().unwrap()],
            probe,
        )
        .unwrap();
        let next = || rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(next(), "started 1");
        let workers = vec![worker];
        WorkerThread::pause_all(&workers, Duration::from_secs(5)).unwrap();
        queue.write(1).unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "a paused worker handled a kick"
        );
        WorkerThread::resume_all(&workers);
        // The kick that came during the pause is handled after it.
        assert_eq!(next(), "queue 0");
        // Pausing again works, and stopping a paused worker ends it.
        WorkerThread::pause_all(&workers, Duration::from_secs(5)).unwrap();
        WorkerThread::stop_all(workers);
    }
}
