//! Out-of-process plugins: an executable in any language, started by the sandbox, speaking the
//! JSON-lines protocol of [`protocol`] (specified in `PROTOCOL.md`) on its stdin and stdout.
//!
//! [`External`] is a [`Plugin`] like any other, so it composes in a [`crate::Chain`]. What it
//! guarantees the sandbox, whatever the plugin does:
//!
//! - **Nothing blocks on the plugin beyond a decision's timeout.** Lines to the plugin go
//!   through a bounded queue and a writer thread; a notification the queue has no room for is
//!   dropped (and counted in a [`Notice::Dropped`]), a decision that gets no answer in time
//!   follows the failure policy (and a [`Notice::TimedOut`] says so).
//! - **Bounded memory:** lines from the plugin are at most [`protocol::MAX_LINE`] bytes, the
//!   queue and the requests in flight are capped, stderr lines are cut.
//! - **Failures are contained:** a plugin that exits, breaks the protocol, or misses
//!   [`HUNG_AFTER`] decisions in a row is stopped and started again after a back-off (doubling
//!   from [`FIRST_BACKOFF`]); after [`MAX_FAILURES`] failures within [`FAILURE_WINDOW`] it is
//!   given up ([`Notice::GaveUp`]) and its failure policy decides from then on. While it is
//!   down, decisions follow the failure policy and notifications are dropped.

pub mod protocol;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::data::{
    DnsAnswer, DnsQuery, Event, Exec, ExecEnded, ExecOutput, Flow, FlowBytes, FsAccess, FsIo,
    HttpRequest, Lifecycle, SandboxInfo,
};
use crate::hook::{Hook, Interests};
use crate::plugin::{Decision, FailurePolicy, Limits, Notice, NoticeSink, Plugin};
use protocol::{FromPlugin, ToPlugin};

/// How long a started plugin has to answer the hello, by default.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Decisions missed in a row after which the plugin counts as hung and is restarted.
pub const HUNG_AFTER: u32 = 3;
/// The first pause before a restart.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Failures within [`FAILURE_WINDOW`] after which the plugin is given up.
pub const MAX_FAILURES: usize = 5;
/// See [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Lines waiting for the plugin to read them, at most.
const QUEUE: usize = 1024;
/// Decisions waiting for an answer, at most (more fail at once by the failure policy).
const IN_FLIGHT: usize = 1024;
/// The longest stderr line logged (the rest is cut).
const STDERR_LINE: usize = 4096;
/// Largest rewritten exec accepted from a plugin.
const MAX_ARGS: usize = 4096;

/// How to run an out-of-process plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Passed in the hello (the text after `:` in `--plugin PATH:CONFIG`).
    pub config: Option<String>,
    /// The longest a decision may take.
    pub timeout: Duration,
    /// What a decision is when the plugin cannot answer.
    pub failure_policy: FailurePolicy,
    /// How long a started plugin has to answer the hello.
    pub handshake_timeout: Duration,
    /// Whether a failed plugin is started again (a process that may not start programs any
    /// more gives up at the first failure instead).
    pub restart: bool,
}

impl ExternalSpec {
    /// `program` with no arguments or configuration, a 1 s timeout, failing closed, and
    /// [`HANDSHAKE_TIMEOUT`] to start.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        ExternalSpec {
            program: program.into(),
            args: Vec::new(),
            config: None,
            timeout: Duration::from_secs(1),
            failure_policy: FailurePolicy::Closed,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            restart: true,
        }
    }
}

/// Why an out-of-process plugin could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The executable could not be run.
    #[error("cannot start plugin {program}: {source}")]
    Spawn {
        /// The executable.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// It did not complete the handshake.
    #[error("plugin {program} failed its handshake: {why}")]
    Handshake {
        /// The executable.
        program: String,
        /// What went wrong.
        why: String,
    },
}

/// An out-of-process plugin. See the module docs.
pub struct External {
    inner: Arc<Inner>,
}

struct Inner {
    spec: ExternalSpec,
    sandbox: String,
    /// From the first hello; kept across restarts.
    name: String,
    interests: Interests,
    limits: Limits,
    notices: NoticeSink,
    state: Mutex<State>,
    pending: Mutex<HashMap<u64, SyncSender<Reply>>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    timeouts: AtomicU64,
    shutting_down: AtomicBool,
}

/// A decision's answer, as the reader thread hands it over.
type Reply = (Decision, Option<Value>);

