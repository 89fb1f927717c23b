//! The guest socket's wire format: one JSON object per line.
//!
//! From guest programs: `{"type": T, "data": D, "id": I, "reply_to": R}`
//! (everything but `type` optional; `id`/`reply_to` strings or numbers) or
//! `{"subscribe": [PATTERN, ...]}`. To them: host events as
//! `{"type": T, "data": D, "id": I, "reply_to": R}` (absent ids left out),
//! `{"subscribed": [...]}`, `{"error": "..."}` and
//! `{"type": "msbvm.dropped", "data": {"count": N}}`.
//!
//! Payloads pass through as raw JSON text (no re-encoding, so large numbers
//! keep their digits); the only change ever made is that line breaks between
//! tokens become spaces, because a line break would end the line.

use std::io::{self, BufRead};

use msbvm_protocol::events::{check_type, HostEvent, MAX_ID_LEN, RESERVED_PREFIX};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// The most patterns one connection may subscribe to.
pub const MAX_PATTERNS: usize = 64;

/// One line read from a guest connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (newline removed; a last line without one counts too).
    Text(Vec<u8>),
    /// A line over the limit; it was skipped up to its newline.
    TooLong,
    /// The connection ended.
    Eof,
}

/// Reads the next line of at most `max` bytes into `buf`. A longer line is
/// discarded as it streams past (never held whole) and reported as
/// [`Line::TooLong`].
pub fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Text(std::mem::take(buf))
            });
        }
        let (take, end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&available[..take]);
            }
        }
        r.consume(if end { take + 1 } else { take });
        if end {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(std::mem::take(buf))
            });
        }
    }
}

/// What a guest line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// An event for the host.
    Event {
        /// Its type.
        kind: String,
        /// The payload as JSON text (`null` when absent).
        data: String,
        /// The sender's id.
        id: Option<String>,
        /// The host event it answers.
        reply_to: Option<String>,
    },
    /// The connection's new subscription patterns.
    Subscribe(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    reply_to: Option<Value>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
}

/// Parses one guest line; the error is the text of the error line.
pub fn parse(line: &[u8]) -> Result<Incoming, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the line is not UTF-8".to_string())?;
    if !text.trim_start().starts_with('{') {
        return Err("each line must be one JSON object".into());
    }
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|e| format!("malformed event: {e}"))?;
    match (wire.kind, wire.subscribe) {
        (Some(_), Some(_)) => Err(
            "a line is either an event (\"type\") or a subscription (\"subscribe\"), not both"
                .into(),
        ),
        (None, None) => Err("a line needs \"type\" (an event) or \"subscribe\"".into()),
        (None, Some(patterns)) => {
            if wire.data.is_some() || wire.id.is_some() || wire.reply_to.is_some() {
                return Err("a subscription takes no \"data\", \"id\" or \"reply_to\"".into());
            }
            check_patterns(&patterns)?;
            Ok(Incoming::Subscribe(patterns))
        }
        (Some(kind), None) => {
            check_type(&kind)?;
            if kind.starts_with(RESERVED_PREFIX) {
                return Err(format!(
                    "event types starting with {RESERVED_PREFIX:?} are reserved for msbvm"
                ));
            }
            let data = wire
                .data
                .map_or_else(|| "null".to_string(), |d| d.get().to_string());
            // Well-formed is not enough: a number no JSON reader can hold (`1e999999`)
            // would reach the host as something it cannot read back.
            serde_json::from_str::<Value>(&data)
                .map_err(|e| format!("\"data\" cannot be read back as JSON: {e}"))?;
            Ok(Incoming::Event {
                kind,
                data,
                id: id_text("id", wire.id)?,
                reply_to: id_text("reply_to", wire.reply_to)?,
            })
        }
    }
}

fn check_patterns(patterns: &[String]) -> Result<(), String> {
    if patterns.len() > MAX_PATTERNS {
        return Err(format!(
            "{} patterns; a connection may subscribe to at most {MAX_PATTERNS}",
            patterns.len()
        ));
    }
    for p in patterns {
        check_type(p).map_err(|e| format!("pattern {p:?}: {e}"))?;
    }
    Ok(())
}

/// An `id` or `reply_to` as text: strings as they are, numbers written out.
fn id_text(field: &str, value: Option<Value>) -> Result<Option<String>, String> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(format!("\"{field}\" must be a string or a number")),
    };
    if text.len() > MAX_ID_LEN {
        return Err(format!(
            "\"{field}\" is {} bytes long; the limit is {MAX_ID_LEN}",
            text.len()
        ));
    }
    Ok(Some(text))
}

/// An event line as the socket carries it, either way (absent ids left out).
#[derive(Serialize)]
pub struct OutEvent<'a> {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Its payload, as it came.
    pub data: &'a RawValue,
    /// Its id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    /// The id it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<&'a str>,
}

/// `data` as one line of raw JSON, or `None` if it is not JSON a reader can
/// hold.
pub fn raw_json(data: &str) -> Option<Box<RawValue>> {
    // In valid JSON a line break can only stand between tokens (inside a
    // string it must be escaped), where a space means the same.
    let data = if data.contains(['\n', '\r']) {
        data.replace(['\n', '\r'], " ")
    } else {
        data.to_string()
    };
    // `RawValue` checks the grammar only: it lets through a number whose
    // exponent no reader can hold (`2e99999999999`), which the guest program
    // could then not read back.
    serde_json::from_str::<Value>(&data).ok()?;
    RawValue::from_string(data).ok()
}

