//! The stack end to end: a smoltcp fake guest on one end of the frame socketpair, real host
//! sockets on loopback on the other.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{host_allowed, rule, test_config, Harness, GATEWAY, GUEST_MAC, HOST_ALIAS};
use msbvm_netstack::policy::Policy;
use msbvm_netstack::{NetConfig, NetEvent, PublishedPort, Transport};
use smoltcp::socket::tcp::State;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpProtocol, Ipv4Packet,
};

/// An echo server on the host's loopback; returns its port.
/// A UDP server on the host's loopback that sends every datagram back; returns its port.
fn udp_echo_server() -> u16 {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    });
    port
}

fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn arp_request_for_the_gateway_is_answered() {
    let mut h = Harness::start(test_config(), Policy::default());
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: Ipv4Addr::new(10, 0, 2, 15),
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GATEWAY,
    };
    let mut frame = vec![0u8; 14 + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut eth);
    repr.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    h.guest.capture = true;
    h.guest.dev.sink.send_raw(&frame);
    let reply = h.guest.run_until(5, "arp reply", |g| g.captured.pop());
    let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
    assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
    match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap() {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            ..
        } => {
            assert_eq!(operation, ArpOperation::Reply);
            assert_eq!(
                source_hardware_addr,
                EthernetAddress(msbvm_netstack::config::GATEWAY_MAC)
            );
            assert_eq!(source_protocol_addr, GATEWAY);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tcp_echo_both_ways_then_fin_closes_and_reports_bytes() {
    let port = echo_server();
    let mut h = Harness::start(test_config(), host_allowed());
    let s = h.guest.tcp_established(port, 40001);
    let data = pattern(300_000);
    h.guest.tcp_send_all(s, &data);
    let back = h.guest.tcp_recv_exact(s, data.len());
    assert!(back == data, "echoed bytes differ");
    h.guest.tcp(s).close();
    // The echo server sees EOF, closes its side; our FIN comes back.
    h.guest.run_until(10, "closed", |g| {
        matches!(g.tcp(s).state(), State::TimeWait | State::Closed).then_some(())
    });
    let log = h.events.clone();
    let events = h.guest.run_until(5, "flow closed event", |_| {
        let ev = log.lock().unwrap().clone();
        ev.iter()
            .any(|e| matches!(e, NetEvent::FlowClosed { .. }))
            .then_some(ev)
    });
    assert!(events.iter().any(|e| matches!(
        e,
        NetEvent::FlowAllowed {
            transport: Transport::Tcp,
            ..
        }
    )));
    let closed = events.iter().find_map(|e| match e {
        NetEvent::FlowClosed {
            bytes_up,
            bytes_down,
            ..
        } => Some((*bytes_up, *bytes_down)),
        _ => None,
    });
    assert_eq!(closed, Some((300_000, 300_000)));
    assert_eq!(h.handle.stats().tcp_flows_open, 0);
}

#[test]
fn a_hosted_device_carries_a_flow_on_the_stack_thread_until_it_is_done() {
    let port = echo_server();
    let (mut h, relay) = Harness::start_hosted(test_config(), host_allowed());
    let s = h.guest.tcp_established(port, 40011);
    let data = pattern(200_000);
    h.guest.tcp_send_all(s, &data);
    assert!(
        h.guest.tcp_recv_exact(s, data.len()) == data,
        "echoed bytes differ"
    );
    assert!(relay.runs.load(Ordering::SeqCst) > 0);
    assert!(!relay.dropped.load(Ordering::SeqCst));
    // Its run says it is done: the stack drops it.
    relay.stop.store(true, Ordering::SeqCst);
    h.guest.dev.sink.send_raw(&[0u8; 60]);
    h.guest.run_until(5, "the relay dropped", |_| {
        relay.dropped.load(Ordering::SeqCst).then_some(())
    });
}

#[test]
fn flows_after_flows_reuse_closed_sockets_and_see_only_their_own_bytes() {
    let port = echo_server();
    let mut h = Harness::start(test_config(), host_allowed());
    // A flow the guest aborts with bytes still in flight both ways: its socket is kept
    // for the next flows with whatever it held.
    let s = h.guest.tcp_established(port, 40020);
    h.guest.tcp_send_all(s, &pattern(150_000));
    h.guest.tcp(s).abort();
    h.guest.run_for(Duration::from_millis(200));
    for (i, local_port) in (40021..40027).enumerate() {
        let s = h.guest.tcp_established(port, local_port);
        let data: Vec<u8> = pattern(50_000 + i * 1000)
            .into_iter()
            .map(|b| b.wrapping_add(i as u8 + 1))
            .collect();
        h.guest.tcp_send_all(s, &data);
        assert!(
            h.guest.tcp_recv_exact(s, data.len()) == data,
            "flow {i} got bytes that are not its own"
        );
        h.guest.tcp(s).close();
        h.guest.run_until(10, "closed", |g| {
            matches!(g.tcp(s).state(), State::TimeWait | State::Closed).then_some(())
        });
    }
    h.guest.run_until(5, "no flow open", |_| {
        (h.handle.stats().tcp_flows_open == 0).then_some(())
    });
}

#[test]
fn denied_destination_gets_an_immediate_rst() {
    let port = echo_server();
    // The default policy denies the host alias.
    let mut h = Harness::start(test_config(), Policy::default());
    let s = h.guest.tcp_connect_host(port, 40002);
    h.guest.run_until(5, "reset", |g| {
        (g.tcp(s).state() == State::Closed).then_some(())
    });
    assert!(h.events().iter().any(|e| matches!(
        e,
        NetEvent::FlowDenied {
            transport: Transport::Tcp,
            ..
        }
    )));
    assert_eq!(h.handle.stats().flows_denied, 1);
}

#[test]
fn refused_host_connect_gets_an_rst() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut h = Harness::start(test_config(), host_allowed());
    let s = h.guest.tcp_connect_host(port, 40003);
    h.guest.run_until(5, "reset", |g| {
        (g.tcp(s).state() == State::Closed).then_some(())
    });
    let log = h.events.clone();
    h.guest.run_until(5, "failure event", |_| {
        log.lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, NetEvent::FlowFailed { .. }))
            .then_some(())
    });
}

