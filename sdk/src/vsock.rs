//! The host side of the VM's vsock device: a Unix socket that takes `CONNECT <port>\n`,
//! answers `OK <host port>\n` and from then on carries the stream to that guest port
//! (Firecracker's convention).
//!
//! Unix socket addresses hold at most 107 bytes, and a state directory under a long home
//! directory can exceed that; [`SocketPath`] then reaches the socket through
//! `/proc/self/fd/<dir fd>/<file>`, which the kernel resolves like any path.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::{Error, Result};

/// Longest path used directly as a socket address (sun_path holds 108 bytes with the NUL;
/// some margin for `_<port>` suffixes the device adds).
const MAX_DIRECT_PATH: usize = 100;
/// Longest reply line accepted from the device.
const MAX_REPLY: usize = 64;
/// How long the device may take to answer a CONNECT (the guest accepts the connection
/// first, which under nested emulation can take a while).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A path usable as a Unix socket address for `path`, valid while this value lives.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    _dir: Option<File>,
}

impl SocketPath {
    /// `path` itself when short enough, else a `/proc/self/fd` path through its directory.
    pub fn new(path: &Path) -> io::Result<SocketPath> {
        if path.as_os_str().len() <= MAX_DIRECT_PATH {
            return Ok(SocketPath {
                path: path.to_path_buf(),
                _dir: None,
            });
        }
        let (Some(parent), Some(file)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a socket path", path.display()),
            ));
        };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(parent)?;
        Ok(SocketPath {
            path: Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(file),
            _dir: Some(dir),
        })
    }

    /// The path to bind or connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Parses the device's answer to CONNECT (without the newline): the host-side port.
pub fn parse_connect_reply(line: &str) -> std::result::Result<u32, ConnectReplyError> {
    let mut words = line.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("OK"), Some(port), None) => port
            .parse()
            .map_err(|_| ConnectReplyError::BadPort(line.to_string())),
        _ => Err(ConnectReplyError::Unexpected(line.to_string())),
    }
}

/// A reply to CONNECT that is not `OK <port>`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectReplyError {
    /// `OK` with a port that is not a number.
    #[error("bad port in the vsock device's reply {0:?}")]
    BadPort(String),
    /// Anything else.
    #[error("unexpected reply from the vsock device: {0:?}")]
    Unexpected(String),
}

fn refused(port: u32) -> Error {
    Error::Protocol {
        peer: "the vsock device",
        detail: format!(
            "the guest refused the connection to vsock port {port} (is the guest agent running?)"
        ),
    }
}

fn connect_error(path: &Path, e: io::Error) -> Error {
    Error::io(format!(
        "connecting to the sandbox's vsock socket {} (is the sandbox running?)",
        path.display()
    ))(e)
}

/// Connects to guest port `port` through the device socket at `uds`.
pub async fn connect(uds: &Path, port: u32) -> Result<UnixStream> {
    connect_within(uds, port, HANDSHAKE_TIMEOUT).await
}

/// [`connect`], waiting at most `timeout` for the device's answer.
pub async fn connect_within(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream> {
    let addr = SocketPath::new(uds).map_err(|e| connect_error(uds, e))?;
    let mut stream = UnixStream::connect(addr.path())
        .await
        .map_err(|e| connect_error(uds, e))?;
    let handshake = async {
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await?;
        // Byte by byte: whatever follows the newline belongs to the guest's stream.
        let mut line = Vec::new();
        loop {
            let b = stream.read_u8().await?;
            if b == b'\n' {
                break;
            }
            line.push(b);
            if line.len() > MAX_REPLY {
                break;
            }
        }
        Ok::<_, io::Error>(line)
    };
    let line = match tokio::time::timeout(timeout, handshake).await {
        Err(_) => {
            return Err(Error::Protocol {
                peer: "the vsock device",
                detail: format!(
                    "no answer to CONNECT {port} within {:.1}s",
                    timeout.as_secs_f64()
                ),
            })
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(refused(port)),
        Ok(Err(e)) => return Err(Error::io("talking to the vsock device")(e)),
        Ok(Ok(line)) => line,
    };
    parse_connect_reply(&String::from_utf8_lossy(&line)).map_err(|e| Error::Protocol {
        peer: "the vsock device",
        detail: e.to_string(),
    })?;
    Ok(stream)
}

/// Blocking [`connect`], for the runtime, with `timeout` on each read and write.
pub fn connect_blocking(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<std::os::unix::net::UnixStream> {
    let addr = SocketPath::new(uds).map_err(|e| connect_error(uds, e))?;
    let mut stream =
        std::os::unix::net::UnixStream::connect(addr.path()).map_err(|e| connect_error(uds, e))?;
    let io_err = Error::io("talking to the vsock device");
    let setup = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.write_all(format!("CONNECT {port}\n").as_bytes()));
    setup.map_err(io_err)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(refused(port)),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("talking to the vsock device")(e)),
        }
        if line.len() > MAX_REPLY {
            break;
        }
    }
    parse_connect_reply(&String::from_utf8_lossy(&line)).map_err(|e| Error::Protocol {
        peer: "the vsock device",
        detail: e.to_string(),
    })?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    #[test]
    fn reply_parsing() {
        assert_eq!(parse_connect_reply("OK 1073741824"), Ok(1073741824));
        assert!(parse_connect_reply("OK").is_err());
        assert!(parse_connect_reply("OK x").is_err());
        assert!(parse_connect_reply("ERR 1").is_err());
        assert!(parse_connect_reply("OK 1 2").is_err());
    }

    #[tokio::test]
    async fn handshake_against_a_fake_device() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let device = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = [0u8; 13];
            s.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"CONNECT 1024\n");
            // The reply and the first guest bytes arrive together.
            s.write_all(b"OK 77\nguest").await.unwrap();
            // Then a refused one.
            let (mut s2, _) = listener.accept().await.unwrap();
            let mut got = [0u8; 13];
            s2.read_exact(&mut got).await.unwrap();
        });
        let mut s = connect(&path, 1024).await.unwrap();
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"guest");
        let e = connect(&path, 1024).await.unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
        device.await.unwrap();
    }

    #[test]
    fn long_paths_go_through_proc_fd() {
        let tmp = TempDir::new().unwrap();
        let deep = tmp.path().join("d".repeat(90));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("control.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(SocketPath::new(&path).unwrap().path()).unwrap();
        assert!(path.exists());
        let addr = SocketPath::new(&path).unwrap();
        assert!(addr.path().starts_with("/proc/self/fd"));
        std::os::unix::net::UnixStream::connect(addr.path()).unwrap();
        drop(listener);
    }

    #[test]
    fn blocking_handshake() {
        let tmp = TempDir::new().unwrap();
        let path = tmp.path().join("v.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = [0u8; 13];
            s.read_exact(&mut got).unwrap();
            s.write_all(b"OK 5\n").unwrap();
        });
        connect_blocking(&path, 1024, Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }
}
