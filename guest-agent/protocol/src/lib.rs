//! The wire protocol between the guest agent and the host.
//!
//! Transport: virtio-vsock stream connections. The agent listens on guest port
//! [`AGENT_PORT`]; the host opens one connection per exec (so vsock's
//! per-connection flow control keeps a slow reader of one process from
//! stalling any other) plus short control connections. At start-up the agent
//! connects to host port [`HOST_EVENTS_PORT`] and sends [`GuestMessage::Ready`]
//! with its boot timestamps; that connection then carries guest events.
//!
//! Framing: each message is a frame of a 4-byte little-endian length followed
//! by that many bytes of postcard-encoded [`HostMessage`] or [`GuestMessage`].
//! Frames larger than [`MAX_FRAME_LEN`] are refused before any allocation.
//! The first message on every connection is a hello carrying
//! [`PROTOCOL_VERSION`]; a peer that speaks another version is answered with
//! an error naming both versions, never with undefined behaviour. A frame that
//! does not decode gets [`GuestMessage::Error`] and the connection goes on.
//!
//! The codec is sans-IO ([`encode`], [`FrameDecoder`]); [`framing`] drives it
//! over streams, blocking for the agent and the runtime, async (the `tokio`
//! feature) for the SDK, so every side reads frames the same way.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

pub mod boot;
pub mod events;
pub mod files;
pub mod framing;
pub mod resolver;
pub mod spawn;

/// Version of this protocol; bumped on any incompatible change (2: a
/// [`ForkIdentity`] carries the fork's CPUs, CA, secret placeholders and
/// MAC; 3: [`BootTimes`] carries the start-up's steps).
pub const PROTOCOL_VERSION: u32 = 3;
/// Largest frame payload accepted, in bytes.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest data chunk (stdin, stdout, stderr) put in one message; well under
/// [`MAX_FRAME_LEN`] so a chunk plus its envelope always fits.
pub const MAX_CHUNK_LEN: usize = 64 * 1024;
/// Guest vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// Host vsock port the agent connects to at start-up to announce readiness and
/// carry guest events.
pub const HOST_EVENTS_PORT: u32 = 1025;
/// The host's vsock context id (VMADDR_CID_HOST).
pub const HOST_CID: u32 = 2;
/// The guest's vsock context id msbvm assigns.
pub const GUEST_CID: u32 = 3;

/// Guest timestamps of the boot, in nanoseconds of the guest's CLOCK_BOOTTIME
/// (which starts near zero when the kernel starts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimes {
    /// When the agent's `main` began.
    pub agent_start_ns: u64,
    /// When the agent was listening and about to report ready.
    pub ready_ns: u64,
    /// When the root filesystem was in place (the image's, over virtio-fs). The steps are 0
    /// when the agent is not PID 1; `serde(default)`: sandboxes' state files written before
    /// them still read.
    #[serde(default)]
    pub root_ns: u64,
    /// When the kernel filesystems and the sandbox's mounts (volumes, tmpfs) were in place.
    #[serde(default)]
    pub mounts_ns: u64,
    /// When the network was configured (hostname, interfaces, resolver files).
    #[serde(default)]
    pub network_ns: u64,
}

/// Terminal size for a PTY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// How to start a process in the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` if it has no `/`.
    pub argv: Vec<String>,
    /// Environment (KEY, VALUE); replaces the agent's own environment entirely.
    pub env: Vec<(String, String)>,
    /// Working directory (default `/`).
    pub cwd: Option<String>,
    /// User id to run as (default 0).
    pub uid: Option<u32>,
    /// Group id to run as (default: `uid`'s, else 0).
    pub gid: Option<u32>,
    /// Allocate one PTY for stdin, stdout and stderr, with this size; output
    /// then arrives as [`GuestMessage::Stdout`] only.
    pub tty: Option<TtySize>,
    /// Kill the process (SIGKILL to its process group) after this many
    /// milliseconds; it then ends with [`ExitStatus::TimedOut`].
    pub timeout_ms: Option<u64>,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Its timeout expired and the agent killed it.
    TimedOut,
}

