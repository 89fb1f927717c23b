//! Bad input from the guest: malformed headers and chains, unusable RX
//! buffers, and random bytes. The device must drop or reset, never panic,
//! never allocate without bound, and keep serving everyone else.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use vm_memory::GuestAddress;

use super::*;
use crate::test_utils::{XorShift, MEM_SIZE};

/// An established connection used to prove the device still works.
struct Canary {
    host: UnixStream,
    guest_port: u32,
    host_port: u32,
}

fn canary(s: &mut Setup) -> Canary {
    let listener = listen(&s.path, 4242);
    let host = guest_connect(s, &listener, 4243, 4242);
    Canary {
        host,
        guest_port: 4243,
        host_port: 4242,
    }
}

fn assert_alive(s: &mut Setup, c: &mut Canary) {
    s.d.send(s.d.hdr(OP_RW, c.guest_port, c.host_port), b"alive?");
    assert_eq!(read_exact(&mut c.host, 6), b"alive?");
    c.host.write_all(b"yes").unwrap();
    assert_eq!(recv_data(&mut s.d, c.host_port, c.guest_port, 3), b"yes");
}

#[test]
fn packets_with_wrong_addressing_or_type_are_dropped_or_refused() {
    let mut s = setup();
    let mut c = canary(&mut s);

    // Not from our guest: nobody to answer.
    let mut h = s.d.hdr(OP_REQUEST, 1, 4242);
    h.src_cid = CID + 1;
    s.d.send(h, &[]);
    s.d.expect_silence(Duration::from_millis(50));

    // To another CID: refused, the RST coming from that CID.
    let mut h = s.d.hdr(OP_REQUEST, 1, 4242);
    h.dst_cid = 7;
    s.d.send(h, &[]);
    let rst = s.d.expect_op(OP_RST);
    assert_eq!(
        (rst.hdr.src_cid, rst.hdr.src_port, rst.hdr.dst_port),
        (7, 4242, 1)
    );

    // SEQPACKET (and anything else) is not supported.
    for ty in [0u16, 2, 0xffff] {
        let mut h = s.d.hdr(OP_REQUEST, 1, 4242);
        h.type_ = ty;
        s.d.send(h, &[]);
        s.d.expect_op(OP_RST);
    }
    // Even on the live connection's ports, a wrong type does not touch it.
    let mut h = s.d.hdr(OP_RW, c.guest_port, c.host_port);
    h.type_ = 2;
    s.d.send(h, b"zzz");
    s.d.expect_op(OP_RST);
    assert_alive(&mut s, &mut c);
}

#[test]
fn every_op_on_an_unknown_connection_gets_rst_except_rst() {
    let mut s = setup();
    for op in [
        OP_RESPONSE,
        OP_SHUTDOWN,
        OP_RW,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
        0,
        8,
        0xffff,
    ] {
        s.d.send(s.d.hdr(op, 11, 22), &[]);
        let rst = s.d.expect_op(OP_RST);
        assert_eq!((rst.hdr.src_port, rst.hdr.dst_port), (22, 11), "op {op}");
    }
    s.d.send(s.d.hdr(OP_RST, 11, 22), &[]);
    s.d.expect_silence(Duration::from_millis(50));
}

#[test]
fn unknown_op_on_a_live_connection_resets_it_only() {
    let mut s = setup();
    let mut c = canary(&mut s);
    let listener = listen(&s.path, 50);
    let mut victim = guest_connect(&mut s, &listener, 51, 50);
    s.d.send(s.d.hdr(99, 51, 50), &[]);
    s.d.expect_op(OP_RST);
    assert_closed(&mut victim);
    assert_alive(&mut s, &mut c);
}