/// The line (newline included) a host event becomes; a payload that is not
/// JSON (a host bug) is sent as `null`.
pub fn host_event_line(event: &HostEvent) -> String {
    let data = raw_json(&event.data).unwrap_or_else(|| {
        agent_log!(
            "host event {:?} has a payload that is not JSON; sending null",
            event.kind
        );
        RawValue::from_string("null".into()).expect("null is JSON")
    });
    let out = OutEvent {
        kind: &event.kind,
        data: &data,
        id: event.id.as_deref(),
        reply_to: event.reply_to.as_deref(),
    };
    line_of(&out)
}

/// `{"error": message}`.
pub fn error_line(message: &str) -> String {
    line_of(&serde_json::json!({ "error": message }))
}

/// `{"subscribed": patterns}`.
pub fn subscribed_line(patterns: &[String]) -> String {
    line_of(&serde_json::json!({ "subscribed": patterns }))
}

/// `{"type": "msbvm.dropped", "data": {"count": count}}`.
pub fn dropped_line(count: u64) -> String {
    format!("{{\"type\":\"msbvm.dropped\",\"data\":{{\"count\":{count}}}}}\n")
}

fn line_of(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string(value).expect("plain data serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use msbvm_protocol::events::Target;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut r = io::BufReader::with_capacity(4, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut r, &mut buf, max).unwrap();
            if line == Line::Eof {
                return out;
            }
            out.push(line);
        }
    }

    #[test]
    fn long_lines_are_skipped_and_the_next_one_read() {
        let got = lines(b"abc\n0123456789\nxy\nlast", 5);
        assert_eq!(
            got,
            vec![
                Line::Text(b"abc".to_vec()),
                Line::TooLong,
                Line::Text(b"xy".to_vec()),
                Line::Text(b"last".to_vec()),
            ]
        );
        assert_eq!(lines(b"12345\n", 5), vec![Line::Text(b"12345".to_vec())]);
        assert_eq!(lines(b"123456", 5), vec![Line::TooLong]);
    }

    #[test]
    fn events_parse_with_ids_as_text() {
        let got = parse(br#"{"type":"p","data":{"n": 12345678901234567890},"id":7}"#).unwrap();
        assert_eq!(
            got,
            Incoming::Event {
                kind: "p".into(),
                data: r#"{"n": 12345678901234567890}"#.into(),
                id: Some("7".into()),
                reply_to: None,
            }
        );
        let got = parse(br#"{"type":"p","reply_to":"x"}"#).unwrap();
        assert!(
            matches!(got, Incoming::Event { data, reply_to: Some(r), .. } if data == "null" && r == "x")
        );
        assert_eq!(
            parse(br#"{"subscribe":["a.*","*"]}"#).unwrap(),
            Incoming::Subscribe(vec!["a.*".into(), "*".into()])
        );
    }

    #[test]
    fn bad_lines_say_why() {
        let err = |l: &[u8]| parse(l).unwrap_err();
        assert!(err(b"{\"type\":").contains("malformed"));
        assert!(err(br#"{"type":"t","data":1e999999}"#).contains("cannot be read back"));
        assert!(err(b"[1]").contains("JSON object"));
        assert!(err(br#"{"type":"msbvm.x"}"#).contains("reserved"));
        assert!(err(br#"{"type":"a","bogus":1}"#).contains("bogus"));
        assert!(err(br#"{"type":"a","id":[1]}"#).contains("\"id\""));
        assert!(err(br#"{"type":"a","subscribe":[]}"#).contains("not both"));
        assert!(err(br#"{"data":1}"#).contains("needs"));
        assert!(err(br#"{"type":""}"#).contains("empty"));
        let long = format!(r#"{{"type":"a","id":"{}"}}"#, "x".repeat(MAX_ID_LEN + 1));
        assert!(err(long.as_bytes()).contains("limit"));
    }

    #[test]
    fn a_host_payload_no_reader_can_hold_is_sent_as_null() {
        // Found by the guest_event_lines fuzz target: the grammar allows any
        // exponent, a reader does not.
        let event = HostEvent {
            kind: "t".into(),
            data: "\t222222e2222222222222222222000000000004975542244881494471".into(),
            id: None,
            reply_to: None,
            target: Target::Subscribers,
        };
        assert_eq!(host_event_line(&event), "{\"type\":\"t\",\"data\":null}\n");
        assert!(raw_json(" 1e5 ").is_some());
    }

    #[test]
    fn host_events_become_one_line() {
        let e = HostEvent {
            kind: "reply".into(),
            data: "{\n \"a\": [1,\r\n2]\n}".into(),
            id: None,
            reply_to: Some("r1".into()),
            target: Target::Subscribers,
        };
        let line = host_event_line(&e);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "reply");
        assert_eq!(v["data"]["a"][1], 2);
        assert_eq!(v["reply_to"], "r1");
        assert!(v.get("id").is_none());
        let v: Value = serde_json::from_str(&dropped_line(3)).unwrap();
        assert_eq!(v["data"]["count"], 3);
    }
}
