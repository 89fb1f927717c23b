//! Bad input from the guest: malformed TX chains and unusable RX chains.
//! The device must drop and count them, never panic, and keep working.

use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;

use super::*;
use crate::net::frame::HDR_F_NEEDS_CSUM;
use crate::test_utils::{Desc, XorShift, MEM_SIZE};

/// Proves the device still moves frames both ways.
fn assert_alive(s: &mut Setup) {
    let frame = ethernet_frame(128, 0xa5);
    s.d.send(&NetHeader::default(), &frame);
    assert_eq!(host_recv(&s.host), frame);
    s.d.post_rx(1, MRG_BUF);
    s.host.send(&frame).unwrap();
    assert_eq!(s.d.recv().frame, frame);
}

#[test]
fn malformed_tx_chains_are_dropped_and_counted() {
    let mut s = setup(BASE_FEATURES | CSUM_FEATURES);
    let hdr = NetHeader::default().to_bytes();
    let mut dropped = 0;
    let mut expect_dropped = |s: &mut Setup, descs: &[Desc], what: &str| {
        s.d.offer_tx(descs);
        assert_eq!(s.d.wait_tx().len, 0, "{what}");
        dropped += 1;
        assert_eq!(counter(&s.metrics.tx_dropped), dropped, "{what}");
    };

    let g = s.d.driver();
    let h = g.alloc(12);
    g.write_mem(h, &hdr);
    let short = g.alloc(13);
    // Too short: header only, then header + 13 bytes.
    expect_dropped(&mut s, &[Desc::readable(h, 12)], "header only");
    expect_dropped(
        &mut s,
        &[Desc::readable(h, 12), Desc::readable(short, 13)],
        "13-byte frame",
    );
    expect_dropped(&mut s, &[Desc::readable(h, 4)], "partial header");
    // A device-writable descriptor in a TX chain.
    let f = s.d.driver().alloc(64);
    expect_dropped(
        &mut s,
        &[Desc::readable(h, 12), Desc::writable(f, 64)],
        "writable descriptor",
    );
    // Outside guest memory, and wrapping the address space.
    expect_dropped(
        &mut s,
        &[
            Desc::readable(h, 12),
            Desc::readable(vm_memory::GuestAddress(MEM_SIZE - 8), 64),
        ],
        "beyond memory",
    );
    expect_dropped(
        &mut s,
        &[
            Desc::readable(h, 12),
            Desc::readable(vm_memory::GuestAddress(u64::MAX - 4), 64),
        ],
        "wrapping address",
    );
    // Longer than the largest frame, in several descriptors.
    let big = s.d.driver().alloc(40_000);
    expect_dropped(
        &mut s,
        &[
            Desc::readable(h, 12),
            Desc::readable(big, 40_000),
            Desc::readable(big, 40_000),
        ],
        "over 65550 bytes",
    );
    // GSO was not negotiated.
    let frame = ethernet_frame(100, 1);
    let gso = NetHeader {
        gso_type: 1,
        ..NetHeader::default()
    };
    let descs = s.d.tx_descs(&gso, &frame);
    expect_dropped(&mut s, &descs, "gso frame");
    // Checksum location past the end of the frame.
    let bad_csum = NetHeader {
        flags: HDR_F_NEEDS_CSUM,
        csum_start: 90,
        csum_offset: 9,
        ..NetHeader::default()
    };
    let descs = s.d.tx_descs(&bad_csum, &frame);
    expect_dropped(&mut s, &descs, "checksum out of bounds");

    assert_host_silent(&s.host);
    assert_alive(&mut s);
}

#[test]
fn raw_descriptor_loops_and_bad_indices_do_not_hang_or_panic() {
    let mut s = setup(BASE_FEATURES);
    let g = s.d.driver();
    let addr = g.alloc(64);
    // A chain whose NEXT points at itself, one pointing past the table,
    // and a head index past the table.
    let next = VRING_DESC_F_NEXT as u16;
    g.write_raw_descriptor(TXQ_INDEX, 200, addr.0, 64, next, 200);
    g.push_raw_avail(TXQ_INDEX, 200);
    g.write_raw_descriptor(TXQ_INDEX, 201, addr.0, 64, next, 5000);
    g.push_raw_avail(TXQ_INDEX, 201);
    g.push_raw_avail(TXQ_INDEX, 9999);
    g.kick(TXQ_INDEX);
    std::thread::sleep(Duration::from_millis(50));
    while s.d.driver().pop_used(TXQ_INDEX).is_some() {}
    // The looping chain reads as up to a ring's worth of the same bytes:
    // garbage, but within bounds, so it may reach the stack.
    drain_host(&s.host);
    assert_alive(&mut s);
}

#[test]
fn unusable_rx_chains_are_returned_empty_and_the_frame_goes_to_the_next() {
    let mut s = setup(BASE_FEATURES);
    let g = s.d.driver();
    let a = g.alloc(2048);
    // Device-readable, too small for a header, outside memory.
    let bad = [
        vec![Desc::readable(a, 2048)],
        vec![Desc::writable(a, 8)],
        vec![Desc::writable(
            vm_memory::GuestAddress(MEM_SIZE - 100),
            2048,
        )],
    ];
    let mut bad_heads = Vec::new();
    for descs in &bad {
        bad_heads.push(g.add_chain(RXQ_INDEX, descs).unwrap());
    }
    s.d.post_rx(1, MRG_BUF);
    let frame = host_send(&s.host, 500, 3);
    for head in bad_heads {
        let used = s.d.driver().wait_used(RXQ_INDEX, TIMEOUT).unwrap();
        assert_eq!((used.id, used.len), (head, 0));
    }
    assert_eq!(s.d.recv().frame, frame);
    assert_alive(&mut s);
}

#[test]
fn random_tx_chains_never_stop_the_device() {
    let mut s = setup(BASE_FEATURES | CSUM_FEATURES);
    let mut rng = XorShift::new(0x6e65_7476);
    // The stack keeps reading, so valid frames never stall the ring.
    let reader = s.host.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while reader.recv(&mut buf).is_ok() {}
    });
    for _ in 0..300 {
        let ndesc = 1 + rng.below(3) as usize;
        let mut descs = Vec::new();
        for _ in 0..ndesc {
            let len = rng.below(3000) as u32 + 1;
            let addr = s.d.driver().alloc(len);
            let mut bytes = vec![0u8; len as usize];
            rng.fill(&mut bytes);
            s.d.driver().write_mem(addr, &bytes);
            descs.push(if rng.below(10) == 0 {
                Desc::writable(addr, len)
            } else {
                Desc::readable(addr, len)
            });
        }
        s.d.offer_tx(&descs);
        s.d.wait_tx();
    }
    drain.join().unwrap();
    let m = &s.metrics;
    assert_eq!(counter(&m.tx_frames) + counter(&m.tx_dropped), 300);
    assert_alive(&mut s);
}
