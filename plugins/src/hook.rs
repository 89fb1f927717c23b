//! The points of a sandbox a plugin can hook, and the set of them a plugin asks for.

use serde::{Deserialize, Serialize};

/// One hook point. Its wire name (`"exec.before"`, ...) is what out-of-process plugins list in
/// their handshake; see `PROTOCOL.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Hook {
    /// The sandbox was created, started (agent ready), stopped, snapshotted or forked.
    #[serde(rename = "lifecycle")]
    Lifecycle,
    /// A command is about to start: allow, deny, or rewrite argv, env, cwd and user.
    #[serde(rename = "exec.before")]
    ExecBefore,
    /// A command wrote output.
    #[serde(rename = "exec.output")]
    ExecOutput,
    /// A command ended.
    #[serde(rename = "exec.after")]
    ExecAfter,
    /// A filesystem operation of the guest: allow or deny.
    #[serde(rename = "fs")]
    Fs,
    /// A change the guest made to a filesystem (a write, a create, a rename, ...), after it
    /// succeeded.
    #[serde(rename = "fs.change")]
    FsChange,
    /// The guest reads a file: a plugin may answer with data of its own.
    #[serde(rename = "fs.read")]
    FsRead,
    /// The guest writes a file: allow, deny, or replace the data written.
    #[serde(rename = "fs.write")]
    FsWrite,
    /// A new network flow of the guest: allow or deny.
    #[serde(rename = "net.flow")]
    Flow,
    /// A DNS query of the guest: allow or deny.
    #[serde(rename = "net.dns")]
    Dns,
    /// A DNS answer the guest got.
    #[serde(rename = "net.dns_answer")]
    DnsAnswer,
    /// An HTTP request on an inspected connection: allow, deny, or change its headers.
    #[serde(rename = "net.http")]
    Http,
    /// Bytes moved by a flow, reported when it closes.
    #[serde(rename = "net.bytes")]
    Bytes,
    /// An event between the guest and the host.
    #[serde(rename = "event")]
    Event,
}

impl Hook {
    /// Every hook, in a fixed order (the index of each is its bit in [`Interests`]).
    pub const ALL: [Hook; 14] = [
        Hook::Lifecycle,
        Hook::ExecBefore,
        Hook::ExecOutput,
        Hook::ExecAfter,
        Hook::Fs,
        Hook::FsChange,
        Hook::FsRead,
        Hook::FsWrite,
        Hook::Flow,
        Hook::Dns,
        Hook::DnsAnswer,
        Hook::Http,
        Hook::Bytes,
        Hook::Event,
    ];

    /// Whether the hook asks for a decision (and so waits for the plugin, within its timeout);
    /// the others are one-way notifications.
    pub fn decides(self) -> bool {
        matches!(
            self,
            Hook::ExecBefore
                | Hook::Fs
                | Hook::FsRead
                | Hook::FsWrite
                | Hook::Flow
                | Hook::Dns
                | Hook::Http
        )
    }

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Lifecycle => "lifecycle",
            Hook::ExecBefore => "exec.before",
            Hook::ExecOutput => "exec.output",
            Hook::ExecAfter => "exec.after",
            Hook::Fs => "fs",
            Hook::FsChange => "fs.change",
            Hook::FsRead => "fs.read",
            Hook::FsWrite => "fs.write",
            Hook::Flow => "net.flow",
            Hook::Dns => "net.dns",
            Hook::DnsAnswer => "net.dns_answer",
            Hook::Http => "net.http",
            Hook::Bytes => "net.bytes",
            Hook::Event => "event",
        }
    }

    fn bit(self) -> u16 {
        1 << Hook::ALL.iter().position(|h| *h == self).unwrap_or(0)
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The hooks a plugin asks for. A sandbox calls a plugin only on these, so a plugin that
/// watches flows costs nothing on exec or filesystem operations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interests(u16);

impl Interests {
    /// No hook.
    pub const NONE: Interests = Interests(0);

    /// Every hook.
    pub fn all() -> Self {
        Hook::ALL.into_iter().collect()
    }

    /// Adds `hook`.
    pub fn with(mut self, hook: Hook) -> Self {
        self.0 |= hook.bit();
        self
    }

    /// Whether `hook` is asked for.
    pub fn contains(self, hook: Hook) -> bool {
        self.0 & hook.bit() != 0
    }

    /// The hooks asked for, in [`Hook::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Hook> {
        Hook::ALL.into_iter().filter(move |h| self.contains(*h))
    }

    /// Whether no hook is asked for.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Hook> for Interests {
    fn from_iter<I: IntoIterator<Item = Hook>>(iter: I) -> Self {
        iter.into_iter().fold(Interests::NONE, Interests::with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_and_match_name() {
        for hook in Hook::ALL {
            let json = serde_json::to_string(&hook).unwrap();
            assert_eq!(json, format!("\"{}\"", hook.name()));
            assert_eq!(serde_json::from_str::<Hook>(&json).unwrap(), hook);
        }
    }

    #[test]
    fn interests_hold_exactly_what_was_added() {
        let i: Interests = [Hook::Flow, Hook::ExecAfter].into_iter().collect();
        assert!(i.contains(Hook::Flow) && i.contains(Hook::ExecAfter));
        assert!(!i.contains(Hook::ExecBefore) && !i.contains(Hook::Fs));
        assert_eq!(i.iter().collect::<Vec<_>>(), [Hook::ExecAfter, Hook::Flow]);
        assert_eq!(Interests::all().iter().count(), Hook::ALL.len());
        assert!(Interests::NONE.is_empty());
    }
}
