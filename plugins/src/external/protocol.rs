//! The wire format of out-of-process plugins: one JSON object per line on the plugin's stdin
//! (from the sandbox) and stdout (from the plugin). `PROTOCOL.md` is the specification; this
//! module is its reading and writing, and treats every line from the plugin as hostile.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hook::{Hook, Interests};
use crate::plugin::Decision;

/// The protocol version this side speaks; the plugin's hello must name the same.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest line either side may write, newline included. A plugin that writes a longer
/// one has broken the protocol.
pub const MAX_LINE: usize = 2 << 20;

/// A line from the sandbox to the plugin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToPlugin {
    /// The first line: who is asking, and the plugin's configuration.
    Hello {
        /// [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The sandbox's name.
        sandbox: String,
        /// The text after `:` in `--plugin PATH:CONFIG`, if any.
        config: Option<String>,
    },
    /// A decision hook: the plugin must answer with a `decision` line of the same `id`.
    Decide {
        /// Unique per request on this connection.
        id: u64,
        /// The hook.
        hook: Hook,
        /// What the hook shows (see `PROTOCOL.md`, per hook).
        data: Value,
    },
    /// A notification hook: no answer.
    Notify {
        /// The hook.
        hook: Hook,
        /// What the hook shows.
        data: Value,
    },
    /// The sandbox is going away; the plugin should exit.
    Shutdown,
}

/// A line from the plugin, as read off the wire.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromPlugin {
    /// The plugin's answer to the sandbox's hello.
    Hello {
        /// The protocol version it speaks.
        protocol: u32,
        /// Its name, for logs and events.
        #[serde(default)]
        name: Option<String>,
        /// The wire names of the hooks it wants.
        #[serde(default)]
        hooks: Vec<String>,
        /// Limits it asks the sandbox to enforce.
        #[serde(default)]
        limits: crate::Limits,
    },
    /// The answer to the `decide` line with this `id`.
    Decision {
        /// The request's id.
        id: u64,
        /// `continue` or `deny`.
        verdict: String,
        /// Why, for a denial.
        #[serde(default)]
        reason: Option<String>,
        /// The changed value, for hooks that take one (`exec.before`, `net.http`).
        #[serde(default)]
        data: Option<Value>,
    },
    /// An event the plugin emits: it reaches the sandbox's host-side event subscribers.
    Event {
        /// Its topic.
        topic: String,
        /// Its payload.
        #[serde(default)]
        data: Value,
    },
    /// A line for the sandbox's log.
    Log {
        /// `error`, `warn`, `info` (the default) or `debug`.
        #[serde(default)]
        level: Option<String>,
        /// The text.
        message: String,
    },
}

/// A plugin's line that breaks the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not a JSON object of a known `type`.
    #[error("not a protocol line: {0}")]
    Malformed(String),
    /// The hello names another protocol version.
    #[error("the plugin speaks protocol {theirs}, the sandbox {PROTOCOL_VERSION}")]
    Version {
        /// What the plugin named.
        theirs: u32,
    },
    /// The hello names a hook that does not exist.
    #[error("the plugin asks for an unknown hook {0:?}")]
    UnknownHook(String),
    /// A decision's verdict is neither `continue` nor `deny`.
    #[error("unknown verdict {0:?} (continue or deny)")]
    Verdict(String),
    /// A line over [`MAX_LINE`].
    #[error("a line longer than {MAX_LINE} bytes")]
    TooLong,
}

