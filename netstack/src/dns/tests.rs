//! DNS server tests against a real upstream: dnsmasq from the distribution,
//! started per test on a free loopback port with fixed answers.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::*;
use crate::policy::{Action, Rule};

/// A dnsmasq child serving fixed records; killed on drop.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
}

impl Dnsmasq {
    /// Starts dnsmasq, or prints why not and returns `None`. A free UDP port may be taken
    /// for TCP (dnsmasq binds both) or grabbed by another test before dnsmasq binds it, so
    /// a dnsmasq that exits or stays silent is replaced on another port a few times.
    fn start() -> Option<Dnsmasq> {
        for _ in 0..5 {
            match Self::start_once()? {
                Ok(server) => return Some(server),
                Err(mut failed) => {
                    let _ = failed.child.kill();
                    let _ = failed.child.wait();
                }
            }
        }
        panic!("dnsmasq did not start on any of 5 local ports");
    }

    fn start_once() -> Option<Result<Dnsmasq, Dnsmasq>> {
        let port = UdpSocket::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let spawned = Command::new("dnsmasq")
            .args(big_txt_records())
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={port}"),
                "--address=/public.test/93.184.216.34",
                "--address=/public.test/2606:2800:220:1::1",
                "--txt-record=public.test,hello",
                "--address=/rebind.test/192.168.1.10",
                "--address=/private.example/10.0.0.5",
                "--host-record=ttl.test,93.184.216.35,4000000000",
                "--cache-size=0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("skipped: dnsmasq not installed (apt-get install dnsmasq)");
                return None;
            }
            Err(e) => panic!("starting dnsmasq: {e}"),
        };
        let mut server = Dnsmasq {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        };
        Some(if server.wait_ready() {
            Ok(server)
        } else {
            Err(server)
        })
    }

    /// Whether dnsmasq answers within 20 s (false at once if it exited).
    fn wait_ready(&mut self) -> bool {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let probe = query_bytes(7, "public.test.", RecordType::A);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            socket.send_to(&probe, self.addr).unwrap();
            if socket.recv(&mut [0; 512]).is_ok() {
                return true;
            }
        }
        eprintln!("dnsmasq on {} did not answer within 20 s", self.addr);
        false
    }

    fn server(&self) -> DnsServer {
        DnsServer::new(Upstream::Servers(vec![self.addr]), PinTable::new()).unwrap()
    }

    /// A dnsmasq and a server forwarding to it; `None` where dnsmasq cannot run (see
    /// [`Dnsmasq::start`]). Keep the dnsmasq alive while the server is in use.
    fn start_with_server() -> Option<(Dnsmasq, DnsServer)> {
        let dnsmasq = Dnsmasq::start()?;
        let server = dnsmasq.server();
        Some((dnsmasq, server))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Six 250-byte TXT records for `big.test`: about 1.5 KB, more than fits
/// our 1232-byte EDNS size, so dnsmasq truncates over UDP.
fn big_txt_records() -> Vec<String> {
    (0..6)
        .map(|n| format!("--txt-record=big.test,{n}{}", "x".repeat(249)))
        .collect()
}

fn query_bytes(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    query.to_vec().unwrap()
}

/// Sends one query through `server` and returns the parsed answer and the
/// events it reported.
async fn ask(
    server: &DnsServer,
    policy: &Policy,
    name: &str,
    qtype: RecordType,
) -> (Message, Vec<NetEvent>) {
    let events = RefCell::new(Vec::new());
    let sink = |e| events.borrow_mut().push(e);
    let reply = server
        .handle(&query_bytes(0x4242, name, qtype), policy, &sink)
        .await
        .expect("an answer");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, 0x4242);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    (reply, events.into_inner())
}

/// A server whose upstream (the discard port) never answers.
fn discard_server() -> DnsServer {
    DnsServer::new(
        Upstream::Servers(vec!["127.0.0.1:9".parse().unwrap()]),
        PinTable::new(),
    )
    .unwrap()
}