#[test]
fn malformed_tx_chains_are_returned_and_ignored() {
    let mut s = setup();
    let mut c = canary(&mut s);
    let good = s.d.hdr(OP_RW, c.guest_port, c.host_port).to_bytes();
    let hdr_len = PKT_HEADER_SIZE as u32;

    // Header shorter than 44 bytes.
    let a = s.d.driver().alloc(64);
    s.d.driver().write_mem(a, &good);
    s.d.send_chain(&[Desc::readable(a, 20)]);
    // Header split across two descriptors is fine, though.
    let b = s.d.driver().alloc(64);
    let mut h = s.d.hdr(OP_RW, c.guest_port, c.host_port);
    h.len = 2;
    s.d.driver().write_mem(b, &h.to_bytes());
    s.d.driver().write_mem(GuestAddress(b.0 + 44), b"ok");
    s.d.send_chain(&[
        Desc::readable(b, 10),
        Desc::readable(GuestAddress(b.0 + 10), 36),
    ]);
    assert_eq!(read_exact(&mut c.host, 2), b"ok");

    // A device-writable descriptor in a TX chain.
    let w = s.d.driver().alloc(64);
    s.d.driver().write_mem(w, &good);
    s.d.send_chain(&[
        Desc::readable(w, hdr_len),
        Desc::writable(GuestAddress(w.0 + 48), 8),
    ]);
    s.d.send_chain(&[Desc::writable(w, hdr_len)]);

    // len beyond the chain, and beyond the packet limit.
    for len in [10u32, MAX_PKT_DATA + 1, u32::MAX] {
        let mut h = s.d.hdr(OP_RW, c.guest_port, c.host_port);
        h.len = len;
        s.d.send_raw(&h, b"short");
    }

    // Buffers outside guest memory.
    s.d.send_chain(&[Desc::readable(GuestAddress(MEM_SIZE - 8), hdr_len)]);
    s.d.send_chain(&[Desc::readable(GuestAddress(u64::MAX - 8), hdr_len)]);
    s.d.send_chain(&[
        Desc::readable(a, hdr_len),
        Desc::readable(GuestAddress(MEM_SIZE + 4096), 100),
    ]);

    // Nothing above produced a packet or touched the connection.
    s.d.expect_silence(Duration::from_millis(100));
    assert_alive(&mut s, &mut c);
}

#[test]
fn broken_descriptor_links_are_survived() {
    let mut s = setup();
    let mut c = canary(&mut s);
    let (_, _, _, size) = s.d.driver().queue_layout(TXQ_INDEX);
    let a = s.d.driver().alloc(64);
    let hdr = s.d.hdr(OP_REQUEST, 5, 6).to_bytes();
    s.d.driver().write_mem(a, &hdr);
    // Use descriptor slots the harness does not hand out this early.
    let slot = |i: u16| size - 1 - i;
    let g = s.d.driver();
    let next = VRING_DESC_F_NEXT as u16;
    let indirect = VRING_DESC_F_INDIRECT as u16;
    // A loop: 0 -> 1 -> 0 -> ... until the chain's TTL runs out.
    g.write_raw_descriptor(TXQ_INDEX, slot(0), a.0, 20, next, slot(1));
    g.write_raw_descriptor(TXQ_INDEX, slot(1), a.0 + 20, 24, next, slot(0));
    g.push_raw_avail(TXQ_INDEX, slot(0));
    // A next index past the table.
    g.write_raw_descriptor(TXQ_INDEX, slot(2), a.0, 44, next, size + 10);
    g.push_raw_avail(TXQ_INDEX, slot(2));
    // An indirect table outside memory, and one of a bad length.
    g.write_raw_descriptor(TXQ_INDEX, slot(3), MEM_SIZE, 32, indirect, 0);
    g.push_raw_avail(TXQ_INDEX, slot(3));
    g.write_raw_descriptor(TXQ_INDEX, slot(4), a.0, 17, indirect, 0);
    g.push_raw_avail(TXQ_INDEX, slot(4));
    // An avail entry naming a descriptor past the table: consumed, but it
    // cannot be put in the used ring.
    g.push_raw_avail(TXQ_INDEX, size + 3);
    g.kick(TXQ_INDEX);
    for _ in 0..4 {
        g.wait_used(TXQ_INDEX, TIMEOUT).expect("chain not returned");
    }
    // The loop and the cut chain both start with a whole header: a REQUEST
    // to a port nobody listens on, answered with RST. The rest is dropped.
    for _ in 0..2 {
        let rst = s.d.expect_op(OP_RST);
        assert_eq!(rst.hdr.dst_port, 5);
    }
    s.d.expect_silence(Duration::from_millis(50));
    assert_alive(&mut s, &mut c);
}

#[test]
fn unusable_rx_buffers_come_back_empty_and_the_packet_waits() {
    let mut s = setup_with(|_| {}, 0);
    let listener = listen(&s.path, 60);
    let g = s.d.driver();
    let a = g.alloc(4096);
    // Device-readable RX buffer, one too small for a header, one outside
    // guest memory: all returned with length 0.
    g.add_chain(RXQ_INDEX, &[Desc::readable(a, 4096)]).unwrap();
    g.add_chain(RXQ_INDEX, &[Desc::writable(a, 20)]).unwrap();
    g.add_chain(
        RXQ_INDEX,
        &[Desc::writable(GuestAddress(MEM_SIZE - 16), 4096)],
    )
    .unwrap();
    g.add_chain(
        RXQ_INDEX,
        &[
            Desc::writable(a, 2048),
            Desc::readable(GuestAddress(a.0 + 2048), 2048),
        ],
    )
    .unwrap();
    g.kick(RXQ_INDEX);
    s.d.send(s.d.hdr(OP_REQUEST, 61, 60), &[]);
    s.d.post_rx(1);
    s.d.expect_op(OP_RESPONSE);
    assert_eq!(s.d.empty_rx.len(), 4);
    assert!(s.d.empty_rx.iter().all(|u| u.len == 0));
    drop(listener);
}