#[derive(Default)]
struct State {
    running: Option<Running>,
    /// Bumped per start, so a dead process's reader cannot fail its successor.
    generation: u64,
    /// When it failed, within the last [`FAILURE_WINDOW`].
    failures: VecDeque<Instant>,
    restarts: u32,
    gave_up: bool,
    missed_in_a_row: u32,
}

struct Running {
    child: Child,
    queue: SyncSender<String>,
}

/// A started process and its plugin's hello.
struct Started {
    child: Child,
    stdout: BufReader<ChildStdout>,
    queue: SyncSender<String>,
    name: Option<String>,
    interests: Interests,
    limits: Limits,
}

impl External {
    /// Starts `spec` for sandbox `sandbox` and completes the handshake (within
    /// [`HANDSHAKE_TIMEOUT`]). `notices` hears of its failures and restarts.
    pub fn start(
        spec: ExternalSpec,
        sandbox: &str,
        notices: NoticeSink,
    ) -> Result<External, StartError> {
        let child = command(&spec)?;
        External::attach(child, spec, sandbox, notices)
    }

    /// Like [`External::start`], for a process already started by [`command`] (a sandbox
    /// starts its plugins before it confines itself, and attaches them afterwards). Restarts
    /// start `spec` again.
    pub fn attach(
        child: Child,
        spec: ExternalSpec,
        sandbox: &str,
        notices: NoticeSink,
    ) -> Result<External, StartError> {
        let started = handshake(child, &spec, sandbox)?;
        let name = started.name.clone().map_or_else(
            || {
                spec.program
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "plugin".into())
            },
            |n| protocol::truncate(&n, 64),
        );
        let inner = Arc::new(Inner {
            name,
            interests: started.interests,
            limits: started.limits,
            sandbox: sandbox.to_string(),
            spec,
            notices,
            state: Mutex::new(State::default()),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
        });
        Inner::install(&inner, started);
        Ok(External { inner })
    }

    /// The process id of the plugin's current process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.inner.state().running.as_ref().map(|r| r.child.id())
    }

    fn decide<T: serde::Serialize>(&self, hook: Hook, data: &T) -> (Decision, Option<Value>) {
        let data = serde_json::to_value(data).unwrap_or(Value::Null);
        match self.inner.ask(hook, data) {
            Ok(reply) => reply,
            Err(why) => (self.inner.failed_decision(hook, &why), None),
        }
    }

    /// A decision on a read or write whose plugin may set its data (nothing else changes).
    fn decide_data(&self, hook: Hook, io: &mut FsIo) -> Decision {
        let (decision, data) = self.decide(hook, &*io);
        if decision.is_deny() {
            return decision;
        }
        match data.map(|change| merged(&*io, change)) {
            None => decision,
            Some(Ok(new)) => {
                io.data = new.data;
                decision
            }
            Some(Err(e)) => self.inner.bad_data(hook, &e),
        }
    }

    fn notify<T: serde::Serialize>(&self, hook: Hook, data: &T) {
        let data = serde_json::to_value(data).unwrap_or(Value::Null);
        self.inner
            .send_or_drop(protocol::line(&ToPlugin::Notify { hook, data }));
    }
}

impl Plugin for External {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn interests(&self) -> Interests {
        self.inner.interests
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }

    fn failure_policy(&self) -> FailurePolicy {
        self.inner.spec.failure_policy
    }

    fn timeout(&self) -> Duration {
        self.inner.spec.timeout
    }

    fn lifecycle(&self, sandbox: &SandboxInfo, step: &Lifecycle) {
        let mut data = serde_json::to_value(step).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut data {
            map.insert("sandbox".into(), Value::String(sandbox.name.clone()));
        }
        self.notify(Hook::Lifecycle, &data);
    }

    fn before_exec(&self, exec: &mut Exec) -> Decision {
        let (decision, data) = self.decide(Hook::ExecBefore, exec);
        if decision.is_deny() {
            return decision;
        }
        match data.map(|change| merged(exec, change)) {
            None => decision,
            Some(Ok(new)) if !new.argv.is_empty() && new.argv.len() <= MAX_ARGS => {
                *exec = new;
                decision
            }
            Some(Ok(_)) => self
                .inner
                .bad_data(Hook::ExecBefore, "an empty or huge argv"),
            Some(Err(e)) => self.inner.bad_data(Hook::ExecBefore, &e),
        }
    }

    fn exec_output(&self, output: &ExecOutput) {
        self.notify(Hook::ExecOutput, output);
    }

