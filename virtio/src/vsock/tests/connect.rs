//! Connection set-up in both directions, refusals, timeouts and limits.

use super::*;

#[test]
fn host_connect_gets_ok_line_and_data_flows_both_ways() {
    let mut s = setup();
    // Data written right after the line must wait for the guest to accept.
    let (mut client, req) = host_request(&mut s, b"CONNECT 1234\nhello");
    assert_eq!(
        (
            req.hdr.src_cid,
            req.hdr.dst_cid,
            req.hdr.dst_port,
            req.hdr.type_
        ),
        (HOST_CID, CID, 1234, TYPE_STREAM)
    );
    assert_eq!(req.hdr.buf_alloc, TX_BUF_SIZE);
    let port = req.hdr.src_port;
    s.d.expect_silence(Duration::from_millis(50));
    s.d.send(s.d.hdr(OP_RESPONSE, 1234, port), &[]);
    assert_eq!(read_line(&mut client), format!("OK {port}\n"));
    assert_eq!(recv_data(&mut s.d, port, 1234, 5), b"hello");
    s.d.send(s.d.hdr(OP_RW, 1234, port), b"world");
    assert_eq!(read_exact(&mut client, 5), b"world");
}

#[test]
fn host_connect_refused_by_guest_closes_the_stream() {
    let mut s = setup();
    let (mut client, req) = host_request(&mut s, b"CONNECT 9\n");
    s.d.send(s.d.hdr(OP_RST, 9, req.hdr.src_port), &[]);
    assert_closed(&mut client);
    s.d.expect_silence(Duration::from_millis(50));
}

#[test]
fn host_connect_unanswered_times_out_and_closes_the_stream() {
    let timeout = short_timeouts().request;
    let mut s = setup_with(
        |v| v.set_timeouts(short_timeouts()),
        super::super::test_utils::INITIAL_RX_BUFFERS,
    );
    let (mut client, req) = host_request(&mut s, b"CONNECT 9\n");
    let started = std::time::Instant::now();
    assert_closed(&mut client);
    assert!(started.elapsed() >= timeout - Duration::from_millis(100));
    // The guest is told to forget the half-open connection.
    let rst = s.d.expect_op(OP_RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (req.hdr.src_port, 9));
    // A late RESPONSE now gets an RST too.
    s.d.send(s.d.hdr(OP_RESPONSE, 9, req.hdr.src_port), &[]);
    s.d.expect_op(OP_RST);
}

#[test]
fn malformed_or_overlong_connect_lines_close_the_stream() {
    let mut s = setup();
    let long = format!("CONNECT {}\n", "1".repeat(40));
    let cases: Vec<&[u8]> = vec![
        b"HELLO\n",
        b"CONNECT abc\n",
        b"CONNECT 4294967296\n",
        b"CONNECT\n",
        b"\n",
        long.as_bytes(),
        &[b'x'; 33],
        b"\xff\xfe\xfd\n",
    ];
    for line in cases {
        let mut client = UnixStream::connect(&s.path).unwrap();
        client.write_all(line).unwrap();
        assert_closed(&mut client);
    }
    // A client that hangs up mid-line is cleaned up too.
    let mut client = UnixStream::connect(&s.path).unwrap();
    client.write_all(b"CONN").unwrap();
    drop(client);
    s.d.expect_silence(Duration::from_millis(100));
    // The device still takes good clients.
    host_connect(&mut s, 7);
}

#[test]
fn connect_line_of_exactly_32_bytes_is_accepted() {
    let mut s = setup();
    let mut client = UnixStream::connect(&s.path).unwrap();
    // "CONNECT " + 23 digits of leading zeros and a port + "\n" = 32 bytes.
    let line = format!("CONNECT {:0>23}\n", 42);
    assert_eq!(line.len(), MAX_CONNECT_LINE);
    client.write_all(line.as_bytes()).unwrap();
    let req = s.d.expect_op(OP_REQUEST);
    assert_eq!(req.hdr.dst_port, 42);
}