#[test]
fn header_only_rx_buffers_carry_control_packets_but_not_data() {
    let mut s = setup_with(|_| {}, 0);
    let listener = listen(&s.path, 62);
    let tiny = |s: &mut Setup| {
        let g = s.d.driver();
        let a = g.alloc(64);
        g.add_chain(RXQ_INDEX, &[Desc::writable(a, PKT_HEADER_SIZE as u32)])
            .unwrap();
        g.kick(RXQ_INDEX);
    };
    tiny(&mut s);
    s.d.send(s.d.hdr(OP_REQUEST, 63, 62), &[]);
    let used = s.d.driver().wait_used(RXQ_INDEX, TIMEOUT).unwrap();
    assert_eq!(used.len, PKT_HEADER_SIZE as u32);
    let (mut host, _) = listener.accept().unwrap();
    // Data cannot go in a header-only buffer: it comes back empty instead
    // of blocking the ring, and the data waits for a real buffer.
    tiny(&mut s);
    host.write_all(b"data").unwrap();
    let used = s.d.driver().wait_used(RXQ_INDEX, TIMEOUT).unwrap();
    assert_eq!(used.len, 0);
    s.d.post_rx(1);
    assert_eq!(recv_data(&mut s.d, 62, 63, 4), b"data");
}

#[test]
fn random_headers_and_chains_never_panic() {
    let mut s = setup();
    let mut c = canary(&mut s);
    let mut rng = XorShift::new(0x00c0_ffee);
    let buf = s.d.driver().alloc(2 * MAX_PKT_DATA);
    for round in 0..3000 {
        let mut raw = [0u8; PKT_HEADER_SIZE];
        rng.fill(&mut raw);
        let mut h = super::super::PacketHeader::from_bytes(&raw);
        // Bias fields toward valid values so deeper paths are reached.
        if rng.below(4) != 0 {
            h.src_cid = CID;
        }
        if rng.below(4) != 0 {
            h.dst_cid = HOST_CID;
        }
        if rng.below(4) != 0 {
            h.type_ = TYPE_STREAM;
        }
        if rng.below(2) == 0 {
            h.op = rng.below(9) as u16;
        }
        if rng.below(2) == 0 {
            h.len = rng.below(200) as u32;
        }
        if rng.below(2) == 0 {
            // Aim at the canary's ports, but never at the canary itself.
            h.dst_port = c.host_port + rng.below(2) as u32;
            h.src_port = 7000 + rng.below(8) as u32;
        }
        let data_len = rng.below(300) as u32;
        s.d.driver().write_mem(buf, &h.to_bytes());
        let mut junk = vec![0u8; data_len as usize];
        rng.fill(&mut junk);
        s.d.driver().write_mem(GuestAddress(buf.0 + 64), &junk);
        let descs = match rng.below(5) {
            0 => vec![Desc::readable(buf, PKT_HEADER_SIZE as u32 + data_len)],
            1 => vec![
                Desc::readable(buf, rng.below(PKT_HEADER_SIZE as u64 + 1) as u32),
                Desc::readable(GuestAddress(buf.0 + 64), data_len),
            ],
            2 => vec![
                Desc::readable(buf, PKT_HEADER_SIZE as u32),
                Desc::writable(GuestAddress(buf.0 + 64), data_len),
            ],
            3 => vec![Desc::readable(
                GuestAddress(rng.below(MEM_SIZE + 0x10000)),
                rng.below(1 << 20) as u32,
            )],
            _ => vec![
                Desc::readable(buf, PKT_HEADER_SIZE as u32),
                Desc::readable(GuestAddress(buf.0 + 64), data_len),
            ],
        };
        s.d.send_chain(&descs);
        if round % 100 == 0 {
            while s.d.recv_timeout(Duration::from_millis(5)).is_some() {}
        }
    }
    while s.d.recv_timeout(Duration::from_millis(50)).is_some() {}
    assert_alive(&mut s, &mut c);
}
