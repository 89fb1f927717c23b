//! The guest CLI against a real hub on a temporary socket.

use std::path::Path;
use std::time::{Duration, Instant};

use msbvm_protocol::events::{HostEvent, Target};

use super::{dispatch, Failure, TIMEOUT_EXIT};
use crate::agent::guest_events::test_support::{host_event, Setup};
use crate::agent::guest_events::Limits;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn fail(a: &[&str], socket: &Path) -> Failure {
    dispatch(&args(a), socket, &mut Vec::new()).unwrap_err()
}

#[test]
fn outside_a_sandbox_every_verb_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("events.sock");
    let start = Instant::now();
    for a in [
        &["emit", "t"][..],
        &["events", "-f"],
        &["request", "t", "{}"],
        &["create", "w1"],
        &["ls"],
        &["rm", "w1"],
    ] {
        let f = fail(a, &missing);
        assert_eq!(f.code, 1);
        assert_eq!(
            f.message,
            format!(
                "not running inside an msbvm sandbox (no events socket at {})",
                missing.display()
            )
        );
    }
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn other_verbs_and_bad_input_are_explained() {
    let nowhere = Path::new("/nonexistent/events.sock");
    let f = fail(&["frobnicate", "x"], nowhere);
    assert_eq!(f.code, 2);
    assert!(f.message.contains("unknown command"), "{}", f.message);
    assert_eq!(fail(&["create"], nowhere).code, 2);
    assert_eq!(fail(&["emit", "t", "{bad"], nowhere).code, 2);
    let f = fail(&["emit", "t", "2e99999999999"], nowhere);
    assert_eq!(f.code, 2);
    assert!(f.message.contains("not JSON"), "{}", f.message);
    assert_eq!(fail(&["emit", "msbvm.x"], nowhere).code, 2);
    assert_eq!(fail(&["emit"], nowhere).code, 2);
    assert_eq!(fail(&["events", "--bogus"], nowhere).code, 2);
    let mut out = Vec::new();
    assert_eq!(dispatch(&args(&["--help"]), nowhere, &mut out).unwrap(), 0);
    assert!(String::from_utf8(out).unwrap().contains("msbvm emit TYPE"));
}

#[test]
fn emit_sends_and_reports_the_agents_error() {
    let mut s = Setup::new(Limits::default());
    let code = dispatch(
        &args(&["emit", "progress", "{\n\"pct\": -1}"]),
        &s.path,
        &mut Vec::new(),
    );
    assert_eq!(code.unwrap(), 0);
    let e = s.next_event();
    assert_eq!(e.kind, "progress");
    assert_eq!(e.data, "{ \"pct\": -1}");
    assert_eq!(e.pid, std::process::id());

    let s = Setup::without_host();
    let f = fail(&["emit", "x", "1"], &s.path);
    assert_eq!(
        (f.code, f.message.as_str()),
        (1, super::super::agent::guest_events::NO_HOST)
    );
}

#[test]
fn reply_answers_a_host_event_by_its_id() {
    let mut s = Setup::new(Limits::default());
    let code = dispatch(
        &args(&["reply", "h-42", "job.done", "{\"ok\":true}"]),
        &s.path,
        &mut Vec::new(),
    );
    assert_eq!(code.unwrap(), 0);
    let e = s.next_event();
    assert_eq!(e.kind, "job.done");
    assert_eq!(e.reply_to.as_deref(), Some("h-42"));
    assert_eq!(e.id, None);
    assert_eq!(e.data, "{\"ok\":true}");

    let nowhere = Path::new("/nonexistent/events.sock");
    for bad in [
        &["reply"][..],
        &["reply", "h-42"],
        &["reply", "", "t"],
        &["reply", "h-42", "msbvm.x"],
        &["reply", "h-42", "t", "{bad"],
    ] {
        assert_eq!(fail(bad, nowhere).code, 2, "{bad:?}");
    }
    let long = "x".repeat(msbvm_protocol::events::MAX_ID_LEN + 1);
    let f = fail(&["reply", &long, "t"], nowhere);
    assert!(f.message.contains("an event id is"), "{}", f.message);
}

/// Dispatches `event` every few milliseconds until `done` is finished (the
/// CLI subscribes on its own schedule).
fn feed_until<T>(s: &Setup, event: &HostEvent, done: &std::thread::JoinHandle<T>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done.is_finished() {
        assert!(Instant::now() < deadline, "the command did not finish");
        s.hub.dispatch(event);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn events_prints_host_events_as_lines() {
    let s = Setup::new(Limits::default());
    let path = s.path.clone();
    let run = std::thread::spawn(move || {
        let mut out = Vec::new();
        let code = dispatch(
            &args(&["events", "-n", "2", "--type", "tick"]),
            &path,
            &mut out,
        );
        (code.map_err(|f| f.message), String::from_utf8(out).unwrap())
    });
    feed_until(
        &s,
        &host_event("tick", "{\"a\": 1}", Target::Subscribers),
        &run,
    );
    let (code, out) = run.join().unwrap();
    assert_eq!(code, Ok(0));
    assert_eq!(out, "{\"type\":\"tick\",\"data\":{\"a\": 1}}\n".repeat(2));
}

#[test]
fn request_prints_the_reply_or_times_out() {
    let mut s = Setup::new(Limits::default());
    let path = s.path.clone();
    let run = std::thread::spawn(move || {
        let mut out = Vec::new();
        let code = dispatch(&args(&["request", "ask", "[1]"]), &path, &mut out);
        (code.map_err(|f| f.message), String::from_utf8(out).unwrap())
    });
    let asked = s.next_event();
    assert_eq!((asked.kind.as_str(), asked.data.as_str()), ("ask", "[1]"));
    let id = asked.id.clone().unwrap();
    assert_eq!(id.len(), 32);
    // Someone else's reply first: ignored.
    let mut other = host_event("answer", "0", Target::Connection(asked.connection));
    other.reply_to = Some("not-yours".into());
    s.hub.dispatch(&other);
    let mut reply = host_event("answer", "42", Target::Connection(asked.connection));
    reply.reply_to = Some(id.clone());
    s.hub.dispatch(&reply);
    let (code, out) = run.join().unwrap();
    assert_eq!(code, Ok(0));
    assert_eq!(
        out,
        format!("{{\"type\":\"answer\",\"data\":42,\"reply_to\":\"{id}\"}}\n")
    );

    let start = Instant::now();
    let f = fail(&["request", "ask", "--timeout", "0.3"], &s.path);
    assert_eq!(f.code, TIMEOUT_EXIT, "{}", f.message);
    assert!(f.message.contains("no reply"), "{}", f.message);
    assert!(start.elapsed() < Duration::from_secs(5));
}
