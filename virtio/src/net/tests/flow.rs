//! Frames bigger than one buffer (MRG_RXBUF) and back-pressure in both
//! directions: nothing is dropped when either side is slow.

use std::io::ErrorKind;

use super::*;

#[test]
fn a_frame_larger_than_one_buffer_spans_several_with_num_buffers_set() {
    let mut s = setup(BASE_FEATURES);
    s.d.post_rx(16, MRG_BUF);
    let frame = host_send(&s.host, 5000, 4);
    let rx = s.d.recv();
    // 12 + 5000 bytes in 1536-byte buffers: 4 of them, all but the last full.
    assert_eq!(rx.hdr.num_buffers, 4);
    assert_eq!(rx.frame, frame);
    let lens: Vec<u32> = rx.used.iter().map(|u| u.len).collect();
    assert_eq!(lens, [MRG_BUF, MRG_BUF, MRG_BUF, 5012 - 3 * MRG_BUF]);
    // The next frame starts in a fresh buffer.
    let small = host_send(&s.host, 60, 5);
    let rx = s.d.recv();
    assert_eq!((rx.hdr.num_buffers, rx.frame), (1, small));
}

#[test]
fn a_frame_waits_until_enough_buffers_for_all_of_it_arrive() {
    let mut s = setup(BASE_FEATURES);
    s.d.post_rx(2, MRG_BUF);
    let frame = host_send(&s.host, 4000, 6);
    assert!(s.d.recv_timeout(Duration::from_millis(100)).is_none());
    s.d.post_rx(1, MRG_BUF);
    let rx = s.d.recv();
    assert_eq!((rx.hdr.num_buffers, rx.frame), (3, frame));
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_for_a_buffer_is_dropped() {
    let mut s = setup(BASE_FEATURES & !(1 << VIRTIO_NET_F_MRG_RXBUF));
    s.d.post_rx(1, MRG_BUF);
    s.host.send(&ethernet_frame(3000, 1)).unwrap();
    let fits = host_send(&s.host, 1500, 2);
    let rx = s.d.recv();
    assert_eq!((rx.hdr.num_buffers, rx.frame), (1, fits));
    assert_eq!(counter(&s.metrics.rx_dropped), 1);
}

#[test]
fn a_frame_bigger_than_the_whole_ring_is_dropped_not_waited_for() {
    let mut s = setup(BASE_FEATURES);
    let size = usize::from(QUEUE_SIZE);
    // Every descriptor posted, 64 bytes each: 16 KiB in all.
    s.d.post_rx(size, 64);
    s.host.send(&ethernet_frame(20_000, 1)).unwrap();
    let fits = host_send(&s.host, 100, 2);
    let rx = s.d.recv();
    assert_eq!(rx.frame, fits);
    assert_eq!(counter(&s.metrics.rx_dropped), 1);
}

#[test]
fn rx_back_pressure_frames_wait_in_the_socket_and_none_is_lost() {
    let mut s = setup(BASE_FEATURES);
    // No RX buffers: the device must stop reading, so the socket fills up.
    s.host.set_nonblocking(true).unwrap();
    let mut sent = Vec::new();
    loop {
        let frame = ethernet_frame(200, sent.len() as u8);
        match s.host.send(&frame) {
            Ok(_) => sent.push(frame),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("send: {e}"),
        }
        assert!(sent.len() < 100_000, "the device never pushed back");
    }
    assert!(!sent.is_empty());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counter(&s.metrics.rx_dropped), 0);
    s.d.post_rx(32, MRG_BUF);
    for (i, frame) in sent.iter().enumerate() {
        let rx = s.d.recv();
        assert_eq!(&rx.frame, frame, "frame {i}");
        s.d.post_rx(1, MRG_BUF);
    }
    assert!(s.d.recv_timeout(Duration::from_millis(50)).is_none());
    assert_eq!(counter(&s.metrics.rx_frames), sent.len() as u64);
}

#[test]
fn tx_back_pressure_keeps_chains_until_the_socket_has_room() {
    let mut s = setup(BASE_FEATURES);
    // The stack does not read: the socket queue fills, the device must keep
    // the rest of the chains rather than drop them.
    // Two descriptors each, within the 256-entry table; far more than the
    // socket queues (net.unix.max_dgram_qlen, 10 by default).
    let n = 120usize;
    let frames: Vec<Vec<u8>> = (0..n).map(|i| ethernet_frame(1000, i as u8)).collect();
    for f in &frames {
        let descs = s.d.tx_descs(&NetHeader::default(), f);
        s.d.offer_tx(&descs);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut returned = 0;
    while s.d.driver().pop_used(TXQ_INDEX).is_some() {
        returned += 1;
    }
    assert!(
        returned < n,
        "the socket took all {n} frames; no back-pressure"
    );
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(&host_recv(&s.host), f, "frame {i}");
    }
    while returned < n {
        s.d.wait_tx();
        returned += 1;
    }
    assert_eq!(counter(&s.metrics.tx_frames), n as u64);
    assert_eq!(counter(&s.metrics.tx_dropped), 0);
}

#[test]
fn a_restored_device_takes_again_the_buffers_it_held_and_uses_its_new_backend() {
    let mut s = setup(BASE_FEATURES);
    // Two buffers are held for a frame that needs three.
    s.d.post_rx(2, MRG_BUF);
    host_send(&s.host, 4000, 6);
    assert!(s.d.recv_timeout(Duration::from_millis(100)).is_none());

    s.d.driver().transport().pause().unwrap();
    let state = s.d.driver().transport().save_state().unwrap();
    s.d.driver().transport().resume();
    let (net, host) = device(false);
    s.d.driver().restore_into(Box::new(net), &state).unwrap();

    // The frame in flight stayed with the source; the restored device puts
    // the next frame of its own stack in the first held buffer.
    let small = host_send(&host, 60, 7);
    let rx = s.d.recv();
    assert_eq!((rx.hdr.num_buffers, rx.frame), (1, small));
    // The guest's frames reach the new stack.
    let frame = ethernet_frame(100, 8);
    s.d.send(&NetHeader::default(), &frame);
    assert_eq!(host_recv(&host), frame);
}
