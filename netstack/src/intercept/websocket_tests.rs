//! WebSocket through the engine: a hyper client as the guest upgrades to WebSocket and speaks
//! frames to a small WebSocket server on a loopback socket (built on the relay's own codec,
//! as the server side of RFC 6455).

use std::cell::RefCell;

use bytes::BytesMut;
use hyper::header::SEC_WEBSOCKET_EXTENSIONS;

use super::super::websocket::{
    close_frame, encode_frame, opcode, Event, FrameDecoder, FRAGMENT, MAX_MESSAGE,
};
use super::*;

/// What the WebSocket server got: every complete data message, in order.
type Received = Rc<RefCell<Vec<Vec<u8>>>>;

/// The server's offset of a value in the big message it sends (across the relay's fragment
/// boundary).
const BIG_AT: usize = FRAGMENT - 3;
/// The filler after it.
const BIG_LEN: usize = 200 * 1024;

/// Messages of 1 MiB the throughput benchmark sends each way.
const BULK_MIB: usize = 64;

/// The big message with `secret` at [`BIG_AT`] and at its end.
fn big_message(secret: &str) -> Vec<u8> {
    let mut big = vec![b'a'; BIG_AT];
    big.extend_from_slice(secret.as_bytes());
    big.extend(std::iter::repeat_n(b'a', BIG_LEN));
    big.extend_from_slice(secret.as_bytes());
    big
}

/// Answers one message of the guest: `send-value` gets the value in two frames, split inside
/// it; `send-big` the big message in one frame; `send-bad` a frame with RSV1 set (compressed,
/// though nothing was negotiated); anything else a report of what arrived (the value named
/// `<REAL>`, since the engine masks it).
fn answer(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match message {
        b"send-value" => {
            let (a, b) = VALUE.split_at(5);
            encode_frame(&mut out, false, opcode::TEXT, a.as_bytes(), None);
            encode_frame(&mut out, true, opcode::CONTINUATION, b.as_bytes(), None);
        }
        b"send-big" => encode_frame(&mut out, true, opcode::BINARY, &big_message(VALUE), None),
        b"send-bad" => out.extend_from_slice(&[0xC1, 0x00]),
        b"send-bulk" => {
            let mib = vec![b'b'; 1024 * 1024];
            for _ in 0..BULK_MIB {
                encode_frame(&mut out, true, opcode::BINARY, &mib, None);
            }
        }
        m if m.len() <= 1000 => {
            let text = String::from_utf8_lossy(m).replace(VALUE, "<REAL>");
            encode_frame(
                &mut out,
                true,
                opcode::TEXT,
                format!("got:{text}").as_bytes(),
                None,
            );
        }
        m => {
            let real = m
                .windows(VALUE.len())
                .filter(|w| *w == VALUE.as_bytes())
                .count();
            let report = format!("len={} real={real}", m.len());
            encode_frame(&mut out, true, opcode::TEXT, report.as_bytes(), None);
        }
    }
    out
}

/// The server side of one WebSocket connection.
async fn ws_server(io: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, got: Received) {
    let (mut rx, mut tx) = tokio::io::split(io);
    let mut decoder = FrameDecoder::new(true);
    let mut buf = BytesMut::new();
    let mut message = Vec::new();
    loop {
        while let Ok(Some(event)) = decoder.next(&mut buf) {
            let out = match event {
                Event::Control { opcode, payload } => {
                    let reply = if opcode == opcode::PING {
                        opcode::PONG
                    } else {
                        opcode
                    };
                    let mut out = Vec::new();
                    encode_frame(&mut out, true, reply, &payload, None);
                    if opcode == opcode::CLOSE {
                        let _ = tx.write_all(&out).await;
                        let _ = tx.shutdown().await;
                        return;
                    }
                    out
                }
                Event::Data {
                    chunk, message_end, ..
                } => {
                    message.extend_from_slice(&chunk);
                    if !message_end {
                        continue;
                    }
                    got.borrow_mut().push(message.clone());
                    answer(&std::mem::take(&mut message))
                }
            };
            if out.is_empty() || tx.write_all(&out).await.is_err() {
                return;
            }
        }
        buf.reserve(16 * 1024);
        if !matches!(rx.read_buf(&mut buf).await, Ok(1..)) {
            return;
        }
    }
}

