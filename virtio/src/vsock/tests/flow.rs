//! Data transfer, credit-based flow control, stalls and shutdown.

use super::*;

/// The guest's view of one connection's credit toward the host.
struct GuestCredit {
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
}

impl GuestCredit {
    fn new() -> Self {
        Self {
            peer_buf_alloc: TX_BUF_SIZE,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
        }
    }
    fn available(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
    fn update(&mut self, pkt: &RxPacket) {
        self.peer_buf_alloc = pkt.hdr.buf_alloc;
        self.peer_fwd_cnt = pkt.hdr.fwd_cnt;
    }
}

#[test]
fn bulk_transfer_both_ways_with_credit_updates() {
    let (mut s, _listener, mut host) = connected(900, 90);
    const TOTAL: usize = 1 << 20;

    // Host to guest: the guest acknowledges what it consumed, as Linux does.
    let data = pattern(TOTAL, 1);
    let writer = {
        let mut host = host.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || host.write_all(&data).unwrap())
    };
    let mut got = Vec::new();
    while got.len() < TOTAL {
        let pkt = s.d.recv();
        match pkt.hdr.op {
            OP_RW => {
                assert!(pkt.data.len() <= MAX_PKT_DATA as usize);
                got.extend_from_slice(&pkt.data);
                let mut upd = s.d.hdr(OP_CREDIT_UPDATE, 900, 90);
                upd.fwd_cnt = got.len() as u32;
                s.d.send(upd, &[]);
            }
            OP_CREDIT_REQUEST | OP_CREDIT_UPDATE => {}
            op => panic!("unexpected op {op}"),
        }
    }
    writer.join().unwrap();
    assert!(got == data, "host-to-guest data corrupted");

    // Guest to host, honouring the device's credit.
    let data = pattern(TOTAL, 2);
    let reader = {
        let mut host = host.try_clone().unwrap();
        std::thread::spawn(move || read_exact(&mut host, TOTAL))
    };
    let mut credit = GuestCredit::new();
    let mut sent = 0;
    while sent < TOTAL {
        let n = (credit.available() as usize)
            .min(MAX_PKT_DATA as usize)
            .min(TOTAL - sent);
        if n == 0 {
            let pkt = s.d.recv();
            credit.update(&pkt);
            continue;
        }
        // Like any guest, keep reporting what we consumed in the other
        // direction, or the device would see us as not reading.
        let mut rw = s.d.hdr(OP_RW, 900, 90);
        rw.fwd_cnt = TOTAL as u32;
        s.d.send(rw, &data[sent..sent + n]);
        credit.tx_cnt += n as u32;
        sent += n;
        while let Some(pkt) = s.d.recv_timeout(Duration::ZERO) {
            credit.update(&pkt);
        }
    }
    assert!(
        reader.join().unwrap() == data,
        "guest-to-host data corrupted"
    );
    host.write_all(b"!").unwrap();
    assert_eq!(recv_data(&mut s.d, 90, 900, 1), b"!");
}

#[test]
fn credit_request_is_answered_with_current_fwd_cnt() {
    let (mut s, _listener, mut host) = connected(910, 91);
    s.d.send(s.d.hdr(OP_RW, 910, 91), &[7; 100]);
    assert_eq!(read_exact(&mut host, 100), vec![7; 100]);
    s.d.send(s.d.hdr(OP_CREDIT_REQUEST, 910, 91), &[]);
    let upd = s.d.expect_op(OP_CREDIT_UPDATE);
    assert_eq!((upd.hdr.fwd_cnt, upd.hdr.buf_alloc), (100, TX_BUF_SIZE));
    assert_eq!((upd.hdr.src_port, upd.hdr.dst_port), (91, 910));
}

#[test]
fn host_that_stops_reading_exhausts_guest_credit_until_it_reads() {
    let (mut s, _listener, mut host) = connected(920, 92);
    let data = pattern(8 << 20, 3);
    let mut credit = GuestCredit::new();
    let mut sent = 0usize;
    // Send while the device grants credit; the host reads nothing.
    loop {
        let n = (credit.available() as usize).min(MAX_PKT_DATA as usize);
        if n > 0 {
            assert!(sent + n <= data.len(), "device never ran out of credit");
            s.d.send(s.d.hdr(OP_RW, 920, 92), &data[sent..sent + n]);
            credit.tx_cnt += n as u32;
            sent += n;
            while let Some(pkt) = s.d.recv_timeout(Duration::ZERO) {
                credit.update(&pkt);
            }
        } else {
            match s.d.recv_timeout(Duration::from_millis(300)) {
                Some(pkt) => credit.update(&pkt),
                None => break,
            }
        }
    }
    // Stalled: at least the buffer we were promised, and far from unbounded
    // (the host socket's own buffer takes the rest).
    assert!(sent >= TX_BUF_SIZE as usize, "sent only {sent}");
    assert!(sent <= 4 << 20, "device buffered {sent} bytes");
    // The host reads everything; the device flushes and returns credit.
    let reader = {
        let mut host = host.try_clone().unwrap();
        std::thread::spawn(move || read_exact(&mut host, sent))
    };
    let upd = s.d.expect_op(OP_CREDIT_UPDATE);
    credit.update(&upd);
    assert!(credit.available() > 0);
    assert!(
        reader.join().unwrap() == data[..sent],
        "stalled data corrupted"
    );
    // Data flows again.
    s.d.send(s.d.hdr(OP_RW, 920, 92), b"more");
    assert_eq!(read_exact(&mut host, 4), b"more");
}