#[test]
fn data_survives_frame_loss_both_ways() {
    let port = echo_server();
    let mut h = Harness::start(test_config(), host_allowed());
    let s = h.guest.tcp_established(port, 40004);
    let out = Arc::new(AtomicUsize::new(0));
    let inn = Arc::new(AtomicUsize::new(0));
    let (o, i) = (out.clone(), inn.clone());
    h.guest.dev.sink.loss_out = Some(Box::new(move |_| {
        o.fetch_add(1, Ordering::Relaxed) % 23 == 3
    }));
    h.guest.loss_in = Some(Box::new(move |_| {
        i.fetch_add(1, Ordering::Relaxed) % 19 == 2
    }));
    let data = pattern(120_000);
    h.guest.tcp_send_all(s, &data);
    let back = h.guest.tcp_recv_exact(s, data.len());
    assert!(back == data, "echoed bytes differ after loss");
    assert!(
        out.load(Ordering::Relaxed) > 46 && inn.load(Ordering::Relaxed) > 38,
        "too few frames to have lost any"
    );
}

/// With a sandbox's settings (checksum and segment offload) a host-to-guest stream reaches
/// the guest in merged frames larger than the MTU; cut again by virtio-net's code for a
/// driver without TSO (the guest's smoltcp verifies every checksum), they carry the stream
/// intact, lost merged frames included.
#[test]
fn merged_segments_carry_a_download_intact() {
    use msbvm_virtio::net::gso;
    const SIZE: usize = 4 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = stream.write_all(&pattern(SIZE));
    });
    let config = NetConfig {
        checksum_offload: true,
        segment_offload: true,
        ..test_config()
    };
    let mut h = Harness::start(config, host_allowed());
    let (largest, merged) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (l, m) = (largest.clone(), merged.clone());
    h.guest.rx_map = Some(Box::new(move |frame, rx| {
        l.fetch_max(frame.len(), Ordering::Relaxed);
        let Some(layout) = gso::tcp4(&frame) else {
            return rx.push_back(frame);
        };
        if frame.len() > 1514 {
            m.fetch_add(1, Ordering::Relaxed);
        }
        gso::split(&frame, &layout, gso::segment_size(1500, &layout), true, rx);
    }));
    let s = h.guest.tcp_established(port, 40010);
    let seen = Arc::new(AtomicUsize::new(0));
    let k = seen.clone();
    h.guest.loss_in = Some(Box::new(move |f| {
        f.len() > 1514 && k.fetch_add(1, Ordering::Relaxed) % 17 == 5
    }));
    let got = h.guest.tcp_recv_exact(s, SIZE);
    assert!(got == pattern(SIZE), "downloaded bytes differ");
    assert!(
        merged.load(Ordering::Relaxed) > 0,
        "no frame over the MTU came"
    );
    assert!(largest.load(Ordering::Relaxed) <= 14 + 65535);
}

#[test]
fn a_guest_that_stops_reading_blocks_the_host_writer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let chunk = vec![0x5a; 65536];
        while stream.write_all(&chunk).is_ok() {
            w.fetch_add(chunk.len(), Ordering::Relaxed);
            if w.load(Ordering::Relaxed) >= 64 << 20 {
                break;
            }
        }
    });
    let mut h = Harness::start(test_config(), host_allowed());
    let s = h.guest.tcp_established(port, 40005);
    h.guest.run_for(Duration::from_secs(2));
    let stalled = written.load(Ordering::Relaxed);
    // Guest window (256 KiB) + stack buffer (256 KiB) + kernel socket buffers: a few MiB at most.
    assert!(
        stalled < 16 << 20,
        "host wrote {stalled} bytes into a guest that does not read"
    );
    h.guest.run_for(Duration::from_millis(500));
    assert!(
        written.load(Ordering::Relaxed) - stalled < 1 << 20,
        "writer kept going"
    );
    // Reading resumes the flow.
    let got = h.guest.tcp_recv_exact(s, stalled + (1 << 20));
    assert!(got.iter().all(|&b| b == 0x5a));
}

