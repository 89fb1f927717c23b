//! The in-guest `msbvm` command: the agent's binary run as
//! `/run/msbvm/bin/msbvm` (on every exec's `PATH`).
//!
//! It speaks to the agent's events socket (`$MSBVM_EVENTS_SOCKET`, else
//! [`GUEST_SOCKET`]) so shells need no Unix-socket client:
//! - `msbvm emit TYPE [JSON]` sends one event (exit 0; an error line from
//!   the agent within [`EMIT_WAIT`] is printed and exits 1);
//! - `msbvm events [-f] [-n N] [--type T]...` prints host events as JSON lines;
//! - `msbvm request TYPE [JSON] [--timeout SECS]` sends an event with a fresh
//!   id and prints the host event that replies to it (exit 124 on timeout);
//! - `msbvm reply ID TYPE [JSON]` answers the host event whose `id` is ID (a
//!   host's request waits for it), as `emit` sends one.
//!
//! Outside a sandbox (no socket) every verb fails at once with "not running
//! inside an msbvm sandbox". It never acts as PID 1.

mod client;
pub mod spawn;

use std::io::Write;
use std::net::Shutdown;
use std::path::Path;
use std::time::{Duration, Instant};

use msbvm_protocol::events::{
    check_type, GUEST_SOCKET, MAX_EVENT_LEN, MAX_ID_LEN, RESERVED_PREFIX, SOCKET_ENV,
};
use serde_json::value::RawValue;
use serde_json::Value;

use self::client::{connect, send_line, Lines};
use crate::agent::guest_events::line::OutEvent;

/// How long `emit` waits for an error line after sending.
pub const EMIT_WAIT: Duration = Duration::from_secs(2);
/// `request`'s default timeout, in seconds.
pub const DEFAULT_REQUEST_TIMEOUT: f64 = 30.0;
/// How long the agent gets to confirm a subscription.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);
/// The exit code of a request that got no reply in time (as `timeout(1)`).
pub const TIMEOUT_EXIT: i32 = 124;

const USAGE: &str = "\
usage: msbvm COMMAND [ARGS]

Inside an msbvm sandbox, talk to the host through the events socket
($MSBVM_EVENTS_SOCKET, default /run/msbvm/events.sock):

  msbvm emit TYPE [JSON]
      Send an event to the host (JSON defaults to null).
  msbvm events [-f] [-n N] [--type T]...
      Print host events as JSON lines: the first N (default 1), or all with
      -f until the sandbox ends. --type (repeatable) takes a type, a
      `prefix.*` pattern or `*` (the default).
  msbvm request TYPE [JSON] [--timeout SECS]
      Send an event with a fresh id and print the host event that replies
      to it (default timeout 30 s; exit 124 when it expires).
  msbvm reply ID TYPE [JSON]
      Answer the host event whose \"id\" is ID (what `msbvm events` printed):
      the host's request waiting for it gets this event.

";

/// Why the command failed: its exit code and message.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: i32,
    /// What to print after `msbvm: `.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn usage(message: impl Into<String>) -> Self {
        Self::new(2, format!("{}; see `msbvm --help`", message.into()))
    }
}

/// Runs the command with the process's arguments and environment; returns
/// the exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let socket = std::env::var_os(SOCKET_ENV)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| GUEST_SOCKET.into());
    let stdout = std::io::stdout();
    run(&args, Path::new(&socket), &mut stdout.lock())
}

/// Runs `args` against the socket at `socket`, printing events to `out` and
/// failures to stderr; returns the exit code.
pub fn run(args: &[String], socket: &Path, out: &mut dyn Write) -> i32 {
    match dispatch(args, socket, out) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("msbvm: {}", f.message);
            f.code
        }
    }
}

