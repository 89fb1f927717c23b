//! Requests from inside a sandbox to create and drive peer sandboxes.
//!
//! The in-guest `msbvm` connects over vsock to host port [`SPAWN_PORT`] (any guest process
//! may; the permission is the sandbox's, granted by its creator with `--allow-spawn`). Each
//! connection carries request/answer pairs, framed like the rest of this protocol, after a
//! [`SpawnRequest::Hello`]. The host side treats every field as hostile: names, sizes and
//! counts are checked there, and a sandbox without the grant gets
//! [`SpawnResponse::Error`] naming `--allow-spawn`.

use serde::{Deserialize, Serialize};

/// Host vsock port of the spawn service.
pub const SPAWN_PORT: u32 = 1026;
/// The most file data one request or answer carries (a frame is at most
/// [`crate::MAX_FRAME_LEN`]).
pub const MAX_FILE_LEN: usize = 768 * 1024;
/// The most exec output (stdout and stderr together) an answer carries; the rest is cut
/// and said so.
pub const MAX_OUTPUT_LEN: usize = 768 * 1024;

/// What a child sandbox is created with (everything else is the default: its own network
/// with the default policy, its own filesystem, no volumes, no secrets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    /// The child's name, unique among this sandbox's children.
    pub name: String,
    /// Its image (`None`: the default image); must be one the grant allows.
    pub image: Option<String>,
    /// vCPUs (`None`: 1).
    pub cpus: Option<u8>,
    /// Memory in MiB (`None`: 256).
    pub memory_mib: Option<u64>,
    /// Environment for every exec.
    pub env: Vec<(String, String)>,
    /// Network allow rules (`--net-allow` grammar); each must be one the parent's grant
    /// lists.
    pub net_allow: Vec<String>,
    /// Network deny rules (always allowed: they only narrow); checked before the allows.
    pub net_deny: Vec<String>,
    /// No network interface at all.
    pub no_network: bool,
    /// A spawn grant of the child's own, in `--allow-spawn` form; allowed only where the
    /// parent's grant has depth over 1, and carved out of it.
    pub allow_spawn: Option<String>,
    /// Names of the parent's secrets to give the child (each one the grant lists); the
    /// child gets its own placeholders.
    pub secrets: Vec<String>,
}

/// A request to the host's spawn service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnRequest {
    /// First message: the protocol version ([`crate::PROTOCOL_VERSION`]).
    Hello {
        /// The guest's version.
        version: u32,
    },
    /// Create a child and wait until its agent is ready.
    Create(ChildSpec),
    /// Run a command in a child to its end, with `stdin` as its input.
    Exec {
        /// The child.
        name: String,
        /// Program and arguments.
        argv: Vec<String>,
        /// Its standard input (at most [`MAX_FILE_LEN`]).
        stdin: Vec<u8>,
        /// Kill it after this many seconds (`None`: no limit).
        timeout_secs: Option<u64>,
    },
    /// Read a file of a child (at most [`MAX_FILE_LEN`]).
    ReadFile {
        /// The child.
        name: String,
        /// The path in the child.
        path: String,
    },
    /// Write a file in a child (created or replaced).
    WriteFile {
        /// The child.
        name: String,
        /// The path in the child.
        path: String,
        /// Its content (at most [`MAX_FILE_LEN`]).
        data: Vec<u8>,
        /// Its mode.
        mode: u32,
    },
    /// Stop a child (it stays listed, stopped).
    Stop {
        /// The child.
        name: String,
    },
    /// Stop and remove a child.
    Remove {
        /// The child.
        name: String,
    },
    /// This sandbox's children.
    List,
    /// Run a command in a child, streaming: answered [`SpawnResponse::Started`], then its
    /// output as [`SpawnResponse::Stdout`]/[`SpawnResponse::Stderr`] as it comes and a final
    /// [`SpawnResponse::Exited`] (with empty output); meanwhile the guest may send
    /// [`SpawnRequest::Stdin`], [`SpawnRequest::CloseStdin`] and [`SpawnRequest::Signal`].
    /// The connection ends with the command.
    ExecStream {
        /// The child.
        name: String,
        /// Program and arguments.
        argv: Vec<String>,
        /// Kill it after this many seconds (`None`: no limit).
        timeout_secs: Option<u64>,
    },
    /// Input for a streaming exec (at most [`crate::MAX_CHUNK_LEN`] per message).
    Stdin(Vec<u8>),
    /// The end of a streaming exec's input.
    CloseStdin,
    /// A signal for a streaming exec's process group.
    Signal(i32),
    /// Stream a child's events whose type matches `types` (all when empty): answered by
    /// [`SpawnResponse::Event`]s, the kept ones first; without `follow` a final
    /// [`SpawnResponse::Done`]. The connection ends with the stream.
    Events {
        /// The child.
        name: String,
        /// Type patterns.
        types: Vec<String>,
        /// Keep streaming new events until the child ends.
        follow: bool,
    },
    /// Send an event to a child's subscribed programs.
    Emit {
        /// The child.
        name: String,
        /// The event's type.
        kind: String,
        /// Its data, as JSON text.
        data: String,
    },
}

