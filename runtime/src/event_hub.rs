//! The runtime's end of guest events: what the agent forwards goes to the host's attached
//! streams (or a bounded ring while none is attached), and what the host emits goes to the
//! agent.
//!
//! Everything from the guest is checked again here (the agent is guest code): the type, the
//! size and that the payload is JSON; a bad event is dropped, counted and logged. The rate
//! limit is a token bucket applied by sleeping in the thread that reads the agent's
//! connection, so a fast guest is slowed down through vsock flow control rather than losing
//! events. Attached streams have bounded queues and the reading thread waits on them: a slow
//! host reader slows the guest writers, and host memory stays bounded either way.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use msbvm_protocol::events::{check_type, pattern_matches, GuestEvent, HostEvent, RESERVED_PREFIX};
use msbvm_protocol::HostMessage;
use msbvm_sdk::control::server::Responder;
use msbvm_sdk::control::ControlResponse;
use msbvm_sdk::events::{DROPPED_TYPE, MAX_EVENT_LEN, RATE_BURST, RATE_PER_SEC, RING_CAPACITY};

/// Events queued for one attached stream before the reader of the agent's connection waits.
const STREAM_QUEUE: usize = 256;
/// How long a host event may take to be written to the agent before the link counts as
/// stuck (a well-behaved agent reads its connection all the time).
const EMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of events the ring keeps at most (besides [`RING_CAPACITY`] events), so that a
/// guest sending only the largest events holds 8 MiB of the host, not 64.
pub const RING_MAX_BYTES: usize = 8 << 20;
/// Requests waiting for a reply at once.
const MAX_WAITERS: usize = 1024;
/// How often an idle stream checks that its client is still there.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Guest events in and host events out, shared by the agent link and the control server.
#[derive(Default)]
pub struct EventHub {
    state: Mutex<State>,
    to_agent: Mutex<Option<UnixStream>>,
    bucket: Mutex<Bucket>,
    /// The plugins that see events both ways (set once, before the guest runs).
    plugins: std::sync::OnceLock<Arc<msbvm_plugins::Chain>>,
}

#[derive(Default)]
struct State {
    ring: VecDeque<GuestEvent>,
    /// The payload bytes in `ring` ([`event_bytes`]).
    ring_bytes: usize,
    /// Events lost (ring overflow, refused as malformed) since a stream last heard of it.
    dropped: u64,
    streams: Vec<Stream>,
    next_stream: u64,
    /// Request id → where its reply goes.
    waiters: HashMap<String, SyncSender<GuestEvent>>,
}

impl State {
    /// Keeps `event` in the ring for a stream that attaches later, dropping the oldest past
    /// [`RING_CAPACITY`] events or [`RING_MAX_BYTES`].
    fn keep(&mut self, event: GuestEvent) {
        let size = event_bytes(&event);
        while self.ring.len() >= RING_CAPACITY
            || (!self.ring.is_empty() && self.ring_bytes + size > RING_MAX_BYTES)
        {
            if let Some(old) = self.ring.pop_front() {
                self.ring_bytes -= event_bytes(&old);
            }
            self.dropped += 1;
        }
        self.ring_bytes += size;
        self.ring.push_back(event);
    }
}

struct Stream {
    id: u64,
    types: Vec<String>,
    tx: SyncSender<GuestEvent>,
}

/// What an event holds in memory, roughly: its strings.
fn event_bytes(e: &GuestEvent) -> usize {
    e.kind.len()
        + e.data.len()
        + e.id.as_ref().map_or(0, String::len)
        + e.reply_to.as_ref().map_or(0, String::len)
}

fn matches(types: &[String], kind: &str) -> bool {
    types.is_empty() || types.iter().any(|t| pattern_matches(t, kind))
}

/// A token bucket: [`RATE_PER_SEC`] sustained, [`RATE_BURST`] at once.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            tokens: f64::from(RATE_BURST),
            at: Instant::now(),
        }
    }
}

impl Bucket {
    /// Takes a token; how long to wait first if there is none.
    fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * f64::from(RATE_PER_SEC)).min(f64::from(RATE_BURST));
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / f64::from(RATE_PER_SEC))
        }
    }
}