/// Runs `args`; the failure is what [`run`] prints.
pub fn dispatch(args: &[String], socket: &Path, out: &mut dyn Write) -> Result<i32, Failure> {
    let Some((verb, rest)) = args.split_first() else {
        eprint!("{USAGE}{}", spawn::USAGE);
        return Ok(2);
    };
    if rest.iter().any(|a| a == "-h" || a == "--help") || is_help(verb) {
        let _ = out.write_all(USAGE.as_bytes());
        let _ = out.write_all(spawn::USAGE.as_bytes());
        return Ok(0);
    }
    // `--of NAME` / `--to NAME`: a child's events rather than this sandbox's own.
    let child_verb = match verb.as_str() {
        "events" if rest.iter().any(|a| a == "--of") => Some("child-events"),
        "emit" if rest.first().is_some_and(|a| a == "--to") => Some("child-emit"),
        _ => None,
    };
    match child_verb.unwrap_or(verb.as_str()) {
        "emit" => emit(rest, socket),
        "events" => events(rest, socket, out),
        "request" => request(rest, socket, out),
        "reply" => reply(rest, socket),
        verb if spawn::VERBS.contains(&verb) || child_verb.is_some() => {
            let plan = spawn::parse(verb, rest)?;
            if !socket.exists() {
                return Err(Failure::new(
                    1,
                    format!(
                        "not running inside an msbvm sandbox (no events socket at {})",
                        socket.display()
                    ),
                ));
            }
            let mut service = spawn::Service::connect()?;
            spawn::execute(plan, &mut service, out)
        }
        other => Err(Failure::usage(format!("unknown command {other:?}"))),
    }
}

fn is_help(verb: &str) -> bool {
    matches!(verb, "-h" | "--help" | "help")
}

/// The line for an event, checked here so mistakes are explained at once.
fn event_line(
    kind: &str,
    data: Option<&str>,
    id: Option<&str>,
    reply_to: Option<&str>,
) -> Result<String, Failure> {
    check_type(kind).map_err(|e| Failure::usage(format!("bad event type {kind:?}: {e}")))?;
    if kind.starts_with(RESERVED_PREFIX) {
        return Err(Failure::usage(format!(
            "event types starting with {RESERVED_PREFIX:?} are reserved for msbvm"
        )));
    }
    // A line break between JSON tokens would end the line; a space means the same.
    let data = data.unwrap_or("null").replace(['\n', '\r'], " ");
    // The grammar check alone would pass a number no reader can hold (`1e999999`),
    // which the agent refuses: say so here.
    serde_json::from_str::<Value>(&data)
        .map_err(|e| Failure::usage(format!("the event data is not JSON: {e}")))?;
    let data = RawValue::from_string(data)
        .map_err(|e| Failure::usage(format!("the event data is not JSON: {e}")))?;
    let line = serde_json::to_string(&OutEvent {
        kind,
        data: &data,
        id,
        reply_to,
    })
    .map_err(|e| Failure::new(1, e.to_string()))?;
    if line.len() > MAX_EVENT_LEN {
        return Err(Failure::new(
            1,
            format!(
                "the event is {} bytes as JSON; the limit is {MAX_EVENT_LEN}",
                line.len()
            ),
        ));
    }
    Ok(line)
}

/// The message of an `{"error": ...}` line.
fn error_of(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    v.get("error")?.as_str().map(str::to_string)
}

/// Splits `args` into positionals and `--flag VALUE` / `--flag=VALUE` pairs
/// (for the flags in `valued`) and bare flags (in `bare`).
struct Parsed {
    positional: Vec<String>,
    values: Vec<(String, String)>,
    flags: Vec<String>,
}

fn parse_args(args: &[String], valued: &[&str], bare: &[&str]) -> Result<Parsed, Failure> {
    let mut parsed = Parsed {
        positional: Vec::new(),
        values: Vec::new(),
        flags: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some((name, value)) = a.split_once('=').filter(|(n, _)| valued.contains(n)) {
            parsed.values.push((name.to_string(), value.to_string()));
        } else if valued.contains(&a.as_str()) {
            let value = it
                .next()
                .ok_or_else(|| Failure::usage(format!("{a} needs a value")))?;
            parsed.values.push((a.clone(), value.clone()));
        } else if bare.contains(&a.as_str()) {
            parsed.flags.push(a.clone());
        } else if a.starts_with("--")
            || (a.starts_with('-') && a[1..].starts_with(|c: char| c.is_ascii_alphabetic()))
        {
            // Not `-1`: a negative number is JSON data.
            return Err(Failure::usage(format!("unknown option {a}")));
        } else {
            parsed.positional.push(a.clone());
        }
    }
    Ok(parsed)
}