#[test]
fn silent_host_client_is_dropped_after_the_line_timeout() {
    let s = setup_with(
        |v| v.set_timeouts(short_timeouts()),
        super::super::test_utils::INITIAL_RX_BUFFERS,
    );
    let mut client = UnixStream::connect(&s.path).unwrap();
    let started = std::time::Instant::now();
    assert_closed(&mut client);
    assert!(started.elapsed() >= short_timeouts().connect_line - Duration::from_millis(100));
}

#[test]
fn guest_connect_reaches_the_port_listener_and_data_flows() {
    let (mut s, _listener, mut host) = connected(1000, 52);
    host.write_all(b"ping").unwrap();
    assert_eq!(recv_data(&mut s.d, 52, 1000, 4), b"ping");
    s.d.send(s.d.hdr(OP_RW, 1000, 52), b"pong");
    assert_eq!(read_exact(&mut host, 4), b"pong");
}

#[test]
fn guest_connect_to_a_port_nobody_listens_on_gets_rst() {
    let mut s = setup();
    s.d.send(s.d.hdr(OP_REQUEST, 1000, 53), &[]);
    let rst = s.d.expect_op(OP_RST);
    assert_eq!(
        (
            rst.hdr.src_cid,
            rst.hdr.dst_cid,
            rst.hdr.src_port,
            rst.hdr.dst_port
        ),
        (HOST_CID, CID, 53, 1000)
    );
    // A socket file without a listener behind it is refused the same way.
    drop(listen(&s.path, 54));
    s.d.send(s.d.hdr(OP_REQUEST, 1000, 54), &[]);
    s.d.expect_op(OP_RST);
}

/// A guest-initiated connection gets `op` from the guest, which only a
/// connection being set up may get: the device resets it.
fn out_of_place_op_resets(op: u16) {
    let (mut s, _listener, mut host) = connected(1000, 52);
    s.d.send(s.d.hdr(op, 1000, 52), &[]);
    s.d.expect_op(OP_RST);
    assert_closed(&mut host);
}

#[test]
fn duplicate_request_resets_the_connection() {
    out_of_place_op_resets(OP_REQUEST);
}

#[test]
fn unsolicited_response_resets_a_guest_initiated_connection() {
    out_of_place_op_resets(OP_RESPONSE);
}

#[test]
fn many_connections_in_both_directions_carry_their_own_data() {
    let mut s = setup();
    let listener = listen(&s.path, 70);
    let mut guest_side = Vec::new();
    for i in 0..48u32 {
        guest_side.push(guest_connect(&mut s, &listener, 5000 + i, 70));
    }
    let mut host_side = Vec::new();
    for i in 0..16u32 {
        host_side.push(host_connect(&mut s, 6000 + i));
    }
    // Host to guest on every connection at once.
    for (i, stream) in guest_side.iter_mut().enumerate() {
        stream.write_all(&pattern(100, i as u8)).unwrap();
    }
    for (i, (stream, _)) in host_side.iter_mut().enumerate() {
        stream.write_all(&pattern(100, 100 + i as u8)).unwrap();
    }
    let mut got: std::collections::HashMap<(u32, u32), Vec<u8>> = Default::default();
    let total = 100 * (guest_side.len() + host_side.len());
    let mut n = 0;
    while n < total {
        let pkt = s.d.recv();
        assert_eq!(pkt.hdr.op, OP_RW, "{:?}", pkt.hdr);
        n += pkt.data.len();
        got.entry((pkt.hdr.src_port, pkt.hdr.dst_port))
            .or_default()
            .extend_from_slice(&pkt.data);
    }
    for i in 0..guest_side.len() {
        assert_eq!(got[&(70, 5000 + i as u32)], pattern(100, i as u8));
    }
    for (i, (_, port)) in host_side.iter().enumerate() {
        assert_eq!(got[&(*port, 6000 + i as u32)], pattern(100, 100 + i as u8));
    }
    // Guest to host on every connection.
    for i in 0..guest_side.len() {
        s.d.send(s.d.hdr(OP_RW, 5000 + i as u32, 70), &pattern(50, i as u8));
    }
    for (i, (_, port)) in host_side.iter().enumerate() {
        s.d.send(
            s.d.hdr(OP_RW, 6000 + i as u32, *port),
            &pattern(50, 7 + i as u8),
        );
    }
    for (i, stream) in guest_side.iter_mut().enumerate() {
        assert_eq!(read_exact(stream, 50), pattern(50, i as u8));
    }
    for (i, (stream, _)) in host_side.iter_mut().enumerate() {
        assert_eq!(read_exact(stream, 50), pattern(50, 7 + i as u8));
    }
}