#[test]
fn malformed_frames_are_ignored_without_harm() {
    let port = echo_server();
    let mut h = Harness::start(test_config(), host_allowed());
    let mut junk: Vec<Vec<u8>> = vec![vec![], vec![0; 5], vec![0xff; 14], vec![0xab; 1514]];
    // IPv4 frames with a bad IHL, a total length past the frame, and a truncated TCP header.
    for (ihl_byte, total, cut) in [
        (0x41u8, 40u16, 0usize),
        (0x45, 9000, 0),
        (0x45, 40, 30),
        (0x4f, 40, 0),
    ] {
        let mut f = vec![0u8; 14 + 40];
        f[..6].copy_from_slice(&msbvm_netstack::config::GATEWAY_MAC);
        f[6..12].copy_from_slice(&GUEST_MAC);
        f[12] = 0x08;
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(total);
        ip.set_next_header(IpProtocol::Tcp);
        ip.set_src_addr(Ipv4Addr::new(10, 0, 2, 15));
        ip.set_dst_addr(HOST_ALIAS);
        ip.fill_checksum();
        f[14] = ihl_byte;
        f.truncate(f.len() - cut);
        junk.push(f);
    }
    for f in &junk {
        if !f.is_empty() {
            h.guest.dev.sink.send_raw(f);
        }
    }
    h.guest.run_for(Duration::from_millis(200));
    assert!(h.handle.stats().rx_dropped >= 6, "{:?}", h.handle.stats());
    // Still serving.
    let s = h.guest.tcp_established(port, 40006);
    h.guest.tcp_send_all(s, b"ping");
    assert_eq!(h.guest.tcp_recv_exact(s, 4), b"ping");
}

#[test]
fn udp_echo_through_the_stack() {
    let port = udp_echo_server();
    let mut h = Harness::start(test_config(), host_allowed());
    let u = h.guest.udp_bind(5555);
    let dst = smoltcp::wire::IpEndpoint::new(HOST_ALIAS.into(), port);
    h.guest.udp(u).send_slice(b"hello udp", dst).unwrap();
    let got = h.guest.run_until(5, "udp reply", |g| {
        g.udp(u)
            .recv()
            .ok()
            .map(|(d, meta)| (d.to_vec(), meta.endpoint))
    });
    assert_eq!(got.0, b"hello udp");
    assert_eq!(got.1, dst);
    assert_eq!(h.handle.stats().udp_flows_open, 1);
}

#[test]
fn denied_udp_gets_icmp_port_unreachable() {
    let mut h = Harness::start(test_config(), Policy::default());
    let u = h.guest.udp_bind(5556);
    h.guest
        .udp(u)
        .send_slice(
            b"x",
            smoltcp::wire::IpEndpoint::new(HOST_ALIAS.into(), 9999),
        )
        .unwrap();
    h.guest.run_until(5, "udp sent", |g| {
        g.udp(u).send_queue().eq(&0).then_some(())
    });
    h.guest.capture = true;
    let frame = h.guest.run_until(5, "icmp", |g| g.captured.pop());
    let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::Icmp);
    assert_eq!(ip.payload()[0], 3, "destination unreachable");
    assert_eq!(ip.payload()[1], 3, "port unreachable");
}

#[test]
fn connections_over_the_cap_are_reset_and_reported() {
    let port = echo_server();
    let config = NetConfig {
        max_tcp_flows: 2,
        ..test_config()
    };
    let mut h = Harness::start(config, host_allowed());
    let a = h.guest.tcp_connect_host(port, 40010);
    let b = h.guest.tcp_connect_host(port, 40011);
    h.guest.run_until(5, "two established", |g| {
        (g.tcp(a).may_send() && g.tcp(b).may_send()).then_some(())
    });
    let c = h.guest.tcp_connect_host(port, 40012);
    h.guest.run_until(5, "third reset", |g| {
        (g.tcp(c).state() == State::Closed).then_some(())
    });
    assert!(h
        .events()
        .iter()
        .any(|e| matches!(e, NetEvent::ConnectionCapReached { limit: 2, .. })));
    // The others keep working.
    h.guest.tcp_send_all(a, b"still here");
    assert_eq!(h.guest.tcp_recv_exact(a, 10), b"still here");
}

#[test]
fn published_port_reaches_a_guest_listener() {
    let mut h = Harness::start(test_config(), Policy::default());
    let mut listen = smoltcp::socket::tcp::Socket::new(
        smoltcp::socket::tcp::SocketBuffer::new(vec![0; 65536]),
        smoltcp::socket::tcp::SocketBuffer::new(vec![0; 65536]),
    );
    listen.listen(8080).unwrap();
    let s = h.guest.sockets.add(listen);
    let addr = h.handle.publish(PublishedPort::tcp(0, 8080)).unwrap();
    let client = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"from host").unwrap();
        let mut buf = [0u8; 10];
        c.read_exact(&mut buf).unwrap();
        buf
    });
    let got = h.guest.tcp_recv_exact(s, 9);
    assert_eq!(got, b"from host");
    assert_eq!(
        h.guest.tcp(s).remote_endpoint().unwrap().addr,
        smoltcp::wire::IpAddress::Ipv4(GATEWAY)
    );
    h.guest.tcp_send_all(s, b"from guest");
    h.guest
        .run_until(5, "client done", |_| client.is_finished().then_some(()));
    assert_eq!(&client.join().unwrap(), b"from guest");
    assert!(h.events().iter().any(|e| matches!(
        e,
        NetEvent::IngressAccepted {
            guest_port: 8080,
            ..
        }
    )));
}