/// A WebSocket server on a loopback port; its `101` says in `x-saw-extensions` whether the
/// handshake still offered extensions.
async fn ws_upstream() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Received::default();
    let log = got.clone();
    tokio::task::spawn_local(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let log = log.clone();
                async move {
                    let saw = req.headers().contains_key(SEC_WEBSOCKET_EXTENSIONS);
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::task::spawn_local(async move {
                        if let Ok(io) = upgrade.await {
                            ws_server(TokioIo::new(io), log).await;
                        }
                    });
                    let mut response = Response::new(TestBody::empty());
                    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    let headers = response.headers_mut();
                    headers.insert("connection", "upgrade".parse().unwrap());
                    headers.insert("upgrade", "websocket".parse().unwrap());
                    let saw = if saw { "yes" } else { "no" };
                    headers.insert("x-saw-extensions", saw.parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::task::spawn_local(conn);
        }
    });
    (addr, got)
}

/// The guest's side of an upgraded connection.
struct WsClient {
    io: TokioIo<hyper::upgrade::Upgraded>,
    decoder: FrameDecoder,
    buf: BytesMut,
    /// The `101`'s headers.
    headers: HeaderMap,
}

/// What the guest reads next.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Message(u8, Vec<u8>),
    Control(u8, Vec<u8>),
    /// The connection ended or broke the protocol.
    End,
}

