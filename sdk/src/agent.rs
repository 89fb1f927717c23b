//! Opening a connection to the guest agent: the vsock handshake to [`AGENT_PORT`], then the
//! hello exchange that checks both sides speak the same protocol version.

use std::path::Path;

use msbvm_protocol::{GuestMessage, HostMessage, AGENT_PORT, PROTOCOL_VERSION};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::{Error, Result};
use crate::framing::{write_async, AsyncFrameReader, FrameError};
use crate::limits::{bounded, AgentLimits};
use crate::vsock;

/// A connection to the agent after a successful hello.
#[derive(Debug)]
pub(crate) struct AgentConnection {
    pub(crate) reader: AsyncFrameReader<OwnedReadHalf>,
    pub(crate) writer: OwnedWriteHalf,
}

/// Maps a frame error on an agent connection to the SDK error.
pub(crate) fn frame_error(e: FrameError) -> Error {
    match e {
        FrameError::Io(e) if is_disconnect(&e) => Error::ConnectionLost,
        FrameError::Io(e) => Error::io("talking to the guest agent")(e),
        FrameError::Truncated { .. } => Error::ConnectionLost,
        FrameError::Codec(e) => Error::Protocol {
            peer: "the guest agent",
            detail: e.to_string(),
        },
    }
}

/// Whether an I/O error means the peer went away.
pub(crate) fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    )
}

/// Connects to the agent through the vsock device socket `uds` and exchanges hellos, each
/// step within `limits`' reply timeout.
pub(crate) async fn connect(uds: &Path, limits: &AgentLimits) -> Result<AgentConnection> {
    let idle = limits.reply_timeout;
    let stream = vsock::connect_within(uds, AGENT_PORT, idle).await?;
    let (read, mut writer) = stream.into_split();
    let mut reader = AsyncFrameReader::new(read);
    let hello = HostMessage::Hello {
        version: PROTOCOL_VERSION,
    };
    let sent = async { write_async(&mut writer, &hello).await.map_err(frame_error) };
    bounded(idle, None, "the agent to take the hello", sent).await?;
    let reply = async {
        reader
            .read_message::<GuestMessage>()
            .await
            .map_err(frame_error)
    };
    match bounded(idle, None, "the agent's hello", reply).await? {
        Some(GuestMessage::Hello { version, .. }) if version == PROTOCOL_VERSION => {
            Ok(AgentConnection { reader, writer })
        }
        Some(GuestMessage::Hello { version, .. }) => Err(Error::ProtocolMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        }),
        Some(GuestMessage::Error { message }) => Err(Error::Agent(message)),
        Some(other) => Err(Error::Protocol {
            peer: "the guest agent",
            detail: format!("expected a hello, got {}", describe(&other)),
        }),
        None => Err(Error::ConnectionLost),
    }
}

/// A short name for a message, for logs (never its data).
pub fn describe(m: &GuestMessage) -> &'static str {
    match m {
        GuestMessage::Hello { .. } => "Hello",
        GuestMessage::Ready(_) => "Ready",
        GuestMessage::Started { .. } => "Started",
        GuestMessage::Stdout(_) => "Stdout",
        GuestMessage::Stderr(_) => "Stderr",
        GuestMessage::Exited(_) => "Exited",
        GuestMessage::Error { .. } => "Error",
        GuestMessage::Pong => "Pong",
        GuestMessage::FileMeta(_) => "FileMeta",
        GuestMessage::FileChunk(_) => "FileChunk",
        GuestMessage::FileEnd => "FileEnd",
        GuestMessage::FileReady => "FileReady",
        GuestMessage::FileDone => "FileDone",
        GuestMessage::DirEntries(_) => "DirEntries",
        GuestMessage::FileError(_) => "FileError",
        GuestMessage::Event(_) => "Event",
        GuestMessage::IdentityTaken => "IdentityTaken",
        GuestMessage::Denied { .. } => "Denied",
    }
}