/// A real HTTP/1.1 and prior-knowledge HTTP/2 server (hyper) on the host's loopback that answers every request `200` with
/// the body `METHOD TARGET\n` followed by the request body; returns its port and a count of
/// the requests that reached it.
fn http_echo_server() -> (u16, Arc<AtomicUsize>) {
    use http_body_util::{BodyExt, Full};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let line = format!("{} {}\n", req.method(), req.uri());
                            let body = req.into_body().collect().await?.to_bytes();
                            let mut out = line.into_bytes();
                            out.extend_from_slice(&body);
                            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(out),
                            )))
                        }
                    },
                );
                tokio::spawn(async move {
                    // HTTP/2 with prior knowledge when the client opens with its preface.
                    let mut start = [0u8; 3];
                    let h2 = matches!(stream.peek(&mut start).await, Ok(3) if &start == b"PRI");
                    let io = hyper_util::rt::TokioIo::new(stream);
                    if h2 {
                        let exec = hyper_util::rt::TokioExecutor::new();
                        let _ = hyper::server::conn::http2::Builder::new(exec)
                            .serve_connection(io, service)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    }
                });
            }
        });
    });
    (port, seen)
}

/// One HTTP/1.1 response read from the guest socket `s`: (status, body). Bodies are framed by
/// `Content-Length` (the engine's answers and the echo server's always have one).
fn read_response(h: &mut Harness, s: smoltcp::iface::SocketHandle) -> (u16, String) {
    let mut got: Vec<u8> = Vec::new();
    h.guest.run_until(10, "a complete response", |g| {
        let mut buf = [0u8; 1];
        // Byte by byte: whatever follows this response stays in the socket for the next read.
        while g.tcp(s).can_recv() {
            g.tcp(s).recv_slice(&mut buf).unwrap();
            got.push(buf[0]);
            let text = String::from_utf8_lossy(&got);
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .expect("a Content-Length");
                if got.len() == end + 4 + len {
                    return Some(());
                }
            }
        }
        None
    });
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

fn http_paths(h: &Harness) -> Vec<(String, bool)> {
    h.events()
        .iter()
        .filter_map(|e| match e {
            NetEvent::HttpRequest { path, allowed, .. } => Some((path.clone(), *allowed)),
            _ => None,
        })
        .collect()
}

fn secret_denied_host_allowed(port: u16) -> Policy {
    Policy::builder()
        .deny(rule(&format!("http://host.msbvm.internal:{port}/secret/")))
        .allow(rule("host"))
}

/// A denied request gets its 403 from the stack, never reaches the host, and the connection
/// goes on: the next request on it is served.
#[test]
fn a_denied_request_gets_403_and_the_connection_goes_on() {
    let (port, seen) = http_echo_server();
    let mut h = Harness::start(test_config(), secret_denied_host_allowed(port));
    let s = h.guest.tcp_connect_host(port, 40020);
    h.guest.tcp_send_all(
        s,
        b"GET /secret/x HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n",
    );
    let (status, body) = read_response(&mut h, s);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("Blocked by the sandbox network policy"),
        "{body}"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the denied request reached the host"
    );
    h.guest.tcp_send_all(
        s,
        b"GET /public HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n",
    );
    assert_eq!(read_response(&mut h, s), (200, "GET /public\n".into()));
    assert_eq!(
        http_paths(&h),
        [
            ("/secret/x".to_string(), false),
            ("/public".to_string(), true)
        ]
    );
}

/// Before, only the first request head of a connection was inspected: a second request on a
/// keep-alive connection reached any path. Now each is checked, disguised paths included, and
/// a request after a denied one is still served.
#[test]
fn every_request_on_a_keep_alive_connection_is_checked() {
    let (port, seen) = http_echo_server();
    let mut h = Harness::start(test_config(), secret_denied_host_allowed(port));
    let s = h.guest.tcp_connect_host(port, 40030);
    let requests: [(&[u8], u16, &str); 4] = [
        (b"GET /public HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n", 200, "GET /public\n"),
        (
            b"POST /upload HTTP/1.1\r\nHost: host.msbvm.internal\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            200,
            "POST /upload\nhello",
        ),
        (b"GET /secret;x/../secret/key HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n", 403, ""),
        (b"GET /after HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n", 200, "GET /after\n"),
    ];
    for (request, want_status, want_body) in requests {
        h.guest.tcp_send_all(s, request);
        let (status, body) = read_response(&mut h, s);
        assert_eq!(status, want_status, "{body}");
        if status == 200 {
            assert_eq!(body, want_body);
        }
    }
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(
        http_paths(&h),
        [
            ("/public".to_string(), true),
            ("/upload".to_string(), true),
            ("/secret;x/../secret/key".to_string(), false),
            ("/after".to_string(), true),
        ]
    );
}