/// One child as [`SpawnRequest::List`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildInfo {
    /// Its name (as the parent calls it).
    pub name: String,
    /// `running`, `stopped`, ...
    pub status: String,
    /// vCPUs.
    pub cpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Its image.
    pub image: String,
}

/// The host's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnResponse {
    /// Answer to the hello.
    Hello {
        /// The host's version.
        version: u32,
    },
    /// Done.
    Done,
    /// How a command ended and what it wrote.
    Exited {
        /// Its exit code (128 + N for a signal N, 124 for a timeout).
        code: i32,
        /// Its stdout.
        stdout: Vec<u8>,
        /// Its stderr.
        stderr: Vec<u8>,
        /// Output beyond [`MAX_OUTPUT_LEN`] was cut.
        truncated: bool,
    },
    /// A file's content.
    File(Vec<u8>),
    /// The children.
    Children(Vec<ChildInfo>),
    /// The request failed; why, for a person.
    Error(String),
    /// A streaming exec started (its pid in the child).
    Started(u32),
    /// Output of a streaming exec on stdout.
    Stdout(Vec<u8>),
    /// Output of a streaming exec on stderr.
    Stderr(Vec<u8>),
    /// One event of a child, as the JSON object `msbvm events --json` prints.
    Event(String),
}

impl SpawnResponse {
    /// The answer's name, for messages about an unexpected one (never its data).
    pub fn kind(&self) -> &'static str {
        match self {
            SpawnResponse::Hello { .. } => "Hello",
            SpawnResponse::Done => "Done",
            SpawnResponse::Exited { .. } => "Exited",
            SpawnResponse::File(_) => "File",
            SpawnResponse::Children(_) => "Children",
            SpawnResponse::Error(_) => "Error",
            SpawnResponse::Started(_) => "Started",
            SpawnResponse::Stdout(_) => "Stdout",
            SpawnResponse::Stderr(_) => "Stderr",
            SpawnResponse::Event(_) => "Event",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_roundtrip() {
        for r in [
            SpawnRequest::Hello { version: 1 },
            SpawnRequest::Create(ChildSpec {
                name: "w1".into(),
                image: Some("alpine".into()),
                cpus: Some(1),
                memory_mib: Some(128),
                env: vec![("A".into(), "b".into())],
                net_allow: vec!["host".into()],
                net_deny: vec!["10.0.0.0/8".into()],
                no_network: false,
                allow_spawn: Some("1,memory=256".into()),
                secrets: vec!["TOKEN".into()],
            }),
            SpawnRequest::Exec {
                name: "w1".into(),
                argv: vec!["true".into()],
                stdin: vec![1, 2],
                timeout_secs: Some(3),
            },
            SpawnRequest::List,
        ] {
            let frame = crate::encode(&r).unwrap();
            let mut d = crate::FrameDecoder::new();
            d.push(&frame);
            assert_eq!(d.next_message::<SpawnRequest>().unwrap(), Some(r));
        }
        // The largest file fits in a frame with its envelope.
        let big = SpawnResponse::File(vec![0xff; MAX_FILE_LEN]);
        assert!(crate::encode(&big).is_ok());
        let out = SpawnResponse::Exited {
            code: 0,
            stdout: vec![0xff; MAX_OUTPUT_LEN],
            stderr: Vec::new(),
            truncated: true,
        };
        assert!(crate::encode(&out).is_ok());
    }
}