impl ExitStatus {
    /// The signal that killed the process, if one did (a timeout's kill is not counted: see
    /// [`ExitStatus::timed_out`]).
    pub fn signal(self) -> Option<i32> {
        match self {
            ExitStatus::Signal(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the process's timeout expired and the agent killed it.
    pub fn timed_out(self) -> bool {
        self == ExitStatus::TimedOut
    }
}

/// Messages from the host to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// First message on a connection.
    Hello {
        /// The host's [`PROTOCOL_VERSION`].
        version: u32,
    },
    /// Start a process; at most one per connection. The agent answers
    /// [`GuestMessage::Started`] or [`GuestMessage::Error`].
    Exec(ExecRequest),
    /// Bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// Close the process's stdin (EOF).
    CloseStdin,
    /// Send a signal to the process's whole process group (the agent starts
    /// every process as a session and group leader).
    Signal(i32),
    /// Resize the process's PTY.
    Resize(TtySize),
    /// Ask the agent to sync and power the VM off with this code.
    Shutdown {
        /// The VM's exit code.
        code: u32,
    },
    /// Liveness probe; answered [`GuestMessage::Pong`].
    Ping,
    /// A file operation; at most one per connection ([`files`]).
    File(files::FileRequest),
    /// Data of a file or archive the host uploads.
    FileChunk(Vec<u8>),
    /// The end of an upload.
    FileEnd,
    /// An event for guest programs; only on the agent's events connection
    /// ([`HOST_EVENTS_PORT`]).
    Event(events::HostEvent),
    /// The guest was restored from a snapshot as a new sandbox (a fork): take
    /// its identity. Answered [`GuestMessage::IdentityTaken`] or
    /// [`GuestMessage::Error`].
    Identity(ForkIdentity),
}

/// What makes a fork of a snapshot its own sandbox: every fork of one
/// snapshot starts with the same memory, so the same hostname, RNG state and
/// a wall clock that stopped when the snapshot was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkIdentity {
    /// The fork's hostname (its sandbox name).
    pub hostname: String,
    /// Fresh host randomness for the kernel's RNG (at most
    /// [`MAX_FORK_ENTROPY`] bytes), credited and followed by a forced reseed.
    pub entropy: Vec<u8>,
    /// The host's wall clock when the fork started, in nanoseconds since the
    /// Unix epoch.
    pub unix_time_ns: u64,
    /// vCPUs to leave online, the first ones (the snapshot's machine has more;
    /// the agent takes the rest offline); 0 leaves them all online.
    pub online_cpus: u8,
    /// The CA of the fork's TLS interception, for the guest to trust (it is
    /// added to the bundles; the snapshot's own CA, if any, stays). `None`
    /// when the fork intercepts nothing.
    pub tls: Option<boot::GuestTls>,
    /// `(NAME, placeholder)` of the fork's own secrets: they replace the
    /// snapshot's in every later exec (a fork gets its secrets from its
    /// creator; the snapshot's placeholders mean nothing to its network stack).
    pub secret_env: Vec<(String, String)>,
    /// The fork's own MAC address for the guest's network interface (random,
    /// locally administered, unicast); `None` keeps the snapshot's (a fork
    /// without a network).
    pub mac: Option<[u8; 6]>,
}

/// Most entropy bytes a [`ForkIdentity`] carries (the kernel takes what it
/// needs from 32; more only costs).
pub const MAX_FORK_ENTROPY: usize = 256;

/// Messages from the agent to the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMessage {
    /// Answer to [`HostMessage::Hello`].
    Hello {
        /// The agent's [`PROTOCOL_VERSION`].
        version: u32,
        /// The agent's crate version, for diagnostics.
        agent_version: String,
    },
    /// Sent once on the events connection when the agent is ready.
    Ready(BootTimes),
    /// The process started.
    Started {
        /// Its pid in the guest.
        pid: u32,
    },
    /// Output on stdout (or the PTY).
    Stdout(Vec<u8>),
    /// Output on stderr.
    Stderr(Vec<u8>),
    /// The process ended; the last message of an exec connection. Sent only
    /// after all of its output.
    Exited(ExitStatus),
    /// A request could not be carried out.
    Error {
        /// What went wrong, for a person.
        message: String,
    },
    /// Answer to [`HostMessage::Ping`].
    Pong,
    /// What a read file or a stat'ed path is.
    FileMeta(files::FileStat),
    /// Data of a file or archive the agent sends.
    FileChunk(Vec<u8>),
    /// The end of a download or listing.
    FileEnd,
    /// The agent is ready for the host's upload.
    FileReady,
    /// The file operation succeeded.
    FileDone,
    /// Some entries of a directory listing.
    DirEntries(Vec<files::DirEntry>),
    /// The file operation failed; the last message of the connection.
    FileError(files::FileError),
    /// An event a guest program sent; only on the agent's events connection.
    Event(events::GuestEvent),
    /// The agent took the identity of [`HostMessage::Identity`].
    IdentityTaken,
    /// A plugin on the host refused the request; the last message of the connection. Sent by
    /// the sandbox's exec gateway in place of the agent's answer, never by the agent.
    Denied {
        /// The plugin's reason.
        reason: String,
    },
}