/// Pipelined: the answers come in request order; the denied one never reaches the host.
#[test]
fn a_denied_pipelined_request_is_answered_in_order() {
    let (port, seen) = http_echo_server();
    let mut h = Harness::start(test_config(), secret_denied_host_allowed(port));
    let allowed = b"GET /a HTTP/1.1\r\nHost: host.msbvm.internal\r\nContent-Length: 3\r\n\r\nabc";
    let denied = b"get //secret/ HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n";
    let last = b"GET /b HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n";
    let s = h.guest.tcp_connect_host(port, 40031);
    h.guest
        .tcp_send_all(s, &[&allowed[..], &denied[..], &last[..]].concat());
    assert_eq!(read_response(&mut h, s), (200, "GET /a\nabc".into()));
    assert_eq!(read_response(&mut h, s).0, 403);
    assert_eq!(read_response(&mut h, s), (200, "GET /b\n".into()));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

/// Framing the host could read differently from the stack is refused before anything goes up,
/// and so are tunnels the stack could not inspect; a request with both `Content-Length` and
/// `Transfer-Encoding` is read by the latter, goes up without the former, and ends the
/// connection, so nothing can be smuggled behind it (request smuggling).
#[test]
fn ambiguous_framing_and_tunnels_never_reach_the_host() {
    let (port, seen) = http_echo_server();
    let mut h = Harness::start(test_config(), host_allowed_inspected(port));
    let cases: [(&str, u16, usize); 4] = [
        (
            "POST / HTTP/1.1\r\nHost: host.msbvm.internal\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n",
            200,
            1,
        ),
        (
            "POST / HTTP/1.1\r\nHost: host.msbvm.internal\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            400,
            0,
        ),
        (
            "POST / HTTP/1.1\r\nHost: host.msbvm.internal\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            400,
            0,
        ),
        ("CONNECT a.b:443 HTTP/1.1\r\nHost: a.b\r\n\r\n", 403, 0),
    ];
    for (i, (request, want, reached)) in cases.iter().enumerate() {
        let before = seen.load(Ordering::SeqCst);
        let s = h.guest.tcp_connect_host(port, 40060 + i as u16);
        h.guest.tcp_send_all(s, request.as_bytes());
        let (status, body) = read_response(&mut h, s);
        assert_eq!(status, *want, "{request:?}: {body}");
        if *reached > 0 {
            assert_eq!(body, "POST /\n");
            // The connection ends there: what followed the body is never read as a request.
            let rest = read_until_closed(&mut h, s, 10);
            assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        }
        assert_eq!(
            seen.load(Ordering::SeqCst) - before,
            *reached,
            "{request:?}"
        );
    }
    assert!(!http_paths(&h).iter().any(|(path, _)| path == "/smuggled"));
}

/// One HTTP/2 frame: (type, flags, stream, payload).
type H2Frame = (u8, u8, u32, Vec<u8>);

/// An HTTP/2 frame as bytes.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET of `path` on host.msbvm.internal as an HPACK block with no dynamic table and no
/// Huffman coding (`:method GET`, `:scheme http`, literal `:path` and `:authority`).
fn h2_get(path: &str) -> Vec<u8> {
    let authority = b"host.msbvm.internal";
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, authority.len() as u8]);
    block.extend_from_slice(authority);
    block
}

/// Reads HTTP/2 frames from `s` until `done` says the ones seen so far are enough.
fn read_h2_frames(
    h: &mut Harness,
    s: smoltcp::iface::SocketHandle,
    done: impl Fn(&[H2Frame]) -> bool,
) -> Vec<H2Frame> {
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    h.guest.run_until(10, "HTTP/2 frames", |g| {
        let mut buf = [0u8; 4096];
        while g.tcp(s).can_recv() {
            let n = g.tcp(s).recv_slice(&mut buf).unwrap();
            bytes.extend_from_slice(&buf[..n]);
        }
        while bytes.len() >= 9 {
            let len =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            if bytes.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) & 0x7fff_ffff;
            frames.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes.drain(..9 + len);
        }
        done(&frames).then_some(())
    });
    frames
}

/// A guest speaking HTTP/2 with prior knowledge (`h2c`) over plain HTTP gets every stream
/// checked on its own: the allowed stream is answered by the host over HTTP/2, the denied one
/// gets the stack's refusal, and neither ends the connection.
#[test]
fn prior_knowledge_h2c_streams_are_checked_each() {
    const HEADERS: u8 = 0x1;
    const DATA: u8 = 0x0;
    const END_STREAM_AND_HEADERS: u8 = 0x5;
    let (port, seen) = http_echo_server();
    let mut h = Harness::start(test_config(), secret_denied_host_allowed(port));
    let s = h.guest.tcp_connect_host(port, 40080);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    out.extend(h2_frame(
        HEADERS,
        END_STREAM_AND_HEADERS,
        1,
        &h2_get("/public"),
    ));
    out.extend(h2_frame(
        HEADERS,
        END_STREAM_AND_HEADERS,
        3,
        &h2_get("/secret/x"),
    ));
    h.guest.tcp_send_all(s, &out);
    let ended = |frames: &[H2Frame], stream: u32| {
        frames
            .iter()
            .any(|(kind, flags, id, _)| *id == stream && *kind <= 1 && flags & 0x1 != 0)
    };
    let frames = read_h2_frames(&mut h, s, |f| ended(f, 1) && ended(f, 3));
    let of = |stream: u32, kind: u8| -> Vec<u8> {
        frames
            .iter()
            .filter(|(k, _, id, _)| *id == stream && *k == kind)
            .flat_map(|(_, _, _, payload)| payload.clone())
            .collect()
    };
    // `:status 200` is entry 8 of HPACK's static table.
    assert_eq!(of(1, HEADERS).first(), Some(&0x88), "{frames:?}");
    let body = String::from_utf8_lossy(&of(1, DATA)).into_owned();
    assert!(
        body.starts_with("GET ") && body.contains("/public"),
        "{body}"
    );
    assert_ne!(of(3, HEADERS).first(), Some(&0x88), "{frames:?}");
    let refusal = String::from_utf8_lossy(&of(3, DATA)).into_owned();
    assert!(
        refusal.contains("Blocked by the sandbox network policy"),
        "{refusal}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert!(
        !frames.iter().any(|(kind, ..)| *kind == 0x7),
        "GOAWAY: {frames:?}"
    );
    // Streams run at once: their events may come in either order.
    let mut paths = http_paths(&h);
    paths.sort();
    assert_eq!(
        paths,
        [
            ("/public".to_string(), true),
            ("/secret/x".to_string(), false)
        ]
    );
}