fn addresses(reply: &Message) -> Vec<IpAddr> {
    reply.answers.iter().filter_map(address).collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn allowed_name_resolves_and_is_pinned() {
    let Some((_dnsmasq, server)) = Dnsmasq::start_with_server() else {
        return;
    };
    let (reply, events) = ask(&server, &Policy::default(), "Public.Test.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), vec![ip("93.184.216.34")]);
    assert_eq!(
        server.pins.names(ip("93.184.216.34")),
        vec!["public.test".to_owned()]
    );
    assert_eq!(
        events,
        vec![NetEvent::DnsQuery {
            name: "public.test".into(),
            qtype: "A".into(),
            allowed: true,
            answers: vec![ip("93.184.216.34")],
            reason: None,
        }]
    );

    // A name rule now opens exactly that address.
    let policy = Policy::new(Action::Deny).allow(Rule::domain("public.test").unwrap());
    let flow = |dst: &str| crate::policy::FlowInfo {
        protocol: crate::policy::Protocol::Tcp,
        dst: dst.parse().unwrap(),
        to_host_alias: false,
    };
    assert!(policy
        .check_flow(&flow("93.184.216.34:443"), &server.pins)
        .is_allowed());
    assert!(!policy
        .check_flow(&flow("93.184.216.35:443"), &server.pins)
        .is_allowed());
}

#[tokio::test]
async fn other_query_types_are_forwarded() {
    let Some((_dnsmasq, server)) = Dnsmasq::start_with_server() else {
        return;
    };
    let (reply, events) = ask(
        &server,
        &Policy::default(),
        "public.test.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), vec![ip("2606:2800:220:1::1")]);
    assert!(
        matches!(&events[..], [NetEvent::DnsQuery { qtype, allowed: true, .. }] if qtype == "AAAA")
    );
    let (reply, _) = ask(&server, &Policy::default(), "public.test.", RecordType::TXT).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(matches!(&reply.answers[..], [r] if r.record_type() == RecordType::TXT));
    // dnsmasq knows nothing else and has no upstream: its REFUSED comes through.
    let (reply, _) = ask(&server, &Policy::default(), "unknown.test.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn denied_name_gets_nxdomain() {
    let Some((_dnsmasq, server)) = Dnsmasq::start_with_server() else {
        return;
    };
    for policy in [
        Policy::default().deny(Rule::domain("*.test").unwrap()),
        Policy::new(Action::Deny).allow(Rule::domain("other.test").unwrap()),
    ] {
        let (reply, events) = ask(&server, &policy, "public.test.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.answers.is_empty());
        assert!(matches!(
            &events[..],
            [NetEvent::DnsQuery {
                allowed: false,
                reason: Some(_),
                ..
            }]
        ));
    }
    assert!(server.pins.is_empty());
}

#[tokio::test]
async fn rebinding_answers_are_refused_unless_a_rule_allows_them() {
    let Some((_dnsmasq, server)) = Dnsmasq::start_with_server() else {
        return;
    };
    let (reply, events) = ask(&server, &Policy::default(), "rebind.test.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.answers.is_empty());
    let [NetEvent::DnsQuery {
        allowed: false,
        reason: Some(reason),
        ..
    }] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert!(
        reason.contains("rebinding") && reason.contains("192.168.1.10"),
        "{reason}"
    );
    assert!(server.pins.is_empty());

    for rule in ["rebind.test", "private", "192.168.1.0/24"] {
        let policy = Policy::default().allow(Rule::parse(rule).unwrap());
        let (reply, _) = ask(&server, &policy, "rebind.test.", RecordType::A).await;
        assert_eq!(addresses(&reply), vec![ip("192.168.1.10")], "{rule}");
    }
    // A rule for another private name does not open this one.
    let policy = Policy::default().allow(Rule::domain("private.example").unwrap());
    let (reply, _) = ask(&server, &policy, "rebind.test.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    let (reply, _) = ask(&server, &policy, "private.example.", RecordType::A).await;
    assert_eq!(addresses(&reply), vec![ip("10.0.0.5")]);
}

#[tokio::test]
async fn host_alias_name_resolves_only_when_host_is_allowed() {
    // Answered locally: the upstream is never asked, so none is needed.
    let server = discard_server();
    let (reply, events) = ask(
        &server,
        &Policy::default(),
        "host.msbvm.internal.",
        RecordType::A,
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(matches!(
        &events[..],
        [NetEvent::DnsQuery { allowed: false, .. }]
    ));

    let policy = Policy::default().allow(Rule::group(crate::policy::Group::Host));
    let (reply, _) = ask(&server, &policy, "HOST.msbvm.internal.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&reply), vec![IpAddr::from(HOST_ALIAS_IP)]);
    let (reply, _) = ask(&server, &policy, "host.msbvm.internal.", RecordType::AAAA).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
}

#[tokio::test]
async fn malformed_queries_get_formerr_or_nothing() {
    let server = discard_server();
    let policy = Policy::default();
    let events = RefCell::new(Vec::new());
    let sink = |e| events.borrow_mut().push(e);

    assert_eq!(server.handle(b"\x01\x02\x03", &policy, &sink).await, None);
    // A readable header claiming a question that is not there.
    let header = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    let reply = server
        .handle(&header, &policy, &sink)
        .await
        .expect("FORMERR");
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(reply.metadata.id, 0xabcd);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // A response is never answered, parseable or not.
    let mut response = query_bytes(1, "public.test.", RecordType::A);
    response[2] |= 0x80;
    assert_eq!(server.handle(&response, &policy, &sink).await, None);
    response.truncate(14);
    assert_eq!(server.handle(&response, &policy, &sink).await, None);
    // Two questions in one query.
    let mut two = Message::new(5, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(
        Name::from_ascii("a.test.").unwrap(),
        RecordType::A,
    ));
    two.add_query(Query::query(
        Name::from_ascii("b.test.").unwrap(),
        RecordType::A,
    ));
    let reply = server
        .handle(&two.to_vec().unwrap(), &policy, &sink)
        .await
        .unwrap();
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
    assert!(events.borrow().is_empty());
}

#[tokio::test]
async fn unreachable_upstream_gives_servfail() {
    // Nothing listens on the discard port of loopback: the UDP send gets
    // ICMP port unreachable (or times out).
    let server = discard_server();
    let (reply, events) = ask(&server, &Policy::default(), "public.test.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    let [NetEvent::DnsQuery {
        allowed: true,
        reason: Some(reason),
        ..
    }] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert!(reason.contains("upstream"), "{reason}");
}

#[test]
fn empty_server_list_is_an_error() {
    assert!(DnsServer::new(Upstream::Servers(Vec::new()), PinTable::new()).is_err());
}

#[test]
fn oversized_udp_answers_are_truncated() {
    let mut response = Message::response(9, OpCode::Query);
    let name = Name::from_ascii("big.test.").unwrap();
    response.add_query(Query::query(name.clone(), RecordType::A));
    for n in 0..100u32 {
        let a = RData::A(A(Ipv4Addr::from(n)));
        response.add_answer(Record::from_rdata(name.clone(), 60, a));
    }
    let bytes = encode(response.clone(), Some(PLAIN_UDP_LIMIT)).unwrap();
    assert!(bytes.len() <= PLAIN_UDP_LIMIT);
    let reply = Message::from_vec(&bytes).unwrap();
    assert!(reply.metadata.truncation);
    assert!(reply.answers.is_empty());
    let whole = Message::from_vec(&encode(response, None).unwrap()).unwrap();
    assert_eq!(whole.answers.len(), 100);
}

#[tokio::test]
async fn truncated_upstream_answers_are_fetched_over_tcp() {
    let Some((_dnsmasq, server)) = Dnsmasq::start_with_server() else {
        return;
    };
    let policy = Policy::default();
    let sink = |_| {};
    let query = query_bytes(3, "big.test.", RecordType::TXT);
    let reply = server.handle_tcp(&query, &policy, &sink).await.unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 6);
    // Over UDP the guest (no EDNS: 512 bytes) is told to retry over TCP.
    let reply = server.handle(&query, &policy, &sink).await.unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert!(reply.metadata.truncation);
    assert!(reply.answers.is_empty());
}

#[tokio::test]
async fn queries_beyond_the_in_flight_cap_get_servfail_at_once() {
    let server = discard_server();
    let _all = server
        .in_flight
        .try_acquire_many(MAX_IN_FLIGHT as u32)
        .unwrap();
    let (reply, events) = ask(&server, &Policy::default(), "public.test.", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    let [NetEvent::DnsQuery {
        reason: Some(reason),
        ..
    }] = &events[..]
    else {
        panic!("{events:?}");
    };
    assert!(reason.contains("in flight"), "{reason}");
}

#[tokio::test]
async fn answer_ttls_are_capped_to_the_pin_lifetime() {
    let Some((_dnsmasq, server)) = Dnsmasq::start_with_server() else {
        return;
    };
    let (reply, _) = ask(&server, &Policy::default(), "ttl.test.", RecordType::A).await;
    assert_eq!(addresses(&reply), vec![ip("93.184.216.35")]);
    assert_eq!(reply.answers[0].ttl, MAX_PIN_TTL.as_secs() as u32);
}

#[tokio::test]
async fn a_name_bound_to_a_secret_keeps_rebinding_protection_whatever_the_rules() {
    let Some(dnsmasq) = Dnsmasq::start() else {
        return;
    };
    let server = dnsmasq
        .server()
        .with_secret_hosts(["rebind.test", "*.example.org"]);
    for rule in ["rebind.test", "private", "192.168.1.0/24"] {
        let policy = Policy::default().allow(Rule::parse(rule).unwrap());
        let (reply, _) = ask(&server, &policy, "rebind.test.", RecordType::A).await;
        assert!(addresses(&reply).is_empty(), "{rule}: {reply:?}");
    }
    // Names without a secret are unchanged.
    let policy = Policy::default().allow(Rule::parse("private").unwrap());
    let (reply, _) = ask(&server, &policy, "private.example.", RecordType::A).await;
    assert_eq!(addresses(&reply), vec![ip("10.0.0.5")]);
}