/// TYPE and optional JSON from the positionals.
fn type_and_data(positional: &[String], verb: &str) -> Result<(String, Option<String>), Failure> {
    match positional {
        [kind] => Ok((kind.clone(), None)),
        [kind, data] => Ok((kind.clone(), Some(data.clone()))),
        [] => Err(Failure::usage(format!("msbvm {verb} needs an event TYPE"))),
        _ => Err(Failure::usage(format!(
            "msbvm {verb} takes TYPE and one JSON argument (quote the JSON)"
        ))),
    }
}

fn emit(args: &[String], socket: &Path) -> Result<i32, Failure> {
    let parsed = parse_args(args, &[], &[])?;
    let (kind, data) = type_and_data(&parsed.positional, "emit")?;
    send(&event_line(&kind, data.as_deref(), None, None)?, socket)
}

/// `msbvm reply ID TYPE [JSON]`: an event whose `reply_to` is ID.
fn reply(args: &[String], socket: &Path) -> Result<i32, Failure> {
    let parsed = parse_args(args, &[], &[])?;
    let Some((id, rest)) = parsed.positional.split_first() else {
        return Err(Failure::usage(
            "msbvm reply needs the ID of the event it answers, then a TYPE",
        ));
    };
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Failure::usage(format!(
            "an event id is 1 to {MAX_ID_LEN} bytes, not {}",
            id.len()
        )));
    }
    let (kind, data) = type_and_data(rest, "reply")?;
    send(&event_line(&kind, data.as_deref(), None, Some(id))?, socket)
}

/// Sends one event line and reports the agent's error line, if one comes.
fn send(line: &str, socket: &Path) -> Result<i32, Failure> {
    let mut stream = connect(socket)?;
    send_line(&mut stream, line)?;
    // The end of our side lets the agent end the connection once it has
    // taken the event: an error line, if any, comes before that EOF.
    let _ = stream.shutdown(Shutdown::Write);
    let mut lines = Lines::new(stream);
    let deadline = Instant::now() + EMIT_WAIT;
    while let Ok(Some(l)) = lines.next(Some(deadline)) {
        if let Some(e) = error_of(&l) {
            return Err(Failure::new(1, e));
        }
    }
    Ok(0)
}

/// Subscribes `stream` to `patterns` and waits for the agent's confirmation.
fn subscribe(
    socket: &Path,
    patterns: &[String],
    deadline: Instant,
) -> Result<(std::os::unix::net::UnixStream, Lines), Failure> {
    let mut stream = connect(socket)?;
    let line = serde_json::json!({ "subscribe": patterns }).to_string();
    send_line(&mut stream, &line)?;
    let reader = stream
        .try_clone()
        .map_err(|e| Failure::new(1, format!("events socket: {e}")))?;
    let mut lines = Lines::new(reader);
    match lines.next(Some(deadline)) {
        Ok(Some(l)) => {
            if let Some(e) = error_of(&l) {
                return Err(Failure::new(1, e));
            }
            Ok((stream, lines))
        }
        Ok(None) => Err(Failure::new(1, "the agent closed the connection")),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(Failure::new(
            1,
            "the agent did not confirm the subscription",
        )),
        Err(e) => Err(Failure::new(1, format!("events socket: {e}"))),
    }
}