/// A client that closes its sending half right after the request (`printf ... | nc`) still gets
/// the answer.
#[test]
fn a_half_closed_client_still_gets_its_answer() {
    let (port, _) = http_echo_server();
    let mut h = Harness::start(test_config(), host_allowed_inspected(port));
    let s = h.guest.tcp_connect_host(port, 40070);
    h.guest.tcp_send_all(
        s,
        b"GET /half HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n",
    );
    h.guest.tcp(s).close();
    let answer = read_until_closed(&mut h, s, 10);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("GET /half\n"), "{text}");
}

/// The host opened and HTTP rules on its port (so every connection there is inspected).
fn host_allowed_inspected(port: u16) -> Policy {
    Policy::builder()
        .deny(rule(&format!("http://host.msbvm.internal:{port}/never/")))
        .allow(rule("host"))
}

/// Everything the guest socket `s` receives until the stack closes it.
fn read_until_closed(h: &mut Harness, s: smoltcp::iface::SocketHandle, secs: u64) -> Vec<u8> {
    let mut answer = Vec::new();
    h.guest
        .run_until(secs, "the stack to close the connection", |g| {
            let mut buf = [0u8; 4096];
            while g.tcp(s).can_recv() {
                let n = g.tcp(s).recv_slice(&mut buf).unwrap();
                answer.extend_from_slice(&buf[..n]);
            }
            (!g.tcp(s).may_recv()).then_some(())
        });
    answer
}

/// A secret's placeholder in plain HTTP is refused (plain HTTP is never eligible), also when
/// the guest splits it across chunks of a chunked body; the event names the secret only.
#[test]
fn a_placeholder_in_plain_http_is_blocked() {
    let (port, _) = http_echo_server();
    let placeholder = "msbvm_ph_00112233445566778899aabbccddeeff";
    let config = NetConfig {
        secrets: vec![msbvm_netstack::secrets::Secret {
            name: "TOKEN".into(),
            value: "the-real-value".into(),
            placeholder: placeholder.into(),
            hosts: vec!["api.example.com".into()],
            inject: Default::default(),
        }],
        ..test_config()
    };
    let (a, b) = placeholder.split_at(12);
    let split = format!(
        "POST /up HTTP/1.1\r\nHost: host.msbvm.internal\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let header =
        format!("GET / HTTP/1.1\r\nHost: host.msbvm.internal\r\nX-Key: {placeholder}\r\n\r\n");
    let query = format!("GET /?k={placeholder} HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n");
    for (i, request) in [header, split, query].iter().enumerate() {
        let mut h = Harness::start(config.clone(), secret_denied_host_allowed(port));
        let s = h.guest.tcp_connect_host(port, 40050 + i as u16);
        h.guest.tcp_send_all(s, request.as_bytes());
        let (status, body) = read_response(&mut h, s);
        assert_eq!(status, 403, "{request}: {body}");
        assert!(
            !body.contains(b),
            "the placeholder reached the host: {body}"
        );
        let events = h.events();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, NetEvent::SecretBlocked { secret, .. } if secret == "TOKEN")),
            "{events:?}"
        );
        assert!(!format!("{events:?}").contains("the-real-value"));
    }
}

/// A server that tells, per accepted connection, when the host socket saw its end (EOF or reset).
fn closing_server() -> (u16, std::sync::mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    let _ = stream.write_all(&buf[..n]);
                }
                let _ = tx.send(());
            });
        }
    });
    (port, rx)
}

fn echo_once(h: &mut Harness, s: smoltcp::iface::SocketHandle, data: &[u8]) {
    h.guest.tcp_send_all(s, data);
    assert_eq!(h.guest.tcp_recv_exact(s, data.len()), data);
}