#[test]
fn connections_beyond_the_cap_are_refused() {
    // A table of 4: the guest may hold 2, the host the rest.
    let mut s = setup_with(|v| v.set_max_connections(4), 64);
    let listener = listen(&s.path, 70);
    let mut open = Vec::new();
    for i in 0..2 {
        open.push(guest_connect(&mut s, &listener, 100 + i, 70));
    }
    // The guest's share is used up: refused, though the table has room.
    s.d.send(s.d.hdr(OP_REQUEST, 103, 70), &[]);
    let rst = s.d.expect_op(OP_RST);
    assert_eq!(rst.hdr.dst_port, 103);
    let (_a, _) = host_connect(&mut s, 200);
    let (_b, _) = host_connect(&mut s, 201);
    // The table is full: both directions are refused.
    s.d.send(s.d.hdr(OP_REQUEST, 104, 70), &[]);
    let rst = s.d.expect_op(OP_RST);
    assert_eq!(rst.hdr.dst_port, 104);
    let mut extra = UnixStream::connect(&s.path).unwrap();
    let _ = extra.write_all(b"CONNECT 202\n");
    assert_closed(&mut extra);
    // Closing one makes room again.
    s.d.send(s.d.hdr(OP_RST, 100, 70), &[]);
    assert_closed(&mut open[0]);
    guest_connect(&mut s, &listener, 105, 70);
}

/// A guest that dials the runtime's events port 2000 times (the attack of
/// issue 9 §3) gets at most the per-port cap of connections; the rest are
/// refused with RST, host-initiated connections still get through, and the
/// guest's connections to another port are still possible.
#[test]
fn guest_flooding_one_port_cannot_take_the_table() {
    const EVENTS_PORT: u32 = 1025;
    let mut s = setup();
    let listener = listen(&s.path, EVENTS_PORT);
    listener.set_nonblocking(true).unwrap();
    let mut accepted = Vec::new();
    let (mut responses, mut resets) = (0, 0);
    for i in 0..2000u32 {
        s.d.send(s.d.hdr(OP_REQUEST, 10_000 + i, EVENTS_PORT), &[]);
        let reply = s.d.recv();
        match reply.hdr.op {
            OP_RESPONSE => responses += 1,
            OP_RST => resets += 1,
            op => panic!("unexpected op {op}"),
        }
        // Keep the host side's backlog drained, as the runtime does.
        while let Ok((stream, _)) = listener.accept() {
            accepted.push(stream);
        }
    }
    assert_eq!(responses, MAX_GUEST_CONNECTIONS_PER_PORT, "{resets} resets");
    assert_eq!(resets, 2000 - MAX_GUEST_CONNECTIONS_PER_PORT);
    // Host-initiated connections (exec, files, shutdown) still work.
    let (mut exec, port) = host_connect(&mut s, 52);
    exec.write_all(b"run").unwrap();
    assert_eq!(recv_data(&mut s.d, port, 52, 3), b"run");
    // So does the guest's own connection to another port.
    let other = listen(&s.path, 1026);
    guest_connect(&mut s, &other, 9, 1026);
}

#[test]
fn host_ports_are_unique_per_connection() {
    let mut s = setup();
    let mut ports = std::collections::HashSet::new();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (client, port) = host_connect(&mut s, 300);
        assert!(ports.insert(port), "port {port} reused while in use");
        clients.push(client);
    }
}

/// Timeouts short enough for a test to wait them out (the defaults are 30 s and 60 s).
fn short_timeouts() -> Timeouts {
    Timeouts {
        connect_line: Duration::from_secs(2),
        request: Duration::from_secs(2),
    }
}

#[test]
fn default_timeouts_outlast_the_sdk_reply_timeout() {
    // The SDK gives up after 30 s and says so; the device must not close first (a close reads
    // as "refused" or EPIPE on the client's side).
    assert!(Timeouts::default().request > Duration::from_secs(30));
    assert!(Timeouts::default().connect_line >= Duration::from_secs(30));
}