/// Why an event from the guest was refused.
pub fn check_guest_event(e: &GuestEvent) -> Result<(), String> {
    check_type(&e.kind)?;
    if e.kind.starts_with(RESERVED_PREFIX) {
        return Err(format!("type {:?} is reserved for msbvm", e.kind));
    }
    let len = e.kind.len() + e.data.len();
    if len > MAX_EVENT_LEN {
        return Err(format!(
            "{len} bytes is over the {MAX_EVENT_LEN}-byte limit"
        ));
    }
    if serde_json::from_str::<serde::de::IgnoredAny>(&e.data).is_err() {
        return Err("its data is not JSON".into());
    }
    Ok(())
}

/// The runtime's own event saying `count` events were lost.
fn dropped_event(count: u64) -> GuestEvent {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    GuestEvent {
        kind: DROPPED_TYPE.into(),
        data: format!("{{\"count\":{count}}}"),
        id: None,
        reply_to: None,
        pid: 0,
        exec: None,
        connection: 0,
        time_ms,
    }
}

/// An attached stream: its backlog first, then the receiver.
pub struct Attached {
    /// Events kept while nobody listened (with a leading `msbvm.dropped` if some were lost).
    pub backlog: Vec<GuestEvent>,
    rx: Receiver<GuestEvent>,
    id: u64,
    hub: Arc<EventHub>,
}

impl Attached {
    /// The next live event, or `None` after `timeout` (or if the hub is gone).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<GuestEvent, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.hub.lock().streams.retain(|s| s.id != self.id);
    }
}

impl EventHub {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes an event the agent forwarded: checked, rate-limited (by waiting), then handed
    /// to the request waiting for it, to the attached streams whose types match (waiting
    /// while their queues are full), or to the ring.
    pub fn from_guest(&self, event: GuestEvent) {
        if let Err(why) = check_guest_event(&event) {
            let mut state = self.lock();
            state.dropped += 1;
            if state.dropped.is_power_of_two() {
                tracing::warn!(dropped = state.dropped, "refused a guest event: {why}");
            }
            return;
        }
        self.tell_plugins(
            msbvm_plugins::data::Direction::FromGuest,
            &event.kind,
            &event.data,
        );
        let wait = self
            .bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let mut state = self.lock();
        if let Some(reply_to) = &event.reply_to {
            if let Some(waiter) = state.waiters.remove(reply_to) {
                let _ = waiter.try_send(event);
                return;
            }
        }
        let targets: Vec<(u64, SyncSender<GuestEvent>)> = state
            .streams
            .iter()
            .filter(|s| matches(&s.types, &event.kind))
            .map(|s| (s.id, s.tx.clone()))
            .collect();
        if targets.is_empty() {
            state.keep(event);
            return;
        }
        drop(state);
        let mut gone = Vec::new();
        for (id, tx) in targets {
            // Blocks while this stream's reader is behind: the back-pressure.
            if tx.send(event.clone()).is_err() {
                gone.push(id);
            }
        }
        if !gone.is_empty() {
            self.lock().streams.retain(|s| !gone.contains(&s.id));
        }
    }

    /// Lets `plugins` see every event from and to the guest from now on.
    pub fn set_plugins(&self, plugins: Arc<msbvm_plugins::Chain>) {
        let _ = self.plugins.set(plugins);
    }

    /// Tells the plugins that asked about an event (its data is bounded JSON text by now).
    fn tell_plugins(&self, direction: msbvm_plugins::data::Direction, kind: &str, data: &str) {
        let Some(chain) = self.plugins.get() else {
            return;
        };
        if chain.wants(msbvm_plugins::Hook::Event) {
            chain.event(&msbvm_plugins::data::Event {
                direction,
                topic: kind.to_string(),
                data: serde_json::from_str(data).unwrap_or(serde_json::Value::Null),
            });
        }
    }