impl WsClient {
    /// Upgrades a fresh guest connection on `host` (with a permessage-deflate offer).
    async fn connect(env: &Env, host: &str, up: SocketAddr) -> WsClient {
        let io = start(
            env,
            false,
            session(Some(host), true),
            connector(env, up, false),
        );
        let (mut sender, conn) = client1::handshake(io).await.unwrap();
        tokio::task::spawn_local(conn.with_upgrades());
        let req = Request::get("/chat")
            .header("host", host)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header(SEC_WEBSOCKET_EXTENSIONS, "permessage-deflate")
            .body(TestBody::empty())
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let headers = response.headers().clone();
        WsClient {
            io: TokioIo::new(hyper::upgrade::on(response).await.unwrap()),
            decoder: FrameDecoder::new(false),
            buf: BytesMut::new(),
            headers,
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io
            .write_all(bytes)
            .await
            .expect("the relay takes the bytes");
    }

    async fn send(&mut self, fin: bool, op: u8, payload: &[u8]) {
        let mut out = Vec::new();
        encode_frame(&mut out, fin, op, payload, Some([0x37, 0xfa, 0x21, 0x3d]));
        self.send_raw(&out).await;
    }

    /// The next whole message or control frame (within five seconds).
    async fn recv(&mut self) -> Got {
        let read = async {
            let mut message = Vec::new();
            loop {
                match self.decoder.next(&mut self.buf) {
                    Ok(Some(Event::Control { opcode, payload })) => {
                        return Got::Control(opcode, payload)
                    }
                    Ok(Some(Event::Data {
                        opcode,
                        chunk,
                        message_end,
                        ..
                    })) => {
                        message.extend_from_slice(&chunk);
                        if message_end {
                            return Got::Message(opcode, message);
                        }
                    }
                    Ok(None) => {
                        self.buf.reserve(16 * 1024);
                        if !matches!(self.io.read_buf(&mut self.buf).await, Ok(1..)) {
                            return Got::End;
                        }
                    }
                    Err(_) => return Got::End,
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), read)
            .await
            .expect("the relay answered in time")
    }

    /// Expects a Close with `code` and then the end of the connection.
    async fn expect_close(&mut self, code: u16) {
        match self.recv().await {
            Got::Control(opcode::CLOSE, payload) => {
                assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
            }
            other => panic!("expected a close {code}, got {other:?}"),
        }
        assert_eq!(self.recv().await, Got::End);
    }
}

fn text(s: &str) -> Got {
    Got::Message(opcode::TEXT, s.as_bytes().to_vec())
}

#[test]
fn websocket_echoed_values_come_back_as_placeholders() {
    local(async {
        let env = env(allow_all(), vec![secret(Inject::default())]);
        let (up, _) = ws_upstream().await;
        let mut ws = WsClient::connect(&env, HOST, up).await;
        // No extension offer reaches the upstream: it could compress what must be scanned.
        assert_eq!(ws.headers.get("x-saw-extensions").unwrap(), "no");
        ws.send(true, opcode::TEXT, b"send-value").await;
        assert_eq!(ws.recv().await, text(PH));
        ws.send(true, opcode::TEXT, b"send-big").await;
        // Compared without printing 200 KiB on failure.
        let big = ws.recv().await;
        let Got::Message(opcode::BINARY, big) = big else {
            panic!("not a binary message");
        };
        let expected = big_message(PH);
        let differs = big.iter().zip(&expected).position(|(a, b)| a != b);
        assert!(
            big.len() == expected.len() && differs.is_none(),
            "the big message differs: {} bytes, {} expected, first difference at {differs:?}",
            big.len(),
            expected.len()
        );
        ws.send(true, opcode::PING, b"still there?").await;
        assert_eq!(
            ws.recv().await,
            Got::Control(opcode::PONG, b"still there?".to_vec())
        );
        ws.send(true, opcode::CLOSE, &1000u16.to_be_bytes()).await;
        assert_eq!(
            ws.recv().await,
            Got::Control(opcode::CLOSE, 1000u16.to_be_bytes().to_vec())
        );
        assert_eq!(ws.recv().await, Got::End);
        assert!(blocked_events(&env).is_empty());
    });
}

#[test]
fn websocket_placeholders_to_unbound_hosts_close_with_1008() {
    local(async {
        let env = env(allow_all(), vec![secret(Inject::default())]);
        let (up, got) = ws_upstream().await;
        let other = "evil.test";
        // In one text frame.
        let mut ws = WsClient::connect(&env, other, up).await;
        ws.send(true, opcode::TEXT, b"hello").await;
        assert_eq!(ws.recv().await, text("got:hello"));
        ws.send(true, opcode::TEXT, format!("key={PH}").as_bytes())
            .await;
        ws.expect_close(1008).await;
        // Split across two frames of one message.
        let mut ws = WsClient::connect(&env, other, up).await;
        let (a, b) = PH.split_at(10);
        ws.send(false, opcode::TEXT, format!("key={a}").as_bytes())
            .await;
        ws.send(true, opcode::CONTINUATION, b.as_bytes()).await;
        ws.expect_close(1008).await;
        // Percent-encoded in a ping.
        let mut ws = WsClient::connect(&env, other, up).await;
        let partial = &PH[..PH.len() - 1];
        let percent: String = partial.bytes().map(|b| format!("%{b:02x}")).collect();
        ws.send(true, opcode::PING, percent.as_bytes()).await;
        ws.send(true, opcode::TEXT, b"after").await;
        // All but the last byte of a placeholder, percent-encoded: both pass.
        assert_eq!(
            ws.recv().await,
            Got::Control(opcode::PONG, percent.as_bytes().to_vec())
        );
        assert_eq!(ws.recv().await, text("got:after"));
        ws.send(true, opcode::PING, PH.as_bytes()).await;
        ws.expect_close(1008).await;

        assert_eq!(*got.borrow(), vec![b"hello".to_vec(), b"after".to_vec()]);
        let events = blocked_events(&env);
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(events.iter().all(|e| matches!(e, NetEvent::SecretBlocked { secret, host } if secret == "API_KEY" && host == other)));
    });
}

#[test]
fn websocket_substitution_for_bound_hosts_with_body_opt_in() {
    local(async {
        let body = Inject {
            body: true,
            ..Inject::default()
        };
        let env = env(allow_all(), vec![secret(body)]);
        let (up, _) = ws_upstream().await;
        let mut ws = WsClient::connect(&env, HOST, up).await;
        ws.send(true, opcode::TEXT, format!("k={PH};").as_bytes())
            .await;
        assert_eq!(ws.recv().await, text("got:k=<REAL>;"));
        // Split across frames, and in a message larger than a relay fragment, across the
        // fragment boundary.
        let (a, b) = PH.split_at(7);
        ws.send(false, opcode::TEXT, format!("k={a}").as_bytes())
            .await;
        ws.send(true, opcode::CONTINUATION, b.as_bytes()).await;
        assert_eq!(ws.recv().await, text("got:k=<REAL>"));
        let mut big = vec![b'x'; 100_000];
        big[FRAGMENT - 5..FRAGMENT - 5 + PH.len()].copy_from_slice(PH.as_bytes());
        ws.send(true, opcode::BINARY, &big).await;
        let len = big.len() - PH.len() + VALUE.len();
        assert_eq!(ws.recv().await, text(&format!("len={len} real=1")));

        // Without the body opt-in the placeholder goes as it is.
        let env = super::env(allow_all(), vec![secret(Inject::default())]);
        let mut ws = WsClient::connect(&env, HOST, up).await;
        ws.send(true, opcode::TEXT, PH.as_bytes()).await;
        assert_eq!(ws.recv().await, text(&format!("got:{PH}")));
        assert!(blocked_events(&env).is_empty());
    });
}

#[test]
fn websocket_protocol_errors_close_the_tunnel() {
    local(async {
        let env = env(allow_all(), vec![secret(Inject::default())]);
        let (up, got) = ws_upstream().await;
        // An unmasked frame from the guest.
        let mut ws = WsClient::connect(&env, HOST, up).await;
        let mut frame = Vec::new();
        encode_frame(&mut frame, true, opcode::TEXT, b"plain", None);
        ws.send_raw(&frame).await;
        ws.expect_close(1002).await;
        // A frame with RSV1 set from the upstream.
        let mut ws = WsClient::connect(&env, HOST, up).await;
        ws.send(true, opcode::TEXT, b"send-bad").await;
        ws.expect_close(1002).await;
        // A frame over the size limit is refused on its header.
        let mut ws = WsClient::connect(&env, HOST, up).await;
        let mut head = vec![0x82, 0xff];
        head.extend_from_slice(&(MAX_MESSAGE + 1).to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        ws.send_raw(&head).await;
        ws.expect_close(1009).await;
        // As is a message whose frames add up to more.
        let mut ws = WsClient::connect(&env, HOST, up).await;
        let chunk = vec![0u8; 1024 * 1024];
        for i in 0..16 {
            let op = if i == 0 {
                opcode::BINARY
            } else {
                opcode::CONTINUATION
            };
            ws.send(false, op, &chunk).await;
        }
        ws.send(true, opcode::CONTINUATION, b"!").await;
        ws.expect_close(1009).await;
        assert_eq!(*got.borrow(), vec![b"send-bad".to_vec()]);
        // The guest's own close frame, as a frame of the engine's, parses.
        assert_eq!(close_frame(1002, "x", None)[..4], [0x88, 3, 0x03, 0xea]);
    });
}

#[test]
fn websocket_without_secrets_is_copied_as_is() {
    local(async {
        let env = env(allow_all(), vec![]);
        let (up, _) = ws_upstream().await;
        let mut ws = WsClient::connect(&env, HOST, up).await;
        assert_eq!(ws.headers.get("x-saw-extensions").unwrap(), "yes");
        ws.send(true, opcode::TEXT, b"send-value").await;
        assert_eq!(ws.recv().await, text(VALUE));
        // Bytes the relay would refuse pass untouched: nothing is parsed.
        ws.send(true, opcode::TEXT, b"send-bad").await;
        let mut raw = [0u8; 2];
        ws.io.read_exact(&mut raw).await.unwrap();
        assert_eq!(raw, [0xC1, 0x00]);
    });
}

#[test]
fn non_websocket_upgrades_are_refused() {
    local(async {
        for secrets in [vec![], vec![secret(Inject::default())]] {
            let env = env(allow_all(), secrets);
            let (up, _) = ws_upstream().await;
            let mut guest = guest_h1(&env, session(Some(HOST), true), up, false).await;
            for protocol in ["h2c", "websocket, h2c", "tls/1.2"] {
                let req = get("/")
                    .header("connection", "Upgrade, HTTP2-Settings")
                    .header("upgrade", protocol)
                    .header("http2-settings", "AAMAAABkAAQAAP__")
                    .body(TestBody::empty())
                    .unwrap();
                let (status, body) = h1(&mut guest, req).await;
                assert_eq!(status, 403, "{protocol}: {body}");
                assert_eq!(env.connects.get(), 0, "{protocol} went upstream");
            }
        }
    });
}

/// `cargo test --release -p msbvm-netstack --lib websocket::bench -- --ignored --nocapture`
#[test]
#[ignore = "benchmark"]
fn bench_websocket_throughput() {
    local(async {
        let (up, _) = ws_upstream().await;
        for secrets in [vec![], vec![secret(Inject::default())]] {
            let label = if secrets.is_empty() {
                "copied"
            } else {
                "relayed"
            };
            let env = env(allow_all(), secrets);
            let mut ws = WsClient::connect(&env, HOST, up).await;
            let mib = vec![b'g'; 1024 * 1024];
            let start = std::time::Instant::now();
            for _ in 0..BULK_MIB {
                ws.send(true, opcode::BINARY, &mib).await;
                assert_eq!(ws.recv().await, text("len=1048576 real=0"));
            }
            let up_rate = BULK_MIB as f64 / start.elapsed().as_secs_f64();
            let start = std::time::Instant::now();
            ws.send(true, opcode::TEXT, b"send-bulk").await;
            for _ in 0..BULK_MIB {
                assert!(
                    matches!(ws.recv().await, Got::Message(opcode::BINARY, m) if m.len() == 1024 * 1024)
                );
            }
            let down_rate = BULK_MIB as f64 / start.elapsed().as_secs_f64();
            println!("websocket {label}: guest->upstream {up_rate:.0} MiB/s, upstream->guest {down_rate:.0} MiB/s");
        }
    });
}