/// Errors of the codec.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A frame announced more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    FrameTooLarge(usize),
    /// A frame's payload did not decode as a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: this side speaks {ours}, the peer {theirs}; use matching msbvm and guest agent versions")]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
}

/// Encodes `message` as one frame (length prefix included).
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; 4];
    let body = postcard::to_stdvec(message).map_err(|e| Error::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(Error::FrameTooLarge(body.len()));
    }
    out[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Incremental frame decoder: feed it bytes as they arrive, take messages out.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The whole length (prefix included) of the frame being received, once its
    /// length prefix has arrived.
    pub fn pending_frame_len(&self) -> Option<usize> {
        let prefix: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        Some(4 + u32::from_le_bytes(prefix) as usize)
    }

    /// The next complete message, if one has arrived.
    ///
    /// `Err(FrameTooLarge)` is fatal for the connection (the stream cannot be
    /// resynchronised); `Err(Malformed)` consumed the bad frame, and decoding
    /// can go on with the next one.
    pub fn next_message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, Error> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(Error::FrameTooLarge(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let result = postcard::from_bytes(&self.buf[4..4 + len])
            .map_err(|e| Error::Malformed(e.to_string()));
        self.buf.drain(..4 + len);
        result.map(Some)
    }
}

/// Checks a peer's hello version.
pub fn check_version(theirs: u32) -> Result<(), Error> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Error::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(m: T) {
        let frame = encode(&m).unwrap();
        let mut d = FrameDecoder::new();
        // Byte by byte: a message is returned only once it is complete.
        for (i, b) in frame.iter().enumerate() {
            d.push(&[*b]);
            let got: Option<T> = d.next_message().unwrap();
            assert_eq!(got.is_some(), i == frame.len() - 1);
            if let Some(got) = got {
                assert_eq!(got, m);
            }
        }
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn every_message_roundtrips() {
        roundtrip(HostMessage::Hello { version: 1 });
        roundtrip(HostMessage::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            cwd: Some("/tmp".into()),
            uid: Some(1000),
            gid: None,
            tty: Some(TtySize { rows: 24, cols: 80 }),
            timeout_ms: Some(5000),
        }));
        roundtrip(HostMessage::Stdin(vec![0; MAX_CHUNK_LEN]));
        roundtrip(HostMessage::CloseStdin);
        roundtrip(HostMessage::Signal(15));
        roundtrip(HostMessage::Resize(TtySize { rows: 1, cols: 2 }));
        roundtrip(HostMessage::Shutdown { code: 3 });
        roundtrip(GuestMessage::Ready(BootTimes {
            agent_start_ns: 1,
            ready_ns: 2,
            root_ns: 3,
            mounts_ns: 4,
            network_ns: 5,
        }));

        roundtrip(GuestMessage::Exited(ExitStatus::Signal(9)));
        roundtrip(GuestMessage::Exited(ExitStatus::TimedOut));
        roundtrip(GuestMessage::Error {
            message: "x".into(),
        });
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering_it() {
        let mut d = FrameDecoder::new();
        d.push(&(MAX_FRAME_LEN as u32 + 1).to_le_bytes());
        assert_eq!(
            d.next_message::<HostMessage>(),
            Err(Error::FrameTooLarge(MAX_FRAME_LEN + 1))
        );
    }

    #[test]
    fn malformed_frame_is_skipped_and_decoding_goes_on() {
        let mut d = FrameDecoder::new();
        d.push(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        d.push(&encode(&HostMessage::Ping).unwrap());
        assert!(matches!(
            d.next_message::<HostMessage>(),
            Err(Error::Malformed(_))
        ));
        assert_eq!(d.next_message::<HostMessage>(), Ok(Some(HostMessage::Ping)));
    }

    #[test]
    fn random_bytes_never_panic() {
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut d = FrameDecoder::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let mut frame = (len as u32).to_le_bytes().to_vec();
            for i in 0..len {
                frame.push((x >> (i % 8 * 8)) as u8 ^ i as u8);
            }
            d.push(&frame);
            let _ = d.next_message::<HostMessage>();
            let mut d = FrameDecoder::new();
            d.push(&frame);
            let _ = d.next_message::<GuestMessage>();
        }
    }

    #[test]
    fn version_check_names_both_sides() {
        assert_eq!(check_version(PROTOCOL_VERSION), Ok(()));
        let e = check_version(99).unwrap_err().to_string();
        assert!(
            e.contains("99") && e.contains(&PROTOCOL_VERSION.to_string()),
            "{e}"
        );
    }
}