/// Before, a new policy applied only to new flows: an open connection to a destination the
/// new policy denies kept going.
#[test]
fn tightening_the_policy_ends_the_flows_it_denies() {
    let (kept_port, _) = closing_server();
    let (ended_port, host_saw_end) = closing_server();
    let mut h = Harness::start(test_config(), host_allowed());
    let kept = h.guest.tcp_connect_host(kept_port, 40040);
    let ended = h.guest.tcp_connect_host(ended_port, 40041);
    echo_once(&mut h, kept, b"one");
    echo_once(&mut h, ended, b"two");

    h.handle
        .set_policy(Policy::builder().allow(format!("host:{kept_port}").parse().unwrap()));
    h.guest.run_until(5, "RST on the denied flow", |g| {
        (g.tcp(ended).state() == State::Closed).then_some(())
    });
    host_saw_end
        .recv_timeout(Duration::from_secs(5))
        .expect("the host socket of the ended flow was closed");
    echo_once(&mut h, kept, b"still here");
    let log = h.events.clone();
    h.guest.run_until(5, "the policy event", |_| {
        log.lock()
            .unwrap()
            .iter()
            .any(|e| {
                matches!(e,
                    NetEvent::FlowDenied { transport: Transport::Tcp, dst, reason, .. }
                        if dst.port() == ended_port && reason.contains("policy change")
                )
            })
            .then_some(())
    });
    h.guest.run_until(5, "one flow left", |_| {
        (h.handle.stats().tcp_flows_open == 1).then_some(())
    });
}

#[test]
fn tightening_the_policy_ends_udp_flows_and_uninspected_http() {
    let udp_port = udp_echo_server();
    let (http_port, host_saw_end) = closing_server();
    let mut h = Harness::start(test_config(), host_allowed());
    let u = h.guest.udp_bind(5557);
    let dst = smoltcp::wire::IpEndpoint::new(HOST_ALIAS.into(), udp_port);
    h.guest.udp(u).send_slice(b"ping", dst).unwrap();
    h.guest
        .run_until(5, "udp reply", |g| g.udp(u).recv().ok().map(|_| ()));
    let s = h.guest.tcp_connect_host(http_port, 40042);
    echo_once(
        &mut h,
        s,
        b"GET / HTTP/1.1\r\nHost: host.msbvm.internal\r\n\r\n",
    );
    assert_eq!(h.handle.stats().udp_flows_open, 1);

    // UDP to the host is no longer allowed, and HTTP rules now cover the TCP port.
    let policy = Policy::builder()
        .deny(rule(&format!(
            "http://host.msbvm.internal:{http_port}/admin/"
        )))
        .allow(rule("tcp:host"));
    h.handle.set_policy(policy);
    h.guest.run_until(5, "udp flow ended", |_| {
        (h.handle.stats().udp_flows_open == 0).then_some(())
    });
    h.guest.run_until(5, "uninspected connection reset", |g| {
        (g.tcp(s).state() == State::Closed).then_some(())
    });
    host_saw_end.recv_timeout(Duration::from_secs(5)).unwrap();
    let events = h.events();
    assert!(events.iter().any(|e| matches!(e,
        NetEvent::FlowDenied { transport: Transport::Udp, reason, .. } if reason.contains("policy change"))));
}