    fn exec_ended(&self, ended: &ExecEnded) {
        self.notify(Hook::ExecAfter, ended);
    }

    fn fs_access(&self, access: &FsAccess) -> Decision {
        self.decide(Hook::Fs, access).0
    }

    fn fs_change(&self, change: &FsAccess) {
        self.notify(Hook::FsChange, change);
    }

    fn flow(&self, flow: &Flow) -> Decision {
        self.decide(Hook::Flow, flow).0
    }

    fn dns_query(&self, query: &DnsQuery) -> Decision {
        self.decide(Hook::Dns, query).0
    }

    fn dns_answer(&self, answer: &DnsAnswer) {
        self.notify(Hook::DnsAnswer, answer);
    }

    fn http_request(&self, request: &mut HttpRequest) -> Decision {
        let (decision, data) = self.decide(Hook::Http, request);
        if decision.is_deny() {
            return decision;
        }
        // Only the headers may change: the method, host and path were decided by policy.
        match data.map(|change| merged(request, change)) {
            None => decision,
            Some(Ok(new)) => {
                request.headers = new.headers;
                decision
            }
            Some(Err(e)) => self.inner.bad_data(Hook::Http, &e),
        }
    }

    fn fs_read(&self, read: &mut FsIo) -> Decision {
        self.decide_data(Hook::FsRead, read)
    }

    fn fs_write(&self, write: &mut FsIo) -> Decision {
        self.decide_data(Hook::FsWrite, write)
    }

    fn flow_bytes(&self, bytes: &FlowBytes) {
        self.notify(Hook::Bytes, bytes);
    }

    fn event(&self, event: &Event) {
        self.notify(Hook::Event, event);
    }

    fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Drop for External {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

/// `current` with the fields of the plugin's `change` (a JSON object) replaced; fields it
/// leaves out keep their value, and a field `current` does not have is an error.
fn merged<T: serde::Serialize + serde::de::DeserializeOwned>(
    current: &T,
    change: Value,
) -> Result<T, String> {
    let Value::Object(mut fields) = serde_json::to_value(current).map_err(|e| e.to_string())?
    else {
        return Err("not an object".into());
    };
    let Value::Object(change) = change else {
        return Err("the change is not a JSON object".into());
    };
    for (key, value) in change {
        match fields.get_mut(&key) {
            Some(field) => *field = value,
            None => return Err(format!("no field {:?}", protocol::truncate(&key, 64))),
        }
    }
    serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())
}

/// Why a decision got no answer from the plugin.
enum NoAnswer {
    Down,
    Busy,
    TimedOut,
    Died,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, SyncSender<Reply>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `started` the running process and starts reading its stdout.
    fn install(this: &Arc<Inner>, started: Started) {
        let Started {
            child,
            stdout,
            queue,
            ..
        } = started;
        let generation = {
            let mut state = this.state();
            state.generation += 1;
            state.running = Some(Running { child, queue });
            state.missed_in_a_row = 0;
            state.generation
        };
        let inner = Arc::clone(this);
        let spawned = std::thread::Builder::new()
            .name("msbvm-plugin-read".into())
            .spawn(move || {
                crate::thread_started();
                inner.read(stdout, generation)
            });
        if let Err(e) = spawned {
            this.fail(generation, &format!("cannot start its reader thread: {e}"));
        }
    }

