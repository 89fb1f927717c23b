//! What each hook shows a plugin: plain data, the same for in-process plugins and on the wire
//! (`PROTOCOL.md` shows each as JSON).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The sandbox a hook call is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxInfo {
    /// The sandbox's name.
    pub name: String,
}

/// A step in a sandbox's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Lifecycle {
    /// The runtime is setting the sandbox up (before its VM starts).
    Created,
    /// The guest agent is ready: the sandbox takes commands.
    Started,
    /// The VM ended.
    Stopped {
        /// The guest's exit code, if it powered off with one.
        exit_code: Option<i32>,
    },
    /// A snapshot of the sandbox was taken.
    Snapshotted {
        /// The snapshot's name.
        snapshot: String,
    },
    /// The sandbox is a fork, started from a snapshot.
    Forked {
        /// The snapshot's name.
        snapshot: String,
    },
    /// The stopped sandbox is being removed with its state (a sandbox run attached, without
    /// `-d`; a detached one removed later by `msbvm rm` has no plugins running to tell).
    Removed,
}

/// A command about to start in the guest. A plugin may change any field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment, `(KEY, VALUE)` pairs: what the process gets, entirely.
    pub env: Vec<(String, String)>,
    /// Working directory (the guest's default when absent).
    pub cwd: Option<String>,
    /// User id to run as.
    pub uid: Option<u32>,
    /// Group id to run as.
    pub gid: Option<u32>,
}

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output (or the terminal).
    Stdout,
    /// Standard error.
    Stderr,
}

/// Output a command wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// The command's id within this sandbox (the same in its `exec.after`).
    pub exec_id: u64,
    /// Which stream.
    pub stream: OutputStream,
    /// The bytes, as text (invalid UTF-8 replaced).
    pub text: String,
}

/// How a command ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecEnded {
    /// The command's id within this sandbox.
    pub exec_id: u64,
    /// Program and arguments, as started (after every rewrite).
    pub argv: Vec<String>,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether its timeout killed it.
    pub timed_out: bool,
    /// From start to end, in milliseconds.
    pub duration_ms: u64,
}

/// A filesystem operation of the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsAccess {
    /// The operation (`open`, `write`, `unlink`, `rename`, ...).
    pub op: String,
    /// The guest path it touches, when known.
    pub path: Option<String>,
    /// The second path of a rename or link.
    pub new_path: Option<String>,
    /// Bytes it reads or writes, for reads and writes.
    pub size: u64,
}

/// The data of a read or write of the guest. For `fs.read` `data` is `None` until a plugin
/// answers the read with its own bytes (at most `size`; fewer is an end of file); for
/// `fs.write` it is what the guest writes, and a plugin may replace it. On the wire `data` is
/// base64.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsIo {
    /// The file, as the guest names it.
    pub path: Option<String>,
    /// Where in the file.
    pub offset: u64,
    /// Bytes asked for (read) or written (write).
    pub size: u64,
    /// The bytes (see above).
    #[serde(default, with = "base64_bytes")]
    pub data: Option<Vec<u8>>,
}

/// `Option<Vec<u8>>` as a base64 string or `null`.
mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match data {
            Some(bytes) => s.serialize_str(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => STANDARD
                .decode(text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// A transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A new flow of the guest, after the sandbox's own policy allowed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// TCP or UDP.
    pub transport: Transport,
    /// Where the guest sends it.
    pub dst: SocketAddr,
    /// The name the guest looked this address up by, when it did.
    pub host: Option<String>,
}

/// Bytes a flow moved, when it closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowBytes {
    /// TCP or UDP.
    pub transport: Transport,
    /// The peer.
    pub dst: SocketAddr,
    /// Bytes from the guest.
    pub bytes_up: u64,
    /// Bytes to the guest.
    pub bytes_down: u64,
}

/// A DNS query of the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQuery {
    /// The name asked for.
    pub name: String,
    /// The record type (`A`, `AAAA`, ...).
    pub qtype: String,
}

/// What the guest's DNS query got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsAnswer {
    /// The name asked for.
    pub name: String,
    /// The record type.
    pub qtype: String,
    /// Whether it was answered.
    pub allowed: bool,
    /// The addresses answered.
    pub answers: Vec<IpAddr>,
}

/// An HTTP request on a connection the sandbox inspects. A plugin may change its headers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    /// The method.
    pub method: String,
    /// The host it is for.
    pub host: String,
    /// The path and query.
    pub path: String,
    /// The headers, in order, `(name, value)`.
    pub headers: Vec<(String, String)>,
}

/// Which way an event went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Emitted in the guest, for the host.
    FromGuest,
    /// Sent by the host to the guest.
    ToGuest,
}

/// An event between the guest and the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Which way it went.
    pub direction: Direction,
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub data: serde_json::Value,
}