    /// Publishes an event of the runtime's own (plugin notices and plugin events): like a
    /// guest event, but reserved types are allowed, and it never waits: a stream whose queue
    /// is full misses it (the runtime's threads must not stall on a slow reader).
    pub fn from_host(&self, kind: &str, data: &str) {
        let event = GuestEvent {
            kind: kind.to_string(),
            data: data.to_string(),
            id: None,
            reply_to: None,
            pid: 0,
            exec: None,
            connection: 0,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        if check_type(kind).is_err() || kind.len() + data.len() > MAX_EVENT_LEN {
            tracing::warn!(kind, "an oversized or badly named plugin event was dropped");
            return;
        }
        let mut state = self.lock();
        let targets: Vec<SyncSender<GuestEvent>> = state
            .streams
            .iter()
            .filter(|s| matches(&s.types, kind))
            .map(|s| s.tx.clone())
            .collect();
        if targets.is_empty() {
            state.keep(event);
            return;
        }
        drop(state);
        for tx in targets {
            let _ = tx.try_send(event.clone());
        }
    }

    /// Attaches a stream for `types` (all when empty): the matching kept events leave the
    /// ring for it. Without `follow`, nothing live is queued for it.
    pub fn attach(self: &Arc<Self>, types: Vec<String>, follow: bool) -> Attached {
        let mut state = self.lock();
        let mut backlog = Vec::new();
        if state.dropped > 0 {
            backlog.push(dropped_event(state.dropped));
            state.dropped = 0;
        }
        let (kept, taken): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut state.ring)
            .into_iter()
            .partition(|e| !matches(&types, &e.kind));
        state.ring_bytes = kept.iter().map(event_bytes).sum();
        state.ring = kept;
        backlog.extend(taken);
        let (tx, rx) = mpsc::sync_channel(STREAM_QUEUE);
        let id = state.next_stream;
        state.next_stream += 1;
        if follow {
            state.streams.push(Stream { id, types, tx });
        }
        Attached {
            backlog,
            rx,
            id,
            hub: Arc::clone(self),
        }
    }

    /// The agent's events connection, where host events go.
    pub fn set_agent(&self, stream: UnixStream) {
        let _ = stream.set_write_timeout(Some(EMIT_TIMEOUT));
        *self.to_agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
    }

    /// Sends `event` to the agent.
    pub fn to_guest(&self, event: HostEvent) -> Result<(), String> {
        self.tell_plugins(
            msbvm_plugins::data::Direction::ToGuest,
            &event.kind,
            &event.data,
        );
        let frame =
            msbvm_protocol::encode(&HostMessage::Event(event)).map_err(|e| e.to_string())?;
        let mut link = self.to_agent.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stream) = link.as_mut() else {
            return Err("the guest agent has no events connection".into());
        };
        if let Err(e) = stream.write_all(&frame) {
            // A frame cut short leaves the connection unusable; a stuck agent loses it.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            *link = None;
            let stuck = matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            );
            return Err(if stuck {
                format!(
                    "the guest agent did not take the event within {}s; its events connection is closed",
                    EMIT_TIMEOUT.as_secs()
                )
            } else {
                format!("the guest agent's events connection failed: {e}")
            });
        }
        Ok(())
    }

    /// Sends `event` (which has an id) and waits up to `timeout` for the guest event
    /// answering it.
    pub fn request(
        &self,
        event: HostEvent,
        timeout: Duration,
    ) -> Result<GuestEvent, RequestFailure> {
        let Some(id) = event.id.clone() else {
            return Err(RequestFailure::Refused("a request needs an id".into()));
        };
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut state = self.lock();
            if state.waiters.len() >= MAX_WAITERS {
                return Err(RequestFailure::Refused(format!(
                    "{MAX_WAITERS} requests are already waiting for replies"
                )));
            }
            if state.waiters.contains_key(&id) {
                return Err(RequestFailure::Refused(format!(
                    "a request with id {id:?} is already waiting"
                )));
            }
            state.waiters.insert(id.clone(), tx);
        }
        let result = self
            .to_guest(event)
            .map_err(RequestFailure::Refused)
            .and_then(|()| {
                rx.recv_timeout(timeout)
                    .map_err(|_| RequestFailure::NoAnswer {
                        id: id.clone(),
                        waited: timeout,
                    })
            });
        self.lock().waiters.remove(&id);
        result
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFailure {
    /// It was not sent (no id, too many waiting, the guest unreachable): why.
    Refused(String),
    /// It was sent and no guest program answered within the timeout.
    NoAnswer {
        /// The request's id.
        id: String,
        /// How long the runtime waited.
        waited: Duration,
    },
}