    /// Reads the plugin's lines until it closes stdout or breaks the protocol.
    fn read(self: &Arc<Inner>, mut stdout: BufReader<ChildStdout>, generation: u64) {
        let why = loop {
            let line = match read_line(&mut stdout) {
                Ok(Some(line)) => line,
                Ok(None) => break "it closed its output".to_string(),
                Err(e) => break e,
            };
            match protocol::parse(&line) {
                Ok(FromPlugin::Decision {
                    id,
                    verdict,
                    reason,
                    data,
                }) => {
                    let Some(waiter) = self.pending().remove(&id) else {
                        // An answer that came too late (its request timed out) or was never
                        // asked for: ignored.
                        continue;
                    };
                    match protocol::verdict(&verdict, reason) {
                        Ok(d) => {
                            self.state().missed_in_a_row = 0;
                            let _ = waiter.try_send((d, data));
                        }
                        Err(e) => break e.to_string(),
                    }
                }
                Ok(FromPlugin::Log { level, message }) => {
                    let message = protocol::truncate(&message, STDERR_LINE);
                    match level.as_deref() {
                        Some("error") => tracing::error!(plugin = %self.name, "{message}"),
                        Some("warn") => tracing::warn!(plugin = %self.name, "{message}"),
                        Some("debug") => tracing::debug!(plugin = %self.name, "{message}"),
                        _ => tracing::info!(plugin = %self.name, "{message}"),
                    }
                }
                Ok(FromPlugin::Event { topic, data }) => {
                    (self.notices)(Notice::Event {
                        plugin: self.name.clone(),
                        topic: protocol::truncate(&topic, 256),
                        data,
                    });
                }
                Ok(FromPlugin::Hello { .. }) => break "it sent a second hello".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        self.fail(generation, &why);
    }

    /// Sends a decision request and waits for its answer, within the timeout.
    fn ask(&self, hook: Hook, data: Value) -> Result<Reply, NoAnswer> {
        let queue = match &self.state().running {
            Some(r) => r.queue.clone(),
            None => return Err(NoAnswer::Down),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut pending = self.pending();
            if pending.len() >= IN_FLIGHT {
                return Err(NoAnswer::Busy);
            }
            pending.insert(id, tx);
        }
        if let Err(e) = queue.try_send(protocol::line(&ToPlugin::Decide { id, hook, data })) {
            self.pending().remove(&id);
            return Err(match e {
                TrySendError::Full(_) => NoAnswer::Busy,
                TrySendError::Disconnected(_) => NoAnswer::Down,
            });
        }
        match rx.recv_timeout(self.spec.timeout) {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => {
                self.pending().remove(&id);
                Err(NoAnswer::TimedOut)
            }
            Err(RecvTimeoutError::Disconnected) => Err(NoAnswer::Died),
        }
    }

    /// What a decision is when the plugin did not give one, with the notices that go with it.
    fn failed_decision(self: &Arc<Inner>, hook: Hook, why: &NoAnswer) -> Decision {
        let decision = self.policy_decision(
            hook,
            match why {
                NoAnswer::Down => "is not running",
                NoAnswer::Busy => "has too many requests waiting",
                NoAnswer::TimedOut => "did not answer in time",
                NoAnswer::Died => "ended before answering",
            },
        );
        if let NoAnswer::TimedOut = why {
            let n = self.timeouts.fetch_add(1, Ordering::Relaxed);
            if n < 10 || n.is_multiple_of(100) {
                tracing::warn!(plugin = %self.name, %hook, "decision timed out after {:?}", self.spec.timeout);
                (self.notices)(Notice::TimedOut {
                    plugin: self.name.clone(),
                    hook: hook.name().into(),
                    decided: if decision.is_deny() {
                        "deny"
                    } else {
                        "continue"
                    }
                    .into(),
                });
            }
            let (hung, generation) = {
                let mut state = self.state();
                state.missed_in_a_row += 1;
                (state.missed_in_a_row >= HUNG_AFTER, state.generation)
            };
            if hung {
                self.fail(
                    generation,
                    &format!("it missed {HUNG_AFTER} decisions in a row"),
                );
            }
        }
        decision
    }

    fn policy_decision(&self, hook: Hook, why: &str) -> Decision {
        match self.spec.failure_policy {
            FailurePolicy::Closed => Decision::deny(format!(
                "plugin {} {why} ({hook}; it fails closed)",
                self.name
            )),
            FailurePolicy::Open => Decision::Continue,
        }
    }

    /// A decision whose changed value could not be used: the failure policy decides.
    fn bad_data(&self, hook: Hook, why: &str) -> Decision {
        tracing::warn!(plugin = %self.name, %hook, "unusable change from the plugin: {why}");
        (self.notices)(Notice::Failed {
            plugin: self.name.clone(),
            reason: format!(
                "unusable change on {hook}: {}",
                protocol::truncate(why, 256)
            ),
        });
        self.policy_decision(hook, "sent an unusable change")
    }

    fn send_or_drop(&self, line: String) {
        let queue = self.state().running.as_ref().map(|r| r.queue.clone());
        let sent = queue.is_some_and(|q| q.try_send(line).is_ok());
        if !sent {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                (self.notices)(Notice::Dropped {
                    plugin: self.name.clone(),
                    count: n + 1,
                });
            }
        }
    }

    /// The process of `generation` failed: stop it, tell the waiters, and restart it after a
    /// back-off (or give up).
    fn fail(self: &Arc<Inner>, generation: u64, why: &str) {
        if self.shutting_down.load(Ordering::Acquire) {
            return;
        }
        let (child, pause) = {
            let mut state = self.state();
            if state.generation != generation || state.running.is_none() {
                return;
            }
            let child = state.running.take().map(|r| r.child);
            let pause = if self.spec.restart {
                count_failure(&mut state)
            } else {
                None
            };
            (child, pause)
        };
        // Waiters get `Disconnected` at once instead of waiting out their timeout.
        self.pending().clear();
        let why = match child.and_then(stop) {
            Some(status) => format!("{why}; it {status}"),
            None => why.to_string(),
        };
        tracing::warn!(plugin = %self.name, "plugin failed: {why}");
        let Some(pause) = pause else {
            self.give_up(why);
            return;
        };
        (self.notices)(Notice::Failed {
            plugin: self.name.clone(),
            reason: why,
        });
        let inner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("msbvm-plugin-restart".into())
            .spawn(move || {
                crate::thread_started();
                inner.restart(pause)
            });
        if let Err(e) = spawned {
            self.give_up(format!("cannot start a thread to restart it: {e}"));
        }
    }

    fn give_up(&self, why: String) {
        self.state().gave_up = true;
        tracing::error!(plugin = %self.name, "plugin keeps failing ({why}); its failure policy decides from now on");
        (self.notices)(Notice::GaveUp {
            plugin: self.name.clone(),
            reason: why,
        });
    }

    /// Starts the plugin again after `pause`, and again after longer pauses while starting
    /// fails, until it runs or is given up.
    fn restart(self: Arc<Inner>, mut pause: Duration) {
        loop {
            std::thread::sleep(pause);
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            let why = match spawn(&self.spec, &self.sandbox) {
                Ok(started) => {
                    if started.interests != self.interests {
                        tracing::warn!(plugin = %self.name, "the restarted plugin asks for other hooks; it keeps the ones it first asked for");
                    }
                    let restarts = {
                        let mut state = self.state();
                        state.restarts += 1;
                        state.restarts
                    };
                    Inner::install(&self, started);
                    if self.shutting_down.load(Ordering::Acquire) {
                        // A shutdown raced the start: stop what was just started.
                        if let Some(r) = self.state().running.take() {
                            stop(r.child);
                        }
                        return;
                    }
                    tracing::info!(plugin = %self.name, restarts, "plugin restarted");
                    (self.notices)(Notice::Restarted {
                        plugin: self.name.clone(),
                        restarts,
                    });
                    return;
                }
                Err(e) => e.to_string(),
            };
            let next = count_failure(&mut self.state());
            match next {
                Some(p) => {
                    tracing::warn!(plugin = %self.name, "restarting the plugin failed: {why}");
                    (self.notices)(Notice::Failed {
                        plugin: self.name.clone(),
                        reason: why,
                    });
                    pause = p;
                }
                None => {
                    self.give_up(why);
                    return;
                }
            }
        }
    }

    fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = self.state().running.take();
        self.pending().clear();
        if let Some(Running { child, queue }) = running {
            let _ = queue.try_send(protocol::line(&ToPlugin::Shutdown));
            // Dropping the queue ends the writer thread, which closes the plugin's stdin.
            drop(queue);
            stop_within(child, Duration::from_secs(1));
        }
    }
}

/// Counts a failure now: the pause before the next start, or `None` when the plugin has
/// failed [`MAX_FAILURES`] times within [`FAILURE_WINDOW`].
fn count_failure(state: &mut State) -> Option<Duration> {
    let now = Instant::now();
    state.failures.push_back(now);
    while state
        .failures
        .front()
        .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
    {
        state.failures.pop_front();
    }
    let n = state.failures.len();
    if n >= MAX_FAILURES {
        return None;
    }
    let doubling = u32::try_from(n - 1).unwrap_or(16).min(16);
    Some((FIRST_BACKOFF * 2u32.pow(doubling)).min(MAX_BACKOFF))
}

/// Starts the process, sends the hello and reads the plugin's.
fn spawn(spec: &ExternalSpec, sandbox: &str) -> Result<Started, StartError> {
    handshake(command(spec)?, spec, sandbox)
}

/// Starts `spec`'s process with piped standard streams (the handshake not done).
pub fn command(spec: &ExternalSpec) -> Result<Child, StartError> {
    Command::new(&spec.program)
        .args(&spec.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| StartError::Spawn {
            program: spec.program.display().to_string(),
            source,
        })
}

/// Sends the hello to `child` (started by [`command`]) and reads the plugin's.
fn handshake(mut child: Child, spec: &ExternalSpec, sandbox: &str) -> Result<Started, StartError> {
    let program = spec.program.display().to_string();
    let handshake_error = |why: String| StartError::Handshake {
        program: program.clone(),
        why,
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        stop(child);
        return Err(handshake_error("its standard streams are missing".into()));
    };
    let name = spec
        .program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    log_stderr(stderr, name);
    let queue = start_writer(stdin);
    let hello = ToPlugin::Hello {
        protocol: protocol::PROTOCOL_VERSION,
        sandbox: sandbox.to_string(),
        config: spec.config.clone(),
    };
    let _ = queue.try_send(protocol::line(&hello));
    // The hello is read on a thread of its own so the wait is bounded even if the plugin
    // writes half a line and stops.
    let (tx, rx) = mpsc::sync_channel(1);
    let reader = std::thread::Builder::new()
        .name("msbvm-plugin-hello".into())
        .spawn(move || {
            crate::thread_started();
            let mut stdout = BufReader::new(stdout);
            let line = read_line(&mut stdout);
            let _ = tx.send((line, stdout));
        });
    if let Err(e) = reader {
        stop(child);
        return Err(handshake_error(format!("cannot start a thread: {e}")));
    }
    let (line, stdout) = match rx.recv_timeout(spec.handshake_timeout) {
        Ok(got) => got,
        Err(_) => {
            stop(child);
            return Err(handshake_error(format!(
                "no hello within {:?}",
                spec.handshake_timeout
            )));
        }
    };
    let checked = match line {
        Ok(Some(line)) => match protocol::parse(&line) {
            Ok(FromPlugin::Hello {
                protocol,
                name,
                hooks,
                limits,
            }) => protocol::hello_interests(protocol, &hooks)
                .map(|i| (name, i, limits))
                .map_err(|e| e.to_string()),
            Ok(_) => Err("its first line is not a hello".into()),
            Err(e) => Err(e.to_string()),
        },
        Ok(None) => Err("it exited or closed its output before its hello".into()),
        Err(e) => Err(e),
    };
    match checked {
        Ok((name, interests, limits)) => Ok(Started {
            child,
            stdout,
            queue,
            name,
            interests,
            limits,
        }),
        Err(why) => {
            let status = stop(child);
            Err(handshake_error(match status {
                Some(s) => format!("{why} ({s})"),
                None => why,
            }))
        }
    }
}

/// Reads one line of at most [`protocol::MAX_LINE`] bytes; `None` at end of stream.
fn read_line(r: &mut impl BufRead) -> Result<Option<Vec<u8>>, String> {
    let mut line = Vec::new();
    let n = r
        .take(protocol::MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("reading its output: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        Ok(Some(line))
    } else if line.len() >= protocol::MAX_LINE {
        Err(protocol::ProtocolError::TooLong.to_string())
    } else {
        Err("its output ended in the middle of a line".into())
    }
}

/// A thread that writes queued lines to the plugin's stdin, until the queue's senders are
/// all gone or the plugin stops reading for good (its stdin closed).
fn start_writer(mut stdin: std::process::ChildStdin) -> SyncSender<String> {
    let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
    let _ = std::thread::Builder::new()
        .name("msbvm-plugin-write".into())
        .spawn(move || {
            crate::thread_started();
            for line in rx {
                if stdin.write_all(line.as_bytes()).is_err() || stdin.flush().is_err() {
                    return;
                }
            }
        });
    tx
}

/// Logs the plugin's stderr, line by line (cut to [`STDERR_LINE`]).
fn log_stderr(stderr: std::process::ChildStderr, plugin: String) {
    let _ = std::thread::Builder::new()
        .name("msbvm-plugin-stderr".into())
        .spawn(move || {
            crate::thread_started();
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut r)
                    .take(STDERR_LINE as u64)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        tracing::info!(plugin = %plugin, "stderr: {}", text.trim_end());
                    }
                }
            }
        });
}

/// Kills and reaps `child`; how it ended, in words, if known. A process that just closed
/// its output is usually exiting: it gets 200 ms to do so, so its own status is reported.
fn stop(mut child: Child) -> Option<String> {
    for _ in 0..20 {
        match child.try_wait() {
            Ok(Some(status)) => return Some(format!("exited ({status})")),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    child.wait().ok().map(|s| format!("was stopped ({s})"))
}

/// Waits up to `grace` for `child` to exit by itself, then kills it.
fn stop_within(mut child: Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop(child);
}

#[cfg(test)]
mod tests;
