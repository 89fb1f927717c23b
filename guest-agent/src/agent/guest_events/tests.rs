//! The hub over real Unix sockets, with a fake host on a socket pair.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use msbvm_protocol::events::{Target, MAX_EVENT_LEN};

use super::test_support::{host_event, Setup};
use super::{Limits, NO_HOST};

#[test]
fn ten_thousand_events_arrive_in_order_with_their_metadata_and_no_answers() {
    let mut s = Setup::new(Limits::default());
    let mut c = s.connect();
    let mut writer = c.stream.try_clone().unwrap();
    let burst = std::thread::spawn(move || {
        let mut text = String::new();
        for i in 0..10_000 {
            text.push_str(&format!(
                "{{\"type\":\"n\",\"data\":{{\"i\":{i}}},\"id\":{i}}}\n"
            ));
        }
        writer.write_all(text.as_bytes()).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let me = std::process::id();
    let mut connection = None;
    for i in 0..10_000 {
        let e = s.next_event();
        assert_eq!(e.kind, "n");
        assert_eq!(e.data, format!("{{\"i\":{i}}}"));
        assert_eq!(e.id, Some(i.to_string()));
        assert_eq!(e.pid, me);
        assert_eq!(e.exec, None);
        assert!(e.time_ms > 1_600_000_000_000);
        assert_eq!(*connection.get_or_insert(e.connection), e.connection);
    }
    burst.join().unwrap();
    // Good events get no answer: the agent just ends the connection.
    let mut rest = String::new();
    c.reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
}

#[test]
fn a_malformed_line_gets_an_error_and_the_connection_goes_on() {
    let mut s = Setup::new(Limits::default());
    let mut c = s.connect();
    c.write("not json\n{\"type\":\"a\",\"oops\":1}\n\n{\"type\":\"ok\",\"data\":[1]}\n");
    let e = c.line();
    assert!(e["error"].as_str().unwrap().contains("JSON object"), "{e}");
    let e = c.line();
    assert!(e["error"].as_str().unwrap().contains("oops"), "{e}");
    let got = s.next_event();
    assert_eq!((got.kind.as_str(), got.data.as_str()), ("ok", "[1]"));
}

#[test]
fn an_oversized_line_is_refused_and_the_next_one_works() {
    let mut s = Setup::new(Limits::default());
    let mut c = s.connect();
    let mut writer = c.stream.try_clone().unwrap();
    let big = std::thread::spawn(move || {
        let huge = format!(
            "{{\"type\":\"big\",\"data\":\"{}\"}}\n",
            "x".repeat(1 << 20)
        );
        writer.write_all(huge.as_bytes()).unwrap();
        writer.write_all(b"{\"type\":\"small\"}\n").unwrap();
    });
    let e = c.line();
    let why = e["error"].as_str().unwrap();
    assert!(why.contains(&MAX_EVENT_LEN.to_string()), "{why}");
    assert_eq!(s.next_event().kind, "small");
    big.join().unwrap();
}

#[test]
fn host_events_reach_subscribers_one_connection_or_one_exec() {
    let mut s = Setup::new(Limits::default());
    let mut a = s.connect();
    let mut b = s.connect();
    a.write("{\"subscribe\":[\"job.*\"]}\n{\"type\":\"hi\"}\n");
    assert_eq!(a.line()["subscribed"][0], "job.*");
    let a_id = s.next_event().connection;
    b.write("{\"subscribe\":[\"other\",\"reply.*\"]}\n");
    assert_eq!(
        b.line()["subscribed"],
        serde_json::json!(["other", "reply.*"])
    );
    // Connected while this process is a registered exec.
    let me = std::process::id();
    s.execs.add(me);
    let mut c = s.connect();
    c.write("{\"type\":\"hi\"}\n");
    let from_c = s.next_event();
    s.execs.remove(me);
    assert_eq!(from_c.exec, Some(me));

    let hub = &s.hub;
    hub.dispatch(&host_event("job.start", "{\"n\":1}", Target::Subscribers));
    hub.dispatch(&host_event("other", "2", Target::Subscribers));
    hub.dispatch(&host_event("to-a", "3", Target::Connection(a_id)));
    hub.dispatch(&host_event("to-exec", "4", Target::Exec(me)));
    for id in [a_id, from_c.connection] {
        hub.dispatch(&host_event("end", "null", Target::Connection(id)));
    }
    let mut reply = host_event("end", "null", Target::Subscribers);
    reply.id = Some("h1".into());
    reply.reply_to = Some("g1".into());
    reply.kind = "reply.x".into();
    hub.dispatch(&reply);

    let kinds = |c: &mut super::test_support::Client, n: usize| {
        (0..n)
            .map(|_| c.line()["type"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&mut a, 3), ["job.start", "to-a", "end"]);
    assert_eq!(kinds(&mut c, 2), ["to-exec", "end"]);
    assert_eq!(b.line()["type"], "other");
    let last = b.line();
    assert_eq!(last["type"], "reply.x");
    assert_eq!(
        (last["id"].as_str(), last["reply_to"].as_str()),
        (Some("h1"), Some("g1"))
    );
    // Nothing else arrived anywhere (the next line would be a second "end").
    a.stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(a.reader.read(&mut byte).is_err());
}

#[test]
fn a_guest_that_never_reads_drops_and_counts_without_blocking_others() {
    let mut s = Setup::new(Limits {
        queue_len: 4,
        ..Limits::default()
    });
    let mut idle = s.connect();
    idle.write("{\"subscribe\":[\"*\"]}\n{\"type\":\"me\"}\n");
    assert!(idle.line()["subscribed"].is_array());
    let idle_id = s.next_event().connection;
    let mut good = s.connect();
    good.write("{\"subscribe\":[\"*\"]}\n");
    assert!(good.line()["subscribed"].is_array());

    let total = 3_000;
    let payload = format!("\"{}\"", "p".repeat(2000));
    let start = Instant::now();
    for i in 0..total {
        s.hub
            .dispatch(&host_event(&format!("e{i}"), &payload, Target::Subscribers));
        // The reading connection keeps up and misses nothing.
        assert_eq!(good.line()["type"], format!("e{i}"));
    }
    assert!(start.elapsed() < Duration::from_secs(30));
    let dropped = s.hub.dropped(idle_id).unwrap();
    assert!(dropped > 0);

    // Now it reads: what it got plus what it was told it missed is everything.
    let (mut received, mut counted, mut last) = (0u64, 0u64, None);
    while received + counted < total {
        let line = idle.line();
        let kind = line["type"].as_str().unwrap();
        if kind == "msbvm.dropped" {
            counted += line["data"]["count"].as_u64().unwrap();
        } else {
            // In order, with gaps only where drops were announced.
            let n: u64 = kind[1..].parse().unwrap();
            assert!(last.is_none_or(|l| n > l), "{n} after {last:?}");
            last = Some(n);
            received += 1;
        }
    }
    assert_eq!(counted, dropped);
    assert_eq!(received + counted, total);
}

#[test]
fn without_a_host_an_event_gets_an_error_line() {
    let s = Setup::without_host();
    let mut c = s.connect();
    c.write("{\"type\":\"a\"}\n");
    assert_eq!(c.line()["error"], NO_HOST);
}

#[test]
fn connections_over_the_cap_are_refused() {
    let s = Setup::new(Limits {
        max_connections: 2,
        ..Limits::default()
    });
    let mut a = s.connect();
    let _b = s.connect();
    a.write("{\"subscribe\":[]}\n");
    assert!(a.line()["subscribed"].is_array());
    let mut c = s.connect();
    let e = c.line();
    assert!(e["error"].as_str().unwrap().contains("too many"), "{e}");
    let mut rest = String::new();
    c.reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    // A closed connection frees its place.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.hub.connections() > 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut d = s.connect();
    d.write("{\"subscribe\":[\"x\"]}\n");
    assert_eq!(d.line()["subscribed"][0], "x");
}