/// Writes a stream to a control client until it ends: the backlog, then (following) live
/// events until the client goes away or the hub does; without `follow`, a final `Done`.
pub fn serve_stream(mut attached: Attached, follow: bool, client: &mut Responder<'_>) {
    let send =
        |client: &mut Responder<'_>, event| client.send(&ControlResponse::Event(event)).is_ok();
    for event in std::mem::take(&mut attached.backlog) {
        if !send(client, event) {
            return;
        }
    }
    if !follow {
        let _ = client.send(&ControlResponse::Done);
        return;
    }
    loop {
        match attached.recv_timeout(IDLE_CHECK) {
            Ok(event) => {
                if !send(client, event) {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if client.client_gone() {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_protocol::events::Target;

    fn ev(kind: &str, n: u64) -> GuestEvent {
        GuestEvent {
            kind: kind.into(),
            data: format!("{{\"n\":{n}}}"),
            id: None,
            reply_to: None,
            pid: 10,
            exec: Some(9),
            connection: 1,
            time_ms: n,
        }
    }

    #[test]
    fn without_a_stream_the_newest_are_kept_and_the_rest_counted() {
        let hub = Arc::new(EventHub::default());
        *hub.bucket.lock().unwrap() = Bucket {
            tokens: 1e9,
            at: Instant::now(),
        };
        for n in 0..(RING_CAPACITY as u64 + 10) {
            hub.from_guest(ev("t", n));
        }
        let a = hub.attach(vec![], false);
        assert_eq!(a.backlog[0].kind, DROPPED_TYPE);
        assert_eq!(a.backlog[0].data, "{\"count\":10}");
        assert_eq!(a.backlog.len(), RING_CAPACITY + 1);
        assert_eq!(a.backlog[1].time_ms, 10);
        // Taken: the next stream starts empty.
        drop(a);
        assert!(hub.attach(vec![], false).backlog.is_empty());
    }

    #[test]
    fn the_ring_is_bounded_in_bytes_too() {
        let hub = Arc::new(EventHub::default());
        let mut big = ev("t", 0);
        big.data = format!("\"{}\"", "x".repeat(60_000));
        for _ in 0..300 {
            hub.from_guest(big.clone());
        }
        let a = hub.attach(vec![], false);
        let kept = a.backlog.len() - 1;
        assert!(kept * 60_000 <= RING_MAX_BYTES, "{kept} kept");
        assert_eq!(a.backlog[0].data, format!("{{\"count\":{}}}", 300 - kept));
        assert_eq!(hub.lock().ring_bytes, 0);
    }

    #[test]
    fn bad_guest_events_are_refused_and_counted() {
        let hub = Arc::new(EventHub::default());
        let mut bad = ev("t", 0);
        bad.data = "{not json".into();
        hub.from_guest(bad);
        hub.from_guest(ev("msbvm.dropped", 0));
        let mut big = ev("t", 0);
        big.data = format!("\"{}\"", "x".repeat(MAX_EVENT_LEN));
        hub.from_guest(big);
        let a = hub.attach(vec![], false);
        assert_eq!(a.backlog.len(), 1);
        assert_eq!(a.backlog[0].data, "{\"count\":3}");
    }

    #[test]
    fn streams_get_what_matches_in_order_and_the_rest_waits_in_the_ring() {
        let hub = Arc::new(EventHub::default());
        let a = hub.attach(vec!["job.*".into()], true);
        let h = Arc::clone(&hub);
        let t = std::thread::spawn(move || {
            for n in 0..1000 {
                h.from_guest(ev("job.progress", n));
            }
            h.from_guest(ev("other", 0));
        });
        for n in 0..1000 {
            let e = a.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(e.time_ms, n);
        }
        t.join().unwrap();
        drop(a);
        let rest = hub.attach(vec![], false);
        assert_eq!(rest.backlog.len(), 1);
        assert_eq!(rest.backlog[0].kind, "other");
    }

    #[test]
    fn a_slow_stream_holds_the_guest_back_instead_of_buffering() {
        let hub = Arc::new(EventHub::default());
        let a = hub.attach(vec![], true);
        let h = Arc::clone(&hub);
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s = Arc::clone(&sent);
        let t = std::thread::spawn(move || {
            for n in 0..(STREAM_QUEUE as u64 + 50) {
                h.from_guest(ev("t", n));
                s.store(n + 1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let held = sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            held <= STREAM_QUEUE as u64 + 1,
            "{held} went past a full queue"
        );
        for _ in 0..(STREAM_QUEUE + 50) {
            a.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        t.join().unwrap();
    }

    #[test]
    fn a_stream_whose_reader_left_is_forgotten() {
        let hub = Arc::new(EventHub::default());
        let a = hub.attach(vec![], true);
        drop(a);
        hub.from_guest(ev("t", 1));
        assert_eq!(hub.attach(vec![], false).backlog.len(), 1);
    }

    #[test]
    fn a_request_gets_the_event_that_answers_it() {
        let hub = Arc::new(EventHub::default());
        let (host, guest) = UnixStream::pair().unwrap();
        hub.set_agent(host);
        let h = Arc::clone(&hub);
        let agent = std::thread::spawn(move || {
            let mut r = msbvm_sdk::framing::FrameReader::new(guest);
            match r.read_message::<HostMessage>().unwrap() {
                Some(HostMessage::Event(e)) => {
                    assert_eq!(e.target, Target::Subscribers);
                    let mut reply = ev("answer", 1);
                    reply.reply_to = e.id;
                    h.from_guest(ev("unrelated", 0));
                    h.from_guest(reply);
                }
                other => panic!("{other:?}"),
            }
            r
        });
        let request = HostEvent {
            kind: "ask".into(),
            data: "1".into(),
            id: Some("r1".into()),
            reply_to: None,
            target: Target::Subscribers,
        };
        let reply = hub
            .request(request.clone(), Duration::from_secs(5))
            .unwrap();
        assert_eq!(reply.kind, "answer");
        let _agent_still_connected = agent.join().unwrap();
        // Nobody answers now: a clear timeout, and the waiter is gone.
        let e = hub.request(request, Duration::from_millis(50)).unwrap_err();
        assert_eq!(
            e,
            RequestFailure::NoAnswer {
                id: "r1".into(),
                waited: Duration::from_millis(50)
            }
        );
        assert!(hub.lock().waiters.is_empty());
        assert_eq!(
            hub.attach(vec![], false).backlog.len(),
            1,
            "the unrelated one"
        );
    }

    #[test]
    fn emitting_without_an_agent_or_to_a_stuck_one_fails_clearly() {
        let hub = EventHub::default();
        let e = HostEvent {
            kind: "t".into(),
            data: format!("\"{}\"", "x".repeat(60_000)),
            id: None,
            reply_to: None,
            target: Target::Subscribers,
        };
        assert!(hub
            .to_guest(e.clone())
            .unwrap_err()
            .contains("no events connection"));
        let (host, _guest_never_reads) = UnixStream::pair().unwrap();
        hub.set_agent(host);
        hub.to_agent
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut failed = None;
        for _ in 0..100 {
            if let Err(why) = hub.to_guest(e.clone()) {
                failed = Some(why);
                break;
            }
        }
        assert!(failed
            .expect("a stuck agent fails the emit")
            .contains("did not take"));
        assert!(hub.to_guest(e).is_err(), "the link is dropped");
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let now = Instant::now();
        let mut b = Bucket {
            tokens: f64::from(RATE_BURST),
            at: now,
        };
        for _ in 0..RATE_BURST {
            assert!(b.take(now).is_zero());
        }
        let wait = b.take(now);
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(1),
            "{wait:?}"
        );
    }
}
