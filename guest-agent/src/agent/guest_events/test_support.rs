//! A hub on a temporary socket with a fake host, for tests here and in the
//! guest CLI.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use msbvm_protocol::events::{GuestEvent, HostEvent, Target};
use msbvm_protocol::framing::{FrameReader, FrameWriter};
use msbvm_protocol::GuestMessage;

use super::execs::ExecRegistry;
use super::{Hub, Limits};
use crate::agent::events::Link;

/// A listening hub and the host's end of its events connection.
pub(crate) struct Setup {
    pub hub: Arc<Hub>,
    pub host: FrameReader<UnixStream>,
    pub execs: &'static ExecRegistry,
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// A hub with `limits` and a host that takes events.
    pub fn new(limits: Limits) -> Setup {
        let (agent_end, host_end) = UnixStream::pair().unwrap();
        Self::with_link(Link::new(FrameWriter::new(agent_end)), host_end, limits)
    }

    /// A hub with no host.
    pub fn without_host() -> Setup {
        let (_, host_end) = UnixStream::pair().unwrap();
        Self::with_link(Link::<UnixStream>::default(), host_end, Limits::default())
    }

    fn with_link(link: Link<UnixStream>, host_end: UnixStream, limits: Limits) -> Setup {
        let execs: &'static ExecRegistry = Box::leak(Box::default());
        let hub = Hub::new(Arc::new(link), execs, limits);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        hub.listen(&path).unwrap();
        Setup {
            hub,
            host: FrameReader::new(host_end),
            execs,
            path,
            _dir: dir,
        }
    }

    /// The next event the host gets.
    pub fn next_event(&mut self) -> GuestEvent {
        match self.host.read_message::<GuestMessage>().unwrap() {
            Some(GuestMessage::Event(e)) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// A guest connection (reads time out after 10 s).
    pub fn connect(&self) -> Client {
        let stream = UnixStream::connect(&self.path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }
}

/// A guest program's connection.
pub(crate) struct Client {
    pub stream: UnixStream,
    pub reader: BufReader<UnixStream>,
}

impl Client {
    /// Writes `text` as is.
    pub fn write(&mut self, text: &str) {
        std::io::Write::write_all(&mut self.stream, text.as_bytes()).unwrap();
    }

    /// The next line, parsed.
    pub fn line(&mut self) -> serde_json::Value {
        let mut text = String::new();
        let n = self.reader.read_line(&mut text).unwrap();
        assert!(n > 0, "the connection ended");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }
}

/// A host event.
pub(crate) fn host_event(kind: &str, data: &str, target: Target) -> HostEvent {
    HostEvent {
        kind: kind.into(),
        data: data.into(),
        id: None,
        reply_to: None,
        target,
    }
}
