//! A guest flooding denied SYNs and denied DNS queries: the events the host reports stay
//! bounded (rate limit plus "N suppressed" summaries), the counters still count everything,
//! and no per-flow state is left behind.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{test_config, Harness, GATEWAY, GUEST_MAC};
use msbvm_netstack::events::{EVENT_BURST, EVENT_RATE};
use msbvm_netstack::policy::Policy;
use msbvm_netstack::NetEvent;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber, UdpPacket, UdpRepr,
};

const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const FLOOD: u16 = 10_000;

/// An Ethernet + IPv4 frame from the guest carrying `payload_len` bytes written by `fill`.
fn frame(
    dst: Ipv4Addr,
    protocol: IpProtocol,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst,
        next_header: protocol,
        payload_len,
        hop_limit: 64,
    };
    let mut buf = vec![0u8; 14 + ip.buffer_len() + payload_len];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(msbvm_netstack::config::GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut eth);
    let mut packet = Ipv4Packet::new_unchecked(eth.payload_mut());
    ip.emit(&mut packet, &ChecksumCapabilities::default());
    fill(packet.payload_mut());
    buf
}

fn syn(dst: Ipv4Addr, dst_port: u16, src_port: u16) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64240,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &[],
    };
    frame(dst, IpProtocol::Tcp, tcp.buffer_len(), |p| {
        tcp.emit(
            &mut TcpPacket::new_unchecked(p),
            &GUEST_IP.into(),
            &dst.into(),
            &ChecksumCapabilities::default(),
        )
    })
}

/// A DNS query for `name` (type A) from the guest to the gateway's resolver.
fn dns_query(id: u16, name: &str, src_port: u16) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let udp = UdpRepr {
        src_port,
        dst_port: 53,
    };
    frame(GATEWAY, IpProtocol::Udp, 8 + query.len(), |p| {
        udp.emit(
            &mut UdpPacket::new_unchecked(p),
            &GUEST_IP.into(),
            &GATEWAY.into(),
            query.len(),
            |b| b.copy_from_slice(&query),
            &ChecksumCapabilities::default(),
        )
    })
}

fn count(events: &[NetEvent], kind: &str) -> usize {
    events.iter().filter(|e| e.kind() == kind).count()
}

fn suppressed(events: &[NetEvent], of: &str) -> u64 {
    events
        .iter()
        .map(|e| match e {
            NetEvent::EventsSuppressed { kind, count, .. } if kind == of => *count,
            _ => 0,
        })
        .sum()
}

#[test]
fn a_flood_of_denied_syns_and_dns_queries_gives_bounded_events_and_no_state() {
    let policy = Policy::builder().deny("blocked.test".parse().unwrap());
    let mut h = Harness::start(test_config(), policy);
    h.guest.capture = true;
    let start = Instant::now();
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    for i in 0..FLOOD {
        let port = 1024 + (i % 60_000);
        h.guest.dev.sink.send_raw(&syn(metadata, 80, port));
        h.guest
            .dev
            .sink
            .send_raw(&dns_query(i, "blocked.test", port));
        if i % 50 == 0 {
            // Let the stack keep up (the frame socket is a bounded queue) and drop its answers.
            h.guest.run_for(Duration::from_millis(2));
            h.guest.captured.clear();
        }
    }
    let log = h.events.clone();
    // The summaries come one interval after the first suppressed event.
    let events = h.guest.run_until(30, "the suppressed summaries", |g| {
        g.captured.clear();
        let events = log.lock().unwrap().clone();
        (suppressed(&events, "flow_denied") > 0 && suppressed(&events, "dns_query") > 0)
            .then_some(events)
    });
    let secs = start.elapsed().as_secs() + 1;
    let bound = (EVENT_BURST as u64 + EVENT_RATE as u64 * secs) as usize;
    let denied = count(&events, "flow_denied");
    let dns = count(&events, "dns_query");
    assert!(denied <= bound, "{denied} flow_denied events over {secs} s");
    assert!(dns <= bound, "{dns} dns_query events over {secs} s");
    assert!(events.len() <= 2 * bound + 10, "{} events", events.len());

    let stats = h.handle.stats();
    // The counters count every SYN, and every event the limit dropped.
    assert_eq!(stats.flows_denied, u64::from(FLOOD), "{stats:?}");
    assert_eq!(
        denied as u64 + suppressed(&events, "flow_denied"),
        u64::from(FLOOD)
    );
    assert!(stats.events_suppressed >= suppressed(&events, "flow_denied"));
    // No per-flow state is kept for denied flows or answered queries.
    assert_eq!((stats.tcp_flows_open, stats.udp_flows_open), (0, 0));
    assert!(h
        .handle
        .pins()
        .names("93.184.216.34".parse().unwrap())
        .is_empty());
}