/// Every test above again, in a child process whose netstack threads run under the
/// netstack's seccomp filter: real TCP, UDP and published-port flows to loopback.
#[test]
fn stack_tests_pass_under_the_netstack_seccomp_filter() {
    if std::env::var(common::SECCOMP_ENV).is_ok() {
        return; // The child itself.
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--skip", "stack_tests_pass_under", "--test-threads=2"])
        .env(common::SECCOMP_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "netstack tests under seccomp: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("test result: ok.") && !stdout.contains("ok. 0 passed"),
        "{stdout}"
    );
}

/// A `net.flow` plugin that denies port `denied` (TCP and UDP) and counts what it was asked.
struct PortGuard {
    denied: u16,
    asked: AtomicUsize,
}

impl msbvm_plugins::Plugin for PortGuard {
    fn name(&self) -> &str {
        "port-guard"
    }
    fn interests(&self) -> msbvm_plugins::Interests {
        msbvm_plugins::Interests::NONE.with(msbvm_plugins::Hook::Flow)
    }
    fn flow(&self, flow: &msbvm_plugins::data::Flow) -> msbvm_plugins::Decision {
        self.asked.fetch_add(1, Ordering::SeqCst);
        // Slow enough that the guest retransmits while the decision is pending.
        std::thread::sleep(Duration::from_millis(50));
        if flow.dst.port() == self.denied {
            msbvm_plugins::Decision::deny("that port is closed by a plugin")
        } else {
            msbvm_plugins::Decision::Continue
        }
    }
}

fn guarded(denied: u16) -> (Arc<PortGuard>, Arc<msbvm_plugins::Chain>) {
    let guard = Arc::new(PortGuard {
        denied,
        asked: AtomicUsize::new(0),
    });
    let chain = msbvm_plugins::Chain::new(vec![guard.clone()], Arc::new(|_| {}));
    (guard, Arc::new(chain))
}

fn plugin_denials(h: &Harness) -> Vec<(Transport, String)> {
    h.events()
        .into_iter()
        .filter_map(|e| match e {
            NetEvent::FlowDenied {
                transport,
                rule: Some(rule),
                reason,
                ..
            } if rule == "plugins" => Some((transport, reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_flow_plugin_decides_tcp_flows_after_policy() {
    let (open, closed) = (echo_server(), echo_server());
    let (guard, chain) = guarded(closed);
    let mut h = Harness::start_with_plugins(test_config(), host_allowed(), chain);
    let s = h.guest.tcp_established(open, 40101);
    h.guest.tcp_send_all(s, b"through");
    assert_eq!(h.guest.tcp_recv_exact(s, 7), b"through");
    let denied = h.guest.tcp_connect_host(closed, 40102);
    h.guest.run_until(5, "reset", |g| {
        (g.tcp(denied).state() == State::Closed).then_some(())
    });
    assert_eq!(
        plugin_denials(&h),
        vec![(
            Transport::Tcp,
            "denied by a plugin: that port is closed by a plugin".into()
        )]
    );
    // Asked once per flow, whatever the guest retransmitted meanwhile; a flow the policy
    // denies never reaches the plugin; only the flow that went through is reported allowed.
    assert_eq!(guard.asked.load(Ordering::SeqCst), 2);
    let allowed: Vec<_> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            NetEvent::FlowAllowed { dst, .. } => Some(dst.port()),
            _ => None,
        })
        .collect();
    assert_eq!(allowed, vec![open]);
    assert_eq!(h.handle.stats().flows_total, 1);
    let mut h2 = Harness::start_with_plugins(test_config(), Policy::default(), guarded(1).1);
    let s = h2.guest.tcp_connect_host(open, 40103);
    h2.guest.run_until(5, "reset", |g| {
        (g.tcp(s).state() == State::Closed).then_some(())
    });
    assert!(plugin_denials(&h2).is_empty());
}

#[test]
fn a_flow_plugin_decides_udp_flows_and_held_datagrams_go_once_allowed() {
    let (open, closed) = (udp_echo_server(), udp_echo_server());
    let (guard, chain) = guarded(closed);
    let mut h = Harness::start_with_plugins(test_config(), host_allowed(), chain);
    let u = h.guest.udp_bind(5601);
    let dst = smoltcp::wire::IpEndpoint::new(HOST_ALIAS.into(), open);
    // Three datagrams before the decision can have come back: all are held, then sent.
    for text in [&b"one"[..], b"two", b"three"] {
        h.guest.udp(u).send_slice(text, dst).unwrap();
    }
    let mut got = Vec::new();
    h.guest.run_until(5, "three replies", |g| {
        while let Ok((data, _)) = g.udp(u).recv() {
            got.push(data.to_vec());
        }
        (got.len() == 3).then_some(())
    });
    assert_eq!(
        got,
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
    let closed_dst = smoltcp::wire::IpEndpoint::new(HOST_ALIAS.into(), closed);
    h.guest.udp(u).send_slice(b"x", closed_dst).unwrap();
    let log = h.events.clone();
    h.guest.run_until(5, "plugin denial", |_| {
        log.lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, NetEvent::FlowDenied { rule: Some(r), .. } if r == "plugins"))
            .then_some(())
    });
    assert_eq!(plugin_denials(&h)[0].0, Transport::Udp);
    assert_eq!(guard.asked.load(Ordering::SeqCst), 2);
    assert_eq!(h.handle.stats().udp_flows_open, 1);
}

#[test]
fn a_byte_rate_paces_both_ways_and_loses_nothing() {
    let port = echo_server();
    let rate = 64 * 1024;
    let config = NetConfig {
        bytes_per_sec: Some(rate),
        ..test_config()
    };
    let mut h = Harness::start(config, host_allowed());
    let s = h.guest.tcp_established(port, 40104);
    let data = pattern(300_000);
    let started = std::time::Instant::now();
    h.guest.tcp_send_all(s, &data);
    let back = h.guest.tcp_recv_exact(s, data.len());
    let took = started.elapsed();
    assert!(back == data, "echoed bytes differ under a rate");
    // A lower bound, which is what a limiter promises: 300 kB (plus headers) each way at
    // 64 KiB/s, less the first 64 KiB burst, cannot take under about 3.6 s.
    assert!(took >= Duration::from_secs(3), "took {took:?}");
    assert_eq!(h.handle.stats().tx_dropped, 0);
}

/// A `net.bytes` observer: adds up what closed flows moved.
#[derive(Default)]
struct ByteCounter(AtomicUsize);

impl msbvm_plugins::Plugin for ByteCounter {
    fn name(&self) -> &str {
        "byte-counter"
    }
    fn interests(&self) -> msbvm_plugins::Interests {
        msbvm_plugins::Interests::NONE.with(msbvm_plugins::Hook::Bytes)
    }
    fn flow_bytes(&self, bytes: &msbvm_plugins::data::FlowBytes) {
        let moved = bytes.bytes_up + bytes.bytes_down;
        self.0.fetch_add(moved as usize, Ordering::SeqCst);
    }
}

#[test]
fn plugins_hear_of_closed_flows_from_the_stack_itself() {
    let port = echo_server();
    let counter = Arc::new(ByteCounter::default());
    let chain = msbvm_plugins::Chain::new(vec![counter.clone()], Arc::new(|_| {}));
    let mut h = Harness::start_with_plugins(test_config(), host_allowed(), Arc::new(chain));
    let s = h.guest.tcp_established(port, 40105);
    h.guest.tcp_send_all(s, b"counted");
    assert_eq!(h.guest.tcp_recv_exact(s, 7), b"counted");
    h.guest.tcp(s).close();
    h.guest
        .run_until(10, "the plugin heard of the closed flow", |_| {
            (counter.0.load(Ordering::SeqCst) == 14).then_some(())
        });
}
