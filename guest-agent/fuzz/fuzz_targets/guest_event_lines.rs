//! The guest events socket's line reader and parser on arbitrary bytes from guest programs,
//! and the lines the agent writes back: nothing panics, a line over the limit is never held,
//! an accepted event's data is JSON, and every line written to a guest is one line of JSON.

#![no_main]

use std::io::{BufReader, Cursor};

use libfuzzer_sys::fuzz_target;
use msbvm_guest_agent::agent::guest_events::line::{
    error_line, host_event_line, parse, read_line, Incoming, Line,
};
use msbvm_protocol::events::{HostEvent, Target};

const MAX: usize = 512;

fn one_json_line(line: &str) {
    let body = line.strip_suffix('\n').unwrap_or(line);
    assert!(!body.contains('\n'), "a line written to the guest holds a newline: {line:?}");
    serde_json::from_str::<serde_json::Value>(body).expect("a line written to the guest is JSON");
}

fuzz_target!(|data: &[u8]| {
    // Small reader buffers so lines straddle refills.
    let mut reader = BufReader::with_capacity(7, Cursor::new(data));
    let mut buf = Vec::new();
    loop {
        match read_line(&mut reader, &mut buf, MAX).expect("reading a slice cannot fail") {
            Line::Eof => break,
            Line::TooLong => assert!(buf.len() <= MAX),
            Line::Text(text) => {
                assert!(text.len() <= MAX);
                match parse(&text) {
                    Ok(Incoming::Event { kind, data, id, reply_to }) => {
                        serde_json::from_str::<serde_json::Value>(&data)
                            .expect("accepted event data is JSON");
                        // What the host would send back with the same payload.
                        let event = HostEvent {
                            kind,
                            data,
                            id,
                            reply_to,
                            target: Target::Subscribers,
                        };
                        one_json_line(&host_event_line(&event));
                    }
                    Ok(Incoming::Subscribe(_)) => {}
                    Err(why) => one_json_line(&error_line(&why)),
                }
            }
        }
    }
    // A host event whose data is whatever the host (or a hostile agent link) sent.
    let text = String::from_utf8_lossy(data).into_owned();
    one_json_line(&host_event_line(&HostEvent {
        kind: "t".into(),
        data: text.clone(),
        id: Some(text.clone()),
        reply_to: None,
        target: Target::Subscribers,
    }));
});