#[test]
fn guest_ignoring_credit_is_reset_not_buffered() {
    let (mut s, _listener, mut host) = connected(930, 93);
    let chunk = pattern(MAX_PKT_DATA as usize, 4);
    let mut reset = false;
    for _ in 0..128 {
        s.d.send(s.d.hdr(OP_RW, 930, 93), &chunk);
        while let Some(pkt) = s.d.recv_timeout(Duration::ZERO) {
            if pkt.hdr.op == OP_RST {
                reset = true;
            }
        }
        if reset {
            break;
        }
    }
    assert!(reset, "8 MiB beyond credit were accepted");
    assert_closed(&mut host);
}

#[test]
fn guest_that_never_reads_stalls_only_its_own_connection() {
    let mut s = setup();
    let listener = listen(&s.path, 94);
    // Connection A advertises a small buffer and never acknowledges.
    let mut req = s.d.hdr(OP_REQUEST, 940, 94);
    req.buf_alloc = 16 * 1024;
    s.d.send(req, &[]);
    s.d.expect_op(OP_RESPONSE);
    let (a, _) = listener.accept().unwrap();
    let mut b = guest_connect(&mut s, &listener, 941, 94);

    // The host floods A until its socket blocks: the device must stop
    // reading, so the writer blocks instead of memory growing.
    a.set_nonblocking(true).unwrap();
    let chunk = pattern(8192, 5);
    let mut written = 0usize;
    loop {
        match (&a).write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Give the device a chance to drain what credit allows.
                std::thread::sleep(Duration::from_millis(50));
                match (&a).write(&chunk) {
                    Ok(n) => written += n,
                    Err(_) => break,
                }
            }
            Err(e) => panic!("host write: {e}"),
        }
        assert!(
            written < 64 << 20,
            "device keeps reading a stalled connection"
        );
    }
    // Meanwhile B works both ways.
    b.write_all(b"to-guest").unwrap();
    s.d.send(s.d.hdr(OP_RW, 941, 94), b"to-host");
    assert_eq!(read_exact(&mut b, 7), b"to-host");
    let mut a_bytes = 0usize;
    let mut b_data = Vec::new();
    let mut credit_requests = 0;
    while let Some(pkt) = s.d.recv_timeout(Duration::from_millis(300)) {
        match (pkt.hdr.dst_port, pkt.hdr.op) {
            (940, OP_RW) => a_bytes += pkt.data.len(),
            (940, OP_CREDIT_REQUEST) => credit_requests += 1,
            (941, OP_RW) => b_data.extend_from_slice(&pkt.data),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(a_bytes, 16 * 1024, "A got more than its credit");
    assert_eq!(credit_requests, 1);
    assert_eq!(b_data, b"to-guest");
    // Once the guest consumes and says so, A resumes.
    let mut upd = s.d.hdr(OP_CREDIT_UPDATE, 940, 94);
    upd.buf_alloc = 16 * 1024;
    upd.fwd_cnt = 16 * 1024;
    s.d.send(upd, &[]);
    let more = recv_data(&mut s.d, 94, 940, 16 * 1024);
    assert_eq!(more.len(), 16 * 1024);
}

#[test]
fn rx_packets_wait_for_the_guest_to_post_buffers() {
    let mut s = setup_with(|_| {}, 0);
    let listener = listen(&s.path, 95);
    s.d.send(s.d.hdr(OP_REQUEST, 950, 95), &[]);
    s.d.expect_silence(Duration::from_millis(100));
    s.d.post_rx(1);
    s.d.expect_op(OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(b"late").unwrap();
    // No buffer: the data stays in the host socket.
    std::thread::sleep(Duration::from_millis(50));
    s.d.post_rx(1);
    assert_eq!(recv_data(&mut s.d, 95, 950, 4), b"late");
}

#[test]
fn guest_shutdown_send_half_closes_the_host_stream() {
    let (mut s, _listener, mut host) = connected(960, 96);
    s.d.send(s.d.hdr(OP_RW, 960, 96), b"last");
    send_shutdown(&mut s, 960, 96, SHUTDOWN_SEND);
    assert_eq!(read_exact(&mut host, 4), b"last");
    let mut rest = Vec::new();
    assert_eq!(host.read_to_end(&mut rest).unwrap(), 0, "EOF after last");
    // The other direction still works.
    host.write_all(b"reply").unwrap();
    assert_eq!(recv_data(&mut s.d, 96, 960, 5), b"reply");
    // Data after SHUTDOWN(SEND) is a protocol error.
    s.d.send(s.d.hdr(OP_RW, 960, 96), b"x");
    s.d.expect_op(OP_RST);
}

#[test]
fn host_half_close_becomes_shutdown_send_to_the_guest() {
    let (mut s, _listener, mut host) = connected(970, 97);
    host.write_all(b"bye").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(recv_data(&mut s.d, 97, 970, 3), b"bye");
    let shut = s.d.expect_op(OP_SHUTDOWN);
    assert_eq!(shut.hdr.flags, SHUTDOWN_SEND);
    // The guest may still send.
    s.d.send(s.d.hdr(OP_RW, 970, 97), b"ack");
    assert_eq!(read_exact(&mut host, 3), b"ack");
    // The guest then closes; the device completes it with RST.
    send_shutdown(&mut s, 970, 97, SHUTDOWN_BOTH);
    s.d.expect_op(OP_RST);
    assert_closed(&mut host);
}

#[test]
fn host_close_then_guest_close_completes() {
    let (mut s, _listener, host) = connected(980, 98);
    drop(host);
    let shut = s.d.expect_op(OP_SHUTDOWN);
    assert_eq!(shut.hdr.flags, SHUTDOWN_SEND);
    // Writing to a host that is gone resets the connection.
    s.d.send(s.d.hdr(OP_RW, 980, 98), b"anyone?");
    s.d.expect_op(OP_RST);
}

#[test]
fn guest_full_shutdown_flushes_then_resets_and_closes() {
    let (mut s, _listener, mut host) = connected(990, 99);
    s.d.send(s.d.hdr(OP_RW, 990, 99), b"final words");
    send_shutdown(&mut s, 990, 99, SHUTDOWN_BOTH);
    let rst = s.d.expect_op(OP_RST);
    assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (99, 990));
    assert_eq!(read_exact(&mut host, 11), b"final words");
    assert_closed(&mut host);
}

#[test]
fn guest_shutdown_rcv_stops_host_to_guest_data() {
    let (mut s, _listener, mut host) = connected(1000, 100);
    send_shutdown(&mut s, 1000, 100, SHUTDOWN_RCV);
    // The host's writes fail rather than pile up.
    std::thread::sleep(Duration::from_millis(50));
    assert!(host.write_all(b"unwanted").is_err());
    s.d.expect_silence(Duration::from_millis(100));
    // Guest-to-host still works.
    s.d.send(s.d.hdr(OP_RW, 1000, 100), b"still");
    assert_eq!(read_exact(&mut host, 5), b"still");
}

#[test]
fn guest_rst_closes_the_host_stream_without_reply() {
    let (mut s, _listener, mut host) = connected(1010, 101);
    s.d.send(s.d.hdr(OP_RST, 1010, 101), &[]);
    assert_closed(&mut host);
    s.d.expect_silence(Duration::from_millis(100));
}

#[test]
fn slow_host_reader_gets_buffered_data_after_guest_close() {
    let (mut s, _listener, mut host) = connected(1020, 102);
    // Fill the host socket so the rest waits in the device's buffer.
    let data = pattern(TX_BUF_SIZE as usize, 9);
    let mut credit = GuestCredit::new();
    let mut sent = 0;
    while sent < data.len() {
        let n = (credit.available() as usize)
            .min(MAX_PKT_DATA as usize)
            .min(data.len() - sent);
        if n == 0 {
            break;
        }
        s.d.send(s.d.hdr(OP_RW, 1020, 102), &data[sent..sent + n]);
        credit.tx_cnt += n as u32;
        sent += n;
    }
    send_shutdown(&mut s, 1020, 102, SHUTDOWN_BOTH);
    // The host reads it all, then sees EOF; the guest gets its RST.
    assert!(read_exact(&mut host, sent) == data[..sent]);
    assert_closed(&mut host);
    loop {
        let pkt = s.d.recv();
        if pkt.hdr.op == OP_RST {
            break;
        }
        assert_eq!(pkt.hdr.op, OP_CREDIT_UPDATE);
    }
}