/// Prints `line` to `out`; false if `out` is gone (a closed pipe: stop quietly).
fn print(out: &mut dyn Write, line: &str) -> bool {
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

fn events(args: &[String], socket: &Path, out: &mut dyn Write) -> Result<i32, Failure> {
    let parsed = parse_args(
        args,
        &["-n", "--count", "--type", "-t"],
        &["-f", "--follow", "--json"],
    )?;
    if let Some(extra) = parsed.positional.first() {
        return Err(Failure::usage(format!("unexpected argument {extra:?}")));
    }
    let follow = parsed.flags.iter().any(|f| f == "-f" || f == "--follow");
    let mut count = 1u64;
    let mut patterns = Vec::new();
    for (name, value) in parsed.values {
        match name.as_str() {
            "-n" | "--count" => {
                count = value
                    .parse()
                    .map_err(|_| Failure::usage(format!("{name} takes a number, not {value:?}")))?
            }
            _ => patterns.push(value),
        }
    }
    if patterns.is_empty() {
        patterns.push("*".to_string());
    }
    let (_stream, mut lines) = subscribe(socket, &patterns, Instant::now() + SUBSCRIBE_WAIT)?;
    let limit = (!follow).then_some(count);
    let mut seen = 0u64;
    if limit == Some(0) {
        return Ok(0);
    }
    loop {
        match lines.next(None) {
            Ok(Some(l)) => {
                if let Some(e) = error_of(&l) {
                    eprintln!("msbvm: {e}");
                    continue;
                }
                if !print(out, &l) {
                    return Ok(0);
                }
                // Notices such as msbvm.dropped are shown but not counted.
                if !is_system(&l) {
                    seen += 1;
                    if limit.is_some_and(|n| seen >= n) {
                        return Ok(0);
                    }
                }
            }
            Ok(None) if follow => return Ok(0),
            Ok(None) => return Err(Failure::new(1, "the agent closed the connection")),
            Err(e) => return Err(Failure::new(1, format!("events socket: {e}"))),
        }
    }
}

fn is_system(line: &str) -> bool {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| {
            v.get("type")?
                .as_str()
                .map(|t| t.starts_with(RESERVED_PREFIX))
        })
        .unwrap_or(false)
}

fn request(args: &[String], socket: &Path, out: &mut dyn Write) -> Result<i32, Failure> {
    let parsed = parse_args(args, &["--timeout"], &[])?;
    let (kind, data) = type_and_data(&parsed.positional, "request")?;
    let mut secs = DEFAULT_REQUEST_TIMEOUT;
    for (name, value) in &parsed.values {
        secs = value
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| Failure::usage(format!("{name} takes seconds, not {value:?}")))?;
    }
    let id = random_id();
    let line = event_line(&kind, data.as_deref(), Some(&id), None)?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs.min(1e9));
    let timed_out = || {
        Failure::new(
            TIMEOUT_EXIT,
            format!("no reply to {kind:?} (id {id}) within {secs} s"),
        )
    };
    // Subscribed to everything first, so a reply broadcast to subscribers
    // reaches us as well as one sent to this connection.
    let (mut stream, mut lines) = match subscribe(socket, &["*".to_string()], deadline) {
        Err(f) if f.message.contains("did not confirm") => return Err(timed_out()),
        other => other?,
    };
    send_line(&mut stream, &line)?;
    loop {
        match lines.next(Some(deadline)) {
            Ok(Some(l)) => {
                if let Some(e) = error_of(&l) {
                    return Err(Failure::new(1, e));
                }
                let reply_to = serde_json::from_str::<Value>(&l)
                    .ok()
                    .and_then(|v| v.get("reply_to")?.as_str().map(str::to_string));
                if reply_to.as_deref() == Some(id.as_str()) {
                    print(out, &l);
                    return Ok(0);
                }
            }
            Ok(None) => {
                return Err(Failure::new(
                    1,
                    "the agent closed the connection before a reply came",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(timed_out()),
            Err(e) => return Err(Failure::new(1, format!("events socket: {e}"))),
        }
    }
}

/// 128 random bits as hex (from the kernel; the clock and pid if that fails).
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    if !ok {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
