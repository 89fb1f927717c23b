//! Asking the upstream resolvers: one question over UDP, again over TCP when
//! the answer is truncated, with timeouts and a second round on failure.
//!
//! Written against plain sockets rather than hickory-resolver's full
//! resolver because we need the upstream's raw answer (every record, TTLs
//! and rcode) to filter and relay, not a resolved address list.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, timeout_at, Instant};

/// How long one upstream gets to answer over UDP.
const UDP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a TCP retry may take, connection included.
const TCP_TIMEOUT: Duration = Duration::from_secs(4);

/// Rounds over the server list before giving up.
const ROUNDS: usize = 2;

/// The EDNS payload size we offer upstream (the DNS flag day 2020 value,
/// which avoids IP fragmentation).
pub(super) const EDNS_PAYLOAD: u16 = 1232;

/// Where the host's resolvers are listed.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// The servers `/etc/resolv.conf` names, on port 53.
pub(super) fn system_servers() -> io::Result<Vec<SocketAddr>> {
    let text = std::fs::read(RESOLV_CONF)?;
    let config = resolv_conf::Config::parse(&text)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{RESOLV_CONF}: {e}")))?;
    let servers: Vec<SocketAddr> = config
        .nameservers
        .into_iter()
        .map(|ip| SocketAddr::new(ip.into(), 53))
        .collect();
    if servers.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{RESOLV_CONF} names no nameserver"),
        ));
    }
    Ok(servers)
}

/// Asks `servers` (in order, [`ROUNDS`] times) for `question` and returns
/// the first answer that belongs to our query.
pub(super) async fn resolve(servers: &[SocketAddr], question: &Query) -> Result<Message, String> {
    let mut query = Message::query();
    query.add_query(question.clone());
    query.metadata.recursion_desired = true;
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    query.set_edns(edns);
    let bytes = query.to_vec().map_err(|e| format!("encoding query: {e}"))?;

    let mut last_error = String::from("no upstream server");
    for _ in 0..ROUNDS {
        for &server in servers {
            match ask(server, &bytes, &query).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last_error = format!("{server}: {e}"),
            }
        }
    }
    Err(last_error)
}

async fn ask(server: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message, String> {
    let answer = ask_udp(server, bytes, query).await?;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    timeout(TCP_TIMEOUT, ask_tcp(server, bytes, query))
        .await
        .map_err(|_| "TCP timeout".to_owned())?
}

async fn ask_udp(server: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message, String> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    // A connected socket drops datagrams from anyone but the server.
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(bytes).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + UDP_TIMEOUT;
    let mut buf = vec![0; 65535];
    loop {
        let len = timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.to_string())?;
        // Late answers to an earlier query and garbage are skipped, not
        // taken as the answer.
        if let Some(answer) = matching_answer(&buf[..len], query) {
            return Ok(answer);
        }
    }
}

async fn ask_tcp(server: SocketAddr, bytes: &[u8], query: &Message) -> Result<Message, String> {
    let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_owned())?;
    let mut stream = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.map_err(|e| e.to_string())?;
    let answer_len = stream.read_u16().await.map_err(|e| e.to_string())?;
    let mut buf = vec![0; usize::from(answer_len)];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    matching_answer(&buf, query).ok_or_else(|| "answer does not match the query".to_owned())
}

/// Parses `bytes` and returns it if it answers `query` (same id, same
/// question).
fn matching_answer(bytes: &[u8], query: &Message) -> Option<Message> {
    let answer = Message::from_vec(bytes).ok()?;
    let ours = answer.metadata.id == query.metadata.id
        && answer.metadata.message_type == MessageType::Response
        && answer.queries == query.queries;
    ours.then_some(answer)
}