/// Reads one line from the plugin (without its newline).
pub fn parse(line: &[u8]) -> Result<FromPlugin, ProtocolError> {
    if line.len() >= MAX_LINE {
        return Err(ProtocolError::TooLong);
    }
    serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// The hooks a hello asks for, checked.
pub fn hello_interests(protocol: u32, hooks: &[String]) -> Result<Interests, ProtocolError> {
    if protocol != PROTOCOL_VERSION {
        return Err(ProtocolError::Version { theirs: protocol });
    }
    hooks
        .iter()
        .map(|name| {
            Hook::ALL
                .into_iter()
                .find(|h| h.name() == name)
                .ok_or_else(|| ProtocolError::UnknownHook(truncate(name, 64)))
        })
        .collect()
}

/// A decision line's verdict, checked.
pub fn verdict(verdict: &str, reason: Option<String>) -> Result<Decision, ProtocolError> {
    match verdict {
        "continue" => Ok(Decision::Continue),
        "deny" => Ok(Decision::Deny {
            reason: truncate(
                reason.as_deref().unwrap_or("denied by a plugin"),
                MAX_REASON,
            ),
        }),
        other => Err(ProtocolError::Verdict(truncate(other, 64))),
    }
}

/// The longest denial reason passed on (the rest is cut).
pub const MAX_REASON: usize = 1024;

/// `s`, cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// `message` as one line, newline included.
pub fn line(message: &ToPlugin) -> String {
    // Serialising plain data to a string cannot fail; JSON escapes every newline inside.
    let mut s = serde_json::to_string(message).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_hello_names_known_hooks_of_the_same_version() {
        let hello = parse(
            br#"{"type":"hello","protocol":1,"name":"x","hooks":["exec.before","net.flow"]}"#,
        )
        .unwrap();
        let FromPlugin::Hello {
            protocol, hooks, ..
        } = hello
        else {
            panic!("{hello:?}")
        };
        let i = hello_interests(protocol, &hooks).unwrap();
        assert!(i.contains(Hook::ExecBefore) && i.contains(Hook::Flow) && !i.contains(Hook::Fs));
        assert_eq!(
            hello_interests(2, &hooks),
            Err(ProtocolError::Version { theirs: 2 })
        );
        assert_eq!(
            hello_interests(1, &["exec.everything".into()]),
            Err(ProtocolError::UnknownHook("exec.everything".into()))
        );
    }

    #[test]
    fn decisions_and_their_verdicts() {
        let d = parse(br#"{"type":"decision","id":3,"verdict":"deny","reason":"no rm"}"#).unwrap();
        let FromPlugin::Decision {
            id,
            verdict: v,
            reason,
            data,
        } = d
        else {
            panic!()
        };
        assert_eq!((id, data), (3, None));
        assert_eq!(verdict(&v, reason), Ok(Decision::deny("no rm")));
        assert_eq!(verdict("continue", None), Ok(Decision::Continue));
        assert!(matches!(
            verdict("maybe", None),
            Err(ProtocolError::Verdict(_))
        ));
        assert_eq!(
            verdict("deny", Some("x".repeat(5000))),
            Ok(Decision::deny("x".repeat(MAX_REASON)))
        );
    }

    #[test]
    fn bad_lines_are_errors() {
        for bad in [
            &b"not json"[..],
            br#"{"type":"explode"}"#,
            br#"{"type":"decision","verdict":"continue"}"#,
            br#"[1,2]"#,
            b"",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(&vec![b' '; MAX_LINE]), Err(ProtocolError::TooLong));
    }

    #[test]
    fn lines_to_the_plugin_are_single_lines() {
        let l = line(&ToPlugin::Notify {
            hook: Hook::ExecOutput,
            data: serde_json::json!({"text": "a\nb"}),
        });
        assert_eq!(l.matches('\n').count(), 1);
        assert!(l.ends_with('\n'));
        let back: ToPlugin = serde_json::from_str(&l).unwrap();
        assert!(matches!(
            back,
            ToPlugin::Notify {
                hook: Hook::ExecOutput,
                ..
            }
        ));
    }

    #[test]
    fn truncation_keeps_characters_whole() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn any_decision_line_round_trips(id in any::<u64>(), deny in any::<bool>(), reason in "\\PC{0,40}") {
            let v = if deny { "deny" } else { "continue" };
            let text = serde_json::json!({"type": "decision", "id": id, "verdict": v, "reason": reason}).to_string();
            let FromPlugin::Decision { id: got, verdict: gv, reason: gr, .. } = parse(text.as_bytes()).unwrap() else {
                panic!()
            };
            prop_assert_eq!(got, id);
            prop_assert_eq!(verdict(&gv, gr).unwrap().is_deny(), deny);
        }
    }
}
